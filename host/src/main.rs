//! `mesh-host`: the Mesh device agent's command line, around the `mesh_host` library.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use mesh_host::agent;
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
    /// Register this device in a network with a device invite and write its config.
    Join {
        /// The device invite code.
        invite: String,
        /// The control plane's URL.
        #[arg(
            long,
            env = "MESH_CONTROL_PLANE",
            default_value = "http://127.0.0.1:7420"
        )]
        control_plane: String,
        /// Display name (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// Config file to write (default: $XDG_CONFIG_HOME/mesh/host.toml).
        #[arg(long, env = agent::config::CONFIG_ENV)]
        config: Option<PathBuf>,
        /// Replace an existing config.
        #[arg(long)]
        force: bool,
        /// Address to listen on (repeatable; default QUIC and TCP on every interface).
        #[arg(long)]
        listen: Vec<String>,
        /// Model variant to bind: fp32 or int8.
        #[arg(long)]
        model_variant: Option<String>,
        /// Directory for components and compiled artifacts.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Directory of the model store.
        #[arg(long)]
        model_dir: Option<PathBuf>,
        /// Jobs run at once (0: half the cores).
        #[arg(long, default_value_t = 0)]
        slots: usize,
        /// Jobs that may wait before the device answers busy.
        #[arg(long)]
        queue_capacity: Option<usize>,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Run the device agent: heartbeats, relay reservation, and jobs from peers.
    Run {
        /// Config file (default: $XDG_CONFIG_HOME/mesh/host.toml).
        #[arg(long, env = agent::config::CONFIG_ENV)]
        config: Option<PathBuf>,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Run one job on the mesh with this device as requester, and print the result as JSON.
    Submit {
        /// The workload's component hash (b3:…).
        #[arg(long)]
        workload: mesh_proto::Blake3Hash,
        /// Input file (JSON); `-` reads standard input.
        #[arg(long, short)]
        input: PathBuf,
        /// Retrying with the same key runs (and charges) the job once.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Run the job this many times, one after the other over one network node (one JSON
        /// line each).
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Pause between those jobs, in milliseconds.
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
        /// Cancel a job at its executor (and fail it, refunded) when it has not answered
        /// this many milliseconds after it was sent.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Config file (default: $XDG_CONFIG_HOME/mesh/host.toml).
        #[arg(long, env = agent::config::CONFIG_ENV)]
        config: Option<PathBuf>,
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

pub(crate) fn main() -> ExitCode {
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
        Command::Join {
            invite,
            control_plane,
            name,
            config,
            force,
            listen,
            model_variant,
            data_dir,
            model_dir,
            slots,
            queue_capacity,
            backend,
        } => {
            let options = agent::join::JoinOptions {
                invite,
                control_plane,
                name: name.unwrap_or_else(host_name),
                config_path: config.unwrap_or_else(agent::config::HostConfig::default_path),
                force,
                template: agent::join::Template {
                    listen,
                    backend: backend.backend.map(|b| b.name().to_string()),
                    model_variant,
                    data_dir,
                    model_dir,
                    slots,
                    queue_capacity,
                    threads: backend.threads,
                },
            };
            runtime()?.block_on(agent::join::join(options, &backend.config()))?;
            Ok(())
        }
        Command::Run { config, backend } => {
            let path = config.unwrap_or_else(agent::config::HostConfig::default_path);
            let config = agent::config::HostConfig::load(&path)?;
            let executor =
                Executor::new(config.executor_config(backend.backend, backend.config())?)?;
            runtime()?.block_on(agent::serve::run(config, executor, shutdown_signal()))
        }
        Command::Submit {
            workload,
            input,
            idempotency_key,
            count,
            pause_ms,
            timeout_ms,
            config,
        } => {
            let path = config.unwrap_or_else(agent::config::HostConfig::default_path);
            let config = agent::config::HostConfig::load(&path)?;
            let input = read_input(&input, Limits::default().input_bytes)?;
            let options = agent::submit::SubmitOptions {
                idempotency_key,
                count,
                pause: std::time::Duration::from_millis(pause_ms),
                timeout: timeout_ms.map(std::time::Duration::from_millis),
            };
            runtime()?.block_on(agent::submit::submit(
                &config,
                workload,
                input,
                options,
                |result| print_stdout(&serde_json::to_string(&result)?),
            ))
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

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "device".into())
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
