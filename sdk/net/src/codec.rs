//! Length-prefixed CBOR frames for request-response, with a cap per direction checked
//! before anything is read into memory.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of CBOR. An oversized
//! length or malformed CBOR fails the stream with `InvalidData` and a message saying which.
//!
//! Inbound requests arrive before their ticket is checked, so what they can make a node hold
//! is bounded twice: each frame within its cap, and all frames being read at once within the
//! codec's [`InboundBudget`] (a frame reserves its announced size before its body is read,
//! and must arrive within [`FRAME_READ_TIME`], or its reservation is freed). Peers that
//! announce frames and trickle them queue for the budget instead of growing the node's
//! memory. Small frames draw on a pool of their own, so they never queue behind large ones.

use futures::prelude::*;
use libp2p::StreamProtocol;
use mesh_proto::cbor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Bytes of large inbound request frames a node reads at once, all peers together.
pub const INBOUND_BUDGET_BYTES: usize = 64 << 20;
/// Bytes of small inbound request frames (up to [`SMALL_FRAME_BYTES`]) read at once.
pub const SMALL_FRAMES_BUDGET_BYTES: usize = 16 << 20;
/// How long an announced request frame may take to arrive (or to wait for the budget).
pub const FRAME_READ_TIME: Duration = Duration::from_secs(30);
/// Frames up to this size reserve from the small frames' pool, larger ones from the main one.
pub const SMALL_FRAME_BYTES: usize = 64 << 10;

/// The bytes of inbound request frames being read at once, shared by the streams of one
/// codec (one protocol of one node), in KiB permits: one pool for large frames, one for
/// small ones.
#[derive(Debug, Clone)]
pub struct InboundBudget {
    large: Pool,
    small: Pool,
    read_time: Duration,
}

/// KiB permits and how many there are.
#[derive(Debug, Clone)]
struct Pool {
    permits: Arc<Semaphore>,
    total_kib: usize,
}

impl Pool {
    fn new(bytes: usize) -> Self {
        let total_kib = bytes.div_ceil(1024).max(1);
        Pool {
            permits: Arc::new(Semaphore::new(total_kib)),
            total_kib,
        }
    }

    fn reserved_bytes(&self) -> usize {
        (self.total_kib - self.permits.available_permits()) * 1024
    }
}

impl InboundBudget {
    /// A budget of `bytes` for large frames and `small_bytes` for small ones (rounded up to
    /// KiB), frames arriving within `read_time`.
    pub fn new(bytes: usize, small_bytes: usize, read_time: Duration) -> Self {
        InboundBudget {
            large: Pool::new(bytes),
            small: Pool::new(small_bytes),
            read_time,
        }
    }

    /// Bytes reserved by large frames being read now.
    pub fn reserved_bytes(&self) -> usize {
        self.large.reserved_bytes()
    }

    /// Bytes reserved by small frames being read now.
    pub fn reserved_small_bytes(&self) -> usize {
        self.small.reserved_bytes()
    }
}

impl Default for InboundBudget {
    fn default() -> Self {
        InboundBudget::new(
            INBOUND_BUDGET_BYTES,
            SMALL_FRAMES_BUDGET_BYTES,
            FRAME_READ_TIME,
        )
    }
}

