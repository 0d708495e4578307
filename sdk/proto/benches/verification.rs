//! Monte-Carlo model of how Mesh catches devices that return wrong results, with the real
//! policy code of [`mesh_proto::verification`], against BOINC's replication baselines.
//! Prints Markdown tables: detection within 200 jobs, jobs until quarantine, extra compute in
//! a small network, a verdict on the target, and the cost of the VRF per job.
//!
//! `cargo bench -p mesh-proto --bench verification` (about half a minute on two cores).
//!
//! What is modelled, per job of `B` real items run by one device:
//! - **Ringers** (Mesh): `RingerPolicy::count(B, draw)` extra items with known answers, which
//!   the executor cannot tell apart from real ones. A falsified ringer is a failed check on that
//!   job, and the job is re-executed elsewhere so the requester still gets a correct result.
//!   Correct ringers do not count as passed checks: only re-executions earn trust.
//! - **Spot checks** (Mesh): the job is re-executed on an honest device when `is_selected`
//!   accepts its VRF output at the executor's rate: a fixed rate, or the adaptive
//!   `CheckPolicy::rate_ppm(record)`. The VRF output is modelled as uniformly random (the
//!   executor cannot predict it), so the simulation feeds `is_selected` random bytes instead of
//!   proving. The check fails if any real item was falsified.
//! - **Quorum-2** (BOINC's default): every job also runs on a second, honest host; a falsified
//!   job is caught every time.
//! - **BOINC adaptive replication**, as documented at
//!   <https://boinc.berkeley.edu/trac/wiki/AdaptiveReplication>: a host whose count of
//!   consecutive valid results `CV` is below 10 is never trusted; otherwise it is trusted
//!   (its job not replicated) with probability `1 - 1/CV`. `CV` grows with each replicated job
//!   found valid and drops to 0 on an invalid one; unreplicated jobs do not change it.
//!
//! Every scheme keeps a `CheckRecord` (pass on a passed check or validated replica, fail on a
//! failed one) and quarantines with the same rule, `CheckPolicy::default().quarantined`
//! (2 failed checks), so the schemes differ only in what they check. A quarantined device
//! gets no more jobs. Honest results are assumed to agree under the workload's comparison rule
//! (the end-to-end test `tests/e2e/tests/verification.rs` checks that across ONNX Runtime,
//! OpenVINO and tract), so an honest device never fails a check; the simulation still counts it.
//!
//! Cheaters either falsify a whole job (every item, ringers included) with probability `f`,
//! or each item (ringers included) independently with probability `f`; they cheat from their
//! first job, or only after 2,000 honest jobs, once the adaptive rate sits at its floor.
//! Extra compute is (re-executed items + ringer items) / real items.

use mesh_proto::verification::{
    CheckPolicy, CheckRecord, RingerPolicy, is_selected, selection_input,
};
use mesh_proto::vrf::{VrfOutput, VrfSecretKey};
use mesh_proto::{Blake3Hash, JobId, NetworkId};
use std::hint::black_box;
use std::time::Instant;

/// Real items per job.
const BATCH: usize = 32;
/// The small batch, where a job gets a ringer only now and then.
const SMALL_BATCH: usize = 8;
/// Detection is counted within this many of the cheater's jobs.
const HORIZON: u32 = 200;
/// Honest jobs a late cheater runs before it starts cheating.
const HISTORY: u32 = 2_000;
/// Simulated cheaters per cell.
const TRIALS: u32 = 5_000;
/// A cheater still free after this many jobs counts as never quarantined.
const MAX_JOBS: u32 = 1_000_000;
/// Fixed check rates, in percent.
const FIXED_RATES: [u32; 5] = [1, 2, 5, 10, 20];
/// Cheat rates `f`, in percent.
const CHEAT_RATES: [u32; 5] = [1, 5, 10, 20, 50];
/// The target: the cheat rates it covers, the detection probability and extra compute.
const TARGET_CHEAT_RATES: [u32; 4] = [5, 10, 20, 50];
const TARGET_DETECTION: f64 = 0.99;
const TARGET_EXTRA: f64 = 0.10;
/// The network of table 3: honest devices, jobs per device, the cheater's rate, networks run.
const NET_HONEST: usize = 20;
const NET_JOBS: u32 = 1_000;
const NET_CHEAT_RATE: u32 = 5;
const NET_TRIALS: u32 = 100;
/// BOINC never trusts a host with fewer consecutive valid results than this.
const BOINC_MIN_CONSECUTIVE_VALID: u32 = 10;
/// VRF proofs and verifications timed.
const VRF_RUNS: usize = 2_000;

