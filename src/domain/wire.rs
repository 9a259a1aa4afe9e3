//! The WebSocket frames of the contract (`PROTOCOL.md`), as typed values,
//! with the error codes they carry. Server frames that go to many sockets
//! are serialised once, into a [`ByteString`] that every recipient shares.

use bytestring::ByteString;
use serde::{Deserialize, Serialize};

use super::chat::Attachment;

/// The contract's error codes (`error.code` in frames and HTTP bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Invalid,
    Unauthorized,
    Forbidden,
    NotFound,
    /// The resource existed and was erased for good (HTTP 410).
    Gone,
    TooLarge,
    /// HTTP only (408): the request's body did not arrive in time.
    Timeout,
    /// HTTP only (409): an `Idempotency-Key` reused with another request.
    Conflict,
    RateLimited,
    Internal,
    /// HTTP only (503): Web Push is off on this server (no VAPID key).
    PushDisabled,
}

impl ErrorCode {
    /// The code as it is written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Invalid => "invalid",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Gone => "gone",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::PushDisabled => "push_disabled",
        }
    }
}

/// A client frame that cannot be read (its message is the `error` frame's).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FrameError(String);

/// A client frame with its optional `ref`.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(rename = "ref", default)]
    pub reference: Option<String>,
    #[serde(flatten)]
    pub frame: ClientFrame,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Auth {
        token: String,
    },
    Join {
        room: String,
        #[serde(default)]
        since: Option<i64>,
    },
    Leave {
        room: String,
    },
    Send {
        room: String,
        client_id: String,
        body: String,
        /// The seq of the message this one answers (same room).
        #[serde(default)]
        reply_to: Option<i64>,
        #[serde(default)]
        attachments: Vec<Attachment>,
    },
    /// New text for one's own message, within `chat.edit_window_secs`.
    /// A change's optional `client_id` makes a resend safe, as a send's.
    Edit {
        room: String,
        seq: i64,
        body: String,
        #[serde(default)]
        client_id: Option<String>,
    },
    /// One's own message, or any as an admin; a tombstone stays.
    Delete {
        room: String,
        seq: i64,
        #[serde(default)]
        client_id: Option<String>,
    },
    /// An emoji put on (`on: true`) or taken back.
    React {
        room: String,
        seq: i64,
        emoji: String,
        on: bool,
        #[serde(default)]
        client_id: Option<String>,
    },
    Typing {
        room: String,
    },
    Read {
        room: String,
        seq: i64,
    },
    History {
        room: String,
        #[serde(default)]
        before: Option<i64>,
        #[serde(default)]
        limit: Option<i64>,
    },
    Ping,
}

const CLIENT_FRAME_TYPES: &[&str] = &[
    "auth", "join", "leave", "send", "edit", "delete", "react", "typing", "read", "history", "ping",
];

/// Parses a text frame; on failure returns the error to answer with and the
/// `ref` if one could be read, so even a bad frame gets a correlated reply.
pub fn parse_client_frame(text: &str) -> Result<Envelope, (Option<String>, FrameError)> {
    match serde_json::from_str::<Envelope>(text) {
        Ok(envelope) => Ok(envelope),
        Err(error) => {
            let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
            let reference = value
                .as_ref()
                .and_then(|v| v.get("ref"))
                .and_then(|r| r.as_str())
                .map(str::to_owned);
            let message = match value.as_ref() {
                None => format!("malformed JSON: {error}"),
                Some(v) if !v.is_object() => "a frame must be a JSON object".to_owned(),
                Some(v) => match v.get("type").and_then(|t| t.as_str()) {
                    None => "missing string field `type`".to_owned(),
                    Some(t) if !CLIENT_FRAME_TYPES.contains(&t) => {
                        format!("unknown frame type `{t}`")
                    }
                    Some(t) => format!("invalid `{t}` frame: {error}"),
                },
            };
            Err((reference, FrameError(message)))
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SenderView<'a> {
    pub user_id: Option<&'a str>,
    pub name: &'a str,
    pub role: &'a str,
}

/// A stored message as clients see it (`message` frames and history items).
#[derive(Debug, Serialize)]
pub struct MessageView<'a> {
    pub room: &'a str,
    pub seq: i64,
    pub id: &'a str,
    pub client_id: Option<&'a str>,
    pub sender: SenderView<'a>,
    pub body: &'a str,
    pub sent_at: String,
    /// What a reply answers, as that message stands now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<QuoteView<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<String>,
    /// Set on a tombstone: its body is empty, attachments and reactions gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionView<'a>>,
}

/// The answered message in a reply: enough to show a quote.
#[derive(Debug, Serialize)]
pub struct QuoteView<'a> {
    pub seq: i64,
    pub sender: SenderView<'a>,
    /// The first characters of its current text (empty once deleted).
    pub excerpt: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// One emoji on a message: how many and who.
#[derive(Debug, Serialize)]
pub struct ReactionView<'a> {
    pub emoji: &'a str,
    pub count: usize,
    pub user_ids: Vec<&'a str>,
}

