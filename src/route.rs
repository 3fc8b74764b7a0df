//! The immutable route table the data plane reads: lookup by host and path, and the compiled
//! per-route policy. No API types, no Kubernetes, no I/O.

pub mod path;

use std::fmt;
use std::sync::Arc;

use foldhash::{HashMap, HashSet};

use crate::auth::JwtAuth;
use crate::policy::OriginPolicy;
use crate::tls::{Certificates, UpstreamTls};

/// Identifies a route across snapshots: its namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    /// The route's namespace.
    pub namespace: String,
    /// The route's name.
    pub name: String,
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How a request path is matched. The value is shared, not copied, by every table the
/// route is compiled into.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathRule {
    /// The whole path equals the value.
    Exact(Arc<str>),
    /// The path equals the value or continues it with `/` (segment-aware); the value is
    /// stored without a trailing slash, except the root `/`.
    Prefix(Arc<str>),
}

impl PathRule {
    /// Builds a prefix rule, dropping a trailing slash so `/ws/` and `/ws` claim the same paths.
    pub fn prefix(value: &str) -> PathRule {
        let trimmed = value.trim_end_matches('/');
        PathRule::Prefix(if trimmed.is_empty() {
            "/".into()
        } else {
            trimmed.into()
        })
    }

    /// Whether `path` (without query) is selected by this rule.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathRule::Exact(value) => path == &**value,
            PathRule::Prefix(value) if &**value == "/" => true,
            PathRule::Prefix(value) => match path.strip_prefix(&**value) {
                Some(rest) => rest.is_empty() || rest.starts_with('/'),
                None => false,
            },
        }
    }
}

impl fmt::Display for PathRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathRule::Exact(v) => write!(f, "Exact {v}"),
            PathRule::Prefix(v) => write!(f, "PathPrefix {v}"),
        }
    }
}

/// What happens to a handshake whose origin is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginRejection {
    /// Answer 403 before the upgrade.
    Forbidden,
    /// Complete the upgrade, then close at once with 1008.
    Close,
}

/// One address the upstream can be reached at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where accepted handshakes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Addresses to connect to; one is picked per connection. Empty means the backend is
    /// unresolved (the route still owns its host and path, and handshakes get 502).
    pub targets: Vec<Target>,
    /// A path that replaces the request path (the request's query is kept).
    pub path: Option<String>,
    /// TLS to the upstream (`wss://`), verified.
    pub tls: Option<Arc<UpstreamTls>>,
    /// Each client address keeps to one target (`http.sessionAffinity: ClientIP`) instead of
    /// a random one per connection.
    pub client_affinity: bool,
}

/// A compiled route: everything the handshake and relay need, nothing from the API.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route's identity.
    pub key: RouteKey,
    /// `namespace/name`, made once: the metric label and log field of every handshake.
    pub label: Arc<str>,
    /// Which origins may connect; shared by the routes of a snapshot that list the same.
    pub origins: Arc<OriginPolicy>,
    /// What a denied origin gets.
    pub rejection: OriginRejection,
    /// Where accepted handshakes go.
    pub upstream: Upstream,
    /// The allowed subprotocols; `None` forwards the client's offer unfiltered.
    pub subprotocols: Option<Vec<String>>,
    /// Whether live connections are closed when a new snapshot no longer admits them.
    pub revoke_on_policy_change: bool,
    /// Limits the relay enforces on each connection.
    pub limits: Limits,
    /// Limits on how many connections the route and each client hold, and how fast a
    /// client opens them.
    pub admission: Admission,
    /// Served only on the TLS listener (the route has `tls`).
    pub tls_only: bool,
    /// Its sockets may be streams of an HTTP/2 connection (`webSocketsOverHttp2: Allow`).
    pub http2_sockets: bool,
    /// How handshakes are authenticated, if they are.
    pub auth: Option<RouteAuth>,
    /// Plain HTTP requests are passed too (`http`), with these limits.
    pub http: Option<HttpLimits>,
}

/// What bounds a route's plain HTTP requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request body, in bytes.
    pub max_request_body: u64,
    /// How long the upstream may stay silent before its response head and within its body.
    pub response_timeout: std::time::Duration,
}

/// A route's handshake authentication.
#[derive(Debug, Clone)]
pub enum RouteAuth {
    /// Verify a JWT.
    Jwt(Arc<JwtAuth>),
    /// The route asks for authentication but its keys are missing or unusable: every
    /// handshake is refused (503) rather than let in unchecked.
    Unavailable,
}

