//! `wsgate controller` against a real kube-apiserver and etcd: routes created, edited and
//! deleted through the API change what the proxy serves, status and Events are written by
//! the Lease holder only, Services resolve through EndpointSlices, and an API server outage
//! costs nothing.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use support::control_plane::ControlPlane;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use wsgate::api::WebSocketRoute;

const HOST: &str = "chat.example.test";
const APP: &str = "https://app.example.test";
/// The leader's count of successful status writes.
const STATUS_WRITES: &str = r#"wsgate_status_writes_total{result="ok"}"#;

fn route(name: &str, upstream: &str) -> WebSocketRoute {
    let yaml = support::route(
        name,
        HOST,
        "/ws",
        "{allow: [\"https://app.example.test\"]}",
        upstream,
    );
    serde_saphyr::from_str(&yaml).expect("route parses")
}

/// Polls the route until its status describes its current generation and Ready has
/// `status`.
async fn wait_ready(api: &Api<WebSocketRoute>, name: &str, status: &str) -> WebSocketRoute {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = api.get(name).await.expect("get route");
        let ready = r
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        let current =
            r.status.as_ref().and_then(|s| s.observed_generation) == r.metadata.generation;
        if current && ready.as_deref() == Some(status) {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never became Ready={status}: {:?}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The condition of `type_` on `route`.
fn condition(route: &WebSocketRoute, type_: &str) -> Condition {
    route
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .cloned()
        .unwrap_or_else(|| panic!("no {type_} condition: {:?}", route.status))
}

/// Creates namespaces `names`.
async fn create_namespaces(client: &kube::Client, names: &[&str]) {
    use k8s_openapi::api::core::v1::Namespace;
    for name in names {
        let namespace: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("ns");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("create namespace");
    }
}

/// A controller against `plane`, with a short Lease so failover tests stay quick.
async fn controller(plane: &ControlPlane, identity: &str) -> Gate {
    controller_with_lease(plane, identity, 3, &[]).await
}

/// A controller against `plane` whose Lease claims last `seconds`, with `extra` flags.
async fn controller_with_lease(
    plane: &ControlPlane,
    identity: &str,
    seconds: u64,
    extra: &[&str],
) -> Gate {
    let mut args: Vec<std::ffi::OsString> = vec![
        "controller".into(),
        "--identity".into(),
        identity.into(),
        "--lease-duration".into(),
        seconds.to_string().into(),
    ];
    args.extend(extra.iter().map(Into::into));
    Gate::launch(&args, &[("KUBECONFIG", plane.kubeconfig.as_os_str())]).await
}

/// A non-loopback IPv4 address of this machine: the API server refuses loopback addresses
/// in EndpointSlices, and a real endpoint must be one the gateway can connect to.
fn host_ipv4() -> String {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .expect("run `hostname -I`");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| !ip.is_loopback()))
        .unwrap_or_else(|| panic!("this test needs a non-loopback IPv4 address on the machine (`hostname -I` printed none)"))
        .to_owned()
}

/// A Service `name` with port 80 (`ws`) and one EndpointSlice per `(address, port)`.
async fn service(client: &kube::Client, name: &str, endpoints: &[(&str, u16, bool)]) {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "ws", "port": 80, "targetPort": "ws"}]}
    }))
    .expect("service");
    services
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    for (i, (address, port, ready)) in endpoints.iter().enumerate() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{name}-{i}"), "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "conditions": {"ready": ready}}],
            "ports": [{"name": "ws", "port": port}]
        }))
        .expect("slice");
        slices
            .create(&PostParams::default(), &slice)
            .await
            .expect("create slice");
    }
}

/// Sends one message on a new WebSocket to the test route and expects it back.
async fn echo_through(gate: &Gate, origin: &str) {
    echo(gate.proxy, HOST, "/ws", origin, &[]).await;
}

/// A control plane and one controller serving the route `chat` (Ready) from an echo
/// upstream. Dropping `plane` stops the control plane.
struct Served {
    plane: ControlPlane,
    gate: Gate,
    api: Api<WebSocketRoute>,
}

async fn chat_served() -> Served {
    let (plane, client) = ControlPlane::with_crd().await;
    let up = Upstream::start().await;
    let gate = controller(&plane, "solo").await;
    let api: Api<WebSocketRoute> = Api::namespaced(client, "default");
    create_ready(&api, route("chat", &up.url())).await;
    Served { plane, gate, api }
}

/// Creates `r` and waits until it is Ready.
async fn create_ready(api: &Api<WebSocketRoute>, r: WebSocketRoute) -> WebSocketRoute {
    let name = r.metadata.name.clone().expect("a name");
    api.create(&PostParams::default(), &r)
        .await
        .expect("create route");
    wait_ready(api, &name, "True").await
}

#[tokio::test]
async fn routes_from_the_api_server_are_served_and_get_status() {
    let (plane, client) = ControlPlane::with_crd().await;
    let up = Upstream::start().await;
    let gate = Gate::launch(
        &["controller".into()],
        &[("KUBECONFIG", plane.kubeconfig.as_os_str())],
    )
    .await;

    let api: Api<WebSocketRoute> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &route("chat", &up.url()))
        .await
        .expect("create route");
    let created = wait_ready(&api, "chat", "True").await;
    let status = created.status.expect("status");
    assert_eq!(status.observed_generation, created.metadata.generation);
    let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Accepted", "ResolvedRefs", "Programmed", "Ready"]);

    let (mut ws, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");
    ws.send(Message::text("through the cluster"))
        .await
        .expect("send");
    assert_eq!(
        ws.next().await.expect("reply").expect("ok"),
        Message::text("through the cluster")
    );
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some("https://evil.example"), &[])
            .await
            .err(),
        Some(403)
    );

    // A conflicting newer route is refused in its status and changes nothing.
    api.create(&PostParams::default(), &route("copy", &up.url()))
        .await
        .expect("create copy");
    let copy = wait_ready(&api, "copy", "False").await;
    let accepted = copy
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Accepted")
        .expect("Accepted");
    assert_eq!(accepted.reason, "Conflicted");
    assert!(
        accepted.message.contains("default/chat"),
        "{}",
        accepted.message
    );

    api.delete("chat", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(close_code(&mut ws).await.0, 1001);
    // The copy takes over once the older route is gone.
    wait_ready(&api, "copy", "True").await;
}

