//! `mesh-host-faulty`: the device agent with fault injection (`MESH_FAULT`, see
//! `agent::fault`), for adversarial end-to-end tests only. Built only with the
//! `fault-injection` feature, never in release artifacts.

#[path = "main.rs"]
mod agent_main;

fn main() -> std::process::ExitCode {
    agent_main::main()
}
