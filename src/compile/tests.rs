use super::*;
use crate::policy::{OriginPolicy, RequestOrigin};
use crate::route::{HttpLimits, RouteAuth, Target};

/// A route from YAML: `metadata` and `spec` bodies, indented by the caller.
fn route(yaml: &str) -> WebSocketRoute {
    let text = format!("apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\n{yaml}");
    serde_saphyr::from_str(&text).expect("test route parses")
}

fn simple(name: &str, created: &str, host: &str, path: &str) -> WebSocketRoute {
    route(&format!(
        "metadata: {{name: {name}, namespace: apps, creationTimestamp: \"{created}\", generation: 2}}\nspec:\n  hostnames: [\"{host}\"]\n  path: {{type: PathPrefix, value: \"{path}\"}}\n  origins: {{allow: [\"https://app.example.com\"]}}\n  upstream: {{url: \"ws://127.0.0.1:9000\"}}\n"
    ))
}

fn cond<'a>(v: &'a Verdict, type_: &str) -> &'a ConditionState {
    v.condition(type_).expect("condition present")
}

fn one(r: WebSocketRoute) -> Verdict {
    let mut c = compile(&[r], &Backends::standalone());
    Arc::unwrap_or_clone(c.verdicts.remove(0))
}

#[test]
fn valid_route_is_accepted_resolved_programmed_and_ready() {
    let c = compile(
        &[simple(
            "chat",
            "2026-01-01T00:00:00Z",
            "chat.example.com",
            "/ws",
        )],
        &Backends::standalone(),
    );
    let v = &c.verdicts[0];
    for t in [
        condition::ACCEPTED,
        condition::RESOLVED_REFS,
        condition::PROGRAMMED,
        condition::READY,
    ] {
        assert!(cond(v, t).status, "{t}: {}", cond(v, t));
    }
    assert_eq!(cond(v, condition::READY).reason, reason::READY);
    assert_eq!(
        cond(v, condition::ACCEPTED).message,
        "route serves chat.example.com PathPrefix /ws"
    );
    assert_eq!(v.generation, Some(2));
    let r = c.table.lookup("chat.example.com", "/ws/x").expect("routed");
    assert_eq!(r.key.name, "chat");
    assert!(r.origins.allows(&RequestOrigin::from_header_values([
        b"https://app.example.com".as_slice()
    ])));
}

#[test]
fn invalid_origin_pattern_is_invalid_with_the_pattern_in_the_message() {
    let v = one(route(
        "metadata: {name: bad}\nspec:\n  hostnames: [a.example.com]\n  origins: {allow: [\"https://*\"]}\n  upstream: {url: \"ws://127.0.0.1:9\"}\n",
    ));
    let a = cond(&v, condition::ACCEPTED);
    assert!(!a.status);
    assert_eq!(a.reason, reason::INVALID);
    assert!(a.message.contains("https://*"), "{}", a.message);
    let p = cond(&v, condition::PROGRAMMED);
    assert_eq!((p.status, p.reason), (false, reason::NOT_PROGRAMMED));
    let ready = cond(&v, condition::READY);
    assert_eq!((ready.status, ready.reason), (false, reason::INVALID));
}

#[test]
fn invalid_route_never_disturbs_a_valid_one() {
    let bad = route(
        "metadata: {name: bad}\nspec:\n  hostnames: [\"*.com\"]\n  upstream: {url: \"http://x\"}\n",
    );
    let good = simple("good", "2026-01-01T00:00:00Z", "a.example.com", "/");
    let c = compile(&[bad, good], &Backends::standalone());
    assert!(!c.verdicts[0].accepted());
    assert!(c.verdicts[1].accepted());
    assert_eq!(c.table.len(), 1);
}

#[test]
fn every_problem_is_listed_in_one_message() {
    let v = one(route(
        "metadata: {name: bad}\nspec:\n  hostnames: [\"Chat.Example.com\", \"*.com\"]\n  path: {type: Exact, value: \"ws\"}\n  subprotocols: [\"a b\"]\n  upstream: {url: \"http://x\"}\n",
    ));
    let m = &cond(&v, condition::ACCEPTED).message;
    for needle in [
        "lowercase",
        "two labels",
        "must start with `/`",
        "subprotocol",
        "ws://",
    ] {
        assert!(m.contains(needle), "missing {needle:?} in {m}");
    }
}

#[test]
fn unicode_hostname_is_refused_with_its_punycode() {
    let v = one(route(
        "metadata: {name: u}\nspec:\n  hostnames: [\"bücher.example\"]\n  upstream: {url: \"ws://127.0.0.1:9\"}\n",
    ));
    let m = &cond(&v, condition::ACCEPTED).message;
    assert!(m.contains("xn--bcher-kva.example"), "{m}");
}

