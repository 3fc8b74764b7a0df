//! The cross-origin story in a real browser: headless Chromium loads pages from two loopback
//! origins (and a sandboxed iframe, whose origin is `null`), each page runs
//! `new WebSocket(...)` to wsgate, and what the page's own event handlers see is checked:
//! over `ws://`, over `wss://` with a test CA the browser trusts, and when a route stops
//! allowing a page that is connected. The chat demo (`examples/chat`) is driven the same way,
//! and its screenshots are the README's.

mod support;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::browser::{Chromium, serve_page};
use support::*;

/// The page every origin serves: helpers that open a socket and report what its handlers saw,
/// as a list like `["open", "message:hi", "close:1000:done"]`.
const PROBE_PAGE: &str = r#"<!doctype html><title>probe</title><body><script>
function probe(url, send) {
  return new Promise((resolve) => {
    const log = [];
    const ws = new WebSocket(url);
    ws.onopen = () => { log.push("open"); if (send) ws.send(send); };
    ws.onmessage = (e) => { log.push("message:" + e.data); ws.close(1000, "done"); };
    ws.onerror = () => log.push("error");
    ws.onclose = (e) => { log.push("close:" + e.code + ":" + e.reason); resolve(log); };
  });
}
// The same probe inside an iframe sandboxed without allow-same-origin: an opaque origin,
// which browsers send as `Origin: null`.
function sandboxed(url, send) {
  return new Promise((resolve) => {
    const frame = document.createElement("iframe");
    frame.sandbox = "allow-scripts";
    frame.srcdoc = "<script>" + probe + "; probe(" + JSON.stringify(url) + ", " +
      JSON.stringify(send) + ").then((log) => parent.postMessage(log, '*'))<\/script>";
    addEventListener("message", (e) => { if (e.source === frame.contentWindow) resolve(e.data); });
    document.body.appendChild(frame);
  });
}
// A socket that stays open; its events accumulate in window.events.
function hold(url) {
  window.events = [];
  const ws = new WebSocket(url);
  window.held = ws;
  ws.onopen = () => events.push("open");
  ws.onmessage = (e) => events.push("message:" + e.data);
  ws.onerror = () => events.push("error");
  ws.onclose = (e) => events.push("close:" + e.code + ":" + e.reason);
}
</script></body>"#;

/// Two pages with the probe: `allowed` is opened as `http://127.0.0.1:PORT`, `other` as
/// `http://localhost:PORT`, a different origin.
struct Origins {
    allowed: String,
    other: String,
}

impl Origins {
    async fn serve() -> Origins {
        let a = serve_page(PROBE_PAGE.to_owned()).await;
        let b = serve_page(PROBE_PAGE.to_owned()).await;
        Origins {
            allowed: format!("http://127.0.0.1:{}", a.port()),
            other: format!("http://localhost:{}", b.port()),
        }
    }
}

/// A page's event list (`["open", "message:hi", ...]`) from its JSON value.
fn page_events(value: Value) -> Vec<String> {
    serde_json::from_value(value).expect("a list of events")
}

/// The JavaScript call `function(url, send)`, arguments quoted as JSON.
fn js_call(function: &str, url: &str, send: &str) -> String {
    format!("{function}({}, {})", json!(url), json!(send))
}

