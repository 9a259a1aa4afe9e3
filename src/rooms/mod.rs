//! Rooms: names and who may enter them, the per-room actors that fan
//! messages out in seq order, the hub that routes to them, and the
//! sequencer that stores messages in group-committed batches.

pub mod hub;
pub mod member;
pub mod room;
pub mod sequencer;

use crate::auth::Identity;
use crate::db::bookings::BookingAccess;
use crate::db::Db;
use crate::error::AppError;

pub use crate::domain::room::{RoomKind, RoomName};

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
/// counted in tens of thousands, and those slots were a tenth of each
/// (BENCHMARKS.md, idle memory).
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
