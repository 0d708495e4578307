//! Checks the workspace's dependency rules with `cargo metadata`:
//! - the wire crate pulls in no runtime (no tokio, libp2p, axum, sqlx, wasmtime);
//! - host, relay, control plane and CLI never depend on each other;
//! - inside the control plane, only `store/` contains SQL, and the layers only point down
//!   (`http → workers → domain → store`, no two modules using each other).

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::process::Command;

/// Crates that must stay independent of each other (those that exist yet).
const SERVICES: &[&str] = &["mesh-host", "mesh-relay", "mesh-control-plane", "mesh-cli"];
/// Crates the wire crate must never pull in, directly or not.
const FORBIDDEN_IN_PROTO: &[&str] = &[
    "tokio", "libp2p", "axum", "sqlx", "wasmtime", "ort", "openvino",
];

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc reports its host triple");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            &host,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Package name by id, and the normal (non-dev, non-build) dependencies of each package.
fn graph(metadata: &Value) -> (HashMap<String, String>, HashMap<String, Vec<String>>) {
    let names = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let deps = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| {
            let normal = node["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].is_null())
                })
                .map(|d| d["pkg"].as_str().unwrap().to_string())
                .collect();
            (node["id"].as_str().unwrap().to_string(), normal)
        })
        .collect();
    (names, deps)
}

fn closure(start: &str, deps: &HashMap<String, Vec<String>>) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut stack = vec![start.to_string()];
    while let Some(id) = stack.pop() {
        for dep in deps.get(&id).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                stack.push(dep.clone());
            }
        }
    }
    seen
}

#[test]
fn wire_crate_has_no_runtime_dependencies() {
    let metadata = metadata();
    let (names, deps) = graph(&metadata);
    let proto = names.iter().find(|(_, n)| *n == "mesh-proto").unwrap().0;
    for dep in closure(proto, &deps) {
        let name = &names[&dep];
        assert!(
            !FORBIDDEN_IN_PROTO
                .iter()
                .any(|f| name == f || name.starts_with(&format!("{f}-"))),
            "mesh-proto depends on {name}"
        );
    }
}

#[test]
fn services_do_not_depend_on_each_other() {
    let metadata = metadata();
    let (names, deps) = graph(&metadata);
    let services: Vec<(&String, &String)> = names
        .iter()
        .filter(|(_, n)| SERVICES.contains(&n.as_str()))
        .collect();
    assert!(
        services.iter().any(|(_, n)| *n == "mesh-host"),
        "mesh-host is in the workspace"
    );
    for (id, name) in &services {
        let reachable = closure(id, &deps);
        for (other_id, other) in &services {
            assert!(!reachable.contains(*other_id), "{name} depends on {other}");
        }
    }
}

fn runs_sql(text: &str) -> bool {
    ["sqlx::query", "sqlx::raw_sql", "query_scalar(", "query_as("]
        .iter()
        .any(|needle| text.contains(needle))
}

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Only the control plane's `store/` contains SQL: every other module reaches the database
/// through a store function, so each table has one writer.
#[test]
fn control_plane_sql_lives_in_the_store() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../control-plane/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "found the control plane's sources");
    let mut outside = Vec::new();
    for path in files {
        let relative = path
            .strip_prefix(&src)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        if !relative.starts_with("store/") && runs_sql(&std::fs::read_to_string(&path).unwrap()) {
            outside.push(relative);
        }
    }
    assert!(
        outside.is_empty(),
        "only control-plane/src/store/ may run SQL; these do: {outside:?}"
    );
}

/// The control plane's layer of a source file (or of the module a path names): `http` on top,
/// then the background `workers`, the `domain`, and the `store` at the bottom; `shared` is the
/// state every layer is handed (configuration, metrics, the component validator).
fn control_plane_layer(module: &str) -> Option<u8> {
    match module.split('/').next().unwrap() {
        "store" => Some(0),
        "state" | "metrics" | "validate" => Some(1),
        "domain" => Some(2),
        "workers" => Some(3),
        "http" => Some(4),
        _ => None,
    }
}

/// `crate::…` paths each control-plane source file uses, as `layer/module` (or a root
/// module), keyed by the file's own `layer/module`.
fn control_plane_imports() -> HashMap<String, HashSet<String>> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../control-plane/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut imports = HashMap::new();
    for path in files {
        let relative = path.strip_prefix(&src).unwrap().to_str().unwrap();
        let module = relative
            .trim_end_matches(".rs")
            .trim_end_matches("/mod")
            .to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut used = HashSet::new();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let mut parts = rest.split("::").map(|p| {
                p.chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect::<String>()
            });
            let first = parts.next().unwrap_or_default();
            let target = match (first.as_str(), parts.next()) {
                ("http" | "domain" | "store" | "workers", Some(second)) if !second.is_empty() => {
                    format!("{first}/{second}")
                }
                _ => first,
            };
            if !target.is_empty() && target != module {
                used.insert(target);
            }
        }
        imports.insert(module, used);
    }
    imports
}

/// `http → workers → domain → store`: no module uses one of a higher layer, and no two
/// modules use each other.
#[test]
fn control_plane_layers_only_point_down() {
    let imports = control_plane_imports();
    assert!(imports.contains_key("store/jobs") && imports.contains_key("http/jobs"));
    for (module, used) in &imports {
        let Some(layer) = control_plane_layer(module) else {
            continue; // lib.rs and main.rs wire everything together
        };
        for target in used {
            if let Some(target_layer) = control_plane_layer(target) {
                assert!(
                    target_layer <= layer,
                    "control-plane/src/{module} (a lower layer) uses crate::{target}"
                );
            }
        }
    }
    for (module, used) in &imports {
        for target in used {
            // `domain` and `store` name the layers' own mod.rs (their error types).
            let back = imports.get(target).is_some_and(|u| u.contains(module));
            assert!(
                !back,
                "control-plane/src/{module} and {target} use each other"
            );
        }
    }
}