#[tokio::test]
async fn the_allowed_origin_talks_other_origins_and_the_sandboxed_null_origin_are_refused() {
    let origins = Origins::serve().await;
    let mut up = Upstream::start().await;
    let allow = format!("[\"{}\"]", origins.allowed);
    let gate = Gate::start(
        &[
            (
                "forbidden.yaml",
                route(
                    "forbidden",
                    "localhost",
                    "/forbidden",
                    &format!("{{allow: {allow}}}"),
                    &up.url(),
                ),
            ),
            (
                "close.yaml",
                route(
                    "close",
                    "localhost",
                    "/close",
                    &format!("{{allow: {allow}, rejection: Close}}"),
                    &up.url(),
                ),
            ),
            (
                "sandbox.yaml",
                route(
                    "sandbox",
                    "localhost",
                    "/null-ok",
                    &format!("{{allow: {allow}, allowNull: true}}"),
                    &up.url(),
                ),
            ),
        ],
        &[],
    )
    .await;
    let ws = |path: &str| format!("ws://localhost:{}{path}", gate.proxy.port());
    let browser = Chromium::launch(&[]).await;

    let allowed = browser.open(&origins.allowed).await;
    assert_eq!(
        page_events(
            allowed
                .eval(&js_call("probe", &ws("/forbidden"), "hi"))
                .await
        ),
        ["open", "message:hi", "close:1000:done"],
        "the allowed page exchanges a message with the upstream"
    );
    let seen = up
        .seen
        .recv()
        .await
        .expect("the upstream saw the handshake");
    assert_eq!(seen.headers["origin"], origins.allowed.as_str());

    let other = browser.open(&origins.other).await;
    assert_eq!(
        page_events(other.eval(&js_call("probe", &ws("/forbidden"), "hi")).await),
        ["error", "close:1006:"],
        "rejection: Forbidden fails the page's handshake: no open, no reason"
    );
    let console = browser.log_entries().await;
    assert!(
        console.iter().any(|l| l.contains("403")),
        "Chromium's console names the 403: {console:?}"
    );
    assert_eq!(
        page_events(other.eval(&js_call("probe", &ws("/close"), "hi")).await),
        ["open", "close:1008:origin not allowed"],
        "rejection: Close completes the upgrade, then the page reads why in onclose"
    );

    assert_eq!(
        page_events(
            allowed
                .eval(&js_call("sandboxed", &ws("/forbidden"), "hi"))
                .await
        ),
        ["error", "close:1006:"],
        "a sandboxed iframe of the allowed page is another origin (null)"
    );
    assert_eq!(
        page_events(
            allowed
                .eval(&js_call("sandboxed", &ws("/null-ok"), "hi"))
                .await
        ),
        ["open", "message:hi", "close:1000:done"],
        "allowNull admits the sandboxed iframe"
    );
    let seen = up
        .seen
        .recv()
        .await
        .expect("the upstream saw the null handshake");
    assert_eq!(seen.headers["origin"], "null");
    assert_eq!(up.handshakes(), 0, "no refused page reached the upstream");
}

#[tokio::test]
async fn over_wss_the_browser_trusts_the_test_ca_and_a_revoked_page_reads_1008() {
    let origins = Origins::serve().await;
    let ca = TestCa::new();
    let stranger = TestCa::new();
    let secrets = tempfile::tempdir().expect("tempdir");
    for (name, host, issuer) in [
        ("local-tls", "localhost", &ca),
        ("stranger-tls", "stranger.localhost", &stranger),
    ] {
        let (cert, key) = issuer.issue(&[host]);
        write_secret(
            secrets.path(),
            name,
            &[("tls.crt", &cert), ("tls.key", &key)],
        );
    }
    let up = Upstream::start().await;
    let live = |allow: &str| {
        route(
            "live",
            "localhost",
            "/live",
            &format!("{{allow: [\"{allow}\"]}}"),
            &up.url(),
        ) + "  tls: {secretName: local-tls}\n"
    };
    let stranger_route = route(
        "stranger",
        "stranger.localhost",
        "/",
        &format!("{{allow: [\"{}\"]}}", origins.allowed),
        &up.url(),
    ) + "  tls: {secretName: stranger-tls}\n";
    let gate = Gate::start(
        &[
            ("live.yaml", live(&origins.allowed)),
            ("stranger.yaml", stranger_route),
        ],
        &["--secret-dir", secrets.path().to_str().expect("utf-8")],
    )
    .await;
    let browser = Chromium::launch(&[&ca.pem]).await;
    let page = browser.open(&origins.allowed).await;

    let stranger_url = format!("wss://stranger.localhost:{}/", gate.tls.port());
    assert_eq!(
        page_events(page.eval(&js_call("probe", &stranger_url, "hi")).await),
        ["error", "close:1006:"],
        "a certificate from a CA the browser does not trust fails"
    );
    let console = browser.log_entries().await;
    assert!(
        console
            .iter()
            .any(|l| l.contains("stranger.localhost") && l.contains("ERR_CERT_AUTHORITY_INVALID")),
        "Chromium says why: {console:?}"
    );

    let url = format!("wss://localhost:{}/live", gate.tls.port());
    page.eval(&format!("hold({})", json!(url))).await;
    let opened = page
        .wait_for(
            "events.length > 0 && events",
            "the wss:// socket's first event",
        )
        .await;
    assert_eq!(page_events(opened), ["open"], "the page trusts the test CA");
    page.eval("held.send('over tls')").await;
    page.wait_for(
        "events.includes('message:over tls')",
        "the echo over wss://",
    )
    .await;

    gate.write_and_wait("live.yaml", &live("https://elsewhere.example"))
        .await;
    let events = page_events(
        page.wait_for(
            "events.some((e) => e.startsWith('close:')) && events",
            "the revoked page's onclose",
        )
        .await,
    );
    assert_eq!(
        events,
        ["open", "message:over tls", "close:1008:origin not allowed"],
        "revocation closes the page's socket with 1008"
    );
}

