//! Routes from the Kubernetes API server: reflectors over `WebSocketRoute`, `Service` and
//! `EndpointSlice` objects feed the same pure compile step as standalone mode; each change publishes a new snapshot and writes
//! the routes' status conditions with server-side apply, only when they change.

use std::sync::Arc;

use futures_util::StreamExt;
use jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
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

/// Watches routes, Services and EndpointSlices in `namespace` (all namespaces when `None`).
pub struct KubeRoutes {
    client: Client,
    namespace: Option<String>,
    gateway: Arc<Gateway>,
}

impl KubeRoutes {
    /// Checks that routes can be listed (the CRD is installed) before serving.
    pub async fn connect(
        client: Client,
        namespace: Option<&str>,
        gateway: Arc<Gateway>,
    ) -> Result<KubeRoutes, KubeSourceError> {
        let routes = KubeRoutes {
            client,
            namespace: namespace.map(str::to_owned),
            gateway,
        };
        routes
            .api::<WebSocketRoute>()
            .list(&ListParams::default().limit(1))
            .await
            .map_err(KubeSourceError::NoCrd)?;
        Ok(routes)
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// Runs until the watch streams end: the first snapshot is published once every initial
    /// list is complete, then one per change. Watch errors are retried with backoff; the
    /// last snapshot keeps serving meanwhile.
    pub async fn run(self) {
        let config = watcher::Config::default();
        let (routes, routes_writer) = reflector::store();
        let (services, services_writer) = reflector::store();
        let (slices, slices_writer) = reflector::store();
        let route_events = reflector::reflector(
            routes_writer,
            watcher::watcher(self.api::<WebSocketRoute>(), config.clone()).default_backoff(),
        )
        .map(|e| (0, e.map(|e| classify(&e))));
        let service_events = reflector::reflector(
            services_writer,
            watcher::watcher(self.api::<Service>(), config.clone()).default_backoff(),
        )
        .map(|e| (1, e.map(|e| classify(&e))));
        let slice_events = reflector::reflector(
            slices_writer,
            watcher::watcher(self.api::<EndpointSlice>(), config).default_backoff(),
        )
        .map(|e| (2, e.map(|e| classify(&e))));
        let events = futures_util::stream::select(
            futures_util::stream::select(route_events, service_events),
            slice_events,
        );
        futures_util::pin_mut!(events);
        // Which of routes, Services and EndpointSlices have finished their initial list.
        let mut listed = [false; 3];
        let mut version = 0;
        // Each event arrives as (which watch, what it means); the objects are in the stores.
        while let Some((i, outcome)) = events.next().await {
            match outcome {
                Ok(Some(true)) => listed[i] = true,
                Ok(Some(false)) => {}
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "watch failed; retrying, the last snapshot keeps serving");
                    continue;
                }
            }
            if listed.iter().all(|l| *l) {
                version += 1;
                self.apply(
                    &routes,
                    &Backends::from_cluster(&owned(&services), &owned(&slices)),
                    version,
                )
                .await;
            }
        }
    }

    async fn apply(&self, store: &Store<WebSocketRoute>, backends: &Backends, version: u64) {
        let routes = owned(store);
        let compiled = compile(&routes, backends);
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

/// `Some(true)` when an initial list completed, `Some(false)` for a change to apply, `None`
/// for events inside an initial list.
fn classify<K>(event: &Event<K>) -> Option<bool> {
    match event {
        Event::InitDone => Some(true),
        Event::Init | Event::InitApply(_) => None,
        Event::Apply(_) | Event::Delete(_) => Some(false),
    }
}

fn owned<K: Clone + kube::runtime::reflector::Lookup>(store: &Store<K>) -> Vec<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.state().iter().map(|k| (**k).clone()).collect()
}
