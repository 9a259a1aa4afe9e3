//! WebSocket close codes of the contract (`docs/protocol.md`).

/// Authentication failed, a frame came before `auth`, or the account's
/// data was erased.
pub const AUTH_FAILED: u16 = 4001;
/// No `auth` within `server.auth_timeout_ms`.
pub const AUTH_TIMEOUT: u16 = 4008;
/// Past `limits.flood_strikes` rate-limited frames in a row.
pub const FLOODING: u16 = 4029;
/// Too many connections (per user or per address).
pub const POLICY: u16 = 1008;
/// The client stopped reading and its queue filled up: reconnect and
/// resume with `since`.
pub const SLOW_CONSUMER: u16 = 1013;
