//! hearth-cgroups
