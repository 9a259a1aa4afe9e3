//! Prometheus metrics, rendered at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub ws_sessions: IntGauge,
    pub users_online: IntGauge,
    pub rooms_active: IntGauge,
    pub frames_in: IntCounter,
    pub errors_sent: IntCounterVec,
    pub messages_stored: IntCounter,
    pub store_batch_size: Histogram,
    pub store_commit_seconds: Histogram,
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
        Metrics {
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
            registry,
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
