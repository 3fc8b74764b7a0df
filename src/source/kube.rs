//! Routes from the Kubernetes API server: reflectors over `WebSocketRoute`, `Service` and
//! `EndpointSlice` objects, and over the metadata of `Secret`s, feed the same pure compile
//! step as standalone mode. Only the Secrets routes name are read in full (fetched when their
//! resourceVersion changes), so the controller never holds other Secrets' data. Every change
//! that can alter a verdict publishes a new snapshot; changes that cannot (a route's status,
//! a Service no route names) are ignored. Writing status back is `controller::report`'s job.
//! How the watches ride out API server trouble is in `resync`.

mod resync;

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::BoxStream;
use futures_util::{FutureExt, Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::api::WebSocketRoute;
use crate::compile::{Backends, Compiler, key_of};
use crate::route::RouteKey;
use crate::snapshot::{Published, Snapshot};
use resync::{Freshness, Trouble};

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Why the controller cannot watch routes.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// The API server does not know the WebSocketRoute resource.
    #[error(
        "the API server has no WebSocketRoute resource: install the CRD with `kubectl apply -f crds/websocketroutes.wsgate.dev.yaml` (or `wsgate crd | kubectl apply -f -`)"
    )]
    NoCrd,
    /// The API server did not accept the credentials.
    #[error(
        "the API server did not accept the credentials (401 {0}): check the user and token of the kubeconfig in use (KUBECONFIG), or the pod's ServiceAccount token"
    )]
    Unauthorized(String),
    /// The credentials may not list routes.
    #[error(
        "not allowed to list WebSocketRoutes{scope}: {message}; grant get/list/watch on websocketroutes.wsgate.dev (see the README's RBAC list){anonymous}"
    )]
    Forbidden {
        /// ` in NAMESPACE`, or empty for all namespaces.
        scope: String,
        /// The API server's message, which names the user.
        message: String,
        /// A hint when the request carried no credentials at all.
        anonymous: &'static str,
    },
    /// Anything else: the API server cannot be reached, or failed. Not a `#[source]`: the
    /// message already says it, briefly.
    #[error("cannot list WebSocketRoutes: {}", crate::apierror::brief(.0))]
    Unreachable(kube::Error),
}

impl KubeSourceError {
    /// What the error from listing routes in `namespace` (all when `None`) means.
    fn of(error: kube::Error, namespace: Option<&str>) -> KubeSourceError {
        match error {
            kube::Error::Api(status) if status.code == 404 => KubeSourceError::NoCrd,
            kube::Error::Api(status) if status.code == 401 => {
                KubeSourceError::Unauthorized(status.message)
            }
            kube::Error::Api(status) if status.code == 403 => KubeSourceError::Forbidden {
                scope: namespace.map(|ns| format!(" in {ns}")).unwrap_or_default(),
                anonymous: if status.message.contains("system:anonymous") {
                    "; the request carried no credentials (system:anonymous): the kubeconfig has no user token or certificate"
                } else {
                    ""
                },
                message: status.message,
            },
            other => KubeSourceError::Unreachable(other),
        }
    }
}

/// Helm keeps every release's manifests in Secrets of this type, often large; no route can
/// use one, so they are not watched.
const HELM_RELEASE_TYPE: &str = "helm.sh/release.v1";

/// Watches routes, Services, EndpointSlices and Secrets in the given namespaces (or all).
pub struct KubeRoutes {
    published: Arc<Published>,
    routes: Stores<WebSocketRoute>,
    services: Stores<Service>,
    slices: Stores<EndpointSlice>,
    /// Secrets' metadata only: which exist, and their resourceVersions.
    secrets: Stores<PartialObjectMeta<Secret>>,
    /// Fetches the Secrets routes name.
    client: Client,
    /// Every watch's events, merged; `Listed(i)` counts up to `watches`.
    events: BoxStream<'static, Change>,
    watches: usize,
}

/// One kind's objects as the watches last saw them: one store per watched namespace, since
/// each watch replaces its whole store when it relists.
pub struct Stores<K: reflector::Lookup<DynamicType = ()> + Clone + 'static>(Vec<Store<K>>);

impl<K: reflector::Lookup<DynamicType = ()> + Clone + 'static> Clone for Stores<K> {
    fn clone(&self) -> Self {
        Stores(self.0.clone())
    }
}

