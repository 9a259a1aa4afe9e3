//! The users mirror: profiles the Mixroom backend (and token claims) tell us.

use diesel::upsert::excluded;

use super::models::UserRow;
use super::schema::users;
use super::{Db, DbError};
use crate::db_run;

impl Db {
    /// Creates or replaces a user's profile mirror.
    pub async fn upsert_user(
        &self,
        id: &str,
        email: Option<&str>,
        name: Option<&str>,
        role: &str,
    ) -> Result<(), DbError> {
        let row = UserRow {
            id: id.to_owned(),
            email: email.map(str::to_owned),
            name: name.map(str::to_owned),
            role: role.to_owned(),
            updated_at: crate::time::now_ms(),
            erased_at: None,
        };
        db_run!(self, |conn| {
            diesel::insert_into(users::table)
                .values(&row)
                .on_conflict(users::id)
                .do_update()
                .set((
                    users::email.eq(excluded(users::email)),
                    users::name.eq(excluded(users::name)),
                    users::role.eq(excluded(users::role)),
                    users::updated_at.eq(excluded(users::updated_at)),
                ))
                .execute(conn)
                .await?;
            Ok(())
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
    ) -> Result<(), DbError> {
        let now = crate::time::now_ms();
        let row = UserRow {
            id: id.to_owned(),
            email: email.map(str::to_owned),
            name: Some(name.to_owned()),
            role: role.to_owned(),
            updated_at: now,
            erased_at: None,
        };
        db_run!(self, |conn| {
            let inserted = diesel::insert_into(users::table)
                .values(&row)
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
            if inserted == 0 {
                let unerased = users::table.find(id).filter(users::erased_at.is_null());
                diesel::update(unerased)
                    .set((
                        users::name.eq(name),
                        users::role.eq(role),
                        users::updated_at.eq(now),
                    ))
                    .execute(conn)
                    .await?;
                // A token without an email claim leaves the known address.
                if let Some(email) = email {
                    diesel::update(unerased)
                        .set(users::email.eq(email))
                        .execute(conn)
                        .await?;
                }
            }
            Ok(())
        })
    }
}
