//! Signing keys published at a URL (Supabase's asymmetric JWT keys): fetched
//! at start, refreshed every `auth.jwks_refresh_secs`, and at once when a
//! token names a key the set does not hold, at most every
//! [`MIN_REFETCH`]. A failed fetch keeps the last good set; a key dropped
//! from the published set stops verifying after the next good fetch.
//!
//! One task owns the fetching and publishes each set through a `watch`
//! channel; verifiers only read the latest value.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

/// Unknown-key refetches are at most this frequent, so tokens with made-up
/// `kid`s cannot turn into a stream of requests to the key server.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// A key server slower than this counts as failing.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A JWKS is a few keys; anything larger is not one.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Callers waiting for an unknown-key refresh at once; more do not wait.
const WAITING_CALLERS: usize = 256;

/// The latest published set and how fetching it goes.
#[derive(Debug, Clone, Default)]
pub struct KeySetState {
    /// The last set fetched successfully (`None` until the first).
    pub keys: Option<Arc<JwkSet>>,
    /// Unix milliseconds of the last successful fetch.
    pub fetched_at_ms: Option<i64>,
    /// The last fetch's error, cleared by a successful one.
    pub last_error: Option<String>,
}

/// What readiness reports about the published keys.
#[derive(Debug, Serialize)]
pub struct KeySetStatus {
    pub ok: bool,
    pub keys: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The verifiers' handle on the key task.
pub struct PublishedKeys {
    latest: watch::Receiver<KeySetState>,
    refresh: mpsc::Sender<oneshot::Sender<()>>,
}

impl PublishedKeys {
    /// Fetches the set once (a failure is logged and retried by the task,
    /// it does not stop the start) and starts the refresh task on the
    /// current runtime.
    pub async fn start(url: String, every: Duration) -> PublishedKeys {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .unwrap_or_default();
        let mut state = KeySetState::default();
        apply_fetch(&mut state, fetch(&client, &url).await, &url);
        let (publish, latest) = watch::channel(state);
        let (refresh, requests) = mpsc::channel(WAITING_CALLERS);
        tokio::spawn(refresh_task(client, url, every, publish, requests));
        PublishedKeys { latest, refresh }
    }

    pub fn current(&self) -> Option<Arc<JwkSet>> {
        self.latest.borrow().keys.clone()
    }

    /// Asks for a fetch now and waits until it is done (or until the task
    /// decides it is too soon after the last one).
    pub async fn refresh_now(&self) {
        let (done, wait) = oneshot::channel();
        if self.refresh.try_send(done).is_ok() {
            let _ = wait.await;
        }
    }

    pub fn status(&self) -> KeySetStatus {
        let state = self.latest.borrow();
        KeySetStatus {
            ok: state.keys.is_some() && state.last_error.is_none(),
            keys: state.keys.as_ref().map_or(0, |set| set.keys.len()),
            fetched_at: state.fetched_at_ms.map(crate::time::rfc3339_ms),
            last_error: state.last_error.clone(),
        }
    }

    /// Whether any set was ever loaded: without one no asymmetric token
    /// can be verified.
    pub fn loaded(&self) -> bool {
        self.latest.borrow().keys.is_some()
    }
}

async fn refresh_task(
    client: reqwest::Client,
    url: String,
    every: Duration,
    publish: watch::Sender<KeySetState>,
    mut requests: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let mut timer = tokio::time::interval(every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await; // the first tick is now: the start just fetched
                        // Only fetches that clients caused are rate-limited.
    let mut last_asked: Option<tokio::time::Instant> = None;
    loop {
        let mut waiting = Vec::new();
        tokio::select! {
            _ = timer.tick() => {}
            request = requests.recv() => {
                let Some(done) = request else { return };
                waiting.push(done);
                // Everyone who asked meanwhile is answered by this fetch.
                while let Ok(done) = requests.try_recv() {
                    waiting.push(done);
                }
                if last_asked.is_some_and(|at| at.elapsed() < MIN_REFETCH) {
                    continue; // dropping `waiting` answers them: too soon
                }
                last_asked = Some(tokio::time::Instant::now());
            }
        }
        let result = fetch(&client, &url).await;
        publish.send_modify(|state| apply_fetch(state, result, &url));
        for done in waiting {
            let _ = done.send(());
        }
        if publish.is_closed() {
            return;
        }
    }
}

fn apply_fetch(state: &mut KeySetState, result: Result<JwkSet, String>, url: &str) {
    match result {
        Ok(set) => {
            if state.last_error.is_some() || state.keys.is_none() {
                tracing::info!(%url, keys = set.keys.len(), "signing keys loaded");
            }
            state.keys = Some(Arc::new(set));
            state.fetched_at_ms = Some(crate::time::now_ms());
            state.last_error = None;
        }
        Err(error) => {
            tracing::warn!(%url, %error, kept = state.keys.is_some(), "cannot fetch signing keys");
            state.last_error = Some(error);
        }
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<JwkSet, String> {
    let mut response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("document larger than {MAX_DOCUMENT_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))
}
