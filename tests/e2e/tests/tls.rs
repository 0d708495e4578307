//! The control plane over TLS with a self-signed certificate that invite codes pin: a mesh
//! runs real jobs over it, and a man in the middle (another control plane, presenting its own
//! certificate, or its own key over a channel the code does not pin) is refused by `join` and
//! `mesh login` before the invite code reaches it.

use mesh_e2e::{MeshOptions, TestNet, bin, reference, vectors};
use mesh_host::agent::join::{JoinOptions, Template, join};
use mesh_host::backend::BackendConfig;
use mesh_proto::api::{JobState, RunJobRequest};
use mesh_proto::pin::{Pins, invite_code, split_invite_code};

/// A second control plane on loopback: the man in the middle. Over TLS, with a self-signed
/// certificate of its own, unless `plain`.
async fn impostor(dir: &std::path::Path, plain: bool) -> mesh_control_plane::Server {
    let config = mesh_control_plane::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..mesh_control_plane::Config::default()
    };
    if !plain {
        mesh_control_plane::http::listener::generate_self_signed(&config.data_dir, &[]).unwrap();
    }
    mesh_control_plane::Server::spawn(config).await.unwrap()
}

fn join_options(dir: &std::path::Path, url: &str, invite: &str) -> JoinOptions {
    JoinOptions {
        invite: invite.into(),
        control_plane: url.into(),
        name: "victim".into(),
        config_path: dir.join("victim.toml"),
        force: false,
        template: Template {
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()],
            data_dir: Some(dir.join("victim")),
            ..Template::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_runs_over_pinned_tls_and_a_man_in_the_middle_is_refused() {
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 2,
        tls: true,
        ..MeshOptions::default()
    })
    .await;
    assert!(mesh.url.starts_with("https://"), "{}", mesh.url);
    let network = mesh.network_id();

    // Real jobs over it: hosts joined with pinned codes, heartbeat and report over TLS.
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let corpus = reference(4);
    let texts: Vec<String> = corpus.iter().map(|(t, _)| t.clone()).collect();
    let result = mesh
        .admin
        .run_job(
            &network,
            &RunJobRequest {
                workload,
                input: serde_json::json!({ "texts": texts }),
                idempotency_key: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(result.job.state, JobState::Done);
    assert_eq!(vectors(&result.output).len(), 4);

    // Nobody speaks plain HTTP to it, and without the pin its certificate is not trusted.
    let plain = mesh.url.replacen("https://", "http://", 1);
    assert!(
        mesh_client::Client::new(&plain, None)
            .unwrap()
            .control_plane_key()
            .await
            .is_err()
    );
    let unpinned = mesh_client::Client::new(&mesh.url, None).unwrap();
    assert!(matches!(
        unpinned.control_plane_key().await,
        Err(mesh_client::ClientError::Transport(_))
    ));

    // The invite code pins the control plane's key and its certificate.
    let invite = mesh.device_invite(&network).await;
    let (_, pins) = split_invite_code(&invite.code).unwrap();
    assert!(
        pins.key.is_some() && pins.certificate.is_some(),
        "{}",
        invite.code
    );
    assert_eq!(pins.certificate, mesh.control_plane().certificate_pin());

    // A man in the middle presents another certificate: join refuses it in the handshake.
    let scratch = tempfile::tempdir().unwrap();
    let mitm = impostor(&scratch.path().join("mitm"), false).await;
    let refused = join(
        join_options(scratch.path(), &mitm.url(), &invite.code),
        &BackendConfig::default(),
    )
    .await
    .expect_err("joined through a man in the middle");
    assert!(
        format!("{refused:#}").contains("certificate"),
        "{refused:#}"
    );
    // So does the CLI's login.
    let login = std::process::Command::new(bin("mesh"))
        .args(["--server", &mitm.url(), "login", "--invite", &invite.code])
        .env("MESH_CONFIG", scratch.path().join("cli.toml"))
        .output()
        .unwrap();
    assert!(!login.status.success());
    assert!(
        String::from_utf8_lossy(&login.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );

    // Where the certificate is not pinned (one an authority signed; here plain HTTP), the key
    // pin still tells the impostor apart.
    let key_only = invite_code(
        split_invite_code(&invite.code).unwrap().0,
        &Pins {
            key: pins.key,
            certificate: None,
        },
    );
    let plain_mitm = impostor(&scratch.path().join("plain-mitm"), true).await;
    assert!(plain_mitm.url().starts_with("http://"));
    let refused = join(
        join_options(scratch.path(), &plain_mitm.url(), &key_only),
        &BackendConfig::default(),
    )
    .await
    .expect_err("joined an impostor with another key");
    assert!(
        format!("{refused:#}").contains("not the pinned"),
        "{refused:#}"
    );
    let login = std::process::Command::new(bin("mesh"))
        .args([
            "--server",
            &plain_mitm.url(),
            "login",
            "--invite",
            &key_only,
        ])
        .env("MESH_CONFIG", scratch.path().join("cli.toml"))
        .output()
        .unwrap();
    assert!(!login.status.success());
    assert!(
        String::from_utf8_lossy(&login.stderr).contains("not the pinned"),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );

    // The code never reached the impostors: it still works on the real control plane.
    let joined = join(
        join_options(scratch.path(), &mesh.url, &invite.code),
        &BackendConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(joined.network, network);
    assert_eq!(joined.control_plane_certificate, pins.certificate);
}
