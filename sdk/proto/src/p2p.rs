//! Messages of the peer-to-peer protocols: `/mesh/job/1` (run a job), `/mesh/piece/1` (the
//! executor streams a job's partial output back to its requester while it runs),
//! `/mesh/cancel/1` (stop one) and `/mesh/blob/1` (fetch a component or model by BLAKE3 in
//! chunks). All travel as length-prefixed CBOR frames with the caps below, checked before
//! anything is allocated.

use crate::api::JobTicket;
use crate::device::DeviceCert;
use crate::{Blake3Hash, JobId, RunReceipt, Signed};
use serde::{Deserialize, Serialize};

/// Protocol name of job requests.
pub const JOB_PROTOCOL: &str = "/mesh/job/1";
/// Protocol name of blob transfers.
pub const BLOB_PROTOCOL: &str = "/mesh/blob/1";
/// Protocol name of streamed partial output.
pub const PIECE_PROTOCOL: &str = "/mesh/piece/1";
/// Protocol name of job cancellations.
pub const CANCEL_PROTOCOL: &str = "/mesh/cancel/1";

/// Room for tickets, certificates, receipts and CBOR framing around a payload.
pub const ENVELOPE_BYTES: usize = 64 << 10;
/// Largest job input carried in a request (the executor's input limit).
pub const MAX_JOB_INPUT_BYTES: usize = 8 << 20;
/// Largest job output carried in a response (the executor's output limit).
pub const MAX_JOB_OUTPUT_BYTES: usize = 64 << 20;
/// Largest `/mesh/job/1` request frame.
pub const MAX_JOB_REQUEST_FRAME: usize = MAX_JOB_INPUT_BYTES + ENVELOPE_BYTES;
/// Largest `/mesh/job/1` response frame.
pub const MAX_JOB_RESPONSE_FRAME: usize = MAX_JOB_OUTPUT_BYTES + ENVELOPE_BYTES;
/// Largest chunk a blob server sends.
pub const MAX_BLOB_CHUNK_BYTES: usize = 1 << 20;
/// Largest `/mesh/blob/1` request frame.
pub const MAX_BLOB_REQUEST_FRAME: usize = ENVELOPE_BYTES;
/// Largest `/mesh/blob/1` response frame.
pub const MAX_BLOB_RESPONSE_FRAME: usize = MAX_BLOB_CHUNK_BYTES + ENVELOPE_BYTES;
/// Most bytes of partial output one job streams, all pieces together (the executor stops a
/// job that emits more; a requester refuses the rest).
pub const MAX_STREAMED_BYTES: usize = 4 << 20;
/// Largest `/mesh/piece/1` request frame: one piece of at most
/// [`crate::workload::MAX_PIECE_BYTES`], coalesced, and its envelope.
pub const MAX_PIECE_REQUEST_FRAME: usize = crate::workload::MAX_PIECE_BYTES + 1024;
/// Largest `/mesh/piece/1` response frame.
pub const MAX_PIECE_RESPONSE_FRAME: usize = 1 << 10;
/// Largest `/mesh/cancel/1` frame either way.
pub const MAX_CANCEL_FRAME: usize = 1 << 10;

/// Run a job: the control plane's ticket, the requester's certificate (absent when the
/// requester is the control plane itself, acting as gateway) and the input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    /// The ticket naming executor, requester, workload, input hash and price.
    pub ticket: Signed<JobTicket>,
    /// The requesting device's certificate.
    #[serde(default)]
    pub requester_cert: Option<Signed<DeviceCert>>,
    /// The input bytes (their BLAKE3 must equal the ticket's input hash).
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
    /// Stream the workload's partial output back over `/mesh/piece/1` as it comes. The
    /// answer still carries the whole output, which the receipt pins.
    #[serde(default)]
    pub stream: bool,
}

