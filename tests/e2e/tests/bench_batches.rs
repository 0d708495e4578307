//! Batch benchmark (ignored by `cargo test`; run it on release builds with
//! `cargo build --release --workspace --bins` and
//! `cargo test --release -p mesh-e2e --test bench_batches -- --ignored --nocapture`).
//!
//! Side by side in one run, on the real binaries (control plane, relay, hosts), with
//! `BENCH_ITEMS` sentences (default 20,000: the reference corpus repeated):
//! - (i) a batch on one host limited to one inference thread;
//! - (ii) the same batch on two such hosts;
//! - (iii) `mesh-host exec` on the same sentences with one thread, in chunks of 2,048 (the
//!   largest job), one process per chunk: the floor;
//! - (v) two such `mesh-host exec` sequences at once (every other chunk each): what this
//!   machine gives two one-thread processes, the ceiling for (ii) on it;
//! - (iv) the two-host batch with one host killed halfway: it must complete with the same
//!   vectors as (ii), every item once, every piece paid once;
//! - the control plane's peak RSS after (ii) and during a batch ten times larger
//!   (`BENCH_BIG_ITEMS`, default 200,000; it runs for `BENCH_BIG_SECS`, default 60 s, and is
//!   cancelled), which must not grow with the batch's size.
//!
//! It prints items/s for each, the speedup (ii)/(i) (target ≥ 1.8) and the efficiency
//! (i)/(iii) (target ≥ 0.9), and asserts (iv). On one 2-core machine that also runs the
//! control plane and the relay, two bare one-thread processes get 1.59 to 1.86 times one
//! (median 1.81 over three runs), so 1.8 is out of reach there; the target that measures the
//! mesh on such a machine is (ii)/(v) ≥ 0.9, the pooled batch against that ceiling.

