//! The edge's own defences through real sockets (docs/design.md §6): route and client limits, the
//! global connection cap, slow clients, and who the client is behind a load balancer.

mod support;

use std::net::{IpAddr, SocketAddr};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const HOST: &str = "chat.example.test";
const APP: &str = "https://app.example.test";
const ORIGINS: &str = "{allow: [\"https://app.example.test\"]}";

/// A route to `up` with `extra` spec lines (two-space indented YAML).
fn limited_route(up: &Upstream, extra: &str) -> Vec<(&'static str, String)> {
    vec![(
        "chat.yaml",
        route("chat", HOST, "/ws", ORIGINS, &up.url()) + extra,
    )]
}

/// A TCP connection to `gate` from the loopback address `source`.
async fn connect_from(source: &str, gate: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    let source: IpAddr = source.parse().expect("source address");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source address");
    socket.connect(gate).await.expect("connect gateway")
}

/// Sends an upgrade request from `source` (plus `prefix` bytes before it, and `extra`
/// header lines) and reads the response head; the connection stays open for the caller.
async fn handshake_from(
    source: &str,
    gate: SocketAddr,
    prefix: &[u8],
    extra: &str,
) -> (u16, String, TcpStream) {
    let mut stream = connect_from(source, gate).await;
    let request = upgrade_request(HOST, "/ws", &format!("Origin: {APP}\r\n{extra}"));
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(request.as_bytes());
    stream.write_all(&bytes).await.expect("write");
    let mut head = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("response head within patience");
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, stream)
}

/// Reads until the peer closes; fails the test if it does not within patience.
async fn closed_by_peer(stream: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .expect("the gateway closes the connection")
        .ok();
    rest
}

