//! The digest email: a subject, an HTML part and a plain-text part.
//!
//! Everything that comes from users or the backend (names, titles, bodies,
//! links) is HTML-escaped on the way into the HTML part; links must be
//! http(s) and are escaped as attribute values. The text part is plain text
//! and needs no escaping.

use html_escape::{encode_double_quoted_attribute, encode_text};

/// Chat bodies longer than this are cut in the email (the app has them whole).
const BODY_MAX_CHARS: usize = 2000;
const SUBJECT_MAX_CHARS: usize = 150;

/// One unread thing in the digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestEntry {
    /// `chat`, `booking`, `support` or `marketing`.
    pub kind: String,
    /// A message someone wrote (not a notification).
    pub is_message: bool,
    /// Who wrote it and where (chat), or the notification's title.
    pub heading: String,
    pub body: String,
    /// Absolute http(s) URL into the web app.
    pub link: Option<String>,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubscribeLink {
    pub kind: String,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEmail {
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// What the footer calls each kind.
pub fn kind_label(kind: &str) -> &'static str {
    match kind {
        "chat" => "chat messages",
        "booking" => "booking updates",
        "support" => "support replies",
        "marketing" => "news and offers",
        "reminder" => "booking reminders",
        "policy" => "changes to our terms and policies",
        _ => "notifications",
    }
}

fn link_label(kind: &str) -> &'static str {
    match kind {
        "chat" => "Reply in Mixroom",
        "support" => "Open the conversation",
        "booking" | "reminder" => "Open the booking",
        _ => "Open in Mixroom",
    }
}

/// A notification's link as an absolute URL: a path is put under the web
/// app's base; an http(s) URL is kept; anything else (`javascript:`,
/// `//host`, other schemes) is dropped.
pub fn absolute_link(app_base_url: &str, link: &str) -> Option<String> {
    let link = link.trim();
    if link.starts_with("https://") || link.starts_with("http://") {
        return Some(link.to_owned());
    }
    if link.starts_with('/') && !link.starts_with("//") {
        return Some(format!("{}{link}", app_base_url.trim_end_matches('/')));
    }
    None
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", text[..cut].trim_end()),
        None => text.to_owned(),
    }
}

