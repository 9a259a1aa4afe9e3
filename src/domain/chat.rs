//! What people do to a room's messages besides posting them: edits,
//! deletions, reactions, replies and attachment references, and the rules
//! each must pass. Every accepted change is stored as an entry of its own
//! in the room's sequence (see [`EntryKind`]), so a client that was away
//! replays it in order with the messages.

use serde::{Deserialize, Serialize};

text_enum! {
    /// What an entry of a room's sequence is. A `message` is what people
    /// read; the others change an earlier message (its seq in `target_seq`).
    #[derive(Default)]
    pub enum EntryKind {
        #[default]
        Message = "message",
        Edit = "edit",
        Delete = "delete",
        /// A reaction put on (`body` holds the emoji).
        React = "react",
        /// A reaction taken back (`body` holds the emoji).
        Unreact = "unreact",
    }
}

impl<'de> Deserialize<'de> for EntryKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        EntryKind::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown entry kind `{text}`")))
    }
}

/// Why a change to a message was refused; each maps to the contract's code
/// of the same name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatRefusal {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
}

/// How many characters of the answered message a reply quotes.
pub const QUOTE_CHARS: usize = 120;
/// Attachments one message may reference.
pub const MAX_ATTACHMENTS: usize = 10;
const MAX_URL_BYTES: usize = 2048;
const MAX_NAME_CHARS: usize = 255;
const MAX_CONTENT_TYPE_BYTES: usize = 127;
/// One emoji (with its modifiers and joiners) fits well within this.
const MAX_EMOJI_BYTES: usize = 32;
/// Files larger than this are not something a studio shares by link (5 TiB).
const MAX_ATTACHMENT_SIZE: u64 = 5 << 40;

/// A file shared by reference (the file itself lives in Supabase Storage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub url: String,
    pub name: String,
    pub size: u64,
    pub content_type: String,
}

/// What the room's changes must respect, from `[chat]`.
#[derive(Debug, Clone)]
pub struct ChatRules {
    pub edit_window_ms: i64,
    pub attachment_origins: AttachmentOrigins,
}

/// The origins attachments may point at (`chat.attachment_origins`):
/// `https://host[:port]`, or `https://*.domain` for any subdomain.
#[derive(Debug, Clone, Default)]
pub struct AttachmentOrigins(Vec<String>);

impl AttachmentOrigins {
    pub fn new(origins: &[String]) -> Self {
        AttachmentOrigins(
            origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect(),
        )
    }

    fn allows(&self, origin: &str) -> bool {
        self.0
            .iter()
            .any(|allowed| match allowed.split_once("://*.") {
                Some((scheme, domain)) => origin
                    .strip_prefix(scheme)
                    .and_then(|rest| rest.strip_prefix("://"))
                    .and_then(|host| host.strip_suffix(domain))
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => allowed == origin,
            })
    }

    /// Checks every attachment of a message; the error names the first bad
    /// field (`attachments[i].url`).
    pub fn check(&self, attachments: &[Attachment]) -> Result<(), ChatRefusal> {
        if attachments.len() > MAX_ATTACHMENTS {
            return Err(ChatRefusal::Invalid(format!(
                "at most {MAX_ATTACHMENTS} attachments per message"
            )));
        }
        for (i, attachment) in attachments.iter().enumerate() {
            let bad = |what: String| ChatRefusal::Invalid(format!("`attachments[{i}].{what}"));
            let origin = url_origin(&attachment.url)
                .ok_or_else(|| bad("url` must be an absolute https URL".into()))?;
            if attachment.url.len() > MAX_URL_BYTES {
                return Err(bad(format!("url` is longer than {MAX_URL_BYTES} bytes")));
            }
            if !self.allows(&origin) {
                return Err(ChatRefusal::Forbidden(format!(
                    "`attachments[{i}].url`: {origin} is not an origin attachments may come from"
                )));
            }
            let name_chars = attachment.name.chars().count();
            if attachment.name.trim().is_empty()
                || name_chars > MAX_NAME_CHARS
                || attachment.name.chars().any(char::is_control)
            {
                return Err(bad(format!(
                    "name` must be 1 to {MAX_NAME_CHARS} characters, none of them control characters"
                )));
            }
            if attachment.size > MAX_ATTACHMENT_SIZE {
                return Err(bad("size` is larger than 5 TiB".into()));
            }
            if !is_media_type(&attachment.content_type) {
                return Err(bad(
                    "content_type` must be a media type such as audio/wav".into()
                ));
            }
        }
        Ok(())
    }
}

