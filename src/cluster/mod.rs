//! Several nodes behaving as one server, through Redis: cross-node fan-out
//! over pub/sub (a node subscribes to a room's or a user's channel only
//! while it has members or sessions there), and presence with leases.
//!
//! PostgreSQL stays the source of truth (sequences, messages, outbox);
//! Redis only carries what is already stored, or ephemeral frames. A lost
//! pub/sub message is recovered from the store: rooms fill seq gaps and
//! resynchronise after the broker reconnects.
//!
//! Without `broker.redis_url`, [`Cluster::single_node`] makes every call a
//! no-op and the same code serves one node.

mod link;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;
use serde::{Deserialize, Serialize};

use crate::db::messages::EntryContext;
use crate::db::models::MessageRow;

pub use link::Inbound;

/// What nodes tell each other. Frames travel pre-serialised.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClusterEvent {
    /// An entry (a message or a change to one) committed on the sending
    /// node. `context` is absent from a node of an earlier release: the
    /// room then reads the entry back from the store.
    Message {
        row: Box<MessageRow>,
        #[serde(default)]
        context: Option<Box<EntryContext>>,
    },
    /// A frame for a room's members, except some users' sessions.
    RoomFrame {
        frame: String,
        except_users: Vec<String>,
    },
    /// A frame for a user's sessions (the `user:` channel).
    UserFrame { frame: String },
    /// The booking's participants changed.
    RoomChanged,
    /// Close every session of the user (their data was erased).
    CloseUser,
    /// Someone's presence in the room changed: re-read the presence set.
    PresenceChanged,
}

/// A pub/sub channel: one per room and one per user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    Room(String),
    User(String),
}

impl Channel {
    fn name(&self) -> String {
        match self {
            Channel::Room(room) => format!("mixroom:room:{room}"),
            Channel::User(user) => format!("mixroom:user:{user}"),
        }
    }

    fn parse(name: &str) -> Option<Channel> {
        if let Some(room) = name.strip_prefix("mixroom:room:") {
            Some(Channel::Room(room.to_owned()))
        } else {
            name.strip_prefix("mixroom:user:")
                .map(|user| Channel::User(user.to_owned()))
        }
    }
}

/// The node's link to the others; cheap to clone.
#[derive(Clone)]
pub struct Cluster(Option<Arc<link::Link>>);

impl Cluster {
    pub fn single_node() -> Self {
        Cluster(None)
    }

    /// Connects to Redis. `inbound` receives what other nodes publish.
    /// `broker.redis_url` (`rediss://` for TLS, trusting `broker.tls_ca_file`
    /// when set).
    pub async fn connect(
        broker: &crate::config::BrokerSettings,
        lease: Duration,
        inbound: Recipient<Inbound>,
    ) -> Result<Self, redis::RedisError> {
        use secrecy::ExposeSecret;
        let url = broker.redis_url.expose_secret();
        Ok(Cluster(Some(
            link::Link::connect(url, &broker.tls_ca_file, lease, inbound).await?,
        )))
    }

    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// `None` on a single node; otherwise whether Redis answers now.
    pub fn is_healthy(&self) -> Option<bool> {
        self.0.as_ref().map(|link| link.is_healthy())
    }

    /// How long a presence entry lives without being refreshed.
    pub fn lease(&self) -> Option<Duration> {
        self.0.as_ref().map(|link| link.lease)
    }

    pub fn publish(&self, channel: Channel, event: ClusterEvent) {
        if let Some(link) = &self.0 {
            link.publish(&channel, event);
        }
    }

    pub fn subscribe(&self, channel: Channel) {
        if let Some(link) = &self.0 {
            link.subscribe(&channel);
        }
    }

    pub fn unsubscribe(&self, channel: Channel) {
        if let Some(link) = &self.0 {
            link.unsubscribe(&channel);
        }
    }

    /// Renews this node's presence lease for `present` users of `room`,
    /// removes `gone`, then tells the room's other nodes to look again.
    pub async fn update_room_presence(&self, room: &str, present: Vec<String>, gone: Vec<String>) {
        if let Some(link) = &self.0 {
            let key = presence_key_room(room);
            link.remove(&key, gone.iter().map(|u| link.member(u)).collect())
                .await;
            link.renew(&key, present.iter().map(|u| link.member(u)).collect())
                .await;
            link.publish(
                &Channel::Room(room.to_owned()),
                ClusterEvent::PresenceChanged,
            );
        }
    }

    /// Renews this node's leases in `room` without announcing anything.
    pub async fn renew_room_presence(&self, room: &str, present: Vec<String>) {
        if let Some(link) = &self.0 {
            let members = present.iter().map(|u| link.member(u)).collect();
            link.renew(&presence_key_room(room), members).await;
        }
    }

    /// Users present in `room` on other nodes (leases not expired); `None`
    /// when that cannot be known now. A single node has none.
    pub async fn remote_room_presence(&self, room: &str) -> Option<HashSet<String>> {
        let Some(link) = &self.0 else {
            return Some(HashSet::new());
        };
        let members = link.live_members(&presence_key_room(room)).await?;
        Some(
            members
                .iter()
                .filter_map(|member| member.split_once('|'))
                .filter(|(_, node)| *node != link.node_id)
                .map(|(user, _)| user.to_owned())
                .collect(),
        )
    }

    /// Renews this node's user-level leases (`present`) and drops `gone`.
    pub async fn update_user_presence(&self, present: Vec<String>, gone: Vec<String>) {
        if let Some(link) = &self.0 {
            for user in gone {
                link.remove(&presence_key_user(&user), vec![link.node_id.clone()])
                    .await;
            }
            for user in present {
                link.renew(&presence_key_user(&user), vec![link.node_id.clone()])
                    .await;
            }
        }
    }

    /// Whether the user has a live session on another node.
    pub async fn online_elsewhere(&self, user_id: &str) -> bool {
        let Some(link) = &self.0 else {
            return false;
        };
        link.live_members(&presence_key_user(user_id))
            .await
            .is_some_and(|nodes| nodes.iter().any(|node| *node != link.node_id))
    }
}

fn presence_key_room(room: &str) -> String {
    format!("mixroom:presence:room:{room}")
}

fn presence_key_user(user: &str) -> String {
    format!("mixroom:presence:user:{user}")
}
