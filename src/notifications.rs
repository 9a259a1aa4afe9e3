//! In-app notifications: stored first, then pushed on the user's channel.

use actix::Addr;
use serde::Serialize;

use crate::db::models::NotificationRow;
use crate::db::Db;
use crate::error::AppError;
use crate::notify::push::Push;
use crate::notify::Notifier;
use crate::rooms::hub::{Hub, ToUser};

/// Kinds of notification, which are also the email preference kinds.
pub use crate::domain::email::EmailKind as NotificationKind;

/// Every kind, as written on the wire (for error messages).
pub fn kind_names() -> String {
    NotificationKind::ALL
        .iter()
        .map(|kind| kind.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Serialize)]
pub struct NotificationView<'a> {
    pub id: &'a str,
    pub kind: &'static str,
    pub title: &'a str,
    pub body: &'a str,
    pub link: Option<&'a str>,
    pub created_at: String,
    pub read_at: Option<String>,
    /// The backend's own object for the app (absent when it sent none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl<'a> From<&'a NotificationRow> for NotificationView<'a> {
    fn from(row: &'a NotificationRow) -> Self {
        NotificationView {
            id: &row.id,
            kind: row.kind.as_str(),
            title: &row.title,
            body: &row.body,
            link: row.link.as_deref(),
            created_at: crate::time::rfc3339_ms(row.created_at),
            read_at: row.read_at.map(crate::time::rfc3339_ms),
            // Stored as checked JSON text; never fails on our own rows.
            data: row
                .data
                .as_deref()
                .and_then(|text| serde_json::from_str(text).ok()),
        }
    }
}

#[derive(Serialize)]
struct NotificationFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    view: NotificationView<'a>,
}

/// Where a user's news goes: their live sessions (through the hub), Web
/// Push for users who have none, and the email fallback (the notifier).
/// Cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    hub: Addr<Hub>,
    notifier: Addr<Notifier>,
    web_push: Push,
}

impl Inbox {
    pub fn new(hub: Addr<Hub>, notifier: Addr<Notifier>, web_push: Push) -> Self {
        Inbox {
            hub,
            notifier,
            web_push,
        }
    }

    /// Pushes stored notifications to their users' live sessions, hands
    /// them to Web Push (pushed to those with no live session) and to the
    /// email fallback (emailed if not read in time).
    pub fn push(&self, rows: &[NotificationRow]) {
        if !rows.is_empty() {
            self.notifier
                .do_send(crate::notify::NotificationsCreated(rows.to_vec()));
            self.web_push.notifications_created(rows);
        }
        self.show(rows);
    }

    /// Shows stored notifications to their users' live sessions only (an
    /// announcement's, which the announcer emails itself).
    pub fn show(&self, rows: &[NotificationRow]) {
        for row in rows {
            let frame = serde_json::to_string(&NotificationFrame {
                kind: "notification",
                view: NotificationView::from(row),
            })
            .expect("notification frames serialise");
            self.hub.do_send(ToUser {
                user_id: row.user_id.clone(),
                frame: frame.into(),
            });
        }
    }
}

impl Inbox {
    /// Tells the user's sessions (every tab, every node) that notifications
    /// were read elsewhere: `notifications.read` with the ids (or
    /// `"all": true`), then the fresh `unread` counts.
    pub fn read_elsewhere(&self, db: Db, user_id: &str, ids: Option<Vec<String>>) {
        let read = match ids {
            Some(ids) => serde_json::json!({ "type": "notifications.read", "ids": ids }),
            None => serde_json::json!({ "type": "notifications.read", "all": true }),
        };
        self.hub.do_send(ToUser {
            user_id: user_id.to_owned(),
            frame: read.to_string().into(),
        });
        let hub = self.hub.clone();
        let user_id = user_id.to_owned();
        actix_rt::spawn(async move {
            match unread_summary(&db, &user_id).await {
                Ok(mut counts) => {
                    counts["type"] = "unread".into();
                    hub.do_send(ToUser {
                        user_id,
                        frame: counts.to_string().into(),
                    });
                }
                Err(error) => tracing::warn!(%error, "cannot count unread items"),
            }
        });
    }
}

pub async fn unread_summary(db: &Db, user_id: &str) -> Result<serde_json::Value, AppError> {
    let notifications = db.unread_notification_count(user_id).await?;
    let rooms: serde_json::Map<String, serde_json::Value> = db
        .unread_room_counts(user_id)
        .await?
        .into_iter()
        .map(|(room, count)| (room, count.into()))
        .collect();
    Ok(serde_json::json!({ "notifications": notifications, "rooms": rooms }))
}
