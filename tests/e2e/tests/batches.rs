//! Batches on a real mesh (control plane, relay, hosts running the embeddings component):
//! the input is cut into pieces run across every host, the results come back in input order
//! and match the reference, each piece is paid for once, and a batch survives a host dying
//! and the control plane restarting.

use futures::StreamExt;
use mesh_e2e::{HostSpec, MeshOptions, TestNet, cosine, floats};
use mesh_proto::batch::{BatchInfo, BatchState, InputFormat, PIECE_ITEMS, ResultFormat};
use mesh_proto::{BatchId, Blake3Hash};
use std::time::{Duration, Instant};

/// `n` texts: the reference corpus, repeated, with its expected vectors.
fn corpus(n: usize) -> Vec<(String, Vec<f32>)> {
    let reference = mesh_e2e::reference(100);
    (0..n)
        .map(|i| reference[i % reference.len()].clone())
        .collect()
}

/// The texts as JSON Lines (some hold newlines, which one-text-a-line could not carry).
fn lines(texts: &[(String, Vec<f32>)]) -> String {
    let mut out = String::new();
    for (text, _) in texts {
        out.push_str(&serde_json::to_string(text).unwrap());
        out.push('\n');
    }
    out
}

/// A new member of the network (not an admin).
async fn member(mesh: &TestNet) -> mesh_client::Client {
    use mesh_proto::api::{AcceptInviteRequest, Role};
    let invite = mesh.person_invite(Role::Member).await;
    let accepted = mesh
        .admin
        .with_token(None)
        .accept_invite(&AcceptInviteRequest {
            code: invite.code,
            name: Some("reader".into()),
        })
        .await
        .unwrap();
    mesh.admin.with_token(accepted.token)
}

async fn create(mesh: &TestNet, workload: Blake3Hash, input: String) -> BatchInfo {
    upload(mesh, workload, input.into())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.logs()))
}

/// Create a batch of JSON Lines from `body`, as the admin.
async fn upload(
    mesh: &TestNet,
    workload: Blake3Hash,
    body: reqwest::Body,
) -> mesh_client::Result<BatchInfo> {
    mesh.admin
        .create_batch(
            &mesh.network_id(),
            &workload.to_string(),
            InputFormat::Jsonl,
            None,
            body,
        )
        .await
}

