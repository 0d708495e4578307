//! Batches: a large input (texts to embed) that the control plane cuts into pieces of
//! [`PIECE_ITEMS`] items and runs as ordinary jobs, each covering consecutive pieces, on
//! every device that can take them. These are the REST bodies that describe one.

use crate::{BatchId, Blake3Hash, DeviceId, NetworkId, PersonId};
use serde::{Deserialize, Serialize};
#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// Items in a piece: the unit a batch is priced, paid and assembled in. A job of a batch
/// covers one or more consecutive pieces, as many as its device runs in a few seconds.
pub const PIECE_ITEMS: usize = 64;

/// How a batch's input is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// One text a line (a final newline ends the last line; every other line is an item,
    /// empty ones included, so item `i` is line `i + 1`).
    #[default]
    Lines,
    /// JSON Lines: each line a JSON string, or an object with a string `text` (blank lines
    /// are skipped).
    Jsonl,
}

/// A batch's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BatchState {
    /// Its input is arriving.
    Uploading,
    /// Its pieces are being run (and their results checked).
    Running,
    /// Every item has its result.
    Done,
    /// Cancelled by its requester or an admin; what was not spent is refunded.
    Cancelled,
    /// It could not finish (its input was invalid, or nothing can run it).
    Failed,
}

impl BatchState {
    /// The state's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Uploading => "uploading",
            BatchState::Running => "running",
            BatchState::Done => "done",
            BatchState::Cancelled => "cancelled",
            BatchState::Failed => "failed",
        }
    }

    /// Parse a stored state.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "uploading" => Some(BatchState::Uploading),
            "running" => Some(BatchState::Running),
            "done" => Some(BatchState::Done),
            "cancelled" => Some(BatchState::Cancelled),
            "failed" => Some(BatchState::Failed),
            _ => None,
        }
    }

    /// Whether the batch has ended (done, cancelled or failed).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            BatchState::Done | BatchState::Cancelled | BatchState::Failed
        )
    }
}

/// What one device did for a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct BatchDevice {
    /// The device.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub device: DeviceId,
    /// Items of runs it won.
    pub items: u64,
    /// Its measured speed on this batch (items of won runs over their time), when it won one.
    pub items_per_s: Option<f64>,
    /// Runs it holds now.
    pub running: u32,
    /// Its runs that failed (their pieces went to other runs).
    pub failed: u32,
}

/// A batch and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct BatchInfo {
    /// Its id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: BatchId,
    /// Its network.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub network: NetworkId,
    /// Who asked for it (and pays).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub requester: PersonId,
    /// The workload every piece runs.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub workload: Blake3Hash,
    /// Its state.
    pub state: BatchState,
    /// Items in its input.
    pub items: u64,
    /// Items with a result.
    pub items_done: u64,
    /// Pieces (of [`PIECE_ITEMS`] items, the last one shorter).
    pub pieces: u64,
    /// Credits a piece costs.
    pub piece_price: i64,
    /// Credits reserved for it when it started (pieces × piece price).
    pub price: i64,
    /// Credits paid so far (to the owners of the devices whose runs won pieces).
    pub paid: i64,
    /// Numbers per result vector, once one arrived.
    pub dimensions: Option<u64>,
    /// Input tokens of the results so far, as the workload counted them.
    #[serde(default)]
    pub tokens: u64,
    /// Items per second over the last part of the run, all devices together.
    pub items_per_s: Option<f64>,
    /// Seconds until it is done at that speed.
    pub eta_s: Option<f64>,
    /// Devices that ran its pieces.
    pub devices: Vec<BatchDevice>,
    /// Runs in flight now (duplicates included).
    pub runs_running: u32,
    /// Runs that failed (their pieces were run again).
    pub runs_failed: u32,
    /// Duplicate runs started for slow pieces near the end.
    pub duplicates: u32,
    /// Won runs whose check (a re-execution the VRF selected) is still open: the batch is
    /// done once every piece has a result and these are decided (a failed one runs its
    /// pieces again).
    pub checks_open: u32,
    /// The latest failures, newest first (at most a few).
    pub failures: Vec<String>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// When it was created (ms since the Unix epoch).
    pub created_at_ms: i64,
    /// When it ended.
    pub finished_at_ms: Option<i64>,
}

/// How a batch's results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ResultFormat {
    /// JSON Lines, one `{"index": i, "embedding": [...]}` per item in input order.
    #[default]
    Jsonl,
    /// A NumPy `.npy` file: a float32 array of shape (items, dimensions).
    Npy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for state in [
            BatchState::Uploading,
            BatchState::Running,
            BatchState::Done,
            BatchState::Cancelled,
            BatchState::Failed,
        ] {
            assert_eq!(BatchState::parse(state.as_str()), Some(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert_eq!(BatchState::parse("paused"), None);
        assert!(BatchState::Done.is_final() && !BatchState::Running.is_final());
    }
}