#[tokio::test]
async fn a_route_at_max_connections_answers_503_with_retry_after_until_one_ends() {
    let mut up = Upstream::start().await;
    let gate = Gate::start(&limited_route(&up, "  limits: {maxConnections: 2}\n"), &[]).await;
    let (a, _, first) = handshake_from("127.0.0.1", gate.proxy, b"", "").await;
    let (b, _, _second) = handshake_from("127.0.0.2", gate.proxy, b"", "").await;
    assert_eq!((a, b), (101, 101));
    let (status, head, _) = handshake_from("127.0.0.3", gate.proxy, b"", "").await;
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert_eq!(
        up.handshakes(),
        2,
        "the refused handshake never reached the upstream"
    );

    drop(first);
    gate.wait_for(
        || async { handshake_from("127.0.0.3", gate.proxy, b"", "").await.0 == 101 },
        "a handshake once a connection ended",
    )
    .await;
    // At least the one above; the wait may have met the full route again.
    let refused = gate
        .metric(r#"wsgate_handshakes_total{route="default/chat",result="rejected",reason="route_full"}"#)
        .await;
    assert!(refused.is_some_and(|n| n >= 1.0), "{refused:?}");
}

#[tokio::test]
async fn a_refused_origin_gets_403_before_any_limit_is_counted() {
    let mut up = Upstream::start().await;
    let gate = Gate::start(
        &limited_route(
            &up,
            "  limits: {maxConnections: 1, handshakesPerSecondPerClient: 1}\n",
        ),
        &[],
    )
    .await;
    let (status, _, _held) = handshake_from("127.0.0.1", gate.proxy, b"", "").await;
    assert_eq!(status, 101);
    // The route is full and this client has used its handshake for the second: the origin
    // is checked first (docs/design.md §5, steps 4 then 5), so another page gets 403, not
    // 503 or 429.
    for _ in 0..3 {
        let answer = raw_request(
            gate.proxy,
            &upgrade_request(HOST, "/ws", "Origin: https://evil.example\r\n"),
        )
        .await;
        assert_eq!(answer.status, 403, "{}", answer.head);
    }
    assert_eq!(up.handshakes(), 1);
    assert_eq!(
        gate.metric(r#"wsgate_handshakes_total{route="default/chat",result="rejected",reason="origin_not_allowed"}"#)
            .await,
        Some(3.0)
    );
}

#[tokio::test]
async fn a_client_at_its_connection_limit_gets_429_while_other_clients_connect() {
    let up = Upstream::start().await;
    let gate = Gate::start(
        &limited_route(&up, "  limits: {maxConnectionsPerClient: 1}\n"),
        &[],
    )
    .await;
    let (first, _, held) = handshake_from("127.0.0.1", gate.proxy, b"", "").await;
    assert_eq!(first, 101);
    let (again, head, _) = handshake_from("127.0.0.1", gate.proxy, b"", "").await;
    assert_eq!(again, 429, "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    let (other, _, _other) = handshake_from("127.0.0.2", gate.proxy, b"", "").await;
    assert_eq!(other, 101, "another client has its own allowance");
    drop(held);
    gate.wait_for(
        || async { handshake_from("127.0.0.1", gate.proxy, b"", "").await.0 == 101 },
        "the client connects again once its connection ended",
    )
    .await;
}

#[tokio::test]
async fn handshakes_faster_than_the_client_rate_get_429_with_retry_after() {
    let up = Upstream::start().await;
    let gate = Gate::start(
        &limited_route(&up, "  limits: {handshakesPerSecondPerClient: 1}\n"),
        &[],
    )
    .await;
    // A bucket of one: the second handshake within the same second is refused.
    let (first, _, _a) = handshake_from("127.0.0.1", gate.proxy, b"", "").await;
    let (second, head, _b) = handshake_from("127.0.0.1", gate.proxy, b"", "").await;
    assert_eq!((first, second), (101, 429), "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(
        handshake_from("127.0.0.2", gate.proxy, b"", "").await.0 == 101,
        "another client has its own bucket"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        handshake_from("127.0.0.1", gate.proxy, b"", "").await.0,
        101
    );
}

#[tokio::test]
async fn beyond_max_connections_the_gateway_answers_503_without_reading_the_request() {
    let up = Upstream::start().await;
    let gate = Gate::start(
        &limited_route(&up, ""),
        &["--max-connections", "2", "--handshake-timeout", "30"],
    )
    .await;
    // Two clients that have not finished their request head hold both places.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gate.proxy).await.expect("connect");
        s.write_all(b"GET /ws HTTP/1.1\r\n").await.expect("write");
        slow.push(s);
    }
    gate.wait_for(
        || async { handshake_from("127.0.0.1", gate.proxy, b"", "").await.0 == 503 },
        "a third connection is turned away",
    )
    .await;
    let raw = raw_request(gate.proxy, &upgrade_request(HOST, "/ws", "")).await;
    assert_eq!(raw.status, 503);
    assert!(
        raw.head.to_lowercase().contains("retry-after: 1"),
        "{}",
        raw.head
    );
    assert_eq!(raw.body, "gateway at its connection limit: retry later\n");
    drop(slow);
    gate.wait_for(
        || async { handshake_from("127.0.0.1", gate.proxy, b"", "").await.0 == 101 },
        "room again once the slow clients left",
    )
    .await;
    assert!(
        gate.log().contains("at the connection limit"),
        "reaching the cap is logged"
    );
}

#[tokio::test]
async fn hundreds_of_half_sent_handshakes_do_not_hold_up_a_normal_client() {
    let up = Upstream::start().await;
    let gate = Gate::start(&limited_route(&up, ""), &["--handshake-timeout", "2"]).await;
    let mut slow = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(gate.proxy).await.expect("connect");
        // Each stops somewhere inside its head, some after the request line only.
        let partial = &upgrade_request(HOST, "/ws", "")[..20 + i % 60];
        s.write_all(partial.as_bytes()).await.expect("write");
        slow.push(s);
    }
    echo(gate.proxy, HOST, "/ws", APP, &[]).await;
    // The gateway closes every one of them at the handshake timeout, counted.
    for s in &mut slow {
        closed_by_peer(s).await;
    }
    gate.wait_for(
        || async {
            gate.metric(
                r#"wsgate_handshakes_total{route="",result="rejected",reason="head_timeout"}"#,
            )
            .await
                == Some(300.0)
        },
        "300 head timeouts counted",
    )
    .await;
}

fn proxy_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x21); // version 2, PROXY
    let (family, mut addresses) = match (source, destination) {
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            let mut a = s.ip().octets().to_vec();
            a.extend_from_slice(&d.ip().octets());
            (0x21, a)
        }
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            let mut a = s.ip().octets().to_vec();
            a.extend_from_slice(&d.ip().octets());
            (0x11, a)
        }
        _ => panic!("one family"),
    };
    addresses.extend_from_slice(&source.port().to_be_bytes());
    addresses.extend_from_slice(&destination.port().to_be_bytes());
    out.push(family);
    out.extend_from_slice(&u16::try_from(addresses.len()).expect("len").to_be_bytes());
    out.extend_from_slice(&addresses);
    out
}

