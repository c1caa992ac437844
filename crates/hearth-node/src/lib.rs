//! The node: runs workspaces on one host.
//!
//! It owns images, layers, overlay roots, user-namespace maps, cgroups and network
//! namespaces. The control plane reaches it only through [`NodeApi`], so a later split
//! into separate hosts changes the transport, not the contract.

mod api;
mod clone;
mod console;
mod cpu;
pub mod features;
mod kmsg;
mod local;
mod priority;
mod snap;

pub use api::*;
pub use clone::{is_local_source, repo_name, validate_branch, validate_source, UPDATE_REF};
pub use console::{kept_bytes as console_bytes, ConsoleLimits};
pub use local::LocalNode;
pub use priority::{Class as PriorityClass, PriorityRules, PriorityStats, RulesError, SchedPolicy};
pub use snap::{
    Retention, SnapshotSettings, SnapshotSummary, StoreCheck, StoreGcReport, StoreUsage,
};