#[tokio::test]
async fn service_upstreams_resolve_through_endpoint_slices() {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    let (plane, client) = ControlPlane::with_crd().await;
    let gate = Gate::launch(
        &["controller".into()],
        &[("KUBECONFIG", plane.kubeconfig.as_os_str())],
    )
    .await;

    // No controller-manager runs here, so the test writes the EndpointSlice itself. The API
    // server refuses loopback addresses in slices, so the endpoint is a documentation
    // address (RFC 5737) that nothing ever connects to: the test checks resolution, and the
    // connect path itself is covered through `--service` in tests/gateway.rs.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "chat"},
        "spec": {"ports": [{"name": "ws", "port": 80, "targetPort": 9000}]}
    }))
    .expect("service");
    services
        .create(&PostParams::default(), &service)
        .await
        .expect("create service");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice = |ready: bool| -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "chat-1", "labels": {"kubernetes.io/service-name": "chat"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["192.0.2.10"], "conditions": {"ready": ready}}],
            "ports": [{"name": "ws", "port": 9000}]
        }))
        .expect("slice")
    };
    slices
        .create(&PostParams::default(), &slice(true))
        .await
        .expect("create slice");

    let api: Api<WebSocketRoute> = Api::namespaced(client, "default");
    create_ready(&api, route("chat", "{service: {name: chat, port: 80}}")).await;
    let (_, routes) = gate.admin_get("/routes").await;
    let v: serde_json::Value = serde_json::from_str(&routes).expect("json");
    assert_eq!(
        v["routes"][0]["upstream"],
        serde_json::json!(["192.0.2.10:9000"]),
        "{routes}"
    );

    // The only endpoint stops being ready: the route says so, and handshakes get 502
    // without any connection attempt.
    let not_ready = serde_json::json!({"endpoints": slice(false).endpoints});
    slices
        .patch("chat-1", &PatchParams::default(), &Patch::Merge(&not_ready))
        .await
        .expect("patch slice");
    let r = wait_ready(&api, "chat", "False").await;
    let refs = r
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "ResolvedRefs")
        .expect("ResolvedRefs");
    assert_eq!(refs.reason, "NoReadyEndpoints");
    let raw = raw_request(
        gate.proxy,
        &upgrade_request(HOST, "/ws", "Origin: https://app.example.test\r\n"),
    )
    .await;
    assert_eq!(
        (raw.status, raw.body.as_str()),
        (502, "no upstream available\n")
    );
}

#[tokio::test]
async fn editing_the_allowlist_refuses_the_removed_origin_and_closes_its_connections_1008() {
    let (plane, client) = ControlPlane::with_crd().await;
    let up = Upstream::start().await;
    let gate = controller(&plane, "solo").await;
    let api: Api<WebSocketRoute> = Api::namespaced(client, "default");
    let other = "https://other.example.test";
    let mut chat = route("chat", &up.url());
    chat.spec.origins.allow = vec![APP.into(), other.into()];
    api.create(&PostParams::default(), &chat)
        .await
        .expect("create route");
    wait_ready(&api, "chat", "True").await;
    let (mut from_other, _) = connect(gate.proxy, HOST, "/ws", Some(other), &[])
        .await
        .expect("other is allowed");
    let (mut from_app, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("app is allowed");

    let patch = serde_json::json!({"spec": {"origins": {"allow": [APP]}}});
    api.patch("chat", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("edit allowlist");
    assert_eq!(close_code(&mut from_other).await.0, 1008);
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some(other), &[])
            .await
            .err(),
        Some(403)
    );
    from_app.send(Message::text("still")).await.expect("send");
    assert_eq!(
        from_app.next().await.expect("reply").expect("ok"),
        Message::text("still")
    );
    let edited = wait_ready(&api, "chat", "True").await;
    assert_eq!(
        edited.status.expect("status").observed_generation,
        edited.metadata.generation
    );
}

#[tokio::test]
async fn deleting_a_route_closes_its_connections_1001_and_answers_404() {
    // `_plane` keeps the control plane running to the end of the test.
    let Served {
        plane: _plane,
        gate,
        api,
    } = chat_served().await;
    let (mut live, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");
    api.delete("chat", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(close_code(&mut live).await.0, 1001);
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some(APP), &[]).await.err(),
        Some(404)
    );
}

#[tokio::test]
async fn a_missing_service_is_backend_not_found_until_it_is_created() {
    let (plane, client) = ControlPlane::with_crd().await;
    let ip = host_ipv4();
    let up = Upstream::start_on(&ip).await;
    let gate = controller(&plane, "solo").await;
    let api: Api<WebSocketRoute> = Api::namespaced(client.clone(), "default");
    api.create(
        &PostParams::default(),
        &route("chat", "{service: {name: later, port: 80}}"),
    )
    .await
    .expect("create route");
    let waiting = wait_ready(&api, "chat", "False").await;
    let refs = condition(&waiting, "ResolvedRefs");
    assert_eq!(
        (refs.status.as_str(), refs.reason.as_str()),
        ("False", "BackendNotFound")
    );
    assert!(refs.message.contains("later"), "{}", refs.message);
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some(APP), &[]).await.err(),
        Some(502)
    );

    service(&client, "later", &[(&ip, up.addr.port(), true)]).await;
    wait_ready(&api, "chat", "True").await;
    echo_through(&gate, APP).await;
}

