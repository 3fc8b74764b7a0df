//! Controller mode: routes from the API server (`source::kube`), served by the same proxy as
//! standalone mode on every replica; the replica holding the Lease (`leader`) writes status
//! and Events back on the routes (`report`).

pub mod deployment;
pub mod leader;
pub mod report;

use std::time::Duration;

use tokio::sync::watch;

use crate::config::{ControllerArgs, ShutdownFlagsError};
use crate::metrics::Metrics;
use crate::server::{BindError, Server, termination};
use crate::snapshot::Published;
use crate::source::kube::{KubeRoutes, KubeSourceError};
use deployment::{Outlook, OwnDeployment};
use leader::{LeaderError, Leadership, LeaseSettings};
use report::StatusReporter;

/// How long shutdown waits for the Lease to be given up.
const RESIGN_WITHIN: Duration = Duration::from_secs(5);
/// How long the last replica may take to read its Deployment and mark the routes stopped,
/// before it gives up the Lease.
const LAST_WORDS_WITHIN: Duration = Duration::from_secs(3);

/// Why controller mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// No usable kubeconfig or in-cluster configuration. Not a `#[source]`: the message
    /// says it.
    #[error(
        "cannot configure a Kubernetes client: {}; set KUBECONFIG or run in a cluster",
        crate::apierror::brief(.0)
    )]
    Config(kube::Error),
    /// The routes cannot be listed.
    #[error(transparent)]
    Source(#[from] KubeSourceError),
    /// The Lease cannot be used.
    #[error(transparent)]
    Leader(#[from] LeaderError),
    /// A listener cannot be opened.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The signal handlers cannot be installed.
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signals(std::io::Error),
    /// The shutdown flags contradict each other.
    #[error(transparent)]
    Flags(#[from] ShutdownFlagsError),
}

/// Runs controller mode until SIGTERM/SIGINT, then gives up the Lease and shuts down
/// gracefully.
pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    let plan = args.serve.shutdown()?;
    let stop = termination().map_err(ControllerError::Signals)?;
    let client = kube::Client::try_default()
        .await
        .map_err(ControllerError::Config)?;
    let published = Published::new(Metrics::new());
    let routes = KubeRoutes::connect(client.clone(), &args.namespaces, published.clone()).await?;
    let identity = args.identity();
    let lease = LeaseSettings {
        name: args.lease_name.clone(),
        namespace: args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned()),
        identity: identity.clone(),
        duration: args.lease_duration,
    };
    let deployment = args
        .deployment
        .as_deref()
        .map(|name| OwnDeployment::new(client.clone(), &lease.namespace, name));
    let leadership = Leadership::campaign(
        client.clone(),
        &lease,
        published.metrics().leader.clone(),
        deployment.clone(),
    )
    .await?;
    tracing::info!(identity, lease = %format!("{}/{}", lease.namespace, lease.name), "competing for the status lease");
    // Before the watches run: every snapshot they publish revokes what it no longer admits.
    let server = Server::start(&args.serve, published.clone()).await?;

    let (versions, on_publish) = watch::channel(0);
    let last_words =
        StatusReporter::new(client.clone(), routes.store(), published.clone(), &identity);
    let reporter = StatusReporter::new(client.clone(), routes.store(), published, &identity);
    let report = tokio::spawn(reporter.run(on_publish, leadership.subscribe()));
    let watch = tokio::spawn(routes.run(versions));
    stop.await;
    leadership.wind_down();
    watch.abort();
    report.abort();
    // No status or Event write may follow the release: the reporter goes first.
    let _ = watch.await;
    let _ = report.await;
    let mut leader = leadership.subscribe();
    let leading = *leader.borrow_and_update();
    let leave = async {
        if let (true, Some(deployment)) = (leading, &deployment) {
            let last_words = say_last_words(deployment, &last_words);
            // Only the holder writes status: a claim that lapses meanwhile ends the writes.
            tokio::select! {
                done = tokio::time::timeout(LAST_WORDS_WITHIN, last_words) => if done.is_err() {
                    tracing::warn!("marking the routes stopped timed out");
                },
                _ = leader.wait_for(|l| !*l) => {
                    tracing::warn!("lost the lease while marking the routes stopped");
                }
            }
        }
        leadership.resign(RESIGN_WITHIN).await;
    };
    tokio::join!(leave, server.shutdown(plan),);
    Ok(())
}

/// When `deployment` wants no replicas (it is gone, being deleted or scaled to 0), this is
/// the last one: writes every route as stopped. In a rolling update or a scale-down other
/// replicas remain and serve, so the routes stay as they are.
async fn say_last_words(deployment: &OwnDeployment, reporter: &StatusReporter) {
    let message = match deployment.outlook().await {
        Outlook::Ends(message) => message,
        Outlook::Continues => return,
        Outlook::Unknown(e) => {
            tracing::warn!(error = %e, deployment = %deployment.path(), "cannot read the Deployment (it needs get on it); assuming other replicas remain");
            return;
        }
    };
    tracing::info!(%message, "last replica: marking the routes stopped");
    if !reporter.report_stopped(&message).await {
        tracing::warn!("some routes could not be marked stopped");
    }
}