/// `scheme://host[:port]` of an https URL, lowercased; `None` when it is not
/// one (no userinfo, no whitespace).
fn url_origin(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (host, Some(port)),
        Some(_) => return None,
        None => (authority, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !host_ok {
        return None;
    }
    let mut origin = format!("https://{}", host.to_ascii_lowercase());
    if let Some(port) = port.filter(|p| *p != "443") {
        origin.push(':');
        origin.push_str(port);
    }
    Some(origin)
}

/// `type/subtype` of RFC 6838 token characters, parameters allowed.
fn is_media_type(text: &str) -> bool {
    if text.len() > MAX_CONTENT_TYPE_BYTES {
        return false;
    }
    let essence = text.split(';').next().unwrap_or("").trim();
    let token = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    matches!(essence.split_once('/'), Some((kind, sub)) if token(kind) && token(sub))
        && text.chars().all(|c| !c.is_control())
}

/// A reaction is one emoji: a short run of symbol characters that makes
/// one picture (a base symbol with its modifiers, several joined by ZWJ, a
/// flag's two letters), no letters, digits, spaces or markup, so a
/// reaction cannot carry a message.
pub fn check_emoji(emoji: &str) -> Result<(), ChatRefusal> {
    let refused = || ChatRefusal::Invalid("`emoji` must be one emoji, such as 👍".into());
    if emoji.is_empty() || emoji.len() > MAX_EMOJI_BYTES {
        return Err(refused());
    }
    let mut pictures = 0;
    let mut after_joiner = false;
    let mut open_flag = false;
    for c in emoji.chars() {
        let code = c as u32;
        let modifier = matches!(code,
            0xFE0E | 0xFE0F | 0x20E3 | 0x1F3FB..=0x1F3FF | 0xE0020..=0xE007F);
        let regional = matches!(code, 0x1F1E6..=0x1F1FF);
        // Emoji, pictographs, dingbats, arrows and symbols.
        let base = matches!(code,
            0x00A9 | 0x00AE | 0x203C | 0x2049 | 0x2122 | 0x2139
            | 0x2190..=0x21FF | 0x2300..=0x23FF | 0x24C2 | 0x25A0..=0x27BF
            | 0x2900..=0x297F | 0x2B00..=0x2BFF | 0x3030 | 0x303D | 0x3297 | 0x3299
            | 0x1F000..=0x1FAFF);
        if c == '\u{200D}' {
            if pictures == 0 || after_joiner {
                return Err(refused());
            }
            after_joiner = true;
        } else if modifier {
            if pictures == 0 {
                return Err(refused());
            }
        } else if regional && open_flag {
            // A flag's second letter.
            open_flag = false;
        } else if base {
            if !after_joiner {
                pictures += 1;
            }
            after_joiner = false;
            open_flag = regional;
        } else {
            return Err(refused());
        }
    }
    if pictures != 1 || after_joiner || open_flag {
        return Err(refused());
    }
    Ok(())
}

/// The first characters of a body, for a reply's quote.
pub fn excerpt(body: &str) -> &str {
    match body.char_indices().nth(QUOTE_CHARS) {
        Some((at, _)) => &body[..at],
        None => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(url: &str) -> Attachment {
        Attachment {
            url: url.into(),
            name: "stems.zip".into(),
            size: 1_000,
            content_type: "application/zip".into(),
        }
    }

    #[test]
    fn attachments_come_only_from_the_configured_origins() {
        let origins = AttachmentOrigins::new(&[
            "https://*.supabase.co".into(),
            "https://files.mixroom.test/".into(),
        ]);
        let ok = |url: &str| origins.check(&[file(url)]);
        assert!(ok("https://abc.supabase.co/storage/v1/object/public/a/b.wav").is_ok());
        assert!(ok("https://FILES.mixroom.test:443/x").is_ok());
        assert!(matches!(
            ok("https://supabase.co/x"),
            Err(ChatRefusal::Forbidden(_))
        ));
        assert!(matches!(
            ok("https://evil.co/abc.supabase.co"),
            Err(ChatRefusal::Forbidden(_))
        ));
        assert!(matches!(
            ok("https://abc.supabase.co.evil.co/x"),
            Err(ChatRefusal::Forbidden(_))
        ));
        assert!(matches!(
            ok("https://files.mixroom.test:8443/x"),
            Err(ChatRefusal::Forbidden(_))
        ));
        for bad in [
            "http://abc.supabase.co/x",
            "https://user@abc.supabase.co/x",
            "javascript:alert(1)",
            "https:// abc.supabase.co/x",
            "https://abc.supabase.co/a b",
        ] {
            assert!(
                matches!(ok(bad), Err(ChatRefusal::Invalid(_))),
                "{bad} accepted"
            );
        }
        assert!(matches!(
            AttachmentOrigins::new(&[]).check(&[file("https://abc.supabase.co/x")]),
            Err(ChatRefusal::Forbidden(_))
        ));
    }

    #[test]
    fn each_attachment_field_is_checked() {
        let origins = AttachmentOrigins::new(&["https://*.supabase.co".into()]);
        let mut a = file("https://abc.supabase.co/x");
        a.name = "bad\nname".into();
        assert!(origins.check(&[a]).is_err());
        let mut a = file("https://abc.supabase.co/x");
        a.content_type = "wav".into();
        assert!(origins.check(&[a]).is_err());
        let mut a = file("https://abc.supabase.co/x");
        a.content_type = "audio/wav; rate=48000".into();
        assert!(origins.check(&[a]).is_ok());
        let many = vec![file("https://abc.supabase.co/x"); MAX_ATTACHMENTS + 1];
        assert!(origins.check(&many).is_err());
    }

    #[test]
    fn a_reaction_is_one_emoji() {
        for ok in ["👍", "❤️", "🎚️", "👍🏽", "🧑‍🎤", "✅", "🇯🇵", "👨‍👩‍👧"]
        {
            assert!(check_emoji(ok).is_ok(), "{ok} refused");
        }
        for bad in [
            "",
            "ok",
            "👍 great",
            "<b>",
            "1",
            "👍👍",
            "🇯",
            "🇯🇵🇫🇷",
            "\u{200D}👍",
            "👍\u{200D}",
            "\u{FE0F}",
            &"👍".repeat(20),
        ] {
            assert!(check_emoji(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn quotes_cut_at_characters_not_bytes() {
        let long = "é".repeat(QUOTE_CHARS + 5);
        assert_eq!(excerpt(&long).chars().count(), QUOTE_CHARS);
        assert_eq!(excerpt("short"), "short");
    }
}