#[tokio::test]
async fn service_handshakes_reach_ready_endpoints_and_skip_one_that_refuses() {
    let (plane, client) = ControlPlane::with_crd().await;
    let ip = host_ipv4();
    let (mut a, mut b) = (Upstream::start_on(&ip).await, Upstream::start_on(&ip).await);
    let refusing = std::net::TcpListener::bind((ip.as_str(), 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let gate = controller(&plane, "solo").await;
    service(
        &client,
        "chat",
        &[
            (&ip, a.addr.port(), true),
            (&ip, refusing, true),
            (&ip, b.addr.port(), true),
        ],
    )
    .await;
    let api: Api<WebSocketRoute> = Api::namespaced(client, "default");
    create_ready(&api, route("chat", "{service: {name: chat, port: 80}}")).await;
    for _ in 0..30 {
        echo_through(&gate, APP).await;
    }
    let (at_a, at_b) = (a.handshakes(), b.handshakes());
    assert_eq!(at_a + at_b, 30);
    assert!(at_a > 0 && at_b > 0, "a: {at_a}, b: {at_b}");
}

#[tokio::test]
async fn what_cel_cannot_check_is_accepted_false_invalid_with_an_event() {
    use k8s_openapi::api::events::v1::Event;
    let (plane, client) = ControlPlane::with_crd().await;
    let up = Upstream::start().await;
    let _gate = controller(&plane, "solo").await;
    let api: Api<WebSocketRoute> = Api::namespaced(client.clone(), "default");
    // Well-formed for the schema's rules, but not valid punycode: only compile can tell.
    let mut bad = route("bad", &up.url());
    bad.spec.origins.allow = vec!["https://xn--a.example.test".into()];
    api.create(&PostParams::default(), &bad)
        .await
        .expect("the API server accepts it");
    let refused = wait_ready(&api, "bad", "False").await;
    let accepted = condition(&refused, "Accepted");
    assert_eq!(accepted.reason, "Invalid");
    assert!(
        accepted.message.contains("xn--a.example.test"),
        "{}",
        accepted.message
    );

    let events: Api<Event> = Api::namespaced(client, "default");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let list = events.list(&Default::default()).await.expect("list events");
        let found = list.items.iter().find(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad")
                && e.reason.as_deref() == Some("Invalid")
        });
        if let Some(e) = found {
            assert_eq!(e.type_.as_deref(), Some("Warning"));
            assert_eq!(e.note.as_deref(), Some(accepted.message.as_str()));
            assert_eq!(e.reporting_instance.as_deref(), Some("solo"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Invalid event: {:?}",
            list.items
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn two_controllers_serve_alike_one_writes_status_and_the_other_takes_over() {
    use k8s_openapi::api::coordination::v1::Lease;
    let (plane, client) = ControlPlane::with_crd().await;
    let up = Upstream::start().await;
    let first = controller(&plane, "first").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let holder = || async {
        leases
            .get_opt("wsgate")
            .await
            .expect("get lease")
            .and_then(|l| l.spec?.holder_identity)
    };
    first
        .wait_for(
            || async { holder().await.as_deref() == Some("first") },
            "first to lead",
        )
        .await;
    let second = controller(&plane, "second").await;

    let api: Api<WebSocketRoute> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &route("chat", &up.url()))
        .await
        .expect("create route");
    wait_ready(&api, "chat", "True").await;
    for gate in [&first, &second] {
        gate.wait_for(
            || async { gate.admin_get("/routes").await.1.contains("default") },
            "the route to be served",
        )
        .await;
        echo_through(gate, APP).await;
        assert_eq!(
            connect(gate.proxy, HOST, "/ws", Some("https://evil.example"), &[])
                .await
                .err(),
            Some(403)
        );
    }
    assert_eq!(first.metric("wsgate_leader").await, Some(1.0));
    assert_eq!(second.metric("wsgate_leader").await, Some(0.0));
    first
        .wait_for(
            || async { first.metric(STATUS_WRITES).await.unwrap_or(0.0) >= 1.0 },
            "the leader to count its status write",
        )
        .await;
    assert_eq!(
        second.metric(STATUS_WRITES).await,
        None,
        "the follower wrote status"
    );

    // The leader stops: the other takes the Lease and writes the status of what changes next.
    first.terminate();
    second
        .wait_for(
            || async { holder().await.as_deref() == Some("second") },
            "second to take over",
        )
        .await;
    second
        .wait_for(
            || async { second.metric("wsgate_leader").await == Some(1.0) },
            "second to know it leads",
        )
        .await;
    writes_status_of_a_new_route(&second, &api, "copy", &up).await;

    // A leader that crashes (SIGKILL, no release) is replaced once its claim runs out.
    let third = controller(&plane, "third").await;
    drop(second);
    third
        .wait_for(
            || async { holder().await.as_deref() == Some("third") },
            "third to take over",
        )
        .await;
    writes_status_of_a_new_route(&third, &api, "last", &up).await;
}

/// A route created now on its own path gets Ready, written by `leader`.
async fn writes_status_of_a_new_route(
    leader: &Gate,
    api: &Api<WebSocketRoute>,
    name: &str,
    up: &Upstream,
) {
    let before = leader.metric(STATUS_WRITES).await.unwrap_or(0.0);
    let mut r = route(name, &up.url());
    r.spec.path.value = format!("/{name}");
    api.create(&PostParams::default(), &r)
        .await
        .expect("create route");
    wait_ready(api, name, "True").await;
    // The counter moves just after the API server answers the write, so the test waits for it.
    leader
        .wait_for(
            || async { leader.metric(STATUS_WRITES).await.unwrap_or(0.0) > before },
            &format!("{name}'s status to be counted as written by this replica"),
        )
        .await;
}

#[tokio::test]
async fn an_api_server_outage_drops_nothing_and_the_controller_resyncs_after() {
    let Served {
        mut plane, gate, ..
    } = chat_served().await;
    let (mut live, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");

    plane.stop_apiserver();
    gate.wait_for(
        || async { gate.log().contains("watch stale") },
        "the controller to notice",
    )
    .await;
    // Live and new connections are served from the last snapshot, origins still enforced.
    live.send(Message::text("still here")).await.expect("send");
    assert_eq!(
        live.next().await.expect("reply").expect("ok"),
        Message::text("still here")
    );
    echo_through(&gate, APP).await;
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some("https://evil.example"), &[])
            .await
            .err(),
        Some(403)
    );
    assert_eq!(gate.admin_get("/readyz").await.0, 200);

    plane.start_apiserver();
    // Changed before the controller's watches are back: it must catch up from a fresh list.
    let client = plane.client().await;
    let api: Api<WebSocketRoute> = Api::namespaced(client, "default");
    let other = "https://other.example.test";
    let patch = serde_json::json!({"spec": {"origins": {"allow": [other]}}});
    api.patch("chat", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("edit allowlist");
    assert_eq!(close_code(&mut live).await.0, 1008);
    echo_through(&gate, other).await;
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some(APP), &[]).await.err(),
        Some(403)
    );
    let resynced = wait_ready(&api, "chat", "True").await;
    assert_eq!(
        resynced.status.expect("status").observed_generation,
        resynced.metadata.generation
    );
}

/// The ClusterRole the README lists for the controller, optionally without EndpointSlices.
fn cluster_role(with_slices: bool) -> k8s_openapi::api::rbac::v1::ClusterRole {
    let mut rules = vec![
        serde_json::json!({"apiGroups": ["wsgate.dev"], "resources": ["websocketroutes"], "verbs": ["get", "list", "watch"]}),
        serde_json::json!({"apiGroups": ["wsgate.dev"], "resources": ["websocketroutes/status"], "verbs": ["patch"]}),
        serde_json::json!({"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]}),
        serde_json::json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}),
        serde_json::json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "watch", "create", "update"]}),
        serde_json::json!({"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}),
    ];
    if with_slices {
        rules.push(serde_json::json!({"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}));
    }
    serde_json::from_value(serde_json::json!({"metadata": {"name": "wsgate"}, "rules": rules}))
        .expect("cluster role")
}

/// Creates ClusterRole `role` and binds it to the user `wsgate`.
async fn grant_wsgate(client: &kube::Client, role: &k8s_openapi::api::rbac::v1::ClusterRole) {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), role)
        .await
        .expect("create role");
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "wsgate"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role.metadata.name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "wsgate"}]
    }))
    .expect("binding");
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("create binding");
}

