//! An in-process mesh: the control plane ([`mesh_control_plane::Server`]), the relay
//! ([`mesh_relay::Relay`]) and N device agents ([`mesh_host::agent::serve::Agent`]) as
//! libraries in the test's own process and runtime, on loopback with ports the system picks,
//! stopped when the [`TestNet`] is dropped.
//!
//! It starts in about a second and needs no binaries, so most end-to-end tests use it; tests
//! where a process matters (SIGTERM, kill -9, a restart, network namespaces, the CLIs) use
//! the process-based [`Mesh`](crate::Mesh). Each node logs into its own [`NodeLog`] (see
//! [`crate::capture`]). Faulty hosts ([`crate::HostSpec::fault`]) need this crate's
//! `fault-injection` feature, which turns on the host's (tests only: the feature never
//! reaches a release build).

use crate::capture::{self, NodeLog};
use crate::{MeshOptions, Network, free_port, model_dir};
use mesh_host::agent::config::HostConfig;
use mesh_host::agent::join::{JoinOptions, Template, join};
use mesh_host::agent::serve::{Agent, AgentHandle};
pub use mesh_host::agent::submit::SubmitOptions;
use mesh_host::backend::BackendConfig;
use mesh_host::{Executor, backend::BackendKind};
use mesh_proto::DeviceId;
use std::path::PathBuf;
use std::time::Duration;
use tracing::Instrument;

/// The relay secret of every test net.
const RELAY_SECRET: &str = "testnet-relay-secret-0123456789abcdef";

/// A running in-process mesh.
pub struct TestNet {
    /// The agents, in order (dropped first).
    pub hosts: Vec<TestHost>,
    /// The network, its people, the control plane's URL and the relay's address (also reached
    /// through `Deref`).
    pub net: Network,
    /// The relay's log.
    pub relay_log: NodeLog,
    /// The control plane's log.
    pub control_plane_log: NodeLog,
    relay: Option<mesh_relay::Relay>,
    control_plane: Option<mesh_control_plane::Server>,
    control_plane_config: mesh_control_plane::Config,
    control_plane_span: tracing::Span,
    /// Scratch directory (removed on drop, last).
    pub dir: tempfile::TempDir,
}

/// One in-process device agent.
pub struct TestHost {
    /// Its name (`host0`, ...).
    pub name: String,
    /// Its device id.
    pub device: DeviceId,
    /// Its libp2p peer id.
    pub peer: String,
    /// Its config, as `mesh-host join` wrote it.
    pub config: HostConfig,
    /// What it logged.
    pub log: NodeLog,
    span: tracing::Span,
    agent: Option<AgentHandle>,
}

impl TestHost {
    /// Stop the agent at once (its tasks abort and its connections close), as a crash of the
    /// agent would; the device stays registered.
    pub fn stop(&mut self) {
        self.agent = None;
    }

    /// Wait (at most `timeout`) until the control plane tells the agent its device was
    /// revoked; panics otherwise.
    pub async fn revoked(&mut self, timeout: Duration) {
        let agent = self.agent.as_mut().expect("the agent runs");
        tokio::time::timeout(timeout, agent.revoked())
            .await
            .unwrap_or_else(|_| panic!("{} was not told it is revoked", self.name));
    }

    /// Run jobs of `workload` on `input` with this device as requester, as `mesh-host submit`
    /// does; returns each job's result, or the error the command would print.
    pub async fn submit(
        &self,
        workload: mesh_proto::Blake3Hash,
        input: Vec<u8>,
        options: SubmitOptions,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        submit_as(self.config.clone(), workload, input, options)
            .instrument(self.span.clone())
            .await
    }

    /// [`TestHost::submit`] in a task of its own: aborting it makes the requester go away
    /// mid-job (its node and connections close).
    pub fn spawn_submit(
        &self,
        workload: mesh_proto::Blake3Hash,
        input: Vec<u8>,
        options: SubmitOptions,
    ) -> tokio::task::JoinHandle<anyhow::Result<Vec<serde_json::Value>>> {
        tokio::spawn(
            submit_as(self.config.clone(), workload, input, options).instrument(self.span.clone()),
        )
    }

