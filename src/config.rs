//! Layered configuration: `config/default.toml`, then `--config FILE`, then
//! `MIXROOM__<SECTION>__<KEY>` environment variables.
//!
//! Every struct denies unknown fields and has no serde defaults, so a typo
//! in a key fails at start and `config/default.toml` must name every key
//! (a unit test below keeps the two in sync).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::{Deserialize, Serialize, Serializer};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub chat: ChatSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub broker: BrokerSettings,
    pub stripe: StripeSettings,
    pub email: EmailSettings,
    pub notify: NotifySettings,
    pub push: PushSettings,
    pub ai: AiSettings,
    pub limits: LimitSettings,
    pub retention: RetentionSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    pub support_log_days: u32,
    pub sent_email_days: u32,
    pub interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Serve `/metrics` here instead of on `listen` (empty: on `listen`).
    #[serde(
        deserialize_with = "optional_addr",
        serialize_with = "optional_addr_text"
    )]
    pub metrics_listen: Option<SocketAddr>,
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
    pub max_http_body_bytes: usize,
    pub heartbeat_ms: u64,
    pub client_timeout_ms: u64,
    pub auth_timeout_ms: u64,
    pub room_idle_ms: u64,
    pub shutdown_grace_ms: u64,
    /// After SIGTERM: readiness fails at once, sockets keep working this long.
    pub drain_ms: u64,
    /// Then live sockets are closed (1001) spread over this long.
    pub close_spread_ms: u64,
    /// A request body not complete this long after the request began is
    /// refused and its connection closed.
    pub body_timeout_ms: u64,
    /// A join's replay sends at most this many messages, and stops after
    /// the message that reaches `replay_max_bytes` of bodies.
    pub replay_max_messages: usize,
    pub replay_max_bytes: usize,
    /// A socket whose queued bytes make no progress for this long is closed.
    pub write_timeout_ms: u64,
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub allowed_origins: Vec<String>,
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub cors_origins: Vec<String>,
    /// `development` (the embedded default) or `production`, which refuses
    /// to start with any development-only value (see [`Settings::production_problems`]).
    pub environment: Environment,
    /// The demo page and its token-minting helper; see [`Settings::demo_enabled`].
    #[serde(deserialize_with = "demo_mode", serialize_with = "demo_mode_text")]
    pub demo: DemoMode,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Production,
}

/// `server.demo`: `auto` serves the demo only while the built-in dev
/// secret signs tokens, so a real secret never mints demo tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoMode {
    Auto,
    On,
    Off,
}

/// `true`, `false` or `"auto"` (environment values arrive as strings).
fn demo_mode<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<DemoMode, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Bool(true) => Ok(DemoMode::On),
        Raw::Bool(false) => Ok(DemoMode::Off),
        Raw::Text(text) => match text.as_str() {
            "auto" => Ok(DemoMode::Auto),
            "true" | "on" => Ok(DemoMode::On),
            "false" | "off" => Ok(DemoMode::Off),
            other => Err(serde::de::Error::custom(format!(
                "server.demo must be true, false or \"auto\", not `{other}`"
            ))),
        },
    }
}

/// Edits and attachments (`src/domain/chat.rs`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChatSettings {
    pub edit_window_secs: u64,
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub attachment_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// May carry a password, hence secret.
    #[serde(serialize_with = "redacted_url")]
    pub url: SecretString,
    pub pool_size: usize,
    pub max_batch: usize,
    /// Group commits in flight at most at once on PostgreSQL; more than
    /// one only while a commit is slow (SQLite: always one).
    pub writers: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    #[serde(serialize_with = "redacted")]
    pub jwt_secret: SecretString,
    /// Path of a JWKS document read once at start (empty: none).
    pub jwks: String,
    /// URL of a published JWKS (Supabase signing keys), fetched at start and
    /// refreshed (empty: none).
    pub jwks_url: String,
    /// How often the JWKS URL is fetched again.
    pub jwks_refresh_secs: u64,
    /// When set, a token's `iss` must equal it exactly.
    pub issuer: String,
    #[serde(serialize_with = "redacted")]
    pub internal_api_key: SecretString,
}

