//! `mesh-relay`: flag parsing, configuration and tracing around [`mesh_relay::Relay`].

use anyhow::{Context, Result};
use clap::Parser;
use mesh_relay::{Config, Relay};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mesh-relay",
    version,
    about = "The Mesh relay (Circuit Relay v2)"
)]
struct Cli {
    /// Configuration file (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (repeatable).
    #[arg(long)]
    listen: Vec<String>,
    /// Address others reach this relay at (repeatable). Without one the relay protocol is not
    /// offered, so the listen addresses are used when none is given.
    #[arg(long)]
    external_address: Vec<String>,
    /// The control plane's URL.
    #[arg(long, env = "MESH_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// Fingerprint of the control plane's self-signed TLS certificate.
    #[arg(long, env = "MESH_CONTROL_PLANE_PIN")]
    control_plane_pin: Option<mesh_proto::pin::Fingerprint>,
    /// The secret the control plane expects from relays.
    #[arg(long, env = "MESH_RELAY_SECRET", hide_env_values = true)]
    relay_secret: Option<String>,
    /// Directory for the relay's identity key.
    #[arg(long, env = "MESH_RELAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Write peer id and addresses as JSON here once listening (for scripts and tests).
    #[arg(long)]
    info_file: Option<PathBuf>,
    /// Seconds between allow-list polls (the bound on how long a revoked device keeps
    /// relay service).
    #[arg(long)]
    allow_list_interval: Option<u64>,
    /// Print the relay's peer id (creating its key if needed) and exit.
    #[arg(long)]
    print_peer_id: bool,
}

fn load_config(cli: &Cli) -> Result<Config> {
    let mut config: Config = match &cli.config {
        Some(path) => toml::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?,
        None => Config::default(),
    };
    if !cli.listen.is_empty() {
        config.listen = cli.listen.clone();
    }
    if !cli.external_address.is_empty() {
        config.external_addresses = cli.external_address.clone();
    }
    if let Some(url) = &cli.control_plane {
        config.control_plane = url.clone();
    }
    if cli.relay_secret.is_some() {
        config.relay_secret = cli.relay_secret.clone();
    }
    if cli.control_plane_pin.is_some() {
        config.control_plane_certificate = cli.control_plane_pin;
    }
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(secs) = cli.allow_list_interval {
        config.allow_list_interval_secs = secs;
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = load_config(&cli)?;
    if cli.print_peer_id {
        let key = mesh_relay::load_or_create_key(&config.data_dir)?;
        println!("{}", key.public_key().peer_id());
        return Ok(());
    }
    let mut relay = Relay::spawn(config).await?;
    eprintln!("mesh-relay {}", relay.peer_id());
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        if let Some(path) = &cli.info_file {
            write_info(path, &relay)?;
        }
        tokio::select! {
            _ = &mut shutdown => break,
            changed = relay.listen_addrs_changed() => if !changed { break },
        }
    }
    eprintln!("shutting down");
    relay.shutdown().await;
    Ok(())
}

/// Peer id and addresses as JSON, for scripts and tests.
fn write_info(path: &PathBuf, relay: &Relay) -> Result<()> {
    let info = serde_json::json!({
        "peer_id": relay.peer_id().to_string(),
        "listen": relay.listen_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "external": relay.external_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    });
    std::fs::write(path, info.to_string()).with_context(|| format!("writing {}", path.display()))
}
