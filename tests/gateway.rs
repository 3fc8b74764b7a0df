//! The gateway through real sockets: the `wsgate standalone` binary between real WebSocket
//! clients and a real upstream, one test per behaviour of docs/design.md §5–§7.

mod support;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

const HOST: &str = "chat.example.test";
const APP: &str = "https://app.example.test";

async fn chat_gate(up: &Upstream, origins: &str, extra: &[&str]) -> Gate {
    Gate::start(
        &[("chat.yaml", route("chat", HOST, "/ws", origins, &up.url()))],
        extra,
    )
    .await
}

fn app_only() -> &'static str {
    "{allow: [\"https://app.example.test\", \"https://*.apps.example.test\"]}"
}

#[tokio::test]
async fn allowed_origin_relays_messages_both_ways_with_forwarding_headers() {
    let mut up = Upstream::start().await;
    let gate = chat_gate(&up, app_only(), &[]).await;
    let (mut ws, resp) = connect(gate.proxy, HOST, "/ws/room?id=7", Some(APP), &[])
        .await
        .expect("allowed");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("reply").expect("ok"),
        Message::text("hello")
    );
    let big = vec![7u8; 300_000];
    ws.send(Message::binary(big.clone()))
        .await
        .expect("send big");
    assert_eq!(
        ws.next().await.expect("reply").expect("ok"),
        Message::binary(big)
    );

    let seen = up.seen.recv().await.expect("upstream saw the handshake");
    assert_eq!(seen.path, "/ws/room?id=7");
    let h = &seen.headers;
    assert_eq!(h["origin"], APP);
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(
        h["x-forwarded-host"]
            .to_str()
            .expect("ascii")
            .starts_with(HOST)
    );

    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn wildcard_origin_admits_subdomains_only() {
    let up = Upstream::start().await;
    let gate = chat_gate(&up, app_only(), &[]).await;
    assert!(
        connect(
            gate.proxy,
            HOST,
            "/ws",
            Some("https://a.b.apps.example.test"),
            &[]
        )
        .await
        .is_ok()
    );
    for evil in [
        "https://apps.example.test",
        "https://evilapps.example.test",
        "https://apps.example.test.evil.com",
        "http://a.apps.example.test",
    ] {
        assert_eq!(
            connect(gate.proxy, HOST, "/ws", Some(evil), &[])
                .await
                .err(),
            Some(403),
            "{evil}"
        );
    }
}

#[tokio::test]
async fn denied_origin_is_403_with_plain_text_and_never_reaches_the_upstream() {
    let mut up = Upstream::start().await;
    let gate = chat_gate(&up, app_only(), &[]).await;
    let raw = raw_request(
        gate.proxy,
        &upgrade_request(
            HOST,
            "/ws",
            "Origin: https://evil.example\r\nX-Secret: swordfish\r\n",
        ),
    )
    .await;
    assert_eq!(raw.status, 403);
    assert_eq!(raw.body, "origin not allowed\n");
    assert!(!raw.head.contains("swordfish") && !raw.body.contains("evil"));
    // Missing, null, invalid and doubled origins are denied too.
    for extra in [
        "",
        "Origin: null\r\n",
        "Origin: https://app.example.test/\r\n",
        "Origin: https://app.example.test\r\nOrigin: https://app.example.test\r\n",
        "Origin: https://app.example.test, https://evil.example\r\n",
    ] {
        let raw = raw_request(gate.proxy, &upgrade_request(HOST, "/ws", extra)).await;
        assert_eq!(raw.status, 403, "{extra:?}");
    }
    assert!(up.seen.try_recv().is_err(), "the upstream was contacted");
    let (_, metrics) = gate.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"wsgate_handshakes_total{route="default/chat",result="rejected",reason="origin_not_allowed"} 6"#),
        "{metrics}"
    );
}

/// Sends `request` in `parts` writes, `pause` apart (the first once `pause` has passed since
/// connecting), and reads the response's status line.
async fn status_of_a_request_sent_in_parts(
    addr: std::net::SocketAddr,
    request: &str,
    parts: usize,
    pause: std::time::Duration,
) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    for part in request.as_bytes().chunks(request.len().div_ceil(parts)) {
        tokio::time::sleep(pause).await;
        stream.write_all(part).await.expect("write");
    }
    let mut response = vec![0u8; 256];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read(&mut response),
    )
    .await
    .expect("an answer in time")
    .expect("read");
    let response = String::from_utf8_lossy(&response[..n]).into_owned();
    response.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_handshake_is_decided_alike_whether_its_head_comes_with_the_connection_or_later() {
    // Whole in the first packet, the head is decided as the connection is accepted; in
    // pieces, or after the kernel stopped holding a silent connection (about a second),
    // the connection waits for the rest as a task.
    let mut up = Upstream::start().await;
    let gate = chat_gate(&up, app_only(), &[]).await;
    let denied = upgrade_request(HOST, "/ws", "Origin: https://evil.example\r\n");
    let allowed = upgrade_request(HOST, "/ws", &format!("Origin: {APP}\r\n"));
    let short = std::time::Duration::from_millis(50);
    let after_the_kernel_gave_up = std::time::Duration::from_millis(1500);
    for (parts, pause) in [
        (1, std::time::Duration::ZERO),
        (3, short),
        (1, after_the_kernel_gave_up),
    ] {
        let status = status_of_a_request_sent_in_parts(gate.proxy, &denied, parts, pause).await;
        assert_eq!(status, "HTTP/1.1 403 Forbidden", "{parts} parts, {pause:?}");
        let status = status_of_a_request_sent_in_parts(gate.proxy, &allowed, parts, pause).await;
        assert_eq!(
            status, "HTTP/1.1 101 Switching Protocols",
            "{parts} parts, {pause:?}"
        );
    }
    assert!(up.seen.try_recv().is_ok(), "the upstream was asked");
    let (_, metrics) = gate.admin_get("/metrics").await;
    for (result, reason) in [("rejected", "origin_not_allowed"), ("accepted", "ok")] {
        let counted = format!(
            r#"wsgate_handshakes_total{{route="default/chat",result="{result}",reason="{reason}"}} 3"#
        );
        assert!(metrics.contains(&counted), "{counted} in {metrics}");
    }
}

