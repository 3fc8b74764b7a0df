//! WebSockets over HTTP/2 (RFC 8441) on the TLS listener, through real sockets: extended
//! CONNECT streams decided as HTTP/1.1 upgrades are, several on one connection, relayed to
//! an HTTP/1.1 upstream; each stream revoked, limited and drained on its own; and the h2
//! attacks a gateway must survive, sent as raw frames.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper::ext::Protocol;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

const HOST: &str = "chat.example.test";
const APP: &str = "https://app.example.test";

/// A socket carried by one stream of an HTTP/2 connection.
type H2Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A gateway serving `routes` (YAML, each given `tls` for `hosts`) on its TLS listener.
struct Tls {
    ca: TestCa,
    gate: Gate,
    _secrets: tempfile::TempDir,
}

impl Tls {
    /// A gateway whose one route, `chat`, serves every path of `HOST` from `upstream`, with
    /// `extra` spec lines, started with `args`.
    async fn chat(upstream: &str, extra: &str, args: &[&str]) -> Tls {
        Tls::start(&[HOST], &[chat_route("chat", "/", upstream, extra)], args).await
    }

    async fn start(hosts: &[&str], routes: &[String], extra: &[&str]) -> Tls {
        let ca = TestCa::new();
        let secrets = tempfile::tempdir().expect("tempdir");
        let (cert, key) = ca.issue(hosts);
        write_secret(
            secrets.path(),
            "chat-tls",
            &[("tls.crt", &cert), ("tls.key", &key)],
        );
        let files: Vec<(String, String)> = routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    format!("r{i}.yaml"),
                    format!("{r}  tls: {{secretName: chat-tls}}\n"),
                )
            })
            .collect();
        let files: Vec<(&str, String)> =
            files.iter().map(|(n, r)| (n.as_str(), r.clone())).collect();
        let mut args = vec!["--secret-dir", secrets.path().to_str().expect("utf-8")];
        args.extend_from_slice(extra);
        let gate = Gate::start(&files, &args).await;
        Tls {
            ca,
            gate,
            _secrets: secrets,
        }
    }

    /// A TLS connection to the TLS listener for `host`, offering `alpn`.
    async fn tls(
        &self,
        host: &str,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut config = (*self.ca.client_config()).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(self.gate.tls)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).expect("name");
        connector.connect(name, tcp).await.expect("TLS")
    }

    /// An HTTP/2 connection for `host`, and the task driving it (done once the connection
    /// has ended).
    async fn h2(&self, host: &str) -> (SendRequest<Empty<Bytes>>, tokio::task::JoinHandle<()>) {
        let tls = self.tls(host, &[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("HTTP/2 handshake");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        (sender, driver)
    }
}

/// Opens a WebSocket stream to `path` on `HOST` from `origin`: the socket, or the status and
/// body it got instead.
async fn open(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    origin: &str,
) -> Result<H2Socket, (StatusCode, String)> {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://{HOST}{path}"))
        .header("sec-websocket-version", "13")
        .header("origin", origin)
        .body(Empty::new())
        .expect("request");
    request
        .extensions_mut()
        .insert(Protocol::from_static("websocket"));
    sender.ready().await.expect("ready");
    let response = sender.send_request(request).await.expect("response");
    if response.status() != StatusCode::OK {
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        return Err((status, String::from_utf8_lossy(&body).into_owned()));
    }
    let upgraded = hyper::upgrade::on(response).await.expect("upgraded");
    Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await)
}

/// Sends `text` and expects it back.
async fn echoes(ws: &mut H2Socket, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    let reply = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("reply in time")
        .expect("reply")
        .expect("ok");
    assert_eq!(reply, Message::text(text));
}

