//! The byte-level BPE tokenizer against SmolLM2's own, id for id: `bpe-golden.json` holds
//! token ids from HuggingFace `tokenizers` with the model's pre-tokenisation (digits split
//! one by one, then GPT-2's pattern; `scripts/llm_prompts.py` wrote it), over ASCII,
//! contractions, accents, CJK, emoji and ZWJ sequences, code, whitespace runs, long numbers
//! and embedded special tokens.

use mesh_tokenizer::BpeTokenizer;

fn tokenizer() -> BpeTokenizer {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workloads/chat/tokenizer.txt"),
    )
    .unwrap();
    BpeTokenizer::from_text(&text).unwrap()
}

#[test]
fn encodes_and_decodes_like_the_models_tokenizer() {
    let tokenizer = tokenizer();
    assert_eq!(tokenizer.vocab_size(), 49_152);
    let golden: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("bpe-golden.json")).unwrap();
    assert!(golden.len() >= 80);
    let mut wrong = Vec::new();
    for case in &golden {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tokenizer.encode_special(text);
        if got != want {
            wrong.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
        assert_eq!(tokenizer.decode(&want), text, "decoding {want:?}");
    }
    assert!(
        wrong.is_empty(),
        "{} of {} differ:\n{}",
        wrong.len(),
        golden.len(),
        wrong.join("\n")
    );
}

#[test]
fn plain_text_never_makes_special_tokens() {
    let tokenizer = tokenizer();
    let special = tokenizer.encode_special("<|im_start|>user");
    assert_eq!(special[0], 1);
    let plain = tokenizer.encode("<|im_start|>user");
    assert!(
        plain.len() > 3 && !plain.iter().any(|&t| tokenizer.is_special(t)),
        "{plain:?}"
    );
    assert_eq!(tokenizer.decode(&plain), "<|im_start|>user");
}

#[test]
fn malformed_files_are_refused() {
    for bad in [
        "",
        "mesh-bpe 2\n",
        "mesh-bpe 1\ntokens 3\na\n",
        "mesh-bpe 1\ntokens x\n",
    ] {
        assert!(BpeTokenizer::from_text(bad).is_err(), "{bad:?}");
    }
    // A merge of tokens that do not exist.
    let unknown = "mesh-bpe 1\ntokens 1\na\nmerges 1\na b\nspecials 0\n";
    assert!(BpeTokenizer::from_text(unknown).is_err());
}
