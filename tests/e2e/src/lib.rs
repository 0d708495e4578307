//! Local meshes for end-to-end tests, on loopback: [`TestNet`], the control plane, relay and
//! N agents as libraries in the test's process (most tests), and [`Mesh`], the same as real
//! processes (`mesh-control-plane` on SQLite, `mesh-relay`, N `mesh-host run`), for tests
//! where a process matters. Everything stops and is removed when either is dropped.

pub mod capture;
pub mod netns;
pub mod raw;
pub mod rogue;
pub mod testnet;

use mesh_client::Client;
use mesh_proto::api::{CreateInviteRequest, InviteKind, NetworkInfo, NetworkPolicy};
use mesh_proto::{Blake3Hash, NetworkId};
pub use netns::{NatKind, Topology};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
pub use testnet::{TestHost, TestNet};

/// The directory holding the workspace's binaries (next to the test executable's `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("deps dir");
    if dir.ends_with("deps") {
        dir.parent().expect("profile dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo test --workspace builds every binary)",
        path.display()
    );
    path
}

/// A UDP+TCP port free on loopback right now.
pub fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A command for `program`, run inside network namespace `ns` when given.
pub fn command_in(ns: Option<&str>, program: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A child process that is killed when dropped; its stderr goes to a log file.
pub struct Process {
    /// What it is.
    pub name: String,
    child: Child,
    /// Its log file.
    pub log: PathBuf,
    command: Vec<String>,
    envs: Vec<(String, String)>,
}

impl Process {
    /// Spawn `program` with `args` (inside network namespace `ns`, if given), logging to
    /// `<dir>/<name>.log`.
    pub fn spawn(
        dir: &Path,
        name: &str,
        ns: Option<&str>,
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Process {
        let log = dir.join(format!("{name}.log"));
        let mut command: Vec<String> = match ns {
            Some(ns) => vec!["ip".into(), "netns".into(), "exec".into(), ns.into()],
            None => Vec::new(),
        };
        command.push(program.to_string_lossy().into_owned());
        command.extend(args.iter().map(|a| a.to_string()));
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = Self::start(&command, &envs, &log);
        Process {
            name: name.into(),
            child,
            log,
            command,
            envs,
        }
    }

    fn start(command: &[String], envs: &[(String, String)], log: &Path) -> Child {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut c = Command::new(&command[0]);
        c.args(&command[1..])
            .stdout(Stdio::null())
            .stderr(file)
            .env("RUST_LOG", "info,libp2p=warn")
            .env("NO_COLOR", "1");
        for (k, v) in envs {
            c.env(k, v);
        }
        c.spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", command.join(" ")))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill it and start it again with the same command line (its log continues).
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::start(&self.command, &self.envs, &self.log);
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} did not log {needle:?} within {timeout:?}; log:\n{}",
            self.name,
            self.log_text()
        );
    }

    /// Stop it: SIGTERM (graceful), then kill after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kill it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running local mesh.
pub struct Mesh {
    /// Scratch directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The network, its people, the control plane's URL and the relay's address (also reached
    /// through `Deref`).
    pub net: Network,
    /// The relay secret.
    pub relay_secret: String,
    /// The control plane.
    pub control_plane: Process,
    /// The relay.
    pub relay: Process,
    /// The hosts, in order.
    pub hosts: Vec<Host>,
    /// How hosts reach the relay.
    pub transport: Transport,
    /// Namespaces of a NAT test (dropped last, after every process).
    pub topology: Option<Topology>,
}

impl std::ops::Deref for Mesh {
    type Target = Network;

    fn deref(&self) -> &Network {
        &self.net
    }
}

/// What a test mesh of either kind, [`Mesh`] or [`TestNet`], offers shared test helpers.
pub trait TestMesh: std::ops::Deref<Target = Network> {
    /// Every node's log, for failure messages.
    fn logs(&self) -> String;
}

impl TestMesh for Mesh {
    fn logs(&self) -> String {
        Mesh::logs(self)
    }
}

impl TestMesh for TestNet {
    fn logs(&self) -> String {
        TestNet::logs(self)
    }
}

/// The network a test mesh serves and the people in it, shared by [`Mesh`] (processes) and
/// [`TestNet`] (in process).
pub struct Network {
    /// The control plane's URL.
    pub url: String,
    /// The admin (network owner).
    pub admin: Client,
    admin_token: String,
    /// The network.
    pub network: NetworkInfo,
    /// Clients of the people owning devices: index 0 is the admin, others are admins of the
    /// network created for [`HostSpec::owner`].
    pub owners: Vec<Client>,
    /// The relay's multiaddr, ending in its peer id.
    pub relay_addr: String,
}

/// How one host differs from the defaults of [`MeshOptions`].
#[derive(Debug, Clone, Default)]
pub struct HostSpec {
    /// Which person owns it: 0 is the network's admin; other numbers are further people (each
    /// made an admin, so they can invite their own devices).
    pub owner: usize,
    /// Inference threads of a host process (`Mesh` only; default: one per core).
    pub threads: Option<usize>,
    /// The owner's terms in its config (`TestNet` only).
    pub terms: Option<mesh_proto::terms::DeviceTerms>,
    /// Inference backend (default: [`MeshOptions::backend`]).
    pub backend: Option<String>,
    /// Inject this fault (a `MESH_FAULT` value, see the host's fault injection): in process in
    /// a [`TestNet`] (with this crate's `fault-injection` feature), as `mesh-host-faulty` in a
    /// [`Mesh`].
    pub fault: Option<String>,
    /// Model store (default: the prepared one in the cache).
    pub model_dir: Option<PathBuf>,
    /// Jobs it queues (default: [`MeshOptions::queue_capacity`]).
    pub queue_capacity: Option<usize>,
    /// Model variant it runs (default `fp32`).
    pub model_variant: Option<String>,
}

/// The transport of relay connections (and so of hole punching).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC.
    Quic,
    /// TCP.
    Tcp,
}

