//! Length-prefixed CBOR frames for request-response, with a cap per direction checked
//! before anything is read into memory.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of CBOR. An oversized
//! length or malformed CBOR fails the stream with `InvalidData` and a message saying which.

use futures::prelude::*;
use libp2p::StreamProtocol;
use mesh_proto::cbor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io;
use std::marker::PhantomData;

/// A request-response codec for `Req`/`Resp` with frame caps.
pub struct FramedCbor<Req, Resp> {
    max_request: usize,
    max_response: usize,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> FramedCbor<Req, Resp> {
    /// A codec accepting requests up to `max_request` and responses up to `max_response`
    /// bytes.
    pub fn new(max_request: usize, max_response: usize) -> Self {
        FramedCbor {
            max_request,
            max_response,
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for FramedCbor<Req, Resp> {
    fn clone(&self) -> Self {
        FramedCbor::new(self.max_request, self.max_response)
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
        let request = match read_frame(io, self.max_request).await {
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
