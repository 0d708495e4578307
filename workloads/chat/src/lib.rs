//! The chat workload: text generation with SmolLM2-135M-Instruct.
//!
//! Input (JSON): `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}],
//! "max_tokens": 128, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": 0, "stop": [...]}`
//! (everything but `messages` optional), or `{"prompt": "..."}` for a plain continuation.
//! Output (JSON): `{"text", "tokens", "prompt_tokens", "completion_tokens", "finish_reason"}`
//! (`stop`: the model ended its turn or a stop sequence came; `length`: `max_tokens` ran out).
//!
//! Everything but the forward pass runs here, in the sandbox: the ChatML template (with the
//! model's default system prompt when none is given), byte-level BPE (the model's own
//! vocabulary and merges, `tokenizer.txt`), sampling (greedy, temperature, top-k, top-p,
//! seeded, so the same seed and input give the same tokens on the same engine), stop
//! sequences and `max_tokens`. The host runs the model through `wasi:nn`, keeping the
//! key/value cache between steps: each step sends one token id and gets the logits back.
//! The text streams out as it is generated (`mesh_guest::emit`), whole characters only, and
//! never a byte a stop sequence might still cut: the pieces add up to the output's `text`.
//! Message contents are always plain text: `<|im_start|>` typed by a person is text, not a
//! turn of the conversation.

use mesh_guest::{JobError, Metadata, Model, Workload};
use mesh_tokenizer::{BpeTokenizer, Utf8Stream};
use serde::{Deserialize, Serialize};

/// The model this workload loads from the host's model store.
const MODEL_NAME: &str = "smollm2-135m-instruct";
/// The model's vocabulary and merges (from its GGUF file; `llm/tests` checks they agree).
const TOKENIZER: &str = include_str!("../tokenizer.txt");
/// The system prompt of the model's chat template, when the conversation has none.
const DEFAULT_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
/// `<|im_start|>` and `<|im_end|>` (the end of a turn, and of generation).
const IM_START: u32 = 1;
const IM_END: u32 = 2;
/// Positions a generation may hold (the hosts' default cap).
const MAX_CONTEXT: usize = 2048;
/// `max_tokens` unless the input says otherwise.
const DEFAULT_MAX_TOKENS: usize = 256;
/// Stop sequences at most, and their length at most.
const MAX_STOPS: usize = 4;
const MAX_STOP_BYTES: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    role: String,
    content: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Vec<String>,
    /// A claimed output of this input to judge (a verifier's run): answer a verdict instead
    /// of generating.
    #[serde(default)]
    score: Option<serde_json::Value>,
}

/// An answer being judged, as the output it claims to be.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Claimed {
    text: String,
    tokens: Vec<u32>,
    prompt_tokens: usize,
    completion_tokens: usize,
    finish_reason: String,
}

/// What a scoring run answers (`mesh_proto::compare::ScoreVerdict`).
#[derive(Serialize)]
struct Verdict {
    verdict: &'static str,
    checked_tokens: usize,
    worst_gap: f64,
    reason: String,
}

#[derive(Serialize)]
struct Output {
    text: String,
    tokens: Vec<u32>,
    prompt_tokens: usize,
    completion_tokens: usize,
    finish_reason: &'static str,
}

/// Logits by which a claimed token may trail the token this engine's sampling would draw
/// and still be accepted as another honest engine's choice ([`Sampler::judge`]). Measured
/// (`host/tests/chat.rs`, `scoring_report`): `mesh-llm` judging itself on 1 or 2 threads,
/// teacher-forced against token by token, differs by 0; llama.cpp's greedy answers to 80
/// prompts (up to 128 tokens; 56 of them not Mesh's own tokens) trail by at most 0.444
/// (median of each answer's largest gap 0.087). 1.0 leaves other engines more than twice
/// the largest gap seen; a token further than that from the draw is not an honest one.
const MARGIN: f32 = 1.0;
/// Claimed tokens scored per `wasi:nn` call (their logits come back together).
const SCORE_CHUNK: usize = 32;

