//! The compile step: a pure function from the declared routes (and the backends they may
//! reference) to a [`RouteTable`] and one [`Verdict`] per route. Standalone mode, the
//! controller and `wsgate check` all call [`compile`], so a route's verdict is the same
//! everywhere. No I/O, no clocks, no Kubernetes client.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::api::JwtSpec;
use crate::api::{MAX_IDLE_TIMEOUT_SECONDS, PathMatchType, Rejection, WebSocketRoute};
use crate::auth::{JwtAuth, KeyError};
use crate::policy::OriginPolicy;
use crate::route::path;
use crate::route::{
    Admission, Limits, OriginRejection, PathRule, Route, RouteAuth, RouteKey, RouteTable, Target,
    Upstream,
};
use crate::tls::{self, UpstreamTls};
use rustls::sign::CertifiedKey;
use rustls_pki_types::ServerName;

mod ownership;

/// Condition types (docs/design.md §4).
pub mod condition {
    /// The spec is valid and the route owns its host and path.
    pub const ACCEPTED: &str = "Accepted";
    /// The upstream (and any Secret) exists and has ready endpoints.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// The route is in the data plane's active snapshot.
    pub const PROGRAMMED: &str = "Programmed";
    /// All of the above.
    pub const READY: &str = "Ready";
}

/// Condition reasons (docs/design.md §4). Each is also a metric label and an Event reason.
pub mod reason {
    /// Accepted=True.
    pub const ACCEPTED: &str = "Accepted";
    /// The spec is invalid.
    pub const INVALID: &str = "Invalid";
    /// Another route owns the same host and path.
    pub const CONFLICTED: &str = "Conflicted";
    /// ResolvedRefs=True.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// The referenced Service (or mapping) does not exist.
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    /// The referenced Service exists but has no ready endpoint.
    pub const NO_READY_ENDPOINTS: &str = "NoReadyEndpoints";
    /// A referenced Secret does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// A referenced Secret lacks a key or holds unusable material.
    pub const INVALID_SECRET: &str = "InvalidSecret";
    /// Programmed=True.
    pub const PROGRAMMED: &str = "Programmed";
    /// The route is not in the active snapshot.
    pub const NOT_PROGRAMMED: &str = "NotProgrammed";
    /// No wsgate replica is left to serve the route (its Deployment was deleted or scaled
    /// to 0); written by the last replica as it stops.
    pub const GATEWAY_STOPPED: &str = "GatewayStopped";
    /// Ready=True.
    pub const READY: &str = "Ready";
}

/// The most hostnames a route may claim (docs/design.md §3).
const MAX_HOSTNAMES: usize = 16;

/// One condition as compile decides it; timestamps are added where status is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionState {
    /// One of [`condition`].
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// One of [`reason`].
    pub reason: &'static str,
    /// What a person can act on.
    pub message: String,
}

/// The outcome of compiling one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The route's identity.
    pub key: RouteKey,
    /// `metadata.generation` of the compiled object, if it has one.
    pub generation: Option<i64>,
    /// Accepted, ResolvedRefs, Programmed and Ready, in that order.
    pub conditions: Vec<ConditionState>,
    /// Things that do not stop the route but deserve a warning.
    pub warnings: Vec<Warning>,
}

/// Something that does not stop a route but that its author should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// A CamelCase reason, used as the Event reason (`warning::ANY_ORIGIN`, ...).
    pub reason: &'static str,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Warning reasons.
pub mod warning {
    /// `*` in `origins.allow`: every web page may connect.
    pub const ANY_ORIGIN: &str = "AnyOrigin";
    /// Nothing may connect: `origins.allow` is empty and neither `null` nor a missing
    /// `Origin` is admitted.
    pub const NO_ORIGINS: &str = "NoOrigins";
    /// The hostname's certificate is another, older route's.
    pub const CERTIFICATE_SHADOWED: &str = "CertificateShadowed";
}

impl Verdict {
    /// The condition of this type.
    pub fn condition(&self, type_: &str) -> Option<&ConditionState> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether the route is Accepted.
    pub fn accepted(&self) -> bool {
        self.condition(condition::ACCEPTED)
            .is_some_and(|c| c.status)
    }
}

/// Why a referenced backend cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendProblem {
    /// No such Service (or no standalone mapping for it).
    NotFound,
    /// The Service exists but has no ready endpoint.
    NoReadyEndpoints,
}