#[test]
fn both_or_neither_upstream_is_invalid() {
    let v = one(route(
        "metadata: {name: both}\nspec:\n  hostnames: [a.example.com]\n  upstream: {url: \"ws://127.0.0.1:9\", service: {name: s, port: 80}}\n",
    ));
    assert_eq!(cond(&v, condition::ACCEPTED).reason, reason::INVALID);
    assert!(
        cond(&v, condition::ACCEPTED)
            .message
            .contains("exactly one")
    );
}

#[test]
fn older_route_wins_a_conflict_and_the_loser_names_it() {
    let old = simple("old", "2026-01-01T00:00:00Z", "chat.example.com", "/ws");
    let new = simple("new", "2026-02-01T00:00:00Z", "chat.example.com", "/ws/");
    // Input order must not matter.
    let c = compile(&[new, old], &Backends::standalone());
    let (new_v, old_v) = (&c.verdicts[0], &c.verdicts[1]);
    assert!(old_v.accepted());
    let a = cond(new_v, condition::ACCEPTED);
    assert_eq!((a.status, a.reason), (false, reason::CONFLICTED));
    assert!(a.message.contains("apps/old"), "{}", a.message);
    assert_eq!(cond(new_v, condition::READY).reason, reason::CONFLICTED);
    assert_eq!(
        c.table
            .lookup("chat.example.com", "/ws")
            .map(|r| r.key.name.as_str()),
        Some("old")
    );
}

#[test]
fn same_age_conflict_is_decided_by_namespace_then_name() {
    let b = simple("b", "2026-01-01T00:00:00Z", "chat.example.com", "/");
    let a = simple("a", "2026-01-01T00:00:00Z", "chat.example.com", "/");
    let c = compile(&[b, a], &Backends::standalone());
    assert!(!c.verdicts[0].accepted());
    assert!(c.verdicts[1].accepted());
}

#[test]
fn different_path_type_or_value_is_no_conflict() {
    let prefix = simple("p", "2026-01-01T00:00:00Z", "chat.example.com", "/ws");
    let other = simple("o", "2026-01-02T00:00:00Z", "chat.example.com", "/other");
    let c = compile(&[prefix, other], &Backends::standalone());
    assert!(c.verdicts.iter().all(|v| v.accepted()));
}

#[test]
fn a_route_nothing_may_reach_is_accepted_with_a_warning_that_says_so() {
    let nobody = route(
        "metadata: {name: quiet, namespace: apps}\nspec:\n  hostnames: [a.example.com]\n  upstream: {url: \"ws://127.0.0.1:9000\"}\n",
    );
    let v = one(nobody);
    assert!(v.accepted());
    assert_eq!(v.warnings.len(), 1);
    assert_eq!(v.warnings[0].reason, warning::NO_ORIGINS);
    assert!(
        cond(&v, condition::ACCEPTED)
            .message
            .contains("origins.allow is empty, so every handshake is refused with 403"),
        "{}",
        cond(&v, condition::ACCEPTED).message
    );
    let machines = route(
        "metadata: {name: api, namespace: apps}\nspec:\n  hostnames: [a.example.com]\n  origins: {allowMissing: true}\n  upstream: {url: \"ws://127.0.0.1:9000\"}\n",
    );
    assert!(one(machines).warnings.is_empty());
}

#[test]
fn unmapped_service_is_backend_not_found_but_still_owns_its_path() {
    let r = route(
        "metadata: {name: svc, namespace: apps}\nspec:\n  hostnames: [a.example.com]\n  upstream: {service: {name: chat, port: 8080}}\n",
    );
    let c = compile(std::slice::from_ref(&r), &Backends::standalone());
    let v = &c.verdicts[0];
    assert!(v.accepted());
    let refs = cond(v, condition::RESOLVED_REFS);
    assert_eq!(
        (refs.status, refs.reason),
        (false, reason::BACKEND_NOT_FOUND)
    );
    assert!(refs.message.contains("--service"), "{}", refs.message);
    assert_eq!(cond(v, condition::READY).reason, reason::BACKEND_NOT_FOUND);
    let routed = c.table.lookup("a.example.com", "/").expect("still routed");
    assert!(routed.upstream.targets.is_empty());

    let mut backends = Backends::standalone();
    backends.insert(
        "apps",
        "chat",
        None,
        vec![Target {
            host: "127.0.0.1".into(),
            port: 9000,
        }],
    );
    let c = compile(&[r], &backends);
    assert!(cond(&c.verdicts[0], condition::READY).status);
}

#[test]
fn service_without_ready_endpoints_is_no_ready_endpoints() {
    let r = route(
        "metadata: {name: svc, namespace: apps}\nspec:\n  hostnames: [a.example.com]\n  upstream: {service: {name: chat, port: 8080}}\n",
    );
    let mut backends = Backends::standalone();
    backends.insert("apps", "chat", Some(8080), vec![]);
    let v = &compile(&[r], &backends).verdicts[0];
    let refs = cond(v, condition::RESOLVED_REFS);
    assert_eq!(
        (refs.status, refs.reason),
        (false, reason::NO_READY_ENDPOINTS)
    );
}

