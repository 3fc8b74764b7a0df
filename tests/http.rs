//! Plain HTTP requests on a route with `http`, through the binary, against an upstream that
//! records every request it receives: the origin table (README, "Plain HTTP on a route")
//! row by row, CORS, preflights, keep-alive on both sides, streamed bodies, the limits and
//! the timeouts, and request smuggling attempts.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use support::{Gate, PATIENCE, raw_request, route};

const HOST: &str = "chat.example.com";
const ALLOWED: &str = "https://app.example.com";
/// The route's own origin on the plain listener: what a same-origin page there is.
const OWN: &str = "http://chat.example.com";

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: HeaderMap,
}

/// An HTTP upstream that records every request. By path: `/socket.io/poll` answers after
/// 1.5 s; `/socket.io/stream` sends one chunk, then the next once `release` is notified;
/// `/socket.io/silent` never answers; `/socket.io/flood` sends without end and sets
/// `flood_dropped` when its body is dropped (the gateway let go of it); anything else
/// echoes the request body, with a CORS answer for any origin and a hop-by-hop header.
struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    release: Arc<Notify>,
    flood_dropped: Arc<AtomicBool>,
}

/// A body that never ends, and says when it is dropped.
struct Flood(Arc<AtomicBool>);

impl Body for Flood {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024])))))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

type Reply = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let backend = Backend {
            addr: listener.local_addr().expect("addr"),
            seen: Arc::default(),
            connections: Arc::default(),
            release: Arc::default(),
            flood_dropped: Arc::default(),
        };
        let (seen, connections, release, dropped) = (
            backend.seen.clone(),
            backend.connections.clone(),
            backend.release.clone(),
            backend.flood_dropped.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let (seen, release, dropped) = (seen.clone(), release.clone(), dropped.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (seen, release, dropped) = (seen.clone(), release.clone(), dropped.clone());
                    async move { Ok::<_, Infallible>(respond(req, &seen, release, dropped).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        backend
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    fn url(&self) -> String {
        format!("{{url: \"ws://{}\"}}", self.addr)
    }
}

async fn respond(
    req: Request<Incoming>,
    seen: &Mutex<Vec<Seen>>,
    release: Arc<Notify>,
    dropped: Arc<AtomicBool>,
) -> Response<Reply> {
    let (parts, body) = req.into_parts();
    seen.lock().expect("seen").push(Seen {
        method: parts.method.to_string(),
        target: parts.uri.to_string(),
        headers: parts.headers.clone(),
    });
    let text = |s: &'static str| Full::new(Bytes::from_static(s.as_bytes())).boxed();
    match parts.uri.path() {
        "/socket.io/poll" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Response::new(text("late"))
        }
        "/socket.io/stream" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first\n")).await;
                release.notified().await;
                let _ = tx.send(Bytes::from_static(b"second\n")).await;
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            let mut r = Response::new(http_body_util::StreamBody::new(stream).boxed());
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().expect("value"));
            r
        }
        "/socket.io/silent" => std::future::pending().await,
        "/socket.io/flood" => Response::new(Flood(dropped).boxed()),
        _ => {
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut r = Response::new(Full::new(body).boxed());
            let h = r.headers_mut();
            h.insert("access-control-allow-origin", "*".parse().expect("value"));
            h.insert(
                "access-control-allow-credentials",
                "true".parse().expect("value"),
            );
            h.insert("connection", "x-hop".parse().expect("value"));
            h.insert("x-hop", "upstream's own".parse().expect("value"));
            h.insert("x-upstream", "yes".parse().expect("value"));
            r
        }
    }
}

/// The chat route with `http` from `ALLOWED` and its own origin, plus `extra` lines of spec.
fn chat(backend: &Backend, extra: &str) -> String {
    route(
        "chat",
        HOST,
        "/socket.io",
        &format!("{{allow: [\"{ALLOWED}\", \"{OWN}\"]}}"),
        &backend.url(),
    ) + "  http: {}\n"
        + extra
}

