//! The official `openai` Python client (the PyPI package, pinned in
//! `scripts/requirements.txt`) against the control plane, unchanged but for its base URL and
//! key: chat whole and streamed, seeded sampling, embeddings, the model list and errors, each
//! through the gateway, the relay and a host (`python/openai_client.py` says what it checks).

use mesh_e2e::{MeshOptions, TestNet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_works_unchanged() {
    let python = mesh_host::cache_dir().join("venv/bin/python");
    if !python.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing: run scripts/setup.sh",
            python.display()
        );
        eprintln!(
            "skipped: {} is missing (scripts/setup.sh)",
            python.display()
        );
        return;
    }
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 1,
        ..MeshOptions::default()
    })
    .await;
    mesh.publish(mesh_test_artifacts::CHAT).await;
    mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_client.py");
    let (url, token) = (mesh.url.clone(), mesh.admin_token());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .arg(script)
            .env("MESH_URL", url)
            .env("MESH_TOKEN", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        mesh.logs()
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("all answers as expected"));
}