#[test]
fn star_origin_is_accepted_with_a_warning() {
    let v = one(route(
        "metadata: {name: open}\nspec:\n  hostnames: [a.example.com]\n  origins: {allow: [\"*\"]}\n  upstream: {url: \"ws://127.0.0.1:9\"}\n",
    ));
    assert!(v.accepted());
    assert_eq!(v.warnings.len(), 1);
    assert!(cond(&v, condition::ACCEPTED).message.contains("disables"));
}

#[test]
fn duplicate_declaration_of_one_route_is_conflicted() {
    let a = simple("same", "2026-01-01T00:00:00Z", "a.example.com", "/");
    let b = simple("same", "2026-01-02T00:00:00Z", "b.example.com", "/");
    let c = compile(&[a, b], &Backends::standalone());
    assert!(c.verdicts[0].accepted());
    assert_eq!(
        cond(&c.verdicts[1], condition::ACCEPTED).reason,
        reason::CONFLICTED
    );
}

#[test]
fn url_path_and_default_port() {
    let u = parse_url("ws://backend.internal/socket").expect("valid");
    assert_eq!(u.targets[0].to_string(), "backend.internal:80");
    assert_eq!(u.path.as_deref(), Some("/socket"));
    let u = parse_url("ws://[::1]:9000").expect("valid");
    assert_eq!(u.targets[0].to_string(), "[::1]:9000");
    assert_eq!(u.path, None);
    assert_eq!(parse_url("wss://a").expect("wss").targets[0].port, 443);
    assert!(matches!(
        parse_url("http://a:1"),
        Err(InvalidUrl::Scheme(_))
    ));
    assert!(matches!(
        parse_url("ws://a:1/x?y=1"),
        Err(InvalidUrl::Query(_))
    ));
    assert!(matches!(
        parse_url("ws://u@a:1/"),
        Err(InvalidUrl::Malformed(_))
    ));
}

fn service(
    ns: &str,
    name: &str,
    port: i32,
    port_name: Option<&str>,
) -> k8s_openapi::api::core::v1::Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"ports": [{"port": port, "name": port_name}]}
    }))
    .expect("service")
}

fn slice(
    ns: &str,
    svc: &str,
    port: i32,
    port_name: Option<&str>,
    endpoints: &[(&str, Option<bool>)],
) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(ip, ready)| serde_json::json!({"addresses": [ip], "conditions": {"ready": ready}}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": ns, "name": format!("{svc}-x"), "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"port": port, "name": port_name}]
    }))
    .expect("slice")
}

#[test]
fn cluster_backends_resolve_service_ports_to_ready_endpoints_by_port_name() {
    let backends = Backends::from_cluster(
        &[
            service("apps", "chat", 80, Some("ws")),
            service("apps", "idle", 80, None),
        ],
        &[
            slice(
                "apps",
                "chat",
                9000,
                Some("ws"),
                &[
                    ("10.0.0.1", Some(true)),
                    ("10.0.0.2", Some(false)),
                    ("10.0.0.3", None),
                ],
            ),
            slice(
                "apps",
                "chat",
                9999,
                Some("other"),
                &[("10.0.0.9", Some(true))],
            ),
            slice(
                "other",
                "chat",
                9000,
                Some("ws"),
                &[("10.9.9.9", Some(true))],
            ),
            slice("apps", "idle", 9000, None, &[("10.0.0.4", Some(false))]),
        ],
    );
    let targets: Vec<String> = backends
        .resolve("apps", "chat", 80)
        .expect("resolved")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(targets, ["10.0.0.1:9000", "10.0.0.3:9000"]);
    assert_eq!(
        backends.resolve("apps", "chat", 81),
        Err(BackendProblem::NotFound)
    );
    assert_eq!(
        backends.resolve("apps", "idle", 80),
        Err(BackendProblem::NoReadyEndpoints)
    );
    assert_eq!(
        backends.resolve("apps", "missing", 80),
        Err(BackendProblem::NotFound)
    );
}