#[tokio::test]
async fn with_proxy_protocol_the_header_names_the_client_and_its_absence_closes() {
    let mut up = Upstream::start().await;
    let gate = Gate::start(
        &limited_route(&up, "  limits: {maxConnectionsPerClient: 1}\n"),
        &["--proxy-protocol"],
    )
    .await;
    let v1 = b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 443\r\n";
    let (status, _, _held) = handshake_from("127.0.0.1", gate.proxy, v1, "").await;
    assert_eq!(status, 101);
    let seen = up.seen.recv().await.expect("handshake");
    assert_eq!(seen.headers["x-real-ip"], "203.0.113.9");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9");

    let v2 = proxy_v2(
        "[2001:db8::7]:51000".parse().expect("addr"),
        "[2001:db8::1]:443".parse().expect("addr"),
    );
    let (status, _, _v6) = handshake_from("127.0.0.1", gate.proxy, &v2, "").await;
    assert_eq!(status, 101);
    let seen = up.seen.recv().await.expect("handshake");
    assert_eq!(seen.headers["x-real-ip"], "2001:db8::7");

    // Limits count the client the header names, not the load balancer's address.
    let (again, _, _) = handshake_from("127.0.0.1", gate.proxy, v1, "").await;
    assert_eq!(again, 429);

    // No header: closed without an answer, and nothing reaches the upstream.
    let (status, _, mut bare) = handshake_from("127.0.0.1", gate.proxy, b"", "").await;
    assert_eq!(status, 0, "no HTTP answer without a PROXY header");
    assert!(closed_by_peer(&mut bare).await.is_empty());
    assert_eq!(up.handshakes(), 0);
}

#[tokio::test]
async fn forwarding_headers_are_believed_and_extended_only_from_trusted_proxies() {
    let mut up = Upstream::start().await;
    let gate = Gate::start(
        &limited_route(&up, ""),
        &["--trusted-proxies", "127.0.0.2/32"],
    )
    .await;
    let forwarded = "X-Forwarded-For: 6.6.6.6, 203.0.113.9\r\nForwarded: for=6.6.6.6\r\n";

    let (status, _, _untrusted) = handshake_from("127.0.0.1", gate.proxy, b"", forwarded).await;
    assert_eq!(status, 101);
    let seen = up.seen.recv().await.expect("handshake");
    assert_eq!(
        seen.headers["x-real-ip"], "127.0.0.1",
        "an untrusted peer is the client"
    );
    assert_eq!(
        seen.headers["x-forwarded-for"], "127.0.0.1",
        "an untrusted peer's list is replaced"
    );
    let ours = seen.headers.get_all("forwarded").iter().collect::<Vec<_>>();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert!(
        ours[0]
            .to_str()
            .expect("ascii")
            .starts_with("for=127.0.0.1;proto=http;host="),
        "{ours:?}"
    );

    let (status, _, _trusted) = handshake_from("127.0.0.2", gate.proxy, b"", forwarded).await;
    assert_eq!(status, 101);
    let seen = up.seen.recv().await.expect("handshake");
    assert_eq!(
        seen.headers["x-real-ip"], "203.0.113.9",
        "the nearest hop a trusted proxy names; the spoofed one to its left is not believed"
    );
    assert_eq!(
        seen.headers["x-forwarded-for"],
        "6.6.6.6, 203.0.113.9, 127.0.0.2"
    );
    let theirs = seen.headers["forwarded"].to_str().expect("ascii");
    assert!(
        theirs.starts_with("for=6.6.6.6, for=127.0.0.2;proto=http"),
        "{theirs}"
    );
}