/// The backends routes may reference by `service`, resolved to addresses: from
/// `--service` mappings in standalone mode, from Services and EndpointSlices in a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backends {
    /// Per (namespace, name): per service port (`None`: any port), the ready addresses.
    services: HashMap<(String, String), HashMap<Option<u16>, Vec<Target>>>,
    /// Appended to a BackendNotFound message: how to fix it in this mode.
    not_found_hint: String,
    /// Per (namespace, name): each Secret's data by key.
    secrets: HashMap<(String, String), SecretData>,
    /// Appended to a SecretNotFound message: how to fix it in this mode.
    secret_hint: String,
}

/// A Secret's data: bytes by key (`tls.crt`, `tls.key`, `ca.crt`, ...).
pub type SecretData = BTreeMap<String, Vec<u8>>;

impl Backends {
    /// Backends for standalone mode, where a missing one is fixed with `--service`.
    pub fn standalone() -> Backends {
        Backends {
            services: HashMap::new(),
            not_found_hint: "standalone mode resolves services only through `--service NAME.NAMESPACE=HOST:PORT`".to_owned(),
            secrets: HashMap::new(),
            secret_hint: "standalone mode reads Secret NAME from the directory NAME under `--secret-dir`".to_owned(),
        }
    }

    /// Backends in a cluster: each Service port resolved to the ready endpoints of the
    /// Service's EndpointSlices (label `kubernetes.io/service-name`), matched by port name
    /// as kube-proxy does. A Service with no ready endpoint maps to an empty list.
    pub fn from_cluster(services: &[Service], slices: &[EndpointSlice]) -> Backends {
        let mut backends = Backends {
            services: HashMap::new(),
            not_found_hint: "create the Service in the route's namespace, or fix the name or port"
                .to_owned(),
            secrets: HashMap::new(),
            secret_hint: "create the Secret in the route's namespace (a route can only use its own namespace's Secrets)".to_owned(),
        };
        let mut slices_of: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"));
            if let (Some(namespace), Some(service)) = (&slice.metadata.namespace, service) {
                slices_of
                    .entry((namespace.as_str(), service.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        for svc in services {
            let (Some(namespace), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name)
            else {
                continue;
            };
            let own_slices = slices_of
                .get(&(namespace.as_str(), name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
            for port in ports.into_iter().flatten() {
                let Ok(number) = u16::try_from(port.port) else {
                    continue;
                };
                let targets = own_slices
                    .iter()
                    .flat_map(|slice| ready_targets(slice, port.name.as_deref()))
                    .collect();
                backends.insert(namespace, name, Some(number), targets);
            }
        }
        backends
    }

    /// Declares the ready addresses of Service `namespace/name` on `port` (`None`: on every
    /// port). An empty list means the Service exists with no ready endpoint.
    pub fn insert(&mut self, namespace: &str, name: &str, port: Option<u16>, targets: Vec<Target>) {
        self.services
            .entry((namespace.to_owned(), name.to_owned()))
            .or_default()
            .insert(port, targets);
    }

    /// Declares Secret `namespace/name` with its data.
    pub fn insert_secret(&mut self, namespace: &str, name: &str, data: SecretData) {
        self.secrets
            .insert((namespace.to_owned(), name.to_owned()), data);
    }

    /// Declares the data of cluster Secrets.
    pub fn insert_cluster_secrets(&mut self, secrets: &[Secret]) {
        for secret in secrets {
            let (Some(namespace), Some(name)) = (&secret.metadata.namespace, &secret.metadata.name)
            else {
                continue;
            };
            let data = secret
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            self.insert_secret(namespace, name, data);
        }
    }

    /// The data of Secret `namespace/name`, or a SecretNotFound message.
    fn secret(&self, namespace: &str, name: &str) -> Result<&SecretData, (&'static str, String)> {
        self.secrets
            .get(&(namespace.to_owned(), name.to_owned()))
            .ok_or_else(|| {
                (
                    reason::SECRET_NOT_FOUND,
                    format!("Secret {namespace}/{name} not found; {}", self.secret_hint),
                )
            })
    }

    fn resolve(&self, namespace: &str, name: &str, port: u16) -> Result<&[Target], BackendProblem> {
        let ports = self
            .services
            .get(&(namespace.to_owned(), name.to_owned()))
            .ok_or(BackendProblem::NotFound)?;
        match ports.get(&Some(port)).or_else(|| ports.get(&None)) {
            None => Err(BackendProblem::NotFound),
            Some(t) if t.is_empty() => Err(BackendProblem::NoReadyEndpoints),
            Some(t) => Ok(t),
        }
    }
}

/// The ready addresses of one EndpointSlice for the Service port named `port_name`.
fn ready_targets(slice: &EndpointSlice, port_name: Option<&str>) -> Vec<Target> {
    let port = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref().unwrap_or("") == port_name.unwrap_or(""))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok());
    let Some(port) = port else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        // An endpoint with unknown readiness counts as ready (EndpointSlice API semantics).
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter())
        .map(|address| Target {
            host: address.clone(),
            port,
        })
        .collect()
}

/// The result of [`compile`].
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// The accepted routes, ready for lookup.
    pub table: RouteTable,
    /// One verdict per input route, in input order.
    pub verdicts: Vec<Verdict>,
}

/// Compiles routes into a route table and a verdict for each route.
///
/// Invalid routes are left out of the table and never affect the others. Two valid routes
/// that claim the same hostname and path (same type and value) conflict: the one with the
/// older `creationTimestamp` wins, then namespace/name order; the loser is not served at all.
/// A route on a hostname another namespace owns, without its grant, conflicts too
/// (the `ownership` module).
pub fn compile(routes: &[WebSocketRoute], backends: &Backends) -> Compiled {
    let mut checked: Vec<Checked> = routes.iter().map(|r| check_route(r, backends)).collect();

    // Conflict resolution in age order, so the verdict does not depend on input order.
    let mut order: Vec<usize> = (0..checked.len()).collect();
    order.sort_by(|&a, &b| age_order(&routes[a], &routes[b]));
    // Decided on borrowed keys first (nothing is copied per hostname), applied after.
    let mut conflicts: Vec<Option<String>> = vec![None; checked.len()];
    let mut served = vec![false; checked.len()];
    {
        let mut claimed: foldhash::HashMap<(&str, &PathRule), &RouteKey> =
            foldhash::HashMap::with_capacity_and_hasher(checked.len(), Default::default());
        let mut seen_keys: foldhash::HashSet<&RouteKey> =
            foldhash::HashSet::with_capacity_and_hasher(checked.len(), Default::default());
        let mut owners = ownership::Owners::default();
        for (c, route) in checked.iter().zip(routes) {
            if let Some(valid) = &c.valid {
                let granted = route.spec.hostname_grants.iter();
                owners.grant(
                    &c.key.namespace,
                    &valid.hostnames,
                    granted.map(|g| g.namespace.as_str()),
                );
            }
        }
        for &i in &order {
            let c = &checked[i];
            if !seen_keys.insert(&c.key) {
                conflicts[i] = Some(format!(
                    "route {} is declared more than once; the oldest declaration is served",
                    c.key
                ));
                continue;
            }
            let Some(valid) = &c.valid else {
                continue;
            };
            if let Some(trespass) = owners.trespass(&c.key.namespace, &valid.hostnames) {
                conflicts[i] = Some(trespass.to_string());
                continue;
            }
            let clash = valid.hostnames.iter().find_map(|h| {
                claimed
                    .get(&(h.as_str(), &valid.path))
                    .map(|winner| (h, winner))
            });
            if let Some((host, winner)) = clash {
                conflicts[i] = Some(format!(
                    "hostname {host} with path {} is already served by route {winner}, which is older; change the hostname or path, or delete one of them",
                    valid.path
                ));
                continue;
            }
            for h in &valid.hostnames {
                claimed.insert((h, &valid.path), &c.key);
            }
            owners.claim(&c.key, &valid.hostnames);
            served[i] = true;
        }
    }
    let mut table = RouteTable::with_capacity(checked.len());
    // Which route's Secret serves each hostname on the TLS listener: the oldest's.
    let mut certificate_of: HashMap<String, (RouteKey, String)> = HashMap::new();
    for i in order {
        let c = &mut checked[i];
        c.conflict = conflicts[i].take();
        if served[i]
            && let Some(valid) = c.valid.take()
        {
            c.programmed = true;
            if let Some((key, secret)) = &valid.certificate {
                for h in &valid.hostnames {
                    match certificate_of.get(h) {
                        Some((owner, theirs)) if theirs != secret => c.warnings.push(Warning {
                            reason: warning::CERTIFICATE_SHADOWED,
                            message: format!(
                                "hostname {h} is served with the certificate of route {owner} (Secret {theirs}), which is older; this route's Secret {secret} is not used for it"
                            ),
                        }),
                        Some(_) => {}
                        None => {
                            certificate_of.insert(h.clone(), (c.key.clone(), secret.clone()));
                        }
                    }
                }
                table.insert_certificate(&valid.hostnames, key);
            }
            table.insert(&valid.hostnames, &valid.path, valid.route);
        }
    }

    let verdicts = checked.into_iter().map(Checked::into_verdict).collect();
    Compiled { table, verdicts }
}

/// Older first; a route without a creation timestamp counts as newest.
fn age_order(a: &WebSocketRoute, b: &WebSocketRoute) -> std::cmp::Ordering {
    let ts = |r: &WebSocketRoute| -> Option<Timestamp> {
        r.metadata.creation_timestamp.as_ref().map(|t| t.0)
    };
    let (ta, tb) = (ts(a), ts(b));
    let by_time = match (ta, tb) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    };
    by_time.then_with(|| borrowed_key(a).cmp(&borrowed_key(b)))
}

