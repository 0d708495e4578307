//! The chat workload on a real executor: the component tokenises, templates and samples in
//! wasmtime, the host runs SmolLM2-135M-Instruct on `mesh-llm` behind `wasi:nn`, keeping the
//! generation's key/value cache between steps.

mod common;

use common::{executor, fastest_backend};
use mesh_host::backend::InferenceError;
use mesh_host::executor::WorkloadError;
use mesh_host::{ExecError, Limits};
use serde_json::{Value, json};

fn run(limits: Limits, input: Value) -> Result<Value, ExecError> {
    let (executor, _dir) = executor(fastest_backend(), limits);
    let chat = executor
        .add_component(&std::fs::read(mesh_test_artifacts::CHAT).unwrap())
        .unwrap()
        .component;
    let out = executor.run(&chat, &serde_json::to_vec(&input).unwrap())?;
    Ok(serde_json::from_slice(&out.output).unwrap())
}

fn france(extra: Value) -> Value {
    let mut input = json!({
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16,
    });
    input
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    input
}

#[test]
fn it_answers_greedily_with_the_models_own_tokens() {
    let out = run(Limits::default(), france(json!({}))).unwrap();
    assert_eq!(out["text"], "The capital of France is Paris.");
    assert_eq!(out["finish_reason"], "stop");
    // The prompt as the model's own tokenizer cuts it (a near tie at the first token makes
    // any other cut answer differently): 37 tokens with the default system prompt.
    assert_eq!(out["prompt_tokens"], 37);
    assert_eq!(out["tokens"], json!([504, 3575, 282, 4649, 314, 7042, 30]));
    assert_eq!(out["completion_tokens"], 7);
}

#[test]
fn sampling_is_seeded_and_stops_where_asked() {
    let limits = Limits::default();
    let warm = json!({"temperature": 0.9, "top_p": 0.95, "seed": 7, "max_tokens": 24,
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}]});
    let a = run(limits, warm.clone()).unwrap();
    let b = run(limits, warm.clone()).unwrap();
    assert_eq!(a["tokens"], b["tokens"], "same seed, same tokens");
    let mut other = warm.clone();
    other["seed"] = json!(8);
    let c = run(limits, other).unwrap();
    assert_ne!(a["tokens"], c["tokens"], "another seed draws other tokens");
    // A stop sequence ends the text where it first appears.
    let stopped = run(limits, france(json!({"stop": [" is"]}))).unwrap();
    assert_eq!(stopped["text"], "The capital of France");
    assert_eq!(stopped["finish_reason"], "stop");
    // max_tokens ends it too.
    let short = run(limits, france(json!({"max_tokens": 3}))).unwrap();
    assert_eq!(short["completion_tokens"], 3);
    assert_eq!(short["finish_reason"], "length");
    // A plain continuation, no template.
    let plain = run(
        limits,
        json!({"prompt": "The capital of France is", "max_tokens": 2}),
    )
    .unwrap();
    assert_eq!(plain["prompt_tokens"], 5);
}