/// How the next token is drawn.
struct Sampler {
    temperature: f32,
    top_p: f32,
    top_k: usize,
    rng: SplitMix64,
}

/// A small, seedable generator (SplitMix64): the same seed draws the same numbers anywhere.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Sampler {
    /// Judge `claimed` as the next token under this sampling, drawing as [`Sampler::pick`]
    /// does (so the seeded draws stay in step): accepted when some token whose share of the
    /// draw, widened for logits `MARGIN` apart, holds the draw is within `MARGIN` logits of
    /// `claimed` (under greedy: when `claimed` is within `MARGIN` of the highest). The
    /// widening covers a boundary that another engine's logits moved; the distance covers
    /// near ties another engine ranks the other way. `Ok` is the gap, in logits.
    fn judge(&mut self, logits: &[f32], claimed: u32) -> Result<f64, String> {
        let Some(&own) = logits.get(claimed as usize) else {
            return Err(format!("token {claimed} is outside the vocabulary"));
        };
        if self.temperature <= 0.0 {
            let best = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let gap = f64::from(best - own);
            return if gap <= f64::from(MARGIN) {
                Ok(gap)
            } else {
                Err(format!(
                    "greedy drew a token {gap:.3} logits above the claimed {claimed}"
                ))
            };
        }
        let (ranked, probs) = self.distribution(logits);
        let draw = self.rng.next_f64();
        let widen = (f64::from(MARGIN / self.temperature)).exp() - 1.0;
        let mut best: Option<f64> = None;
        let mut low = 0.0;
        for (i, p) in probs.iter().enumerate() {
            let high = low + p;
            if draw >= low - widen && draw < high + widen {
                let gap =
                    f64::from((ranked[i].1 - own / self.temperature).abs() * self.temperature);
                best = Some(best.map_or(gap, |b: f64| b.min(gap)));
            }
            if low - widen > draw {
                break;
            }
            low = high;
        }
        match best {
            Some(gap) if gap <= f64::from(MARGIN) => Ok(gap),
            Some(gap) => Err(format!(
                "the seeded draw is {gap:.3} logits from the claimed token {claimed}"
            )),
            None => Err(format!(
                "the seeded draw cannot be the claimed token {claimed}"
            )),
        }
    }

    /// The tokens sampling draws from, best first (logits over the temperature), and their
    /// probabilities after top-k and top-p.
    fn distribution(&self, logits: &[f32]) -> (Vec<(u32, f32)>, Vec<f64>) {
        let mut ranked: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l / self.temperature))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.top_k > 0 {
            ranked.truncate(self.top_k);
        }
        let max = ranked[0].1;
        let mut probs: Vec<f64> = ranked
            .iter()
            .map(|&(_, l)| f64::from(l - max).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    cumulative += p;
                    cumulative >= f64::from(self.top_p)
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        (ranked, probs)
    }

    fn pick(&mut self, logits: &[f32]) -> u32 {
        // Greedy: the highest logit, the lowest id among equals.
        if self.temperature <= 0.0 {
            let mut best = 0;
            for (i, &l) in logits.iter().enumerate() {
                if l > logits[best] {
                    best = i;
                }
            }
            return best as u32;
        }
        let (ranked, probs) = self.distribution(logits);
        let draw = self.rng.next_f64();
        let mut cumulative = 0.0;
        for (i, p) in probs.iter().enumerate() {
            cumulative += p;
            if draw < cumulative {
                return ranked[i].0;
            }
        }
        ranked[probs.len() - 1].0
    }
}

fn parse(input: &[u8]) -> Result<Input, JobError> {
    serde_json::from_slice(input).map_err(|e| JobError::invalid_input(format!("input: {e}")))
}

