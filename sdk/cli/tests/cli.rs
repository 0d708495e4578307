//! The `mesh` binary against a real control plane: configuration, commands, JSON output and
//! exit codes.

use mesh_control_plane::{Config, Server};
use std::process::{Command, Output};

struct Env {
    server: Server,
    config: tempfile::TempDir,
    _data: tempfile::TempDir,
    token: String,
}

impl Env {
    async fn new() -> Env {
        let data = tempfile::tempdir().unwrap();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.path().to_path_buf(),
            ..Config::default()
        };
        let token = mesh_control_plane::bootstrap_admin(&config, "admin")
            .await
            .unwrap()
            .token;
        let server = Server::spawn(config).await.unwrap();
        Env {
            server,
            config: tempfile::tempdir().unwrap(),
            _data: data,
            token,
        }
    }

    fn mesh(&self, args: &[&str]) -> Output {
        let output = Command::new(env!("CARGO_BIN_EXE_mesh"))
            .args(args)
            .env("MESH_CONFIG", self.config.path().join("config.toml"))
            .env_remove("MESH_SERVER")
            .env_remove("MESH_TOKEN")
            .env_remove("MESH_NETWORK")
            .output()
            .unwrap();
        eprintln!(
            "mesh {}: {:?}\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_drive_the_control_plane() {
    let env = Env::new().await;
    let url = env.server.url();
    ok(&env.mesh(&["--server", &url, "login", "--token", &env.token]));
    let created = ok(&env.mesh(&["network", "create", "home", "--json"]));
    let network: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(network["name"], "home");
    assert_eq!(network["role"], "owner");

    // The network became the default; read commands print JSON on request.
    let published = ok(&env.mesh(&[
        "workload",
        "publish",
        mesh_test_artifacts::EMBEDDINGS,
        "--json",
    ]));
    let published: serde_json::Value = serde_json::from_str(&published).unwrap();
    assert_eq!(published["name"], "embeddings");
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&env.mesh(&["workload", "list", "--json"]))).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let hash = published["hash"].as_str().unwrap();
    assert!(ok(&env.mesh(&["workload", "show", hash])).contains("embeddings@0.1.0"));
    assert_eq!(ok(&env.mesh(&["credits", "balance"])).trim(), "1000");
    let invite = ok(&env.mesh(&["network", "invite"]));
    assert!(invite.trim().starts_with("mesh-invite-"));
    // Open invites are listed, and one can be revoked: its code no longer works.
    let spare: serde_json::Value =
        serde_json::from_str(&ok(&env.mesh(&["network", "invite", "--json"]))).unwrap();
    let open: serde_json::Value =
        serde_json::from_str(&ok(&env.mesh(&["network", "invites", "--json"]))).unwrap();
    assert_eq!(open.as_array().unwrap().len(), 2);
    let spare_id = spare["id"].as_str().unwrap();
    assert!(ok(&env.mesh(&["network", "invites"])).contains(spare_id));
    ok(&env.mesh(&["network", "revoke-invite", spare_id]));
    assert!(!ok(&env.mesh(&["network", "invites"])).contains(spare_id));
    let revoked = env.mesh(&[
        "login",
        "--invite",
        spare["code"].as_str().unwrap(),
        "--name",
        "eve",
    ]);
    assert!(!revoked.status.success());
    assert!(String::from_utf8_lossy(&revoked.stderr).contains("revoked"));
    let members: serde_json::Value =
        serde_json::from_str(&ok(&env.mesh(&["network", "members", "--json"]))).unwrap();
    assert_eq!(members.as_array().unwrap().len(), 1);
    ok(&env.mesh(&["device", "list"]));

    // A device joins; its owner sets its terms, shown by `policy show` and the device list.
    let code = ok(&env.mesh(&["network", "invite", "--device"]));
    let device = register_device(&url, code.trim()).await;
    let set = ok(&env.mesh(&[
        "device",
        "policy",
        "set",
        &device,
        "--workload",
        "embeddings",
        "--for",
        "admins",
        "--window",
        "mon-fri 09:00-17:00",
        "--utc-offset",
        "+01:00",
        "--max-jobs",
        "2",
    ]));
    let summary = "runs embeddings; for admins; mon,tue,wed,thu,fri 09:00-17:00 UTC+01:00; ≤2 jobs";
    assert!(set.contains(summary), "{set}");
    let shown: serde_json::Value = serde_json::from_str(&ok(
        &env.mesh(&["device", "policy", "show", &device, "--json"])
    ))
    .unwrap();
    assert_eq!(shown["owner"]["max_jobs"], 2);
    assert_eq!(shown["owner"]["workloads"][0]["name"], "embeddings");
    assert!(shown["admins"]["workloads"].as_array().unwrap().is_empty());
    let listed = ok(&env.mesh(&["device", "list"]));
    assert!(listed.contains(&format!("owner[{summary}]")), "{listed}");
    // Terms that mean nothing are refused before they are sent; no rules at all is a usage
    // question, answered with what to give.
    let zero = env.mesh(&["device", "policy", "set", &device, "--max-jobs", "0"]);
    assert_eq!(zero.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&zero.stderr).contains("max_jobs"));
    let nothing = env.mesh(&["device", "policy", "set", &device]);
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("nothing to set"));
    let cleared = ok(&env.mesh(&["device", "policy", "set", &device, "--clear"]));
    assert!(cleared.contains("owner (set in the network by the device's owner):\n    any"));
    ok(&env.mesh(&["job", "list", "--json"]));
    let history = ok(&env.mesh(&["credits", "history"]));
    assert!(history.contains("initial grant"));

    // A token for the web console works until it is revoked.
    let made = ok(&env.mesh(&["token", "create", "--label", "console"]));
    let secret = made.trim();
    assert!(secret.starts_with("mesh_"), "{made}");
    let with_secret = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mesh"))
            .args(args)
            .env("MESH_CONFIG", env.config.path().join("config.toml"))
            .env("MESH_TOKEN", secret)
            .output()
            .unwrap()
    };
    assert_eq!(ok(&with_secret(&["credits", "balance"])).trim(), "1000");
    let tokens: serde_json::Value =
        serde_json::from_str(&ok(&env.mesh(&["token", "list", "--json"]))).unwrap();
    let console = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == "console")
        .unwrap();
    let id = console["id"].as_str().unwrap();
    assert!(ok(&env.mesh(&["token", "list"])).contains(&format!("{id}  active")));
    ok(&env.mesh(&["token", "revoke", id]));
    assert!(ok(&env.mesh(&["token", "list"])).contains(&format!("{id}  revoked")));
    let refused = with_secret(&["credits", "balance"]);
    assert!(!refused.status.success());

    // A second person joins with an invite and gets their own configuration.
    let other = tempfile::tempdir().unwrap();
    let joined = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args([
            "--server",
            &url,
            "login",
            "--invite",
            invite.trim(),
            "--name",
            "bob",
        ])
        .env("MESH_CONFIG", other.path().join("config.toml"))
        .output()
        .unwrap();
    assert!(
        joined.status.success(),
        "{}",
        String::from_utf8_lossy(&joined.stderr)
    );
    // Bob is a member: admin actions fail with the "forbidden" exit code.
    let bob_publish = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["workload", "publish", mesh_test_artifacts::ECHO])
        .env("MESH_CONFIG", other.path().join("config.toml"))
        .output()
        .unwrap();
    assert_eq!(
        bob_publish.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&bob_publish.stderr)
    );

    // Exit codes scripts can rely on.
    let bad_component = env.mesh(&["workload", "publish", mesh_test_artifacts::HOSTILE_SOCKETS]);
    assert_eq!(bad_component.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_component.stderr).contains("wasi:sockets"));
    let missing = env.mesh(&[
        "workload",
        "show",
        "b3:0000000000000000000000000000000000000000000000000000000000000000",
    ]);
    assert_eq!(missing.status.code(), Some(5));
    let unauthenticated = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["--server", &url, "network", "list"])
        .env("MESH_CONFIG", other.path().join("none.toml"))
        .env("MESH_TOKEN", "mesh_not-a-token")
        .output()
        .unwrap();
    assert_eq!(unauthenticated.status.code(), Some(3));
    let unreachable = env.mesh(&["--server", "http://127.0.0.1:9", "network", "list"]);
    assert_eq!(unreachable.status.code(), Some(7));
    let usage = env.mesh(&["network", "frobnicate"]);
    assert_eq!(usage.status.code(), Some(2));
}

