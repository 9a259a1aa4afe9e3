//! The Anthropic Messages API with streaming (server-sent events, parsed by
//! eventsource-stream) and tool use: the model may list the asking user's
//! bookings and escalate to a person; each tool call is answered with a
//! `tool_result` in a follow-up request, up to a few rounds.
//!
//! Sent: the system prompt, the bounded conversation and tool results about
//! the asking user's own bookings. Nothing else about the user (no id,
//! name or email) leaves the server.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use reqwest::header::HeaderValue;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};

use super::provider::{
    ProviderError, ReplyRequest, ReplySink, Speaker, SupportProvider, SupportTools, Turn,
};
use super::SupportError;
use crate::config::AiSettings;
use crate::db::support::Escalation;

const API_VERSION: &str = "2023-06-01";
/// Requests per answer: the first, then one per round of tool calls.
const MAX_REQUESTS: usize = 4;
const TOOL_LIST_BOOKINGS: &str = "list_my_bookings";
const TOOL_ESCALATE: &str = "escalate_to_human";
/// Bookings a tool result lists at most.
const BOOKINGS_LISTED: i64 = 20;

pub struct AnthropicProvider {
    client: reqwest::Client,
    endpoint: String,
    /// Marked sensitive: never shown in debug output.
    api_key: HeaderValue,
    model: String,
    max_tokens: u32,
    system_prompt: String,
    timeout: Duration,
}

impl AnthropicProvider {
    pub fn new(settings: &AiSettings, system_prompt: String) -> Result<Self, SupportError> {
        let timeout = Duration::from_secs(settings.timeout_secs);
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()
            .map_err(|e| SupportError::Setup(format!("cannot build the HTTP client: {e}")))?;
        let mut api_key = HeaderValue::from_str(settings.anthropic_api_key.expose_secret())
            .map_err(|_| {
                SupportError::Setup("ai.anthropic_api_key is not a valid header".into())
            })?;
        api_key.set_sensitive(true);
        Ok(AnthropicProvider {
            client,
            endpoint: format!(
                "{}/v1/messages",
                settings.anthropic_base_url.trim_end_matches('/')
            ),
            api_key,
            model: settings.model.clone(),
            max_tokens: settings.max_tokens,
            system_prompt,
            timeout,
        })
    }

    fn tools() -> Value {
        json!([
            {
                "name": TOOL_LIST_BOOKINGS,
                "description": "Lists the bookings of the user you are talking to (most recently \
                    changed first, at most 20): booking id, title, status, start time and whether \
                    they are the client or a provider. Only this user's own bookings.",
                "input_schema": {"type": "object", "properties": {}}
            },
            {
                "name": TOOL_ESCALATE,
                "description": "Asks a person of the Mixroom support team to join this chat.",
                "input_schema": {
                    "type": "object",
                    "properties": {
                        "reason": {
                            "type": "string",
                            "description": "One sentence for the support team: why a person is needed."
                        }
                    },
                    "required": ["reason"]
                }
            }
        ])
    }

