//! The chat benchmark (ignored; release builds): SmolLM2-135M-Instruct Q4_1 generating 128
//! tokens greedily after prompts of 32 and 512 tokens, 2 threads, three engines side by side
//! in one run, each in a process of its own (so peak RSS is its own), median of rounds:
//!
//! - (a) the chat workload on the executor `mesh-host exec` runs (the component tokenises
//!   and samples in wasmtime, each step one token id in and the logits out over `wasi:nn`);
//! - (b) the same engine, `mesh-llm`, called natively from Rust (the floor);
//! - (c) llama.cpp through llama-cpp-python built from its source package
//!   (`scripts/llm_llamacpp.py`; skipped when its venv is missing).
//!
//! Printed: prompt tokens/s, generated tokens/s, time to first token, peak RSS, the ratio
//! (a)/(b) of generated tokens/s (target ≥ 0.9), generation against the machine's memory
//! bandwidth bound for this model's weights, and the first streamed token through the mesh
//! (gateway, relay, host: `/v1/chat/completions` with `stream`) against (a)'s time to first
//! token on the same request (target: within 20 ms).
//!
//! `cargo test --release -p mesh-e2e --test bench_chat -- --ignored --nocapture`
//! (`ROUNDS` sets the rounds, default 3.)

use mesh_e2e::{MeshOptions, TestNet};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const GENERATED: usize = 128;
const THREADS: usize = 2;

fn rounds() -> usize {
    std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn tokenizer() -> mesh_tokenizer::BpeTokenizer {
    mesh_tokenizer::BpeTokenizer::from_text(include_str!("../../../workloads/chat/tokenizer.txt"))
        .unwrap()
}

/// Plain text that the model's tokenizer cuts into exactly `n` tokens.
fn prompt_of(n: usize) -> (String, Vec<u32>) {
    let paragraph = "The history of the city begins with a small harbour on the river, where \
        fishermen traded with merchants who came down from the hills. Over the centuries the \
        harbour grew into a port, the port into a market town, and the town into a city of \
        bridges, libraries and workshops. ";
    let t = tokenizer();
    let long = paragraph.repeat(n / 40 + 2);
    let ids = t.encode(&long);
    for cut in (n..ids.len()).chain((1..n).rev()) {
        let text = t.decode(&ids[..cut]);
        let again = t.encode(&text);
        if again.len() == n {
            return (text, again);
        }
    }
    panic!("no text of {n} tokens");
}

/// The chat model's file in this machine's model store.
fn gguf() -> std::path::PathBuf {
    let store = mesh_host::models::ModelStore::open(&mesh_host::models::ModelStore::default_dir())
        .expect("the model store (scripts/setup.sh)");
    let entry = store
        .entries()
        .iter()
        .find(|e| e.name == "smollm2-135m-instruct")
        .expect("the chat model (scripts/setup.sh)")
        .clone();
    store.verified_path(&entry).unwrap()
}

/// This process's peak resident set, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// One measured generation.
#[derive(Debug, Clone, Copy)]
struct Timing {
    prompt_tokens: usize,
    generated: usize,
    /// From the call to the first generated token.
    first_token: Duration,
    /// From the first generated token to the last.
    rest: Duration,
}

impl Timing {
    fn json(&self) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "generated": self.generated,
            "first_token_s": self.first_token.as_secs_f64(), "rest_s": self.rest.as_secs_f64()})
    }
}

/// (a): the chat workload on a warm executor (the component compiled, the model loaded).
struct Workload {
    executor: mesh_host::Executor,
    chat: mesh_proto::Blake3Hash,
    _data: tempfile::TempDir,
}

