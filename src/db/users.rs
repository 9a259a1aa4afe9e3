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
    /// Mirrors a token's claims, unless the user's data was erased: an old
    /// token must not bring a deleted name or address back.
    pub async fn mirror_token_profile(
        &self,
        id: &str,
        email: Option<&str>,
        name: &str,
        role: &str,
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
        let known: Option<UserRow> = db_run!(self, |conn| {
            users::table
                .find(id)
                .select(UserRow::as_select())
                .first(conn)
                .await
                .optional()?
        });
        if let Some(known) = known {
            if known.erased_at.is_some() {
                return Ok(ProfileMirror::Erased);
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
