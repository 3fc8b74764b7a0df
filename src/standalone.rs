//! Standalone mode: routes from files, no cluster. Loads, compiles and publishes snapshots,
//! and reloads when the files change; a file that stops parsing keeps serving what it last
//! declared.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::compile::{Backends, SecretData, Verdict, compile, condition};
use crate::config::{ServiceMapping, StandaloneArgs};
use crate::metrics::Metrics;
use crate::route::RouteKey;
use crate::route::Target;
use crate::server::{BindError, Server, termination};
use crate::snapshot::{Published, Snapshot};
use crate::source::file::{FileSource, SourceError};

/// How long to wait for more file events before reloading: editors write in bursts.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Why standalone mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    /// The routes path cannot be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A listener cannot be opened.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The signal handlers cannot be installed.
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signals(std::io::Error),
    /// The file watcher cannot start.
    #[error("cannot watch {path} for changes: {source}")]
    Watch {
        /// The watched path.
        path: PathBuf,
        /// The watcher's error.
        source: notify::Error,
    },
}

/// Builds the backends standalone mode knows: only the `--service` mappings; a Service
/// mapped several times has each target as an endpoint.
pub fn backends(mappings: &[ServiceMapping]) -> Backends {
    let mut grouped: Vec<(&str, &str, Vec<Target>)> = Vec::new();
    for m in mappings {
        match grouped
            .iter_mut()
            .find(|(ns, name, _)| *ns == m.namespace && *name == m.name)
        {
            Some((_, _, targets)) => targets.push(m.target.clone()),
            None => grouped.push((&m.namespace, &m.name, vec![m.target.clone()])),
        }
    }
    let mut backends = Backends::standalone();
    for (namespace, name, targets) in grouped {
        backends.insert(namespace, name, None, targets);
    }
    backends
}

/// Reads the Secrets under a `--secret-dir`: each directory NAME (not hidden) is Secret NAME,
/// each file in it (not hidden; symbolic links followed, as in a mounted Secret volume) one
/// data key. Unreadable entries are logged and left out.
pub fn read_secrets(dir: &Path) -> Vec<(String, SecretData)> {
    let visible = |e: &std::fs::DirEntry| !e.file_name().to_string_lossy().starts_with('.');
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the secret directory");
            return Vec::new();
        }
    };
    let mut secrets = Vec::new();
    for entry in entries.flatten().filter(visible) {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let mut data = SecretData::new();
        for file in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            if !visible(&file) || !file.path().is_file() {
                continue;
            }
            match std::fs::read(file.path()) {
                Ok(bytes) => {
                    data.insert(file.file_name().to_string_lossy().into_owned(), bytes);
                }
                Err(e) => {
                    tracing::warn!(file = %file.path().display(), error = %e, "cannot read a secret file")
                }
            }
        }
        secrets.push((entry.file_name().to_string_lossy().into_owned(), data));
    }
    secrets.sort_by(|a, b| a.0.cmp(&b.0));
    secrets
}

/// Loads routes from files and publishes compiled snapshots.
pub struct FileRoutes {
    source: FileSource,
    backends: Backends,
    /// `--secret-dir`, read at every reload.
    secret_dir: Option<PathBuf>,
    published: Arc<Published>,
    version: u64,
    /// What the last published snapshot was built from, to skip no-op reloads.
    fingerprint: String,
    last_verdicts: HashMap<RouteKey, Verdict>,
}

impl FileRoutes {
    /// Reads `path` once; fails if the path itself cannot be read.
    pub fn load(
        path: PathBuf,
        backends: Backends,
        secret_dir: Option<PathBuf>,
        published: Arc<Published>,
    ) -> Result<FileRoutes, SourceError> {
        let mut routes = FileRoutes {
            source: FileSource::new(path),
            backends,
            secret_dir,
            published,
            version: 0,
            fingerprint: String::new(),
            last_verdicts: HashMap::new(),
        };
        routes.source.reload(Timestamp::now())?;
        routes.publish();
        Ok(routes)
    }

