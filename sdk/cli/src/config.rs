//! `mesh` configuration: `$XDG_CONFIG_HOME/mesh/config.toml` (server URL, token, default
//! network), overridden by `MESH_SERVER`, `MESH_TOKEN` and `MESH_NETWORK`, overridden by flags.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Environment variable overriding the server URL.
pub const SERVER_ENV: &str = "MESH_SERVER";
/// Environment variable overriding the token.
pub const TOKEN_ENV: &str = "MESH_TOKEN";
/// Environment variable overriding the default network.
pub const NETWORK_ENV: &str = "MESH_NETWORK";
/// Environment variable overriding the configuration file's path.
pub const CONFIG_ENV: &str = "MESH_CONFIG";

/// The stored configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    /// Control-plane URL, e.g. `http://127.0.0.1:7420`.
    pub server: Option<String>,
    /// Bearer token.
    pub token: Option<String>,
    /// Network used when `--network` is not given.
    pub network: Option<String>,
    /// Fingerprint of the control plane's self-signed TLS certificate (from the invite code
    /// or `login --tls-pin`): every connection must present exactly it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_pin: Option<mesh_proto::pin::Fingerprint>,
}

/// Where the configuration lives.
pub fn path() -> PathBuf {
    if let Some(path) = std::env::var_os(CONFIG_ENV) {
        return PathBuf::from(path);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("mesh").join("config.toml")
}

impl Config {
    /// Load the file (missing is empty), then apply environment overrides.
    pub fn load() -> Result<Config> {
        let path = path();
        let mut config: Config = match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Config::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        for (var, field) in [
            (SERVER_ENV, &mut config.server),
            (TOKEN_ENV, &mut config.token),
            (NETWORK_ENV, &mut config.network),
        ] {
            if let Ok(value) = std::env::var(var) {
                *field = Some(value);
            }
        }
        Ok(config)
    }

    /// Save to the file (mode 0600: it holds a token).
    pub fn save(&self) -> Result<PathBuf> {
        let path = path();
        mesh_fs::write_private(&path, toml::to_string(self)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}
