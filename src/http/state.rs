//! The routes' shared state, made by `app` at start.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix::Addr;
use tokio_util::task::TaskTracker;

use crate::auth::TokenVerifier;
use crate::bookings::Bookings;
use crate::cluster::Cluster;
use crate::config::Settings;
use crate::db::client_reads::ClientReads;
use crate::db::Db;
use crate::limits::Limiters;
use crate::metrics::Metrics;
use crate::notifications::Inbox;
use crate::notify::announcer::Announcements;
use crate::rooms::hub::Hub;
use crate::rooms::sequencer::Sequencer;
use crate::support::director::SupportDirector;

/// What the route handlers share (and only they: actors, sessions and
/// services below `http/` get the narrow handles they use). Actors are
/// reached by address; nothing here is behind a lock.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: Db,
    /// Replays and history pages: a few lanes of the pool, never all.
    pub client_reads: ClientReads,
    pub verifier: Arc<TokenVerifier>,
    pub hub: Addr<Hub>,
    pub cluster: Cluster,
    pub sequencer: Sequencer,
    /// Rate limits: frames per user, requests and connects per IP, the
    /// internal API.
    pub limiters: Arc<Limiters>,
    pub metrics: Arc<Metrics>,
    /// Routes support-room messages to the conversations' agents.
    pub support: Addr<SupportDirector>,
    /// Users' news: their live sessions and the email fallback.
    pub inbox: Inbox,
    /// Web Push: the VAPID key and whether push is on.
    pub web_push: crate::notify::push::Push,
    /// Booking changes and what follows them.
    pub bookings: Bookings,
    /// Announcements to every user: stored, then worked through.
    pub announcements: Announcements,
    /// The upgraded WebSockets, each a task of its own: shutdown waits for
    /// them to write their close frames.
    pub sockets: TaskTracker,
    /// What the probes answer, refreshed in the background.
    pub probes: Arc<super::health::ProbeCache>,
    /// Set on SIGTERM: readiness fails so the load balancer stops sending
    /// new clients here while the sockets still work.
    pub draining: Arc<AtomicBool>,
}