    /// One request: streams its text into `sink` and returns how it ended.
    async fn stream_request(
        &self,
        messages: &[Value],
        sink: &mut dyn ReplySink,
        separator: &mut Separator,
        usage: &mut Usage,
    ) -> Result<RequestOutcome, ProviderError> {
        let body = json!({
            "model": self.model,
            "max_tokens": self.max_tokens,
            "stream": true,
            "system": self.system_prompt,
            "messages": messages,
            "tools": Self::tools(),
        });
        let sending = self
            .client
            .post(&self.endpoint)
            .header("x-api-key", self.api_key.clone())
            .header("anthropic-version", API_VERSION)
            .json(&body)
            .send();
        let response = tokio::time::timeout(self.timeout, sending)
            .await
            .map_err(|_| ProviderError::Timeout(self.timeout.as_secs()))?
            .map_err(|e| ProviderError::Transport(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let text = tokio::time::timeout(self.timeout, response.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            return Err(status_error(status.as_u16(), &text));
        }

        let mut events = response.bytes_stream().eventsource();
        let mut blocks: Vec<Block> = Vec::new();
        let mut stop_reason: Option<String> = None;
        loop {
            let next = tokio::time::timeout(self.timeout, events.next())
                .await
                .map_err(|_| ProviderError::Timeout(self.timeout.as_secs()))?;
            let event = match next {
                Some(Ok(event)) => event,
                Some(Err(error)) => return Err(ProviderError::Interrupted(error.to_string())),
                None => {
                    return Err(ProviderError::Interrupted(
                        "the stream ended without message_stop".into(),
                    ))
                }
            };
            let parsed: StreamEvent = serde_json::from_str(&event.data).map_err(|e| {
                ProviderError::Protocol(format!("bad `{}` event: {e}", event.event))
            })?;
            match parsed {
                StreamEvent::MessageStart { message } => {
                    usage.input += message.usage.input_tokens;
                    usage.output_this_request = message.usage.output_tokens;
                }
                StreamEvent::ContentBlockStart {
                    index,
                    content_block,
                } => {
                    let block = match content_block {
                        ContentBlock::Text { text } => {
                            separator.emit(sink, &text);
                            Block::Text(text)
                        }
                        ContentBlock::ToolUse { id, name, input } => Block::ToolUse {
                            id,
                            name,
                            start_input: input,
                            input_json: String::new(),
                        },
                        ContentBlock::Other => Block::Ignored,
                    };
                    if blocks.len() <= index {
                        blocks.resize_with(index + 1, || Block::Ignored);
                    }
                    blocks[index] = block;
                }
                StreamEvent::ContentBlockDelta { index, delta } => {
                    match (blocks.get_mut(index), delta) {
                        (Some(Block::Text(text)), BlockDelta::TextDelta { text: piece }) => {
                            separator.emit(sink, &piece);
                            text.push_str(&piece);
                        }
                        (
                            Some(Block::ToolUse { input_json, .. }),
                            BlockDelta::InputJsonDelta { partial_json },
                        ) => input_json.push_str(&partial_json),
                        _ => {}
                    }
                }
                StreamEvent::MessageDelta { delta, usage: more } => {
                    if delta.stop_reason.is_some() {
                        stop_reason = delta.stop_reason;
                    }
                    if let Some(more) = more {
                        // Cumulative for the request.
                        usage.output_this_request = more.output_tokens;
                    }
                }
                StreamEvent::MessageStop => break,
                StreamEvent::Error { error } => {
                    return Err(if error.kind == "overloaded_error" {
                        ProviderError::Overloaded
                    } else {
                        ProviderError::Interrupted(format!("{}: {}", error.kind, error.message))
                    });
                }
                StreamEvent::ContentBlockStop { .. } | StreamEvent::Ping | StreamEvent::Other => {}
            }
        }
        Ok(RequestOutcome {
            stop_reason,
            blocks,
        })
    }

    async fn run_tool(&self, tools: &dyn SupportTools, name: &str, input: &Value) -> Value {
        let (content, is_error) = match name {
            TOOL_LIST_BOOKINGS => match tools.my_bookings().await {
                Ok(bookings) => {
                    let listed: Vec<_> = bookings
                        .into_iter()
                        .take(BOOKINGS_LISTED as usize)
                        .collect();
                    (json!({ "bookings": listed }).to_string(), false)
                }
                Err(error) => {
                    tracing::warn!(%error, "support tool failed");
                    (
                        "The bookings could not be looked up right now.".to_owned(),
                        true,
                    )
                }
            },
            TOOL_ESCALATE => {
                let reason = input["reason"]
                    .as_str()
                    .filter(|r| !r.trim().is_empty())
                    .unwrap_or("The assistant asked for a person.")
                    .to_owned();
                match tools.escalate(reason).await {
                    Ok(Escalation::Escalated) => (
                        "The support team was notified; a person will reply in this chat.".into(),
                        false,
                    ),
                    Ok(Escalation::AlreadyRequested) => (
                        "The support team had already been notified; a person will reply in this chat."
                            .into(),
                        false,
                    ),
                    Ok(Escalation::Missing) => ("This conversation no longer exists.".into(), true),
                    Err(error) => {
                        tracing::warn!(%error, "support tool failed");
                        ("The support team could not be notified right now.".into(), true)
                    }
                }
            }
            other => (format!("There is no tool named `{other}`."), true),
        };
        json!({ "content": content, "is_error": is_error })
    }
}

/// Turns the conversation into the API's alternating user/assistant
/// messages: consecutive turns of one side are joined, and the list starts
/// with the user (an opening by the team has no user turn to follow).
pub fn api_messages(history: &[Turn]) -> Vec<Value> {
    let mut merged: Vec<(Speaker, String)> = Vec::new();
    for turn in history {
        match merged.last_mut() {
            None if turn.speaker == Speaker::Assistant => {}
            Some((speaker, text)) if *speaker == turn.speaker => {
                text.push_str("\n\n");
                text.push_str(&turn.text);
            }
            _ => merged.push((turn.speaker, turn.text.clone())),
        }
    }
    merged
        .into_iter()
        .map(|(speaker, text)| {
            let role = match speaker {
                Speaker::User => "user",
                Speaker::Assistant => "assistant",
            };
            json!({ "role": role, "content": text })
        })
        .collect()
}

fn status_error(status: u16, body: &str) -> ProviderError {
    let api_error = serde_json::from_str::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    match status {
        429 => ProviderError::RateLimited,
        529 => ProviderError::Overloaded,
        _ if api_error
            .as_ref()
            .is_some_and(|e| e.kind == "overloaded_error") =>
        {
            ProviderError::Overloaded
        }
        _ => ProviderError::Api {
            status,
            message: api_error
                .map(|e| format!("{}: {}", e.kind, e.message))
                .unwrap_or_else(|| body.chars().take(200).collect()),
        },
    }
}

impl SupportProvider for AnthropicProvider {
    fn reply<'a>(
        &'a self,
        request: &'a ReplyRequest,
        tools: &'a dyn SupportTools,
        sink: &'a mut dyn ReplySink,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let mut messages = api_messages(&request.history);
            let mut separator = Separator::default();
            for _ in 0..MAX_REQUESTS {
                let mut usage = Usage::default();
                let result = self
                    .stream_request(&messages, sink, &mut separator, &mut usage)
                    .await;
                // Tokens count even when the answer failed half-way.
                sink.tokens(usage.input, usage.output_this_request);
                let outcome = result?;
                if outcome.stop_reason.as_deref() != Some("tool_use") {
                    return Ok(());
                }
                let mut content = Vec::new();
                let mut results = Vec::new();
                for block in outcome.blocks {
                    match block {
                        Block::Text(text) if !text.is_empty() => {
                            content.push(json!({ "type": "text", "text": text }));
                        }
                        Block::ToolUse {
                            id,
                            name,
                            start_input,
                            input_json,
                        } => {
                            let input = if input_json.trim().is_empty() {
                                start_input
                            } else {
                                serde_json::from_str(&input_json).map_err(|e| {
                                    ProviderError::Protocol(format!("tool input of {name}: {e}"))
                                })?
                            };
                            let mut result = self.run_tool(tools, &name, &input).await;
                            result["type"] = json!("tool_result");
                            result["tool_use_id"] = json!(id);
                            results.push(result);
                            content.push(json!({
                                "type": "tool_use", "id": id, "name": name, "input": input
                            }));
                        }
                        _ => {}
                    }
                }
                if results.is_empty() {
                    return Err(ProviderError::Protocol(
                        "stop_reason tool_use without a tool_use block".into(),
                    ));
                }
                messages.push(json!({ "role": "assistant", "content": content }));
                messages.push(json!({ "role": "user", "content": results }));
                separator.next_request();
            }
            Err(ProviderError::Protocol(format!(
                "still calling tools after {MAX_REQUESTS} requests"
            )))
        })
    }

    fn uses_tokens(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "anthropic"
    }
}

