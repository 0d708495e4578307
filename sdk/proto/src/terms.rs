//! A device owner's terms: which workloads the device runs, for whom, when, and how much of
//! it the network may use. Every rule narrows what is allowed; the default allows
//! everything. The host enforces the terms its owner wrote on the device itself, so no
//! control plane can loosen them; the control plane schedules by those and by the terms set
//! for the device in the network, which can only narrow them further (a job must pass both).

use crate::api::Role;
use crate::{Blake3Hash, PersonId};
use serde::{Deserialize, Serialize};
#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// A workload the device runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum WorkloadRule {
    /// Any version of the workload of this name.
    Name(String),
    /// This component.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    Hash(Blake3Hash),
    /// Any workload this person published.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    Publisher(PersonId),
}

/// Someone the device runs jobs for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RequesterRule {
    /// This person.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    Person(PersonId),
    /// Anyone holding at least this role.
    Role(Role),
}

/// A weekly window of time, in the terms' time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Window {
    /// Days it applies to, 0 = Monday … 6 = Sunday (empty: every day).
    #[serde(default)]
    pub days: Vec<u8>,
    /// Start, minutes after midnight (inclusive).
    pub start_minute: u16,
    /// End, minutes after midnight (exclusive); before `start_minute` it runs past midnight.
    pub end_minute: u16,
}

/// When the device takes jobs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum When {
    /// At any time.
    #[default]
    Always,
    /// Inside these windows only.
    Schedule {
        /// The windows.
        windows: Vec<Window>,
        /// Offset of the windows' time zone from UTC, in minutes (e.g. 60 for CET).
        #[serde(default)]
        utc_offset_minutes: i32,
    },
    /// Only while the device is otherwise idle: no new jobs, and running ones handed back,
    /// while its own user's processes keep the CPU busier than this share.
    Idle {
        /// Percent of the CPU others may use before the device stops taking jobs.
        max_busy_percent: u8,
    },
}

/// A device owner's terms.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(default)]
pub struct DeviceTerms {
    /// Workloads it runs (empty: any).
    pub workloads: Vec<WorkloadRule>,
    /// People it runs jobs for (empty: anyone in the network).
    pub requesters: Vec<RequesterRule>,
    /// When it takes jobs.
    pub when: When,
    /// Jobs it runs at once (none: as many as it has slots).
    pub max_jobs: Option<u32>,
    /// Share of its cores inference may use, in (0, 1] (none: all).
    pub cpu_share: Option<f64>,
    /// Memory one job may use, in MiB (none: the host's limit).
    pub memory_mb: Option<u64>,
}

/// Rules a list of terms may hold at most (workloads, requesters, windows, each).
pub const MAX_RULES: usize = 64;

/// Who wrote a layer of a device's terms in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TermsLayer {
    /// The device's owner.
    Owner,
    /// The network's admins, narrowing what the owner allows.
    Admins,
}

impl TermsLayer {
    /// The layer's name, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            TermsLayer::Owner => "owner",
            TermsLayer::Admins => "admins",
        }
    }
}

/// The terms a device works on: a job must pass every layer. Each layer can only narrow
/// what the others allow, so admins cannot widen an owner's terms, and nothing the control
/// plane stores can widen the terms written on the device itself.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(default)]
pub struct TermsLayers {
    /// Written on the device itself (its host config) and reported by its heartbeats; the
    /// host enforces them whatever any ticket says.
    pub device: DeviceTerms,
    /// Set in the network by the device's owner.
    pub owner: DeviceTerms,
    /// Set in the network by its admins.
    pub admins: DeviceTerms,
}

