//! The AI support agent of `support:<id>` rooms.
//!
//! - [`director::SupportDirector`] watches committed messages and hands each
//!   user message of a support room to that conversation's
//!   [`agent::ConversationAgent`], started on demand: one actor per active
//!   conversation, so its answers are produced one at a time, in order.
//! - The agent claims the turn in the store (each message is answered once,
//!   also with several nodes), applies the per-user rate limit and daily
//!   token budget, and streams the provider's answer as `message.delta`
//!   frames under an id chosen up front, then stores the whole answer as
//!   a `message` with that id. A failed answer is not stored; the user
//!   gets a `system` notice saying what happened.
//! - Two providers behind [`provider::SupportProvider`]: the Anthropic
//!   Messages API when `ai.anthropic_api_key` is set, else the embedded
//!   knowledge base.
//! - Escalation (asked for by the user, or by the model's tool) notifies
//!   admins in-app; an admin's takeover silences the agent.

pub mod agent;
pub mod anthropic;
pub mod director;
pub mod embedded;
pub mod knowledge;
pub mod provider;
pub mod tools;

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use secrecy::ExposeSecret;

use crate::config::AiSettings;
use crate::db::messages::{Action, NewMessage};
use crate::db::models::NotificationRow;
use crate::db::support::Escalation;
use crate::db::{Db, DbError};
use crate::error::AppError;
use crate::limits::Limiters;
use crate::metrics::Metrics;
use crate::notifications::Inbox;
use crate::rooms::hub::Hub;
use crate::rooms::sequencer::Sequencer;
use director::SupportDirector;
use provider::SupportProvider;

/// How the agent signs its messages (`sender.name`, role `agent`).
pub const AGENT_NAME: &str = "Mixroom Assistant";
pub const AGENT_ROLE: &str = "agent";
/// How notices are signed (`sender.name`, role `system`).
pub const NOTICE_NAME: &str = "Mixroom";
pub const NOTICE_ROLE: &str = "system";

const ROOM_PREFIX: &str = "support:";

#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    #[error("no such support conversation")]
    NoSuchConversation,
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot store a support message: {0}")]
    Store(String),
    #[error("support agent setup: {0}")]
    Setup(String),
}

/// The support layer's errors as callers see them (`error.rs` knows
/// nothing of support).
impl From<SupportError> for AppError {
    fn from(error: SupportError) -> Self {
        match error {
            SupportError::NoSuchConversation => AppError::NotFound(error.to_string()),
            other => AppError::Internal(other.into()),
        }
    }
}

pub fn room_of(conversation_id: &str) -> String {
    format!("{ROOM_PREFIX}{conversation_id}")
}

pub fn conversation_of(room: &str) -> Option<&str> {
    room.strip_prefix(ROOM_PREFIX)
}

/// Mixroom's support policies, the system prompt unless `ai.prompt_file`
/// names another.
const BUILT_IN_PROMPT: &str = include_str!("../../config/support_prompt.md");

/// What the support agents share, built once at startup.
pub struct SupportRuntime {
    pub provider: Arc<dyn SupportProvider>,
}

impl SupportRuntime {
    /// Picks the provider and loads the file it answers from, so a missing
    /// or broken prompt or knowledge base stops the server at start.
    pub fn load(settings: &AiSettings) -> Result<Self, SupportError> {
        let provider: Arc<dyn SupportProvider> =
            if settings.anthropic_api_key.expose_secret().is_empty() {
                let knowledge = if settings.knowledge_base_file.as_os_str().is_empty() {
                    knowledge::KnowledgeBase::built_in()?
                } else {
                    knowledge::KnowledgeBase::load(&settings.knowledge_base_file)?
                };
                Arc::new(embedded::EmbeddedProvider::new(
                    knowledge,
                    Duration::from_millis(settings.embedded_word_delay_ms),
                ))
            } else {
                let path = &settings.prompt_file;
                let prompt = if path.as_os_str().is_empty() {
                    BUILT_IN_PROMPT.to_owned()
                } else {
                    std::fs::read_to_string(path).map_err(|e| {
                        SupportError::Setup(format!("cannot read prompt {}: {e}", path.display()))
                    })?
                };
                if prompt.trim().is_empty() {
                    return Err(SupportError::Setup(format!(
                        "the prompt file {} is empty",
                        path.display()
                    )));
                }
                Arc::new(anthropic::AnthropicProvider::new(settings, prompt)?)
            };
        tracing::info!(provider = provider.name(), "support agent ready");
        Ok(SupportRuntime { provider })
    }
}