/// One device agent.
pub struct Host {
    /// Its process.
    pub process: Process,
    /// Its config file.
    pub config: PathBuf,
    /// Its device id.
    pub device: mesh_proto::DeviceId,
    /// Its peer id.
    pub peer: String,
    /// Its network namespace, in a NAT test.
    pub ns: Option<String>,
}

/// Options of a [`Mesh`].
#[derive(Clone)]
pub struct MeshOptions {
    /// Hosts to start.
    pub hosts: usize,
    /// Inference backend of every host.
    pub backend: String,
    /// Jobs a host runs at once.
    pub slots: usize,
    /// Jobs a host queues.
    pub queue_capacity: usize,
    /// Job lease of the control plane, in seconds.
    pub job_lease_s: f64,
    /// Put every host behind its own NAT router, and the control plane and relay in a
    /// "public" namespace.
    pub nat: Option<NatKind>,
    /// Transport of relay connections.
    pub transport: Transport,
    /// Per-host settings, by index (hosts beyond the list use the defaults).
    pub host_specs: Vec<HostSpec>,
    /// Extra lines for the control plane's TOML config.
    pub control_plane_config: String,
    /// Serve the control plane over TLS with a self-signed certificate (in a [`TestNet`]):
    /// every client pins it, hosts from their invite codes.
    pub tls: bool,
}

impl MeshOptions {
    /// People besides the admin that the hosts' owners need ([`HostSpec::owner`]).
    pub fn people(&self) -> usize {
        self.host_specs.iter().map(|s| s.owner).max().unwrap_or(0)
    }
}

impl Default for MeshOptions {
    fn default() -> Self {
        MeshOptions {
            hosts: 2,
            backend: "onnxruntime".into(),
            slots: 1,
            queue_capacity: 64,
            job_lease_s: 60.0,
            nat: None,
            transport: Transport::Quic,
            host_specs: Vec::new(),
            control_plane_config: String::new(),
            tls: false,
        }
    }
}

