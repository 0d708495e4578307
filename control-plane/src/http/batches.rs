//! Batches: create one from a streamed upload, follow it, cancel it, stream its results in
//! input order (JSON Lines, or a NumPy `.npy` of float32 for embeddings).

use crate::domain::batches::{self, Created};
use crate::http::auth::{Member, Reader};
use crate::http::error::responses::{
    BadRequest, Conflict, Managing, NotFound, PaymentRequired, Reading,
};
use crate::http::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::batches as store;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use mesh_proto::api::Role;
use mesh_proto::batch::{BatchInfo, BatchState, InputFormat, ResultFormat};
use mesh_proto::{BatchId, Blake3Hash, NetworkId};
use serde::Deserialize;
use utoipa::IntoParams;

/// Parse a batch id from a path; malformed ids are simply not found.
fn batch_id(text: &str) -> ApiResult<BatchId> {
    text.parse().map_err(|_| ApiError::not_found("batch"))
}

/// How a batch is created: the body is its input.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreateBatchQuery {
    /// The workload: its hash, or its name or a model it declares (the newest live one).
    pub workload: String,
    /// `lines` (default: one text a line) or `jsonl`.
    #[serde(default)]
    pub format: Option<InputFormat>,
    /// Makes a retry return the batch the first call made, without its input.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// The workload a query names, by hash or name.
async fn resolve_workload(
    state: &AppState,
    network: &NetworkId,
    name: &str,
) -> ApiResult<Blake3Hash> {
    if let Ok(hash) = name.parse::<Blake3Hash>() {
        return Ok(hash);
    }
    let mut found: Vec<_> = crate::domain::workloads::list(state, network)
        .await?
        .into_iter()
        .filter(|w| !w.yanked && (w.name == name || w.models.iter().any(|m| m == name)))
        .collect();
    found.sort_by_key(|w| std::cmp::Reverse(w.published_at_ms));
    found
        .first()
        .map(|w| w.hash)
        .ok_or_else(|| ApiError::not_found("workload"))
}

/// Create a batch (member): the body is its input, read as it arrives (one text a line, or
/// JSON Lines), never held whole. Its price (pieces × the job price) is reserved from the
/// caller, and its pieces start running across the network's devices at once. A retry with
/// the same idempotency key answers 200 with the batch the first call made.
#[utoipa::path(post, path = "/v1/networks/{network}/batches", tag = "batches", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), CreateBatchQuery),
    request_body(content = String, content_type = "text/plain", description = "The input"),
    responses((status = 201, body = BatchInfo), (status = 200, body = BatchInfo), Managing, BadRequest, PaymentRequired, Conflict))]
pub async fn create(
    State(state): State<AppState>,
    member: Member,
    Query(query): Query<CreateBatchQuery>,
    body: Body,
) -> ApiResult<Response> {
    use futures::TryStreamExt;
    let workload = resolve_workload(&state, &member.network, &query.workload).await?;
    // A body that stops arriving is the client's 408, not a bad request.
    let stalled = std::sync::atomic::AtomicBool::new(false);
    let input = body.into_data_stream().inspect_err(|e| {
        if crate::http::error::body_timed_out(e) {
            stalled.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let created = batches::create(
        &state,
        &member.network,
        member.person,
        workload,
        query.format.unwrap_or_default(),
        query.idempotency_key,
        input,
    )
    .await
    .map_err(|e| {
        if stalled.load(std::sync::atomic::Ordering::Relaxed) {
            crate::http::error::body_timeout()
        } else {
            ApiError::from(e)
        }
    })?;
    Ok(match created {
        Created::New(info) => {
            crate::workers::batches::spawn(&state, info.id);
            (StatusCode::CREATED, Json(info)).into_response()
        }
        Created::Existing(info) => (StatusCode::OK, Json(info)).into_response(),
    })
}

/// The network's newest batches.
#[utoipa::path(get, path = "/v1/networks/{network}/batches", tag = "batches", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id")),
    responses((status = 200, body = Vec<BatchInfo>), Reading))]
pub async fn list(
    State(state): State<AppState>,
    Reader { network, .. }: Reader,
) -> ApiResult<Json<Vec<BatchInfo>>> {
    Ok(Json(batches::list(&state, &network).await?))
}

/// A batch and its progress: items done, per-device speed, ETA, failures.
#[utoipa::path(get, path = "/v1/networks/{network}/batches/{batch}", tag = "batches", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("batch" = String, Path, description = "Batch id")),
    responses((status = 200, body = BatchInfo), Reading))]
pub async fn show(
    State(state): State<AppState>,
    Reader { network, .. }: Reader,
    Path((_network, batch)): Path<(String, String)>,
) -> ApiResult<Json<BatchInfo>> {
    let record = batches::get(&state, &network, &batch_id(&batch)?).await?;
    Ok(Json(batches::batch_info(&state, &record).await?))
}

/// Cancel a running batch (its requester, or an admin): its runs stop and what it did not
/// spend is refunded. 409 once it has ended.
#[utoipa::path(post, path = "/v1/networks/{network}/batches/{batch}/cancel", tag = "batches", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("batch" = String, Path, description = "Batch id")),
    responses((status = 200, body = BatchInfo), Managing, Conflict))]
pub async fn cancel(
    State(state): State<AppState>,
    member: Member,
    Path((_network, batch)): Path<(String, String)>,
) -> ApiResult<Json<BatchInfo>> {
    let id = batch_id(&batch)?;
    let record = batches::get(&state, &member.network, &id).await?;
    if record.requester != member.person && member.role < Role::Admin {
        return Err(ApiError::forbidden(
            "only the batch's requester or an admin may cancel it",
        ));
    }
    let info = batches::cancel(&state, &member.network, &id, &member.principal.label()).await?;
    Ok(Json(info))
}