impl<K: reflector::Lookup<DynamicType = ()> + Clone + 'static> Stores<K> {
    /// The object `reference` names, if a watch has it.
    pub fn get(&self, reference: &ObjectRef<K>) -> Option<Arc<K>> {
        self.0.iter().find_map(|s| s.get(reference))
    }

    /// Every object, shared with the store rather than copied.
    fn shared(&self) -> Vec<Arc<K>> {
        self.0.iter().flat_map(|s| s.state()).collect()
    }

    /// Copies of the objects `keep` selects.
    fn owned_if(&self, keep: impl Fn(&K) -> bool) -> Vec<K> {
        self.0
            .iter()
            .flat_map(|s| s.state())
            .filter(|k| keep(k))
            .map(|k| (*k).clone())
            .collect()
    }
}

/// A referenced object's namespace and name (a Service or a Secret).
type ServiceKey = (String, String);

/// A route's uid and generation: they change when it is recreated or its spec changes.
type RouteVersion = (Option<String>, Option<i64>);

/// What one watch event means for the route table.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// The initial list of watch `0..3` is complete.
    Listed(usize),
    /// A route was written (with its uid and generation) or deleted (`None`); whether a
    /// compile needs it depends on what the routes were before.
    Route(RouteKey, Option<RouteVersion>),
    /// A Service or EndpointSlice of this Service changed, or the Secret of this name.
    Backend(ServiceKey),
    /// Secrets that could not be fetched are due to be tried again.
    Retry,
    /// Nothing a verdict depends on (a status write, a bookmark, initial-list items).
    Nothing,
}

impl KubeRoutes {
    /// Checks that routes can be listed in every namespace (the CRD is installed, RBAC
    /// allows it) and sets up the watches; `namespaces` empty means all namespaces.
    pub async fn connect(
        client: Client,
        namespaces: &[String],
        published: Arc<Published>,
    ) -> Result<KubeRoutes, KubeSourceError> {
        let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
            vec![None]
        } else {
            namespaces.iter().map(|n| Some(n.as_str())).collect()
        };
        for scope in &scopes {
            api::<WebSocketRoute>(&client, *scope)
                .list(&ListParams::default().limit(1))
                .await
                .map_err(|e| KubeSourceError::of(e, *scope))?;
        }
        let n = scopes.len();
        let all = watcher::Config::default();
        let fresh = Freshness::new(published.metrics().watch_staleness.clone());
        let (routes, route_events) = watch_kind(&client, &scopes, 0, &all, &fresh);
        let (services, service_events) = watch_kind(&client, &scopes, n, &all, &fresh);
        let (slices, slice_events) = watch_kind(&client, &scopes, 2 * n, &all, &fresh);
        let usable = watcher::Config::default().fields(&format!("type!={HELM_RELEASE_TYPE}"));
        // `PartialObjectMeta` makes it a metadata-only watch: no Secret's data is sent.
        let (secrets, secret_events) = watch_kind(&client, &scopes, 3 * n, &usable, &fresh);
        let events = futures_util::stream::select(
            futures_util::stream::select(route_events, service_events),
            futures_util::stream::select(slice_events, secret_events),
        )
        .boxed();
        Ok(KubeRoutes {
            published,
            routes,
            services,
            slices,
            secrets,
            client,
            events,
            watches: 4 * n,
        })
    }

    /// The routes as last seen by the watches (status included), for the status writer.
    pub fn store(&self) -> Stores<WebSocketRoute> {
        self.routes.clone()
    }

    /// Runs until the watch streams end: the first snapshot is published once every initial
    /// list is complete, then one per batch of relevant changes; each publication sends its
    /// version on `versions`. A failed watch relists after at most a second; the last
    /// snapshot keeps serving meanwhile.
    pub async fn run(self, versions: watch::Sender<u64>) {
        let KubeRoutes {
            published,
            routes: route_stores,
            services,
            slices,
            secrets,
            client,
            mut events,
            watches,
        } = self;
        let mut listed = vec![false; watches];
        let mut referenced: HashSet<ServiceKey> = HashSet::new();
        let mut fetched = SecretCache::default();
        let mut version = 0;
        let mut compiler = Compiler::default();
        let mut compiled_in = Duration::ZERO;
        let mut compiled_at = tokio::time::Instant::now();
        loop {
            // A Secret that could not be fetched is tried again after a pause, without waiting
            // for another change.
            let first = match fetched.retry {
                Some(pause) => tokio::select! {
                    event = events.next() => event,
                    () = tokio::time::sleep(pause) => Some(Change::Retry),
                },
                None => events.next().await,
            };
            let Some(first) = first else { break };
            let started = Instant::now();
            let mut relevant = false;
            // Take every event already waiting too, so a burst of changes compiles once.
            let mut next = Some(first);
            while let Some(change) = next.take() {
                next = events.next().now_or_never().flatten();
                relevant |= calls_for_compile(change, &mut listed, &referenced, &compiler);
            }
            if !relevant || !listed.iter().all(|l| *l) {
                continue;
            }
            // A burst (a thousand `kubectl apply`s) arrives as a stream of events, not at
            // once: a change soon after the last compile gathers what follows it until a
            // pause in proportion to that compile's cost has passed, so that compiling takes
            // at most a fifth of the time however fast changes come; a change after a quiet
            // spell compiles at once.
            let deadline = compiled_at + (compiled_in * GATHER_FACTOR).min(GATHER_MAX);
            while let Ok(Some(change)) = tokio::time::timeout_at(deadline, events.next()).await {
                // The batch compiles anyway; a list that completes meanwhile still counts.
                calls_for_compile(change, &mut listed, &referenced, &compiler);
            }
            let routes = route_stores.shared();
            referenced = references_of(&routes);
            // Only what routes name goes into the compile step.
            let named = |o: &dyn Watched| matches!(o.change(), Change::Backend(service) if referenced.contains(&service));
            let mut backends = Backends::from_cluster(
                &services.owned_if(|s| named(s)),
                &slices.owned_if(|s| named(s)),
            );
            let present = secrets.owned_if(|s| named(s));
            backends.insert_cluster_secrets(&fetched.refresh(&client, &present).await);
            version += 1;
            let compiling = Instant::now();
            let compiled = compiler.compile(&routes, &backends);
            compiled_in = compiling.elapsed();
            compiled_at = tokio::time::Instant::now();
            published.publish(Snapshot::new(version, compiled, Vec::new()));
            published
                .metrics()
                .snapshot_apply_seconds
                .observe(started.elapsed().as_secs_f64());
            tracing::debug!(version, routes = routes.len(), "snapshot published");
            versions.send_replace(version);
        }
    }
}

