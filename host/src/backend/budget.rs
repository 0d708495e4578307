//! Per-job bounds on native inference, and the `wasi:nn` graph/context glue every backend shares.

use super::{check_shape, check_tensor};
use crate::wasi_nn::Tensor;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use wasmtime_wasi_nn::backend::{
    BackendError, BackendExecutionContext, BackendGraph, Id, NamedTensor,
};
use wasmtime_wasi_nn::{ExecutionContext, Graph};

/// Why one inference call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InferenceError {
    /// A tensor is malformed: wrong data length, unknown input name, unsupported type.
    #[error("invalid tensor: {0}")]
    InvalidTensor(String),
    /// A tensor exceeds the size caps.
    #[error("tensor too large: {0}")]
    TooLarge(String),
    /// The job's inference time ran out, or one call exceeded its bound.
    #[error("inference timed out: {0}")]
    Timeout(String),
    /// The engine reported an error.
    #[error("inference failed: {0}")]
    Engine(String),
    /// The job was cancelled.
    #[error("the job was cancelled")]
    Cancelled,
}

/// How often a watchdog looks at a job's [`CancelToken`] while an inference call runs.
pub const CANCEL_POLL: Duration = Duration::from_millis(20);

/// A job's cancellation flag, shared by whoever may cancel it and the parts that stop it
/// (the epoch callback of its store, its inference calls).
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token nobody has cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask the job to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the job was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// One job's allowance of native inference time and tensor size, shared by all its graphs.
#[derive(Debug)]
pub struct InferenceBudget {
    deadline: Instant,
    call_limit: Duration,
    tensor_bytes: usize,
    spent_ns: AtomicU64,
    calls: AtomicU64,
    timed_out: AtomicBool,
    last_error: Mutex<Option<InferenceError>>,
    cancel: CancelToken,
    /// Bytes the job's generations hold in host memory (their key/value caches).
    held_bytes: std::sync::atomic::AtomicUsize,
}

impl InferenceBudget {
    /// A budget ending at `deadline`, each call at most `call_limit`, tensors at most
    /// `tensor_bytes`.
    pub fn new(deadline: Instant, call_limit: Duration, tensor_bytes: usize) -> Self {
        InferenceBudget {
            deadline,
            call_limit,
            tensor_bytes,
            spent_ns: AtomicU64::new(0),
            held_bytes: std::sync::atomic::AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            timed_out: AtomicBool::new(false),
            last_error: Mutex::new(None),
            cancel: CancelToken::new(),
        }
    }

    /// The same budget, ending early when `cancel` is cancelled.
    pub fn with_cancel(mut self, cancel: CancelToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// The job's cancellation flag.
    pub fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }

    /// A budget with the default limits that never runs out (for use outside jobs).
    pub fn unlimited() -> Self {
        let far = Instant::now() + Duration::from_secs(60 * 60 * 24 * 365);
        Self::new(far, Duration::MAX, crate::limits::MAX_TENSOR_BYTES)
    }

    /// Time spent inside inference calls so far.
    pub fn spent(&self) -> Duration {
        Duration::from_nanos(self.spent_ns.load(Ordering::Relaxed))
    }

    /// Number of compute calls so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Whether a call was stopped or refused because time ran out.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// The last inference error of the job. `wasi:nn` only passes the guest a generic message,
    /// so the host keeps the typed reason here.
    pub fn last_error(&self) -> Option<InferenceError> {
        self.last_error.lock().expect("budget lock").clone()
    }

    pub(crate) fn record(&self, error: &InferenceError) {
        *self.last_error.lock().expect("budget lock") = Some(error.clone());
    }

    /// Reserve `bytes` of host memory for the job (a generation's cache), refused when the
    /// job would then hold more than `limit` in all: a component that opens context after
    /// context still gets only its one allowance.
    pub fn hold(&self, bytes: usize, limit: usize) -> Result<(), InferenceError> {
        self.held_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                held.checked_add(bytes).filter(|&total| total <= limit)
            })
            .map(|_| ())
            .map_err(|held| {
                InferenceError::TooLarge(format!(
                    "{bytes} more bytes of cache would make the job hold over its {limit} \
                     (it holds {held})"
                ))
            })
    }

    /// Give back what [`InferenceBudget::hold`] reserved.
    pub fn release(&self, bytes: usize) {
        self.held_bytes.fetch_sub(bytes, Ordering::SeqCst);
    }

    /// Bytes the job holds now.
    pub fn held(&self) -> usize {
        self.held_bytes.load(Ordering::SeqCst)
    }

    /// The maximum tensor size in bytes.
    pub fn tensor_bytes(&self) -> usize {
        self.tensor_bytes
    }

    /// Start a call: the instant by which it must finish, or a timeout if none is left.
    pub(crate) fn begin(&self) -> Result<Instant, InferenceError> {
        if self.cancel.is_cancelled() {
            return Err(InferenceError::Cancelled);
        }
        let now = Instant::now();
        if now >= self.deadline {
            self.timed_out.store(true, Ordering::Relaxed);
            return Err(InferenceError::Timeout("the job's time is used up".into()));
        }
        Ok(now
            .checked_add(self.call_limit)
            .map_or(self.deadline, |t| t.min(self.deadline)))
    }

    pub(crate) fn end(
        &self,
        started: Instant,
        call_deadline: Instant,
    ) -> Result<(), InferenceError> {
        let now = Instant::now();
        self.spent_ns
            .fetch_add((now - started).as_nanos() as u64, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        if now > call_deadline {
            self.timed_out.store(true, Ordering::Relaxed);
            return Err(InferenceError::Timeout(format!(
                "a compute call took {:?}",
                now - started
            )));
        }
        Ok(())
    }
}

