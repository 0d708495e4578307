//! A mutational fuzzer without coverage feedback: it picks an input from the corpus (the
//! seeds, and the committed files), mutates it a few times, and runs the target, catching
//! panics. Inputs that panic are written to `fuzz/crashes/<target>/` and reported.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes decoders treat specially: CBOR major-type heads and lengths, JSON punctuation,
/// boundaries of integers.
const INTERESTING: &[&[u8]] = &[
    &[0x00],
    &[0xff],
    &[0x7f],
    &[0x80],
    &[0x9f],
    &[0xbf],
    &[0xf6],
    &[0xf7],
    &[0xf9, 0x7e, 0x00],
    &[0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0x5b, 0, 0, 0, 0x10, 0, 0, 0, 0],
    &[0xff, 0xff, 0xff, 0xff],
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\u0000",
    b"1e999",
    b"-0",
    b"null",
    b"NaN",
    "\u{202e}".as_bytes(),
    "\u{200b}".as_bytes(),
    "é".as_bytes(),
];

fn mutate(input: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => {
                let token = INTERESTING[rng.below(INTERESTING.len())];
                let at = rng.below(len + 1);
                input.splice(at..at, token.iter().copied());
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(16));
                input.drain(at..at + n);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let copy: Vec<u8> = input[at..at + n].to_vec();
                let to = rng.below(len + 1);
                input.splice(to..to, copy);
            }
            5 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(input.len() + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => input.truncate(rng.below(len)),
            _ => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let random: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, random);
            }
        }
    }
    input.truncate(1 << 16);
}

/// The committed seed files of `target`.
pub fn committed_corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// `fuzz/corpus/<target>/`.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Inputs run.
    pub executions: u64,
    /// Inputs that panicked (saved under `fuzz/crashes/<target>/`).
    pub crashes: Vec<PathBuf>,
}

/// Fuzz `target` for `duration`, starting from its seeds and committed corpus, with `seed`.
pub fn fuzz(name: &str, target: crate::Target, duration: Duration, seed: u64) -> Report {
    let mut corpus = crate::seeds::for_target(name);
    corpus.extend(committed_corpus(name));
    assert!(!corpus.is_empty(), "{name} has no seeds");
    let mut report = Report::default();
    // Panics are expected to be caught and saved, not printed thousands of times.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let run = |input: &[u8], report: &mut Report| {
        report.executions += 1;
        if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("crashes")
                .join(name);
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("{}", mesh_proto::Blake3Hash::of(input)));
            let _ = std::fs::write(&path, input);
            report.crashes.push(path);
        }
    };
    for input in &corpus {
        run(input, &mut report);
    }
    let mut rng = Rng(seed);
    let started = Instant::now();
    while started.elapsed() < duration {
        for _ in 0..64 {
            let mut input = corpus[rng.below(corpus.len())].clone();
            mutate(&mut input, &corpus, &mut rng);
            run(&input, &mut report);
        }
    }
    std::panic::set_hook(hook);
    report
}