/// The pause after a compile before the next, as a multiple of that compile's time, and at
/// most: changes that arrive within it are gathered into one compile.
const GATHER_FACTOR: u32 = 4;
const GATHER_MAX: Duration = Duration::from_millis(250);

/// Whether `change` calls for a compile (recording a completed list in `listed`): a list
/// completed, a referenced backend changed, a Secret fetch is due again, or a route is not
/// as `compiler` last compiled it (it appeared, went, or has a new uid or generation). A
/// status write moves neither uid nor generation, so it costs one lookup, not a compile.
fn calls_for_compile(
    change: Change,
    listed: &mut [bool],
    referenced: &HashSet<ServiceKey>,
    compiler: &Compiler,
) -> bool {
    match change {
        Change::Listed(i) => {
            listed[i] = true;
            true
        }
        Change::Route(key, version) => {
            compiler.compiled(&key.namespace, &key.name).map(version_of) != version
        }
        Change::Backend(service) => referenced.contains(&service),
        Change::Retry => true,
        Change::Nothing => false,
    }
}

/// An `Api` for one namespace, or all of them.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One watch of kind `K` per scope, each into its own store; their `Listed` indexes start
/// at `first`, and each reports its health to `fresh`.
fn watch_kind<K>(
    client: &Client,
    scopes: &[Option<&str>],
    first: usize,
    config: &watcher::Config,
    fresh: &Freshness,
) -> (Stores<K>, impl Stream<Item = Change> + Send + 'static)
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Watched
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let mut stores = Vec::new();
    let mut streams = Vec::new();
    for (i, scope) in scopes.iter().enumerate() {
        let (store, writer) = reflector::store();
        stores.push(store);
        let events = resync::relisting(api::<K>(client, *scope), config.clone());
        fresh.watching(first + i, K::name());
        streams.push(watched(writer, events, first + i, fresh.clone()).boxed());
    }
    (Stores(stores), futures_util::stream::select_all(streams))
}