/// A request-response codec for `Req`/`Resp` with frame caps.
pub struct FramedCbor<Req, Resp> {
    max_request: usize,
    max_response: usize,
    budget: InboundBudget,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> FramedCbor<Req, Resp> {
    /// A codec accepting requests up to `max_request` and responses up to `max_response`
    /// bytes, reading inbound requests within the default [`InboundBudget`].
    pub fn new(max_request: usize, max_response: usize) -> Self {
        FramedCbor::with_budget(max_request, max_response, InboundBudget::default())
    }

    /// Like [`FramedCbor::new`], with `budget`.
    pub fn with_budget(max_request: usize, max_response: usize, budget: InboundBudget) -> Self {
        FramedCbor {
            max_request,
            max_response,
            budget,
            _types: PhantomData,
        }
    }

    /// The codec's budget (shared by its clones).
    pub fn budget(&self) -> &InboundBudget {
        &self.budget
    }
}

impl<Req, Resp> Clone for FramedCbor<Req, Resp> {
    fn clone(&self) -> Self {
        FramedCbor::with_budget(self.max_request, self.max_response, self.budget.clone())
    }
}

/// Read one frame of at most `cap` bytes.
pub async fn read_frame<T: AsyncRead + Unpin>(io: &mut T, cap: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the cap of {cap} bytes"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Read one request frame of at most `cap` bytes within `budget`: its size is reserved before
/// its body is read, and it must arrive (after waiting for the budget) within the budget's
/// read time.
pub async fn read_budgeted_frame<T: AsyncRead + Unpin>(
    io: &mut T,
    cap: usize,
    budget: &InboundBudget,
) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the cap of {cap} bytes"),
        ));
    }
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "a frame of {len} bytes did not arrive within {:?}",
                budget.read_time
            ),
        )
    };
    let deadline = tokio::time::Instant::now() + budget.read_time;
    let pool = if len > SMALL_FRAME_BYTES {
        &budget.large
    } else {
        &budget.small
    };
    let kib = u32::try_from(len.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    let permits = pool.permits.clone().acquire_many_owned(kib);
    let _reserved = tokio::time::timeout_at(deadline, permits)
        .await
        .map_err(|_| timed_out())?
        .map_err(|_| io::Error::other("the inbound budget is closed"))?;
    let mut buf = vec![0u8; len];
    tokio::time::timeout_at(deadline, io.read_exact(&mut buf))
        .await
        .map_err(|_| timed_out())??;
    Ok(buf)
}

/// Frames up to this size go out in one write with their length prefix (one packet where
/// the transport allows), larger ones in two writes rather than a copy.
const COALESCE_BYTES: usize = 64 << 10;

/// Write one frame.
pub async fn write_frame<T: AsyncWrite + Unpin>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    if bytes.len() <= COALESCE_BYTES {
        let mut frame = Vec::with_capacity(4 + bytes.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(bytes);
        io.write_all(&frame).await?;
    } else {
        io.write_all(&len.to_be_bytes()).await?;
        io.write_all(bytes).await?;
    }
    io.flush().await?;
    io.close().await
}

fn decode<V: DeserializeOwned>(bytes: &[u8], cap: usize) -> io::Result<V> {
    cbor::from_slice_limited(bytes, cap)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("malformed CBOR: {e}")))
}

