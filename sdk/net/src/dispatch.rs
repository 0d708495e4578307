//! The requester's side of a job: send it to the assigned executor, check the answer, and on
//! a busy, unreachable or failing executor ask the control plane for another one.

use crate::verify::{self, VerifyError};
use crate::{NetError, Node};
use libp2p::PeerId;
use mesh_proto::api::JobTicket;
use mesh_proto::device::DeviceCert;
use mesh_proto::p2p::{CancelResponse, JobRefusal, JobRequest, JobResponse};
use mesh_proto::{RunReceipt, Signed};
use std::future::Future;
use tokio::sync::mpsc;

/// Where to send a job: the control plane's ticket and the executor it names.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The ticket.
    pub ticket: Signed<JobTicket>,
    /// The executor's peer id.
    pub executor: PeerId,
}

impl Assignment {
    /// An assignment from a ticket (the executor is the one it names).
    pub fn from_ticket(ticket: Signed<JobTicket>) -> Result<Self, DispatchError> {
        let claims = ticket
            .peek()
            .map_err(|e| DispatchError::Control(format!("unreadable ticket: {e}")))?;
        let executor = claims
            .executor_peer
            .parse()
            .map_err(|_| DispatchError::Control("the ticket names no valid peer".into()))?;
        Ok(Assignment { ticket, executor })
    }
}

/// A job that ran, with its checked receipt.
#[derive(Debug, Clone)]
pub struct Completed {
    /// The output bytes.
    pub output: Vec<u8>,
    /// The receipt, checked against ticket, input and output.
    pub receipt: RunReceipt,
    /// The receipt as the executor signed it (to report to the control plane).
    pub signed_receipt: Signed<RunReceipt>,
    /// The ticket it ran under.
    pub ticket: Signed<JobTicket>,
    /// The device that ran it.
    pub executor: PeerId,
    /// Whether the answer came over a relay circuit.
    pub relayed: bool,
    /// Executors tried, this one included.
    pub attempts: u32,
}

/// Why a job did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// An executor refused it for a reason no other device would avoid.
    #[error("refused by {executor}: {refusal}")]
    Refused {
        /// Who refused.
        executor: PeerId,
        /// Why.
        refusal: Box<JobRefusal>,
    },
    /// No executor could be reached or agreed, after `attempts`.
    #[error("gave up after {attempts} attempts; last: {last}")]
    GaveUp {
        /// Executors tried.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The executor failed after streaming part of the output: the job is not sent again
    /// (the pieces already went on), and failed at the control plane.
    #[error("{executor} stopped after streaming part of the output: {reason}")]
    Interrupted {
        /// The executor that had it.
        executor: PeerId,
        /// What went wrong.
        reason: String,
    },
    /// The control plane has no device for it now.
    #[error("no device can take the job now ({0})")]
    NoExecutor(String),
    /// The control plane could not be asked.
    #[error("control plane: {0}")]
    Control(String),
    /// The deadline passed: the job was cancelled at its executor and failed at the control
    /// plane (which refunds the requester).
    #[error("deadline passed; the job was cancelled at {executor} ({cancel})")]
    DeadlineExceeded {
        /// The executor that had it.
        executor: PeerId,
        /// What the executor said to the cancel.
        cancel: String,
    },
}

/// What the control plane says when asked for another executor.
pub type Reassigned = Result<Option<Assignment>, String>;