/// The values `config/default.toml` ships for trying the server locally.
/// Production refuses them; development warns that they are in use.
pub const DEV_JWT_SECRET: &str = "mixroom-dev-secret-change-me-0123456789abcdef";
pub const DEV_INTERNAL_API_KEY: &str = "mixroom-dev-internal-key";
/// Shorter secrets are refused in production: 32 random bytes is what
/// HS256 and a bearer key need not to be guessed.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    #[serde(serialize_with = "redacted_url")]
    pub redis_url: SecretString,
    /// PEM CA certificate(s) trusted for a `rediss://` URL (empty: the
    /// system's roots).
    pub tls_ca_file: String,
    pub presence_lease_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StripeSettings {
    #[serde(serialize_with = "redacted")]
    pub webhook_secret: SecretString,
}

/// The support agent (`src/support/`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AiSettings {
    /// Empty: the embedded agent answers from the knowledge base, offline.
    #[serde(serialize_with = "redacted")]
    pub anthropic_api_key: SecretString,
    pub anthropic_base_url: String,
    pub model: String,
    pub max_tokens: u32,
    /// Longest wait for the provider's answer to start and between two of
    /// its stream events.
    pub timeout_secs: u64,
    /// How many of the conversation's latest messages are sent as context.
    pub history_messages: usize,
    /// Per user, across conversations.
    pub requests_per_minute: u32,
    /// Provider tokens (input and output) per user and UTC day.
    pub daily_token_budget: u64,
    pub prompt_file: PathBuf,
    pub knowledge_base_file: PathBuf,
    /// Pause between the words the embedded agent streams.
    pub embedded_word_delay_ms: u64,
    /// A conversation's agent actor stops after this long without a message.
    pub agent_idle_secs: u64,
}

/// The email fallback (`src/notify/`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    /// Empty: emails are written to `outbox_dir` and logged, nothing is sent.
    #[serde(serialize_with = "redacted")]
    pub resend_api_key: SecretString,
    pub resend_base_url: String,
    pub from: String,
    /// Delay before an unread item is emailed when its recipient has no live session.
    pub offline_delay_secs: u64,
    /// Delay before an unread item is emailed when its recipient is online.
    pub unread_delay_secs: u64,
    /// Requests per second to Resend (its default limit is 2).
    pub rate_per_sec: u32,
    /// Failed attempts (5xx, network) after which an email is given up.
    pub max_attempts: u32,
    /// Backoff between attempts doubles from `retry_base_ms` up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// A Resend call that takes longer is abandoned and retried later.
    pub request_timeout_secs: u64,
    /// Where emails are written when `resend_api_key` is empty.
    pub outbox_dir: PathBuf,
    /// Base of links into the web app (bookings, settings).
    pub app_base_url: String,
    /// This server's public base URL, for unsubscribe links.
    pub api_base_url: String,
    /// HMAC key of unsubscribe links; empty derives one from `auth.jwt_secret`.
    #[serde(serialize_with = "redacted")]
    pub unsubscribe_secret: SecretString,
    /// How often stored work is looked for (items and emails of other
    /// nodes, leases that ran out).
    pub sweep_interval_ms: u64,
}

impl EmailSettings {
    fn validate(&self, auth: &AuthSettings) -> Result<(), ConfigError> {
        use secrecy::ExposeSecret;
        let invalid = |what: &str| Err(ConfigError::Invalid(format!("email.{what}")));
        if self.rate_per_sec == 0
            || self.max_attempts == 0
            || self.request_timeout_secs == 0
            || self.sweep_interval_ms == 0
            || self.retry_base_ms == 0
        {
            return invalid(
                "rate_per_sec, max_attempts, request_timeout_secs, sweep_interval_ms and \
                 retry_base_ms must be positive",
            );
        }
        if self.retry_max_ms < self.retry_base_ms {
            return invalid("retry_max_ms must not be below retry_base_ms");
        }
        if reqwest::Url::parse(&self.resend_base_url).is_err() {
            return invalid("resend_base_url must be a URL");
        }
        if !self.from.contains('@') {
            return invalid("from must be an address, e.g. `Mixroom <notify@example.com>`");
        }
        let web = |url: &str| url.starts_with("http://") || url.starts_with("https://");
        if !web(&self.app_base_url) || !web(&self.api_base_url) {
            return invalid("app_base_url and api_base_url must start with http:// or https://");
        }
        if self.unsubscribe_secret.expose_secret().is_empty()
            && auth.jwt_secret.expose_secret().is_empty()
        {
            return invalid("unsubscribe_secret must be set when auth.jwt_secret is empty");
        }
        Ok(())
    }
}

