//! The `WebSocketRoute` custom resource (`wsgate.dev/v1alpha1`): spec and status types with
//! their schema, defaults and CEL validation rules, and the rendered CRD. Data only; no I/O.
//!
//! The doc comments on these types become the schema descriptions `kubectl explain` shows.

// The KubeSchema derive declares `pub` copies of these structs inside its generated fns.
#![allow(unreachable_pub)]
// Repeated `printcolumn(type_ = ...)` entries are distinct columns, not duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One DNS label: lowercase letters, digits and inner hyphens.
const LABEL: &str = "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?";

/// Declares which web origins may open a WebSocket to which upstream, for a set of
/// hostnames and a path.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wsgate.dev",
    version = "v1alpha1",
    kind = "WebSocketRoute",
    doc = "A WebSocketRoute declares which web origins may open a WebSocket to which upstream, per hostname and path.",
    namespaced,
    shortname = "wsr",
    status = "WebSocketRouteStatus",
    derive = "PartialEq",
    printcolumn(name = "Hosts", type_ = "string", json_path = ".spec.hostnames"),
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.path.value"),
    printcolumn(name = "Origins", type_ = "string", json_path = ".spec.origins.allow"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketRouteSpec {
    /// Hostnames this route serves (1 to 16): exact, like `chat.example.com`, or a wildcard
    /// `*.example.com` covering one or more labels in front of at least two.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 253)))]
    #[x_kube(
        validation = Rule::new(format!("self.all(h, h.matches('^(\\\\*\\\\.)?{LABEL}(\\\\.{LABEL})*$'))"))
            .message("hostnames must be lowercase DNS names like `chat.example.com`, or `*.example.com` with `*` as the whole leftmost label"),
        validation = Rule::new("self.all(h, !h.startsWith('*.') || h.matches('^\\\\*\\\\.[^.]+\\\\.[^.]+'))")
            .message("a wildcard hostname needs at least two labels after `*.`, like `*.example.com`"),
        validation = Rule::new("self.all(h, self.exists_one(x, x == h))")
            .message("hostnames must not repeat")
    )]
    pub hostnames: Vec<String>,

    /// Which request paths this route serves; default: every path (`PathPrefix` `/`).
    #[serde(default)]
    pub path: PathMatch,

    /// Which web origins may connect.
    #[serde(default)]
    pub origins: OriginsSpec,

    /// Where accepted connections go: exactly one of `service` or `url`.
    pub upstream: UpstreamSpec,

    /// Optional subprotocol allowlist: the client's `Sec-WebSocket-Protocol` offer is
    /// filtered to these before forwarding; a handshake left with none gets 403.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64)))]
    #[x_kube(
        validation = Rule::new("self.all(p, p.matches('^[!#$%&\\'*+.^_`|~0-9A-Za-z-]+$'))")
            .message("subprotocols must be HTTP tokens (letters, digits and !#$%&'*+-.^_`|~), like `chat.v2`")
    )]
    pub subprotocols: Option<Vec<String>>,

    /// Close live connections that a policy change no longer admits: 1008 when their
    /// origin is no longer allowed, 1001 when the route is deleted. Default true.
    #[serde(default = "default_true")]
    pub revoke_on_policy_change: bool,
}

fn default_true() -> bool {
    true
}

/// How the request path is matched.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PathMatch {
    /// `Exact`: the whole path; `PathPrefix`: the path and everything under it, by segment
    /// (`/ws` matches `/ws` and `/ws/x`, not `/wsx`).
    #[serde(rename = "type", default)]
    pub match_type: PathMatchType,
    /// The path, starting with `/`.
    #[serde(default = "default_path")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(
        validation = Rule::new("self.startsWith('/')").message("path value must start with `/`, like `/ws`"),
        validation = Rule::new("!self.contains('?') && !self.contains('#')")
            .message("path value is a path only: drop the query or fragment")
    )]
    pub value: String,
}

fn default_path() -> String {
    "/".to_owned()
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch {
            match_type: PathMatchType::PathPrefix,
            value: default_path(),
        }
    }
}

/// The kinds of path match.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PathMatchType {
    /// The whole path equals the value.
    Exact,
    /// The path equals the value or continues it with `/`.
    #[default]
    PathPrefix,
}