/// The referenced Secrets' full objects, fetched when their resourceVersion changes.
#[derive(Default)]
struct SecretCache {
    /// By namespace and name: the resourceVersion fetched and the Secret.
    secrets: HashMap<ServiceKey, (Option<String>, Secret)>,
    /// Set when a fetch failed: when to try again.
    retry: Option<Duration>,
    /// When a failed fetch was last logged as a warning, and how many failures since.
    warned: Option<(Instant, u64)>,
}

/// How long to wait before fetching a Secret again after a failure.
const SECRET_RETRY: Duration = Duration::from_secs(2);

/// At most one warning this often about Secrets that cannot be read; the rest go to debug.
const SECRET_WARN_EVERY: Duration = Duration::from_secs(60);

impl SecretCache {
    /// The full Secrets for `present` (the referenced ones that exist, by their metadata):
    /// fetched again only when their resourceVersion moved. Secrets no longer present are
    /// forgotten. A Secret that cannot be fetched keeps its last copy, if any, and is tried
    /// again after [`SECRET_RETRY`].
    async fn refresh(
        &mut self,
        client: &Client,
        present: &[PartialObjectMeta<Secret>],
    ) -> Vec<Secret> {
        let keys: HashSet<ServiceKey> = present
            .iter()
            .map(|m| (m.namespace().unwrap_or_default(), m.name_any()))
            .collect();
        self.secrets.retain(|key, _| keys.contains(key));
        self.retry = None;
        let stale: Vec<ServiceKey> = present
            .iter()
            .filter_map(|meta| {
                let key = (meta.namespace().unwrap_or_default(), meta.name_any());
                let current = self.secrets.get(&key).map(|(fetched, _)| fetched);
                (current != Some(&meta.metadata.resource_version)).then_some(key)
            })
            .collect();
        // A few at a time: many Secrets change at once only on the first list.
        let got: Vec<_> = futures_util::stream::iter(stale)
            .map(|key| fetch_secret(client.clone(), key))
            .buffer_unordered(8)
            .collect()
            .await;
        for (key, got) in got {
            match got {
                Ok(Some(mut secret)) => {
                    trim_secret(&mut secret);
                    let version = secret.metadata.resource_version.clone();
                    self.secrets.insert(key, (version, secret));
                }
                Ok(None) => {
                    self.secrets.remove(&key);
                }
                Err(e) => {
                    self.failed(&key, &e);
                    self.retry = Some(SECRET_RETRY);
                }
            }
        }
        self.secrets.values().map(|(_, s)| s.clone()).collect()
    }

    /// Logs a failed fetch: a warning at most every [`SECRET_WARN_EVERY`], with how many
    /// failed in between, so an outage does not repeat it every [`SECRET_RETRY`].
    fn failed(&mut self, (namespace, name): &ServiceKey, e: &kube::Error) {
        let secret = format!("{namespace}/{name}");
        let cause = Trouble::of(e);
        match &mut self.warned {
            Some((at, since)) if at.elapsed() < SECRET_WARN_EVERY => {
                *since += 1;
                let error = crate::apierror::brief(e);
                tracing::debug!(secret, %cause, %error, "cannot read a Secret a route names");
            }
            warned => {
                let failures_since_last_warning = warned.map_or(0, |(_, since)| since);
                *warned = Some((Instant::now(), 0));
                let error = crate::apierror::brief(e);
                tracing::warn!(secret, %cause, %error, failures_since_last_warning, "cannot read a Secret a route names; trying again every 2 s, its last copy keeps serving");
            }
        }
    }
}

/// A reflector over `events` that keeps only what wsgate reads of each object, each event
/// turned into the `Change` it means; failures and completed lists go to `fresh`.
fn watched<K, S>(
    writer: reflector::store::Writer<K>,
    events: S,
    index: usize,
    fresh: Freshness,
) -> impl Stream<Item = Change>
where
    K: Resource<DynamicType = ()> + Clone + Watched + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    reflector::reflector(writer, events.modify(K::trim)).map(move |event| match event {
        Ok(Event::InitDone) => {
            fresh.synced(index);
            Change::Listed(index)
        }
        Ok(Event::Apply(o)) => o.change(),
        Ok(Event::Delete(o)) => o.gone(),
        Ok(Event::Init | Event::InitApply(_)) => Change::Nothing,
        Err(e) => {
            fresh.failed(index, &e);
            Change::Nothing
        }
    })
}