/// A change to an earlier message, in the room's sequence at `seq`; it
/// names the message at `message_seq` and shows it as it stands.
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum ChangeView<'a> {
    #[serde(rename = "message.edited")]
    Edited {
        room: &'a str,
        seq: i64,
        message_seq: i64,
        by: SenderView<'a>,
        body: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        edited_at: Option<String>,
        at: String,
    },
    #[serde(rename = "message.deleted")]
    Deleted {
        room: &'a str,
        seq: i64,
        message_seq: i64,
        by: SenderView<'a>,
        at: String,
    },
    #[serde(rename = "message.reacted")]
    Reacted {
        room: &'a str,
        seq: i64,
        message_seq: i64,
        by: SenderView<'a>,
        emoji: &'a str,
        on: bool,
        /// The message's reactions after this one.
        reactions: Vec<ReactionView<'a>>,
        at: String,
    },
}

impl ChangeView<'_> {
    pub fn encode(&self) -> ByteString {
        ByteString::from(serde_json::to_string(self).expect("change frames serialise"))
    }
}

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub user_id: String,
    pub name: String,
    pub role: String,
    pub online: bool,
}

/// Frames the server sends. Each is built to be serialised at once and
/// dropped, so the size of its largest variant costs nothing kept.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum ServerFrame<'a> {
    #[serde(rename = "welcome")]
    Welcome {
        user_id: &'a str,
        session_id: &'a str,
        server_time: String,
        heartbeat_ms: u64,
    },
    #[serde(rename = "joined")]
    Joined {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        room: &'a str,
        last_seq: i64,
        members: &'a [MemberView],
        /// With `since`: whether the replay stopped before `last_seq` (the
        /// client joins again with `since` = `replay_until` for the rest).
        #[serde(skip_serializing_if = "Option::is_none")]
        has_more: Option<bool>,
        /// With `since`: the seq the replay that follows ends at.
        #[serde(skip_serializing_if = "Option::is_none")]
        replay_until: Option<i64>,
    },
    #[serde(rename = "left")]
    Left {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        room: &'a str,
    },
    #[serde(rename = "ack")]
    Ack {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        /// The `client_id` the frame carried (a `send` always has one).
        #[serde(skip_serializing_if = "Option::is_none")]
        client_id: Option<&'a str>,
        id: &'a str,
        seq: i64,
        sent_at: String,
    },
    #[serde(rename = "message")]
    Message(MessageView<'a>),
    #[serde(rename = "history")]
    History {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        room: &'a str,
        messages: Vec<MessageView<'a>>,
        /// The edits, deletions and reactions among the page's seqs (the
        /// messages already show their effect).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        changes: Vec<ChangeView<'a>>,
        has_more: bool,
    },
    #[serde(rename = "typing")]
    Typing { room: &'a str, user_id: &'a str },
    #[serde(rename = "read")]
    Read {
        room: &'a str,
        user_id: &'a str,
        seq: i64,
    },
    #[serde(rename = "presence")]
    Presence {
        room: &'a str,
        user_id: &'a str,
        online: bool,
    },
    #[serde(rename = "pong")]
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        server_time: String,
    },
    #[serde(rename = "error")]
    Error {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        code: ErrorCode,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl ServerFrame<'_> {
    pub fn encode(&self) -> ByteString {
        // Serialising these types cannot fail: no maps with non-string keys.
        ByteString::from(serde_json::to_string(self).expect("server frames serialise"))
    }
}

/// The `message` frame of a stored message, serialised once for all
/// recipients.
pub fn message_frame(message: MessageView<'_>) -> ByteString {
    ServerFrame::Message(message).encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_with_ref() {
        let env = parse_client_frame(r#"{"type":"join","room":"booking:1","since":3,"ref":"r1"}"#)
            .unwrap();
        assert_eq!(env.reference.as_deref(), Some("r1"));
        assert!(matches!(
            env.frame,
            ClientFrame::Join { since: Some(3), .. }
        ));
    }

    #[test]
    fn explains_bad_frames() {
        let (_, e) = parse_client_frame("{\"type\":").unwrap_err();
        assert!(e.to_string().starts_with("malformed JSON"));
        let (r, e) = parse_client_frame(r#"{"type":"dance","ref":"x"}"#).unwrap_err();
        assert_eq!(r.as_deref(), Some("x"));
        assert_eq!(e.to_string(), "unknown frame type `dance`");
        let (_, e) = parse_client_frame(r#"{"type":"send","room":"booking:1","client_id":"c"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("body"), "{e}");
    }
}