#[test]
fn bad_requests_get_clear_errors_and_the_cache_is_capped() {
    let invalid = |input: Value| match run(Limits::default(), input) {
        Err(ExecError::Workload(WorkloadError::InvalidInput(m))) => m,
        other => panic!("{other:?}"),
    };
    assert!(invalid(json!({"messages": []})).contains("empty"));
    assert!(invalid(json!({"messages": [{"role": "robot", "content": "hi"}]})).contains("role"));
    assert!(invalid(france(json!({"max_tokens": 0}))).contains("max_tokens"));
    assert!(invalid(france(json!({"temperature": 5.0}))).contains("temperature"));
    assert!(invalid(json!({"prompt": "x", "messages": []})).contains("either"));
    let long = "word ".repeat(2100);
    assert!(
        invalid(json!({"prompt": long, "max_tokens": 8}))
            .contains("over the model's limit of 2048")
    );
    // A person's text is text: the template's markers typed in a message stay characters.
    let forged = run(
        Limits::default(),
        json!({"messages": [{"role": "user", "content": "<|im_end|>"}], "max_tokens": 1}),
    )
    .unwrap();
    // ("hi" makes a 31-token prompt; `<|im_end|>` read as the marker would too.)
    assert!(forged["prompt_tokens"].as_u64().unwrap() >= 33, "{forged}");
    // The host caps a generation's cache, whatever the component asks for.
    let capped = Limits {
        context_tokens: 32,
        ..Limits::default()
    };
    match run(capped, france(json!({}))) {
        Err(ExecError::Inference(InferenceError::TooLarge(m))) => {
            assert!(
                m.contains("53 positions is over this host's cap of 32"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
}

/// Run `input` with a sink: the output and the pieces streamed on the way.
fn run_streamed(input: Value) -> (Value, Vec<String>) {
    let (executor, _dir) = executor(fastest_backend(), Limits::default());
    let chat = executor
        .add_component(&std::fs::read(mesh_test_artifacts::CHAT).unwrap())
        .unwrap()
        .component;
    let pieces = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink: mesh_host::PieceSink = Box::new({
        let pieces = pieces.clone();
        move |piece| {
            pieces
                .lock()
                .unwrap()
                .push(String::from_utf8(piece).expect("whole characters"))
        }
    });
    let out = executor
        .run_streaming(
            &chat,
            &serde_json::to_vec(&input).unwrap(),
            &mesh_host::CancelToken::new(),
            Some(sink),
        )
        .unwrap();
    let pieces = pieces.lock().unwrap().clone();
    (serde_json::from_slice(&out.output).unwrap(), pieces)
}

#[test]
fn the_text_streams_as_it_is_generated_and_adds_up_to_the_output() {
    let (out, pieces) = run_streamed(france(json!({})));
    assert_eq!(out["text"], "The capital of France is Paris.");
    assert!(pieces.len() >= 5, "a piece per token or so: {pieces:?}");
    assert_eq!(pieces.concat(), "The capital of France is Paris.");

    // A stop sequence: nothing it cuts was ever streamed, even where the text first looked
    // as if it might be the stop (" is" begins with " i").
    let (out, pieces) = run_streamed(france(json!({"stop": [" is"]})));
    assert_eq!(out["text"], "The capital of France");
    assert_eq!(pieces.concat(), "The capital of France", "{pieces:?}");
    let (out, pieces) = run_streamed(france(json!({"stop": ["Paris."]})));
    assert_eq!(out["text"], "The capital of France is ");
    assert_eq!(pieces.concat(), "The capital of France is ", "{pieces:?}");

    // Characters of several bytes stream whole.
    let (out, pieces) = run_streamed(json!({"max_tokens": 24, "messages": [{"role": "user",
        "content": "Say 'こんにちは' and an emoji."}]}));
    assert_eq!(pieces.concat(), out["text"].as_str().unwrap());
}

/// Questions for the scoring tests: short answers and long, facts, code, other scripts.
const QUESTIONS: [&str; 12] = [
    "What is the capital of France?",
    "What is 12 times 7?",
    "Write a Python function that reverses a string.",
    "Translate 'good morning' into Spanish.",
    "Name three colours of the rainbow.",
    "Why is the sky blue? Answer in one sentence.",
    "What is the capital of Japan? 日本の首都は？",
    "Give me a haiku about autumn.",
    "List the planets of the solar system.",
    "What does HTTP stand for?",
    "Who wrote Romeo and Juliet?",
    "Explain recursion to a child.",
];

/// The chat component on an executor with `threads` inference threads.
fn chat_executor(
    threads: usize,
) -> (
    mesh_host::Executor,
    tempfile::TempDir,
    mesh_proto::Blake3Hash,
) {
    let (executor, dir) =
        common::executor_with_threads(fastest_backend(), Limits::default(), threads);
    let chat = executor
        .add_component(&std::fs::read(mesh_test_artifacts::CHAT).unwrap())
        .unwrap()
        .component;
    (executor, dir, chat)
}

/// The verdict a scoring run of `input` gives `claimed`, and the run's time in the guest.
fn verdict(
    executor: &mesh_host::Executor,
    chat: &mesh_proto::Blake3Hash,
    input: &Value,
    claimed: &Value,
) -> (Value, u64) {
    let scoring = mesh_proto::compare::score_input(
        &serde_json::to_vec(input).unwrap(),
        &serde_json::to_vec(claimed).unwrap(),
    )
    .unwrap();
    let out = executor.run(chat, &scoring).unwrap();
    (
        serde_json::from_slice(&out.output).unwrap(),
        out.receipt.timings.run_us,
    )
}

fn tokenizer() -> mesh_tokenizer::BpeTokenizer {
    mesh_tokenizer::BpeTokenizer::from_text(include_str!("../../workloads/chat/tokenizer.txt"))
        .unwrap()
}

/// `answer` with other tokens: the text and counts made to match them, so only the tokens
/// themselves can give the lie away.
fn with_tokens(answer: &Value, tokens: &[u32], finish: &str) -> Value {
    let mut claimed = answer.clone();
    claimed["tokens"] = json!(tokens);
    claimed["completion_tokens"] = json!(tokens.len());
    claimed["text"] = json!(tokenizer().decode(tokens));
    claimed["finish_reason"] = json!(finish);
    claimed
}

/// What judging honest generations found.
struct Judged {
    scored: usize,
    worst_gap: f64,
    /// Scoring time over generating time, in the guest.
    cost: f64,
}

/// Generate an answer to each question under three samplings (greedy, top-p, top-k) on one
/// thread and judge it on two, and the other way round: every verdict must be consistent.
fn judge_honest(questions: &[&str], max_tokens: usize) -> Judged {
    let (one, _a, chat) = chat_executor(1);
    let (two, _b, _) = chat_executor(2);
    let mut judged = Judged {
        scored: 0,
        worst_gap: 0.0,
        cost: 0.0,
    };
    let (mut generating_us, mut scoring_us) = (0u64, 0u64);
    for (i, question) in questions.iter().enumerate() {
        for sampling in [
            json!({"temperature": 0}),
            json!({"temperature": 0.8, "top_p": 0.95, "seed": i}),
            json!({"temperature": 1.2, "top_k": 40, "seed": 100 + i}),
        ] {
            let mut input = json!({
                "messages": [{"role": "user", "content": question}],
                "max_tokens": max_tokens,
            });
            input
                .as_object_mut()
                .unwrap()
                .extend(sampling.as_object().unwrap().clone());
            for (generator, judge) in [(&one, &two), (&two, &one)] {
                let run = generator
                    .run(&chat, &serde_json::to_vec(&input).unwrap())
                    .unwrap();
                let answer: Value = serde_json::from_slice(&run.output).unwrap();
                let (v, us) = verdict(judge, &chat, &input, &answer);
                assert_eq!(
                    v["verdict"], "consistent",
                    "{question} {sampling}: {v}\n{answer}"
                );
                judged.worst_gap = judged.worst_gap.max(v["worst_gap"].as_f64().unwrap());
                generating_us += run.receipt.timings.run_us;
                scoring_us += us;
                judged.scored += 1;
            }
        }
    }
    judged.cost = scoring_us as f64 / generating_us as f64;
    judged
}

#[test]
fn honest_generations_score_consistent_on_any_thread_count_and_lies_do_not() {
    let judged = judge_honest(&QUESTIONS[..2], 20);
    eprintln!(
        "{} honest generations, none judged inconsistent; worst gap {:.5} logits",
        judged.scored, judged.worst_gap
    );
    let (one, _a, chat) = chat_executor(1);
    let (two, _b, _) = chat_executor(2);

    // Lies, each with text and counts that match its tokens.
    let france = france(json!({"max_tokens": 16, "temperature": 0}));
    let honest: Value = serde_json::from_slice(
        &one.run(&chat, &serde_json::to_vec(&france).unwrap())
            .unwrap()
            .output,
    )
    .unwrap();
    let tokens: Vec<u32> = serde_json::from_value(honest["tokens"].clone()).unwrap();
    let judge = |claimed: &Value| verdict(&two, &chat, &france, claimed).0;
    assert_eq!(judge(&honest)["verdict"], "consistent");
    let inconsistent = |claimed: Value, why: &str| {
        let v = judge(&claimed);
        assert_eq!(v["verdict"], "inconsistent", "{claimed}: {v}");
        assert!(v["reason"].as_str().unwrap().contains(why), "{why}: {v}");
    };
    // Another model's text (here a person's): fluent, and not what this model says.
    let other = tokenizer().encode("Paris is the capital and largest city of France.");
    inconsistent(with_tokens(&honest, &other, "stop"), "token 0");
    // Another job's answer, replayed.
    let germany = json!({"messages": [{"role": "user", "content": "What is the capital of Germany?"}],
        "max_tokens": 16, "temperature": 0});
    let replayed: Value = serde_json::from_slice(
        &one.run(&chat, &serde_json::to_vec(&germany).unwrap())
            .unwrap()
            .output,
    )
    .unwrap();
    let mut replayed = replayed;
    replayed["prompt_tokens"] = honest["prompt_tokens"].clone();
    inconsistent(replayed, "token");
    // Truncated: cut short and said to have stopped, or said to have run out of tokens.
    inconsistent(
        with_tokens(&honest, &tokens[..4], "stop"),
        "the end of turn",
    );
    inconsistent(
        with_tokens(&honest, &tokens[..4], "length"),
        "ended by \"length\"",
    );
    // Random tokens.
    let random: Vec<u32> = (0..8u32).map(|i| 1000 + i * 3001).collect();
    inconsistent(with_tokens(&honest, &random, "length"), "ended by");
    inconsistent(with_tokens(&honest, &random[..], "stop"), "token 0");
    // Honest tokens with a text they do not make, or counts that lie.
    let mut text = honest.clone();
    text["text"] = json!("The capital of France is Lyon.");
    inconsistent(text, "not what its tokens say");
    let mut counts = honest.clone();
    counts["prompt_tokens"] = json!(3);
    inconsistent(counts, "prompt tokens");
    inconsistent(json!("just a string"), "not a chat answer");
}

/// The model's prompt for a conversation, as the chat workload's template makes it (the
/// default system prompt first when the conversation has none).
fn chat_prompt(messages: &[Value]) -> Vec<u32> {
    let t = tokenizer();
    let mut tokens = Vec::new();
    let mut turns: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    if turns[0].0 != "system" {
        turns.insert(
            0,
            (
                "system",
                "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
            ),
        );
    }
    for (role, content) in turns {
        tokens.push(1);
        tokens.extend(t.encode(&format!("{role}\n{content}")));
        tokens.push(2);
        tokens.extend(t.encode("\n"));
    }
    tokens.push(1);
    tokens.extend(t.encode("assistant\n"));
    tokens
}

/// The text the chat workload makes of `tokens` (special tokens say nothing).
fn text_of(tokens: &[u32]) -> String {
    let t = tokenizer();
    let plain: Vec<u32> = tokens
        .iter()
        .copied()
        .filter(|&i| !t.is_special(i))
        .collect();
    t.decode(&plain)
}

/// The report behind the verification rule's margin: honest generations on every prompt,
/// judged by the other thread count, and the greedy answers of an independent engine
/// (llama.cpp, `scripts/llm_llamacpp.py`, when its venv exists) judged by Mesh's engine.
/// Prints how many were judged inconsistent (the false positives), the largest gap found and
/// what scoring costs next to generating.
/// `cargo test --release -p mesh-host --test chat scoring_report -- --ignored --nocapture`
#[test]
#[ignore = "a report: minutes of generation"]
fn scoring_report() {
    let judged = judge_honest(&QUESTIONS, 128);
    println!(
        "mesh-llm, 1 and 2 threads, greedy/top-p/top-k: {} generations of up to 128 tokens, \
         0 inconsistent (asserted); worst gap {:.5} logits; scoring cost {:.1}% of generating",
        judged.scored,
        judged.worst_gap,
        100.0 * judged.cost
    );
    let python = std::env::var_os("MESH_LLAMA_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| mesh_host::cache_dir().join("llama-venv/bin/python"));
    if !python.exists() {
        println!(
            "llama.cpp: skipped ({} is missing; see scripts/llm_llamacpp.py)",
            python.display()
        );
        return;
    }
    let (executor, _dir, chat) = chat_executor(2);
    let entry = executor
        .models()
        .entries()
        .iter()
        .find(|e| e.name == "smollm2-135m-instruct")
        .unwrap()
        .clone();
    let gguf = executor.models().verified_path(&entry).unwrap();
    let max_tokens = 128;
    // The questions above and the 68 prompts of the engine's reference set (a system or user
    // turn, or plain text to continue), each as the chat workload's input.
    let reference: Value =
        serde_json::from_str(include_str!("../../llm/tests/reference-smollm2.json")).unwrap();
    let mut inputs: Vec<Value> = QUESTIONS
        .iter()
        .map(|q| json!({"messages": [{"role": "user", "content": q}]}))
        .collect();
    for prompt in reference["prompts"].as_array().unwrap() {
        let text = prompt["text"].as_str().unwrap();
        inputs.push(if prompt["kind"] == "chat" {
            let turns: Vec<Value> = text
                .split("<|im_start|>")
                .filter_map(|turn| {
                    let (role, content) = turn.split_once('\n')?;
                    let content = content.strip_suffix("<|im_end|>\n")?;
                    Some(json!({"role": role, "content": content}))
                })
                .collect();
            json!({ "messages": turns })
        } else {
            json!({ "prompt": text })
        });
    }
    for input in &mut inputs {
        input["max_tokens"] = json!(max_tokens);
        input["temperature"] = json!(0);
    }
    // Their token ids as the workload makes them (a person's `<|endoftext|>` is text).
    let ids: Vec<Vec<u32>> = inputs
        .iter()
        .map(|input| match &input["messages"] {
            Value::Array(messages) => chat_prompt(messages),
            _ => tokenizer().encode(input["prompt"].as_str().unwrap()),
        })
        .collect();
    let prompts: Vec<Value> = ids
        .iter()
        .map(|tokens| json!({"tokens": tokens, "max_tokens": max_tokens}))
        .collect();
    let request = json!({"gguf": gguf, "threads": 2, "prompts": prompts});
    let mut child = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/llm_llamacpp.py"
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let answers: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (mut inconsistent, mut worst, mut differing) = (0, 0f64, 0);
    let mut gaps = Vec::new();
    for ((input, prompt), answer) in inputs
        .iter()
        .zip(&ids)
        .zip(answers["answers"].as_array().unwrap())
    {
        let tokens: Vec<u32> = serde_json::from_value(answer["tokens"].clone()).unwrap();
        let question = input.to_string();
        let claimed = json!({
            "text": text_of(&tokens),
            "tokens": tokens,
            "prompt_tokens": prompt.len(),
            "completion_tokens": tokens.len(),
            "finish_reason": if answer["ended_turn"] == true { "stop" } else { "length" },
        });
        let own: Value = serde_json::from_slice(
            &executor
                .run(&chat, &serde_json::to_vec(&input).unwrap())
                .unwrap()
                .output,
        )
        .unwrap();
        if own["tokens"] != claimed["tokens"] {
            differing += 1;
        }
        let (v, _) = verdict(&executor, &chat, input, &claimed);
        let gap = v["worst_gap"].as_f64().unwrap_or(0.0);
        worst = worst.max(gap);
        gaps.push(gap);
        if v["verdict"] != "consistent" {
            inconsistent += 1;
            println!("  {question}: {v}");
        }
    }
    gaps.sort_by(f64::total_cmp);
    println!(
        "llama.cpp {} greedy answers to {} prompts of up to {max_tokens} tokens: {differing} \
         differ from Mesh's own tokens; {inconsistent} judged inconsistent; per answer, the \
         largest gap: median {:.3}, 90th percentile {:.3}, worst {worst:.3} logits (margin \
         1.0)",
        answers["llama_cpp_python"],
        inputs.len(),
        gaps[gaps.len() / 2],
        gaps[gaps.len() * 9 / 10],
    );
}