#[test]
fn limits_and_heartbeat_reach_the_route_and_out_of_range_values_are_invalid() {
    let spec = |limits: &str| {
        route(&format!(
            "metadata: {{name: r, namespace: apps}}\nspec:\n  hostnames: [a.example.com]\n  upstream: {{url: \"ws://127.0.0.1:9000\"}}\n  limits: {limits}\n"
        ))
    };
    let compiled = compile(
        &[spec("{maxMessageBytes: 4096, idleTimeoutSeconds: 300}")],
        &Backends::standalone(),
    );
    let served = compiled.table.lookup("a.example.com", "/").expect("served");
    assert_eq!(served.limits.max_message_bytes, Some(4096));
    assert_eq!(
        served.limits.idle_timeout,
        Some(std::time::Duration::from_secs(300))
    );

    let beating = route(
        "metadata: {name: r, namespace: apps}\nspec:\n  hostnames: [a.example.com]\n  upstream: {url: \"ws://127.0.0.1:9000\"}\n  heartbeat: {intervalSeconds: 30}\n",
    );
    let compiled = compile(&[beating], &Backends::standalone());
    let served = compiled.table.lookup("a.example.com", "/").expect("served");
    assert_eq!(
        served.limits.heartbeat,
        Some((
            std::time::Duration::from_secs(30),
            std::time::Duration::from_secs(10)
        ))
    );
    let v = one(route(
        "metadata: {name: r, namespace: apps}\nspec:\n  hostnames: [a.example.com]\n  upstream: {url: \"ws://127.0.0.1:9000\"}\n  heartbeat: {intervalSeconds: 0}\n",
    ));
    assert!(
        cond(&v, condition::ACCEPTED)
            .message
            .contains("heartbeat.intervalSeconds and heartbeat.timeoutSeconds must be 1 to 3600")
    );

    for (limits, says) in [
        (
            "{maxMessageBytes: 0}",
            "limits.maxMessageBytes must be at least 1",
        ),
        (
            "{idleTimeoutSeconds: 0}",
            "limits.idleTimeoutSeconds must be 1 to 604800",
        ),
        (
            "{idleTimeoutSeconds: 604801}",
            "limits.idleTimeoutSeconds must be 1 to 604800",
        ),
    ] {
        let v = one(spec(limits));
        assert!(!v.accepted(), "{limits}");
        let message = &cond(&v, condition::ACCEPTED).message;
        assert!(message.contains(says), "{limits}: {message}");
    }
}

#[test]
fn http_reaches_the_route_with_its_defaults_and_out_of_range_values_are_invalid() {
    let spec = |http: &str| {
        route(&format!(
            "metadata: {{name: r, namespace: apps}}\nspec:\n  hostnames: [a.example.com]\n  upstream: {{url: \"ws://127.0.0.1:9000\"}}\n{http}"
        ))
    };
    let served = |http: &str| {
        let compiled = compile(&[spec(http)], &Backends::standalone());
        let route = compiled.table.lookup("a.example.com", "/").expect("served");
        (route.http, route.upstream.client_affinity)
    };
    assert_eq!(served(""), (None, false), "off unless asked for");
    assert_eq!(
        served("  http: {}\n"),
        (
            Some(HttpLimits {
                max_request_body: 1 << 20,
                response_timeout: std::time::Duration::from_secs(60),
            }),
            true
        )
    );
    assert_eq!(
        served(
            "  http: {maxRequestBodyBytes: 10, responseTimeoutSeconds: 5, sessionAffinity: None}\n"
        ),
        (
            Some(HttpLimits {
                max_request_body: 10,
                response_timeout: std::time::Duration::from_secs(5),
            }),
            false
        )
    );
    for (http, says) in [
        (
            "{maxRequestBodyBytes: 0}",
            "http.maxRequestBodyBytes must be 1 to 67108864",
        ),
        (
            "{maxRequestBodyBytes: 67108865}",
            "http.maxRequestBodyBytes must be 1 to 67108864",
        ),
        (
            "{responseTimeoutSeconds: 0}",
            "http.responseTimeoutSeconds must be 1 to 3600",
        ),
    ] {
        let v = one(spec(&format!("  http: {http}\n")));
        assert!(!v.accepted(), "{http}");
        let message = &cond(&v, condition::ACCEPTED).message;
        assert!(message.contains(says), "{http}: {message}");
    }
}

/// A TLS route for `host` in `namespace`, with Secret `secret`.
fn tls_route(
    namespace: &str,
    name: &str,
    created: &str,
    path: &str,
    secret: &str,
) -> WebSocketRoute {
    route(&format!(
        "metadata: {{name: {name}, namespace: {namespace}, creationTimestamp: \"{created}\"}}\nspec:\n  hostnames: [chat.example.com]\n  path: {{type: PathPrefix, value: \"{path}\"}}\n  upstream: {{url: \"ws://127.0.0.1:9000\"}}\n  tls: {{secretName: {secret}}}\n"
    ))
}

/// The key of the route serving `host` and `path`, as `namespace/name`.
fn served(c: &Compiled, host: &str, path: &str) -> Option<String> {
    c.table.lookup(host, path).map(|r| r.key.to_string())
}

/// `route` with a grant of its hostnames to `namespace`.
fn granting(mut route: WebSocketRoute, namespace: &str) -> WebSocketRoute {
    route.spec.hostname_grants.push(crate::api::HostnameGrant {
        namespace: namespace.to_owned(),
    });
    route
}

