//! Chat over the mesh: `POST /v1/chat/completions` runs the chat workload on a host through
//! the gateway and the relay, answers in OpenAI's shape, and is charged once; bad requests
//! get OpenAI-shaped errors.

use mesh_e2e::{MeshOptions, TestNet};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_run_on_a_host_and_answer_in_openais_shape() {
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 1,
        ..MeshOptions::default()
    })
    .await;
    let network = mesh.network_id();
    mesh.publish(mesh_test_artifacts::CHAT).await;
    let http = reqwest::Client::new();
    let token = mesh.admin_token();
    let post = |body: Value| {
        let (http, token) = (http.clone(), token.clone());
        let url = format!("{}/v1/chat/completions", mesh.url);
        async move {
            let response = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, answer) = post(json!({
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 16,
    }))
    .await;
    assert_eq!(status, 200, "{answer}\n{}", mesh.logs());
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "The capital of France is Paris."
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["prompt_tokens"], 37);
    assert_eq!(answer["usage"]["completion_tokens"], 7);
    assert_eq!(answer["usage"]["total_tokens"], 44);
    let job: mesh_proto::JobId = answer["id"]
        .as_str()
        .unwrap()
        .strip_prefix("chatcmpl-")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(mesh.job_entries(job).await, (1, 1, 0), "charged once");

    // The model is listed.
    let models: Value = http
        .get(format!("{}/v1/models", mesh.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "smollm2-135m-instruct"),
        "{models}"
    );

    // Requests it cannot serve get OpenAI-shaped errors saying why.
    for (body, status, param) in [
        (
            json!({"model": "smollm2-135m-instruct", "messages": [], "max_tokens": 4}),
            400,
            "messages",
        ),
        (
            json!({"model": "smollm2-135m-instruct", "n": 2,
                "messages": [{"role": "user", "content": "hi"}]}),
            400,
            "n",
        ),
        (
            json!({"model": "smollm2-135m-instruct", "max_tokens": 100000,
                "messages": [{"role": "user", "content": "hi"}]}),
            400,
            "max_tokens",
        ),
        (
            json!({"model": "smollm2-135m-instruct", "stream": true,
                "messages": [{"role": "user", "content": "hi"}]}),
            400,
            "stream",
        ),
    ] {
        let (got, error) = post(body).await;
        assert_eq!(got, status, "{error}");
        assert_eq!(error["error"]["param"], param, "{error}");
        assert!(error["error"]["message"].as_str().is_some(), "{error}");
    }
    let (got, error) = post(json!({"model": "gpt-4",
        "messages": [{"role": "user", "content": "hi"}]}))
    .await;
    assert_eq!(got, 404, "{error}");

    // `mesh chat`: one question, and a conversation on standard input.
    let (url, network) = (mesh.url.clone(), network.to_string());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cli.toml");
    let outputs = tokio::task::spawn_blocking(move || {
        let cli = |args: &[&str], stdin: &str| {
            use std::io::Write;
            let mut child = std::process::Command::new(mesh_e2e::bin("mesh"))
                .args(args)
                .env("MESH_SERVER", &url)
                .env("MESH_TOKEN", &token)
                .env("MESH_NETWORK", &network)
                .env("MESH_CONFIG", &config)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(stdin.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        };
        (
            cli(
                &[
                    "chat",
                    "What is the capital of France?",
                    "--max-tokens",
                    "16",
                ],
                "",
            ),
            cli(
                &["chat", "--max-tokens", "16"],
                "What is the capital of France?\nAnd what is its river?\n",
            ),
        )
    })
    .await
    .unwrap();
    let text = |o: &std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout.clone()).unwrap()
    };
    assert_eq!(text(&outputs.0), "The capital of France is Paris.\n");
    let conversation = text(&outputs.1);
    let answers: Vec<&str> = conversation.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        answers[0], "The capital of France is Paris.",
        "{conversation}"
    );
    assert!(answers.len() >= 2, "a second answer: {conversation}");
}