/// Limits checked before a handshake is forwarded; `None` is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Admission {
    /// Connections the route holds at once (503 beyond).
    pub max_connections: Option<u32>,
    /// Connections one client holds on the route at once (429 beyond).
    pub max_connections_per_client: Option<u32>,
    /// Handshakes per second one client may start on the route (429 beyond).
    pub handshakes_per_second_per_client: Option<u32>,
}

impl Admission {
    /// Whether any limit is set, so that handshakes of unlimited routes skip the bookkeeping.
    pub fn any(&self) -> bool {
        self.max_connections.is_some()
            || self.max_connections_per_client.is_some()
            || self.handshakes_per_second_per_client.is_some()
    }
}

/// Per-connection limits the relay enforces; `None` is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Largest message in bytes, across its continuation frames.
    pub max_message_bytes: Option<u64>,
    /// How long neither side may send a data frame.
    pub idle_timeout: Option<std::time::Duration>,
    /// Ping a side silent this long, and close it if its Pong takes longer than the second.
    pub heartbeat: Option<(std::time::Duration, std::time::Duration)>,
}

/// The routes of one hostname key, ordered for lookup.
#[derive(Debug, Default, Clone)]
struct HostRoutes {
    /// A route on this hostname has `tls`: every path on it is served on the TLS listener
    /// only, so a newer plain route cannot serve part of a TLS hostname in clear text.
    tls_only: bool,
    /// A route on this hostname refuses its sockets over HTTP/2: connections for it offer
    /// none, since a browser learns that per connection, before it names a path.
    http2_refused: bool,
    exact: HashMap<Arc<str>, Arc<Route>>,
    /// Longest prefix first.
    prefixes: Vec<(PathRule, Arc<Route>)>,
}

impl HostRoutes {
    fn select(&self, path: &str) -> Option<(&Arc<Route>, bool)> {
        self.find(path).map(|route| (route, self.tls_only))
    }

    fn find(&self, path: &str) -> Option<&Arc<Route>> {
        if let Some(route) = self.exact.get(path) {
            return Some(route);
        }
        self.prefixes
            .iter()
            .find(|(rule, _)| rule.matches(path))
            .map(|(_, route)| route)
    }
}

/// An immutable table of accepted routes, looked up by host and path.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    /// Keyed by the compiled routes' own hostnames (shared, not copied).
    exact_hosts: HashMap<Arc<str>, HostRoutes>,
    /// Keyed by the suffix after `*.`.
    wildcard_hosts: HashMap<Arc<str>, HostRoutes>,
    by_key: HashSet<ByKey>,
    /// The certificates served on the TLS listener, by hostname.
    certificates: Certificates,
}

impl RouteTable {
    /// An empty table with room for `routes` routes.
    pub fn with_capacity(routes: usize) -> RouteTable {
        RouteTable {
            exact_hosts: HashMap::with_capacity_and_hasher(routes, Default::default()),
            wildcard_hosts: HashMap::default(),
            by_key: HashSet::with_capacity_and_hasher(routes, Default::default()),
            certificates: Certificates::default(),
        }
    }

    /// Adds `route` under each hostname for `path`. The caller (compile) has already
    /// resolved conflicts, so a later insert for the same host and path replaces nothing.
    pub fn insert(&mut self, hostnames: &[Arc<str>], path: &PathRule, route: Arc<Route>) {
        for hostname in hostnames {
            let entry = match hostname.strip_prefix("*.") {
                Some(suffix) => self.wildcard_hosts.entry(suffix.into()).or_default(),
                None => self.exact_hosts.entry(hostname.clone()).or_default(),
            };
            entry.tls_only |= route.tls_only;
            entry.http2_refused |= !route.http2_sockets;
            match path {
                PathRule::Exact(value) => {
                    entry
                        .exact
                        .entry(value.clone())
                        .or_insert_with(|| route.clone());
                }
                PathRule::Prefix(_) => {
                    // Longest prefix first; ties are impossible after conflict resolution.
                    let len = prefix_len(path);
                    let at = entry
                        .prefixes
                        .partition_point(|(rule, _)| prefix_len(rule) >= len);
                    entry.prefixes.insert(at, (path.clone(), route.clone()));
                }
            }
        }
        self.by_key.insert(ByKey(route));
    }

