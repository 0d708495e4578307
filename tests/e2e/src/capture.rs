//! Per-node logs for in-process tests.
//!
//! A [`TestNet`](crate::testnet::TestNet) runs the control plane, the relay and every agent in
//! the test process, so their logs cannot be told apart by process. Each node runs inside a
//! `mesh_node` span instead (the libraries carry the current span into every task they
//! spawn), and the layer installed here appends each event inside such a span to that node's
//! [`NodeLog`], formatted like the binaries' own log lines (`RUST_LOG=info,libp2p=warn`, or
//! what `MESH_TEST_LOG` says).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

/// The span name that marks a node.
const NODE_SPAN: &str = "mesh_node";

/// What one node logged so far; cheap to clone.
#[derive(Clone, Default)]
pub struct NodeLog {
    name: String,
    text: Arc<Mutex<String>>,
}

impl NodeLog {
    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        self.text.lock().expect("log lock").clone()
    }

    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.text
            .lock()
            .expect("log lock")
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Wait until the log contains `needle`; panics with the log after `timeout`.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.text.lock().expect("log lock").contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{} did not log {needle:?} within {timeout:?}; log:\n{}",
            self.name,
            self.text()
        );
    }

    fn push(&self, line: &str) {
        let mut text = self.text.lock().expect("log lock");
        text.push_str(line);
        text.push('\n');
    }
}

/// Logs by key, until their span is created.
fn pending() -> &'static Mutex<HashMap<u64, NodeLog>> {
    static PENDING: OnceLock<Mutex<HashMap<u64, NodeLog>>> = OnceLock::new();
    PENDING.get_or_init(Default::default)
}

/// Install the capturing subscriber (once per process) and make a span whose events go to
/// the returned log. Run a node's startup inside the span (`.instrument(span)`); its tasks
/// inherit it.
pub fn node_span(name: &str) -> (tracing::Span, NodeLog) {
    install();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let key = NEXT.fetch_add(1, Ordering::Relaxed);
    let log = NodeLog {
        name: name.to_string(),
        text: Arc::default(),
    };
    pending()
        .lock()
        .expect("pending lock")
        .insert(key, log.clone());
    let span = tracing::info_span!(NODE_SPAN, node = name, log = key);
    // A span the subscriber disabled never reaches `on_new_span`: drop its entry.
    pending().lock().expect("pending lock").remove(&key);
    (span, log)
}

fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // `MESH_TEST_LOG` (an `EnvFilter`) widens what nodes log, when a test needs debugging.
        let filter = EnvFilter::try_from_env("MESH_TEST_LOG")
            .unwrap_or_else(|_| EnvFilter::new("info,libp2p=warn"));
        let capture = Capture.with_filter(filter);
        // The test's own output (outside any node) still honours RUST_LOG.
        let rest = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(EnvFilter::from_default_env());
        let subscriber = tracing_subscriber::registry().with(capture).with(rest);
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other tracing subscriber in an e2e test binary");
    });
}

/// The layer that routes events to node logs.
struct Capture;

struct KeyVisitor(Option<u64>);

impl Visit for KeyVisitor {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "log" {
            self.0 = Some(value);
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

/// An event as one line: level, target, message, then its other fields.
struct LineVisitor {
    message: String,
    fields: String,
}

impl Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != NODE_SPAN {
            return;
        }
        let mut key = KeyVisitor(None);
        attrs.record(&mut key);
        let log = key
            .0
            .and_then(|k| pending().lock().expect("pending lock").get(&k).cloned());
        if let (Some(log), Some(span)) = (log, ctx.span(id)) {
            span.extensions_mut().insert(log);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        for span in scope {
            if let Some(log) = span.extensions().get::<NodeLog>() {
                let mut line = LineVisitor {
                    message: String::new(),
                    fields: String::new(),
                };
                event.record(&mut line);
                let metadata = event.metadata();
                log.push(&format!(
                    "{:>5} {}: {}{}",
                    metadata.level(),
                    metadata.target(),
                    line.message,
                    line.fields
                ));
                return;
            }
        }
    }
}
