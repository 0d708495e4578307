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
//!   with each other on the same wrong answer.
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
            _ => Err(format!(
                "MESH_FAULT must be wrong:<p>, items:<p>, zero, replay or collude, not {s:?}"
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
            "FAULT INJECTION: this host returns wrong results on purpose"
        );
        Ok(Injector {
            fault,
            honest_jobs,
            jobs: AtomicU64::new(0),
            previous: Mutex::new(None),
        })
    }

    /// Apply the fault to a finished run: change its output and re-pin the receipt to it.
    pub fn tamper(&self, mut run: RunOutput) -> RunOutput {
        if self.jobs.fetch_add(1, Ordering::Relaxed) < self.honest_jobs {
            return run;
        }
        let honest = run.output.clone();
        let lie = match self.fault {
            Fault::Replay => self.previous.lock().expect("not poisoned").replace(honest),
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
                _ => Value::Array(stream.vector(len)),
            };
        }
        mesh_proto::cbor::to_vec(&doc).ok()
    }
}