impl Workload {
    fn new() -> Self {
        let data = tempfile::tempdir().unwrap();
        let executor = mesh_host::Executor::new(mesh_host::ExecutorConfig {
            data_dir: data.path().to_path_buf(),
            backend_config: mesh_host::backend::BackendConfig {
                threads: THREADS,
                ..Default::default()
            },
            ..mesh_host::ExecutorConfig::default()
        })
        .unwrap();
        let chat = executor
            .add_component(&std::fs::read(mesh_test_artifacts::CHAT).unwrap())
            .unwrap()
            .component;
        executor
            .run(&chat, br#"{"prompt": "Hello", "max_tokens": 1}"#)
            .unwrap();
        Workload {
            executor,
            chat,
            _data: data,
        }
    }

    /// One generation; the first streamed piece marks the first token.
    fn run(&self, input: &Value) -> Timing {
        let first = std::sync::Arc::new(std::sync::Mutex::new(None));
        let sink: mesh_host::PieceSink = Box::new({
            let first = first.clone();
            move |_| {
                first.lock().unwrap().get_or_insert_with(Instant::now);
            }
        });
        let started = Instant::now();
        let out = self
            .executor
            .run_streaming(
                &self.chat,
                &serde_json::to_vec(input).unwrap(),
                &mesh_host::CancelToken::new(),
                Some(sink),
            )
            .unwrap();
        let ended = Instant::now();
        let out: Value = serde_json::from_slice(&out.output).unwrap();
        let first = first.lock().unwrap().expect("a piece");
        Timing {
            prompt_tokens: out["prompt_tokens"].as_u64().unwrap() as usize,
            generated: out["completion_tokens"].as_u64().unwrap() as usize,
            first_token: first - started,
            rest: ended - first,
        }
    }
}

fn run_workload(inputs: &[Value], rounds: usize) -> Vec<Vec<Timing>> {
    let workload = Workload::new();
    inputs
        .iter()
        .map(|input| (0..rounds).map(|_| workload.run(input)).collect())
        .collect()
}

/// (b): the same engine called natively, greedy, every logit copied out as (a) gets them.
fn run_native(prompts: &[Vec<u32>], rounds: usize) -> Vec<Vec<Timing>> {
    let model = mesh_llm::Llama::load(std::fs::read(gguf()).unwrap(), THREADS).unwrap();
    let argmax = |logits: &[f32]| {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    prompts
        .iter()
        .map(|prompt| {
            (0..rounds)
                .map(|_| {
                    let mut session = model.session(prompt.len() + GENERATED).unwrap();
                    let started = Instant::now();
                    let logits = model
                        .forward(&mut session, prompt, mesh_llm::model::Logits::Last)
                        .unwrap();
                    let mut next = argmax(&logits);
                    let first = Instant::now();
                    for _ in 1..GENERATED {
                        let logits = model
                            .forward(&mut session, &[next], mesh_llm::model::Logits::Last)
                            .unwrap();
                        next = argmax(&logits);
                    }
                    Timing {
                        prompt_tokens: prompt.len(),
                        generated: GENERATED,
                        first_token: first - started,
                        rest: first.elapsed(),
                    }
                })
                .collect()
        })
        .collect()
}

/// A child process of this harness: runs one engine (`MESH_BENCH_CHILD`) and prints its
/// timings and peak RSS.
#[test]
#[ignore = "started by bench_chat"]
fn bench_chat_engine() {
    let Ok(request) = std::env::var("MESH_BENCH_CHILD") else {
        return;
    };
    let request: Value = serde_json::from_str(&request).unwrap();
    let rounds = request["rounds"].as_u64().unwrap() as usize;
    let timings = match request["engine"].as_str().unwrap() {
        "workload" => run_workload(request["inputs"].as_array().unwrap(), rounds),
        "native" => {
            let prompts: Vec<Vec<u32>> =
                serde_json::from_value(request["prompts"].clone()).unwrap();
            run_native(&prompts, rounds)
        }
        other => panic!("engine {other}"),
    };
    let timings: Vec<Vec<Value>> = timings
        .iter()
        .map(|runs| runs.iter().map(Timing::json).collect())
        .collect();
    println!(
        "MESH_BENCH_RESULT {}",
        json!({"timings": timings, "peak_rss_bytes": peak_rss()})
    );
}

/// Run one engine in a child process of this harness.
fn child(request: Value) -> Value {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "bench_chat_engine", "--ignored", "--nocapture"])
        .env("MESH_BENCH_CHILD", request.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("MESH_BENCH_RESULT "))
        .unwrap_or_else(|| panic!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    serde_json::from_str(line).unwrap()
}

fn timings_of(result: &Value, i: usize) -> Vec<Timing> {
    result["timings"][i]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| Timing {
            prompt_tokens: t["prompt_tokens"].as_u64().unwrap() as usize,
            generated: t["generated"].as_u64().unwrap() as usize,
            first_token: Duration::from_secs_f64(t["first_token_s"].as_f64().unwrap()),
            rest: Duration::from_secs_f64(t["rest_s"].as_f64().unwrap()),
        })
        .collect()
}