/// The chat route from `ALLOWED` only, with `http` as given (a flow mapping).
async fn gate_with_http(backend: &Backend, http: &str) -> Gate {
    let chat = route(
        "chat",
        HOST,
        "/socket.io",
        &format!("{{allow: [\"{ALLOWED}\"]}}"),
        &backend.url(),
    ) + &format!("  http: {http}\n");
    Gate::start(&[("chat.yaml", chat)], &[]).await
}

async fn gate_for(backend: &Backend, extra: &[&str]) -> Gate {
    Gate::start(&[("chat.yaml", chat(backend, ""))], extra).await
}

/// A keep-alive client connection to the gateway.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

/// One response, read to its end.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Client {
    async fn connect(gate: &Gate) -> Client {
        let stream = TcpStream::connect(gate.proxy).await.expect("connect");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        Client { sender }
    }

    /// Sends a request for `HOST` with `headers` and `body`; the whole answer.
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", HOST);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        let exchange = async {
            self.sender.ready().await.expect("connection ready");
            let response = self.sender.send_request(request).await.expect("response");
            let (parts, body) = response.into_parts();
            let body = body.collect().await.expect("body").to_bytes();
            Answer {
                status: parts.status,
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        };
        tokio::time::timeout(PATIENCE, exchange)
            .await
            .expect("answered in time")
    }
}

/// One request on a new connection.
async fn once(gate: &Gate, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    Client::connect(gate)
        .await
        .send(method, path, headers, "")
        .await
}

/// One row of the origin table: what it is, Origin, Sec-Fetch-Site, method, status.
type Row = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
    u16,
);

