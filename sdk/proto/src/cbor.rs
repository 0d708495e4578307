//! The CBOR codec every Mesh binary message goes through, with a size cap on decoding.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest CBOR message [`from_slice`] accepts by default: bigger frames are refused before
/// any decoding, so a peer cannot make us allocate for a huge claimed length.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Why a CBOR message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CborError {
    /// The message is larger than the limit.
    #[error("CBOR message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The bytes are not valid CBOR for the expected type.
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    /// The value could not be encoded.
    #[error("CBOR encoding failed: {0}")]
    Encode(String),
}

/// Encode `value` as CBOR.
pub fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, CborError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| CborError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decode a CBOR message of at most [`MAX_MESSAGE_BYTES`].
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CborError> {
    from_slice_limited(bytes, MAX_MESSAGE_BYTES)
}

/// Decode a CBOR message of at most `limit` bytes.
pub fn from_slice_limited<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CborError> {
    if bytes.len() > limit {
        return Err(CborError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let mut reader = bytes;
    let value =
        ciborium::from_reader(&mut reader).map_err(|e| CborError::Malformed(e.to_string()))?;
    if !reader.is_empty() {
        return Err(CborError::Malformed(format!(
            "{} trailing bytes after the message",
            reader.len()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_oversized_and_malformed_input() {
        let big = vec![0u8; 100];
        assert!(matches!(
            from_slice_limited::<u32>(&big, 10),
            Err(CborError::TooLarge {
                size: 100,
                limit: 10
            })
        ));
        assert!(matches!(
            from_slice::<u32>(&[0xff, 0x00]),
            Err(CborError::Malformed(_))
        ));
        // A byte string claiming 2^63 bytes must fail cleanly, not allocate.
        let lying = [0x5b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(from_slice::<Vec<u8>>(&lying).is_err());
        let mut trailing = to_vec(&7u32).unwrap();
        trailing.push(0);
        assert!(matches!(
            from_slice::<u32>(&trailing),
            Err(CborError::Malformed(_))
        ));
    }
}