use mesh_e2e::{HostSpec, Mesh, MeshOptions, cosine};
use mesh_proto::batch::{BatchInfo, BatchState, InputFormat, ResultFormat};
use mesh_proto::{BatchId, NetworkId};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` sentences: the reference corpus repeated.
fn sentences(n: usize) -> Vec<String> {
    let reference = mesh_e2e::reference(100);
    (0..n)
        .map(|i| reference[i % reference.len()].0.clone())
        .collect()
}

fn jsonl(texts: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for text in texts {
        serde_json::to_writer(&mut out, text).unwrap();
        out.push(b'\n');
    }
    out
}

/// CPU seconds `pid` used so far (user and system).
fn cpu_secs(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = text.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    ticks as f64 / 100.0
}

fn kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn wait_end(mesh: &Mesh, network: &NetworkId, batch: &BatchId) -> BatchInfo {
    loop {
        let info = mesh.admin.batch(network, batch).await.unwrap();
        if info.state.is_final() {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The vectors of a done batch, from its `.npy`.
async fn vectors(mesh: &Mesh, network: &NetworkId, batch: &BatchId) -> Vec<Vec<f32>> {
    let mut response = mesh
        .admin
        .batch_results(network, batch, ResultFormat::Npy)
        .await
        .unwrap();
    let mut npy = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        npy.extend_from_slice(&chunk);
    }
    let header = 10 + u16::from_le_bytes([npy[8], npy[9]]) as usize;
    npy[header..]
        .chunks_exact(384 * 4)
        .map(|v| {
            v.chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        })
        .collect()
}

/// Run a batch of `texts` to its end and fetch its vectors; returns them, its last state and
/// the seconds from the upload's start to the last vector read.
async fn run_batch(
    mesh: &Mesh,
    texts: &[String],
    mut halfway: impl FnMut(),
) -> (Vec<Vec<f32>>, BatchInfo, f64) {
    let network = mesh.network_id();
    let started = Instant::now();
    let created = mesh
        .admin
        .create_batch(
            &network,
            "all-minilm-l6-v2",
            InputFormat::Jsonl,
            None,
            jsonl(texts).into(),
        )
        .await
        .unwrap();
    let mut fired = false;
    let info = loop {
        let info = mesh.admin.batch(&network, &created.id).await.unwrap();
        if !fired && info.items_done * 2 >= info.items {
            halfway();
            fired = true;
        }
        if info.state.is_final() {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(info.state, BatchState::Done, "{info:?}\n{}", mesh.logs());
    let vectors = vectors(mesh, &network, &created.id).await;
    (vectors, info, started.elapsed().as_secs_f64())
}

/// (iii): `mesh-host exec` with one thread over chunks of 2,048 texts; returns the seconds.
fn exec_floor(texts: &[String], dir: &std::path::Path) -> f64 {
    let started = Instant::now();
    exec_chunks(texts.chunks(2048).enumerate(), dir);
    started.elapsed().as_secs_f64()
}

/// (v): two such `mesh-host exec` sequences at once, each over every other chunk: what two
/// one-thread processes get out of this machine together, with nothing else in the way.
fn exec_floor_two_at_once(texts: &[String], dir: &std::path::Path) -> f64 {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for half in 0..2 {
            scope.spawn(move || {
                exec_chunks(
                    texts
                        .chunks(2048)
                        .enumerate()
                        .filter(|(i, _)| i % 2 == half),
                    dir,
                )
            });
        }
    });
    started.elapsed().as_secs_f64()
}

fn exec_chunks<'a>(chunks: impl Iterator<Item = (usize, &'a [String])>, dir: &std::path::Path) {
    for (i, chunk) in chunks {
        let input = dir.join(format!("chunk{i}.json"));
        std::fs::write(
            &input,
            serde_json::to_vec(&serde_json::json!({ "texts": chunk })).unwrap(),
        )
        .unwrap();
        let out = std::process::Command::new(mesh_e2e::bin("mesh-host"))
            .args([
                "exec",
                mesh_test_artifacts::EMBEDDINGS,
                "--threads",
                "1",
                "--input",
            ])
            .arg(&input)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mesh-host exec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run on release builds with --ignored --nocapture"]
async fn batches_across_hosts_against_one_host_and_the_local_floor() {
    let items = env_usize("BENCH_ITEMS", 20_000);
    let big_items = env_usize("BENCH_BIG_ITEMS", 200_000);
    let big_secs = env_usize("BENCH_BIG_SECS", 60);
    let texts = sentences(items);
    let one_thread = HostSpec {
        threads: Some(1),
        ..HostSpec::default()
    };
    let mut mesh = Mesh::start(MeshOptions {
        hosts: 2,
        slots: 1,
        host_specs: vec![one_thread.clone(), one_thread],
        ..MeshOptions::default()
    })
    .await;
    mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    // Each host compiles the component and loads the model once, before anything is timed.
    let (_, warm, _) = run_batch(&mesh, &sentences(512), || {}).await;
    assert_eq!(warm.devices.iter().filter(|d| d.items > 0).count(), 2);

    // (iii) the floor, and (v) two floors at once.
    let floor = exec_floor(&texts, mesh.dir.path());
    let floor_two = exec_floor_two_at_once(&texts, mesh.dir.path());

    // (i) one host: the other is stopped (and offline) for the run.
    mesh.hosts[1].process.kill();
    let network = mesh.network_id();
    while mesh
        .admin
        .devices(&network)
        .await
        .unwrap()
        .iter()
        .filter(|d| d.online)
        .count()
        > 1
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, one, one_secs) = run_batch(&mesh, &texts, || {}).await;
    mesh.hosts[1].process.restart();
    mesh.wait_online(2).await;

    // (ii) two hosts, and where the CPU went meanwhile.
    let pids = [
        ("control plane", mesh.control_plane.pid()),
        ("relay", mesh.relay.pid()),
        ("host0", mesh.hosts[0].process.pid()),
        ("host1", mesh.hosts[1].process.pid()),
    ];
    let cpu_before: Vec<f64> = pids.iter().map(|(_, pid)| cpu_secs(*pid)).collect();
    let (two_vectors, two, two_secs) = run_batch(&mesh, &texts, || {}).await;
    let cpu_used: Vec<String> = pids
        .iter()
        .zip(&cpu_before)
        .map(|((name, pid), before)| {
            format!(
                "{name} {:.0}%",
                (cpu_secs(*pid) - before) * 100.0 / two_secs
            )
        })
        .collect();
    let rss_after_two = kib(mesh.control_plane.pid(), "VmHWM:");

    // (iv) two hosts, one killed halfway.
    let victim = mesh.hosts[1].process.pid();
    let (killed_vectors, killed, killed_secs) = run_batch(&mesh, &texts, || kill9(victim)).await;
    assert_eq!(killed_vectors.len(), items, "every item once");
    let worst = two_vectors
        .iter()
        .zip(&killed_vectors)
        .map(|(a, b)| cosine(a, b))
        .fold(1.0f32, f32::min);
    assert!(
        worst >= 0.9999,
        "a vector differs from (ii)'s: cosine {worst}"
    );
    assert_eq!(
        killed.paid, killed.price,
        "every piece paid once: {killed:?}"
    );
    mesh.hosts[1].process.restart();
    mesh.wait_online(2).await;

    let rate = |secs: f64| items as f64 / secs;
    println!("batch benchmark: {items} sentences, hosts with 1 inference thread each, release");
    println!(
        "  (i)   one host        {:>8.1} items/s  ({one_secs:.1} s, {} runs, {} duplicates)",
        rate(one_secs),
        one.devices.iter().map(|d| d.items).sum::<u64>() / 64,
        one.duplicates
    );
    println!(
        "  (ii)  two hosts       {:>8.1} items/s  ({two_secs:.1} s, {} duplicates, per device: {})",
        rate(two_secs),
        two.duplicates,
        two.devices
            .iter()
            .map(|d| format!("{} items", d.items))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "        CPU during (ii), in % of one core: {} (2 cores in all)",
        cpu_used.join(", ")
    );
    println!(
        "  (iii) mesh-host exec  {:>8.1} items/s  ({floor:.1} s, the floor)",
        rate(floor)
    );
    println!(
        "  (iv)  one host killed {:>8.1} items/s  ({killed_secs:.1} s, {} runs failed); worst cosine to (ii) {worst:.6}",
        rate(killed_secs),
        killed.runs_failed
    );
    println!(
        "  (v)   two exec at once {:>7.1} items/s  ({floor_two:.1} s: what two one-thread processes get from this machine)",
        rate(floor_two)
    );
    println!(
        "  speedup (ii)/(i) = {:.2} (target >= 1.8); efficiency (i)/(iii) = {:.2} (target >= 0.9)",
        one_secs / two_secs,
        floor / one_secs
    );
    println!(
        "  the machine's own two-process speedup (v)/(iii) = {:.2}; pooled against it (ii)/(v) = {:.2} (target >= 0.9 where the hosts share the machine's cores with the control plane)",
        floor / floor_two,
        floor_two / two_secs
    );
    // The control plane's memory during a batch ten times larger (free of charge: the
    // admin's grant does not cover 200,000 items, and the price does not matter here).
    let mut policy = mesh.admin.network(&network).await.unwrap().policy;
    policy.job_price = 0;
    mesh.admin.update_policy(&network, &policy).await.unwrap();
    let big = sentences(big_items);
    let upload_started = Instant::now();
    let created = mesh
        .admin
        .create_batch(
            &network,
            "all-minilm-l6-v2",
            InputFormat::Jsonl,
            None,
            jsonl(&big).into(),
        )
        .await
        .unwrap();
    let upload_secs = upload_started.elapsed().as_secs_f64();
    drop(big);
    let running = Instant::now();
    let mut peak_running = 0;
    while running.elapsed() < Duration::from_secs(big_secs as u64) {
        peak_running = peak_running.max(kib(mesh.control_plane.pid(), "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let big_info = mesh.admin.batch(&network, &created.id).await.unwrap();
    let rss_big = kib(mesh.control_plane.pid(), "VmHWM:");
    mesh.admin
        .cancel_batch(&network, &created.id)
        .await
        .unwrap();
    let _ = wait_end(&mesh, &network, &created.id).await;

    println!(
        "  control plane peak RSS: {} MiB after the {items}-item batches; {} MiB with a \
         {big_items}-item batch ({upload_secs:.1} s upload, {} items done in {big_secs} s, \
         {} MiB at most while it ran)",
        rss_after_two / 1024,
        rss_big / 1024,
        big_info.items_done,
        peak_running / 1024
    );
}

/// SIGKILL a process.
fn kill9(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}
