//! hearth-net
