//! Ringers: items with known answers mixed into batched jobs.
//!
//! Spot checks alone catch a device that falsifies a small share of its results only after
//! many jobs. So the gateway, which composes the jobs it dispatches, mixes a few ringers into
//! every batched job ([`RingerPolicy`](mesh_proto::verification::RingerPolicy): one per 16
//! items on average) and compares the executor's answers for them with the known ones by the
//! workload's rule. A wrong ringer is a failed check.
//!
//! Where the answers come from: items of the *same requester's* earlier jobs whose check
//! passed, i.e. two devices of different owners computed the same answer ([`harvest`]). So a
//! ringer is never another requester's private text, and its answer was verified, not assumed.
//!
//! How the executor is kept from recognising them: they are real items of the same workload
//! and requester (same distribution of lengths and content), placed at random positions, in a
//! random number (drawn by the control plane), and a ringer is never sent to a device that has
//! seen its text before (as executor or verifier of its source job, or as an earlier ringer:
//! `ringer_seen`). What this does not stop: devices that pool every text they ever saw with
//! other colluding devices could spot repeats; spot checks (which do not depend on ringers)
//! still apply to them.
//!
//! A batched workload is one whose input document has exactly one array field and whose
//! output document has exactly one array field of the same length, item for item (the
//! embeddings workload: `{"texts": [...]}` to `{"embeddings": [...], "tokens": n}`).

use crate::domain::DomainResult;
use crate::state::AppState;
use crate::store::ringers as store;
use crate::store::{now_ms, random_id};
use mesh_proto::api::JobInfo;
use mesh_proto::{Blake3Hash, Comparison, DeviceId, NetworkId, PersonId};
use serde_json::Value;

/// Items of a passed job kept as ringers.
const HARVEST_PER_JOB: usize = 8;

/// A ringer placed in a job.
#[derive(Debug, Clone)]
pub struct Planted {
    /// Its index in the job's item array.
    pub position: usize,
    /// Its id.
    pub id: String,
    /// The known answer.
    pub answer: Value,
}

/// The only array field of a document, by name.
fn batch_field(doc: &Value) -> Option<&str> {
    let object = doc.as_object()?;
    let mut arrays = object.iter().filter(|(_, v)| v.is_array());
    let (name, _) = arrays.next()?;
    arrays.next().is_none().then_some(name.as_str())
}

fn random_below(n: usize) -> usize {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random number generator works");
    (u64::from_le_bytes(bytes) % n.max(1) as u64) as usize
}

fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random number generator works");
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Keep a few items of `job` (whose check just passed: `seen_by` computed them) as ringers
/// for its requester's later jobs.
pub async fn harvest(
    state: &AppState,
    job: &JobInfo,
    input: &[u8],
    output: &[u8],
    seen_by: &[DeviceId],
) -> DomainResult<()> {
    let (Ok(input), Ok(output)) = (
        mesh_proto::document::parse(input),
        mesh_proto::document::parse(output),
    ) else {
        return Ok(());
    };
    let (Some(input_field), Some(output_field)) = (batch_field(&input), batch_field(&output))
    else {
        return Ok(());
    };
    let items = input[input_field].as_array().expect("an array field");
    let answers = output[output_field].as_array().expect("an array field");
    if items.len() != answers.len() || items.is_empty() {
        return Ok(());
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, random_below(i + 1));
    }
    let now = now_ms();
    for &i in order.iter().take(HARVEST_PER_JOB) {
        let id = random_id(|b| {
            format!(
                "rng_{}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            )
        });
        let item = items[i].to_string();
        let answer = answers[i].to_string();
        let ringer = store::NewRinger {
            id: &id,
            network: &job.network,
            workload: &job.workload,
            requester: &job.requester,
            item: &item,
            answer: &answer,
            source_job: &job.id,
        };
        if store::insert(&state.db.pool, &ringer, now).await? {
            for device in seen_by {
                store::mark_seen(&state.db.pool, &id, device).await?;
            }
        }
    }
    Ok(())
}