/// A model an engine has loaded; runs one inference on named inputs.
pub trait RunModel: Send + Sync + 'static {
    /// Names of the model's inputs, in order.
    fn input_names(&self) -> &[String];
    /// Names of the model's outputs, in order.
    fn output_names(&self) -> &[String];
    /// Run once. Inputs are already checked against the caps. The engine must stop (or be
    /// stopped by a watchdog) by `deadline`, or soon after `cancel` is cancelled, where it
    /// can, and refuse outputs over `max_output_bytes` before copying them.
    fn run(
        &self,
        inputs: &[NamedTensor],
        deadline: Instant,
        cancel: &CancelToken,
        max_output_bytes: usize,
    ) -> Result<Vec<NamedTensor>, InferenceError>;
}

/// A per-job graph handle: the shared model plus the job's budget.
pub(crate) struct BudgetedGraph<M: RunModel> {
    model: Arc<M>,
    budget: Arc<InferenceBudget>,
}

impl<M: RunModel> BudgetedGraph<M> {
    /// A `wasi:nn` graph over `model`, bounded by `budget`.
    pub(crate) fn graph(model: Arc<M>, budget: Arc<InferenceBudget>) -> Graph {
        let graph: Box<dyn BackendGraph> = Box::new(BudgetedGraph { model, budget });
        Graph::from(graph)
    }
}

impl<M: RunModel> BackendGraph for BudgetedGraph<M> {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        let context: Box<dyn BackendExecutionContext> = Box::new(BudgetedContext {
            model: self.model.clone(),
            budget: self.budget.clone(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        });
        Ok(ExecutionContext::from(context))
    }
}

struct BudgetedContext<M: RunModel> {
    model: Arc<M>,
    budget: Arc<InferenceBudget>,
    /// Inputs bound with `set-input` (the older WITX style).
    inputs: Vec<NamedTensor>,
    /// Outputs of the last compute, for `get-output`.
    outputs: Vec<NamedTensor>,
}

impl<M: RunModel> BudgetedContext<M> {
    fn name_of(&self, id: &Id, names: &[String]) -> Result<String, InferenceError> {
        match id {
            Id::Name(name) => Ok(name.clone()),
            Id::Index(i) => names
                .get(*i as usize)
                .cloned()
                .ok_or_else(|| InferenceError::InvalidTensor(format!("no tensor at index {i}"))),
        }
    }

    fn compute_checked(
        &self,
        inputs: Vec<NamedTensor>,
    ) -> Result<Vec<NamedTensor>, InferenceError> {
        let result = self.compute_unrecorded(inputs);
        if let Err(e) = &result {
            tracing::debug!("inference failed: {e}");
            self.budget.record(e);
        }
        result
    }

    fn compute_unrecorded(
        &self,
        inputs: Vec<NamedTensor>,
    ) -> Result<Vec<NamedTensor>, InferenceError> {
        let max = self.budget.tensor_bytes();
        for input in &inputs {
            if !self.model.input_names().contains(&input.name) {
                return Err(InferenceError::InvalidTensor(format!(
                    "the model has no input {:?} (inputs: {:?})",
                    input.name,
                    self.model.input_names()
                )));
            }
            check_tensor(&input.name, &input.tensor, max)?;
        }
        let started = Instant::now();
        let deadline = self.budget.begin()?;
        let result = self.model.run(&inputs, deadline, &self.budget.cancel, max);
        if self.budget.cancel.is_cancelled() {
            return Err(InferenceError::Cancelled);
        }
        self.budget.end(started, deadline)?;
        let outputs = result?;
        for output in &outputs {
            check_shape(
                &output.name,
                &output.tensor.dimensions,
                output.tensor.ty,
                max,
            )?;
        }
        Ok(outputs)
    }
}

