//! WebSockets over HTTP/2 (RFC 8441) on the TLS listener, through real sockets: extended
//! CONNECT streams decided as HTTP/1.1 upgrades are, several on one connection, relayed to
//! an HTTP/1.1 upstream.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::ext::Protocol;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

const HOST: &str = "chat.example.test";
const APP: &str = "https://app.example.test";

/// An HTTP/2 connection to `gate`'s TLS listener for `HOST`.
async fn h2_connection(
    gate: &Gate,
    ca: &TestCa,
) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let mut config = (*ca.client_config()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(gate.tls)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from(HOST).expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "h2 negotiated"
    );
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}

/// Opens a WebSocket stream from `origin` on `sender`; the socket, or the status it got.
async fn websocket(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    origin: &str,
) -> Result<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, StatusCode> {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://{HOST}/ws"))
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
        return Err(response.status());
    }
    let upgraded = hyper::upgrade::on(response).await.expect("upgraded");
    Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await)
}

#[tokio::test]
async fn several_websockets_share_one_http2_connection_and_a_refused_origin_gets_403() {
    let ca = TestCa::new();
    let secrets = tempfile::tempdir().expect("tempdir");
    let (cert, key) = ca.issue(&[HOST]);
    write_secret(
        secrets.path(),
        "chat-tls",
        &[("tls.crt", &cert), ("tls.key", &key)],
    );
    let mut up = Upstream::start().await;
    let routes = route(
        "chat",
        HOST,
        "/ws",
        &format!("{{allow: [\"{APP}\"]}}"),
        &up.url(),
    ) + "  tls: {secretName: chat-tls}\n";
    let gate = Gate::start(
        &[("chat.yaml", routes)],
        &["--secret-dir", secrets.path().to_str().expect("utf-8")],
    )
    .await;
    let mut sender = h2_connection(&gate, &ca).await;
    let mut sockets = Vec::new();
    for i in 0..3 {
        let mut ws = websocket(&mut sender, APP).await.expect("allowed");
        ws.send(Message::text(format!("hi {i}")))
            .await
            .expect("send");
        assert_eq!(
            ws.next().await.expect("reply").expect("ok"),
            Message::text(format!("hi {i}"))
        );
        sockets.push(ws);
    }
    // The upstream got HTTP/1.1 handshakes with the stream's authority as Host.
    let seen = up.seen.recv().await.expect("handshake");
    assert_eq!(seen.headers["host"], HOST);
    assert_eq!(seen.headers["origin"], APP);
    assert_eq!(up.handshakes(), 2, "and two more");
    assert_eq!(
        websocket(&mut sender, "https://evil.example").await.err(),
        Some(StatusCode::FORBIDDEN)
    );
    assert_eq!(
        up.handshakes(),
        0,
        "the refused stream never reached the upstream"
    );
    assert_eq!(
        gate.metric(r#"wsgate_active_connections{route="default/chat"}"#)
            .await,
        Some(3.0)
    );
}
