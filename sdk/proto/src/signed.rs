//! `Signed<T>`: a value encoded as CBOR with a domain-separated signature over those bytes.
//!
//! The signature covers the exact bytes carried, so verification never depends on
//! re-encoding. JSON form: `{"payload": "<base64 CBOR>", "signature": "<hex>"}`.

use crate::NetworkId;
use crate::cbor::{self, CborError};
use crate::identity::{PublicKey, SignDomain, Signature, SignatureError, SigningKey};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::marker::PhantomData;

/// Largest signed payload accepted: certificates, tickets and receipts are small.
pub const MAX_SIGNED_PAYLOAD_BYTES: usize = 64 << 10;

/// Why a signed value was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignedError {
    /// The payload is not valid CBOR for the expected type.
    #[error(transparent)]
    Cbor(#[from] CborError),
    /// The signature does not verify.
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

/// A CBOR-encoded `T` and a signature over it.
pub struct Signed<T> {
    payload: Vec<u8>,
    signature: Signature,
    _value: PhantomData<fn() -> T>,
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Signed {
            payload: self.payload.clone(),
            signature: self.signature,
            _value: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed")
            .field("payload_bytes", &self.payload.len())
            .field("signature", &self.signature)
            .finish()
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.payload == other.payload && self.signature == other.signature
    }
}

impl<T: Serialize + DeserializeOwned> Signed<T> {
    /// Encode and sign `value`.
    pub fn sign(
        value: &T,
        key: &SigningKey,
        domain: SignDomain,
        network: &NetworkId,
    ) -> Result<Self, SignedError> {
        let payload = cbor::to_vec(value)?;
        let signature = key.sign(domain, network, &payload);
        Ok(Signed {
            payload,
            signature,
            _value: PhantomData,
        })
    }

    /// Check the signature, then decode.
    pub fn verify(
        &self,
        key: &PublicKey,
        domain: SignDomain,
        network: &NetworkId,
    ) -> Result<T, SignedError> {
        key.verify(domain, network, &self.payload, &self.signature)?;
        Ok(cbor::from_slice_limited(
            &self.payload,
            MAX_SIGNED_PAYLOAD_BYTES,
        )?)
    }

    /// Decode without checking the signature (to learn which key and network to verify
    /// against). Never act on the result before [`Signed::verify`].
    pub fn peek(&self) -> Result<T, CborError> {
        cbor::from_slice_limited(&self.payload, MAX_SIGNED_PAYLOAD_BYTES)
    }

    /// The signed bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// BLAKE3 of payload and signature: the identity of this signed object.
    pub fn hash(&self) -> crate::Blake3Hash {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.payload);
        hasher.update(self.signature.as_bytes());
        hasher.finalize().into()
    }
}

#[derive(Serialize, Deserialize)]
struct Wire<P, S> {
    payload: P,
    signature: S,
}

impl<T> Serialize for Signed<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            Wire {
                payload: base64::engine::general_purpose::STANDARD.encode(&self.payload),
                signature: self.signature,
            }
            .serialize(serializer)
        } else {
            Wire {
                payload: serde_bytes::Bytes::new(&self.payload),
                signature: self.signature,
            }
            .serialize(serializer)
        }
    }
}

impl<'de, T> Deserialize<'de> for Signed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (payload, signature) = if deserializer.is_human_readable() {
            let wire = Wire::<String, Signature>::deserialize(deserializer)?;
            let payload = base64::engine::general_purpose::STANDARD
                .decode(wire.payload)
                .map_err(serde::de::Error::custom)?;
            (payload, wire.signature)
        } else {
            let wire = Wire::<serde_bytes::ByteBuf, Signature>::deserialize(deserializer)?;
            (wire.payload.into_vec(), wire.signature)
        };
        if payload.len() > MAX_SIGNED_PAYLOAD_BYTES {
            return Err(serde::de::Error::custom("signed payload too large"));
        }
        Ok(Signed {
            payload,
            signature,
            _value: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Note {
        text: String,
    }

    #[test]
    fn verify_checks_key_domain_network_and_bytes() {
        let key = SigningKey::from_seed([3; 32]);
        let net = NetworkId::from_bytes([9; 16]);
        let note = Note { text: "hi".into() };
        let signed = Signed::sign(&note, &key, SignDomain::Receipt, &net).unwrap();
        assert_eq!(
            signed
                .verify(&key.public_key(), SignDomain::Receipt, &net)
                .unwrap(),
            note
        );
        assert!(
            signed
                .verify(&key.public_key(), SignDomain::JobTicket, &net)
                .is_err()
        );

        // JSON round trip keeps the exact bytes.
        let json = serde_json::to_string(&signed).unwrap();
        let back: Signed<Note> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, signed);

        // A tampered payload fails.
        let mut tampered = signed.clone();
        tampered.payload[3] ^= 1;
        assert!(matches!(
            tampered.verify(&key.public_key(), SignDomain::Receipt, &net),
            Err(SignedError::Signature(_))
        ));
        // Garbage JSON is a clear error.
        assert!(
            serde_json::from_str::<Signed<Note>>(r#"{"payload":"!!","signature":"00"}"#).is_err()
        );
    }
}