    /// The route serving exactly `path` (same type and value) on `hostname` as a route
    /// declares it (`*.suffix` for a wildcard), if one does: compile's conflict check, asked
    /// while it fills the table.
    pub fn serving(&self, hostname: &str, path: &PathRule) -> Option<&Arc<Route>> {
        let routes = match hostname.strip_prefix("*.") {
            Some(suffix) => self.wildcard_hosts.get(suffix),
            None => self.exact_hosts.get(hostname),
        }?;
        match path {
            PathRule::Exact(value) => routes.exact.get(value),
            PathRule::Prefix(_) => {
                // The prefixes are kept longest first: only those of this length can equal it.
                let len = prefix_len(path);
                let from = routes
                    .prefixes
                    .partition_point(|(rule, _)| prefix_len(rule) > len);
                routes.prefixes[from..]
                    .iter()
                    .take_while(|(rule, _)| prefix_len(rule) == len)
                    .find(|(rule, _)| rule == path)
                    .map(|(_, route)| route)
            }
        }
    }

    /// Selects the route for a request: exact hostname before wildcard (the longest
    /// wildcard suffix first), then an `Exact` path before the longest `PathPrefix`.
    /// `host` must already be lowercase and without a port.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        self.select(host, path).map(|(route, _)| route)
    }

    /// [`RouteTable::lookup`], and whether the hostname key that matched is TLS-only (a
    /// route on it has `tls`).
    pub fn select(&self, host: &str, path: &str) -> Option<(&Arc<Route>, bool)> {
        if let Some(found) = self.exact_hosts.get(host).and_then(|h| h.select(path)) {
            return Some(found);
        }
        // `*.example.com` covers one or more labels, so try every proper suffix of the host.
        let mut rest = host;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(found) = self.wildcard_hosts.get(suffix).and_then(|h| h.select(path)) {
                return Some(found);
            }
            rest = suffix;
        }
        None
    }

    /// Whether an HTTP/2 connection for `host` (its SNI name, lowercase) may carry
    /// WebSockets: not when a route on that hostname, or under a wildcard covering it,
    /// refuses them.
    pub fn http2_sockets(&self, host: &str) -> bool {
        let refused = |routes: Option<&HostRoutes>| routes.is_some_and(|h| h.http2_refused);
        if refused(self.exact_hosts.get(host)) {
            return false;
        }
        let mut rest = host;
        while let Some((_, suffix)) = rest.split_once('.') {
            if refused(self.wildcard_hosts.get(suffix)) {
                return false;
            }
            rest = suffix;
        }
        true
    }

    /// Serves `key` for `hostnames` on the TLS listener, where no older route already set
    /// one (compile inserts in age order).
    pub fn insert_certificate(
        &mut self,
        hostnames: &[Arc<str>],
        key: &Arc<rustls::sign::CertifiedKey>,
    ) {
        for hostname in hostnames {
            self.certificates.insert(hostname, key.clone());
        }
    }

    /// The certificates by hostname.
    pub fn certificates(&self) -> &Certificates {
        &self.certificates
    }

    /// The route with this key, if it is in the table.
    pub fn get(&self, key: &RouteKey) -> Option<&Arc<Route>> {
        self.by_key.get(key).map(|r| &r.0)
    }

    /// All routes in the table.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.by_key.iter().map(|r| &r.0)
    }

    /// How many routes the table holds.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether the table holds no route.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// A route in the table's set by key: found by its own `key`, so the set holds no copy of it.
#[derive(Debug, Clone)]
struct ByKey(Arc<Route>);

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for ByKey {}

impl std::hash::Hash for ByKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.key.hash(state);
    }
}

impl std::borrow::Borrow<RouteKey> for ByKey {
    fn borrow(&self) -> &RouteKey {
        &self.0.key
    }
}

fn prefix_len(rule: &PathRule) -> usize {
    match rule {
        PathRule::Exact(v) | PathRule::Prefix(v) => v.len(),
    }
}

#[cfg(test)]
impl Route {
    /// A route `namespace/name` that admits `origins`, with every other field at its
    /// default: the one place tests build a route by hand.
    pub(crate) fn named(namespace: &str, name: &str, origins: &[&str]) -> Route {
        Route {
            key: RouteKey {
                namespace: namespace.into(),
                name: name.into(),
            },
            label: format!("{namespace}/{name}").into(),
            origins: Arc::new(
                OriginPolicy::new(origins, false, false).expect("test origins are valid"),
            ),
            rejection: OriginRejection::Forbidden,
            upstream: Upstream {
                targets: vec![],
                path: None,
                tls: None,
                client_affinity: false,
            },
            subprotocols: None,
            revoke_on_policy_change: true,
            limits: Limits::default(),
            admission: Admission::default(),
            tls_only: false,
            http2_sockets: true,
            auth: None,
            http: None,
        }
    }
}

#[cfg(test)]
mod tests;
