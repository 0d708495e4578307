//! Language models (GGUF) on the host's own engine, [`mesh_llm`], behind `wasi:nn`.
//!
//! Unlike the ONNX backends' graphs, an execution context here is stateful: it holds one
//! generation's key/value cache ([`mesh_llm::Session`]) across `compute` calls, so each step
//! passes only the new token ids in and copies only logits out. A context is one generation;
//! it is freed with the context (the guest drops it, or the job ends).
//!
//! Inputs of a `compute` call (all `i32`):
//! - `tokens` `[n]`: the positions to append (the prompt first, then one token per step);
//! - `capacity` `[1]`, on the first call only: positions to reserve (prompt plus the most it
//!   will generate); without it, the host's cap. It is checked against the cap and the job's
//!   memory before anything is allocated;
//! - `all_logits` `[1]`, optional: `1` returns every new position's logits (scoring a
//!   continuation in one pass), otherwise only the last one's.
//!
//! Output: `logits`, `f32` `[positions, vocab]`.

use super::budget::{compute_either, output_named, to_backend_error};
use super::{BackendError as LoadError, InferenceBudget, InferenceError, LoadedModel};
use crate::wasi_nn::{Tensor, TensorType};
use mesh_llm::model::Logits;
use mesh_llm::{Llama, LlamaError, Session};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use wasmtime_wasi_nn::backend::{
    BackendError, BackendExecutionContext, BackendGraph, Id, NamedTensor,
};
use wasmtime_wasi_nn::{ExecutionContext, Graph};

/// Positions a generation may hold at most, unless the host's limits say otherwise.
pub const DEFAULT_MAX_CONTEXT: usize = 2048;

/// A language model loaded into the engine, shared by every job that uses it.
pub struct LlmModel {
    llama: Llama,
    max_context: usize,
    memory_bytes: usize,
}

impl LlmModel {
    /// Load a GGUF model file (already verified against its hash) to run on `threads`
    /// threads, with generations of at most `max_context` positions whose caches fit in
    /// `memory_bytes`.
    pub fn load(
        path: &Path,
        threads: usize,
        max_context: usize,
        memory_bytes: usize,
    ) -> Result<LlmModel, LoadError> {
        let load = LoadError::LanguageModel;
        let bytes = std::fs::read(path).map_err(|e| load(format!("{}: {e}", path.display())))?;
        let llama = Llama::load(bytes, threads).map_err(|e| load(format!("mesh-llm: {e}")))?;
        Ok(LlmModel {
            max_context: max_context.min(llama.config().context_length),
            llama,
            memory_bytes,
        })
    }

    /// The engine's model.
    pub fn llama(&self) -> &Llama {
        &self.llama
    }
}

impl LoadedModel for LlmModel {
    fn graph(self: Arc<Self>, budget: Arc<InferenceBudget>) -> Graph {
        let graph: Box<dyn BackendGraph> = Box::new(LlmGraph {
            model: self,
            budget,
        });
        Graph::from(graph)
    }
}

struct LlmGraph {
    model: Arc<LlmModel>,
    budget: Arc<InferenceBudget>,
}

impl BackendGraph for LlmGraph {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        let context: Box<dyn BackendExecutionContext> = Box::new(LlmContext {
            model: self.model.clone(),
            budget: self.budget.clone(),
            session: None,
            held: 0,
            inputs: Vec::new(),
            outputs: Vec::new(),
        });
        Ok(ExecutionContext::from(context))
    }
}

struct LlmContext {
    model: Arc<LlmModel>,
    budget: Arc<InferenceBudget>,
    session: Option<Session>,
    /// Bytes its session holds against the job's allowance.
    held: usize,
    inputs: Vec<NamedTensor>,
    outputs: Vec<NamedTensor>,
}

const INPUTS: [&str; 3] = ["tokens", "capacity", "all_logits"];

impl Drop for LlmContext {
    fn drop(&mut self) {
        self.budget.release(self.held);
    }
}

fn i32s(tensor: &NamedTensor) -> Result<Vec<i32>, InferenceError> {
    let t = &tensor.tensor;
    if t.ty != TensorType::I32 || t.dimensions.len() != 1 {
        return Err(InferenceError::InvalidTensor(format!(
            "{:?} must be a one-dimensional i32 tensor, not {:?} {:?}",
            tensor.name, t.ty, t.dimensions
        )));
    }
    super::check_tensor(&tensor.name, t, usize::MAX)?;
    Ok(t.data
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect())
}

impl LlmContext {
    fn compute_checked(
        &mut self,
        inputs: Vec<NamedTensor>,
    ) -> Result<Vec<NamedTensor>, InferenceError> {
        let result = self.compute_unrecorded(inputs);
        if let Err(e) = &result {
            tracing::debug!("generation step failed: {e}");
            self.budget.record(e);
        }
        result
    }

