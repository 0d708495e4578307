//! Choosing devices for jobs, and the job state machine's background half.
//!
//! States: queued → assigned → running → done | failed. An assignment is a conditional update
//! (`... WHERE state = 'queued'`), so two control-plane processes can never assign one job
//! twice. An assigned or running job holds a lease; when it expires the job goes back to the
//! queue (or fails after `max_job_attempts`), and its reserved credits are refunded exactly
//! once (idempotency keys per job).

use crate::domain::ledger::{self, Account};
use crate::domain::{DomainError, DomainResult};
use crate::state::AppState;
use crate::store::Tx;
use crate::store::jobs::{self, Holder, JobRecord};
use crate::store::{devices, now_ms};
use mesh_proto::api::{DeviceInfo, JobInfo, JobPurpose, JobTicket, Role};
use mesh_proto::terms::{TermsQuery, TermsRefusal};
use mesh_proto::{Blake3Hash, DeviceId, JobId, NetworkId, PersonId, SignDomain, Signed};
use std::sync::atomic::Ordering;

/// Devices with a trust score below this are never chosen.
pub const MIN_TRUST: f64 = 0.1;

/// A device that could run a job, with what the choice is based on.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The device.
    pub device: DeviceId,
    /// Its peer id.
    pub peer_id: String,
    /// Jobs it holds or reported, per slot.
    pub load: f64,
    /// Its trust score.
    pub trust: f64,
    /// Its owner.
    pub owner: PersonId,
    /// Jobs it runs at once (its slots, or fewer when its terms say so).
    pub slots: u32,
    /// Whether its terms cap the jobs it takes at once (then nothing queues beyond `slots`).
    pub capped: bool,
    /// Jobs of its network it holds now (assigned or running).
    pub holding: u32,
}

/// What a device's terms are asked about a job: what it runs and for whom.
#[derive(Debug, Clone)]
pub struct JobFacts {
    /// The component.
    pub workload: Blake3Hash,
    /// The workload's name, when registered.
    pub workload_name: Option<String>,
    /// Who published it, when registered.
    pub publisher: Option<PersonId>,
    /// Who asks (pays).
    pub requester: PersonId,
    /// Their role in the network (none for someone who left it).
    pub requester_role: Option<Role>,
}

/// The facts about a job of `workload` for `requester` in `network` that terms ask about.
pub async fn job_facts(
    state: &AppState,
    network: &NetworkId,
    workload: &Blake3Hash,
    requester: &PersonId,
) -> DomainResult<JobFacts> {
    let registered = crate::store::workloads::get(&state.db.pool, network, workload).await?;
    Ok(JobFacts {
        workload: *workload,
        workload_name: registered.as_ref().map(|w| w.name.clone()),
        publisher: registered.as_ref().map(|w| w.publisher),
        requester: *requester,
        requester_role: crate::store::networks::role_of(&state.db.pool, network, requester).await?,
    })
}

/// The devices that could run a job, and those whose terms refuse it (and why).
#[derive(Debug, Default)]
pub struct Survey {
    /// Who could run it, in the [`order`] the job should try them.
    pub candidates: Vec<Candidate>,
    /// Devices able to run the workload whose terms refuse this job now.
    pub refused: Vec<(DeviceId, TermsRefusal)>,
}

impl Survey {
    /// A sentence on why the devices whose terms refuse the job do (none when none does).
    pub fn refusals(&self) -> Option<String> {
        let first = self.refused.first()?;
        let mut reasons: Vec<String> = self.refused.iter().map(|(_, r)| r.to_string()).collect();
        reasons.sort();
        reasons.dedup();
        Some(match self.refused.len() {
            1 => format!("1 device's terms refuse this job ({})", first.1),
            n => format!(
                "{n} devices' terms refuse this job ({})",
                reasons.join("; ")
            ),
        })
    }
}

/// Devices of `network` able to run a workload needing `models` whose terms admit the job
/// `facts` describe: approved, online, with an inference backend and every model, trusted
/// enough, not quarantined; in the [`order`] a job should try them.
pub async fn candidates(
    state: &AppState,
    network: &NetworkId,
    models: &[String],
    facts: &JobFacts,
) -> DomainResult<Vec<Candidate>> {
    Ok(survey(state, network, models, facts).await?.candidates)
}

