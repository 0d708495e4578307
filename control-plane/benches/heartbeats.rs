//! Load generator for device registrations and signed heartbeats, against SQLite and (when
//! `MESH_TEST_POSTGRES_URL` is set) PostgreSQL, for 100, 1,000 and 10,000 simulated devices.
//! Prints requests/s and p50/p99 latency of each phase.
//!
//! `cargo bench -p mesh-control-plane --bench heartbeats` (env: `MESH_BENCH_DEVICES=100,1000`,
//! `MESH_BENCH_HEARTBEATS` heartbeats per run, `MESH_BENCH_CONCURRENCY` requests in flight).

use mesh_client::Client;
use mesh_control_plane::{Config, Server};
use mesh_proto::api::*;
use mesh_proto::device::{Capabilities, DeviceLoad, Heartbeat, RegistrationProof};
use mesh_proto::{DeviceId, SignDomain, Signed, SigningKey};
use sqlx::Connection;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Device {
    id: DeviceId,
    key: SigningKey,
    token: String,
}

struct Phase {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn line(&mut self, name: &str) -> String {
        self.latencies.sort_unstable();
        let pct = |p: f64| {
            self.latencies
                [((self.latencies.len() as f64 * p) as usize).min(self.latencies.len() - 1)]
        };
        format!(
            "{name:<14} {:>8} req {:>10.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
            self.requests,
            self.requests as f64 / self.elapsed.as_secs_f64(),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3
        )
    }
}

async fn run_concurrently<F, Fut>(count: usize, concurrency: usize, make: F) -> Phase
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let make = Arc::new(make);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let make = make.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= count {
                        break latencies;
                    }
                    let t = Instant::now();
                    make(i).await;
                    latencies.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    for w in workers {
        latencies.extend(w.await.unwrap());
    }
    Phase {
        requests: count,
        elapsed: started.elapsed(),
        latencies,
    }
}

async fn bench(
    store: &str,
    database_url: Option<String>,
    devices: usize,
    heartbeats: usize,
    concurrency: usize,
) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        database_url,
        ..Config::default()
    };
    let token = mesh_control_plane::bootstrap_admin(&config, "bench")
        .await
        .unwrap()
        .token;
    let server = Server::spawn(config).await.unwrap();
    let admin = Client::new(&server.url(), Some(token)).unwrap();
    let network = admin
        .create_network(&CreateNetworkRequest {
            name: "bench".into(),
            policy: NetworkPolicy {
                require_device_approval: false,
                ..NetworkPolicy::default()
            },
        })
        .await
        .unwrap()
        .id;

    // Registrations: invite, challenge, register (the timed part is challenge + register).
    let mut invites = Vec::with_capacity(devices);
    for _ in 0..devices {
        let invite = admin
            .create_invite(
                &network,
                &CreateInviteRequest {
                    kind: InviteKind::Device,
                    role: None,
                    expires_in_s: None,
                },
            )
            .await
            .unwrap();
        invites.push(invite.code);
    }
    let invites = Arc::new(invites);
    let registered = Arc::new(std::sync::Mutex::new(Vec::with_capacity(devices)));
    let anonymous = admin.with_token(None);
    let (inv, reg, anon) = (invites.clone(), registered.clone(), anonymous.clone());
    let mut registrations = run_concurrently(devices, concurrency, move |i| {
        let (inv, reg, anon) = (inv.clone(), reg.clone(), anon.clone());
        async move {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            seed[8] = 0xbe;
            let key = SigningKey::from_seed(seed);
            let challenge = anon.challenge(&inv[i]).await.unwrap();
            let proof = RegistrationProof {
                challenge: challenge.challenge.clone(),
                public_key: key.public_key(),
            };
            let payload = mesh_proto::cbor::to_vec(&proof).unwrap();
            let device = anon
                .register_device(&RegisterDeviceRequest {
                    invite: inv[i].clone(),
                    challenge: challenge.challenge,
                    name: format!("sim-{i}"),
                    public_key: key.public_key(),
                    proof: key.sign(SignDomain::Registration, &challenge.network, &payload),
                    capabilities: Capabilities {
                        cores: 4,
                        backends: vec!["tract".into()],
                        ..Capabilities::default()
                    },
                })
                .await
                .unwrap();
            reg.lock().unwrap().push(Device {
                id: device.device,
                key,
                token: device.token,
            });
        }
    })
    .await;
    registrations.requests *= 2;

    // Heartbeats, signed ahead of time so the generator measures the server.
    let devices_list: Vec<Device> = std::mem::take(&mut *registered.lock().unwrap());
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let signed: Vec<(String, DeviceId, Signed<Heartbeat>)> = (0..heartbeats)
        .map(|i| {
            let d = &devices_list[i % devices_list.len()];
            let heartbeat = Heartbeat {
                device: d.id,
                network,
                sent_at_ms: base + i as u64,
                load: DeviceLoad {
                    running: 1,
                    queued: 0,
                    slots: 4,
                    others_busy_percent: None,
                },
                terms: Default::default(),
            };
            (
                d.token.clone(),
                d.id,
                Signed::sign(&heartbeat, &d.key, SignDomain::Heartbeat, &network).unwrap(),
            )
        })
        .collect();
    let signed = Arc::new(signed);
    let clients: Arc<Vec<Client>> = Arc::new(
        devices_list
            .iter()
            .map(|d| admin.with_token(Some(d.token.clone())))
            .collect(),
    );
    let count = devices_list.len();
    let sig = signed.clone();
    let mut beats = run_concurrently(heartbeats, concurrency, move |i| {
        let (sig, clients) = (sig.clone(), clients.clone());
        async move {
            let (_, device, heartbeat) = &sig[i];
            // Heartbeats of one device are sent in order: each worker owns devices i mod count.
            let _ = clients[i % count].heartbeat(device, heartbeat).await;
        }
    })
    .await;
    let accepted = server
        .state()
        .metrics
        .heartbeats
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{store:<9} {devices:>6} devices  {}",
        registrations.line("registrations")
    );
    println!(
        "{store:<9} {devices:>6} devices  {}   ({accepted} accepted)",
        beats.line("heartbeats")
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let device_counts: Vec<usize> = std::env::var("MESH_BENCH_DEVICES")
        .unwrap_or_else(|_| "100,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let heartbeats = env_or("MESH_BENCH_HEARTBEATS", 20_000usize);
    let concurrency = env_or("MESH_BENCH_CONCURRENCY", 64usize);
    println!(
        "heartbeat benchmark: {heartbeats} signed heartbeats per run, {concurrency} in flight\n"
    );
    runtime.block_on(async {
        for &devices in &device_counts {
            bench("sqlite", None, devices, heartbeats, concurrency).await;
        }
        if let Ok(base) = std::env::var("MESH_TEST_POSTGRES_URL") {
            for &devices in &device_counts {
                sqlx::any::install_default_drivers();
                let name = format!("mesh_bench_{devices}_{}", std::process::id());
                let mut admin = sqlx::AnyConnection::connect(&base).await.unwrap();
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                let (prefix, _) = base.rsplit_once('/').unwrap();
                bench(
                    "postgres",
                    Some(format!("{prefix}/{name}")),
                    devices,
                    heartbeats,
                    concurrency,
                )
                .await;
                let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
            }
        } else {
            println!("\npostgres: skipped (set MESH_TEST_POSTGRES_URL)");
        }
    });
    println!("\ntarget: >= 5,000 heartbeats/s on SQLite; cost per heartbeat flat as devices grow");
}
