//! Digest: one email built from a recipient's items, each message shown
//! and notification as a line, with an unsubscribe link per kind.

use super::templates::{self, DigestEntry, UnsubscribeLink};
use super::unsubscribe::UnsubscribeSigner;
use crate::config::Settings;
use crate::db::email::{ItemSource, OutboxRow, PendingItem};
use crate::db::models::{MessageRow, NotificationRow};
use crate::domain::email::{ChatRoom, EmailKind, OutboxState};

/// What rendering needs besides the items.
pub struct Composer {
    signer: UnsubscribeSigner,
    app_base_url: String,
}

impl Composer {
    pub fn from_settings(settings: &Settings) -> Self {
        Composer {
            signer: UnsubscribeSigner::from_settings(settings),
            app_base_url: settings.email.app_base_url.trim_end_matches('/').to_owned(),
        }
    }

    /// The digest of `items` to `address`, queued as of `now`.
    pub fn compose(
        &self,
        user_id: &str,
        name: Option<&str>,
        address: &str,
        items: &[PendingItem],
        now: i64,
    ) -> OutboxRow {
        let entries: Vec<DigestEntry> = items.iter().flat_map(|item| self.entries(item)).collect();
        let kinds: Vec<EmailKind> = items.iter().map(|i| i.row.kind).collect();
        let mut row = self.outbox_row(user_id, name, address, &entries, kinds, now);
        row.item_count = items.len() as i64;
        row
    }

    /// An announcement's email to one user: a bulk email (sent after every
    /// other) that counts towards `announcement_id`'s progress.
    pub fn compose_announcement(
        &self,
        notification: &NotificationRow,
        name: Option<&str>,
        address: &str,
        announcement_id: &str,
        now: i64,
    ) -> OutboxRow {
        let entries = [self.notification_entry(notification)];
        let mut row = self.outbox_row(
            &notification.user_id,
            name,
            address,
            &entries,
            vec![notification.kind],
            now,
        );
        row.announcement_id = Some(announcement_id.to_owned());
        row
    }

    fn outbox_row(
        &self,
        user_id: &str,
        name: Option<&str>,
        address: &str,
        entries: &[DigestEntry],
        mut kinds: Vec<EmailKind>,
        now: i64,
    ) -> OutboxRow {
        // Policy emails carry no unsubscribe link: they cannot be turned off.
        kinds.retain(|kind| kind.is_optional());
        kinds.sort_unstable_by_key(|kind| kind.as_str());
        kinds.dedup();
        let unsubscribe: Vec<UnsubscribeLink> = kinds
            .iter()
            .map(|kind| UnsubscribeLink {
                kind: kind.as_str().to_owned(),
                url: self.signer.url(user_id, kind.as_str()),
            })
            .collect();
        let rendered = templates::render_digest(
            name,
            entries,
            &unsubscribe,
            &format!("{}/settings/notifications", self.app_base_url),
        );
        OutboxRow {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: user_id.to_owned(),
            to_address: address.to_owned(),
            subject: rendered.subject,
            html: rendered.html,
            text: rendered.text,
            // One-click unsubscribe only when the email is about one kind.
            unsubscribe_url: match unsubscribe.as_slice() {
                [only] => Some(only.url.clone()),
                _ => None,
            },
            item_count: 1,
            state: OutboxState::Queued,
            solo: false,
            batch_id: None,
            provider_id: None,
            last_error: None,
            created_at: now,
            sent_at: None,
            announcement_id: None,
        }
    }

    fn notification_entry(&self, row: &NotificationRow) -> DigestEntry {
        DigestEntry {
            kind: row.kind.as_str().to_owned(),
            is_message: false,
            heading: row.title.clone(),
            body: row.body.clone(),
            link: row
                .link
                .as_deref()
                .and_then(|l| templates::absolute_link(&self.app_base_url, l)),
            at_ms: row.created_at,
        }
    }

    /// An item's lines in the digest: each message shown of a chat range
    /// (after a count of the older unread ones, if any), or the notification.
    fn entries(&self, item: &PendingItem) -> Vec<DigestEntry> {
        match &item.source {
            ItemSource::Chat {
                messages,
                more,
                oldest_unread_at,
                booking_title,
                ..
            } => {
                let room = item.row.room.as_deref().and_then(ChatRoom::parse);
                let (place, link) = match room {
                    Some(ChatRoom::Booking(id)) => (
                        booking_title.clone().filter(|t| !t.trim().is_empty()),
                        format!("{}/bookings/{id}", self.app_base_url),
                    ),
                    Some(ChatRoom::Support(id)) => (
                        Some("Mixroom support".to_owned()),
                        format!("{}/support/{id}", self.app_base_url),
                    ),
                    None => (None, self.app_base_url.clone()),
                };
                let mut entries = Vec::with_capacity(messages.len() + 1);
                if *more > 0 {
                    let what = if *more == 1 {
                        "1 earlier unread message".to_owned()
                    } else {
                        format!("{more} earlier unread messages")
                    };
                    entries.push(DigestEntry {
                        kind: item.row.kind.as_str().to_owned(),
                        is_message: false,
                        heading: match &place {
                            Some(place) => format!("{what} · {place}"),
                            None => what,
                        },
                        body: String::new(),
                        link: Some(link.clone()),
                        at_ms: oldest_unread_at.unwrap_or(item.row.created_at),
                    });
                }
                entries.extend(messages.iter().map(|message| DigestEntry {
                    kind: item.row.kind.as_str().to_owned(),
                    is_message: true,
                    heading: match &place {
                        Some(place) => format!("{} · {place}", message.sender_name),
                        None => message.sender_name.clone(),
                    },
                    body: with_attachments(message),
                    link: Some(link.clone()),
                    at_ms: message.sent_at,
                }));
                entries
            }
            ItemSource::Notification(row) => vec![self.notification_entry(row)],
            ItemSource::Gone => Vec::new(),
        }
    }
}

/// A message's text and, on lines of their own, the files it shares by
/// name (the links are in the app, behind its access checks).
fn with_attachments(message: &MessageRow) -> String {
    let files = message.attachment_list();
    if files.is_empty() {
        return message.body.clone();
    }
    let mut text = message.body.clone();
    for file in files {
        text.push_str("\n📎 ");
        text.push_str(&file.name);
    }
    text
}