/// Reads until the socket's Close frame; its code.
async fn closed_with(ws: &mut H2Socket) -> u16 {
    let wait = async {
        while let Some(msg) = ws.next().await {
            match msg.expect("a frame, not an error") {
                Message::Close(Some(frame)) => return u16::from(frame.code),
                Message::Close(None) => return 1005,
                _ => continue,
            }
        }
        panic!("stream ended without a Close frame");
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("Close in time")
}

fn chat_route(name: &str, path: &str, upstream: &str, extra: &str) -> String {
    route(
        name,
        HOST,
        path,
        &format!("{{allow: [\"{APP}\"]}}"),
        upstream,
    ) + extra
}

#[tokio::test]
async fn websockets_share_one_http2_connection_reach_the_upstream_with_forwarding_headers_and_refusals_get_403_and_404()
 {
    let mut up = Upstream::start().await;
    let tls = Tls::start(&[HOST], &[chat_route("chat", "/ws", &up.url(), "")], &[]).await;
    let (mut sender, _driver) = tls.h2(HOST).await;
    let mut sockets = Vec::new();
    for i in 0..3 {
        let mut ws = open(&mut sender, "/ws", APP).await.expect("allowed");
        echoes(&mut ws, &format!("hi {i}")).await;
        sockets.push(ws);
    }
    // The upstream got HTTP/1.1 handshakes with the stream's authority as Host, and the
    // forwarding headers of a TLS client.
    let seen = up.seen.recv().await.expect("handshake");
    let h = &seen.headers;
    assert_eq!(h["host"], HOST);
    assert_eq!(h["origin"], APP);
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(seen.path, "/ws");
    assert_eq!(up.handshakes(), 2, "and two more");
    // A path no route serves gets 404 on its stream, and the connection serves on.
    let refused = open(&mut sender, "/elsewhere", APP).await.err();
    assert_eq!(
        refused.map(|(status, _)| status),
        Some(StatusCode::NOT_FOUND)
    );
    assert_eq!(
        open(&mut sender, "/ws", "https://evil.example").await.err(),
        Some((StatusCode::FORBIDDEN, "origin not allowed\n".into()))
    );
    assert_eq!(
        up.handshakes(),
        0,
        "the refused stream never reached the upstream"
    );
    let gate = &tls.gate;
    assert_eq!(
        gate.metric(r#"wsgate_active_connections{route="default/chat"}"#)
            .await,
        Some(3.0)
    );
    assert_eq!(
        gate.metric("wsgate_http2_connections_total").await,
        Some(1.0)
    );
    gate.wait_for(
        || async { gate.log().matches(r#"http="2""#).count() == 5 },
        "five handshake lines marked http=\"2\"",
    )
    .await;
}

#[tokio::test]
async fn an_upstream_refusal_reaches_the_stream_with_its_status_and_body() {
    let up = Upstream::start().await;
    let tls = Tls::chat(&up.url(), "", &[]).await;
    let (mut sender, _driver) = tls.h2(HOST).await;
    assert_eq!(
        open(&mut sender, "/refuse", APP).await.err(),
        Some((StatusCode::UNAUTHORIZED, "go away".into()))
    );
    // The connection serves on.
    let mut ws = open(&mut sender, "/ws", APP).await.expect("allowed");
    echoes(&mut ws, "after").await;
}

#[tokio::test]
async fn a_hostname_whose_route_refuses_http2_sockets_is_not_offered_them_and_takes_them_over_http1()
 {
    const LEGACY: &str = "legacy.example.test";
    let up = Upstream::start().await;
    let legacy = route(
        "legacy",
        LEGACY,
        "/",
        &format!("{{allow: [\"{APP}\"]}}"),
        &up.url(),
    ) + "  webSocketsOverHttp2: Refuse\n";
    let tls = Tls::start(
        &[HOST, LEGACY],
        &[chat_route("chat", "/", &up.url(), ""), legacy],
        &[],
    )
    .await;
    let chat = RawH2::connect(&tls, HOST).await;
    assert_eq!(chat.setting(ENABLE_CONNECT_PROTOCOL), Some(1));
    let refusing = RawH2::connect(&tls, LEGACY).await;
    assert_eq!(
        refusing.setting(ENABLE_CONNECT_PROTOCOL),
        None,
        "no SETTINGS_ENABLE_CONNECT_PROTOCOL for a hostname that refuses"
    );
    // A browser then opens the socket on an HTTP/1.1 connection of its own.
    let stream = tls.tls(LEGACY, &[b"http/1.1"]).await;
    let mut ws = ws_over(stream, LEGACY, "/ws", APP).await.expect("upgrade");
    ws.send(Message::text("h1")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("reply").expect("ok"),
        Message::text("h1")
    );
}

#[tokio::test]
async fn revoking_one_route_closes_its_streams_with_1008_and_leaves_the_other_streams_of_the_connection_open()
 {
    let up = Upstream::start().await;
    let tls = Tls::start(
        &[HOST],
        &[
            chat_route("a", "/a", &up.url(), ""),
            chat_route("b", "/b", &up.url(), ""),
        ],
        &[],
    )
    .await;
    let (mut sender, _driver) = tls.h2(HOST).await;
    let mut a = open(&mut sender, "/a", APP).await.expect("a");
    let mut b = open(&mut sender, "/b", APP).await.expect("b");
    echoes(&mut a, "a").await;
    let revoked = route(
        "a",
        HOST,
        "/a",
        "{allow: [\"https://other.example.test\"]}",
        &up.url(),
    ) + "  tls: {secretName: chat-tls}\n";
    tls.gate.write_and_wait("r0.yaml", &revoked).await;
    assert_eq!(closed_with(&mut a).await, 1008);
    echoes(&mut b, "still here").await;
    let mut again = open(&mut sender, "/b", APP).await.expect("a new stream");
    echoes(&mut again, "new").await;
}

#[tokio::test]
async fn a_message_over_the_route_limit_closes_only_its_stream_with_1009() {
    let up = Upstream::start().await;
    let tls = Tls::chat(&up.url(), "  limits: {maxMessageBytes: 1024}\n", &[]).await;
    let (mut sender, _driver) = tls.h2(HOST).await;
    let mut big = open(&mut sender, "/ws", APP).await.expect("big");
    let mut small = open(&mut sender, "/ws", APP).await.expect("small");
    big.send(Message::binary(vec![7u8; 2048]))
        .await
        .expect("send");
    assert_eq!(closed_with(&mut big).await, 1009);
    echoes(&mut small, "fits").await;
}

#[tokio::test]
async fn sigterm_closes_every_stream_with_1012_and_ends_the_connection_with_goaway() {
    let up = Upstream::start().await;
    let mut tls = Tls::chat(
        &up.url(),
        "",
        &[
            "--shutdown-delay",
            "0",
            "--shutdown-grace",
            "30",
            "--handshake-timeout",
            "2",
        ],
    )
    .await;
    let (mut sender, driver) = tls.h2(HOST).await;
    let mut one = open(&mut sender, "/ws", APP).await.expect("one");
    let mut two = open(&mut sender, "/ws", APP).await.expect("two");
    echoes(&mut one, "one").await;
    // A connection seen frame by frame, kept from going idle by a socket of its own.
    let mut raw = RawH2::connect(&tls, HOST).await;
    let block = frames::websocket(HOST, APP);
    raw.send(&frames::frame(
        frames::HEADERS,
        frames::END_HEADERS,
        1,
        &block,
    ))
    .await
    .expect("a socket");
    tls.gate.terminate();
    assert_eq!(closed_with(&mut one).await, 1012);
    assert_eq!(closed_with(&mut two).await, 1012);
    // Both Closes answered, the streams end, and the connection with them.
    drop((one, two));
    tokio::time::timeout(PATIENCE, driver)
        .await
        .expect("the connection ends")
        .expect("driver");
    assert_eq!(raw.until_closed().await, Some(0), "GOAWAY with NO_ERROR");
    assert_eq!(tls.gate.wait_exit().await, Some(0));
}

/// An upstream that accepts one WebSocket and sends 1 MiB messages until its writes stop
/// going through; the bytes it got out so far.
async fn flooding_upstream() -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("{{url: \"ws://{}\"}}", listener.local_addr().expect("addr"));
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut ws = tokio_tungstenite::accept_async(tcp)
            .await
            .expect("handshake");
        let message = Bytes::from(vec![1u8; 1 << 20]);
        while ws.send(Message::binary(message.clone())).await.is_ok() {
            counter.fetch_add(1 << 20, Ordering::Relaxed);
        }
    });
    (url, sent)
}

#[tokio::test]
async fn a_stream_whose_client_does_not_read_holds_its_upstream_back() {
    let (url, sent) = flooding_upstream().await;
    let up = Upstream::start().await;
    let tls = Tls::start(
        &[HOST],
        &[
            chat_route("flood", "/", &url, ""),
            chat_route("echo", "/echo", &up.url(), ""),
        ],
        &[],
    )
    .await;
    let (mut sender, _driver) = tls.h2(HOST).await;
    let _ws = open(&mut sender, "/ws", APP).await.expect("socket");
    // The client never reads: once the stream's window, the gateway's buffers and the
    // sockets' are full, the upstream's writes stop. Waits until nothing moves for a second.
    let mut last = u64::MAX;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sent.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream kept writing: {now} bytes"
        );
        last = now;
    }
    assert!(
        last < 64 << 20,
        "the gateway held back a client that does not read after {last} bytes"
    );
    // Another stream on the same connection is served meanwhile.
    let mut other = open(&mut sender, "/echo", APP)
        .await
        .expect("a second stream");
    echoes(&mut other, "beside").await;
}

