//! The Redis connection of a node: one multiplexed RESP3 connection that
//! publishes, subscribes (pushes arrive on a channel, subscriptions are
//! restored by the client after a reconnect) and keeps presence leases.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Message, Recipient};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Channel, ClusterEvent};

/// What other nodes sent, or news about the link itself.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum Inbound {
    Event {
        channel: Channel,
        event: Box<ClusterEvent>,
    },
    /// Redis is back after an outage: what was published meanwhile is lost,
    /// so rooms re-read the store.
    Reconnected,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    node: String,
    event: ClusterEvent,
}

enum Command {
    Publish(String, String),
    Subscribe(String),
    Unsubscribe(String),
}

pub(super) struct Link {
    pub(super) node_id: String,
    pub(super) lease: Duration,
    redis: ConnectionManager,
    commands: mpsc::UnboundedSender<Command>,
    healthy: Arc<AtomicBool>,
}

const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

impl Link {
    pub(super) async fn connect(
        url: &str,
        tls_ca_file: &str,
        lease: Duration,
        inbound: Recipient<Inbound>,
    ) -> Result<Arc<Link>, redis::RedisError> {
        let info = url.into_connection_info()?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(settings);
        // `rediss://` builds its rustls config from the process's provider:
        // name the one this binary is built with (an error only means one
        // is already installed).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = if tls_ca_file.is_empty() {
            redis::Client::open(info)?
        } else {
            let root_cert = std::fs::read(tls_ca_file).map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "cannot read broker.tls_ca_file",
                    format!("{tls_ca_file}: {e}"),
                ))
            })?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )?
        };
        let (pushes, push_inbox) = mpsc::unbounded_channel::<PushInfo>();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(pushes)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let redis = ConnectionManager::new_with_config(client, config).await?;
        let node_id = uuid::Uuid::new_v4().to_string();
        let healthy = Arc::new(AtomicBool::new(true));
        let (commands, command_inbox) = mpsc::unbounded_channel();
        tokio::spawn(run_commands(redis.clone(), command_inbox));
        tokio::spawn(run_inbound(node_id.clone(), push_inbox, inbound.clone()));
        tokio::spawn(watch_health(redis.clone(), healthy.clone(), inbound));
        tracing::info!(node = %node_id, "joined the cluster");
        Ok(Arc::new(Link {
            node_id,
            lease,
            redis,
            commands,
            healthy,
        }))
    }

    pub(super) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(super) fn publish(&self, channel: &Channel, event: ClusterEvent) {
        let envelope = Envelope {
            node: self.node_id.clone(),
            event,
        };
        match serde_json::to_string(&envelope) {
            Ok(payload) => {
                let _ = self
                    .commands
                    .send(Command::Publish(channel.name(), payload));
            }
            Err(error) => tracing::error!(%error, "cannot encode a cluster event"),
        }
    }

    pub(super) fn subscribe(&self, channel: &Channel) {
        let _ = self.commands.send(Command::Subscribe(channel.name()));
    }

    pub(super) fn unsubscribe(&self, channel: &Channel) {
        let _ = self.commands.send(Command::Unsubscribe(channel.name()));
    }

    /// A presence member of this node.
    pub(super) fn member(&self, user: &str) -> String {
        format!("{user}|{}", self.node_id)
    }

    /// Sets the members' lease to now + lease (sorted set scored by expiry).
    pub(super) async fn renew(&self, key: &str, members: Vec<String>) {
        if members.is_empty() {
            return;
        }
        let expires = crate::time::now_ms() + self.lease.as_millis() as i64;
        let mut pipe = redis::pipe();
        for member in &members {
            pipe.zadd(key, member, expires).ignore();
        }
        // Dead nodes' entries are ignored once expired; the key itself
        // goes when nobody renews it.
        pipe.pexpire(key, 2 * self.lease.as_millis() as i64)
            .ignore();
        let mut redis = self.redis.clone();
        if let Err(error) = pipe.query_async::<()>(&mut redis).await {
            tracing::debug!(%error, "presence renew failed");
        }
    }

    pub(super) async fn remove(&self, key: &str, members: Vec<String>) {
        if members.is_empty() {
            return;
        }
        let mut redis = self.redis.clone();
        let result: Result<(), _> = redis::cmd("ZREM")
            .arg(key)
            .arg(members)
            .query_async(&mut redis)
            .await;
        if let Err(error) = result {
            tracing::debug!(%error, "presence removal failed");
        }
    }

    /// Members whose lease has not expired; `None` if Redis did not answer.
    pub(super) async fn live_members(&self, key: &str) -> Option<Vec<String>> {
        let mut redis = self.redis.clone();
        redis::cmd("ZRANGEBYSCORE")
            .arg(key)
            .arg(crate::time::now_ms())
            .arg("+inf")
            .query_async(&mut redis)
            .await
            .map_err(|error| tracing::debug!(%error, "presence read failed"))
            .ok()
    }
}

