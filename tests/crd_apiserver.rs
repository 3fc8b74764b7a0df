//! The generated CRD against a real kube-apiserver (built from Go modules, started on
//! loopback): it installs, valid routes are stored with their defaults filled in, and
//! invalid ones are refused at create time with the messages the CRD's rules carry.

mod support;

use kube::Api;
use kube::api::PostParams;
use wsgate::api::{PathMatchType, Rejection, WebSocketRoute};

fn route(name: &str, spec: &str) -> WebSocketRoute {
    let yaml = format!(
        "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    );
    serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
}

#[tokio::test]
async fn crd_installs_stores_defaults_and_refuses_invalid_routes_with_its_messages() {
    let plane = support::control_plane::ControlPlane::start();
    let client = plane.client().await;
    plane.install_crd(&client).await;
    let routes: Api<WebSocketRoute> = Api::namespaced(client, "default");

    let created = routes
        .create(
            &PostParams::default(),
            &route(
                "minimal",
                "  hostnames: [chat.example.com]\n  upstream: {url: \"ws://127.0.0.1:9000\"}\n",
            ),
        )
        .await
        .expect("a valid route is stored");
    // The API server filled in the schema's defaults.
    assert_eq!(created.spec.path.match_type, PathMatchType::PathPrefix);
    assert_eq!(created.spec.path.value, "/");
    assert_eq!(created.spec.origins.rejection, Rejection::Forbidden);
    assert!(created.spec.revoke_on_policy_change);

    for (name, spec, message) in [
        (
            "wild",
            "  hostnames: [\"*.com\"]\n  upstream: {url: \"ws://a:1\"}\n",
            "at least two labels after `*.`",
        ),
        (
            "null-origin",
            "  hostnames: [a.example.com]\n  origins: {allow: [\"null\"]}\n  upstream: {url: \"ws://a:1\"}\n",
            "set `allowNull: true` instead",
        ),
        (
            "slash",
            "  hostnames: [a.example.com]\n  origins: {allow: [\"https://app.example.com/\"]}\n  upstream: {url: \"ws://a:1\"}\n",
            "no path or trailing slash",
        ),
        (
            "both",
            "  hostnames: [a.example.com]\n  upstream: {url: \"ws://a:1\", service: {name: s, port: 80}}\n",
            "exactly one of `service` or `url`",
        ),
        (
            "scheme",
            "  hostnames: [a.example.com]\n  upstream: {url: \"http://a:1\"}\n",
            "url must be `ws://host:port[/path]`",
        ),
        (
            "host-case",
            "  hostnames: [a.example.com, Chat.Example.com]\n  upstream: {url: \"ws://a:1\"}\n",
            "spec.hostnames[1]: Invalid value: \"Chat.Example.com\": a hostname must be a lowercase DNS name",
        ),
        (
            "host-twice",
            "  hostnames: [a.example.com, a.example.com]\n  upstream: {url: \"ws://a:1\"}\n",
            "hostnames must be unique",
        ),
        (
            "subprotocol",
            "  hostnames: [a.example.com]\n  subprotocols: [\"chat v2\"]\n  upstream: {url: \"ws://a:1\"}\n",
            "each subprotocol must be an HTTP token",
        ),
        (
            "path-slash",
            "  hostnames: [a.example.com]\n  path: {value: ws}\n  upstream: {url: \"ws://a:1\"}\n",
            "path value must start with `/`",
        ),
        (
            "path-query",
            "  hostnames: [a.example.com]\n  path: {value: \"/ws?x=1\"}\n  upstream: {url: \"ws://a:1\"}\n",
            "drop the query",
        ),
        (
            "origin-wild",
            "  hostnames: [a.example.com]\n  origins: {allow: [\"https://a.example.com\", \"https://b.example.com\", \"https://*.com\"]}\n  upstream: {url: \"ws://a:1\"}\n",
            "spec.origins.allow[2]: Invalid value: \"https://*.com\": a wildcard origin needs at least two labels",
        ),
        (
            "limit-zero",
            "  hostnames: [a.example.com]\n  upstream: {url: \"ws://a:1\"}\n  limits: {maxMessageBytes: 0}\n",
            "maxMessageBytes in body should be greater than or equal to 1",
        ),
        (
            "idle-month",
            "  hostnames: [a.example.com]\n  upstream: {url: \"ws://a:1\"}\n  limits: {idleTimeoutSeconds: 2592000}\n",
            "idleTimeoutSeconds in body should be less than or equal to 604800",
        ),
        (
            "heartbeat-zero",
            "  hostnames: [a.example.com]\n  upstream: {url: \"ws://a:1\"}\n  heartbeat: {intervalSeconds: 0}\n",
            "intervalSeconds in body should be greater than or equal to 1",
        ),
        (
            "http-body",
            "  hostnames: [a.example.com]\n  upstream: {url: \"ws://a:1\"}\n  http: {maxRequestBodyBytes: 0}\n",
            "maxRequestBodyBytes in body should be greater than or equal to 1",
        ),
        (
            "http-timeout",
            "  hostnames: [a.example.com]\n  upstream: {url: \"ws://a:1\"}\n  http: {responseTimeoutSeconds: 3601}\n",
            "responseTimeoutSeconds in body should be less than or equal to 3600",
        ),
        (
            "service-name",
            "  hostnames: [a.example.com]\n  upstream: {service: {name: Chat_Backend, port: 80}}\n",
            "service name must be a Service's name",
        ),
    ] {
        let err = routes
            .create(&PostParams::default(), &route(name, spec))
            .await
            .expect_err(name);
        assert!(err.to_string().contains(message), "{name}: {err}");
    }
}
