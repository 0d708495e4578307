//! Jobs for clients that are not devices: `POST /v1/networks/{network}/jobs/run` runs any
//! workload and waits for its result; `POST /v1/embeddings` is OpenAI-compatible, so
//! existing client libraries work against a private mesh unchanged.

use crate::http::auth::{Auth, Member, require_role};
use crate::http::error::responses::{
    BadRequest, Conflict, Managing, PaymentRequired, Unavailable, Unprocessable,
};
use crate::http::error::{ApiError, ApiJson, ApiResult};
use crate::http::networks::network_id;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use base64::Engine as _;
use mesh_proto::api::{Role, RunJobRequest, RunJobResponse, WorkloadInfo};
use mesh_proto::{NetworkId, PersonId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Run a job through the control plane (member): it is scheduled, sent to the executor over
/// libp2p, and the checked result comes back in the response.
#[utoipa::path(post, path = "/v1/networks/{network}/jobs/run", tag = "jobs", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    request_body = RunJobRequest,
    responses((status = 200, body = RunJobResponse), Managing, BadRequest, PaymentRequired, Conflict, Unprocessable, Unavailable))]
pub async fn run(
    State(state): State<AppState>,
    Member {
        principal, network, ..
    }: Member,
    ApiJson(request): ApiJson<RunJobRequest>,
) -> ApiResult<Json<RunJobResponse>> {
    let person = principal.person()?;
    let input = serde_json::to_vec(&request.input).map_err(ApiError::internal)?;
    crate::workers::gateway::run_job(
        &state,
        &network,
        person,
        request.workload,
        input,
        request.idempotency_key,
    )
    .await
    .map(Json)
    .map_err(ApiError::from)
}

/// Text to embed: one string or several. Token arrays (OpenAI also takes those) are
/// recognised so they can be refused with a message that says what to send instead.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    One(String),
    /// Several texts.
    Many(Vec<String>),
    /// Token ids of one text (refused).
    Tokens(Vec<i64>),
    /// Token ids of several texts (refused).
    TokenLists(Vec<Vec<i64>>),
}

/// Why token arrays are refused, and how LangChain (which sends them by default) is told to
/// send strings.
pub const TOKEN_ARRAYS_REFUSED: &str = "input must be text (a string or an array of strings): \
    this endpoint tokenizes on the device that runs the model and does not take token arrays. \
    LangChain's OpenAIEmbeddings sends token arrays by default; create it with \
    check_embedding_ctx_length=False so it sends strings.";

/// Requests with more texts than this run as a batch, split across the network's devices.
pub const SPLIT_ABOVE: usize = 2 * mesh_proto::batch::PIECE_ITEMS;

/// An OpenAI embeddings request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct EmbeddingsRequest {
    /// Model name: `all-MiniLM-L6-v2` (also with the `sentence-transformers/` prefix) or a
    /// workload name of the network.
    pub model: String,
    /// The text(s).
    pub input: EmbeddingInput,
    /// `float` (default) or `base64` (little-endian f32).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Ignored (accepted for compatibility).
    #[serde(default)]
    pub user: Option<String>,
}

/// One embedding.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EmbeddingData {
    /// Always `embedding`.
    pub object: &'static str,
    /// Position in the input.
    pub index: usize,
    /// The vector (floats, or base64 of little-endian f32).
    #[schema(value_type = Object)]
    pub embedding: serde_json::Value,
}

/// Token counts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EmbeddingUsage {
    /// Tokens in the input.
    pub prompt_tokens: u64,
    /// Same as `prompt_tokens`.
    pub total_tokens: u64,
}

/// An OpenAI embeddings response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EmbeddingsResponse {
    /// Always `list`.
    pub object: &'static str,
    /// One entry per input text.
    pub data: Vec<EmbeddingData>,
    /// The model as requested.
    pub model: String,
    /// Token counts.
    pub usage: EmbeddingUsage,
}

/// Header naming the network when the caller belongs to several.
pub const NETWORK_HEADER: &str = "mesh-network";

pub(crate) async fn caller_network(
    state: &AppState,
    headers: &HeaderMap,
    person: &PersonId,
) -> ApiResult<NetworkId> {
    if let Some(value) = headers.get(NETWORK_HEADER) {
        let text = value
            .to_str()
            .map_err(|_| ApiError::bad_request("the Mesh-Network header is not text"))?;
        return network_id(text);
    }
    let networks = crate::store::networks::of_person(&state.db.pool, person).await?;
    match networks.as_slice() {
        [one] => Ok(*one),
        [] => Err(ApiError::not_found("network")),
        _ => Err(ApiError::bad_request(
            "you belong to several networks: name one in the Mesh-Network header",
        )),
    }
}

