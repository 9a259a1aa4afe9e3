//! Policy: pure decisions about one recipient's pending items: which are
//! dropped (read, gone, turned off, no address), when the rest are due,
//! and whether they go out now as one digest.

use super::digest::Composer;
use crate::config::EmailSettings;
use crate::db::email::{DispatchPlan, ItemSource, PendingItem, PreferencesRow, RecipientSnapshot};
use crate::domain::email::{EmailKind, ItemState};

/// An online recipient whose offline delay has passed is looked at again
/// this often, in case they leave before the unread delay.
const PRESENCE_RECHECK_MAX_MS: i64 = 60_000;
const PRESENCE_RECHECK_MIN_MS: i64 = 1_000;

/// The two delays of the contract, as they apply to one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delays {
    pub offline_ms: i64,
    pub unread_ms: i64,
}

impl Delays {
    pub fn from_settings(email: &EmailSettings) -> Self {
        Delays {
            offline_ms: secs_to_ms(email.offline_delay_secs),
            unread_ms: secs_to_ms(email.unread_delay_secs),
        }
    }

    /// The delays for an item of `kind`: a recipient's own chat delay
    /// (preferences) replaces both for chat messages.
    pub fn for_item(self, kind: EmailKind, chat_delay_secs: Option<i64>) -> Delays {
        match (kind, chat_delay_secs) {
            (EmailKind::Chat, Some(secs)) => {
                let ms = secs.max(0).saturating_mul(1000);
                Delays {
                    offline_ms: ms,
                    unread_ms: ms,
                }
            }
            _ => self,
        }
    }

    /// When an item created at `created_at` is first looked at.
    pub fn first_check(self, created_at: i64) -> i64 {
        created_at.saturating_add(self.offline_ms.min(self.unread_ms))
    }
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Whether an item may be emailed now, or when to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    Due,
    Later(i64),
}

/// The contract's rule: after the offline delay without a live session,
/// after the unread delay when online.
fn timing(now: i64, online: bool, created_at: i64, delays: Delays) -> Timing {
    let offline_due = created_at.saturating_add(delays.offline_ms);
    let unread_due = created_at.saturating_add(delays.unread_ms);
    if online {
        if now >= unread_due {
            return Timing::Due;
        }
        if offline_due > now {
            return Timing::Later(offline_due.min(unread_due));
        }
        // Past the offline delay: if they leave before the unread delay,
        // that is noticed at the next look.
        let recheck = delays
            .offline_ms
            .clamp(PRESENCE_RECHECK_MIN_MS, PRESENCE_RECHECK_MAX_MS);
        Timing::Later((now + recheck).min(unread_due))
    } else {
        if now >= offline_due {
            return Timing::Due;
        }
        // If they come online, the unread delay may end first.
        if unread_due > now {
            Timing::Later(offline_due.min(unread_due))
        } else {
            Timing::Later(offline_due)
        }
    }
}

/// Why an item will not be emailed, if it will not.
fn drop_reason(item: &PendingItem, preferences: &PreferencesRow) -> Option<ItemState> {
    match &item.source {
        ItemSource::Gone => Some(ItemState::Gone),
        ItemSource::Chat { member: false, .. } => Some(ItemState::Gone),
        ItemSource::Chat { read: true, .. } => Some(ItemState::Read),
        // Nothing of the range left to show: only the recipient's own,
        // notices, or what an earlier email showed.
        ItemSource::Chat { messages, more, .. } if messages.is_empty() && *more == 0 => {
            Some(ItemState::Gone)
        }
        // Reading a transactional notification in the app does not cancel
        // its email (a confirmation is kept for the record).
        ItemSource::Notification(row) if row.read_at.is_some() && !item.row.transactional => {
            Some(ItemState::Read)
        }
        _ if !preferences.allows(item.row.kind) => Some(ItemState::Disabled),
        _ => None,
    }
}

/// When what an item stands for became unread: for a chat range, when its
/// oldest unread message was sent (what was read meanwhile no longer counts).
fn unread_since(item: &PendingItem) -> i64 {
    match &item.source {
        ItemSource::Chat {
            oldest_unread_at: Some(at),
            ..
        } => *at,
        _ => item.row.created_at,
    }
}

