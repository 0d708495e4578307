//! `mesh`: the Mesh command-line tool.
//!
//! Exit codes: 0 success; 1 other errors; 2 usage errors; 3 not authenticated; 4 forbidden;
//! 5 not found; 6 conflict (already exists, wrong state, insufficient credits); 7 the server
//! could not be reached.

mod batch;
mod config;
mod policy;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use config::Config;
use futures_util::StreamExt;
use mesh_client::{Client, ClientError};
use mesh_proto::api::*;
use mesh_proto::{Blake3Hash, DeviceId, InviteId, JobId, NetworkId, PersonId, TokenId};
use serde::Serialize;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mesh",
    version,
    about = "Drive a Mesh control plane: networks, devices, workloads, credits and jobs",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 3 not authenticated, 4 forbidden, 5 not found, \
                  6 conflict or insufficient credits, 7 server unreachable.\n\
                  Configuration: $XDG_CONFIG_HOME/mesh/config.toml; MESH_SERVER, MESH_TOKEN, MESH_NETWORK override it."
)]
struct Cli {
    /// Control-plane URL (overrides the configuration).
    #[arg(long, global = true)]
    server: Option<String>,
    /// Network id (defaults to the configured network).
    #[arg(long, global = true)]
    network: Option<String>,
    /// Print JSON instead of text (read commands).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Store a server URL and token after checking them (or join with a person invite).
    Login(LoginArgs),
    /// Networks, members and invites.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Devices of a network.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// The workload registry.
    #[command(subcommand)]
    Workload(WorkloadCommand),
    /// Credits.
    #[command(subcommand)]
    Credits(CreditsCommand),
    /// Your API tokens (for scripts, or to sign in to the web console).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// Chat with the network's chat workload (SmolLM2-135M-Instruct) on the mesh: one
    /// question, or, with none, a conversation read from standard input a message a line.
    Chat {
        /// The question.
        question: Option<String>,
        /// A system prompt (default: the model's own).
        #[arg(long)]
        system: Option<String>,
        /// Most tokens an answer may have.
        #[arg(long, default_value_t = 256)]
        max_tokens: u64,
        /// Sampling temperature (0: greedy, the same answer every time).
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Seed of the sampler (with a temperature above 0).
        #[arg(long)]
        seed: Option<u64>,
        /// The workload (name or hash).
        #[arg(long, default_value = "chat")]
        workload: String,
    },
    /// Embed texts with the network's embeddings workload (all-MiniLM-L6-v2) on the mesh: a
    /// few given here, or a whole file as a batch across every device (`--file`, `--out`).
    Embed {
        /// The texts.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        texts: Vec<String>,
        /// A file of texts: one a line, or JSON Lines (`.jsonl`: strings or `{"text": …}`).
        #[arg(long, requires = "out")]
        file: Option<std::path::PathBuf>,
        /// Where the vectors go: `.npy` (float32, items × dimensions) or JSON Lines.
        #[arg(long, requires = "file")]
        out: Option<std::path::PathBuf>,
        /// Read `--file` as JSON Lines (`jsonl`) or one text a line (`lines`), whatever its
        /// extension says.
        #[arg(long, value_parser = ["lines", "jsonl"])]
        format: Option<String>,
        /// The workload (name or hash).
        #[arg(long, default_value = "all-minilm-l6-v2")]
        workload: String,
        /// Pick up the batch an interrupted `mesh embed --file … --out …` started.
        #[arg(long, requires = "file")]
        resume: bool,
    },
    /// Batches: large inputs split across the network's devices.
    #[command(subcommand)]
    Batch(BatchCommand),
}

