//! Owns the `WebSocketRoute` custom resource (`wsgate.dev/v1alpha1`): its spec and status types,
//! their defaults, schema and CEL validation rules, and the rendered CRD. Data only; no I/O.
//!
//! The `///` comments on these types become the schema descriptions `kubectl explain` shows,
//! so they are written for the people who write routes.

// The KubeSchema derive declares `pub` shadow copies of these structs inside generated fns.
#![allow(unreachable_pub)]
// Repeated `printcolumn(type_ = ...)` entries are distinct columns, not duplicate attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// Regular expressions shared by the CEL rules below. They are spliced into CEL raw strings
// (`r'...'`), so they are written exactly as the regex engine (RE2 in the API server) reads
// them, and must not contain `'`.

/// One lowercase DNS label (RFC 1123).
const DNS_LABEL: &str = "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?";

/// One label of an origin pattern's host: anything but separators, delimiters and controls,
/// so Unicode labels (turned into punycode later) pass.
const ORIGIN_LABEL: &str = r"[^\x00-\x20\x7f*/?#@:.,%\\\[\]]+";

/// A port number 1..=65535 without leading zeros.
const PORT: &str =
    "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})";

/// A URI scheme (RFC 3986 §3.1).
const SCHEME: &str = "[A-Za-z][A-Za-z0-9+.-]*";

/// Declares which web origins may open a WebSocket to which upstream, for a set of hostnames and a path.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wsgate.dev",
    version = "v1alpha1",
    kind = "WebSocketRoute",
    plural = "websocketroutes",
    doc = "A WebSocketRoute declares which web origins may open a WebSocket to which upstream, for a set of hostnames and a path.",
    namespaced,
    shortname = "wsr",
    status = "WebSocketRouteStatus",
    derive = "PartialEq",
    printcolumn(name = "Hosts", type_ = "string", json_path = ".status.hostnames"),
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.path.value"),
    printcolumn(name = "Origins", type_ = "string", json_path = ".status.origins"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Upstream",
        type_ = "string",
        json_path = ".status.upstream",
        priority = 1
    ),
    printcolumn(
        name = "Snapshot",
        type_ = "integer",
        json_path = ".status.snapshotVersion",
        priority = 1
    ),
    printcolumn(
        name = "Generation",
        type_ = "integer",
        json_path = ".status.observedGeneration",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketRouteSpec {
    /// Hostnames this route serves, 1 to 16, each listed once: an exact lowercase DNS name like `chat.example.com`, or a wildcard like `*.example.com`, where `*` is the whole leftmost label, stands for one or more labels, and is followed by at least two labels. Write internationalized names in punycode (`xn--...`).
    #[schemars(
        length(min = 1, max = 16),
        inner(length(min = 1, max = 253)),
        transform = hostname_rules
    )]
    #[x_kube(
        validation = Rule::new("self.all(h, self.exists_one(x, x == h))")
            .message("hostnames must be unique: list each hostname once")
    )]
    pub hostnames: Vec<String>,

    /// Which request paths this route serves. Default: every path (`PathPrefix` `/`).
    #[serde(default)]
    pub path: PathMatch,

    /// Which web origins may open a WebSocket. Default: no browser origin (`allow: []`), denied with 403.
    #[serde(default)]
    pub origins: OriginsSpec,

    /// Where admitted connections go: exactly one of `service` or `url`.
    pub upstream: UpstreamSpec,

    /// Subprotocols a client may negotiate (`Sec-WebSocket-Protocol`), as HTTP tokens like `chat.v2`. The client's offer is narrowed to this list before it reaches the upstream. Omit it to pass every offer through unfiltered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        with = "Vec<String>",
        length(max = 32),
        inner(length(min = 1, max = 128))
    )]
    #[x_kube(
        validation = Rule::new(r#"self.all(p, p.matches(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"))"#)
            .message("each subprotocol must be an HTTP token (letters, digits and !#$%&'*+-.^_`|~, no spaces, commas or slashes), like `chat.v2`")
    )]
    pub subprotocols: Option<Vec<String>>,

    /// Close live connections that a changed route no longer admits (their origin is no longer allowed, or the route is gone). Default: true.
    #[serde(default = "default_true")]
    pub revoke_on_policy_change: bool,

    /// Limits on each connection of this route. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,

    /// Pings from the gateway to each side that goes silent, to find dead peers. Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<HeartbeatSpec>,

    /// Authenticate every handshake before it reaches the upstream. Default: none (the origin check alone stops browsers from other sites, not other clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,

    /// Namespaces whose routes may also serve this route's hostnames, up to 16. A hostname belongs to the namespace of its oldest route; a newer route from another namespace on it, or on a hostname under a wildcard it owns, is Conflicted unless a route of the owner on that hostname lists its namespace here. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub hostname_grants: Vec<HostnameGrant>,

    /// Also pass plain HTTP/1.1 requests (not WebSocket upgrades) for this route's hostnames and path to its upstream, under the same origin policy: the long-polling and streaming transports Socket.IO, SockJS, SignalR and Phoenix start with or fall back to. Write `http: {}` for the defaults. Default: off, and such requests get 426.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,

    /// Terminate TLS (`wss://`) for this route's hostnames on the TLS listener. A route with `tls` makes its hostnames TLS-only: on the plain listener handshakes for any path of them get 403. Default: plain only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// Whether browsers may open this route's sockets as streams of an HTTP/2 connection (RFC 8441) on the TLS listener, many sockets sharing one TCP and TLS connection: `Allow`, or `Refuse` to keep each socket on its own HTTP/1.1 connection. Browsers learn this per connection, before they name a path: the gateway does not offer WebSockets over HTTP/2 on a connection whose SNI names a hostname of a route that refuses, so `Refuse` holds for every route on that hostname; a stream that asks anyway gets 421. Default: `Allow`.
    #[serde(default)]
    pub web_sockets_over_http2: Http2Sockets,
}

