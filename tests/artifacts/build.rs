//! Builds the workloads workspace for `wasm32-wasip2` and writes the component paths as consts,
//! so every `cargo test` runs against components built from the current sources.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Components the tests use: (const name, artifact file name).
const COMPONENTS: &[(&str, &str)] = &[
    ("EMBEDDINGS", "embeddings.wasm"),
    ("CHAT", "chat.wasm"),
    ("ECHO", "echo.wasm"),
    ("HOSTILE", "hostile.wasm"),
    ("HOSTILE_SOCKETS", "hostile_sockets.wasm"),
    ("NOT_A_WORKLOAD", "not-a-workload.wasm"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    let workloads = root.join("workloads");
    for watched in ["workloads", "sdk/guest", "sdk/tokenizer", "wit"] {
        watch(&root.join(watched));
    }

    // A separate target dir: the outer build holds the lock on the main one.
    let target_dir = workloads.join("target");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workloads)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--workspace",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // Do not leak the host build's flags into the wasm build.
    for (key, _) in env::vars() {
        if key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key == "RUSTFLAGS"
            || key == "RUSTC_WRAPPER"
        {
            command.env_remove(&key);
        }
    }
    let status = command
        .status()
        .expect("failed to run cargo for the workloads");
    assert!(
        status.success(),
        "building the workloads failed; is the target installed? (rustup target add wasm32-wasip2)"
    );

    let out_dir = target_dir.join("wasm32-wasip2/release");
    let mut consts = String::new();
    for (name, file) in COMPONENTS {
        let path = out_dir.join(file);
        assert!(path.exists(), "missing component {}", path.display());
        consts.push_str(&format!(
            "/// Path of the freshly built `{file}` component.\npub const {name}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    let dest = PathBuf::from(env::var("OUT_DIR").unwrap()).join("components.rs");
    fs::write(dest, consts).unwrap();
}

fn watch(path: &Path) {
    if path.file_name().is_some_and(|n| n == "target") {
        return;
    }
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap().flatten() {
            watch(&entry.path());
        }
    } else {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