/// [`candidates`], and the devices that could run the workload but whose terms (their own,
/// their owner's or the admins') refuse this job now.
pub async fn survey(
    state: &AppState,
    network: &NetworkId,
    models: &[String],
    facts: &JobFacts,
) -> DomainResult<Survey> {
    let schedulable = devices::schedulable(&state.db.pool, network).await?;
    let held = jobs::held_per_executor(&state.db.pool, network).await?;
    let now = now_ms();
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for d in schedulable {
        let capabilities = &d.capabilities;
        if capabilities.backends.is_empty()
            || d.trust < MIN_TRUST
            || !models.iter().all(|m| capabilities.models.contains(m))
        {
            continue;
        }
        let holding = *held.get(&d.id).unwrap_or(&0) as u32;
        let query = TermsQuery {
            workload: &facts.workload,
            workload_name: facts.workload_name.as_deref(),
            publisher: facts.publisher.as_ref(),
            requester: &facts.requester,
            requester_role: facts.requester_role,
            now_ms: now,
            others_busy_percent: d.load.others_busy_percent.map(f64::from),
            running: holding.max(d.load.running + d.load.queued),
        };
        if let Err(refusal) = d.terms.admits(&query) {
            refused.push((d.id, refusal));
            continue;
        }
        let max_jobs = d.terms.max_jobs();
        let slots = d.load.slots.max(1).min(max_jobs.unwrap_or(u32::MAX));
        let reported = f64::from(d.load.queued);
        out.push(Candidate {
            device: d.id,
            peer_id: d.peer_id,
            load: (f64::from(holding).max(f64::from(d.load.running)) + reported) / f64::from(slots),
            trust: d.trust,
            owner: d.owner,
            slots,
            capped: max_jobs.is_some(),
            holding,
        });
    }
    let mut random = vec![0u8; 8 * out.len()];
    getrandom::fill(&mut random).expect("the OS random number generator works");
    let draws = random
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")));
    Ok(Survey {
        candidates: order(out, draws),
        refused,
    })
}

/// Order `candidates` for a job: least loaded first; among equally loaded devices, a random
/// order weighted by trust (Efraimidis–Spirakis: each device draws `u^(1/trust)` from its
/// uniform `u` in `draws`, and the highest goes first).
///
/// So idle devices share the work in proportion to their trust: the most trusted device is
/// preferred but never takes every job, and every schedulable device keeps running (and being
/// checked) some of them. A strict "most trusted first" would hand all sequential work to one
/// device and leave a cheater unexamined.
pub fn order(candidates: Vec<Candidate>, draws: impl IntoIterator<Item = u64>) -> Vec<Candidate> {
    let mut keyed: Vec<(f64, Candidate)> = candidates
        .into_iter()
        .zip(draws)
        .map(|(c, draw)| {
            // A uniform in (0, 1]: 53 random bits, never zero.
            let u = ((draw >> 11) + 1) as f64 / (1u64 << 53) as f64;
            (u.powf(1.0 / c.trust.max(f64::MIN_POSITIVE)), c)
        })
        .collect();
    keyed.sort_by(|(ka, a), (kb, b)| a.load.total_cmp(&b.load).then(kb.total_cmp(ka)));
    keyed.into_iter().map(|(_, c)| c).collect()
}

/// The libp2p peer id of the control plane itself (its signing key is its libp2p identity),
/// which presents the tickets of jobs it dispatches as gateway.
pub fn gateway_peer(state: &AppState) -> String {
    state.key.public_key().peer_id()
}

/// Sign a ticket letting `executor` (with libp2p peer id `executor_peer`) run `job`, until the
/// job's lease expires. It names the workload's name and publisher and the requester's role,
/// which the executor's terms may ask about.
pub async fn ticket(
    state: &AppState,
    record: &JobRecord,
    executor: &DeviceId,
    executor_peer: &str,
) -> DomainResult<Signed<JobTicket>> {
    let job = &record.info;
    let facts = job_facts(state, &job.network, &job.workload, &job.requester).await?;
    let ticket = JobTicket {
        job: job.id,
        network: job.network,
        requester: job.requester,
        executor: *executor,
        executor_peer: executor_peer.to_string(),
        requester_peer: record
            .requester_peer
            .clone()
            .unwrap_or_else(|| gateway_peer(state)),
        workload: job.workload,
        input: job.input,
        price: job.price,
        // The ticket lasts as long as the lease it stands for: reading the job again returns
        // the same ticket, not one that lives longer.
        expires_at_ms: job
            .lease_expires_at_ms
            .unwrap_or_else(|| now_ms() + state.config.job_lease.as_millis() as i64),
        workload_name: facts.workload_name,
        publisher: facts.publisher,
        requester_role: facts.requester_role,
    };
    Signed::sign(&ticket, &state.key, SignDomain::JobTicket, &job.network)
        .map_err(DomainError::internal)
}

/// Read a device (404 when there is none).
pub async fn device(state: &AppState, device: &DeviceId) -> DomainResult<DeviceInfo> {
    devices::get(&state.db.pool, device)
        .await?
        .ok_or_else(|| DomainError::not_found("device"))
}