/// Raw HTTP/2 frames, for the attacks a client library will not send.
mod frames {
    pub(crate) const HEADERS: u8 = 0x1;
    pub(crate) const RST_STREAM: u8 = 0x3;
    pub(crate) const SETTINGS: u8 = 0x4;
    pub(crate) const GOAWAY: u8 = 0x7;
    pub(crate) const CONTINUATION: u8 = 0x9;
    pub(crate) const END_HEADERS: u8 = 0x4;
    pub(crate) const ACK: u8 = 0x1;
    /// RST_STREAM and GOAWAY error codes.
    pub(crate) const CANCEL: u32 = 0x8;
    pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;
    pub(crate) const REFUSED_STREAM: u32 = 0x7;

    /// One frame: its 9-byte header and payload.
    pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = Vec::with_capacity(9 + payload.len());
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
    fn integer(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
        let max = (1usize << n) - 1;
        if value < max {
            out.push(first | value as u8);
            return;
        }
        out.push(first | max as u8);
        value -= max;
        while value >= 128 {
            out.push((value % 128 + 128) as u8);
            value /= 128;
        }
        out.push(value as u8);
    }

    /// A header block of literal fields without indexing (RFC 7541 §6.2.2), no Huffman.
    pub(crate) fn block(headers: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in headers {
            out.push(0x00);
            integer(&mut out, 0, 7, name.len());
            out.extend_from_slice(name.as_bytes());
            integer(&mut out, 0, 7, value.len());
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    /// The header block of an extended CONNECT for a WebSocket on `authority`'s `/ws`.
    pub(crate) fn websocket(authority: &str, origin: &str) -> Vec<u8> {
        block(&[
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":path", "/ws"),
            (":authority", authority),
            ("sec-websocket-version", "13"),
            ("origin", origin),
        ])
    }
}

/// A client connection that writes raw frames and records the frames the gateway sends.
struct RawH2 {
    write: tokio::io::WriteHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    frames: tokio::sync::mpsc::UnboundedReceiver<(u8, u32, Vec<u8>)>,
    /// The gateway's first SETTINGS: (identifier, value) pairs.
    settings: Vec<(u16, u32)>,
}

/// The SETTINGS identifier by which a server offers extended CONNECT (RFC 8441 §3).
const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;

impl RawH2 {
    /// Connects for `host`, sends the preface and empty SETTINGS, and reads and
    /// acknowledges the gateway's.
    async fn connect(tls: &Tls, host: &str) -> RawH2 {
        let stream = tls.tls(host, &[b"h2"]).await;
        let (mut read, mut write) = tokio::io::split(stream);
        write
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("preface");
        write
            .write_all(&frames::frame(frames::SETTINGS, 0, 0, &[]))
            .await
            .expect("settings");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut head = [0u8; 9];
            while read.read_exact(&mut head).await.is_ok() {
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & !(1 << 31);
                let mut payload = vec![0u8; len];
                if read.read_exact(&mut payload).await.is_err() {
                    break;
                }
                if tx.send((head[3], stream, payload)).is_err() {
                    break;
                }
            }
        });
        let mut raw = RawH2 {
            write,
            frames: rx,
            settings: Vec::new(),
        };
        let (kind, _, payload) = tokio::time::timeout(PATIENCE, raw.frames.recv())
            .await
            .expect("SETTINGS in time")
            .expect("SETTINGS");
        assert_eq!(kind, frames::SETTINGS, "a server starts with SETTINGS");
        raw.settings = payload
            .chunks(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect();
        raw.send(&frames::frame(frames::SETTINGS, frames::ACK, 0, &[]))
            .await
            .expect("settings ack");
        raw
    }

