//! Ed25519 identities and domain-separated signatures.
//!
//! Every signature covers a domain tag and a network id, so a signed object of one purpose or
//! one network can never be replayed as another: the signed message is
//! `b"mesh/v1\0" || tag || 0x00 || network id (16 bytes) || payload`.

use crate::NetworkId;
use ed25519_dalek::Signer;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Multicodec prefix of an Ed25519 public key (`ed25519-pub`, varint 0xed).
const ED25519_PUB_CODEC: [u8; 2] = [0xed, 0x01];

/// What a signature is for. Part of every signed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignDomain {
    /// A device proves possession of its key when registering.
    Registration,
    /// A device heartbeat.
    Heartbeat,
    /// A control-plane-issued device certificate.
    DeviceCert,
    /// A control-plane-issued job ticket.
    JobTicket,
    /// An executor's receipt of a run.
    Receipt,
    /// A control-plane verification decision.
    CheckDecision,
}

impl SignDomain {
    fn tag(self) -> &'static [u8] {
        match self {
            SignDomain::Registration => b"registration",
            SignDomain::Heartbeat => b"heartbeat",
            SignDomain::DeviceCert => b"device-cert",
            SignDomain::JobTicket => b"job-ticket",
            SignDomain::Receipt => b"receipt",
            SignDomain::CheckDecision => b"check-decision",
        }
    }
}

fn signed_message(domain: SignDomain, network: &NetworkId, payload: &[u8]) -> Vec<u8> {
    let tag = domain.tag();
    let mut message = Vec::with_capacity(8 + tag.len() + 1 + 16 + payload.len());
    message.extend_from_slice(b"mesh/v1\0");
    message.extend_from_slice(tag);
    message.push(0);
    message.extend_from_slice(network.as_bytes());
    message.extend_from_slice(payload);
    message
}

/// A signature did not verify, or a key or signature is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The bytes are not a valid Ed25519 public key.
    #[error("invalid public key")]
    InvalidKey,
    /// The signature does not verify for this key, domain, network and payload.
    #[error("bad signature")]
    BadSignature,
    /// The text form could not be parsed.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// An Ed25519 public key: the identity of a device or of the control plane.
///
/// Text form: multibase base58btc of the multicodec-prefixed key (`z6Mk…`, as in `did:key`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wrap raw key bytes, checking they are a valid curve point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, SignatureError> {
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| SignatureError::InvalidKey)?;
        Ok(PublicKey(bytes))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The public key of a signing key.
    pub fn of(key: &SigningKey) -> Self {
        PublicKey(key.0.verifying_key().to_bytes())
    }

    /// Verify `signature` over `payload` for `domain` in `network`.
    pub fn verify(
        &self,
        domain: SignDomain,
        network: &NetworkId,
        payload: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&self.0)
            .map_err(|_| SignatureError::InvalidKey)?;
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(&signed_message(domain, network, payload), &signature)
            .map_err(|_| SignatureError::BadSignature)
    }

    /// The libp2p peer id of this key, in bytes: the identity multihash of its protobuf
    /// encoding (`libp2p` derives the same).
    pub fn peer_id_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
        bytes.extend_from_slice(&self.0);
        bytes
    }

    /// The libp2p peer id in its text form (`12D3KooW…`).
    pub fn peer_id(&self) -> String {
        bs58::encode(self.peer_id_bytes()).into_string()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = ED25519_PUB_CODEC.to_vec();
        bytes.extend_from_slice(&self.0);
        write!(f, "z{}", bs58::encode(bytes).into_string())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PublicKey {
    type Err = SignatureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let encoded = s
            .strip_prefix('z')
            .ok_or(SignatureError::Malformed("public key"))?;
        let bytes = bs58::decode(encoded)
            .into_vec()
            .map_err(|_| SignatureError::Malformed("public key"))?;
        let key = bytes
            .strip_prefix(&ED25519_PUB_CODEC[..])
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or(SignatureError::Malformed("public key"))?;
        PublicKey::from_bytes(key)
    }
}

