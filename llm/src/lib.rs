//! `mesh-llm`: a small CPU engine for llama-architecture language models stored in GGUF
//! files, written for the models Mesh serves (SmolLM2-135M-Instruct, Q4_1).
//!
//! - [`gguf`] reads a GGUF file: its metadata (architecture, tokenizer vocabulary and merges,
//!   chat template) and where each tensor lies, checking every length and offset.
//! - [`quant`] holds the weight formats (Q4_1 and Q8_0) and the kernels that expand a row
//!   to f32 and multiply it with f32 activations, with AVX2 kernels chosen at run time and
//!   scalar ones elsewhere.
//! - [`model`] is the forward pass: one set of weights shared by any number of
//!   [`model::Session`]s, each holding the key/value cache of one generation, sized (and
//!   refused when too large) before it is allocated.
//!
//! The engine has no notion of text: tokens in, logits out. Tokenisation and sampling happen
//! in the workload (the WebAssembly component) that drives it.

pub mod gguf;
pub mod model;
pub mod pool;
pub mod quant;

pub use gguf::{GgmlType, Gguf, GgufError, Value};
pub use model::{Config, Llama, LlamaError, Session};