impl TermsLayers {
    /// The layers, with their names.
    pub fn each(&self) -> [(&'static str, &DeviceTerms); 3] {
        [
            ("device", &self.device),
            ("owner", &self.owner),
            ("admins", &self.admins),
        ]
    }

    /// Whether every layer admits the job (the first refusal otherwise).
    pub fn admits(&self, query: &TermsQuery<'_>) -> Result<(), TermsRefusal> {
        self.each()
            .into_iter()
            .try_for_each(|(_, terms)| terms.admits(query))
    }

    /// The fewest jobs any layer allows at once.
    pub fn max_jobs(&self) -> Option<u32> {
        self.each().iter().filter_map(|(_, t)| t.max_jobs).min()
    }

    /// The lowest memory ceiling of any layer, in MiB.
    pub fn memory_mb(&self) -> Option<u64> {
        self.each().iter().filter_map(|(_, t)| t.memory_mb).min()
    }

    /// The strictest idle threshold of any layer, when one takes jobs only while idle.
    pub fn idle_threshold(&self) -> Option<u8> {
        self.each()
            .iter()
            .filter_map(|(_, t)| match t.when {
                When::Idle { max_busy_percent } => Some(max_busy_percent),
                _ => None,
            })
            .min()
    }

    /// Whether no layer narrows anything.
    pub fn is_open(&self) -> bool {
        self.each().iter().all(|(_, t)| t.is_open())
    }
}

/// What the terms are asked about a job.
#[derive(Debug, Clone, Copy)]
pub struct TermsQuery<'a> {
    /// The component.
    pub workload: &'a Blake3Hash,
    /// Its name, when known.
    pub workload_name: Option<&'a str>,
    /// Who published it, when known.
    pub publisher: Option<&'a PersonId>,
    /// Who asks (pays).
    pub requester: &'a PersonId,
    /// Their role in the network, when known.
    pub requester_role: Option<Role>,
    /// Now, in milliseconds since the Unix epoch (UTC).
    pub now_ms: i64,
    /// Share of the CPU the device's other processes use now, in percent (when measured).
    pub others_busy_percent: Option<f64>,
    /// Jobs the device runs or holds now.
    pub running: u32,
}

/// Why a device's terms refuse a job (another device may take it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum TermsRefusal {
    /// The workload is not one the device runs.
    #[error("this device's terms do not include this workload")]
    Workload,
    /// The requester is not someone the device runs jobs for.
    #[error("this device's terms do not include this requester")]
    Requester,
    /// Outside the device's schedule.
    #[error("outside this device's schedule")]
    Schedule,
    /// The device's own user keeps it busy.
    #[error("this device's owner is using it")]
    OwnerBusy,
    /// The device runs as many jobs as its terms allow.
    #[error("this device runs as many jobs as its terms allow ({max})")]
    AtCapacity {
        /// The most it runs.
        max: u32,
    },
}

impl DeviceTerms {
    /// Whether these are the default terms, which allow everything.
    pub fn is_open(&self) -> bool {
        *self == DeviceTerms::default()
    }

    /// Whether these terms let the device take the job `query` describes. Rules whose facts
    /// the query lacks (a workload's name, a requester's role) refuse: terms are narrowing,
    /// so what cannot be shown to be allowed is not.
    pub fn admits(&self, query: &TermsQuery<'_>) -> Result<(), TermsRefusal> {
        if !self.workloads.is_empty()
            && !self.workloads.iter().any(|rule| match rule {
                WorkloadRule::Hash(hash) => hash == query.workload,
                WorkloadRule::Name(name) => query.workload_name == Some(name.as_str()),
                WorkloadRule::Publisher(person) => query.publisher == Some(person),
            })
        {
            return Err(TermsRefusal::Workload);
        }
        if !self.requesters.is_empty()
            && !self.requesters.iter().any(|rule| match rule {
                RequesterRule::Person(person) => person == query.requester,
                RequesterRule::Role(role) => query.requester_role.is_some_and(|r| r >= *role),
            })
        {
            return Err(TermsRefusal::Requester);
        }
        if !self.when.allows(query.now_ms, query.others_busy_percent) {
            return Err(match self.when {
                When::Idle { .. } => TermsRefusal::OwnerBusy,
                _ => TermsRefusal::Schedule,
            });
        }
        if let Some(max) = self.max_jobs
            && query.running >= max
        {
            return Err(TermsRefusal::AtCapacity { max });
        }
        Ok(())
    }