/// Send `input` to the assigned executor and wait for a checked result. When the executor is
/// busy, unreachable, gives a bad receipt or fails in a way another device might not,
/// `reassign(executor, reason, retryable)` asks the control plane for another assignment
/// away from `executor` (with `retryable` false it fails the job for good). At most
/// `max_attempts` executors are tried. Past `deadline` the executor is told to cancel the job
/// (over `/mesh/cancel/1`) and the job is failed for good.
///
/// With `pieces`, the executor is asked to stream: what it streams goes to `pieces` as it
/// arrives. Once a piece went on, a failing executor is not replaced
/// ([`DispatchError::Interrupted`]): another run would stream its own text after it.
#[allow(clippy::too_many_arguments)]
pub async fn dispatch<F, Fut>(
    node: &Node,
    first: Assignment,
    input: &[u8],
    requester_cert: Option<Signed<DeviceCert>>,
    max_attempts: u32,
    deadline: Option<tokio::time::Instant>,
    pieces: Option<&mpsc::UnboundedSender<Vec<u8>>>,
    mut reassign: F,
) -> Result<Completed, DispatchError>
where
    F: FnMut(PeerId, String, bool) -> Fut,
    Fut: Future<Output = Reassigned>,
{
    let mut assignment = first;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let request = JobRequest {
            ticket: assignment.ticket.clone(),
            requester_cert: requester_cert.clone(),
            input: input.to_vec(),
            stream: pieces.is_some(),
        };
        let executor = assignment.executor;
        // Dropped unanswered (the caller went away: a gateway client that disconnected), the
        // guard tells the executor to stop.
        let mut guard = assignment
            .ticket
            .peek()
            .ok()
            .map(|ticket| CancelOnDrop(Some((node.clone(), executor, ticket.job))));
        let mut streamed = false;
        let exchange = exchange(node, executor, request, pieces, &mut streamed);
        let answer = match deadline {
            None => exchange.await,
            Some(at) => match tokio::time::timeout_at(at, exchange).await {
                Ok(answer) => answer,
                Err(_) => {
                    if let Some(guard) = &mut guard {
                        guard.0 = None;
                    }
                    let cancel = match assignment.ticket.peek() {
                        Ok(ticket) => match node.cancel_job(executor, ticket.job).await {
                            Ok(CancelResponse::Cancelled) => "cancelled".to_string(),
                            Ok(other) => format!("{other:?}"),
                            Err(e) => e.to_string(),
                        },
                        Err(e) => format!("unreadable ticket: {e}"),
                    };
                    tracing::info!(%executor, "deadline passed; cancel: {cancel}");
                    let _ = reassign(
                        executor,
                        "cancelled: the requester's deadline passed".into(),
                        false,
                    )
                    .await;
                    return Err(DispatchError::DeadlineExceeded { executor, cancel });
                }
            },
        };
        if let Some(mut guard) = guard {
            guard.0 = None;
        }
        let failure = match answer {
            Ok(answer) => match answer.response {
                JobResponse::Done { output, receipt } => {
                    match verify::receipt(&receipt, &assignment.ticket, &output) {
                        Ok(checked) => {
                            return Ok(Completed {
                                output,
                                receipt: checked,
                                signed_receipt: receipt,
                                ticket: assignment.ticket,
                                executor,
                                relayed: answer.relayed,
                                attempts,
                            });
                        }
                        Err(e) => bad_receipt(executor, e),
                    }
                }
                JobResponse::Refused(refusal) if refusal.retryable() => {
                    format!("{executor} refused: {refusal}")
                }
                JobResponse::Refused(refusal) => {
                    let _ = reassign(executor, refusal.to_string(), false).await;
                    return Err(DispatchError::Refused {
                        executor,
                        refusal: Box::new(refusal),
                    });
                }
            },
            Err(NetError::Stopped) => {
                return Err(DispatchError::Control("network node stopped".into()));
            }
            Err(e) => e.to_string(),
        };
        tracing::info!(attempt = attempts, "job not done: {failure}");
        if streamed {
            let _ = reassign(executor, failure.clone(), false).await;
            return Err(DispatchError::Interrupted {
                executor,
                reason: failure,
            });
        }
        if attempts >= max_attempts {
            let _ = reassign(executor, failure.clone(), false).await;
            return Err(DispatchError::GaveUp {
                attempts,
                last: failure,
            });
        }
        match reassign(executor, failure.clone(), true).await {
            Ok(Some(next)) => assignment = next,
            Ok(None) => return Err(DispatchError::NoExecutor(failure)),
            Err(e) => return Err(DispatchError::Control(e)),
        }
    }
}

/// Send one request and wait for its answer, passing on what the executor streams
/// meanwhile (and saying whether it streamed anything).
async fn exchange(
    node: &Node,
    executor: PeerId,
    request: JobRequest,
    pieces: Option<&mpsc::UnboundedSender<Vec<u8>>>,
    streamed: &mut bool,
) -> Result<crate::JobAnswer, NetError> {
    let Some(out) = pieces else {
        return node.request_job(executor, request).await;
    };
    let (sender, mut received) = mpsc::unbounded_channel();
    let answer = node.request_job_streaming(executor, request, sender);
    tokio::pin!(answer);
    loop {
        tokio::select! {
            biased;
            Some(piece) = received.recv() => {
                *streamed = true;
                let _ = out.send(piece);
            }
            answer = &mut answer => {
                // Every piece was queued before the answer was.
                while let Ok(piece) = received.try_recv() {
                    *streamed = true;
                    let _ = out.send(piece);
                }
                return answer;
            }
        }
    }
}

/// Cancels a job at its executor when dropped while armed.
struct CancelOnDrop(Option<(Node, PeerId, mesh_proto::JobId)>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some((node, executor, job)) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            tracing::info!(%executor, %job, "the job's requester went away; cancelling it");
            runtime.spawn(async move { node.cancel_job(executor, job).await });
        }
    }
}

fn bad_receipt(executor: PeerId, e: VerifyError) -> String {
    format!("{executor} returned an invalid receipt: {e}")
}