fn encode<V: Serialize>(value: &V, cap: usize) -> io::Result<Vec<u8>> {
    let bytes = cbor::to_vec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if bytes.len() > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "message of {} bytes exceeds the cap of {cap} bytes",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

#[async_trait::async_trait]
impl<Req, Resp> libp2p::request_response::Codec for FramedCbor<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send,
    Resp: Serialize + DeserializeOwned + Send,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, protocol: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        // libp2p drops a request that fails to read without telling the behaviour: say why
        // here, so a refused peer is visible.
        let request = match read_budgeted_frame(io, self.max_request, &self.budget).await {
            Ok(frame) => decode(&frame, self.max_request),
            Err(e) => Err(e),
        };
        if let Err(e) = &request {
            tracing::info!(%protocol, "refused an inbound request: {e}");
        }
        request
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode(&read_frame(io, self.max_response).await?, self.max_response)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&req, self.max_request)?).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&res, self.max_response)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A peer that announces a frame, sends its length prefix and then nothing.
    struct Stalled(Cursor<Vec<u8>>);

    impl AsyncRead for Stalled {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            match Pin::new(&mut self.0).poll_read(cx, buf) {
                Poll::Ready(Ok(0)) => Poll::Pending,
                other => other,
            }
        }
    }

    fn frame(len: usize) -> Vec<u8> {
        let mut bytes = (len as u32).to_be_bytes().to_vec();
        bytes.extend(std::iter::repeat_n(7u8, len));
        bytes
    }

    #[tokio::test]
    async fn frames_wait_for_the_budget_and_stalled_ones_free_it() {
        let budget = InboundBudget::new(1 << 20, 128 << 10, Duration::from_millis(400));
        // A stalled peer reserves its announced 600 KiB and sends nothing more.
        let stalled = tokio::spawn({
            let budget = budget.clone();
            async move {
                let mut io = Stalled(Cursor::new((600u32 << 10).to_be_bytes().to_vec()));
                read_budgeted_frame(&mut io, 8 << 20, &budget).await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(budget.reserved_bytes(), 600 << 10);
        // Another 600 KiB frame does not fit: it waits (and is not read) until the stalled
        // one's time is up.
        let started = tokio::time::Instant::now();
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move {
                read_budgeted_frame(&mut Cursor::new(frame(600 << 10)), 8 << 20, &budget).await
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "read beyond the budget");
        // (The waiter holds what is left of the budget while it waits: never more than all.)
        assert!(budget.reserved_bytes() <= 1 << 20);
        let err = stalled.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        let body = waiting.await.unwrap().unwrap();
        assert_eq!(body.len(), 600 << 10);
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(budget.reserved_bytes(), 0, "reservations are freed");
        // Small frames draw on their own pool: they pass while the large one is taken.
        let _hog = budget
            .large
            .permits
            .clone()
            .acquire_many_owned(1024)
            .await
            .unwrap();
        let small = read_budgeted_frame(&mut Cursor::new(frame(1000)), 8 << 20, &budget)
            .await
            .unwrap();
        assert_eq!(small.len(), 1000);
        drop(_hog);
        // ... but within it: two stalled 64 KiB frames take the small pool, and a third
        // small frame waits for one of them to time out.
        let stalled_small: Vec<_> = (0..2)
            .map(|_| {
                let budget = budget.clone();
                tokio::spawn(async move {
                    let mut io = Stalled(Cursor::new((64u32 << 10).to_be_bytes().to_vec()));
                    read_budgeted_frame(&mut io, 8 << 20, &budget).await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(budget.reserved_small_bytes(), 128 << 10);
        let started = tokio::time::Instant::now();
        let small = read_budgeted_frame(&mut Cursor::new(frame(1000)), 8 << 20, &budget)
            .await
            .unwrap();
        assert_eq!(small.len(), 1000);
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "read beyond the pool"
        );
        for stalled in stalled_small {
            let err = stalled.await.unwrap().unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        }
        assert_eq!(budget.reserved_small_bytes(), 0);
        // A frame larger than the whole budget can never be read: it times out.
        let err = read_budgeted_frame(&mut Cursor::new(frame(2 << 20)), 8 << 20, &budget)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn frames_round_trip_and_caps_hold() {
        futures::executor::block_on(async {
            let mut buf = Cursor::new(Vec::new());
            write_frame(&mut buf, b"hello").await.unwrap();
            let bytes = buf.into_inner();
            assert_eq!(&bytes[..4], &5u32.to_be_bytes());
            let got = read_frame(&mut Cursor::new(bytes.clone()), 5)
                .await
                .unwrap();
            assert_eq!(got, b"hello");
            let err = read_frame(&mut Cursor::new(bytes), 4).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains("exceeds the cap"), "{err}");
            // A huge announced length is refused before allocating.
            let mut huge = u32::MAX.to_be_bytes().to_vec();
            huge.extend_from_slice(b"x");
            let err = read_frame(&mut Cursor::new(huge), 1 << 20)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("exceeds the cap"), "{err}");
        });
    }

    #[test]
    fn malformed_cbor_is_invalid_data() {
        let err = decode::<mesh_proto::p2p::JobRequest>(&[0xff, 0x00, 0x13], 1024).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("malformed CBOR"), "{err}");
    }
}
