//! The embeddings workload end to end: freshly built component, real models, every available
//! backend, checked against the sentence-transformers reference.

mod common;

use common::*;
use mesh_host::executor::WorkloadError;
use mesh_host::{ExecError, Limits};
use mesh_proto::{Blake3Hash, Comparison};
use mesh_test_artifacts::EMBEDDINGS;

fn corpus_input(reference: &[Reference]) -> Vec<u8> {
    let texts: Vec<&str> = reference.iter().map(|r| r.text.as_str()).collect();
    serde_json::to_vec(&serde_json::json!({ "texts": texts })).unwrap()
}

fn check_against_reference(
    backend: mesh_host::backend::BackendKind,
    variant: &str,
    minimum: f64,
) -> Vec<u8> {
    let reference = reference();
    assert_eq!(reference.len(), 101);
    let (executor, _dir) = executor_with(backend, Limits::default(), variant);
    let metadata = executor
        .add_component(&std::fs::read(EMBEDDINGS).unwrap())
        .unwrap();
    assert_eq!(metadata.name, "embeddings");
    assert_eq!(metadata.models, ["all-minilm-l6-v2"]);
    let input = corpus_input(&reference);
    let run = executor.run(&metadata.component, &input).unwrap();
    let embeddings = embeddings(&run.output);
    assert_eq!(embeddings.len(), reference.len());
    let mut worst = (f64::MAX, 0);
    for (r, e) in reference.iter().zip(&embeddings) {
        assert_eq!(e.len(), 384);
        let c = cosine(&r.embedding, e);
        if c < worst.0 {
            worst = (c, r.id);
        }
    }
    println!(
        "{backend} {variant}: worst cosine {:.6} (sentence {})",
        worst.0, worst.1
    );
    assert!(
        worst.0 >= minimum,
        "{backend} {variant}: sentence {} has cosine {} < {minimum}",
        worst.1,
        worst.0
    );

    // The receipt pins what ran.
    let receipt = &run.receipt;
    assert_eq!(
        receipt.component,
        Blake3Hash::of(&std::fs::read(EMBEDDINGS).unwrap())
    );
    assert_eq!(receipt.input, Blake3Hash::of(&input));
    assert_eq!(receipt.output, Blake3Hash::of(&run.output));
    assert_eq!(receipt.backend, backend.to_string());
    assert_eq!(receipt.models.len(), 1);
    assert_eq!(receipt.models[0].name, "all-minilm-l6-v2");
    run.output
}

#[test]
fn fp32_matches_sentence_transformers_on_every_backend() {
    let mut outputs = Vec::new();
    for backend in available_backends() {
        outputs.push((backend, check_against_reference(backend, "fp32", 0.9999)));
    }
    // Honest results from different backends agree under the workload's own rule.
    let (first_backend, first) = &outputs[0];
    for (backend, output) in &outputs[1..] {
        Comparison::Cosine(0.99)
            .compare(first, output)
            .unwrap_or_else(|e| panic!("{first_backend} vs {backend}: {e}"));
    }
}

#[test]
fn int8_is_close_to_sentence_transformers() {
    for backend in available_backends() {
        check_against_reference(backend, "int8", 0.995);
    }
}

#[test]
fn batching_and_order_do_not_change_results() {
    let reference = reference();
    let (executor, _dir) = executor(fastest_backend(), Limits::default());
    let metadata = executor
        .add_component(&std::fs::read(EMBEDDINGS).unwrap())
        .unwrap();
    let texts: Vec<&str> = reference.iter().take(40).map(|r| r.text.as_str()).collect();
    let whole = executor
        .run(
            &metadata.component,
            &serde_json::to_vec(&serde_json::json!({"texts": texts, "batch_size": 7})).unwrap(),
        )
        .unwrap();
    let whole = embeddings(&whole.output);
    for (i, text) in texts.iter().enumerate().step_by(9) {
        let single = executor
            .run(
                &metadata.component,
                &serde_json::to_vec(&serde_json::json!({"texts": [text]})).unwrap(),
            )
            .unwrap();
        let single = &embeddings(&single.output)[0];
        let c = cosine(single, &whole[i]);
        assert!(c > 0.99999, "sentence {i}: batched vs alone cosine {c}");
    }
}