/// `key_of` without allocating, for comparisons (they run n·log n times per compile).
fn borrowed_key(route: &WebSocketRoute) -> (&str, &str) {
    (
        route.metadata.namespace.as_deref().unwrap_or("default"),
        route.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// The key of a route; a route without a namespace is in `default`, as kubectl would put it.
pub fn key_of(route: &WebSocketRoute) -> RouteKey {
    RouteKey {
        namespace: route
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        name: route.metadata.name.clone().unwrap_or_default(),
    }
}

/// A route after validation, before conflict resolution.
struct Checked {
    key: RouteKey,
    generation: Option<i64>,
    /// Set when the spec is valid.
    valid: Option<ValidRoute>,
    problems: Vec<String>,
    refs: Result<(), (&'static str, String)>,
    warnings: Vec<Warning>,
    conflict: Option<String>,
    programmed: bool,
    summary: String,
}

struct ValidRoute {
    hostnames: Vec<String>,
    path: PathRule,
    route: Route,
    /// The route's TLS certificate and its Secret (`namespace/name`), when it has `tls` and
    /// its Secret is usable.
    certificate: Option<(Arc<CertifiedKey>, String)>,
}

impl Checked {
    fn into_verdict(self) -> Verdict {
        let accepted = match (&self.conflict, self.problems.is_empty()) {
            (_, false) => cond(
                condition::ACCEPTED,
                false,
                reason::INVALID,
                self.problems.join("; "),
            ),
            (Some(msg), true) => cond(condition::ACCEPTED, false, reason::CONFLICTED, msg.clone()),
            (None, true) => {
                let mut msg = format!("route serves {}", self.summary);
                for w in &self.warnings {
                    msg.push_str("; warning: ");
                    msg.push_str(&w.message);
                }
                cond(condition::ACCEPTED, true, reason::ACCEPTED, msg)
            }
        };
        let resolved = match &self.refs {
            Ok(()) => cond(
                condition::RESOLVED_REFS,
                true,
                reason::RESOLVED_REFS,
                "upstream resolved".to_owned(),
            ),
            Err((r, msg)) => cond(condition::RESOLVED_REFS, false, r, msg.clone()),
        };
        let programmed = if self.programmed {
            cond(
                condition::PROGRAMMED,
                true,
                reason::PROGRAMMED,
                "route is in the active snapshot".to_owned(),
            )
        } else {
            cond(
                condition::PROGRAMMED,
                false,
                reason::NOT_PROGRAMMED,
                "route is not accepted, so it is not served".to_owned(),
            )
        };
        let ready = match [&accepted, &resolved, &programmed]
            .into_iter()
            .find(|c| !c.status)
        {
            Some(failing) => cond(
                condition::READY,
                false,
                failing.reason,
                failing.message.clone(),
            ),
            None => cond(
                condition::READY,
                true,
                reason::READY,
                "route is accepted, resolved and programmed".to_owned(),
            ),
        };
        Verdict {
            key: self.key,
            generation: self.generation,
            conditions: vec![accepted, resolved, programmed, ready],
            warnings: self.warnings,
        }
    }
}

fn cond(
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
) -> ConditionState {
    ConditionState {
        type_,
        status,
        reason,
        message,
    }
}

/// Validates one route on its own and builds its compiled form.
fn check_route(route: &WebSocketRoute, backends: &Backends) -> Checked {
    let key = key_of(route);
    let spec = &route.spec;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    if key.name.is_empty() {
        problems.push("metadata.name is missing: give the route a name".to_owned());
    }

    let hostnames = check_hostnames(&spec.hostnames, &mut problems);
    for grant in &spec.hostname_grants {
        if !is_namespace_name(&grant.namespace) {
            problems.push(format!(
                "hostnameGrants namespace `{}` is not a namespace name: use lowercase letters, digits and `-`, like `team-b`",
                grant.namespace
            ));
        }
    }

    let path = match check_path(spec.path.match_type, &spec.path.value) {
        Ok(p) => Some(p),
        Err(e) => {
            problems.push(e);
            None
        }
    };

    let origins = match OriginPolicy::new(
        &spec.origins.allow,
        spec.origins.allow_null,
        spec.origins.allow_missing,
    ) {
        Ok(policy) => {
            if policy.allows_any_origin() {
                warnings.push(Warning {
                    reason: warning::ANY_ORIGIN,
                    message: "origin `*` admits every web page, which disables the cross-site WebSocket protection; list the origins instead".to_owned(),
                });
            }
            // An empty list is valid (and the default), but a route nothing can reach is
            // more often a misspelt or dropped field than an intent.
            if spec.origins.allow.is_empty()
                && !spec.origins.allow_null
                && !spec.origins.allow_missing
            {
                warnings.push(Warning {
                    reason: warning::NO_ORIGINS,
                    message: "origins.allow is empty, so every handshake is refused with 403: list the origins that may connect, like `origins: {allow: [\"https://app.example.com\"]}`".to_owned(),
                });
            }
            Some(policy)
        }
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };

    if let Some(list) = &spec.subprotocols {
        for p in list {
            if p.is_empty() || !p.bytes().all(is_token_byte) {
                problems.push(format!(
                    "subprotocol `{p}` is not an HTTP token: use letters, digits and !#$%&'*+-.^_`|~"
                ));
            }
        }
    }

    if let Some(limits) = &spec.limits {
        for (field, value) in [
            ("maxConnections", limits.max_connections),
            ("maxConnectionsPerClient", limits.max_connections_per_client),
            (
                "handshakesPerSecondPerClient",
                limits.handshakes_per_second_per_client,
            ),
        ] {
            if value == Some(0) {
                problems.push(format!(
                    "limits.{field} must be at least 1: omit it for no limit"
                ));
            }
        }
        if limits.max_message_bytes == Some(0) {
            problems
                .push("limits.maxMessageBytes must be at least 1: omit it for no limit".to_owned());
        }
        if limits
            .idle_timeout_seconds
            .is_some_and(|s| !(1..=MAX_IDLE_TIMEOUT_SECONDS).contains(&s))
        {
            problems.push(format!(
                "limits.idleTimeoutSeconds must be 1 to {MAX_IDLE_TIMEOUT_SECONDS} (a week): omit it for no idle timeout"
            ));
        }
    }

    if let Some(h) = &spec.heartbeat
        && [h.interval_seconds, h.timeout_seconds]
            .iter()
            .any(|s| !(1..=3600).contains(s))
    {
        problems.push(
            "heartbeat.intervalSeconds and heartbeat.timeoutSeconds must be 1 to 3600".to_owned(),
        );
    }

    let (mut upstream, mut refs) = check_upstream(route, &key, backends, &mut problems);
    let mut fail_refs = |failure: (&'static str, String)| {
        // The first unresolved reference is the one reported.
        if refs.is_ok() {
            refs = Err(failure);
        }
    };
    if let Some(upstream) = &mut upstream {
        match check_upstream_tls(route, &key, backends) {
            Ok(tls) => upstream.tls = tls,
            Err(RefProblem::Invalid(p)) => problems.push(p),
            Err(RefProblem::Unresolved(failure)) => fail_refs(failure),
        }
    }
    let auth = spec
        .auth
        .as_ref()
        .map(|a| match check_auth(&a.jwt, &key, backends) {
            Ok(jwt) => RouteAuth::Jwt(Arc::new(jwt)),
            Err(RefProblem::Invalid(p)) => {
                problems.push(p);
                RouteAuth::Unavailable
            }
            Err(RefProblem::Unresolved(failure)) => {
                fail_refs(failure);
                RouteAuth::Unavailable
            }
        });
    let certificate = match &spec.tls {
        Some(tls) => match certificate(backends, &key.namespace, &tls.secret_name) {
            Ok(ck) => Some((ck, format!("{}/{}", key.namespace, tls.secret_name))),
            Err(failure) => {
                fail_refs(failure);
                None
            }
        },
        None => None,
    };

    let summary = match (&path, hostnames.is_empty()) {
        (Some(p), false) => format!("{} {p}", hostnames.join(", ")),
        _ => String::new(),
    };
    let valid = match (problems.is_empty(), path, origins, upstream) {
        (true, Some(path), Some(origins), Some(upstream)) => Some(ValidRoute {
            hostnames,
            path,
            certificate,
            route: Route {
                tls_only: spec.tls.is_some(),
                auth,
                key: key.clone(),
                label: key.to_string().into(),
                origins,
                rejection: match spec.origins.rejection {
                    Rejection::Forbidden => OriginRejection::Forbidden,
                    Rejection::Close => OriginRejection::Close,
                },
                upstream,
                subprotocols: spec.subprotocols.clone(),
                revoke_on_policy_change: spec.revoke_on_policy_change,
                limits: Limits {
                    max_message_bytes: spec.limits.as_ref().and_then(|l| l.max_message_bytes),
                    idle_timeout: spec
                        .limits
                        .as_ref()
                        .and_then(|l| l.idle_timeout_seconds)
                        .map(seconds),
                    heartbeat: spec
                        .heartbeat
                        .as_ref()
                        .map(|h| (seconds(h.interval_seconds), seconds(h.timeout_seconds))),
                },
                admission: spec
                    .limits
                    .as_ref()
                    .map(|l| Admission {
                        max_connections: l.max_connections,
                        max_connections_per_client: l.max_connections_per_client,
                        handshakes_per_second_per_client: l.handshakes_per_second_per_client,
                    })
                    .unwrap_or_default(),
            },
        }),
        _ => None,
    };

    Checked {
        key,
        generation: route.metadata.generation,
        valid,
        problems,
        refs,
        warnings,
        conflict: None,
        programmed: false,
        summary,
    }
}

fn check_hostnames(hostnames: &[String], problems: &mut Vec<String>) -> Vec<String> {
    if hostnames.is_empty() {
        problems.push(
            "hostnames is empty: name at least one hostname, e.g. `chat.example.com`".to_owned(),
        );
    }
    if hostnames.len() > MAX_HOSTNAMES {
        problems.push(format!(
            "hostnames has {} entries; at most {MAX_HOSTNAMES} are allowed: split the route",
            hostnames.len()
        ));
    }
    let mut seen = HashSet::new();
    for h in hostnames {
        if let Err(e) = check_hostname(h) {
            problems.push(e);
        } else if !seen.insert(h.as_str()) {
            problems.push(format!("hostname {h} is listed twice"));
        }
    }
    hostnames.to_vec()
}

/// A namespace name is a DNS label (RFC 1123): 1–63 lowercase letters, digits and `-`, not
/// starting or ending with `-`.
fn is_namespace_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A hostname is a lowercase DNS name, or `*.` followed by one (at least two labels).
fn check_hostname(h: &str) -> Result<(), String> {
    let (wild, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h),
    };
    if name.contains('*') {
        return Err(format!(
            "hostname `{h}`: `*` may only be the whole leftmost label, as in `*.example.com`"
        ));
    }
    if !name.is_ascii() {
        let hint = idna::domain_to_ascii(name)
            .map(|a| format!(": write `{}{a}`", if wild { "*." } else { "" }))
            .unwrap_or_default();
        return Err(format!("hostname `{h}` must be ASCII (punycode){hint}"));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "hostname `{h}` must be lowercase: write `{}`",
            h.to_ascii_lowercase()
        ));
    }
    let labels: Vec<&str> = name.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !labels.iter().all(label_ok) {
        return Err(format!(
            "hostname `{h}` is not a DNS name: use labels of letters, digits and `-` separated by dots"
        ));
    }
    if wild && labels.len() < 2 {
        return Err(format!(
            "hostname `{h}`: a wildcard needs at least two labels after `*.`, as in `*.example.com`"
        ));
    }
    Ok(())
}

