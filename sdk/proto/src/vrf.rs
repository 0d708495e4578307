//! ECVRF-EDWARDS25519-SHA512-TAI, the verifiable random function of RFC 9381 (suite string
//! `0x03`: edwards25519, SHA-512, try-and-increment hashing to the curve).
//!
//! The control plane proves, for each accepted receipt, a pseudorandom output that only its
//! secret key can compute and that anyone holding its public key can check. The output decides
//! whether the job is re-executed ([`crate::verification`]). The implementation follows RFC
//! 9381 section 5 step by step on `curve25519-dalek`; the tests run the RFC's published
//! vectors (appendix B.3).

use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::{Scalar, clamp_integer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

/// The RFC 9381 name of the suite implemented here.
pub const SUITE: &str = "ECVRF-EDWARDS25519-SHA512-TAI";
const SUITE_STRING: u8 = 0x03;
/// Length of a proof: Gamma (32) || c (16) || s (32).
pub const PROOF_LEN: usize = 80;

/// Why a VRF key or proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VrfError {
    /// The public key is not a canonical curve point, or has small order.
    #[error("invalid VRF public key")]
    InvalidKey,
    /// The proof is malformed (length, point encoding, unreduced scalar).
    #[error("malformed VRF proof")]
    MalformedProof,
    /// The proof does not verify for this key and input.
    #[error("the VRF proof does not verify")]
    InvalidProof,
    /// Text form that is not hex of the right length.
    #[error("not a hex VRF value of {0} bytes")]
    Encoding(usize),
}

/// A VRF secret key (the 32-byte seed, expanded as for Ed25519).
pub struct VrfSecretKey {
    seed: [u8; 32],
    scalar: Scalar,
    public: VrfPublicKey,
}

impl std::fmt::Debug for VrfSecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VrfSecretKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// A VRF public key: the compressed point `x·B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VrfPublicKey(pub [u8; 32]);

/// A VRF proof `pi` (80 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VrfProof(pub [u8; PROOF_LEN]);

/// A VRF output `beta` (64 bytes of SHA-512).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VrfOutput(pub [u8; 64]);

impl VrfSecretKey {
    /// The key of a 32-byte seed (`SK` in RFC 9381).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let hashed: [u8; 64] = Sha512::digest(seed).into();
        let scalar =
            Scalar::from_bytes_mod_order(clamp_integer(hashed[..32].try_into().expect("32")));
        let public = VrfPublicKey((&scalar * ED25519_BASEPOINT_TABLE).compress().to_bytes());
        VrfSecretKey {
            seed,
            scalar,
            public,
        }
    }

    /// The seed this key was made from.
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// The public key.
    pub fn public_key(&self) -> VrfPublicKey {
        self.public
    }

    /// Prove the VRF on `alpha` (RFC 9381 section 5.1).
    pub fn prove(&self, alpha: &[u8]) -> VrfProof {
        let h = encode_to_curve(&self.public.0, alpha)
            .expect("try-and-increment finds a point within 256 tries (fails with p < 2^-256)");
        let h_string = h.compress().to_bytes();
        let gamma = self.scalar * h;
        let hashed: [u8; 64] = Sha512::digest(self.seed).into();
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(&hashed[32..])
                .chain_update(h_string)
                .finalize()
                .into(),
        );
        let c = challenge(
            &self.public.0,
            &h_string,
            &gamma.compress().to_bytes(),
            &(&k * ED25519_BASEPOINT_TABLE).compress().to_bytes(),
            &(k * h).compress().to_bytes(),
        );
        let s = k + challenge_scalar(&c) * self.scalar;
        let mut pi = [0u8; PROOF_LEN];
        pi[..32].copy_from_slice(gamma.compress().as_bytes());
        pi[32..48].copy_from_slice(&c);
        pi[48..].copy_from_slice(s.as_bytes());
        VrfProof(pi)
    }
}

