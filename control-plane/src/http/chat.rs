//! `POST /v1/chat/completions`, OpenAI-compatible: a conversation runs as one job of the
//! network's chat workload on a device, scheduled and checked like every job. With
//! `"stream": true` the answer comes as server-sent events while it is generated: the
//! executor streams the workload's text over `/mesh/piece/1`, and the job's signed output,
//! when it comes, must be what was streamed (the rest of it, if anything, follows).

use crate::http::auth::{Auth, require_role};
use crate::http::error::responses::{
    BadRequest, Managing, PaymentRequired, Unavailable, Unprocessable,
};
use crate::http::error::{ApiError, ApiJson, ApiResult};
use crate::http::gateway::{caller_network, workload_for_model};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use mesh_proto::api::{Role, RunJobResponse};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use utoipa::ToSchema;

/// Most tokens a completion may ask for.
pub const MAX_COMPLETION_TOKENS: u64 = 1024;

/// A message's content: text, or OpenAI's list of parts (text parts only).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ChatContent {
    /// Text.
    Text(String),
    /// Parts; only `{"type": "text", "text": …}` is taken.
    Parts(Vec<ChatContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatContentPart {
    /// `text` (other kinds are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    #[serde(default)]
    pub text: Option<String>,
}

/// A message of the conversation.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// `system` (or `developer`), `user` or `assistant`.
    pub role: String,
    /// What it says.
    pub content: ChatContent,
}

/// Stop sequences: one or several.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopSequences {
    /// One.
    One(String),
    /// Several (at most 4).
    Many(Vec<String>),
}

/// An OpenAI chat completion request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// The model (as `GET /v1/models` lists it) or a chat workload's name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate (default 256).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// The same, by its newer name.
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Sampling temperature, 0 to 2 (default 1; 0 is greedy).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling, in (0, 1].
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Seed of the sampler: the same seed and request give the same text on the same
    /// engine. Without one, a random seed is drawn (and kept with the job, so its check can
    /// reproduce it).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Where to stop.
    #[serde(default)]
    pub stop: Option<StopSequences>,
    /// Completions to make: only 1.
    #[serde(default)]
    pub n: Option<u32>,
    /// Stream the answer as server-sent events (`chat.completion.chunk`s, then
    /// `data: [DONE]`).
    #[serde(default)]
    pub stream: Option<bool>,
    /// Options of a streamed answer.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Ignored (accepted for compatibility).
    #[serde(default)]
    pub user: Option<String>,
}

/// Options of a streamed answer.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// End with a chunk that carries the token counts (`usage`; every other chunk has
    /// `"usage": null`).
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatAnswer {
    /// Always `assistant`.
    pub role: &'static str,
    /// The text.
    pub content: String,
}

/// One completion.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatChoice {
    /// Always 0.
    pub index: u32,
    /// The answer.
    pub message: ChatAnswer,
    /// `stop` (the model ended its turn, or a stop sequence came) or `length`.
    pub finish_reason: String,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<()>,
}

/// Token counts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatUsage {
    /// Tokens of the prompt (the template included).
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
}

/// An OpenAI chat completion.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-` and the job's id.
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// When it was made (seconds since the Unix epoch).
    pub created: i64,
    /// The model as requested.
    pub model: String,
    /// The completion.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: ChatUsage,
}

/// The chat workload's input for `request`, checked.
fn workload_input(request: &ChatCompletionRequest) -> ApiResult<serde_json::Value> {
    if request.stream_options.is_some() && request.stream != Some(true) {
        return Err(
            ApiError::bad_request("stream_options is only for streamed answers")
                .with_param("stream_options"),
        );
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("n must be 1").with_param("n"));
    }
    if request.messages.is_empty() {
        return Err(ApiError::bad_request("messages is empty").with_param("messages"));
    }
    let mut messages = Vec::with_capacity(request.messages.len());
    for m in &request.messages {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::bad_request(format!(
                    "role {other:?} is not system, developer, user or assistant"
                ))
                .with_param("messages"));
            }
        };
        let content = match &m.content {
            ChatContent::Text(text) => text.clone(),
            ChatContent::Parts(parts) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), &part.text) {
                        ("text", Some(t)) => text.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::bad_request(format!(
                                "content parts of type {kind:?} are not supported (text only)"
                            ))
                            .with_param("messages"));
                        }
                    }
                }
                text
            }
        };
        messages.push(serde_json::json!({ "role": role, "content": content }));
    }
    let max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or(256);
    if max_tokens == 0 || max_tokens > MAX_COMPLETION_TOKENS {
        return Err(ApiError::bad_request(format!(
            "max_tokens must be 1 to {MAX_COMPLETION_TOKENS}"
        ))
        .with_param("max_tokens"));
    }
    let temperature = request.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request("temperature must be 0 to 2").with_param("temperature"));
    }
    let stop: Vec<String> = match &request.stop {
        None => Vec::new(),
        Some(StopSequences::One(s)) => vec![s.clone()],
        Some(StopSequences::Many(v)) => v.clone(),
    };
    let seed = request.seed.unwrap_or_else(|| {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the OS random number generator works");
        u64::from_le_bytes(bytes) >> 11
    });
    let mut input = serde_json::json!({
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
    });
    if let Some(top_p) = request.top_p {
        input["top_p"] = serde_json::json!(top_p);
    }
    if !stop.is_empty() {
        input["stop"] = serde_json::json!(stop);
    }
    Ok(input)
}

