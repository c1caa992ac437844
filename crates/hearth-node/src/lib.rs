//! The node: runs workspaces on one host.
//!
//! It owns images, layers, overlay roots, user-namespace maps, cgroups and network
//! namespaces. The control plane reaches it only through [`NodeApi`], so a later split
//! into separate hosts changes the transport, not the contract.

mod api;
mod clone;
mod local;

pub use api::*;
pub use local::LocalNode;
