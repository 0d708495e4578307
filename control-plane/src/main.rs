//! `mesh-control-plane`: serve the Mesh control plane, or bootstrap its first person.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mesh_control_plane::{Config, Server};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Environment variable with the PostgreSQL URL (instead of `--database-url`).
const DATABASE_URL_ENV: &str = "MESH_DATABASE_URL";

#[derive(Parser)]
#[command(
    name = "mesh-control-plane",
    version,
    about = "The Mesh coordination server"
)]
struct Cli {
    /// Data directory for the embedded SQLite database.
    #[arg(
        long,
        global = true,
        default_value = "mesh-data",
        env = "MESH_DATA_DIR"
    )]
    data_dir: PathBuf,
    /// PostgreSQL URL (postgres://…); SQLite in the data directory when absent.
    #[arg(long, global = true, env = DATABASE_URL_ENV)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7420")]
        listen: SocketAddr,
        /// Configuration file (TOML, see example.config.toml); flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Write the bound address to this file once listening (for scripts and tests).
        #[arg(long)]
        addr_file: Option<PathBuf>,
        /// Relay multiaddr handed to devices and used by the gateway (repeatable).
        #[arg(long = "relay")]
        relays: Vec<String>,
        /// Secret relays present to fetch the allow-list (at least 32 characters).
        #[arg(long, env = "MESH_RELAY_SECRET", hide_env_values = true)]
        relay_secret: Option<String>,
        /// Token a metrics scraper presents for `/metrics` (at least 32 characters); without
        /// one, `/metrics` is off.
        #[arg(long, env = "MESH_METRICS_TOKEN", hide_env_values = true)]
        metrics_token: Option<String>,
        /// Serve HTTPS with this certificate chain (PEM); without it, the self-signed pair
        /// `init --self-signed-tls` made is used if there is one.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of `--tls-cert`.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Create the first person and print their API token once (non-interactive bootstrap).
    Init {
        /// The person's name.
        #[arg(long, default_value = "admin")]
        name: String,
        /// Write the token to this file (mode 0600) instead of printing it.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Make a self-signed TLS certificate in the data directory, which `serve` then
        /// uses and invite codes pin (for a private network without a certificate
        /// authority).
        #[arg(long)]
        self_signed_tls: bool,
        /// A DNS name or IP address the certificate is for, besides localhost and 127.0.0.1
        /// (repeatable).
        #[arg(long = "tls-name", requires = "self_signed_tls")]
        tls_names: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            listen,
            config,
            addr_file,
            relays,
            relay_secret,
            metrics_token,
            tls_cert,
            tls_key,
        } => {
            let mut config: Config = match config {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
                }
                None => Config::default(),
            };
            config.listen = listen;
            if !relays.is_empty() {
                config.relays = relays;
            }
            if relay_secret.is_some() {
                config.relay_secret = relay_secret;
            }
            if metrics_token.is_some() {
                config.metrics_token = metrics_token;
            }
            if tls_cert.is_some() {
                config.tls_cert = tls_cert;
                config.tls_key = tls_key;
            }
            config.data_dir = cli.data_dir;
            if cli.database_url.is_some() {
                config.database_url = cli.database_url;
            }
            let server = Server::spawn(config).await?;
            if let Some(path) = addr_file {
                std::fs::write(&path, server.addr().to_string())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            eprintln!("mesh-control-plane listening on {}", server.url());
            tokio::signal::ctrl_c().await?;
            eprintln!("shutting down");
            Ok(())
        }
        Command::Init {
            name,
            token_file,
            self_signed_tls,
            tls_names,
        } => {
            let config = Config {
                data_dir: cli.data_dir,
                database_url: cli.database_url,
                ..Config::default()
            };
            if self_signed_tls {
                let pin = mesh_control_plane::http::listener::generate_self_signed(
                    &config.data_dir,
                    &tls_names,
                )?;
                eprintln!(
                    "made a self-signed TLS certificate in {}; its fingerprint is {pin} \
                     (invite codes pin it; for `mesh login --token`, pass `--tls-pin {pin}`)",
                    mesh_control_plane::http::listener::self_signed_dir(&config.data_dir).display()
                );
            }
            let token = mesh_control_plane::bootstrap_admin(&config, &name).await?;
            match token_file {
                Some(path) => {
                    write_secret(&path, &token.token)?;
                    eprintln!("created {name}; token written to {}", path.display());
                }
                None => println!("{}", token.token),
            }
            Ok(())
        }
    }
}

fn write_secret(path: &std::path::Path, secret: &str) -> Result<()> {
    mesh_fs::write_private(path, format!("{secret}\n").as_bytes())
        .with_context(|| format!("creating {}", path.display()))
}