/// What wsgate needs of a watched kind.
trait Watched {
    /// The kind's name in logs and metrics.
    fn name() -> &'static str
    where
        Self: Sized;

    /// What a change to this object can affect.
    fn change(&self) -> Change;
    /// What this object's deletion can affect.
    fn gone(&self) -> Change {
        self.change()
    }
    /// Drops every field the compile step and the status writer never read (managed
    /// fields and `last-applied-configuration` are most of an object's size).
    fn trim(&mut self);
}

impl Watched for WebSocketRoute {
    fn name() -> &'static str {
        "WebSocketRoute"
    }

    fn change(&self) -> Change {
        Change::Route(key_of(self), Some(version_of(self)))
    }

    fn gone(&self) -> Change {
        Change::Route(key_of(self), None)
    }

    fn trim(&mut self) {
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
    }
}

impl Watched for Service {
    fn name() -> &'static str {
        "Service"
    }

    fn change(&self) -> Change {
        Change::Backend((self.namespace().unwrap_or_default(), self.name_any()))
    }

    fn trim(&mut self) {
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
        self.metadata.labels = None;
        self.spec = self.spec.take().map(|spec| ServiceSpec {
            ports: spec.ports,
            ..ServiceSpec::default()
        });
        self.status = None;
    }
}

impl Watched for EndpointSlice {
    fn name() -> &'static str {
        "EndpointSlice"
    }

    fn change(&self) -> Change {
        match self.labels().get(SERVICE_NAME_LABEL) {
            Some(service) => {
                Change::Backend((self.namespace().unwrap_or_default(), service.clone()))
            }
            None => Change::Nothing,
        }
    }

    fn trim(&mut self) {
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
        if let Some(labels) = &mut self.metadata.labels {
            labels.retain(|k, _| k == SERVICE_NAME_LABEL);
        }
        for endpoint in &mut self.endpoints {
            *endpoint = Endpoint {
                addresses: std::mem::take(&mut endpoint.addresses),
                conditions: endpoint.conditions.take(),
                ..Endpoint::default()
            };
        }
    }
}

impl Watched for PartialObjectMeta<Secret> {
    fn name() -> &'static str {
        "Secret"
    }

    fn change(&self) -> Change {
        Change::Backend((self.namespace().unwrap_or_default(), self.name_any()))
    }

    fn trim(&mut self) {
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
        self.metadata.labels = None;
    }
}

/// Secret `key` as the API server has it now.
async fn fetch_secret(
    client: Client,
    key: ServiceKey,
) -> (ServiceKey, Result<Option<Secret>, kube::Error>) {
    let got = Api::<Secret>::namespaced(client, &key.0)
        .get_opt(&key.1)
        .await;
    (key, got)
}

/// Drops what the compile step never reads of a Secret: only its data is used.
fn trim_secret(secret: &mut Secret) {
    secret.metadata.managed_fields = None;
    secret.metadata.annotations = None;
    secret.metadata.labels = None;
    secret.string_data = None;
}

/// What a compile depends on of a route's version: a new uid (recreated) or generation
/// (spec changed); status writes move neither.
fn version_of(route: &WebSocketRoute) -> RouteVersion {
    (route.metadata.uid.clone(), route.metadata.generation)
}

