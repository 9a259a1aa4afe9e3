//! One actor per active support conversation: it answers the owner's
//! messages one at a time, in order, and stops answering on takeover.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::json;

use super::director::{AgentIdle, AgentStopped, SupportDirector, SupportShared};
use super::provider::{stream_words, ProviderError, ReplyRequest, ReplySink, Speaker, Turn};
use super::tools::ConversationTools;
use super::SupportServices;
use super::{post_notice, wants_human, AGENT_NAME, AGENT_ROLE, ESCALATION_NOTICE, NOTICE_ROLE};
use crate::db::messages::{Action, NewMessage};
use crate::db::models::MessageRow;
use crate::db::support::{usage_day, Escalation};
use crate::rooms::hub::RoomBroadcast;
use crate::rooms::sequencer::StoredMessage;

/// What the user is told instead of an answer, by cause.
const NOTICE_BUSY: &str = "The AI assistant is very busy right now and couldn't answer. \
Please send your message again in a minute, or say \"talk to a human\" to reach the support team.";
const NOTICE_TIMEOUT: &str = "The AI assistant took too long to answer, so I stopped waiting. \
Please send your message again, or say \"talk to a human\" to reach the support team.";
const NOTICE_INTERRUPTED: &str = "The AI assistant's answer was interrupted before it was \
complete, so it was not saved. Please send your message again, or say \"talk to a human\" to \
reach the support team.";
const NOTICE_FAILED: &str = "The AI assistant couldn't answer because of a technical problem. \
Please try again later, or say \"talk to a human\" to reach the support team.";
const NOTICE_EMPTY: &str = "The AI assistant had no answer to that. Please rephrase your \
message, or say \"talk to a human\" to reach the support team.";
const NOTICE_RATE_LIMITED: &str = "You're sending messages faster than the AI assistant can \
answer, so this one was not answered. Please wait a moment and send it again.";
const NOTICE_BUDGET: &str = "You've reached today's limit for the AI assistant. Say \"talk to \
a human\" and a person from the support team will help you, or come back tomorrow.";

const REPLY_ESCALATED: &str = "Of course. I've asked a person from the Mixroom support team to \
join this conversation; they'll reply right here. Until then, I'm happy to keep helping.";
const REPLY_ALREADY_ESCALATED: &str = "The Mixroom support team already knows you'd like to \
talk to a person, and someone will reply right here as soon as possible. Until then, I'm happy \
to keep helping.";

/// A user message of this conversation, committed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UserTurn(pub Arc<StoredMessage>);

/// An admin took over: drop the answer in progress and everything queued.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAnswering;

/// The director let this agent go (it was idle).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAgent;

pub struct ConversationAgent {
    conversation_id: String,
    room: String,
    shared: Arc<SupportShared>,
    director: Addr<SupportDirector>,
    queue: VecDeque<Arc<StoredMessage>>,
    /// The answer being produced and the id its deltas carry.
    answering: Option<(SpawnHandle, String)>,
    turns_seen: u64,
    idle_check: Option<SpawnHandle>,
}

impl ConversationAgent {
    pub fn new(
        conversation_id: String,
        shared: Arc<SupportShared>,
        director: Addr<SupportDirector>,
    ) -> Self {
        ConversationAgent {
            room: super::room_of(&conversation_id),
            conversation_id,
            shared,
            director,
            queue: VecDeque::new(),
            answering: None,
            turns_seen: 0,
            idle_check: None,
        }
    }

    fn answer_next(&mut self, ctx: &mut Context<Self>) {
        if self.answering.is_some() {
            return;
        }
        let Some(message) = self.queue.pop_front() else {
            self.schedule_idle_check(ctx);
            return;
        };
        let reply_id = uuid::Uuid::now_v7().to_string();
        let answer = Answer {
            state: self.shared.state.clone(),
            shared: self.shared.clone(),
            conversation_id: self.conversation_id.clone(),
            room: self.room.clone(),
            reply_id: reply_id.clone(),
        };
        let handle = ctx.spawn(
            async move { answer.run(&message.row).await }
                .into_actor(self)
                .map(|(), agent, ctx| {
                    agent.answering = None;
                    agent.answer_next(ctx);
                }),
        );
        self.answering = Some((handle, reply_id));
    }

    fn schedule_idle_check(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.idle_check.take() {
            ctx.cancel_future(handle);
        }
        let idle = Duration::from_secs(self.shared.state.ai.agent_idle_secs);
        self.idle_check = Some(ctx.run_later(idle, |agent, _| {
            agent.idle_check = None;
            if agent.answering.is_none() && agent.queue.is_empty() {
                agent.director.do_send(AgentIdle {
                    conversation_id: agent.conversation_id.clone(),
                    turns_seen: agent.turns_seen,
                });
            }
        }));
    }
}

impl Actor for ConversationAgent {
    type Context = Context<Self>;

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.director.do_send(AgentStopped {
            conversation_id: self.conversation_id.clone(),
            addr: ctx.address(),
        });
    }
}

