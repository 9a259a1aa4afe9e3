//! What rooms and the hub send to a member's session, and how they send
//! it: the sessions (in `ws/`) handle these messages; rooms never need to
//! know what a session is.

use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

use crate::domain::close;
use crate::metrics::Metrics;

/// What other actors send to a session.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub enum ToSession {
    /// A stored message of a joined room; dropped unless `seq` is new.
    Message {
        room: Arc<str>,
        seq: i64,
        frame: ByteString,
    },
    /// Any other frame (typing, presence, user-channel notices).
    Event(ByteString),
    /// The session was removed from a room (no longer a participant).
    Kicked {
        room: Arc<str>,
    },
    Close {
        code: u16,
        reason: &'static str,
    },
}

/// Queues a message for a session without ever blocking the sender. When
/// the session's queue is full (its client stopped reading), the session is
/// told to close with 1013 once it runs again, and `false` tells the caller
/// to stop sending to it: what one client does never grows server memory.
pub fn offer(recipient: &Recipient<ToSession>, message: ToSession, metrics: &Metrics) -> bool {
    match recipient.try_send(message) {
        Ok(()) => true,
        Err(SendError::Full(_)) => {
            metrics.slow_consumers_dropped.inc();
            recipient.do_send(ToSession::Close {
                code: close::SLOW_CONSUMER,
                reason: "not reading; reconnect and resume with since",
            });
            false
        }
        Err(SendError::Closed(_)) => false,
    }
}