    /// The value the gateway gave `id` in its SETTINGS, if it sent one.
    fn setting(&self, id: u16) -> Option<u32> {
        self.settings
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| *v)
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write.write_all(bytes).await
    }

    /// Reads until the gateway closes the connection, which it must do within
    /// [`PATIENCE`]; the GOAWAY's error code, if one came.
    async fn until_closed(&mut self) -> Option<u32> {
        let mut goaway = None;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while let Some((kind, _, payload)) = tokio::time::timeout_at(deadline, self.frames.recv())
            .await
            .expect("the gateway closes the connection")
        {
            if kind == frames::GOAWAY {
                goaway = Some(u32::from_be_bytes(payload[4..8].try_into().expect("code")));
            }
        }
        goaway
    }
}

/// The gateway still serves a new client: a socket over HTTP/2 on a new connection echoes.
async fn still_serves(tls: &Tls) {
    let (mut sender, _driver) = tls.h2(HOST).await;
    let mut ws = open(&mut sender, "/ws", APP)
        .await
        .expect("a new client is served");
    echoes(&mut ws, "still up").await;
}

#[tokio::test]
async fn rapid_reset_ends_the_attacking_connection_and_other_clients_are_served() {
    let mut up = Upstream::start().await;
    let tls = Tls::chat(&up.url(), "", &[]).await;
    let mut raw = RawH2::connect(&tls, HOST).await;
    // CVE-2023-44487: open a stream and cancel it at once, over and over; each costs the
    // client two frames and the server a decision (and an upstream connection) if it lets it.
    let block = frames::websocket(HOST, APP);
    const STREAMS: u32 = 20_000;
    let mut sent = 0;
    for batch in 0..STREAMS / 100 {
        let mut bytes = Vec::new();
        for i in 0..100 {
            let id = 2 * (batch * 100 + i) + 1;
            bytes.extend(frames::frame(
                frames::HEADERS,
                frames::END_HEADERS,
                id,
                &block,
            ));
            bytes.extend(frames::frame(
                frames::RST_STREAM,
                0,
                id,
                &frames::CANCEL.to_be_bytes(),
            ));
        }
        if raw.send(&bytes).await.is_err() {
            break;
        }
        sent += 100;
    }
    let goaway = raw.until_closed().await;
    assert_eq!(
        goaway,
        Some(frames::ENHANCE_YOUR_CALM),
        "GOAWAY ENHANCE_YOUR_CALM ({sent} streams sent)"
    );
    let reached = up.handshakes();
    assert!(
        reached < 1_000,
        "{reached} of the {sent} cancelled streams reached the upstream"
    );
    still_serves(&tls).await;
}

