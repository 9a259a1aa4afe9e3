//! Supabase-shaped access tokens, minted as the server's `token` command
//! mints them.

pub use jsonwebtoken::Algorithm;
use jsonwebtoken::EncodingKey;
pub use mixroom_realtime::auth::Claims;
/// Unix seconds, by the server's clock function.
pub use mixroom_realtime::time::now_secs;

/// The claims of a user's access token expiring at `exp` (unix seconds);
/// the address is made from the name (`Ava` → `ava@example.com`).
pub fn claims(user_id: &str, role: &str, name: &str, exp: i64) -> Claims {
    Claims::new(user_id, role, Some(name), Some(&email_of(name)), exp)
}

/// HS256-signs `claims` with `secret`.
pub fn sign(claims: &Claims, secret: &str) -> String {
    claims
        .sign_hs256(secret)
        .expect("HS256 signing cannot fail")
}

/// Signs `claims` with an ES256 or RS256 private key (PEM) named `kid`, as
/// a project that publishes its keys (JWKS) does.
pub fn sign_with_pem(claims: &Claims, algorithm: Algorithm, kid: &str, pem: &[u8]) -> String {
    let key = match algorithm {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
        _ => EncodingKey::from_rsa_pem(pem),
    }
    .expect("a PEM private key");
    claims
        .sign(algorithm, Some(kid), &key)
        .expect("signing with a valid key cannot fail")
}

/// `Ava` → `ava@example.com`, `Sub 7` → `sub.7@example.com`.
pub fn email_of(name: &str) -> String {
    format!("{}@example.com", name.to_lowercase().replace(' ', "."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_the_claims_the_server_reads() {
        let id = "6d1f3f4e-7a55-4c7e-9a63-2f0c8b1d9e21";
        let claims = claims(id, "engineer", "Kai Lee", now_secs() + 60);
        assert_eq!(claims.sub, id);
        assert_eq!(claims.aud, "authenticated");
        assert_eq!(claims.email.as_deref(), Some("kai.lee@example.com"));
        assert_eq!(sign(&claims, "s").split('.').count(), 3);
    }
}