    fn compute_unrecorded(
        &mut self,
        inputs: Vec<NamedTensor>,
    ) -> Result<Vec<NamedTensor>, InferenceError> {
        let mut tokens = None;
        let mut capacity = None;
        let mut all = false;
        for input in &inputs {
            let values = i32s(input)?;
            match input.name.as_str() {
                "tokens" => tokens = Some(values),
                "capacity" => capacity = values.first().copied(),
                "all_logits" => all = values.first() == Some(&1),
                other => {
                    return Err(InferenceError::InvalidTensor(format!(
                        "the model has no input {other:?} (inputs: {INPUTS:?})"
                    )));
                }
            }
        }
        let tokens: Vec<u32> = tokens
            .ok_or_else(|| InferenceError::InvalidTensor("no \"tokens\" input".into()))?
            .into_iter()
            .map(|t| {
                u32::try_from(t).map_err(|_| InferenceError::InvalidTensor(format!("token {t}")))
            })
            .collect::<Result<_, _>>()?;
        let model = &self.model;
        let vocab = model.llama.config().vocab;
        let positions = if all {
            tokens.len()
        } else {
            1.min(tokens.len())
        };
        let output_bytes = positions.saturating_mul(vocab).saturating_mul(4);
        if output_bytes > self.budget.tensor_bytes() {
            return Err(InferenceError::TooLarge(format!(
                "logits for {positions} positions ({output_bytes} bytes) exceed the tensor cap of {}",
                self.budget.tensor_bytes()
            )));
        }
        if self.session.is_none() {
            let capacity = match capacity {
                None => model.max_context,
                Some(c) if c > 0 => c as usize,
                Some(c) => {
                    return Err(InferenceError::InvalidTensor(format!("capacity {c}")));
                }
            };
            if capacity > model.max_context {
                return Err(InferenceError::TooLarge(format!(
                    "a context of {capacity} positions is over this host's cap of {}",
                    model.max_context
                )));
            }
            let bytes = model.llama.session_bytes(capacity);
            if bytes > model.memory_bytes {
                return Err(InferenceError::TooLarge(format!(
                    "a context of {capacity} positions needs {bytes} bytes of cache, over the job's {}",
                    model.memory_bytes
                )));
            }
            // Every context of the job draws on one allowance, released when it is dropped.
            self.budget.hold(bytes, model.memory_bytes)?;
            self.held = bytes;
            self.session = Some(
                model
                    .llama
                    .session(capacity)
                    .map_err(|e| InferenceError::TooLarge(e.to_string()))?,
            );
        } else if capacity.is_some() {
            return Err(InferenceError::InvalidTensor(
                "\"capacity\" goes with the first call of a context only".into(),
            ));
        }
        let session = self.session.as_mut().expect("made above");
        let started = Instant::now();
        let deadline = self.budget.begin()?;
        let cancel = self.budget.cancel_token().clone();
        let stop = move || cancel.is_cancelled() || Instant::now() >= deadline;
        let which = if all { Logits::All } else { Logits::Last };
        let result = model.llama.forward_until(session, &tokens, which, &stop);
        if self.budget.cancel_token().is_cancelled() {
            return Err(InferenceError::Cancelled);
        }
        self.budget.end(started, deadline)?;
        let logits = result.map_err(|e| match e {
            LlamaError::ContextFull { .. } | LlamaError::InvalidToken { .. } => {
                InferenceError::InvalidTensor(e.to_string())
            }
            LlamaError::Stopped => {
                InferenceError::Timeout("the generation step ran out of time".into())
            }
            other => InferenceError::Engine(other.to_string()),
        })?;
        let rows = logits.len() / vocab.max(1);
        Ok(vec![NamedTensor {
            name: "logits".into(),
            tensor: Tensor {
                dimensions: vec![rows as u32, vocab as u32],
                ty: TensorType::Fp32,
                data: le_bytes(&logits),
            },
        }])
    }
}

impl BackendExecutionContext for LlmContext {
    fn set_input(&mut self, id: Id, tensor: &Tensor) -> Result<(), BackendError> {
        let name = match id {
            Id::Name(name) => name,
            Id::Index(i) => INPUTS
                .get(i as usize)
                .map(|n| n.to_string())
                .ok_or_else(|| {
                    to_backend_error(InferenceError::InvalidTensor(format!(
                        "no input at index {i}"
                    )))
                })?,
        };
        self.inputs.retain(|t| t.name != name);
        self.inputs.push(NamedTensor {
            name,
            tensor: tensor.clone(),
        });
        Ok(())
    }

    fn get_output(&mut self, id: Id) -> Result<Tensor, BackendError> {
        let name = match id {
            Id::Name(name) => name,
            Id::Index(_) => "logits".into(),
        };
        output_named(&self.outputs, &name)
    }

    fn compute(
        &mut self,
        inputs: Option<Vec<NamedTensor>>,
    ) -> Result<Option<Vec<NamedTensor>>, BackendError> {
        let (mut bound, mut outputs) = (
            std::mem::take(&mut self.inputs),
            std::mem::take(&mut self.outputs),
        );
        let result = compute_either(inputs, &mut bound, &mut outputs, |inputs| {
            self.compute_checked(inputs)
        });
        (self.inputs, self.outputs) = (bound, outputs);
        result
    }
}

/// `values` as little-endian bytes, one copy (a generation step returns 49,152 of them).
fn le_bytes(values: &[f32]) -> Vec<u8> {
    let mut bytes = vec![0u8; values.len() * 4];
    for (out, v) in bytes.chunks_exact_mut(4).zip(values) {
        out.copy_from_slice(&v.to_le_bytes());
    }
    bytes
}