/// Sends commands in the order they were issued (so a room's messages are
/// published in seq order and a subscribe is not overtaken by its
/// unsubscribe); publishes waiting together go out as one pipeline.
async fn run_commands(mut redis: ConnectionManager, mut inbox: mpsc::UnboundedReceiver<Command>) {
    let mut batch = Vec::new();
    while let Some(first) = inbox.recv().await {
        batch.push(first);
        while batch.len() < 1024 {
            match inbox.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        for command in batch.drain(..) {
            match command {
                Command::Publish(channel, payload) => {
                    pipe.publish(channel, payload).ignore();
                }
                Command::Subscribe(channel) => {
                    if !pipe.is_empty() {
                        send_pipeline(&mut redis, &pipe).await;
                        pipe = redis::pipe();
                    }
                    if let Err(error) = redis.subscribe(&channel).await {
                        tracing::warn!(%error, %channel, "subscribe failed");
                    }
                }
                Command::Unsubscribe(channel) => {
                    if !pipe.is_empty() {
                        send_pipeline(&mut redis, &pipe).await;
                        pipe = redis::pipe();
                    }
                    if let Err(error) = redis.unsubscribe(&channel).await {
                        tracing::debug!(%error, %channel, "unsubscribe failed");
                    }
                }
            }
        }
        if !pipe.is_empty() {
            send_pipeline(&mut redis, &pipe).await;
        }
    }
}

async fn send_pipeline(redis: &mut ConnectionManager, pipe: &redis::Pipeline) {
    if let Err(error) = pipe.query_async::<()>(redis).await {
        // Local delivery does not depend on this; other nodes recover
        // from the store after the outage.
        tracing::warn!(%error, "publish to the cluster failed");
    }
}

async fn run_inbound(
    node_id: String,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    inbound: Recipient<Inbound>,
) {
    while let Some(push) = pushes.recv().await {
        if push.kind != PushKind::Message {
            continue;
        }
        let [Value::BulkString(channel), Value::BulkString(payload)] = push.data.as_slice() else {
            continue;
        };
        let Some(channel) = std::str::from_utf8(channel).ok().and_then(Channel::parse) else {
            continue;
        };
        match serde_json::from_slice::<Envelope>(payload) {
            Ok(envelope) if envelope.node == node_id => {}
            Ok(envelope) => inbound.do_send(Inbound::Event {
                channel,
                event: Box::new(envelope.event),
            }),
            Err(error) => tracing::warn!(%error, "unreadable cluster event"),
        }
    }
}

/// Pings Redis every second: drives the reconnect, feeds `/readyz`, and
/// announces the end of an outage.
async fn watch_health(
    mut redis: ConnectionManager,
    healthy: Arc<AtomicBool>,
    inbound: Recipient<Inbound>,
) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        tick.tick().await;
        let answered = tokio::time::timeout(
            COMMAND_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut redis),
        )
        .await
        .is_ok_and(|reply| reply.is_ok());
        let was_healthy = healthy.swap(answered, Ordering::Relaxed);
        if answered && !was_healthy {
            tracing::info!("Redis reachable again");
            inbound.do_send(Inbound::Reconnected);
        } else if !answered && was_healthy {
            tracing::warn!("Redis unreachable; delivering locally until it is back");
        }
    }
}