/// Whether a route's sockets may be HTTP/2 streams.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Http2Sockets {
    /// Sockets over HTTP/2 when the browser holds an HTTP/2 connection, over HTTP/1.1 otherwise.
    #[default]
    Allow,
    /// Sockets over HTTP/1.1 only, each on its own connection.
    Refuse,
}

/// A namespace allowed to serve routes on the granting route's hostnames.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HostnameGrant {
    /// The namespace, like `team-b`.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(
        validation = Rule::new(format!(r"self.matches(r'^{DNS_LABEL}$')"))
            .message("namespace must be a namespace name: lowercase letters, digits and `-`, like `team-b`")
    )]
    pub namespace: String,
}

/// How handshakes are authenticated.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// A JSON Web Token, verified before the upgrade; a missing or bad token gets 401 with `WWW-Authenticate: Bearer`.
    pub jwt: JwtSpec,
}

/// JWT verification of a handshake.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JwtSpec {
    /// Where the token may be; a request gives it in one place, once (in two places, or twice in one, it is 400 `invalid_request`, never a choice between copies). Browsers can send one only as a query parameter or a cookie. Default: `[{header: Authorization}]` (`Bearer <token>`).
    #[serde(default = "default_token_sources")]
    #[schemars(length(min = 1, max = 3))]
    pub token_sources: Vec<TokenSource>,

    /// The verification keys: a Secret in the route's namespace (in standalone mode, the directory of that name under `--secret-dir`).
    pub keys: JwtKeys,

    /// Required `iss` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,

    /// Accepted audiences: when set, the `aud` claim must name one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,

    /// Clock skew allowed on `exp` and `nbf`, in seconds. Default 30, at most 300.
    #[serde(default = "default_leeway")]
    #[schemars(range(max = 300))]
    pub leeway_seconds: u32,

    /// Claims sent upstream as request headers; a client's own header of that name is always removed first, so it cannot be forged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub forward_claims: Vec<ForwardClaim>,
}

fn default_token_sources() -> Vec<TokenSource> {
    vec![TokenSource {
        header: Some("Authorization".to_owned()),
        ..TokenSource::default()
    }]
}

fn default_leeway() -> u32 {
    30
}

