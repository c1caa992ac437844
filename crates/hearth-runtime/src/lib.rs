//! hearth-runtime
