//! Pins: short fingerprints an invite code carries, so that `join` and `login` can tell the
//! control plane that made the invite from a substitute, even over a channel they do not yet
//! trust. A code is `mesh-invite-<secret>[.k<key>][.c<certificate>]`: the control plane knows
//! only the secret (it stores its hash); `k` pins its signing key, `c` its TLS certificate
//! (when it is self-signed, so no authority vouches for it).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A 128-bit BLAKE3 fingerprint: of a certificate's DER, or of a public key's bytes. 128 bits
/// is what a second preimage would cost to forge.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// The fingerprint of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let hash = blake3::hash(bytes);
        Fingerprint(hash.as_bytes()[..16].try_into().expect("16 bytes"))
    }

    /// The fingerprint of a public key.
    pub fn of_key(key: &crate::PublicKey) -> Self {
        Fingerprint::of(key.as_bytes())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A fingerprint that is not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a fingerprint (32 hex digits): {0:?}")]
pub struct ParseFingerprintError(pub String);

impl FromStr for Fingerprint {
    type Err = ParseFingerprintError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseFingerprintError(s.chars().take(40).collect());
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What an invite code pins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pins {
    /// The control plane's signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Fingerprint>,
    /// Its TLS certificate (self-signed ones only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Fingerprint>,
}

/// An invite code with a malformed pin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the invite code's pins are malformed: {0}")]
pub struct PinError(String);

/// Split an invite code into what the control plane knows (`mesh-invite-<secret>`) and its
/// pins. A code without pins (made by an older control plane) has none.
pub fn split_invite_code(code: &str) -> Result<(&str, Pins), PinError> {
    let mut parts = code.trim().split('.');
    let secret = parts.next().unwrap_or_default();
    let mut pins = Pins::default();
    for part in parts {
        let (slot, value) = match part.split_at_checked(1) {
            Some(("k", v)) => (&mut pins.key, v),
            Some(("c", v)) => (&mut pins.certificate, v),
            _ => return Err(PinError(format!("unknown part {part:?}"))),
        };
        if slot.is_some() {
            return Err(PinError(format!("{part:?} appears twice")));
        }
        *slot = Some(
            value
                .parse()
                .map_err(|e: ParseFingerprintError| PinError(e.to_string()))?,
        );
    }
    Ok((secret, pins))
}

/// The invite code for `secret` (as [`split_invite_code`] returns it) carrying `pins`.
pub fn invite_code(secret: &str, pins: &Pins) -> String {
    let mut code = secret.to_string();
    if let Some(key) = pins.key {
        code.push_str(&format!(".k{key}"));
    }
    if let Some(certificate) = pins.certificate {
        code.push_str(&format!(".c{certificate}"));
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_carry_their_pins_and_round_trip() {
        let key = Fingerprint::of(b"key");
        let certificate = Fingerprint::of(b"certificate");
        let pins = Pins {
            key: Some(key),
            certificate: Some(certificate),
        };
        let code = invite_code("mesh-invite-abc", &pins);
        assert_eq!(split_invite_code(&code).unwrap(), ("mesh-invite-abc", pins));
        let only_key = invite_code(
            "mesh-invite-abc",
            &Pins {
                key: Some(key),
                certificate: None,
            },
        );
        assert_eq!(split_invite_code(&only_key).unwrap().1.certificate, None);
        assert_eq!(
            split_invite_code("mesh-invite-abc").unwrap(),
            ("mesh-invite-abc", Pins::default())
        );
        for bad in [
            "mesh-invite-abc.x00",
            "mesh-invite-abc.kzz",
            &format!("mesh-invite-abc.k{key}.k{key}"),
            "mesh-invite-abc.k",
            "mesh-invite-abc.",
        ] {
            assert!(split_invite_code(bad).is_err(), "{bad}");
        }
        assert_eq!(key.to_string().parse::<Fingerprint>().unwrap(), key);
    }
}