#[tokio::test]
async fn readyz_waits_for_every_initial_list_and_the_documented_rbac_suffices() {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let (plane, client) = ControlPlane::with_crd().await;
    let up = Upstream::start().await;
    grant_wsgate(&client, &cluster_role(false)).await;
    let api: Api<WebSocketRoute> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &route("chat", &up.url()))
        .await
        .expect("create route");

    // Routes and Services can be listed, EndpointSlices cannot: no snapshot, not ready.
    let kubeconfig = plane.kubeconfig_wsgate();
    let gate = Gate::spawn(
        &["controller".into()],
        &[("KUBECONFIG", kubeconfig.as_os_str())],
    )
    .await;
    gate.wait_for(
        || async { gate.log().contains("endpointslices") && gate.log().contains("forbidden") },
        "the EndpointSlice watch to be refused",
    )
    .await;
    assert_eq!(gate.admin_get("/readyz").await.0, 503);
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some(APP), &[]).await.err(),
        Some(503)
    );

    // Granted: the list completes, the first snapshot serves, status is written.
    let grant = serde_json::json!({"rules": cluster_role(true).rules});
    Api::<ClusterRole>::all(client.clone())
        .patch("wsgate", &PatchParams::default(), &Patch::Merge(&grant))
        .await
        .expect("grant endpointslices");
    gate.wait_for(
        || async { gate.admin_get("/readyz").await.0 == 200 },
        "readyz once every list is in",
    )
    .await;
    echo_through(&gate, APP).await;
    wait_ready(&api, "chat", "True").await;
}

#[tokio::test]
async fn watching_some_namespaces_serves_their_routes_and_ignores_the_rest() {
    let (plane, client) = ControlPlane::with_crd().await;
    let up = Upstream::start().await;
    create_namespaces(&client, &["red", "blue", "green"]).await;
    let gate = Gate::launch(
        &["controller".into(), "--namespace".into(), "red,blue".into()],
        &[("KUBECONFIG", plane.kubeconfig.as_os_str())],
    )
    .await;
    // One hostname each: a hostname belongs to one namespace.
    let host = |ns: &str| format!("{ns}.example.test");
    for (ns, path) in [("red", "/red"), ("blue", "/blue"), ("green", "/green")] {
        let mut r = route("chat", &up.url());
        r.spec.hostnames = vec![host(ns)];
        r.spec.path.value = path.into();
        Api::<WebSocketRoute>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &r)
            .await
            .expect("create route");
    }
    for ns in ["red", "blue"] {
        wait_ready(&Api::namespaced(client.clone(), ns), "chat", "True").await;
    }
    for (ns, path) in [("red", "/red"), ("blue", "/blue")] {
        echo(gate.proxy, &host(ns), path, APP, &[]).await;
    }
    assert_eq!(
        connect(gate.proxy, &host("green"), "/green", Some(APP), &[])
            .await
            .err(),
        Some(404)
    );
    let green: Api<WebSocketRoute> = Api::namespaced(client, "green");
    assert_eq!(green.get("chat").await.expect("get").status, None);
}

#[tokio::test]
async fn a_hostname_belongs_to_its_first_namespace_until_it_grants_another() {
    let (plane, client) = ControlPlane::with_crd().await;
    let up = Upstream::start().await;
    create_namespaces(&client, &["team-a", "team-b"]).await;
    let gate = controller(&plane, "solo").await;
    let team_a: Api<WebSocketRoute> = Api::namespaced(client.clone(), "team-a");
    let team_b: Api<WebSocketRoute> = Api::namespaced(client.clone(), "team-b");
    create_ready(&team_a, route("strict", &up.url())).await;
    let mut takeover = route("takeover", &up.url());
    takeover.spec.path.match_type = wsgate::api::PathMatchType::Exact;
    takeover.spec.origins.allow = vec!["https://evil.example.test".into()];
    team_b
        .create(&PostParams::default(), &takeover)
        .await
        .expect("create route");
    let refused = wait_ready(&team_b, "takeover", "False").await;
    let accepted = condition(&refused, "Accepted");
    assert_eq!(accepted.reason, "Conflicted");
    assert!(
        accepted.message.contains("belongs to namespace team-a")
            && accepted.message.contains("team-a/strict"),
        "{}",
        accepted.message
    );
    assert_eq!(
        connect(
            gate.proxy,
            HOST,
            "/ws",
            Some("https://evil.example.test"),
            &[]
        )
        .await
        .err(),
        Some(403),
        "/ws stays team-a's"
    );

    let patch = serde_json::json!({"spec": {"hostnameGrants": [{"namespace": "team-b"}]}});
    team_a
        .patch("strict", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("grant");
    wait_ready(&team_b, "takeover", "True").await;
    echo(gate.proxy, HOST, "/ws", "https://evil.example.test", &[]).await;

    let bad = serde_json::json!({"spec": {"hostnameGrants": [{"namespace": "Team_B"}]}});
    let refused = team_a
        .patch("strict", &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .expect_err("the API server refuses a grant that names no namespace");
    assert!(refused.to_string().contains("namespace name"), "{refused}");
}

#[tokio::test]
async fn every_metric_the_grafana_dashboard_queries_is_exported() {
    // Controller mode, so the Lease and status families exist too; one finished
    // connection, so every connection family has a sample (empty families are not shown).
    let Served {
        plane: _plane,
        gate,
        ..
    } = chat_served().await;
    echo_through(&gate, APP).await;
    gate.wait_for(
        || async {
            gate.metric("wsgate_upstream_connect_seconds_count").await == Some(1.0)
                && gate
                    .admin_get("/metrics")
                    .await
                    .1
                    .contains("wsgate_closes_total")
        },
        "the connection to be counted",
    )
    .await;
    let (_, metrics) = gate.admin_get("/metrics").await;
    let families: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/wsgate/dashboards/wsgate.json"
        ))
        .expect("dashboard"),
    )
    .expect("dashboard is JSON");
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("wsgate_"))
            {
                let family = ["_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(name);
                assert!(
                    families.contains(&family),
                    "panel `{}` queries {name}, which /metrics does not export",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 12, "{queried}");
}

/// A `kubernetes.io/tls` Secret with this certificate and key (PEM), created or replaced.
async fn tls_secret(client: &kube::Client, name: &str, cert: &str, key: &str) {
    use k8s_openapi::api::core::v1::Secret;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert, "tls.key": key},
    }))
    .expect("secret");
    secrets
        .patch(
            name,
            &PatchParams::apply("wsgate-tests").force(),
            &Patch::Apply(&secret),
        )
        .await
        .expect("apply secret");
}

