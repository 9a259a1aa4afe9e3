//! The server's VAPID identity (RFC 8292): a P-256 key pair whose public
//! half browsers subscribe with, and whose private half signs a short JWT
//! for each push so the push service knows the push comes from us.

use std::time::Duration;

use base64ct::{Base64UrlUnpadded, Encoding};
use secrecy::ExposeSecret;
use web_push_native::jwt_simple::prelude::{
    Claims, ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair,
};

use super::PushError;
use crate::config::{Environment, Settings};
use crate::db::Db;

/// How long one VAPID token is valid. RFC 8292 allows at most 24 hours;
/// each push signs a fresh one, so an hour leaves room for clock skew.
const TOKEN_VALIDITY: Duration = Duration::from_secs(3600);

pub struct VapidKey {
    key: ES256KeyPair,
    /// The uncompressed public point, base64url: the `k=` of every push
    /// and the browsers' `applicationServerKey`.
    public_key: String,
    subject: String,
}

impl VapidKey {
    /// From `push.vapid_private_key`: a base64url 32-byte scalar, or a PEM.
    pub fn parse(private_key: &str, subject: &str) -> Result<Self, PushError> {
        let text = private_key.trim();
        let key = if text.starts_with("-----BEGIN") {
            ES256KeyPair::from_pem(text)
                .map_err(|e| PushError::Key(format!("not a P-256 private key PEM: {e}")))?
        } else {
            let raw = decode_base64url(text).ok_or_else(|| {
                PushError::Key("not base64url (nor a PEM beginning with -----BEGIN)".into())
            })?;
            if raw.len() != 32 {
                return Err(PushError::Key(format!(
                    "a raw P-256 private key is 32 bytes, this one decodes to {}",
                    raw.len()
                )));
            }
            ES256KeyPair::from_bytes(&raw)
                .map_err(|e| PushError::Key(format!("not a P-256 private key: {e}")))?
        };
        let public_point = key.public_key().public_key().to_bytes_uncompressed();
        Ok(VapidKey {
            key,
            public_key: Base64UrlUnpadded::encode_string(&public_point),
            subject: subject.to_owned(),
        })
    }

    /// A fresh private key, base64url.
    pub fn generate_private() -> String {
        Base64UrlUnpadded::encode_string(&ES256KeyPair::generate().to_bytes())
    }

    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The `Authorization` header for a push to `endpoint`: `vapid t=<JWT>,
    /// k=<public key>`, the JWT's `aud` being the endpoint's origin (with
    /// its port when not the scheme's default).
    pub fn authorization(&self, endpoint: &reqwest::Url) -> Result<String, PushError> {
        let claims = Claims::create(TOKEN_VALIDITY.into())
            .with_audience(endpoint.origin().ascii_serialization())
            .with_subject(&self.subject);
        let token = self
            .key
            .sign(claims)
            .map_err(|e| PushError::Key(format!("cannot sign a VAPID token: {e}")))?;
        Ok(format!("vapid t={token}, k={}", self.public_key))
    }
}

/// Base64url, with or without padding (browsers send it without).
pub fn decode_base64url(text: &str) -> Option<Vec<u8>> {
    Base64UrlUnpadded::decode_vec(text.trim_end_matches('=')).ok()
}

/// The key push runs with: the configured one; else, in development, the
/// one stored in the database (generated on the first start, so restarts
/// and every node of a development cluster keep the same); else none, and
/// push is off.
pub async fn load(settings: &Settings, db: &Db) -> Result<Option<VapidKey>, PushError> {
    let push = &settings.push;
    let configured = push.vapid_private_key.expose_secret();
    if !configured.trim().is_empty() {
        return VapidKey::parse(configured, &push.vapid_subject).map(Some);
    }
    if settings.server.environment == Environment::Production {
        tracing::warn!(
            "push.vapid_private_key is empty: Web Push is off (the key routes answer 503 \
             push_disabled); set MIXROOM__PUSH__VAPID_PRIVATE_KEY to turn it on"
        );
        return Ok(None);
    }
    let stored = db
        .development_vapid_key(&VapidKey::generate_private())
        .await?;
    let key = VapidKey::parse(&stored, &push.vapid_subject)?;
    tracing::info!(
        public_key = %key.public_key(),
        "push.vapid_private_key is empty: using the development VAPID key stored in the database"
    );
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_key_and_its_pem_are_the_same_identity() {
        let raw = VapidKey::generate_private();
        let key = VapidKey::parse(&raw, "mailto:ops@example.com").unwrap();
        assert_eq!(decode_base64url(key.public_key()).unwrap().len(), 65);
        let pem = ES256KeyPair::from_bytes(&decode_base64url(&raw).unwrap())
            .unwrap()
            .to_pem()
            .unwrap();
        let from_pem = VapidKey::parse(&pem, "mailto:ops@example.com").unwrap();
        assert_eq!(from_pem.public_key(), key.public_key());
        // Padded base64url is accepted too.
        let padded = format!("{raw}=");
        assert!(VapidKey::parse(&padded, "mailto:ops@example.com").is_ok());
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        let short = Base64UrlUnpadded::encode_string(&[7u8; 16]);
        let error = VapidKey::parse(&short, "mailto:a@b.c").err().unwrap();
        assert!(error.to_string().contains("32 bytes"), "{error}");
        assert!(VapidKey::parse("not base64 at all!", "mailto:a@b.c").is_err());
    }

    #[test]
    fn the_audience_is_the_endpoints_origin_with_its_port() {
        let key = VapidKey::parse(&VapidKey::generate_private(), "mailto:a@b.c").unwrap();
        let header = key
            .authorization(&"http://127.0.0.1:4567/push/abc".parse().unwrap())
            .unwrap();
        let token = header
            .strip_prefix("vapid t=")
            .and_then(|rest| rest.split(", k=").next())
            .unwrap();
        let claims = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&Base64UrlUnpadded::decode_vec(claims).unwrap()).unwrap();
        assert_eq!(claims["aud"], "http://127.0.0.1:4567");
        assert_eq!(claims["sub"], "mailto:a@b.c");
        assert!(header.ends_with(&format!("k={}", key.public_key())));
    }
}
