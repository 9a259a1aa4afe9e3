//! The leaf of the crate: what the product's words mean (room names, the
//! frames of the wire, close codes, roles, support and email states), with errors of
//! their own. It depends on nothing else of this crate, so rooms, sessions,
//! routes and the store can all use it without depending on each other.

#[macro_use]
mod text_enum;

pub mod announcement;
pub mod booking;
pub mod chat;
pub mod close;
pub mod email;
pub mod reminder;
pub mod role;
pub mod room;
pub mod support;
pub mod wire;