/// Reminders and announcements (`src/notify/reminders.rs`,
/// `src/notify/announcer.rs`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    /// How long before a booking's start each reminder is due (seconds).
    #[serde(deserialize_with = "numbers_or_comma_separated")]
    pub reminder_lead_secs: Vec<i64>,
    /// Users an announcement notifies per transaction.
    pub announcement_page_size: usize,
}

impl NotifySettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.reminder_lead_secs.iter().any(|lead| *lead <= 0) {
            return Err(ConfigError::Invalid(
                "notify.reminder_lead_secs must hold positive numbers of seconds".into(),
            ));
        }
        if !(1..=10_000).contains(&self.announcement_page_size) {
            return Err(ConfigError::Invalid(
                "notify.announcement_page_size must be 1 to 10000".into(),
            ));
        }
        Ok(())
    }
}

/// Web Push (`src/notify/push/`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PushSettings {
    /// The VAPID private key: the P-256 scalar, 32 bytes in base64url (what
    /// VAPID key generators print), or a PEM (PKCS#8 or SEC1). Empty: in
    /// development a key is generated once and stored in the database; in
    /// production push is off.
    #[serde(serialize_with = "redacted")]
    pub vapid_private_key: SecretString,
    /// Who runs this server, for push services: `mailto:` or an https URL.
    pub vapid_subject: String,
    /// Browsers (subscriptions) one user may register.
    pub max_subscriptions_per_user: usize,
    /// How long a push service keeps a push for an offline browser (`TTL`).
    pub ttl_secs: u64,
    /// Attempts (429, 5xx, network) after which a push is given up.
    pub max_attempts: u32,
    /// Backoff between attempts doubles from `retry_base_ms` up to
    /// `retry_max_ms`; a longer `Retry-After` wins.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// A push service call that takes longer is abandoned and retried.
    pub request_timeout_secs: u64,
    /// Pushes sent at once by one node.
    pub concurrency: usize,
    /// How often stored pushes of other nodes (or a restart) are looked for.
    pub sweep_interval_ms: u64,
    /// Hosts of the browsers' push services a subscription may name (`host`
    /// or `*.domain`); empty: any https host.
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub endpoint_hosts: Vec<String>,
}

impl PushSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |what: &str| Err(ConfigError::Invalid(format!("push.{what}")));
        if self.max_subscriptions_per_user == 0
            || self.max_attempts == 0
            || self.retry_base_ms == 0
            || self.request_timeout_secs == 0
            || self.concurrency == 0
            || self.sweep_interval_ms == 0
            || self.ttl_secs == 0
        {
            return invalid(
                "max_subscriptions_per_user, ttl_secs, max_attempts, retry_base_ms, \
                 request_timeout_secs, concurrency and sweep_interval_ms must be positive",
            );
        }
        if self.retry_max_ms < self.retry_base_ms {
            return invalid("retry_max_ms must not be below retry_base_ms");
        }
        let subject = self.vapid_subject.as_str();
        let https = reqwest::Url::parse(subject).is_ok_and(|url| url.scheme() == "https");
        let mailto = subject
            .strip_prefix("mailto:")
            .is_some_and(|address| address.contains('@'));
        if !(https || mailto) {
            return invalid("vapid_subject must be a mailto: address or an https:// URL");
        }
        Ok(())
    }
}

