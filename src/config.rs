//! Layered configuration: `config/default.toml`, then `--config FILE`, then
//! `MIXROOM__<SECTION>__<KEY>` environment variables.
//!
//! Every struct denies unknown fields and has no serde defaults, so a typo
//! in a key fails at start and `config/default.toml` must name every key
//! (a unit test below keeps the two in sync).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub broker: BrokerSettings,
    pub stripe: StripeSettings,
    pub email: EmailSettings,
    pub ai: AiSettings,
    pub limits: LimitSettings,
    pub retention: RetentionSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    pub support_log_days: u32,
    pub sent_email_days: u32,
    pub interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Serve `/metrics` here instead of on `listen` (empty: on `listen`).
    #[serde(deserialize_with = "optional_addr")]
    pub metrics_listen: Option<SocketAddr>,
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
    pub max_http_body_bytes: usize,
    pub heartbeat_ms: u64,
    pub client_timeout_ms: u64,
    pub auth_timeout_ms: u64,
    pub room_idle_ms: u64,
    pub shutdown_grace_ms: u64,
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
    /// Serve the demo page and its token-minting helper (never in production).
    pub demo: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// May carry a password, hence secret.
    pub url: SecretString,
    pub pool_size: usize,
    pub max_batch: usize,
    /// Group commits in flight at most at once on PostgreSQL; more than
    /// one only while a commit is slow (SQLite: always one).
    pub writers: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub jwt_secret: SecretString,
    pub jwks: String,
    pub internal_api_key: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    pub redis_url: SecretString,
    pub presence_lease_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeSettings {
    pub webhook_secret: SecretString,
}

/// The support agent (`src/support/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiSettings {
    /// Empty: the embedded agent answers from the knowledge base, offline.
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    /// Empty: emails are written to `outbox_dir` and logged, nothing is sent.
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

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
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

/// Where the defaults live: `config/default.toml` next to the working
/// directory, or next to the crate when run through cargo from elsewhere.
fn default_file() -> PathBuf {
    let local = Path::new("config/default.toml");
    if local.exists() {
        return local.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml")
}

impl Settings {
    /// Loads the layered configuration.
    pub fn load(extra_file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::File::from(default_file()).required(true));
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
        if self.auth.jwt_secret.expose_secret().is_empty() && self.auth.jwks.is_empty() {
            return Err(ConfigError::Invalid(
                "set auth.jwt_secret or auth.jwks: no token could be verified".into(),
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
        if self.server.max_message_bytes >= self.server.max_frame_bytes {
            return Err(ConfigError::Invalid(
                "server.max_message_bytes must be below server.max_frame_bytes".into(),
            ));
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
        let raw = std::fs::read_to_string(default_file()).unwrap();
        let parsed: Result<Settings, _> = config::Config::builder()
            .add_source(config::File::from_str(&raw, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize();
        let settings = parsed.expect("default.toml and Settings disagree");
        settings.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let raw = std::fs::read_to_string(default_file()).unwrap() + "\n[extra]\nkey = 1\n";
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
}
