//! Long runs, by hand: `cargo test -p mesh-fuzz --release --test long -- --ignored
//! --nocapture` fuzzes every target for `MESH_FUZZ_SECONDS` (default 600) each and prints
//! executions; `MESH_FUZZ_TARGET` picks one.

#[test]
#[ignore = "runs for ten minutes per target"]
fn fuzz_every_target_for_a_while() {
    let seconds: u64 = std::env::var("MESH_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let only = std::env::var("MESH_FUZZ_TARGET").ok();
    let mut crashed = Vec::new();
    for (name, target) in mesh_fuzz::TARGETS {
        if only.as_deref().is_some_and(|o| o != *name) {
            continue;
        }
        let started = std::time::Instant::now();
        let report = mesh_fuzz::harness::fuzz(
            name,
            *target,
            std::time::Duration::from_secs(seconds),
            std::process::id() as u64,
        );
        println!(
            "{name}: {} executions in {:.0?} ({:.0}/s), {} crashes",
            report.executions,
            started.elapsed(),
            report.executions as f64 / started.elapsed().as_secs_f64(),
            report.crashes.len()
        );
        crashed.extend(report.crashes);
    }
    assert!(crashed.is_empty(), "crashes: {crashed:?}");
}

/// Write the seeds as the committed corpus (`fuzz/corpus/<target>/`).
#[test]
#[ignore = "rewrites the committed corpus"]
fn write_seed_corpus() {
    for (name, _) in mesh_fuzz::TARGETS {
        let dir = mesh_fuzz::harness::corpus_dir(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in mesh_fuzz::seeds::for_target(name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
        }
    }
}
