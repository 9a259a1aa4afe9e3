//! The announcer actor: works through running announcements (see
//! [`crate::db::announcements`]) a page of users at a time, storing each
//! page's notifications and emails with the cursor, showing the
//! notifications to whoever is connected, and kicking the mailer.
//!
//! An announcement's emails are bulk emails: the mailer sends them after
//! every other email, so a broadcast to every user never holds up a chat
//! email, a reminder or a confirmation. Pages are written through SQLite's
//! write gate and a short pause apart, so chat appends and the notifier
//! take their turns in between.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::digest::Composer;
use super::mailer::{Kick, Mailer};
use super::NotifyError;
use crate::db::announcements::{AnnouncementRow, Page};
use crate::db::models::NotificationRow;
use crate::db::Db;
use crate::domain::announcement::announcement_source;
use crate::metrics::Metrics;
use crate::notifications::Inbox;

/// A lease outlives a page's work by far; renewed with every page.
const LEASE_MS: i64 = 30_000;
/// Between pages, for the other writers.
const PAGE_PAUSE: Duration = Duration::from_millis(20);
/// After a storage error the actor looks again this much later.
const ERROR_RETRY: Duration = Duration::from_secs(2);

/// A new announcement was stored on this node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AnnouncementCreated;

pub struct Announcer {
    work: Arc<AnnouncerWork>,
    sweep_every: Duration,
    running: bool,
    run_again: bool,
}

/// What a run needs, off the actor.
pub struct AnnouncerWork {
    pub db: Db,
    pub inbox: Inbox,
    pub mailer: Addr<Mailer>,
    pub composer: Arc<Composer>,
    pub metrics: Arc<Metrics>,
    pub page_size: usize,
    /// Who holds a lease: this process.
    pub node: String,
}

impl Announcer {
    pub fn new(work: AnnouncerWork, sweep_every: Duration) -> Self {
        Announcer {
            work: Arc::new(work),
            sweep_every,
            running: false,
            run_again: false,
        }
    }

    fn run(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            self.run_again = true;
            return;
        }
        self.running = true;
        let work = self.work.clone();
        ctx.spawn(async move { work.run().await }.into_actor(self).map(
            |result, announcer, ctx| {
                announcer.running = false;
                if let Err(error) = result {
                    tracing::warn!(%error, "announcements: a run failed; retrying");
                    ctx.run_later(ERROR_RETRY, |announcer, ctx| announcer.run(ctx));
                }
                if std::mem::take(&mut announcer.run_again) {
                    announcer.run(ctx);
                }
            },
        ));
    }
}

impl AnnouncerWork {
    /// Every announcement this node can take, to its end.
    async fn run(&self) -> Result<(), NotifyError> {
        loop {
            let lease_until = crate::time::now_ms() + LEASE_MS;
            let Some(announcement) = self.db.claim_announcement(&self.node, lease_until).await?
            else {
                return Ok(());
            };
            self.announce(announcement).await?;
        }
    }

    async fn announce(&self, mut announcement: AnnouncementRow) -> Result<(), NotifyError> {
        loop {
            let users = self
                .db
                .announcement_page(&announcement, self.page_size as i64)
                .await?;
            let Some(last) = users.last() else {
                self.db
                    .finish_announcement(&announcement.id, &self.node)
                    .await?;
                tracing::info!(
                    announcement = %announcement.id,
                    "announcement done: every user notified"
                );
                return Ok(());
            };
            let now = crate::time::now_ms();
            let mut page = Page {
                from: announcement.cursor.clone().unwrap_or_default(),
                to: last.user_id.clone(),
                notifications: Vec::with_capacity(users.len()),
                emails: Vec::new(),
            };
            for user in &users {
                let notification = notification(&announcement, &user.user_id, now);
                if let Some(address) = &user.email {
                    page.emails.push(self.composer.compose_announcement(
                        &notification,
                        user.name.as_deref(),
                        address,
                        &announcement.id,
                        now,
                    ));
                }
                page.notifications.push(notification);
            }
            let lease_until = crate::time::now_ms() + LEASE_MS;
            let held = self
                .db
                .store_announcement_page(&announcement.id, &self.node, lease_until, &page)
                .await?;
            if !held {
                tracing::warn!(
                    announcement = %announcement.id,
                    "announcement: the lease ran out; the node holding it now goes on"
                );
                return Ok(());
            }
            self.metrics
                .announcement_users
                .inc_by(page.notifications.len() as u64);
            self.metrics
                .announcement_emails_queued
                .inc_by(page.emails.len() as u64);
            self.inbox.show(&page.notifications);
            if !page.emails.is_empty() {
                self.mailer.do_send(Kick);
            }
            announcement.cursor = Some(page.to);
            tokio::time::sleep(PAGE_PAUSE).await;
        }
    }
}

fn notification(announcement: &AnnouncementRow, user_id: &str, now: i64) -> NotificationRow {
    NotificationRow {
        id: uuid::Uuid::now_v7().to_string(),
        user_id: user_id.to_owned(),
        kind: announcement.kind.email_kind(),
        title: announcement.title.clone(),
        body: announcement.body.clone(),
        link: announcement.link.clone(),
        source: Some(announcement_source(&announcement.id)),
        created_at: now,
        read_at: None,
        data: None,
        // Emailed by the announcer, not through unread items.
        transactional: false,
    }
}

impl Actor for Announcer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Announcements another node (or this one, before a restart) left.
        self.run(ctx);
        ctx.run_interval(self.sweep_every, |announcer, ctx| announcer.run(ctx));
    }
}

impl Handler<AnnouncementCreated> for Announcer {
    type Result = ();

    fn handle(&mut self, _: AnnouncementCreated, ctx: &mut Context<Self>) {
        self.run(ctx);
    }
}

/// What the internal API does with announcements: store one and wake this
/// node's announcer, or read one's progress. Cheap to clone.
#[derive(Clone)]
pub struct Announcements {
    db: Db,
    announcer: Addr<Announcer>,
}

impl Announcements {
    pub fn new(db: Db, announcer: Addr<Announcer>) -> Self {
        Announcements { db, announcer }
    }

    pub async fn create(
        &self,
        row: AnnouncementRow,
    ) -> Result<crate::db::announcements::Created, crate::db::DbError> {
        let created = self.db.create_announcement(row).await?;
        if matches!(created, crate::db::announcements::Created::New(_)) {
            self.announcer.do_send(AnnouncementCreated);
        }
        Ok(created)
    }

    pub async fn progress(
        &self,
        id: &str,
    ) -> Result<Option<crate::db::announcements::Progress>, crate::db::DbError> {
        self.db.announcement_progress(id).await
    }
}
