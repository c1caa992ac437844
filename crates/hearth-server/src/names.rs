//! Workspace names: they appear in URLs, host resource names and DNS, hence the strict rule.

/// Longest allowed name (a DNS label).
pub const MAX_NAME: usize = 63;

/// Checks `^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`.
pub fn is_valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    let inner_ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    let edge_ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            b.len() <= MAX_NAME && edge_ok(first) && edge_ok(last) && b.iter().all(inner_ok)
        }
        _ => false,
    }
}

/// The message users see for a rejected name; a long one is cut so it cannot bloat
/// the answer or the log.
pub fn invalid_name_message(name: &str) -> String {
    let shown: String = name.chars().take(MAX_NAME + 1).collect();
    let name = if shown.len() < name.len() {
        format!("{shown}...")
    } else {
        shown
    };
    format!(
        "invalid workspace name {name:?}: use 1 to {MAX_NAME} lowercase letters, digits and '-', \
         starting and ending with a letter or digit"
    )
}

/// Default name for a source: its repository name, lowercased, other characters turned to '-'.
///
/// `https://host/org/My_Repo.git` and `/src/My_Repo/` both give `my-repo`; falls back to
/// `workspace` when nothing usable is left.
pub fn default_name(source: &str) -> String {
    let trimmed = source.trim().trim_end_matches('/');
    let last = trimmed.rsplit(['/', ':', '\\']).next().unwrap_or(trimmed);
    let last = last.strip_suffix(".git").unwrap_or(last);
    let mut name = String::with_capacity(last.len());
    for c in last.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let mut name = name.trim_matches('-').to_string();
    if name.len() > MAX_NAME {
        name.truncate(MAX_NAME);
        name = name.trim_end_matches('-').to_string();
    }
    if name.is_empty() {
        "workspace".to_string()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for n in ["a", "0", "ab", "a-b", "my-repo-2", &"a".repeat(63)] {
            assert!(is_valid_name(n), "{n}");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for n in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a b",
            "ü",
            "../x",
            &"a".repeat(64),
        ] {
            assert!(!is_valid_name(n), "{n:?}");
        }
    }

    #[test]
    fn derives_default_names() {
        let cases = [
            ("https://github.com/org/Repo.git", "repo"),
            ("https://github.com/org/my_repo", "my-repo"),
            ("git@github.com:org/Hearth.git", "hearth"),
            ("/home/me/src/My Project/", "my-project"),
            ("/tmp/__weird__..name", "weird-name"),
            ("repo", "repo"),
            ("/", "workspace"),
            ("", "workspace"),
            ("/x/.git", "workspace"),
        ];
        for (src, want) in cases {
            assert_eq!(default_name(src), want, "{src}");
            assert!(is_valid_name(&default_name(src)));
        }
        let long = format!("/src/{}-{}", "a".repeat(62), "b");
        let n = default_name(&long);
        assert!(is_valid_name(&n), "{n}");
        assert_eq!(n.len(), 62);
    }
}
