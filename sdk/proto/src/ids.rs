//! Identifiers of the things Mesh names: networks, people, devices, jobs, tokens, invites.
//!
//! Each is 16 random bytes with a self-describing text form (`dev_…` for devices, like
//! Tailscale's `nodekey:`), JSON as that text and CBOR as raw bytes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// The text was not a valid identifier of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {kind} id: {text:?}")]
pub struct ParseIdError {
    /// The kind of id expected.
    pub kind: &'static str,
    /// The text (truncated).
    pub text: String,
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 16]);

        impl $name {
            /// Text prefix of this kind of id.
            pub const PREFIX: &'static str = $prefix;

            /// Wrap raw bytes (use fresh random bytes for a new id).
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                $name(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($prefix)?;
                f.write_str("_")?;
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let error = || ParseIdError {
                    kind: $kind,
                    text: s.chars().take(64).collect(),
                };
                let hex = s
                    .strip_prefix($prefix)
                    .and_then(|rest| rest.strip_prefix('_'))
                    .ok_or_else(error)?;
                parse_hex16(hex).map($name).ok_or_else(error)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.collect_str(self)
                } else {
                    serializer.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                if deserializer.is_human_readable() {
                    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                    text.parse().map_err(serde::de::Error::custom)
                } else {
                    let bytes = serde_bytes_16(deserializer)?;
                    Ok($name(bytes))
                }
            }
        }
    };
}

fn parse_hex16(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn serde_bytes_16<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 16], D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = [u8; 16];
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("16 bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<[u8; 16], E> {
            v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
        }
    }
    deserializer.deserialize_bytes(Visitor)
}

id_type!(
    /// A Mesh network (a tailnet): the unit of membership, scheduling and credits.
    NetworkId, "net", "network"
);
id_type!(
    /// A person: a member of one or more networks.
    PersonId, "usr", "person"
);
id_type!(
    /// A device: a machine that runs `mesh-host` and executes jobs.
    DeviceId, "dev", "device"
);
id_type!(
    /// A job: one run of a workload on an input.
    JobId, "job", "job"
);
id_type!(
    /// An API token (the id, not the secret).
    TokenId, "tok", "token"
);
id_type!(
    /// An invite (the id, not the code).
    InviteId, "inv", "invite"
);
id_type!(
    /// A batch: a large input split into many jobs across the network's devices.
    BatchId, "bat", "batch"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_binary_forms() {
        let id = DeviceId::from_bytes([0xab; 16]);
        let text = id.to_string();
        assert_eq!(text, "dev_abababababababababababababababab");
        assert_eq!(text.parse::<DeviceId>().unwrap(), id);
        assert!(text.parse::<NetworkId>().is_err(), "prefix is checked");
        assert!(
            "dev_ABABABABABABABABABABABABABABABAB"
                .parse::<DeviceId>()
                .is_err()
        );
        assert!("dev_abab".parse::<DeviceId>().is_err());
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{text}\""));
        let cbor = crate::cbor::to_vec(&id).unwrap();
        assert_eq!(cbor.len(), 17);
        assert_eq!(crate::cbor::from_slice::<DeviceId>(&cbor).unwrap(), id);
    }
}
