//! Real application libraries through wsgate: the Socket.IO 4 server and client from npm
//! (pinned in `tests/apps/socketio/package-lock.json`, installed by these tests with
//! `npm ci`), with their default transports (long-polling first, then the upgrade) on a
//! route with `http`, polling only, and WebSocket only; with one upstream and with two
//! behind a service; and in headless Chromium, from pages on an allowed origin, on the
//! gateway's own origin and on another origin. The server prints every request it receives,
//! so a refused origin is shown never to reach it.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use support::browser::Chromium;
use support::{Gate, PATIENCE, route};

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/socketio");
const HOST: &str = "chat.example.com";
const ALLOWED: &str = "https://app.example.com";

/// Installs the pinned packages once per test run.
fn installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(APP)
            .output()
            .expect("run npm (Node.js 20 and npm are needed)");
        assert!(
            out.status.success(),
            "npm ci in {APP} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// `server.js`, and every JSON line it has printed.
struct App {
    child: Child,
    addr: String,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl App {
    /// Starts the Socket.IO server on a free loopback port.
    fn start(name: &str) -> App {
        App::spawn(&["server.js", "127.0.0.1", "0", "--name", name])
    }

    /// Starts `static.js` (the page and the client bundle, nothing else) on a free port of
    /// `ip`: a page origin of its own.
    fn pages(ip: &str) -> App {
        App::spawn(&["static.js", ip, "0"])
    }

    /// Starts `node ARGS` in the fixture's folder; it prints where it listens.
    fn spawn(args: &[&str]) -> App {
        installed();
        let mut child = support::control_plane::dies_with_test(Path::new("node"))
            .args(args)
            .current_dir(APP)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let seen = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if let Some(addr) = value["listening"].as_str() {
                    let _ = tx.send(addr.to_owned());
                }
                seen.lock().expect("lines").push(value);
            }
        });
        let addr = rx
            .recv_timeout(PATIENCE)
            .expect("node says where it listens");
        App { child, addr, lines }
    }

    /// The Origin headers of every request and upgrade the server received.
    fn origins_seen(&self) -> Vec<String> {
        self.seen("origin")
    }

    /// One field of every request and upgrade the server received.
    fn seen(&self, field: &str) -> Vec<String> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter(|v| v["seen"].is_object())
            .map(|v| match &v["seen"][field] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect()
    }
}

