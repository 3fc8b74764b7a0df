//! The per-field checks of one route, on its own: what makes it Invalid (Accepted=False)
//! or unresolved (ResolvedRefs=False), and its compiled form when it is neither.

use std::fmt::Write;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::ServerName;

use super::backends::Lookups;
use super::{
    BackendProblem, Backends, Check, ValidRoute, Warning, key_of, parse_url, reason, warning,
};
use crate::api::JwtSpec;
use crate::api::{
    Http2Sockets, MAX_IDLE_TIMEOUT_SECONDS, MAX_REQUEST_BODY_BYTES, OriginsSpec, PathMatchType,
    Rejection, SessionAffinity, WebSocketRoute, WebSocketRouteSpec,
};
use crate::auth::{JwtAuth, JwtSettings, KeyError, TokenPlace};
use crate::policy::{InvalidPattern, OriginPolicy};
use crate::route::path;
use crate::route::{
    Admission, HttpLimits, Limits, OriginRejection, PathRule, Route, RouteAuth, RouteKey, Upstream,
};
use crate::tls::{self, UpstreamTls};

/// The most hostnames a route may claim (docs/design.md §3).
const MAX_HOSTNAMES: usize = 16;

/// Origin policies by what they were compiled from (`allowNull` and `allowMissing`, then
/// the list): routes that list the same origins (a team's app on many routes) share one
/// policy, compiled once.
#[derive(Default)]
pub(super) struct Policies {
    by_spec: foldhash::HashMap<(bool, bool), foldhash::HashMap<Vec<String>, Policy>>,
    /// How many there were after the last [`Policies::prune`].
    kept: usize,
}

type Policy = Result<Arc<OriginPolicy>, InvalidPattern>;

impl Policies {
    /// The policy of `origins`, compiled if no route had it yet.
    fn get(&mut self, origins: &OriginsSpec) -> &Policy {
        let lists = self
            .by_spec
            .entry((origins.allow_null, origins.allow_missing))
            .or_default();
        // Looked up by the borrowed list first: a hit, the common case, copies nothing.
        if !lists.contains_key(origins.allow.as_slice()) {
            let compiled =
                OriginPolicy::new(&origins.allow, origins.allow_null, origins.allow_missing)
                    .map(Arc::new);
            lists.insert(origins.allow.clone(), compiled);
        }
        &lists[origins.allow.as_slice()]
    }

    /// Forgets the policies no route holds any more, once there are twice as many as
    /// after the last time (so that a compile pays for this only now and then).
    pub(super) fn prune(&mut self) {
        let count = |p: &Self| p.by_spec.values().map(|l| l.len()).sum::<usize>();
        if count(self) <= 2 * self.kept + 64 {
            return;
        }
        for lists in self.by_spec.values_mut() {
            lists.retain(|_, p| p.as_ref().is_ok_and(|p| Arc::strong_count(p) > 1));
        }
        self.kept = count(self);
    }
}

/// Validates one route on its own and builds its compiled form.
pub(super) fn check_route(
    route: &WebSocketRoute,
    backends: &Backends,
    policies: &mut Policies,
) -> Check {
    let key = key_of(route);
    let spec = &route.spec;
    // Each check appends in field order, the order the Accepted message lists them in.
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    let hostnames = check_names(&key, spec, &mut problems);
    let path = match check_path(spec.path.match_type, &spec.path.value) {
        Ok(p) => Some(p),
        Err(e) => {
            problems.push(e);
            None
        }
    };
    let origins = check_origins(&spec.origins, policies, &mut problems, &mut warnings);
    check_subprotocols(spec.subprotocols.as_deref(), &mut problems);
    check_limits(spec, &mut problems);
    let mut lookups = Lookups::new(backends);
    let References {
        upstream,
        auth,
        certificate,
        refs,
    } = check_references(route, &key, &mut lookups, &mut problems);

    // The Accepted message, built in one allocation: every route of a large cluster has one.
    let serves = match (&path, problems.is_empty()) {
        (Some(p), true) => {
            let mut message = String::with_capacity(64);
            message.push_str("route serves ");
            for (i, h) in hostnames.iter().enumerate() {
                if i > 0 {
                    message.push_str(", ");
                }
                message.push_str(h);
            }
            let _ = write!(message, " {p}");
            message
        }
        _ => String::new(),
    };
    let valid = match (problems.is_empty(), path, origins, upstream) {
        (true, Some(path), Some(origins), Some(upstream)) => Some(ValidRoute {
            hostnames,
            path,
            certificate,
            route: Arc::new(build_route(spec, &key, origins, upstream, auth)),
        }),
        _ => None,
    };

    Check {
        key,
        generation: route.metadata.generation,
        created: route.metadata.creation_timestamp.as_ref().map(|t| t.0),
        grants: spec
            .hostname_grants
            .iter()
            .map(|g| g.namespace.clone())
            .collect(),
        valid,
        problems,
        refs,
        warnings,
        serves,
        reads: lookups.into_reads(),
    }
}