fn numbers_or_comma_separated<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<i64>),
        String(String),
    }
    match ListOrString::deserialize(deserializer)? {
        ListOrString::List(items) => Ok(items),
        ListOrString::String(joined) => joined
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse()
                    .map_err(|_| serde::de::Error::custom(format!("`{item}` is not a number")))
            })
            .collect(),
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub frames_per_sec: u32,
    pub frames_burst: u32,
    pub flood_strikes: u32,
    pub http_per_sec_per_ip: u32,
    pub http_burst_per_ip: u32,
    pub connects_per_sec_per_ip: u32,
    pub connects_burst_per_ip: u32,
    pub internal_per_sec: u32,
    pub internal_burst: u32,
    pub max_connections_per_ip: usize,
    /// Open HTTP connections per peer address (0: no cap; not applied
    /// behind trusted proxies, whose own address every connection has).
    pub max_http_connections_per_ip: usize,
    pub max_connections_per_user: usize,
    pub session_queue: usize,
    /// Per user and hour: new support conversations; escalations to a person.
    pub support_conversations_per_hour: u32,
    pub support_escalations_per_hour: u32,
    /// Bytes waiting for one socket; more closes it with 1013.
    pub session_queue_bytes: usize,
    /// Proxies in front of the server: the client address is the
    /// X-Forwarded-For entry this many from the right (0: the peer).
    pub trusted_proxies: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// What `mixroom-realtime config` prints for a secret: whether it is set.
const REDACTED: &str = "[redacted]";

fn redacted<S: Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    use secrecy::ExposeSecret;
    let shown = if secret.expose_secret().is_empty() {
        ""
    } else {
        REDACTED
    };
    serializer.serialize_str(shown)
}

/// A URL with its password (in the authority or the query) redacted: the
/// host, port, database and TLS options are what an operator checks.
fn redacted_url<S: Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    use secrecy::ExposeSecret;
    let raw = secret.expose_secret();
    if raw.is_empty() || raw.starts_with("sqlite:") {
        return serializer.serialize_str(raw);
    }
    let Ok(mut url) = reqwest::Url::parse(raw) else {
        return serializer.serialize_str(REDACTED);
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("redacted"));
    }
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(key, value)| {
            let value = if key.contains("password") {
                REDACTED.to_owned()
            } else {
                value.into_owned()
            };
            (key.into_owned(), value)
        })
        .collect();
    if !pairs.is_empty() {
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    serializer.serialize_str(url.as_str())
}

fn demo_mode_text<S: Serializer>(mode: &DemoMode, serializer: S) -> Result<S::Ok, S::Error> {
    match mode {
        DemoMode::Auto => serializer.serialize_str("auto"),
        DemoMode::On => serializer.serialize_bool(true),
        DemoMode::Off => serializer.serialize_bool(false),
    }
}

/// As written in the defaults: an empty string for none.
fn optional_addr_text<S: Serializer>(
    addr: &Option<SocketAddr>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match addr {
        Some(addr) => serializer.collect_str(addr),
        None => serializer.serialize_str(""),
    }
}