/// A header value: no line breaks or other control characters.
fn one_line(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    flat.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn when(at_ms: i64) -> String {
    let format = time::macros::format_description!(
        "[day padding:none] [month repr:short] [year], [hour]:[minute] UTC"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
        .ok()
        .and_then(|at| at.format(&format).ok())
        .unwrap_or_default()
}

fn subject(entries: &[DigestEntry]) -> String {
    let subject = match entries {
        [only] if only.is_message => {
            format!("New message: {}", only.heading)
        }
        [only] => only.heading.clone(),
        _ => format!("You have {} unread updates on Mixroom", entries.len()),
    };
    shorten(&one_line(&subject), SUBJECT_MAX_CHARS)
}

/// Renders the digest for one recipient. `unsubscribe` has a link for each
/// kind present; `settings_url` is where all preferences can be changed.
pub fn render_digest(
    recipient_name: Option<&str>,
    entries: &[DigestEntry],
    unsubscribe: &[UnsubscribeLink],
    settings_url: &str,
) -> RenderedEmail {
    let greeting = match recipient_name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(name) => format!("Hi {name},"),
        None => "Hi,".to_owned(),
    };
    let intro = if entries.len() == 1 {
        "Something on Mixroom is waiting for you:".to_owned()
    } else {
        format!("{} things on Mixroom are waiting for you:", entries.len())
    };

    let mut html = String::with_capacity(2048);
    let mut text = String::with_capacity(1024);
    html.push_str(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head>\n\
         <body style=\"font-family:Helvetica,Arial,sans-serif;color:#1d1d1f;max-width:600px;margin:0 auto;padding:16px\">\n",
    );
    html.push_str(&format!(
        "<p>{}</p>\n<p>{}</p>\n",
        encode_text(&greeting),
        encode_text(&intro)
    ));
    text.push_str(&format!("{greeting}\n\n{intro}\n"));

    for entry in entries {
        let body = shorten(entry.body.trim(), BODY_MAX_CHARS);
        html.push_str(
            "<div style=\"border:1px solid #e5e5ea;border-radius:8px;padding:12px 16px;margin:12px 0\">\n",
        );
        html.push_str(&format!(
            "<p style=\"margin:0;color:#6e6e73;font-size:12px\">{}</p>\n",
            encode_text(&when(entry.at_ms))
        ));
        html.push_str(&format!(
            "<p style=\"margin:4px 0;font-weight:bold\">{}</p>\n",
            encode_text(&entry.heading)
        ));
        if !body.is_empty() {
            let lines: Vec<String> = body.lines().map(|l| encode_text(l).into_owned()).collect();
            html.push_str(&format!(
                "<p style=\"margin:4px 0;white-space:pre-wrap\">{}</p>\n",
                lines.join("<br>\n")
            ));
        }
        text.push_str(&format!(
            "\n---\n{}\n{}\n",
            when(entry.at_ms),
            one_line(&entry.heading)
        ));
        if !body.is_empty() {
            text.push_str(&format!("{body}\n"));
        }
        if let Some(link) = &entry.link {
            html.push_str(&format!(
                "<p style=\"margin:8px 0 0\"><a href=\"{}\">{}</a></p>\n",
                encode_double_quoted_attribute(link),
                encode_text(link_label(&entry.kind))
            ));
            text.push_str(&format!("{}: {link}\n", link_label(&entry.kind)));
        }
        html.push_str("</div>\n");
    }

    html.push_str(
        "<hr style=\"border:none;border-top:1px solid #e5e5ea;margin-top:24px\">\n\
         <p style=\"color:#6e6e73;font-size:12px\">You get this email because you have not seen these on Mixroom yet.",
    );
    text.push_str("\n---\nYou get this email because you have not seen these on Mixroom yet.\n");
    for link in unsubscribe {
        let label = format!("Stop emails about {}", kind_label(&link.kind));
        html.push_str(&format!(
            "<br>\n<a href=\"{}\">{}</a>",
            encode_double_quoted_attribute(&link.url),
            encode_text(&label)
        ));
        text.push_str(&format!("{label}: {}\n", link.url));
    }
    html.push_str(&format!(
        "<br>\n<a href=\"{}\">Email preferences</a></p>\n</body></html>\n",
        encode_double_quoted_attribute(settings_url)
    ));
    text.push_str(&format!("Email preferences: {settings_url}\n"));

    RenderedEmail {
        subject: subject(entries),
        html,
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str, heading: &str, body: &str, link: Option<&str>) -> DigestEntry {
        DigestEntry {
            kind: kind.into(),
            is_message: kind == "chat",
            heading: heading.into(),
            body: body.into(),
            link: link.map(Into::into),
            at_ms: 1_795_000_000_123,
        }
    }

    #[test]
    fn user_content_never_reaches_the_html_raw() {
        let email = render_digest(
            Some("<b>Sam</b>"),
            &[entry(
                "chat",
                "Ava <img src=x onerror=alert(1)> · Mix & Master",
                "<script>alert(\"x\")</script>\nsecond line",
                Some("https://app.example.com/bookings/b\"><script>"),
            )],
            &[UnsubscribeLink {
                kind: "chat".into(),
                url: "https://rt.example.com/v1/unsubscribe?token=a.chat.00&x=\"".into(),
            }],
            "https://app.example.com/settings",
        );
        for raw in ["<script>", "<img", "<b>Sam", "b\"><", "&x=\""] {
            assert!(!email.html.contains(raw), "{raw} in {}", email.html);
        }
        assert!(email
            .html
            .contains("&lt;script&gt;alert(\"x\")&lt;/script&gt;<br>"));
        assert!(email.html.contains("Mix &amp; Master"));
        assert!(email
            .text
            .contains("<script>alert(\"x\")</script>\nsecond line"));
        assert!(email
            .text
            .contains("https://rt.example.com/v1/unsubscribe?token=a.chat.00"));
    }

    #[test]
    fn subjects_name_one_item_or_count_several() {
        let chat = entry("chat", "Ava · Vocals", "hi", None);
        let booking = entry("booking", "Booking paid\r\nBcc: x@y", "", None);
        assert_eq!(
            render_digest(None, std::slice::from_ref(&chat), &[], "s").subject,
            "New message: Ava · Vocals"
        );
        assert_eq!(
            render_digest(None, std::slice::from_ref(&booking), &[], "s").subject,
            "Booking paid Bcc: x@y"
        );
        assert_eq!(
            render_digest(None, &[chat, booking], &[], "s").subject,
            "You have 2 unread updates on Mixroom"
        );
    }

    #[test]
    fn links_are_made_absolute_or_dropped() {
        let base = "https://app.example.com/";
        assert_eq!(
            absolute_link(base, "/bookings/b1").as_deref(),
            Some("https://app.example.com/bookings/b1")
        );
        assert_eq!(
            absolute_link(base, "https://mixroom.app/x").as_deref(),
            Some("https://mixroom.app/x")
        );
        for bad in [
            "javascript:alert(1)",
            "//evil.example",
            "bookings/b1",
            "data:text/html,x",
        ] {
            assert_eq!(absolute_link(base, bad), None, "{bad}");
        }
    }

    #[test]
    fn long_bodies_are_cut() {
        let long = "é".repeat(BODY_MAX_CHARS + 10);
        let email = render_digest(None, &[entry("chat", "Ava", &long, None)], &[], "s");
        assert!(email
            .text
            .contains(&format!("{}…", "é".repeat(BODY_MAX_CHARS))));
        assert!(!email.text.contains(&"é".repeat(BODY_MAX_CHARS + 1)));
    }
}
