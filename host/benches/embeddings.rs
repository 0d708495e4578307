//! Embeddings throughput, side by side in one run:
//!
//! - (a) the `mesh-host exec` path: the embeddings component (wasm tokenizer + batching +
//!   pooling) calling `wasi:nn`, on every available backend;
//! - (b) the floor: the same backend called from native Rust on pre-tokenised input;
//! - (c) Python `tokenizers` + `onnxruntime` (the fastembed pipeline);
//! - (d) sentence-transformers, when installed.
//!
//! Same model file, threads, corpus (the reference corpus repeated to 2,000 sentences) and
//! batch size (32, length-sorted) for all. Each pipeline runs in its own child process (one
//! ONNX Runtime session and thread pool per process, and its own peak RSS). The machine's
//! speed drifts by several percent over minutes, so the pipelines run in rounds, each round
//! running (a), (b) and (c) back to back (in rotating order); a ratio is the median of its
//! per-round ratios, and each child reports its best of five passes after a warm-up. The
//! parent prints sentences/s, the ratios a/c and a/b with their range over the rounds,
//! cold-start figures and peak RSS. The mesh-host child starts from a warm compiled-artifact
//! cache, as a running host does.
//!
//! `cargo bench -p mesh-host --bench embeddings` (env: `MESH_BENCH_SENTENCES`,
//! `MESH_BENCH_THREADS`, `MESH_BENCH_BACKENDS=onnxruntime,openvino`).

use mesh_host::backend::{self, BackendConfig, BackendKind};
use mesh_host::models::ModelStore;
use mesh_host::{Executor, ExecutorConfig, Limits};
use mesh_tokenizer::{Tokenizer, Vocab};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};
use wasmtime_wasi_nn::backend::NamedTensor;
use wasmtime_wasi_nn::wit::TensorType;

const BATCH: usize = 32;
/// Timed passes per pipeline; the best is reported (the least disturbed by the machine).
const PASSES: usize = 5;
/// Rounds of (a), (b) and (c) run back to back, for the ratios.
const ROUNDS: usize = 5;
const CHILD_ENV: &str = "MESH_BENCH_CHILD";
/// One round's results of (a), (b) and (c), each absent if that pipeline did not run.
type Round = (Option<Value>, Option<Value>, Option<Value>);
const PARENT_ENV: &str = "MESH_BENCH_PARENT";

