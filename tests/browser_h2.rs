//! WebSockets over HTTP/2 (RFC 8441, issue 20) in real browsers: headless Chromium (over
//! DevTools) and headless Firefox (over WebDriver BiDi) load a page from the gateway over
//! `https://`, through a route with `http: {}`, and that page opens its sockets to a `wss://`
//! route on the same hostname. Whether a browser used HTTP/2 for its sockets is read from
//! the gateway, not assumed: `wsgate_http2_connections_total` counts the client
//! connections that chose h2, `wsgate_active_connections` the open sockets, each handshake
//! line of the access log says `http="2"` or `http="1.1"`, and the kernel counts the TCP
//! connections open to the TLS listener. Neither browser needs a flag for it; Chromium uses
//! HTTP/2 for a WebSocket only on a connection it already has (the page's), Firefox also on
//! one it opens for the socket.

mod support;

use serde_json::{Value, json};
use support::browser::{Chromium, serve_page};
use support::firefox::Firefox;
use support::*;

/// The gateway's name for the browsers: both resolve `localhost` to loopback themselves.
const HOST: &str = "localhost";

/// The origins of the page the gateway serves.
const PAGE_ORIGINS: &str = "https://localhost:*";

/// The origins of a page served elsewhere, by a server of its own.
const OTHER_ORIGINS: &str = "http://127.0.0.1:*";

/// The page the gateway serves (and the other page too): `open(url)` starts a socket whose handler events accumulate
/// in `sockets[i]` (like `["open", "message:hi", "close:1008:origin not allowed:clean"]`;
/// `:clean` when the browser saw the closing handshake complete).
const PAGE: &str = r#"<!doctype html><title>h2 probe</title><body><script>
window.sockets = [];
window.handles = [];
function open(url) {
  const events = [];
  const ws = new WebSocket(url);
  ws.onopen = () => events.push("open");
  ws.onmessage = (e) => events.push("message:" + e.data);
  ws.onerror = () => events.push("error");
  ws.onclose = (e) => events.push("close:" + e.code + ":" + e.reason + (e.wasClean ? ":clean" : ""));
  sockets.push(events);
  handles.push(ws);
  return sockets.length - 1;
}
</script></body>"#;

/// What a test's browser tab can do, whichever browser it is.
trait Tab {
    /// Evaluates a JavaScript expression in the page; its JSON value.
    async fn eval(&self, expression: &str) -> Value;
    /// Polls an expression until it is truthy; its value.
    async fn wait_for(&self, expression: &str, what: &str) -> Value;
}

impl Tab for support::browser::Page<'_> {
    async fn eval(&self, expression: &str) -> Value {
        support::browser::Page::eval(self, expression).await
    }
    async fn wait_for(&self, expression: &str, what: &str) -> Value {
        support::browser::Page::wait_for(self, expression, what).await
    }
}

impl Tab for support::firefox::Tab<'_> {
    async fn eval(&self, expression: &str) -> Value {
        support::firefox::Tab::eval(self, expression).await
    }
    async fn wait_for(&self, expression: &str, what: &str) -> Value {
        support::firefox::Tab::wait_for(self, expression, what).await
    }
}

/// The gateway in front of a page server and two echo upstreams, all for `HOST` over TLS
/// with a certificate from `ca`: `/` serves the page (`http: {}`), `/ws` echoes for the
/// page's origin (route `chat`), `/denied` echoes for another origin only (route `denied`).
struct Site {
    ca: TestCa,
    gate: Gate,
    chat: Upstream,
    denied: Upstream,
    sockets_over_h2: &'static str,
    _secrets: tempfile::TempDir,
}