/// Wait until the batch ends (or `timeout`); returns its last state.
async fn wait_end(mesh: &TestNet, batch: &BatchId, timeout: Duration) -> BatchInfo {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let info = mesh.admin.batch(&mesh.network_id(), batch).await.unwrap();
        if info.state.is_final() {
            return info;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("batch not done in {timeout:?}: {info:?}\n{}", mesh.logs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn download(mesh: &TestNet, batch: &BatchId, format: ResultFormat) -> Vec<u8> {
    let mut response = mesh
        .admin
        .batch_results(&mesh.network_id(), batch, format)
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        out.extend_from_slice(&chunk);
    }
    out
}

/// Every result present once, in input order, matching the reference; the `.npy` holds the
/// same numbers.
async fn check_results(mesh: &TestNet, batch: &BatchId, texts: &[(String, Vec<f32>)]) {
    let jsonl = download(mesh, batch, ResultFormat::Jsonl).await;
    let lines: Vec<serde_json::Value> = String::from_utf8(jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), texts.len(), "one result per item");
    for (i, (line, (_, want))) in lines.iter().zip(texts).enumerate() {
        assert_eq!(line["index"], i as u64, "results keep input order");
        let got = floats(&line["embedding"]);
        assert!(
            cosine(want, &got) >= 0.9999,
            "item {i}: cosine {}",
            cosine(want, &got)
        );
    }
    let npy = download(mesh, batch, ResultFormat::Npy).await;
    let header = 10 + u16::from_le_bytes([npy[8], npy[9]]) as usize;
    assert!(
        String::from_utf8_lossy(&npy[..header])
            .contains(&format!("'shape': ({}, 384)", texts.len()))
    );
    assert_eq!(npy.len() - header, texts.len() * 384 * 4);
    let last = &npy[npy.len() - 384 * 4..];
    let last: Vec<f32> = last
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(last, floats(&lines[texts.len() - 1]["embedding"]));
}

/// Each piece paid once: the requester's reservation is the price, and what was not paid out
/// of it came back to the requester, once.
async fn check_ledger(mesh: &TestNet, info: &BatchInfo) {
    let network = mesh.network_id();
    let history = mesh.admin.history(&network, None).await.unwrap();
    let of_batch = |kind: &str| -> Vec<i64> {
        history
            .iter()
            .filter(|e| e.kind == kind && e.memo.contains(&info.id.to_string()))
            .map(|e| e.amount)
            .collect()
    };
    assert_eq!(info.price, info.pieces as i64 * info.piece_price);
    assert_eq!(of_batch("batch_reserve"), [-info.price], "{history:?}");
    let refunds = of_batch("batch_refund");
    assert!(refunds.len() <= 1, "{history:?}");
    assert_eq!(
        refunds.iter().sum::<i64>(),
        info.price - info.paid,
        "{history:?}"
    );
    // Nothing else holds credits in escrow here: the batch left none behind, and the
    // network's ledger still sums to zero.
    let state = mesh.control_plane().state();
    let escrow = mesh_control_plane::domain::ledger::Account::Escrow.id(&network);
    let held = mesh_control_plane::store::ledger::balance(&state.db.pool, &escrow)
        .await
        .unwrap();
    assert_eq!(held, Some(0), "the escrow after the batch");
    let sums = mesh_control_plane::store::ledger::sums(&state.db, &network)
        .await
        .unwrap();
    assert_eq!(sums, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_across_every_host_and_keeps_input_order() {
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 2,
        ..MeshOptions::default()
    })
    .await;
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let network = mesh.network_id();
    let texts = corpus(20 * PIECE_ITEMS + 17);
    let created = create(&mesh, workload, lines(&texts)).await;
    assert_eq!(created.items, texts.len() as u64);
    assert_eq!(created.pieces, 21);
    let info = wait_end(&mesh, &created.id, Duration::from_secs(180)).await;
    assert_eq!(info.state, BatchState::Done, "{info:?}");
    assert_eq!(info.items_done, info.items);
    assert_eq!(info.dimensions, Some(384));
    assert_eq!(info.paid, info.price, "every piece paid once: {info:?}");
    let used: Vec<_> = info.devices.iter().filter(|d| d.items > 0).collect();
    assert_eq!(used.len(), 2, "both hosts ran pieces: {info:?}");
    assert_eq!(
        used.iter().map(|d| d.items).sum::<u64>(),
        info.items,
        "{info:?}"
    );
    check_results(&mesh, &created.id, &texts).await;
    check_ledger(&mesh, &info).await;
    // Another member sees the batch's progress, not its results (they are the requester's
    // data), and may not cancel it.
    let member = member(&mesh).await;
    assert_eq!(
        member.batch(&network, &created.id).await.unwrap().items,
        info.items
    );
    let err = member
        .batch_results(&network, &created.id, ResultFormat::Jsonl)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(403), "{err}");
    let err = member
        .cancel_batch(&network, &created.id)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(403), "{err}");
    // A retry with an idempotency key returns the same batch without taking the input again.
    let again = mesh
        .admin
        .create_batch(
            &network,
            "embeddings",
            InputFormat::Lines,
            Some("k1"),
            "a\nb\n".into(),
        )
        .await
        .unwrap();
    let retried = mesh
        .admin
        .create_batch(
            &network,
            "embeddings",
            InputFormat::Lines,
            Some("k1"),
            "other\n".into(),
        )
        .await
        .unwrap();
    assert_eq!(again.id, retried.id);
    assert_eq!(retried.items, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_its_line_and_costs_nothing() {
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 1,
        ..MeshOptions::default()
    })
    .await;
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let network = mesh.network_id();
    let before = mesh.admin.balance(&network, None).await.unwrap().balance;
    let err = mesh
        .admin
        .create_batch(
            &network,
            &workload.to_string(),
            InputFormat::Jsonl,
            None,
            "\"fine\"\n{\"text\": 3}\n".into(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400), "{err}");
    assert!(err.to_string().contains("line 2"), "{err}");
    let err = mesh
        .admin
        .create_batch(
            &network,
            &workload.to_string(),
            InputFormat::Lines,
            None,
            "".into(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no items"), "{err}");
    let err = mesh
        .admin
        .create_batch(
            &network,
            "no-such-workload",
            InputFormat::Lines,
            None,
            "a\n".into(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(404), "{err}");
    assert_eq!(
        mesh.admin.balance(&network, None).await.unwrap().balance,
        before
    );
    let batches = mesh.admin.batches(&network).await.unwrap();
    assert!(
        batches.iter().all(|b| b.state == BatchState::Failed),
        "{batches:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_survives_a_dead_host_and_a_control_plane_restart() {
    let mut mesh = TestNet::spawn(MeshOptions {
        hosts: 2,
        ..MeshOptions::default()
    })
    .await;
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let network = mesh.network_id();
    let texts = corpus(40 * PIECE_ITEMS);
    let created = create(&mesh, workload, lines(&texts)).await;
    // Once some pieces are done, one host dies...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let info = mesh.admin.batch(&network, &created.id).await.unwrap();
        if info.items_done >= 5 * PIECE_ITEMS as u64 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mesh.hosts[1].stop();
    // ... and the control plane restarts.
    mesh.restart_control_plane().await;
    mesh.control_plane_log
        .wait_for("resuming a batch", Duration::from_secs(10))
        .await;
    let info = wait_end(&mesh, &created.id, Duration::from_secs(300)).await;
    assert_eq!(info.state, BatchState::Done, "{info:?}");
    assert!(
        info.runs_failed >= 1,
        "the runs in flight at the restart: {info:?}"
    );
    assert_eq!(info.paid, info.price, "every piece paid once: {info:?}");
    check_results(&mesh, &created.id, &texts).await;
    check_ledger(&mesh, &info).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_refunds_what_it_did_not_spend() {
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 1,
        ..MeshOptions::default()
    })
    .await;
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let network = mesh.network_id();
    let texts = corpus(200 * PIECE_ITEMS);
    let created = create(&mesh, workload, lines(&texts)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while mesh
        .admin
        .batch(&network, &created.id)
        .await
        .unwrap()
        .items_done
        == 0
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cancelled = mesh
        .admin
        .cancel_batch(&network, &created.id)
        .await
        .unwrap();
    assert_eq!(cancelled.state, BatchState::Cancelled);
    assert!(cancelled.paid < cancelled.price, "{cancelled:?}");
    let again = mesh
        .admin
        .cancel_batch(&network, &created.id)
        .await
        .unwrap_err();
    assert_eq!(again.status().map(|s| s.as_u16()), Some(409));
    // Nothing more is paid once it ended, whatever was still in flight.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = mesh.admin.batch(&network, &created.id).await.unwrap();
    assert_eq!(later.paid, cancelled.paid);
    let history = mesh.admin.history(&network, None).await.unwrap();
    let refund: i64 = history
        .iter()
        .filter(|e| e.kind == "batch_refund" && e.amount > 0)
        .map(|e| e.amount)
        .sum();
    assert_eq!(refund, cancelled.price - cancelled.paid, "{history:?}");
    check_ledger(&mesh, &later).await;
    // Partial results stream for what was done; the .npy needs the whole batch.
    let err = mesh
        .admin
        .batch_results(&network, &created.id, ResultFormat::Npy)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(409));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_host_duplicates_a_straggler_and_only_the_winner_is_paid() {
    // host1 answers every job 6 s late: near the end, host0 runs its pieces again.
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 2,
        host_specs: vec![
            HostSpec::default(),
            HostSpec {
                fault: Some("slow:6000".into()),
                ..HostSpec::default()
            },
        ],
        ..MeshOptions::default()
    })
    .await;
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let texts = corpus(12 * PIECE_ITEMS);
    let created = create(&mesh, workload, lines(&texts)).await;
    let info = wait_end(&mesh, &created.id, Duration::from_secs(180)).await;
    assert_eq!(info.state, BatchState::Done, "{info:?}");
    assert!(
        info.duplicates >= 1,
        "no straggler was duplicated: {info:?}"
    );
    assert_eq!(info.paid, info.price, "every piece paid once: {info:?}");
    check_results(&mesh, &created.id, &texts).await;
    check_ledger(&mesh, &info).await;
    // The straggler's runs that lost were stopped at it, and its owner was not paid for them.
    let slow = &mesh.hosts[1].device;
    let won_by_slow = info
        .devices
        .iter()
        .find(|d| &d.device == slow)
        .map_or(0, |d| d.items);
    assert!(won_by_slow < info.items, "{info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_host_wins_no_piece_and_every_result_is_honest() {
    // host2 returns wrong vectors for every job. Its won runs are re-executed (every run of a
    // device that has not yet passed a check is, here) by a device of an owner who may
    // judge, and a third owner breaks the tie. Once one fails, every piece it won that no
    // check confirmed runs again and its pay returns to the batch; the batch ends only when
    // its runs' checks are decided.
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 4,
        host_specs: (0..4)
            .map(|owner| HostSpec {
                owner,
                fault: (owner == 2).then(|| "wrong:1".into()),
                ..HostSpec::default()
            })
            .collect(),
        control_plane_config:
            "[check_policy]\ninitial_ppm = 1000000\nhalve_every = 3\nfloor_ppm = 10000\nquarantine_after = 2\n"
                .into(),
        ..MeshOptions::default()
    })
    .await;
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let texts = corpus(24 * PIECE_ITEMS);
    let created = create(&mesh, workload, lines(&texts)).await;
    let info = wait_end(&mesh, &created.id, Duration::from_secs(240)).await;
    assert_eq!(info.state, BatchState::Done, "{info:?}");
    check_results(&mesh, &created.id, &texts).await;
    let liar = &mesh.hosts[2].device;
    let liar_runs = info.devices.iter().find(|d| &d.device == liar);
    assert!(
        liar_runs.is_some_and(|d| d.failed >= 1 && d.items == 0),
        "the liar was given runs, they failed, and it kept no piece: {info:?}"
    );
    assert_eq!(info.paid, info.price, "every piece paid once: {info:?}");
    check_ledger(&mesh, &info).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_embed_writes_a_npy_and_resumes_after_an_interruption() {
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 2,
        ..MeshOptions::default()
    })
    .await;
    mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let network = mesh.network_id();
    let texts = corpus(12 * PIECE_ITEMS + 5);
    let dir = mesh.dir.path();
    let input = dir.join("corpus.jsonl");
    std::fs::write(&input, lines(&texts)).unwrap();
    let out = dir.join("vectors.npy");
    let cli = cli_command(&mesh, dir);
    let (file, out_arg) = (
        input.to_str().unwrap().to_string(),
        out.to_str().unwrap().to_string(),
    );
    // Interrupted once the batch exists (its resume state is written after the upload).
    let mut first = cli(&["embed", "--file", &file, "--out", &out_arg])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let state = dir.join("vectors.npy.mesh-batch");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !state.exists() {
        if let Some(status) = first.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut first.stderr.take().unwrap(), &mut stderr).unwrap();
            panic!("mesh embed ended ({status}) before the batch existed: {stderr}");
        }
        assert!(tokio::time::Instant::now() < deadline, "no resume state");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap();
    let _ = first.wait();
    assert!(!out.exists());
    let resumed = tokio::task::spawn_blocking(move || {
        cli(&["embed", "--file", &file, "--out", &out_arg, "--resume"])
            .output()
            .unwrap()
    });
    let resumed = resumed.await.unwrap();
    let stdout = String::from_utf8_lossy(&resumed.stdout).to_string();
    assert!(
        resumed.status.success(),
        "mesh embed --resume: {}\n{stdout}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(stdout.contains("done"), "{stdout}");
    assert!(
        !state.exists(),
        "the resume state is removed once the output is written"
    );
    // One batch only, and the file holds its results.
    let batches = mesh.admin.batches(&network).await.unwrap();
    assert_eq!(batches.len(), 1, "{batches:?}");
    let npy = std::fs::read(&out).unwrap();
    assert_eq!(
        npy,
        download(&mesh, &batches[0].id, ResultFormat::Npy).await
    );
    let header = 10 + u16::from_le_bytes([npy[8], npy[9]]) as usize;
    let first_vector: Vec<f32> = npy[header..header + 384 * 4]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert!(cosine(&texts[0].1, &first_vector) >= 0.9999);
    // `mesh batch show` and `list` describe it.
    let id = batches[0].id.to_string();
    let show = tokio::task::spawn_blocking({
        let id = id.clone();
        let cli = cli_command(&mesh, dir);
        move || cli(&["batch", "show", &id]).output().unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.status.success() && text.contains(&id) && text.contains("done"),
        "{text}"
    );
}

/// A `mesh` command line against `mesh`, as its admin.
fn cli_command(
    mesh: &TestNet,
    dir: &std::path::Path,
) -> impl Fn(&[&str]) -> std::process::Command + Send + 'static {
    let (url, token, network, config) = (
        mesh.url.clone(),
        mesh.admin_token(),
        mesh.network_id().to_string(),
        dir.join("cli.toml"),
    );
    move |args| {
        let mut command = std::process::Command::new(mesh_e2e::bin("mesh"));
        command
            .args(args)
            .env("MESH_SERVER", &url)
            .env("MESH_TOKEN", &token)
            .env("MESH_NETWORK", &network)
            .env("MESH_CONFIG", &config);
        command
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_embeddings_with_many_texts_split_across_hosts() {
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 2,
        ..MeshOptions::default()
    })
    .await;
    mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let network = mesh.network_id();
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        let request = http
            .post(format!("{}/v1/embeddings", mesh.url))
            .bearer_auth(mesh.admin_token())
            .json(&body);
        async move { request.send().await.unwrap() }
    };
    // Many texts: a batch behind the scenes, across both hosts, answered in order.
    let texts = corpus(5 * PIECE_ITEMS);
    let strings: Vec<&str> = texts.iter().map(|(t, _)| t.as_str()).collect();
    let answer = post(serde_json::json!({"model": "all-MiniLM-L6-v2", "input": strings})).await;
    assert_eq!(answer.status(), 200);
    let answer: serde_json::Value = answer.json().await.unwrap();
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), texts.len());
    for (i, (entry, (_, want))) in data.iter().zip(&texts).enumerate() {
        assert_eq!(entry["index"], i);
        assert!(
            cosine(want, &floats(&entry["embedding"])) >= 0.9999,
            "item {i}"
        );
    }
    assert!(answer["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let batches = mesh.admin.batches(&network).await.unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].items, texts.len() as u64);
    assert_eq!(
        batches[0].devices.iter().filter(|d| d.items > 0).count(),
        2,
        "{:?}",
        batches[0]
    );
    // Token arrays (LangChain's default) get a 400 in OpenAI's shape that says what to do.
    for input in [
        serde_json::json!([101, 2023, 102]),
        serde_json::json!([[101], [102]]),
    ] {
        let refused = post(serde_json::json!({"model": "all-MiniLM-L6-v2", "input": input})).await;
        assert_eq!(refused.status(), 400);
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(body["error"]["param"], "input", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("check_embedding_ctx_length=False"),
            "{message}"
        );
    }
    // The models, in OpenAI's shape.
    let models: serde_json::Value = http
        .get(format!("{}/v1/models", mesh.url))
        .bearer_auth(mesh.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"all-minilm-l6-v2"), "{models}");
    assert_eq!(models["data"][0]["object"], "model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_outlasts_the_request_timeout_and_a_stalled_one_is_cut_off() {
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 1,
        control_plane_config: "request_timeout = 2.0\nbody_timeout = 1.5\n".into(),
        ..MeshOptions::default()
    })
    .await;
    let workload = mesh.publish(mesh_test_artifacts::EMBEDDINGS).await;
    let texts = corpus(40);
    let lines = lines(&texts);
    // A line every 100 ms: about 4 s in all, twice the request timeout, never a gap of
    // the body timeout.
    let chunks: Vec<Vec<u8>> = lines
        .lines()
        .map(|l| format!("{l}\n").into_bytes())
        .collect();
    let slow = futures::stream::iter(chunks).then(|chunk| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, std::io::Error>(chunk)
    });
    let started = Instant::now();
    let info = upload(&mesh, workload, reqwest::Body::wrap_stream(slow))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", mesh.logs()));
    assert!(started.elapsed() > Duration::from_secs(3));
    assert_eq!(info.items, texts.len() as u64);
    let done = wait_end(&mesh, &info.id, Duration::from_secs(120)).await;
    assert_eq!(done.state, BatchState::Done, "{done:?}");
    check_results(&mesh, &info.id, &texts).await;
    check_ledger(&mesh, &done).await;

    // A body that stops arriving gets 408, and the batch it began is not left running.
    let stalled = futures::stream::iter([0u8, 1]).then(|i| async move {
        if i == 1 {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Ok::<_, std::io::Error>(b"\"first\"\n".to_vec())
    });
    let before = mesh.admin.balance(&mesh.network_id(), None).await.unwrap();
    let err = upload(&mesh, workload, reqwest::Body::wrap_stream(stalled))
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(408), "{err}");
    let after = mesh.admin.balance(&mesh.network_id(), None).await.unwrap();
    assert_eq!(after.balance, before.balance);
    let batches = mesh.admin.batches(&mesh.network_id()).await.unwrap();
    assert!(
        batches
            .iter()
            .filter(|b| b.id != info.id)
            .all(|b| b.state == BatchState::Failed),
        "{batches:?}"
    );
}
