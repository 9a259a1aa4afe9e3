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
    pub limits: LimitSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
    pub max_http_body_bytes: usize,
    pub heartbeat_ms: u64,
    pub client_timeout_ms: u64,
    pub auth_timeout_ms: u64,
    pub room_idle_ms: u64,
    pub shutdown_grace_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// May carry a password, hence secret.
    pub url: SecretString,
    pub pool_size: usize,
    pub max_batch: usize,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub frames_per_sec: u32,
    pub frames_burst: u32,
    pub flood_strikes: u32,
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
