//! Leadership among replicas: one `coordination.k8s.io` Lease; only its holder writes route
//! status and Events, every replica serves traffic. Built on `kube-lease-manager`.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which Lease to hold, and as whom.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// The Lease's name.
    pub name: String,
    /// The Lease's namespace.
    pub namespace: String,
    /// This replica's holder identity (pod name, or host name and process id).
    pub identity: String,
    /// How long a holder's claim lasts without renewal; it renews a third of this early.
    pub duration: Duration,
}

/// Why the Lease could not be set up.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot use Lease {namespace}/{name}: {source}; grant get/create/patch on leases.coordination.k8s.io in {namespace}, or pick another with --lease-namespace"
)]
pub struct LeaderError {
    name: String,
    namespace: String,
    #[source]
    source: LeaseManagerError,
}

/// A running campaign for the Lease.
pub struct Leadership {
    is_leader: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

impl Leadership {
    /// Starts competing for the Lease (creating it if needed) and keeps renewing it while
    /// held. A holder that cannot reach the API server stays holder until it can again.
    pub async fn campaign(
        client: Client,
        settings: &LeaseSettings,
    ) -> Result<Leadership, LeaderError> {
        let seconds = settings.duration.as_secs().max(3);
        let manager = LeaseManagerBuilder::new(client, &settings.name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_duration(seconds)
            .with_grace(seconds / 3)
            .build()
            .await
            .map_err(|source| LeaderError {
                name: settings.name.clone(),
                namespace: settings.namespace.clone(),
                source,
            })?;
        let (is_leader, task) = manager.watch().await;
        Ok(Leadership { is_leader, task })
    }

    /// Whether this replica holds the Lease, updated as that changes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.is_leader.clone()
    }

    /// Gives the Lease up, if held, once every subscriber is gone; waits at most `within`.
    pub async fn resign(self, within: Duration) {
        drop(self.is_leader);
        match tokio::time::timeout(within, self.task).await {
            Ok(Ok(Ok(_))) => tracing::debug!("lease released"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the lease failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "lease task failed"),
            Err(_) => tracing::warn!("lease not released in time; it expires on its own"),
        }
    }
}
