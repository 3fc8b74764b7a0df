//! `wsgate scale-to-zero`: scales the gateway's Deployment to 0 and waits until its pods are
//! gone. The last replica to stop then marks every route `GatewayStopped` while it still
//! may write status, which is why the chart runs this as a pre-delete hook: `helm
//! uninstall` alone deletes the replicas' RBAC together with their Deployment, seconds
//! before they get SIGTERM.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};

use crate::apierror::brief;

/// How often the pods are counted while waiting.
const POLL: Duration = Duration::from_secs(1);

/// Why the Deployment could not be brought to zero pods.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// No credentials (neither in-cluster nor a kubeconfig).
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(#[from] kube::Error),
    /// An API call failed.
    #[error("{what} {namespace}/{name}: {message}")]
    Api {
        /// What was asked.
        what: &'static str,
        /// The Deployment's namespace.
        namespace: String,
        /// The Deployment's name.
        name: String,
        /// The API server's answer.
        message: String,
    },
    /// Pods were still there when the patience ran out.
    #[error(
        "{left} pod(s) of the Deployment {namespace}/{name} still there after {}s; they are still draining (see terminationGracePeriodSeconds), or the node does not stop them",
        patience.as_secs()
    )]
    Timeout {
        /// The Deployment's namespace.
        namespace: String,
        /// The Deployment's name.
        name: String,
        /// Pods left.
        left: usize,
        /// How long it waited.
        patience: Duration,
    },
}

/// What happened, for the one line the command prints.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// There was no such Deployment: nothing to stop.
    NoDeployment,
    /// Scaled to 0; this many pods were running and are gone.
    Drained(usize),
}

/// Scales the Deployment `name` (in `namespace`, else the client's) to 0 and waits up to
/// `patience` until none of its pods is left.
pub async fn run(
    name: &str,
    namespace: Option<&str>,
    patience: Duration,
) -> Result<Stopped, ScaleError> {
    let client = Client::try_default().await?;
    let namespace = namespace.map_or_else(|| client.default_namespace().to_owned(), str::to_owned);
    let failed = |what: &'static str, e: kube::Error| ScaleError::Api {
        what,
        namespace: namespace.clone(),
        name: name.to_owned(),
        message: brief(&e),
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let Some(deployment) = deployments
        .get_opt(name)
        .await
        .map_err(|e| failed("reading the Deployment", e))?
    else {
        return Ok(Stopped::NoDeployment);
    };
    let selector = deployment
        .spec
        .and_then(|s| s.selector.match_labels)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let count = || async {
        pods.list(&ListParams::default().labels(&selector))
            .await
            .map(|l| l.items.len())
            .map_err(|e| failed("listing the pods of the Deployment", e))
    };
    let running = count().await?;
    deployments
        .patch_scale(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
        )
        .await
        .map_err(|e| failed("scaling to 0 the Deployment", e))?;
    let deadline = Instant::now() + patience;
    loop {
        let left = count().await?;
        if left == 0 {
            return Ok(Stopped::Drained(running));
        }
        if Instant::now() >= deadline {
            return Err(ScaleError::Timeout {
                namespace,
                name: name.to_owned(),
                left,
                patience,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}