/// Runs `client.js` against `url` with `args`; its one JSON result.
fn client(url: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("node")
        .arg("client.js")
        .arg(url)
        .args(args)
        .args(["--timeout-ms", &PATIENCE.as_millis().to_string()])
        .current_dir(APP)
        .output()
        .expect("run node client.js");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "client.js printed no result ({e}): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// wsgate in front of `app`, for `HOST` under `/socket.io` from `ALLOWED` only, passing
/// plain requests (`http: {}`).
async fn gate_for(app: &App) -> Gate {
    let routes = route(
        "chat",
        HOST,
        "/socket.io",
        &format!("{{allow: [\"{ALLOWED}\"]}}"),
        &format!("{{url: \"ws://{}\"}}", app.addr),
    ) + "  http: {}\n";
    Gate::start(&[("chat.yaml", routes)], &[]).await
}

/// `client.js` from `ALLOWED` for `HOST` through `gate`, with `args` besides.
fn allowed_client(gate: &Gate, args: &[&str]) -> serde_json::Value {
    let url = format!("http://{}", gate.proxy);
    let mut all = vec!["--origin", ALLOWED, "--host", HOST];
    all.extend_from_slice(args);
    client(&url, &all)
}

#[tokio::test]
async fn a_socketio_client_with_default_transports_starts_on_polling_and_ends_on_websocket() {
    let app = App::start("alpha");
    let gate = gate_for(&app).await;
    let result = allowed_client(&gate, &[]);
    assert_eq!(result["connected"], true, "{result}");
    assert_eq!(result["upgraded"], true, "{result}");
    assert_eq!(result["transport"], "websocket", "{result}");
    assert_eq!(result["echo"], true, "{result}");
    let transports = app.seen("transport");
    assert_eq!(
        transports.first().map(String::as_str),
        Some("polling"),
        "{transports:?}"
    );
    assert!(
        transports.iter().any(|t| t == "websocket"),
        "{transports:?}"
    );
    assert!(
        app.origins_seen().iter().all(|o| o == ALLOWED),
        "{:?}",
        app.origins_seen()
    );
    gate.wait_for(
        || async {
            gate.metric(
                r#"wsgate_http_requests_total{route="default/chat",result="accepted",reason="ok"}"#,
            )
            .await
            .is_some_and(|n| n >= 2.0)
        },
        "the polling requests to be counted",
    )
    .await;
}

#[tokio::test]
async fn a_polling_only_socketio_client_connects_and_echoes_over_plain_requests() {
    let app = App::start("alpha");
    let gate = gate_for(&app).await;
    let result = allowed_client(&gate, &["--transports", "polling"]);
    assert_eq!(result["connected"], true, "{result}");
    assert_eq!(result["transport"], "polling", "{result}");
    assert_eq!(result["echo"], true, "{result}");
    assert!(app.seen("upgrade").iter().all(|u| u == "false"));
}

#[tokio::test]
async fn a_socketio_client_from_a_refused_origin_gets_403_on_either_transport_and_never_reaches_the_server()
 {
    let app = App::start("alpha");
    let gate = gate_for(&app).await;
    let url = format!("http://{}", gate.proxy);
    for transports in ["polling,websocket", "websocket"] {
        let result = client(
            &url,
            &[
                "--origin",
                "https://evil.example",
                "--host",
                HOST,
                "--transports",
                transports,
                "--fail-fast",
            ],
        );
        assert_eq!(result["connected"], false, "{transports}: {result}");
        assert!(
            result["error"].as_str().unwrap_or_default().contains("403"),
            "{transports}: {result}"
        );
    }
    // The server prints a `seen` line for each request before it handles it.
    assert!(
        app.origins_seen().is_empty(),
        "the server saw {:?}",
        app.origins_seen()
    );
}

#[tokio::test]
async fn with_two_endpoints_a_clients_polling_and_upgrade_reach_one_and_move_when_it_goes() {
    let alpha = App::start("alpha");
    let beta = App::start("beta");
    let routes = route(
        "chat",
        HOST,
        "/socket.io",
        &format!("{{allow: [\"{ALLOWED}\"]}}"),
        "{service: {name: chat, port: 80}}",
    ) + "  http: {}\n";
    let services = [
        format!("--service=chat.default={}", alpha.addr),
        format!("--service=chat.default={}", beta.addr),
    ];
    let gate = Gate::start(
        &[("chat.yaml", routes)],
        &[services[0].as_str(), services[1].as_str()],
    )
    .await;
    // Every session of this client lands on one server, from its first poll to its upgrade:
    // without affinity, a poll on the other server would get "Session ID unknown".
    let mut servers = Vec::new();
    for _ in 0..4 {
        let result = allowed_client(&gate, &[]);
        assert_eq!(result["connected"], true, "{result}");
        assert_eq!(result["upgraded"], true, "{result}");
        assert_eq!(result["echo"], true, "{result}");
        servers.push(result["server"].as_str().unwrap_or_default().to_owned());
    }
    servers.dedup();
    assert_eq!(servers.len(), 1, "{servers:?}");
    let (chosen, other) = match servers[0].as_str() {
        "alpha" => (alpha, beta),
        _ => (beta, alpha),
    };
    assert!(
        other.seen("url").is_empty(),
        "the other server saw {:?}",
        other.seen("url")
    );

    // Its server goes away: the next session starts on the one left.
    drop(chosen);
    let result = allowed_client(&gate, &[]);
    assert_eq!(result["connected"], true, "{result}");
    assert_eq!(result["upgraded"], true, "{result}");
    assert_ne!(result["server"], servers[0].as_str(), "{result}");
}

#[tokio::test]
async fn a_socketio_client_on_the_websocket_transport_connects_through_wsgate_from_an_allowed_origin()
 {
    let app = App::start("alpha");
    let gate = gate_for(&app).await;
    let result = allowed_client(&gate, &["--transports", "websocket"]);
    assert_eq!(result["connected"], true, "{result}");
    assert_eq!(result["server"], "alpha", "{result}");
    assert_eq!(result["transport"], "websocket", "{result}");
    assert_eq!(result["echo"], true, "{result}");
    assert_eq!(
        app.origins_seen(),
        [ALLOWED],
        "one upgrade, from the allowed origin"
    );
}

/// Opens the fixture's page at `page` (its query names the server) in a new tab of
/// `browser`; the result the page reports.
async fn page_result(browser: &Chromium, page: &str) -> serde_json::Value {
    let tab = browser.open(page).await;
    tab.wait_for("window.done", &format!("{page} to finish"))
        .await;
    tab.eval("window.result").await
}

#[tokio::test]
async fn in_chromium_socketio_pages_from_the_allowed_origin_and_the_same_origin_connect_and_another_origin_is_refused()
 {
    let app = App::start("alpha");
    let allowed = App::pages("127.0.0.1");
    let other = App::pages("127.0.0.2");
    let allowed_origin = format!("http://{}", allowed.addr);
    // The gateway is `localhost` to the browser; its own pages are same-origin with it.
    let routes = route(
        "chat",
        "localhost",
        "/",
        &format!("{{allow: [\"{allowed_origin}\", \"http://localhost:*\"]}}"),
        &format!("{{url: \"ws://{}\"}}", app.addr),
    ) + "  http: {}\n";
    let gate = Gate::start(&[("chat.yaml", routes)], &[]).await;
    let gateway = format!("http://localhost:{}", gate.proxy.port());
    let browser = Chromium::launch(&[]).await;

    // A page on another origin, allowed: its polls are cross-origin requests, readable only
    // with the gateway's Access-Control-Allow-Origin (the server sends none).
    let result = page_result(
        &browser,
        &format!("{allowed_origin}/page.html?url={gateway}"),
    )
    .await;
    assert_eq!(result["connected"], true, "{result}");
    assert_eq!(result["upgraded"], true, "{result}");
    assert_eq!(result["transport"], "websocket", "{result}");
    assert_eq!(result["echo"], true, "{result}");

    // The page served through the gateway by the application itself: its polling GETs
    // carry no Origin, only Sec-Fetch-Site: same-origin.
    let result = page_result(&browser, &format!("{gateway}/page.html")).await;
    assert_eq!(result["connected"], true, "{result}");
    assert_eq!(result["upgraded"], true, "{result}");
    assert_eq!(result["echo"], true, "{result}");
    let same_origin_polls = app
        .lines
        .lock()
        .expect("lines")
        .iter()
        .filter(|v| {
            v["seen"]["transport"] == "polling"
                && v["seen"]["origin"].is_null()
                && v["seen"]["sec_fetch_site"] == "same-origin"
        })
        .count();
    assert!(
        same_origin_polls > 0,
        "no same-origin poll without Origin seen"
    );

    // Another origin: refused at its first poll, and the server never hears of it.
    let other_origin = format!("http://{}", other.addr);
    let result = page_result(
        &browser,
        &format!("{other_origin}/page.html?url={gateway}&timeout=3000"),
    )
    .await;
    assert_eq!(result["connected"], false, "{result}");
    assert!(
        !app.origins_seen().contains(&other_origin),
        "the server saw {:?}",
        app.origins_seen()
    );
    assert!(
        gate.metric(r#"wsgate_http_requests_total{route="default/chat",result="rejected",reason="origin_not_allowed"}"#)
            .await
            .is_some_and(|n| n >= 1.0)
    );
}

#[tokio::test]
async fn a_polling_session_lives_through_a_long_poll_held_for_the_whole_ping_interval() {
    let app = App::start("alpha");
    let gate = gate_for(&app).await;
    // 30 s connected: at least one GET is held by the server until its 25 s ping.
    let result = allowed_client(&gate, &["--transports", "polling", "--hold-ms", "30000"]);
    assert_eq!(result["connected"], true, "{result}");
    assert_eq!(result["echo_after_hold"], true, "{result}");
    let longest = app
        .lines
        .lock()
        .expect("lines")
        .iter()
        .filter_map(|v| v["answered"]["held_ms"].as_u64())
        .max();
    assert!(longest.is_some_and(|ms| ms >= 20_000), "{longest:?}");
}
