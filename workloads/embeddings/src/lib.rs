//! The embeddings workload: sentence embeddings with all-MiniLM-L6-v2.
//!
//! Input: `{"texts": ["...", ...], "batch_size": 32}` (`batch_size` optional), as JSON or CBOR.
//! Output: `{"embeddings": [[384 floats], ...], "tokens": N}` in input order, L2-normalised, as
//! CBOR: formatting 384 floats per sentence as JSON text costs more than pooling them, and
//! triples the size. `mesh-host exec` and the REST edge show it as JSON.
//!
//! Everything but the transformer itself runs here, inside the sandbox: BERT WordPiece
//! tokenisation, length-sorted batching (so short sentences are not padded to the length of a
//! long one), attention-masked mean pooling and normalisation. The host runs the model through
//! `wasi:nn`.

use mesh_guest::{JobError, Metadata, Model, Workload};
use mesh_tokenizer::{Tokenizer, Vocab};
use serde::{Deserialize, Serialize};

/// The model this workload loads from the host's model store.
const MODEL_NAME: &str = "all-minilm-l6-v2";
/// The WordPiece vocabulary of the model (bert-base-uncased).
const VOCAB: &str = include_str!("../vocab.txt");
/// Sentences per inference call unless the input asks otherwise.
const DEFAULT_BATCH_SIZE: usize = 32;
/// Upper bound on `batch_size`: larger batches only cost memory.
const MAX_BATCH_SIZE: usize = 256;
/// Upper bound on sentences per job; larger jobs should be split by the requester.
const MAX_TEXTS: usize = 8192;
/// Embeddings of different backends agree to this cosine on this model (fp32 and int8 alike).
const MIN_COSINE: f32 = 0.99;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    texts: Vec<String>,
    #[serde(default)]
    batch_size: Option<usize>,
}

#[derive(Serialize)]
struct Output {
    embeddings: Vec<Vec<f32>>,
    tokens: usize,
}

struct Embeddings;

impl Workload for Embeddings {
    fn metadata() -> Metadata {
        Metadata::new("embeddings", env!("CARGO_PKG_VERSION"))
            .model(MODEL_NAME)
            .cosine(MIN_COSINE)
    }

    fn run(input: Vec<u8>) -> Result<Vec<u8>, JobError> {
        let input = parse_input(&input)?;
        if input.texts.len() > MAX_TEXTS {
            return Err(JobError::invalid_input(format!(
                "{} texts in one job; at most {MAX_TEXTS}",
                input.texts.len()
            )));
        }
        let batch_size = input.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
            return Err(JobError::invalid_input(format!(
                "batch_size must be between 1 and {MAX_BATCH_SIZE}"
            )));
        }
        let output = embed(&input.texts, batch_size)?;
        let dimensions = output.embeddings.first().map_or(0, Vec::len);
        // 5 bytes per f32 in CBOR, plus a little framing per row.
        let mut bytes = Vec::with_capacity(16 + output.embeddings.len() * (dimensions * 5 + 3));
        ciborium::into_writer(&output, &mut bytes).map_err(JobError::internal)?;
        Ok(bytes)
    }
}

/// JSON (starts with `{`) or CBOR.
fn parse_input(input: &[u8]) -> Result<Input, JobError> {
    let json = input
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    let expected = "expected {\"texts\": [\"...\"]} as JSON or CBOR";
    if json {
        serde_json::from_slice(input)
            .map_err(|e| JobError::invalid_input(format!("{expected}: {e}")))
    } else {
        ciborium::from_reader(input)
            .map_err(|e| JobError::invalid_input(format!("{expected}: {e}")))
    }
}

fn embed(texts: &[String], batch_size: usize) -> Result<Output, JobError> {
    let vocab = Vocab::from_text(VOCAB).map_err(JobError::internal)?;
    let tokenizer = Tokenizer::new(vocab);
    let encoded: Vec<Vec<u32>> = texts.iter().map(|t| tokenizer.encode(t)).collect();
    let tokens = encoded.iter().map(Vec::len).sum();

    // Sort by length so each batch pads to a similar length.
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| encoded[i].len());

    let mut embeddings = vec![Vec::new(); texts.len()];
    if texts.is_empty() {
        return Ok(Output { embeddings, tokens });
    }
    let model = Model::load(MODEL_NAME)?;
    for batch in order.chunks(batch_size) {
        let pooled = run_batch(&model, batch.iter().map(|&i| encoded[i].as_slice()))?;
        for (&i, embedding) in batch.iter().zip(pooled) {
            embeddings[i] = embedding;
        }
    }
    Ok(Output { embeddings, tokens })
}

/// Pad one batch, run the model, and mean-pool + normalise each sequence.
fn run_batch<'a>(
    model: &Model,
    batch: impl ExactSizeIterator<Item = &'a [u32]> + Clone,
) -> Result<Vec<Vec<f32>>, JobError> {
    let rows = batch.len();
    let cols = batch.clone().map(<[u32]>::len).max().unwrap_or(0);
    let mut ids = vec![0i64; rows * cols];
    let mut mask = vec![0i64; rows * cols];
    for (row, sequence) in batch.clone().enumerate() {
        for (col, &id) in sequence.iter().enumerate() {
            ids[row * cols + col] = i64::from(id);
            mask[row * cols + col] = 1;
        }
    }
    let types = vec![0i64; rows * cols];
    let dims = [rows as u32, cols as u32];
    let outputs = model.compute_i64(&[
        ("input_ids", &dims, &ids),
        ("attention_mask", &dims, &mask),
        ("token_type_ids", &dims, &types),
    ])?;
    let hidden = outputs
        .iter()
        .find(|o| o.name == "last_hidden_state")
        .or(outputs.first())
        .ok_or_else(|| JobError::inference("model returned no outputs"))?;
    let [b, s, h] = hidden.dimensions[..] else {
        return Err(JobError::inference(format!(
            "expected a [batch, sequence, hidden] output, got {:?}",
            hidden.dimensions
        )));
    };
    if b as usize != rows || s as usize != cols || h == 0 {
        return Err(JobError::inference(format!(
            "output shape {:?} does not match input [{rows}, {cols}]",
            hidden.dimensions
        )));
    }
    let hidden_size = h as usize;
    let values = hidden.as_f32()?;

    let mut pooled = Vec::with_capacity(rows);
    for (row, sequence) in batch.enumerate() {
        let mut sum = vec![0f32; hidden_size];
        for token in 0..sequence.len() {
            let start = (row * cols + token) * hidden_size;
            add_into(&mut sum, &values[start..start + hidden_size]);
        }
        let count = sequence.len().max(1) as f32;
        sum.iter_mut().for_each(|v| *v /= count);
        let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        sum.iter_mut().for_each(|v| *v /= norm);
        pooled.push(sum);
    }
    Ok(pooled)
}

/// `acc += values`, element by element: the pooling loop, which is most of the component's
/// own work. Built with wasm SIMD (every wasmtime supports it), so it runs four lanes at once.
#[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128"))]
fn add_into(acc: &mut [f32], values: &[f32]) {
    for (a, v) in acc.iter_mut().zip(values) {
        *a += v;
    }
}

mesh_guest::export_workload!(Embeddings);
