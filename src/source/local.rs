//! Routes from the local disk (standalone mode): route files and a directory of Secrets,
//! watched; each change is compiled and published. `--service` mappings stand in for the
//! cluster's Services. The file-parsing half is [`super::file`]; this is the half that
//! compiles and publishes, as [`super::kube`] is for the API server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jiff::Timestamp;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::compile::{Backends, Compiler, SecretData, Verdict, condition};
use crate::memo::digest;
use crate::route::{RouteKey, Target};
use crate::snapshot::{Published, Snapshot};
use crate::source::file::{FileSource, SourceError};

/// A `--service NAME.NAMESPACE=HOST:PORT` mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceMapping {
    /// The Service's name.
    pub name: String,
    /// The Service's namespace.
    pub namespace: String,
    /// Where to connect instead.
    pub target: Target,
}

/// A path that cannot be watched for changes.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path} for changes: {source}")]
pub struct WatchError {
    /// The watched path.
    path: PathBuf,
    /// The watcher's error.
    source: notify::Error,
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
    /// A digest of the Secrets the last published snapshot was built with, to skip reloads
    /// that changed nothing (the route files tell for themselves).
    secrets: u64,
    compiler: Compiler,
    /// Each route's last verdict, and the version of the snapshot it was last in.
    last_verdicts: HashMap<RouteKey, (Arc<Verdict>, u64)>,
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
            secrets: 0,
            compiler: Compiler::default(),
            last_verdicts: HashMap::new(),
        };
        routes.source.reload(Timestamp::now())?;
        routes.publish(true);
        Ok(routes)
    }

    /// Re-reads the files and publishes a new snapshot if anything changed.
    pub fn reload(&mut self) {
        let started = std::time::Instant::now();
        match self.source.reload(Timestamp::now()) {
            Ok(changed) => {
                if self.publish(changed) {
                    self.published
                        .metrics()
                        .snapshot_apply_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
            }
            Err(e) => tracing::error!(error = %e, "reload failed; the last snapshot keeps serving"),
        }
    }

    /// Compiles and publishes what the files declare, unless neither they (`routes_changed`)
    /// nor the Secrets changed since the last snapshot. Returns whether one was published.
    fn publish(&mut self, routes_changed: bool) -> bool {
        let secrets = self
            .secret_dir
            .as_deref()
            .map(read_secrets)
            .unwrap_or_default();
        let secrets_digest = digest(&secrets);
        if self.version > 0 && !routes_changed && secrets_digest == self.secrets {
            return false;
        }
        self.secrets = secrets_digest;
        let problems = self.source.problems();
        let routes: Vec<_> = self
            .source
            .routes()
            .into_iter()
            .map(|r| r.route.clone())
            .collect();
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
        let compiled = self.compiler.compile(&routes, &backends);
        self.version += 1;
        self.log_changes(&compiled.verdicts);
        let snapshot = Snapshot::new(self.version, compiled, problems);
        tracing::info!(
            version = snapshot.version,
            routes = snapshot.table.len(),
            "snapshot applied"
        );
        self.published.publish(snapshot);
        true
    }

    /// Logs the verdicts that changed since the last snapshot, and the routes that went.
    /// Runs after the version is counted up (it marks which routes are still there).
    fn log_changes(&mut self, verdicts: &[Arc<Verdict>]) {
        let version = self.version;
        for v in verdicts {
            let known = self.last_verdicts.get_mut(&v.key);
            // The compiler hands back the same verdict when it did not change.
            let same = known
                .as_ref()
                .is_some_and(|(last, _)| Arc::ptr_eq(last, v) || last == v);
            match known {
                Some(known) => *known = (v.clone(), version),
                None => {
                    self.last_verdicts
                        .insert(v.key.clone(), (v.clone(), version));
                }
            }
            if !same {
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
        }
        self.last_verdicts.retain(|key, (_, seen)| {
            let kept = *seen == version;
            if !kept {
                tracing::info!(route = %key, "route removed");
            }
            kept
        });
    }
}

/// Watches `path` (a file or a directory) and sends a message on every change. The watcher
/// stops when the returned value is dropped.
pub fn watch(
    path: &Path,
    tx: mpsc::UnboundedSender<()>,
) -> Result<notify::RecommendedWatcher, WatchError> {
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
pub fn watch_tree(
    dir: &Path,
    tx: mpsc::UnboundedSender<()>,
) -> Result<notify::RecommendedWatcher, WatchError> {
    watcher(dir, RecursiveMode::Recursive, tx)
}

/// Watches `dir` in `mode`, sending a message on every event that is not a mere access.
fn watcher(
    dir: &Path,
    mode: RecursiveMode,
    tx: mpsc::UnboundedSender<()>,
) -> Result<notify::RecommendedWatcher, WatchError> {
    let watch_err = |source| WatchError {
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
