//! The request-response protocols (`/mesh/job/1`, `/mesh/blob/1`, `/mesh/cancel/1`): inbound
//! requests go to the application on the node's inbound channel and their answers come back
//! as [`Reply`] futures; outbound requests wait in the driver's pending maps for their answer
//! or failure. `/mesh/piece/1` is answered here: a piece goes to the job this node sent that
//! executor, if it asked to stream, in order and within the caps.

use super::driver::Driver;
use super::{INBOUND_BUFFER, Inbound, JobAnswer, NetError, REQUESTER_POLL};
use futures::stream::FuturesUnordered;
use libp2p::PeerId;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use mesh_proto::JobId;
use mesh_proto::p2p::{
    BlobRequest, BlobResponse, CancelRequest, CancelResponse, JobRequest, JobResponse,
    MAX_STREAMED_BYTES, PieceRequest, PieceResponse,
};
use mesh_proto::workload::MAX_PIECE_BYTES;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::{mpsc, oneshot};

/// An answer the application is preparing for an inbound request.
pub(super) type Reply = Pin<Box<dyn Future<Output = Outgoing> + Send>>;

/// A job request waiting for its answer, with a copy to send again if the connection it went
/// out on was one this node closed (the executor answers a repeated ticket once).
pub(super) struct PendingJob {
    /// The executor asked.
    pub(super) peer: PeerId,
    /// The request, to send again once.
    pub(super) resend: Option<Box<JobRequest>>,
    /// Its entry in the driver's streams, if it streams.
    pub(super) stream: Option<(PeerId, JobId)>,
    /// Where the answer goes.
    pub(super) reply: oneshot::Sender<Result<JobAnswer, NetError>>,
}

/// Where the pieces of one streaming job go, and how far its stream got.
pub(super) struct PieceStream {
    sender: mpsc::UnboundedSender<Vec<u8>>,
    next_seq: u32,
    bytes: usize,
}

impl PieceStream {
    /// A stream that delivers to `sender`.
    pub(super) fn new(sender: mpsc::UnboundedSender<Vec<u8>>) -> Self {
        PieceStream {
            sender,
            next_seq: 0,
            bytes: 0,
        }
    }

    /// Take the next piece, or say why not. Memory stays bounded: a stream holds at most
    /// [`MAX_STREAMED_BYTES`] however slowly its receiver reads.
    fn take(&mut self, piece: PieceRequest) -> PieceResponse {
        if piece.seq != self.next_seq {
            return PieceResponse::Refused(format!(
                "piece {} came where piece {} was due",
                piece.seq, self.next_seq
            ));
        }
        if piece.bytes.len() > MAX_PIECE_BYTES {
            return PieceResponse::Refused(format!(
                "a piece of {} bytes is over the {MAX_PIECE_BYTES}-byte cap",
                piece.bytes.len()
            ));
        }
        if self.bytes + piece.bytes.len() > MAX_STREAMED_BYTES {
            return PieceResponse::Refused(format!(
                "the job streamed over {MAX_STREAMED_BYTES} bytes"
            ));
        }
        self.next_seq += 1;
        self.bytes += piece.bytes.len();
        match self.sender.send(piece.bytes) {
            Ok(()) => PieceResponse::Taken,
            Err(_) => PieceResponse::Unwanted,
        }
    }
}

/// An inbound request's answer (or `None`: the application dropped it), with the channel
/// it goes out on.
pub(super) enum Outgoing {
    /// To a job request.
    Job(ResponseChannel<JobResponse>, Option<JobResponse>),
    /// To a blob request.
    Blob(ResponseChannel<BlobResponse>, Option<BlobResponse>),
    /// To a cancel request.
    Cancel(ResponseChannel<CancelResponse>, Option<CancelResponse>),
}