/// The prompt's tokens: ChatML for messages, plain text for a prompt.
fn prompt_tokens(tokenizer: &BpeTokenizer, input: &Input) -> Result<Vec<u32>, JobError> {
    match (&input.messages, &input.prompt) {
        (Some(messages), None) => {
            if messages.is_empty() {
                return Err(JobError::invalid_input("messages is empty"));
            }
            let mut tokens = Vec::new();
            let mut turn = |role: &str, content: &str| {
                tokens.push(IM_START);
                tokens.extend(tokenizer.encode(&format!("{role}\n{content}")));
                tokens.push(IM_END);
                tokens.extend(tokenizer.encode("\n"));
            };
            if messages[0].role != "system" {
                turn("system", DEFAULT_SYSTEM);
            }
            for m in messages {
                if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                    return Err(JobError::invalid_input(format!(
                        "role {:?} (system, user or assistant)",
                        m.role
                    )));
                }
                turn(&m.role, &m.content);
            }
            tokens.push(IM_START);
            tokens.extend(tokenizer.encode("assistant\n"));
            Ok(tokens)
        }
        (None, Some(prompt)) if !prompt.is_empty() => Ok(tokenizer.encode(prompt)),
        (None, Some(_)) => Err(JobError::invalid_input("prompt is empty")),
        _ => Err(JobError::invalid_input(
            "give either messages (a conversation) or prompt (text to continue)",
        )),
    }
}

fn logits_of(outputs: Vec<mesh_guest::TensorOutput>) -> Result<Vec<f32>, JobError> {
    let logits = outputs
        .into_iter()
        .find(|t| t.name == "logits")
        .ok_or_else(|| JobError::inference("the model returned no logits"))?;
    Ok(logits.to_f32()?)
}

/// Add `token`'s text to `text` (special tokens say nothing) and cut it where a stop
/// sequence first appears: `true` when one did. Generating and judging both make the text
/// this way, so a judge rebuilds exactly what a generation wrote.
fn append_token(
    tokenizer: &BpeTokenizer,
    stream: &mut Utf8Stream,
    text: &mut String,
    token: u32,
    stops: &[String],
) -> bool {
    if !tokenizer.is_special(token) {
        text.push_str(&stream.push(&tokenizer.token_bytes(token).unwrap_or_default()));
    }
    match stops.iter().filter_map(|s| text.find(s.as_str())).min() {
        Some(cut) => {
            text.truncate(cut);
            true
        }
        None => false,
    }
}

/// Bytes at the end of `text` that may be the start of a stop sequence, so are not streamed
/// until the next tokens show whether it comes (the longest such suffix, on a character
/// boundary).
fn held_back(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|stop| {
            (1..stop.len().min(text.len() + 1))
                .rev()
                .filter(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
                .take(1)
        })
        .max()
        .unwrap_or(0)
}