/// A plain route `namespace/name` on `host` with a path of `kind` (`Exact`, `PathPrefix`).
fn tenant(
    namespace: &str,
    name: &str,
    created: &str,
    host: &str,
    kind: &str,
    path: &str,
) -> WebSocketRoute {
    route(&format!(
        "metadata: {{name: {name}, namespace: {namespace}, creationTimestamp: \"{created}\"}}\nspec:\n  hostnames: [\"{host}\"]\n  path: {{type: {kind}, value: \"{path}\"}}\n  upstream: {{url: \"ws://127.0.0.1:9000\"}}\n"
    ))
}

#[test]
fn a_newer_route_from_another_namespace_cannot_take_a_path_of_an_owned_hostname() {
    let strict = tenant(
        "team-a",
        "strict",
        "2026-01-01T00:00:00Z",
        "app.test",
        "PathPrefix",
        "/ws",
    );
    for (kind, path) in [
        ("Exact", "/ws"),
        ("PathPrefix", "/ws/sub"),
        ("PathPrefix", "/other"),
    ] {
        let takeover = tenant(
            "team-b",
            "takeover",
            "2026-02-01T00:00:00Z",
            "app.test",
            kind,
            path,
        );
        let c = compile(&[takeover, strict.clone()], &Backends::standalone());
        let a = cond(&c.verdicts[0], condition::ACCEPTED);
        assert_eq!(
            (a.status, a.reason),
            (false, reason::CONFLICTED),
            "{kind} {path}"
        );
        assert!(
            a.message
                .contains("hostname app.test belongs to namespace team-a")
                && a.message.contains("team-a/strict")
                && a.message.contains("hostnameGrants: [{namespace: team-b}]"),
            "{}",
            a.message
        );
        assert!(c.verdicts[1].accepted());
        let served = served(&c, "app.test", path);
        let expected = path.starts_with("/ws").then(|| "team-a/strict".to_owned());
        assert_eq!(served, expected, "{kind} {path}");
    }
}

#[test]
fn a_grant_from_the_owner_lets_another_namespace_serve_its_hostname() {
    let strict = granting(
        tenant(
            "team-a",
            "strict",
            "2026-01-01T00:00:00Z",
            "app.test",
            "PathPrefix",
            "/ws",
        ),
        "team-b",
    );
    let guest = tenant(
        "team-b",
        "guest",
        "2026-02-01T00:00:00Z",
        "app.test",
        "Exact",
        "/ws/b",
    );
    // A grant from a namespace that does not own the hostname counts for nothing.
    let squatter = granting(
        tenant(
            "team-c",
            "squat",
            "2026-03-01T00:00:00Z",
            "app.test",
            "Exact",
            "/ws/c",
        ),
        "team-c",
    );
    let c = compile(&[guest, strict, squatter], &Backends::standalone());
    assert!(c.verdicts[0].accepted(), "{:?}", c.verdicts[0].conditions);
    assert!(c.verdicts[1].accepted());
    assert!(!c.verdicts[2].accepted());
    assert_eq!(
        served(&c, "app.test", "/ws/b"),
        Some("team-b/guest".to_owned())
    );
}

#[test]
fn a_wildcard_owner_keeps_the_hostnames_under_it_and_the_same_namespace_needs_no_grant() {
    let wild = tenant(
        "team-a",
        "wild",
        "2026-01-01T00:00:00Z",
        "*.example.com",
        "PathPrefix",
        "/",
    );
    let sibling = tenant(
        "team-a",
        "chat",
        "2026-02-01T00:00:00Z",
        "chat.example.com",
        "Exact",
        "/ws",
    );
    let under = tenant(
        "team-b",
        "talk",
        "2026-02-01T00:00:00Z",
        "talk.example.com",
        "Exact",
        "/ws",
    );
    let deeper = tenant(
        "team-b",
        "deep",
        "2026-02-01T00:00:00Z",
        "*.x.example.com",
        "PathPrefix",
        "/",
    );
    let elsewhere = tenant(
        "team-b",
        "other",
        "2026-02-01T00:00:00Z",
        "chat.example.org",
        "PathPrefix",
        "/",
    );
    let c = compile(
        &[wild, sibling, under, deeper, elsewhere],
        &Backends::standalone(),
    );
    let accepted: Vec<bool> = c.verdicts.iter().map(|v| v.accepted()).collect();
    assert_eq!(accepted, [true, true, false, false, true]);
    let msg = &cond(&c.verdicts[2], condition::ACCEPTED).message;
    assert!(
        msg.contains(
            "hostname talk.example.com is under *.example.com, which belongs to namespace team-a"
        ),
        "{msg}"
    );
}