/// Read a job (404 when there is none).
pub async fn job_record(state: &AppState, job: &JobId) -> DomainResult<JobRecord> {
    jobs::get(&state.db.pool, job)
        .await?
        .ok_or_else(|| DomainError::not_found("job"))
}

/// Try to assign a queued job to the best candidate. Returns the executor and its peer id, or
/// `None` when no device can take it now (the job stays queued).
pub async fn try_assign(state: &AppState, job: &JobId) -> DomainResult<Option<(DeviceId, String)>> {
    let record = job_record(state, job).await?;
    let Some(survey) = placements(state, &record).await? else {
        return Ok(None);
    };
    // Devices that already had a go come last: a busy or unreachable device is retried only
    // when nobody else can take the job.
    let mut candidates = survey.candidates;
    let tried = jobs::tried_devices(&state.db.pool, job).await?;
    candidates.sort_by_key(|c| tried.contains(&c.device));
    let Some(candidate) = candidates.into_iter().next() else {
        return Ok(None);
    };
    let now = now_ms();
    let lease_until = now + state.config.job_lease.as_millis() as i64;
    if jobs::assign(&state.db.pool, job, &candidate.device, lease_until, now).await? {
        state.metrics.assignments.fetch_add(1, Ordering::Relaxed);
        return Ok(Some((candidate.device, candidate.peer_id)));
    }
    // Someone else assigned it meanwhile.
    Ok(None)
}

/// Where the job of `record` may go: the [`survey`] of its network for it, with the
/// candidates narrowed to the devices this job may use. `None` when its workload is not
/// registered.
async fn placements(state: &AppState, record: &JobRecord) -> DomainResult<Option<Survey>> {
    let row = &record.info;
    let Some(metadata) =
        crate::store::workloads::metadata_of(&state.db.pool, &row.network, &row.workload).await?
    else {
        return Ok(None);
    };
    let facts = job_facts(state, &row.network, &row.workload, &row.requester).await?;
    let mut survey = survey(state, &row.network, &metadata.models, &facts).await?;
    // A device never runs its own request (it would have to dial itself).
    survey
        .candidates
        .retain(|c| record.requester_peer.as_deref() != Some(c.peer_id.as_str()));
    // A re-execution goes to a device of someone who may judge the job (neither its requester
    // nor an owner who ran or re-executed it), drawn like any executor: least loaded first,
    // trust-weighted at random among equals, so nobody can count on judging a given job.
    if let Some(verifies) = &row.verifies {
        let original = job_record(state, verifies).await?.info;
        let excluded = excluded_judges(state, &original, row.purpose).await?;
        survey.candidates.retain(|c| !excluded.contains(&c.owner));
    }
    // A job sized for one device (a batch's run) goes to that device or waits.
    if let Some(only) = &record.only_device {
        survey.candidates.retain(|c| &c.device == only);
        survey.refused.retain(|(d, _)| d == only);
    }
    Ok(Some(survey))
}

/// Why no device took the queued `job`: a sentence for its requester.
pub async fn why_unplaced(state: &AppState, job: &JobId) -> DomainResult<String> {
    let record = job_record(state, job).await?;
    let Some(survey) = placements(state, &record).await? else {
        return Ok("its workload is not in the network's registry".into());
    };
    Ok(match survey.refusals() {
        Some(refusals) if survey.candidates.is_empty() => {
            format!("no online device can run this job now: {refusals}")
        }
        Some(refusals) => format!("the devices that could run this job are busy; {refusals}"),
        None if survey.candidates.is_empty() => {
            "no online device can run this workload now".to_string()
        }
        None => "the devices that could run this job are busy".to_string(),
    })
}

/// The people whose devices may not run the next re-execution of `job` as `purpose`: its
/// requester and the owners who ran or re-executed it; for the first re-execution in a
/// network with no other judge, the requester's own devices may (an own check).
pub async fn excluded_judges(
    state: &AppState,
    job: &JobInfo,
    purpose: JobPurpose,
) -> DomainResult<Vec<PersonId>> {
    let excluded = jobs::may_not_judge(&state.db.pool, &job.id).await?;
    if purpose != JobPurpose::Check {
        return Ok(excluded);
    }
    let owners = devices::owners_with_devices(&state.db.pool, &job.network).await?;
    if owners.iter().any(|o| !excluded.contains(o)) {
        return Ok(excluded);
    }
    Ok(excluded
        .into_iter()
        .filter(|p| *p != job.requester)
        .collect())
}