/// The newest live workload of `network` serving `model`.
pub(crate) async fn workload_for_model(
    state: &AppState,
    network: &NetworkId,
    model: &str,
) -> ApiResult<WorkloadInfo> {
    let wanted = model
        .trim()
        .trim_start_matches("sentence-transformers/")
        .to_ascii_lowercase();
    let mut candidates: Vec<WorkloadInfo> = crate::domain::workloads::list(state, network)
        .await?
        .into_iter()
        .filter(|w| !w.yanked)
        .filter(|w| {
            w.name.eq_ignore_ascii_case(&wanted)
                || w.hash.to_string() == wanted
                || w.models.iter().any(|m| m.eq_ignore_ascii_case(&wanted))
        })
        .collect();
    candidates.sort_by_key(|w| std::cmp::Reverse(w.published_at_ms));
    candidates.into_iter().next().ok_or_else(|| {
        ApiError::not_found_with(
            "model_not_found",
            format!("no workload of this network serves model {model:?}"),
        )
    })
}

/// OpenAI-compatible embeddings (member). The network is the caller's only one, or the one
/// named by the `Mesh-Network` header.
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai", security(("bearer" = [])),
    request_body = EmbeddingsRequest,
    responses((status = 200, body = EmbeddingsResponse), Managing, BadRequest, PaymentRequired, Unprocessable, Unavailable))]
pub async fn embeddings(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
    ApiJson(request): ApiJson<EmbeddingsRequest>,
) -> ApiResult<Json<EmbeddingsResponse>> {
    let person = principal.person()?;
    let network = caller_network(&state, &headers, &person).await?;
    require_role(&state, &principal, &network, Role::Member).await?;
    let texts = match request.input {
        EmbeddingInput::One(text) => vec![text],
        EmbeddingInput::Many(texts) => texts,
        EmbeddingInput::Tokens(_) | EmbeddingInput::TokenLists(_) => {
            return Err(ApiError::bad_request(TOKEN_ARRAYS_REFUSED).with_param("input"));
        }
    };
    if texts.is_empty() || texts.len() > 2048 {
        return Err(ApiError::bad_request("input must hold 1 to 2048 texts"));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "encoding_format must be float or base64, not {other:?}"
            )));
        }
    };
    let workload = workload_for_model(&state, &network, &request.model).await?;
    let (vectors, tokens) = if texts.len() > SPLIT_ABOVE {
        // Many texts: a batch, across every device that can take its pieces.
        let done =
            crate::workers::batches::run_to_end(&state, &network, person, workload.hash, &texts)
                .await?;
        let dimensions = done.dimensions.unwrap_or(0).max(1) as usize;
        let bytes = crate::domain::batches::vectors(&state, &done).await?;
        let vectors: Vec<Vec<f32>> = bytes
            .chunks_exact(4 * dimensions)
            .map(|v| {
                v.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .collect()
            })
            .collect();
        (vectors, done.tokens)
    } else {
        let input = serde_json::to_vec(&serde_json::json!({ "texts": texts }))
            .map_err(ApiError::internal)?;
        let result =
            crate::workers::gateway::run_job(&state, &network, person, workload.hash, input, None)
                .await?;
        let vectors: Vec<Vec<f32>> = result.output["embeddings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                    .collect()
            })
            .collect();
        (vectors, result.output["tokens"].as_u64().unwrap_or(0))
    };
    if vectors.len() != texts.len() {
        return Err(ApiError::internal(
            "the workload's output has no embeddings for every input",
        ));
    }
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let floats: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(floats))
            } else {
                serde_json::json!(vector)
            };
            EmbeddingData {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    Ok(Json(EmbeddingsResponse {
        object: "list",
        data,
        model: request.model,
        usage: EmbeddingUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }))
}

/// One model, in OpenAI's shape.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelEntry {
    /// The name to pass as `model` (a model a live workload declares).
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// When the newest workload serving it was published (seconds since the Unix epoch).
    pub created: i64,
    /// The network that serves it.
    pub owned_by: String,
}

/// The models of a network, in OpenAI's shape.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// The models.
    pub data: Vec<ModelEntry>,
}

/// The network's models (member), OpenAI-compatible: every model a live workload declares.
/// The network is the caller's only one, or the one named by the `Mesh-Network` header.
#[utoipa::path(get, path = "/v1/models", tag = "openai", security(("bearer" = [])),
    responses((status = 200, body = ModelList), Managing, BadRequest))]
pub async fn models(
    State(state): State<AppState>,
    Auth(principal): Auth,
    headers: HeaderMap,
) -> ApiResult<Json<ModelList>> {
    let person = principal.person()?;
    let network = caller_network(&state, &headers, &person).await?;
    require_role(&state, &principal, &network, Role::Member).await?;
    let mut newest: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for workload in crate::domain::workloads::list(&state, &network).await? {
        if workload.yanked {
            continue;
        }
        for model in &workload.models {
            let at = newest.entry(model.clone()).or_insert(0);
            *at = (*at).max(workload.published_at_ms / 1000);
        }
    }
    Ok(Json(ModelList {
        object: "list",
        data: newest
            .into_iter()
            .map(|(id, created)| ModelEntry {
                id,
                object: "model",
                created,
                owned_by: network.to_string(),
            })
            .collect(),
    }))
}
