//! The email fallback's vocabulary: kinds of email, the states of items,
//! outbox emails and batches, and who of a room is owed an email.
//!
//! A leaf: it imports nothing of this crate. The enums are stored as the
//! same TEXT values on SQLite and PostgreSQL (the values the columns have
//! always held), so they need no migration.

use std::collections::HashMap;

text_enum! {
    /// A kind of email, which is also a kind of notification and a switch
    /// of the email preferences.
    pub enum EmailKind {
        /// Messages of a booking room.
        Chat = "chat",
        Booking = "booking",
        /// Messages of a support conversation, or its notifications.
        Support = "support",
        Marketing = "marketing",
        /// A booking's session is coming up (`notify.reminder_lead_secs`).
        Reminder = "reminder",
        /// A material change to the terms or the privacy policy: told to
        /// everyone, so not a switch a user can turn off.
        Policy = "policy",
    }
}

impl EmailKind {
    /// Whether a user may turn this kind of email off.
    pub fn is_optional(self) -> bool {
        self != EmailKind::Policy
    }
}

text_enum! {
    /// States of an unread item.
    pub enum ItemState {
        Pending = "pending",
        Emailed = "emailed",
        /// Read before it was due.
        Read = "read",
        /// The recipient turned this kind of email off.
        Disabled = "disabled",
        /// The recipient has no email address (or was erased).
        NoAddress = "no_address",
        /// The message or notification is gone, or the recipient left the
        /// room.
        Gone = "gone",
    }
}

text_enum! {
    /// States of an outbox email.
    pub enum OutboxState {
        Queued = "queued",
        Sent = "sent",
        Failed = "failed",
    }
}

text_enum! {
    /// States of a batch (one request to Resend).
    pub enum BatchState {
        Pending = "pending",
        Sent = "sent",
        Failed = "failed",
        /// Refused as a whole: its emails went back to the outbox to go
        /// alone.
        Split = "split",
    }
}

