//! `mesh-host`: the Mesh device agent.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use mesh_host::backend::{self, BackendConfig, BackendKind};
use mesh_host::models::ModelStore;
use mesh_host::{Executor, ExecutorConfig, Limits};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

/// Environment variable overriding the ONNX Runtime library path.
const ORT_LIBRARY_ENV: &str = "MESH_ORT_LIBRARY";
/// Environment variable overriding the OpenVINO C library path.
const OPENVINO_LIBRARY_ENV: &str = "MESH_OPENVINO_LIBRARY";

#[derive(Parser)]
#[command(name = "mesh-host", version, about = "The Mesh device agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct BackendArgs {
    /// Inference backend: onnxruntime, openvino or tract (default: the first available).
    #[arg(long)]
    backend: Option<BackendKind>,
    /// Path of libonnxruntime.so.
    #[arg(long, env = ORT_LIBRARY_ENV)]
    onnxruntime_library: Option<PathBuf>,
    /// Path of libopenvino_c.so.
    #[arg(long, env = OPENVINO_LIBRARY_ENV)]
    openvino_library: Option<PathBuf>,
    /// Inference threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

impl BackendArgs {
    fn config(&self) -> BackendConfig {
        BackendConfig {
            onnxruntime_library: self.onnxruntime_library.clone(),
            openvino_library: self.openvino_library.clone(),
            threads: self.threads,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run one job of a workload component locally and print its output and receipt as JSON.
    Exec {
        /// The component (.wasm).
        component: PathBuf,
        /// Input file (JSON for the embeddings workload); `-` reads standard input.
        #[arg(long, short)]
        input: PathBuf,
        /// Model variant to bind: fp32 or int8.
        #[arg(long, default_value = "fp32")]
        model_variant: String,
        /// Directory of the model store (default: <cache>/models).
        #[arg(long)]
        model_dir: Option<PathBuf>,
        /// Wall-time limit of the job in milliseconds.
        #[arg(long)]
        time_limit_ms: Option<u64>,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// List the inference backends available on this device, and why others are not.
    Backends {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        backend: BackendArgs,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Exec {
            component,
            input,
            model_variant,
            model_dir,
            time_limit_ms,
            backend,
        } => {
            let mut limits = Limits::default();
            if let Some(ms) = time_limit_ms {
                limits.job_time = std::time::Duration::from_millis(ms);
            }
            let input = read_input(&input, limits.input_bytes)?;
            let bytes = std::fs::read(&component)
                .with_context(|| format!("reading {}", component.display()))?;
            let executor = Executor::new(ExecutorConfig {
                limits,
                backend: backend.backend,
                backend_config: backend.config(),
                model_variant,
                model_dir: model_dir.unwrap_or_else(ModelStore::default_dir),
                ..ExecutorConfig::default()
            })?;
            let metadata = executor.add_component(&bytes)?;
            let result = executor.run(&metadata.component, &input)?;
            // Workloads answer in JSON or CBOR; show JSON, with the receipt alongside.
            let receipt = serde_json::to_string(&result.receipt)?;
            let document = match mesh_proto::document::to_json_string(&result.output) {
                Ok(json) if json.starts_with('{') && json.len() > 2 => {
                    format!("{},\"receipt\":{receipt}}}", &json[..json.len() - 1])
                }
                Ok(json) => format!("{{\"output\":{json},\"receipt\":{receipt}}}"),
                Err(_) => serde_json::json!({
                    "output": String::from_utf8_lossy(&result.output),
                    "receipt": result.receipt,
                })
                .to_string(),
            };
            print_stdout(&document)
        }
        Command::Backends { json, backend } => {
            let statuses = backend::probe(&backend.config());
            if json {
                print_stdout(&serde_json::to_string_pretty(&statuses)?)?;
            } else {
                for s in &statuses {
                    let mark = if s.available {
                        "available  "
                    } else {
                        "unavailable"
                    };
                    println!("{:<12} {mark}  {}", s.backend.name(), s.detail);
                }
            }
            Ok(())
        }
    }
}

/// Print a line to stdout; a closed pipe (`| head`) is not an error.
fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Read the job input, refusing more than `limit` bytes without buffering them all.
fn read_input(path: &PathBuf, limit: usize) -> Result<Vec<u8>> {
    let reader: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(path)
                .with_context(|| format!("opening input {}", path.display()))?,
        )
    };
    let mut input = Vec::new();
    reader.take(limit as u64 + 1).read_to_end(&mut input)?;
    if input.len() > limit {
        bail!("input is larger than the limit of {limit} bytes");
    }
    Ok(input)
}
