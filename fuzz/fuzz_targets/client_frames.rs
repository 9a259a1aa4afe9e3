//! Any text a client may send: parsing never panics, every refusal is an
//! `invalid` error, and what parses passes the same validation the session
//! applies (room names, history limits, attachments, emoji) without
//! panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mixroom_realtime::domain::chat::{check_emoji, AttachmentOrigins};
use mixroom_realtime::domain::room::RoomName;
use mixroom_realtime::domain::wire::{parse_client_frame, ClientFrame};
use mixroom_realtime::error::{AppError, ErrorCode};
use mixroom_realtime::ws::session::history_limit;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_client_frame(text) {
        Err((_, error)) => {
            // The session turns a refusal into an error frame through AppError.
            assert!(!error.to_string().is_empty());
            assert_eq!(AppError::from(error).code(), ErrorCode::Invalid);
        }
        Ok(envelope) => match envelope.frame {
            ClientFrame::Join { room, .. }
            | ClientFrame::Leave { room }
            | ClientFrame::Typing { room }
            | ClientFrame::Read { room, .. }
            | ClientFrame::Edit { room, .. }
            | ClientFrame::Delete { room, .. } => {
                let _ = RoomName::parse(&room);
            }
            ClientFrame::Send {
                room, attachments, ..
            } => {
                let _ = RoomName::parse(&room);
                let origins = AttachmentOrigins::new(&["https://*.supabase.co".to_owned()]);
                if let Err(refusal) = origins.check(&attachments) {
                    assert!(!refusal.to_string().is_empty());
                }
            }
            ClientFrame::React { room, emoji, .. } => {
                let _ = RoomName::parse(&room);
                if check_emoji(&emoji).is_ok() {
                    assert!(!emoji.is_empty() && emoji.len() <= 32);
                }
            }
            ClientFrame::History { room, limit, .. } => {
                let _ = RoomName::parse(&room);
                if let Ok(n) = history_limit(limit) {
                    assert!((1..=100).contains(&n));
                }
            }
            ClientFrame::Auth { .. } | ClientFrame::Ping => {}
        },
    }
});