impl Handler<UserTurn> for ConversationAgent {
    type Result = ();

    fn handle(&mut self, msg: UserTurn, ctx: &mut Context<Self>) {
        self.turns_seen += 1;
        if let Some(handle) = self.idle_check.take() {
            ctx.cancel_future(handle);
        }
        self.queue.push_back(msg.0);
        self.answer_next(ctx);
    }
}

impl Handler<StopAnswering> for ConversationAgent {
    type Result = ();

    fn handle(&mut self, _: StopAnswering, ctx: &mut Context<Self>) {
        self.queue.clear();
        if let Some((handle, reply_id)) = self.answering.take() {
            ctx.cancel_future(handle);
            // Clients drop the pieces they showed; nothing was stored.
            broadcast_aborted(&self.shared.state, &self.room, &reply_id, "taken_over");
        }
        self.schedule_idle_check(ctx);
    }
}

impl Handler<StopAgent> for ConversationAgent {
    type Result = ();

    fn handle(&mut self, _: StopAgent, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Everything one answer needs, owned, so it can run as a future.
struct Answer {
    state: Arc<SupportServices>,
    shared: Arc<SupportShared>,
    conversation_id: String,
    room: String,
    reply_id: String,
}

impl Answer {
    async fn run(self, message: &MessageRow) {
        if let Err(error) = self.try_answer(message).await {
            tracing::error!(%error, conversation = %self.conversation_id, "support answer failed");
        }
    }

    async fn try_answer(&self, message: &MessageRow) -> Result<(), super::SupportError> {
        let Some(user_id) = message.sender_id.as_deref() else {
            return Ok(());
        };
        // Only the owner's messages are answered, each once, and none after
        // a takeover: the store decides, so this holds across nodes too.
        if !self
            .state
            .db
            .claim_support_turn(&self.conversation_id, user_id, message.seq)
            .await?
        {
            return Ok(());
        }
        let notice_key = Some(format!("notice:{}", message.id));
        let mut stream = ReplyStream::new(&self.state, &self.room, &self.reply_id);

        if wants_human(&message.body) {
            // Each escalation notifies and emails every admin: a budget
            // per user (limits.support_escalations_per_hour), spent only
            // by a conversation that has not asked yet.
            let asked_before = self
                .state
                .db
                .find_support_conversation(&self.conversation_id)
                .await?
                .is_none_or(|c| c.status != crate::db::support::ConversationStatus::Ai);
            let outcome = if asked_before {
                Escalation::AlreadyRequested
            } else if self
                .state
                .limiters
                .check_support_escalation(user_id)
                .is_err()
            {
                self.state
                    .metrics
                    .rate_limited
                    .with_label_values(&["support"])
                    .inc();
                Escalation::AlreadyRequested
            } else {
                super::escalate(
                    &self.state,
                    &self.conversation_id,
                    "The user asked to talk to a person.",
                )
                .await?
            };
            let text = match outcome {
                Escalation::Escalated => REPLY_ESCALATED,
                Escalation::AlreadyRequested | Escalation::Missing => REPLY_ALREADY_ESCALATED,
            };
            stream_words(&mut stream, text, self.word_delay()).await;
            self.store_reply(message, stream.text).await?;
            if outcome == Escalation::Escalated {
                self.post_escalation_notice().await?;
            }
            return Ok(());
        }

        if self.shared.limiter.check_key(&user_id.to_owned()).is_err() {
            self.state
                .metrics
                .rate_limited
                .with_label_values(&["agent"])
                .inc();
            return post_notice(
                &self.state.sequencer,
                &self.room,
                notice_key,
                NOTICE_RATE_LIMITED,
            )
            .await;
        }
        let provider = &self.shared.provider;
        let day = usage_day(crate::time::now_ms());
        if provider.uses_tokens() {
            let used = self.state.db.support_tokens_used(user_id, day).await?;
            if used >= self.state.ai.daily_token_budget as i64 {
                return post_notice(&self.state.sequencer, &self.room, notice_key, NOTICE_BUDGET)
                    .await;
            }
        }

        let request = ReplyRequest {
            history: self.history(user_id, message.seq).await?,
        };
        let tools = ConversationTools::new(self.state.clone(), &self.conversation_id, user_id);
        let asked = std::time::Instant::now();
        let result = provider.reply(&request, &tools, &mut stream).await;
        let tokens = stream.input_tokens + stream.output_tokens;
        let metrics = &self.state.metrics;
        metrics.agent_tokens.inc_by(tokens);
        match &result {
            Ok(()) => metrics
                .agent_answer_seconds
                .observe(asked.elapsed().as_secs_f64()),
            Err(_) => metrics
                .agent_failures
                .with_label_values(&[provider.name()])
                .inc(),
        }
        if tokens > 0 {
            self.state
                .db
                .add_support_tokens(user_id, day, tokens as i64)
                .await?;
        }
        match result {
            Ok(()) if !stream.text.trim().is_empty() => {
                self.store_reply(message, stream.text).await?;
            }
            outcome => {
                let notice = match &outcome {
                    Ok(()) => NOTICE_EMPTY,
                    Err(error) => {
                        tracing::warn!(
                            %error,
                            provider = provider.name(),
                            conversation = %self.conversation_id,
                            "support provider failed"
                        );
                        notice_for(error)
                    }
                };
                if stream.streamed {
                    broadcast_aborted(&self.state, &self.room, &self.reply_id, "failed");
                }
                post_notice(&self.state.sequencer, &self.room, notice_key, notice).await?;
            }
        }
        if tools.escalated() {
            self.post_escalation_notice().await?;
        }
        Ok(())
    }

    fn word_delay(&self) -> Duration {
        Duration::from_millis(self.state.ai.embedded_word_delay_ms)
    }

    /// The conversation up to and including message `seq`, bounded, as the
    /// provider sees it: the owner's words and the answers they got
    /// (notices are left out: they are for the user, not the model), as
    /// each message stands now (edited text; deleted ones left out).
    async fn history(&self, owner: &str, seq: i64) -> Result<Vec<Turn>, super::SupportError> {
        let limit = self.state.ai.history_messages as i64;
        let (mut rows, _) = self
            .state
            .db
            .messages_before(&self.room, Some(seq + 1), limit)
            .await?;
        rows.reverse();
        Ok(rows
            .into_iter()
            .filter(|row| row.is_live_message() && row.sender_role != NOTICE_ROLE)
            .map(|row| {
                let speaker =
                    if row.sender_role != AGENT_ROLE && row.sender_id.as_deref() == Some(owner) {
                        Speaker::User
                    } else {
                        Speaker::Assistant
                    };
                Turn {
                    speaker,
                    text: row.body,
                }
            })
            .collect())
    }

    /// Stores the complete answer under the id its deltas carried.
    async fn store_reply(
        &self,
        answered: &MessageRow,
        body: String,
    ) -> Result<(), super::SupportError> {
        self.state
            .sequencer
            .append(NewMessage {
                id: Some(self.reply_id.clone()),
                room: self.room.clone(),
                sender_id: None,
                sender_name: AGENT_NAME.to_owned(),
                sender_role: AGENT_ROLE.to_owned(),
                client_id: Some(format!("reply:{}", answered.id)),
                body,
                action: Action::MESSAGE,
            })
            .await
            .map_err(|e| super::SupportError::Store(e.to_string()))?;
        Ok(())
    }

    async fn post_escalation_notice(&self) -> Result<(), super::SupportError> {
        let key = Some(format!("escalated:{}", self.conversation_id));
        post_notice(&self.state.sequencer, &self.room, key, ESCALATION_NOTICE).await
    }
}

fn notice_for(error: &ProviderError) -> &'static str {
    match error {
        ProviderError::Overloaded | ProviderError::RateLimited => NOTICE_BUSY,
        ProviderError::Timeout(_) => NOTICE_TIMEOUT,
        ProviderError::Interrupted(_) => NOTICE_INTERRUPTED,
        ProviderError::Api { .. } | ProviderError::Transport(_) | ProviderError::Protocol(_) => {
            NOTICE_FAILED
        }
    }
}

/// `{"type":"message.aborted","room","id","reason"}`: the pieces streamed
/// under `id` will not become a message.
fn broadcast_aborted(state: &SupportServices, room: &str, id: &str, reason: &str) {
    let frame = json!({"type": "message.aborted", "room": room, "id": id, "reason": reason});
    state.hub.do_send(RoomBroadcast {
        room: room.to_owned(),
        frame: frame.to_string().into(),
    });
}

/// Forwards each piece to the room as `message.delta` and keeps the whole.
struct ReplyStream {
    hub: Addr<crate::rooms::hub::Hub>,
    room: String,
    id: String,
    text: String,
    streamed: bool,
    input_tokens: u64,
    output_tokens: u64,
}

impl ReplyStream {
    fn new(state: &SupportServices, room: &str, id: &str) -> Self {
        ReplyStream {
            hub: state.hub.clone(),
            room: room.to_owned(),
            id: id.to_owned(),
            text: String::new(),
            streamed: false,
            input_tokens: 0,
            output_tokens: 0,
        }
    }
}

impl ReplySink for ReplyStream {
    fn text(&mut self, delta: &str) {
        if delta.is_empty() {
            return;
        }
        self.text.push_str(delta);
        self.streamed = true;
        let frame = json!({
            "type": "message.delta",
            "room": self.room,
            "id": self.id,
            "delta": delta,
        });
        self.hub.do_send(RoomBroadcast {
            room: self.room.clone(),
            frame: frame.to_string().into(),
        });
    }

    fn tokens(&mut self, input: u64, output: u64) {
        self.input_tokens += input;
        self.output_tokens += output;
    }
}
