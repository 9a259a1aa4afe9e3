//! The room frames of a session: join (with its replay), send, typing
//! and read receipts, history.

use super::*;
use crate::db::messages::views::{entry_frame, page_views};
use crate::db::messages::Action;
use crate::domain::chat::Attachment;

/// What an `edit`, `delete` or `react` asks.
pub(super) struct Change {
    /// An edit's new text, a reaction's emoji.
    pub body: String,
    pub action: Action,
    pub client_id: Option<String>,
}

impl WsSession {
    pub(super) fn joined_room(&self, room: &str) -> Result<&JoinedRoom, AppError> {
        self.rooms
            .get(room)
            .ok_or_else(|| AppError::Forbidden(format!("join `{room}` first")))
    }

    pub(super) fn join(
        &mut self,
        identity: Identity,
        room: &str,
        since: Option<i64>,
        reference: Option<String>,
        ctx: &mut WebsocketContext<Self>,
    ) -> Result<(), AppError> {
        let room = RoomName::parse(room)?;
        if since.is_some_and(|s| s < 0) {
            return Err(AppError::Invalid("`since` must be 0 or more".into()));
        }
        if room.kind() == RoomKind::User {
            // The own channel is always subscribed; joining it just confirms.
            if room.id() != identity.user_id {
                return Err(AppError::Forbidden(format!(
                    "`{room}` is another user's channel"
                )));
            }
            ctx.text(
                ServerFrame::Joined {
                    reference: reference.as_deref(),
                    room: room.as_str(),
                    last_seq: 0,
                    members: &[],
                    has_more: since.map(|_| false),
                    replay_until: since.map(|_| 0),
                }
                .encode(),
            );
            return Ok(());
        }
        let state = self.state.clone();
        let member = RoomMember {
            session_id: self.id.clone(),
            user_id: identity.user_id.clone(),
            name: identity.name.clone(),
            role: identity.role.as_str().to_owned(),
            recipient: ctx.address().recipient(),
        };
        ctx.wait(
            async move {
                authorize_read(&state.db, &identity, &room).await?;
                let (addr, info) = state
                    .hub
                    .send(JoinRoom {
                        room: room.to_string(),
                        member,
                    })
                    .await
                    .map_err(AppError::internal)??;
                let replay = match since {
                    Some(since) => Some(replay_page(&state, &room, since, info.last_seq).await?),
                    None => None,
                };
                Ok::<_, AppError>((room, addr, info, replay))
            }
            .into_actor(self)
            .map(move |result, session, ctx| match result {
                Ok((room, addr, info, replay)) => {
                    ctx.text(
                        ServerFrame::Joined {
                            reference: reference.as_deref(),
                            room: room.as_str(),
                            last_seq: info.last_seq,
                            members: &info.members,
                            has_more: replay.as_ref().map(|r| r.until < info.last_seq),
                            replay_until: replay.as_ref().map(|r| r.until),
                        }
                        .encode(),
                    );
                    for entry in replay.iter().flat_map(|r| &r.entries) {
                        ctx.text(entry_frame(entry));
                    }
                    if let Some(previous) = session.rooms.insert(
                        room.to_string(),
                        JoinedRoom {
                            addr: addr.clone(),
                            delivered: info.last_seq,
                        },
                    ) {
                        if previous.addr != addr {
                            previous.addr.do_send(Leave {
                                session_id: session.id.clone(),
                            });
                        }
                    }
                }
                Err(error) => session.send_error(ctx, reference.as_deref(), &error),
            }),
        );
        Ok(())
    }