/// The decision for one recipient: drop what is read or unwanted; if
/// anything left is due, all of it becomes one digest; else each waits.
pub(super) fn decide(
    delays: Delays,
    composer: &Composer,
    user_id: &str,
    snapshot: RecipientSnapshot,
    now: i64,
    online: bool,
) -> DispatchPlan {
    let preferences = snapshot
        .preferences
        .unwrap_or_else(|| PreferencesRow::defaults(user_id));
    let mut plan = DispatchPlan::default();
    let mut keep: Vec<(PendingItem, Timing)> = Vec::new();
    // Transactional items go at once, each in an email of its own.
    let mut alone: Vec<PendingItem> = Vec::new();
    for item in snapshot.items {
        match drop_reason(&item, &preferences) {
            Some(reason) => plan.dropped.push((item.row.id.clone(), reason)),
            None if item.row.transactional => alone.push(item),
            None => {
                let delays = delays.for_item(item.row.kind, preferences.chat_delay_secs);
                let timing = timing(now, online, unread_since(&item), delays);
                keep.push((item, timing));
            }
        }
    }
    let digest_due = keep.iter().any(|(_, t)| *t == Timing::Due);
    if !digest_due {
        plan.rescheduled = std::mem::take(&mut keep)
            .into_iter()
            .filter_map(|(item, timing)| match timing {
                Timing::Later(at) if at != item.row.due_at => Some((item.row.id, at)),
                _ => None,
            })
            .collect();
        if alone.is_empty() {
            return plan;
        }
    }
    let address = snapshot
        .user
        .as_ref()
        .filter(|u| u.erased_at.is_none())
        .and_then(|u| u.email.as_deref())
        .map(str::trim)
        .filter(|e| e.contains('@'));
    let Some(address) = address else {
        plan.dropped.extend(
            keep.into_iter()
                .map(|(item, _)| item)
                .chain(alone)
                .map(|item| (item.row.id, ItemState::NoAddress)),
        );
        return plan;
    };

    let name = snapshot.user.as_ref().and_then(|u| u.name.as_deref());
    for item in alone {
        let email = composer.compose(user_id, name, address, std::slice::from_ref(&item), now);
        plan.emails.push((email, vec![item.row.id]));
    }
    if digest_due {
        let items: Vec<PendingItem> = keep.into_iter().map(|(item, _)| item).collect();
        let emailed = items.iter().map(|i| i.row.id.clone()).collect();
        plan.emails.push((
            composer.compose(user_id, name, address, &items, now),
            emailed,
        ));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::db::models::{MessageRow, NotificationRow, UserRow};
    use crate::notify::intake::new_item;

    const DELAYS: Delays = Delays {
        offline_ms: 60_000,
        unread_ms: 600_000,
    };

    #[test]
    fn offline_recipients_wait_the_offline_delay() {
        assert_eq!(timing(59_999, false, 0, DELAYS), Timing::Later(60_000));
        assert_eq!(timing(60_000, false, 0, DELAYS), Timing::Due);
    }

    #[test]
    fn online_recipients_wait_the_unread_delay_and_are_looked_at_again() {
        assert_eq!(timing(1_000, true, 0, DELAYS), Timing::Later(60_000));
        // Past the offline delay but online: look again, in case they left.
        assert_eq!(timing(60_000, true, 0, DELAYS), Timing::Later(120_000));
        assert_eq!(timing(590_000, true, 0, DELAYS), Timing::Later(600_000));
        assert_eq!(timing(600_000, true, 0, DELAYS), Timing::Due);
    }

    #[test]
    fn a_shorter_unread_delay_applies_to_online_recipients_first() {
        let delays = Delays {
            offline_ms: 10_000,
            unread_ms: 4_000,
        };
        assert_eq!(timing(0, false, 0, delays), Timing::Later(4_000));
        assert_eq!(timing(4_000, false, 0, delays), Timing::Later(10_000));
        assert_eq!(timing(4_000, true, 0, delays), Timing::Due);
    }

    #[test]
    fn a_users_chat_delay_replaces_both_for_chat_only() {
        let own = DELAYS.for_item(EmailKind::Chat, Some(5));
        assert_eq!(
            own,
            Delays {
                offline_ms: 5_000,
                unread_ms: 5_000
            }
        );
        assert_eq!(DELAYS.for_item(EmailKind::Booking, Some(5)), DELAYS);
        assert_eq!(DELAYS.for_item(EmailKind::Chat, None), DELAYS);
    }

    fn composer() -> Composer {
        let mut settings = Settings::load(None).unwrap();
        settings.email.app_base_url = "https://app.example.com".into();
        Composer::from_settings(&settings)
    }

    fn chat_item(id: &str, seq: i64, created_at: i64, read_up_to: i64) -> PendingItem {
        let message = MessageRow {
            id: format!("m-{id}"),
            room: "booking:b1".into(),
            seq,
            sender_id: Some("ava".into()),
            sender_name: "Ava".into(),
            sender_role: "client".into(),
            client_id: Some(id.into()),
            body: format!("take {seq}"),
            sent_at: created_at,
            kind: crate::domain::chat::EntryKind::Message,
            target_seq: None,
            attachments: None,
            edited_at: None,
            deleted_at: None,
            reactions: 0,
        };
        let mut row = new_item(
            "sam",
            EmailKind::Chat,
            format!("message:{}", message.id),
            created_at,
            0,
        );
        row.id = id.into();
        row.room = Some(message.room.clone());
        row.seq = Some(seq);
        row.up_to_seq = Some(seq);
        let read = read_up_to >= seq;
        PendingItem {
            row,
            source: ItemSource::Chat {
                oldest_unread_at: (!read).then_some(created_at),
                messages: if read { Vec::new() } else { vec![message] },
                more: 0,
                booking_title: Some("Vocals".into()),
                read,
                member: true,
            },
        }
    }

    fn sam(email: Option<&str>) -> Option<UserRow> {
        Some(UserRow {
            id: "sam".into(),
            email: email.map(Into::into),
            name: Some("Sam".into()),
            role: "studio_owner".into(),
            updated_at: 0,
            erased_at: None,
        })
    }

    #[test]
    fn one_due_item_takes_the_others_into_one_digest() {
        let snapshot = RecipientSnapshot {
            user: sam(Some("sam@example.com")),
            preferences: None,
            items: vec![
                chat_item("a", 1, 0, 0),
                chat_item("b", 2, 30_000, 0),
                chat_item("c", 3, 40_000, 3),
            ],
        };
        let plan = decide(DELAYS, &composer(), "sam", snapshot, 60_000, false);
        assert_eq!(plan.emails.len(), 1);
        let (email, emailed) = plan.emails.into_iter().next().unwrap();
        assert_eq!(emailed, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(plan.dropped, vec![("c".to_owned(), ItemState::Read)]);
        assert_eq!(email.to_address, "sam@example.com");
        assert_eq!(email.item_count, 2);
        assert!(email.text.contains("take 1") && email.text.contains("take 2"));
        assert!(!email.text.contains("take 3"));
        assert!(email.html.contains("https://app.example.com/bookings/b1"));
        assert!(email.unsubscribe_url.unwrap().contains("token=sam.chat."));
    }

    #[test]
    fn nothing_due_means_no_email_and_later_checks() {
        let snapshot = RecipientSnapshot {
            user: sam(Some("sam@example.com")),
            preferences: None,
            items: vec![chat_item("a", 1, 0, 0)],
        };
        let plan = decide(DELAYS, &composer(), "sam", snapshot, 10_000, false);
        assert!(plan.emails.is_empty());
        assert_eq!(plan.rescheduled, vec![("a".to_owned(), 60_000)]);
    }

    #[test]
    fn turned_off_kinds_and_missing_addresses_drop_items() {
        let mut preferences = PreferencesRow::defaults("sam");
        preferences.chat = false;
        let snapshot = RecipientSnapshot {
            user: sam(Some("sam@example.com")),
            preferences: Some(preferences),
            items: vec![chat_item("a", 1, 0, 0)],
        };
        let plan = decide(DELAYS, &composer(), "sam", snapshot, 60_000, false);
        assert!(plan.emails.is_empty());
        assert_eq!(plan.dropped, vec![("a".to_owned(), ItemState::Disabled)]);

        let snapshot = RecipientSnapshot {
            user: sam(None),
            preferences: None,
            items: vec![chat_item("a", 1, 0, 0)],
        };
        let plan = decide(DELAYS, &composer(), "sam", snapshot, 60_000, false);
        assert!(plan.emails.is_empty());
        assert_eq!(plan.dropped, vec![("a".to_owned(), ItemState::NoAddress)]);
    }

    fn confirmation(id: &str, read_at: Option<i64>) -> PendingItem {
        let notification = NotificationRow {
            id: format!("n-{id}"),
            user_id: "sam".into(),
            kind: EmailKind::Booking,
            title: "Booking confirmed".into(),
            body: "Vocals: status changed from requested to confirmed.".into(),
            link: Some("/bookings/b1".into()),
            source: Some(format!("status:{id}")),
            created_at: 50_000,
            read_at,
            data: None,
            transactional: true,
        };
        let mut row = new_item(
            "sam",
            EmailKind::Booking,
            format!("notification:{}", notification.id),
            50_000,
            50_000,
        );
        row.id = id.into();
        row.notification_id = Some(notification.id.clone());
        row.transactional = true;
        PendingItem {
            row,
            source: ItemSource::Notification(notification),
        }
    }

    #[test]
    fn a_confirmation_goes_at_once_alone_even_when_read() {
        let snapshot = RecipientSnapshot {
            user: sam(Some("sam@example.com")),
            preferences: None,
            items: vec![
                chat_item("a", 1, 45_000, 0),
                confirmation("c", Some(50_100)),
            ],
        };
        // Online, a second after: the chat waits, the confirmation does not.
        let plan = decide(DELAYS, &composer(), "sam", snapshot, 51_000, true);
        assert_eq!(plan.emails.len(), 1, "{plan:?}");
        let (email, emailed) = &plan.emails[0];
        assert_eq!(emailed, &vec!["c".to_owned()]);
        assert_eq!(email.item_count, 1);
        assert!(
            email.subject.contains("Booking confirmed"),
            "{}",
            email.subject
        );
        assert!(!email.text.contains("take 1"));
        assert_eq!(plan.rescheduled.len(), 1, "the chat item waits: {plan:?}");
        assert!(plan.dropped.is_empty());

        // When the digest is due too, the confirmation still goes alone.
        let snapshot = RecipientSnapshot {
            user: sam(Some("sam@example.com")),
            preferences: None,
            items: vec![chat_item("a", 1, 0, 0), confirmation("c", None)],
        };
        let plan = decide(DELAYS, &composer(), "sam", snapshot, 120_000, false);
        let carried: Vec<&Vec<String>> = plan.emails.iter().map(|(_, ids)| ids).collect();
        assert_eq!(carried, [&vec!["c".to_owned()], &vec!["a".to_owned()]]);
    }
}
