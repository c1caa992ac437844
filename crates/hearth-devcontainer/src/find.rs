//! Where a repository keeps its devcontainer.json (containers.dev, "devcontainer.json
//! location"): `.devcontainer/devcontainer.json`, `.devcontainer.json`, or one level down
//! in `.devcontainer/<name>/devcontainer.json`, one of which is chosen by name.

use crate::{Error, Repo, MAX_FILE_BYTES};

/// The fixed places, in the order the spec and the reference CLI look.
pub const CANDIDATES: [&str; 2] = [".devcontainer/devcontainer.json", ".devcontainer.json"];

/// A configuration file found in a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Repository-relative path, e.g. `.devcontainer/devcontainer.json`.
    pub path: String,
    pub text: String,
}

/// The repository's configuration: `name` picks `.devcontainer/<name>/devcontainer.json`;
/// without it, the fixed places first, then the only named one. Several named ones and
/// no choice is an error listing them; no configuration at all is `None`.
pub fn find(repo: &dyn Repo, name: Option<&str>) -> Result<Option<Found>, Error> {
    if let Some(name) = name {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::NoSuchConfig {
                name: name.to_string(),
                available: named(repo)?,
            });
        }
        let path = format!(".devcontainer/{name}/devcontainer.json");
        return match read(repo, &path)? {
            Some(found) => Ok(Some(found)),
            None => Err(Error::NoSuchConfig {
                name: name.to_string(),
                available: named(repo)?,
            }),
        };
    }
    for path in CANDIDATES {
        if let Some(found) = read(repo, path)? {
            return Ok(Some(found));
        }
    }
    let names = named(repo)?;
    match names.as_slice() {
        [] => Ok(None),
        [one] => read(repo, &format!(".devcontainer/{one}/devcontainer.json")),
        _ => Err(Error::Ambiguous { names }),
    }
}

/// Names `N` with a `.devcontainer/N/devcontainer.json`.
fn named(repo: &dyn Repo) -> Result<Vec<String>, Error> {
    let mut names = Vec::new();
    for dir in repo.subdirs(".devcontainer")? {
        let path = format!(".devcontainer/{dir}/devcontainer.json");
        // Only a readable regular file counts; a hostile entry is reported when chosen.
        if matches!(repo.read(&path, MAX_FILE_BYTES), Ok(Some(_))) {
            names.push(dir);
        }
    }
    Ok(names)
}

fn read(repo: &dyn Repo, path: &str) -> Result<Option<Found>, Error> {
    let Some(bytes) = repo.read(path, MAX_FILE_BYTES)? else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes).map_err(|e| Error::Path {
        path: path.to_string(),
        reason: format!("is not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
    })?;
    Ok(Some(Found {
        path: path.to_string(),
        text,
    }))
}
