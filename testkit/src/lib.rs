//! The test kit: what the API tests (`tests/api`) and the load generator
//! (`bench/`) both do as a client of the server, written once: tokens,
//! users, client frames, database URLs. Tokens are the server's own
//! claims signed by its own minting code, so a change to the token's shape
//! reaches every tool.

pub mod database;
pub mod frames;
pub mod tokens;
pub mod users;

pub use frames::{encode_client_frame, masked_text_frame};
pub use tokens::{claims, now_secs, sign, sign_with_pem};
pub use users::{User, JWT_SECRET};