/// What the support agent uses of the server: these handles, not the
/// application state (made once, in `app`).
pub struct SupportServices {
    pub ai: AiSettings,
    pub db: Db,
    pub hub: Addr<Hub>,
    pub sequencer: Sequencer,
    pub limiters: Arc<Limiters>,
    pub metrics: Arc<Metrics>,
    pub inbox: Inbox,
}

/// Starts the director and lets it watch committed messages.
pub fn start(services: SupportServices, runtime: SupportRuntime) -> Addr<SupportDirector> {
    let hub = services.hub.clone();
    let director = SupportDirector::new(Arc::new(services), runtime).start();
    hub.do_send(crate::rooms::hub::WatchCommitted(
        director.clone().recipient(),
    ));
    director
}

/// Does the message ask for a person? Checked before any provider, so it
/// works without one (and without budget).
pub fn wants_human(text: &str) -> bool {
    let text: String = text
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    let text = format!(
        " {} ",
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    [
        " human ",
        " humans ",
        " real person ",
        " a person ",
        " real people ",
        " someone real ",
        " live agent ",
        " real agent ",
        " support agent ",
        " customer service ",
        " support team ",
        " representative ",
        " talk to someone ",
        " speak to someone ",
        " speak with someone ",
        " talk with someone ",
        " operator ",
    ]
    .iter()
    .any(|phrase| text.contains(phrase))
}

/// Stores a `system` notice in a support room; `key` makes it idempotent.
pub async fn post_notice(
    sequencer: &Sequencer,
    room: &str,
    key: Option<String>,
    body: &str,
) -> Result<(), SupportError> {
    sequencer
        .append(NewMessage {
            id: None,
            room: room.to_owned(),
            sender_id: None,
            sender_name: NOTICE_NAME.to_owned(),
            sender_role: NOTICE_ROLE.to_owned(),
            client_id: key,
            body: body.to_owned(),
            action: Action::MESSAGE,
        })
        .await
        .map_err(|e| SupportError::Store(e.to_string()))?;
    Ok(())
}

pub const ESCALATION_NOTICE: &str =
    "A member of the Mixroom support team has been notified and will reply in this conversation.";

/// Marks the conversation escalated and, the first time, notifies every
/// admin in-app. The notice in the room is the caller's, after its answer.
pub async fn escalate(
    state: &SupportServices,
    conversation_id: &str,
    reason: &str,
) -> Result<Escalation, SupportError> {
    let reason: String = reason.trim().chars().take(500).collect();
    let outcome = state
        .db
        .escalate_support_conversation(conversation_id, &reason)
        .await?;
    if outcome != Escalation::Escalated {
        return Ok(outcome);
    }
    let now = crate::time::now_ms();
    let mut created = Vec::new();
    for admin_id in state.db.admin_user_ids().await? {
        let row = NotificationRow {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: admin_id,
            kind: crate::domain::email::EmailKind::Support,
            title: "A support conversation needs a person".to_owned(),
            body: reason.clone(),
            link: Some(format!("/admin/support/conversations/{conversation_id}")),
            // One per admin and conversation, even if retried.
            source: Some(format!("support-escalation:{conversation_id}")),
            created_at: now,
            read_at: None,
            data: None,
            transactional: false,
        };
        let (row, is_new) = state.db.create_notification(row).await?;
        if is_new {
            created.push(row);
        }
    }
    state.inbox.push(&created);
    tracing::info!(
        conversation = conversation_id,
        admins = created.len(),
        "support conversation escalated"
    );
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_requests_for_a_person() {
        for text in [
            "I want to talk to a human",
            "Can I speak to a real person please?",
            "HUMAN!",
            "get me customer service",
            "Is there a live agent?",
        ] {
            assert!(wants_human(text), "{text}");
        }
        for text in [
            "How do I cancel?",
            "My agent booked the session",
            "I'm a humanist",
            "personal data export",
        ] {
            assert!(!wants_human(text), "{text}");
        }
    }
}