/// Medians of one engine on one prompt: prompt tokens/s, generated tokens/s, first token.
struct Row {
    prompt_tps: f64,
    generated_tps: f64,
    first_token_ms: f64,
}

fn row(timings: &[Timing]) -> Row {
    Row {
        prompt_tps: median(
            timings
                .iter()
                .map(|t| t.prompt_tokens as f64 / t.first_token.as_secs_f64())
                .collect(),
        ),
        generated_tps: median(
            timings
                .iter()
                .map(|t| (t.generated.saturating_sub(1)) as f64 / t.rest.as_secs_f64())
                .collect(),
        ),
        first_token_ms: median(
            timings
                .iter()
                .map(|t| t.first_token.as_secs_f64() * 1e3)
                .collect(),
        ),
    }
}

/// Read bandwidth of this machine with `THREADS` threads, in bytes/s (median of 5 passes
/// over 1 GiB).
fn memory_bandwidth() -> f64 {
    let words = (1usize << 30) / 8;
    let buffer: Vec<u64> = (0..words as u64).collect();
    let passes: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let sums: u64 = std::thread::scope(|s| {
                buffer
                    .chunks(words / THREADS)
                    .map(|part| s.spawn(move || part.iter().fold(0u64, |a, &x| a.wrapping_add(x))))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .fold(0u64, u64::wrapping_add)
            });
            std::hint::black_box(sums);
            (words * 8) as f64 / started.elapsed().as_secs_f64()
        })
        .collect();
    median(passes)
}

