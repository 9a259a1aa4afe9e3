//! The director: sees every message committed on this node, and routes the
//! people's messages of support rooms to their conversation's agent,
//! starting it on demand and letting it go when idle.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::agent::{ConversationAgent, StopAgent, StopAnswering, UserTurn};
use super::provider::SupportProvider;
use super::{conversation_of, SupportRuntime, SupportServices, AGENT_ROLE, NOTICE_ROLE};
use crate::rooms::sequencer::Committed;

/// What every conversation's agent shares.
pub struct SupportShared {
    pub state: Arc<SupportServices>,
    pub provider: Arc<dyn SupportProvider>,
    /// Agent answers per user, across conversations.
    pub limiter: DefaultKeyedRateLimiter<String>,
}

struct AgentEntry {
    addr: Addr<ConversationAgent>,
    /// Turns forwarded; an agent may stop only when it has seen them all.
    turns_forwarded: u64,
}

pub struct SupportDirector {
    shared: Arc<SupportShared>,
    agents: HashMap<String, AgentEntry>,
}

impl SupportDirector {
    pub fn new(state: Arc<SupportServices>, runtime: SupportRuntime) -> Self {
        let per_minute = NonZeroU32::new(state.ai.requests_per_minute).unwrap_or(NonZeroU32::MIN);
        SupportDirector {
            shared: Arc::new(SupportShared {
                state,
                provider: runtime.provider,
                limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            }),
            agents: HashMap::new(),
        }
    }

    fn agent(&mut self, conversation_id: &str, ctx: &mut Context<Self>) -> &mut AgentEntry {
        let shared = self.shared.clone();
        self.agents
            .entry(conversation_id.to_owned())
            .or_insert_with(|| AgentEntry {
                addr: ConversationAgent::new(conversation_id.to_owned(), shared, ctx.address())
                    .start(),
                turns_forwarded: 0,
            })
    }
}

impl Actor for SupportDirector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(60), |director, _| {
            director.shared.limiter.retain_recent();
        });
    }
}

impl Handler<Committed> for SupportDirector {
    type Result = ();

    fn handle(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        for message in msg.0 {
            let row = &message.row;
            let Some(conversation_id) = conversation_of(&row.room) else {
                continue;
            };
            // The agent's own answers and notices are not questions; which
            // person wrote (owner or admin) the agent checks against the store.
            // Edits, deletions and reactions ask nothing either.
            if !row.is_message()
                || row.sender_id.is_none()
                || row.sender_role == AGENT_ROLE
                || row.sender_role == NOTICE_ROLE
            {
                continue;
            }
            let conversation_id = conversation_id.to_owned();
            let entry = self.agent(&conversation_id, ctx);
            entry.turns_forwarded += 1;
            entry.addr.do_send(UserTurn(message.clone()));
        }
    }
}

/// An admin took over a conversation.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TakenOver {
    pub conversation_id: String,
}

impl Handler<TakenOver> for SupportDirector {
    type Result = ();

    fn handle(&mut self, msg: TakenOver, _: &mut Context<Self>) {
        if let Some(entry) = self.agents.get(&msg.conversation_id) {
            entry.addr.do_send(StopAnswering);
        }
    }
}

/// An agent has had nothing to do for a while.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentIdle {
    pub conversation_id: String,
    pub turns_seen: u64,
}

impl Handler<AgentIdle> for SupportDirector {
    type Result = ();

    fn handle(&mut self, msg: AgentIdle, _: &mut Context<Self>) {
        let idle = self
            .agents
            .get(&msg.conversation_id)
            .is_some_and(|entry| entry.turns_forwarded == msg.turns_seen);
        if idle {
            if let Some(entry) = self.agents.remove(&msg.conversation_id) {
                entry.addr.do_send(StopAgent);
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentStopped {
    pub conversation_id: String,
    pub addr: Addr<ConversationAgent>,
}

impl Handler<AgentStopped> for SupportDirector {
    type Result = ();

    fn handle(&mut self, msg: AgentStopped, _: &mut Context<Self>) {
        if self
            .agents
            .get(&msg.conversation_id)
            .is_some_and(|entry| entry.addr == msg.addr)
        {
            self.agents.remove(&msg.conversation_id);
        }
    }
}