fn check_path(kind: PathMatchType, value: &str) -> Result<PathRule, String> {
    if !value.starts_with('/') {
        return Err(format!("path `{value}` must start with `/`"));
    }
    if value.contains(['?', '#']) || value.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "path `{value}` must be a plain path without query, fragment, spaces or control characters"
        ));
    }
    // Requests are matched in normal form, so the route's path is kept in it: escapes are
    // normalized quietly, while dot segments and `//` would make it match something else
    // than it reads, so their resolved form is asked for.
    let escaped = path::normalize_escapes(value)
        .map_err(|e| format!("path `{value}` cannot be matched safely: {e}"))?;
    let resolved = path::resolve_segments(&escaped);
    if resolved != escaped {
        return Err(format!(
            "path `{value}` has `.` or `..` segments or `//`: write `{resolved}`"
        ));
    }
    Ok(match kind {
        PathMatchType::Exact => PathRule::Exact(escaped.into_owned()),
        PathMatchType::PathPrefix => PathRule::prefix(&escaped),
    })
}

/// The certificate of a route's `tls.secretName`, or why it cannot be served.
fn certificate(
    backends: &Backends,
    namespace: &str,
    name: &str,
) -> Result<Arc<CertifiedKey>, (&'static str, String)> {
    let data = backends.secret(namespace, name)?;
    let (Some(chain), Some(key)) = (data.get(tls::CERT_KEY), data.get(tls::PRIVATE_KEY)) else {
        return Err((
            reason::INVALID_SECRET,
            format!(
                "Secret {namespace}/{name} needs `{}` and `{}`: make it a kubernetes.io/tls Secret (`kubectl create secret tls {name} --cert=... --key=...`)",
                tls::CERT_KEY,
                tls::PRIVATE_KEY
            ),
        ));
    };
    tls::certified_key(chain, key).map_err(|e| {
        (
            reason::INVALID_SECRET,
            format!("Secret {namespace}/{name}: {e}"),
        )
    })
}

