//! `wsgate scale-to-zero`: scales the gateway's Deployment to 0 and waits until its pods are
//! gone. The last replica to stop then marks every route `GatewayStopped` while it still
//! may write status, which is why the chart runs this as a pre-delete hook: `helm
//! uninstall` alone deletes the replicas' RBAC together with their Deployment, seconds
//! before they get SIGTERM.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::Selector;
use kube::{Api, Client};

use crate::apierror::brief;

/// How often the pods are counted while waiting.
const POLL: Duration = Duration::from_secs(1);

/// Why the Deployment could not be brought to zero pods.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// No client configuration (neither in-cluster nor a kubeconfig).
    #[error("no Kubernetes client configuration ({0}); set KUBECONFIG or run in a cluster")]
    Config(String),
    /// The Deployment's selector cannot be turned into a pod query, or selects every pod.
    #[error("the Deployment {namespace}/{name} has a selector that cannot tell its pods: {why}")]
    Selector {
        /// The Deployment's namespace.
        namespace: String,
        /// The Deployment's name.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// An API call failed.
    #[error(
        "{what} {namespace}/{name}: {message}; it needs get on the Deployment, patch on its deployments/scale and list on pods in {namespace}"
    )]
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
    let client = Client::try_default()
        .await
        .map_err(|e| ScaleError::Config(brief(&e)))?;
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
    let selector = Selector::try_from(deployment.spec.unwrap_or_default().selector)
        .map_err(|e| e.to_string())
        .and_then(|s| match s.selects_all() {
            // It would count every pod of the namespace, this command's own among them.
            true => Err("it is empty".to_owned()),
            false => Ok(s),
        })
        .map_err(|why| ScaleError::Selector {
            namespace: namespace.clone(),
            name: name.to_owned(),
            why,
        })?;
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let query = ListParams::default().labels_from(&selector);
    let count = || async {
        pods.list(&query)
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