/// One place a token may be: exactly one of `query`, `header` or `cookie`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("[has(self.query), has(self.header), has(self.cookie)].filter(x, x).size() == 1")
        .message("a token source names exactly one of `query`, `header` or `cookie`, like `{query: access_token}`")
)]
pub struct TokenSource {
    /// A query parameter of the request URL; it is removed before the request goes upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub query: Option<String>,
    /// A request header: `Authorization` carries `Bearer <token>`, any other header the bare token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub header: Option<String>,
    /// A cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub cookie: Option<String>,
}

/// Where the verification keys are.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JwtKeys {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// The Secret's data key holding the keys: a JWKS document (`{"keys": [...]}`), a PEM public key (RSA, EC or Ed25519), or an HMAC shared secret. Default: the Secret's only key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A claim forwarded as a header.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ForwardClaim {
    /// The claim's name, like `sub`.
    #[schemars(length(min = 1, max = 128))]
    pub claim: String,
    /// The header it is sent in, like `X-User-Id` (not a hop-by-hop, `Host`, `Origin`, `Sec-WebSocket-*` or forwarding header).
    #[schemars(length(min = 1, max = 64))]
    pub header: String,
}

/// TLS termination for a route's hostnames, with the certificate chosen by SNI.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret in the route's namespace: `tls.crt` (the server certificate first, then intermediates) and `tls.key`. In standalone mode, the directory of that name under `--secret-dir`, holding those two files. A changed Secret serves new connections at once; live ones continue.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new(format!(r"self.matches(r'^{DNS_LABEL}(\.{DNS_LABEL})*$')"))
            .message("secretName must be a Secret's name: lowercase letters, digits, `-` and `.`, like `chat-tls`")
    )]
    pub secret_name: String,
}

/// Plain HTTP requests on a route: the body limit, how long the upstream may stay silent, and which endpoint a client's requests and handshakes reach.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpSpec {
    /// Largest request body, in bytes; a larger one gets 413 and never reaches the upstream. Default: 1048576 (1 MiB, Socket.IO's own `maxHttpBufferSize`).
    #[serde(default = "default_max_request_body")]
    #[schemars(range(min = 1, max = MAX_REQUEST_BODY_BYTES))]
    pub max_request_body_bytes: u64,

    /// Most seconds the upstream may stay silent: before its response head (504 after), and between two reads of its response body (the response is then cut). Hold it above your long-poll interval: Socket.IO holds a poll for 25 seconds. Default: 60.
    #[serde(default = "default_response_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub response_timeout_seconds: u32,

    /// Which upstream endpoint a client reaches, for HTTP requests and WebSocket handshakes alike: `ClientIP` keeps each client address on one ready endpoint while that endpoint stays ready (the long-polling requests of a Socket.IO or SignalR session, and its later upgrade, must reach the process that holds the session); `None` picks one at random each time. Default: `ClientIP`.
    #[serde(default)]
    pub session_affinity: SessionAffinity,
}

impl Default for HttpSpec {
    fn default() -> Self {
        HttpSpec {
            max_request_body_bytes: default_max_request_body(),
            response_timeout_seconds: default_response_timeout(),
            session_affinity: SessionAffinity::default(),
        }
    }
}

/// Largest `http.maxRequestBodyBytes`: 64 MiB.
pub const MAX_REQUEST_BODY_BYTES: u64 = 64 << 20;

fn default_max_request_body() -> u64 {
    1 << 20
}

fn default_response_timeout() -> u32 {
    60
}

/// Which upstream endpoint a client's requests and handshakes reach.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SessionAffinity {
    /// Each client address keeps to one ready endpoint.
    #[default]
    #[serde(rename = "ClientIP")]
    ClientIp,
    /// An endpoint at random for each request and handshake.
    None,
}

/// Heartbeats: a side silent for `intervalSeconds` gets a Ping from the gateway; one that does not answer it with a Pong within `timeoutSeconds` is closed, and the other side gets Close 1001 (1011 when the upstream is the one that stopped answering).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatSpec {
    /// Seconds a side may be silent before the gateway pings it.
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: u32,

    /// Seconds to wait for the Pong. Default: 10.
    #[serde(default = "default_heartbeat_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: u32,
}