/// The JWT check of a route, with its keys from the route's Secret.
fn check_auth(spec: &JwtSpec, key: &RouteKey, backends: &Backends) -> Result<JwtAuth, RefProblem> {
    let one_place = |s: &&crate::api::TokenSource| {
        [s.query.is_some(), s.header.is_some(), s.cookie.is_some()]
            .into_iter()
            .filter(|set| *set)
            .count()
            == 1
    };
    if spec.token_sources.is_empty() || !spec.token_sources.iter().all(|s| one_place(&s)) {
        return Err(RefProblem::Invalid(
            "each auth.jwt.tokenSources entry names exactly one of `query`, `header` or `cookie`, like `{query: access_token}`".to_owned(),
        ));
    }
    let name = &spec.keys.secret_name;
    let secret = format!("Secret {}/{name}", key.namespace);
    let data = backends
        .secret(&key.namespace, name)
        .map_err(RefProblem::Unresolved)?;
    let material = match &spec.keys.key {
        Some(k) => data.get(k).ok_or_else(|| {
            RefProblem::Unresolved((
                reason::INVALID_SECRET,
                format!("{secret} has no key `{k}`: fix auth.jwt.keys.key or the Secret"),
            ))
        })?,
        None => match data.values().collect::<Vec<_>>()[..] {
            [only] => only,
            _ => {
                return Err(RefProblem::Unresolved((
                    reason::INVALID_SECRET,
                    format!(
                        "{secret} has {} keys: name the one holding the JWT keys in auth.jwt.keys.key",
                        data.len()
                    ),
                )));
            }
        },
    };
    JwtAuth::new(spec, material).map_err(|e| match e {
        KeyError::ReservedHeader(_) => RefProblem::Invalid(e.to_string()),
        other => RefProblem::Unresolved((reason::INVALID_SECRET, format!("{secret} {other}"))),
    })
}

