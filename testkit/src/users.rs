//! People using Mixroom, each with a fresh id and a valid token.

use uuid::Uuid;

use crate::tokens::{claims, email_of, now_secs, sign, Claims};

/// The HS256 secret of the servers the API tests start, and so of the
/// tokens [`User`] carries.
pub const JWT_SECRET: &str = "mixroom-test-jwt-secret-7d3f0a9c1e5b4a2f8c6d0e1f2a3b4c5d";

/// A person using Mixroom, with a fresh id and a token valid for an hour.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub role: String,
    pub name: String,
    pub token: String,
}

impl User {
    pub fn new(role: &str, name: &str) -> User {
        let id = Uuid::new_v4().to_string();
        let token = sign(&claims(&id, role, name, now_secs() + 3600), JWT_SECRET);
        User {
            id,
            role: role.to_owned(),
            name: name.to_owned(),
            token,
        }
    }

    pub fn client(name: &str) -> User {
        User::new("client", name)
    }

    pub fn studio_owner(name: &str) -> User {
        User::new("studio_owner", name)
    }

    pub fn engineer(name: &str) -> User {
        User::new("engineer", name)
    }

    pub fn admin(name: &str) -> User {
        User::new("admin", name)
    }

    pub fn email(&self) -> String {
        email_of(&self.name)
    }

    /// This user's claims, expiring at `exp` (unix seconds).
    pub fn claims(&self, exp: i64) -> Claims {
        claims(&self.id, &self.role, &self.name, exp)
    }

    /// Another token for this user, expiring at `exp` (unix seconds).
    pub fn token_expiring_at(&self, exp: i64) -> String {
        sign(&self.claims(exp), JWT_SECRET)
    }
}
