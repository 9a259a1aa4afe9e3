//! What the agent needs from an answering engine, whichever it is: the
//! conversation in, streamed text and token counts out, and the two tools
//! it may use on the asking user's behalf.

use futures_util::future::BoxFuture;

use crate::db::support::{BookingFact, Escalation};

/// Who said a turn of the conversation, as the provider sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// The user who opened the conversation.
    User,
    /// The agent, or a person of the support team.
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub speaker: Speaker,
    pub text: String,
}

/// The conversation so far, oldest first, ending with the user's message
/// to answer. Nothing else about the user is in it.
#[derive(Debug, Clone)]
pub struct ReplyRequest {
    pub history: Vec<Turn>,
}

impl ReplyRequest {
    /// The message being answered.
    pub fn question(&self) -> &str {
        self.history
            .iter()
            .rev()
            .find(|turn| turn.speaker == Speaker::User)
            .map_or("", |turn| turn.text.as_str())
    }
}

/// Where a provider puts its answer as it is produced.
pub trait ReplySink: Send {
    /// A piece of the answer; the pieces in order are the whole answer.
    fn text(&mut self, delta: &str);
    /// Tokens one provider request consumed.
    fn tokens(&mut self, input: u64, output: u64);
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("tool storage: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("{0}")]
    Support(String),
}

/// What the agent may do for the asking user — bound to that user when
/// made, so a provider can never name someone else.
pub trait SupportTools: Send + Sync {
    /// The asking user's own bookings and their status.
    fn my_bookings(&self) -> BoxFuture<'_, Result<Vec<BookingFact>, ToolError>>;
    /// Asks a person of the support team to join the conversation.
    fn escalate(&self, reason: String) -> BoxFuture<'_, Result<Escalation, ToolError>>;
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("no answer from the provider within {0} s")]
    Timeout(u64),
    #[error("the provider is rate limiting requests (429)")]
    RateLimited,
    #[error("the provider is overloaded")]
    Overloaded,
    #[error("the provider's stream ended before the answer was complete: {0}")]
    Interrupted(String),
    #[error("the provider answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("cannot reach the provider: {0}")]
    Transport(String),
    #[error("unexpected answer from the provider: {0}")]
    Protocol(String),
}

/// An answering engine: the Anthropic Messages API or the embedded
/// knowledge base.
pub trait SupportProvider: Send + Sync {
    /// Streams the answer to the request's last user message into `sink`.
    /// On an error, whatever reached `sink` is not a complete answer.
    fn reply<'a>(
        &'a self,
        request: &'a ReplyRequest,
        tools: &'a dyn SupportTools,
        sink: &'a mut dyn ReplySink,
    ) -> BoxFuture<'a, Result<(), ProviderError>>;

    /// Whether answers cost tokens (the daily budget applies).
    fn uses_tokens(&self) -> bool;

    fn name(&self) -> &'static str;
}

/// Splits text into the pieces a person sees appear one by one: each word
/// with the whitespace after it. The pieces add up to `text` exactly.
pub fn word_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut after_space = false;
    for (index, c) in text.char_indices() {
        if c.is_whitespace() {
            after_space = true;
        } else if after_space {
            pieces.push(&text[start..index]);
            start = index;
            after_space = false;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// Streams `text` word by word, pausing `delay` between words.
pub async fn stream_words(sink: &mut dyn ReplySink, text: &str, delay: std::time::Duration) {
    for (index, piece) in word_pieces(text).into_iter().enumerate() {
        if index > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        sink.text(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_pieces_add_up_to_the_text() {
        for text in [
            "Hello there, friend.",
            "  leading and trailing  ",
            "one",
            "",
            "line\n\nbreaks and\ttabs — ünïcödé",
        ] {
            let pieces = word_pieces(text);
            assert_eq!(pieces.concat(), text);
            assert!(pieces.iter().all(|p| !p.is_empty()));
        }
        assert_eq!(word_pieces("a b  c"), vec!["a ", "b  ", "c"]);
    }
}
