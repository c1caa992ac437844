//! Who is calling, and what they may do. Today one token exists and it is the admin's;
//! when users arrive, [`Caller`] is where their rights are decided.

use std::sync::Arc;

/// The authenticated caller, put in request extensions by the token check.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Stable key for per-caller limits (never the token itself, which must not be logged).
    pub id: Arc<str>,
    pub admin: bool,
}

impl Caller {
    /// The holder of the server's one token.
    pub fn admin() -> Caller {
        Caller {
            id: "admin".into(),
            admin: true,
        }
    }

    /// Whether the caller may have the server read files on its own host (image loads from
    /// a path). Everyone else uploads the archive instead.
    pub fn may_read_server_paths(&self) -> bool {
        self.admin
    }
}