/// Partial output of a running job, from its executor to its requester, in order: `seq`
/// counts from 0, one piece in flight at a time (what the workload emits while one is on the
/// way goes out coalesced in the next).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceRequest {
    /// The job.
    pub job: JobId,
    /// Its place in the job's stream.
    pub seq: u32,
    /// The bytes, at most [`crate::workload::MAX_PIECE_BYTES`].
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// The requester's answer to a [`PieceRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PieceResponse {
    /// Taken; send the next.
    Taken,
    /// Nobody here waits for this job's pieces from you (it asked for none, finished or went
    /// away): send no more.
    Unwanted,
    /// Out of order, too large, or past the job's streaming cap: send no more.
    Refused(String),
}

/// The answer to a [`JobRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobResponse {
    /// The job ran: its output and the executor's signed receipt.
    Done {
        /// Output bytes.
        #[serde(with = "serde_bytes")]
        output: Vec<u8>,
        /// Receipt signed by the executing device (domain `receipt`).
        receipt: Signed<RunReceipt>,
    },
    /// The executor did not run it.
    Refused(JobRefusal),
}

/// Why an executor did not run a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "code", content = "detail")]
#[non_exhaustive]
pub enum JobRefusal {
    /// The queue is full; try another device.
    #[error("busy: {queued} jobs queued")]
    Busy {
        /// Jobs waiting.
        queued: u32,
    },
    /// The ticket is not signed by this network's control plane, has expired, or names
    /// another executor or requester.
    #[error("invalid ticket: {0}")]
    InvalidTicket(String),
    /// The requester is not a device of this network with a valid certificate.
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    /// This job was already presented.
    #[error("ticket already used for job {0}")]
    Replayed(String),
    /// The input does not hash to the ticket's input hash.
    #[error("input does not match the ticket's input hash")]
    InputMismatch,
    /// The component could not be obtained or verified.
    #[error("component unavailable: {0}")]
    ComponentUnavailable(String),
    /// The workload ran and failed.
    #[error("job failed: {message}")]
    Failed {
        /// Error class (`workload`, `limit`, `inference`, `internal`).
        kind: String,
        /// What happened.
        message: String,
        /// Whether another device might succeed.
        retryable: bool,
    },
    /// The executor is shutting down.
    #[error("executor is shutting down")]
    ShuttingDown,
    /// The device's owner's terms do not allow this job (another device may take it).
    #[error("refused by the device's terms: {0}")]
    Terms(crate::terms::TermsRefusal),
}

impl JobRefusal {
    /// Whether another device may succeed where this one refused.
    pub fn retryable(&self) -> bool {
        match self {
            JobRefusal::Busy { .. }
            | JobRefusal::ShuttingDown
            | JobRefusal::Terms(_)
            | JobRefusal::ComponentUnavailable(_) => true,
            JobRefusal::Failed { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

/// Stop a job. Only the peer that presented its ticket (the ticket's requester) may.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// The job.
    pub job: JobId,
}

/// The answer to a [`CancelRequest`]. A cancelled job's own request is answered with
/// [`JobRefusal::Failed`] of kind `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelResponse {
    /// The job was queued or running here and is being stopped.
    Cancelled,
    /// This peer has no such job queued or running (it finished, or never came).
    Unknown,
    /// The job is not the asking peer's to cancel.
    NotAuthorized,
}

/// Ask for a piece of a blob. The ticket authorises the transfer: the asking peer must be
/// its executor and the blob its workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobRequest {
    /// Ticket of the job that needs the blob.
    pub ticket: Signed<JobTicket>,
    /// The blob.
    pub hash: Blake3Hash,
    /// First byte wanted (resuming transfers ask from what they have).
    pub offset: u64,
    /// Bytes wanted (at most [`MAX_BLOB_CHUNK_BYTES`]).
    pub length: u32,
}

/// The answer to a [`BlobRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobResponse {
    /// Bytes `offset..offset + data.len()` of a blob of `total` bytes.
    Chunk {
        /// Blob size.
        total: u64,
        /// Where `data` starts.
        offset: u64,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// This peer does not have it.
    NotFound,
    /// Not allowed, or a bad request.
    Refused(String),
}