/// Keeps the text of successive requests (before and after a tool call)
/// from running together, while the pieces still add up to the answer.
#[derive(Default)]
struct Separator {
    wrote: bool,
    pending: bool,
}

impl Separator {
    fn emit(&mut self, sink: &mut dyn ReplySink, piece: &str) {
        if piece.is_empty() {
            return;
        }
        if self.pending {
            sink.text("\n\n");
            self.pending = false;
        }
        sink.text(piece);
        self.wrote = true;
    }

    fn next_request(&mut self) {
        self.pending = self.wrote;
    }
}

#[derive(Default)]
struct Usage {
    input: u64,
    output_this_request: u64,
}

struct RequestOutcome {
    stop_reason: Option<String>,
    blocks: Vec<Block>,
}

enum Block {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        start_input: Value,
        input_json: String,
    },
    Ignored,
}

/// The stream's events (https://docs.anthropic.com/en/api/messages-streaming).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StartedMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: ContentBlock,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta,
    },
    ContentBlockStop {},
    MessageDelta {
        delta: MessageDeltaBody,
        usage: Option<OutputUsage>,
    },
    MessageStop,
    Ping,
    Error {
        error: ApiError,
    },
    /// New event types are to be ignored, says the API's versioning policy.
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct StartedMessage {
    usage: StartUsage,
}

#[derive(Deserialize)]
struct StartUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct OutputUsage {
    #[serde(default)]
    output_tokens: u64,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ApiError,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(speaker: Speaker, text: &str) -> Turn {
        Turn {
            speaker,
            text: text.to_owned(),
        }
    }

    #[test]
    fn messages_alternate_and_start_with_the_user() {
        let history = [
            turn(Speaker::Assistant, "Welcome!"),
            turn(Speaker::User, "Hi"),
            turn(Speaker::User, "Anyone?"),
            turn(Speaker::Assistant, "Hello!"),
            turn(Speaker::User, "Cancel please"),
        ];
        let messages = api_messages(&history);
        assert_eq!(
            Value::Array(messages),
            json!([
                {"role": "user", "content": "Hi\n\nAnyone?"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Cancel please"},
            ])
        );
    }

    #[test]
    fn error_statuses_are_told_apart() {
        assert!(matches!(status_error(529, ""), ProviderError::Overloaded));
        assert!(matches!(status_error(429, ""), ProviderError::RateLimited));
        let overloaded =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert!(matches!(
            status_error(503, overloaded),
            ProviderError::Overloaded
        ));
        let invalid =
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#;
        match status_error(400, invalid) {
            ProviderError::Api { status, message } => {
                assert_eq!(status, 400);
                assert_eq!(message, "invalid_request_error: bad");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stream_events_parse() {
        for (data, ok) in [
            (r#"{"type":"ping"}"#, true),
            (r#"{"type":"message_stop"}"#, true),
            (r#"{"type":"something_new","x":1}"#, true),
            (
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
                true,
            ),
            (
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
                true,
            ),
        ] {
            assert_eq!(
                serde_json::from_str::<StreamEvent>(data).is_ok(),
                ok,
                "{data}"
            );
        }
    }
}
