//! `POST /v1/chat/completions`, OpenAI-compatible: a conversation runs as one job of the
//! network's chat workload on a device, scheduled and checked like every job.

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
use mesh_proto::api::Role;
use serde::{Deserialize, Serialize};
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
    /// Stream the answer (not yet: refused with a 400).
    #[serde(default)]
    pub stream: Option<bool>,
    /// Ignored (accepted for compatibility).
    #[serde(default)]
    pub user: Option<String>,
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
    if request.stream == Some(true) {
        return Err(ApiError::bad_request(
            "stream is not supported yet: send the request without \"stream\" for the whole answer",
        )
        .with_param("stream"));
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

/// OpenAI-compatible chat completions (member): the conversation runs as one job of the
/// network's chat workload. The network is the caller's only one, or the one named by the
/// `Mesh-Network` header.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", security(("bearer" = [])),
    request_body = ChatCompletionRequest,
    responses((status = 200, body = ChatCompletion), Managing, BadRequest, PaymentRequired, Unprocessable, Unavailable))]
pub async fn completions(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    ApiJson(request): ApiJson<ChatCompletionRequest>,
) -> ApiResult<Json<ChatCompletion>> {
    let person = principal.person()?;
    let network = caller_network(&state, &headers, &person).await?;
    require_role(&state, &principal, &network, Role::Member).await?;
    let input = workload_input(&request)?;
    let workload = workload_for_model(&state, &network, &request.model).await?;
    let input = serde_json::to_vec(&input).map_err(ApiError::internal)?;
    let result =
        crate::workers::gateway::run_job(&state, &network, person, workload.hash, input, None)
            .await?;
    let out = &result.output;
    let (Some(text), Some(prompt_tokens), Some(completion_tokens)) = (
        out["text"].as_str(),
        out["prompt_tokens"].as_u64(),
        out["completion_tokens"].as_u64(),
    ) else {
        return Err(ApiError::internal(format!(
            "workload {} did not answer as a chat workload",
            workload.name
        )));
    };
    Ok(Json(ChatCompletion {
        id: format!("chatcmpl-{}", result.job.id),
        object: "chat.completion",
        created: crate::store::now_ms() / 1000,
        model: request.model,
        choices: vec![ChatChoice {
            index: 0,
            message: ChatAnswer {
                role: "assistant",
                content: text.to_string(),
            },
            finish_reason: out["finish_reason"].as_str().unwrap_or("stop").to_string(),
            logprobs: None,
        }],
        usage: ChatUsage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        },
    }))
}
