//! What a browser's `PushSubscription` must be for us to push to it.

use base64ct::{Base64UrlUnpadded, Encoding};
use web_push_native::p256;

use super::vapid::decode_base64url;
use super::PushError;
use crate::config::Environment;

/// Longer endpoints are refused (real ones are a few hundred characters).
const MAX_ENDPOINT_CHARS: usize = 2048;
/// An uncompressed P-256 point: 0x04, then x and y.
const P256DH_BYTES: usize = 65;
const AUTH_BYTES: usize = 16;

/// A subscription that passed the checks, keys in unpadded base64url.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedSubscription {
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
}

/// Whether `host` is one of `patterns`: a host name, or `*.domain` for any
/// host under it. An empty list allows every host.
fn host_allowed(host: &str, patterns: &[String]) -> bool {
    patterns.is_empty()
        || patterns
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
                None => host.eq_ignore_ascii_case(pattern),
            })
}

/// Checks a subscription as the browser hands it over. The endpoint must
/// be https on one of `push_hosts` (the browsers' push services: the
/// server POSTs to whatever URL a user registers, so any other host would
/// let a user aim it at hosts of the server's own network), on the default
/// port; outside production the loopback (127.0.0.1, localhost, [::1]) is
/// accepted too, over http as well, for local push services in tests.
pub fn check(
    endpoint: &str,
    p256dh: &str,
    auth: &str,
    environment: Environment,
    push_hosts: &[String],
) -> Result<CheckedSubscription, PushError> {
    let invalid = |message: String| Err(PushError::InvalidSubscription(message));
    if endpoint.chars().count() > MAX_ENDPOINT_CHARS {
        return invalid(format!(
            "`endpoint` is longer than {MAX_ENDPOINT_CHARS} characters"
        ));
    }
    let Ok(url) = reqwest::Url::parse(endpoint) else {
        return invalid("`endpoint` must be an absolute https:// URL".into());
    };
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    let scheme_ok = match url.scheme() {
        "https" => url.host_str().is_some(),
        "http" => loopback && environment != Environment::Production,
        _ => false,
    };
    if !scheme_ok {
        return invalid(format!(
            "`endpoint` must be an https:// URL{}",
            if environment == Environment::Production {
                ""
            } else {
                " (http:// only on 127.0.0.1 or localhost, outside production)"
            }
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return invalid("`endpoint` must not carry credentials".into());
    }
    let local = loopback && environment != Environment::Production;
    let host = url.host_str().unwrap_or_default();
    if !local && (url.port().is_some() || !host_allowed(host, push_hosts)) {
        return invalid(format!(
            "`endpoint` must be on a browser push service ({}), on its default port",
            push_hosts.join(", ")
        ));
    }
    let Some(p256dh_raw) = decode_base64url(p256dh.trim()) else {
        return invalid("`keys.p256dh` must be base64url".into());
    };
    if p256dh_raw.len() != P256DH_BYTES {
        return invalid(format!(
            "`keys.p256dh` must decode to {P256DH_BYTES} bytes (an uncompressed P-256 public \
             key), not {}",
            p256dh_raw.len()
        ));
    }
    if p256::PublicKey::from_sec1_bytes(&p256dh_raw).is_err() {
        return invalid("`keys.p256dh` is not a point on the P-256 curve".into());
    }
    let Some(auth_raw) = decode_base64url(auth.trim()) else {
        return invalid("`keys.auth` must be base64url".into());
    };
    if auth_raw.len() != AUTH_BYTES {
        return invalid(format!(
            "`keys.auth` must decode to {AUTH_BYTES} bytes, not {}",
            auth_raw.len()
        ));
    }
    Ok(CheckedSubscription {
        endpoint: url.to_string(),
        p256dh: Base64UrlUnpadded::encode_string(&p256dh_raw),
        auth: Base64UrlUnpadded::encode_string(&auth_raw),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (String, String) {
        use web_push_native::jwt_simple::prelude::{ECDSAP256PublicKeyLike, ES256KeyPair};
        let point = ES256KeyPair::generate()
            .public_key()
            .public_key()
            .to_bytes_uncompressed();
        (
            Base64UrlUnpadded::encode_string(&point),
            Base64UrlUnpadded::encode_string(&[9u8; 16]),
        )
    }

    fn hosts() -> Vec<String> {
        vec!["fcm.googleapis.com".into(), "*.notify.windows.com".into()]
    }

    #[test]
    fn only_push_services_on_their_default_port_are_pushed_to() {
        let (p256dh, auth) = keys();
        let prod = |url: &str| check(url, &p256dh, &auth, Environment::Production, &hosts());
        assert!(prod("https://fcm.googleapis.com/fcm/send/x").is_ok());
        assert!(prod("https://wns2-par02p.notify.windows.com/w/?token=x").is_ok());
        for refused in [
            "https://10.0.0.5/x",
            "https://internal-admin/x",
            "https://fcm.googleapis.com:8443/x",
            "https://notify.windows.com.evil.test/x",
            "https://evilnotify.windows.com/x",
            "https://127.0.0.1/x",
        ] {
            let error = prod(refused).unwrap_err();
            assert!(
                error.to_string().contains("push service"),
                "{refused}: {error}"
            );
        }
        assert!(host_allowed("anything.test", &[]));
    }

    #[test]
    fn https_endpoints_with_real_keys_pass() {
        let (p256dh, auth) = keys();
        let ok = check(
            "https://fcm.googleapis.com/fcm/send/abc",
            &p256dh,
            &auth,
            Environment::Production,
            &hosts(),
        )
        .unwrap();
        assert_eq!(ok.p256dh, p256dh);
        assert!(check(
            "http://127.0.0.1:9/x",
            &p256dh,
            &auth,
            Environment::Development,
            &hosts()
        )
        .is_ok());
        assert!(check(
            "http://127.0.0.1:9/x",
            &p256dh,
            &auth,
            Environment::Production,
            &hosts()
        )
        .is_err());
        assert!(check(
            "http://push.example/x",
            &p256dh,
            &auth,
            Environment::Development,
            &hosts()
        )
        .is_err());
        assert!(check(
            "ftp://push.example/x",
            &p256dh,
            &auth,
            Environment::Development,
            &hosts()
        )
        .is_err());
    }

    #[test]
    fn key_lengths_are_checked_after_decoding() {
        let (p256dh, auth) = keys();
        let url = "https://push.example/x";
        let short = Base64UrlUnpadded::encode_string(&[4u8; 33]);
        let error = check(url, &short, &auth, Environment::Development, &[]).unwrap_err();
        assert!(error.to_string().contains("65 bytes"), "{error}");
        let error = check(url, &p256dh, "AAAA", Environment::Development, &[]).unwrap_err();
        assert!(error.to_string().contains("16 bytes"), "{error}");
        let not_a_point = Base64UrlUnpadded::encode_string(&[4u8; 65]);
        assert!(check(url, &not_a_point, &auth, Environment::Development, &[]).is_err());
    }
}
