//! Clients of a gateway run from a terminal: `fngate call` calls a
//! function over HTTPS as any other client would.

pub mod call;
pub mod check;
pub mod deploy;
