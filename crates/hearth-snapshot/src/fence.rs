//! Fences: the newest placement generation of each workspace, at `fences/<workspace>`.
//!
//! The control plane places a workspace on a node under a generation that grows with each
//! placement. The node that restores it there raises the fence first; a node still
//! holding an older copy (cut off while the workspace moved) checks the fence before and
//! after it writes a snapshot, so its snapshot never joins the newer history.

use serde::{Deserialize, Serialize};

use crate::backend::BackendError;
use crate::format::{self, Kind};
use crate::{check_workspace, SnapshotError, Store};

#[derive(Serialize, Deserialize)]
struct Fence {
    generation: u64,
}

fn key(workspace: &str) -> String {
    format!("fences/{workspace}")
}

/// The workspace's fence: the newest generation a node restored it under (0: none).
pub fn fence(store: &Store, workspace: &str) -> Result<u64, SnapshotError> {
    check_workspace(workspace)?;
    let key = key(workspace);
    let obj = match store.backend.get(&key, format::MAX_SMALL_OBJECT as u64) {
        Ok(o) => o,
        Err(BackendError::NotFound { .. }) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let raw = format::decode(&key, Kind::Fence, store.keys.as_ref(), &obj)?;
    let f: Fence = serde_json::from_slice(&raw).map_err(|e| SnapshotError::Corrupt {
        key,
        reason: format!("bad fence: {e}"),
    })?;
    Ok(f.generation)
}

/// Raises the workspace's fence to `generation` (never lowers it). Placements of one
/// workspace are serialized by the control plane, so read-then-write is enough.
pub fn raise_fence(store: &Store, workspace: &str, generation: u64) -> Result<(), SnapshotError> {
    if fence(store, workspace)? >= generation {
        return Ok(());
    }
    let raw = serde_json::to_vec(&Fence { generation }).map_err(|e| SnapshotError::Store {
        location: store.location(),
        reason: e.to_string(),
    })?;
    let obj = format::encode(Kind::Fence, store.keys.as_ref(), &raw);
    store.backend.put(&key(workspace), obj.into())?;
    Ok(())
}

/// Forgets the workspace's fence (with its last snapshot, when it is purged).
pub fn drop_fence(store: &Store, workspace: &str) -> Result<(), SnapshotError> {
    check_workspace(workspace)?;
    match store.backend.delete(&key(workspace)) {
        Ok(()) | Err(BackendError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
