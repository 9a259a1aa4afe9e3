//! Where emails go: Resend (through resend-rs), or, with no API key, a
//! local folder with one `.eml` file per email so a newcomer can read
//! exactly what would have been sent.

use std::path::PathBuf;
use std::time::Duration;

use resend_rs::idempotent::IdempotentTrait;
use resend_rs::types::CreateEmailBaseOptions;
use resend_rs::{ConfigBuilder, Resend};
use secrecy::ExposeSecret;

use super::NotifyError;
use crate::config::EmailSettings;
use crate::db::email::OutboxRow;

/// Waited after a 429 that says nothing about when to come back.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// A longer `Retry-After` (a daily quota) is capped: the batch is looked at
/// again then and may wait once more.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How one request went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Accepted: each outbox id with the id Resend gave it.
    Sent(Vec<(String, String)>),
    /// 429: come back after this long (not a failure).
    RateLimited { retry_after: Duration },
    /// 5xx, network error, timeout, an unreadable answer: the same request
    /// may be tried again (the Idempotency-Key makes that safe).
    Transient(String),
    /// A 4xx other than 429: this request will never be accepted.
    Rejected(String),
}

pub enum Transport {
    Resend { client: ResendClient, from: String },
    Folder { dir: PathBuf, from: String },
}

/// What a resend-rs client is made of. resend-rs 0.35 puts a limiter of its
/// own in every client that lets one request through per 1.1 s once its
/// burst of 9 is spent (about 0.9 a second, under Resend's 2 a second); the
/// mailer's own limiter (`email.rate_per_sec`) is the one that counts, so
/// each request gets a client of its own (its limiter unspent) over the
/// shared HTTP client and its pool of connections.
pub struct ResendClient {
    key: String,
    base_url: reqwest::Url,
    http: reqwest::Client,
}

impl ResendClient {
    fn for_one_request(&self) -> Resend {
        Resend::with_config(
            ConfigBuilder::new(self.key.as_str())
                .base_url(self.base_url.clone())
                .client(self.http.clone())
                .build(),
        )
    }
}

/// The `Idempotency-Key` of a batch: the same on every retry of it.
pub fn idempotency_key(batch_id: &str) -> String {
    format!("mixroom-email-{batch_id}")
}

