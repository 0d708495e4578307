//! A hostile workload for the executor's sandbox tests. The input (UTF-8) names the attack:
//!
//! - `loop`: spin forever (stopped by the epoch deadline).
//! - `grow`: allocate until memory runs out (stopped by the memory limit).
//! - `recurse`: unbounded recursion (stopped by the stack limit).
//! - `big-output:N`: return N bytes (stopped by the output limit).
//! - `open-file`: try to read host files (there are no preopened directories).
//! - `trap`: panic, which aborts (a trap).
//! - `giant-tensor`: a tensor whose dimensions describe terabytes.
//! - `inconsistent-tensor`: a tensor whose data does not match its dimensions.
//! - `big-tensor:N`: a consistent tensor of N bytes (stopped by the tensor size cap).
//! - `load-bytes`: try to supply model bytes instead of loading a host model by name.
//! - `slow-inference:N`: N back-to-back inference calls on a 256-token batch of 64.
//! - `llm-contexts:N`: open N generations of the chat model at once, each asking for the
//!   longest cache (stopped by the job's memory allowance, which all of them share).
//! - `llm-contexts-dropped:N`: the same one after another, each dropped before the next.
//! - `emit-big`: stream one piece over the 64 KiB cap.
//! - `emit-flood:N`: stream N pieces of 64 KiB (past the job's streaming cap when N > 64).
//! - `ok`: succeed, to show the host keeps serving after the attacks.

use mesh_guest::bindings::wasi::nn::graph::{self, ExecutionTarget, GraphEncoding};
use mesh_guest::bindings::wasi::nn::tensor::{Tensor, TensorType};
use mesh_guest::{JobError, Metadata, Model, Workload};

const MODEL: &str = "all-minilm-l6-v2";
const CHAT_MODEL: &str = "smollm2-135m-instruct";

struct Hostile;

impl Workload for Hostile {
    fn metadata() -> Metadata {
        Metadata::new("hostile", env!("CARGO_PKG_VERSION"))
            .model(MODEL)
            .model(CHAT_MODEL)
    }

    fn run(input: Vec<u8>) -> Result<Vec<u8>, JobError> {
        let command = String::from_utf8(input).map_err(JobError::invalid_input)?;
        let (attack, arg) = command.split_once(':').unwrap_or((&command, "0"));
        let arg: usize = arg.parse().map_err(JobError::invalid_input)?;
        match attack {
            "loop" => spin(),
            "grow" => grow(),
            "recurse" => Ok(recurse(1).to_le_bytes().to_vec()),
            "big-output" => Ok(vec![7u8; arg]),
            "open-file" => open_file(),
            "trap" => panic!("hostile workload panics on purpose"),
            "giant-tensor" => tensor(&[65536, 65536, 65536], &[0u8; 16]),
            "inconsistent-tensor" => tensor(&[1, 8], &[1u8; 3]),
            "big-tensor" => tensor(&[1, (arg / 8) as u32], &vec![0u8; arg / 8 * 8]),
            "load-bytes" => load_bytes(),
            "slow-inference" => slow_inference(arg),
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(arg as u64));
                Ok(b"slept".to_vec())
            }
            "llm-contexts" => llm_contexts(arg, true),
            "llm-contexts-dropped" => llm_contexts(arg, false),
            "emit-big" => {
                mesh_guest::emit(&vec![7; (64 << 10) + 1]);
                Ok(b"emitted".to_vec())
            }
            "emit-flood" => {
                let piece = vec![7; 64 << 10];
                for _ in 0..arg {
                    mesh_guest::emit(&piece);
                }
                Ok(format!("emitted {arg}").into_bytes())
            }
            "ok" => Ok(b"ok".to_vec()),
            other => Err(JobError::invalid_input(format!("unknown attack {other}"))),
        }
    }
}

fn llm_contexts(n: usize, keep: bool) -> Result<Vec<u8>, JobError> {
    let mut open = Vec::new();
    for _ in 0..n {
        let model = Model::load(CHAT_MODEL)?;
        model.compute_i32(&[("tokens", &[1], &[1]), ("capacity", &[1], &[2048])])?;
        if keep {
            open.push(model);
        }
    }
    Ok(format!("{n} contexts").into_bytes())
}

fn spin() -> Result<Vec<u8>, JobError> {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

fn grow() -> Result<Vec<u8>, JobError> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(std::hint::black_box(vec![1u8; 8 << 20]));
    }
}

/// Recursion on the wasm stack itself (scalar locals only, so Rust's shadow stack in linear
/// memory is not what runs out).
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    std::hint::black_box(recurse(std::hint::black_box(depth + 1))) + depth
}

fn open_file() -> Result<Vec<u8>, JobError> {
    let mut seen = Vec::new();
    for path in ["/etc/passwd", "/", ".", "/proc/self/environ"] {
        match std::fs::read(path) {
            Ok(bytes) => seen.push(format!("read {path}: {} bytes", bytes.len())),
            Err(e) => seen.push(format!("{path}: {e}")),
        }
    }
    if let Ok(entries) = std::fs::read_dir(".") {
        seen.push(format!("listed . with {} entries", entries.count()));
    }
    if std::env::vars().next().is_some() {
        seen.push("saw environment variables".to_string());
    }
    Err(JobError::internal(seen.join("; ")))
}

fn tensor(dims: &[u32], data: &[u8]) -> Result<Vec<u8>, JobError> {
    let model = Model::load(MODEL)?;
    let names = ["input_ids", "attention_mask", "token_type_ids"];
    let inputs = names
        .iter()
        .map(|n| (n.to_string(), Tensor::new(dims, TensorType::I64, data)))
        .collect();
    let outputs = model.compute(inputs)?;
    Ok(format!("computed {} outputs", outputs.len()).into_bytes())
}

fn load_bytes() -> Result<Vec<u8>, JobError> {
    let fake_model = vec![0u8; 1024];
    match graph::load(&[fake_model], GraphEncoding::Onnx, ExecutionTarget::Cpu) {
        Ok(_) => Ok(b"loaded a model from bytes".to_vec()),
        Err(e) => Err(JobError::inference(format!("{:?}: {}", e.code(), e.data()))),
    }
}

fn slow_inference(calls: usize) -> Result<Vec<u8>, JobError> {
    let model = Model::load(MODEL)?;
    let dims = [64u32, 256];
    let ids = vec![1000i64; 64 * 256];
    let mask = vec![1i64; 64 * 256];
    let types = vec![0i64; 64 * 256];
    for _ in 0..calls {
        model.compute_i64(&[
            ("input_ids", &dims, &ids),
            ("attention_mask", &dims, &mask),
            ("token_type_ids", &dims, &types),
        ])?;
    }
    Ok(format!("{calls} calls").into_bytes())
}

mesh_guest::export_workload!(Hostile);