/// An address, or none for an empty string.
fn optional_addr<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.trim()
        .parse()
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A list from a TOML array, or from one environment variable as
/// `a,b,c` (environment values are always strings).
fn list_or_comma_separated<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(deserializer)? {
        ListOrString::List(items) => items,
        ListOrString::String(joined) => joined
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

/// The defaults, compiled in: the binary runs from any directory with
/// nothing beside it. `config/default.toml` is this very text, kept as the
/// documented reference of every key.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

impl Settings {
    /// The effective configuration as TOML, secrets redacted (the `config`
    /// command).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot show the configuration: {e}\n"))
    }

    /// Loads the layered configuration.
    pub fn load(extra_file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = extra_file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let settings: Settings = builder
            .add_source(
                config::Environment::with_prefix("MIXROOM")
                    .prefix_separator("__")
                    .separator("__"),
            )
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Whether `/` and `/demo/*` are served: never in production; in
    /// development when asked for, or (`auto`) while the built-in dev
    /// secret signs tokens, so demo tokens are never signed with a secret
    /// anyone else trusts.
    pub fn demo_enabled(&self) -> bool {
        use secrecy::ExposeSecret;
        self.server.environment == Environment::Development
            && match self.server.demo {
                DemoMode::On => true,
                DemoMode::Off => false,
                DemoMode::Auto => self.auth.jwt_secret.expose_secret() == DEV_JWT_SECRET,
            }
    }

    /// Development-only values in use, one line each (empty when none).
    /// In production each is a reason to refuse to start.
    pub fn development_values(&self) -> Vec<String> {
        use secrecy::ExposeSecret;
        let mut found = Vec::new();
        let jwt_secret = self.auth.jwt_secret.expose_secret();
        if jwt_secret == DEV_JWT_SECRET {
            found.push("auth.jwt_secret is the built-in development secret".to_owned());
        } else if !jwt_secret.is_empty() && jwt_secret.len() < MIN_SECRET_BYTES {
            found.push(format!(
                "auth.jwt_secret is shorter than {MIN_SECRET_BYTES} bytes"
            ));
        }
        let keys: Vec<&str> = crate::auth::internal_keys(&self.auth.internal_api_key).collect();
        if keys.contains(&DEV_INTERNAL_API_KEY) {
            found.push("auth.internal_api_key is the built-in development key".to_owned());
        } else if keys.is_empty()
            || keys
                .iter()
                .any(|key| key.chars().count() < MIN_SECRET_BYTES)
        {
            found.push(format!(
                "auth.internal_api_key is shorter than {MIN_SECRET_BYTES} characters"
            ));
        }
        let unsubscribe = self.email.unsubscribe_secret.expose_secret();
        if unsubscribe.is_empty() && jwt_secret == DEV_JWT_SECRET {
            found.push(
                "email.unsubscribe_secret is empty, so unsubscribe links are signed with a key \
                 derived from the development auth.jwt_secret"
                    .to_owned(),
            );
        } else if !unsubscribe.is_empty() && unsubscribe.len() < MIN_SECRET_BYTES {
            found.push(format!(
                "email.unsubscribe_secret is shorter than {MIN_SECRET_BYTES} bytes"
            ));
        }
        if self.server.demo == DemoMode::On || self.demo_enabled() {
            found.push(
                "server.demo is on: /demo/session mints a token for anyone who asks".to_owned(),
            );
        }
        found
    }

    /// Why this configuration must not serve in production (empty: it may).
    pub fn production_problems(&self) -> Vec<String> {
        use secrecy::ExposeSecret;
        if self.server.environment == Environment::Production {
            let mut problems = self.development_values();
            // Plaintext to PostgreSQL only when written out (sslmode=disable).
            problems.extend(crate::db::tls::plaintext_problem(
                self.database.url.expose_secret(),
            ));
            problems
        } else {
            Vec::new()
        }
    }

    /// What `[chat]` asks of edits and attachments.
    pub fn chat_rules(&self) -> crate::domain::chat::ChatRules {
        crate::domain::chat::ChatRules {
            edit_window_ms: (self.chat.edit_window_secs as i64).saturating_mul(1000),
            attachment_origins: crate::domain::chat::AttachmentOrigins::new(
                &self.chat.attachment_origins,
            ),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        use secrecy::ExposeSecret;
        let url = self.database.url.expose_secret();
        if !(url.starts_with("sqlite://")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid(
                "database.url must start with sqlite:// or postgres://".into(),
            ));
        }
        let auth = &self.auth;
        if auth.jwt_secret.expose_secret().is_empty()
            && auth.jwks.is_empty()
            && auth.jwks_url.is_empty()
        {
            return Err(ConfigError::Invalid(
                "set auth.jwt_secret, auth.jwks or auth.jwks_url: no token could be verified"
                    .into(),
            ));
        }
        if !auth.jwks.is_empty() && !auth.jwks_url.is_empty() {
            return Err(ConfigError::Invalid(
                "set auth.jwks (a file) or auth.jwks_url, not both".into(),
            ));
        }
        if !auth.jwks_url.is_empty() {
            let parsed = reqwest::Url::parse(&auth.jwks_url);
            if !matches!(parsed.as_ref().map(|u| u.scheme()), Ok("http" | "https")) {
                return Err(ConfigError::Invalid(
                    "auth.jwks_url must be an http:// or https:// URL".into(),
                ));
            }
            if auth.jwks_refresh_secs == 0 {
                return Err(ConfigError::Invalid(
                    "auth.jwks_refresh_secs must be positive".into(),
                ));
            }
        }
        if !self.broker.tls_ca_file.is_empty()
            && !self
                .broker
                .redis_url
                .expose_secret()
                .starts_with("rediss://")
        {
            return Err(ConfigError::Invalid(
                "broker.tls_ca_file is set but broker.redis_url is not a rediss:// URL".into(),
            ));
        }
        if self.limits.frames_per_sec == 0 || self.limits.frames_burst == 0 {
            return Err(ConfigError::Invalid(
                "limits.frames_per_sec and limits.frames_burst must be positive".into(),
            ));
        }
        let ai = &self.ai;
        if ai.max_tokens == 0
            || ai.timeout_secs == 0
            || ai.history_messages == 0
            || ai.requests_per_minute == 0
        {
            return Err(ConfigError::Invalid(
                "ai.max_tokens, ai.timeout_secs, ai.history_messages and \
                 ai.requests_per_minute must be positive"
                    .into(),
            ));
        }
        self.email.validate(&self.auth)?;
        self.notify.validate()?;
        self.push.validate()?;
        if self.server.max_message_bytes >= self.server.max_frame_bytes {
            return Err(ConfigError::Invalid(
                "server.max_message_bytes must be below server.max_frame_bytes".into(),
            ));
        }
        for origin in &self.chat.attachment_origins {
            let host = origin.strip_prefix("https://").unwrap_or("");
            if host.is_empty() || host.contains('/') && !host.ends_with('/') {
                return Err(ConfigError::Invalid(format!(
                    "chat.attachment_origins: `{origin}` must be https://host[:port] or https://*.domain"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `config/default.toml` alone must deserialize: every field of the
    /// settings struct has a default value there and nothing extra is there.
    #[test]
    fn default_file_and_settings_struct_are_in_sync() {
        let parsed: Result<Settings, _> = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize();
        let settings = parsed.expect("default.toml and Settings disagree");
        settings.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let raw = DEFAULTS.to_owned() + "\n[extra]\nkey = 1\n";
        let parsed: Result<Settings, _> = config::Config::builder()
            .add_source(config::File::from_str(&raw, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize();
        assert!(parsed.unwrap_err().to_string().contains("extra"));
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let settings = Settings::load(None).unwrap();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("mixroom-dev-secret"));
        assert!(!shown.contains("mixroom-dev-internal-key"));
    }

    fn defaults() -> Settings {
        config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn the_shipped_dev_values_are_the_ones_production_refuses() {
        use secrecy::ExposeSecret;
        let settings = defaults();
        assert_eq!(settings.auth.jwt_secret.expose_secret(), DEV_JWT_SECRET);
        assert_eq!(
            settings.auth.internal_api_key.expose_secret(),
            DEV_INTERNAL_API_KEY
        );
        assert_eq!(settings.server.environment, Environment::Development);
        assert!(settings.demo_enabled());
        assert!(settings.production_problems().is_empty());
        let mut production = settings;
        production.server.environment = Environment::Production;
        let problems = production.production_problems();
        for key in [
            "auth.jwt_secret",
            "auth.internal_api_key",
            "email.unsubscribe_secret",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(key)),
                "{key} missing from {problems:?}"
            );
        }
        assert!(!production.demo_enabled());
    }

    #[test]
    fn the_demo_follows_the_secret_unless_told() {
        let mut settings = defaults();
        settings.auth.jwt_secret = "a-real-project-secret-of-enough-length-0001"
            .to_owned()
            .into();
        assert!(!settings.demo_enabled(), "auto with a real secret");
        settings.server.demo = DemoMode::On;
        assert!(settings.demo_enabled(), "explicitly on in development");
        settings.server.environment = Environment::Production;
        assert!(!settings.demo_enabled(), "never in production");
        assert!(settings
            .production_problems()
            .iter()
            .any(|p| p.starts_with("server.demo")));
    }
}
