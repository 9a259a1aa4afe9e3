//! Signed unsubscribe links: `GET /v1/unsubscribe?token=<user>.<kind>.<mac>`
//! turns one kind of email off for one user, without signing in. The MAC is
//! HMAC-SHA256 over the user and kind, so a link cannot be altered into
//! another user's or another kind's.

use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;

use crate::config::Settings;
use crate::domain::email::EmailKind;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnsubscribeError {
    #[error("the link is incomplete")]
    Malformed,
    #[error("the link names no known kind of email")]
    UnknownKind,
    #[error("the link's signature does not match")]
    BadSignature,
}

/// What a valid token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub user_id: String,
    pub kind: EmailKind,
}

pub struct UnsubscribeSigner {
    key: Vec<u8>,
    api_base_url: String,
}

impl UnsubscribeSigner {
    /// The key is `email.unsubscribe_secret`, or derived from
    /// `auth.jwt_secret` when that is empty (config validation ensures one
    /// of them is set).
    pub fn from_settings(settings: &Settings) -> Self {
        let configured = settings.email.unsubscribe_secret.expose_secret();
        let key = if configured.is_empty() {
            let mut derive =
                HmacSha256::new_from_slice(settings.auth.jwt_secret.expose_secret().as_bytes())
                    .expect("HMAC takes keys of any length");
            derive.update(b"mixroom email unsubscribe key v1");
            derive.finalize().into_bytes().to_vec()
        } else {
            configured.as_bytes().to_vec()
        };
        UnsubscribeSigner {
            key,
            api_base_url: settings.email.api_base_url.trim_end_matches('/').to_owned(),
        }
    }

    fn mac(&self, user_id: &str, kind: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(b"unsubscribe\0");
        mac.update(user_id.as_bytes());
        mac.update(b"\0");
        mac.update(kind.as_bytes());
        mac
    }

    pub fn token(&self, user_id: &str, kind: &str) -> String {
        let signature = hex::encode(self.mac(user_id, kind).finalize().into_bytes());
        format!("{user_id}.{kind}.{signature}")
    }

    /// The link to put in an email.
    pub fn url(&self, user_id: &str, kind: &str) -> String {
        let token = self.token(user_id, kind);
        let encoded: String = token
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        format!("{}/v1/unsubscribe?token={encoded}", self.api_base_url)
    }

    pub fn verify(&self, token: &str) -> Result<Unsubscribe, UnsubscribeError> {
        // The user id comes first and may itself contain dots.
        let mut parts = token.rsplitn(3, '.');
        let (Some(signature), Some(kind), Some(user_id)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(UnsubscribeError::Malformed);
        };
        if user_id.is_empty() {
            return Err(UnsubscribeError::Malformed);
        }
        let Some(kind) = EmailKind::parse(kind) else {
            return Err(UnsubscribeError::UnknownKind);
        };
        let signature = hex::decode(signature).map_err(|_| UnsubscribeError::BadSignature)?;
        self.mac(user_id, kind.as_str())
            .verify_slice(&signature)
            .map_err(|_| UnsubscribeError::BadSignature)?;
        Ok(Unsubscribe {
            user_id: user_id.to_owned(),
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> UnsubscribeSigner {
        let mut settings = Settings::load(None).unwrap();
        settings.email.api_base_url = "https://rt.example.com/".into();
        UnsubscribeSigner::from_settings(&settings)
    }

    #[test]
    fn a_token_verifies_as_what_it_was_made_for() {
        let signer = signer();
        let token = signer.token("6f1c1a52-0000-4000-8000-000000000001", "chat");
        assert_eq!(
            signer.verify(&token).unwrap(),
            Unsubscribe {
                user_id: "6f1c1a52-0000-4000-8000-000000000001".into(),
                kind: EmailKind::Chat
            }
        );
        let url = signer.url("u.with.dots", "marketing");
        assert!(
            url.starts_with("https://rt.example.com/v1/unsubscribe?token=u.with.dots.marketing.")
        );
        let token = url.split_once("token=").unwrap().1;
        assert_eq!(signer.verify(token).unwrap().user_id, "u.with.dots");
    }

    #[test]
    fn altered_tokens_are_refused() {
        let signer = signer();
        let token = signer.token("ava", "chat");
        let other_kind = token.replacen(".chat.", ".booking.", 1);
        assert_eq!(
            signer.verify(&other_kind),
            Err(UnsubscribeError::BadSignature)
        );
        let other_user = token.replacen("ava", "sam", 1);
        assert_eq!(
            signer.verify(&other_user),
            Err(UnsubscribeError::BadSignature)
        );
        let mut flipped = token.clone();
        let last = flipped.pop().unwrap();
        flipped.push(if last == '0' { '1' } else { '0' });
        assert_eq!(signer.verify(&flipped), Err(UnsubscribeError::BadSignature));
        assert_eq!(
            signer.verify("ava.gossip.00"),
            Err(UnsubscribeError::UnknownKind)
        );
        assert_eq!(signer.verify("nonsense"), Err(UnsubscribeError::Malformed));
        assert_eq!(signer.verify(".chat.00"), Err(UnsubscribeError::Malformed));
    }

    #[test]
    fn the_key_follows_the_configured_secret() {
        let mut settings = Settings::load(None).unwrap();
        let token = UnsubscribeSigner::from_settings(&settings).token("ava", "chat");
        settings.email.unsubscribe_secret = "another-secret".to_owned().into();
        let other = UnsubscribeSigner::from_settings(&settings);
        assert_eq!(other.verify(&token), Err(UnsubscribeError::BadSignature));
    }
}
