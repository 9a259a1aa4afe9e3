//! Domain types and rules that need nothing of the rest of the crate.

pub mod email;