impl Mesh {
    /// Start a control plane, a relay and `options.hosts` hosts, create a network (devices
    /// join without approval) and wait until every host holds a relay reservation.
    pub async fn start(options: MeshOptions) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let topology = options.nat.map(|kind| {
            Topology::create(options.hosts, kind).unwrap_or_else(|e| {
                panic!("building the NAT namespaces (needs root, iproute2, iptables): {e}")
            })
        });
        let public_ns = topology.as_ref().map(|t| t.public.clone());
        let public_ns = public_ns.as_deref();
        let server_ip = topology
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_string(), |t| t.public_server.clone());
        let relay_secret = "e2e-relay-secret-0123456789abcdef0123".to_string();
        let relay_peer = String::from_utf8(
            Command::new(bin("mesh-relay"))
                .args([
                    "--data-dir",
                    root.join("relay").to_str().unwrap(),
                    "--print-peer-id",
                ])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim()
        .to_string();
        let relay_port = if topology.is_some() {
            4001
        } else {
            free_port()
        };
        let relay_quic = format!("/ip4/{server_ip}/udp/{relay_port}/quic-v1");
        let relay_tcp = format!("/ip4/{server_ip}/tcp/{relay_port}");
        let relay_addr = match options.transport {
            Transport::Quic => format!("{relay_quic}/p2p/{relay_peer}"),
            Transport::Tcp => format!("{relay_tcp}/p2p/{relay_peer}"),
        };
        let cp_dir = root.join("cp");
        let init = Command::new(bin("mesh-control-plane"))
            .args([
                "--data-dir",
                cp_dir.to_str().unwrap(),
                "init",
                "--name",
                "owner",
            ])
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        let token = String::from_utf8(init.stdout).unwrap().trim().to_string();
        let config = root.join("cp.toml");
        std::fs::write(
            &config,
            format!(
                "sweep_interval = 0.2\nheartbeat_interval = 1.0\noffline_after = 5.0\njob_lease = {}\n\
                 p2p_listen = [\"/ip4/{server_ip}/udp/0/quic-v1\", \"/ip4/{server_ip}/tcp/0\"]\n{}\n",
                options.job_lease_s, options.control_plane_config
            ),
        )
        .unwrap();
        let addr_file = root.join("cp.addr");
        // A fixed port, so a restarted control plane is found where it was.
        let cp_port = if topology.is_some() {
            7420
        } else {
            free_port()
        };
        let listen = format!("{server_ip}:{cp_port}");
        let control_plane = Process::spawn(
            &root,
            "control-plane",
            public_ns,
            &bin("mesh-control-plane"),
            &[
                "--data-dir",
                cp_dir.to_str().unwrap(),
                "serve",
                "--listen",
                &listen,
                "--config",
                config.to_str().unwrap(),
                "--addr-file",
                addr_file.to_str().unwrap(),
                "--relay",
                &relay_addr,
            ],
            &[("MESH_RELAY_SECRET", &relay_secret)],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file)
                && !a.is_empty()
            {
                break a;
            }
            assert!(
                Instant::now() < deadline,
                "control plane did not start:\n{}",
                control_plane.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let url = format!("http://{}", addr.trim());
        let relay = Process::spawn(
            &root,
            "relay",
            public_ns,
            &bin("mesh-relay"),
            &[
                "--data-dir",
                root.join("relay").to_str().unwrap(),
                "--control-plane",
                &url,
                "--listen",
                &relay_quic,
                "--listen",
                &relay_tcp,
                "--allow-list-interval",
                "1",
            ],
            &[("MESH_RELAY_SECRET", &relay_secret)],
        );
        relay.wait_for_log("allow-list loaded", Duration::from_secs(30));
        let net = Network::create(&url, None, relay_addr, token, options.people()).await;
        let mut mesh = Mesh {
            dir,
            net,
            relay_secret,
            control_plane,
            relay,
            hosts: Vec::new(),
            transport: options.transport,
            topology,
        };
        for i in 0..options.hosts {
            let ns = mesh.topology.as_ref().map(|t| t.homes[i].clone());
            let host = mesh
                .start_host(&format!("host{i}"), ns.as_deref(), &options)
                .await;
            mesh.hosts.push(host);
        }
        for host in &mesh.hosts {
            host.process
                .wait_for_log("reservation accepted", Duration::from_secs(30));
        }
        mesh.wait_online(options.hosts).await;
        mesh
    }

    /// Register and start one more host named `name` (inside namespace `ns`, if given).
    pub async fn start_host(&self, name: &str, ns: Option<&str>, options: &MeshOptions) -> Host {
        let index = self.hosts.len();
        let spec = options.host_specs.get(index).cloned().unwrap_or_default();
        let root = self.dir.path();
        let invite = self.owners[spec.owner]
            .create_invite(
                &self.network.id,
                &CreateInviteRequest {
                    kind: InviteKind::Device,
                    role: None,
                    expires_in_s: None,
                },
            )
            .await
            .unwrap();
        let backend = spec
            .backend
            .clone()
            .unwrap_or_else(|| options.backend.clone());
        let config = root.join(format!("{name}.toml"));
        let data = root.join(name);
        let slots = options.slots.to_string();
        let queue = spec
            .queue_capacity
            .unwrap_or(options.queue_capacity)
            .to_string();
        let (listen_ip, listen) = match (ns.is_some(), options.transport) {
            (true, Transport::Quic) => ("0.0.0.0", "udp/0/quic-v1"),
            (true, Transport::Tcp) => ("0.0.0.0", "tcp/0"),
            (false, Transport::Quic) => ("127.0.0.1", "udp/0/quic-v1"),
            (false, Transport::Tcp) => ("127.0.0.1", "tcp/0"),
        };
        let listen = format!("/ip4/{listen_ip}/{listen}");
        let join = command_in(ns, &bin("mesh-host"))
            .args([
                "join",
                &invite.code,
                "--control-plane",
                &self.url,
                "--name",
                name,
                "--config",
                config.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                &listen,
                "--slots",
                &slots,
                "--queue-capacity",
                &queue,
                "--backend",
                &backend,
            ])
            .args(
                spec.model_dir
                    .iter()
                    .flat_map(|d| [std::ffi::OsStr::new("--model-dir"), d.as_os_str()]),
            )
            .args(
                spec.model_variant
                    .iter()
                    .flat_map(|v| ["--model-variant", v.as_str()]),
            )
            .args(
                spec.threads
                    .iter()
                    .flat_map(|t| ["--threads".to_string(), t.to_string()]),
            )
            .output()
            .unwrap();
        assert!(
            join.status.success(),
            "join failed: {}",
            String::from_utf8_lossy(&join.stderr)
        );
        let text = std::fs::read_to_string(&config).unwrap();
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap()
        };
        let device: mesh_proto::DeviceId = field("device").parse().unwrap();
        let key = mesh_proto::SigningKey::from_multibase(&field("key")).unwrap();
        let (program, envs) = match &spec.fault {
            Some(fault) => (
                bin("mesh-host-faulty"),
                vec![("MESH_FAULT", fault.as_str())],
            ),
            None => (bin("mesh-host"), Vec::new()),
        };
        let process = Process::spawn(
            root,
            name,
            ns,
            &program,
            &["run", "--config", config.to_str().unwrap()],
            &envs,
        );
        Host {
            process,
            config,
            device,
            peer: key.public_key().peer_id(),
            ns: ns.map(str::to_string),
        }
    }

    /// The standard output of a `mesh-host submit` (or any command) that must have
    /// succeeded; panics with its standard error and every log otherwise.
    pub fn succeeded(&self, out: std::process::Output, what: &str) -> Vec<u8> {
        assert!(
            out.status.success(),
            "{what} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        out.stdout
    }

    /// Start a gateway job of `sentences` distinct sentences (long enough to run for a while
    /// on one slot) and return it with the index of the host that received it.
    pub async fn start_long_job(
        &self,
        workload: Blake3Hash,
        sentences: usize,
        idempotency_key: &str,
    ) -> (
        tokio::task::JoinHandle<mesh_client::Result<mesh_proto::api::RunJobResponse>>,
        usize,
    ) {
        let corpus = reference(101);
        let texts: Vec<String> = (0..sentences)
            .map(|i| format!("{} ({i})", corpus[i % corpus.len()].0))
            .collect();
        let admin = self.admin.clone();
        let network = self.network_id();
        let key = idempotency_key.to_string();
        let job = tokio::spawn(async move {
            admin
                .run_job(
                    &network,
                    &mesh_proto::api::RunJobRequest {
                        workload,
                        input: serde_json::json!({ "texts": texts }),
                        idempotency_key: Some(key),
                    },
                )
                .await
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let host = loop {
            if let Some(i) = self
                .hosts
                .iter()
                .position(|h| h.process.log_text().contains("job request"))
            {
                break i;
            }
            assert!(
                Instant::now() < deadline,
                "no host got the job\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        (job, host)
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in [&self.control_plane, &self.relay]
            .into_iter()
            .chain(self.hosts.iter().map(|h| &h.process))
        {
            out.push_str(&format!("==== {}\n{}\n", p.name, p.log_text()));
        }
        out
    }
}

impl Network {
    /// Create the `e2e` network (devices join without approval) as the admin holding
    /// `admin_token`, and `people` further people, each an admin of it.
    pub async fn create(
        url: &str,
        pin: Option<mesh_proto::pin::Fingerprint>,
        relay_addr: String,
        admin_token: String,
        people: usize,
    ) -> Network {
        let admin = Client::pinned(url, Some(admin_token.clone()), pin).unwrap();
        let network = admin
            .create_network(&mesh_proto::api::CreateNetworkRequest {
                name: "e2e".into(),
                policy: NetworkPolicy {
                    require_device_approval: false,
                    ..NetworkPolicy::default()
                },
            })
            .await
            .unwrap();
        let mut owners = vec![admin.clone()];
        for i in 1..=people {
            let invite = admin
                .create_invite(
                    &network.id,
                    &CreateInviteRequest {
                        kind: InviteKind::Person,
                        role: Some(mesh_proto::api::Role::Admin),
                        expires_in_s: None,
                    },
                )
                .await
                .unwrap();
            let accepted = admin
                .with_token(None)
                .accept_invite(&mesh_proto::api::AcceptInviteRequest {
                    code: invite.code,
                    name: Some(format!("owner{i}")),
                })
                .await
                .unwrap();
            owners.push(admin.with_token(accepted.token));
        }
        Network {
            url: url.to_string(),
            admin,
            admin_token,
            network,
            owners,
            relay_addr,
        }
    }

    /// The admin's bearer token.
    pub fn admin_token(&self) -> String {
        self.admin_token.clone()
    }

    /// The network id.
    pub fn network_id(&self) -> NetworkId {
        self.network.id
    }

    /// A single-use person invite to the mesh's network for `role`, made by the admin.
    pub async fn person_invite(
        &self,
        role: mesh_proto::api::Role,
    ) -> mesh_proto::api::CreatedInvite {
        self.admin
            .create_invite(
                &self.network.id,
                &CreateInviteRequest {
                    kind: InviteKind::Person,
                    role: Some(role),
                    expires_in_s: None,
                },
            )
            .await
            .unwrap()
    }

    /// A single-use device invite for `network`, made by the admin.
    pub async fn device_invite(&self, network: &NetworkId) -> mesh_proto::api::CreatedInvite {
        self.admin
            .create_invite(
                network,
                &CreateInviteRequest {
                    kind: InviteKind::Device,
                    role: None,
                    expires_in_s: None,
                },
            )
            .await
            .unwrap()
    }

    /// How many ledger entries of each kind (`job_reserve`, `job_settle`, `job_refund`)
    /// `job` has.
    pub async fn job_entries(&self, job: mesh_proto::JobId) -> (usize, usize, usize) {
        let history = self.admin.history(&self.network.id, None).await.unwrap();
        let count = |kind: &str| {
            history
                .iter()
                .filter(|e| e.job == Some(job) && e.kind == kind)
                .count()
        };
        (
            count("job_reserve"),
            count("job_settle"),
            count("job_refund"),
        )
    }

    /// Wait until `n` devices of the network are online.
    pub async fn wait_online(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let online = self
                .admin
                .devices(&self.network.id)
                .await
                .unwrap()
                .iter()
                .filter(|d| d.online)
                .count();
            if online >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {online} of {n} devices came online"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Publish a component; returns its hash.
    pub async fn publish(&self, component: &str) -> Blake3Hash {
        self.admin
            .publish_workload(&self.network.id, std::fs::read(component).unwrap())
            .await
            .unwrap()
            .hash
    }

    /// Register a device with `key` in the mesh's network (no backends, so it never
    /// executes) and return its API client and certificate; the relay serves it after its
    /// next poll.
    pub async fn register_device(
        &self,
        key: &mesh_proto::SigningKey,
    ) -> (Client, mesh_proto::Signed<mesh_proto::device::DeviceCert>) {
        let (client, cert, _) = self.register_device_in(&self.network.id, key).await;
        (client, cert)
    }

    /// Register a device with `key` in `network` (which the admin owns); returns its API
    /// client, certificate and id.
    pub async fn register_device_in(
        &self,
        network: &NetworkId,
        key: &mesh_proto::SigningKey,
    ) -> (
        Client,
        mesh_proto::Signed<mesh_proto::device::DeviceCert>,
        mesh_proto::DeviceId,
    ) {
        self.register_device_as(network, key, "in-process", Default::default())
            .await
    }

    /// Register a device with `key` in `network` under `name`, claiming `capabilities`
    /// (whatever a device says of itself, hostile strings included); returns its API client,
    /// certificate and id.
    pub async fn register_device_as(
        &self,
        network: &NetworkId,
        key: &mesh_proto::SigningKey,
        name: &str,
        capabilities: mesh_proto::device::Capabilities,
    ) -> (
        Client,
        mesh_proto::Signed<mesh_proto::device::DeviceCert>,
        mesh_proto::DeviceId,
    ) {
        use mesh_proto::api::RegisterDeviceRequest;
        use mesh_proto::device::RegistrationProof;
        let invite = self.device_invite(network).await;
        let anonymous = self.admin.with_token(None);
        let challenge = anonymous.challenge(&invite.code).await.unwrap();
        let proof = RegistrationProof {
            challenge: challenge.challenge.clone(),
            public_key: key.public_key(),
        };
        let registered = anonymous
            .register_device(&RegisterDeviceRequest {
                invite: invite.code,
                challenge: challenge.challenge,
                name: name.into(),
                public_key: key.public_key(),
                proof: key.sign(
                    mesh_proto::SignDomain::Registration,
                    &challenge.network,
                    &mesh_proto::cbor::to_vec(&proof).unwrap(),
                ),
                capabilities,
            })
            .await
            .unwrap();
        let client = self.admin.with_token(Some(registered.token));
        let cert = client
            .certificate(&registered.device)
            .await
            .unwrap()
            .certificate;
        (client, cert, registered.device)
    }
}

/// A fresh random device key.
pub fn fresh_key() -> mesh_proto::SigningKey {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).unwrap();
    mesh_proto::SigningKey::from_seed(seed)
}

/// The prepared model store hosts use unless told otherwise: `models` in the cache the
/// setup script fills (`$MESH_CACHE_DIR`, else `$XDG_CACHE_HOME/mesh`, else `~/.cache/mesh`).
pub fn model_dir() -> PathBuf {
    let cache = std::env::var_os("MESH_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("mesh")))
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
            home.join(".cache").join("mesh")
        });
    cache.join("models")
}

/// The first `n` sentences of the reference corpus with their sentence-transformers vectors.
pub fn reference(n: usize) -> Vec<(String, Vec<f32>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/embeddings-reference.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .take(n)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["text"].as_str().unwrap().to_string(),
                floats(&v["embedding"]),
            )
        })
        .collect()
}

/// A JSON array of numbers as f32.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("an array of numbers")
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The vectors of an embeddings workload's output document.
pub fn vectors(output: &serde_json::Value) -> Vec<Vec<f32>> {
    output["embeddings"]
        .as_array()
        .expect("embeddings in the output")
        .iter()
        .map(floats)
        .collect()
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}