fn default_heartbeat_timeout() -> u32 {
    10
}

/// Longest `limits.idleTimeoutSeconds`: a week.
pub const MAX_IDLE_TIMEOUT_SECONDS: u32 = 604_800;

/// Limits on each connection of a route; every field is off when omitted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Largest message, in bytes, counted across its continuation frames. A sender that goes over it gets Close 1009 and the other side Close 1001. A route with this limit never negotiates permessage-deflate, so the limit bounds what the upstream receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_message_bytes: Option<u64>,

    /// Seconds without a data frame either way after which both sides get Close 1001 `idle timeout`. Pings and pongs do not count as data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_IDLE_TIMEOUT_SECONDS))]
    pub idle_timeout_seconds: Option<u32>,

    /// Most connections the route holds at once, from all clients together. A handshake beyond it gets 503 with `Retry-After: 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,

    /// Most connections one client holds on this route at once (a client is an IPv4 address, or an IPv6 /64). A handshake beyond it gets 429 with `Retry-After: 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections_per_client: Option<u32>,

    /// Handshakes per second one client may start on this route, as a token bucket that holds one second's worth (so a burst of this many is allowed at once). A handshake beyond it gets 429 with `Retry-After` saying when the next one is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub handshakes_per_second_per_client: Option<u32>,
}

fn default_true() -> bool {
    true
}

/// Which request paths a route serves.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PathMatch {
    /// How `value` is compared with the request path: `Exact` (the whole path) or `PathPrefix` (the path and everything below it, segment by segment: `/ws` matches `/ws` and `/ws/chat`, not `/wsx`). Default: `PathPrefix`.
    #[serde(rename = "type", default)]
    pub match_type: PathMatchType,

    /// The path, starting with `/`, like `/ws`; no query or fragment. Default: `/`.
    #[serde(default = "default_path")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(
        validation = Rule::new("self.startsWith('/')")
            .message("path value must start with `/`: write `/ws`, not `ws`"),
        validation = Rule::new(r"!self.matches(r'[?#\s\x00-\x1f\x7f]')")
            .message("path value must be a plain path: drop the query (`?...`) or fragment (`#...`) and percent-encode spaces, like `/chat%20room`"),
        validation = Rule::new(r"!self.matches(r'(^|/)(\.|%2[eE]){1,2}((;|%3[bB])[^/]*)?(/|$)')")
            .message("path value must not have `.` or `..` segments: write the path they resolve to, like `/ws` for `/ws/chat/..`"),
        validation = Rule::new("!self.contains('//')")
            .message("path value must not have `//`: write a single `/`"),
        validation = Rule::new(r"!self.matches(r'%(2[fF]|5[cC]|00)|\\')")
            .message("path value must not have an encoded `/`, `\\` or NUL (%2F, %5C, %00) or a `\\`: requests with them are refused, so the route would never match"),
        validation = Rule::new(r"!self.matches(r'%(.?$|[^0-9A-Fa-f]|[0-9A-Fa-f][^0-9A-Fa-f])')")
            .message("every `%` in a path value must start an escape like `%20`")
    )]
    pub value: String,
}

fn default_path() -> String {
    "/".to_owned()
}

impl Default for PathMatch {
    /// Every path: `PathPrefix` `/`.
    fn default() -> Self {
        PathMatch {
            match_type: PathMatchType::PathPrefix,
            value: default_path(),
        }
    }
}

/// How a path value is compared with the request path.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PathMatchType {
    /// The request path equals the value.
    Exact,
    /// The request path equals the value or continues it with `/`.
    #[default]
    PathPrefix,
}