fn sentences() -> usize {
    std::env::var("MESH_BENCH_SENTENCES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

fn threads() -> usize {
    std::env::var("MESH_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn corpus() -> Vec<String> {
    let path = std::env::var_os("MESH_REFERENCE_DATA").map_or_else(
        || {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/data/embeddings-reference.jsonl")
        },
        std::path::PathBuf::from,
    );
    let texts: Vec<String> = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    texts.iter().cycle().take(sentences()).cloned().collect()
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|v| v.parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

fn backend_config() -> BackendConfig {
    BackendConfig {
        threads: threads(),
        ..BackendConfig::default()
    }
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    match std::env::var(CHILD_ENV) {
        Ok(pipeline) => child(&pipeline),
        Err(_) => parent(),
    }
}

/// Run one pipeline and print one JSON line with its figures.
fn child(pipeline: &str) {
    let (kind, backend) = pipeline.split_once(':').expect("kind:backend");
    let backend: BackendKind = backend.parse().unwrap();
    let result = match kind {
        "cold" => cold_start(backend),
        "wasm" => wasm_pipeline(backend),
        "bare" => bare_pipeline(backend),
        other => panic!("unknown pipeline {other}"),
    };
    let mut result = result;
    result["peak_rss_kb"] = json!(peak_rss_kb());
    println!("{result}");
}

fn executor(backend: BackendKind, data_dir: &std::path::Path) -> Executor {
    Executor::new(ExecutorConfig {
        backend: Some(backend),
        backend_config: backend_config(),
        limits: Limits {
            job_time: Duration::from_secs(3600),
            ..Limits::default()
        },
        data_dir: data_dir.to_path_buf(),
        ..ExecutorConfig::default()
    })
    .expect("executor (run scripts/setup.sh first)")
}

/// Directory shared by the cold-start child (which fills the compiled-artifact cache) and the
/// throughput child (which then starts from the cache, as a running host does).
fn data_dir(backend: BackendKind) -> std::path::PathBuf {
    let parent = std::env::var(PARENT_ENV).unwrap_or_else(|_| std::process::id().to_string());
    std::env::temp_dir().join(format!("mesh-bench-{parent}-{backend}"))
}

fn cold_start(backend: BackendKind) -> Value {
    let component = std::fs::read(mesh_test_artifacts::EMBEDDINGS).unwrap();
    let executor = executor(backend, &data_dir(backend));
    let hash = executor.add_component(&component).unwrap().component;
    let cold = executor.cold_start(&hash).unwrap();
    let echo = executor
        .add_component(&std::fs::read(mesh_test_artifacts::ECHO).unwrap())
        .unwrap()
        .component;
    let mut instantiate: Vec<u64> = (0..50)
        .map(|_| {
            executor
                .run(&echo, b"x")
                .unwrap()
                .receipt
                .timings
                .instantiate_us
        })
        .collect();
    instantiate.sort_unstable();
    json!({
        "compile_ms": cold.compile.as_secs_f64() * 1e3,
        "authenticate_ms": cold.authenticate.as_secs_f64() * 1e3,
        "deserialize_ms": cold.deserialize.as_secs_f64() * 1e3,
        "instantiate_median_us": instantiate[instantiate.len() / 2],
    })
}

fn wasm_pipeline(backend: BackendKind) -> Value {
    let component = std::fs::read(mesh_test_artifacts::EMBEDDINGS).unwrap();
    let executor = executor(backend, &data_dir(backend));
    let hash = executor.add_component(&component).unwrap().component;
    let texts = corpus();
    let input = serde_json::to_vec(&json!({ "texts": texts, "batch_size": BATCH })).unwrap();
    executor.run(&hash, &input).unwrap(); // warm-up
    let mut best = Duration::MAX;
    let mut run = None;
    for _ in 0..PASSES {
        let started = Instant::now();
        run = Some(executor.run(&hash, &input).unwrap());
        best = best.min(started.elapsed());
    }
    let run = run.unwrap();
    let elapsed = best;
    json!({
        "pipeline": format!("mesh-host exec ({backend})"),
        "sentences_per_s": texts.len() as f64 / elapsed.as_secs_f64(),
        "inference_share": run.receipt.timings.inference_us as f64 / run.receipt.timings.run_us as f64,
    })
}

/// The floor: the same backend called from native Rust on pre-tokenised, pre-batched input.
struct Bare {
    context: wasmtime_wasi_nn::ExecutionContext,
    batches: Vec<Vec<NamedTensor>>,
    sentences: usize,
}

impl Bare {
    fn new(backend: BackendKind) -> Bare {
        let store = ModelStore::open(&ModelStore::default_dir()).unwrap();
        let entry = store
            .select("all-minilm-l6-v2", "fp32", backend)
            .unwrap()
            .clone();
        let engine = backend::create(backend, &backend_config()).unwrap();
        let model = engine
            .load_model(&store.read_verified(&entry).unwrap())
            .unwrap();
        let graph = model.graph(std::sync::Arc::new(backend::InferenceBudget::unlimited()));
        let context = graph.init_execution_context().unwrap();
        // Pre-tokenise and pre-batch exactly as the component does, outside the timed region.
        let tokenizer = Tokenizer::new(
            Vocab::from_text(include_str!("../../workloads/embeddings/vocab.txt")).unwrap(),
        );
        let texts = corpus();
        let mut encoded: Vec<Vec<u32>> = texts.iter().map(|t| tokenizer.encode(t)).collect();
        encoded.sort_by_key(Vec::len);
        let batches = encoded.chunks(BATCH).map(batch_tensors).collect();
        Bare {
            context,
            batches,
            sentences: texts.len(),
        }
    }

    /// One pass over the corpus; returns its duration.
    fn pass(&mut self) -> Duration {
        let started = Instant::now();
        for batch in &self.batches {
            let inputs = batch
                .iter()
                .map(|t| NamedTensor {
                    name: t.name.clone(),
                    tensor: t.tensor.clone(),
                })
                .collect();
            std::hint::black_box(self.context.compute_with_io(inputs).unwrap());
        }
        started.elapsed()
    }
}

fn bare_pipeline(backend: BackendKind) -> Value {
    let mut bare = Bare::new(backend);
    bare.pass(); // warm-up
    let elapsed = (0..PASSES).map(|_| bare.pass()).min().unwrap();
    json!({
        "pipeline": format!("bare {backend} call (pre-tokenised)"),
        "sentences_per_s": bare.sentences as f64 / elapsed.as_secs_f64(),
    })
}

fn batch_tensors(batch: &[Vec<u32>]) -> Vec<NamedTensor> {
    let cols = batch.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = vec![0i64; batch.len() * cols];
    let mut mask = vec![0i64; batch.len() * cols];
    for (row, seq) in batch.iter().enumerate() {
        for (col, &id) in seq.iter().enumerate() {
            ids[row * cols + col] = i64::from(id);
            mask[row * cols + col] = 1;
        }
    }
    let types = vec![0i64; batch.len() * cols];
    let tensor = |name: &str, values: &[i64]| NamedTensor {
        name: name.into(),
        tensor: wasmtime_wasi_nn::Tensor::new(
            vec![batch.len() as u32, cols as u32],
            TensorType::I64,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    };
    vec![
        tensor("input_ids", &ids),
        tensor("attention_mask", &mask),
        tensor("token_type_ids", &types),
    ]
}

fn run_child(pipeline: &str) -> Option<Value> {
    let output = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, pipeline)
        .env(PARENT_ENV, std::process::id().to_string())
        .output()
        .unwrap();
    if !output.status.success() {
        eprintln!(
            "{pipeline} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    serde_json::from_slice(output.stdout.trim_ascii()).ok()
}

fn python_pipeline(args: &[&str]) -> Option<Value> {
    let python = mesh_host::cache_dir().join("venv/bin/python");
    let store = ModelStore::open(&ModelStore::default_dir()).unwrap();
    let entry = store
        .select("all-minilm-l6-v2", "fp32", BackendKind::OnnxRuntime)
        .ok()?;
    let model = ModelStore::default_dir().join(&entry.file);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/bench_python.py");
    let output = Command::new(python)
        .arg(script)
        .arg("--model")
        .arg(model)
        .args([
            "--threads",
            &threads().to_string(),
            "--batch",
            &BATCH.to_string(),
        ])
        .args(["--sentences", &sentences().to_string()])
        .args(["--passes", &PASSES.to_string()])
        .args(args)
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!(
            "python baseline failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    serde_json::from_slice(output.stdout.trim_ascii()).ok()
}

fn parent() {
    println!(
        "embeddings benchmark: {} sentences, batch {BATCH}, {} threads, model all-minilm-l6-v2 fp32\n",
        sentences(),
        threads()
    );
    let only: Option<Vec<String>> = std::env::var("MESH_BENCH_BACKENDS")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let available: Vec<BackendKind> = backend::probe(&backend_config())
        .into_iter()
        .filter(|s| s.available)
        .map(|s| s.backend)
        .filter(|b| {
            only.as_ref()
                .is_none_or(|o| o.iter().any(|n| n == b.name()))
        })
        .collect();
    // With ONNX Runtime, (c) runs in the rounds below; otherwise once, for reference.
    let mut python = if available.contains(&BackendKind::OnnxRuntime) {
        None
    } else {
        python_pipeline(&[])
    };
    let sentence_transformers = python_pipeline(&["--sentence-transformers"]);

    println!(
        "{:<44} {:>10} {:>8} {:>8} {:>12}",
        "pipeline", "sent/s", "a/b", "a/c", "peak RSS MB"
    );
    let rate = |v: &Value| v["sentences_per_s"].as_f64().unwrap_or(0.0);
    let rss = |v: &Value| v["peak_rss_kb"].as_f64().unwrap_or(0.0) / 1024.0;
    let median = |r: &[f64]| {
        r.get(r.len() / 2)
            .map_or_else(|| "-".to_string(), |m| format!("{m:.3}"))
    };
    let list = |r: &[f64]| {
        r.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut ranges = Vec::new();
    let mut cold = Vec::new();
    for backend in available {
        let Some(cold_start) = run_child(&format!("cold:{backend}")) else {
            continue;
        };
        // Rounds of (a), (b) and, for ONNX Runtime (the target), (c), back to back in an
        // order that rotates, so each ratio compares runs that saw the same machine.
        let rounds = if backend == BackendKind::OnnxRuntime {
            ROUNDS
        } else {
            ROUNDS.min(3)
        };
        let mut runs: Vec<Round> = Vec::new();
        for round in 0..rounds {
            let (mut a, mut b, mut c) = (None, None, None);
            for step in 0..3 {
                match (round + step) % 3 {
                    0 => a = run_child(&format!("wasm:{backend}")),
                    1 => b = run_child(&format!("bare:{backend}")),
                    _ if backend == BackendKind::OnnxRuntime => c = python_pipeline(&[]),
                    _ => {}
                }
            }
            runs.push((a, b, c));
        }
        let ratios = |pick: &dyn Fn(&Round) -> Option<f64>| {
            let mut r: Vec<f64> = runs.iter().filter_map(pick).collect();
            r.sort_by(f64::total_cmp);
            r
        };
        let ab = ratios(&|(a, b, _)| Some(rate(a.as_ref()?) / rate(b.as_ref()?)));
        let ac = ratios(&|(a, _, c)| Some(rate(a.as_ref()?) / rate(c.as_ref()?)));
        let median_run = |pick: &dyn Fn(&Round) -> Option<Value>| {
            let mut all: Vec<Value> = runs.iter().filter_map(pick).collect();
            all.sort_by(|x, y| rate(x).total_cmp(&rate(y)));
            all.get(all.len() / 2).cloned()
        };
        let (Some(a), Some(b)) = (median_run(&|r| r.0.clone()), median_run(&|r| r.1.clone()))
        else {
            continue;
        };
        if let Some(c) = median_run(&|r| r.2.clone()) {
            python = Some(c);
        }
        let _ = std::fs::remove_dir_all(data_dir(backend));
        println!(
            "{:<44} {:>10.1} {:>8} {:>8} {:>12.1}",
            a["pipeline"].as_str().unwrap(),
            rate(&a),
            median(&ab),
            median(&ac),
            rss(&a)
        );
        println!(
            "{:<44} {:>10.1} {:>8} {:>8} {:>12.1}",
            b["pipeline"].as_str().unwrap(),
            rate(&b),
            "",
            "",
            rss(&b)
        );
        ranges.push(format!(
            "  {backend:<12} a/b over {} rounds: {}   a/c: {}",
            ab.len(),
            list(&ab),
            if ac.is_empty() { "-".into() } else { list(&ac) }
        ));
        cold.push((backend, a, cold_start));
    }
    for baseline in [&python, &sentence_transformers].into_iter().flatten() {
        match baseline.get("skipped") {
            Some(reason) => println!(
                "{:<44} skipped: {}",
                baseline["pipeline"].as_str().unwrap_or("?"),
                reason
            ),
            None => println!(
                "{:<44} {:>10.1} {:>8} {:>8} {:>12.1}",
                baseline["pipeline"].as_str().unwrap_or("?"),
                rate(baseline),
                "",
                "",
                rss(baseline)
            ),
        }
    }
    println!(
        "\nper-round ratios, sorted (the table shows their medians, and each pipeline's median run):"
    );
    for line in &ranges {
        println!("{line}");
    }
    println!("\ncold start (embeddings component):");
    for (backend, a, c) in cold {
        println!(
            "  {backend:<12} first compile {:>7.1} ms   cached start: read+MAC {:>5.2} ms + deserialize {:>5.2} ms   instantiate (median of 50) {} us   inference share of run {:.1}%",
            c["compile_ms"].as_f64().unwrap_or(0.0),
            c["authenticate_ms"].as_f64().unwrap_or(0.0),
            c["deserialize_ms"].as_f64().unwrap_or(0.0),
            c["instantiate_median_us"],
            a["inference_share"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
    println!(
        "\ntargets: a/c >= 1.0 (onnxruntime), a/b >= 0.98, cached start <= 1 ms, RSS(a) <= RSS(c)"
    );
}