    /// Stop taking jobs, let the running ones finish (see [`AgentHandle::shutdown`]).
    pub async fn shutdown(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.shutdown().instrument(self.span.clone()).await;
        }
    }
}

async fn submit_as(
    config: HostConfig,
    workload: mesh_proto::Blake3Hash,
    input: Vec<u8>,
    options: SubmitOptions,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut results = Vec::new();
    mesh_host::agent::submit::submit(&config, workload, input, options, |result| {
        results.push(result);
        Ok(())
    })
    .await?;
    Ok(results)
}

impl std::ops::Deref for TestNet {
    type Target = Network;

    fn deref(&self) -> &Network {
        &self.net
    }
}

impl TestNet {
    /// Start a control plane (SQLite, in the scratch directory), a relay and
    /// `options.hosts` agents; create a network that devices join without approval; wait
    /// until every agent holds a relay reservation and is online.
    pub async fn spawn(options: MeshOptions) -> TestNet {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();

        let relay_dir = root.join("relay");
        let relay_key = mesh_relay::load_or_create_key(&relay_dir).unwrap();
        let relay_peer = relay_key.public_key().peer_id();
        let relay_port = free_port();
        let relay_quic = format!("/ip4/127.0.0.1/udp/{relay_port}/quic-v1");
        let relay_tcp = format!("/ip4/127.0.0.1/tcp/{relay_port}");
        let relay_addr = match options.transport {
            crate::Transport::Quic => format!("{relay_quic}/p2p/{relay_peer}"),
            crate::Transport::Tcp => format!("{relay_tcp}/p2p/{relay_peer}"),
        };

        let (cp_span, control_plane_log) = capture::node_span("control-plane");
        let config_text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nrelays = [{relay_addr:?}]\n\
             relay_secret = {RELAY_SECRET:?}\n\
             sweep_interval = 0.2\nheartbeat_interval = 1.0\noffline_after = 5.0\njob_lease = {}\n\
             p2p_listen = [\"/ip4/127.0.0.1/udp/0/quic-v1\", \"/ip4/127.0.0.1/tcp/0\"]\n{}\n",
            root.join("cp").to_str().unwrap(),
            options.job_lease_s,
            options.control_plane_config
        );
        let config: mesh_control_plane::Config = toml::from_str(&config_text)
            .unwrap_or_else(|e| panic!("control plane config: {e}\n{config_text}"));
        // Over TLS, the self-signed certificate `init --self-signed-tls` would make.
        let pin = options.tls.then(|| {
            mesh_control_plane::http::listener::generate_self_signed(&config.data_dir, &[]).unwrap()
        });
        let token = mesh_control_plane::bootstrap_admin(&config, "owner")
            .await
            .unwrap()
            .token;
        let control_plane = mesh_control_plane::Server::spawn(config.clone())
            .instrument(cp_span.clone())
            .await
            .unwrap();
        let url = control_plane.url();

        let (relay_span, relay_log) = capture::node_span("relay");
        let relay = mesh_relay::Relay::spawn(mesh_relay::Config {
            listen: vec![relay_quic, relay_tcp],
            external_addresses: Vec::new(),
            control_plane: url.clone(),
            control_plane_certificate: pin,
            relay_secret: Some(RELAY_SECRET.into()),
            data_dir: relay_dir,
            allow_list_interval_secs: 1,
            limits: mesh_relay::Limits::default(),
        })
        .instrument(relay_span)
        .await
        .unwrap();

        let net = Network::create(&url, pin, relay_addr, token, options.people()).await;
        let mut testnet = TestNet {
            hosts: Vec::new(),
            net,
            relay_log,
            control_plane_log,
            relay: Some(relay),
            control_plane_config: mesh_control_plane::Config {
                listen: control_plane.addr(),
                ..config
            },
            control_plane: Some(control_plane),
            control_plane_span: cp_span,
            dir,
        };
        for i in 0..options.hosts {
            let host = testnet.start_host(&format!("host{i}"), &options).await;
            testnet.hosts.push(host);
        }
        for host in &testnet.hosts {
            host.log
                .wait_for("reservation accepted", Duration::from_secs(30))
                .await;
        }
        testnet.wait_online(options.hosts).await;
        testnet
    }

