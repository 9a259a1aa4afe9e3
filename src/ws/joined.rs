//! What a session keeps per joined room, and the paged replay of a join.

use actix::Addr;

use super::SessionServices;
use crate::error::AppError;
use crate::rooms::room::RoomActor;
use crate::rooms::RoomName;

pub(super) struct JoinedRoom {
    pub addr: Addr<RoomActor>,
    /// Highest seq written to this socket.
    pub delivered: i64,
}

/// The rooms a socket joined, by name. A list rather than a map: a socket
/// joins a few rooms, a short scan per delivery costs less than hashing
/// the name, and a map's table was the largest part of an idle session
/// (BENCHMARKS.md, idle memory).
#[derive(Default)]
pub(super) struct JoinedRooms(Vec<(String, JoinedRoom)>);

impl JoinedRooms {
    pub fn get(&self, room: &str) -> Option<&JoinedRoom> {
        self.0.iter().find(|(name, _)| name == room).map(|(_, r)| r)
    }

    pub fn get_mut(&mut self, room: &str) -> Option<&mut JoinedRoom> {
        self.0
            .iter_mut()
            .find(|(name, _)| name == room)
            .map(|(_, r)| r)
    }

    pub fn contains_key(&self, room: &str) -> bool {
        self.get(room).is_some()
    }

    /// Returns the membership it replaces, if the room was joined before.
    pub fn insert(&mut self, room: String, joined: JoinedRoom) -> Option<JoinedRoom> {
        match self.get_mut(&room) {
            Some(existing) => Some(std::mem::replace(existing, joined)),
            None => {
                crate::rooms::push_small(&mut self.0, (room, joined));
                None
            }
        }
    }

    pub fn remove(&mut self, room: &str) -> Option<JoinedRoom> {
        let at = self.0.iter().position(|(name, _)| name == room)?;
        Some(self.0.swap_remove(at).1)
    }

    pub fn drain(&mut self) -> impl Iterator<Item = (String, JoinedRoom)> + '_ {
        self.0.drain(..)
    }
}

/// One page of a join's replay: the rows after `since`, and the seq it
/// ends at (`since` itself when it is empty).
pub(super) struct Replay {
    pub entries: Vec<crate::db::messages::Entry>,
    pub until: i64,
}

/// Reads the messages after `since`, up to `last_seq`, but no more than
/// `server.replay_max_messages` or about `server.replay_max_bytes` of
/// bodies: a replay of a long backlog is paged by the client, so one
/// join never holds the whole backlog in memory.
pub(super) async fn replay_page(
    state: &SessionServices,
    room: &RoomName,
    since: i64,
    last_seq: i64,
) -> Result<Replay, AppError> {
    let server = &state.server;
    let entries = state
        .client_reads
        .after(
            room.as_str(),
            since,
            last_seq,
            server.replay_max_messages,
            server.replay_max_bytes,
        )
        .await?;
    let until = entries
        .last()
        .map_or(since.min(last_seq), |entry| entry.row.seq);
    Ok(Replay { entries, until })
}