/// The origin policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OriginsSpec {
    /// Allowed origins: exact (`https://app.example.com`), wildcard subdomain
    /// (`https://*.example.com`), any port (`http://localhost:*`), or `*` for every origin
    /// (which disables the protection). Empty: no browser origin may connect.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 300)))]
    #[x_kube(
        validation = Rule::new("self.all(o, o != 'null')")
            .message("`null` is not a pattern: set `allowNull: true` instead"),
        validation = Rule::new("self.all(o, o == '*' || o.matches('^[A-Za-z][A-Za-z0-9+.-]*://(\\\\*\\\\.)?[^*/?#@:\\\\s]+(:([0-9]{1,5}|\\\\*))?$') || o.matches('^[A-Za-z][A-Za-z0-9+.-]*://\\\\[[0-9A-Fa-f:.]+\\\\](:([0-9]{1,5}|\\\\*))?$'))")
            .message("origins are `scheme://host[:port]` with no path or trailing slash, like `https://app.example.com`, `https://*.example.com` or `http://localhost:*`, or `*` alone"),
        validation = Rule::new("self.all(o, !o.contains('://*.') || o.matches('://\\\\*\\\\.[^.:]+\\\\.[^.:]+'))")
            .message("a wildcard origin needs a domain of at least two labels after `*.`, like `https://*.example.com`")
    )]
    pub allow: Vec<String>,
    /// Admit the literal origin `null` (sandboxed iframes, `file://` pages).
    #[serde(default)]
    pub allow_null: bool,
    /// Admit handshakes without an `Origin` header (non-browser clients such as mobile
    /// apps, which can also send any origin they like: authenticate them).
    #[serde(default)]
    pub allow_missing: bool,
    /// What a denied origin gets: `Forbidden` (403 before the upgrade) or `Close` (the
    /// upgrade completes, then Close 1008 at once).
    #[serde(default)]
    pub rejection: Rejection,
}

/// How a denied origin is turned away.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rejection {
    /// 403 before the upgrade.
    #[default]
    Forbidden,
    /// Upgrade, then Close 1008 `origin not allowed` at once.
    Close,
}

/// Where accepted connections go: exactly one of `service` or `url`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("has(self.service) != has(self.url)")
        .message("upstream must name exactly one of `service` or `url`")
)]
pub struct UpstreamSpec {
    /// A Service in the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// A WebSocket URL, `ws://host:port[/path]`; a path replaces the request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 6, max = 2048))]
    #[x_kube(
        validation = Rule::new("self.matches('^wss?://[^/?#@]+(/[^?#]*)?$')")
            .message("url must be `ws://host:port[/path]` (or `wss://`), without query or userinfo")
    )]
    pub url: Option<String>,
}

/// A Service port in the route's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceRef {
    /// The Service's name.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The Service port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// What wsgate observed about the route.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebSocketRouteStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs`, `Programmed` and `Ready`.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// The CustomResourceDefinition for `WebSocketRoute`.
pub fn crd() -> CustomResourceDefinition {
    WebSocketRoute::crd()
}

/// The CRD as YAML, as `wsgate crd` prints it and `crds/` holds it.
pub fn crd_yaml() -> String {
    // Rendering a derived CRD cannot fail; an empty body would fail the drift test.
    let body = serde_saphyr::to_string(&crd()).unwrap_or_default();
    format!("# Generated by `wsgate crd`; do not edit.\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_route_gets_every_default() {
        let r: WebSocketRoute = serde_saphyr::from_str(
            "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {name: a}\nspec:\n  hostnames: [a.example.com]\n  upstream: {url: \"ws://127.0.0.1:9000\"}\n",
        )
        .expect("parses");
        assert_eq!(r.spec.path, PathMatch::default());
        assert_eq!(r.spec.path.value, "/");
        assert_eq!(r.spec.origins, OriginsSpec::default());
        assert!(r.spec.origins.allow.is_empty());
        assert_eq!(r.spec.origins.rejection, Rejection::Forbidden);
        assert!(r.spec.revoke_on_policy_change);
        assert_eq!(r.spec.subprotocols, None);
    }

    #[test]
    fn full_route_round_trips() {
        let yaml = "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {name: chat, namespace: apps}\nspec:\n  hostnames: [chat.example.com]\n  path: {type: Exact, value: /ws}\n  origins: {allow: [\"https://app.example.com\"], allowNull: true, allowMissing: true, rejection: Close}\n  upstream: {service: {name: chat-backend, port: 8080}}\n  subprotocols: [chat.v2]\n  revokeOnPolicyChange: false\n";
        let r: WebSocketRoute = serde_saphyr::from_str(yaml).expect("parses");
        assert_eq!(r.spec.path.match_type, PathMatchType::Exact);
        assert!(r.spec.origins.allow_null && r.spec.origins.allow_missing);
        assert_eq!(r.spec.origins.rejection, Rejection::Close);
        assert_eq!(r.spec.upstream.service.as_ref().map(|s| s.port), Some(8080));
        assert!(!r.spec.revoke_on_policy_change);
        let json = serde_json::to_value(&r).expect("serializes");
        assert_eq!(json["apiVersion"], "wsgate.dev/v1alpha1");
        assert_eq!(json["spec"]["path"]["type"], "Exact");
        let back: WebSocketRoute = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, r);
    }

    #[test]
    fn crd_has_columns_short_name_status_and_rules() {
        let crd = crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["wsr".to_owned()]));
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Hosts", "Path", "Origins", "Ready", "Age"]);
        let yaml = crd_yaml();
        for needle in [
            "x-kubernetes-validations",
            "has(self.service) != has(self.url)",
            "set `allowNull: true` instead",
            "x-kubernetes-list-type: map",
            "maxItems: 16",
        ] {
            assert!(yaml.contains(needle), "missing {needle:?} in\n{yaml}");
        }
    }
}
