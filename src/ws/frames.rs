//! The WebSocket frames of the contract (`PROTOCOL.md`), as typed values.
//! Server frames that go to many sockets are serialised once, into a
//! [`ByteString`] that every recipient shares.

use bytestring::ByteString;
use serde::{Deserialize, Serialize};

use crate::db::models::MessageRow;
use crate::error::{AppError, ErrorCode};

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
    "auth", "join", "leave", "send", "typing", "read", "history", "ping",
];

/// Parses a text frame; on failure returns the error to answer with and the
/// `ref` if one could be read, so even a bad frame gets a correlated reply.
pub fn parse_client_frame(text: &str) -> Result<Envelope, (Option<String>, AppError)> {
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
            Err((reference, AppError::Invalid(message)))
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
}

impl<'a> From<&'a MessageRow> for MessageView<'a> {
    fn from(row: &'a MessageRow) -> Self {
        MessageView {
            room: &row.room,
            seq: row.seq,
            id: &row.id,
            client_id: row.client_id.as_deref(),
            sender: SenderView {
                user_id: row.sender_id.as_deref(),
                name: &row.sender_name,
                role: &row.sender_role,
            },
            body: &row.body,
            sent_at: crate::time::rfc3339_ms(row.sent_at),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub user_id: String,
    pub name: String,
    pub role: String,
    pub online: bool,
}

/// Frames the server sends.
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
        client_id: &'a str,
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

    pub fn error(reference: Option<&str>, error: &AppError) -> ByteString {
        if let AppError::Internal(source) = error {
            tracing::error!(error = %format!("{source:#}"), "frame failed");
        }
        ServerFrame::Error {
            reference,
            code: error.code(),
            message: error.to_string(),
            retry_after_ms: error.retry_after_ms(),
        }
        .encode()
    }
}

/// The `message` frame of a stored row, serialised once for all recipients.
pub fn message_frame(row: &MessageRow) -> ByteString {
    ServerFrame::Message(MessageView::from(row)).encode()
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
