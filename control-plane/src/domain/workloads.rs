//! The workload registry: components published (validated, content-addressed, idempotent)
//! and yanked, with their audit entries.

use crate::domain::audit::{self, AuditAction};
use crate::domain::{DomainError, DomainResult};
use crate::state::{AppState, MAX_COMPONENT_BYTES};
use crate::store::workloads as store;
use crate::store::{StoreError, now_ms};
use mesh_proto::api::WorkloadInfo;
use mesh_proto::{Blake3Hash, NetworkId, PersonId};

/// Whether a publication added the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// It is new.
    New,
    /// The same bytes were already published: nothing changed.
    Again,
}

/// A workload of a network (404 when there is none).
pub async fn find(
    state: &AppState,
    network: &NetworkId,
    hash: &Blake3Hash,
) -> DomainResult<WorkloadInfo> {
    store::get(&state.db.pool, network, hash)
        .await?
        .ok_or_else(|| DomainError::not_found("workload"))
}

/// Every workload of `network`, by name then publication time.
pub async fn list(state: &AppState, network: &NetworkId) -> DomainResult<Vec<WorkloadInfo>> {
    Ok(store::list(&state.db.pool, network).await?)
}

/// Publish `body`, a component, in `network` for `person` (`actor` in the audit log): it must
/// be a component of the Mesh world, whose `metadata` export gives its name, version, models
/// and comparison rule. The same bytes again change nothing; another component under a
/// published name and version is a conflict.
pub async fn publish(
    state: &AppState,
    network: &NetworkId,
    person: &PersonId,
    actor: &str,
    body: &[u8],
) -> DomainResult<(Published, WorkloadInfo)> {
    if body.is_empty() || body.len() > MAX_COMPONENT_BYTES {
        return Err(DomainError::bad_request(format!(
            "the body must be a component of 1..={MAX_COMPONENT_BYTES} bytes"
        )));
    }
    let hash = Blake3Hash::of(body);
    if let Ok(existing) = find(state, network, &hash).await {
        return Ok((Published::Again, existing));
    }
    let validator = state.validator.clone();
    // At most `CONCURRENT_VALIDATIONS` compile at once; the slot goes with the compilation
    // (which cannot be stopped halfway), so a client that gives up frees nothing early but
    // cannot make the control plane compile more at once either.
    let slot = if validator.known(body) {
        None
    } else {
        Some(validator.slot().await.ok_or_else(|| {
            DomainError::unavailable(
                "validator_busy",
                "other uploads are being validated; try again shortly",
            )
        })?)
    };
    let bytes = body.to_vec();
    let validation = tokio::task::spawn_blocking({
        let span = tracing::Span::current();
        move || {
            let _slot = slot;
            span.in_scope(|| validator.inspect(&bytes))
        }
    });
    let metadata = tokio::time::timeout(crate::validate::VALIDATION_TIME, validation)
        .await
        .map_err(|_| {
            DomainError::unprocessable(
                "validation_timeout",
                format!(
                    "validating the component took longer than {} s",
                    crate::validate::VALIDATION_TIME.as_secs()
                ),
            )
        })?
        .map_err(DomainError::internal)?
        .map_err(|e| DomainError::unprocessable("invalid_component", e.to_string()))?;

    let mut tx = state.db.pool.begin().await?;
    let inserted = store::publish(&mut tx, network, person, body, &metadata, now_ms())
        .await
        .map_err(|e| match e {
            StoreError::Duplicate(_) => DomainError::conflict(
                "version_exists",
                format!(
                    "{}@{} is already published with different bytes",
                    metadata.name, metadata.version
                ),
            ),
            e => DomainError::from(e),
        })?;
    audit::record(
        &mut tx,
        Some(network),
        actor,
        AuditAction::WorkloadPublish,
        &format!("{}@{} {hash}", metadata.name, metadata.version),
    )
    .await?;
    tx.commit().await?;
    let published = if inserted {
        Published::New
    } else {
        Published::Again
    };
    Ok((published, find(state, network, &hash).await?))
}

/// Yank a workload of `network`, as `actor`: no new jobs; running ones finish.
pub async fn yank(
    state: &AppState,
    network: &NetworkId,
    actor: &str,
    hash: &Blake3Hash,
) -> DomainResult<WorkloadInfo> {
    let mut tx = state.db.pool.begin().await?;
    if store::yank(&mut tx, network, hash, now_ms()).await? {
        audit::record(
            &mut tx,
            Some(network),
            actor,
            AuditAction::WorkloadYank,
            &hash.to_string(),
        )
        .await?;
    }
    tx.commit().await?;
    find(state, network, hash).await
}