impl VrfPublicKey {
    /// Verify `proof` on `alpha` and return its output (RFC 9381 section 5.3, with
    /// `validate_key`).
    pub fn verify(&self, alpha: &[u8], proof: &VrfProof) -> Result<VrfOutput, VrfError> {
        let y = decode_point(&self.0).ok_or(VrfError::InvalidKey)?;
        if y.is_small_order() {
            return Err(VrfError::InvalidKey);
        }
        let (gamma, c, s) = decode_proof(proof)?;
        let h = encode_to_curve(&self.0, alpha).ok_or(VrfError::InvalidProof)?;
        let c_scalar = challenge_scalar(&c);
        let u = EdwardsPoint::vartime_double_scalar_mul_basepoint(&-c_scalar, &y, &s);
        let v = s * h - c_scalar * gamma;
        let expected = challenge(
            &self.0,
            &h.compress().to_bytes(),
            &proof.0[..32].try_into().expect("32"),
            &u.compress().to_bytes(),
            &v.compress().to_bytes(),
        );
        if expected != c {
            return Err(VrfError::InvalidProof);
        }
        Ok(gamma_to_hash(&gamma))
    }
}

impl VrfProof {
    /// The output of a proof (`ECVRF_proof_to_hash`). Only meaningful once the proof has been
    /// verified: use [`VrfPublicKey::verify`], which returns it.
    pub fn to_hash(&self) -> Result<VrfOutput, VrfError> {
        let (gamma, _, _) = decode_proof(self)?;
        Ok(gamma_to_hash(&gamma))
    }
}

fn decode_proof(proof: &VrfProof) -> Result<(EdwardsPoint, [u8; 16], Scalar), VrfError> {
    let gamma =
        decode_point(&proof.0[..32].try_into().expect("32")).ok_or(VrfError::MalformedProof)?;
    let c: [u8; 16] = proof.0[32..48].try_into().expect("16");
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(
        proof.0[48..].try_into().expect("32"),
    ))
    .ok_or(VrfError::MalformedProof)?;
    Ok((gamma, c, s))
}

/// RFC 8032 point decoding, strict: the encoding must be canonical (y < p, no sign bit on
/// x = 0), which `curve25519-dalek`'s decompression alone does not insist on.
fn decode_point(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    let point = CompressedEdwardsY(*bytes).decompress()?;
    (point.compress().as_bytes() == bytes).then_some(point)
}

/// `ECVRF_encode_to_curve_try_and_increment` with the public key as salt.
fn encode_to_curve(public: &[u8; 32], alpha: &[u8]) -> Option<EdwardsPoint> {
    (0..=255u8).find_map(|ctr| {
        let hash = Sha512::new()
            .chain_update([SUITE_STRING, 0x01])
            .chain_update(public)
            .chain_update(alpha)
            .chain_update([ctr, 0x00])
            .finalize();
        decode_point(&hash[..32].try_into().expect("32")).map(|p| p.mul_by_cofactor())
    })
}

/// `ECVRF_challenge_generation`: the first 16 bytes of the hash of the five points.
fn challenge(
    p1: &[u8; 32],
    p2: &[u8; 32],
    p3: &[u8; 32],
    p4: &[u8; 32],
    p5: &[u8; 32],
) -> [u8; 16] {
    let hash = Sha512::new()
        .chain_update([SUITE_STRING, 0x02])
        .chain_update(p1)
        .chain_update(p2)
        .chain_update(p3)
        .chain_update(p4)
        .chain_update(p5)
        .chain_update([0x00])
        .finalize();
    hash[..16].try_into().expect("16")
}

fn challenge_scalar(c: &[u8; 16]) -> Scalar {
    let mut wide = [0u8; 32];
    wide[..16].copy_from_slice(c);
    Scalar::from_bytes_mod_order(wide)
}

fn gamma_to_hash(gamma: &EdwardsPoint) -> VrfOutput {
    VrfOutput(
        Sha512::new()
            .chain_update([SUITE_STRING, 0x03])
            .chain_update(gamma.mul_by_cofactor().compress().as_bytes())
            .chain_update([0x00])
            .finalize()
            .into(),
    )
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex<const N: usize>(text: &str) -> Result<[u8; N], VrfError> {
    if text.len() != 2 * N || !text.is_ascii() {
        return Err(VrfError::Encoding(N));
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte =
            u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| VrfError::Encoding(N))?;
    }
    Ok(out)
}

