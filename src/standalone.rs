//! Standalone mode's wiring: routes from the local disk ([`crate::source::local`]), no
//! cluster, served until a signal; reloads when the files change, and a file that stops
//! parsing keeps serving what it last declared.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{ShutdownFlagsError, StandaloneArgs};
use crate::metrics::Metrics;
use crate::server::{BindError, Server, termination};
use crate::snapshot::Published;
use crate::source::file::SourceError;
use crate::source::local::{FileRoutes, WatchError, backends, watch, watch_tree};

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
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// The shutdown flags contradict each other.
    #[error(transparent)]
    Flags(#[from] ShutdownFlagsError),
}

/// Runs standalone mode until SIGTERM/SIGINT, then shuts down gracefully.
pub async fn run(args: StandaloneArgs) -> Result<(), StandaloneError> {
    let plan = args.serve.shutdown()?;
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
    server.shutdown(plan).await;
    Ok(())
}