/// Builds the chat demo (`cargo build --example chat`, a no-op when it is fresh) and returns
/// its binary.
fn chat_example() -> PathBuf {
    let mut cargo = std::process::Command::new(env!("CARGO"));
    // Without the variables cargo set for this test: build scripts that watch them (ring's
    // watches CARGO_MANIFEST_DIR) would otherwise rebuild, and the next `cargo test` again.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
            || name.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .contains(&name.as_ref())
        {
            cargo.env_remove(name.as_ref());
        }
    }
    let status = cargo
        .args(["build", "--quiet", "--example", "chat"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo");
    assert!(status.success(), "cargo build --example chat failed");
    Path::new(bin())
        .parent()
        .expect("target dir")
        .join("examples/chat")
}

/// The chat demo, started with free ports: its upstream, its allowed page and its other page.
struct ChatDemo {
    child: std::process::Child,
    upstream: String,
    allowed: String,
    refused: String,
}

impl Drop for ChatDemo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChatDemo {
    fn start() -> ChatDemo {
        use std::io::BufRead;
        let mut child = std::process::Command::new(chat_example())
            .args(["--upstream", "127.0.0.1:0", "--page", "127.0.0.1:0"])
            .args(["--other-page", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the chat demo");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next = |prefix: &str| {
            let line = lines.next().expect("a line").expect("utf-8");
            line.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected `{prefix}...`, got `{line}`"))
                .trim_end_matches('/')
                .to_owned()
        };
        let upstream = next("chat upstream listening on ws://");
        let allowed = next("allowed page: ");
        let refused = next("refused page: ");
        ChatDemo {
            child,
            upstream,
            allowed,
            refused,
        }
    }
}

/// True once the chat page says it is connected.
const CONNECTED: &str = "document.getElementById('status').className === 'connected'";

/// Sends `text` as `name` from a chat page, the way a person would: fill in and click Send.
async fn say(page: &support::browser::Page<'_>, name: &str, text: &str) {
    page.eval(&format!(
        "document.getElementById('name').value = {}; \
         document.getElementById('text').value = {}; \
         document.getElementById('button').click()",
        json!(name),
        json!(text)
    ))
    .await;
}

#[tokio::test]
async fn the_chat_demo_admits_its_page_and_shows_the_other_origin_why_it_is_refused() {
    let demo = ChatDemo::start();
    // The demo's own route file, pointed at this run's ports.
    let route = std::fs::read_to_string("examples/chat/route.yaml").expect("route.yaml");
    for fixed in ["http://127.0.0.1:8000", "ws://127.0.0.1:9002"] {
        assert!(route.contains(fixed), "route.yaml names {fixed}");
    }
    let route = route
        .replace("http://127.0.0.1:8000", &demo.allowed)
        .replace("ws://127.0.0.1:9002", &format!("ws://{}", demo.upstream));
    let gate = Gate::start(&[("route.yaml", route)], &[]).await;
    let gateway = format!("?gateway=ws://localhost:{}/chat", gate.proxy.port());
    let browser = Chromium::launch(&[]).await;

    let allowed = browser.open(&format!("{}/{gateway}", demo.allowed)).await;
    allowed
        .wait_for(CONNECTED, "the allowed page to connect")
        .await;
    let second = browser.open(&format!("{}/{gateway}", demo.allowed)).await;
    second
        .wait_for(CONNECTED, "a second tab of the allowed page to connect")
        .await;
    say(&allowed, "ada", "hello through wsgate").await;
    say(&second, "grace", "hello, ada").await;
    let messages = allowed
        .wait_for(
            "(t => t.includes('grace:hello, ada') && t)\
             (document.getElementById('messages').innerText)",
            "the second tab's message in the first",
        )
        .await;
    let messages = messages.as_str().expect("text");
    let joined = format!("someone joined from {}", demo.allowed);
    assert_eq!(
        messages.matches(&joined).count(),
        2,
        "the upstream saw both tabs' origin: {messages}"
    );
    assert!(
        messages.contains("ada:hello through wsgate"),
        "the first tab's own message came back: {messages}"
    );

    let refused = browser.open(&format!("{}/{gateway}", demo.refused)).await;
    let status = refused
        .wait_for(
            "(s => s.className === 'refused' && s.innerText)(document.getElementById('status'))",
            "the other origin's page to be refused",
        )
        .await;
    let status = status.as_str().expect("status text");
    assert!(
        status.contains("Refused by wsgate: origin not allowed") && status.contains("1008"),
        "the refused page says why: {status}"
    );

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    allowed.screenshot(&shots.join("chat-allowed.png")).await;
    refused.screenshot(&shots.join("chat-refused.png")).await;
    // WSGATE_UPDATE_SCREENSHOTS=1 refreshes the README's copies from this run.
    if std::env::var_os("WSGATE_UPDATE_SCREENSHOTS").is_some() {
        for name in ["chat-allowed.png", "chat-refused.png"] {
            std::fs::copy(shots.join(name), Path::new("docs").join(name)).expect("copy");
        }
    }
}
