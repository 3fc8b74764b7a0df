//! The snapshot the data plane reads: one compiled route table with the verdicts and source
//! problems it was built from. Immutable; a new one replaces the old one whole.
//!
//! [`Published`] is the seam between the planes: sources publish into it; the proxy, the
//! admin endpoints and the status writer read it. None of them needs another to exist.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use serde::Serialize;

use crate::compile::{Compiled, Verdict};
use crate::metrics::Metrics;
use crate::route::RouteTable;

/// A problem with where routes come from, e.g. a file that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceProblem {
    /// Which source: a file path in standalone mode.
    pub source: String,
    /// The line the problem is on, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// The parser's message.
    pub message: String,
}

/// An immutable route table plus what it was compiled from.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increments with every snapshot a gateway applies.
    pub version: u64,
    /// The routes handshakes are matched against.
    pub table: RouteTable,
    /// One verdict per declared route.
    pub verdicts: Vec<Arc<Verdict>>,
    /// Sources that failed to load; what they last declared is still in `table`.
    pub problems: Vec<SourceProblem>,
}

impl Snapshot {
    /// Builds a snapshot from a compile result.
    pub fn new(version: u64, compiled: Compiled, problems: Vec<SourceProblem>) -> Snapshot {
        Snapshot {
            version,
            table: compiled.table,
            verdicts: compiled.verdicts,
            problems,
        }
    }
}

/// What runs on every published snapshot, before `publish` returns.
type Hook = Box<dyn Fn(&Snapshot) + Send + Sync>;

/// The active snapshot, and whether the process still wants traffic.
pub struct Published {
    current: ArcSwapOption<Snapshot>,
    draining: AtomicBool,
    metrics: Metrics,
    hooks: Mutex<Vec<Hook>>,
}

impl Published {
    /// Nothing published yet: not ready.
    pub fn new(metrics: Metrics) -> Arc<Published> {
        Arc::new(Published {
            current: ArcSwapOption::empty(),
            draining: AtomicBool::new(false),
            metrics,
            hooks: Mutex::new(Vec::new()),
        })
    }

    /// Makes `snapshot` the active one: new readers see it at once, and every hook (the
    /// proxy's revocation) runs on it before this returns.
    pub fn publish(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        let previous = self.current.swap(Some(snapshot.clone()));
        // Freeing a large table takes milliseconds (about 15 ms for 10,000 routes): done on
        // a blocking thread when there is a runtime, so the change is not held up by it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || drop(previous));
        }
        self.metrics.snapshot_version.set(snapshot.version as i64);
        self.metrics
            .snapshot_routes
            .set(snapshot.table.len() as i64);
        self.metrics
            .source_errors
            .set(snapshot.problems.len() as i64);
        let hooks = self.hooks.lock().unwrap_or_else(PoisonError::into_inner);
        for hook in hooks.iter() {
            hook(&snapshot);
        }
    }

    /// Runs `hook` on every snapshot published from now on.
    pub fn on_publish(&self, hook: impl Fn(&Snapshot) + Send + Sync + 'static) {
        self.hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(hook));
    }

    /// The active snapshot, if one was published.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Ready once a snapshot is active, and no longer once draining.
    pub fn ready(&self) -> bool {
        self.current.load().is_some() && !self.draining.load(Ordering::Acquire)
    }

    /// Marks the process as draining: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The metric families.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