#[tokio::test]
async fn a_continuation_flood_ends_the_attacking_connection_and_other_clients_are_served() {
    let up = Upstream::start().await;
    let tls = Tls::chat(&up.url(), "", &[]).await;
    let mut raw = RawH2::connect(&tls, HOST).await;
    // A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames
    // (CVE-2024-27316 and kin). Up to 64 MiB, unless the gateway stops it first.
    let start = frames::websocket(HOST, APP);
    raw.send(&frames::frame(frames::HEADERS, 0, 1, &start))
        .await
        .expect("headers");
    let filler = frames::block(&[("x-filler", &"a".repeat(16_000))]);
    let mut sent = 0usize;
    while sent < 64 << 20 {
        if raw
            .send(&frames::frame(frames::CONTINUATION, 0, 1, &filler))
            .await
            .is_err()
        {
            break;
        }
        sent += filler.len();
    }
    let goaway = raw.until_closed().await;
    assert_eq!(
        goaway,
        Some(frames::ENHANCE_YOUR_CALM),
        "GOAWAY ENHANCE_YOUR_CALM after {sent} bytes"
    );
    assert!(
        sent < 64 << 20,
        "the gateway read a 64 MiB header block without closing the connection"
    );
    still_serves(&tls).await;
}

#[tokio::test]
async fn a_header_list_over_16_kib_is_answered_without_ending_the_connection() {
    let mut up = Upstream::start().await;
    let tls = Tls::chat(&up.url(), "", &[]).await;
    let mut raw = RawH2::connect(&tls, HOST).await;
    let mut block = frames::websocket(HOST, APP);
    block.extend(frames::block(&[("x-big", &"b".repeat(60_000))]));
    // In frames of the default 16 KiB maximum.
    let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let (kind, flags) = match i {
            0 => (frames::HEADERS, if last { frames::END_HEADERS } else { 0 }),
            _ => (
                frames::CONTINUATION,
                if last { frames::END_HEADERS } else { 0 },
            ),
        };
        raw.send(&frames::frame(kind, flags, 1, chunk))
            .await
            .expect("send");
    }
    // The stream is answered; the connection itself stays open.
    let answered = tokio::time::timeout(PATIENCE, async {
        while let Some((kind, stream, _)) = raw.frames.recv().await {
            if stream == 1 && (kind == frames::HEADERS || kind == frames::RST_STREAM) {
                return kind;
            }
            assert_ne!(kind, frames::GOAWAY, "the connection was ended");
        }
        panic!("connection closed");
    })
    .await
    .expect("stream 1 answered");
    // h2 answers such a stream itself, with 431, and resets nothing else.
    assert_eq!(answered, frames::HEADERS, "answered, not reset");
    // Had it been forwarded, the answer would have waited for the upstream's.
    assert_eq!(up.handshakes(), 0, "the upstream saw nothing");
    still_serves(&tls).await;
}