/// The Services and Secrets routes name, each in its route's namespace: a route can only
/// reference its own namespace's objects.
fn references_of<R: Borrow<WebSocketRoute>>(routes: &[R]) -> HashSet<ServiceKey> {
    let mut names = HashSet::new();
    for r in routes.iter().map(Borrow::borrow) {
        let namespace = r.namespace().unwrap_or_default();
        let spec = &r.spec;
        let referenced = [
            spec.upstream.service.as_ref().map(|s| &s.name),
            spec.tls.as_ref().map(|t| &t.secret_name),
            spec.upstream
                .tls
                .as_ref()
                .and_then(|t| t.ca_secret_name.as_ref()),
            spec.auth.as_ref().map(|a| &a.jwt.keys.secret_name),
        ];
        for name in referenced.into_iter().flatten() {
            names.insert((namespace.clone(), name.clone()));
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_route_that_appears_goes_or_changes_spec_calls_for_a_compile() {
        let route = |uid: &str, generation: i64| -> Arc<WebSocketRoute> {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "apiVersion": "wsgate.dev/v1alpha1",
                    "kind": "WebSocketRoute",
                    "metadata": {"name": "chat", "namespace": "apps", "uid": uid, "generation": generation},
                    "spec": {"hostnames": ["chat.example.com"], "upstream": {"url": "ws://127.0.0.1:9"}},
                }))
                .expect("route"),
            )
        };
        let mut compiler = Compiler::default();
        let mut listed = [true];
        let mut relevant = |change: Change, compiler: &Compiler| {
            calls_for_compile(change, &mut listed, &HashSet::new(), compiler)
        };
        let first = route("uid-1", 1);
        assert!(relevant(first.change(), &compiler), "a new route");
        compiler.compile(std::slice::from_ref(&first), &Backends::standalone());
        // A status write moves neither uid nor generation.
        assert!(!relevant(first.change(), &compiler));
        assert!(
            relevant(route("uid-1", 2).change(), &compiler),
            "a new spec"
        );
        assert!(relevant(route("uid-2", 1).change(), &compiler), "recreated");
        assert!(relevant(first.gone(), &compiler));
        compiler.compile(&[], &Backends::standalone());
        assert!(!relevant(first.gone(), &compiler), "already gone");
        assert!(relevant(Change::Listed(0), &compiler));
    }

    #[test]
    fn trimmed_backends_keep_what_compile_reads() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "chat", "namespace": "apps", "annotations": {"a": "b"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"ports": [{"name": "ws", "port": 80}], "selector": {"app": "chat"},
                     "clusterIP": "10.0.0.9"},
        }))
        .expect("service");
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "chat-1", "namespace": "apps",
                         "labels": {SERVICE_NAME_LABEL: "chat", "other": "x"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.4"], "conditions": {"ready": true},
                           "nodeName": "n1", "zone": "z", "targetRef": {"kind": "Pod", "name": "p"}}],
            "ports": [{"name": "ws", "port": 9000}],
        }))
        .expect("slice");
        let before =
            Backends::from_cluster(std::slice::from_ref(&service), std::slice::from_ref(&slice));
        let (mut service, mut slice) = (service, slice);
        service.trim();
        slice.trim();
        let after =
            Backends::from_cluster(std::slice::from_ref(&service), std::slice::from_ref(&slice));
        assert_eq!(after, before);
        assert_ne!(
            after,
            Backends::from_cluster(&[], &[]),
            "resolves something"
        );
        assert!(
            service.metadata.annotations.is_none() && service.metadata.managed_fields.is_none()
        );
        assert_eq!(
            service.spec.as_ref().and_then(|s| s.cluster_ip.as_ref()),
            None
        );
        assert_eq!(slice.endpoints[0].node_name, None);
        assert_eq!(slice.labels().len(), 1);
        assert_eq!(
            slice.change(),
            Change::Backend(("apps".into(), "chat".into()))
        );
    }

    #[test]
    fn only_services_and_secrets_that_routes_name_are_referenced() {
        let route = |spec: serde_json::Value| -> WebSocketRoute {
            let mut full = serde_json::json!({"hostnames": ["a.example.com"]});
            full.as_object_mut()
                .expect("object")
                .extend(spec.as_object().expect("object").clone());
            serde_json::from_value(serde_json::json!({
                "apiVersion": "wsgate.dev/v1alpha1", "kind": "WebSocketRoute",
                "metadata": {"name": "r", "namespace": "apps"},
                "spec": full,
            }))
            .expect("route")
        };
        let named = references_of(&[
            route(serde_json::json!({"upstream": {"service": {"name": "chat", "port": 80}}})),
            route(serde_json::json!({"upstream": {"url": "ws://10.0.0.1:80"}})),
            route(serde_json::json!({
                "upstream": {"url": "wss://b.internal", "tls": {"caSecretName": "b-ca"}},
                "tls": {"secretName": "a-tls"},
            })),
            route(serde_json::json!({
                "upstream": {"url": "ws://10.0.0.1:80"},
                "auth": {"jwt": {"keys": {"secretName": "jwt-keys"}}},
            })),
        ]);
        let key = |name: &str| ("apps".to_owned(), name.to_owned());
        assert_eq!(
            named,
            HashSet::from([key("chat"), key("a-tls"), key("b-ca"), key("jwt-keys")])
        );
    }
}
