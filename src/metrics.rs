//! Prometheus metrics, rendered at `/metrics`.

use std::cell::RefCell;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The prefix of every family but `process_*`.
const PREFIX: &str = "mixroom";

/// One metric family `/metrics` can show, named as it is shown there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub name: String,
    pub histogram: bool,
}

impl Family {
    /// The names a query can select: a histogram's `_bucket`, `_sum` and
    /// `_count` series, or the family's own name.
    pub fn series_names(&self) -> Vec<String> {
        if self.histogram {
            ["_bucket", "_sum", "_count"]
                .iter()
                .map(|suffix| format!("{}{suffix}", self.name))
                .collect()
        } else {
            vec![self.name.clone()]
        }
    }
}

pub struct Metrics {
    registry: Registry,
    /// `process_*` (CPU, memory, descriptors against their limit, start
    /// time) under the names every dashboard knows, without our prefix.
    process: Registry,
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
    pub db_pool_connections: IntGaugeVec,
    pub db_pool_waiting: IntGauge,
    /// 1 while the database answers the readiness probe's ping, else 0.
    pub database_up: IntGauge,
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
    /// Reminders taken when due, by outcome (sent, missed, cancelled).
    pub reminders: IntCounterVec,
    /// Users an announcement notified, and emails it queued.
    pub announcement_users: IntCounter,
    pub announcement_emails_queued: IntCounter,
    /// Pushes stored in the push queue (one per subscription).
    pub pushes_queued: IntCounter,
    /// Pushes a push service accepted.
    pub pushes_sent: IntCounter,
    /// Pushes given up (refused, or out of attempts).
    pub pushes_failed: IntCounter,
    /// Pushes to be tried again, by reason (rate_limited, transient).
    pub push_retries: IntCounterVec,
    /// Subscriptions removed because their push service answered 404/410.
    pub push_subscriptions_removed: IntCounter,
    /// Every family registered, children or not (`render` leaves out a
    /// labelled family until its first child).
    families: Vec<Family>,
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some(PREFIX.into()), None).expect("valid metrics prefix");
        let families = RefCell::new(Vec::new());
        // Registers in `registry` and keeps the names, as `render` shows them.
        let register = |collector: Box<dyn Collector>, histogram: bool| {
            families
                .borrow_mut()
                .extend(collector.desc().iter().map(|desc| Family {
                    name: format!("{PREFIX}_{}", desc.fq_name),
                    histogram,
                }));
            registry.register(collector).expect("unique metric");
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            register(Box::new(g.clone()), false);
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            register(Box::new(c.clone()), false);
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid histogram");
            register(Box::new(h.clone()), true);
            h
        };
        let errors_sent = IntCounterVec::new(
            Opts::new("ws_errors_sent_total", "Error frames sent, by code"),
            &["code"],
        )
        .expect("valid counter vec");
        register(Box::new(errors_sent.clone()), false);
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid counter vec");
            register(Box::new(c.clone()), false);
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
        register(Box::new(http_requests.clone()), false);
        let http_request_seconds = HistogramVec::new(
            HistogramOpts::new("http_request_seconds", "Time to answer an HTTP request")
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid buckets")),
            &["route"],
        )
        .expect("valid histogram vec");
        register(Box::new(http_request_seconds.clone()), true);
        let db_pool_connections = IntGaugeVec::new(
            Opts::new(
                "db_pool_connections",
                "Database pool connections, idle or in use",
            ),
            &["state"],
        )
        .expect("valid gauge vec");
        register(Box::new(db_pool_connections.clone()), false);
        let broker_connected = IntGaugeVec::new(
            Opts::new(
                "broker_connected",
                "1 while the Redis link is up, 0 while it is down (absent: one node)",
            ),
            &["broker"],
        )
        .expect("valid gauge vec");
        register(Box::new(broker_connected.clone()), false);
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Always 1; the labels say which build runs"),
            &["version"],
        )
        .expect("valid gauge vec");
        register(Box::new(build_info.clone()), false);
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let collector = prometheus::process_collector::ProcessCollector::for_self();
            families
                .borrow_mut()
                .extend(collector.desc().iter().map(|desc| Family {
                    name: desc.fq_name.clone(),
                    histogram: false,
                }));
            process
                .register(Box::new(collector))
                .expect("unique metric");
        }
        let mut metrics = Metrics {
            process,
            http_requests,
            http_request_seconds,
            db_pool_connections,
            db_pool_waiting: gauge("db_pool_waiting", "Tasks waiting for a database connection"),
            database_up: gauge(
                "database_up",
                "1 while the database answers the readiness ping (once a second), else 0",
            ),
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
            reminders: counter_vec(
                "reminders_total",
                "Booking reminders taken when due, by outcome (sent; missed: every node was \
                 down until the session began; cancelled: the booking was off)",
                "outcome",
            ),
            announcement_users: counter(
                "announcement_users_total",
                "Users notified of an announcement",
            ),
            announcement_emails_queued: counter(
                "announcement_emails_queued_total",
                "Announcement emails stored in the outbox",
            ),
            pushes_queued: counter("pushes_queued_total", "Web pushes queued, one per browser"),
            pushes_sent: counter("pushes_sent_total", "Web pushes accepted by a push service"),
            pushes_failed: counter(
                "pushes_failed_total",
                "Web pushes given up (refused, or out of attempts)",
            ),
            push_retries: counter_vec(
                "push_retries_total",
                "Web pushes to be tried again, by reason",
                "reason",
            ),
            push_subscriptions_removed: counter(
                "push_subscriptions_removed_total",
                "Push subscriptions removed after a 404 or 410 from their push service",
            ),
            registry,
            families: Vec::new(),
        };
        metrics.families = families.into_inner();
        // Known label values start at zero, so dashboards see the series
        // before the first event.
        for limit in ["http", "connects", "frames", "internal", "agent", "support"] {
            metrics.rate_limited.with_label_values(&[limit]);
        }
        for reason in ["rate_limited", "transient"] {
            metrics.push_retries.with_label_values(&[reason]);
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
        for outcome in ["sent", "missed", "cancelled"] {
            metrics.reminders.with_label_values(&[outcome]);
        }
        metrics
    }

    /// Every metric family the server can export (`process_*` on Linux),
    /// including labelled ones that have no series yet.
    pub fn families(&self) -> &[Family] {
        &self.families
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// Every name a query may select from this server's `/metrics`.
    fn known_series() -> BTreeSet<String> {
        Metrics::new()
            .families()
            .iter()
            .flat_map(Family::series_names)
            .collect()
    }

    /// The identifiers of a PromQL expression that name this server's
    /// series: those starting `mixroom_` or `process_`.
    fn metric_names(expr: &str) -> Vec<String> {
        expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .filter(|word| word.starts_with("mixroom_") || word.starts_with("process_"))
            .map(str::to_owned)
            .collect()
    }

    /// The `expr` strings of a dashboard's targets and the `query` and
    /// `definition` strings of its variables, wherever they are nested.
    fn dashboard_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(fields) => {
                for (key, field) in fields {
                    match field {
                        serde_json::Value::String(text)
                            if matches!(key.as_str(), "expr" | "query" | "definition") =>
                        {
                            out.push(text.clone())
                        }
                        _ => dashboard_exprs(field, out),
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    dashboard_exprs(item, out);
                }
            }
            _ => {}
        }
    }

    /// The values of a rule file's `expr:` keys: the rest of the line and
    /// the lines indented deeper below it (a `|` or `>` block, or a plain
    /// scalar continued on the next lines).
    fn rule_exprs(yaml: &str) -> Vec<String> {
        let indent = |line: &str| line.len() - line.trim_start().len();
        let lines: Vec<&str> = yaml.lines().collect();
        let mut exprs = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let key_indent = indent(lines[i]);
            let trimmed = lines[i].trim_start();
            i += 1;
            let Some(rest) = trimmed.strip_prefix("expr:") else {
                continue;
            };
            let mut expr = rest.trim_start_matches([' ', '|', '>', '-']).to_owned();
            while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > key_indent) {
                expr.push('\n');
                expr.push_str(lines[i]);
                i += 1;
            }
            exprs.push(expr);
        }
        exprs
    }

    /// The names used in `exprs` that `known` does not have.
    fn unknown_names(exprs: &[String], known: &BTreeSet<String>) -> BTreeSet<String> {
        exprs
            .iter()
            .flat_map(|expr| metric_names(expr))
            .filter(|name| !known.contains(name))
            .collect()
    }

    fn read(relative: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
    }

    #[test]
    fn families_list_labelled_families_before_their_first_series() {
        let metrics = Metrics::new();
        let families = metrics.families();
        let find = |name: &str| families.iter().find(|family| family.name == name);
        // A histogram vec no request has touched yet, and a counter vec.
        assert_eq!(
            find("mixroom_http_request_seconds").map(|family| family.histogram),
            Some(true)
        );
        assert!(find("mixroom_agent_failures_total").is_some());
        assert!(!metrics.render().contains("mixroom_agent_failures_total"));
        #[cfg(target_os = "linux")]
        for name in ["process_open_fds", "process_max_fds"] {
            assert!(find(name).is_some(), "{name} not listed");
        }
        let names: BTreeSet<&str> = families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names.len(), families.len(), "a family is listed twice");
    }

    #[test]
    fn families_name_every_rendered_family_with_its_type() {
        let metrics = Metrics::new();
        let families = metrics.families();
        let rendered = metrics.render();
        let types: Vec<(&str, &str)> = rendered
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_once(' '))
            .collect();
        assert!(types.len() > 10, "too few families rendered: {rendered}");
        for (name, kind) in types {
            let family = families.iter().find(|family| family.name == name);
            let family = family.unwrap_or_else(|| panic!("{name} rendered but not listed"));
            assert_eq!(family.histogram, kind == "histogram", "{name} is a {kind}");
        }
    }

    #[test]
    fn ops_kit_queries_only_exported_metrics() {
        let known = known_series();

        let dashboard: serde_json::Value =
            serde_json::from_str(&read("ops/grafana/mixroom-realtime.json"))
                .expect("the dashboard is JSON");
        let mut panel_exprs = Vec::new();
        dashboard_exprs(&dashboard, &mut panel_exprs);
        let used: BTreeSet<String> = panel_exprs.iter().flat_map(|e| metric_names(e)).collect();
        assert!(
            used.len() > 20,
            "too few metrics found in the dashboard: {used:?}"
        );
        let unknown = unknown_names(&panel_exprs, &known);
        assert!(unknown.is_empty(), "the dashboard queries {unknown:?}");

        let rules = read("ops/prometheus/alerts.yml");
        let alert_exprs = rule_exprs(&rules);
        let alerts = rules
            .lines()
            .filter(|line| line.trim_start().starts_with("- alert:"))
            .count();
        assert!(alerts > 0);
        assert_eq!(alert_exprs.len(), alerts, "one expr per alert");
        let unknown = unknown_names(&alert_exprs, &known);
        assert!(unknown.is_empty(), "the alert rules query {unknown:?}");
    }

    #[test]
    fn the_check_refuses_names_the_server_does_not_export() {
        let known = known_series();
        let exprs = rule_exprs(
            "  - alert: A\n    expr: |\n      rate(mixroom_bogus_total[5m]) > 0\n      \
             and mixroom_ws_sessions_bucket > 0\n    for: 1m\n\
             \x20 - alert: B\n    expr: histogram_quantile(0.99, \
             rate(mixroom_fanout_seconds_bucket[5m]))\n      > mixroom_ws_sessions\n",
        );
        assert_eq!(exprs.len(), 2, "{exprs:?}");
        let unknown: Vec<String> = unknown_names(&exprs, &known).into_iter().collect();
        assert_eq!(
            unknown,
            ["mixroom_bogus_total", "mixroom_ws_sessions_bucket"]
        );
    }
}