    /// A `send`: a new message, maybe answering another, maybe with
    /// attachment references.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_message(
        &mut self,
        identity: Identity,
        room: &str,
        client_id: String,
        body: String,
        reply_to: Option<i64>,
        attachments: Vec<Attachment>,
        reference: Option<String>,
        ctx: &mut WebsocketContext<Self>,
    ) -> Result<(), AppError> {
        let room = RoomName::parse(room)?;
        if client_id.is_empty() || client_id.len() > CLIENT_ID_MAX {
            return Err(AppError::Invalid(format!(
                "`client_id` must be 1 to {CLIENT_ID_MAX} bytes"
            )));
        }
        self.check_body(&body)?;
        if reply_to.is_some_and(|seq| seq < 1) {
            return Err(AppError::Invalid(
                "`reply_to` must be a seq, 1 or more".into(),
            ));
        }
        self.state.chat.attachment_origins.check(&attachments)?;
        let message = NewMessage {
            id: None,
            room: room.to_string(),
            sender_id: Some(identity.user_id.clone()),
            sender_name: identity.name.clone(),
            sender_role: identity.role.as_str().to_owned(),
            client_id: Some(client_id),
            body,
            action: Action::Post {
                reply_to,
                attachments,
            },
        };
        self.submit(identity, room, message, reference, ctx);
        Ok(())
    }

    /// An `edit`, `delete` or `react`: a change to a message of the room,
    /// checked against the room's state where it is stored.
    pub(super) fn change_message(
        &mut self,
        identity: Identity,
        room: &str,
        change: Change,
        reference: Option<String>,
        ctx: &mut WebsocketContext<Self>,
    ) -> Result<(), AppError> {
        let Change {
            body,
            action,
            client_id,
        } = change;
        let room = RoomName::parse(room)?;
        if action.target().is_none_or(|seq| seq < 1) {
            return Err(AppError::Invalid(
                "`seq` must be a message's seq, 1 or more".into(),
            ));
        }
        if client_id
            .as_ref()
            .is_some_and(|id| id.is_empty() || id.len() > CLIENT_ID_MAX)
        {
            return Err(AppError::Invalid(format!(
                "`client_id` must be 1 to {CLIENT_ID_MAX} bytes"
            )));
        }
        match &action {
            Action::Edit { .. } => self.check_body(&body)?,
            Action::React { .. } => crate::domain::chat::check_emoji(&body)?,
            _ => {}
        }
        // With a `client_id`, a resend is answered with the first ack (the
        // store's dedup), even once the change made itself impossible.
        let message = NewMessage {
            id: None,
            room: room.to_string(),
            sender_id: Some(identity.user_id.clone()),
            sender_name: identity.name.clone(),
            sender_role: identity.role.as_str().to_owned(),
            client_id,
            body,
            action,
        };
        self.submit(identity, room, message, reference, ctx);
        Ok(())
    }

    fn check_body(&self, body: &str) -> Result<(), AppError> {
        if body.trim().is_empty() {
            return Err(AppError::Invalid("`body` must not be empty".into()));
        }
        let max = self.state.server.max_message_bytes;
        if body.len() > max {
            return Err(AppError::TooLarge(format!(
                "`body` is {} bytes; the limit is {max}",
                body.len()
            )));
        }
        Ok(())
    }

    /// Hands an entry to the sequencer once the socket may write to the
    /// room; its outcome comes back as a `StoreOutcome`.
    fn submit(
        &mut self,
        identity: Identity,
        room: RoomName,
        message: NewMessage,
        reference: Option<String>,
        ctx: &mut WebsocketContext<Self>,
    ) {
        let checked_recently = self
            .writable
            .get(room.as_str())
            .is_some_and(|checked| checked.elapsed() < WRITE_ACCESS_TTL);
        if self.rooms.contains_key(room.as_str()) || checked_recently {
            // No future per send: the ack comes back as a `StoreOutcome`.
            match self
                .state
                .sequencer
                .submit(message, ctx.address().recipient(), reference.clone())
            {
                Ok(()) => self.pending_acks += 1,
                Err(error) => self.send_error(ctx, reference.as_deref(), &error),
            }
            return;
        }
        // Not joined: one access check per room, the sends queued behind it
        // in order (a client may pipeline many before the answer).
        if let Some(queue) = self.awaiting_access.get_mut(room.as_str()) {
            queue.push((message, reference));
            return;
        }
        self.awaiting_access
            .insert(room.to_string(), vec![(message, reference)]);
        let db = self.state.db.clone();
        let checked = room.clone();
        let access = off_context(async move { authorize_write(&db, &identity, &checked).await });
        ctx.spawn(async move { (room, access.await) }.into_actor(self).map(
            |(room, access), session, ctx| {
                let queued = session
                    .awaiting_access
                    .remove(room.as_str())
                    .unwrap_or_default();
                if access.is_ok() {
                    session.writable.insert(room.to_string(), Instant::now());
                }
                for (message, reference) in queued {
                    let submitted = access.as_ref().map_err(clone_error).and_then(|()| {
                        session.state.sequencer.submit(
                            message,
                            ctx.address().recipient(),
                            reference.clone(),
                        )
                    });
                    match submitted {
                        Ok(()) => session.pending_acks += 1,
                        Err(error) => session.send_error(ctx, reference.as_deref(), &error),
                    }
                }
            },
        ));
    }

    /// A read receipt for a seq the room has: stored (the cursor only
    /// moves forward) and announced to the room, the reader's other
    /// sessions included. A seq beyond the room's last message is refused:
    /// accepted, it would hide the next messages from the unread count and
    /// cancel their email.
    pub(super) fn read(
        &mut self,
        identity: Identity,
        room: &str,
        seq: i64,
        reference: Option<String>,
        ctx: &mut WebsocketContext<Self>,
    ) -> Result<(), AppError> {
        let joined = self.joined_room(room)?;
        if seq < 0 {
            return Err(AppError::Invalid("`seq` must be 0 or more".into()));
        }
        let room_addr = joined.addr.clone();
        let db = self.state.db.clone();
        let room = room.to_owned();
        let session_id = self.id.clone();
        let receipt = ReadReceipt {
            user_id: identity.user_id.clone(),
            session_id: session_id.clone(),
            seq,
            confirmed: false,
        };
        ctx.spawn(
            off_context(async move {
                if let Ok(Err(fanned_out)) = room_addr.send(receipt).await {
                    // This node may trail the store by a moment (a message
                    // committed on another node): the store decides.
                    let stored = db.room_last_seq(&room).await?;
                    if seq > stored {
                        return Err(AppError::Invalid(format!(
                            "`seq` {seq} is beyond the room's last message ({})",
                            stored.max(fanned_out)
                        )));
                    }
                    room_addr.do_send(ReadReceipt {
                        user_id: identity.user_id.clone(),
                        session_id,
                        seq,
                        confirmed: true,
                    });
                }
                db.advance_read_cursor(&room, &identity.user_id, seq)
                    .await
                    .map_err(AppError::from)
            })
            .into_actor(self)
            .map(move |result, session, ctx| {
                if let Err(error) = result {
                    session.send_error(ctx, reference.as_deref(), &error);
                }
            }),
        );
        Ok(())
    }

    pub(super) fn history(
        &mut self,
        identity: Identity,
        room: &str,
        before: Option<i64>,
        limit: Option<i64>,
        reference: Option<String>,
        ctx: &mut WebsocketContext<Self>,
    ) -> Result<(), AppError> {
        let room = RoomName::parse(room)?;
        let limit = history_limit(limit)?;
        let db = self.state.db.clone();
        let reads = self.state.client_reads.clone();
        ctx.spawn(
            off_context(async move {
                authorize_read(&db, &identity, &room).await?;
                let (entries, has_more) = reads.before(room.as_str(), before, limit).await?;
                Ok::<_, AppError>((room, entries, has_more))
            })
            .into_actor(self)
            .map(move |result, session, ctx| match result {
                Ok((room, entries, has_more)) => {
                    let (messages, changes) = page_views(&entries);
                    ctx.text(
                        ServerFrame::History {
                            reference: reference.as_deref(),
                            room: room.as_str(),
                            messages,
                            changes,
                            has_more,
                        }
                        .encode(),
                    )
                }
                Err(error) => session.send_error(ctx, reference.as_deref(), &error),
            }),
        );
        Ok(())
    }
}