#[test]
fn an_older_route_elsewhere_keeps_its_hostname_under_a_newer_wildcard() {
    let exact = tenant(
        "team-b",
        "chat",
        "2026-01-01T00:00:00Z",
        "chat.example.com",
        "PathPrefix",
        "/",
    );
    let wild = tenant(
        "team-a",
        "wild",
        "2026-02-01T00:00:00Z",
        "*.example.com",
        "PathPrefix",
        "/",
    );
    let c = compile(&[exact, wild], &Backends::standalone());
    assert!(c.verdicts.iter().all(|v| v.accepted()));
    assert_eq!(
        served(&c, "chat.example.com", "/"),
        Some("team-b/chat".to_owned())
    );
}

#[test]
fn a_tls_route_makes_every_path_of_its_hostname_tls_only() {
    let mut backends = Backends::standalone();
    tls_secret(&mut backends, "red", "chat-tls");
    let plain = tenant(
        "red",
        "plain",
        "2026-02-01T00:00:00Z",
        "chat.example.com",
        "Exact",
        "/plain",
    );
    let c = compile(
        &[
            tls_route("red", "tls", "2026-01-01T00:00:00Z", "/ws", "chat-tls"),
            plain,
        ],
        &backends,
    );
    assert!(c.verdicts.iter().all(|v| v.accepted()));
    let (route, tls_only) = c
        .table
        .select("chat.example.com", "/plain")
        .expect("routed");
    assert_eq!((route.key.name.as_str(), tls_only), ("plain", true));
}

fn tls_secret(backends: &mut Backends, namespace: &str, name: &str) -> Vec<u8> {
    let cert = rcgen::generate_simple_self_signed(vec!["chat.example.com".to_owned()])
        .expect("certificate");
    let mut data = SecretData::new();
    data.insert("tls.crt".into(), cert.cert.pem().into_bytes());
    data.insert(
        "tls.key".into(),
        cert.signing_key.serialize_pem().into_bytes(),
    );
    backends.insert_secret(namespace, name, data);
    cert.cert.der().to_vec()
}

#[test]
fn a_hostnames_certificate_is_the_oldest_routes_and_a_later_tenant_is_told() {
    let mut backends = Backends::standalone();
    let owner = tls_secret(&mut backends, "red", "chat-tls");
    tls_secret(&mut backends, "blue", "chat-tls");
    let c = compile(
        &[
            tls_route(
                "blue",
                "later",
                "2026-02-01T00:00:00Z",
                "/other",
                "chat-tls",
            ),
            granting(
                tls_route("red", "first", "2026-01-01T00:00:00Z", "/ws", "chat-tls"),
                "blue",
            ),
        ],
        &backends,
    );
    let served = c
        .table
        .certificates()
        .lookup("chat.example.com")
        .expect("certificate");
    assert_eq!(served.cert[0].as_ref(), owner.as_slice());
    let later = &c.verdicts[0];
    assert!(later.accepted());
    assert!(
        later
            .warnings
            .iter()
            .any(|w| w.reason == warning::CERTIFICATE_SHADOWED
                && w.message.contains("route red/first (Secret red/chat-tls)")),
        "{:?}",
        later.warnings
    );
    assert!(
        c.verdicts[1]
            .warnings
            .iter()
            .all(|w| w.reason != warning::CERTIFICATE_SHADOWED)
    );
}

#[test]
fn a_route_cannot_use_another_namespaces_secret() {
    let mut backends = Backends::standalone();
    tls_secret(&mut backends, "red", "chat-tls");
    let v = compile(
        &[tls_route(
            "blue",
            "b",
            "2026-01-01T00:00:00Z",
            "/ws",
            "chat-tls",
        )],
        &backends,
    )
    .verdicts
    .remove(0);
    let refs = cond(&v, condition::RESOLVED_REFS);
    assert_eq!(
        (refs.status, refs.reason),
        (false, reason::SECRET_NOT_FOUND)
    );
    assert!(refs.message.contains("blue/chat-tls"), "{}", refs.message);
}

#[test]
fn a_second_compile_of_the_same_secrets_parses_nothing_again() {
    let mut backends = Backends::standalone();
    tls_secret(&mut backends, "red", "chat-tls");
    let mut data = SecretData::new();
    data.insert(
        "secret".into(),
        b"0123456789abcdef0123456789abcdef".to_vec(),
    );
    backends.insert_secret("red", "jwt", data);
    let ca = rcgen::generate_simple_self_signed(vec!["ca.example.com".to_owned()]).expect("CA");
    let mut data = SecretData::new();
    data.insert("ca.crt".into(), ca.cert.pem().into_bytes());
    backends.insert_secret("red", "upstream-ca", data);
    let routes = [route(
        "metadata: {name: chat, namespace: red}\nspec:\n  hostnames: [chat.example.com]\n  path: {type: PathPrefix, value: /ws}\n  upstream: {url: \"wss://10.0.0.5:8443\", tls: {caSecretName: upstream-ca}}\n  tls: {secretName: chat-tls}\n  auth:\n    jwt:\n      keys: {secretName: jwt}\n",
    )];
    let first = compile(&routes, &backends);
    let second = compile(&routes, &backends);
    assert!(first.verdicts[0].accepted(), "{:?}", first.verdicts[0]);
    let certificate = |c: &Compiled| {
        c.table
            .certificates()
            .lookup("chat.example.com")
            .expect("certificate")
            .clone()
    };
    assert!(Arc::ptr_eq(&certificate(&first), &certificate(&second)));
    let route = |c: &Compiled| c.table.routes().next().expect("route").clone();
    let (a, b) = (route(&first), route(&second));
    let (Some(RouteAuth::Jwt(a_auth)), Some(RouteAuth::Jwt(b_auth))) = (&a.auth, &b.auth) else {
        panic!("JWT auth on both");
    };
    assert!(a_auth.shares_keys_with(b_auth));
    let roots = |r: &Route| {
        r.upstream
            .tls
            .as_ref()
            .and_then(|t| t.roots.clone())
            .expect("CA roots")
    };
    assert!(Arc::ptr_eq(&roots(&a), &roots(&b)));
}

