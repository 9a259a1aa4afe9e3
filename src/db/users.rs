//! The users mirror: profiles the Mixroom backend (and token claims) tell us.

use super::models::UserRow;
use super::schema::users;
use super::{Db, DbError};
use crate::{db_run, db_write};

/// What became of a profile written to the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileMirror {
    Mirrored,
    /// The user's data was erased: nothing was written, and nothing about
    /// them may be written again.
    Erased,
    /// The token was issued before the backend disconnected the user
    /// (`POST /v1/internal/users/{id}/disconnect`): refused, nothing written.
    Revoked,
}

/// Why a token is refused after a disconnect (socket and HTTP alike).
pub const REVOKED_TOKEN: &str =
    "this token was issued before the account was signed out everywhere";
/// Why an erased user's token is refused.
pub const ERASED_ACCOUNT: &str = "this account's personal data was erased";

impl ProfileMirror {
    /// Why the token that asked for this mirror may not be used, if so.
    pub fn refusal(self) -> Option<&'static str> {
        match self {
            ProfileMirror::Mirrored => None,
            ProfileMirror::Erased => Some(ERASED_ACCOUNT),
            ProfileMirror::Revoked => Some(REVOKED_TOKEN),
        }
    }
}

impl Db {
    /// Creates or replaces a user's profile mirror, unless the user was
    /// erased. The erased check is part of the update itself, so an erasure
    /// running at the same moment cannot be undone by it.
    pub async fn upsert_user(
        &self,
        id: &str,
        email: Option<&str>,
        name: Option<&str>,
        role: &str,
    ) -> Result<ProfileMirror, DbError> {
        let row = UserRow {
            id: id.to_owned(),
            email: email.map(str::to_owned),
            name: name.map(str::to_owned),
            role: role.to_owned(),
            updated_at: crate::time::now_ms(),
            erased_at: None,
        };
        db_run!(self, |conn| {
            let inserted = diesel::insert_into(users::table)
                .values(&row)
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
            if inserted == 1 {
                return Ok(ProfileMirror::Mirrored);
            }
            let updated = diesel::update(users::table.find(id).filter(users::erased_at.is_null()))
                .set((
                    users::email.eq(&row.email),
                    users::name.eq(&row.name),
                    users::role.eq(&row.role),
                    users::updated_at.eq(row.updated_at),
                ))
                .execute(conn)
                .await?;
            Ok(if updated == 1 {
                ProfileMirror::Mirrored
            } else {
                ProfileMirror::Erased
            })
        })
    }

    /// Refuses the user's tokens issued until now (milliseconds); false
    /// when no such user is mirrored.
    pub async fn revoke_sessions(&self, id: &str, at: i64) -> Result<bool, DbError> {
        let updated = db_run!(self, |conn| {
            diesel::update(users::table.find(id))
                .set(users::sessions_revoked_at.eq(at))
                .execute(conn)
                .await?
        });
        Ok(updated == 1)
    }

    /// When the user's tokens were last revoked (milliseconds), if ever.
    pub async fn sessions_revoked_at(&self, id: &str) -> Result<Option<i64>, DbError> {
        let found: Option<Option<i64>> = db_run!(self, |conn| {
            users::table
                .find(id)
                .select(users::sessions_revoked_at)
                .first(conn)
                .await
                .optional()?
        });
        Ok(found.flatten())
    }

    pub async fn find_user(&self, id: &str) -> Result<Option<UserRow>, DbError> {
        db_run!(self, |conn| {
            Ok(users::table
                .find(id)
                .select(UserRow::as_select())
                .first(conn)
                .await
                .optional()?)
        })
    }
}

impl Db {
    /// Mirrors a token's claims, unless the user's data was erased (an old
    /// token must not bring a deleted name or address back) or the token
    /// was issued (`issued_at`, Unix seconds) before the user's sessions
    /// were revoked.
    pub async fn mirror_token_profile(
        &self,
        id: &str,
        email: Option<&str>,
        name: &str,
        role: &str,
        issued_at: Option<i64>,
    ) -> Result<ProfileMirror, DbError> {
        let now = crate::time::now_ms();
        let row = UserRow {
            id: id.to_owned(),
            email: email.map(str::to_owned),
            name: Some(name.to_owned()),
            role: role.to_owned(),
            updated_at: now,
            erased_at: None,
        };
        // Most connections are of users whose profile is already mirrored
        // as the token says: a read, and no write (on SQLite a write is a
        // turn at the one write lock, and a sync).
        let known: Option<(UserRow, Option<i64>)> = db_run!(self, |conn| {
            users::table
                .find(id)
                .select((UserRow::as_select(), users::sessions_revoked_at))
                .first(conn)
                .await
                .optional()?
        });
        if let Some((known, revoked_at)) = known {
            if known.erased_at.is_some() {
                return Ok(ProfileMirror::Erased);
            }
            if let Some(revoked_at) = revoked_at {
                // `iat` has whole seconds: a token issued in the same second
                // as the revocation is refused too (no `iat`: refused).
                if issued_at.is_none_or(|iat| iat * 1000 <= revoked_at) {
                    return Ok(ProfileMirror::Revoked);
                }
            }
            let unchanged = known.name.as_deref() == Some(name)
                && known.role == role
                && (email.is_none() || known.email.as_deref() == email);
            if unchanged {
                return Ok(ProfileMirror::Mirrored);
            }
        }
        db_write!(self, |conn| {
            let inserted = diesel::insert_into(users::table)
                .values(&row)
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
            if inserted == 1 {
                return Ok(ProfileMirror::Mirrored);
            }
            let unerased = users::table.find(id).filter(users::erased_at.is_null());
            let updated = diesel::update(unerased)
                .set((
                    users::name.eq(name),
                    users::role.eq(role),
                    users::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
            // A token without an email claim leaves the known address.
            if let (1, Some(email)) = (updated, email) {
                diesel::update(unerased)
                    .set(users::email.eq(email))
                    .execute(conn)
                    .await?;
            }
            Ok(if updated == 1 {
                ProfileMirror::Mirrored
            } else {
                ProfileMirror::Erased
            })
        })
    }
}
