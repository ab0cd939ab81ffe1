//! Processes that functions start: their groups, the parent-death signal,
//! and reaping what escapes them.