#[tokio::test]
async fn a_tls_route_waits_for_its_secret_then_serves_and_follows_its_rotation() {
    let (plane, client) = ControlPlane::with_crd().await;
    let up = Upstream::start().await;
    let gate = controller(&plane, "solo").await;
    let api: Api<WebSocketRoute> = Api::namespaced(client.clone(), "default");
    let mut r = route("chat", &up.url());
    r.spec.tls = Some(wsgate::api::TlsSpec {
        secret_name: "chat-tls".into(),
    });
    api.create(&PostParams::default(), &r)
        .await
        .expect("create route");
    let waiting = wait_ready(&api, "chat", "False").await;
    let refs = condition(&waiting, "ResolvedRefs");
    assert_eq!(
        (refs.status.as_str(), refs.reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert!(
        refs.message.contains("default/chat-tls"),
        "{}",
        refs.message
    );
    let ca = TestCa::new();
    assert!(tls_connect(gate.tls, HOST, &ca).await.is_err());

    tls_secret(&client, "chat-tls", "not a certificate", "nor a key").await;
    gate.wait_for(
        || async {
            let r = api.get("chat").await.expect("get");
            r.status
                .is_some_and(|s| s.conditions.iter().any(|c| c.reason == "InvalidSecret"))
        },
        "a malformed Secret is InvalidSecret",
    )
    .await;

    let (cert, key) = ca.issue(&[HOST]);
    tls_secret(&client, "chat-tls", &cert, &key).await;
    wait_ready(&api, "chat", "True").await;
    let tls = tls_connect(gate.tls, HOST, &ca).await.expect("TLS");
    let mut live = ws_over(tls, HOST, "/ws", APP).await.expect("upgrade");

    let (rotated, rotated_key) = ca.issue(&[HOST]);
    tls_secret(&client, "chat-tls", &rotated, &rotated_key).await;
    let expected = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(rotated.as_bytes())
            .expect("pem")
            .to_vec()
    };
    gate.wait_for(
        || async {
            let tls = tls_connect(gate.tls, HOST, &ca).await.expect("TLS");
            tls.get_ref().1.peer_certificates().expect("certs")[0].as_ref() == expected.as_slice()
        },
        "new handshakes get the rotated certificate",
    )
    .await;
    live.send(Message::text("still here")).await.expect("send");
    assert_eq!(
        live.next().await.expect("reply").expect("ok"),
        Message::text("still here")
    );
}

#[tokio::test]
async fn a_jwt_route_reads_its_keys_from_the_secret_it_names() {
    use k8s_openapi::api::core::v1::Secret;
    use wsgate::api::{AuthSpec, JwtSpec};
    const KEY: &str = "0123456789abcdef0123456789abcdef";
    let (plane, client) = ControlPlane::with_crd().await;
    let up = Upstream::start().await;
    let gate = controller(&plane, "solo").await;
    let api: Api<WebSocketRoute> = Api::namespaced(client.clone(), "default");
    let mut r = route("chat", &up.url());
    r.spec.auth = Some(AuthSpec {
        jwt: serde_json::from_value::<JwtSpec>(serde_json::json!({
            "keys": {"secretName": "jwt-keys"},
            "tokenSources": [{"query": "access_token"}],
        }))
        .expect("jwt spec"),
    });
    api.create(&PostParams::default(), &r)
        .await
        .expect("create route");
    let waiting = wait_ready(&api, "chat", "False").await;
    assert_eq!(condition(&waiting, "ResolvedRefs").reason, "SecretNotFound");

    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "jwt-keys"},
        "stringData": {"key": KEY},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    wait_ready(&api, "chat", "True").await;
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some(APP), &[]).await.err(),
        Some(401)
    );
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 300;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "alice", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes()),
    )
    .expect("token");
    echo(
        gate.proxy,
        HOST,
        &format!("/ws?access_token={token}"),
        APP,
        &[],
    )
    .await;
}

/// Runs `wsgate controller` with `kubeconfig` and returns its exit code and log; it must
/// exit on its own (a start-up error).
async fn controller_fails(kubeconfig: &std::path::Path) -> (Option<i32>, String) {
    let run = tokio::process::Command::new(bin())
        .args([
            "controller",
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
            "127.0.0.1:0",
        ])
        .args(["--admin", "127.0.0.1:0"])
        .env("KUBECONFIG", kubeconfig)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("wsgate exits on a start-up error")
        .expect("run wsgate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn start_up_errors_say_what_to_fix() {
    let plane = ControlPlane::start();
    let admin = std::fs::read_to_string(&plane.kubeconfig).expect("kubeconfig");
    let (code, log) = controller_fails(&plane.kubeconfig).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("has no WebSocketRoute resource: install the CRD"),
        "{log}"
    );

    let client = plane.client().await;
    plane.install_crd(&client).await;
    let anonymous = plane.kubeconfig.with_file_name("kubeconfig-anonymous");
    std::fs::write(&anonymous, admin.replace("{token: admin-token}", "{}")).expect("write");
    let (code, log) = controller_fails(&anonymous).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("not allowed to list WebSocketRoutes")
            && log.contains("carried no credentials"),
        "{log}"
    );
    assert!(!log.contains("install the CRD"), "{log}");

    let wrong = plane.kubeconfig.with_file_name("kubeconfig-wrong");
    std::fs::write(&wrong, admin.replace("admin-token", "no-such-token")).expect("write");
    let (code, log) = controller_fails(&wrong).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("did not accept the credentials (401"), "{log}");

    let (code, log) = controller_fails(&plane.kubeconfig_wsgate()).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("not allowed to list WebSocketRoutes")
            && log.contains("grant get/list/watch on websocketroutes.wsgate.dev")
            && !log.contains("carried no credentials"),
        "{log}"
    );

    // Everything but the Lease: one short line that says what to grant, no debug dump.
    let mut role = cluster_role(true);
    role.rules.iter_mut().flatten().for_each(|r| {
        r.resources.iter_mut().flatten().for_each(|res| {
            if res == "leases" {
                *res = "configmaps".to_owned();
            }
        })
    });
    grant_wsgate(&client, &role).await;
    let (code, log) = controller_fails(&plane.kubeconfig_wsgate()).await;
    assert_eq!(code, Some(1), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("cannot use Lease"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("grant get/list/watch/create/update on leases.coordination.k8s.io")
            && line.contains("(403)")
            && !line.contains("Status {")
            && line.len() < 500,
        "{line}"
    );
}

