//! Real application libraries through wsgate: the Socket.IO 4 server and client from npm
//! (pinned in `tests/apps/socketio/package-lock.json`, installed by these tests with
//! `npm ci`), on the WebSocket transport. The server prints every request it receives, so
//! a refused origin is shown never to reach it.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

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
        installed();
        let mut child = support::control_plane::dies_with_test(Path::new("node"))
            .args(["server.js", "127.0.0.1", "0", "--name", name])
            .current_dir(APP)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node server.js");
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
            .expect("server.js says where it listens");
        App { child, addr, lines }
    }

    /// The Origin headers of every request and upgrade the server received.
    fn origins_seen(&self) -> Vec<String> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter_map(|v| v["seen"]["origin"].as_str().map(str::to_owned))
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

/// wsgate in front of `app`, for `HOST` under `/socket.io` from `ALLOWED` only.
async fn gate_for(app: &App) -> Gate {
    let routes = route(
        "chat",
        HOST,
        "/socket.io",
        &format!("{{allow: [\"{ALLOWED}\"]}}"),
        &format!("{{url: \"ws://{}\"}}", app.addr),
    );
    Gate::start(&[("chat.yaml", routes)], &[]).await
}

#[tokio::test]
async fn a_socketio_client_on_the_websocket_transport_connects_through_wsgate_from_an_allowed_origin()
 {
    let app = App::start("alpha");
    let gate = gate_for(&app).await;
    let url = format!("http://{}", gate.proxy);
    let result = client(
        &url,
        &[
            "--origin",
            ALLOWED,
            "--host",
            HOST,
            "--transports",
            "websocket",
        ],
    );
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

#[tokio::test]
async fn a_socketio_client_from_a_refused_origin_gets_403_and_never_reaches_the_server() {
    let app = App::start("alpha");
    let gate = gate_for(&app).await;
    let url = format!("http://{}", gate.proxy);
    let result = client(
        &url,
        &[
            "--origin",
            "https://evil.example",
            "--host",
            HOST,
            "--transports",
            "websocket",
            "--fail-fast",
        ],
    );
    assert_eq!(result["connected"], false, "{result}");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(error.contains("403"), "{result}");
    // The server prints a `seen` line for each request before it handles it.
    assert!(
        app.origins_seen().is_empty(),
        "the server saw {:?}",
        app.origins_seen()
    );
}
