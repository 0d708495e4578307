//! The CI smoke: every target on its seeds, committed corpus and a few seconds of mutants.
//! No input may panic.

#[test]
fn every_target_survives_a_short_run() {
    let seconds: f64 = std::env::var("MESH_FUZZ_SMOKE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    for (name, target) in mesh_fuzz::TARGETS {
        let report = mesh_fuzz::harness::fuzz(
            name,
            *target,
            std::time::Duration::from_secs_f64(seconds),
            0x5eed,
        );
        eprintln!("{name}: {} executions", report.executions);
        assert!(
            report.crashes.is_empty(),
            "{name} panicked on {:?}",
            report.crashes
        );
        assert!(report.executions > 100, "{name} barely ran");
    }
}

#[test]
fn the_seeds_are_what_the_decoders_accept() {
    // Genuine messages verify, so the targets' "a changed message verified" checks bite.
    let ticket = mesh_fuzz::seeds::signed_ticket();
    let peer = mesh_fuzz::seeds::executor_peer();
    mesh_net::verify::job_ticket(
        &ticket,
        &mesh_fuzz::seeds::key().public_key(),
        &mesh_fuzz::seeds::network(),
        &peer,
        &peer,
        mesh_fuzz::seeds::NOW_MS,
    )
    .unwrap();
    let receipt = mesh_proto::Signed::sign(
        &mesh_fuzz::seeds::receipt(),
        &mesh_fuzz::seeds::executor_key(),
        mesh_proto::SignDomain::Receipt,
        &mesh_fuzz::seeds::network(),
    )
    .unwrap();
    mesh_net::verify::receipt(&receipt, &ticket, mesh_fuzz::seeds::OUTPUT).unwrap();
    for (name, _) in mesh_fuzz::TARGETS {
        assert!(!mesh_fuzz::seeds::for_target(name).is_empty(), "{name}");
    }
}
