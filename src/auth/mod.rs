//! Identity: Supabase Auth access tokens (HS256 with the project secret, or
//! ES256/RS256 keys from a JWKS document or URL) and the backend's internal key.

pub mod jwks;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::AuthSettings;
use jwks::{KeySetStatus, PublishedKeys};

pub use crate::domain::role::Role;

pub const AUDIENCE: &str = "authenticated";
/// Clocks differ a little between Supabase and us: a token is accepted
/// this long before its `nbf`.
pub const NBF_LEEWAY_SECS: i64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("token expired")]
    Expired,
    #[error("invalid token: signed with an unknown key")]
    UnknownKey,
    #[error("cannot load JWKS document {path}: {reason}")]
    Jwks { path: String, reason: String },
}

/// Who is calling, as proven by a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub name: String,
    pub email: Option<String>,
    pub role: Role,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix seconds (`iat`); tokens issued before a user's disconnect by
    /// the backend are refused.
    pub issued_at: Option<i64>,
}

impl Identity {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// The claims of a Supabase access token: what [`TokenVerifier::verify`]
/// reads and what [`mint_token`] (and the test kit, so the tests and the
/// bench) write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    pub aud: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub user_metadata: UserMetadata,
    #[serde(default)]
    pub app_metadata: AppMetadata,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

impl Claims {
    /// Claims as Supabase issues them: our audience, issued now, expiring
    /// at `expires_at` (unix seconds). `role` is a string so that tools can
    /// also mint roles this server does not know.
    pub fn new(
        user_id: &str,
        role: &str,
        name: Option<&str>,
        email: Option<&str>,
        expires_at: i64,
    ) -> Claims {
        Claims {
            sub: user_id.to_owned(),
            exp: expires_at,
            iat: Some(crate::time::now_secs()),
            nbf: None,
            iss: None,
            aud: AUDIENCE.to_owned(),
            email: email.map(str::to_owned),
            user_metadata: UserMetadata {
                full_name: name.map(str::to_owned),
            },
            app_metadata: AppMetadata {
                role: Some(role.to_owned()),
            },
        }
    }

    /// Signs these claims with a project's HS256 secret.
    pub fn sign_hs256(&self, secret: &str) -> Result<String, jsonwebtoken::errors::Error> {
        let key = EncodingKey::from_secret(secret.as_bytes());
        self.sign(Algorithm::HS256, None, &key)
    }

    /// Signs these claims with `key`, naming it `kid` in the header, as a
    /// project that publishes its keys (JWKS) does.
    pub fn sign(
        &self,
        algorithm: Algorithm,
        kid: Option<&str>,
        key: &EncodingKey,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, self, key)
    }
}

/// Where asymmetric keys come from.
enum KeySource {
    /// `auth.jwks`: a document read once at start.
    File(Arc<JwkSet>),
    /// `auth.jwks_url`: published keys, refreshed.
    Url(PublishedKeys),
}

/// Verifies access tokens. Cheap to share behind an `Arc`.
pub struct TokenVerifier {
    hs256: Option<DecodingKey>,
    keys: Option<KeySource>,
    issuer: Option<String>,
}

impl TokenVerifier {
    /// Reads the key file or fetches the key URL (starting its refresh
    /// task on the current runtime).
    pub async fn start(settings: &AuthSettings) -> Result<Self, AuthError> {
        let keys = if !settings.jwks_url.is_empty() {
            let every = Duration::from_secs(settings.jwks_refresh_secs);
            Some(KeySource::Url(
                PublishedKeys::start(settings.jwks_url.clone(), every).await,
            ))
        } else {
            Self::file_keys(settings)?
        };
        Ok(Self::with_keys(settings, keys))
    }

    /// Without a key URL (that needs a runtime): the secret and key file.
    pub fn from_settings(settings: &AuthSettings) -> Result<Self, AuthError> {
        Ok(Self::with_keys(settings, Self::file_keys(settings)?))
    }

