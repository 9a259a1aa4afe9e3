//! Prometheus metrics, rendered at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// `process_*` (CPU, memory, descriptors against their limit, start
    /// time) under the names every dashboard knows, without our prefix.
    process: Registry,
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
    pub db_pool_connections: IntGaugeVec,
    pub db_pool_waiting: IntGauge,
    /// Labelled so the series exists only once a node has a Redis link.
    pub broker_connected: IntGaugeVec,
    pub ws_sessions: IntGauge,
    pub users_online: IntGauge,
    pub rooms_active: IntGauge,
    pub frames_in: IntCounter,
    pub errors_sent: IntCounterVec,
    pub messages_stored: IntCounter,
    pub store_batch_size: Histogram,
    pub store_commit_seconds: Histogram,
    /// Requests and frames refused by a rate limit, by limit.
    pub rate_limited: IntCounterVec,
    /// Sockets refused or closed by a limit, by reason.
    pub connections_refused: IntCounterVec,
    /// Sockets dropped because their outbound queue was full.
    pub slow_consumers_dropped: IntCounter,
    /// Frames queued to sockets by fan-out (messages, events, notices).
    pub frames_out: IntCounter,
    /// From commit (or arrival from another node) to fan-out to members.
    pub fanout_seconds: Histogram,
    /// Emails waiting in the outbox, read at each scrape.
    pub email_outbox_queued: IntGauge,
    /// From a user's question to the agent's stored answer.
    pub agent_answer_seconds: Histogram,
    /// Provider tokens used by the agent (input and output).
    pub agent_tokens: IntCounter,
    /// Agent answers that failed, by provider.
    pub agent_failures: IntCounterVec,
    /// Emails composed (one per digest) and stored in the outbox.
    pub emails_queued: IntCounter,
    pub emails_sent: IntCounter,
    /// Emails given up after `email.max_attempts` or refused by Resend.
    pub emails_failed: IntCounter,
    /// Requests to Resend to be tried again, by reason.
    pub email_retries: IntCounterVec,
    /// Unread items not emailed, by reason (read, disabled, no_address, gone).
    pub email_items_dropped: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("mixroom".into()), None).expect("valid metrics prefix");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let errors_sent = IntCounterVec::new(
            Opts::new("ws_errors_sent_total", "Error frames sent, by code"),
            &["code"],
        )
        .expect("valid counter vec");
        registry
            .register(Box::new(errors_sent.clone()))
            .expect("unique metric");
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid counter vec");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests answered, by route and status",
            ),
            &["method", "route", "status"],
        )
        .expect("valid counter vec");
        registry
            .register(Box::new(http_requests.clone()))
            .expect("unique metric");
        let http_request_seconds = HistogramVec::new(
            HistogramOpts::new("http_request_seconds", "Time to answer an HTTP request")
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid buckets")),
            &["route"],
        )
        .expect("valid histogram vec");
        registry
            .register(Box::new(http_request_seconds.clone()))
            .expect("unique metric");
        let db_pool_connections = IntGaugeVec::new(
            Opts::new(
                "db_pool_connections",
                "Database pool connections, idle or in use",
            ),
            &["state"],
        )
        .expect("valid gauge vec");
        registry
            .register(Box::new(db_pool_connections.clone()))
            .expect("unique metric");
        let broker_connected = IntGaugeVec::new(
            Opts::new(
                "broker_connected",
                "1 while the Redis link is up, 0 while it is down (absent: one node)",
            ),
            &["broker"],
        )
        .expect("valid gauge vec");
        registry
            .register(Box::new(broker_connected.clone()))
            .expect("unique metric");
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Always 1; the labels say which build runs"),
            &["version"],
        )
        .expect("valid gauge vec");
        registry
            .register(Box::new(build_info.clone()))
            .expect("unique metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        process
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        let metrics = Metrics {
            process,
            http_requests,
            http_request_seconds,
            db_pool_connections,
            db_pool_waiting: gauge("db_pool_waiting", "Tasks waiting for a database connection"),
            broker_connected,
            ws_sessions: gauge("ws_sessions", "Open WebSocket sessions"),
            users_online: gauge(
                "users_online",
                "Users with at least one authenticated session",
            ),
            rooms_active: gauge("rooms_active", "Room actors running"),
            frames_in: counter("ws_frames_in_total", "Text frames received"),
            errors_sent,
            messages_stored: counter("messages_stored_total", "Chat messages committed"),
            store_batch_size: histogram(
                "store_batch_size",
                "Messages per group commit",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            ),
            store_commit_seconds: histogram(
                "store_commit_seconds",
                "Time to commit one batch",
                prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid buckets"),
            ),
            frames_out: counter("ws_frames_out_total", "Frames queued to sockets by fan-out"),
            fanout_seconds: histogram(
                "fanout_seconds",
                "From commit to fan-out to a room's members",
                prometheus::exponential_buckets(0.00005, 2.0, 16).expect("valid buckets"),
            ),
            email_outbox_queued: gauge("email_outbox_queued", "Emails waiting in the outbox"),
            agent_answer_seconds: histogram(
                "agent_answer_seconds",
                "From a support question to the stored answer",
                prometheus::exponential_buckets(0.05, 2.0, 12).expect("valid buckets"),
            ),
            agent_tokens: counter(
                "agent_tokens_total",
                "Provider tokens used by the support agent",
            ),
            agent_failures: counter_vec(
                "agent_failures_total",
                "Support answers that failed, by provider",
                "provider",
            ),
            rate_limited: counter_vec(
                "rate_limited_total",
                "Requests and frames refused by a rate limit",
                "limit",
            ),
            connections_refused: counter_vec(
                "connections_refused_total",
                "Sockets refused or closed by a limit",
                "reason",
            ),
            slow_consumers_dropped: counter(
                "slow_consumers_dropped_total",
                "Sockets dropped because they stopped reading",
            ),
            emails_queued: counter("emails_queued_total", "Emails stored in the outbox"),
            emails_sent: counter("emails_sent_total", "Emails accepted by Resend or written"),
            emails_failed: counter(
                "emails_failed_total",
                "Emails given up after their last attempt or refused",
            ),
            email_retries: counter_vec(
                "email_retries_total",
                "Requests to Resend to be tried again, by reason",
                "reason",
            ),
            email_items_dropped: counter_vec(
                "email_items_dropped_total",
                "Unread items not emailed, by reason",
                "reason",
            ),
            registry,
        };
        // Known label values start at zero, so dashboards see the series
        // before the first event.
        for limit in ["http", "connects", "frames", "internal", "agent", "support"] {
            metrics.rate_limited.with_label_values(&[limit]);
        }
        for reason in [
            "per_user",
            "per_ip",
            "flooding",
            "write_timeout",
            "http_per_ip",
        ] {
            metrics.connections_refused.with_label_values(&[reason]);
        }
        metrics
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