macro_rules! hex_text {
    ($ty:ident, $len:expr) => {
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&to_hex(&self.0))
            }
        }
        impl std::str::FromStr for $ty {
            type Err = VrfError;
            fn from_str(s: &str) -> Result<Self, VrfError> {
                from_hex::<$len>(s).map($ty)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
hex_text!(VrfPublicKey, 32);
hex_text!(VrfProof, 80);
hex_text!(VrfOutput, 64);

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9381 appendix B.3, examples 16, 17 and 18: (SK, PK, alpha, pi, beta).
    const VECTORS: [(&str, &str, &str, &str, &str); 3] = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "8657106690b5526245a92b003bb079ccd1a92130477671f6fc01ad16f26f723f26f8a57ccaed74ee1b190bed1f479d9727d2d0f9b005a6e456a35d4fb0daab1268a1b0db10836d9826a528ca76567805",
            "90cf1df3b703cce59e2a35b925d411164068269d7b2d29f3301c03dd757876ff66b71dda49d2de59d03450451af026798e8f81cd2e333de5cdf4f3e140fdd8ae",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "f3141cd382dc42909d19ec5110469e4feae18300e94f304590abdced48aed5933bf0864a62558b3ed7f2fea45c92a465301b3bbf5e3e54ddf2d935be3b67926da3ef39226bbc355bdc9850112c8f4b02",
            "eb4440665d3891d668e7e0fcaf587f1b4bd7fbfe99d0eb2211ccec90496310eb5e33821bc613efb94db5e5b54c70a848a0bef4553a41befc57663b56373a5031",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "9bc0f79119cc5604bf02d23b4caede71393cedfbb191434dd016d30177ccbf8096bb474e53895c362d8628ee9f9ea3c0e52c7a5c691b6c18c9979866568add7a2d41b00b05081ed0f58ee5e31b3a970e",
            "645427e5d00c62a23fb703732fa5d892940935942101e456ecca7bb217c61c452118fec1219202a0edcf038bb6373241578be7217ba85a2687f7a0310b2df19f",
        ),
    ];

    fn bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc9381_vectors_prove_and_verify() {
        for (sk, pk, alpha, pi, beta) in VECTORS {
            let key = VrfSecretKey::from_seed(bytes(sk).try_into().unwrap());
            assert_eq!(key.public_key().to_string(), pk);
            let proof = key.prove(&bytes(alpha));
            assert_eq!(proof.to_string(), pi);
            assert_eq!(proof.to_hash().unwrap().to_string(), beta);
            let output = key.public_key().verify(&bytes(alpha), &proof).unwrap();
            assert_eq!(output.to_string(), beta);
        }
    }

    #[test]
    fn invalid_proofs_are_rejected() {
        let (_, pk, alpha, pi, _) = VECTORS[0];
        let key: VrfPublicKey = pk.parse().unwrap();
        let proof: VrfProof = pi.parse().unwrap();
        // Another input.
        assert_eq!(key.verify(b"\x00", &proof), Err(VrfError::InvalidProof));
        // One bit of c flipped.
        let mut bad = proof;
        bad.0[32] ^= 1;
        assert_eq!(key.verify(&bytes(alpha), &bad), Err(VrfError::InvalidProof));
        // s not reduced below the group order.
        let mut bad = proof;
        bad.0[48..].fill(0xff);
        assert_eq!(
            key.verify(&bytes(alpha), &bad),
            Err(VrfError::MalformedProof)
        );
        // Gamma not a canonical encoding (x = 0 with the sign bit set).
        let mut bad = proof;
        bad.0[..32].copy_from_slice(&bytes(
            "0100000000000000000000000000000000000000000000000000000000000080",
        ));
        assert_eq!(
            key.verify(&bytes(alpha), &bad),
            Err(VrfError::MalformedProof)
        );
        // Another key's proof.
        let other: VrfPublicKey = VECTORS[1].1.parse().unwrap();
        assert_eq!(
            other.verify(&bytes(alpha), &proof),
            Err(VrfError::InvalidProof)
        );
        // Low-order public key (the identity).
        let identity: VrfPublicKey =
            "0100000000000000000000000000000000000000000000000000000000000000"
                .parse()
                .unwrap();
        assert_eq!(
            identity.verify(&bytes(alpha), &proof),
            Err(VrfError::InvalidKey)
        );
        // Text forms of the wrong length.
        assert!("abcd".parse::<VrfProof>().is_err());
        assert!(pi[..158].parse::<VrfProof>().is_err());
    }
}
