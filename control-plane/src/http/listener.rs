//! The HTTP(S) listener: TLS with rustls, a cap on open connections, and time limits on TLS
//! handshakes and request headers (which also bounds how long a kept-alive connection may sit
//! idle), so a client that trickles bytes or never speaks cannot hold a connection. Body and
//! whole-request limits are tower layers on the router ([`crate::Server::spawn`]).

use crate::state::Config;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use mesh_proto::pin::Fingerprint;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Only one of `tls_cert` and `tls_key` was given.
    #[error("tls_cert and tls_key go together")]
    Incomplete,
    /// rustls refused the pair.
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A self-signed certificate could not be made.
    #[error("making a self-signed certificate: {0}")]
    Generate(String),
}

/// What the listener serves TLS with.
#[derive(Clone)]
pub struct Tls {
    /// Accepts TLS connections.
    pub acceptor: TlsAcceptor,
    /// The fingerprint of the leaf certificate, when invite codes pin it.
    pub pin: Option<Fingerprint>,
}

/// Where `init --self-signed-tls` puts its certificate and key.
pub fn self_signed_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// Make a self-signed certificate for `names` (DNS names or IP addresses; `localhost` and
/// `127.0.0.1` are always included) in `<data_dir>/tls/` (`cert.pem`, and `key.pem` mode
/// 0600), and return its fingerprint.
pub fn generate_self_signed(data_dir: &Path, names: &[String]) -> Result<Fingerprint, TlsError> {
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    for name in names {
        if !sans.contains(name) {
            sans.push(name.clone());
        }
    }
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(sans).map_err(|e| TlsError::Generate(e.to_string()))?;
    let dir = self_signed_dir(data_dir);
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        mesh_fs::write_private(&path, bytes).map_err(|e| TlsError::File {
            path,
            reason: e.to_string(),
        })
    };
    write("key.pem", key_pair.serialize_pem().as_bytes())?;
    write("cert.pem", cert.pem().as_bytes())?;
    Ok(Fingerprint::of(cert.der()))
}

/// The TLS `config` asks for: its `tls_cert`/`tls_key`, else the self-signed pair in
/// `<data_dir>/tls/`, else none (plain HTTP).
pub fn load(config: &Config) -> Result<Option<Tls>, TlsError> {
    let (cert, key, self_signed) = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone(), false),
        (None, None) => {
            let dir = self_signed_dir(&config.data_dir);
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !cert.exists() || !key.exists() {
                return Ok(None);
            }
            (cert, key, true)
        }
        _ => return Err(TlsError::Incomplete),
    };
    let file_error = |path: &Path| {
        let path = path.to_path_buf();
        move |e: rustls::pki_types::pem::Error| TlsError::File {
            path,
            reason: e.to_string(),
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .map_err(file_error(&cert))?
        .collect::<Result<_, _>>()
        .map_err(file_error(&cert))?;
    let leaf = chain.first().ok_or_else(|| TlsError::File {
        path: cert.clone(),
        reason: "no certificate in it".into(),
    })?;
    let pin = config
        .tls_pin_certificate
        .unwrap_or(self_signed)
        .then(|| Fingerprint::of(leaf));
    let private = PrivateKeyDer::from_pem_file(&key).map_err(file_error(&key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Tls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        pin,
    }))
}

/// Serve `app` on `listener` until the task is dropped: at most `config.max_connections`
/// connections at once (the rest wait in the backlog), each over TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    config: Arc<Config>,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let header_timeout = config.header_timeout;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Streamed answers are many small writes: without this, Nagle's algorithm holds each
        // one back until the client acknowledges the last (up to its delayed-ACK timer, 40 ms
        // on Linux), which the chat benchmark measured on the first streamed token.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                // HTTP/1.1 only: the clients speak it, and sniffing for HTTP/2 would wait for a
                // first byte without the header timeout.
                let mut builder = Builder::new(TokioExecutor::new()).http1_only();
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout);
                let service = TowerToHyperService::new(app);
                let served = match tls {
                    None => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(header_timeout, acceptor.accept(stream)).await;
                        let stream = match handshake {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, "TLS handshake failed: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
            }
            .in_current_span(),
        );
    }
}