/// What a chat workload answered.
struct Answered {
    text: String,
    finish_reason: String,
    usage: ChatUsage,
}

/// Read a chat workload's output.
fn answered(result: &RunJobResponse, workload: &str) -> ApiResult<Answered> {
    let out = &result.output;
    let (Some(text), Some(prompt_tokens), Some(completion_tokens)) = (
        out["text"].as_str(),
        out["prompt_tokens"].as_u64(),
        out["completion_tokens"].as_u64(),
    ) else {
        return Err(ApiError::internal(format!(
            "workload {workload} did not answer as a chat workload"
        )));
    };
    Ok(Answered {
        text: text.to_string(),
        finish_reason: out["finish_reason"].as_str().unwrap_or("stop").to_string(),
        usage: ChatUsage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        },
    })
}

/// OpenAI-compatible chat completions (member): the conversation runs as one job of the
/// network's chat workload. The network is the caller's only one, or the one named by the
/// `Mesh-Network` header. With `stream`, the 200 is `text/event-stream`: chunks as the text
/// is generated, then `data: [DONE]`; a failure before the first chunk is an error status,
/// one after it an `{"error": …}` event.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", security(("bearer" = [])),
    request_body = ChatCompletionRequest,
    responses((status = 200, body = ChatCompletion), Managing, BadRequest, PaymentRequired, Unprocessable, Unavailable))]
pub async fn completions(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    ApiJson(request): ApiJson<ChatCompletionRequest>,
) -> ApiResult<Response> {
    let person = principal.person()?;
    let network = caller_network(&state, &headers, &person).await?;
    require_role(&state, &principal, &network, Role::Member).await?;
    let input = workload_input(&request)?;
    let workload = workload_for_model(&state, &network, &request.model).await?;
    let input = serde_json::to_vec(&input).map_err(ApiError::internal)?;
    if request.stream == Some(true) {
        use crate::workers::gateway::{complete_streaming, submit_streaming};
        let submitted = submit_streaming(&state, &network, person, workload.hash, input).await?;
        let chunks = Chunks {
            id: format!("chatcmpl-{}", submitted.job),
            created: crate::store::now_ms() / 1000,
            model: request.model.clone(),
            usage: request
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        };
        let (pieces, mut streamed) = mpsc::unbounded_channel();
        let run = AbortOnDrop(tokio::spawn(async move {
            complete_streaming(&state, &network, workload.hash, submitted, pieces)
                .await
                .map_err(ApiError::from)
                .and_then(|result| answered(&result, &workload.name))
        }));
        // Until the first piece, a failure is still an error status.
        let first = streamed.recv().await;
        let mut run = run;
        let early = match first {
            Some(_) => None,
            None => Some((&mut run.0).await.map_err(ApiError::internal)??),
        };
        let (events, body) = mpsc::channel(64);
        let producer = tokio::spawn(async move {
            stream_events(chunks, first, streamed, run, early, events).await
        });
        let body = EventBody {
            events: body,
            _producer: AbortOnDrop(producer),
        };
        return Ok(Sse::new(body)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let result =
        crate::workers::gateway::run_job(&state, &network, person, workload.hash, input, None)
            .await?;
    let answer = answered(&result, &workload.name)?;
    Ok(Json(ChatCompletion {
        id: format!("chatcmpl-{}", result.job.id),
        object: "chat.completion",
        created: crate::store::now_ms() / 1000,
        model: request.model,
        choices: vec![ChatChoice {
            index: 0,
            message: ChatAnswer {
                role: "assistant",
                content: answer.text,
            },
            finish_reason: answer.finish_reason,
            logprobs: None,
        }],
        usage: answer.usage,
    })
    .into_response())
}

/// Aborts its task when dropped: a streamed answer whose client went away stops its job
/// (dropping the dispatch cancels it at the executor).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The body of a streamed answer: the events its producer makes, which stops when the body
/// is dropped.
struct EventBody {
    events: mpsc::Receiver<Event>,
    _producer: AbortOnDrop<()>,
}

impl futures::Stream for EventBody {
    type Item = Result<Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx).map(|event| event.map(Ok))
    }
}

