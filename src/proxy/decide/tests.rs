//! The decision without sockets or HTTP/1.1: a request as any protocol would hand it over.

use super::*;
use crate::api::WebSocketRoute;
use crate::compile::{Backends, compile};
use crate::metrics::Metrics;
use crate::proxy::ProxyConfig;
use crate::request::Pairs;
use crate::snapshot::{Published, Snapshot};

const A: &str = "https://a.example.test";

/// A gateway serving `/ws` on chat.example.test to origin A only, and `/` to nobody.
fn gateway(published: bool) -> Arc<Gateway> {
    let routes = [
        "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {name: ws, namespace: apps}\nspec:\n  hostnames: [chat.example.test]\n  path: {value: /ws}\n  origins: {allow: [\"https://a.example.test\"]}\n  upstream: {url: \"ws://127.0.0.1:9\"}\n",
        "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {name: root, namespace: apps}\nspec:\n  hostnames: [chat.example.test]\n  upstream: {url: \"ws://127.0.0.1:9\"}\n",
        "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {name: h1, namespace: apps}\nspec:\n  hostnames: [chat.example.test]\n  path: {value: /h1}\n  origins: {allow: [\"https://a.example.test\"]}\n  upstream: {url: \"ws://127.0.0.1:9\"}\n  webSocketsOverHttp2: Refuse\n",
    ]
    .map(|yaml| serde_saphyr::from_str::<WebSocketRoute>(yaml).expect("route"));
    let snapshots = Published::new(Metrics::new());
    let gateway = Gateway::new(ProxyConfig::default(), snapshots.clone());
    if published {
        let compiled = compile(&routes, &Backends::standalone());
        snapshots.publish(Snapshot::new(1, compiled, Vec::new()));
    }
    gateway
}

/// A key any upgrade check would give.
fn accept() -> AcceptKey {
    let headers = http1::headers_from(&[
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ]);
    handshake::validate("GET", Headers::new(&headers)).expect("valid upgrade")
}

fn ask<'a>(
    gateway: &Gateway,
    target: &'a str,
    headers: &'a [(&'a str, &'a str)],
    upgrade: Result<AcceptKey, Reject>,
    sni: Option<&'a str>,
) -> Result<String, Reject> {
    ask_over(false, gateway, target, headers, upgrade, sni)
}

/// [`ask`], as an HTTP/2 stream when `http2`.
fn ask_over<'a>(
    http2: bool,
    gateway: &Gateway,
    target: &'a str,
    headers: &'a [(&'a str, &'a str)],
    upgrade: Result<AcceptKey, Reject>,
    sni: Option<&'a str>,
) -> Result<String, Reject> {
    let request = Request {
        host: Ok(Cow::Borrowed("chat.example.test")),
        target,
        headers: Pairs(headers),
        upgrade,
        sni,
        client: ClientInfo {
            addr: "192.0.2.7:5555".parse().expect("addr"),
            ip: "192.0.2.7".parse().expect("ip"),
            proto: "http",
            version: "1.1",
        },
        http2,
    };
    match decision(&request, gateway) {
        Decision::Refuse(_, reject) => Err(reject),
        Decision::CloseAfterUpgrade(..) => Err(Reject::OriginDenied),
        Decision::Plain(route) => Ok(format!("{} plain", route.key)),
        Decision::Forward(forward) => Ok(format!("{} {}", forward.route.key, forward.target)),
    }
}

/// Target, headers, the protocol's upgrade check, SNI, and what the decision says.
type Case<'a> = (
    &'a str,
    &'a [(&'a str, &'a str)],
    Result<AcceptKey, Reject>,
    Option<&'a str>,
    Result<&'a str, Reject>,
);

#[test]
fn each_step_refuses_with_its_reject_in_order_and_an_admitted_request_is_forwarded() {
    let served = gateway(true);
    let origin_a = [("Origin", A)];
    let other = [("Origin", "https://evil.example.test")];
    let cases: [Case; 8] = [
        (
            "/ws/room?x=1",
            &origin_a,
            Ok(accept()),
            None,
            Ok("apps/ws /ws/room?x=1"),
        ),
        (
            "/w%73/./room",
            &origin_a,
            Ok(accept()),
            None,
            Ok("apps/ws /ws/room"),
        ),
        (
            "/ws/..;/admin",
            &origin_a,
            Ok(accept()),
            None,
            Err(Reject::BadPath),
        ),
        (
            "/ws",
            &origin_a,
            Ok(accept()),
            Some("other.example.test"),
            Err(Reject::Misdirected),
        ),
        (
            "/ws",
            &origin_a,
            Err(Reject::NotWebSocket),
            None,
            Err(Reject::NotWebSocket),
        ),
        ("/ws", &other, Ok(accept()), None, Err(Reject::OriginDenied)),
        // `/ws/../admin` is `/admin`: the root route, which admits no origin.
        (
            "/ws/../admin",
            &origin_a,
            Ok(accept()),
            None,
            Err(Reject::OriginDenied),
        ),
        ("/ws", &[], Ok(accept()), None, Err(Reject::OriginDenied)),
    ];
    for (target, headers, upgrade, sni, expected) in cases {
        let got = ask(&served, target, headers, upgrade, sni);
        assert_eq!(
            got.as_deref().map_err(|r| *r),
            expected,
            "{target} {headers:?}"
        );
    }
}

#[test]
fn nothing_is_decided_before_the_first_snapshot() {
    let starting = gateway(false);
    assert_eq!(
        ask(&starting, "/ws", &[("Origin", A)], Ok(accept()), None),
        Err(Reject::NotReady)
    );
}

#[test]
fn a_route_that_refuses_http2_sockets_refuses_its_streams_after_the_origin_check() {
    let served = gateway(true);
    let origin_a = [("Origin", A)];
    let other = [("Origin", "https://evil.example.test")];
    let over =
        |http2, target, headers| ask_over(http2, &served, target, headers, Ok(accept()), None);
    assert_eq!(over(true, "/h1", &origin_a), Err(Reject::Http2Refused));
    assert_eq!(over(true, "/h1", &other), Err(Reject::OriginDenied));
    assert_eq!(over(false, "/h1", &origin_a), Ok("apps/h1 /h1".into()));
    assert_eq!(over(true, "/ws", &origin_a), Ok("apps/ws /ws".into()));
}