impl Site {
    /// Starts it all; `sockets_over_h2` is the `chat` route's `webSocketsOverHttp2`.
    async fn start(sockets_over_h2: &'static str) -> Site {
        let ca = TestCa::new();
        let secrets = tempfile::tempdir().expect("tempdir");
        let (cert, key) = ca.issue(&[HOST]);
        write_secret(
            secrets.path(),
            "site-tls",
            &[("tls.crt", &cert), ("tls.key", &key)],
        );
        let page = serve_page(PAGE.to_owned()).await;
        let chat = Upstream::start().await;
        let denied = Upstream::start().await;
        // The page's own origin is allowed: its favicon request says `Sec-Fetch-Site:
        // same-origin` without an Origin, which the route's allowlist decides.
        let page_route = route(
            "page",
            HOST,
            "/",
            &format!("{{allow: [\"{PAGE_ORIGINS}\"]}}"),
            &format!("{{url: \"ws://{page}\"}}"),
        ) + "  http: {}\n  tls: {secretName: site-tls}\n";
        let denied_route = route(
            "denied",
            HOST,
            "/denied",
            "{allow: [\"https://elsewhere.example\"]}",
            &denied.url(),
        ) + "  tls: {secretName: site-tls}\n";
        let chat_route = chat_route(&chat, &[PAGE_ORIGINS, OTHER_ORIGINS], sockets_over_h2);
        Site {
            ca,
            gate: Gate::start(
                &[
                    ("page.yaml", page_route),
                    ("chat.yaml", chat_route),
                    ("denied.yaml", denied_route),
                ],
                &["--secret-dir", secrets.path().to_str().expect("utf-8")],
            )
            .await,
            chat,
            denied,
            sockets_over_h2,
            _secrets: secrets,
        }
    }

    /// Stops the `chat` route allowing the page: the file rewritten, the new snapshot live.
    async fn revoke(&self) {
        self.gate
            .write_and_wait(
                "chat.yaml",
                &chat_route(
                    &self.chat,
                    &["https://elsewhere.example"],
                    self.sockets_over_h2,
                ),
            )
            .await;
    }

    /// The page's address.
    fn page(&self) -> String {
        format!("https://{HOST}:{}/", self.gate.tls.port())
    }

    /// A `wss://` address on the gateway.
    fn wss(&self, path: &str) -> String {
        format!("wss://{HOST}:{}{path}", self.gate.tls.port())
    }

    /// Client connections that chose HTTP/2 so far.
    async fn http2_connections(&self) -> f64 {
        self.gate
            .metric("wsgate_http2_connections_total")
            .await
            .unwrap_or(0.0)
    }

    /// TCP connections open to the gateway's TLS listener now, as the kernel counts them
    /// (`/proc/net/tcp`: established, with the listener's address as the local end).
    fn tls_connections(&self) -> usize {
        let listener = format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(match self.gate.tls.ip() {
                std::net::IpAddr::V4(ip) => ip.octets(),
                std::net::IpAddr::V6(_) => panic!("the gateway listens on IPv4 loopback"),
            }),
            self.gate.tls.port()
        );
        std::fs::read_to_string("/proc/net/tcp")
            .expect("/proc/net/tcp")
            .lines()
            .skip(1)
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.get(1) == Some(&listener.as_str()) && fields.get(3) == Some(&"01")
            })
            .count()
    }

    /// Asserts how many client connections have chosen HTTP/2 since the gateway started,
    /// and how many TCP connections are open to its TLS listener now.
    async fn assert_connections(&self, http2: f64, open: usize, what: &str) {
        assert_eq!(
            (self.http2_connections().await, self.tls_connections()),
            (http2, open),
            "(HTTP/2 connections, open TCP connections): {what}"
        );
    }

    /// The `http=` field of the access log's handshake lines for `route` with `result`,
    /// once there are `count` of them (the log is read from the gateway's stderr as it
    /// comes, so a line may trail what the browser saw).
    async fn handshake_versions(&self, route: &str, result: &str, count: usize) -> Vec<String> {
        let (route, result) = (
            format!("route=\"default/{route}\""),
            format!("result=\"{result}\""),
        );
        let versions = || -> Vec<String> {
            self.gate
                .log()
                .lines()
                .filter(|l| l.contains(" handshake ") && l.contains(&route) && l.contains(&result))
                .map(|l| {
                    l.split("http=")
                        .nth(1)
                        .and_then(|v| v.split_whitespace().next())
                        .unwrap_or("none")
                        .trim_matches('"')
                        .to_owned()
                })
                .collect()
        };
        self.gate
            .wait_for(
                || async { versions().len() >= count },
                &format!("{count} handshake lines with {route} {result}"),
            )
            .await;
        versions()
    }
}