/// xoshiro256** seeded through splitmix64: fast, and good enough for a simulation.
struct Rng([u64; 4]);

impl Rng {
    fn new(mut seed: u64) -> Self {
        let mut splitmix = || {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng([splitmix(), splitmix(), splitmix(), splitmix()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// A stand-in for the VRF output of a receipt: only its first 8 bytes are read.
    fn vrf_output(&mut self) -> VrfOutput {
        let mut output = [0; 64];
        output[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        VrfOutput(output)
    }
}

/// How a Mesh scheme picks the spot-check rate.
#[derive(Clone, Copy)]
enum Checks {
    Fixed { ppm: u32 },
    Adaptive(CheckPolicy),
}

#[derive(Clone, Copy)]
enum Scheme {
    /// VRF-selected spot checks, plus ringers unless `items_per_ringer` is 0.
    Mesh {
        checks: Checks,
        ringers: RingerPolicy,
    },
    /// BOINC's default: every job runs twice.
    Quorum2,
    /// BOINC's adaptive replication.
    BoincAdaptive,
}

const NO_RINGERS: RingerPolicy = RingerPolicy {
    items_per_ringer: 0,
};

impl Scheme {
    fn fixed(percent: u32, ringers: bool) -> Self {
        Scheme::Mesh {
            checks: Checks::Fixed {
                ppm: percent * 10_000,
            },
            ringers: if ringers {
                RingerPolicy::default()
            } else {
                NO_RINGERS
            },
        }
    }

    fn adaptive(policy: CheckPolicy, ringers: RingerPolicy) -> Self {
        Scheme::Mesh {
            checks: Checks::Adaptive(policy),
            ringers,
        }
    }

    fn label(&self) -> String {
        match self {
            Scheme::Mesh { checks, ringers } => {
                let checks = match checks {
                    Checks::Fixed { ppm } => format!("spot {}%", ppm / 10_000),
                    Checks::Adaptive(_) => "adaptive".to_string(),
                };
                match ringers.items_per_ringer {
                    0 => checks,
                    _ => format!("{checks} + ringers"),
                }
            }
            Scheme::Quorum2 => "BOINC quorum-2".to_string(),
            Scheme::BoincAdaptive => "BOINC adaptive replication".to_string(),
        }
    }
}

/// The schemes of table 1, in row order.
fn all_schemes() -> Vec<Scheme> {
    let mut schemes = Vec::new();
    for percent in FIXED_RATES {
        schemes.push(Scheme::fixed(percent, false));
        schemes.push(Scheme::fixed(percent, true));
    }
    schemes.push(Scheme::adaptive(CheckPolicy::default(), NO_RINGERS));
    schemes.push(Scheme::adaptive(
        CheckPolicy::default(),
        RingerPolicy::default(),
    ));
    schemes.push(Scheme::Quorum2);
    schemes.push(Scheme::BoincAdaptive);
    schemes
}

/// The shorter list used where every fixed rate would make the table too long.
fn short_schemes() -> Vec<Scheme> {
    let mut schemes = vec![
        Scheme::fixed(2, false),
        Scheme::fixed(2, true),
        Scheme::fixed(10, false),
        Scheme::fixed(10, true),
        Scheme::adaptive(CheckPolicy::default(), NO_RINGERS),
        Scheme::adaptive(CheckPolicy::default(), RingerPolicy::default()),
    ];
    schemes.extend([Scheme::Quorum2, Scheme::BoincAdaptive]);
    schemes
}

#[derive(Clone, Copy)]
enum Kind {
    /// Falsifies every item of a job, with probability `f` per job.
    WholeJob,
    /// Falsifies each item independently, with probability `f`.
    SingleItem,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::WholeJob => "whole-job",
            Kind::SingleItem => "single-item",
        }
    }
}

#[derive(Clone, Copy)]
struct Cheater {
    kind: Kind,
    rate: f64,
}

impl Cheater {
    fn new(kind: Kind, percent: u32) -> Self {
        Cheater {
            kind,
            rate: f64::from(percent) / 100.0,
        }
    }

    /// Whether any of `items` real items, and any of `ringers` ringers, come back falsified.
    fn falsify(&self, items: usize, ringers: usize, rng: &mut Rng) -> (bool, bool) {
        match self.kind {
            Kind::WholeJob => {
                let cheats = rng.chance(self.rate);
                (cheats && items > 0, cheats && ringers > 0)
            }
            Kind::SingleItem => {
                let any_of = |n: usize| 1.0 - (1.0 - self.rate).powi(n as i32);
                (
                    rng.chance(any_of(items)),
                    ringers > 0 && rng.chance(any_of(ringers)),
                )
            }
        }
    }
}

/// When a cheater starts cheating.
#[derive(Clone, Copy)]
enum Timing {
    FromStart,
    AfterHistory,
}

impl Timing {
    fn honest_jobs(self) -> u32 {
        match self {
            Timing::FromStart => 0,
            Timing::AfterHistory => HISTORY,
        }
    }

    fn label(self) -> String {
        match self {
            Timing::FromStart => "cheating from the first job".to_string(),
            Timing::AfterHistory => format!("cheating after {HISTORY} honest jobs"),
        }
    }
}

/// What the verifier keeps about one device.
#[derive(Default)]
struct Device {
    record: CheckRecord,
    /// BOINC's `CV`: consecutive valid replicated results.
    consecutive_valid: u32,
}

/// What one job did.
struct Job {
    failed: bool,
    extra_items: u64,
}

impl Device {
    fn quarantined(&self) -> bool {
        CheckPolicy::default().quarantined(&self.record)
    }

    /// Run one job of `items` real items under `scheme`; `cheater` is `None` for an honest job.
    fn run(
        &mut self,
        scheme: &Scheme,
        items: usize,
        cheater: Option<&Cheater>,
        rng: &mut Rng,
    ) -> Job {
        let falsify = |ringers: usize, rng: &mut Rng| {
            cheater.map_or((false, false), |c| c.falsify(items, ringers, rng))
        };
        // The check's verdict: `None` when the job was not checked at all.
        let (verdict, extra_items) = match scheme {
            Scheme::Mesh { checks, ringers } => {
                let ringers = ringers.count(items, rng.uniform());
                let (items_bad, ringer_bad) = falsify(ringers, rng);
                let rate = match checks {
                    Checks::Fixed { ppm } => *ppm,
                    Checks::Adaptive(policy) => policy.rate_ppm(&self.record),
                };
                let selected = is_selected(&rng.vrf_output(), rate);
                let reexecuted = selected || ringer_bad;
                let verdict = if ringer_bad || (selected && items_bad) {
                    Some(false)
                } else {
                    selected.then_some(true)
                };
                (verdict, ringers + if reexecuted { items } else { 0 })
            }
            Scheme::Quorum2 => (Some(!falsify(0, rng).0), items),
            Scheme::BoincAdaptive => {
                let cv = self.consecutive_valid;
                let replicated =
                    cv < BOINC_MIN_CONSECUTIVE_VALID || rng.chance(1.0 / f64::from(cv));
                let bad = falsify(0, rng).0;
                if !replicated {
                    (None, 0)
                } else {
                    self.consecutive_valid = if bad { 0 } else { cv + 1 };
                    (Some(!bad), items)
                }
            }
        };
        match verdict {
            Some(true) => self.record = self.record.pass(),
            Some(false) => self.record = self.record.fail(),
            None => {}
        }
        Job {
            failed: verdict == Some(false),
            extra_items: extra_items as u64,
        }
    }
}

/// One simulated cheater: its job (counted from its first cheating job) of first failed
/// check and of quarantine, and whether it was quarantined while still honest.
struct Trial {
    first_fail: Option<u32>,
    quarantine: Option<u32>,
    honest_quarantined: bool,
}

fn trial(scheme: &Scheme, items: usize, cheater: &Cheater, timing: Timing, rng: &mut Rng) -> Trial {
    let mut device = Device::default();
    for _ in 0..timing.honest_jobs() {
        device.run(scheme, items, None, rng);
    }
    let mut trial = Trial {
        first_fail: None,
        quarantine: None,
        honest_quarantined: device.quarantined(),
    };
    for job in 1..=MAX_JOBS {
        if device.run(scheme, items, Some(cheater), rng).failed && trial.first_fail.is_none() {
            trial.first_fail = Some(job);
        }
        if device.quarantined() {
            trial.quarantine = Some(job);
            break;
        }
    }
    trial
}

/// Statistics of one table cell: one scheme against one kind of cheater.
struct Cell {
    /// Share of cheaters with a failed check within `HORIZON` jobs.
    detected: f64,
    /// Share of cheaters quarantined within `HORIZON` jobs.
    quarantined: f64,
    /// Jobs until quarantine, sorted; `MAX_JOBS + 1` for a cheater never quarantined.
    until_quarantine: Vec<u32>,
    honest_quarantined: u32,
}

impl Cell {
    fn mean_until_quarantine(&self) -> f64 {
        let sum: f64 = self.until_quarantine.iter().map(|&j| f64::from(j)).sum();
        sum / self.until_quarantine.len() as f64
    }

    fn percentile_until_quarantine(&self, p: f64) -> u32 {
        let n = self.until_quarantine.len();
        self.until_quarantine[((n as f64 * p).ceil() as usize).clamp(1, n) - 1]
    }

    fn quarantine_summary(&self) -> String {
        let p99 = self.percentile_until_quarantine(0.99);
        if p99 > MAX_JOBS {
            return format!("> {MAX_JOBS}");
        }
        format!("{:.0} / {p99}", self.mean_until_quarantine())
    }
}

/// Run `trials` cheaters against `scheme`, split over the machine's cores.
fn run_cell(
    scheme: &Scheme,
    items: usize,
    cheater: &Cheater,
    timing: Timing,
    trials: u32,
    seed: u64,
) -> Cell {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let results: Vec<Trial> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let share = trials / threads + u32::from(t < trials % threads);
                scope.spawn(move || {
                    let mut rng = Rng::new(seed.wrapping_mul(0x100).wrapping_add(u64::from(t)));
                    (0..share)
                        .map(|_| trial(scheme, items, cheater, timing, &mut rng))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("simulation thread"))
            .collect()
    });
    let n = results.len() as f64;
    let within = |job: Option<u32>| job.is_some_and(|j| j <= HORIZON);
    let mut until_quarantine: Vec<u32> = results
        .iter()
        .map(|t| t.quarantine.unwrap_or(MAX_JOBS + 1))
        .collect();
    until_quarantine.sort_unstable();
    Cell {
        detected: results.iter().filter(|t| within(t.first_fail)).count() as f64 / n,
        quarantined: results.iter().filter(|t| within(t.quarantine)).count() as f64 / n,
        until_quarantine,
        honest_quarantined: results.iter().filter(|t| t.honest_quarantined).count() as u32,
    }
}

/// Totals of the network simulation (table 3).
#[derive(Default)]
struct Network {
    real_items: u64,
    extra_items: u64,
    honest_quarantined: u64,
    honest_jobs: u64,
    cheaters_quarantined: u32,
}

impl Network {
    fn extra(&self) -> f64 {
        self.extra_items as f64 / self.real_items as f64
    }

    /// `NET_HONEST` honest devices and an optional cheater, each given `NET_JOBS` jobs of
    /// `items` items; the cheater gets none after its quarantine. Repeated `NET_TRIALS` times.
    fn simulate(scheme: &Scheme, items: usize, cheater: Option<&Cheater>, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut net = Network::default();
        for _ in 0..NET_TRIALS {
            for _ in 0..NET_HONEST {
                let mut device = Device::default();
                for _ in 0..NET_JOBS {
                    let job = device.run(scheme, items, None, &mut rng);
                    net.real_items += items as u64;
                    net.extra_items += job.extra_items;
                }
                net.honest_jobs += u64::from(NET_JOBS);
                net.honest_quarantined += u64::from(device.quarantined());
            }
            if let Some(cheater) = cheater {
                let mut device = Device::default();
                for _ in 0..NET_JOBS {
                    let job = device.run(scheme, items, Some(cheater), &mut rng);
                    net.real_items += items as u64;
                    net.extra_items += job.extra_items;
                    if device.quarantined() {
                        net.cheaters_quarantined += 1;
                        break;
                    }
                }
            }
        }
        net
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn table_header(first: &str, columns: &[String]) {
    println!("| {first} | {} |", columns.join(" | "));
    println!("|---|{}", "---:|".repeat(columns.len()));
}

fn cheat_columns() -> Vec<String> {
    CHEAT_RATES.iter().map(|f| format!("f = {f}%")).collect()
}

fn pass_fail(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

/// Gives each cell its own reproducible seed.
struct Seeds(u64);

impl Seeds {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// The verdict's detection conditions for one scheme with jobs of `items` items: for each
/// kind, timing and target cheat rate, the probability of a failed check and of quarantine
/// within `HORIZON` jobs.
fn target_cells(
    scheme: &Scheme,
    items: usize,
    seeds: &mut Seeds,
) -> Vec<(Kind, Timing, u32, Cell)> {
    let mut cells = Vec::new();
    for kind in [Kind::WholeJob, Kind::SingleItem] {
        for timing in [Timing::FromStart, Timing::AfterHistory] {
            for f in TARGET_CHEAT_RATES {
                let cheater = Cheater::new(kind, f);
                let cell = run_cell(scheme, items, &cheater, timing, TRIALS, seeds.next());
                assert_eq!(
                    cell.honest_quarantined, 0,
                    "an honest device was quarantined"
                );
                cells.push((kind, timing, f, cell));
            }
        }
    }
    cells
}

fn main() {
    let started = Instant::now();
    let mut seeds = Seeds(0x4d65_7368);
    let mut honest_quarantined: u64 = 0;
    let mut honest_jobs: u64 = 0;
    let policy = CheckPolicy::default();
    let ringers = RingerPolicy::default();
    println!("# Mesh verification: Monte-Carlo simulation\n");
    println!(
        "Policy under test: `CheckPolicy::default()` = initial {} ppm, halve every {} passed \
         checks, floor {} ppm, quarantine after {} failed checks; `RingerPolicy::default()` = \
         one ringer per {} real items. Jobs of B = {BATCH} items unless stated. {TRIALS} \
         simulated cheaters per cell. Quarantine rule for every scheme: {} failed checks.\n",
        policy.initial_ppm,
        policy.halve_every,
        policy.floor_ppm,
        policy.quarantine_after,
        ringers.items_per_ringer,
        policy.quarantine_after,
    );

    // Tables 1 and 2 share their simulations: cells[timing][kind][scheme][f].
    let schemes = all_schemes();
    let timings = [Timing::FromStart, Timing::AfterHistory];
    let kinds = [Kind::WholeJob, Kind::SingleItem];
    let cells: Vec<Vec<Vec<Vec<Cell>>>> = timings
        .iter()
        .map(|&timing| {
            kinds
                .iter()
                .map(|&kind| {
                    schemes
                        .iter()
                        .map(|scheme| {
                            CHEAT_RATES
                                .iter()
                                .map(|&f| {
                                    let cheater = Cheater::new(kind, f);
                                    run_cell(scheme, BATCH, &cheater, timing, TRIALS, seeds.next())
                                })
                                .collect()
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    for cell in cells.iter().flatten().flatten().flatten() {
        honest_quarantined += u64::from(cell.honest_quarantined);
    }
    let history_trials = (kinds.len() * schemes.len() * CHEAT_RATES.len()) as u64;
    honest_jobs += history_trials * u64::from(TRIALS) * u64::from(HISTORY);

    println!(
        "## 1. Detection: probability of a failed check within {HORIZON} of the cheater's jobs\n"
    );
    for (t, timing) in timings.iter().enumerate() {
        for (k, kind) in kinds.iter().enumerate() {
            println!(
                "### 1{}. {} cheater, {}\n",
                ['a', 'b', 'c', 'd'][2 * t + k],
                kind.label(),
                timing.label()
            );
            table_header("scheme", &cheat_columns());
            for (s, scheme) in schemes.iter().enumerate() {
                let row: Vec<String> = cells[t][k][s].iter().map(|c| pct(c.detected)).collect();
                println!("| {} | {} |", scheme.label(), row.join(" | "));
            }
            println!();
        }
    }

    println!(
        "### 1e. Small batches (B = {SMALL_BATCH}), {}\n",
        Timing::AfterHistory.label()
    );
    table_header("cheater, scheme", &cheat_columns());
    for kind in kinds {
        for scheme in short_schemes().iter().take(6) {
            let row: Vec<String> = CHEAT_RATES
                .iter()
                .map(|&f| {
                    let cheater = Cheater::new(kind, f);
                    let cell = run_cell(
                        scheme,
                        SMALL_BATCH,
                        &cheater,
                        Timing::AfterHistory,
                        TRIALS,
                        seeds.next(),
                    );
                    honest_quarantined += u64::from(cell.honest_quarantined);
                    honest_jobs += u64::from(TRIALS) * u64::from(HISTORY);
                    pct(cell.detected)
                })
                .collect();
            println!(
                "| {}, {} | {} |",
                kind.label(),
                scheme.label(),
                row.join(" | ")
            );
        }
    }
    println!();

    println!(
        "## 2. Jobs until quarantine (mean / 99th percentile), counted from the first cheating job\n"
    );
    let short: Vec<String> = short_schemes().iter().map(Scheme::label).collect();
    for (t, timing) in timings.iter().enumerate() {
        for (k, kind) in kinds.iter().enumerate() {
            println!(
                "### 2{}. {} cheater, {}\n",
                ['a', 'b', 'c', 'd'][2 * t + k],
                kind.label(),
                timing.label()
            );
            table_header("scheme", &cheat_columns());
            for (s, scheme) in schemes.iter().enumerate() {
                if !short.contains(&scheme.label()) {
                    continue;
                }
                let row: Vec<String> = cells[t][k][s]
                    .iter()
                    .map(Cell::quarantine_summary)
                    .collect();
                println!("| {} | {} |", scheme.label(), row.join(" | "));
            }
            println!();
        }
    }

    println!(
        "## 3. Extra compute in a network of {NET_HONEST} honest devices (+ 1 cheater, f = \
         {NET_CHEAT_RATE}%), {NET_JOBS} jobs each, {NET_TRIALS} networks\n"
    );
    println!("Extra compute = (re-executed items + ringer items) / real items.\n");
    table_header(
        "scheme",
        &[
            "honest only".to_string(),
            "+ whole-job cheater".to_string(),
            "+ single-item cheater".to_string(),
            "cheater quarantined (whole / single)".to_string(),
        ],
    );
    let mut target_extra = Vec::new();
    for scheme in &schemes {
        let honest = Network::simulate(scheme, BATCH, None, seeds.next());
        let whole = Network::simulate(
            scheme,
            BATCH,
            Some(&Cheater::new(Kind::WholeJob, NET_CHEAT_RATE)),
            seeds.next(),
        );
        let single = Network::simulate(
            scheme,
            BATCH,
            Some(&Cheater::new(Kind::SingleItem, NET_CHEAT_RATE)),
            seeds.next(),
        );
        for net in [&honest, &whole, &single] {
            honest_quarantined += net.honest_quarantined;
            honest_jobs += net.honest_jobs;
        }
        println!(
            "| {} | {} | {} | {} | {} / {} |",
            scheme.label(),
            pct(honest.extra()),
            pct(whole.extra()),
            pct(single.extra()),
            pct(f64::from(whole.cheaters_quarantined) / f64::from(NET_TRIALS)),
            pct(f64::from(single.cheaters_quarantined) / f64::from(NET_TRIALS)),
        );
        if scheme.label() == "adaptive + ringers" {
            target_extra = vec![
                ("honest only", honest.extra()),
                ("+ whole-job cheater", whole.extra()),
                ("+ single-item cheater", single.extra()),
            ];
        }
    }
    println!();

    println!("## 4. Verdict for adaptive + ringers (default policies, B = {BATCH})\n");
    println!(
        "Target: a device falsifying >= 5% of its results is caught with >= 99% probability \
         within {HORIZON} of its jobs at <= 10% extra compute overall, and no honest device is \
         ever quarantined. \"Caught\" = a failed check (table 1); quarantine within {HORIZON} \
         jobs is shown alongside.\n"
    );
    table_header(
        "condition",
        &[
            "value".to_string(),
            "quarantined within 200".to_string(),
            "result".to_string(),
        ],
    );
    let adaptive = Scheme::adaptive(policy, ringers);
    let a = schemes
        .iter()
        .position(|s| s.label() == adaptive.label())
        .expect("in the list");
    let mut all_pass = true;
    for (t, timing) in timings.iter().enumerate() {
        for (k, kind) in kinds.iter().enumerate() {
            for (i, f) in CHEAT_RATES.iter().enumerate() {
                if !TARGET_CHEAT_RATES.contains(f) {
                    continue;
                }
                let cell = &cells[t][k][a][i];
                let ok = cell.detected >= TARGET_DETECTION;
                all_pass &= ok;
                println!(
                    "| detected, {} f = {f}%, {} | {} | {} | {} |",
                    kind.label(),
                    timing.label(),
                    pct(cell.detected),
                    pct(cell.quarantined),
                    pass_fail(ok)
                );
            }
        }
    }
    for (label, extra) in &target_extra {
        let ok = *extra <= TARGET_EXTRA;
        all_pass &= ok;
        println!(
            "| extra compute, {label} | {} | | {} |",
            pct(*extra),
            pass_fail(ok)
        );
    }
    let honest_ok = honest_quarantined == 0;
    all_pass &= honest_ok;
    println!(
        "| honest devices quarantined (all simulations, {:.0} million honest jobs) | \
         {honest_quarantined} | | {} |",
        honest_jobs as f64 / 1e6,
        pass_fail(honest_ok)
    );
    println!("\n**Overall: {}**\n", pass_fail(all_pass));
    assert_eq!(honest_quarantined, 0, "an honest device was quarantined");

    if !all_pass {
        println!("### 4b. Other parameter settings, B = {BATCH}\n");
        explore_parameters(BATCH, &mut seeds);
    }
    println!(
        "### 4c. The same target with small batches (B = {SMALL_BATCH}), for a few parameter \
         settings (the first row is the default)\n"
    );
    explore_parameters(SMALL_BATCH, &mut seeds);

    vrf_timing();
    println!("Total run time: {:.1} s", started.elapsed().as_secs_f64());
}

/// The target for a few parameter settings of adaptive + ringers, with jobs of `items` items:
/// the worst cell of the verdict's detection conditions, and the extra compute of the honest
/// network at `items` and at `BATCH` items per job (the policies do not know the batch size).
fn explore_parameters(items: usize, seeds: &mut Seeds) {
    println!(
        "| initial_ppm, halve_every, floor_ppm, items_per_ringer | worst detection (cell) | worst quarantined within {HORIZON} | extra compute, honest, B = {items} | extra compute, honest, B = {BATCH} | result |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let base = CheckPolicy::default();
    let ringers = RingerPolicy::default().items_per_ringer;
    let settings = [
        (base.initial_ppm, base.halve_every, base.floor_ppm, ringers),
        (base.initial_ppm, base.halve_every, 20_000, 32),
        (base.initial_ppm, base.halve_every, 20_000, 16),
        (base.initial_ppm, base.halve_every, 60_000, 32),
        (base.initial_ppm, base.halve_every, base.floor_ppm, 8),
    ];
    for (initial_ppm, halve_every, floor_ppm, items_per_ringer) in settings {
        let policy = CheckPolicy {
            initial_ppm,
            halve_every,
            floor_ppm,
            ..base
        };
        let scheme = Scheme::adaptive(policy, RingerPolicy { items_per_ringer });
        let cells = target_cells(&scheme, items, seeds);
        let (kind, timing, f, worst) = cells
            .iter()
            .min_by(|a, b| a.3.detected.total_cmp(&b.3.detected))
            .expect("cells");
        let worst_quarantined = cells.iter().map(|c| c.3.quarantined).fold(1.0, f64::min);
        let extra = Network::simulate(&scheme, items, None, seeds.next()).extra();
        let extra_batch = Network::simulate(&scheme, BATCH, None, seeds.next()).extra();
        let ok = worst.detected >= TARGET_DETECTION && extra.max(extra_batch) <= TARGET_EXTRA;
        println!(
            "| {initial_ppm}, {halve_every}, {floor_ppm}, {items_per_ringer} | {} ({}, f = {f}%, {}) | {} | {} | {} | {} |",
            pct(worst.detected),
            kind.label(),
            timing.label(),
            pct(worst_quarantined),
            pct(extra),
            pct(extra_batch),
            pass_fail(ok)
        );
    }
    println!();
}

/// The real per-job work of selection: one proof by the control plane, one verification by
/// whoever audits it, and the decision.
fn vrf_timing() {
    println!("## 5. VRF cost per job ({VRF_RUNS} runs, ECVRF-EDWARDS25519-SHA512-TAI)\n");
    let key = VrfSecretKey::from_seed([42; 32]);
    let public = key.public_key();
    let network = NetworkId::from_bytes([1; 16]);
    let inputs: Vec<Vec<u8>> = (0..VRF_RUNS as u32)
        .map(|i| {
            let mut id = [0; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            selection_input(&network, &JobId::from_bytes(id), &Blake3Hash::of(&id))
        })
        .collect();
    let mut prove_us = Vec::with_capacity(VRF_RUNS);
    let mut proofs = Vec::with_capacity(VRF_RUNS);
    for alpha in &inputs {
        let start = Instant::now();
        let proof = black_box(key.prove(black_box(alpha)));
        prove_us.push(start.elapsed().as_secs_f64() * 1e6);
        proofs.push(proof);
    }
    let mut verify_us = Vec::with_capacity(VRF_RUNS);
    let mut outputs = Vec::with_capacity(VRF_RUNS);
    for (alpha, proof) in inputs.iter().zip(&proofs) {
        let start = Instant::now();
        let output = black_box(public.verify(black_box(alpha), black_box(proof)));
        verify_us.push(start.elapsed().as_secs_f64() * 1e6);
        outputs.push(output.expect("our own proofs verify"));
    }
    // `is_selected` is a few nanoseconds: time it in bulk.
    let floor = CheckPolicy::default().floor_ppm;
    let rounds = 1_000;
    let start = Instant::now();
    let mut selected = 0usize;
    for _ in 0..rounds {
        for output in &outputs {
            selected += usize::from(is_selected(black_box(output), black_box(floor)));
        }
    }
    let select_ns = start.elapsed().as_secs_f64() * 1e9 / (rounds * outputs.len()) as f64;
    let summary = |samples: &mut Vec<f64>| {
        samples.sort_by(f64::total_cmp);
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        (samples[samples.len() / 2], mean)
    };
    let (prove_median, prove_mean) = summary(&mut prove_us);
    let (verify_median, verify_mean) = summary(&mut verify_us);
    table_header("operation", &["median".to_string(), "mean".to_string()]);
    println!("| `prove` | {prove_median:.1} µs | {prove_mean:.1} µs |");
    println!("| `verify` | {verify_median:.1} µs | {verify_mean:.1} µs |");
    println!("| `is_selected` | | {select_ns:.1} ns |");
    println!(
        "\nSanity: {} of {} outputs selected at the floor rate of {floor} ppm (expected {:.1}).\n",
        selected / rounds,
        outputs.len(),
        outputs.len() as f64 * f64::from(floor) / 1e6
    );
}