#[tokio::test]
async fn null_and_missing_origins_need_their_flags() {
    let up = Upstream::start().await;
    let gate = chat_gate(&up, "{allow: [], allowNull: true, allowMissing: true}", &[]).await;
    assert!(connect(gate.proxy, HOST, "/ws", None, &[]).await.is_ok());
    assert!(
        connect(gate.proxy, HOST, "/ws", Some("null"), &[])
            .await
            .is_ok()
    );
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some(APP), &[]).await.err(),
        Some(403)
    );
}

#[tokio::test]
async fn rejection_close_upgrades_then_closes_with_1008() {
    let mut up = Upstream::start().await;
    let origins = "{allow: [\"https://app.example.test\"], rejection: Close}";
    let gate = chat_gate(&up, origins, &[]).await;
    let (mut ws, resp) = connect(gate.proxy, HOST, "/ws", Some("https://evil.example"), &[])
        .await
        .expect("upgraded");
    assert_eq!(resp.status(), 101);
    assert_eq!(
        close_code(&mut ws).await,
        (1008, "origin not allowed".to_owned())
    );
    assert!(up.seen.try_recv().is_err(), "the upstream was contacted");
}

#[tokio::test]
async fn unknown_host_or_path_is_404() {
    let up = Upstream::start().await;
    let gate = chat_gate(&up, app_only(), &[]).await;
    for (host, path) in [("other.example.test", "/ws"), (HOST, "/wsx"), (HOST, "/")] {
        let raw = raw_request(
            gate.proxy,
            &upgrade_request(host, path, "Origin: https://app.example.test\r\n"),
        )
        .await;
        assert_eq!(raw.status, 404, "{host}{path}");
    }
    // Host matching ignores case, port and a trailing dot.
    let raw = raw_request(
        gate.proxy,
        &upgrade_request(
            "CHAT.Example.TEST.:8080",
            "/ws",
            "Origin: https://app.example.test\r\n",
        ),
    )
    .await;
    assert_eq!(raw.status, 101);
}

#[tokio::test]
async fn an_unrouted_plain_request_is_404_before_it_is_426() {
    let up = Upstream::start().await;
    let gate = chat_gate(&up, app_only(), &[]).await;
    // DESIGN's order: the route is found (404) before the upgrade is checked (426).
    let raw = raw_request(
        gate.proxy,
        "GET /ws HTTP/1.1\r\nHost: other.example.test\r\n\r\n",
    )
    .await;
    assert_eq!(raw.status, 404, "{}", raw.head);
}