/// The `chat` route: `/ws` to `upstream` for `allow`, with `webSocketsOverHttp2: mode`.
fn chat_route(upstream: &Upstream, allow: &[&str], mode: &str) -> String {
    route(
        "chat",
        HOST,
        "/ws",
        &format!("{{allow: {}}}", json!(allow)),
        &upstream.url(),
    ) + &format!("  tls: {{secretName: site-tls}}\n  webSocketsOverHttp2: {mode}\n")
}

/// Opens a socket from the page to `url`; its index in the page's `sockets`.
async fn open(tab: &impl Tab, url: &str) -> usize {
    let index = tab.eval(&format!("open({})", json!(url))).await;
    usize::try_from(index.as_u64().expect("a socket index")).expect("index")
}

/// Waits for socket `i`'s first event and returns the events so far.
async fn first_event(tab: &impl Tab, i: usize) -> Vec<String> {
    events(
        tab.wait_for(
            &format!("sockets[{i}].length > 0 && sockets[{i}]"),
            &format!("socket {i}'s first event"),
        )
        .await,
    )
}

/// Sends `text` on socket `i` and waits for the upstream's echo.
async fn echo(tab: &impl Tab, i: usize, text: &str) {
    tab.eval(&format!("handles[{i}].send({})", json!(text)))
        .await;
    tab.wait_for(
        &format!(
            "sockets[{i}].includes({})",
            json!(format!("message:{text}"))
        ),
        &format!("the echo of {text:?} on socket {i}"),
    )
    .await;
}

/// Waits for socket `i`'s close event and returns all its events.
async fn closed(tab: &impl Tab, i: usize) -> Vec<String> {
    events(
        tab.wait_for(
            &format!("sockets[{i}].some((e) => e.startsWith('close:')) && sockets[{i}]"),
            &format!("socket {i}'s close event"),
        )
        .await,
    )
}

/// A socket's event list from its JSON value.
fn events(value: Value) -> Vec<String> {
    serde_json::from_value(value).expect("a list of events")
}