/// Register a device with the device invite `code` (as `mesh-host join` would); its id.
async fn register_device(url: &str, code: &str) -> String {
    use mesh_proto::device::{Capabilities, RegistrationProof};
    let anonymous = mesh_client::Client::new(url, None).unwrap();
    let key = mesh_proto::SigningKey::from_seed([42; 32]);
    let challenge = anonymous.challenge(code).await.unwrap();
    let proof = RegistrationProof {
        challenge: challenge.challenge.clone(),
        public_key: key.public_key(),
    };
    let payload = mesh_proto::cbor::to_vec(&proof).unwrap();
    let registered = anonymous
        .register_device(&mesh_proto::api::RegisterDeviceRequest {
            invite: code.to_string(),
            challenge: challenge.challenge,
            name: "laptop".into(),
            public_key: key.public_key(),
            proof: key.sign(
                mesh_proto::SignDomain::Registration,
                &challenge.network,
                &payload,
            ),
            capabilities: Capabilities::default(),
        })
        .await
        .unwrap();
    registered.device.to_string()
}

#[test]
fn help_is_available_everywhere() {
    for args in [
        vec!["--help"],
        vec!["login", "--help"],
        vec!["network", "--help"],
        vec!["network", "create", "--help"],
        vec!["network", "invite", "--help"],
        vec!["device", "--help"],
        vec!["device", "policy", "set", "--help"],
        vec!["workload", "publish", "--help"],
        vec!["credits", "grant", "--help"],
        vec!["token", "create", "--help"],
        vec!["job", "show", "--help"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_mesh"))
            .args(&args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}
