//! One user's socket as the generator uses it: connect, `auth` → `welcome`,
//! optionally `join` → `joined`; and the few frame fields the workloads read,
//! found by byte search rather than parsed.

use std::rc::Rc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use memchr::memmem;

use crate::stats::leading_number;
use crate::target::Target;
use crate::ws::{self, Event, WsReader, WsWriter};

pub struct Opened {
    pub reader: WsReader,
    pub writer: Rc<WsWriter>,
}

/// Time allowed for connect + auth + join.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn open(
    target: &Target,
    token: &str,
    room: Option<&str>,
    buf_size: usize,
    seed: u32,
) -> anyhow::Result<Opened> {
    tokio::time::timeout(
        OPEN_TIMEOUT,
        open_inner(target, token, room, buf_size, seed),
    )
    .await
    .map_err(|_| anyhow!("connect + auth + join took over {OPEN_TIMEOUT:?}"))?
}

async fn open_inner(
    target: &Target,
    token: &str,
    room: Option<&str>,
    buf_size: usize,
    seed: u32,
) -> anyhow::Result<Opened> {
    let (mut reader, writer) = ws::connect(target.addr, "/v1/ws", buf_size, seed).await?;
    let auth = format!(r#"{{"type":"auth","token":"{token}"}}"#);
    writer.send_text(auth.as_bytes()).await?;
    wait_for(&mut reader, b"welcome").await?;
    if let Some(room) = room {
        let join = format!(r#"{{"type":"join","room":"{room}"}}"#);
        writer.send_text(join.as_bytes()).await?;
        wait_for(&mut reader, b"joined").await?;
    }
    Ok(Opened { reader, writer })
}

/// Skips frames until one of `kind`; an `error` frame or a close fails.
async fn wait_for(reader: &mut WsReader, kind: &[u8]) -> anyhow::Result<()> {
    loop {
        match reader.next().await? {
            Event::Text(range) => {
                let text = reader.text(range);
                let found = frame_type(text);
                if found == kind {
                    return Ok(());
                }
                if found == b"error" {
                    bail!(
                        "server answered with an error: {}",
                        String::from_utf8_lossy(text)
                    );
                }
            }
            Event::Closed(code) => bail!("server closed the socket ({code})"),
        }
    }
}

const TYPE_PREFIX: &[u8] = b"{\"type\":\"";

/// The `type` of a frame: the first field of every typed frame the server
/// serialises, searched for otherwise.
pub fn frame_type(text: &[u8]) -> &[u8] {
    let rest = if let Some(rest) = text.strip_prefix(TYPE_PREFIX) {
        rest
    } else if let Some(at) = memmem::find(text, b"\"type\":\"") {
        &text[at + 8..]
    } else {
        return b"";
    };
    let end = memchr::memchr(b'"', rest).unwrap_or(rest.len());
    &rest[..end]
}

pub fn is_type(text: &[u8], kind: &[u8]) -> bool {
    text.len() > TYPE_PREFIX.len() + kind.len()
        && text.starts_with(TYPE_PREFIX)
        && text[TYPE_PREFIX.len()..].starts_with(kind)
        && text[TYPE_PREFIX.len() + kind.len()] == b'"'
}

/// Bench bodies and client ids carry `<tag><a> t<b>` or `<tag><a>_<b>`:
/// reads the two numbers after `key` (the field name and the tag).
pub fn two_numbers_after(finder: &memmem::Finder<'_>, text: &[u8]) -> Option<(u64, u64)> {
    let at = finder.find(text)? + finder.needle().len();
    let rest = &text[at..];
    let (a, used) = leading_number(rest)?;
    let rest = &rest[used..];
    let skip = match rest.first()? {
        b'_' => 1,
        b' ' if rest.get(1) == Some(&b't') => 2,
        _ => return None,
    };
    leading_number(&rest[skip..]).map(|(b, _)| (a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields() {
        let f = br#"{"type":"message","room":"booking:x","seq":12,"body":"k7 t123 xx"}"#;
        assert_eq!(frame_type(f), b"message");
        assert!(is_type(f, b"message"));
        assert!(!is_type(f, b"mess"));
        let body = memmem::Finder::new(b"\"body\":\"k");
        assert_eq!(two_numbers_after(&body, f), Some((7, 123)));
        let ack = br#"{"type":"ack","client_id":"c5_99","id":"x","seq":3}"#;
        let cid = memmem::Finder::new(b"\"client_id\":\"c");
        assert_eq!(two_numbers_after(&cid, ack), Some((5, 99)));
        let unread = br#"{"notifications":0,"rooms":{},"type":"unread"}"#;
        assert_eq!(frame_type(unread), b"unread");
    }
}
