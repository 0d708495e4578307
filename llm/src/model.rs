//! The llama forward pass: token embeddings, `block_count` blocks of RMS-normed grouped-query
//! attention with rotary positions (adjacent pairs, GGUF's "normal" RoPE) and a SwiGLU MLP,
//! a final norm and the output projection (the token embeddings when the file ties them).
//!
//! A [`Llama`] holds the weights (the file's bytes, never dequantised) and a thread pool; a
//! [`Session`] holds one generation's key/value cache. Any number of sessions share one
//! model; a session's memory is known before it is allocated ([`Llama::session_bytes`]).

use crate::gguf::{GgmlType, Gguf, GgufError, TensorInfo};
use crate::pool::{self, Pool};
use crate::quant::{self, BLOCK};

/// Why the model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlamaError {
    /// The file could not be read.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The file is a GGUF file, but not a model this engine runs.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A token id outside the vocabulary.
    #[error("token {token} is outside the vocabulary of {vocab}")]
    InvalidToken {
        /// The token.
        token: u32,
        /// The vocabulary's size.
        vocab: usize,
    },
    /// The session has no room for more tokens.
    #[error("the context is full: {used} of {capacity} positions used, {asked} more asked")]
    ContextFull {
        /// Positions used.
        used: usize,
        /// Positions the session holds.
        capacity: usize,
        /// Positions asked for.
        asked: usize,
    },
    /// A session longer than the model's context.
    #[error("a context of {asked} positions is longer than the model's {max}")]
    ContextTooLong {
        /// Asked for.
        asked: usize,
        /// The model's.
        max: usize,
    },
    /// The caller asked it to stop (between layers); the session is as it was.
    #[error("stopped")]
    Stopped,
    /// The thread pool could not be built.
    #[error("starting {threads} inference threads: {reason}")]
    Threads {
        /// Threads asked for.
        threads: usize,
        /// Why not.
        reason: String,
    },
}

/// The model's shape, from its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the residual stream.
    pub dim: usize,
    /// Width of the MLP.
    pub ffn: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Tokens in the vocabulary.
    pub vocab: usize,
    /// Positions the model was trained for.
    pub context_length: usize,
    /// RoPE base frequency.
    pub rope_base: f32,
    /// RMS norm epsilon.
    pub norm_eps: f32,
}

impl Config {
    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// A weight matrix in the file: `rows` rows of `cols` values.
#[derive(Debug, Clone)]
struct Matrix {
    kind: GgmlType,
    rows: usize,
    cols: usize,
    range: std::ops::Range<usize>,
}

impl Matrix {
    fn row_bytes(&self) -> usize {
        self.cols / BLOCK
            * match self.kind {
                GgmlType::Q4_1 => quant::Q4_1_BYTES,
                _ => quant::Q8_0_BYTES,
            }
    }
}

struct Block {
    attn_norm: Vec<f32>,
    q: Matrix,
    k: Matrix,
    v: Matrix,
    o: Matrix,
    ffn_norm: Vec<f32>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// Which logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// The last position's (generation).
    Last,
    /// Every position's, in order (scoring a given continuation).
    All,
}

/// A loaded model.
pub struct Llama {
    gguf: Gguf,
    config: Config,
    embeddings: Matrix,
    output: Matrix,
    output_norm: Vec<f32>,
    blocks: Vec<Block>,
    pool: Pool,
    threads: usize,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("config", &self.config)
            .field("threads", &self.threads)
            .finish()
    }
}

/// One generation's key/value cache.
pub struct Session {
    keys: Vec<f32>,
    values: Vec<f32>,
    capacity: usize,
    used: usize,
}

impl Session {
    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.used
    }

    /// Whether nothing was run yet.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Positions it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forget the positions after the first `len` (to score another continuation).
    pub fn truncate(&mut self, len: usize) {
        self.used = self.used.min(len);
    }
}

