//! The agent's tools, bound to one conversation and its owner when made:
//! the provider can only ever ask about the user it is talking to.

use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::BoxFuture;
use std::sync::Arc;

use super::provider::{SupportTools, ToolError};
use super::SupportServices;
use crate::db::support::{BookingFact, Escalation};

/// Bookings looked up at most per call.
const BOOKINGS_LIMIT: i64 = 20;

pub struct ConversationTools {
    state: Arc<SupportServices>,
    conversation_id: String,
    /// The conversation's owner, from the store, never from the model.
    user_id: String,
    escalated: AtomicBool,
}

impl ConversationTools {
    pub fn new(state: Arc<SupportServices>, conversation_id: &str, user_id: &str) -> Self {
        ConversationTools {
            state,
            conversation_id: conversation_id.to_owned(),
            user_id: user_id.to_owned(),
            escalated: AtomicBool::new(false),
        }
    }

    /// Whether a call escalated the conversation (its notice is then due).
    pub fn escalated(&self) -> bool {
        self.escalated.load(Ordering::Relaxed)
    }
}

impl SupportTools for ConversationTools {
    fn my_bookings(&self) -> BoxFuture<'_, Result<Vec<BookingFact>, ToolError>> {
        Box::pin(async move {
            Ok(self
                .state
                .db
                .booking_facts_of(&self.user_id, BOOKINGS_LIMIT)
                .await?)
        })
    }

    fn escalate(&self, reason: String) -> BoxFuture<'_, Result<Escalation, ToolError>> {
        Box::pin(async move {
            if self
                .state
                .limiters
                .check_support_escalation(&self.user_id)
                .is_err()
            {
                return Ok(Escalation::AlreadyRequested);
            }
            let outcome = super::escalate(&self.state, &self.conversation_id, &reason)
                .await
                .map_err(|e| ToolError::Support(e.to_string()))?;
            if outcome == Escalation::Escalated {
                self.escalated.store(true, Ordering::Relaxed);
            }
            Ok(outcome)
        })
    }
}