#[tokio::test]
async fn malformed_handshakes_get_their_status_codes() {
    let up = Upstream::start().await;
    let gate = chat_gate(&up, app_only(), &[]).await;
    let plain = raw_request(
        gate.proxy,
        &format!("GET /ws HTTP/1.1\r\nHost: {HOST}\r\n\r\n"),
    )
    .await;
    assert_eq!(plain.status, 426);
    assert!(
        plain.head.to_lowercase().contains("upgrade: websocket"),
        "{}",
        plain.head
    );

    let v8 = upgrade_request(HOST, "/ws", "").replace("Version: 13", "Version: 8");
    let raw = raw_request(gate.proxy, &v8).await;
    assert_eq!(raw.status, 426);
    assert!(
        raw.head
            .to_lowercase()
            .contains("sec-websocket-version: 13"),
        "{}",
        raw.head
    );

    // HTTP/1.0 has no Upgrade mechanism.
    let old = upgrade_request(HOST, "/ws", "").replace("HTTP/1.1", "HTTP/1.0");
    assert_eq!(raw_request(gate.proxy, &old).await.status, 426);

    let bad_key = upgrade_request(HOST, "/ws", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
    assert_eq!(raw_request(gate.proxy, &bad_key).await.status, 400);

    let garbage = raw_request(gate.proxy, "\x16\x03\x01 not http at all\r\n\r\n").await;
    assert_eq!(garbage.status, 400);
    assert_eq!(garbage.body, "malformed HTTP/1.1 request\n");

    let huge = upgrade_request(HOST, "/ws", &format!("X-Pad: {}\r\n", "a".repeat(17_000)));
    let raw = raw_request(gate.proxy, &huge).await;
    assert_eq!(
        (raw.status, raw.body.as_str()),
        (431, "request head too large\n")
    );
    let many: String = (0..101).map(|i| format!("X-{i}: 1\r\n")).collect();
    let raw = raw_request(gate.proxy, &upgrade_request(HOST, "/ws", &many)).await;
    assert_eq!(raw.status, 431);
    // Still serving.
    assert!(
        connect(gate.proxy, HOST, "/ws", Some(APP), &[])
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_request_head_not_finished_in_time_is_closed_without_an_answer() {
    let up = Upstream::start().await;
    let gate = chat_gate(&up, app_only(), &["--handshake-timeout", "0.5"]).await;
    let mut slow = tokio::net::TcpStream::connect(gate.proxy)
        .await
        .expect("connect");
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: ")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        slow.read_to_end(&mut rest),
    )
    .await;
    assert!(matches!(read, Ok(Ok(0))), "closed, nothing sent: {read:?}");
}

#[tokio::test]
async fn a_first_frame_sent_right_behind_the_request_is_relayed() {
    let up = Upstream::start().await;
    let gate = chat_gate(&up, app_only(), &[]).await;
    let mut stream = tokio::net::TcpStream::connect(gate.proxy)
        .await
        .expect("connect");
    // One write: the handshake and a masked text frame "hi".
    let mut bytes = upgrade_request(HOST, "/ws", &format!("Origin: {APP}\r\n")).into_bytes();
    let mask = [1u8, 2, 3, 4];
    bytes.extend_from_slice(&[0x81, 0x82]);
    bytes.extend_from_slice(&mask);
    bytes.extend(b"hi".iter().zip(mask).map(|(b, m)| b ^ m));
    stream.write_all(&bytes).await.expect("write");
    let mut got = Vec::new();
    let echoed = async {
        let mut chunk = [0u8; 512];
        loop {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
            if got.ends_with(&[0x81, 0x02, b'h', b'i']) {
                return;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), echoed)
        .await
        .expect("the frame came back");
    assert!(got.starts_with(b"HTTP/1.1 101 "));
}

#[tokio::test]
async fn subprotocol_offer_is_filtered_to_the_allowlist() {
    let mut up = Upstream::start().await;
    let yaml =
        route("chat", HOST, "/ws", app_only(), &up.url()) + "  subprotocols: [\"chat.v2\"]\n";
    let gate = Gate::start(&[("chat.yaml", yaml)], &[]).await;
    let (_ws, resp) = connect(
        gate.proxy,
        HOST,
        "/ws",
        Some(APP),
        &[("sec-websocket-protocol", "admin, chat.v2")],
    )
    .await
    .expect("allowed");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v2");
    let seen = up.seen.recv().await.expect("seen");
    assert_eq!(seen.headers["sec-websocket-protocol"], "chat.v2");
    let refused = connect(
        gate.proxy,
        HOST,
        "/ws",
        Some(APP),
        &[("sec-websocket-protocol", "admin")],
    )
    .await;
    assert_eq!(refused.err(), Some(403));
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some(APP), &[]).await.err(),
        Some(403)
    );
}

#[tokio::test]
async fn url_path_replaces_the_request_path_and_keeps_the_query() {
    let mut up = Upstream::start().await;
    let upstream = format!("{{url: \"ws://{}/socket\"}}", up.addr);
    let gate = Gate::start(
        &[(
            "chat.yaml",
            route("chat", HOST, "/ws", app_only(), &upstream),
        )],
        &[],
    )
    .await;
    connect(gate.proxy, HOST, "/ws/x?token=1", Some(APP), &[])
        .await
        .expect("allowed");
    assert_eq!(up.seen.recv().await.expect("seen").path, "/socket?token=1");
}

#[tokio::test]
async fn upstream_refusal_is_passed_through_with_its_body() {
    let up = Upstream::start().await;
    let gate = Gate::start(
        &[(
            "chat.yaml",
            route("chat", HOST, "/refuse", app_only(), &up.url()),
        )],
        &[],
    )
    .await;
    let raw = raw_request(
        gate.proxy,
        &upgrade_request(HOST, "/refuse", "Origin: https://app.example.test\r\n"),
    )
    .await;
    assert_eq!(raw.status, 401);
    // The upstream sent no length, so the body arrives chunked.
    assert!(raw.body.contains("go away"), "{}", raw.body);
}

#[tokio::test]
async fn upstream_refusal_with_a_sized_or_no_body_ends_without_waiting_for_the_upstream() {
    // An upstream that refuses, then keeps its connection open (as a keep-alive server does).
    let refusing = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = refusing.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = refusing.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let answer: &[u8] = if head.starts_with(b"GET /sized ") {
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nnope!"
                } else {
                    b"HTTP/1.1 204 No Content\r\n\r\n"
                };
                let _ = s.write_all(answer).await;
                tokio::time::sleep(std::time::Duration::from_secs(120)).await;
            });
        }
    });
    let files = [(
        "r.yaml",
        route(
            "refusing",
            HOST,
            "/",
            app_only(),
            &format!("{{url: \"ws://{addr}\"}}"),
        ),
    )];
    // Were the client held until this runs out, the reads below would time out first.
    let gate = Gate::start(&files, &["--upstream-response-timeout", "60"]).await;
    for (path, status, body) in [
        ("/sized", "HTTP/1.1 403 Forbidden", "nope!"),
        ("/empty", "HTTP/1.1 204 No Content", ""),
    ] {
        let mut client = tokio::net::TcpStream::connect(gate.proxy)
            .await
            .expect("connect");
        let request = upgrade_request(HOST, path, "Origin: https://app.example.test\r\n");
        client.write_all(request.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            client.read_to_end(&mut got),
        )
        .await
        .unwrap_or_else(|_| panic!("{path}: the client was held after the refusal"))
        .expect("read");
        let text = String::from_utf8_lossy(&got);
        let (head, rest) = text.split_once("\r\n\r\n").expect("a response head");
        assert!(head.starts_with(status), "{path}: {head}");
        assert_eq!(rest, body, "{path}");
    }
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_silent_upstream_is_504() {
    // A port nobody listens on: bind, learn the port, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    // A listener that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let files = [
        (
            "a.yaml",
            route(
                "down",
                "down.example.test",
                "/",
                app_only(),
                &format!("{{url: \"ws://{closed}\"}}"),
            ),
        ),
        (
            "b.yaml",
            route(
                "slow",
                "slow.example.test",
                "/",
                app_only(),
                &format!("{{url: \"ws://{silent_addr}\"}}"),
            ),
        ),
        (
            "c.yaml",
            route(
                "svc",
                "svc.example.test",
                "/",
                app_only(),
                "{service: {name: missing, port: 80}}",
            ),
        ),
    ];
    let gate = Gate::start(&files, &["--upstream-response-timeout", "0.3"]).await;
    let origin = "Origin: https://app.example.test\r\n";
    let down = raw_request(
        gate.proxy,
        &upgrade_request("down.example.test", "/", origin),
    )
    .await;
    assert_eq!(
        (down.status, down.body.as_str()),
        (502, "upstream unreachable\n")
    );
    let slow = raw_request(
        gate.proxy,
        &upgrade_request("slow.example.test", "/", origin),
    )
    .await;
    assert_eq!(
        (slow.status, slow.body.as_str()),
        (504, "upstream timed out\n")
    );
    let svc = raw_request(
        gate.proxy,
        &upgrade_request("svc.example.test", "/", origin),
    )
    .await;
    assert_eq!(
        (svc.status, svc.body.as_str()),
        (502, "no upstream available\n")
    );
}