/// The route's name, hostnames and hostname grants; returns the hostnames.
fn check_names(
    key: &RouteKey,
    spec: &WebSocketRouteSpec,
    problems: &mut Vec<String>,
) -> Vec<Arc<str>> {
    if key.name.is_empty() {
        problems.push("metadata.name is missing: give the route a name".to_owned());
    }
    let hostnames = check_hostnames(&spec.hostnames, problems);
    for grant in &spec.hostname_grants {
        if !is_namespace_name(&grant.namespace) {
            problems.push(format!(
                "hostnameGrants namespace `{}` is not a namespace name: use lowercase letters, digits and `-`, like `team-b`",
                grant.namespace
            ));
        }
    }
    hostnames
}

/// The origin policy, with warnings for the settings that are valid but rarely meant.
fn check_origins(
    origins: &OriginsSpec,
    policies: &mut Policies,
    problems: &mut Vec<String>,
    warnings: &mut Vec<Warning>,
) -> Option<Arc<OriginPolicy>> {
    match policies.get(origins) {
        Ok(policy) => {
            if policy.allows_any_origin() {
                warnings.push(Warning {
                    reason: warning::ANY_ORIGIN,
                    message: "origin `*` admits every web page, which disables the cross-site WebSocket protection; list the origins instead".to_owned(),
                });
            }
            // An empty list is valid (and the default), but a route nothing can reach is
            // more often a misspelt or dropped field than an intent.
            if origins.allow.is_empty() && !origins.allow_null && !origins.allow_missing {
                warnings.push(Warning {
                    reason: warning::NO_ORIGINS,
                    message: "origins.allow is empty, so every handshake is refused with 403: list the origins that may connect, like `origins: {allow: [\"https://app.example.com\"]}`".to_owned(),
                });
            }
            Some(policy.clone())
        }
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    }
}

/// Subprotocols are sent in `Sec-WebSocket-Protocol`, so each must be an HTTP token.
fn check_subprotocols(subprotocols: Option<&[String]>, problems: &mut Vec<String>) {
    for p in subprotocols.into_iter().flatten() {
        if p.is_empty() || !p.bytes().all(is_token_byte) {
            problems.push(format!(
                "subprotocol `{p}` is not an HTTP token: use letters, digits and !#$%&'*+-.^_`|~"
            ));
        }
    }
}