    fn file_keys(settings: &AuthSettings) -> Result<Option<KeySource>, AuthError> {
        if settings.jwks.is_empty() {
            return Ok(None);
        }
        let jwks_error = |reason: String| AuthError::Jwks {
            path: settings.jwks.clone(),
            reason,
        };
        let raw = std::fs::read_to_string(&settings.jwks).map_err(|e| jwks_error(e.to_string()))?;
        let set: JwkSet = serde_json::from_str(&raw).map_err(|e| jwks_error(e.to_string()))?;
        Ok(Some(KeySource::File(Arc::new(set))))
    }

    fn with_keys(settings: &AuthSettings, keys: Option<KeySource>) -> Self {
        let secret = settings.jwt_secret.expose_secret();
        TokenVerifier {
            hs256: (!secret.is_empty()).then(|| DecodingKey::from_secret(secret.as_bytes())),
            keys,
            issuer: (!settings.issuer.is_empty()).then(|| settings.issuer.clone()),
        }
    }

    /// The published keys' state, for readiness (`None` without a key URL).
    pub fn key_status(&self) -> Option<KeySetStatus> {
        match &self.keys {
            Some(KeySource::Url(published)) => Some(published.status()),
            _ => None,
        }
    }

    /// False only while a key URL is configured and no set was ever
    /// fetched from it.
    pub fn keys_loaded(&self) -> bool {
        match &self.keys {
            Some(KeySource::Url(published)) => published.loaded(),
            _ => true,
        }
    }

    /// [`Self::verify`], and when the token names a key the published set
    /// does not hold, a refresh of the set (rate-limited) and one more try:
    /// a rotated key works at once, without a restart.
    pub async fn verify_fresh(&self, token: &str) -> Result<Identity, AuthError> {
        match (self.verify(token), &self.keys) {
            (Err(AuthError::UnknownKey), Some(KeySource::Url(published))) => {
                published.refresh_now().await;
                self.verify(token)
            }
            (outcome, _) => outcome,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let invalid = |e: &dyn fmt::Display| AuthError::InvalidToken(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(&e))?;
        let owned_key;
        let key = match header.alg {
            Algorithm::HS256 => self
                .hs256
                .as_ref()
                .ok_or_else(|| invalid(&"HS256 tokens are not accepted"))?,
            Algorithm::ES256 | Algorithm::RS256 => {
                let set = match &self.keys {
                    Some(KeySource::File(set)) => set.clone(),
                    Some(KeySource::Url(published)) => {
                        published.current().ok_or(AuthError::UnknownKey)?
                    }
                    None => return Err(invalid(&"no JWKS configured for asymmetric tokens")),
                };
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| invalid(&"token has no kid"))?;
                let jwk = set.find(kid).ok_or(AuthError::UnknownKey)?;
                // A key published for one algorithm verifies only that one.
                if let Some(published) = jwk.common.key_algorithm {
                    if published != jsonwebtoken::jwk::KeyAlgorithm::from(header.alg) {
                        return Err(invalid(&"the key is not for the token's algorithm"));
                    }
                }
                owned_key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(&e))?;
                &owned_key
            }
            other => return Err(invalid(&format!("algorithm {other:?} is not accepted"))),
        };
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[AUDIENCE]);
        let mut required = vec!["exp", "sub", "aud"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation.leeway = 0;
        // `nbf` is checked below, with a leeway of its own.
        validation.validate_nbf = false;
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => invalid(&e),
        })?;
        if data
            .claims
            .nbf
            .is_some_and(|nbf| nbf > crate::time::now_secs() + NBF_LEEWAY_SECS)
        {
            return Err(invalid(&"token not valid yet (nbf)"));
        }
        identity_from_claims(data.claims)
    }
}