impl Transport {
    pub fn from_settings(email: &EmailSettings) -> Result<Self, NotifyError> {
        let key = email.resend_api_key.expose_secret();
        if key.is_empty() {
            std::fs::create_dir_all(&email.outbox_dir).map_err(|e| {
                NotifyError::Transport(format!(
                    "cannot create email.outbox_dir {}: {e}",
                    email.outbox_dir.display()
                ))
            })?;
            return Ok(Transport::Folder {
                dir: email.outbox_dir.clone(),
                from: email.from.clone(),
            });
        }
        let base_url = email
            .resend_base_url
            .parse()
            .map_err(|e| NotifyError::Transport(format!("email.resend_base_url: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(email.request_timeout_secs))
            .build()
            .map_err(|e| NotifyError::Transport(format!("HTTP client: {e}")))?;
        Ok(Transport::Resend {
            client: ResendClient {
                key: key.to_owned(),
                base_url,
                http,
            },
            from: email.from.clone(),
        })
    }

    /// Whether emails leave the machine (and so count against Resend's rate).
    pub fn is_remote(&self) -> bool {
        matches!(self, Transport::Resend { .. })
    }

    /// Sends one batch as one request: `/emails` for one email,
    /// `/emails/batch` for several.
    pub async fn send(&self, batch_id: &str, emails: &[OutboxRow]) -> SendOutcome {
        match self {
            Transport::Resend { client, from } => {
                send_resend(&client.for_one_request(), from, batch_id, emails).await
            }
            Transport::Folder { dir, from } => {
                let dir = dir.clone();
                let from = from.clone();
                let batch_id = batch_id.to_owned();
                let emails = emails.to_vec();
                tokio::task::spawn_blocking(move || write_files(&dir, &from, &batch_id, &emails))
                    .await
                    .unwrap_or_else(|e| SendOutcome::Transient(format!("writer stopped: {e}")))
            }
        }
    }
}

fn resend_options(from: &str, email: &OutboxRow) -> CreateEmailBaseOptions {
    let mut options =
        CreateEmailBaseOptions::new(from, [email.to_address.as_str()], &email.subject)
            .with_html(&email.html)
            .with_text(&email.text);
    if let Some(url) = &email.unsubscribe_url {
        // RFC 8058 one-click unsubscribe, which mail providers show as a button.
        options = options
            .with_header("List-Unsubscribe", &format!("<{url}>"))
            .with_header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click");
    }
    options
}

async fn send_resend(
    client: &Resend,
    from: &str,
    batch_id: &str,
    emails: &[OutboxRow],
) -> SendOutcome {
    let key = idempotency_key(batch_id);
    let result = match emails {
        [] => return SendOutcome::Sent(Vec::new()),
        [email] => client
            .emails
            .send(resend_options(from, email).with_idempotency_key(&key))
            .await
            .map(|sent| vec![sent]),
        _ => {
            let batch: Vec<CreateEmailBaseOptions> =
                emails.iter().map(|e| resend_options(from, e)).collect();
            client.batch.send(batch.with_idempotency_key(&key)).await
        }
    };
    match result {
        Ok(sent) => {
            if sent.len() != emails.len() {
                tracing::warn!(
                    batch = batch_id,
                    expected = emails.len(),
                    answered = sent.len(),
                    "Resend answered a different number of ids than emails sent"
                );
            }
            SendOutcome::Sent(
                emails
                    .iter()
                    .zip(sent)
                    .map(|(email, sent)| (email.id.clone(), sent.id.to_string()))
                    .collect(),
            )
        }
        Err(error) => classify(error),
    }
}

/// Sorts a resend-rs error into what the mailer does next.
fn classify(error: resend_rs::Error) -> SendOutcome {
    use resend_rs::types::ErrorKind;
    match error {
        // resend-rs turns every 429 into this and keeps the `ratelimit-reset`
        // header, which Resend sends with the same number of seconds as
        // `Retry-After`.
        resend_rs::Error::RateLimit {
            ratelimit_reset, ..
        } => SendOutcome::RateLimited {
            retry_after: ratelimit_reset
                .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs)
                .clamp(Duration::from_millis(100), MAX_RETRY_AFTER),
        },
        resend_rs::Error::Resend(response) => {
            let status = response.status_code;
            let retryable = status >= 500
                || matches!(
                    response.kind(),
                    ErrorKind::ConcurrentIdempotentRequests | ErrorKind::ResourceLocked
                );
            if retryable {
                SendOutcome::Transient(format!("{status} {response}"))
            } else {
                SendOutcome::Rejected(format!("{status} {response}"))
            }
        }
        // Timeouts, refused connections, bodies that are not Resend's JSON
        // (a proxy's error page, or an answer cut off after Resend accepted):
        // nothing says the request was refused, so it is tried again.
        other => SendOutcome::Transient(other.to_string()),
    }
}

fn write_files(
    dir: &std::path::Path,
    from: &str,
    batch_id: &str,
    emails: &[OutboxRow],
) -> SendOutcome {
    let mut written = Vec::with_capacity(emails.len());
    for email in emails {
        let path = dir.join(format!("{}.eml", email.id));
        let partial = dir.join(format!(".{}.eml.partial", email.id));
        // Written whole, then renamed: a reader (or a crash) never sees half a file.
        let result = std::fs::write(&partial, eml(from, batch_id, email))
            .and_then(|()| std::fs::rename(&partial, &path));
        if let Err(error) = result {
            return SendOutcome::Transient(format!("cannot write {}: {error}", path.display()));
        }
        tracing::info!(
            path = %path.display(),
            to = %email.to_address,
            subject = %email.subject,
            "email written to the local outbox (email.resend_api_key is empty)"
        );
        written.push((email.id.clone(), format!("file:{}", path.display())));
    }
    SendOutcome::Sent(written)
}

/// The email as a MIME message (text and HTML alternatives, UTF-8).
fn eml(from: &str, batch_id: &str, email: &OutboxRow) -> String {
    let date =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(email.created_at) * 1_000_000)
            .ok()
            .and_then(|at| {
                at.format(&time::format_description::well_known::Rfc2822)
                    .ok()
            })
            .unwrap_or_default();
    let boundary = format!("mixroom-{}", email.id);
    let mut message = format!(
        "From: {from}\r\nTo: {}\r\nSubject: {}\r\nDate: {date}\r\nMessage-ID: <{}@mixroom.local>\r\n\
         X-Idempotency-Key: {}\r\n",
        email.to_address,
        email.subject,
        email.id,
        idempotency_key(batch_id),
    );
    if let Some(url) = &email.unsubscribe_url {
        message.push_str(&format!("List-Unsubscribe: <{url}>\r\n"));
    }
    message.push_str(&format!(
        "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         {}\r\n--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         {}\r\n--{boundary}--\r\n",
        email.text, email.html
    ));
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use resend_rs::types::ErrorResponse;

    fn resend_error(status: u16, name: &str) -> resend_rs::Error {
        resend_rs::Error::Resend(ErrorResponse {
            status_code: status,
            message: "m".into(),
            name: name.into(),
        })
    }

    #[test]
    fn errors_are_sorted_into_retry_wait_or_give_up() {
        assert_eq!(
            classify(resend_rs::Error::RateLimit {
                ratelimit_limit: Some(2),
                ratelimit_remaining: Some(0),
                ratelimit_reset: Some(3),
            }),
            SendOutcome::RateLimited {
                retry_after: Duration::from_secs(3)
            }
        );
        assert_eq!(
            classify(resend_rs::Error::RateLimit {
                ratelimit_limit: None,
                ratelimit_remaining: None,
                ratelimit_reset: None,
            }),
            SendOutcome::RateLimited {
                retry_after: DEFAULT_RETRY_AFTER
            }
        );
        assert!(matches!(
            classify(resend_error(500, "internal_server_error")),
            SendOutcome::Transient(_)
        ));
        assert!(matches!(
            classify(resend_error(409, "concurrent_idempotent_requests")),
            SendOutcome::Transient(_)
        ));
        assert!(matches!(
            classify(resend_error(422, "validation_error")),
            SendOutcome::Rejected(_)
        ));
        assert!(matches!(
            classify(resend_rs::Error::Parse {
                message: "<html>bad gateway</html>".into(),
                source: None
            }),
            SendOutcome::Transient(_)
        ));
    }
}