    /// A clear error for terms that cannot mean anything.
    pub fn check(&self) -> Result<(), String> {
        if let Some(share) = self.cpu_share
            && !(share > 0.0 && share <= 1.0)
        {
            return Err(format!("cpu_share must be in (0, 1], not {share}"));
        }
        if self.workloads.len() > MAX_RULES || self.requesters.len() > MAX_RULES {
            return Err(format!(
                "at most {MAX_RULES} workload and {MAX_RULES} requester rules"
            ));
        }
        if self
            .workloads
            .iter()
            .any(|r| matches!(r, WorkloadRule::Name(n) if n.is_empty() || n.len() > 128))
        {
            return Err("a workload name is 1 to 128 bytes".into());
        }
        if self.memory_mb == Some(0) {
            return Err("memory_mb must be at least 1".into());
        }
        if self.max_jobs == Some(0) {
            return Err("max_jobs must be at least 1 (to take no jobs, revoke the device)".into());
        }
        if let When::Schedule {
            windows,
            utc_offset_minutes,
        } = &self.when
        {
            if windows.is_empty() {
                return Err("a schedule needs at least one window".into());
            }
            if windows.len() > MAX_RULES {
                return Err(format!("a schedule has at most {MAX_RULES} windows"));
            }
            if utc_offset_minutes.abs() > 14 * 60 {
                return Err(format!(
                    "utc_offset_minutes {utc_offset_minutes} is not a time zone"
                ));
            }
            for w in windows {
                if w.start_minute >= 24 * 60 || w.end_minute > 24 * 60 {
                    return Err("window minutes must be within a day (0..1440)".into());
                }
                if w.days.iter().any(|&d| d > 6) {
                    return Err("window days are 0 (Monday) to 6 (Sunday)".into());
                }
            }
        }
        if let When::Idle { max_busy_percent } = self.when
            && max_busy_percent > 100
        {
            return Err("max_busy_percent is at most 100".into());
        }
        Ok(())
    }
}

impl DeviceTerms {
    /// [`DeviceTerms::check`] for terms set in the network rather than on the device. A share
    /// of the cores sizes the inference thread pools when the host starts, so only the
    /// device's own config can set it.
    pub fn check_network(&self) -> Result<(), String> {
        if self.cpu_share.is_some() {
            return Err(
                "cpu_share sizes the device's inference threads when its host starts: \
                 set it in the device's own config ([terms] in its host config), not in the network"
                    .into(),
            );
        }
        self.check()
    }
}

/// A short account of the terms, for lists: `any` when they allow everything.
impl std::fmt::Display for DeviceTerms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if !self.workloads.is_empty() {
            let rules: Vec<String> = self.workloads.iter().map(ToString::to_string).collect();
            parts.push(format!("runs {}", rules.join("|")));
        }
        if !self.requesters.is_empty() {
            let rules: Vec<String> = self.requesters.iter().map(ToString::to_string).collect();
            parts.push(format!("for {}", rules.join("|")));
        }
        match &self.when {
            When::Always => {}
            When::Idle { max_busy_percent } => {
                parts.push(format!("while idle (others ≤{max_busy_percent}% CPU)"))
            }
            When::Schedule {
                windows,
                utc_offset_minutes,
            } => {
                let windows: Vec<String> = windows.iter().map(ToString::to_string).collect();
                let zone = match utc_offset_minutes {
                    0 => "UTC".to_string(),
                    m => format!(
                        "UTC{}{:02}:{:02}",
                        if *m < 0 { '-' } else { '+' },
                        m.abs() / 60,
                        m.abs() % 60
                    ),
                };
                parts.push(format!("{} {zone}", windows.join(", ")));
            }
        }
        if let Some(max) = self.max_jobs {
            parts.push(format!("≤{max} jobs"));
        }
        if let Some(share) = self.cpu_share {
            parts.push(format!("{:.0}% of cores", share * 100.0));
        }
        if let Some(mb) = self.memory_mb {
            parts.push(format!("≤{mb} MiB a job"));
        }
        if parts.is_empty() {
            f.write_str("any")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

impl std::fmt::Display for WorkloadRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkloadRule::Name(name) => write!(f, "{name}"),
            WorkloadRule::Hash(hash) => write!(f, "hash:{hash}"),
            WorkloadRule::Publisher(person) => write!(f, "publisher:{person}"),
        }
    }
}

