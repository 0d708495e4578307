//! The Mesh control plane: the coordination server of a Mesh network, like Tailscale's for a
//! tailnet. It knows who belongs, which devices are online, which workloads exist, which jobs
//! run where, and who owes whom credits. Job data never passes through it.
//!
//! [`Server::spawn`] binds, migrates, starts the background sweeper and serves [`http::router`].

pub mod domain;
pub mod http;
pub mod metrics;
pub mod state;
pub mod store;
pub mod validate;
pub mod workers;

pub use state::{AppState, Config};

use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use store::Db;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Open the database the configuration names: PostgreSQL when `database_url` is set, else the
/// embedded SQLite file in `data_dir`.
pub async fn open_db(config: &Config) -> anyhow::Result<Db> {
    Ok(match &config.database_url {
        Some(url) => Db::connect(url).await?,
        None => Db::open_sqlite(&config.data_dir).await?,
    })
}

/// Build the shared state: database, signing key, metrics, validator.
pub async fn build_state(config: Config) -> anyhow::Result<AppState> {
    config.check().map_err(anyhow::Error::msg)?;
    let db = open_db(&config).await?;
    let key = store::keys::load_or_create(&db)
        .await
        .context("loading the signing key")?;
    let vrf = store::keys::load_or_create_vrf(&db)
        .await
        .context("loading the VRF key")?;
    let mut state = AppState {
        presence: store::presence::PresenceWriter::spawn(db.clone()),
        db,
        config: Arc::new(config),
        key: Arc::new(key),
        vrf: Arc::new(vrf),
        metrics: Arc::new(metrics::Metrics::default()),
        validator: Arc::new(validate::ComponentValidator::new()?),
        gateway: None,
        certificate_pin: None,
        batch_runners: Default::default(),
    };
    state.gateway = workers::gateway::spawn(&state)
        .await
        .context("starting the gateway's libp2p node")?;
    Ok(state)
}

/// A running control plane; stops when dropped.
pub struct Server {
    addr: SocketAddr,
    https: bool,
    state: AppState,
    serve: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    checker: JoinHandle<()>,
}

impl Server {
    /// Bind `config.listen` (port 0 picks a free port), then serve until dropped.
    pub async fn spawn(config: Config) -> anyhow::Result<Server> {
        let listen = config.listen;
        let tls = http::listener::load(&config).context("setting up TLS")?;
        let mut state = build_state(config).await?;
        state.certificate_pin = tls.as_ref().and_then(|t| t.pin);
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        // Requests run in tasks axum spawns: carry the caller's span into them, so a test
        // running several servers in one process can tell their logs apart (without a
        // span, as in the binary, this does nothing).
        let span = tracing::Span::current();
        let config = state.config.clone();
        let app = http::router(state.clone())
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    next.run(request).instrument(span.clone())
                },
            ))
            .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
                config.body_timeout,
            ))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                http::request_deadline,
            ));
        let https = tls.is_some();
        let serve = tokio::spawn(
            http::listener::serve(listener, app, tls.map(|t| t.acceptor), config).in_current_span(),
        );
        let sweeper = tokio::spawn(workers::sweeper::run(state.clone()).in_current_span());
        let checker = tokio::spawn(workers::checker::run(state.clone()).in_current_span());
        if let Err(e) = workers::batches::resume(&state).await {
            tracing::warn!("resuming the running batches: {e}");
        }
        tracing::info!(%addr, "control plane listening");
        Ok(Server {
            addr,
            https,
            state,
            serve,
            sweeper,
            checker,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL: `https://addr` when serving TLS, else `http://addr`.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The fingerprint of the TLS certificate invite codes pin, if they pin one.
    pub fn certificate_pin(&self) -> Option<mesh_proto::pin::Fingerprint> {
        self.state.certificate_pin
    }

    /// The shared state (for tests and tools in the same process).
    pub fn state(&self) -> &AppState {
        &self.state
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.serve.abort();
        self.sweeper.abort();
        self.checker.abort();
        self.state.batch_runners.stop_all();
    }
}

/// Create the first person and print-able token (non-interactive bootstrap).
pub async fn bootstrap_admin(
    config: &Config,
    name: &str,
) -> anyhow::Result<mesh_proto::api::CreatedToken> {
    let db = open_db(config).await?;
    store::keys::load_or_create(&db).await?;
    let mut tx = db.pool.begin().await?;
    let person = domain::membership::create_person(&mut tx, name).await?;
    let token =
        domain::membership::create_person_token(&mut tx, &person, "bootstrap", None, None).await?;
    tx.commit().await?;
    Ok(token)
}