    /// Re-reads the files and publishes a new snapshot if anything changed.
    pub fn reload(&mut self) {
        let started = std::time::Instant::now();
        match self.source.reload(Timestamp::now()) {
            Ok(()) => {
                if self.publish() {
                    self.published
                        .metrics()
                        .snapshot_apply_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
            }
            Err(e) => tracing::error!(error = %e, "reload failed; the last snapshot keeps serving"),
        }
    }

    /// Compiles and publishes what the files declare, unless it is what already serves.
    /// Returns whether a snapshot was published.
    fn publish(&mut self) -> bool {
        let declared = self.source.routes();
        let problems = self.source.problems();
        let routes: Vec<_> = declared.into_iter().map(|r| r.route).collect();
        let secrets = self
            .secret_dir
            .as_deref()
            .map(read_secrets)
            .unwrap_or_default();
        let fingerprint = format!(
            "{}{:x}",
            serde_json::to_string(&(&routes, &problems)).unwrap_or_default(),
            digest(&secrets)
        );
        if self.version > 0 && fingerprint == self.fingerprint {
            return false;
        }
        self.fingerprint = fingerprint;
        for p in &problems {
            tracing::warn!(
                file = %p.source,
                line = p.line,
                error = %p.message,
                "route file does not parse; the routes it last declared keep serving"
            );
        }
        // One operator owns every file here, so a Secret serves routes of any namespace.
        let mut backends = self.backends.clone();
        let namespaces: std::collections::BTreeSet<&str> = routes
            .iter()
            .map(|r| r.metadata.namespace.as_deref().unwrap_or("default"))
            .collect();
        for (name, data) in &secrets {
            for namespace in &namespaces {
                backends.insert_secret(namespace, name, data.clone());
            }
        }
        let compiled = compile(&routes, &backends);
        self.log_changes(&compiled.verdicts);
        self.version += 1;
        let snapshot = Snapshot::new(self.version, compiled, problems);
        tracing::info!(
            version = snapshot.version,
            routes = snapshot.table.len(),
            "snapshot applied"
        );
        self.published.publish(snapshot);
        true
    }

    fn log_changes(&mut self, verdicts: &[Verdict]) {
        let mut next = HashMap::new();
        for v in verdicts {
            if self.last_verdicts.get(&v.key) != Some(v) {
                for c in v.conditions.iter().filter(|c| c.type_ == condition::READY) {
                    if c.status {
                        tracing::info!(route = %v.key, "route ready");
                    } else {
                        tracing::warn!(route = %v.key, reason = c.reason, message = %c.message, "route not ready");
                    }
                }
                for w in &v.warnings {
                    tracing::warn!(route = %v.key, "{w}");
                }
            }
            next.insert(v.key.clone(), v.clone());
        }
        for gone in self.last_verdicts.keys().filter(|k| !next.contains_key(*k)) {
            tracing::info!(route = %gone, "route removed");
        }
        self.last_verdicts = next;
    }
}

/// A digest of Secrets' contents, to tell a changed Secret from an unrelated file event.
fn digest(secrets: &[(String, SecretData)]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    secrets.hash(&mut hasher);
    hasher.finish()
}

/// Watches `path` (a file or a directory) and sends a message on every change. The watcher
/// stops when the returned value is dropped.
fn watch(
    path: &Path,
    tx: mpsc::UnboundedSender<()>,
) -> Result<notify::RecommendedWatcher, StandaloneError> {
    // Editors replace a file by renaming a new one over it, which ends a watch on the file
    // itself; watching its directory survives that.
    let dir = if path.is_dir() {
        path.to_owned()
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned()
    };
    watcher(&dir, RecursiveMode::NonRecursive, tx)
}

/// Watches the directory tree `dir` (a mounted Secret's files change by swapping a `..data`
/// link inside its directory, one level down) and sends a message on every change.
fn watch_tree(
    dir: &Path,
    tx: mpsc::UnboundedSender<()>,
) -> Result<notify::RecommendedWatcher, StandaloneError> {
    watcher(dir, RecursiveMode::Recursive, tx)
}

fn watcher(
    dir: &Path,
    mode: RecursiveMode,
    tx: mpsc::UnboundedSender<()>,
) -> Result<notify::RecommendedWatcher, StandaloneError> {
    let watch_err = |source| StandaloneError::Watch {
        path: dir.to_owned(),
        source,
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })
    .map_err(watch_err)?;
    watcher.watch(dir, mode).map_err(watch_err)?;
    Ok(watcher)
}

/// Runs standalone mode until SIGTERM/SIGINT, then shuts down gracefully.
pub async fn run(args: StandaloneArgs) -> Result<(), StandaloneError> {
    let stop = termination().map_err(StandaloneError::Signals)?;
    let published = Published::new(Metrics::new());
    let mut routes = FileRoutes::load(
        args.routes.clone(),
        backends(&args.services),
        args.secret_dir.clone(),
        published.clone(),
    )?;
    let server = Server::start(&args.serve, published).await?;

    let (tx, mut changes) = mpsc::unbounded_channel();
    let _watcher = watch(&args.routes, tx.clone())?;
    tracing::info!(path = %args.routes.display(), "watching route files");
    let _secret_watcher = match &args.secret_dir {
        Some(dir) => {
            let watcher = watch_tree(dir, tx)?;
            tracing::info!(path = %dir.display(), "watching secrets");
            Some(watcher)
        }
        None => None,
    };
    // Catch an edit made between the first load and the start of the watch.
    routes.reload();

    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(()) = changes.recv() => {
                // Let a burst of events settle, then reload once.
                tokio::time::sleep(DEBOUNCE).await;
                while changes.try_recv().is_ok() {}
                routes.reload();
            }
        }
    }
    server
        .shutdown(args.serve.shutdown_delay, args.serve.shutdown_grace)
        .await;
    Ok(())
}
