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
}