#[tokio::test]
async fn every_row_of_the_origin_table_is_decided_before_the_upstream() {
    let backend = Backend::start().await;
    let open = route(
        "open",
        "open.example.com",
        "/",
        "{allow: [], allowMissing: true}",
        &backend.url(),
    ) + "  http: {}\n";
    let gate = Gate::start(
        &[("chat.yaml", chat(&backend, "")), ("open.yaml", open)],
        &[],
    )
    .await;
    let rows: [Row; 12] = [
        (
            "allowed origin",
            Some(ALLOWED),
            Some("cross-site"),
            "GET",
            200,
        ),
        (
            "allowed origin posts",
            Some(ALLOWED),
            Some("cross-site"),
            "POST",
            200,
        ),
        (
            "other origin",
            Some("https://evil.example"),
            Some("cross-site"),
            "GET",
            403,
        ),
        (
            "other origin, same-origin claimed",
            Some("https://evil.example"),
            Some("same-origin"),
            "POST",
            403,
        ),
        ("null origin", Some("null"), Some("cross-site"), "POST", 403),
        (
            "same-origin page without Origin",
            None,
            Some("same-origin"),
            "GET",
            200,
        ),
        (
            "cross-site script or image",
            None,
            Some("cross-site"),
            "GET",
            403,
        ),
        ("same-site sibling", None, Some("same-site"), "GET", 403),
        ("the user typed the URL", None, Some("none"), "GET", 200),
        ("a navigation cannot post", None, Some("none"), "POST", 403),
        ("no browser, allowMissing false", None, None, "GET", 403),
        (
            "two Sec-Fetch-Site values",
            None,
            Some("same-origin\r\nsec-fetch-site: same-origin"),
            "GET",
            403,
        ),
    ];
    let mut passed = 0;
    for (i, (row, origin, site, method, status)) in rows.iter().enumerate() {
        let mut request = format!(
            "{method} /socket.io/?row={i} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\nConnection: close\r\n"
        );
        if let Some(origin) = origin {
            request += &format!("Origin: {origin}\r\n");
        }
        if let Some(site) = site {
            request += &format!("Sec-Fetch-Site: {site}\r\n");
        }
        let answer = raw_request(gate.proxy, &(request + "\r\n")).await;
        assert_eq!(answer.status, *status, "{row}: {}", answer.head);
        let reached = backend
            .seen()
            .iter()
            .any(|s| s.target.ends_with(&format!("row={i}")));
        assert_eq!(
            reached,
            *status == 200,
            "{row}: upstream reached: {reached}"
        );
        passed += usize::from(*status == 200);
    }
    assert_eq!(backend.seen().len(), passed);

    // Neither header, where the route admits clients without an Origin.
    let answer = raw_request(
        gate.proxy,
        "GET /anything HTTP/1.1\r\nHost: open.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(
        gate.metric(r#"wsgate_http_requests_total{route="default/chat",result="rejected",reason="origin_not_allowed"}"#)
            .await,
        Some(8.0)
    );
    assert!(
        gate.log().contains("request route=\"default/chat\""),
        "access log"
    );
}

#[tokio::test]
async fn cors_names_only_the_allowed_origin_whatever_the_upstream_answers() {
    let backend = Backend::start().await;
    let gate = gate_for(&backend, &[]).await;
    let answer = once(&gate, "POST", "/socket.io/?EIO=4", &[("origin", ALLOWED)]).await;
    assert_eq!(answer.status, 200);
    let header = |a: &Answer, name: &str| {
        a.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    // The upstream said `*`: the browser is told the one origin the route allows.
    assert_eq!(header(&answer, "access-control-allow-origin"), [ALLOWED]);
    assert_eq!(
        header(&answer, "access-control-allow-credentials"),
        ["true"]
    );
    assert!(header(&answer, "vary").iter().any(|v| v == "Origin"));
    // Hop-by-hop headers of the upstream's stay with the gateway; the rest pass.
    assert!(header(&answer, "x-hop").is_empty());
    assert_eq!(header(&answer, "x-upstream"), ["yes"]);

    // Same-origin, no Origin header: no CORS answer at all, not the upstream's `*`.
    let answer = once(
        &gate,
        "GET",
        "/socket.io/?EIO=4",
        &[("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(header(&answer, "access-control-allow-origin").is_empty());
    assert!(header(&answer, "access-control-allow-credentials").is_empty());

    // The gateway's own refusals vary on the Origin too.
    let refused = once(
        &gate,
        "GET",
        "/socket.io/",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(header(&refused, "vary").iter().any(|v| v == "Origin"));

    // An allowed `null` (allowNull) is named as such.
    let nulls = Gate::start(
        &[(
            "chat.yaml",
            route(
                "chat",
                HOST,
                "/socket.io",
                "{allow: [], allowNull: true}",
                &backend.url(),
            ) + "  http: {}\n",
        )],
        &[],
    )
    .await;
    let answer = once(&nulls, "POST", "/socket.io/", &[("origin", "null")]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(header(&answer, "access-control-allow-origin"), ["null"]);
}

#[tokio::test]
async fn preflights_are_answered_by_the_gateway_and_never_reach_the_upstream() {
    let backend = Backend::start().await;
    let gate = gate_for(&backend, &[]).await;
    let asks = [
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "content-type"),
    ];
    let allowed = once(
        &gate,
        "OPTIONS",
        "/socket.io/?EIO=4",
        &[("origin", ALLOWED), asks[0], asks[1]],
    )
    .await;
    assert_eq!(allowed.status, StatusCode::NO_CONTENT);
    let h = &allowed.headers;
    assert_eq!(h["access-control-allow-origin"], ALLOWED);
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-allow-methods"], "POST");
    assert_eq!(h["access-control-allow-headers"], "content-type");
    let refused = once(
        &gate,
        "OPTIONS",
        "/socket.io/?EIO=4",
        &[("origin", "https://evil.example"), asks[0]],
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.headers.get("access-control-allow-origin").is_none());
    assert!(backend.seen().is_empty(), "{:?}", backend.seen());
    assert_eq!(
        gate.metric(r#"wsgate_http_requests_total{route="default/chat",result="accepted",reason="preflight"}"#)
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn one_client_connection_and_one_upstream_connection_carry_many_requests() {
    let backend = Backend::start().await;
    let gate = gate_for(&backend, &[]).await;
    let mut client = Client::connect(&gate).await;
    for i in 0..5 {
        let answer = client
            .send(
                "POST",
                &format!("/socket.io/?EIO=4&n={i}"),
                &[("origin", ALLOWED)],
                &format!("message {i}"),
            )
            .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, format!("message {i}"));
    }
    assert_eq!(backend.seen().len(), 5);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
    // The gateway's forwarding headers, as on a handshake.
    let seen = &backend.seen()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["host"], HOST);
    assert_eq!(seen.headers["origin"], ALLOWED);
}

#[tokio::test]
async fn bodies_stream_both_ways_and_a_long_poll_is_held_for_its_whole_duration() {
    let backend = Backend::start().await;
    let gate = gate_for(&backend, &[]).await;

    // A chunked upload reaches the upstream whole.
    let mut stream = sent(&gate, &format!(
                "POST /socket.io/?EIO=4 HTTP/1.1\r\nHost: {HOST}\r\nOrigin: {ALLOWED}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )).await;
    let head = read_until(&mut stream, b"hello world").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // A streamed response reaches the client chunk by chunk, not once it is complete.
    let mut stream = sent(
        &gate,
        &format!("GET /socket.io/stream HTTP/1.1\r\nHost: {HOST}\r\nOrigin: {ALLOWED}\r\n\r\n"),
    )
    .await;
    let first = read_until(&mut stream, b"first\n").await;
    assert!(first.contains("text/event-stream"), "{first}");
    backend.release.notify_one();
    read_until(&mut stream, b"second\n").await;

    let answer = once(
        &gate,
        "GET",
        "/socket.io/poll",
        &[("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(
        (answer.status.as_u16(), answer.body.as_str()),
        (200, "late")
    );
}

/// A connection to the gateway that has sent `request`.
async fn sent(gate: &Gate, request: &str) -> TcpStream {
    let mut stream = TcpStream::connect(gate.proxy).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    stream
}

/// Reads until `want` has arrived; everything read, as text.
async fn read_until(stream: &mut TcpStream, want: &[u8]) -> String {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        while !buf.windows(want.len()).any(|w| w == want) {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(want));
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no {:?} in {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&buf)
            )
        });
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn a_silent_upstream_gets_504_after_the_routes_response_timeout() {
    let backend = Backend::start().await;
    let gate = gate_with_http(&backend, "{responseTimeoutSeconds: 1}").await;
    let answer = once(&gate, "GET", "/socket.io/silent", &[("origin", ALLOWED)]).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.body, "upstream timed out\n");
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_heads_over_it_431() {
    let backend = Backend::start().await;
    let gate = gate_with_http(&backend, "{maxRequestBodyBytes: 16}").await;
    let mut client = Client::connect(&gate).await;
    let fits = client
        .send(
            "POST",
            "/socket.io/",
            &[("origin", ALLOWED)],
            "sixteen bytes!!!",
        )
        .await;
    assert_eq!(fits.status, 200);
    let over = client
        .send(
            "POST",
            "/socket.io/?over",
            &[("origin", ALLOWED)],
            "seventeen bytes!!",
        )
        .await;
    assert_eq!(over.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        !backend.seen().iter().any(|s| s.target.contains("over")),
        "a declared length over the limit never reaches the upstream"
    );
    // A chunked body is cut where it passes the limit.
    let chunked = raw_request(
        gate.proxy,
        &format!(
            "POST /socket.io/?chunked HTTP/1.1\r\nHost: {HOST}\r\nOrigin: {ALLOWED}\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n1\r\nx\r\n0\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(chunked.status, 413, "{}", chunked.head);

    let big = "a".repeat(20 * 1024);
    let head = raw_request(
        gate.proxy,
        &format!(
            "GET /socket.io/ HTTP/1.1\r\nHost: {HOST}\r\nOrigin: {ALLOWED}\r\nX-Big: {big}\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(head.status, 431, "{}", head.head);
}

#[tokio::test]
async fn smuggling_attempts_get_400_and_nothing_behind_them_reaches_the_upstream() {
    let backend = Backend::start().await;
    let gate = gate_for(&backend, &[]).await;
    let smuggled = "GET /socket.io/smuggled HTTP/1.1\r\nHost: chat.example.com\r\n\r\n";
    for (attempt, headers) in [
        (
            "Content-Length and Transfer-Encoding",
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n".to_owned(),
        ),
        (
            "two Content-Lengths",
            "Content-Length: 4\r\nContent-Length: 70\r\n".to_owned(),
        ),
        (
            "obs-fold",
            "Content-Length: 4\r\nX-Folded: a\r\n b\r\n".to_owned(),
        ),
    ] {
        let answer = raw_request(
            gate.proxy,
            &format!(
                "POST /socket.io/ HTTP/1.1\r\nHost: {HOST}\r\nOrigin: {ALLOWED}\r\n{headers}\r\n0\r\n\r\n{smuggled}"
            ),
        )
        .await;
        assert_eq!(answer.status, 400, "{attempt}: {}", answer.head);
    }
    // The same behind a first request on a kept-alive connection: hyper reads the chunked
    // body and ends the connection after answering (RFC 9112 §6.1), so what follows is
    // never a request.
    let first =
        format!("GET /socket.io/?first HTTP/1.1\r\nHost: {HOST}\r\nOrigin: {ALLOWED}\r\n\r\n");
    let second = format!(
        "POST /socket.io/?second HTTP/1.1\r\nHost: {HOST}\r\nOrigin: {ALLOWED}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
    );
    let mut stream = sent(&gate, &(first + &second)).await;
    let mut all = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut all))
        .await
        .expect("the gateway closes the connection")
        .expect("read");
    let all = String::from_utf8_lossy(&all);
    assert_eq!(all.matches("HTTP/1.1 ").count(), 2, "{all}");
    let targets: Vec<String> = backend.seen().into_iter().map(|s| s.target).collect();
    assert!(
        !targets.iter().any(|t| t.contains("smuggled")),
        "{targets:?}"
    );

    // No tunnels: a CONNECT's target names no path (400 `bad_path` when it opens the
    // connection), and on a kept-alive connection it gets 405.
    let connect =
        format!("CONNECT {HOST}:80 HTTP/1.1\r\nHost: {HOST}\r\nOrigin: {ALLOWED}\r\n\r\n");
    assert_eq!(raw_request(gate.proxy, &connect).await.status, 400);
    let mut stream = sent(
        &gate,
        &(format!("GET /socket.io/?EIO=4 HTTP/1.1\r\nHost: {HOST}\r\nOrigin: {ALLOWED}\r\n\r\n")
            + &connect),
    )
    .await;
    let both = read_until(&mut stream, b"opens no tunnels\n").await;
    assert!(both.contains("HTTP/1.1 405"), "{both}");
    assert!(!backend.seen().iter().any(|s| s.method == "CONNECT"));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_its_upstream_let_go() {
    let backend = Backend::start().await;
    let gate = gate_for(&backend, &["--http-send-timeout", "1"]).await;
    let stream = sent(
        &gate,
        &format!("GET /socket.io/flood HTTP/1.1\r\nHost: {HOST}\r\nOrigin: {ALLOWED}\r\n\r\n"),
    )
    .await;
    // The client reads nothing; buffers fill, the gateway's writes stall, and it gives up.
    gate.wait_for(
        || async { backend.flood_dropped.load(Ordering::SeqCst) },
        "the upstream's endless response to be let go",
    )
    .await;
    drop(stream);
    // Still serving.
    let answer = once(&gate, "GET", "/socket.io/", &[("origin", ALLOWED)]).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn plain_requests_on_a_route_without_http_get_426_and_upgrades_after_plain_requests_400() {
    let backend = Backend::start().await;
    let ws_only = route(
        "ws-only",
        "ws.example.com",
        "/",
        &format!("{{allow: [\"{ALLOWED}\"]}}"),
        &backend.url(),
    );
    let gate = Gate::start(
        &[("chat.yaml", chat(&backend, "")), ("ws.yaml", ws_only)],
        &[],
    )
    .await;
    let answer = raw_request(
        gate.proxy,
        &format!("GET / HTTP/1.1\r\nHost: ws.example.com\r\nOrigin: {ALLOWED}\r\n\r\n"),
    )
    .await;
    assert_eq!(answer.status, 426, "{}", answer.head);

    // On a connection that carried a plain request, neither another route's plain request
    // nor an upgrade is passed.
    let upgrade = format!(
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {HOST}\r\nOrigin: {ALLOWED}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let mut stream = sent(&gate, &format!(
                "GET /socket.io/?EIO=4 HTTP/1.1\r\nHost: {HOST}\r\nOrigin: {ALLOWED}\r\n\r\nGET / HTTP/1.1\r\nHost: ws.example.com\r\nOrigin: {ALLOWED}\r\n\r\n"
            )).await;
    let both = read_until(&mut stream, b"only accepts WebSocket upgrades\n").await;
    assert!(both.starts_with("HTTP/1.1 200"), "{both}");
    assert!(both.contains("HTTP/1.1 426"), "{both}");
    let mut stream = sent(
        &gate,
        &format!(
            "GET /socket.io/?EIO=4 HTTP/1.1\r\nHost: {HOST}\r\nOrigin: {ALLOWED}\r\n\r\n{upgrade}"
        ),
    )
    .await;
    let both = read_until(&mut stream, b"open each WebSocket on a new connection\n").await;
    assert!(both.contains("HTTP/1.1 400"), "{both}");
    assert_eq!(
        backend.seen().len(),
        2,
        "only the two plain requests passed"
    );
}

#[tokio::test]
async fn over_tls_plain_requests_are_judged_as_https_and_must_name_the_sni_host() {
    let backend = Backend::start().await;
    let ca = support::TestCa::new();
    let secrets = tempfile::tempdir().expect("tempdir");
    let (cert, key) = ca.issue(&[HOST]);
    support::write_secret(
        secrets.path(),
        "chat-tls",
        &[("tls.crt", &cert), ("tls.key", &key)],
    );
    let routes = route(
        "chat",
        HOST,
        "/socket.io",
        &format!("{{allow: [\"{ALLOWED}\", \"https://{HOST}\"]}}"),
        &backend.url(),
    ) + "  http: {}\n  tls: {secretName: chat-tls}\n";
    let gate = Gate::start(
        &[("chat.yaml", routes)],
        &["--secret-dir", secrets.path().to_str().expect("utf-8")],
    )
    .await;
    let tls = support::tls_connect(gate.tls, HOST, &ca)
        .await
        .expect("TLS handshake");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP over TLS");
    tokio::spawn(connection);
    let mut ask = async |host: &str| {
        let request = Request::get("/socket.io/?EIO=4")
            .header("host", host)
            .header("sec-fetch-site", "same-origin")
            .body(Full::new(Bytes::new()))
            .expect("request");
        sender.ready().await.expect("ready");
        sender
            .send_request(request)
            .await
            .expect("response")
            .status()
    };
    // Same-origin on the TLS listener is `https://chat.example.com`, which the route allows.
    assert_eq!(ask(HOST).await, StatusCode::OK);
    assert_eq!(backend.seen()[0].headers["x-forwarded-proto"], "https");
    assert_eq!(
        ask("other.example.com").await,
        StatusCode::MISDIRECTED_REQUEST
    );
    // The TLS-only hostname on the plain listener.
    let plain = once(
        &gate,
        "GET",
        "/socket.io/?EIO=4",
        &[("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(plain.status, StatusCode::FORBIDDEN);
    assert_eq!(backend.seen().len(), 1);
}

#[tokio::test]
async fn on_sigterm_idle_keep_alive_connections_close_and_a_held_request_completes() {
    let backend = Backend::start().await;
    let mut gate = gate_for(&backend, &[]).await;
    let mut idle = Client::connect(&gate).await;
    let answer = idle
        .send("GET", "/socket.io/?EIO=4", &[("origin", ALLOWED)], "")
        .await;
    assert_eq!(answer.status, 200);
    let mut held = Client::connect(&gate).await;
    let poll = tokio::spawn(async move {
        held.send("GET", "/socket.io/poll", &[("origin", ALLOWED)], "")
            .await
    });
    gate.wait_for(
        || async { backend.seen().iter().any(|s| s.target.ends_with("/poll")) },
        "the long poll to reach the upstream",
    )
    .await;
    gate.terminate();
    let answer = poll.await.expect("poll task");
    assert_eq!(
        (answer.status.as_u16(), answer.body.as_str()),
        (200, "late")
    );
    // Well within the 30 s shutdown grace: nothing kept the process waiting.
    assert_eq!(gate.wait_exit().await, Some(0));
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_request_is_its_own_clients_and_its_scheme_the_proxys() {
    let backend = Backend::start().await;
    let gate = gate_for(&backend, &["--trusted-proxies", "127.0.0.0/8"]).await;
    // One connection from the proxy carries two visitors' requests.
    let mut proxy = Client::connect(&gate).await;
    for visitor in ["192.0.2.1", "198.51.100.2"] {
        let answer = proxy
            .send(
                "GET",
                "/socket.io/?EIO=4",
                &[("origin", ALLOWED), ("x-forwarded-for", visitor)],
                "",
            )
            .await;
        assert_eq!(answer.status, 200);
    }
    let real: Vec<String> = backend
        .seen()
        .iter()
        .map(|s| s.headers["x-real-ip"].to_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(real, ["192.0.2.1", "198.51.100.2"]);
    // The proxy terminated TLS: the page is https://chat.example.com, which the route does
    // not list (only its http:// origin), so its same-origin poll is refused.
    let answer = proxy
        .send(
            "GET",
            "/socket.io/?EIO=4",
            &[
                ("sec-fetch-site", "same-origin"),
                ("x-forwarded-proto", "https"),
            ],
            "",
        )
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_request_body_that_stalls_gets_408_and_one_cut_short_400() {
    let backend = Backend::start().await;
    let gate = gate_with_http(&backend, "{responseTimeoutSeconds: 1}").await;
    let head = format!(
        "POST /socket.io/ HTTP/1.1\r\nHost: {HOST}\r\nOrigin: {ALLOWED}\r\nContent-Length: 100\r\n\r\nten bytes!"
    );
    let stalled = raw_request(gate.proxy, &head).await;
    assert_eq!(stalled.status, 408, "{}", stalled.head);

    let mut stream = sent(&gate, &head).await;
    stream.shutdown().await.expect("half-close");
    let cut = read_until(&mut stream, b"\r\n\r\n").await;
    assert!(cut.starts_with("HTTP/1.1 400"), "{cut}");
    for reason in ["body_timeout", "body_incomplete"] {
        assert_eq!(
            gate.metric(&format!(
                r#"wsgate_http_requests_total{{route="default/chat",result="rejected",reason="{reason}"}}"#
            ))
            .await,
            Some(1.0),
            "{reason}"
        );
    }
}
