//! What an adversarial review got through once, pinned through the binary with real sockets:
//! handshakes in flight during an edit, path tricks, forged trust headers, ambiguous hosts.

mod support;

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

const HOST: &str = "chat.example.test";
const A: &str = "https://a.example.test";
const B: &str = "https://b.example.test";

/// An echo upstream that accepts each TCP connection at once but answers its handshake only
/// once [`HeldUpstream::release`] gives it a turn, so a test can change the routes while a
/// handshake waits.
struct HeldUpstream {
    /// The `upstream` of a route to it.
    url: String,
    arrived: mpsc::UnboundedReceiver<()>,
    turns: Arc<Semaphore>,
}

impl HeldUpstream {
    async fn start() -> HeldUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("listen");
        let url = format!("{{url: \"ws://{}\"}}", listener.local_addr().expect("addr"));
        let (tx, arrived) = mpsc::unbounded_channel();
        let turns = Arc::new(Semaphore::new(0));
        let held = turns.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = tx.send(());
                let held = held.clone();
                tokio::spawn(async move {
                    let Ok(turn) = held.acquire().await else {
                        return;
                    };
                    turn.forget();
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_text() && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        HeldUpstream {
            url,
            arrived,
            turns,
        }
    }

    /// Lets one held handshake be answered.
    fn release(&self) {
        self.turns.add_permits(1);
    }

    /// Waits until the gateway has connected for the handshake `client` makes (so its
    /// decision is made); fails if the handshake ends first.
    async fn wait_arrival(&mut self, client: &mut JoinHandle<Handshake>, gate: &Gate) {
        let arrived = tokio::time::timeout(PATIENCE, self.arrived.recv());
        tokio::select! {
            arrived = arrived => {
                arrived.expect("the gateway connects upstream within patience");
            }
            answer = client => panic!(
                "answered before reaching the upstream: {:?}; log:\n{}",
                answer.expect("task").err(),
                gate.log()
            ),
        }
    }
}

/// What [`connect`] returns.
type Handshake = Result<
    (
        Client,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    u16,
>;

fn origins(allowed: &[&str]) -> String {
    let quoted: Vec<String> = allowed.iter().map(|o| format!("\"{o}\"")).collect();
    format!("{{allow: [{}]}}", quoted.join(", "))
}

/// A handshake whose upstream has not answered when `edited` removes its origin: it must be
/// refused with 403 once the upstream answers (or before), never relayed.
async fn in_flight_handshake_is_refused_after(revoke_line: &str) {
    let mut up = HeldUpstream::start().await;
    let url = up.url.clone();
    let declare =
        |allowed: &[&str]| route("chat", HOST, "/ws", &origins(allowed), &url) + revoke_line;
    let gate = Gate::start(&[("chat.yaml", declare(&[A, B]))], &[]).await;
    let proxy = gate.proxy;
    let mut in_flight =
        tokio::spawn(async move { connect(proxy, HOST, "/ws", Some(A), &[]).await });
    up.wait_arrival(&mut in_flight, &gate).await;
    gate.write_and_wait("chat.yaml", &declare(&[B])).await;
    up.release();
    let answer = tokio::time::timeout(PATIENCE, &mut in_flight)
        .await
        .expect("answered within patience")
        .expect("task");
    assert_eq!(answer.err(), Some(403), "log:\n{}", gate.log());
    // The origin that stayed allowed still gets through the same upstream.
    let mut allowed = tokio::spawn(async move { connect(proxy, HOST, "/ws", Some(B), &[]).await });
    up.wait_arrival(&mut allowed, &gate).await;
    up.release();
    let (mut ws, _) = (&mut allowed).await.expect("task").expect("B allowed");
    ws.send(Message::text("hi")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("reply").expect("ok"),
        Message::text("hi")
    );
}

#[tokio::test]
async fn a_handshake_waiting_for_its_upstream_is_refused_when_its_origin_is_removed() {
    in_flight_handshake_is_refused_after("").await;
}

#[tokio::test]
async fn a_handshake_waiting_for_its_upstream_is_judged_by_the_newest_routes_without_revocation() {
    in_flight_handshake_is_refused_after("  revokeOnPolicyChange: false\n").await;
}

#[tokio::test]
async fn turning_revocation_on_in_the_edit_that_removes_an_origin_closes_live_connections() {
    let up = Upstream::start().await;
    let declare = |allowed: &[&str], revoke: bool| {
        route("chat", HOST, "/ws", &origins(allowed), &up.url())
            + &format!("  revokeOnPolicyChange: {revoke}\n")
    };
    let gate = Gate::start(&[("chat.yaml", declare(&[A, B], false))], &[]).await;
    let (mut live, _) = connect(gate.proxy, HOST, "/ws", Some(A), &[])
        .await
        .expect("allowed");
    gate.write_and_wait("chat.yaml", &declare(&[B], true)).await;
    assert_eq!(
        close_code(&mut live).await,
        (1008, "origin not allowed".to_owned())
    );
}

/// A route document in `namespace`, with extra spec lines.
fn tenant_route(
    namespace: &str,
    name: &str,
    path: (&str, &str),
    allowed: &[&str],
    up: &str,
) -> String {
    let (kind, value) = path;
    format!(
        "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  hostnames: [\"{HOST}\"]\n  path: {{type: {kind}, value: \"{value}\"}}\n  origins: {}\n  upstream: {up}\n",
        origins(allowed)
    )
}

#[tokio::test]
async fn a_route_from_another_namespace_cannot_take_over_a_path_of_an_owned_hostname() {
    let up = Upstream::start().await;
    let strict = tenant_route("team-a", "strict", ("PathPrefix", "/ws"), &[A], &up.url());
    let gate = Gate::start(&[("strict.yaml", strict)], &[]).await;
    for (i, path) in [("Exact", "/ws"), ("PathPrefix", "/ws/sub")]
        .into_iter()
        .enumerate()
    {
        let takeover = tenant_route("team-b", "takeover", path, &[B], &up.url());
        gate.write_and_wait(&format!("takeover{i}.yaml"), &takeover)
            .await;
        let request = upgrade_request(HOST, path.1, &format!("Origin: {B}\r\n"));
        assert_eq!(
            raw_request(gate.proxy, &request).await.status,
            403,
            "{path:?} stays team-a's"
        );
        std::fs::remove_file(gate.routes_dir.join(format!("takeover{i}.yaml"))).expect("rm");
    }
    echo(gate.proxy, HOST, "/ws/sub", A, &[]).await;
    let log = gate.log();
    assert!(
        log.contains("hostname chat.example.test belongs to namespace team-a")
            && log.contains("hostnameGrants: [{namespace: team-b}]"),
        "{log}"
    );
}

#[tokio::test]
async fn the_owner_can_grant_its_hostname_to_another_namespace() {
    let up = Upstream::start().await;
    let strict = tenant_route("team-a", "strict", ("PathPrefix", "/ws"), &[A], &up.url())
        + "  hostnameGrants: [{namespace: team-b}]\n";
    let guest = tenant_route("team-b", "guest", ("Exact", "/ws/b"), &[B], &up.url());
    let gate = Gate::start(&[("strict.yaml", strict), ("guest.yaml", guest)], &[]).await;
    echo(gate.proxy, HOST, "/ws/b", B, &[]).await;
    echo(gate.proxy, HOST, "/ws", A, &[]).await;
}

#[tokio::test]
async fn a_tls_hostname_is_tls_only_on_every_path() {
    let ca = TestCa::new();
    let secrets = tempfile::tempdir().expect("tempdir");
    let (cert, key) = ca.issue(&[HOST]);
    write_secret(
        secrets.path(),
        "chat-tls",
        &[("tls.crt", &cert), ("tls.key", &key)],
    );
    let up = Upstream::start().await;
    let secure = tenant_route("team-a", "secure", ("PathPrefix", "/ws"), &[A], &up.url())
        + "  tls: {secretName: chat-tls}\n";
    let plain = tenant_route("team-a", "plain", ("Exact", "/plain"), &[A], &up.url());
    let gate = Gate::start(
        &[("secure.yaml", secure), ("plain.yaml", plain)],
        &["--secret-dir", secrets.path().to_str().expect("utf-8")],
    )
    .await;
    let request = upgrade_request(HOST, "/plain", &format!("Origin: {A}\r\n"));
    let refused = raw_request(gate.proxy, &request).await;
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("TLS only"), "{}", refused.body);
}

/// Two routes on one backend: `/ws` admits only A, `/` only B.
async fn strict_and_loose(up: &Upstream) -> Gate {
    let strict = route("strict", HOST, "/ws", &origins(&[A]), &up.url());
    let loose = route("loose", HOST, "/", &origins(&[B]), &up.url());
    Gate::start(&[("strict.yaml", strict), ("loose.yaml", loose)], &[]).await
}

#[tokio::test]
async fn a_path_is_routed_and_forwarded_in_normal_form() {
    let mut up = Upstream::start().await;
    let gate = strict_and_loose(&up).await;
    for raw in [
        "/ws/%2e%2e/admin",
        "/ws/../admin",
        "/ws/.%2E/admin",
        "//ws/./../admin",
    ] {
        let request = upgrade_request(HOST, raw, &format!("Origin: {A}\r\n"));
        assert_eq!(
            raw_request(gate.proxy, &request).await.status,
            403,
            "{raw} is /admin, routed by `/`, which does not admit A"
        );
        let request = upgrade_request(HOST, raw, &format!("Origin: {B}\r\n"));
        assert_eq!(raw_request(gate.proxy, &request).await.status, 101, "{raw}");
        let seen = up.seen.recv().await.expect("forwarded");
        assert_eq!(seen.path, "/admin", "{raw}");
    }
    let request = upgrade_request(HOST, "/w%73/chat?room=%2e%2e", &format!("Origin: {A}\r\n"));
    assert_eq!(raw_request(gate.proxy, &request).await.status, 101);
    assert_eq!(
        up.seen.recv().await.expect("forwarded").path,
        "/ws/chat?room=%2e%2e"
    );
}

#[tokio::test]
async fn a_path_a_backend_could_read_another_way_is_refused_with_400() {
    let mut up = Upstream::start().await;
    let gate = strict_and_loose(&up).await;
    for raw in [
        "/ws/..;/admin",
        "/ws/..;jsessionid=1/admin",
        "/ws/%2e%2e%3b/admin",
        "/ws%2f..%2fadmin",
        "/ws%5c..%5cadmin",
        "/ws/%zz",
    ] {
        for origin in [A, B] {
            let request = upgrade_request(HOST, raw, &format!("Origin: {origin}\r\n"));
            let refused = raw_request(gate.proxy, &request).await;
            assert_eq!(refused.status, 400, "{raw}");
            assert!(
                refused.body.contains("path not accepted"),
                "{}",
                refused.body
            );
        }
    }
    assert_eq!(up.handshakes(), 0);
}

#[tokio::test]
async fn client_trust_headers_and_their_underscore_spellings_never_reach_the_upstream() {
    let mut up = Upstream::start().await;
    let gate = strict_and_loose(&up).await;
    let forged = "Forwarded: for=6.6.6.6;proto=https\r\nX-Real_IP: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\nX-Forwarded_Proto: https\r\n";
    let request = upgrade_request(HOST, "/ws", &format!("Origin: {A}\r\n{forged}"));
    assert_eq!(raw_request(gate.proxy, &request).await.status, 101);
    let seen = up.seen.recv().await.expect("forwarded");
    for (name, value) in &seen.headers {
        let value = value.to_str().expect("ascii");
        assert!(!value.contains("6.6.6.6"), "{name}: {value}");
        assert!(!name.as_str().contains('_'), "{name}: {value}");
    }
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    let ours = seen.headers["forwarded"].to_str().expect("ascii");
    assert!(ours.starts_with("for=127.0.0.1;proto=http;"), "{ours}");
}

#[tokio::test]
async fn a_request_naming_two_hosts_is_refused_with_400() {
    let mut up = Upstream::start().await;
    let gate = strict_and_loose(&up).await;
    let two = upgrade_request(
        HOST,
        "/ws",
        &format!("Host: other.example.test\r\nOrigin: {A}\r\n"),
    );
    let refused = raw_request(gate.proxy, &two).await;
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("one Host header"), "{}", refused.body);
    let absolute = upgrade_request(
        HOST,
        "http://other.example.test/ws",
        &format!("Origin: {A}\r\n"),
    );
    assert_eq!(raw_request(gate.proxy, &absolute).await.status, 400);
    let agreeing = upgrade_request(
        HOST,
        &format!("http://{HOST}/ws"),
        &format!("Origin: {A}\r\n"),
    );
    assert_eq!(raw_request(gate.proxy, &agreeing).await.status, 101);
    assert_eq!(up.seen.recv().await.expect("forwarded").path, "/ws");
    assert_eq!(up.handshakes(), 0);
}

#[tokio::test]
async fn connection_cannot_strip_origin_or_host_from_the_upstream_request() {
    let mut up = Upstream::start().await;
    let gate = strict_and_loose(&up).await;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade, Origin, Host, Sec-WebSocket-Key\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {A}\r\n\r\n"
    );
    assert_eq!(raw_request(gate.proxy, &request).await.status, 101);
    let seen = up.seen.recv().await.expect("forwarded");
    assert_eq!(seen.headers["origin"], A);
    assert_eq!(seen.headers["host"], HOST);
}