/// Whether the replica at `admin` reports `wsgate_leader 1`; `None` when it does not answer
/// (stopped or stopping).
async fn leads(admin: std::net::SocketAddr) -> Option<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
        let request = "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
        stream.write_all(request.as_bytes()).await.ok()?;
        // OpenMetrics ends with `# EOF`; the connection may stay open after it.
        let mut text = String::new();
        let mut chunk = [0u8; 4096];
        while !text.contains("# EOF") {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            text.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
        text.lines()
            .find_map(|l| l.strip_prefix("wsgate_leader "))
            .map(|v| v.trim() == "1")
    };
    tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .ok()
        .flatten()
}

/// Runs `during` while reading every replica's (admin address's) `wsgate_leader` in turn, as fast as they
/// answer. Fails if one replica read 1 both just before and just after another read 1:
/// then both led at the same moment.
async fn never_two_leaders<T>(
    admins: &[std::net::SocketAddr],
    during: impl std::future::Future<Output = T>,
) -> T {
    let sample = async {
        let mut last: Vec<(usize, bool)> = Vec::new();
        let mut samples = 0u64;
        for turn in (0..admins.len()).cycle() {
            let leading = leads(admins[turn]).await == Some(true);
            samples += 1;
            last.push((turn, leading));
            if last.len() > 3 {
                last.remove(0);
            }
            if let [(x, true), (y, true), (z, true)] = last[..] {
                assert!(
                    x != z || x == y,
                    "replicas {x} and {y} both reported wsgate_leader 1 (sample {samples})"
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        out = during => out,
        () = sample => unreachable!("sampling never ends"),
    }
}

/// The Lease's holder, if it exists and names one.
async fn lease_holder(client: &kube::Client) -> Option<String> {
    use k8s_openapi::api::coordination::v1::Lease;
    Api::<Lease>::namespaced(client.clone(), "default")
        .get_opt("wsgate")
        .await
        .expect("get lease")
        .as_ref()
        .and_then(lease_holder_of)
}

/// Waits until `gate` holds the Lease and reports it.
async fn wait_leading(gate: &Gate, client: &kube::Client, identity: &str) {
    gate.wait_for(
        || async {
            lease_holder(client).await.as_deref() == Some(identity)
                && gate.metric("wsgate_leader").await == Some(1.0)
        },
        &format!("{identity} to lead"),
    )
    .await;
}

/// Two replicas, "a" leading and "b" following, both ready; claims last `seconds`; both
/// with `extra` flags.
async fn leader_and_follower(
    seconds: u64,
    extra: &[&str],
) -> (ControlPlane, kube::Client, Gate, Gate) {
    let (plane, client) = ControlPlane::with_crd().await;
    let a = controller_with_lease(&plane, "a", seconds, extra).await;
    wait_leading(&a, &client, "a").await;
    let b = controller_with_lease(&plane, "b", seconds, extra).await;
    b.wait_for(
        || async { b.admin_get("/readyz").await.0 == 200 },
        "b to be ready",
    )
    .await;
    assert_eq!(b.metric("wsgate_leader").await, Some(0.0));
    (plane, client, a, b)
}

#[tokio::test]
async fn a_deleted_lease_is_recreated_and_never_two_replicas_lead() {
    use k8s_openapi::api::coordination::v1::Lease;
    let (_plane, client, a, b) = leader_and_follower(3, &[]).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    never_two_leaders(&[a.admin, b.admin], async {
        for round in 1..=3 {
            let before = leases.get("wsgate").await.expect("lease").metadata.uid;
            let deleted = tokio::time::Instant::now();
            leases
                .delete("wsgate", &DeleteParams::default())
                .await
                .expect("delete lease");
            a.wait_for(
                || async {
                    let now = leases.get_opt("wsgate").await.expect("get lease");
                    let Some(holder) = now.as_ref().and_then(lease_holder_of) else {
                        return false;
                    };
                    let gate = if holder == "a" { &a } else { &b };
                    now.and_then(|l| l.metadata.uid) != before
                        && gate.metric("wsgate_leader").await == Some(1.0)
                },
                "the Lease to be recreated and its holder to lead",
            )
            .await;
            eprintln!(
                "round {round}: Lease recreated and held {:?} after deletion, by {:?}",
                deleted.elapsed(),
                lease_holder(&client).await
            );
            // Past any claim that could still be running, the other replica included.
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
    })
    .await;

    // With its holder gone, the other replica recreates it once the last claim ran out.
    let a_admin = a.admin;
    wait_leading(&a, &client, "a").await;
    drop(a);
    never_two_leaders(&[a_admin, b.admin], async {
        let deleted = tokio::time::Instant::now();
        leases
            .delete("wsgate", &DeleteParams::default())
            .await
            .expect("delete lease");
        wait_leading(&b, &client, "b").await;
        eprintln!(
            "holder killed, Lease deleted: b recreated it and leads {:?} after deletion",
            deleted.elapsed()
        );
    })
    .await;
}

/// The holder `lease` names, if any.
fn lease_holder_of(lease: &k8s_openapi::api::coordination::v1::Lease) -> Option<String> {
    lease
        .spec
        .as_ref()?
        .holder_identity
        .clone()
        .filter(|h| !h.is_empty())
}

#[tokio::test]
async fn a_terminated_leader_releases_the_lease_and_the_other_takes_it_before_it_would_expire() {
    // Claims last longer than PATIENCE: a takeover within it needs the release. a keeps
    // answering /metrics while it drains, as a pod does, so an overlap would show.
    let (_plane, client, mut a, b) = leader_and_follower(60, &["--shutdown-delay", "2"]).await;
    never_two_leaders(&[a.admin, b.admin], async {
        let terminated = tokio::time::Instant::now();
        a.terminate();
        wait_leading(&b, &client, "b").await;
        eprintln!(
            "hand-over after SIGTERM: b leads {:?} after a was terminated",
            terminated.elapsed()
        );
        assert_eq!(a.wait_exit().await, Some(0));
    })
    .await;
    assert!(a.log().contains("released the lease"), "{}", a.log());
}

#[tokio::test]
async fn a_killed_leader_is_replaced_once_its_claim_runs_out() {
    let (_plane, client, a, b) = leader_and_follower(3, &[]).await;
    let a_admin = a.admin;
    let killed = tokio::time::Instant::now();
    drop(a);
    never_two_leaders(&[a_admin, b.admin], async {
        wait_leading(&b, &client, "b").await;
    })
    .await;
    eprintln!(
        "hand-over after SIGKILL: b leads {:?} after a was killed (claims last 3 s)",
        killed.elapsed()
    );
    assert_eq!(leads(a_admin).await, None);
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_stops_leading_and_leads_again_after() {
    let (mut plane, client) = ControlPlane::with_crd().await;
    let a = controller(&plane, "a").await;
    wait_leading(&a, &client, "a").await;
    let stopped = tokio::time::Instant::now();
    plane.stop_apiserver();
    a.wait_for(
        || async { a.metric("wsgate_leader").await == Some(0.0) },
        "a to stop leading",
    )
    .await;
    eprintln!(
        "cut off: a stopped leading {:?} after the API server went away (claims last 3 s)",
        stopped.elapsed()
    );
    plane.start_apiserver();
    let client = plane.client().await;
    wait_leading(&a, &client, "a").await;
}

/// The kinds the controller watches, as `wsgate_watch_stale_seconds` labels them.
const KINDS: [&str; 4] = ["WebSocketRoute", "Service", "EndpointSlice", "Secret"];

/// `kind`'s staleness sample.
fn stale_seconds(kind: &str) -> String {
    format!("wsgate_watch_stale_seconds{{kind=\"{kind}\"}}")
}

#[tokio::test]
async fn edits_during_and_after_an_api_server_outage_apply_at_once_and_staleness_is_reported() {
    let (mut plane, client) = ControlPlane::with_crd().await;
    let up = Upstream::start().await;
    let gate = controller(&plane, "solo").await;
    let api: Api<WebSocketRoute> = Api::namespaced(client, "default");
    let (during, after) = ("https://during.example.test", "https://after.example.test");
    let mut chat = route("chat", &up.url());
    chat.spec.origins.allow = vec![APP.into(), during.into(), after.into()];
    create_ready(&api, chat).await;
    let (mut from_during, _) = connect(gate.proxy, HOST, "/ws", Some(during), &[])
        .await
        .expect("allowed before the outage");
    let (mut from_after, _) = connect(gate.proxy, HOST, "/ws", Some(after), &[])
        .await
        .expect("allowed before the outage");
    for kind in KINDS {
        assert_eq!(gate.metric(&stale_seconds(kind)).await, Some(0.0), "{kind}");
    }

    let before_outage = gate.log().len();
    plane.stop_apiserver();
    gate.wait_for(
        || async {
            let stale = gate.metric(&stale_seconds("WebSocketRoute")).await;
            stale.is_some_and(|s| s >= 1.0)
        },
        "the routes' staleness to grow",
    )
    .await;
    // Long enough for an unbounded backoff to grow past several seconds; longer outages
    // (e.g. 30 s, to measure) through WSGATE_TEST_OUTAGE_SECS.
    let outage = std::env::var("WSGATE_TEST_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    tokio::time::sleep(Duration::from_secs(outage / 2)).await;
    // As another API server in front of the same etcd would.
    plane.edit_in_etcd("/registry/wsgate.dev/websocketroutes/default/chat", |r| {
        r["spec"]["origins"]["allow"] = serde_json::json!([APP, after]);
        r["metadata"]["generation"] =
            (r["metadata"]["generation"].as_i64().unwrap_or(1) + 1).into();
    });
    tokio::time::sleep(Duration::from_secs(outage - outage / 2)).await;

    // Returns once the API server's /readyz is 200: "answered" below.
    plane.start_apiserver();
    let answering = tokio::time::Instant::now();
    let api: Api<WebSocketRoute> = Api::namespaced(plane.client().await, "default");
    let enforced = async |ws: &mut Client, what: &str| {
        assert_eq!(close_code(ws).await.0, 1008, "{what}");
        eprintln!(
            "after a {outage} s outage, the edit {what} was enforced {:.2} s after the API server answered",
            answering.elapsed().as_secs_f64()
        );
    };
    enforced(&mut from_during, "made during it").await;
    let patch = serde_json::json!({"spec": {"origins": {"allow": [APP]}}});
    api.patch("chat", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("edit allowlist");
    enforced(&mut from_after, "made right after it").await;
    for origin in [during, after] {
        assert_eq!(
            connect(gate.proxy, HOST, "/ws", Some(origin), &[])
                .await
                .err(),
            Some(403)
        );
    }

    for kind in KINDS {
        gate.wait_for(
            || async { gate.metric(&stale_seconds(kind)).await == Some(0.0) },
            &format!("{kind} to be current again"),
        )
        .await;
    }
    let log = gate.log().split_off(before_outage);
    for kind in KINDS {
        let lines = |what: &str| {
            log.lines()
                .filter(|l| l.contains(what) && l.contains(&format!("kind=\"{kind}\"")))
                .count()
        };
        assert_eq!(
            lines(" WARN "),
            1,
            "one warning that {kind} is stale:\n{log}"
        );
        assert_eq!(lines("watch caught up"), 1, "{kind} caught up:\n{log}");
    }
    // Besides those four, the client libraries' own complaints, at most one per call site.
    let loud = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count();
    assert!(
        loud <= KINDS.len() + 4,
        "{loud} warnings and errors:\n{log}"
    );
}

/// A Deployment named `wsgate` in `default` wanting `replicas`, standing for the one the
/// chart runs the controllers in (nothing here starts its pods).
async fn own_deployment(client: &kube::Client, replicas: i32) {
    use k8s_openapi::api::apps::v1::Deployment;
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "wsgate"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "wsgate"}},
            "template": {
                "metadata": {"labels": {"app": "wsgate"}},
                "spec": {"containers": [{"name": "wsgate", "image": "wsgate"}]}
            }
        }
    }))
    .expect("deployment");
    Api::<Deployment>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");
}

/// A controller run by that Deployment, as the chart sets it up (`WSGATE_DEPLOYMENT`).
async fn replica(plane: &ControlPlane, identity: &str) -> Gate {
    let args: Vec<std::ffi::OsString> = vec![
        "controller".into(),
        "--identity".into(),
        identity.into(),
        "--lease-duration".into(),
        "3".into(),
    ];
    Gate::launch(
        &args,
        &[
            ("KUBECONFIG", plane.kubeconfig.as_os_str()),
            ("WSGATE_DEPLOYMENT", "wsgate".as_ref()),
        ],
    )
    .await
}

#[tokio::test]
async fn only_the_last_replica_to_stop_says_the_routes_are_not_served() {
    use k8s_openapi::api::apps::v1::Deployment;
    let (plane, client) = ControlPlane::with_crd().await;
    let up = Upstream::start().await;
    own_deployment(&client, 2).await;
    let mut a = replica(&plane, "a").await;
    wait_leading(&a, &client, "a").await;
    let mut b = replica(&plane, "b").await;
    let api: Api<WebSocketRoute> = Api::namespaced(client.clone(), "default");
    let served = create_ready(&api, route("chat", &up.url())).await;
    let ready_since = condition(&served, "Ready").last_transition_time;

    // A rolling update or a scale-down: the Deployment wants replicas, so the holder only
    // releases the Lease and the routes stay Ready, never flipping.
    a.terminate();
    assert_eq!(a.wait_exit().await, Some(0), "{}", a.log());
    assert!(a.log().contains("released the lease"), "{}", a.log());
    wait_leading(&b, &client, "b").await;
    let route = wait_ready(&api, "chat", "True").await;
    assert_eq!(
        condition(&route, "Ready").last_transition_time,
        ready_since,
        "Ready flipped while replicas remained: {}",
        a.log()
    );

    // Scaled to 0: the last one says so before it releases the Lease.
    let zero = serde_json::json!({"spec": {"replicas": 0}});
    Api::<Deployment>::namespaced(client.clone(), "default")
        .patch("wsgate", &PatchParams::default(), &Patch::Merge(&zero))
        .await
        .expect("scale to 0");
    b.terminate();
    assert_eq!(b.wait_exit().await, Some(0), "{}", b.log());
    let stopped = api.get("chat").await.expect("get route");
    for type_ in ["Programmed", "Ready"] {
        let c = condition(&stopped, type_);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "GatewayStopped"),
            "{}",
            b.log()
        );
        assert!(
            c.message
                .contains("the Deployment default/wsgate was scaled to 0"),
            "{}",
            c.message
        );
    }
    for type_ in ["Accepted", "ResolvedRefs"] {
        assert_eq!(condition(&stopped, type_).status, "True");
    }
    assert_eq!(lease_holder(&client).await, None, "{}", b.log());
}