/// How results are asked for.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResultsQuery {
    /// `jsonl` (default) or `npy`.
    #[serde(default)]
    pub format: Option<ResultFormat>,
}

/// Pieces read from the database per step of a results stream.
const RESULT_PIECES_PER_READ: u64 = 16;

/// A batch's results in input order (its requester only: they are its data). JSON Lines
/// stream every item with a result so far, up to the first without; `.npy` needs the batch
/// done. The response is streamed, a few pieces at a time.
#[utoipa::path(get, path = "/v1/networks/{network}/batches/{batch}/results", tag = "batches", security(("bearer" = [])),
    params(("network" = String, Path, description = "Network id"), ("batch" = String, Path, description = "Batch id"), ResultsQuery),
    responses((status = 200, description = "The results (JSON Lines or .npy)"), Managing, NotFound, Conflict))]
pub async fn results(
    State(state): State<AppState>,
    member: Member,
    Path((_network, batch)): Path<(String, String)>,
    Query(query): Query<ResultsQuery>,
) -> ApiResult<Response> {
    let id = batch_id(&batch)?;
    let record = batches::get(&state, &member.network, &id).await?;
    if record.requester != member.person {
        return Err(ApiError::forbidden(
            "only the batch's requester may read its results",
        ));
    }
    let format = query.format.unwrap_or_default();
    let dimensions = record.dimensions.unwrap_or(0);
    let mut header = Vec::new();
    if format == ResultFormat::Npy {
        if record.state != BatchState::Done {
            return Err(ApiError::conflict(
                "batch_not_done",
                format!(
                    "a .npy needs every result; the batch is {}",
                    record.state.as_str()
                ),
            ));
        }
        header = npy_header(record.items, dimensions);
    }
    let pool = state.db.pool.clone();
    struct Cursor {
        next_piece: u64,
        next_item: u64,
        done: bool,
    }
    let start = Cursor {
        next_piece: 0,
        next_item: 0,
        done: false,
    };
    let body = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(header.into()) })
        .chain(futures::stream::unfold(start, move |mut cursor| {
            let pool = pool.clone();
            async move {
                if cursor.done {
                    return None;
                }
                let pieces =
                    match store::results(&pool, &id, cursor.next_piece, RESULT_PIECES_PER_READ)
                        .await
                    {
                        Ok(pieces) => pieces,
                        Err(e) => return Some((Err(std::io::Error::other(e.to_string())), cursor)),
                    };
                if pieces.len() < RESULT_PIECES_PER_READ as usize {
                    cursor.done = true;
                }
                let mut out = Vec::new();
                for piece in pieces {
                    let Some(result) = piece.result else {
                        cursor.done = true;
                        break;
                    };
                    match format {
                        ResultFormat::Npy => out.extend_from_slice(&result),
                        ResultFormat::Jsonl => {
                            write_jsonl(&mut out, cursor.next_item, &result, dimensions)
                        }
                    }
                    cursor.next_item += piece.items;
                    cursor.next_piece = piece.piece + 1;
                }
                Some((Ok(Bytes::from(out)), cursor))
            }
        }));
    use futures::StreamExt;
    let content_type = match format {
        ResultFormat::Jsonl => "application/jsonl",
        ResultFormat::Npy => "application/octet-stream",
    };
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response())
}

/// `{"index": i, "embedding": [...]}` lines for one piece's vectors.
fn write_jsonl(out: &mut Vec<u8>, first_item: u64, result: &[u8], dimensions: u64) {
    let dimensions = dimensions.max(1) as usize;
    for (offset, vector) in result.chunks_exact(4 * dimensions).enumerate() {
        let numbers: Vec<f32> = vector
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        let line = serde_json::json!({ "index": first_item + offset as u64, "embedding": numbers });
        serde_json::to_writer(&mut *out, &line).expect("writing to a Vec");
        out.push(b'\n');
    }
}

/// The header of a NumPy `.npy` (format 1.0) holding a little-endian float32 array of shape
/// (`rows`, `columns`), padded so the data starts on a 64-byte boundary.
pub fn npy_header(rows: u64, columns: u64) -> Vec<u8> {
    let dict =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {columns}), }}");
    let unpadded = 10 + dict.len() + 1;
    let padding = (64 - unpadded % 64) % 64;
    let header_len = dict.len() + padding + 1;
    let mut out = Vec::with_capacity(10 + header_len);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', padding));
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_headers_align_the_data() {
        for (rows, columns) in [(1, 384), (200_000, 384), (7, 1)] {
            let header = npy_header(rows, columns);
            assert_eq!(header.len() % 64, 0);
            assert_eq!(&header[..8], b"\x93NUMPY\x01\x00");
            let len = u16::from_le_bytes([header[8], header[9]]) as usize;
            assert_eq!(10 + len, header.len());
            assert!(
                String::from_utf8_lossy(&header).contains(&format!("'shape': ({rows}, {columns})"))
            );
            assert_eq!(header.last(), Some(&b'\n'));
        }
    }

    #[test]
    fn jsonl_lines_number_items_from_the_piece_start() {
        let mut bytes = Vec::new();
        for x in [1.0f32, 0.5, -0.25, 0.0] {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let mut out = Vec::new();
        write_jsonl(&mut out, 128, &bytes, 2);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["index"], 128);
        assert_eq!(lines[1]["index"], 129);
        assert_eq!(lines[1]["embedding"][0], -0.25);
    }
}
