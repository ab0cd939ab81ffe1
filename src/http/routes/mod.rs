//! The route families, one file each: what a resolved request does. They
//! use the helpers of `http` and never one another, so a new family
//! (classes' methods, map) lands beside them without touching them.

pub mod calls;
pub mod docs;
pub mod health;
pub mod invoke;
pub mod map;
pub mod metrics;
pub mod passthrough;
pub mod spawn;
pub mod stream;
pub mod work;