impl Driver {
    /// Send an answer the application prepared (or nothing, if it dropped the request).
    pub(super) fn on_reply(&mut self, outgoing: Outgoing) {
        let sent = match outgoing {
            Outgoing::Job(channel, Some(response)) => self
                .swarm
                .behaviour_mut()
                .job
                .send_response(channel, response)
                .is_ok(),
            Outgoing::Blob(channel, Some(response)) => self
                .swarm
                .behaviour_mut()
                .blob
                .send_response(channel, response)
                .is_ok(),
            Outgoing::Cancel(channel, Some(response)) => self
                .swarm
                .behaviour_mut()
                .cancel
                .send_response(channel, response)
                .is_ok(),
            Outgoing::Job(_, None) | Outgoing::Blob(_, None) | Outgoing::Cancel(_, None) => true,
        };
        if !sent {
            tracing::debug!("the requester went away before the answer was ready");
        }
    }

    /// One event of the job protocol.
    pub(super) fn on_job(
        &mut self,
        event: request_response::Event<JobRequest, JobResponse>,
        replies: &mut FuturesUnordered<Reply>,
    ) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                connection_id,
                message:
                    Message::Request {
                        request, channel, ..
                    },
            } => {
                let (reply, answer) = oneshot::channel();
                let relayed = self.paths.relayed(&peer, &connection_id);
                let inbound = Inbound::Job {
                    peer,
                    relayed,
                    request: Box::new(request),
                    reply,
                };
                match self.inbound.try_send(inbound) {
                    Ok(()) => replies.push(Box::pin(async move {
                        // Give up on the answer (the application sees its reply sender
                        // close) once the requester can no longer receive it: its
                        // connection closed or the request timed out.
                        let mut answer = answer;
                        let mut poll = tokio::time::interval(REQUESTER_POLL);
                        loop {
                            tokio::select! {
                                response = &mut answer => return Outgoing::Job(channel, response.ok()),
                                _ = poll.tick() => if !channel.is_open() {
                                    return Outgoing::Job(channel, None);
                                },
                            }
                        }
                    })),
                    Err(_) => {
                        let busy = JobResponse::Refused(mesh_proto::p2p::JobRefusal::Busy {
                            queued: INBOUND_BUFFER as u32,
                        });
                        let _ = self.swarm.behaviour_mut().job.send_response(channel, busy);
                    }
                }
            }
            Event::Message {
                peer,
                connection_id,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
            } => {
                let relayed = self.paths.relayed(&peer, &connection_id);
                if let Some(pending) = self.pending_jobs.remove(&request_id) {
                    if let Some(key) = pending.stream {
                        self.streams.remove(&key);
                    }
                    let _ = pending.reply.send(Ok(JobAnswer { response, relayed }));
                }
                self.request_done(peer);
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                connection_id,
            } => {
                let pending = self.pending_jobs.remove(&request_id);
                if let Some(mut pending) = pending {
                    let ours = matches!(error, request_response::OutboundFailure::ConnectionClosed)
                        && self.paths.closed_by_us(&connection_id);
                    if let (true, Some(request)) = (ours, pending.resend.take()) {
                        // It went out on the relayed connection we were closing: send it
                        // again, over the direct one.
                        tracing::info!(%peer, "resending a job over the direct connection");
                        let id = self.swarm.behaviour_mut().job.send_request(&peer, *request);
                        self.pending_jobs.insert(id, pending);
                        return;
                    }
                    tracing::info!(peer = %pending.peer, "job request failed: {error}");
                    if let Some(key) = pending.stream {
                        self.streams.remove(&key);
                    }
                    let _ = pending
                        .reply
                        .send(Err(NetError::from_outbound(peer, error)));
                }
                self.request_done(peer);
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::info!(%peer, "inbound job request failed: {error}");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// One event of the cancel protocol.
    pub(super) fn on_cancel(
        &mut self,
        event: request_response::Event<CancelRequest, CancelResponse>,
        replies: &mut FuturesUnordered<Reply>,
    ) {
        let handled = on_plain_request_response(
            event,
            &mut self.pending_cancels,
            &self.inbound,
            replies,
            |peer, request, reply| Inbound::Cancel {
                peer,
                request,
                reply,
            },
            Outgoing::Cancel,
            "cancel",
        );
        match handled {
            // A full inbound queue: the requester sees the stream close and may ask again.
            Handled::Unqueued(_) => {}
            Handled::Answered(peer) => self.request_done(peer),
            Handled::Nothing => {}
        }
    }

    /// One event of the piece protocol: inbound pieces are taken here, for the job this
    /// node sent the peer (nobody else's pieces reach it).
    pub(super) fn on_piece(&mut self, event: request_response::Event<PieceRequest, PieceResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let key = (peer, request.job);
                let answer = match self.streams.get_mut(&key) {
                    Some(stream) => stream.take(request),
                    None => PieceResponse::Unwanted,
                };
                if !matches!(answer, PieceResponse::Taken) {
                    tracing::info!(%peer, "refused a streamed piece: {answer:?}");
                    // A stream that broke the rules gets nothing more; the job's answer
                    // still comes, and its receipt pins the whole output.
                    self.streams.remove(&key);
                }
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .piece
                    .send_response(channel, answer);
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.pending_pieces.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
                self.request_done(peer);
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, "piece request failed: {error}");
                if let Some(reply) = self.pending_pieces.remove(&request_id) {
                    let _ = reply.send(Err(NetError::from_outbound(peer, error)));
                }
                self.request_done(peer);
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::info!(%peer, "inbound piece failed: {error}");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// One event of the blob protocol.
    pub(super) fn on_blob(
        &mut self,
        event: request_response::Event<BlobRequest, BlobResponse>,
        replies: &mut FuturesUnordered<Reply>,
    ) {
        let handled = on_plain_request_response(
            event,
            &mut self.pending_blobs,
            &self.inbound,
            replies,
            |peer, request, reply| Inbound::Blob {
                peer,
                request: Box::new(request),
                reply,
            },
            Outgoing::Blob,
            "blob",
        );
        match handled {
            Handled::Unqueued(channel) => {
                let busy = BlobResponse::Refused("busy".into());
                let _ = self.swarm.behaviour_mut().blob.send_response(channel, busy);
            }
            Handled::Answered(peer) => self.request_done(peer),
            Handled::Nothing => {}
        }
    }
}