/// An inference error, as `wasi:nn` passes it on (the typed reason stays in the budget).
pub(crate) fn to_backend_error(e: InferenceError) -> BackendError {
    BackendError::BackendAccess(wasmtime::Error::new(e))
}

/// The last compute's output `name`.
pub(crate) fn output_named(outputs: &[NamedTensor], name: &str) -> Result<Tensor, BackendError> {
    outputs
        .iter()
        .find(|t| t.name == name)
        .map(|t| t.tensor.clone())
        .ok_or_else(|| {
            to_backend_error(InferenceError::InvalidTensor(format!("no output {name:?}")))
        })
}

/// `compute` in both of `wasi:nn`'s styles: with `inputs` given (returning the outputs), or
/// on the inputs `set-input` bound (keeping the outputs for `get-output`).
pub(crate) fn compute_either(
    inputs: Option<Vec<NamedTensor>>,
    bound: &mut Vec<NamedTensor>,
    outputs: &mut Vec<NamedTensor>,
    mut run: impl FnMut(Vec<NamedTensor>) -> Result<Vec<NamedTensor>, InferenceError>,
) -> Result<Option<Vec<NamedTensor>>, BackendError> {
    match inputs {
        Some(inputs) => run(inputs).map(Some).map_err(to_backend_error),
        None => {
            *outputs = run(std::mem::take(bound)).map_err(to_backend_error)?;
            Ok(None)
        }
    }
}

impl<M: RunModel> BackendExecutionContext for BudgetedContext<M> {
    fn set_input(&mut self, id: Id, tensor: &Tensor) -> Result<(), BackendError> {
        let name = self
            .name_of(&id, self.model.input_names())
            .map_err(to_backend_error)?;
        self.inputs.retain(|t| t.name != name);
        self.inputs.push(NamedTensor {
            name,
            tensor: tensor.clone(),
        });
        Ok(())
    }

    fn get_output(&mut self, id: Id) -> Result<Tensor, BackendError> {
        let name = self
            .name_of(&id, self.model.output_names())
            .map_err(to_backend_error)?;
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

/// Run `work`, calling `cancel` from a watchdog thread if it has not finished by `deadline`
/// or once `token` is cancelled (looked at every [`CANCEL_POLL`]). For engines that can be
/// interrupted (ONNX Runtime's terminate flag).
pub(crate) fn with_watchdog<R>(
    deadline: Instant,
    token: &CancelToken,
    cancel: impl FnOnce() + Send,
    work: impl FnOnce() -> R,
) -> R {
    let (done, wait) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match wait.recv_timeout(left.min(CANCEL_POLL)) {
                    Err(mpsc::RecvTimeoutError::Timeout)
                        if left <= CANCEL_POLL || token.is_cancelled() =>
                    {
                        cancel();
                        return;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        });
        let result = work();
        drop(done);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_refuses_calls_after_the_deadline() {
        let budget = InferenceBudget::new(Instant::now(), Duration::from_secs(1), 1024);
        assert!(matches!(budget.begin(), Err(InferenceError::Timeout(_))));
        assert!(budget.timed_out());
    }

    #[test]
    fn watchdog_cancels_late_work_only() {
        let cancelled = AtomicBool::new(false);
        let token = CancelToken::new();
        with_watchdog(
            Instant::now() + Duration::from_secs(5),
            &token,
            || cancelled.store(true, Ordering::SeqCst),
            || (),
        );
        assert!(!cancelled.load(Ordering::SeqCst));
        with_watchdog(
            Instant::now() + Duration::from_millis(10),
            &token,
            || cancelled.store(true, Ordering::SeqCst),
            || std::thread::sleep(Duration::from_millis(100)),
        );
        assert!(cancelled.load(Ordering::SeqCst));
    }

    #[test]
    fn watchdog_stops_work_soon_after_a_cancel() {
        let stopped = AtomicBool::new(false);
        let token = CancelToken::new();
        let started = Instant::now();
        std::thread::scope(|scope| {
            let canceller = token.clone();
            scope.spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                canceller.cancel();
            });
            with_watchdog(
                Instant::now() + Duration::from_secs(60),
                &token,
                || stopped.store(true, Ordering::SeqCst),
                || {
                    while !stopped.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                },
            );
        });
        assert!(started.elapsed() < Duration::from_secs(5));
        let budget = InferenceBudget::new(
            Instant::now() + Duration::from_secs(60),
            Duration::from_secs(1),
            1024,
        )
        .with_cancel(token);
        assert!(matches!(budget.begin(), Err(InferenceError::Cancelled)));
    }
}