/// Judge `claimed` as this engine's answer to `input` (a verifier's run): its counts and
/// text must be what its tokens make, its end what the sampling and stop sequences make,
/// and every token (and the end of turn, when it says it stopped there) what the declared
/// sampling draws from this engine's logits, within `MARGIN` ([`Sampler::judge`]). The
/// tokens are scored under teacher forcing: the prompt and then the claimed tokens go
/// through the model `SCORE_CHUNK` at a time, each call returning the logits of every
/// position, so the whole answer costs about one prompt's worth of work, not a generation.
fn score(
    tokenizer: &BpeTokenizer,
    input: &Input,
    prompt: &[u32],
    max_tokens: usize,
    mut sampler: Sampler,
    claimed: &serde_json::Value,
) -> Result<Verdict, JobError> {
    let mut verdict = Verdict {
        verdict: "inconsistent",
        checked_tokens: 0,
        worst_gap: 0.0,
        reason: String::new(),
    };
    let refuse = |mut verdict: Verdict, reason: String| {
        verdict.reason = reason;
        Ok(verdict)
    };
    let claimed: Claimed = match serde_json::from_value(claimed.clone()) {
        Ok(c) => c,
        Err(e) => return refuse(verdict, format!("the output is not a chat answer: {e}")),
    };
    let tokens = &claimed.tokens;
    if claimed.prompt_tokens != prompt.len() {
        let reason = format!(
            "it counts {} prompt tokens; the prompt is {}",
            claimed.prompt_tokens,
            prompt.len()
        );
        return refuse(verdict, reason);
    }
    if claimed.completion_tokens != tokens.len() || tokens.len() > max_tokens {
        let reason = format!(
            "{} tokens, counted as {}, for max_tokens {max_tokens}",
            tokens.len(),
            claimed.completion_tokens
        );
        return refuse(verdict, reason);
    }
    if let Some(bad) = tokens
        .iter()
        .find(|&&t| t == IM_END || t as usize >= tokenizer.vocab_size())
    {
        return refuse(verdict, format!("token {bad} cannot be generated"));
    }
    // The text its tokens make, cut where a stop sequence first appears.
    let mut text = String::new();
    let mut stream = Utf8Stream::default();
    let mut cut_at = None;
    for (i, &t) in tokens.iter().enumerate() {
        if append_token(tokenizer, &mut stream, &mut text, t, &input.stop) {
            cut_at = Some(i);
            break;
        }
    }
    if cut_at.is_none() {
        text.push_str(&stream.finish());
    }
    if cut_at.is_some_and(|i| i + 1 != tokens.len()) {
        return refuse(verdict, "tokens go on after a stop sequence".into());
    }
    if text != claimed.text {
        return refuse(verdict, "the text is not what its tokens say".into());
    }
    // How it must have ended; `true`: by the model ending its turn after the last token.
    let ended_turn = match (cut_at, tokens.len() == max_tokens) {
        (Some(_), _) => false,
        (None, true) => false,
        (None, false) => true,
    };
    let finish = if cut_at.is_some() || ended_turn {
        "stop"
    } else {
        "length"
    };
    if claimed.finish_reason != finish {
        let reason = format!(
            "it says it ended by {:?}; its tokens end by {finish:?}",
            claimed.finish_reason
        );
        return refuse(verdict, reason);
    }
    // Teacher forcing: the logits before each claimed token, then before the end of turn.
    let model = Model::load(MODEL_NAME)?;
    let prompt_ids: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
    let capacity = [(prompt.len() + tokens.len()).max(1) as i32];
    let vocab = tokenizer.vocab_size();
    let mut rows = logits_of(model.compute_i32(&[
        ("tokens", &[prompt_ids.len() as u32], &prompt_ids),
        ("capacity", &[1], &capacity),
    ])?)?;
    let steps = tokens.len() + usize::from(ended_turn);
    let mut step = 0;
    let mut fed = 0;
    while step < steps {
        for row in rows.chunks(vocab) {
            if step == steps {
                break;
            }
            let want = tokens.get(step).copied().unwrap_or(IM_END);
            match sampler.judge(row, want) {
                Ok(gap) => verdict.worst_gap = verdict.worst_gap.max(gap),
                Err(why) => {
                    verdict.checked_tokens = step;
                    let what = if step == tokens.len() {
                        "the end of turn".to_string()
                    } else {
                        format!("token {step}")
                    };
                    return refuse(verdict, format!("{what}: {why}"));
                }
            }
            step += 1;
        }
        if step == steps {
            break;
        }
        let chunk: Vec<i32> = tokens[fed..(fed + SCORE_CHUNK).min(tokens.len())]
            .iter()
            .map(|&t| t as i32)
            .collect();
        fed += chunk.len();
        rows = logits_of(model.compute_i32(&[
            ("tokens", &[chunk.len() as u32], &chunk),
            ("all_logits", &[1], &[1]),
        ])?)?;
    }
    verdict.checked_tokens = steps;
    verdict.verdict = "consistent";
    Ok(verdict)
}