#[tokio::test]
async fn a_lease_deleted_once_the_deployment_is_gone_is_not_recreated() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::coordination::v1::Lease;
    let (plane, client) = ControlPlane::with_crd().await;
    own_deployment(&client, 1).await;
    let a = replica(&plane, "a").await;
    wait_leading(&a, &client, "a").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");

    // While the Deployment runs, a deleted Lease is recreated.
    let before = leases.get("wsgate").await.expect("lease").metadata.uid;
    leases
        .delete("wsgate", &DeleteParams::default())
        .await
        .expect("delete lease");
    a.wait_for(
        || async {
            leases
                .get_opt("wsgate")
                .await
                .expect("get lease")
                .and_then(|l| l.metadata.uid)
                .is_some_and(|uid| Some(uid) != before)
        },
        "the Lease to be recreated",
    )
    .await;
    wait_leading(&a, &client, "a").await;

    // `helm uninstall` deletes the Deployment, then the Lease: it stays deleted.
    Api::<Deployment>::namespaced(client.clone(), "default")
        .delete("wsgate", &DeleteParams::default())
        .await
        .expect("delete deployment");
    leases
        .delete("wsgate", &DeleteParams::default())
        .await
        .expect("delete lease");
    a.wait_for(
        || async { a.log().contains("not recreating the deleted lease") },
        "a to decide not to recreate the Lease",
    )
    .await;
    assert!(leases.get_opt("wsgate").await.expect("get lease").is_none());
    assert_eq!(a.metric("wsgate_leader").await, Some(0.0));
}

