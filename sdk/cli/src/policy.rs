//! `mesh device policy`: the terms a device works on, shown layer by layer and set for the
//! owner's or the admins' layer.

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use mesh_proto::api::{DeviceInfo, Role, SetTermsRequest};
use mesh_proto::terms::{DeviceTerms, RequesterRule, TermsLayer, TermsLayers, When, WorkloadRule};
use mesh_proto::{DeviceId, NetworkId};

/// `mesh device policy …`.
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// A device's terms: its own (from its host config), its owner's and the admins'.
    Show {
        /// Device id.
        device: DeviceId,
    },
    /// Replace one layer of a device's terms with the rules given (only what is given
    /// narrows; `--clear` lifts them all). A job must pass every layer, so admins can only
    /// narrow what the owner allows.
    Set(SetArgs),
}

/// What `mesh device policy set` sets.
#[derive(Args)]
pub struct SetArgs {
    /// Device id.
    device: DeviceId,
    /// The layer: `owner` (the device's owner) or `admins` (admins). Default: the owner's
    /// for the device's owner, the admins' for anyone else.
    #[arg(long, value_parser = parse_layer)]
    layer: Option<TermsLayer>,
    /// A workload it runs (repeatable): its name, `hash:<blake3>` or `publisher:<person id>`.
    #[arg(long = "workload", value_name = "RULE")]
    workloads: Vec<String>,
    /// Someone it runs jobs for (repeatable): a person id, or a role (`members`, `admins`,
    /// `owners`: that role or higher).
    #[arg(long = "for", value_name = "WHO")]
    requesters: Vec<String>,
    /// A window it takes jobs in (repeatable): `[days ]HH:MM-HH:MM`, e.g. `mon-fri 09:00-17:00`
    /// or `22:00-06:00` (past midnight).
    #[arg(long = "window", value_name = "WINDOW", conflicts_with = "idle")]
    windows: Vec<String>,
    /// The windows' time zone, as an offset from UTC: `+01:00`, `-05:30` (default UTC).
    #[arg(
        long,
        value_name = "OFFSET",
        requires = "windows",
        allow_hyphen_values = true
    )]
    utc_offset: Option<String>,
    /// Take jobs only while the device's other processes use at most this percent of its CPU
    /// (running jobs are handed back when they use more).
    #[arg(long, value_name = "PERCENT")]
    idle: Option<u8>,
    /// At most this many jobs at once.
    #[arg(long)]
    max_jobs: Option<u32>,
    /// At most this much memory a job, in MiB.
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Lift every rule of the layer.
    #[arg(long, conflicts_with_all = ["workloads", "requesters", "windows", "idle", "max_jobs", "memory_mb"])]
    clear: bool,
}

fn parse_layer(text: &str) -> Result<TermsLayer, String> {
    match text {
        "owner" => Ok(TermsLayer::Owner),
        "admins" | "admin" => Ok(TermsLayer::Admins),
        _ => Err(format!("{text:?} is not a layer (owner or admins)")),
    }
}

fn workload_rule(text: &str) -> Result<WorkloadRule> {
    Ok(match text.split_once(':') {
        Some(("hash", hash)) => WorkloadRule::Hash(
            hash.parse()
                .map_err(|e| anyhow!("invalid workload hash {hash:?}: {e}"))?,
        ),
        Some(("publisher", person)) => WorkloadRule::Publisher(
            person
                .parse()
                .map_err(|e| anyhow!("invalid person id {person:?}: {e}"))?,
        ),
        Some(_) => bail!("a workload rule is a name, hash:<blake3> or publisher:<person id>"),
        None if text.is_empty() => bail!("a workload name cannot be empty"),
        None => WorkloadRule::Name(text.to_string()),
    })
}

fn requester_rule(text: &str) -> Result<RequesterRule> {
    let role = match text {
        "member" | "members" => Some(Role::Member),
        "admin" | "admins" => Some(Role::Admin),
        "owner" | "owners" => Some(Role::Owner),
        _ => None,
    };
    Ok(match role {
        Some(role) => RequesterRule::Role(role),
        None => RequesterRule::Person(text.parse().map_err(|e| {
            anyhow!("{text:?} is neither a role (members, admins, owners) nor a person id: {e}")
        })?),
    })
}

fn utc_offset(text: &str) -> Result<i32> {
    let bad = || anyhow!("invalid UTC offset {text:?}: write it as +HH:MM or -HH:MM");
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 {
        return Err(bad());
    }
    Ok(sign * (h * 60 + m))
}