/// A room whose messages are emailed, by the id after its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatRoom<'a> {
    Booking(&'a str),
    Support(&'a str),
}

impl<'a> ChatRoom<'a> {
    /// The room a stored room name is, if its messages are emailed (a
    /// user channel's are not). Names were validated when their messages
    /// were written, so this only tells the kinds apart.
    pub fn parse(room: &'a str) -> Option<Self> {
        match room.split_once(':')? {
            ("booking", id) => Some(ChatRoom::Booking(id)),
            ("support", id) => Some(ChatRoom::Support(id)),
            _ => None,
        }
    }

    /// The booking ids and the support conversation ids of `rooms`: what
    /// the store loads the [`Audience`] of.
    pub fn ids(rooms: impl IntoIterator<Item = ChatRoom<'a>>) -> (Vec<&'a str>, Vec<&'a str>) {
        let mut bookings = Vec::new();
        let mut conversations = Vec::new();
        for room in rooms {
            match room {
                ChatRoom::Booking(id) => bookings.push(id),
                ChatRoom::Support(id) => conversations.push(id),
            }
        }
        (bookings, conversations)
    }

    /// The kind of email the room's messages are.
    pub fn email_kind(self) -> EmailKind {
        match self {
            ChatRoom::Booking(_) => EmailKind::Chat,
            ChatRoom::Support(_) => EmailKind::Support,
        }
    }
}

/// The people of some chat rooms, as loaded from the store: booking
/// participants and the users who opened support conversations.
#[derive(Debug, Clone, Default)]
pub struct Audience {
    /// Booking id to its participants' user ids.
    participants: HashMap<String, Vec<String>>,
    /// Support conversation id to the user who opened it.
    owners: HashMap<String, String>,
}

impl Audience {
    /// From `(booking id, user id)` participant rows and `(conversation
    /// id, user id)` owner rows.
    pub fn new(
        participants: impl IntoIterator<Item = (String, String)>,
        owners: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let mut by_booking: HashMap<String, Vec<String>> = HashMap::new();
        for (booking, user) in participants {
            by_booking.entry(booking).or_default().push(user);
        }
        Audience {
            participants: by_booking,
            owners: owners.into_iter().collect(),
        }
    }

    /// Who is owed an email about the room's messages: every participant
    /// of a booking, whatever their part in it; the user who opened a
    /// support conversation (the agent and the admins who answer it are
    /// not). Whether a message is their own is the range's business.
    pub fn recipients(&self, room: ChatRoom<'_>) -> Vec<&str> {
        match room {
            ChatRoom::Booking(id) => self
                .participants
                .get(id)
                .map(|users| users.iter().map(String::as_str).collect())
                .unwrap_or_default(),
            ChatRoom::Support(id) => self
                .owners
                .get(id)
                .map(String::as_str)
                .into_iter()
                .collect(),
        }
    }

    /// Whether `user_id` is still owed emails about the room: one who left
    /// the booking (or a room that is gone) is not.
    pub fn owes(&self, room: ChatRoom<'_>, user_id: &str) -> bool {
        match room {
            ChatRoom::Booking(id) => self
                .participants
                .get(id)
                .is_some_and(|users| users.iter().any(|u| u == user_id)),
            ChatRoom::Support(id) => self.owners.get(id).is_some_and(|owner| owner == user_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_keep_the_stored_text() {
        let kinds: Vec<&str> = EmailKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "chat",
                "booking",
                "support",
                "marketing",
                "reminder",
                "policy"
            ]
        );
        assert!(!EmailKind::Policy.is_optional());
        assert!(EmailKind::Marketing.is_optional());
        let items: Vec<&str> = ItemState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            items,
            [
                "pending",
                "emailed",
                "read",
                "disabled",
                "no_address",
                "gone"
            ]
        );
        let outbox: Vec<&str> = OutboxState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(outbox, ["queued", "sent", "failed"]);
        let batches: Vec<&str> = BatchState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(batches, ["pending", "sent", "failed", "split"]);
        for state in ItemState::ALL {
            assert_eq!(ItemState::parse(state.as_str()), Some(*state));
        }
        assert_eq!(EmailKind::parse("newsletter"), None);
    }

    fn audience() -> Audience {
        Audience::new(
            [
                ("b1".to_owned(), "ava".to_owned()),
                ("b1".to_owned(), "sam".to_owned()),
                ("b2".to_owned(), "eli".to_owned()),
            ],
            [("s1".to_owned(), "sam".to_owned())],
        )
    }

    #[test]
    fn every_participant_of_a_booking_is_owed_its_chat() {
        let audience = audience();
        assert_eq!(audience.recipients(ChatRoom::Booking("b1")), ["ava", "sam"]);
        assert!(audience.owes(ChatRoom::Booking("b1"), "sam"));
        // Left the booking, or never in it.
        assert!(!audience.owes(ChatRoom::Booking("b2"), "sam"));
        assert!(audience.recipients(ChatRoom::Booking("gone")).is_empty());
    }

    #[test]
    fn only_the_user_who_opened_a_support_conversation_is_owed_it() {
        let audience = audience();
        assert_eq!(audience.recipients(ChatRoom::Support("s1")), ["sam"]);
        assert!(!audience.owes(ChatRoom::Support("s1"), "ava"));
        // A booking's id is not a conversation's.
        assert!(!audience.owes(ChatRoom::Support("b1"), "ava"));
        assert_eq!(ChatRoom::Support("s1").email_kind(), EmailKind::Support);
        assert_eq!(ChatRoom::Booking("b1").email_kind(), EmailKind::Chat);
    }

    #[test]
    fn booking_and_support_rooms_are_chat_rooms() {
        assert_eq!(ChatRoom::parse("booking:b1"), Some(ChatRoom::Booking("b1")));
        assert_eq!(ChatRoom::parse("support:s1"), Some(ChatRoom::Support("s1")));
        assert_eq!(ChatRoom::parse("user:sam"), None);
        assert_eq!(ChatRoom::parse("nonsense"), None);
    }
}
