//! Frames and extensions through the `wsgate standalone` binary, between a raw-socket client
//! and a raw-socket upstream, so every byte each side receives is seen: frames RFC 6455
//! forbids end with Close 1002 and never reach the other side, and `permessage-deflate` is
//! negotiated only on routes without `maxMessageBytes`.

mod support;

use std::net::SocketAddr;

use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use wsgate::proxy::frame::encode;

const HOST: &str = "chat.example.test";
const APP: &str = "https://app.example.test";
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// How a raw upstream answers the extension offers in a handshake.
#[derive(Clone, Copy)]
enum Accepts {
    /// `permessage-deflate` when it was offered, as a real server does.
    Offered,
    /// `permessage-deflate` whatever was offered.
    Always,
}

/// An upstream that takes one connection, answers its handshake with 101 and hands over
/// the request head (lowercase) and the socket.
async fn raw_upstream(accepts: Accepts) -> (String, oneshot::Receiver<(String, TcpStream)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("{{url: \"ws://{}\"}}", listener.local_addr().expect("addr"));
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let raw = read_head(&mut stream).await;
        let head = raw.to_lowercase();
        // The key is case-sensitive: found in the lowercase head, taken from the raw one.
        let key = head
            .lines()
            .zip(raw.lines())
            .find_map(|(l, r)| l.starts_with("sec-websocket-key:").then(|| r[18..].trim()))
            .expect("a key");
        let deflate = match accepts {
            Accepts::Offered => head.contains("permessage-deflate"),
            Accepts::Always => true,
        };
        let extension = if deflate {
            "sec-websocket-extensions: permessage-deflate\r\n"
        } else {
            ""
        };
        let reply = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n{extension}\r\n",
            derive_accept_key(key.as_bytes())
        );
        stream.write_all(reply.as_bytes()).await.expect("101");
        let _ = tx.send((head, stream));
    });
    (url, rx)
}

/// Reads an HTTP head byte by byte, so no frame after it is consumed.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.expect("head byte"));
    }
    String::from_utf8(head).expect("utf-8 head")
}

/// Opens a WebSocket to `path` with the allowed origin and these extra header lines;
/// returns the socket and the gateway's response head (lowercase).
async fn open(gate: SocketAddr, path: &str, extra: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(gate).await.expect("connect");
    let request = upgrade_request(HOST, path, &format!("Origin: {APP}\r\n{extra}"));
    stream.write_all(request.as_bytes()).await.expect("write");
    let head = tokio::time::timeout(PATIENCE, read_head(&mut stream))
        .await
        .expect("response within patience");
    (stream, head.to_lowercase())
}