fn identity_from_claims(claims: Claims) -> Result<Identity, AuthError> {
    let user_id = uuid::Uuid::parse_str(&claims.sub)
        .map_err(|_| AuthError::InvalidToken("sub is not a uuid".into()))?
        .hyphenated()
        .to_string();
    // An unknown role gets the least privilege rather than a rejection, so a
    // new role added on the backend does not lock its users out.
    let role = claims
        .app_metadata
        .role
        .as_deref()
        .and_then(Role::parse)
        .unwrap_or_default();
    let name = claims
        .user_metadata
        .full_name
        .filter(|n| !n.trim().is_empty())
        .or_else(|| {
            claims
                .email
                .as_deref()
                .and_then(|e| e.split('@').next())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "Mixroom user".to_owned());
    Ok(Identity {
        user_id,
        name,
        email: claims.email,
        role,
        expires_at: claims.exp,
        issued_at: claims.iat,
    })
}

/// Mints an HS256 token shaped like Supabase's, for the `token` command.
pub fn mint_token(
    secret: &SecretString,
    user_id: &str,
    role: Role,
    name: Option<&str>,
    email: Option<&str>,
    ttl_secs: i64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let expires_at = crate::time::now_secs() + ttl_secs;
    Claims::new(user_id, role.as_str(), name, email, expires_at).sign_hs256(secret.expose_secret())
}

/// The backend's keys in `auth.internal_api_key`: one, or several
/// separated by commas, so a new key can be rolled out before the old one
/// is retired.
pub fn internal_keys(configured: &SecretString) -> impl Iterator<Item = &str> {
    configured
        .expose_secret()
        .split(',')
        .map(str::trim)
        .filter(|key| !key.is_empty())
}

/// Whether `presented` is one of the backend's keys, in constant time
/// whatever the lengths: both sides are hashed first and every key is
/// compared, so neither a key's length nor its first differing byte shows
/// in the time taken.
pub fn internal_key_matches(configured: &SecretString, presented: &str) -> bool {
    use sha2::{Digest, Sha256};
    let presented = Sha256::digest(presented.as_bytes());
    internal_keys(configured).fold(false, |matched, key| {
        let key = Sha256::digest(key.as_bytes());
        let same = key
            .iter()
            .zip(presented.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        matched | same
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(secret: &str) -> TokenVerifier {
        TokenVerifier::from_settings(&AuthSettings {
            jwt_secret: secret.to_owned().into(),
            jwks: String::new(),
            jwks_url: String::new(),
            jwks_refresh_secs: 300,
            issuer: String::new(),
            internal_api_key: "k".to_owned().into(),
        })
        .unwrap()
    }

    #[test]
    fn minted_token_round_trips() {
        let secret: SecretString = "s3cret".to_owned().into();
        let id = uuid::Uuid::new_v4().to_string();
        let token = mint_token(&secret, &id, Role::Engineer, Some("Kai"), None, 60).unwrap();
        let who = verifier("s3cret").verify(&token).unwrap();
        assert_eq!(who.user_id, id);
        assert_eq!(who.role, Role::Engineer);
        assert_eq!(who.name, "Kai");
    }

    #[test]
    fn wrong_secret_and_expired_tokens_are_refused() {
        let secret: SecretString = "s3cret".to_owned().into();
        let id = uuid::Uuid::new_v4().to_string();
        let token = mint_token(&secret, &id, Role::Client, None, None, 60).unwrap();
        assert!(matches!(
            verifier("other").verify(&token),
            Err(AuthError::InvalidToken(_))
        ));
        let expired = mint_token(&secret, &id, Role::Client, None, None, -5).unwrap();
        assert!(matches!(
            verifier("s3cret").verify(&expired),
            Err(AuthError::Expired)
        ));
    }

    #[test]
    fn internal_key_comparison() {
        let key: SecretString = "abc".to_owned().into();
        assert!(internal_key_matches(&key, "abc"));
        assert!(!internal_key_matches(&key, "abd"));
        assert!(!internal_key_matches(&key, "ab"));
        assert!(!internal_key_matches(&"".to_owned().into(), ""));
        let rotating: SecretString = "new-key, old-key".to_owned().into();
        assert!(internal_key_matches(&rotating, "new-key"));
        assert!(internal_key_matches(&rotating, "old-key"));
        assert!(!internal_key_matches(&rotating, "new-key, old-key"));
        assert!(!internal_key_matches(&rotating, ""));
    }
}
