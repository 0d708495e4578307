//! The sweeper: every `sweep_interval` it marks silent devices offline, takes back jobs whose
//! executor's lease expired, and assigns queued jobs ([`crate::domain::scheduling::sweep`]).

use crate::state::AppState;

/// Sweep until the task is dropped.
pub async fn run(state: AppState) {
    let mut interval = tokio::time::interval(state.config.sweep_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(e) = crate::domain::scheduling::sweep(&state).await {
            tracing::warn!("sweep failed: {e}");
        }
    }
}