#[derive(Subcommand)]
enum BatchCommand {
    /// The network's batches, newest first.
    List,
    /// A batch's progress: items, speed, ETA, devices, failures.
    Show {
        /// Batch id.
        batch: mesh_proto::BatchId,
    },
    /// Cancel a running batch; what it did not spend is refunded.
    Cancel {
        /// Batch id.
        batch: mesh_proto::BatchId,
    },
    /// Write a batch's results (in input order) to a file.
    Results {
        /// Batch id.
        batch: mesh_proto::BatchId,
        /// `.npy` (float32) or JSON Lines (anything else).
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

#[derive(Args)]
struct LoginArgs {
    /// An API token (e.g. from `mesh-control-plane init`).
    #[arg(long, conflicts_with = "invite")]
    token: Option<String>,
    /// A person invite code: joins its network as a new person.
    #[arg(long)]
    invite: Option<String>,
    /// Your name, when joining with an invite.
    #[arg(long, default_value = "me")]
    name: String,
    /// Fingerprint of the control plane's self-signed TLS certificate (`init
    /// --self-signed-tls` prints it), when logging in with a token; invite codes carry it.
    #[arg(long)]
    tls_pin: Option<mesh_proto::pin::Fingerprint>,
}

#[derive(Subcommand)]
enum NetworkCommand {
    /// Create a network (you become its owner) and make it the default.
    Create {
        /// Name.
        name: String,
        /// Let new devices join without approval.
        #[arg(long)]
        no_device_approval: bool,
        /// Credits granted to each new member.
        #[arg(long, default_value_t = 1000)]
        initial_grant: i64,
        /// Credits one job costs.
        #[arg(long, default_value_t = 1)]
        job_price: i64,
        /// Let admins (you included) grant credits to themselves.
        #[arg(long)]
        admins_grant_themselves: bool,
    },
    /// Your networks.
    List,
    /// One network.
    Show,
    /// Create a single-use invite for a person or a device.
    Invite {
        /// Invite a device instead of a person.
        #[arg(long)]
        device: bool,
        /// Make the person an admin.
        #[arg(long)]
        admin: bool,
        /// Lifetime in seconds.
        #[arg(long)]
        expires_in: Option<u64>,
    },
    /// Open invites of the network (admins).
    Invites,
    /// Revoke an open invite (admins; an admin invite, owners).
    RevokeInvite {
        /// Invite id.
        invite: InviteId,
    },
    /// Members of the network.
    Members,
    /// The audit log, newest first (admins): admin actions, failed checks, quarantines.
    Audit {
        /// Entries older than this cursor (printed after each page).
        #[arg(long)]
        before: Option<String>,
        /// Entries per page (1-500).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Remove a member (their devices are revoked).
    RemoveMember {
        /// Person id.
        person: PersonId,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Devices of the network.
    List,
    /// Approve a pending device.
    Approve {
        /// Device id.
        device: DeviceId,
    },
    /// Revoke a device.
    Revoke {
        /// Device id.
        device: DeviceId,
    },
    /// Lift a device's quarantine (another admin than its owner): it gets jobs again, and its
    /// next failed check quarantines it again.
    Release {
        /// Device id.
        device: DeviceId,
    },
    /// The terms a device works on: which workloads, for whom, when and how much.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

#[derive(Subcommand)]
enum WorkloadCommand {
    /// Upload a component (validated by the server, stored by its BLAKE3).
    Publish {
        /// The component (.wasm).
        file: std::path::PathBuf,
    },
    /// Workloads of the network.
    List,
    /// One workload.
    Show {
        /// Component hash (b3:…).
        hash: Blake3Hash,
    },
    /// Yank a workload (no new jobs).
    Yank {
        /// Component hash (b3:…).
        hash: Blake3Hash,
    },
}

#[derive(Subcommand)]
enum CreditsCommand {
    /// A balance (yours, or a member's as an admin).
    Balance {
        /// Person id.
        #[arg(long)]
        person: Option<PersonId>,
    },
    /// Ledger entries, newest first.
    History {
        /// Person id.
        #[arg(long)]
        person: Option<PersonId>,
    },
    /// Grant credits to a member (admin).
    Grant {
        /// Person id.
        person: PersonId,
        /// Credits.
        amount: i64,
        /// Idempotency key: repeating the command with it grants once.
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token (it ends when the one you are logged in with does); prints its secret,
    /// shown only this once.
    Create {
        /// What it is for.
        #[arg(long, default_value = "console")]
        label: String,
        /// Lifetime in seconds (default: until revoked).
        #[arg(long)]
        expires_in: Option<u64>,
    },
    /// Your tokens, revoked and expired ones too.
    List,
    /// Revoke a token and every token made with it.
    Revoke {
        /// Token id (`tok_…`).
        token: TokenId,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// Recent jobs of the network.
    List,
    /// One job.
    Show {
        /// Job id.
        job: JobId,
    },
    /// Check offline that the VRF selection of a settled job (checked or not) was computed
    /// correctly, and show what its check found.
    Verify {
        /// Job id.
        job: JobId,
        /// The control plane's VRF public key (hex) to check against, if you hold it already;
        /// otherwise it is fetched from `/v1/vrf`.
        #[arg(long)]
        vrf_key: Option<String>,
    },
    /// Run a job on the mesh (dispatched by the control plane) and print its output.
    Submit {
        /// The workload: its hash (b3:…) or its name (the newest live version).
        workload: String,
        /// Input document (JSON); `-` reads standard input.
        #[arg(long, short)]
        input: std::path::PathBuf,
        /// Retrying with the same key runs (and charges) the job once.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

fn exit_code(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<ClientError>() {
        Some(ClientError::Api { status, .. }) => match status.as_u16() {
            401 => 3,
            403 => 4,
            404 => 5,
            402 | 409 | 410 => 6,
            _ => 1,
        },
        Some(ClientError::Transport(_)) => 7,
        _ => 1,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(exit_code(&error))
        }
    }
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce(&T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", text(value));
    }
    Ok(())
}

fn parse<T: std::str::FromStr>(text: &str, what: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| anyhow!("invalid {what} {text:?}: {e}"))
}

struct Ctx {
    client: Client,
    config: Config,
    network: Option<String>,
    json: bool,
}

impl Ctx {
    fn network(&self) -> Result<NetworkId> {
        let text = self
            .network
            .as_deref()
            .or(self.config.network.as_deref())
            .ok_or_else(|| {
                anyhow!(
                    "no network: pass --network, set MESH_NETWORK, or run `mesh network create`"
                )
            })?;
        parse(text, "network id")
    }
}

async fn run(cli: Cli) -> Result<()> {
    let mut config = Config::load()?;
    if let Some(server) = &cli.server {
        config.server = Some(server.clone());
    }
    let server = config.server.clone().ok_or_else(|| {
        anyhow!("no server: pass --server, set MESH_SERVER, or run `mesh login --server URL`")
    })?;
    let client = Client::pinned(&server, config.token.clone(), config.tls_pin)?;
    let ctx = Ctx {
        client,
        config,
        network: cli.network,
        json: cli.json,
    };
    match cli.command {
        Command::Login(args) => login(ctx, args).await,
        Command::Network(command) => network(ctx, command).await,
        Command::Device(command) => device(ctx, command).await,
        Command::Workload(command) => workload(ctx, command).await,
        Command::Credits(command) => credits(ctx, command).await,
        Command::Token(command) => token(ctx, command).await,
        Command::Job(command) => job(ctx, command).await,
        Command::Embed {
            texts,
            file: Some(file),
            out: Some(out),
            format,
            workload,
            resume,
        } => {
            let network = ctx.network()?;
            let format = format.map(|f| match f.as_str() {
                "jsonl" => mesh_proto::batch::InputFormat::Jsonl,
                _ => mesh_proto::batch::InputFormat::Lines,
            });
            let _ = texts;
            batch::embed_file(
                &ctx.client,
                &network,
                &workload,
                &file,
                format,
                &out,
                resume,
                ctx.json,
            )
            .await
        }
        Command::Embed { texts, .. } => embed(ctx, texts).await,
        Command::Chat {
            question,
            system,
            max_tokens,
            temperature,
            seed,
            workload,
        } => {
            let options = ChatOptions {
                system,
                max_tokens,
                temperature,
                seed,
                workload,
            };
            chat(ctx, question, options).await
        }
        Command::Batch(command) => batches(ctx, command).await,
    }
}

/// The workload `spec` names: a hash, or the newest live workload of that name.
async fn resolve_workload(ctx: &Ctx, network: &NetworkId, spec: &str) -> Result<Blake3Hash> {
    if let Ok(hash) = spec.parse::<Blake3Hash>() {
        return Ok(hash);
    }
    let mut matching: Vec<_> = ctx
        .client
        .workloads(network)
        .await?
        .into_iter()
        .filter(|w| !w.yanked && (w.name == spec || w.models.iter().any(|m| m == spec)))
        .collect();
    matching.sort_by_key(|w| std::cmp::Reverse(w.published_at_ms));
    matching
        .first()
        .map(|w| w.hash)
        .ok_or_else(|| anyhow::anyhow!("no live workload named {spec:?} in this network"))
}

fn run_summary(r: &mesh_proto::api::RunJobResponse) -> String {
    format!(
        "{}  {}  ran on {} ({}, {} attempt{})  price:{}  backend:{}  output:{}",
        r.job.id,
        r.job.state.as_str(),
        r.executor,
        if r.relayed { "relayed" } else { "direct" },
        r.attempts,
        if r.attempts == 1 { "" } else { "s" },
        r.job.price,
        r.receipt.backend,
        r.receipt.output
    )
}

/// How `mesh chat` asks.
struct ChatOptions {
    system: Option<String>,
    max_tokens: u64,
    temperature: f32,
    seed: Option<u64>,
    workload: String,
}

async fn chat(ctx: Ctx, question: Option<String>, options: ChatOptions) -> Result<()> {
    use std::io::Write;
    let network = ctx.network()?;
    let mut messages: Vec<serde_json::Value> = options
        .system
        .iter()
        .map(|s| serde_json::json!({"role": "system", "content": s}))
        .collect();
    let interactive = question.is_none();
    let mut lines = std::io::stdin().lines();
    loop {
        let asked = match &question {
            Some(q) if messages.iter().all(|m| m["role"] != "user") => q.clone(),
            Some(_) => return Ok(()),
            None => {
                if interactive {
                    eprint!("> ");
                }
                match lines.next() {
                    Some(line) => line?,
                    None => return Ok(()),
                }
            }
        };
        if asked.trim().is_empty() {
            continue;
        }
        messages.push(serde_json::json!({"role": "user", "content": asked}));
        let mut request = serde_json::json!({
            "model": options.workload,
            "messages": messages,
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "stream_options": {"include_usage": true},
        });
        if let Some(seed) = options.seed {
            request["seed"] = serde_json::json!(seed);
        }
        // Tokens are printed as they arrive (not with --json, which prints one document).
        let json = ctx.json;
        let answer = ctx
            .client
            .chat_stream(&network, &request, |text| {
                if !json {
                    print!("{text}");
                    let _ = std::io::stdout().flush();
                }
            })
            .await?;
        if json {
            println!("{}", serde_json::to_string(&answer)?);
        } else {
            println!();
            let usage = answer.usage.clone().unwrap_or_default();
            eprintln!(
                "{} · {} prompt + {} generated tokens · {}",
                answer.id, usage["prompt_tokens"], usage["completion_tokens"], answer.finish_reason
            );
        }
        messages.push(serde_json::json!({"role": "assistant", "content": answer.text}));
    }
}

async fn embed(ctx: Ctx, texts: Vec<String>) -> Result<()> {
    let network = ctx.network()?;
    let workload = resolve_workload(&ctx, &network, "all-minilm-l6-v2").await?;
    let result = ctx
        .client
        .run_job(
            &network,
            &mesh_proto::api::RunJobRequest {
                workload,
                input: serde_json::json!({ "texts": texts }),
                idempotency_key: None,
            },
        )
        .await?;
    if ctx.json {
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    let vectors = result.output["embeddings"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (text, vector) in texts.iter().zip(&vectors) {
        let values: Vec<String> = vector
            .as_array()
            .into_iter()
            .flatten()
            .take(4)
            .map(|x| format!("{:+.4}", x.as_f64().unwrap_or(0.0)))
            .collect();
        let dim = vector.as_array().map_or(0, Vec::len);
        println!("[{}, …] ({dim} dims)  {text}", values.join(", "));
    }
    println!("{}", run_summary(&result));
    Ok(())
}

async fn batches(ctx: Ctx, command: BatchCommand) -> Result<()> {
    let network = ctx.network()?;
    match command {
        BatchCommand::List => {
            let list = ctx.client.batches(&network).await?;
            print(ctx.json, &list, |list| {
                list.iter()
                    .map(batch::summary)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        BatchCommand::Show { batch: id } => {
            let info = ctx.client.batch(&network, &id).await?;
            print(ctx.json, &info, |info| {
                let mut lines = vec![batch::summary(info)];
                if let (Some(speed), Some(eta)) = (info.items_per_s, info.eta_s) {
                    lines.push(format!("  {speed:.0} items/s, about {eta:.0}s to go"));
                }
                for d in &info.devices {
                    lines.push(format!(
                        "  {}  {} items  {}  {} running  {} failed",
                        d.device,
                        d.items,
                        d.items_per_s
                            .map_or_else(|| "-".to_string(), |s| format!("{s:.0} items/s")),
                        d.running,
                        d.failed
                    ));
                }
                for failure in &info.failures {
                    lines.push(format!("  failed: {failure}"));
                }
                lines.join("\n")
            })
        }
        BatchCommand::Cancel { batch: id } => {
            let info = ctx.client.cancel_batch(&network, &id).await?;
            print(ctx.json, &info, batch::summary)
        }
        BatchCommand::Results { batch: id, out } => {
            let info = ctx.client.batch(&network, &id).await?;
            batch::write_results(
                &ctx.client,
                &network,
                &info,
                &out,
                batch::result_format(&out),
            )
            .await?;
            println!("wrote {}", out.display());
            Ok(())
        }
    }
}

async fn login(mut ctx: Ctx, args: LoginArgs) -> Result<()> {
    let server = ctx.client.base().to_string();
    let (token, network) = match (args.token, args.invite) {
        (Some(token), _) => {
            if args.tls_pin.is_some() {
                ctx.config.tls_pin = args.tls_pin;
                ctx.client = Client::pinned(&server, None, args.tls_pin)?;
            }
            (token, None)
        }
        (None, Some(invite)) => {
            // The code pins the control plane that made it: its certificate (when
            // self-signed) and its key, both checked before the code is sent.
            let (_, pins) = mesh_proto::pin::split_invite_code(&invite)?;
            ctx.config.tls_pin = pins.certificate;
            ctx.client = Client::pinned(&server, None, pins.certificate)?;
            ctx.client
                .pinned_control_plane_key(pins.key)
                .await
                .context("checking the control plane against the invite code")?;
            let accepted = ctx
                .client
                .with_token(None)
                .accept_invite(&AcceptInviteRequest {
                    code: invite,
                    name: Some(args.name),
                })
                .await?;
            let token = accepted
                .token
                .ok_or_else(|| anyhow!("the server returned no token"))?;
            (token, Some(accepted.network.to_string()))
        }
        (None, None) => bail!("pass --token TOKEN or --invite CODE"),
    };
    let me = ctx
        .client
        .with_token(Some(token.clone()))
        .me()
        .await
        .context("checking the token")?;
    ctx.config.token = Some(token);
    ctx.config.server = Some(ctx.client.base().to_string());
    if network.is_some() {
        ctx.config.network = network;
    } else if ctx.config.network.is_none() {
        ctx.config.network = me.networks.first().map(|n| n.id.to_string());
    }
    let path = ctx.config.save()?;
    eprintln!(
        "logged in as {} ({}); configuration saved to {}",
        me.person.name,
        me.person.id,
        path.display()
    );
    Ok(())
}

fn network_line(n: &NetworkInfo) -> String {
    format!(
        "{}  {:<24} {:<6} approval:{} grant:{} price:{}",
        n.id,
        n.name,
        n.role.as_str(),
        if n.policy.require_device_approval {
            "yes"
        } else {
            "no"
        },
        n.policy.initial_grant,
        n.policy.job_price
    )
}

async fn network(mut ctx: Ctx, command: NetworkCommand) -> Result<()> {
    match command {
        NetworkCommand::Create {
            name,
            no_device_approval,
            initial_grant,
            job_price,
            admins_grant_themselves,
        } => {
            let created = ctx
                .client
                .create_network(&CreateNetworkRequest {
                    name,
                    policy: NetworkPolicy {
                        require_device_approval: !no_device_approval,
                        initial_grant,
                        job_price,
                        admins_grant_themselves,
                        ..NetworkPolicy::default()
                    },
                })
                .await?;
            ctx.config.network = Some(created.id.to_string());
            ctx.config.save()?;
            print(ctx.json, &created, network_line)
        }
        NetworkCommand::List => {
            let networks = ctx.client.list_networks().await?;
            print(ctx.json, &networks, |ns| {
                ns.iter().map(network_line).collect::<Vec<_>>().join("\n")
            })
        }
        NetworkCommand::Show => {
            let network = ctx.client.network(&ctx.network()?).await?;
            print(ctx.json, &network, network_line)
        }
        NetworkCommand::Invite {
            device,
            admin,
            expires_in,
        } => {
            let invite = ctx
                .client
                .create_invite(
                    &ctx.network()?,
                    &CreateInviteRequest {
                        kind: if device {
                            InviteKind::Device
                        } else {
                            InviteKind::Person
                        },
                        role: admin.then_some(Role::Admin),
                        expires_in_s: expires_in,
                    },
                )
                .await?;
            print(ctx.json, &invite, |i| i.code.clone())
        }
        NetworkCommand::Invites => {
            let invites = ctx.client.invites(&ctx.network()?).await?;
            print(ctx.json, &invites, |is| {
                is.iter()
                    .map(|i| {
                        format!(
                            "{}  {:<6} {:<6} by {}  expires {}",
                            i.id,
                            match i.kind {
                                InviteKind::Person => "person",
                                InviteKind::Device => "device",
                            },
                            i.role.as_str(),
                            i.created_by,
                            i.expires_at_ms
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        NetworkCommand::RevokeInvite { invite } => {
            ctx.client.revoke_invite(&ctx.network()?, &invite).await?;
            eprintln!("revoked {invite}");
            Ok(())
        }
        NetworkCommand::Members => {
            let members = ctx.client.members(&ctx.network()?).await?;
            print(ctx.json, &members, |ms| {
                ms.iter()
                    .map(|m| format!("{}  {:<20} {}", m.person, m.name, m.role.as_str()))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        NetworkCommand::Audit { before, limit } => {
            let entries = ctx
                .client
                .audit_page(&ctx.network()?, before.as_deref(), Some(limit))
                .await?;
            if !ctx.json
                && entries.len() == limit as usize
                && let Some(last) = entries.last()
            {
                eprintln!("more: mesh network audit --before {}", last.cursor());
            }
            print(ctx.json, &entries, |es| {
                es.iter()
                    .map(|e| format!("{}  {:<20} {:<40} {}", e.at_ms, e.action, e.actor, e.detail))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        NetworkCommand::RemoveMember { person } => {
            ctx.client.remove_member(&ctx.network()?, &person).await?;
            eprintln!("removed {person}");
            Ok(())
        }
    }
}

async fn device(ctx: Ctx, command: DeviceCommand) -> Result<()> {
    let network = ctx.network()?;
    let line = |d: &DeviceInfo| {
        format!(
            "{}  {:<16} {:<8} {:<7} backends:{} load:{}/{} trust:{:.2} checks:{}/{} terms:{}{}",
            d.id,
            d.name,
            d.status.as_str(),
            if d.online { "online" } else { "offline" },
            d.capabilities.backends.join(","),
            d.load.running + d.load.queued,
            d.load.slots,
            d.trust,
            d.checks.passed,
            d.checks.passed + d.checks.failed,
            policy::summary(&d.terms),
            if d.quarantined_at_ms.is_some() {
                "  QUARANTINED"
            } else {
                ""
            }
        )
    };
    match command {
        DeviceCommand::List => {
            let devices = ctx.client.devices(&network).await?;
            print(ctx.json, &devices, |ds| {
                ds.iter().map(line).collect::<Vec<_>>().join("\n")
            })
        }
        DeviceCommand::Approve { device } => {
            let d = ctx.client.approve_device(&network, &device).await?;
            print(ctx.json, &d, line)
        }
        DeviceCommand::Revoke { device } => {
            let d = ctx.client.revoke_device(&network, &device).await?;
            print(ctx.json, &d, line)
        }
        DeviceCommand::Release { device } => {
            let d = ctx.client.release_device(&network, &device).await?;
            print(ctx.json, &d, line)
        }
        DeviceCommand::Policy(command) => {
            policy::run(&ctx.client, &network, ctx.json, command).await
        }
    }
}

fn workload_line(w: &WorkloadInfo) -> String {
    format!(
        "{}  {}@{}  {} bytes  models:{}{}",
        w.hash,
        w.name,
        w.version,
        w.size,
        w.models.join(","),
        if w.yanked { "  (yanked)" } else { "" }
    )
}

async fn workload(ctx: Ctx, command: WorkloadCommand) -> Result<()> {
    let network = ctx.network()?;
    match command {
        WorkloadCommand::Publish { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let len = bytes.len() as u64;
            let bar = indicatif::ProgressBar::new(len);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "uploading {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            let progress = bar.clone();
            let chunks: Vec<bytes::Bytes> = bytes
                .chunks(64 << 10)
                .map(bytes::Bytes::copy_from_slice)
                .collect();
            let stream = futures_util::stream::iter(chunks).map(move |chunk| {
                progress.inc(chunk.len() as u64);
                Ok::<_, std::io::Error>(chunk)
            });
            let published = ctx
                .client
                .publish_workload_stream(&network, reqwest::Body::wrap_stream(stream), len)
                .await;
            bar.finish_and_clear();
            let published = published?;
            print(ctx.json, &published, workload_line)
        }
        WorkloadCommand::List => {
            let workloads = ctx.client.workloads(&network).await?;
            print(ctx.json, &workloads, |ws| {
                ws.iter().map(workload_line).collect::<Vec<_>>().join("\n")
            })
        }
        WorkloadCommand::Show { hash } => {
            let w = ctx.client.workload(&network, &hash).await?;
            print(ctx.json, &w, workload_line)
        }
        WorkloadCommand::Yank { hash } => {
            let w = ctx.client.yank_workload(&network, &hash).await?;
            print(ctx.json, &w, workload_line)
        }
    }
}

async fn token(ctx: Ctx, command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create { label, expires_in } => {
            let created = ctx
                .client
                .create_token(&CreateTokenRequest {
                    label,
                    expires_in_s: expires_in,
                })
                .await?;
            print(ctx.json, &created, |t| t.token.clone())
        }
        TokenCommand::List => {
            let tokens = ctx.client.list_tokens().await?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            print(ctx.json, &tokens, |list| {
                list.iter()
                    .map(|t| {
                        let state = if t.revoked {
                            "revoked"
                        } else if t.expires_at_ms.is_some_and(|at| at <= now) {
                            "expired"
                        } else {
                            "active"
                        };
                        format!("{}  {:<8} {}", t.id, state, t.label)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        TokenCommand::Revoke { token } => {
            ctx.client.revoke_token(&token).await?;
            print(ctx.json, &serde_json::json!({"revoked": token}), |_| {
                format!("{token} revoked")
            })
        }
    }
}

async fn credits(ctx: Ctx, command: CreditsCommand) -> Result<()> {
    let network = ctx.network()?;
    match command {
        CreditsCommand::Balance { person: p } => {
            let balance = ctx.client.balance(&network, p.as_ref()).await?;
            print(ctx.json, &balance, |b| b.balance.to_string())
        }
        CreditsCommand::History { person: p } => {
            let history = ctx.client.history(&network, p.as_ref()).await?;
            print(ctx.json, &history, |h| {
                h.iter()
                    .map(|e| format!("{:>8}  {:<12} {}", e.amount, e.kind, e.memo))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        CreditsCommand::Grant {
            person,
            amount,
            key,
        } => {
            let key = key.unwrap_or_else(|| format!("cli-{}-{}", person, std::process::id()));
            let transfer = ctx
                .client
                .grant(
                    &network,
                    &GrantRequest {
                        person,
                        amount,
                        idempotency_key: key,
                        memo: None,
                    },
                )
                .await?;
            print(ctx.json, &transfer, |t| {
                format!(
                    "{} {}",
                    t.id,
                    if t.created {
                        "granted"
                    } else {
                        "already granted (same key)"
                    }
                )
            })
        }
    }
}

async fn job(ctx: Ctx, command: JobCommand) -> Result<()> {
    let network = ctx.network()?;
    let line = |j: &JobInfo| {
        format!(
            "{}  {:<9} workload:{}  executor:{}  price:{}",
            j.id,
            j.state.as_str(),
            j.workload,
            j.executor
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".into()),
            j.price
        )
    };
    match command {
        JobCommand::List => {
            let jobs = ctx.client.jobs(&network).await?;
            print(ctx.json, &jobs, |js| {
                js.iter().map(line).collect::<Vec<_>>().join("\n")
            })
        }
        JobCommand::Show { job } => {
            let assignment = ctx.client.job(&network, &job).await?;
            print(ctx.json, &assignment, |a| line(&a.job))
        }
        JobCommand::Verify { job, vrf_key } => {
            let key: mesh_proto::vrf::VrfPublicKey = match vrf_key {
                Some(k) => k.parse().map_err(|e| anyhow::anyhow!("--vrf-key: {e}"))?,
                None => ctx.client.vrf_key().await?.public_key,
            };
            let info = ctx.client.job(&network, &job).await?.job;
            let check = ctx.client.job_check(&network, &job).await?;
            let receipt = info
                .receipt
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("job {job} has no receipt"))?;
            let verdict = check.selection.verify(&key, &network, &job, receipt);
            if ctx.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "selection_valid": verdict.is_ok(),
                        "error": verdict.as_ref().err().map(|e| e.to_string()),
                        "check": check,
                    }))?
                );
            } else {
                match &verdict {
                    Ok(()) => println!(
                        "selection: valid ({} with key {key}): {} at rate {:.2}%",
                        mesh_proto::vrf::SUITE,
                        if check.selection.selected {
                            "selected for re-execution"
                        } else {
                            "not selected"
                        },
                        f64::from(check.selection.rate_ppm) / 1e4
                    ),
                    Err(e) => println!("selection: INVALID: {e}"),
                }
                println!(
                    "check: {:?} ({}){}",
                    check.state,
                    check.reason,
                    check
                        .detail
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                );
                if let Some(verified) = check.verified_output {
                    println!("verified output: {verified}");
                }
            }
            verdict.map_err(|e| anyhow::anyhow!("the selection does not verify: {e}"))
        }
        JobCommand::Submit {
            workload,
            input,
            idempotency_key,
        } => {
            let workload = resolve_workload(&ctx, &network, &workload).await?;
            let text = if input.as_os_str() == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
                text
            } else {
                std::fs::read_to_string(&input)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", input.display()))?
            };
            let input: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("the input is not JSON: {e}"))?;
            let result = ctx
                .client
                .run_job(
                    &network,
                    &mesh_proto::api::RunJobRequest {
                        workload,
                        input,
                        idempotency_key,
                    },
                )
                .await?;
            if ctx.json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                println!("{}", serde_json::to_string(&result.output)?);
                eprintln!("{}", run_summary(&result));
            }
            Ok(())
        }
    }
}
