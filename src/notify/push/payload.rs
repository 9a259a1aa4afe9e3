//! What a push says: a short JSON object the browser's service worker
//! shows as a notification, `{"title","body","link","kind","tag"}`. Push
//! services take about 4 KB; these stay far below (title 80, body 140
//! characters), and `tag` lets a newer push replace an older one about
//! the same thing in the browser's list.

use serde::Serialize;

use crate::db::models::{MessageRow, NotificationRow};
use crate::domain::email::{ChatRoom, EmailKind};
use crate::notify::templates::absolute_link;

const TITLE_CHARS: usize = 80;
const BODY_CHARS: usize = 140;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushPayload {
    pub title: String,
    pub body: String,
    pub link: String,
    pub kind: EmailKind,
    pub tag: String,
}

impl PushPayload {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("push payloads serialise")
    }
}

/// `text` cut to `max` characters (the last one an ellipsis when cut),
/// whitespace runs folded to one space.
pub fn shorten(text: &str, max: usize) -> String {
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if folded.chars().count() <= max {
        return folded;
    }
    let mut cut: String = folded.chars().take(max.saturating_sub(1)).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

/// A notification as it is in the inbox.
pub fn for_notification(row: &NotificationRow, app_base_url: &str) -> PushPayload {
    PushPayload {
        title: shorten(&row.title, TITLE_CHARS),
        body: shorten(&row.body, BODY_CHARS),
        link: row
            .link
            .as_deref()
            .and_then(|link| absolute_link(app_base_url, link))
            .unwrap_or_else(|| app_base_url.trim_end_matches('/').to_owned()),
        kind: row.kind,
        tag: format!("notification:{}", row.id),
    }
}

/// What a chat message says in one line: its text and the files it
/// shares by name (`📎 take3.wav`), or only what it shares when it has no
/// text.
fn message_text(message: &MessageRow) -> String {
    let files = match message.attachment_list().as_slice() {
        [] => None,
        [one] => Some(format!("📎 {}", one.name)),
        many => Some(format!("📎 {} files", many.len())),
    };
    match (message.body.trim(), files) {
        ("", Some(files)) => format!("shared {files}"),
        ("", None) => "sent a message".to_owned(),
        (text, Some(files)) => format!("{text} {files}"),
        (text, None) => text.to_owned(),
    }
}

/// The newest of `count` messages a recipient got in a room: "`Sam: …`",
/// titled with the booking (or "Mixroom support"), linked to the room in
/// the web app, tagged with the room so a later push replaces it.
pub fn for_chat(
    room: &str,
    newest: &MessageRow,
    count: usize,
    booking_title: Option<&str>,
    app_base_url: &str,
) -> PushPayload {
    let app = app_base_url.trim_end_matches('/');
    let (place, link, kind) = match ChatRoom::parse(room) {
        Some(ChatRoom::Booking(id)) => (
            booking_title
                .filter(|t| !t.trim().is_empty())
                .unwrap_or("Your booking")
                .to_owned(),
            format!("{app}/bookings/{id}"),
            EmailKind::Chat,
        ),
        Some(ChatRoom::Support(id)) => (
            "Mixroom support".to_owned(),
            format!("{app}/support/{id}"),
            EmailKind::Support,
        ),
        None => ("Mixroom".to_owned(), app.to_owned(), EmailKind::Chat),
    };
    let title = if count > 1 {
        format!("{count} new messages · {place}")
    } else {
        place
    };
    PushPayload {
        title: shorten(&title, TITLE_CHARS),
        body: shorten(
            &format!("{}: {}", newest.sender_name, message_text(newest)),
            BODY_CHARS,
        ),
        link,
        kind,
        tag: room.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &str, attachments: Option<&str>) -> MessageRow {
        MessageRow {
            id: "m1".into(),
            room: "booking:b1".into(),
            seq: 3,
            sender_id: Some("sam".into()),
            sender_name: "Sam".into(),
            sender_role: "studio_owner".into(),
            client_id: Some("c1".into()),
            body: body.into(),
            sent_at: 0,
            kind: crate::domain::chat::EntryKind::Message,
            target_seq: None,
            attachments: attachments.map(str::to_owned),
            edited_at: None,
            deleted_at: None,
            reactions: 0,
        }
    }

    #[test]
    fn long_text_is_cut_to_the_limit_with_an_ellipsis() {
        let long = "word ".repeat(100);
        let short = shorten(&long, BODY_CHARS);
        assert!(short.chars().count() <= BODY_CHARS);
        assert!(short.chars().count() >= BODY_CHARS - 5);
        assert!(short.ends_with('…'));
        assert_eq!(shorten("  two\n\nlines ", 140), "two lines");
    }

    #[test]
    fn a_chat_push_names_the_sender_booking_and_room() {
        let payload = for_chat(
            "booking:b1",
            &message("See you at 5", None),
            1,
            Some("Vocals"),
            "https://app.example/",
        );
        assert_eq!(payload.title, "Vocals");
        assert_eq!(payload.body, "Sam: See you at 5");
        assert_eq!(payload.link, "https://app.example/bookings/b1");
        assert_eq!(payload.tag, "booking:b1");
        assert_eq!(payload.kind, EmailKind::Chat);
        let several = for_chat(
            "support:s1",
            &message("hi", None),
            3,
            None,
            "https://app.example",
        );
        assert_eq!(several.title, "3 new messages · Mixroom support");
        assert_eq!(several.kind, EmailKind::Support);
    }

    #[test]
    fn shared_files_are_named() {
        let one = r#"[{"url":"https://x.supabase.co/a.wav","name":"take3.wav","size":1,"content_type":"audio/wav"}]"#;
        let payload = for_chat("booking:b1", &message("", Some(one)), 1, None, "https://a");
        assert_eq!(payload.body, "Sam: shared 📎 take3.wav");
        assert_eq!(payload.title, "Your booking");
        let with_text = for_chat(
            "booking:b1",
            &message("Stems", Some(one)),
            1,
            None,
            "https://a",
        );
        assert_eq!(with_text.body, "Sam: Stems 📎 take3.wav");
    }
}