/// Why settings that name a Secret cannot be used.
enum RefProblem {
    /// The spec is wrong (Accepted=False).
    Invalid(String),
    /// A referenced Secret is missing or unusable (ResolvedRefs=False).
    Unresolved((&'static str, String)),
}

/// TLS to the upstream: for a `wss://` url, or whenever `upstream.tls` is set; `None` for
/// plain `ws://`.
fn check_upstream_tls(
    route: &WebSocketRoute,
    key: &RouteKey,
    backends: &Backends,
) -> Result<Option<Arc<UpstreamTls>>, RefProblem> {
    let up = &route.spec.upstream;
    let url = up.url.as_deref().and_then(|u| u.parse::<http::Uri>().ok());
    let wss = url
        .as_ref()
        .and_then(|u| u.scheme_str())
        .is_some_and(|s| s.eq_ignore_ascii_case("wss"));
    let settings = up.tls.clone().unwrap_or_default();
    if !wss && up.tls.is_none() {
        return Ok(None);
    }
    if url.is_some() && !wss {
        return Err(RefProblem::Invalid(
            "upstream.tls needs a `wss://` url: write `wss://` instead of `ws://`, or remove upstream.tls".to_owned(),
        ));
    }
    let default_name = match (&url, &up.service) {
        (Some(u), _) => u
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        (None, Some(svc)) => format!("{}.{}.svc", svc.name, key.namespace),
        (None, None) => String::new(),
    };
    let name = settings.server_name.unwrap_or(default_name);
    let server_name = ServerName::try_from(name.clone()).map_err(|_| {
        RefProblem::Invalid(format!(
            "upstream TLS server name `{name}` is not a DNS name or IP address: set upstream.tls.serverName"
        ))
    })?;
    let (roots, anchors) = match &settings.ca_secret_name {
        None => (None, "system".to_owned()),
        Some(secret) => {
            let data = backends
                .secret(&key.namespace, secret)
                .map_err(RefProblem::Unresolved)?;
            let bundle = data.get(tls::CA_KEY).ok_or_else(|| {
                RefProblem::Unresolved((
                    reason::INVALID_SECRET,
                    format!(
                        "Secret {}/{secret} has no `{}`: put the upstream's CA certificates there, PEM",
                        key.namespace,
                        tls::CA_KEY
                    ),
                ))
            })?;
            let config = tls::ca_bundle(bundle).map_err(|e| {
                RefProblem::Unresolved((
                    reason::INVALID_SECRET,
                    format!("Secret {}/{secret}: {e}", key.namespace),
                ))
            })?;
            (Some(config), format!("Secret {}/{secret}", key.namespace))
        }
    };
    Ok(Some(Arc::new(UpstreamTls {
        server_name: server_name.to_owned(),
        roots,
        anchors,
    })))
}

/// Validates the upstream and resolves it. Returns the compiled upstream (when the spec is
/// well-formed) and the ResolvedRefs outcome.
fn check_upstream(
    route: &WebSocketRoute,
    key: &RouteKey,
    backends: &Backends,
    problems: &mut Vec<String>,
) -> (Option<Upstream>, Result<(), (&'static str, String)>) {
    let up = &route.spec.upstream;
    match (&up.service, &up.url) {
        (Some(_), Some(_)) | (None, None) => {
            let msg = "upstream must name exactly one of `service` or `url`".to_owned();
            problems.push(msg.clone());
            (None, Err((reason::BACKEND_NOT_FOUND, msg)))
        }
        (None, Some(url)) => match parse_url(url) {
            Ok(upstream) => (Some(upstream), Ok(())),
            Err(e) => {
                problems.push(e.to_string());
                (None, Err((reason::BACKEND_NOT_FOUND, e.to_string())))
            }
        },
        (Some(svc), None) => {
            let port = match u16::try_from(svc.port) {
                Ok(p) if p != 0 => p,
                _ => {
                    let msg = format!("upstream.service.port {} is outside 1..65535", svc.port);
                    problems.push(msg.clone());
                    return (None, Err((reason::BACKEND_NOT_FOUND, msg)));
                }
            };
            let service = format!("Service {}/{} port {port}", key.namespace, svc.name);
            match backends.resolve(&key.namespace, &svc.name, port) {
                Ok(targets) => (
                    Some(Upstream {
                        targets: targets.to_vec(),
                        path: None,
                        tls: None,
                    }),
                    Ok(()),
                ),
                // The route still owns its host and path; handshakes get 502 until it resolves.
                Err(BackendProblem::NotFound) => (
                    Some(Upstream {
                        targets: vec![],
                        path: None,
                        tls: None,
                    }),
                    Err((
                        reason::BACKEND_NOT_FOUND,
                        format!("{service} not found; {}", backends.not_found_hint),
                    )),
                ),
                Err(BackendProblem::NoReadyEndpoints) => (
                    Some(Upstream {
                        targets: vec![],
                        path: None,
                        tls: None,
                    }),
                    Err((
                        reason::NO_READY_ENDPOINTS,
                        format!("{service} has no ready endpoints"),
                    )),
                ),
            }
        }
    }
}

/// Why an upstream `url` is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUrl {
    /// Not a URL at all.
    #[error("upstream url `{0}` is not a URL: write e.g. `ws://10.0.0.5:8080/socket`")]
    Malformed(String),
    /// A scheme other than ws or wss.
    #[error("upstream url `{0}` must start with `ws://` or `wss://`")]
    Scheme(String),
    /// A query string, which would be ambiguous with the request's.
    #[error("upstream url `{0}` must not have a query: the request's query is forwarded")]
    Query(String),
}

/// Parses a `ws://host[:port][/path]` or `wss://...` upstream URL (TLS settings are added
/// by the caller).
pub fn parse_url(url: &str) -> Result<Upstream, InvalidUrl> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| InvalidUrl::Malformed(url.to_owned()))?;
    let default_port = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("ws") => 80,
        Some("wss") => 443,
        _ => return Err(InvalidUrl::Scheme(url.to_owned())),
    };
    let Some(authority) = uri.authority() else {
        return Err(InvalidUrl::Malformed(url.to_owned()));
    };
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return Err(InvalidUrl::Malformed(url.to_owned()));
    }
    if uri.query().is_some() {
        return Err(InvalidUrl::Query(url.to_owned()));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    // Only a path written in the URL replaces the request path; `ws://h:1` has none.
    let after_authority = &url[url.find("://").map_or(0, |i| i + 3) + authority.as_str().len()..];
    let path = (!after_authority.is_empty()).then(|| uri.path().to_owned());
    Ok(Upstream {
        targets: vec![Target {
            host,
            port: authority.port_u16().unwrap_or(default_port),
        }],
        path,
        tls: None,
    })
}

/// RFC 9110 §5.6.2 token characters.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl fmt::Display for ConditionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={} ({}): {}",
            self.type_,
            if self.status { "True" } else { "False" },
            self.reason,
            self.message
        )
    }
}

#[cfg(test)]
mod tests;

fn seconds(s: u32) -> std::time::Duration {
    std::time::Duration::from_secs(u64::from(s))
}
