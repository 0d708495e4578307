//! Test harness: real control planes on a fresh SQLite file or a fresh PostgreSQL database.
#![allow(dead_code)]

use mesh_client::Client;
use mesh_control_plane::{Config, Server};
use mesh_proto::api::*;
use mesh_proto::device::{Capabilities, DeviceLoad, Heartbeat, RegistrationProof};
use mesh_proto::{DeviceId, NetworkId, SignDomain, Signed, SigningKey};
use sqlx::Connection;
use std::time::Duration;

/// Environment variable with a PostgreSQL URL whose user may create databases.
pub const POSTGRES_ENV: &str = "MESH_TEST_POSTGRES_URL";

/// The database backends a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Sqlite,
    Postgres,
}

/// Backends available: SQLite always; PostgreSQL when `MESH_TEST_POSTGRES_URL` is set (and
/// under `CI=true` it must be).
pub fn stores() -> Vec<Store> {
    let mut stores = vec![Store::Sqlite];
    if std::env::var(POSTGRES_ENV).is_ok() {
        stores.push(Store::Postgres);
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{POSTGRES_ENV} must be set in CI (scripts/test.sh starts PostgreSQL)");
    } else {
        eprintln!("skipping PostgreSQL: {POSTGRES_ENV} is not set");
    }
    stores
}

/// A fresh database for one test.
pub struct TestDb {
    pub config: Config,
    _dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new(store: Store) -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            sweep_interval: Duration::from_millis(100),
            ..Config::default()
        };
        if store == Store::Postgres {
            let base = std::env::var(POSTGRES_ENV).unwrap();
            let name = format!(
                "mesh_test_{}",
                mesh_control_plane::store::random_secret()
                    .get(..16)
                    .unwrap()
            );
            sqlx::any::install_default_drivers();
            let mut admin = sqlx::AnyConnection::connect(&base).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .unwrap();
            let (prefix, _) = base.rsplit_once('/').unwrap();
            config.database_url = Some(format!("{prefix}/{name}"));
        }
        TestDb { config, _dir: dir }
    }
}

/// A running control plane with a bootstrapped admin.
pub struct TestPlane {
    pub server: Server,
    pub admin: Client,
    pub db: TestDb,
}

impl TestPlane {
    pub async fn spawn(store: Store) -> TestPlane {
        Self::spawn_with(store, |_| {}).await
    }

    pub async fn spawn_with(store: Store, configure: impl FnOnce(&mut Config)) -> TestPlane {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .try_init();
        let mut db = TestDb::new(store).await;
        configure(&mut db.config);
        let token = mesh_control_plane::bootstrap_admin(&db.config, "admin")
            .await
            .unwrap();
        let server = Server::spawn(db.config.clone()).await.unwrap();
        let admin = Client::new(&server.url(), Some(token.token)).unwrap();
        TestPlane { server, admin, db }
    }

    pub fn anonymous(&self) -> Client {
        self.admin.with_token(None)
    }

    /// Create a network owned by the admin.
    pub async fn network(&self, policy: NetworkPolicy) -> NetworkInfo {
        self.admin
            .create_network(&CreateNetworkRequest {
                name: "test network".into(),
                policy,
            })
            .await
            .unwrap()
    }

    /// Create a network owned by the admin whose devices join without approval, on the
    /// default policy otherwise.
    pub async fn open_network(&self) -> NetworkInfo {
        self.network(NetworkPolicy {
            require_device_approval: false,
            ..NetworkPolicy::default()
        })
        .await
    }

    /// Invite a new person into `network` with `role`; returns their client.
    pub async fn person(
        &self,
        network: &NetworkId,
        role: Role,
        name: &str,
    ) -> (Client, mesh_proto::PersonId) {
        let invite = self
            .admin
            .create_invite(
                network,
                &CreateInviteRequest {
                    kind: InviteKind::Person,
                    role: Some(role),
                    expires_in_s: None,
                },
            )
            .await
            .unwrap();
        let accepted = self
            .anonymous()
            .accept_invite(&AcceptInviteRequest {
                code: invite.code,
                name: Some(name.into()),
            })
            .await
            .unwrap();
        (self.admin.with_token(accepted.token), accepted.person)
    }
}

/// A registered device: its key, id and API client.
pub struct TestDevice {
    pub key: SigningKey,
    pub id: DeviceId,
    pub network: NetworkId,
    pub client: Client,
    pub registered: RegisteredDevice,
    pub last_heartbeat_ms: u64,
}

