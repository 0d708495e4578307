//! Fault injection for adversarial tests: a host that lies. Compiled only with the
//! `fault-injection` feature (off by default), into the separate `mesh-host-faulty` binary,
//! and refused in optimised builds, so it never reaches a release artifact.
//!
//! `MESH_FAULT` picks the lie (the host signs its lie, as a real cheater would):
//! - `wrong:<p>`: with probability p per job, every embedding is replaced by a random unit
//!   vector;
//! - `items:<p>`: each embedding, independently, with probability p;
//! - `zero`: every embedding is the zero vector;
//! - `replay`: the previous job's output is returned for the next input;
//! - `collude`: embeddings derived from the input hash, so colluding hosts (same owner) agree
//!   with each other on the same wrong answer;
//! - `noise:<c>`: every embedding turned away from the true one to cosine c (e.g. `0.995`:
//!   noise a cheater keeps above the declared bound of 0.99);
//! - `claim:<variant>`: the output is honest for the model the host runs, but the receipt
//!   claims `<variant>` (a host running `int8` with `claim:fp32` passes a cheaper model off as
//!   fp32).
//!
//! A suffix `@<n>` makes the host honest for its first n jobs (a long honest history that
//! lowers its check rate before it starts lying), e.g. `items:0.5@8`.

#[cfg(not(debug_assertions))]
compile_error!("fault injection is for debug test builds only, never for release artifacts");

use crate::RunOutput;
use mesh_proto::Blake3Hash;
use serde_json::Value;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The lie a faulty host tells.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Whole jobs wrong with this probability.
    Wrong(f64),
    /// Single items wrong with this probability.
    Items(f64),
    /// Zero vectors.
    Zero,
    /// The previous output again.
    Replay,
    /// Wrong, but identical across colluding hosts.
    Collude,
    /// Every vector turned to this cosine with the true one.
    Noise(f64),
    /// The receipt names this variant's model file instead of the one that ran.
    Claim(&'static str),
    /// Honest results, each answered this many milliseconds late (a straggler).
    Slow(u64),
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let probability = |p: &str| -> Result<f64, String> {
            p.parse::<f64>()
                .ok()
                .filter(|p| (0.0..=1.0).contains(p))
                .ok_or_else(|| format!("not a probability: {p}"))
        };
        match s.split_once(':') {
            Some(("wrong", p)) => Ok(Fault::Wrong(probability(p)?)),
            Some(("items", p)) => Ok(Fault::Items(probability(p)?)),
            None if s == "zero" => Ok(Fault::Zero),
            None if s == "replay" => Ok(Fault::Replay),
            None if s == "collude" => Ok(Fault::Collude),
            Some(("noise", c)) => Ok(Fault::Noise(probability(c)?)),
            Some(("claim", "fp32")) => Ok(Fault::Claim("fp32")),
            Some(("claim", "int8")) => Ok(Fault::Claim("int8")),
            Some(("slow", ms)) => ms
                .parse()
                .map(Fault::Slow)
                .map_err(|_| format!("not milliseconds: {ms}")),
            _ => Err(format!(
                "MESH_FAULT must be wrong:<p>, items:<p>, zero, replay, collude, noise:<c>, \
                 claim:fp32|int8 or slow:<ms>, not {s:?}"
            )),
        }
    }
}

/// A faulty host's state.
pub struct Injector {
    fault: Fault,
    honest_jobs: u64,
    jobs: AtomicU64,
    previous: Mutex<Option<Vec<u8>>>,
}

/// A pseudorandom stream (splitmix64) seeded from bytes.
struct Stream(u64);

impl Stream {
    fn seeded(seed: &[u8]) -> Self {
        Stream(u64::from_le_bytes(
            blake3::hash(seed).as_bytes()[..8].try_into().expect("8"),
        ))
    }

    fn random() -> Self {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("the OS random number generator works");
        Stream(u64::from_le_bytes(seed))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn vector(&mut self, len: usize) -> Vec<Value> {
        let raw: Vec<f64> = (0..len).map(|_| self.unit() - 0.5).collect();
        let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
        raw.into_iter().map(|x| Value::from(x / norm)).collect()
    }
}

/// `vector` turned to cosine `c` with itself: `c·v̂ + √(1−c²)·û`, where û is a random unit
/// vector orthogonal to v (Gram–Schmidt), scaled back to v's length.
fn turned(vector: &Value, c: f64, stream: &mut Stream) -> Option<Vec<Value>> {
    let v: Vec<f64> = vector
        .as_array()?
        .iter()
        .map(Value::as_f64)
        .collect::<Option<_>>()?;
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm == 0.0 {
        return None;
    }
    let unit: Vec<f64> = v.iter().map(|x| x / norm).collect();
    let r: Vec<f64> = stream
        .vector(v.len())
        .iter()
        .map(|x| x.as_f64().unwrap_or(0.0))
        .collect();
    let along: f64 = r.iter().zip(&unit).map(|(a, b)| a * b).sum();
    let orthogonal: Vec<f64> = r.iter().zip(&unit).map(|(a, b)| a - along * b).collect();
    let length = orthogonal
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    let s = (1.0 - c * c).max(0.0).sqrt();
    Some(
        unit.iter()
            .zip(&orthogonal)
            .map(|(u, o)| Value::from(norm * (c * u + s * o / length)))
            .collect(),
    )
}

impl Injector {
    /// The injector `MESH_FAULT` asks for, if any.
    pub fn from_env() -> anyhow::Result<Option<Injector>> {
        match std::env::var("MESH_FAULT") {
            Ok(text) if !text.is_empty() => Injector::parse(&text).map(Some),
            _ => Ok(None),
        }
    }