    /// Join one more agent named `name` with the settings `options` gives host number
    /// `self.hosts.len()`, and start it.
    pub async fn start_host(&self, name: &str, options: &MeshOptions) -> TestHost {
        let spec = options
            .host_specs
            .get(self.hosts.len())
            .cloned()
            .unwrap_or_default();
        let invite = self.owners[spec.owner]
            .create_invite(
                &self.network.id,
                &mesh_proto::api::CreateInviteRequest {
                    kind: mesh_proto::api::InviteKind::Device,
                    role: None,
                    expires_in_s: None,
                },
            )
            .await
            .unwrap();
        self.join_host(name, invite.code, options).await
    }

    /// Start a host that joins with `invite` (a device invite's code, made elsewhere: by a
    /// test through the web console, say), with the settings `options` gives the next host.
    pub async fn join_host(&self, name: &str, invite: String, options: &MeshOptions) -> TestHost {
        let spec = options
            .host_specs
            .get(self.hosts.len())
            .cloned()
            .unwrap_or_default();
        let backend = spec.backend.unwrap_or_else(|| options.backend.clone());
        let listen = match options.transport {
            crate::Transport::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
            crate::Transport::Tcp => "/ip4/127.0.0.1/tcp/0",
        };
        let data_dir: PathBuf = self.dir.path().join(name);
        let (span, log) = capture::node_span(name);
        let config = join(
            JoinOptions {
                invite,
                control_plane: self.url.clone(),
                name: name.into(),
                config_path: self.dir.path().join(format!("{name}.toml")),
                force: false,
                template: Template {
                    listen: vec![listen.into()],
                    backend: Some(backend.clone()),
                    model_variant: spec.model_variant.clone(),
                    data_dir: Some(data_dir),
                    model_dir: Some(spec.model_dir.unwrap_or_else(model_dir)),
                    slots: options.slots,
                    queue_capacity: Some(spec.queue_capacity.unwrap_or(options.queue_capacity)),
                    threads: 0,
                },
            },
            &BackendConfig::default(),
        )
        .instrument(span.clone())
        .await
        .unwrap_or_else(|e| panic!("{name} could not join: {e:#}"));
        let mut config = config;
        if let Some(terms) = &spec.terms {
            config.terms = terms.clone();
        }
        let kind: BackendKind = backend.parse().unwrap();
        let executor = Executor::new(
            config
                .executor_config(Some(kind), BackendConfig::default())
                .unwrap(),
        )
        .unwrap_or_else(|e| panic!("{name}'s executor on {backend}: {e:#}"));
        let agent = match &spec.fault {
            None => {
                Agent::spawn(config.clone(), executor)
                    .instrument(span.clone())
                    .await
            }
            #[cfg(feature = "fault-injection")]
            Some(fault) => {
                Agent::spawn_faulty(config.clone(), executor, fault)
                    .instrument(span.clone())
                    .await
            }
            #[cfg(not(feature = "fault-injection"))]
            Some(_) => panic!("a faulty host needs mesh-e2e's `fault-injection` feature"),
        }
        .unwrap_or_else(|e| panic!("{name} did not start: {e:#}\n{}", log.text()));
        TestHost {
            name: name.into(),
            device: config.device,
            peer: agent.peer_id().to_string(),
            config,
            log,
            span,
            agent: Some(agent),
        }
    }

    /// Stop the control plane, as a crash would, and start it again on the same address and
    /// data (its libp2p node comes back with the same key).
    pub async fn restart_control_plane(&mut self) {
        drop(self.control_plane.take());
        let server = mesh_control_plane::Server::spawn(self.control_plane_config.clone())
            .instrument(self.control_plane_span.clone())
            .await
            .unwrap();
        self.control_plane = Some(server);
    }

    /// The control plane in this process (its state, for assertions on the database).
    pub fn control_plane(&self) -> &mesh_control_plane::Server {
        self.control_plane.as_ref().expect("running")
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for log in [&self.control_plane_log, &self.relay_log]
            .into_iter()
            .chain(self.hosts.iter().map(|h| &h.log))
        {
            out.push_str(&format!("==== {}\n{}\n", log.name(), log.text()));
        }
        out
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Agents first, then the relay, then the control plane they talk to.
        self.hosts.clear();
        self.relay = None;
        self.control_plane = None;
    }
}
