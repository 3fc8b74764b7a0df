//! Controller mode: routes from the API server (`source::kube`), served by the same proxy as
//! standalone mode, with status written back to each route.

use crate::config::ControllerArgs;
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::server::{BindError, Server, termination};
use crate::source::kube::{KubeRoutes, KubeSourceError};

/// Why controller mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("cannot configure a Kubernetes client: {0}; set KUBECONFIG or run in a cluster")]
    Config(#[source] kube::Error),
    /// The routes cannot be listed.
    #[error(transparent)]
    Source(#[from] KubeSourceError),
    /// A listener cannot be opened.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The signal handlers cannot be installed.
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs controller mode until SIGTERM/SIGINT, then shuts down gracefully.
pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    let stop = termination().map_err(ControllerError::Signals)?;
    let client = kube::Client::try_default()
        .await
        .map_err(ControllerError::Config)?;
    let gateway = Gateway::new(args.serve.proxy_config(), Metrics::new());
    let routes = KubeRoutes::connect(client, args.namespace.as_deref(), gateway.clone()).await?;
    let server = Server::start(args.serve.listen, args.serve.admin, gateway).await?;
    let watch = tokio::spawn(routes.run());
    stop.await;
    watch.abort();
    server
        .shutdown(args.serve.shutdown_delay, args.serve.shutdown_grace)
        .await;
    Ok(())
}