#[test]
fn routes_that_list_the_same_origins_share_one_compiled_policy() {
    let c = compile(
        &[
            simple("a", "2026-01-01T00:00:00Z", "a.example.com", "/"),
            simple("b", "2026-01-01T00:00:00Z", "b.example.com", "/"),
        ],
        &Backends::standalone(),
    );
    let a = c.table.lookup("a.example.com", "/").expect("routed");
    let b = c.table.lookup("b.example.com", "/").expect("routed");
    assert!(Arc::ptr_eq(&a.origins, &b.origins));
    let other = route(
        "metadata: {name: c}\nspec:\n  hostnames: [c.example.com]\n  origins: {allow: [\"https://app.example.com\"], allowNull: true}\n  upstream: {url: \"ws://127.0.0.1:9\"}\n",
    );
    let c = compile(
        &[
            simple("a", "2026-01-01T00:00:00Z", "a.example.com", "/"),
            other,
        ],
        &Backends::standalone(),
    );
    let a = c.table.lookup("a.example.com", "/").expect("routed");
    let other = c.table.lookup("c.example.com", "/").expect("routed");
    assert!(
        !Arc::ptr_eq(&a.origins, &other.origins),
        "allowNull differs"
    );
    assert!(other.origins.allows_null() && !a.origins.allows_null());
}

/// What a compile decided, comparable: every verdict, and every served route (its compiled
/// form) and certificate by hostname.
fn decided(c: &Compiled, hosts: &[&str]) -> (Vec<Verdict>, Vec<String>, Vec<Option<Vec<u8>>>) {
    let verdicts = c.verdicts.iter().map(|v| (**v).clone()).collect();
    // The policy's sets print in no fixed order: it is shown by what it was compiled from.
    let none = Arc::new(OriginPolicy::new::<&str>(&[], false, false).expect("empty policy"));
    let shown = |r: &Arc<Route>| {
        let origins = &r.origins;
        let rest = Route {
            origins: none.clone(),
            ..(**r).clone()
        };
        let from: Vec<String> = origins.patterns().collect();
        let flags = (origins.allows_null(), origins.allows_missing());
        format!("{rest:?} {from:?} {flags:?}")
    };
    let mut routes: Vec<String> = c.table.routes().map(shown).collect();
    routes.sort();
    let certificates = hosts
        .iter()
        .map(|h| {
            let served = c.table.certificates().lookup(h);
            served.map(|k| k.cert[0].as_ref().to_vec())
        })
        .collect();
    (verdicts, routes, certificates)
}

fn on_service(namespace: &str, name: &str, created: &str, host: &str) -> WebSocketRoute {
    route(&format!(
        "metadata: {{name: {name}, namespace: {namespace}, creationTimestamp: \"{created}\", generation: 1}}\nspec:\n  hostnames: [\"{host}\"]\n  path: {{type: PathPrefix, value: /ws}}\n  origins: {{allow: [\"https://app.example.com\"]}}\n  upstream: {{service: {{name: chat, port: 80}}}}\n"
    ))
}

fn endpoints(backends: &mut Backends, host: &str) {
    let target = Target {
        host: host.into(),
        port: 8080,
    };
    backends.insert("apps", "chat", Some(80), vec![target]);
}

