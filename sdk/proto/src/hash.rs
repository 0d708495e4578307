use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A BLAKE3 content hash: the identity of components, models, inputs and outputs.
///
/// Text form: `b3:` followed by 64 lowercase hex digits. CBOR form: a 32-byte byte string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Blake3Hash([u8; 32]);

impl Blake3Hash {
    /// The text-form prefix.
    pub const PREFIX: &'static str = "b3:";

    /// Hash `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Blake3Hash(*blake3::hash(bytes).as_bytes())
    }

    /// Wrap a raw digest.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Blake3Hash(bytes)
    }

    /// The raw digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 hex digits, without the prefix (used for file names).
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Parse 64 hex digits without the prefix.
    pub fn from_hex(hex: &str) -> Result<Self, ParseHashError> {
        blake3::Hash::from_hex(hex)
            .map(|h| Blake3Hash(*h.as_bytes()))
            .map_err(|_| ParseHashError(hex.chars().take(80).collect()))
    }
}

impl From<blake3::Hash> for Blake3Hash {
    fn from(hash: blake3::Hash) -> Self {
        Blake3Hash(*hash.as_bytes())
    }
}

impl fmt::Display for Blake3Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.to_hex())
    }
}

impl fmt::Debug for Blake3Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The text was not `b3:` followed by 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a blake3 hash (expected b3:<64 hex digits>): {0:?}")]
pub struct ParseHashError(String);

impl FromStr for Blake3Hash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .strip_prefix(Self::PREFIX)
            .ok_or_else(|| ParseHashError(s.chars().take(80).collect()))?;
        Self::from_hex(hex)
    }
}

impl Serialize for Blake3Hash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Blake3Hash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Blake3Hash;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a blake3 hash (b3:<hex> or 32 bytes)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Blake3Hash, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blake3Hash, E> {
                let bytes: [u8; 32] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &"32 bytes"))?;
                Ok(Blake3Hash(bytes))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(Visitor)
        } else {
            deserializer.deserialize_bytes(Visitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        let hash = Blake3Hash::of(b"mesh");
        let text = hash.to_string();
        assert!(text.starts_with("b3:") && text.len() == 67);
        assert_eq!(text.parse::<Blake3Hash>().unwrap(), hash);
        assert!("b3:zz".parse::<Blake3Hash>().is_err());
        assert!(
            hash.to_hex().parse::<Blake3Hash>().is_err(),
            "prefix is required"
        );
    }

    #[test]
    fn json_is_text_and_cbor_is_bytes() {
        let hash = Blake3Hash::of(b"");
        let json = serde_json::to_string(&hash).unwrap();
        assert_eq!(
            json,
            "\"b3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\""
        );
        let cbor = crate::cbor::to_vec(&hash).unwrap();
        assert_eq!(cbor.len(), 34, "0x58 0x20 + 32 bytes");
        assert_eq!(crate::cbor::from_slice::<Blake3Hash>(&cbor).unwrap(), hash);
    }
}
