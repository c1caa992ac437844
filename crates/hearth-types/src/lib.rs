//! Values every Hearth crate shares, checked once where they enter.
//!
//! A leaf below the host crates: they take a [`WorkspaceId`] instead of each carrying a
//! copy of the rule, so an id that reached a cgroup path, a netns or a veth name was
//! validated by the one constructor here.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest workspace id: ids name host resources (cgroup dirs, netns, chains), and the
/// veth name built from one is cut to the kernel's 15 characters.
pub const MAX_ID_LEN: usize = 32;

/// A workspace's stable id: 1 to [`MAX_ID_LEN`] lowercase hex digits. The control plane
/// makes 12; a shorter one is what a veth name keeps of an id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkspaceId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid workspace id {id:?}: {reason}")]
pub struct InvalidId {
    pub id: String,
    pub reason: &'static str,
}

impl WorkspaceId {
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidId> {
        let id = id.into();
        let reason = if id.is_empty() {
            "empty"
        } else if id.len() > MAX_ID_LEN {
            "longer than 32 characters"
        } else if !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            "only lowercase hex digits (0-9, a-f) are allowed"
        } else {
            return Ok(WorkspaceId(id));
        };
        Err(InvalidId { id, reason })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for WorkspaceId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, InvalidId> {
        WorkspaceId::new(s)
    }
}

impl TryFrom<String> for WorkspaceId {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, InvalidId> {
        WorkspaceId::new(s)
    }
}

impl From<WorkspaceId> for String {
    fn from(id: WorkspaceId) -> String {
        id.0
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Deref for WorkspaceId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for WorkspaceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for WorkspaceId {
    fn as_ref(&self) -> &std::path::Path {
        self.0.as_ref()
    }
}

impl Borrow<str> for WorkspaceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for WorkspaceId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for WorkspaceId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hex_up_to_32() {
        for ok in ["0", "0123456789ab", "abcdef0123456789abcdef0123456789"] {
            assert_eq!(WorkspaceId::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_anything_else_saying_why() {
        for (bad, reason) in [
            ("", "empty"),
            (
                "abcdef0123456789abcdef01234567890",
                "longer than 32 characters",
            ),
            ("ABC", "only lowercase hex digits (0-9, a-f) are allowed"),
            ("ws-1", "only lowercase hex digits (0-9, a-f) are allowed"),
            ("../etc", "only lowercase hex digits (0-9, a-f) are allowed"),
            ("ab\n", "only lowercase hex digits (0-9, a-f) are allowed"),
        ] {
            let e = WorkspaceId::new(bad).unwrap_err();
            assert_eq!((e.id.as_str(), e.reason), (bad, reason));
        }
        assert_eq!(
            "x".parse::<WorkspaceId>().unwrap_err().to_string(),
            "invalid workspace id \"x\": only lowercase hex digits (0-9, a-f) are allowed"
        );
    }

    #[test]
    fn serde_validates_on_the_way_in() {
        let id: WorkspaceId = serde_json::from_str("\"00ff\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"00ff\"");
        let e = serde_json::from_str::<WorkspaceId>("\"../x\"").unwrap_err();
        assert!(e.to_string().contains("invalid workspace id"), "{e}");
    }
}
