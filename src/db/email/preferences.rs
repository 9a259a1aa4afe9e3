//! Who wants which kinds of email, and their own delay for chat.

use diesel::prelude::{Insertable, Queryable, Selectable};
use diesel_async::AsyncConnection;

use crate::db::schema::email_preferences;
use crate::db::{Db, DbError};
use crate::db_run;
use crate::domain::email::EmailKind;

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = email_preferences, treat_none_as_default_value = false)]
pub struct PreferencesRow {
    pub user_id: String,
    pub chat: bool,
    pub booking: bool,
    pub support: bool,
    pub marketing: bool,
    pub reminder: bool,
    pub chat_delay_secs: Option<i64>,
    pub updated_at: i64,
}

impl PreferencesRow {
    /// What a user who never chose gets: everything but marketing.
    pub fn defaults(user_id: &str) -> Self {
        PreferencesRow {
            user_id: user_id.to_owned(),
            chat: true,
            booking: true,
            support: true,
            marketing: false,
            reminder: true,
            chat_delay_secs: None,
            updated_at: 0,
        }
    }

    /// Whether emails of `kind` are on (policy emails always are).
    pub fn allows(&self, kind: EmailKind) -> bool {
        match kind {
            EmailKind::Chat => self.chat,
            EmailKind::Booking => self.booking,
            EmailKind::Support => self.support,
            EmailKind::Marketing => self.marketing,
            EmailKind::Reminder => self.reminder,
            EmailKind::Policy => true,
        }
    }

    /// Turns an optional kind on or off; policy emails are not a switch
    /// (the caller refuses them first), so setting them changes nothing.
    pub fn set(&mut self, kind: EmailKind, enabled: bool) {
        let flag = match kind {
            EmailKind::Chat => &mut self.chat,
            EmailKind::Booking => &mut self.booking,
            EmailKind::Support => &mut self.support,
            EmailKind::Marketing => &mut self.marketing,
            EmailKind::Reminder => &mut self.reminder,
            EmailKind::Policy => return,
        };
        *flag = enabled;
    }
}

impl Db {
    pub async fn email_preferences(
        &self,
        user_id: &str,
    ) -> Result<Option<PreferencesRow>, DbError> {
        db_run!(self, |conn| {
            Ok(email_preferences::table
                .find(user_id)
                .select(PreferencesRow::as_select())
                .first(conn)
                .await
                .optional()?)
        })
    }

    pub async fn email_preferences_of(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<PreferencesRow>, DbError> {
        db_run!(self, |conn| {
            Ok(email_preferences::table
                .filter(email_preferences::user_id.eq_any(user_ids))
                .select(PreferencesRow::as_select())
                .load(conn)
                .await?)
        })
    }

    /// Stores a user's whole preferences row.
    pub async fn save_email_preferences(&self, row: &PreferencesRow) -> Result<(), DbError> {
        use diesel::upsert::excluded;
        db_run!(self, |conn| {
            diesel::insert_into(email_preferences::table)
                .values(row)
                .on_conflict(email_preferences::user_id)
                .do_update()
                .set((
                    email_preferences::chat.eq(excluded(email_preferences::chat)),
                    email_preferences::booking.eq(excluded(email_preferences::booking)),
                    email_preferences::support.eq(excluded(email_preferences::support)),
                    email_preferences::marketing.eq(excluded(email_preferences::marketing)),
                    email_preferences::reminder.eq(excluded(email_preferences::reminder)),
                    email_preferences::chat_delay_secs
                        .eq(excluded(email_preferences::chat_delay_secs)),
                    email_preferences::updated_at.eq(excluded(email_preferences::updated_at)),
                ))
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    /// Turns one kind of email on or off, leaving the others as they are;
    /// returns the stored preferences.
    pub async fn set_email_kind(
        &self,
        user_id: &str,
        kind: EmailKind,
        enabled: bool,
    ) -> Result<PreferencesRow, DbError> {
        let now = crate::time::now_ms();
        let mut defaults = PreferencesRow::defaults(user_id);
        defaults.updated_at = now;
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                diesel::insert_into(email_preferences::table)
                    .values(&defaults)
                    .on_conflict_do_nothing()
                    .execute(conn)
                    .await?;
                let row = email_preferences::table.find(user_id);
                let updated = match kind {
                    EmailKind::Chat => diesel::update(row)
                        .set((
                            email_preferences::chat.eq(enabled),
                            email_preferences::updated_at.eq(now),
                        ))
                        .execute(conn),
                    EmailKind::Booking => diesel::update(row)
                        .set((
                            email_preferences::booking.eq(enabled),
                            email_preferences::updated_at.eq(now),
                        ))
                        .execute(conn),
                    EmailKind::Support => diesel::update(row)
                        .set((
                            email_preferences::support.eq(enabled),
                            email_preferences::updated_at.eq(now),
                        ))
                        .execute(conn),
                    EmailKind::Marketing => diesel::update(row)
                        .set((
                            email_preferences::marketing.eq(enabled),
                            email_preferences::updated_at.eq(now),
                        ))
                        .execute(conn),
                    EmailKind::Reminder => diesel::update(row)
                        .set((
                            email_preferences::reminder.eq(enabled),
                            email_preferences::updated_at.eq(now),
                        ))
                        .execute(conn),
                    // Not a switch: no unsubscribe link is made for it.
                    EmailKind::Policy => diesel::update(row)
                        .set(email_preferences::updated_at.eq(now))
                        .execute(conn),
                };
                updated.await?;
                Ok(email_preferences::table
                    .find(user_id)
                    .select(PreferencesRow::as_select())
                    .first(conn)
                    .await?)
            })
            .await
        })
    }
}