#[tokio::test]
async fn streams_beyond_128_at_once_are_refused_and_the_first_128_are_served() {
    let mut up = Upstream::start().await;
    let tls = Tls::chat(&up.url(), "", &[]).await;
    let mut raw = RawH2::connect(&tls, HOST).await;
    let block = frames::websocket(HOST, APP);
    let mut bytes = Vec::new();
    for i in 0..129u32 {
        bytes.extend(frames::frame(
            frames::HEADERS,
            frames::END_HEADERS,
            2 * i + 1,
            &block,
        ));
    }
    raw.send(&bytes).await.expect("send");
    let mut answered = 0;
    let mut refused = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while answered + refused.len() < 129 {
            let (kind, stream, payload) = raw.frames.recv().await.expect("frame");
            match kind {
                frames::HEADERS => answered += 1,
                frames::RST_STREAM => refused.push((
                    stream,
                    u32::from_be_bytes(payload[..4].try_into().expect("code")),
                )),
                _ => {}
            }
        }
    })
    .await
    .expect("every stream answered or refused");
    assert_eq!(answered, 128);
    assert_eq!(refused, vec![(257, frames::REFUSED_STREAM)]);
    assert_eq!(up.handshakes(), 128);
    still_serves(&tls).await;
}

#[tokio::test]
async fn a_connection_without_streams_gets_goaway_after_the_handshake_timeout_and_one_with_a_socket_stays()
 {
    let up = Upstream::start().await;
    let tls = Tls::chat(&up.url(), "", &["--handshake-timeout", "1"]).await;
    let (mut sender, _driver) = tls.h2(HOST).await;
    let mut ws = open(&mut sender, "/ws", APP).await.expect("socket");
    let mut idle = RawH2::connect(&tls, HOST).await;
    let goaway = idle.until_closed().await;
    assert_eq!(goaway, Some(0), "GOAWAY with NO_ERROR");
    // The idle connection is gone; the one carrying a socket, opened before it, is not.
    echoes(&mut ws, "still open").await;
    let mut second = open(&mut sender, "/ws", APP).await.expect("a new stream");
    echoes(&mut second, "and another").await;
}