#[test]
fn a_compiler_decides_what_a_fresh_compile_decides_through_every_kind_of_change() {
    let hosts = [
        "chat.example.com",
        "secure.example.com",
        "other.example.com",
    ];
    let a = Arc::new(on_service(
        "apps",
        "a",
        "2026-01-01T00:00:00Z",
        "chat.example.com",
    ));
    let secure = Arc::new(route(
        "metadata: {name: secure, namespace: apps, creationTimestamp: \"2026-01-01T00:00:00Z\"}\nspec:\n  hostnames: [secure.example.com]\n  upstream: {url: \"ws://127.0.0.1:9000\"}\n  tls: {secretName: secure-tls}\n",
    ));
    let other = Arc::new(simple(
        "other",
        "2026-01-01T00:00:00Z",
        "other.example.com",
        "/",
    ));
    let mut backends = Backends::standalone();
    endpoints(&mut backends, "10.0.0.1");
    tls_secret(&mut backends, "apps", "secure-tls");
    let mut compiler = Compiler::default();
    let mut step = |routes: &[Arc<WebSocketRoute>], backends: &Backends| {
        let kept = compiler.compile(routes, backends);
        let owned: Vec<WebSocketRoute> = routes.iter().map(|r| (**r).clone()).collect();
        let fresh = compile(&owned, backends);
        assert_eq!(decided(&kept, &hosts), decided(&fresh, &hosts));
        kept
    };

    let first = step(&[a.clone(), secure.clone(), other.clone()], &backends);
    // The Service's endpoints move.
    endpoints(&mut backends, "10.0.0.2");
    let moved = step(&[a.clone(), secure.clone(), other.clone()], &backends);
    let target = |c: &Compiled| {
        c.table
            .lookup("chat.example.com", "/ws")
            .expect("served")
            .upstream
            .targets
            .clone()
    };
    assert_ne!(target(&first), target(&moved));
    // A relist: equal objects in new `Arc`s, and the certificate is renewed.
    tls_secret(&mut backends, "apps", "secure-tls");
    let relisted: Vec<Arc<WebSocketRoute>> = [&a, &secure, &other]
        .iter()
        .map(|r| Arc::new((***r).clone()))
        .collect();
    step(&relisted, &backends);
    // A newer route claims the same hostname and path, then the older one goes.
    let newer = Arc::new(on_service(
        "apps",
        "newer",
        "2026-02-01T00:00:00Z",
        "chat.example.com",
    ));
    let conflicted = step(
        &[a.clone(), secure.clone(), other.clone(), newer.clone()],
        &backends,
    );
    assert!(!conflicted.verdicts[3].accepted());
    let alone = step(&[secure.clone(), other.clone(), newer.clone()], &backends);
    assert!(alone.verdicts[2].accepted());
    // A spec changes; the older route comes back; a duplicate declaration appears.
    let mut widened = (*other).clone();
    widened
        .spec
        .origins
        .allow
        .push("https://admin.example.com".into());
    let widened = Arc::new(widened);
    step(
        &[
            a.clone(),
            secure.clone(),
            widened.clone(),
            newer.clone(),
            widened.clone(),
        ],
        &backends,
    );
    // The Service and the Secret go.
    let mut bare = Backends::standalone();
    let gone = step(&[a.clone(), secure.clone(), widened, newer], &bare);
    assert!(!cond(&gone.verdicts[0], condition::READY).status);
    // And come back.
    endpoints(&mut bare, "10.0.0.3");
    tls_secret(&mut bare, "apps", "secure-tls");
    step(&[a, secure, other], &bare);
}

#[test]
fn an_unchanged_route_keeps_its_compiled_route_and_verdict_and_a_changed_one_gets_new_ones() {
    let mut compiler = Compiler::default();
    let mut backends = Backends::standalone();
    endpoints(&mut backends, "10.0.0.1");
    let plain = Arc::new(simple(
        "plain",
        "2026-01-01T00:00:00Z",
        "plain.example.com",
        "/",
    ));
    let on_chat = Arc::new(on_service(
        "apps",
        "chat",
        "2026-01-01T00:00:00Z",
        "chat.example.com",
    ));
    let routes = [plain.clone(), on_chat.clone()];
    let first = compiler.compile(&routes, &backends);
    endpoints(&mut backends, "10.0.0.2");
    // Equal but not the same object, as after a relist: still unchanged.
    let relisted = [Arc::new((*plain).clone()), on_chat];
    let second = compiler.compile(&relisted, &backends);
    let served = |c: &Compiled, host: &str| c.table.lookup(host, "/ws").expect("served").clone();
    assert!(Arc::ptr_eq(
        &served(&first, "plain.example.com"),
        &served(&second, "plain.example.com")
    ));
    assert!(Arc::ptr_eq(&first.verdicts[0], &second.verdicts[0]));
    assert!(!Arc::ptr_eq(
        &served(&first, "chat.example.com"),
        &served(&second, "chat.example.com")
    ));
    assert_eq!(
        first.verdicts[1], second.verdicts[1],
        "same conditions, new endpoints"
    );

    let mut edited = (*plain).clone();
    edited.spec.origins.allow = vec!["https://other.example.com".into()];
    let third = compiler.compile(&[Arc::new(edited), relisted[1].clone()], &backends);
    assert!(!Arc::ptr_eq(
        &served(&second, "plain.example.com"),
        &served(&third, "plain.example.com")
    ));
    assert!(Arc::ptr_eq(&second.verdicts[1], &third.verdicts[1]));
}
