//! The sweeper: every `sweep_interval` it marks silent devices offline, takes back jobs whose
//! executor's lease expired, and assigns queued jobs ([`crate::domain::scheduling::sweep`]);
//! every minute it deletes the payloads of long-concluded checks
//! ([`crate::domain::checks::expire_payloads`]).

use crate::state::AppState;
use std::time::{Duration, Instant};

/// How often payloads past their retention are deleted.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// Sweep until the task is dropped.
pub async fn run(state: AppState) {
    let mut interval = tokio::time::interval(state.config.sweep_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_expiry: Option<Instant> = None;
    loop {
        interval.tick().await;
        if let Err(e) = crate::domain::scheduling::sweep(&state).await {
            tracing::warn!("sweep failed: {e}");
        }
        if last_expiry.is_none_or(|t| t.elapsed() >= EXPIRE_EVERY) {
            last_expiry = Some(Instant::now());
            match crate::domain::checks::expire_payloads(&state).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "payloads past their retention deleted"),
                Err(e) => tracing::warn!("expiring payloads failed: {e}"),
            }
        }
    }
}