#[tokio::test]
async fn service_mapping_resolves_a_service_upstream() {
    let up = Upstream::start().await;
    let yaml = route(
        "svc",
        HOST,
        "/",
        app_only(),
        "{service: {name: chat, port: 80}}",
    );
    let mapping = format!("chat.default={}", up.addr);
    let gate = Gate::start(&[("svc.yaml", yaml)], &["--service", &mapping]).await;
    echo(gate.proxy, HOST, "/", APP, &[]).await;
}

/// A loopback address nothing listens on: connecting to it is refused at once.
fn refusing_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

#[tokio::test]
async fn handshakes_spread_over_endpoints_and_skip_one_that_refuses() {
    let (mut a, mut b) = (Upstream::start().await, Upstream::start().await);
    let yaml = route(
        "svc",
        HOST,
        "/",
        app_only(),
        "{service: {name: chat, port: 80}}",
    );
    let mappings = [a.addr, refusing_addr(), b.addr].map(|addr| format!("chat.default={addr}"));
    let gate = Gate::start(
        &[("svc.yaml", yaml)],
        &[
            "--service",
            &mappings[0],
            "--service",
            &mappings[1],
            "--service",
            &mappings[2],
        ],
    )
    .await;
    for _ in 0..30 {
        echo(gate.proxy, HOST, "/", APP, &[]).await;
    }
    let (at_a, at_b) = (a.handshakes(), b.handshakes());
    assert_eq!(at_a + at_b, 30);
    assert!(at_a > 0 && at_b > 0, "a: {at_a}, b: {at_b}");
}

#[tokio::test]
async fn every_endpoint_refusing_answers_502() {
    let yaml = route(
        "svc",
        HOST,
        "/",
        app_only(),
        "{service: {name: chat, port: 80}}",
    );
    let mappings = [refusing_addr(), refusing_addr()].map(|addr| format!("chat.default={addr}"));
    let gate = Gate::start(
        &[("svc.yaml", yaml)],
        &["--service", &mappings[0], "--service", &mappings[1]],
    )
    .await;
    assert_eq!(
        connect(gate.proxy, HOST, "/", Some(APP), &[]).await.err(),
        Some(502)
    );
}

#[tokio::test]
async fn edited_file_applies_to_the_next_handshake() {
    let up = Upstream::start().await;
    let gate = chat_gate(&up, app_only(), &[]).await;
    let other = "https://other.example.test";
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some(other), &[])
            .await
            .err(),
        Some(403)
    );
    gate.write_and_wait(
        "chat.yaml",
        &route(
            "chat",
            HOST,
            "/ws",
            "{allow: [\"https://other.example.test\"]}",
            &up.url(),
        ),
    )
    .await;
    assert!(
        connect(gate.proxy, HOST, "/ws", Some(other), &[])
            .await
            .is_ok()
    );
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some(APP), &[]).await.err(),
        Some(403)
    );
}