#[test]
fn bad_input_gets_a_clear_error() {
    let (executor, _dir) = executor(fastest_backend(), Limits::default());
    let metadata = executor
        .add_component(&std::fs::read(EMBEDDINGS).unwrap())
        .unwrap();
    let cases: &[&[u8]] = &[
        b"not json",
        br#"{"texts": "one string"}"#,
        br#"{"texts": [1, 2]}"#,
        br#"{"sentences": ["a"]}"#,
        br#"{"texts": ["a"], "batch_size": 0}"#,
        &[0xff, 0xfe, 0x00],
    ];
    for input in cases {
        match executor.run(&metadata.component, input) {
            Err(ExecError::Workload(WorkloadError::InvalidInput(message))) => {
                assert!(!message.is_empty());
            }
            other => panic!(
                "input {:?}: expected invalid input, got {other:?}",
                String::from_utf8_lossy(input)
            ),
        }
    }
    // Ten megabytes in one string: refused by the host before the component sees it.
    let huge = serde_json::to_vec(&serde_json::json!({ "texts": ["a".repeat(10 << 20)] })).unwrap();
    assert!(matches!(
        executor.run(&metadata.component, &huge),
        Err(ExecError::InputTooLarge { .. })
    ));
    // An empty list is valid and embeds nothing.
    let empty = executor
        .run(&metadata.component, br#"{"texts": []}"#)
        .unwrap();
    assert!(embeddings(&empty.output).is_empty());
    // The executor still works after all that.
    let ok = executor
        .run(&metadata.component, br#"{"texts": ["still serving"]}"#)
        .unwrap();
    assert_eq!(embeddings(&ok.output).len(), 1);
}

#[test]
fn concurrent_jobs_share_one_model() {
    let (executor, _dir) = executor(fastest_backend(), Limits::default());
    let metadata = executor
        .add_component(&std::fs::read(EMBEDDINGS).unwrap())
        .unwrap();
    let reference = reference();
    let executor = &executor;
    std::thread::scope(|scope| {
        let handles: Vec<_> = reference
            .chunks(20)
            .map(|chunk| {
                let component = metadata.component;
                scope.spawn(move || {
                    let input = corpus_input(chunk);
                    let output = executor.run(&component, &input).unwrap().output;
                    for (r, e) in chunk.iter().zip(embeddings(&output)) {
                        assert!(cosine(&r.embedding, &e) >= 0.9999, "sentence {}", r.id);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

/// The false-positive rate of re-execution checks across backends: every sentence of the
/// reference corpus, embedded by every backend, fp32 and int8 models, in different batch
/// compositions (ringers change them), compared pairwise by the rule verification applies to
/// that pair (the workload's declared rule, calibrated to the precisions the receipts name:
/// [`Comparison::calibrated`]). An honest device must never be flagged: zero mismatches. It
/// prints the lowest cosine of same-precision pairs (what the calibrated bound must stay
/// under) and of mixed pairs (what the declared bound must stay under).
#[test]
fn honest_results_never_disagree_under_the_declared_rule() {
    let reference = reference();
    let texts: Vec<&str> = reference.iter().map(|r| r.text.as_str()).collect();
    // A fixed shuffle, so batches mix lengths differently than the corpus order.
    let mut shuffled: Vec<usize> = (0..texts.len()).collect();
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, (i * 7919 + 13) % (i + 1));
    }
    let mut runs: Vec<(String, Vec<mesh_proto::ModelBinding>, Vec<Vec<f32>>)> = Vec::new();
    let mut declared = None;
    for backend in available_backends() {
        for variant in ["fp32", "int8"] {
            let (executor, _dir) = executor_with(backend, Limits::default(), variant);
            let metadata = executor
                .add_component(&std::fs::read(EMBEDDINGS).unwrap())
                .unwrap();
            declared = Some(metadata.comparison);
            let batchings: &[(&str, usize)] = &[
                ("one batch", texts.len()),
                ("batches of 8", 8),
                ("shuffled 32s", 32),
            ];
            for &(name, size) in batchings {
                let order: Vec<usize> = if name.starts_with("shuffled") {
                    shuffled.clone()
                } else {
                    (0..texts.len()).collect()
                };
                let mut vectors = vec![Vec::new(); texts.len()];
                let mut models = Vec::new();
                for chunk in order.chunks(size) {
                    let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
                    let input = serde_json::to_vec(&serde_json::json!({ "texts": batch })).unwrap();
                    let run = executor.run(&metadata.component, &input).unwrap();
                    models = run.receipt.models.clone();
                    for (&i, v) in chunk.iter().zip(embeddings(&run.output)) {
                        vectors[i] = v;
                    }
                }
                assert_eq!(models[0].precision(), Some(variant));
                runs.push((format!("{backend} {variant} {name}"), models, vectors));
            }
        }
    }
    let declared = declared.unwrap();
    assert_eq!(declared, Comparison::Cosine(0.99));
    let (mut comparisons, mut mismatches) = (0, 0);
    let mut worst_same = (f64::MAX, String::new());
    let mut worst_mixed = (f64::MAX, String::new());
    for (a, (name_a, models_a, run_a)) in runs.iter().enumerate() {
        for (name_b, models_b, run_b) in &runs[a + 1..] {
            let rule = declared.calibrated(models_a, models_b);
            let same = models_a[0].precision() == models_b[0].precision();
            assert_eq!(
                rule,
                if same {
                    Comparison::Cosine(mesh_proto::compare::SAME_PRECISION_MIN_COSINE)
                } else {
                    declared
                }
            );
            for (i, (va, vb)) in run_a.iter().zip(run_b).enumerate() {
                let doc = |v: &Vec<f32>| {
                    serde_json::to_vec(&serde_json::json!({ "embeddings": [v] })).unwrap()
                };
                comparisons += 1;
                if rule.compare(&doc(va), &doc(vb)).is_err() {
                    mismatches += 1;
                }
                let c = cosine(va, vb);
                let worst = if same {
                    &mut worst_same
                } else {
                    &mut worst_mixed
                };
                if c < worst.0 {
                    *worst = (c, format!("{name_a} vs {name_b}, sentence {i}"));
                }
            }
        }
    }
    println!(
        "{} runs, {comparisons} sentence comparisons across backends, models and batchings: \
         {mismatches} false positives; lowest cosine at the same precision 1 - {:.1e} ({}), \
         across precisions {:.7} ({})",
        runs.len(),
        1.0 - worst_same.0,
        worst_same.1,
        worst_mixed.0,
        worst_mixed.1
    );
    assert!(runs.len() >= 4, "only {} runs", runs.len());
    assert_eq!(
        mismatches, 0,
        "honest results flagged; lowest cosine at the same precision {:.7} ({}), across {:.7} ({})",
        worst_same.0, worst_same.1, worst_mixed.0, worst_mixed.1
    );
}
