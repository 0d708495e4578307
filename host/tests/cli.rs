//! The `mesh-host` binary at its JSON edge: real process, real files, exit codes.

use std::process::{Command, Output};

fn mesh_host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mesh-host"))
        .args(args)
        .output()
        .expect("run mesh-host")
}

fn write_input(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

#[test]
fn exec_prints_embeddings_and_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(
        &dir,
        "in.json",
        br#"{"texts": ["hello world", "a second sentence"]}"#,
    );
    let out = mesh_host(&["exec", mesh_test_artifacts::EMBEDDINGS, "--input", &input]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let embeddings = doc["embeddings"].as_array().unwrap();
    assert_eq!(embeddings.len(), 2);
    assert_eq!(embeddings[0].as_array().unwrap().len(), 384);
    let receipt = &doc["receipt"];
    for field in ["component", "input", "output"] {
        assert!(
            receipt[field].as_str().unwrap().starts_with("b3:"),
            "{field}"
        );
    }
    assert!(
        receipt["models"][0]["hash"]
            .as_str()
            .unwrap()
            .starts_with("b3:")
    );
}

#[test]
fn bad_input_exits_non_zero_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            write_input(&dir, "not.json", b"this is not json"),
            "invalid input",
        ),
        (
            write_input(&dir, "shape.json", br#"{"texts": 42}"#),
            "invalid input",
        ),
        (
            write_input(
                &dir,
                "huge.json",
                format!(r#"{{"texts": ["{}"]}}"#, "a".repeat(10 << 20)).as_bytes(),
            ),
            "larger than the limit",
        ),
        (
            dir.path().join("missing.json").display().to_string(),
            "opening input",
        ),
    ];
    for (input, expected) in cases {
        let out = mesh_host(&["exec", mesh_test_artifacts::EMBEDDINGS, "--input", &input]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{input} should fail");
        assert!(stderr.contains(expected), "{input}: {stderr}");
        assert!(!stderr.contains("panicked"), "{input}: {stderr}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn backends_explains_what_is_missing_without_panicking() {
    let out = mesh_host(&[
        "backends",
        "--json",
        "--onnxruntime-library",
        "/nonexistent/libonnxruntime.so",
        "--openvino-library",
        "/nonexistent/libopenvino_c.so",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let statuses: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = |name: &str| {
        statuses
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["backend"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(status("onnxruntime")["available"], false);
    assert!(
        status("onnxruntime")["detail"]
            .as_str()
            .unwrap()
            .contains("not found")
    );
    assert_eq!(status("openvino")["available"], false);
    assert_eq!(status("tract")["available"], true);

    // Asking for the missing backend explicitly is a clear error, not a panic.
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(&dir, "in.json", br#"{"texts": ["x"]}"#);
    let out = mesh_host(&[
        "exec",
        mesh_test_artifacts::EMBEDDINGS,
        "--input",
        &input,
        "--backend",
        "onnxruntime",
        "--onnxruntime-library",
        "/nonexistent/libonnxruntime.so",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("onnxruntime is not available"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