impl SetArgs {
    /// The terms the flags describe.
    fn terms(&self) -> Result<DeviceTerms> {
        if !self.clear
            && self.workloads.is_empty()
            && self.requesters.is_empty()
            && self.windows.is_empty()
            && self.idle.is_none()
            && self.max_jobs.is_none()
            && self.memory_mb.is_none()
        {
            bail!(
                "nothing to set: give rules (--workload, --for, --window, --idle, --max-jobs, \
                 --memory-mb) or --clear"
            );
        }
        let when = if let Some(percent) = self.idle {
            When::Idle {
                max_busy_percent: percent,
            }
        } else if !self.windows.is_empty() {
            When::Schedule {
                windows: self
                    .windows
                    .iter()
                    .map(|w| w.parse().map_err(|e| anyhow!("invalid window {w:?}: {e}")))
                    .collect::<Result<_>>()?,
                utc_offset_minutes: self.utc_offset.as_deref().map_or(Ok(0), utc_offset)?,
            }
        } else {
            When::Always
        };
        let terms = DeviceTerms {
            workloads: self
                .workloads
                .iter()
                .map(|w| workload_rule(w))
                .collect::<Result<_>>()?,
            requesters: self
                .requesters
                .iter()
                .map(|r| requester_rule(r))
                .collect::<Result<_>>()?,
            when,
            max_jobs: self.max_jobs,
            cpu_share: None,
            memory_mb: self.memory_mb,
        };
        terms.check_network().map_err(|e| anyhow!("{e}"))?;
        Ok(terms)
    }
}

/// One line on a device's terms, layer by layer (`any` when nothing narrows them).
pub fn summary(layers: &TermsLayers) -> String {
    if layers.is_open() {
        return "any".into();
    }
    layers
        .each()
        .iter()
        .filter(|(_, t)| !t.is_open())
        .map(|(name, t)| format!("{name}[{t}]"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn show(device: &DeviceInfo) -> String {
    let mut lines = vec![format!("{}  {}", device.id, device.name)];
    for (name, terms) in device.terms.each() {
        let source = match name {
            "device" => "device (its host config; enforced by the device itself)",
            "owner" => "owner (set in the network by the device's owner)",
            _ => "admins (set in the network by its admins)",
        };
        lines.push(format!("  {source}:\n    {terms}"));
    }
    if let Some(busy) = device.load.others_busy_percent {
        lines.push(format!("  its own user's processes use {busy}% of its CPU"));
    }
    lines.join("\n")
}

/// Run `mesh device policy …`.
pub async fn run(
    client: &mesh_client::Client,
    network: &NetworkId,
    json: bool,
    command: PolicyCommand,
) -> Result<()> {
    match command {
        PolicyCommand::Show { device } => {
            let found = client
                .devices(network)
                .await?
                .into_iter()
                .find(|d| d.id == device)
                .ok_or_else(|| anyhow!("no device {device} in network {network}"))?;
            super::print(json, &found.terms, |_| show(&found))
        }
        PolicyCommand::Set(args) => {
            let request = SetTermsRequest {
                layer: args.layer,
                terms: args.terms()?,
            };
            let device = client
                .set_device_terms(network, &args.device, &request)
                .await?;
            super::print(json, &device.terms, |_| show(&device))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: PolicyCommand,
    }

    fn set(args: &[&str]) -> Result<DeviceTerms> {
        let device = DeviceId::from_bytes([7; 16]).to_string();
        let head = ["policy", "set", device.as_str()];
        let cli = Cli::try_parse_from(head.iter().chain(args)).map_err(|e| anyhow!("{e}"))?;
        match cli.command {
            PolicyCommand::Set(args) => args.terms(),
            PolicyCommand::Show { .. } => unreachable!(),
        }
    }

    #[test]
    fn flags_become_terms_and_nonsense_is_refused() {
        let terms = set(&[
            "--workload",
            "embeddings",
            "--for",
            "admins",
            "--window",
            "mon-fri 09:00-17:30",
            "--utc-offset",
            "-05:30",
            "--max-jobs",
            "2",
        ])
        .unwrap();
        assert_eq!(
            terms.workloads,
            vec![WorkloadRule::Name("embeddings".into())]
        );
        assert_eq!(terms.requesters, vec![RequesterRule::Role(Role::Admin)]);
        let When::Schedule {
            windows,
            utc_offset_minutes,
        } = &terms.when
        else {
            panic!("{:?}", terms.when)
        };
        assert_eq!(*utc_offset_minutes, -330);
        assert_eq!(windows[0].days, vec![0, 1, 2, 3, 4]);
        assert_eq!(
            (windows[0].start_minute, windows[0].end_minute),
            (540, 1050)
        );
        assert_eq!(terms.max_jobs, Some(2));
        assert!(set(&[]).unwrap_err().to_string().contains("nothing to set"));
        assert!(set(&["--window", "someday 09:00-10:00"]).is_err());
        assert!(set(&["--window", "09:00-25:00"]).is_err());
        assert!(set(&["--for", "nobody"]).is_err());
        assert!(set(&["--max-jobs", "0"]).is_err());
        assert!(set(&["--idle", "20", "--window", "09:00-10:00"]).is_err());
        assert_eq!(set(&["--clear"]).unwrap(), DeviceTerms::default());
    }
}
