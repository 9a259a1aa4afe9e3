//! Rooms: names and who may enter them, the per-room actors that fan
//! messages out in seq order, the hub that routes to them, and the
//! sequencer that stores messages in group-committed batches.

pub mod hub;
pub mod room;
pub mod sequencer;

use std::fmt;

use crate::auth::Identity;
use crate::db::bookings::BookingAccess;
use crate::db::Db;
use crate::error::AppError;

/// A validated room name: `booking:<id>`, `support:<id>` or `user:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoomName {
    full: String,
    kind: RoomKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoomKind {
    Booking,
    Support,
    User,
}

impl RoomName {
    pub fn parse(raw: &str) -> Result<Self, AppError> {
        let invalid = || {
            AppError::Invalid(format!(
                "invalid room `{}`: expected booking:<id>, support:<id> or user:<id>",
                raw.chars().take(80).collect::<String>()
            ))
        };
        let (prefix, id) = raw.split_once(':').ok_or_else(invalid)?;
        let kind = match prefix {
            "booking" => RoomKind::Booking,
            "support" => RoomKind::Support,
            "user" => RoomKind::User,
            _ => return Err(invalid()),
        };
        let id_ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(invalid());
        }
        Ok(RoomName {
            full: raw.to_owned(),
            kind,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    pub fn kind(&self) -> RoomKind {
        self.kind
    }

    /// The id after the prefix.
    pub fn id(&self) -> &str {
        self.full.split_once(':').map_or("", |(_, id)| id)
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// The one rule for reading a room, shared by WebSocket frames and HTTP
/// routes (the "row-level access" promise): a booking room is open to its
/// participants and admins, a support room to the user who opened it and
/// admins; a user channel only to that user.
pub async fn authorize_read(db: &Db, who: &Identity, room: &RoomName) -> Result<(), AppError> {
    match room.kind() {
        RoomKind::Booking => match db.booking_access(room.id(), &who.user_id).await? {
            BookingAccess::Missing => Err(AppError::NotFound(format!("no such room `{room}`"))),
            BookingAccess::Participant => Ok(()),
            BookingAccess::Outsider if who.is_admin() => Ok(()),
            BookingAccess::Outsider => Err(AppError::Forbidden(format!(
                "you are not a participant of `{room}`"
            ))),
        },
        // The user who opened the conversation and admins; the agent writes
        // through the sequencer and never asks.
        RoomKind::Support => match db.find_support_conversation(room.id()).await? {
            None => Err(AppError::NotFound(format!("no such room `{room}`"))),
            Some(conversation) if conversation.user_id == who.user_id || who.is_admin() => Ok(()),
            Some(_) => Err(AppError::Forbidden(format!(
                "`{room}` is another user's support conversation"
            ))),
        },
        RoomKind::User if room.id() == who.user_id => Ok(()),
        RoomKind::User => Err(AppError::Forbidden(format!(
            "`{room}` is another user's channel"
        ))),
    }
}

/// Writing needs read access, and nobody writes into a user channel.
pub async fn authorize_write(db: &Db, who: &Identity, room: &RoomName) -> Result<(), AppError> {
    if room.kind() == RoomKind::User {
        return Err(AppError::Forbidden(
            "user channels carry server notices only".into(),
        ));
    }
    authorize_read(db, who, room).await
}

/// Appends to a list that usually holds one or two entries (a user's
/// sessions on this node, a booking room's members, a socket's rooms):
/// up to four it grows one slot at a time, where `Vec` would reserve four
/// at the first push; past four it doubles as usual. Idle sockets are
/// counted in tens of thousands, and those slots were a tenth of each.
pub fn push_small<T>(list: &mut Vec<T>, item: T) {
    if list.len() == list.capacity() && list.len() < 4 {
        list.reserve_exact(1);
    }
    list.push(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_room_names() {
        let room = RoomName::parse("booking:9f1c-aa_2").unwrap();
        assert_eq!(room.kind(), RoomKind::Booking);
        assert_eq!(room.id(), "9f1c-aa_2");
        for bad in ["nonsense", "booking:", "team:1", "booking:a b", "user:../x"] {
            assert!(RoomName::parse(bad).is_err(), "{bad}");
        }
        assert!(RoomName::parse(&format!("booking:{}", "a".repeat(65))).is_err());
    }

    #[test]
    fn small_lists_grow_one_slot_at_a_time_up_to_four() {
        let mut list = Vec::new();
        let capacities: Vec<usize> = (0..6)
            .map(|n| {
                push_small(&mut list, n);
                list.capacity()
            })
            .collect();
        assert_eq!(&capacities[..4], &[1, 2, 3, 4]);
        assert!(capacities[4] >= 8, "doubles past four: {capacities:?}");
        assert_eq!(list, [0, 1, 2, 3, 4, 5]);
    }
}