/// Register a device in `network` using an invite made by `inviter`.
pub async fn register_device(
    inviter: &Client,
    network: &NetworkId,
    seed: u8,
    capabilities: Capabilities,
) -> TestDevice {
    let invite = inviter
        .create_invite(
            network,
            &CreateInviteRequest {
                kind: InviteKind::Device,
                role: None,
                expires_in_s: None,
            },
        )
        .await
        .unwrap();
    // Keys are unique across the whole database, so each registration gets a fresh one.
    let mut key_seed = [seed; 32];
    getrandom::fill(&mut key_seed[1..]).unwrap();
    let key = SigningKey::from_seed(key_seed);
    let anonymous = inviter.with_token(None);
    let challenge = anonymous.challenge(&invite.code).await.unwrap();
    let proof = RegistrationProof {
        challenge: challenge.challenge.clone(),
        public_key: key.public_key(),
    };
    let payload = mesh_proto::cbor::to_vec(&proof).unwrap();
    let registered = anonymous
        .register_device(&RegisterDeviceRequest {
            invite: invite.code,
            challenge: challenge.challenge,
            name: format!("device {seed}"),
            public_key: key.public_key(),
            proof: key.sign(SignDomain::Registration, &challenge.network, &payload),
            capabilities,
        })
        .await
        .unwrap();
    TestDevice {
        id: registered.device,
        network: registered.network,
        client: inviter.with_token(Some(registered.token.clone())),
        key,
        registered,
        last_heartbeat_ms: 0,
    }
}

/// Capabilities of a device that can run the embeddings workload.
pub fn embedding_capabilities() -> Capabilities {
    Capabilities {
        cores: 2,
        memory_mb: 4096,
        gpu: None,
        backends: vec!["onnxruntime".into()],
        models: vec!["all-minilm-l6-v2".into()],
        tier: "desktop".into(),
    }
}

impl TestDevice {
    /// A signed heartbeat with a fresh, increasing timestamp.
    pub fn heartbeat_payload(&mut self, load: DeviceLoad) -> Signed<Heartbeat> {
        self.heartbeat_payload_with(load, Default::default())
    }

    /// A signed heartbeat that reports `terms` as the device's own.
    pub fn heartbeat_payload_with(
        &mut self,
        load: DeviceLoad,
        terms: mesh_proto::terms::DeviceTerms,
    ) -> Signed<Heartbeat> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        self.last_heartbeat_ms = now.max(self.last_heartbeat_ms + 1);
        let heartbeat = Heartbeat {
            device: self.id,
            network: self.network,
            sent_at_ms: self.last_heartbeat_ms,
            load,
            terms,
        };
        Signed::sign(&heartbeat, &self.key, SignDomain::Heartbeat, &self.network).unwrap()
    }

    /// Send a heartbeat reporting `terms` as the device's own.
    pub async fn heartbeat_with(
        &mut self,
        load: DeviceLoad,
        terms: mesh_proto::terms::DeviceTerms,
    ) -> Result<HeartbeatResponse, mesh_client::ClientError> {
        let signed = self.heartbeat_payload_with(load, terms);
        self.client.heartbeat(&self.id, &signed).await
    }

    /// Send a heartbeat.
    pub async fn heartbeat(&mut self, load: DeviceLoad) -> HeartbeatResponse {
        let signed = self.heartbeat_payload(load);
        self.client.heartbeat(&self.id, &signed).await.unwrap()
    }
}

/// A receipt for `job` with `output`, signed by the executor's `key`.
pub fn signed_receipt(
    key: &SigningKey,
    network: &NetworkId,
    job: &JobInfo,
    output: &[u8],
) -> Signed<mesh_proto::RunReceipt> {
    receipt_naming(key, network, job, mesh_proto::Blake3Hash::of(output))
}

/// A receipt for `job` that names `output` as its output's hash, whatever was run.
pub fn receipt_naming(
    key: &SigningKey,
    network: &NetworkId,
    job: &JobInfo,
    output: mesh_proto::Blake3Hash,
) -> Signed<mesh_proto::RunReceipt> {
    let receipt = mesh_proto::RunReceipt {
        job: Some(job.id),
        ticket: None,
        component: job.workload,
        models: vec![mesh_proto::ModelBinding {
            name: "none".into(),
            hash: mesh_proto::Blake3Hash::of(b"model"),
            variant: "fp32".into(),
        }],
        input: job.input,
        output,
        backend: "tract".into(),
        timings: mesh_proto::RunTimings::default(),
    };
    Signed::sign(&receipt, key, SignDomain::Receipt, network).unwrap()
}