    /// The injector a `MESH_FAULT` value (`<fault>[@<honest jobs>]`) describes.
    pub fn parse(text: &str) -> anyhow::Result<Injector> {
        let (fault, honest_jobs) = match text.split_once('@') {
            Some((fault, n)) => (
                fault,
                n.parse()
                    .map_err(|_| anyhow::anyhow!("MESH_FAULT: not a job count: {n}"))?,
            ),
            None => (text, 0),
        };
        let fault: Fault = fault.parse().map_err(anyhow::Error::msg)?;
        tracing::warn!(
            ?fault,
            honest_jobs,
            "FAULT INJECTION: this host misbehaves on purpose"
        );
        Ok(Injector {
            fault,
            honest_jobs,
            jobs: AtomicU64::new(0),
            previous: Mutex::new(None),
        })
    }

    /// How late a straggler answers.
    pub fn delay(&self) -> Option<std::time::Duration> {
        match self.fault {
            Fault::Slow(ms) => Some(std::time::Duration::from_millis(ms)),
            _ => None,
        }
    }

    /// Apply the fault to a finished run: change its output and re-pin the receipt to it, or
    /// (a false claim) rename the models in its receipt to files of `models` that did not run.
    pub fn tamper(
        &self,
        mut run: RunOutput,
        models: &crate::models::ModelStore,
        backend: crate::backend::BackendKind,
    ) -> RunOutput {
        if self.jobs.fetch_add(1, Ordering::Relaxed) < self.honest_jobs {
            return run;
        }
        let honest = run.output.clone();
        let lie = match self.fault {
            Fault::Replay => self.previous.lock().expect("not poisoned").replace(honest),
            Fault::Slow(_) => None,
            Fault::Claim(variant) => {
                for binding in &mut run.receipt.models {
                    if let Ok(entry) = models.select(&binding.name, variant, backend) {
                        binding.hash = entry.hash;
                        binding.variant = entry.variant.clone();
                    }
                }
                None
            }
            fault => self.vectors(fault, &run.output, &run.receipt.input),
        };
        if let Some(lie) = lie {
            run.receipt.output = Blake3Hash::of(&lie);
            run.output = lie;
        }
        run
    }

    fn vectors(&self, fault: Fault, output: &[u8], input: &Blake3Hash) -> Option<Vec<u8>> {
        let mut doc = mesh_proto::document::parse(output).ok()?;
        let vectors = doc.get_mut("embeddings")?.as_array_mut()?;
        let mut stream = match fault {
            Fault::Collude => Stream::seeded(input.as_bytes()),
            _ => Stream::random(),
        };
        if let Fault::Wrong(p) = fault
            && stream.unit() >= p
        {
            return None;
        }
        for vector in vectors.iter_mut() {
            let len = vector.as_array().map_or(0, Vec::len);
            *vector = match fault {
                Fault::Zero => Value::Array(vec![Value::from(0.0); len]),
                Fault::Items(p) if stream.unit() >= p => continue,
                Fault::Noise(c) => Value::Array(turned(vector, c, &mut stream)?),
                _ => Value::Array(stream.vector(len)),
            };
        }
        mesh_proto::cbor::to_vec(&doc).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_turns_every_vector_to_the_cosine_asked_for() {
        let mut stream = Stream::seeded(b"test");
        let truth = Value::Array(stream.vector(384));
        for c in [0.995, 0.9999, 0.5] {
            let turned = turned(&truth, c, &mut stream).unwrap();
            let a: Vec<f64> = truth
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let b: Vec<f64> = turned.iter().map(|x| x.as_f64().unwrap()).collect();
            let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!((dot / (norm(&a) * norm(&b)) - c).abs() < 1e-9, "cosine {c}");
            assert!((norm(&b) - norm(&a)).abs() < 1e-9);
        }
    }

    #[test]
    fn faults_parse() {
        assert_eq!("noise:0.995".parse(), Ok(Fault::Noise(0.995)));
        assert_eq!("claim:fp32".parse(), Ok(Fault::Claim("fp32")));
        assert!("claim:fp64".parse::<Fault>().is_err());
        assert!("noise:2".parse::<Fault>().is_err());
    }
}