/// The origin policy: which `Origin` headers may open a WebSocket, and what the others get.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OriginsSpec {
    /// Allowed origin patterns, up to 64: an exact origin (`https://app.example.com`), any subdomain (`https://*.example.com`), any port (`http://localhost:*`), or `*` alone for every origin (which turns the protection off). Each is `scheme://host[:port]` with no path and no trailing slash; Unicode hostnames are allowed. Default: empty, so no browser origin may connect.
    #[serde(default)]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 300)),
        transform = origin_rules
    )]
    pub allow: Vec<String>,

    /// Admit the opaque origin `null` (sandboxed iframes, `file://` pages, some redirects). Default: false.
    #[serde(default)]
    pub allow_null: bool,

    /// Admit handshakes without an `Origin` header: non-browser clients such as mobile apps and services, which can also claim any origin, so authenticate them. Default: false.
    #[serde(default)]
    pub allow_missing: bool,

    /// What a handshake from a denied origin gets: `Forbidden` (HTTP 403, no upgrade) or `Close` (the upgrade completes, then the connection is closed with code 1008, which browsers report to scripts). Default: `Forbidden`.
    #[serde(default)]
    pub rejection: Rejection,
}

/// How a handshake from a denied origin is turned away.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// HTTP 403 before the upgrade.
    #[default]
    Forbidden,
    /// Complete the upgrade, then close at once with code 1008 (policy violation).
    Close,
}

/// Where admitted connections go: exactly one of `service` or `url`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("has(self.service) != has(self.url)")
        .message("upstream must name exactly one of `service` or `url`: write `service: {name: chat-backend, port: 8080}` or `url: ws://10.0.0.5:8080`")
)]
pub struct UpstreamSpec {
    /// A Service in the route's namespace, by name and port number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "ServiceRef")]
    pub service: Option<ServiceRef>,

    /// A WebSocket URL, `ws://host[:port][/path]` or `wss://...`, like `ws://10.0.0.5:8080/socket`. A path here replaces the request's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(min = 6, max = 2048))]
    #[x_kube(
        validation = Rule::new(format!(
            r"self.matches(r'^wss?://(\[[0-9A-Fa-f:.]+\]|[^/?#@\s\[\]:]+)(:{PORT})?(/[^?#\s]*)?$')"
        ))
            .message("url must be `ws://host:port[/path]` or `wss://host:port[/path]`, without userinfo, query or fragment, like `ws://10.0.0.5:8080/socket`")
    )]
    pub url: Option<String>,

    /// TLS from the gateway to the upstream. A `wss://` url uses it with the system's trust store unless this says otherwise; set it to verify against your own CA, to check another name, or to reach a `service` over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsSpec>,
}

/// How the gateway verifies an upstream's certificate. Verification is never off.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTlsSpec {
    /// A Secret in the route's namespace whose `ca.crt` holds the PEM CA certificates the upstream's certificate must chain to, instead of the system's trust store. In standalone mode, the directory of that name under `--secret-dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub ca_secret_name: Option<String>,

    /// The name sent as SNI and required in the upstream's certificate. Default: the url's host, or for a `service`, `NAME.NAMESPACE.svc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
}

/// A Service port in the route's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceRef {
    /// The Service's name, like `chat-backend`.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(
        validation = Rule::new("self.matches(r'^[a-z]([-a-z0-9]*[a-z0-9])?$')")
            .message("service name must be a Service's name: lowercase letters, digits and `-`, starting with a letter, like `chat-backend`")
    )]
    pub name: String,

    /// The Service port number (`spec.ports[].port`, not the target port), 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// What wsgate last observed about the route.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketRouteStatus {
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The route's conditions, one per `type`; `Ready` says whether it is serving.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The hostnames, comma-separated, for `kubectl get wsr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostnames: Option<String>,

    /// What may connect, comma-separated (`null` and `(no Origin)` when admitted; `(none)`
    /// when nothing may), for `kubectl get wsr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origins: Option<String>,

    /// The upstream (`ws://...` or `service NAME:PORT`), for `kubectl get wsr -o wide`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,

    /// The version of the gateway snapshot these conditions were computed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_version: Option<i64>,
}

