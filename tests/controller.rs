//! `wsgate controller` against a real kube-apiserver: a route created through the API is
//! served at once, its status conditions are written, and a deleted route stops serving.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use support::control_plane::ControlPlane;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use wsgate::api::WebSocketRoute;

const HOST: &str = "chat.example.test";
const APP: &str = "https://app.example.test";

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

/// Polls the route until its Ready condition has `status`.
async fn wait_ready(api: &Api<WebSocketRoute>, name: &str, status: &str) -> WebSocketRoute {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = api.get(name).await.expect("get route");
        let ready = r
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        if ready.as_deref() == Some(status) {
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

#[tokio::test]
async fn routes_from_the_api_server_are_served_and_get_status() {
    let plane = ControlPlane::start();
    let client = plane.client().await;
    plane.install_crd(&client).await;
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

    let plane = ControlPlane::start();
    let client = plane.client().await;
    plane.install_crd(&client).await;
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
    api.create(
        &PostParams::default(),
        &route("chat", "{service: {name: chat, port: 80}}"),
    )
    .await
    .expect("create route");
    wait_ready(&api, "chat", "True").await;
    let (_, routes) = gate.admin_get("/routes").await;
    let v: serde_json::Value = serde_json::from_str(&routes).expect("json");
    assert_eq!(
        v["routes"][0]["upstream"],
        serde_json::json!(["192.0.2.10:9000"]),
        "{routes}"
    );

    // The only endpoint stops being ready: the route says so, and handshakes get 502
    // without any connection attempt.
    let mut not_ready = slice(false);
    not_ready.metadata.resource_version = slices
        .get("chat-1")
        .await
        .expect("get")
        .metadata
        .resource_version;
    slices
        .replace("chat-1", &PostParams::default(), &not_ready)
        .await
        .expect("replace slice");
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
async fn the_last_snapshot_keeps_serving_when_the_api_server_goes_away() {
    let mut plane = ControlPlane::start();
    let client = plane.client().await;
    plane.install_crd(&client).await;
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
    wait_ready(&api, "chat", "True").await;
    let (mut live, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");

    plane.stop_apiserver();
    gate.wait_for(
        || async { gate.log().contains("watch failed") },
        "the controller to notice",
    )
    .await;

    live.send(Message::text("still here")).await.expect("send");
    assert_eq!(
        live.next().await.expect("reply").expect("ok"),
        Message::text("still here")
    );
    let (mut fresh, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("new handshakes too");
    fresh.send(Message::text("new")).await.expect("send");
    assert_eq!(
        fresh.next().await.expect("reply").expect("ok"),
        Message::text("new")
    );
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some("https://evil.example"), &[])
            .await
            .err(),
        Some(403)
    );
    assert_eq!(gate.admin_get("/readyz").await.0, 200);
}