impl std::fmt::Display for RequesterRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequesterRule::Person(person) => write!(f, "{person}"),
            RequesterRule::Role(role) => write!(f, "{}s", role.as_str()),
        }
    }
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let days: Vec<&str> = self
            .days
            .iter()
            .filter_map(|&d| DAY_NAMES.get(usize::from(d)).copied())
            .collect();
        if !days.is_empty() {
            write!(f, "{} ", days.join(","))?;
        }
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.start_minute), hm(self.end_minute))
    }
}

impl std::str::FromStr for Window {
    type Err = String;

    /// `[days ]HH:MM-HH:MM`, days as `mon-fri`, `sat,sun` or `mon,wed-fri` (none: every day);
    /// an end before the start runs past midnight.
    fn from_str(s: &str) -> Result<Window, String> {
        let s = s.trim();
        let (days, hours) = match s.rsplit_once(' ') {
            Some((days, hours)) => (Some(days.trim()), hours),
            None => (None, s),
        };
        let day = |name: &str| -> Result<u8, String> {
            DAY_NAMES
                .iter()
                .position(|d| name.eq_ignore_ascii_case(d))
                .map(|d| d as u8)
                .ok_or_else(|| format!("{name:?} is not a day (mon … sun)"))
        };
        let mut list = Vec::new();
        for part in days.into_iter().flat_map(|d| d.split(',')) {
            match part.split_once('-') {
                Some((from, to)) => {
                    let (from, to) = (day(from.trim())?, day(to.trim())?);
                    let mut d = from;
                    loop {
                        list.push(d);
                        if d == to {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                }
                None => list.push(day(part.trim())?),
            }
        }
        list.sort_unstable();
        list.dedup();
        let minute = |t: &str| -> Result<u16, String> {
            let (h, m) = t
                .split_once(':')
                .ok_or_else(|| format!("{t:?} is not HH:MM"))?;
            let (h, m): (u16, u16) = (
                h.parse().map_err(|_| format!("{t:?} is not HH:MM"))?,
                m.parse().map_err(|_| format!("{t:?} is not HH:MM"))?,
            );
            if h > 24 || m > 59 || (h == 24 && m != 0) {
                return Err(format!("{t:?} is not a time of day"));
            }
            Ok(h * 60 + m)
        };
        let (start, end) = hours
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: a window is [days ]HH:MM-HH:MM"))?;
        let start_minute = minute(start)?;
        if start_minute == 24 * 60 {
            return Err("a window starts before 24:00".into());
        }
        Ok(Window {
            days: list,
            start_minute,
            end_minute: minute(end)?,
        })
    }
}

impl When {
    /// Whether a job may start at `now_ms` (UTC) with the device's other processes using
    /// `others_busy_percent` of its CPU.
    pub fn allows(&self, now_ms: i64, others_busy_percent: Option<f64>) -> bool {
        match self {
            When::Always => true,
            When::Idle { max_busy_percent } => {
                others_busy_percent.is_some_and(|busy| busy <= f64::from(*max_busy_percent))
            }
            When::Schedule {
                windows,
                utc_offset_minutes,
            } => {
                let local_minutes = now_ms.div_euclid(60_000) + i64::from(*utc_offset_minutes);
                let minute = local_minutes.rem_euclid(24 * 60) as u16;
                // 1970-01-01 was a Thursday (3, Monday being 0).
                let day = (local_minutes.div_euclid(24 * 60) + 3).rem_euclid(7) as u8;
                let yesterday = (day + 6) % 7;
                windows.iter().any(|w| {
                    let on = |d: u8| w.days.is_empty() || w.days.contains(&d);
                    if w.start_minute <= w.end_minute {
                        on(day) && minute >= w.start_minute && minute < w.end_minute
                    } else {
                        // Past midnight: the part after midnight belongs to the day before.
                        (on(day) && minute >= w.start_minute)
                            || (on(yesterday) && minute < w.end_minute)
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query<'a>(workload: &'a Blake3Hash, requester: &'a PersonId) -> TermsQuery<'a> {
        TermsQuery {
            workload,
            workload_name: Some("embeddings"),
            publisher: None,
            requester,
            requester_role: Some(Role::Member),
            now_ms: 0,
            others_busy_percent: Some(0.0),
            running: 0,
        }
    }

    #[test]
    fn the_default_allows_everything() {
        let (w, p) = (Blake3Hash::of(b"c"), PersonId::from_bytes([1; 16]));
        assert_eq!(DeviceTerms::default().admits(&query(&w, &p)), Ok(()));
    }

    #[test]
    fn each_rule_narrows() {
        let (w, p) = (Blake3Hash::of(b"c"), PersonId::from_bytes([1; 16]));
        let other = PersonId::from_bytes([2; 16]);
        let q = query(&w, &p);
        let by_name = DeviceTerms {
            workloads: vec![WorkloadRule::Name("embeddings".into())],
            ..DeviceTerms::default()
        };
        assert_eq!(by_name.admits(&q), Ok(()));
        let other_name = DeviceTerms {
            workloads: vec![WorkloadRule::Name("chat".into())],
            ..DeviceTerms::default()
        };
        assert_eq!(other_name.admits(&q), Err(TermsRefusal::Workload));
        let by_publisher = DeviceTerms {
            workloads: vec![WorkloadRule::Publisher(other)],
            ..DeviceTerms::default()
        };
        assert_eq!(by_publisher.admits(&q), Err(TermsRefusal::Workload));
        let for_admins = DeviceTerms {
            requesters: vec![
                RequesterRule::Role(Role::Admin),
                RequesterRule::Person(other),
            ],
            ..DeviceTerms::default()
        };
        assert_eq!(for_admins.admits(&q), Err(TermsRefusal::Requester));
        let mut admin = q;
        admin.requester_role = Some(Role::Owner);
        assert_eq!(for_admins.admits(&admin), Ok(()));
        let two = DeviceTerms {
            max_jobs: Some(2),
            ..DeviceTerms::default()
        };
        let mut busy = q;
        busy.running = 2;
        assert_eq!(two.admits(&busy), Err(TermsRefusal::AtCapacity { max: 2 }));
        let idle = DeviceTerms {
            when: When::Idle {
                max_busy_percent: 20,
            },
            ..DeviceTerms::default()
        };
        let mut used = q;
        used.others_busy_percent = Some(65.0);
        assert_eq!(idle.admits(&used), Err(TermsRefusal::OwnerBusy));
        used.others_busy_percent = None;
        assert_eq!(
            idle.admits(&used),
            Err(TermsRefusal::OwnerBusy),
            "unmeasured is busy"
        );
    }

    #[test]
    fn schedules_follow_the_days_and_run_past_midnight() {
        // Nights, 22:00 to 06:00, Monday to Friday nights, in UTC+1.
        let nights = When::Schedule {
            windows: vec![Window {
                days: vec![0, 1, 2, 3, 4],
                start_minute: 22 * 60,
                end_minute: 6 * 60,
            }],
            utc_offset_minutes: 60,
        };
        // 2026-12-02 is a Wednesday. 21:30 UTC is 22:30 local: inside.
        let wednesday = 1_796_169_600_000i64; // 2026-12-02T00:00:00Z
        let at = |h: i64, m: i64| wednesday + (h * 60 + m) * 60_000;
        assert!(nights.allows(at(21, 30), None));
        assert!(!nights.allows(at(20, 30), None), "21:30 local");
        // Thursday 04:00 local (03:00 UTC) still belongs to Wednesday's night.
        assert!(nights.allows(at(24 + 3, 0), None));
        // Saturday 02:00 local belongs to Friday's night; Sunday 02:00 to Saturday's: not.
        assert!(nights.allows(at(3 * 24 + 1, 0), None));
        assert!(!nights.allows(at(4 * 24 + 1, 0), None));
        let bad = DeviceTerms {
            when: When::Schedule {
                windows: vec![],
                utc_offset_minutes: 0,
            },
            ..DeviceTerms::default()
        };
        assert!(bad.check().is_err());
        let share = DeviceTerms {
            cpu_share: Some(1.5),
            ..DeviceTerms::default()
        };
        assert!(share.check().unwrap_err().contains("cpu_share"));
    }

    #[test]
    fn every_layer_must_admit_and_the_strictest_limits_hold() {
        let (w, p) = (Blake3Hash::of(b"c"), PersonId::from_bytes([1; 16]));
        let q = query(&w, &p);
        let layers = TermsLayers {
            device: DeviceTerms {
                max_jobs: Some(4),
                memory_mb: Some(512),
                ..DeviceTerms::default()
            },
            owner: DeviceTerms {
                max_jobs: Some(2),
                ..DeviceTerms::default()
            },
            admins: DeviceTerms {
                requesters: vec![RequesterRule::Role(Role::Admin)],
                memory_mb: Some(256),
                when: When::Idle {
                    max_busy_percent: 40,
                },
                ..DeviceTerms::default()
            },
        };
        assert_eq!(
            layers.admits(&q),
            Err(TermsRefusal::Requester),
            "the admins' layer"
        );
        assert_eq!(
            (layers.max_jobs(), layers.memory_mb()),
            (Some(2), Some(256))
        );
        assert_eq!(layers.idle_threshold(), Some(40));
        let mut admin = q;
        admin.requester_role = Some(Role::Admin);
        assert_eq!(layers.admits(&admin), Ok(()));
        admin.running = 2;
        assert_eq!(
            layers.admits(&admin),
            Err(TermsRefusal::AtCapacity { max: 2 })
        );
        assert!(!layers.is_open() && TermsLayers::default().is_open());
    }

    #[test]
    fn windows_read_and_print_the_same_and_terms_say_what_they_do() {
        for (text, days, start, end) in [
            ("mon-fri 09:00-17:30", vec![0, 1, 2, 3, 4], 540, 1050),
            ("sat,sun 22:00-06:00", vec![5, 6], 1320, 360),
            ("fri-mon 00:00-24:00", vec![0, 4, 5, 6], 0, 1440),
            ("08:15-08:45", vec![], 495, 525),
        ] {
            let window: Window = text.parse().unwrap();
            assert_eq!(
                (window.days.clone(), window.start_minute, window.end_minute),
                (days, start, end),
                "{text}"
            );
            assert_eq!(window.to_string().parse::<Window>().unwrap(), window);
        }
        for bad in [
            "",
            "9-17",
            "mon 25:00-26:00",
            "someday 09:00-10:00",
            "24:00-01:00",
        ] {
            assert!(bad.parse::<Window>().is_err(), "{bad:?}");
        }
        assert_eq!(DeviceTerms::default().to_string(), "any");
        let terms = DeviceTerms {
            workloads: vec![WorkloadRule::Name("embeddings".into())],
            requesters: vec![RequesterRule::Role(Role::Admin)],
            when: "mon-fri 09:00-17:00"
                .parse::<Window>()
                .map(|w| When::Schedule {
                    windows: vec![w],
                    utc_offset_minutes: 60,
                })
                .unwrap(),
            max_jobs: Some(2),
            cpu_share: Some(0.5),
            memory_mb: None,
        };
        assert_eq!(
            terms.to_string(),
            "runs embeddings; for admins; mon,tue,wed,thu,fri 09:00-17:00 UTC+01:00; ≤2 jobs; 50% of cores"
        );
        assert!(terms.check().is_ok());
        assert!(terms.check_network().unwrap_err().contains("host config"));
        let many = DeviceTerms {
            workloads: (0..=MAX_RULES)
                .map(|i| WorkloadRule::Name(format!("w{i}")))
                .collect(),
            ..DeviceTerms::default()
        };
        assert!(many.check().is_err());
    }
}
