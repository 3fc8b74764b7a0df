//! The Deployment that runs the replicas (`--deployment`): read to tell whether any replica
//! will remain once this one stops, so the last one can say the routes are not served and
//! no stopping replica recreates a Lease that `helm uninstall` deleted.

use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, Client};

/// The replicas' Deployment, by name.
#[derive(Clone)]
pub struct OwnDeployment {
    api: Api<Deployment>,
    namespace: String,
    name: String,
}

/// What the Deployment says about the replicas' future.
#[derive(Debug)]
pub enum Outlook {
    /// It still wants replicas (running, or in a rolling update or a scale-down).
    Continues,
    /// It wants none: no replica remains. The message says why, naming the Deployment.
    Ends(String),
    /// It cannot be read.
    Unknown(kube::Error),
}

impl OwnDeployment {
    /// The Deployment `name` in `namespace`.
    pub fn new(client: Client, namespace: &str, name: &str) -> OwnDeployment {
        OwnDeployment {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// Reads the Deployment: gone, being deleted or scaled to 0 means no replica remains.
    pub async fn outlook(&self) -> Outlook {
        let why = match self.api.get_opt(&self.name).await {
            Ok(None) => "was deleted",
            Ok(Some(d)) if d.metadata.deletion_timestamp.is_some() => "is being deleted",
            Ok(Some(d)) if d.spec.as_ref().and_then(|s| s.replicas) == Some(0) => "was scaled to 0",
            Ok(Some(_)) => return Outlook::Continues,
            Err(e) => return Outlook::Unknown(e),
        };
        Outlook::Ends(format!(
            "no wsgate replica is running (the Deployment {}/{} {why}); the route is not served",
            self.namespace, self.name
        ))
    }

    /// `namespace/name`, for logs.
    pub fn path(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}