/// Reads one frame (payload up to 64 KiB); its first byte and unmasked payload.
async fn read_frame<R: AsyncRead + Unpin>(stream: &mut R) -> (u8, Vec<u8>) {
    let read = async {
        let first = stream.read_u8().await.expect("frame");
        let second = stream.read_u8().await.expect("frame");
        let len = match second & 0x7f {
            126 => usize::from(stream.read_u16().await.expect("length")),
            127 => panic!("unexpectedly long frame"),
            n => usize::from(n),
        };
        let mut key = [0u8; 4];
        if second & 0x80 != 0 {
            stream.read_exact(&mut key).await.expect("key");
        }
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.expect("payload");
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
        (first, payload)
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("a frame within patience")
}

/// Reads one frame, which must be a Close; its code.
async fn read_close<R: AsyncRead + Unpin>(stream: &mut R) -> u16 {
    let (first, payload) = read_frame(stream).await;
    assert_eq!(first, 0x88, "expected a Close, got {first:#x} {payload:?}");
    u16::from_be_bytes([payload[0], payload[1]])
}

/// The gateway on one route to `upstream` (and `limits`, if any) under `/ws`.
async fn gate_to(upstream: &str, limits: Option<&str>) -> Gate {
    let mut yaml = route(
        "chat",
        HOST,
        "/ws",
        "{allow: [\"https://app.example.test\"]}",
        upstream,
    );
    if let Some(limits) = limits {
        yaml += &format!("  limits: {limits}\n");
    }
    Gate::start(&[("chat.yaml", yaml)], &[]).await
}

/// A client frame that breaks RFC 6455, sent after a good one: the upstream gets the good
/// frame and then Close 1001, the client Close 1002.
async fn client_sends_forbidden(bad: Vec<u8>) -> Gate {
    let (url, upstream) = raw_upstream(Accepts::Offered).await;
    let gate = gate_to(&url, None).await;
    let (mut client, head) = open(gate.proxy, "/ws", "").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let (_, mut up) = upstream.await.expect("upstream connection");
    client
        .write_all(&encode(0x81, b"hi", Some(KEY)))
        .await
        .expect("write");
    assert_eq!(read_frame(&mut up).await, (0x81, b"hi".to_vec()));
    let (mut from_gate, mut to_gate) = client.split();
    let (written, code) = tokio::join!(to_gate.write_all(&bad), read_close(&mut from_gate));
    written.expect("write");
    assert_eq!(code, 1002);
    // The next thing the upstream receives is the gateway's Close, not the frame.
    assert_eq!(read_close(&mut up).await, 1001);
    client
        .write_all(&encode(0x88, &1002u16.to_be_bytes(), Some(KEY)))
        .await
        .expect("close reply");
    up.write_all(&encode(0x88, &1001u16.to_be_bytes(), None))
        .await
        .expect("close reply");
    let ended = r#"wsgate_connections_ended_total{ended_by="client_protocol_error"}"#;
    gate.wait_for(
        || async { gate.metric(ended).await == Some(1.0) },
        "the relay to count a client protocol error",
    )
    .await;
    gate
}

#[tokio::test]
async fn a_one_mib_ping_from_the_client_never_reaches_the_upstream_and_gets_1002() {
    client_sends_forbidden(encode(0x89, &vec![0x42; 1 << 20], Some(KEY))).await;
}

#[tokio::test]
async fn a_reserved_opcode_from_the_client_never_reaches_the_upstream_and_gets_1002() {
    let gate = client_sends_forbidden(encode(0x83, b"reserved", Some(KEY))).await;
    let closes = r#"wsgate_closes_total{code="1002",initiator="gateway"}"#;
    assert_eq!(gate.metric(closes).await, Some(1.0));
}

#[tokio::test]
async fn a_route_with_max_message_bytes_offers_the_upstream_no_compression() {
    let (url, upstream) = raw_upstream(Accepts::Offered).await;
    let gate = gate_to(&url, Some("{maxMessageBytes: 1024}")).await;
    let offer =
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-custom\r\n";
    let (_client, head) = open(gate.proxy, "/ws", offer).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
    let (seen, _up) = upstream.await.expect("upstream connection");
    assert!(!seen.contains("sec-websocket-extensions"), "{seen}");
}

#[tokio::test]
async fn a_route_without_a_limit_negotiates_permessage_deflate_and_passes_compressed_frames() {
    let (url, upstream) = raw_upstream(Accepts::Offered).await;
    let gate = gate_to(&url, None).await;
    let offer =
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-custom\r\n";
    let (mut client, head) = open(gate.proxy, "/ws", offer).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-extensions: permessage-deflate\r\n"),
        "{head}"
    );
    let (seen, mut up) = upstream.await.expect("upstream connection");
    // Offers the gateway cannot check frames for are dropped.
    assert!(
        seen.contains("sec-websocket-extensions: permessage-deflate; client_max_window_bits\r\n"),
        "{seen}"
    );
    // RSV1 marks a compressed message (RFC 7692 §6); the payloads are opaque to the relay.
    let compressed = b"\xf2\x48\xcd\xc9\xc9\x07\x00";
    client
        .write_all(&encode(0xC1, compressed, Some(KEY)))
        .await
        .expect("write");
    assert_eq!(read_frame(&mut up).await, (0xC1, compressed.to_vec()));
    up.write_all(&encode(0xC1, compressed, None))
        .await
        .expect("write");
    assert_eq!(read_frame(&mut client).await, (0xC1, compressed.to_vec()));
}

#[tokio::test]
async fn an_upstream_accepting_an_extension_it_was_not_offered_gets_the_client_502() {
    let (url, upstream) = raw_upstream(Accepts::Always).await;
    let gate = gate_to(&url, Some("{maxMessageBytes: 1024}")).await;
    let offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
    let (_client, head) = open(gate.proxy, "/ws", offer).await;
    assert!(head.starts_with("http/1.1 502"), "{head}");
    drop(upstream);
    let failed = r#"wsgate_handshakes_total{route="default/chat",result="failed",reason="upstream_invalid"}"#;
    gate.wait_for(
        || async { gate.metric(failed).await == Some(1.0) },
        "the handshake to count as upstream_invalid",
    )
    .await;
}