#[tokio::test]
async fn broken_file_keeps_its_last_routes_serving_and_is_reported_with_its_line() {
    let up = Upstream::start().await;
    let gate = chat_gate(&up, app_only(), &[]).await;
    let (mut live, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");
    gate.write_and_wait("chat.yaml", "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {name: chat}\nspec:\n  hostnames: [\n").await;
    let (_, routes) = gate.admin_get("/routes").await;
    let v: serde_json::Value = serde_json::from_str(&routes).expect("json");
    let problem = &v["problems"][0];
    assert!(
        problem["source"]
            .as_str()
            .expect("source")
            .ends_with("chat.yaml"),
        "{routes}"
    );
    assert!(problem["line"].as_u64().is_some(), "{routes}");
    assert!(gate.log().contains("does not parse"));
    // The last good declaration keeps serving, old and new connections alike.
    live.send(Message::text("still here")).await.expect("send");
    assert_eq!(
        live.next().await.expect("reply").expect("ok"),
        Message::text("still here")
    );
    assert!(
        connect(gate.proxy, HOST, "/ws", Some(APP), &[])
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn removing_an_origin_closes_its_live_connections_with_1008() {
    let up = Upstream::start().await;
    let gate = chat_gate(&up, app_only(), &[]).await;
    let (mut revoked, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");
    let (mut kept, _) = connect(
        gate.proxy,
        HOST,
        "/ws",
        Some("https://x.apps.example.test"),
        &[],
    )
    .await
    .expect("allowed");
    gate.write_and_wait(
        "chat.yaml",
        &route(
            "chat",
            HOST,
            "/ws",
            "{allow: [\"https://*.apps.example.test\"]}",
            &up.url(),
        ),
    )
    .await;
    assert_eq!(
        close_code(&mut revoked).await,
        (1008, "origin not allowed".to_owned())
    );
    kept.send(Message::text("ok")).await.expect("send");
    assert_eq!(
        kept.next().await.expect("reply").expect("ok"),
        Message::text("ok")
    );
}

#[tokio::test]
async fn deleting_a_route_closes_its_connections_with_1001() {
    let up = Upstream::start().await;
    let files = [
        (
            "chat.yaml",
            route("chat", HOST, "/ws", app_only(), &up.url()),
        ),
        (
            "keep.yaml",
            route("keep", "keep.example.test", "/", app_only(), &up.url()),
        ),
    ];
    let gate = Gate::start(&files, &[]).await;
    let (mut gone, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");
    let before = gate.version().await;
    std::fs::remove_file(gate.routes_dir.join("chat.yaml")).expect("rm");
    gate.wait_for(
        || async { gate.version().await > before },
        "snapshot after delete",
    )
    .await;
    assert_eq!(close_code(&mut gone).await.0, 1001);
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some(APP), &[]).await.err(),
        Some(404)
    );
}

#[tokio::test]
async fn a_route_edited_into_an_invalid_one_is_gone_and_its_connections_get_1001() {
    let up = Upstream::start().await;
    let gate = chat_gate(&up, app_only(), &[]).await;
    let (mut live, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");
    // It parses, but compile refuses it (Accepted=False): it is not served any more.
    let invalid =
        route("chat", HOST, "/ws", app_only(), &up.url()) + "  limits: {maxConnections: 0}\n";
    gate.write_and_wait("chat.yaml", &invalid).await;
    assert_eq!(close_code(&mut live).await.0, 1001);
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some(APP), &[]).await.err(),
        Some(404)
    );
}

#[tokio::test]
async fn revoke_on_policy_change_false_keeps_live_connections() {
    let up = Upstream::start().await;
    let yaml =
        route("chat", HOST, "/ws", app_only(), &up.url()) + "  revokeOnPolicyChange: false\n";
    let gate = Gate::start(&[("chat.yaml", yaml)], &[]).await;
    let (mut live, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");
    let stricter =
        route("chat", HOST, "/ws", "{allow: []}", &up.url()) + "  revokeOnPolicyChange: false\n";
    gate.write_and_wait("chat.yaml", &stricter).await;
    live.send(Message::text("ok")).await.expect("send");
    assert_eq!(
        live.next().await.expect("reply").expect("ok"),
        Message::text("ok")
    );
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some(APP), &[]).await.err(),
        Some(403)
    );
}

#[tokio::test]
async fn sigterm_closes_connections_with_1012_and_exits() {
    let up = Upstream::start().await;
    let mut gate = chat_gate(&up, app_only(), &[]).await;
    let (mut ws, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");
    // An idle keep-alive HTTP connection must not hold shutdown up for the 30 s grace.
    let mut idle = tokio::net::TcpStream::connect(gate.proxy)
        .await
        .expect("connect");
    idle.write_all(format!("GET /nothing HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await.expect("response");
    assert_eq!(&head, b"HTTP/1.1 404");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &gate.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert_eq!(close_code(&mut ws).await.0, 1012);
    drop(ws);
    assert_eq!(gate.wait_exit().await, Some(0));
    assert!(gate.log().contains("closing live connections with 1012"));
    assert!(
        gate.log().contains("all connections closed"),
        "{}",
        gate.log()
    );
}

#[tokio::test]
async fn with_shutdown_jitter_every_connection_gets_1012_and_the_process_exits_once_all_closed() {
    let up = Upstream::start().await;
    let mut gate = chat_gate(
        &up,
        app_only(),
        &["--shutdown-delay", "0", "--shutdown-jitter", "1"],
    )
    .await;
    let mut sockets = Vec::new();
    for _ in 0..8 {
        let (ws, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
            .await
            .expect("allowed");
        sockets.push(ws);
    }
    gate.terminate();
    for ws in &mut sockets {
        assert_eq!(close_code(ws).await.0, 1012);
    }
    drop(sockets);
    assert_eq!(gate.wait_exit().await, Some(0));
    let log = gate.log();
    assert!(log.contains("jitter_seconds=1"), "{log}");
    assert!(log.contains("all connections closed"), "{log}");
}

#[test]
fn a_shutdown_jitter_not_shorter_than_the_grace_is_refused_at_start() {
    let routes = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(bin())
        .arg("standalone")
        .arg("--routes")
        .arg(routes.path())
        .args(["--listen", "127.0.0.1:0", "--listen-tls", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0"])
        .args(["--shutdown-jitter", "30", "--shutdown-grace", "30"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--shutdown-jitter (30s) must be shorter than --shutdown-grace (30s)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_client_that_ignores_1012_is_left_behind_when_the_shutdown_grace_ends() {
    let up = Upstream::start().await;
    // The grace is shorter than the linger a Close waits for its answer (2 s).
    let mut gate = chat_gate(&up, app_only(), &["--shutdown-grace", "1"]).await;
    let mut silent = tokio::net::TcpStream::connect(gate.proxy)
        .await
        .expect("connect");
    silent
        .write_all(upgrade_request(HOST, "/ws", &format!("Origin: {APP}\r\n")).as_bytes())
        .await
        .expect("write");
    let mut head = [0u8; 12];
    silent.read_exact(&mut head).await.expect("response");
    assert_eq!(&head, b"HTTP/1.1 101");
    // The client never reads its 1012, nor answers it.
    gate.terminate();
    assert_eq!(gate.wait_exit().await, Some(0));
    assert!(
        gate.log()
            .contains("shutdown grace ended with connections still open"),
        "{}",
        gate.log()
    );
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_metrics_and_routes() {
    let up = Upstream::start().await;
    let gate = chat_gate(&up, app_only(), &[]).await;
    assert_eq!(gate.admin_get("/healthz").await.0, 200);
    assert_eq!(gate.admin_get("/readyz").await.0, 200);
    let (_ws, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");
    gate.wait_for(
        || async {
            gate.admin_get("/metrics")
                .await
                .1
                .contains(r#"wsgate_active_connections{route="default/chat"} 1"#)
        },
        "active connection gauge",
    )
    .await;
    let (_, metrics) = gate.admin_get("/metrics").await;
    assert!(
        metrics.contains(
            r#"wsgate_handshakes_total{route="default/chat",result="accepted",reason="ok"} 1"#
        ),
        "{metrics}"
    );
    let (status, routes) = gate.admin_get("/routes").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&routes).expect("json");
    let r = &v["routes"][0];
    assert_eq!(r["name"], "chat");
    assert_eq!(r["programmed"], true);
    let ready = r["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("Ready");
    assert_eq!(ready["status"], "True");
}

#[tokio::test]
async fn readyz_turns_503_when_shutdown_starts_while_connections_keep_serving() {
    let up = Upstream::start().await;
    let mut gate = chat_gate(&up, app_only(), &["--shutdown-delay", "3"]).await;
    let (mut ws, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");
    std::process::Command::new("kill")
        .args(["-TERM", &gate.pid().to_string()])
        .status()
        .expect("kill");
    gate.wait_for(
        || async { gate.admin_get("/readyz").await.0 == 503 },
        "readyz 503",
    )
    .await;
    ws.send(Message::text("during delay")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("reply").expect("ok"),
        Message::text("during delay")
    );
    assert_eq!(close_code(&mut ws).await.0, 1012);
    drop(ws);
    assert_eq!(gate.wait_exit().await, Some(0));
}

/// The chat route with `limits` appended to its spec.
async fn limited_gate(up: &Upstream, limits: &str) -> Gate {
    let yaml = route("chat", HOST, "/ws", app_only(), &up.url()) + &format!("  limits: {limits}\n");
    Gate::start(&[("chat.yaml", yaml)], &[]).await
}

#[tokio::test]
async fn a_fragmented_message_over_max_message_bytes_closes_its_sender_with_1009() {
    let up = Upstream::start().await;
    let gate = limited_gate(&up, "{maxMessageBytes: 1000}").await;
    let (mut ws, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");
    ws.send(Message::binary(vec![1u8; 1000]))
        .await
        .expect("send");
    assert_eq!(
        ws.next().await.expect("reply").expect("ok"),
        Message::binary(vec![1u8; 1000])
    );
    // 600 + 600 bytes in two fragments: the second takes the message over 1000.
    for frame in [
        Frame::message(vec![2u8; 600], OpCode::Data(Data::Binary), false),
        Frame::message(vec![3u8; 600], OpCode::Data(Data::Continue), true),
    ] {
        ws.send(Message::Frame(frame)).await.expect("send");
    }
    assert_eq!(
        close_code(&mut ws).await,
        (1009, "message too big".to_owned())
    );
    let ended = r#"wsgate_connections_ended_total{ended_by="client_message_too_big"}"#;
    gate.wait_for(
        || async { gate.metric(ended).await == Some(1.0) },
        "the relay to count how it ended",
    )
    .await;
}

#[tokio::test]
async fn a_connection_idle_past_idle_timeout_seconds_is_closed_1001() {
    let up = Upstream::start().await;
    let gate = limited_gate(&up, "{idleTimeoutSeconds: 1}").await;
    let (mut ws, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");
    ws.send(Message::text("one")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("reply").expect("ok"),
        Message::text("one")
    );
    let started = std::time::Instant::now();
    assert_eq!(close_code(&mut ws).await, (1001, "idle timeout".to_owned()));
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_upstream_that_stops_reading_is_found_by_the_heartbeat_and_the_client_gets_1011() {
    // Completes the WebSocket handshake, then never reads again (a hung backend).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hung = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let ws = tokio_tungstenite::accept_async(stream)
            .await
            .expect("upgrade");
        std::future::pending::<()>().await;
        drop(ws);
    });
    let gate = heartbeat_gate(addr).await;
    let (mut ws, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");
    // The client reads (and so answers the gateway's Pings) until the gateway closes.
    assert_eq!(
        close_code(&mut ws).await,
        (1011, "upstream not responding".to_owned())
    );
    hung.abort();
}

#[tokio::test]
async fn metrics_and_the_access_log_tell_a_scripted_sequence() {
    let up = Upstream::start().await;
    let gate = chat_gate(&up, app_only(), &[]).await;
    // One accepted connection with two messages each way, closed by the client with 1000.
    let (mut ws, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");
    for text in ["one", "two"] {
        ws.send(Message::text(text)).await.expect("send");
        assert_eq!(
            ws.next().await.expect("reply").expect("ok"),
            Message::text(text)
        );
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .expect("close");
    while ws.next().await.is_some() {}
    // One refused origin, one unknown host.
    let evil = "https://evil.example";
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some(evil), &[])
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        connect(gate.proxy, "nowhere.test", "/", Some(APP), &[])
            .await
            .err(),
        Some(404)
    );

    let ended = r#"wsgate_closes_total{code="1000",initiator="client"}"#;
    gate.wait_for(
        || async { gate.metric(ended).await == Some(1.0) },
        "the close to be counted",
    )
    .await;
    for (sample, value) in [
        (
            r#"wsgate_handshakes_total{route="default/chat",result="accepted",reason="ok"}"#,
            1.0,
        ),
        (
            r#"wsgate_handshakes_total{route="default/chat",result="rejected",reason="origin_not_allowed"}"#,
            1.0,
        ),
        (
            r#"wsgate_handshakes_total{route="",result="rejected",reason="no_route"}"#,
            1.0,
        ),
        (
            r#"wsgate_relayed_messages_total{route="default/chat",direction="client_to_upstream"}"#,
            2.0,
        ),
        (
            r#"wsgate_relayed_messages_total{route="default/chat",direction="upstream_to_client"}"#,
            2.0,
        ),
        (
            r#"wsgate_connection_duration_seconds_count{route="default/chat"}"#,
            1.0,
        ),
        (r#"wsgate_connections_ended_total{ended_by="client"}"#, 1.0),
        (r#"wsgate_active_connections{route="default/chat"}"#, 0.0),
        ("wsgate_upstream_connect_seconds_count", 1.0),
    ] {
        assert_eq!(gate.metric(sample).await, Some(value), "{sample}");
    }

    let log = gate.log();
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("wsgate::access"))
        .collect();
    let line = |what: &str| {
        access
            .iter()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no access line with {what}:\n{log}"))
            .to_string()
    };
    let accepted = line("result=\"accepted\"");
    assert!(
        accepted.contains("route=\"default/chat\"")
            && accepted.contains("origin=\"https://app.example.test\""),
        "{accepted}"
    );
    let refused = line("reason=\"origin_not_allowed\"");
    assert!(
        refused.contains("origin=\"https://evil.example\""),
        "{refused}"
    );
    let closed = line(" closed ");
    assert!(
        closed.contains("code=\"1000\"") && closed.contains("ended_by=\"client\""),
        "{closed}"
    );
}

#[tokio::test]
async fn refused_handshake_lines_are_capped_per_second_and_json_logs_parse() {
    let up = Upstream::start().await;
    let gate = chat_gate(&up, app_only(), &["--log-format", "json"]).await;
    // Refused until some second had more than the cap and the next one reported it: how
    // many that takes depends on how fast this machine is today, so no count is assumed.
    let mut sent = 0;
    while sent % 10 != 0 || !gate.log().contains("\"left_out\"") {
        assert!(
            sent < 20_000,
            "no report of left-out lines after {sent} refusals"
        );
        assert_eq!(
            connect(gate.proxy, HOST, "/ws", Some("https://evil.example"), &[])
                .await
                .err(),
            Some(403)
        );
        sent += 1;
    }
    let log = gate.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let refused = lines
        .iter()
        .filter(|l| {
            l["target"] == "wsgate::access" && l["fields"]["reason"] == "origin_not_allowed"
        })
        .count();
    let left_out: u64 = lines
        .iter()
        .filter_map(|l| l["fields"]["left_out"].as_u64())
        .sum();
    assert!(left_out > 0, "{log}");
    assert!(
        refused < sent && refused as u64 + left_out <= sent as u64,
        "{refused} lines and {left_out} left out for {sent} refusals"
    );
}

/// A TCP balancer in front of `backends`: each connection goes to the first one that
/// accepts it, as a Service would once a draining pod has left its endpoints.
async fn balancer(backends: Vec<std::net::SocketAddr>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind balancer");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let backends = backends.clone();
            tokio::spawn(async move {
                for backend in backends {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A new WebSocket through the balancer. A connection that reached the stopping instance as
/// its listener closed is reset by the kernel (as behind any proxy): the client retries.
async fn reconnect(front: std::net::SocketAddr) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    for _ in 0..50 {
        let mut req = format!("ws://{HOST}:{}/ws", front.port())
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("origin", APP.parse().expect("origin"));
        let tcp = tokio::net::TcpStream::connect(front)
            .await
            .expect("connect balancer");
        let plain = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
        if let Ok((ws, _)) = tokio_tungstenite::client_async(req, plain).await {
            return ws;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the balancer never found an instance that answers");
}

#[tokio::test]
async fn a_rolling_restart_behind_a_balancer_closes_1012_and_loses_no_acknowledged_message() {
    let up = Upstream::start().await;
    let first = chat_gate(&up, app_only(), &[]).await;
    let second = chat_gate(&up, app_only(), &[]).await;
    let front = balancer(vec![first.proxy, second.proxy]).await;
    let (mut ws, _) = connect(front, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");
    let mut acknowledged = Vec::new();
    let mut closes = Vec::new();
    let mut n = 0;
    // Forty messages at least, and on until the drain has closed a connection: how many
    // echoes pass between SIGTERM and the drain depends on the machine.
    while n < 40 || closes.is_empty() {
        if n == 20 && closes.is_empty() {
            first.terminate();
        }
        let text = format!("message {n}");
        // A message the gateway cut off while draining gets no echo: it is sent again on
        // the next connection, so every message is acknowledged once the run is over.
        if ws.send(Message::text(text.clone())).await.is_ok() {
            match ws.next().await {
                Some(Ok(Message::Text(echo))) => {
                    assert_eq!(echo.as_str(), text);
                    acknowledged.push(n);
                    n += 1;
                    continue;
                }
                Some(Ok(Message::Close(frame))) => {
                    closes.push(frame.map(|f| u16::from(f.code)));
                }
                other => panic!("message {n}: {other:?}"),
            }
        }
        while ws.next().await.is_some() {}
        ws = reconnect(front).await;
        assert!(n < 10_000, "the drain never closed the connection");
    }
    // A connection the balancer made to the draining instance is closed 1012 too.
    assert!(
        closes.iter().all(|c| *c == Some(1012)),
        "a clean close code, never an abrupt end: {closes:?}"
    );
    assert_eq!(acknowledged, (0..n).collect::<Vec<_>>());
    drop(second);
}

#[tokio::test]
async fn a_client_that_stops_answering_is_dropped_and_the_upstream_gets_1001() {
    // An upstream that reports the Close it receives.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut ws = tokio_tungstenite::accept_async(stream)
            .await
            .expect("upgrade");
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(frame) = msg {
                let _ = tx.send(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
                return;
            }
        }
    });
    let gate = heartbeat_gate(addr).await;
    // Connected, then never read again: the gateway's Ping goes unanswered.
    let (_silent, _) = connect(gate.proxy, HOST, "/ws", Some(APP), &[])
        .await
        .expect("allowed");
    let close = tokio::time::timeout(PATIENCE, rx)
        .await
        .expect("the upstream hears within patience")
        .expect("the upstream saw a Close");
    assert_eq!(close, Some((1001, "going away".to_owned())));
    let ended = r#"wsgate_connections_ended_total{ended_by="client_heartbeat_timeout"}"#;
    gate.wait_for(
        || async { gate.metric(ended).await == Some(1.0) },
        "the end to be counted",
    )
    .await;
}

/// The chat route to `upstream` with a 1 s heartbeat interval and timeout.
async fn heartbeat_gate(upstream: std::net::SocketAddr) -> Gate {
    let yaml = route(
        "chat",
        HOST,
        "/ws",
        app_only(),
        &format!("{{url: \"ws://{upstream}\"}}"),
    ) + "  heartbeat: {intervalSeconds: 1, timeoutSeconds: 1}\n";
    Gate::start(&[("chat.yaml", yaml)], &[]).await
}

#[tokio::test]
async fn with_access_lines_filtered_out_no_left_out_report_is_logged() {
    let up = Upstream::start().await;
    let gate = chat_gate(&up, app_only(), &["--log", "info,wsgate::access=warn"]).await;
    for _ in 0..30 {
        assert_eq!(
            connect(gate.proxy, HOST, "/ws", Some("https://evil.example"), &[])
                .await
                .err(),
            Some(403)
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        connect(gate.proxy, HOST, "/ws", Some("https://evil.example"), &[])
            .await
            .err(),
        Some(403)
    );
    let log = gate.log();
    assert!(!log.contains("wsgate::access"), "{log}");
}