/// Rules on each entry of a list, so that the API server names the entry and its value
/// (`spec.origins.allow[2]: Invalid value: "https://*.com": ...`): `(rule, message, reason)`,
/// each rule about `self`, one entry.
fn each_entry(schema: &mut schemars::Schema, rules: &[(String, &str, Option<kube::core::Reason>)]) {
    let rules: Vec<serde_json::Value> = rules
        .iter()
        .map(|(rule, message, reason)| {
            let mut r = serde_json::json!({"rule": rule, "message": message});
            if let Some(reason) = reason {
                r["reason"] = serde_json::to_value(reason).unwrap_or_default();
            }
            r
        })
        .collect();
    if let Some(items) = schema.get_mut("items").and_then(|i| i.as_object_mut()) {
        items.insert("x-kubernetes-validations".into(), rules.into());
    }
}

/// The rules each hostname follows.
fn hostname_rules(schema: &mut schemars::Schema) {
    each_entry(
        schema,
        &[
            (
                format!(r"self.matches(r'^(\*\.)?{DNS_LABEL}(\.{DNS_LABEL})*$')"),
                "a hostname must be a lowercase DNS name like `chat.example.com`, or a wildcard like `*.example.com` with `*` only as the whole leftmost label; write internationalized names in punycode (`xn--...`)",
                None,
            ),
            (
                r"!self.startsWith('*.') || self.matches(r'^\*\.[^.]+\.[^.]+')".to_owned(),
                "a wildcard hostname needs at least two labels after `*.`: write `*.example.com`, not `*.com`",
                None,
            ),
        ],
    );
}

/// The rules each origin pattern follows.
fn origin_rules(schema: &mut schemars::Schema) {
    each_entry(
        schema,
        &[
            (
                "self != 'null'".to_owned(),
                "`null` is not an origin pattern: remove it from `allow` and set `allowNull: true` instead",
                Some(kube::core::Reason::FieldValueForbidden),
            ),
            (
                format!(
                    r"self == '*' || self == 'null' || self.matches(r'^{SCHEME}://((\*\.)?{ORIGIN_LABEL}(\.{ORIGIN_LABEL})*\.?|\[[0-9A-Fa-f:.]+\])(:({PORT}|\*))?$')"
                ),
                "an origin pattern must be `scheme://host[:port]` with no path or trailing slash, like `https://app.example.com`, `https://*.example.com` or `http://localhost:*` (port 1-65535 or `*`), or `*` alone",
                None,
            ),
            (
                r"!self.contains('://*.') || self.matches(r'://\*\.[^.:]+\.[^.:]+')".to_owned(),
                "a wildcard origin needs at least two labels after `*.`: write `https://*.example.com`, not `https://*.com`",
                None,
            ),
        ],
    );
}

/// The CustomResourceDefinition for `WebSocketRoute`.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = WebSocketRoute::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            keep_known_formats(schema);
        }
    }
    crd
}

/// Drops integer formats Kubernetes does not know (schemars writes `uint32` for a `u32`):
/// the API server keeps them but warns about each on every `kubectl apply` and `helm
/// install`. The bounds that matter are in `minimum` and `maximum`.
fn keep_known_formats(schema: &mut JSONSchemaProps) {
    if schema.type_.as_deref() == Some("integer")
        && !matches!(schema.format.as_deref(), None | Some("int32" | "int64"))
    {
        schema.format = None;
    }
    let nested = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(match &mut schema.items {
            Some(JSONSchemaPropsOrArray::Schema(s)) => vec![s.as_mut()],
            Some(JSONSchemaPropsOrArray::Schemas(list)) => list.iter_mut().collect(),
            None => Vec::new(),
        })
        .chain(match &mut schema.additional_properties {
            Some(JSONSchemaPropsOrBool::Schema(s)) => Some(s.as_mut()),
            _ => None,
        })
        .chain(
            [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of]
                .into_iter()
                .flatten()
                .flatten(),
        );
    for inner in nested {
        keep_known_formats(inner);
    }
}

/// The CRD as YAML, headed by a comment line, as `wsgate crd` prints it and `crds/` holds it.
pub fn crd_yaml() -> String {
    // Serializing a derived CRD (plain strings, maps and numbers) cannot fail; an empty body
    // would be caught by the test that compares the file in `crds/`.
    let body = serde_saphyr::to_string(&crd()).unwrap_or_default();
    format!("# Generated by `wsgate crd`; do not edit.\n{body}")
}

#[cfg(test)]
mod tests;