/// Mix ringers for `executor` into the batched `input` of `requester`'s job; `None` when the
/// input is not batched, the draw gave no ringer, or no unseen ringer is known.
pub async fn mix(
    state: &AppState,
    network: &NetworkId,
    workload: &Blake3Hash,
    requester: &PersonId,
    executor: &DeviceId,
    input: &[u8],
) -> DomainResult<Option<(Vec<u8>, Vec<Planted>)>> {
    let Ok(mut doc) = mesh_proto::document::parse(input) else {
        return Ok(None);
    };
    let Some(field) = batch_field(&doc).map(str::to_string) else {
        return Ok(None);
    };
    let items = doc[&field].as_array_mut().expect("an array field");
    let count = state.config.ringers.count(items.len(), random_unit());
    if count == 0 {
        return Ok(None);
    }
    let rows = store::unseen(&state.db.pool, network, workload, requester, executor, 64).await?;
    let mut pool: Vec<(String, Value, Value)> = Vec::new();
    for (id, item, answer) in rows {
        if let (Ok(item), Ok(answer)) = (serde_json::from_str(&item), serde_json::from_str(&answer))
        {
            pool.push((id, item, answer));
        }
    }
    if pool.is_empty() {
        return Ok(None);
    }
    // Generated text has no known answer to compare item by item (and a conversation's
    // messages are not a batch): generation workloads get no ringers, whatever is stored.
    let rule = crate::domain::checks::comparison(state, network, workload).await?;
    if matches!(rule, mesh_proto::Comparison::Generation(_)) {
        return Ok(None);
    }
    let mut planted = Vec::new();
    for _ in 0..count.min(pool.len()) {
        let (id, item, answer) = pool.swap_remove(random_below(pool.len()));
        let position = random_below(items.len() + 1);
        items.insert(position, item);
        for p in &mut planted {
            let p: &mut Planted = p;
            if p.position >= position {
                p.position += 1;
            }
        }
        planted.push(Planted {
            position,
            id,
            answer,
        });
    }
    for p in &planted {
        store::count_use(&state.db.pool, &p.id).await?;
        store::mark_seen(&state.db.pool, &p.id, executor).await?;
    }
    let bytes = serde_json::to_vec(&doc).map_err(crate::domain::DomainError::internal)?;
    Ok(Some((bytes, planted)))
}

/// Check the executor's answers for the `planted` ringers in `output` by `rule`, and return
/// the output without them (the requester's items only), or why a ringer failed.
pub fn evaluate(rule: &Comparison, output: &[u8], planted: &[Planted]) -> Result<Value, String> {
    let mut doc =
        mesh_proto::document::parse(output).map_err(|e| format!("unreadable output: {e}"))?;
    let field = batch_field(&doc)
        .ok_or("the output has no single item array")?
        .to_string();
    let answers = doc[&field].as_array_mut().expect("an array field");
    let mut positions: Vec<&Planted> = planted.iter().collect();
    positions.sort_by_key(|p| std::cmp::Reverse(p.position));
    for p in positions {
        let Some(given) = (p.position < answers.len()).then(|| answers.remove(p.position)) else {
            return Err(format!("the output has no item {}", p.position));
        };
        let expected = serde_json::to_vec(&[&p.answer]).expect("JSON encodes");
        let given = serde_json::to_vec(&[&given]).expect("JSON encodes");
        rule.compare(&expected, &given)
            .map_err(|mismatch| format!("a known-answer item is wrong: {mismatch}"))?;
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ringers_are_checked_and_stripped() {
        let planted = vec![
            Planted {
                position: 0,
                id: "a".into(),
                answer: serde_json::json!([1.0, 0.0]),
            },
            Planted {
                position: 2,
                id: "b".into(),
                answer: serde_json::json!([0.0, 1.0]),
            },
        ];
        let rule = Comparison::Cosine(0.999);
        let good =
            serde_json::json!({"embeddings": [[1.0, 0.001], [0.5, 0.5], [0.0, 1.0]], "tokens": 9});
        let out = evaluate(&rule, &serde_json::to_vec(&good).unwrap(), &planted).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"embeddings": [[0.5, 0.5]], "tokens": 9})
        );
        let bad =
            serde_json::json!({"embeddings": [[1.0, 0.0], [0.5, 0.5], [1.0, 0.0]], "tokens": 9});
        assert!(evaluate(&rule, &serde_json::to_vec(&bad).unwrap(), &planted).is_err());
        let short = serde_json::json!({"embeddings": [[1.0, 0.0]], "tokens": 9});
        assert!(evaluate(&rule, &serde_json::to_vec(&short).unwrap(), &planted).is_err());
        assert!(evaluate(&rule, b"not a document", &planted).is_err());
    }

    #[test]
    fn batch_field_needs_exactly_one_array() {
        assert_eq!(
            batch_field(&serde_json::json!({"texts": ["a"]})),
            Some("texts")
        );
        assert_eq!(batch_field(&serde_json::json!({"a": [], "b": []})), None);
        assert_eq!(batch_field(&serde_json::json!({"a": 1})), None);
        assert_eq!(batch_field(&serde_json::json!(["a"])), None);
    }
}
