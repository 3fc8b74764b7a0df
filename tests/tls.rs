//! TLS through real sockets (docs/design.md §6 `tls`, `wss://` upstreams): certificates chosen by
//! SNI from Secrets (here a `--secret-dir`), rotation, unknown names, TLS-only routes, and
//! upstreams verified against a route's CA.

mod support;

use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::Message;

const APP: &str = "https://app.example.test";
const ORIGINS: &str = "{allow: [\"https://app.example.test\"]}";

fn tls_route(name: &str, host: &str, up: &Upstream, secret: &str) -> String {
    route(name, host, "/ws", ORIGINS, &up.url()) + &format!("  tls: {{secretName: {secret}}}\n")
}

/// Issues a certificate for `host` and writes it with its key as Secret `name`; returns the
/// certificate (PEM).
fn tls_secret(dir: &Path, ca: &TestCa, name: &str, host: &str) -> String {
    let (cert, key) = ca.issue(&[host]);
    write_secret(dir, name, &[("tls.crt", &cert), ("tls.key", &key)]);
    cert
}

/// The DER of the certificate a TLS server presented.
fn presented(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().expect("certificates")[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .to_vec()
}

async fn echo_over(ws: &mut tokio_tungstenite::WebSocketStream<impl Io>) {
    ws.send(Message::text("hi")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("reply").expect("ok"),
        Message::text("hi")
    );
}

#[tokio::test]
async fn sni_picks_each_hostnames_certificate_and_an_unknown_name_fails_the_handshake() {
    let ca = TestCa::new();
    let secrets = tempfile::tempdir().expect("tempdir");
    let a_cert = tls_secret(secrets.path(), &ca, "a-tls", "a.example.test");
    let b_cert = tls_secret(secrets.path(), &ca, "b-tls", "b.example.test");
    let mut up = Upstream::start().await;
    let gate = Gate::start(
        &[
            ("a.yaml", tls_route("a", "a.example.test", &up, "a-tls")),
            ("b.yaml", tls_route("b", "b.example.test", &up, "b-tls")),
        ],
        &["--secret-dir", secrets.path().to_str().expect("utf-8")],
    )
    .await;

    for (host, cert) in [("a.example.test", &a_cert), ("b.example.test", &b_cert)] {
        let tls = tls_connect(gate.tls, host, &ca)
            .await
            .expect("TLS handshake");
        assert_eq!(
            presented(&tls),
            der(cert),
            "{host} gets its own certificate"
        );
        let mut ws = ws_over(tls, host, "/ws", APP).await.expect("upgrade");
        echo_over(&mut ws).await;
        let seen = up.seen.recv().await.expect("handshake");
        assert_eq!(seen.headers["x-forwarded-proto"], "https", "{host}");
    }
    // A name no route has a certificate for: the handshake fails; no other tenant's
    // certificate is shown.
    let unknown = tls_connect(gate.tls, "c.example.test", &ca).await;
    assert!(unknown.is_err(), "unknown SNI must fail the TLS handshake");
    // Counted once the gateway's side of the handshake has ended, which may be just after
    // the client's.
    let failed =
        r#"wsgate_handshakes_total{route="",result="rejected",reason="tls_handshake_failed"}"#;
    gate.wait_for(
        || async { gate.metric(failed).await == Some(1.0) },
        "the failed TLS handshake to be counted",
    )
    .await;
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_handshakes_while_a_live_connection_continues() {
    let ca = TestCa::new();
    let secrets = tempfile::tempdir().expect("tempdir");
    let old_cert = tls_secret(secrets.path(), &ca, "a-tls", "a.example.test");
    let up = Upstream::start().await;
    let gate = Gate::start(
        &[("a.yaml", tls_route("a", "a.example.test", &up, "a-tls"))],
        &["--secret-dir", secrets.path().to_str().expect("utf-8")],
    )
    .await;
    let tls = tls_connect(gate.tls, "a.example.test", &ca)
        .await
        .expect("TLS");
    assert_eq!(presented(&tls), der(&old_cert));
    let mut live = ws_over(tls, "a.example.test", "/ws", APP)
        .await
        .expect("upgrade");

    let new_cert = tls_secret(secrets.path(), &ca, "a-tls", "a.example.test");
    let new = der(&new_cert);
    gate.wait_for(
        // The two files are written one after the other, so for a moment the certificate
        // and key do not match and the hostname has none: not yet rotated, not a failure.
        || async {
            tls_connect(gate.tls, "a.example.test", &ca)
                .await
                .is_ok_and(|tls| presented(&tls) == new)
        },
        "new handshakes get the rotated certificate",
    )
    .await;
    echo_over(&mut live).await;
}

#[tokio::test]
async fn a_tls_route_refuses_plain_requests_and_a_host_other_than_the_sni_name() {
    let ca = TestCa::new();
    let secrets = tempfile::tempdir().expect("tempdir");
    tls_secret(secrets.path(), &ca, "a-tls", "a.example.test");
    let up = Upstream::start().await;
    let gate = Gate::start(
        &[
            ("a.yaml", tls_route("a", "a.example.test", &up, "a-tls")),
            (
                "b.yaml",
                route("b", "b.example.test", "/ws", ORIGINS, &up.url()),
            ),
        ],
        &["--secret-dir", secrets.path().to_str().expect("utf-8")],
    )
    .await;
    let plain = raw_request(
        gate.proxy,
        &upgrade_request("a.example.test", "/ws", &format!("Origin: {APP}\r\n")),
    )
    .await;
    assert_eq!(plain.status, 403);
    assert_eq!(
        plain.body,
        "this route is served over TLS only: use wss://\n"
    );

    // A's certificate, B's host: refused before any routing.
    let tls = tls_connect(gate.tls, "a.example.test", &ca)
        .await
        .expect("TLS");
    assert_eq!(
        ws_over(tls, "b.example.test", "/ws", APP).await.err(),
        Some(421)
    );
    // The plain route still serves on the plain listener.
    echo(gate.proxy, "b.example.test", "/ws", APP, &[]).await;
}

#[tokio::test]
async fn a_missing_or_malformed_secret_is_reported_and_other_routes_keep_serving() {
    let ca = TestCa::new();
    let secrets = tempfile::tempdir().expect("tempdir");
    tls_secret(secrets.path(), &ca, "a-tls", "a.example.test");
    let (_, key) = ca.issue(&["x.example.test"]);
    write_secret(
        secrets.path(),
        "broken",
        &[("tls.crt", "not a certificate"), ("tls.key", &key)],
    );
    let up = Upstream::start().await;
    let gate = Gate::start(
        &[
            ("a.yaml", tls_route("a", "a.example.test", &up, "a-tls")),
            ("m.yaml", tls_route("m", "m.example.test", &up, "missing")),
            ("x.yaml", tls_route("x", "x.example.test", &up, "broken")),
        ],
        &["--secret-dir", secrets.path().to_str().expect("utf-8")],
    )
    .await;
    let (_, routes) = gate.admin_get("/routes").await;
    assert!(routes.contains("SecretNotFound"), "{routes}");
    assert!(
        routes.contains("Secret default/missing not found"),
        "{routes}"
    );
    assert!(routes.contains("InvalidSecret"), "{routes}");
    assert!(routes.contains("holds no PEM certificate"), "{routes}");
    assert!(tls_connect(gate.tls, "m.example.test", &ca).await.is_err());
    assert!(tls_connect(gate.tls, "x.example.test", &ca).await.is_err());
    let tls = tls_connect(gate.tls, "a.example.test", &ca)
        .await
        .expect("TLS");
    let mut ws = ws_over(tls, "a.example.test", "/ws", APP)
        .await
        .expect("upgrade");
    echo_over(&mut ws).await;
}

#[tokio::test]
async fn a_wss_upstream_is_verified_against_the_routes_ca_and_a_stranger_gets_502() {
    let ca = TestCa::new();
    let (cert, key) = ca.issue(&["backend.example.test"]);
    let mut up = Upstream::start_tls(&cert, &key).await;
    let secrets = tempfile::tempdir().expect("tempdir");
    write_secret(secrets.path(), "backend-ca", &[("ca.crt", &ca.pem)]);
    let other = TestCa::new();
    write_secret(secrets.path(), "other-ca", &[("ca.crt", &other.pem)]);
    let url = |ca_secret: &str, name: &str| {
        format!(
            "{{url: \"wss://{}/ws\", tls: {{caSecretName: {ca_secret}, serverName: {name}}}}}",
            up.addr
        )
    };
    let gate = Gate::start(
        &[
            (
                "good.yaml",
                route(
                    "good",
                    "good.example.test",
                    "/ws",
                    ORIGINS,
                    &url("backend-ca", "backend.example.test"),
                ),
            ),
            (
                "stranger.yaml",
                route(
                    "stranger",
                    "stranger.example.test",
                    "/ws",
                    ORIGINS,
                    &url("other-ca", "backend.example.test"),
                ),
            ),
            (
                "misnamed.yaml",
                route(
                    "misnamed",
                    "misnamed.example.test",
                    "/ws",
                    ORIGINS,
                    &url("backend-ca", "elsewhere.example.test"),
                ),
            ),
        ],
        &["--secret-dir", secrets.path().to_str().expect("utf-8")],
    )
    .await;
    echo(gate.proxy, "good.example.test", "/ws", APP, &[]).await;
    assert_eq!(up.handshakes(), 1);
    for host in ["stranger.example.test", "misnamed.example.test"] {
        let refused = connect(gate.proxy, host, "/ws", Some(APP), &[]).await.err();
        assert_eq!(refused, Some(502), "{host}");
    }
    assert_eq!(
        up.handshakes(),
        0,
        "no handshake reached the upstream unverified"
    );
    let failed = gate
        .metric(r#"wsgate_handshakes_total{route="default/stranger",result="failed",reason="upstream_tls"}"#)
        .await;
    assert_eq!(failed, Some(1.0));
}

#[tokio::test]
async fn a_client_resumes_its_session_after_hundreds_of_other_clients_came_and_went() {
    const HOST: &str = "a.example.test";
    let ca = TestCa::new();
    let secrets = tempfile::tempdir().expect("tempdir");
    tls_secret(secrets.path(), &ca, "a-tls", HOST);
    let up = Upstream::start().await;
    let gate = Gate::start(
        &[("a.yaml", tls_route("a", HOST, &up, "a-tls"))],
        &["--secret-dir", secrets.path().to_str().expect("utf-8")],
    )
    .await;
    // One client, whose configuration keeps the tickets it gets.
    let connector = tokio_rustls::TlsConnector::from(ca.client_config());
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(gate.tls)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from(HOST).expect("name");
        connector.connect(name, tcp).await.expect("TLS handshake")
    };
    let first = connect().await;
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    // Reading the 101 reads the tickets sent after the handshake too.
    let mut ws = ws_over(first, HOST, "/ws", APP).await.expect("upgrade");
    echo_over(&mut ws).await;
    drop(ws);
    // 300 other clients, each given two tickets: more than an in-memory cache of 256
    // sessions would keep.
    for _ in 0..300 {
        let mut other = tls_connect(gate.tls, HOST, &ca)
            .await
            .expect("TLS handshake");
        tokio::io::AsyncWriteExt::shutdown(&mut other)
            .await
            .expect("close");
    }
    let again = connect().await;
    assert_eq!(
        again.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the first client's ticket still resumes"
    );
    // A resumed session names its host as a full one does: the TLS-only route serves it
    // (a gateway that lost the SNI name on resumption would refuse it as plain text).
    let mut ws = ws_over(again, HOST, "/ws", APP)
        .await
        .expect("upgrade on the resumed session");
    echo_over(&mut ws).await;
}