/// Refund a job's reservation to its requester (once per job).
pub async fn refund(tx: &mut Tx, job: &JobInfo) -> DomainResult<()> {
    if job.price == 0 {
        return Ok(());
    }
    ledger::transfer(
        tx,
        &ledger::Transfer {
            network: job.network,
            idempotency_key: &format!("job:{}:refund", job.id),
            kind: "job_refund",
            memo: "job failed: reservation returned",
            job: Some(job.id),
            from: Account::Escrow,
            to: Account::Person(job.requester),
            amount: job.price,
        },
    )
    .await?;
    Ok(())
}

/// Put a job back in the queue, or fail it (and refund) when it used up its attempts.
/// `expected` lists the states it may be in; returns whether this call changed it.
pub async fn requeue_or_fail(
    state: &AppState,
    job: &JobId,
    expected_executor: Option<&DeviceId>,
    reason: &str,
    retryable: bool,
) -> DomainResult<bool> {
    let row = job_record(state, job).await?.info;
    let now = now_ms();
    let give_up = !retryable || row.attempts >= state.config.max_job_attempts;
    let holder = match expected_executor {
        Some(device) => Holder::Executor(device),
        None => Holder::LeaseExpiredBefore(now),
    };
    let mut tx = state.db.pool.begin().await?;
    let changed = if give_up {
        jobs::fail_held(&mut tx, job, holder, reason, now).await?
    } else {
        jobs::requeue(&mut tx, job, holder, reason, now).await?
    };
    if changed && give_up {
        refund(&mut tx, &row).await?;
    }
    tx.commit().await?;
    Ok(changed)
}

/// Fail a job still waiting in the queue and refund its reservation (the gateway gives up
/// when no device can take it). Returns whether this call failed it.
pub async fn fail_queued(state: &AppState, job: &JobId, reason: &str) -> DomainResult<bool> {
    let row = job_record(state, job).await?.info;
    let mut tx = state.db.pool.begin().await?;
    let changed = jobs::fail_queued(&mut tx, job, reason, now_ms()).await?;
    if changed {
        refund(&mut tx, &row).await?;
    }
    tx.commit().await?;
    Ok(changed)
}

/// One sweep: mark silent devices offline, expire leases, assign queued jobs.
pub async fn sweep(state: &AppState) -> DomainResult<()> {
    let now = now_ms();
    devices::mark_silent_offline(
        &state.db.pool,
        now - state.config.offline_after.as_millis() as i64,
    )
    .await?;
    for job in jobs::expired_leases(&state.db.pool, now, 100).await? {
        if requeue_or_fail(state, &job, None, "the executor's lease expired", true).await? {
            state.metrics.expired_leases.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%job, "lease expired");
        }
    }
    for job in jobs::queued(&state.db.pool, 100).await? {
        try_assign(state, &job).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(n: u8, load: f64, trust: f64) -> Candidate {
        Candidate {
            device: DeviceId::from_bytes([n; 16]),
            peer_id: format!("peer{n}"),
            load,
            trust,
            owner: PersonId::from_bytes([n; 16]),
            slots: 1,
            capped: false,
            holding: 0,
        }
    }

    /// A fixed pseudo-random stream (SplitMix64), so the test is reproducible.
    fn draws(seed: &mut u64, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = *seed;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            })
            .collect()
    }

    #[test]
    fn less_loaded_devices_always_come_first() {
        let mut seed = 1;
        for _ in 0..1000 {
            let ordered = order(
                vec![
                    candidate(1, 0.5, 1.0),
                    candidate(2, 0.0, 0.2),
                    candidate(3, 1.0, 0.9),
                ],
                draws(&mut seed, 3),
            );
            let loads: Vec<f64> = ordered.iter().map(|c| c.load).collect();
            assert_eq!(loads, [0.0, 0.5, 1.0]);
        }
    }

    #[test]
    fn idle_devices_share_work_in_proportion_to_trust() {
        // Sequential jobs on an idle pool: who goes first each time.
        let trusts = [0.95, 0.95, 0.5, 0.25];
        let mut firsts = [0u32; 4];
        let mut seed = 7;
        let rounds = 20_000;
        for _ in 0..rounds {
            let pool = trusts
                .iter()
                .enumerate()
                .map(|(i, t)| candidate(i as u8, 0.0, *t))
                .collect();
            let first = &order(pool, draws(&mut seed, 4))[0];
            firsts[usize::from(first.device.as_bytes()[0])] += 1;
        }
        let total: f64 = trusts.iter().sum();
        for (i, t) in trusts.iter().enumerate() {
            let share = f64::from(firsts[i]) / f64::from(rounds);
            let want = t / total;
            assert!(
                (share - want).abs() < 0.02,
                "device {i} (trust {t}) went first {share:.3} of the time, want {want:.3}: {firsts:?}"
            );
        }
    }
}