#[tokio::test]
async fn a_burst_of_new_routes_gets_one_status_write_each() {
    const ROUTES: usize = 60;
    let (plane, client) = ControlPlane::with_crd().await;
    let up = Upstream::start().await;
    let gate = controller(&plane, "burst").await;
    let api: Api<WebSocketRoute> = Api::namespaced(client, "default");
    let writes = gate.metric(STATUS_WRITES).await.unwrap_or(0.0);
    futures_util::stream::iter(0..ROUTES)
        .for_each_concurrent(10, |i| {
            let api = api.clone();
            let yaml = support::route(
                &format!("burst-{i}"),
                &format!("b{i}.example.test"),
                "/",
                "{allow: [\"https://app.example.test\"]}",
                &up.url(),
            );
            async move {
                let route: WebSocketRoute = serde_saphyr::from_str(&yaml).expect("route");
                api.create(&PostParams::default(), &route)
                    .await
                    .expect("create");
            }
        })
        .await;
    for i in 0..ROUTES {
        wait_ready(&api, &format!("burst-{i}"), "True").await;
    }
    // Each route's status is written once: a write the watch has not shown yet is not
    // repeated for every snapshot published meanwhile. Counted again after a pause longer
    // than the controller's longest gathering of changes (250 ms), so a late repeat shows.
    let written = gate.metric(STATUS_WRITES).await.unwrap_or(0.0) - writes;
    assert_eq!(
        written, ROUTES as f64,
        "status writes for {ROUTES} new routes"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = gate.metric(STATUS_WRITES).await.unwrap_or(0.0) - writes;
    assert_eq!(
        written, ROUTES as f64,
        "status writes for {ROUTES} new routes"
    );
}
