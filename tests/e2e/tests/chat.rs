//! Chat over the mesh: `POST /v1/chat/completions` runs the chat workload on a host through
//! the gateway and the relay, answers in OpenAI's shape, whole or streamed as server-sent
//! events while it is generated, and is charged once; bad requests get OpenAI-shaped errors;
//! a client that goes away mid-stream stops the generation at the host.

use mesh_e2e::{MeshOptions, TestNet};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The data of each event of a `text/event-stream` body, with when it arrived.
async fn read_events(mut response: reqwest::Response) -> Vec<(String, Instant)> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    while let Some(bytes) = response.chunk().await.unwrap() {
        buffer.push_str(std::str::from_utf8(&bytes).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    events.push((data.to_string(), Instant::now()));
                }
            }
        }
    }
    events
}

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
            json!({"model": "smollm2-135m-instruct",
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "hi"}]}),
            400,
            "stream_options",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_arrives_as_it_is_generated_and_is_the_signed_one() {
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 1,
        ..MeshOptions::default()
    })
    .await;
    mesh.publish(mesh_test_artifacts::CHAT).await;
    let http = reqwest::Client::new();
    let ask = |body: Value| {
        http.post(format!("{}/v1/chat/completions", mesh.url))
            .bearer_auth(mesh.admin_token())
            .json(&body)
            .send()
    };
    let question = json!({
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 16,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let response = ask(question.clone()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "{:?}",
        response.headers()
    );
    let events = read_events(response).await;
    // (Receipt and settlement are the gateway's, as without stream.)
    assert_eq!(events.last().unwrap().0, "[DONE]", "{events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(data, _)| serde_json::from_str(data).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap().to_string();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        assert_eq!(chunk["id"], id.as_str(), "one id: {chunk}");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "The capital of France is Paris.");
    // Token by token, not all at once at the end.
    let deltas = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert!(deltas >= 4, "{deltas} pieces of text: {chunks:?}");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop", "{finish}");
    assert!(finish["usage"].is_null(), "usage comes last: {finish}");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]), "{usage}");
    assert_eq!(usage["usage"]["prompt_tokens"], 37, "{usage}");
    assert_eq!(usage["usage"]["completion_tokens"], 7, "{usage}");
    assert_eq!(usage["usage"]["total_tokens"], 44, "{usage}");
    let job: mesh_proto::JobId = id.strip_prefix("chatcmpl-").unwrap().parse().unwrap();
    assert_eq!(mesh.job_entries(job).await, (1, 1, 0), "charged once");
    // The job's receipt pins the output the stream added up to.
    let info = mesh.admin.job(&mesh.network_id(), &job).await.unwrap().job;
    assert_eq!(info.state, mesh_proto::api::JobState::Done);

    // Without include_usage no chunk carries usage; a failure before the first chunk is an
    // error status, as without stream.
    let mut plain = question.clone();
    plain.as_object_mut().unwrap().remove("stream_options");
    let events = read_events(ask(plain).await.unwrap()).await;
    assert!(
        events.iter().all(|(data, _)| !data.contains("usage")),
        "{events:?}"
    );
    let mut long = question.clone();
    long["messages"][0]["content"] = json!("word ".repeat(3000));
    let refused = ask(long).await.unwrap();
    assert_eq!(
        refused.status(),
        422,
        "the prompt is too long for the model"
    );
    let error: Value = refused.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("over the model's limit"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_stops_the_generation() {
    let mesh = TestNet::spawn(MeshOptions {
        hosts: 1,
        ..MeshOptions::default()
    })
    .await;
    mesh.publish(mesh_test_artifacts::CHAT).await;
    // A thousand tokens take the host many seconds; the client reads two chunks and leaves.
    let mut response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", mesh.url))
        .bearer_auth(mesh.admin_token())
        .json(&json!({
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "Tell me a very long story."}],
            "temperature": 1.0,
            "seed": 3,
            "max_tokens": 1000,
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut first = String::new();
    while !first.contains("content\":\"") || first.matches("data:").count() < 3 {
        let bytes = response.chunk().await.unwrap().expect("more chunks");
        first.push_str(std::str::from_utf8(&bytes).unwrap());
    }
    let id: String = {
        let data = first
            .lines()
            .next()
            .unwrap()
            .strip_prefix("data: ")
            .unwrap();
        let chunk: Value = serde_json::from_str(data).unwrap();
        chunk["id"].as_str().unwrap().to_string()
    };
    let job: mesh_proto::JobId = id.strip_prefix("chatcmpl-").unwrap().parse().unwrap();
    drop(response);
    let left = Instant::now();
    let deadline = left + Duration::from_secs(20);
    while !mesh.hosts[0]
        .log
        .text()
        .contains("job failed: the job was cancelled")
    {
        assert!(
            Instant::now() < deadline,
            "the host kept generating for a client that left\n{}",
            mesh.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "the host stopped {:?} after the client left",
        left.elapsed()
    );
    let info = loop {
        let info = mesh.admin.job(&mesh.network_id(), &job).await.unwrap().job;
        if info.state == mesh_proto::api::JobState::Failed {
            break info;
        }
        assert!(Instant::now() < deadline, "{info:?}\n{}", mesh.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(mesh.job_entries(info.id).await, (1, 0, 1), "refunded");
}