/// A plain HTTP/1.1 upstream answering every request with `METHOD PATH`.
async fn page_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("{{url: \"ws://{}\"}}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service =
                hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
                    let text = format!("{} {}", request.method(), request.uri().path());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(Bytes::from(text)),
                    ))
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    url
}

#[tokio::test]
async fn a_page_and_its_socket_share_one_http2_connection_on_a_route_with_http() {
    let up = Upstream::start().await;
    let pages = page_upstream().await;
    let tls = Tls::start(
        &[HOST],
        &[
            chat_route("page", "/", &pages, "  http: {}\n"),
            chat_route("chat", "/ws", &up.url(), ""),
        ],
        &[],
    )
    .await;
    let (mut sender, _driver) = tls.h2(HOST).await;
    let request = Request::get(format!("https://{HOST}/index.html"))
        .header("origin", APP)
        .body(Empty::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["access-control-allow-origin"], APP);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"GET /index.html");
    let mut ws = open(&mut sender, "/ws", APP).await.expect("socket");
    echoes(&mut ws, "beside the page").await;
    let refused = Request::get(format!("https://{HOST}/index.html"))
        .header("origin", "https://evil.example")
        .body(Empty::new())
        .expect("request");
    let response = sender.send_request(refused).await.expect("response");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        tls.gate.metric("wsgate_http2_connections_total").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_stream_on_a_connection_opened_before_its_route_turned_to_refuse_http2_gets_421() {
    let up = Upstream::start().await;
    let tls = Tls::chat(&up.url(), "", &[]).await;
    let (mut sender, _driver) = tls.h2(HOST).await;
    let mut before = open(&mut sender, "/ws", APP).await.expect("socket");
    let refusing = chat_route(
        "chat",
        "/",
        &up.url(),
        "  webSocketsOverHttp2: Refuse\n  tls: {secretName: chat-tls}\n",
    );
    tls.gate.write_and_wait("r0.yaml", &refusing).await;
    assert_eq!(
        open(&mut sender, "/ws", APP).await.err(),
        Some((
            StatusCode::MISDIRECTED_REQUEST,
            "this route takes WebSockets over HTTP/1.1 only\n".into()
        ))
    );
    // The socket it already carries is not revoked: the setting is about new ones.
    echoes(&mut before, "kept").await;
    let fresh = RawH2::connect(&tls, HOST).await;
    assert_eq!(fresh.setting(ENABLE_CONNECT_PROTOCOL), None);
}

