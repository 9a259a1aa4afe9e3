//! Identity: Supabase Auth access tokens (HS256 with the project secret, or
//! ES256/RS256 keys from a JWKS document) and the backend's internal key.

use std::fmt;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::AuthSettings;

pub const AUDIENCE: &str = "authenticated";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("token expired")]
    Expired,
    #[error("cannot load JWKS document {path}: {reason}")]
    Jwks { path: String, reason: String },
}

/// The roles the contract knows; a missing role claim means `client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Client,
    StudioOwner,
    Engineer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::StudioOwner => "studio_owner",
            Role::Engineer => "engineer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(raw: &str) -> Option<Role> {
        match raw {
            "client" => Some(Role::Client),
            "studio_owner" => Some(Role::StudioOwner),
            "engineer" => Some(Role::Engineer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
}

impl Identity {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    aud: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(default)]
    user_metadata: UserMetadata,
    #[serde(default)]
    app_metadata: AppMetadata,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct UserMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    full_name: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AppMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
}

/// Verifies access tokens. Cheap to share behind an `Arc`.
pub struct TokenVerifier {
    hs256: Option<DecodingKey>,
    jwks: Option<JwkSet>,
}

impl TokenVerifier {
    pub fn from_settings(settings: &AuthSettings) -> Result<Self, AuthError> {
        let secret = settings.jwt_secret.expose_secret();
        let hs256 = (!secret.is_empty()).then(|| DecodingKey::from_secret(secret.as_bytes()));
        let jwks = if settings.jwks.is_empty() {
            None
        } else {
            let jwks_error = |reason: String| AuthError::Jwks {
                path: settings.jwks.clone(),
                reason,
            };
            let raw =
                std::fs::read_to_string(&settings.jwks).map_err(|e| jwks_error(e.to_string()))?;
            Some(serde_json::from_str(&raw).map_err(|e| jwks_error(e.to_string()))?)
        };
        Ok(Self { hs256, jwks })
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
                let jwks = self
                    .jwks
                    .as_ref()
                    .ok_or_else(|| invalid(&"no JWKS configured for asymmetric tokens"))?;
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| invalid(&"token has no kid"))?;
                let jwk = jwks.find(kid).ok_or_else(|| invalid(&"unknown kid"))?;
                owned_key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(&e))?;
                &owned_key
            }
            other => return Err(invalid(&format!("algorithm {other:?} is not accepted"))),
        };
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => invalid(&e),
        })?;
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
    let now = crate::time::now_secs();
    let claims = Claims {
        sub: user_id.to_owned(),
        exp: now + ttl_secs,
        iat: Some(now),
        aud: AUDIENCE.to_owned(),
        email: email.map(str::to_owned),
        user_metadata: UserMetadata {
            full_name: name.map(str::to_owned),
        },
        app_metadata: AppMetadata {
            role: Some(role.as_str().to_owned()),
        },
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    )
}

/// Compares the backend's key in constant time.
pub fn internal_key_matches(expected: &SecretString, presented: &str) -> bool {
    let expected = expected.expose_secret().as_bytes();
    let presented = presented.as_bytes();
    if expected.is_empty() || expected.len() != presented.len() {
        return false;
    }
    expected
        .iter()
        .zip(presented)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(secret: &str) -> TokenVerifier {
        TokenVerifier::from_settings(&AuthSettings {
            jwt_secret: secret.to_owned().into(),
            jwks: String::new(),
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
    }
}