/// What [`on_plain_request_response`] leaves to its caller.
enum Handled<Resp> {
    /// An inbound request found the application's queue full: answer it here (or drop it).
    Unqueued(ResponseChannel<Resp>),
    /// An outbound request to this peer ended (answered or failed).
    Answered(PeerId),
    /// Nothing to do.
    Nothing,
}

/// One event of a request-response protocol whose inbound requests go to the application
/// (answered through `replies`) and whose outbound requests wait in `pending`.
fn on_plain_request_response<Req, Resp: Send + 'static>(
    event: request_response::Event<Req, Resp>,
    pending: &mut HashMap<OutboundRequestId, oneshot::Sender<Result<Resp, NetError>>>,
    inbound: &mpsc::Sender<Inbound>,
    replies: &mut FuturesUnordered<Reply>,
    to_inbound: impl FnOnce(PeerId, Req, oneshot::Sender<Resp>) -> Inbound,
    to_outgoing: fn(ResponseChannel<Resp>, Option<Resp>) -> Outgoing,
    protocol: &str,
) -> Handled<Resp> {
    use request_response::{Event, Message};
    match event {
        Event::Message {
            peer,
            message: Message::Request {
                request, channel, ..
            },
            ..
        } => {
            let (reply, answer) = oneshot::channel();
            if inbound.try_send(to_inbound(peer, request, reply)).is_err() {
                return Handled::Unqueued(channel);
            }
            replies.push(Box::pin(
                async move { to_outgoing(channel, answer.await.ok()) },
            ));
            Handled::Nothing
        }
        Event::Message {
            peer,
            message:
                Message::Response {
                    request_id,
                    response,
                },
            ..
        } => {
            if let Some(reply) = pending.remove(&request_id) {
                let _ = reply.send(Ok(response));
            }
            Handled::Answered(peer)
        }
        Event::OutboundFailure {
            peer,
            request_id,
            error,
            ..
        } => {
            tracing::info!(%peer, "{protocol} request failed: {error}");
            if let Some(reply) = pending.remove(&request_id) {
                let _ = reply.send(Err(NetError::from_outbound(peer, error)));
            }
            Handled::Answered(peer)
        }
        Event::InboundFailure { peer, error, .. } => {
            tracing::info!(%peer, "inbound {protocol} request failed: {error}");
            Handled::Nothing
        }
        Event::ResponseSent { .. } => Handled::Nothing,
    }
}