#[tokio::test]
async fn each_socket_of_an_http2_connection_counts_under_max_connections() {
    let up = Upstream::start().await;
    let tls = Tls::chat(&up.url(), "", &["--max-connections", "3"]).await;
    let (mut sender, _driver) = tls.h2(HOST).await;
    // The connection itself, and two sockets on it, make three.
    let _one = open(&mut sender, "/ws", APP).await.expect("one");
    let _two = open(&mut sender, "/ws", APP).await.expect("two");
    assert_eq!(
        open(&mut sender, "/ws", APP)
            .await
            .err()
            .map(|(status, _)| status),
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
}

#[tokio::test]
async fn a_stream_whose_host_header_differs_from_its_authority_is_refused_before_the_upstream() {
    let mut up = Upstream::start().await;
    let tls = Tls::chat(&up.url(), "", &[]).await;
    let mut raw = RawH2::connect(&tls, HOST).await;
    let mut block = frames::websocket(HOST, APP);
    block.extend(frames::block(&[("host", "admin.example.test")]));
    raw.send(&frames::frame(
        frames::HEADERS,
        frames::END_HEADERS,
        1,
        &block,
    ))
    .await
    .expect("send");
    let (kind, stream, payload) = tokio::time::timeout(PATIENCE, async {
        loop {
            let frame = raw.frames.recv().await.expect("frame");
            if frame.1 == 1 {
                return frame;
            }
        }
    })
    .await
    .expect("answered");
    assert_eq!((kind, stream), (frames::HEADERS, 1));
    // `:status: 400` is entry 12 of HPACK's static table: one indexed byte.
    assert_eq!(payload.first(), Some(&0x8c), "400");
    assert_eq!(up.handshakes(), 0, "the upstream saw nothing");
    // The same Host as the authority is no ambiguity.
    let mut block = frames::websocket(HOST, APP);
    block.extend(frames::block(&[("host", HOST)]));
    raw.send(&frames::frame(
        frames::HEADERS,
        frames::END_HEADERS,
        3,
        &block,
    ))
    .await
    .expect("send");
    let seen = tokio::time::timeout(PATIENCE, up.seen.recv())
        .await
        .expect("forwarded")
        .expect("seen");
    assert_eq!(seen.headers.get_all("host").iter().count(), 1);
}

#[tokio::test]
async fn an_idle_stream_is_closed_with_1001_and_its_connection_carries_on() {
    let up = Upstream::start().await;
    let tls = Tls::chat(&up.url(), "  limits: {idleTimeoutSeconds: 1}\n", &[]).await;
    let (mut sender, _driver) = tls.h2(HOST).await;
    let mut idle = open(&mut sender, "/ws", APP).await.expect("socket");
    assert_eq!(closed_with(&mut idle).await, 1001);
    let mut next = open(&mut sender, "/ws", APP).await.expect("a new stream");
    echoes(&mut next, "after the idle one").await;
}

#[tokio::test]
async fn with_rejection_close_a_denied_stream_gets_200_then_close_1008_and_never_the_upstream() {
    let mut up = Upstream::start().await;
    let route = route(
        "chat",
        HOST,
        "/",
        &format!("{{allow: [\"{APP}\"], rejection: Close}}"),
        &up.url(),
    );
    let tls = Tls::start(&[HOST], &[route], &[]).await;
    let (mut sender, _driver) = tls.h2(HOST).await;
    let mut denied = open(&mut sender, "/ws", "https://evil.example")
        .await
        .expect("200 first");
    assert_eq!(closed_with(&mut denied).await, 1008);
    assert_eq!(up.handshakes(), 0, "the upstream never saw it");
}

#[tokio::test]
async fn the_plain_listener_does_not_speak_http2_with_prior_knowledge() {
    let mut up = Upstream::start().await;
    let tls = Tls::chat(&up.url(), "", &[]).await;
    // The HTTP/2 connection preface, as an h2c client with prior knowledge sends it.
    let answer = raw_request(tls.gate.proxy, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert!(answer.head.starts_with("HTTP/1.1 400"), "{}", answer.head);
    assert_eq!(up.handshakes(), 0);
}