/// The page (already loaded from `site`) opens three sockets to `/ws`; each talks, and the
/// gateway saw them as streams of one HTTP/2 connection: the page's own.
async fn three_sockets_on_the_pages_connection(site: &mut Site, tab: &impl Tab) {
    let url = site.wss("/ws");
    for i in 0..3 {
        assert_eq!(open(tab, &url).await, i);
        assert_eq!(first_event(tab, i).await, ["open"], "socket {i} opens");
        echo(tab, i, &format!("hello {i}")).await;
    }
    assert_eq!(
        site.chat.handshakes(),
        3,
        "the upstream saw three handshakes"
    );
    site.gate
        .wait_for(
            || async {
                site.gate
                    .metric(r#"wsgate_active_connections{route="default/chat"}"#)
                    .await
                    == Some(3.0)
            },
            "three open sockets on route chat",
        )
        .await;
    assert_eq!(
        site.handshake_versions("chat", "accepted", 3).await,
        ["2", "2", "2"],
        "every socket's handshake came as an HTTP/2 stream"
    );
    site.assert_connections(1.0, 1, "the page and its three sockets share one")
        .await;
}

/// Over the page's HTTP/2 connection: the allowed origin talks on `/ws`; `/denied`, which
/// does not allow the page's origin, fails in the page and never reaches its upstream; and
/// when the `chat` route stops allowing the page, its open socket reads 1008.
async fn allowed_talks_denied_fails_revoked_reads_1008(site: &mut Site, tab: &impl Tab) {
    let talking = open(tab, &site.wss("/ws")).await;
    assert_eq!(first_event(tab, talking).await, ["open"]);
    echo(tab, talking, "allowed").await;
    let seen = site.chat.seen.recv().await.expect("the chat handshake");
    assert_eq!(
        seen.headers["origin"],
        format!("https://{HOST}:{}", site.gate.tls.port()).as_str(),
        "the page's origin reached the upstream"
    );

    let refused = open(tab, &site.wss("/denied")).await;
    assert_eq!(
        closed(tab, refused).await,
        ["error", "close:1006:"],
        "the denied socket fails: no open, no reason"
    );
    assert_eq!(
        site.handshake_versions("denied", "rejected", 1).await,
        ["2"],
        "the gateway refused it as an HTTP/2 stream"
    );
    assert_eq!(
        site.denied.handshakes(),
        0,
        "the denied upstream never saw it"
    );

    // Checked before the revocation: once a WebSocket handshake on it has been refused,
    // Firefox stops reusing the HTTP/2 session (its HTTP log, MOZ_LOG=nsHttp:5: "not reusing
    // a half-authenticated sticky connection", then `Http2Session::DontReuse`) and closes it
    // with GOAWAY when its last stream ends, here the revoked socket's.
    site.assert_connections(1.0, 1, "the page's, for all of it")
        .await;

    site.revoke().await;
    assert_eq!(
        closed(tab, talking).await,
        [
            "open",
            "message:allowed",
            "close:1008:origin not allowed:clean"
        ],
        "revocation closes the page's socket with 1008, cleanly"
    );
    assert_eq!(site.handshake_versions("chat", "accepted", 1).await, ["2"]);
}

/// With `webSocketsOverHttp2: Refuse` on the socket route, the gateway withholds extended
/// CONNECT on the hostname's connections: the page still loads over HTTP/2, and its socket
/// talks over a connection of its own, in HTTP/1.1.
async fn refused_over_h2_the_socket_talks_over_http1(site: &Site, tab: &impl Tab) {
    let i = open(tab, &site.wss("/ws")).await;
    assert_eq!(first_event(tab, i).await, ["open"]);
    echo(tab, i, "over 1.1").await;
    assert_eq!(
        site.handshake_versions("chat", "accepted", 1).await,
        ["1.1"]
    );
    site.assert_connections(1.0, 2, "the page's over HTTP/2, the socket's over HTTP/1.1")
        .await;
}

/// A page served elsewhere (`http://127.0.0.1`, allowed by the `chat` route) opens three
/// sockets to the gateway, to which the browser has no connection yet; each talks. What the
/// browser chose is returned as the gateway saw it: the handshakes' HTTP versions, the client
/// connections that chose HTTP/2, and the TCP connections open to the TLS listener.
async fn three_sockets_from_another_origin(
    site: &mut Site,
    tab: &impl Tab,
) -> (Vec<String>, f64, usize) {
    let url = site.wss("/ws");
    for i in 0..3 {
        assert_eq!(open(tab, &url).await, i);
        assert_eq!(first_event(tab, i).await, ["open"], "socket {i} opens");
        echo(tab, i, &format!("from elsewhere {i}")).await;
    }
    let seen = site.chat.seen.recv().await.expect("a chat handshake");
    assert!(
        seen.headers["origin"]
            .to_str()
            .is_ok_and(|o| o.starts_with("http://127.0.0.1:")),
        "the other page's origin reached the upstream: {:?}",
        seen.headers["origin"]
    );
    (
        site.handshake_versions("chat", "accepted", 3).await,
        site.http2_connections().await,
        site.tls_connections(),
    )
}

/// The address of a page served elsewhere, by a server of its own.
async fn other_page() -> String {
    let addr = serve_page(PAGE.to_owned()).await;
    format!("http://127.0.0.1:{}/", addr.port())
}

#[tokio::test]
async fn in_chromium_a_pages_three_websockets_are_http2_streams_of_its_one_connection() {
    let mut site = Site::start("Allow").await;
    let browser = Chromium::launch(&[&site.ca.pem]).await;
    let tab = browser.open(&site.page()).await;
    three_sockets_on_the_pages_connection(&mut site, &tab).await;
}

#[tokio::test]
async fn in_chromium_over_http2_the_allowed_origin_talks_a_denied_one_fails_unseen_and_revocation_closes_with_1008()
 {
    let mut site = Site::start("Allow").await;
    let browser = Chromium::launch(&[&site.ca.pem]).await;
    let tab = browser.open(&site.page()).await;
    allowed_talks_denied_fails_revoked_reads_1008(&mut site, &tab).await;
}

#[tokio::test]
async fn in_chromium_a_route_refusing_websockets_over_http2_gets_them_over_http1() {
    let site = Site::start("Refuse").await;
    let browser = Chromium::launch(&[&site.ca.pem]).await;
    let tab = browser.open(&site.page()).await;
    refused_over_h2_the_socket_talks_over_http1(&site, &tab).await;
}

/// Chromium sends a WebSocket over HTTP/2 only on a session it already has to the server,
/// and opens none for one (as observed with Chromium 156): sockets from a page served
/// elsewhere each get an HTTP/1.1 connection of their own.
#[tokio::test]
async fn in_chromium_a_page_from_another_origin_gets_an_http1_connection_per_websocket() {
    let mut site = Site::start("Allow").await;
    let browser = Chromium::launch(&[&site.ca.pem]).await;
    let tab = browser.open(&other_page().await).await;
    assert_eq!(
        three_sockets_from_another_origin(&mut site, &tab).await,
        (vec!["1.1".to_owned(); 3], 0.0, 3)
    );
}

#[tokio::test]
async fn in_firefox_a_pages_three_websockets_are_http2_streams_of_its_one_connection() {
    let mut site = Site::start("Allow").await;
    let browser = Firefox::launch(&[&site.ca.pem]).await;
    let tab = browser.open(&site.page()).await;
    three_sockets_on_the_pages_connection(&mut site, &tab).await;
}

#[tokio::test]
async fn in_firefox_over_http2_the_allowed_origin_talks_a_denied_one_fails_unseen_and_revocation_closes_with_1008()
 {
    let mut site = Site::start("Allow").await;
    let browser = Firefox::launch(&[&site.ca.pem]).await;
    let tab = browser.open(&site.page()).await;
    allowed_talks_denied_fails_revoked_reads_1008(&mut site, &tab).await;
}

/// Firefox offers h2 on the connection it opens for a WebSocket and shares it (as observed
/// with Firefox 153 ESR): sockets from a page served elsewhere are streams of one HTTP/2
/// connection.
#[tokio::test]
async fn in_firefox_a_page_from_another_origin_gets_its_websockets_as_http2_streams_of_one_connection()
 {
    let mut site = Site::start("Allow").await;
    let browser = Firefox::launch(&[&site.ca.pem]).await;
    let tab = browser.open(&other_page().await).await;
    assert_eq!(
        three_sockets_from_another_origin(&mut site, &tab).await,
        (vec!["2".to_owned(); 3], 1.0, 1)
    );
}

#[tokio::test]
async fn in_firefox_a_route_refusing_websockets_over_http2_gets_them_over_http1() {
    let site = Site::start("Refuse").await;
    let browser = Firefox::launch(&[&site.ca.pem]).await;
    let tab = browser.open(&site.page()).await;
    refused_over_h2_the_socket_talks_over_http1(&site, &tab).await;
}