/// A secret Ed25519 key. Text form: multibase base58btc of the 32-byte seed, prefixed with
/// the `ed25519-priv` multicodec (0x1300).
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// Multicodec prefix of an Ed25519 private key (`ed25519-priv`, varint 0x1300).
    const CODEC: [u8; 2] = [0x80, 0x26];

    /// A key from a 32-byte seed (use fresh randomness for a new key).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The 32-byte seed.
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::of(self)
    }

    /// Sign `payload` for `domain` in `network`.
    pub fn sign(&self, domain: SignDomain, network: &NetworkId, payload: &[u8]) -> Signature {
        Signature(
            self.0
                .sign(&signed_message(domain, network, payload))
                .to_bytes(),
        )
    }

    /// The multibase text form (a secret: store it with care).
    pub fn to_multibase(&self) -> String {
        let mut bytes = Self::CODEC.to_vec();
        bytes.extend_from_slice(&self.seed());
        format!("z{}", bs58::encode(bytes).into_string())
    }

    /// Parse the multibase text form.
    pub fn from_multibase(s: &str) -> Result<Self, SignatureError> {
        let encoded = s
            .strip_prefix('z')
            .ok_or(SignatureError::Malformed("private key"))?;
        let bytes = bs58::decode(encoded)
            .into_vec()
            .map_err(|_| SignatureError::Malformed("private key"))?;
        let seed = bytes
            .strip_prefix(&Self::CODEC[..])
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or(SignatureError::Malformed("private key"))?;
        Ok(SigningKey::from_seed(seed))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public_key())
    }
}

/// An Ed25519 signature. Text form: 128 hex digits; CBOR: 64 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 64]);

impl Signature {
    /// Wrap raw signature bytes.
    pub fn from_bytes(bytes: [u8; 64]) -> Self {
        Signature(bytes)
    }

    /// The raw 64 bytes.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", &self.to_string()[..16])
    }
}

impl FromStr for Signature {
    type Err = SignatureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 128 || !s.is_ascii() {
            return Err(SignatureError::Malformed("signature"));
        }
        let mut out = [0u8; 64];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
                .map_err(|_| SignatureError::Malformed("signature"))?;
        }
        Ok(Signature(out))
    }
}

macro_rules! text_or_bytes_serde {
    ($ty:ident, $len:literal, $parse:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.collect_str(self)
                } else {
                    serializer.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                if deserializer.is_human_readable() {
                    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                    text.parse().map_err(serde::de::Error::custom)
                } else {
                    let bytes: serde_bytes::ByteBuf =
                        serde_bytes::ByteBuf::deserialize(deserializer)?;
                    let array: [u8; $len] = bytes.as_slice().try_into().map_err(|_| {
                        serde::de::Error::invalid_length(bytes.len(), &stringify!($len))
                    })?;
                    #[allow(clippy::redundant_closure_call)]
                    ($parse)(array).map_err(serde::de::Error::custom)
                }
            }
        }
    };
}

text_or_bytes_serde!(PublicKey, 32, PublicKey::from_bytes);
text_or_bytes_serde!(Signature, 64, |b| Ok::<_, SignatureError>(Signature(b)));

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_seed([seed; 32])
    }

    #[test]
    fn signatures_are_bound_to_domain_and_network() {
        let k = key(1);
        let net = NetworkId::from_bytes([1; 16]);
        let other_net = NetworkId::from_bytes([2; 16]);
        let sig = k.sign(SignDomain::Heartbeat, &net, b"payload");
        let public = k.public_key();
        assert_eq!(
            public.verify(SignDomain::Heartbeat, &net, b"payload", &sig),
            Ok(())
        );
        assert!(
            public
                .verify(SignDomain::Receipt, &net, b"payload", &sig)
                .is_err()
        );
        assert!(
            public
                .verify(SignDomain::Heartbeat, &other_net, b"payload", &sig)
                .is_err()
        );
        assert!(
            public
                .verify(SignDomain::Heartbeat, &net, b"payloaD", &sig)
                .is_err()
        );
        assert!(
            key(2)
                .public_key()
                .verify(SignDomain::Heartbeat, &net, b"payload", &sig)
                .is_err()
        );
    }

    #[test]
    fn text_forms_round_trip() {
        let k = key(7);
        let public = k.public_key();
        let text = public.to_string();
        assert!(text.starts_with("z6Mk"), "{text}");
        assert_eq!(text.parse::<PublicKey>().unwrap(), public);
        assert!("z6MkInvalid".parse::<PublicKey>().is_err());
        let secret = k.to_multibase();
        assert_eq!(
            SigningKey::from_multibase(&secret).unwrap().public_key(),
            public
        );
        assert!(
            public.peer_id().starts_with("12D3KooW"),
            "{}",
            public.peer_id()
        );
        let sig = k.sign(
            SignDomain::Registration,
            &NetworkId::from_bytes([0; 16]),
            b"x",
        );
        assert_eq!(sig.to_string().parse::<Signature>().unwrap(), sig);
        let json = serde_json::to_string(&public).unwrap();
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), public);
        let cbor = crate::cbor::to_vec(&sig).unwrap();
        assert_eq!(crate::cbor::from_slice::<Signature>(&cbor).unwrap(), sig);
    }
}