/// What every chunk of one streamed answer shares.
struct Chunks {
    id: String,
    created: i64,
    model: String,
    /// `stream_options.include_usage`.
    usage: bool,
}

impl Chunks {
    /// A `chat.completion.chunk` with one choice.
    fn delta(&self, delta: serde_json::Value, finish_reason: Option<&str>) -> Event {
        let mut chunk = serde_json::json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        });
        if self.usage {
            chunk["usage"] = serde_json::Value::Null;
        }
        Event::default().data(chunk.to_string())
    }

    /// The last chunk when usage was asked for: no choices, the token counts.
    fn usage(&self, usage: &ChatUsage) -> Event {
        let chunk = serde_json::json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        });
        Event::default().data(chunk.to_string())
    }
}

/// An error after the stream began, as OpenAI's clients read it.
fn error_event(error: &ApiError) -> Event {
    Event::default().data(error.openai_body().to_string())
}

/// Text of a stream of pieces, whole characters only.
#[derive(Default)]
struct Utf8Pieces {
    pending: Vec<u8>,
}

impl Utf8Pieces {
    /// The whole characters `piece` completes, or `None` when the bytes are not UTF-8.
    fn push(&mut self, piece: &[u8]) -> Option<String> {
        self.pending.extend_from_slice(piece);
        match std::str::from_utf8(&self.pending) {
            Ok(text) => {
                let text = text.to_string();
                self.pending.clear();
                Some(text)
            }
            Err(e) if e.error_len().is_none() => {
                let valid = e.valid_up_to();
                let text = String::from_utf8(self.pending[..valid].to_vec()).ok()?;
                self.pending.drain(..valid);
                Some(text)
            }
            Err(_) => None,
        }
    }
}

/// Turn a job's pieces and result into the answer's events: the role, the text as it
/// comes, what of the signed output's text did not stream, the finish reason, the usage if
/// asked, `[DONE]`. The streamed text must be where the signed output's text begins;
/// otherwise the stream ends with an error.
async fn stream_events(
    chunks: Chunks,
    first: Option<Vec<u8>>,
    mut pieces: mpsc::UnboundedReceiver<Vec<u8>>,
    mut run: AbortOnDrop<ApiResult<Answered>>,
    early: Option<Answered>,
    events: mpsc::Sender<Event>,
) {
    let send = |event| events.send(event);
    if send(chunks.delta(
        serde_json::json!({"role": "assistant", "content": ""}),
        None,
    ))
    .await
    .is_err()
    {
        return;
    }
    let mut text = Utf8Pieces::default();
    let mut streamed = String::new();
    let mut next = first;
    while let Some(piece) = next {
        let Some(delta) = text.push(&piece) else {
            let error = ApiError::bad_gateway("the device streamed bytes that are not UTF-8 text");
            let _ = send(error_event(&error)).await;
            return;
        };
        if !delta.is_empty() {
            streamed.push_str(&delta);
            let event = chunks.delta(serde_json::json!({ "content": delta }), None);
            if send(event).await.is_err() {
                return;
            }
        }
        next = pieces.recv().await;
    }
    let answer = match early {
        Some(answer) => Ok(answer),
        None => match (&mut run.0).await {
            Ok(result) => result,
            Err(e) => Err(ApiError::internal(e)),
        },
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => {
            let _ = send(error_event(&error)).await;
            return;
        }
    };
    let Some(rest) = answer.text.strip_prefix(streamed.as_str()) else {
        let error = ApiError::bad_gateway(
            "the text the device streamed is not the answer it signed; the signed answer is \
             in the job's record",
        );
        let _ = send(error_event(&error)).await;
        return;
    };
    if !rest.is_empty() {
        let _ = send(chunks.delta(serde_json::json!({ "content": rest }), None)).await;
    }
    let _ = send(chunks.delta(serde_json::json!({}), Some(&answer.finish_reason))).await;
    if chunks.usage {
        let _ = send(chunks.usage(&answer.usage)).await;
    }
    let _ = send(Event::default().data("[DONE]")).await;
}
