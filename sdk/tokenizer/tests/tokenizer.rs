//! End-to-end checks against HuggingFace `tokenizers` output (see `make_golden.py`).

use mesh_tokenizer::{DEFAULT_MAX_TOKENS, Tokenizer};

const VOCAB: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../workloads/embeddings/vocab.txt"
));
const GOLDEN: &str = include_str!("golden.jsonl");

fn tokenizer() -> Tokenizer {
    Tokenizer::from_vocab_text(VOCAB).expect("committed vocab.txt parses")
}

fn golden() -> Vec<(String, Vec<u32>)> {
    GOLDEN
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("golden line is JSON");
            let text = value["text"].as_str().expect("text").to_owned();
            let ids = value["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|id| u32::try_from(id.as_u64().expect("id")).expect("id fits u32"))
                .collect();
            (text, ids)
        })
        .collect()
}

#[test]
fn vocab_special_ids() {
    let vocab = tokenizer().vocab().clone();
    assert_eq!(vocab.len(), 30522);
    assert_eq!(
        (
            vocab.pad_id(),
            vocab.unk_id(),
            vocab.cls_id(),
            vocab.sep_id()
        ),
        (0, 100, 101, 102)
    );
    assert_eq!(vocab.token_to_id("##ing"), Some(2075));
}

#[test]
fn matches_huggingface_golden() {
    let tokenizer = tokenizer();
    let cases = golden();
    assert!(cases.len() > 130, "golden file looks truncated");
    let mut ids = Vec::new();
    let mismatches: Vec<_> = cases
        .iter()
        .filter_map(|(text, expected)| {
            tokenizer.encode_into(text, &mut ids);
            (&ids != expected).then(|| format!("{text:?}\n  want {expected:?}\n  got  {ids:?}"))
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

#[test]
fn truncates_to_max_tokens_ending_in_sep() {
    let tokenizer = tokenizer();
    // The reference set's long paragraph has 354 ids before truncation.
    let (text, _) = golden()
        .into_iter()
        .find(|(text, _)| text.starts_with("The committee met on a grey Tuesday"))
        .expect("long paragraph in golden file");
    let untruncated = tokenizer.clone().with_max_tokens(usize::MAX).encode(&text);
    assert_eq!(untruncated.len(), 354);

    let ids = tokenizer.encode(&text);
    assert_eq!(ids.len(), DEFAULT_MAX_TOKENS);
    assert_eq!(ids[0], 101);
    assert_eq!(ids[DEFAULT_MAX_TOKENS - 1], 102);
    assert_eq!(
        ids[..DEFAULT_MAX_TOKENS - 1],
        untruncated[..DEFAULT_MAX_TOKENS - 1]
    );

    let short = tokenizer.clone().with_max_tokens(5).encode(&text);
    assert_eq!(short, [&untruncated[..4], &[102]].concat());
    assert_eq!(tokenizer.with_max_tokens(0).encode(&text), vec![101, 102]);
}

#[test]
fn encode_into_reuses_and_clears_the_buffer() {
    let tokenizer = tokenizer();
    let mut ids = vec![7; 1000];
    tokenizer.encode_into("Hello.", &mut ids);
    assert_eq!(ids, vec![101, 7592, 1012, 102]);
    assert_eq!(tokenizer.encode(""), vec![101, 102]);
}