struct Chat;

impl Workload for Chat {
    fn metadata() -> Metadata {
        Metadata::new("chat", env!("CARGO_PKG_VERSION"))
            .model(MODEL_NAME)
            .generation(MARGIN)
    }

    fn run(input: Vec<u8>) -> Result<Vec<u8>, JobError> {
        let input = parse(&input)?;
        let tokenizer = BpeTokenizer::from_text(TOKENIZER).map_err(JobError::internal)?;
        let prompt = prompt_tokens(&tokenizer, &input)?;
        let max_tokens = input.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        if max_tokens == 0 {
            return Err(JobError::invalid_input("max_tokens must be at least 1"));
        }
        let needed = prompt.len() + max_tokens;
        if needed > MAX_CONTEXT {
            return Err(JobError::invalid_input(format!(
                "the prompt is {} tokens; with max_tokens {max_tokens} it needs {needed} \
                 positions, over the model's limit of {MAX_CONTEXT}",
                prompt.len()
            )));
        }
        let temperature = input.temperature.unwrap_or(0.0);
        let top_p = input.top_p.unwrap_or(1.0);
        if !((0.0..=2.0).contains(&temperature) && top_p > 0.0 && top_p <= 1.0) {
            return Err(JobError::invalid_input(
                "temperature is in [0, 2] and top_p in (0, 1]",
            ));
        }
        if input.stop.len() > MAX_STOPS
            || input
                .stop
                .iter()
                .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return Err(JobError::invalid_input(format!(
                "at most {MAX_STOPS} stop sequences of 1 to {MAX_STOP_BYTES} bytes"
            )));
        }
        let mut sampler = Sampler {
            temperature,
            top_p,
            top_k: input.top_k.unwrap_or(0),
            rng: SplitMix64(input.seed.unwrap_or(0)),
        };
        if let Some(claimed) = &input.score {
            let verdict = score(&tokenizer, &input, &prompt, max_tokens, sampler, claimed)?;
            return serde_json::to_vec(&verdict).map_err(JobError::internal);
        }
        let model = Model::load(MODEL_NAME)?;
        let prompt_ids: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
        let capacity = [needed as i32];
        let mut logits = logits_of(model.compute_i32(&[
            ("tokens", &[prompt_ids.len() as u32], &prompt_ids),
            ("capacity", &[1], &capacity),
        ])?)?;
        let mut tokens = Vec::new();
        let mut text = String::new();
        let mut stream = Utf8Stream::default();
        // Text streamed so far: never a byte that a stop sequence could still cut.
        let mut emitted = 0;
        let mut finish_reason = "length";
        let mut stopped = false;
        while tokens.len() < max_tokens {
            let next = sampler.pick(&logits);
            if next == IM_END {
                finish_reason = "stop";
                break;
            }
            tokens.push(next);
            if append_token(&tokenizer, &mut stream, &mut text, next, &input.stop) {
                finish_reason = "stop";
                stopped = true;
                break;
            }
            let safe = text.len() - held_back(&text, &input.stop);
            if safe > emitted {
                mesh_guest::emit(&text.as_bytes()[emitted..safe]);
                emitted = safe;
            }
            if tokens.len() == max_tokens {
                break;
            }
            logits = logits_of(model.compute_i32(&[("tokens", &[1], &[next as i32])])?)?;
        }
        if !stopped {
            text.push_str(&stream.finish());
        }
        if text.len() > emitted {
            mesh_guest::emit(&text.as_bytes()[emitted..]);
        }
        let output = Output {
            text,
            completion_tokens: tokens.len(),
            tokens,
            prompt_tokens: prompt.len(),
            finish_reason,
        };
        serde_json::to_vec(&output).map_err(JobError::internal)
    }
}

mesh_guest::export_workload!(Chat);
