//! Routes from the Kubernetes API server: a reflector over `WebSocketRoute` objects feeds the
//! same pure compile step as standalone mode; each change publishes a new snapshot and writes
//! the routes' status conditions with server-side apply, only when they change.

use std::sync::Arc;

use futures_util::StreamExt;
use jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};

use crate::api::WebSocketRoute;
use crate::compile::{Backends, Verdict, compile, key_of};
use crate::proxy::Gateway;
use crate::snapshot::Snapshot;

/// The field manager that owns the status wsgate writes.
pub const FIELD_MANAGER: &str = "wsgate";

/// Why the controller cannot watch routes.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// The CRD is not installed (or the API server refused to list routes).
    #[error(
        "cannot list WebSocketRoutes: {0}; install the CRD with `kubectl apply -f crds/websocketroutes.wsgate.dev.yaml` (or `wsgate crd | kubectl apply -f -`) and check RBAC"
    )]
    NoCrd(kube::Error),
}

/// Watches routes in `namespace` (all namespaces when `None`).
pub struct KubeRoutes {
    client: Client,
    api: Api<WebSocketRoute>,
    gateway: Arc<Gateway>,
}

impl KubeRoutes {
    /// Checks that routes can be listed (the CRD is installed) before serving.
    pub async fn connect(
        client: Client,
        namespace: Option<&str>,
        gateway: Arc<Gateway>,
    ) -> Result<KubeRoutes, KubeSourceError> {
        let api: Api<WebSocketRoute> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        api.list(&ListParams::default().limit(1))
            .await
            .map_err(KubeSourceError::NoCrd)?;
        Ok(KubeRoutes {
            client,
            api,
            gateway,
        })
    }

    /// Runs until the watch stream ends: the first snapshot is published once the initial
    /// list is complete, then one per change. Watch errors are retried with backoff; the
    /// last snapshot keeps serving meanwhile.
    pub async fn run(self) {
        let (store, writer) = reflector::store();
        let stream = reflector::reflector(
            writer,
            watcher::watcher(self.api.clone(), watcher::Config::default()).default_backoff(),
        );
        futures_util::pin_mut!(stream);
        let mut listed = false;
        let mut version = 0;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::InitDone) => listed = true,
                Ok(Event::Init | Event::InitApply(_)) => continue,
                Ok(Event::Apply(_) | Event::Delete(_)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "watching WebSocketRoutes failed; retrying, the last snapshot keeps serving");
                    continue;
                }
            }
            if !listed {
                continue;
            }
            version += 1;
            self.apply(&store, version).await;
        }
    }

    async fn apply(&self, store: &Store<WebSocketRoute>, version: u64) {
        let routes: Vec<WebSocketRoute> = store.state().iter().map(|r| (**r).clone()).collect();
        let compiled = compile(&routes, &Backends::cluster());
        let verdicts = compiled.verdicts.clone();
        self.gateway
            .publish(Snapshot::new(version, compiled, Vec::new()));
        // Status says what the data plane now serves, so it is written after the swap.
        for (route, verdict) in routes.iter().zip(&verdicts) {
            if let Err(e) = self.write_status(route, verdict).await {
                tracing::warn!(route = %verdict.key, error = %e, "writing status failed");
            }
        }
    }

    /// Server-side applies the route's conditions on the status subresource, unless they
    /// are what the object already shows.
    async fn write_status(
        &self,
        route: &WebSocketRoute,
        verdict: &Verdict,
    ) -> Result<(), kube::Error> {
        let previous = route.status.as_ref();
        let conditions = crate::status::conditions(
            verdict,
            previous
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default(),
            Timestamp::now(),
        );
        if previous.is_some_and(|s| {
            s.conditions == conditions && s.observed_generation == verdict.generation
        }) {
            return Ok(());
        }
        let key = key_of(route);
        let patch = serde_json::json!({
            "apiVersion": WebSocketRoute::api_version(&()),
            "kind": WebSocketRoute::kind(&()),
            "status": {
                "observedGeneration": verdict.generation,
                "conditions": conditions,
            },
        });
        Api::<WebSocketRoute>::namespaced(self.client.clone(), &key.namespace)
            .patch_status(
                &key.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map(|_| ())
    }
}