fn f32_vector(gguf: &Gguf, name: &str, len: usize) -> Result<Vec<f32>, LlamaError> {
    let (info, bytes) = gguf.tensor(name)?;
    if info.kind != GgmlType::F32 || info.elements() != len as u64 {
        return Err(LlamaError::Unsupported(format!(
            "{name}: expected {len} f32 values, found {:?} {:?}",
            info.dims, info.kind
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect())
}

fn matrix(gguf: &Gguf, name: &str, cols: usize, rows: usize) -> Result<Matrix, LlamaError> {
    let (info, _) = gguf.tensor(name)?;
    matrix_of(name, info, cols, Some(rows))
}

fn matrix_of(
    name: &str,
    info: &TensorInfo,
    cols: usize,
    rows: Option<usize>,
) -> Result<Matrix, LlamaError> {
    let shape_ok = info.dims.len() == 2
        && info.dims[0] == cols as u64
        && rows.is_none_or(|r| info.dims[1] == r as u64);
    if !shape_ok || !matches!(info.kind, GgmlType::Q4_1 | GgmlType::Q8_0) {
        return Err(LlamaError::Unsupported(format!(
            "{name}: expected a Q4_1 or Q8_0 matrix of rows of {cols}{}, found {:?} {:?}",
            rows.map(|r| format!(" ({r} rows)")).unwrap_or_default(),
            info.dims,
            info.kind
        )));
    }
    Ok(Matrix {
        kind: info.kind,
        rows: info.dims[1] as usize,
        cols,
        range: info.range.clone(),
    })
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

/// [`rms_norm`] of every row of `x` (rows as long as `weight`) into `out`.
fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (row, o) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        rms_norm(row, weight, eps, o);
    }
}

impl Llama {
    /// Load a llama-architecture model from a GGUF file's bytes, running on `threads`
    /// threads (at least one).
    pub fn load(bytes: Vec<u8>, threads: usize) -> Result<Llama, LlamaError> {
        let gguf = Gguf::read(bytes)?;
        let arch = gguf.get("general.architecture")?.as_str().unwrap_or("");
        if arch != "llama" {
            return Err(LlamaError::Unsupported(format!(
                "architecture {arch:?} (only llama)"
            )));
        }
        let get = |key: &str| -> Result<usize, LlamaError> {
            Ok(usize::try_from(gguf.get_u64(key)?).unwrap_or(usize::MAX))
        };
        let layers = get("llama.block_count")?;
        let dim = get("llama.embedding_length")?;
        let heads = get("llama.attention.head_count")?;
        let kv_heads = match gguf.metadata.get("llama.attention.head_count_kv") {
            Some(_) => get("llama.attention.head_count_kv")?,
            None => heads,
        };
        if heads == 0 || kv_heads == 0 || dim % heads != 0 || heads % kv_heads != 0 {
            return Err(LlamaError::Unsupported(format!(
                "{heads} heads, {kv_heads} key/value heads and width {dim} do not divide"
            )));
        }
        let head_dim = dim / heads;
        if head_dim % 2 != 0 || dim % BLOCK != 0 || layers == 0 || layers > 1024 {
            return Err(LlamaError::Unsupported(format!(
                "{layers} layers of width {dim} with heads of {head_dim}"
            )));
        }
        let ffn = get("llama.feed_forward_length")?;
        if ffn % BLOCK != 0 {
            return Err(LlamaError::Unsupported(format!("MLP width {ffn}")));
        }
        let (embed_info, _) = gguf.tensor("token_embd.weight")?;
        let embeddings = matrix_of("token_embd.weight", embed_info, dim, None)?;
        let vocab = embeddings.rows;
        let output = match gguf.tensors.get("output.weight") {
            Some(info) => matrix_of("output.weight", info, dim, Some(vocab))?,
            None => embeddings.clone(),
        };
        let kv_dim = kv_heads * head_dim;
        let blocks = (0..layers)
            .map(|i| {
                let name = |t: &str| format!("blk.{i}.{t}.weight");
                Ok(Block {
                    attn_norm: f32_vector(&gguf, &name("attn_norm"), dim)?,
                    q: matrix(&gguf, &name("attn_q"), dim, dim)?,
                    k: matrix(&gguf, &name("attn_k"), dim, kv_dim)?,
                    v: matrix(&gguf, &name("attn_v"), dim, kv_dim)?,
                    o: matrix(&gguf, &name("attn_output"), dim, dim)?,
                    ffn_norm: f32_vector(&gguf, &name("ffn_norm"), dim)?,
                    gate: matrix(&gguf, &name("ffn_gate"), dim, ffn)?,
                    up: matrix(&gguf, &name("ffn_up"), dim, ffn)?,
                    down: matrix(&gguf, &name("ffn_down"), ffn, dim)?,
                })
            })
            .collect::<Result<Vec<_>, LlamaError>>()?;
        let config = Config {
            layers,
            dim,
            ffn,
            heads,
            kv_heads,
            head_dim,
            vocab,
            context_length: get("llama.context_length")?,
            rope_base: gguf
                .metadata
                .get("llama.rope.freq_base")
                .and_then(|v| v.as_f64())
                .unwrap_or(10_000.0) as f32,
            norm_eps: gguf.get_f64("llama.attention.layer_norm_rms_epsilon")? as f32,
        };
        let threads = threads.max(1);
        let pool = Pool::new(threads).map_err(|e| LlamaError::Threads {
            threads,
            reason: e.to_string(),
        })?;
        Ok(Llama {
            output_norm: f32_vector(&gguf, "output_norm.weight", dim)?,
            gguf,
            config,
            embeddings,
            output,
            blocks,
            pool,
            threads,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The file's metadata and tensors (the tokenizer's vocabulary and merges are there).
    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    /// Threads inference runs on.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Bytes a session of `capacity` positions holds (its key/value cache).
    pub fn session_bytes(&self, capacity: usize) -> usize {
        2usize
            .saturating_mul(self.config.layers)
            .saturating_mul(capacity)
            .saturating_mul(self.config.kv_dim())
            .saturating_mul(std::mem::size_of::<f32>())
    }

    /// A session of `capacity` positions (at most the model's context length).
    pub fn session(&self, capacity: usize) -> Result<Session, LlamaError> {
        if capacity > self.config.context_length {
            return Err(LlamaError::ContextTooLong {
                asked: capacity,
                max: self.config.context_length,
            });
        }
        let floats = self.session_bytes(capacity) / 2 / std::mem::size_of::<f32>();
        Ok(Session {
            keys: vec![0.0; floats],
            values: vec![0.0; floats],
            capacity,
            used: 0,
        })
    }

    fn rows<'a>(&'a self, m: &Matrix) -> &'a [u8] {
        &self.gguf.bytes()[m.range.clone()]
    }

    /// `out[t][r]` = row `r` of `m` · `x[t]` for every position `t` of `x` (`m.cols` values
    /// each). Each row is expanded to f32 once and used for every position.
    fn matmul(&self, m: &Matrix, x: &[f32], positions: usize, out: &mut [f32]) {
        let kernels = quant::kernels();
        let expand = match m.kind {
            GgmlType::Q4_1 => kernels.dequantize_q4_1,
            _ => kernels.dequantize_q8_0,
        };
        let (dot, fused) = (
            kernels.dot,
            match m.kind {
                GgmlType::Q4_1 => kernels.dot_q4_1,
                _ => kernels.dot_q8_0,
            },
        );
        let cols = m.cols;
        let row_bytes = m.row_bytes();
        let data = self.rows(m);
        let threads = self.pool.threads();
        if positions == 1 {
            // One position: no row is used twice, so none is expanded first.
            let parts = pool::parts(&mut out[..m.rows], 1, threads);
            self.pool.run(&|i, n| {
                let mut part = parts[i].lock().expect("own part");
                let rows = pool::share(m.rows, i, n);
                for (o, r) in part.iter_mut().zip(rows) {
                    *o = fused(&data[r * row_bytes..(r + 1) * row_bytes], x);
                }
            });
            return;
        }
        let mut transposed = vec![0f32; m.rows * positions];
        let parts = pool::parts(&mut transposed, positions, threads);
        self.pool.run(&|i, n| {
            let mut part = parts[i].lock().expect("own part");
            let mut row = vec![0f32; cols];
            let rows = pool::share(m.rows, i, n);
            for (per_row, r) in part.chunks_exact_mut(positions).zip(rows) {
                expand(&data[r * row_bytes..(r + 1) * row_bytes], &mut row);
                for (t, o) in per_row.iter_mut().enumerate() {
                    *o = dot(&row, &x[t * cols..(t + 1) * cols]);
                }
            }
        });
        drop(parts);
        for (r, per_row) in transposed.chunks_exact(positions).enumerate() {
            for (t, v) in per_row.iter().enumerate() {
                out[t * m.rows + r] = *v;
            }
        }
    }

    /// Run `tokens` through the model after what `session` holds, and return the logits
    /// `which` asks for (`vocab` values per position).
    pub fn forward(
        &self,
        session: &mut Session,
        tokens: &[u32],
        which: Logits,
    ) -> Result<Vec<f32>, LlamaError> {
        self.forward_until(session, tokens, which, &|| false)
    }

    /// [`Llama::forward`], asking `stop` before each block whether to give up
    /// ([`LlamaError::Stopped`], the session unchanged).
    pub fn forward_until(
        &self,
        session: &mut Session,
        tokens: &[u32],
        which: Logits,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<f32>, LlamaError> {
        let c = &self.config;
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(LlamaError::InvalidToken {
                token,
                vocab: c.vocab,
            });
        }
        if session.used + tokens.len() > session.capacity {
            return Err(LlamaError::ContextFull {
                used: session.used,
                capacity: session.capacity,
                asked: tokens.len(),
            });
        }
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        self.forward_in_pool(session, tokens, which, stop)
    }

    fn forward_in_pool(
        &self,
        session: &mut Session,
        tokens: &[u32],
        which: Logits,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<f32>, LlamaError> {
        let c = &self.config;
        let n = tokens.len();
        let (dim, kv_dim, hd) = (c.dim, c.kv_dim(), c.head_dim);
        let start = session.used;
        // The residual stream, one row per position.
        let mut x = vec![0f32; n * dim];
        let embed_rows = self.rows(&self.embeddings);
        let embed_row_bytes = self.embeddings.row_bytes();
        for (t, &token) in tokens.iter().enumerate() {
            let row = &embed_rows
                [token as usize * embed_row_bytes..(token as usize + 1) * embed_row_bytes];
            let out = &mut x[t * dim..(t + 1) * dim];
            let kernels = quant::kernels();
            match self.embeddings.kind {
                GgmlType::Q4_1 => (kernels.dequantize_q4_1)(row, out),
                _ => (kernels.dequantize_q8_0)(row, out),
            }
        }
        // Rotary angles for the new positions: cos and sin per position and pair.
        let pairs = hd / 2;
        let mut rope = vec![(0f32, 0f32); n * pairs];
        for t in 0..n {
            let pos = (start + t) as f64;
            for i in 0..pairs {
                let theta = f64::from(c.rope_base).powf(-2.0 * i as f64 / hd as f64);
                let (sin, cos) = (pos * theta).sin_cos();
                rope[t * pairs + i] = (cos as f32, sin as f32);
            }
        }
        let rotate = |v: &mut [f32], t: usize| {
            for head in v.chunks_exact_mut(hd) {
                for i in 0..pairs {
                    let (cos, sin) = rope[t * pairs + i];
                    let (a, b) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = a * cos - b * sin;
                    head[2 * i + 1] = a * sin + b * cos;
                }
            }
        };
        let mut h = vec![0f32; n * dim];
        let mut q = vec![0f32; n * dim];
        let mut k = vec![0f32; n * kv_dim];
        let mut v = vec![0f32; n * kv_dim];
        let mut attn = vec![0f32; n * dim];
        let mut o = vec![0f32; n * dim];
        let mut gate = vec![0f32; n * c.ffn];
        let mut up = vec![0f32; n * c.ffn];
        let group = c.heads / c.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let layer_floats = session.capacity * kv_dim;
        for (l, block) in self.blocks.iter().enumerate() {
            if stop() {
                return Err(LlamaError::Stopped);
            }
            rms_norm_rows(&x, &block.attn_norm, c.norm_eps, &mut h);
            self.matmul(&block.q, &h, n, &mut q);
            self.matmul(&block.k, &h, n, &mut k);
            self.matmul(&block.v, &h, n, &mut v);
            let keys = &mut session.keys[l * layer_floats..(l + 1) * layer_floats];
            let values = &mut session.values[l * layer_floats..(l + 1) * layer_floats];
            for t in 0..n {
                rotate(&mut q[t * dim..(t + 1) * dim], t);
                rotate(&mut k[t * kv_dim..(t + 1) * kv_dim], t);
                let at = (start + t) * kv_dim;
                keys[at..at + kv_dim].copy_from_slice(&k[t * kv_dim..(t + 1) * kv_dim]);
                values[at..at + kv_dim].copy_from_slice(&v[t * kv_dim..(t + 1) * kv_dim]);
            }
            let (keys, values) = (&*keys, &*values);
            // Causal attention: position t sees the cache up to and including itself.
            let parts = pool::parts(&mut attn, hd, self.pool.threads());
            self.pool.run(&|w, workers| {
                let mut part = parts[w].lock().expect("own part");
                let units = pool::share(n * c.heads, w, workers);
                for (out, i) in part.chunks_exact_mut(hd).zip(units) {
                    let (t, head) = (i / c.heads, i % c.heads);
                    let kv = head / group;
                    let query = &q[t * dim + head * hd..t * dim + (head + 1) * hd];
                    let seen = start + t + 1;
                    let mut scores: Vec<f32> = (0..seen)
                        .map(|p| {
                            let key = &keys[p * kv_dim + kv * hd..p * kv_dim + (kv + 1) * hd];
                            query.iter().zip(key).map(|(a, b)| a * b).sum::<f32>() * scale
                        })
                        .collect();
                    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                    let mut total = 0f32;
                    for s in &mut scores {
                        *s = (*s - max).exp();
                        total += *s;
                    }
                    out.fill(0.0);
                    for (p, s) in scores.iter().enumerate() {
                        let value = &values[p * kv_dim + kv * hd..p * kv_dim + (kv + 1) * hd];
                        let w = s / total;
                        for (o, v) in out.iter_mut().zip(value) {
                            *o += w * v;
                        }
                    }
                }
            });
            drop(parts);
            self.matmul(&block.o, &attn, n, &mut o);
            for (x, o) in x.iter_mut().zip(&o) {
                *x += o;
            }
            rms_norm_rows(&x, &block.ffn_norm, c.norm_eps, &mut h);
            self.matmul(&block.gate, &h, n, &mut gate);
            self.matmul(&block.up, &h, n, &mut up);
            for (g, u) in gate.iter_mut().zip(&up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            self.matmul(&block.down, &gate, n, &mut o);
            for (x, o) in x.iter_mut().zip(&o) {
                *x += o;
            }
        }
        session.used += n;
        let first = match which {
            Logits::Last => n - 1,
            Logits::All => 0,
        };
        let wanted = n - first;
        let mut normed = vec![0f32; wanted * dim];
        for (t, out) in normed.chunks_exact_mut(dim).enumerate() {
            let at = (first + t) * dim;
            rms_norm(&x[at..at + dim], &self.output_norm, c.norm_eps, out);
        }
        let mut logits = vec![0f32; wanted * c.vocab];
        self.matmul(&self.output, &normed, wanted, &mut logits);
        Ok(logits)
    }
}