/// `limits` and `heartbeat`: a zero limit or an out-of-range duration is refused rather than
/// read as "none", since omitting the field already says that.
fn check_limits(spec: &WebSocketRouteSpec, problems: &mut Vec<String>) {
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

    if let Some(h) = &spec.http {
        if !(1..=MAX_REQUEST_BODY_BYTES).contains(&h.max_request_body_bytes) {
            problems.push(format!(
                "http.maxRequestBodyBytes must be 1 to {MAX_REQUEST_BODY_BYTES} (64 MiB): omit it for 1 MiB"
            ));
        }
        if !(1..=3600).contains(&h.response_timeout_seconds) {
            problems
                .push("http.responseTimeoutSeconds must be 1 to 3600: omit it for 60".to_owned());
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
}

/// What a route references (its upstream and the Secrets of its upstream TLS, JWT keys and
/// certificate), resolved.
struct References {
    /// Set when the upstream is well-formed, even if it does not resolve.
    upstream: Option<Upstream>,
    /// Set when the route has `auth`; [`RouteAuth::Unavailable`] when its keys are not.
    auth: Option<RouteAuth>,
    /// The certificate and its Secret (`namespace/name`), when `tls` is set and usable.
    certificate: Option<(Arc<CertifiedKey>, String)>,
    /// The ResolvedRefs outcome: the first reference that did not resolve.
    refs: Result<(), (&'static str, String)>,
}

/// Resolves the upstream, its TLS, the JWT keys and the certificate, in that order.
fn check_references(
    route: &WebSocketRoute,
    key: &RouteKey,
    lookups: &mut Lookups,
    problems: &mut Vec<String>,
) -> References {
    let spec = &route.spec;
    let (mut upstream, mut refs) = check_upstream(route, key, lookups, problems);
    let mut fail_refs = |failure: (&'static str, String)| {
        // The first unresolved reference is the one reported.
        if refs.is_ok() {
            refs = Err(failure);
        }
    };
    if let Some(upstream) = &mut upstream {
        upstream.client_affinity = spec
            .http
            .as_ref()
            .is_some_and(|h| h.session_affinity == SessionAffinity::ClientIp);
        match check_upstream_tls(route, key, lookups) {
            Ok(tls) => upstream.tls = tls,
            Err(RefProblem::Invalid(p)) => problems.push(p),
            Err(RefProblem::Unresolved(failure)) => fail_refs(failure),
        }
    }
    let auth = spec
        .auth
        .as_ref()
        .map(|a| match check_auth(&a.jwt, key, lookups) {
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
        Some(tls) => match certificate(lookups, &key.namespace, &tls.secret_name) {
            Ok(ck) => Some((ck, format!("{}/{}", key.namespace, tls.secret_name))),
            Err(failure) => {
                fail_refs(failure);
                None
            }
        },
        None => None,
    };
    References {
        upstream,
        auth,
        certificate,
        refs,
    }
}

/// The compiled route of a valid spec.
fn build_route(
    spec: &WebSocketRouteSpec,
    key: &RouteKey,
    origins: Arc<OriginPolicy>,
    upstream: Upstream,
    auth: Option<RouteAuth>,
) -> Route {
    Route {
        tls_only: spec.tls.is_some(),
        http2_sockets: spec.web_sockets_over_http2 == Http2Sockets::Allow,
        auth,
        key: key.clone(),
        label: key.to_string().into(),
        origins,
        rejection: match spec.origins.rejection {
            Rejection::Forbidden => OriginRejection::Forbidden,
            Rejection::Close => OriginRejection::Close,
        },
        upstream,
        http: spec.http.as_ref().map(|h| HttpLimits {
            max_request_body: h.max_request_body_bytes,
            response_timeout: seconds(h.response_timeout_seconds),
        }),
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
    }
}

/// Each hostname on its own, then the list: not empty, not too long, no duplicates.
fn check_hostnames(hostnames: &[String], problems: &mut Vec<String>) -> Vec<Arc<str>> {
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
    for (i, h) in hostnames.iter().enumerate() {
        if let Err(e) = check_hostname(h) {
            problems.push(e);
        } else if hostnames[..i].contains(h) {
            // At most 16 (else refused above), so a scan costs less than a set.
            problems.push(format!("hostname {h} is listed twice"));
        }
    }
    hostnames.iter().map(|h| Arc::from(h.as_str())).collect()
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

/// The path rule of `spec.path`, kept in the normal form requests are matched in.
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
        PathMatchType::Exact => PathRule::Exact(escaped.into()),
        PathMatchType::PathPrefix => PathRule::prefix(&escaped),
    })
}

/// The certificate of a route's `tls.secretName`, or why it cannot be served.
fn certificate(
    lookups: &mut Lookups,
    namespace: &str,
    name: &str,
) -> Result<Arc<CertifiedKey>, (&'static str, String)> {
    let data = lookups.secret(namespace, name)?;
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
fn check_auth(
    spec: &JwtSpec,
    key: &RouteKey,
    lookups: &mut Lookups,
) -> Result<JwtAuth, RefProblem> {
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
    let data = lookups
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
    JwtAuth::new(jwt_settings(spec), material).map_err(|e| match e {
        KeyError::ReservedHeader(_) => RefProblem::Invalid(e.to_string()),
        other => RefProblem::Unresolved((reason::INVALID_SECRET, format!("{secret} {other}"))),
    })
}

/// The plain settings `auth` builds a route's check from.
fn jwt_settings(spec: &JwtSpec) -> JwtSettings {
    JwtSettings {
        places: spec
            .token_sources
            .iter()
            .filter_map(|s| match (&s.query, &s.header, &s.cookie) {
                (Some(q), None, None) => Some(TokenPlace::Query(q.clone())),
                (None, Some(h), None) => Some(TokenPlace::Header(h.clone())),
                (None, None, Some(c)) => Some(TokenPlace::Cookie(c.clone())),
                _ => None,
            })
            .collect(),
        issuer: spec.issuer.clone(),
        audiences: spec.audiences.clone(),
        leeway_seconds: u64::from(spec.leeway_seconds),
        forward: spec
            .forward_claims
            .iter()
            .map(|f| (f.claim.clone(), f.header.clone()))
            .collect(),
    }
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
    lookups: &mut Lookups,
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
            let data = lookups
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
    lookups: &mut Lookups,
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
            let service = || format!("Service {}/{} port {port}", key.namespace, svc.name);
            match lookups.resolve(&key.namespace, &svc.name, port) {
                Ok(targets) => (
                    Some(Upstream {
                        targets: targets.to_vec(),
                        path: None,
                        tls: None,
                        client_affinity: false,
                    }),
                    Ok(()),
                ),
                // The route still owns its host and path; handshakes get 502 until it resolves.
                Err(BackendProblem::NotFound) => (
                    Some(Upstream {
                        targets: vec![],
                        path: None,
                        tls: None,
                        client_affinity: false,
                    }),
                    Err((
                        reason::BACKEND_NOT_FOUND,
                        format!("{} not found; {}", service(), lookups.not_found_hint()),
                    )),
                ),
                Err(BackendProblem::NoReadyEndpoints) => (
                    Some(Upstream {
                        targets: vec![],
                        path: None,
                        tls: None,
                        client_affinity: false,
                    }),
                    Err((
                        reason::NO_READY_ENDPOINTS,
                        format!("{} has no ready endpoints", service()),
                    )),
                ),
            }
        }
    }
}

/// RFC 9110 §5.6.2 token characters.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn seconds(s: u32) -> std::time::Duration {
    std::time::Duration::from_secs(u64::from(s))
}