/// Bytes of weights one generated token reads: every block's matrices and norms and the
/// output matrix (the token embedding, when the model ties them).
fn weight_bytes_per_token() -> u64 {
    let model = mesh_llm::Llama::load(std::fs::read(gguf()).unwrap(), 1).unwrap();
    let gguf = model.gguf();
    let size = |name: &str| gguf.tensor(name).map(|(i, _)| i.range.len() as u64).ok();
    let mut total = 0;
    for layer in 0..model.config().layers {
        for part in [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
            "attn_norm",
            "ffn_norm",
        ] {
            total += size(&format!("blk.{layer}.{part}.weight")).unwrap_or(0);
        }
    }
    total += size("output_norm.weight").unwrap_or(0);
    total += size("output.weight")
        .or(size("token_embd.weight"))
        .unwrap_or(0);
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it on an idle machine, release build"]
async fn bench_chat() {
    let rounds = rounds();
    let prompts: Vec<(String, Vec<u32>)> = [32, 512].into_iter().map(prompt_of).collect();
    let question = json!({"messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16, "temperature": 0});
    let mut inputs: Vec<Value> = prompts
        .iter()
        .map(|(text, _)| json!({"prompt": text, "max_tokens": GENERATED, "temperature": 0}))
        .collect();
    inputs.push(question.clone());
    let ids: Vec<Vec<u32>> = prompts.iter().map(|(_, ids)| ids.clone()).collect();
    let workload = child(json!({"engine": "workload", "inputs": inputs, "rounds": rounds}));
    let native = child(json!({"engine": "native", "prompts": ids, "rounds": rounds}));
    let llama_python = mesh_host::cache_dir().join("llama-venv/bin/python");
    let llama = llama_python.exists().then(|| {
        let request = json!({
            "gguf": gguf(), "threads": THREADS,
            "prompts": (0..rounds).flat_map(|_| ids.iter().map(|p| json!({"tokens": p,
                "max_tokens": GENERATED, "stop_at_end_of_turn": false}))).collect::<Vec<_>>(),
        });
        let mut child = std::process::Command::new(&llama_python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../scripts/llm_llamacpp.py"
            ))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(request.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    });
    let bandwidth = memory_bandwidth();
    let per_token = weight_bytes_per_token();
    let bound = bandwidth / per_token as f64;
    let mib = |v: &Value| v["peak_rss_bytes"].as_u64().unwrap() as f64 / (1 << 20) as f64;
    println!(
        "chat benchmark: SmolLM2-135M-Instruct Q4_1, {GENERATED} generated tokens, greedy, \
         {THREADS} threads, median of {rounds}"
    );
    println!(
        "memory bandwidth {:.1} GB/s; {:.1} MB of weights per token: bound {bound:.0} tokens/s",
        bandwidth / 1e9,
        per_token as f64 / 1e6
    );
    println!(
        "{:<8} {:<44} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "prompt", "engine", "prompt/s", "gen/s", "TTFT ms", "RSS MiB", "of bound"
    );
    for (i, (_, ids)) in prompts.iter().enumerate() {
        let a = row(&timings_of(&workload, i));
        let b = row(&timings_of(&native, i));
        let print = |engine: &str, r: &Row, rss: f64| {
            println!(
                "{:<8} {engine:<44} {:>10.0} {:>10.1} {:>10.1} {:>9.0} {:>8.0}%",
                ids.len(),
                r.prompt_tps,
                r.generated_tps,
                r.first_token_ms,
                rss,
                100.0 * r.generated_tps / bound
            )
        };
        print(
            "(a) chat workload (wasm, wasi:nn, mesh-llm)",
            &a,
            mib(&workload),
        );
        print("(b) mesh-llm native", &b, mib(&native));
        if let Some(llama) = &llama {
            let answers = llama["answers"].as_array().unwrap();
            let timings: Vec<Timing> = answers
                .iter()
                .skip(i)
                .step_by(prompts.len())
                .map(|t| Timing {
                    prompt_tokens: ids.len(),
                    generated: t["tokens"].as_array().unwrap().len(),
                    first_token: Duration::from_secs_f64(t["first_token_s"].as_f64().unwrap()),
                    rest: Duration::from_secs_f64(
                        t["generate_s"].as_f64().unwrap()
                            - (t["first_token_s"].as_f64().unwrap()
                                - t["prompt_s"].as_f64().unwrap()),
                    ),
                })
                .collect();
            let engine = format!(
                "(c) llama.cpp (llama-cpp-python {})",
                llama["llama_cpp_python"]
            );
            print(&engine, &row(&timings), mib(llama));
        }
        println!(
            "{:<8} (a)/(b) generated tokens/s: {:.3} (target >= 0.9)",
            ids.len(),
            a.generated_tps / b.generated_tps
        );
    }

    // Through the mesh: the first streamed token of the same request, against (a)'s, the
    // two measured in turn in this process (whose cores the control plane, the relay and the
    // host share), so both see the same machine.
    let own_process = row(&timings_of(&workload, prompts.len()));
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 1,
        ..MeshOptions::default()
    })
    .await;
    mesh.publish(mesh_test_artifacts::CHAT).await;
    let local_workload =
        std::sync::Arc::new(tokio::task::spawn_blocking(Workload::new).await.unwrap());
    let http = reqwest::Client::new();
    let mut request = question.clone();
    request["model"] = json!("smollm2-135m-instruct");
    request["stream"] = json!(true);
    let (mut firsts, mut locals) = (Vec::new(), Vec::new());
    for round in 0..rounds + 1 {
        let runner = local_workload.clone();
        let input = question.clone();
        let local = tokio::task::spawn_blocking(move || runner.run(&input))
            .await
            .unwrap();
        let started = Instant::now();
        let mut response = http
            .post(format!("{}/v1/chat/completions", mesh.url))
            .bearer_auth(mesh.admin_token())
            .json(&request)
            .send()
            .await
            .unwrap();
        let mut seen = String::new();
        let mut first = None;
        while let Some(bytes) = response.chunk().await.unwrap() {
            seen.push_str(std::str::from_utf8(&bytes).unwrap());
            if first.is_some() {
                continue;
            }
            // The first event whose delta carries text (the role's chunk carries none).
            let texts = seen
                .split("\n\n")
                .filter_map(|event| event.strip_prefix("data: "))
                .filter_map(|data| serde_json::from_str::<Value>(data).ok())
                .any(|chunk| {
                    chunk["choices"][0]["delta"]["content"]
                        .as_str()
                        .is_some_and(|t| !t.is_empty())
                });
            if texts {
                first = Some(started.elapsed());
            }
        }
        assert!(seen.contains("[DONE]"), "{seen}");
        // The first round warms the host (component compiled, model loaded).
        if round > 0 {
            firsts.push(first.expect("a streamed token").as_secs_f64() * 1e3);
            locals.push(local.first_token.as_secs_f64() * 1e3);
        }
    }
    let (through_mesh, here) = (median(firsts), median(locals));
    println!(
        "first streamed token through the mesh (gateway, relay, host): {through_mesh:.1} ms; \
         (a) on the same request in turn with it: {here:.1} ms (in its own process: {:.1}); \
         difference {:.1} ms (target <= 20)",
        own_process.first_token_ms,
        through_mesh - here
    );
}
