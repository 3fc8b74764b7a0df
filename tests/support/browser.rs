//! Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for tests that
//! need what a real browser does: its `Origin` headers, its WebSocket API and its certificate
//! checks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::PATIENCE;

/// The browser to run: `$WSGATE_CHROMIUM`, else Debian's `/usr/bin/chromium`.
pub fn executable() -> PathBuf {
    let path = std::env::var_os("WSGATE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} not found: install Chromium (Debian: apt-get install chromium; hack/test does) or set \
         WSGATE_CHROMIUM to a Chromium binary",
        path.display()
    );
    path
}

/// A headless Chromium with its own profile (and certificate store), killed on drop.
pub struct Chromium {
    child: Child,
    cdp: tokio::sync::Mutex<Cdp>,
    _profile: tempfile::TempDir,
}

/// The browser-level DevTools connection, and the events read while waiting for answers.
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: Vec<Value>,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Chromium {
    /// Starts Chromium trusting the CA certificates in `trusted_ca_pems` (an NSS database in
    /// its own home directory, as a user's certificate store would be), and connects to it.
    pub async fn launch(trusted_ca_pems: &[&str]) -> Chromium {
        let profile = tempfile::tempdir().expect("profile dir");
        let home = profile.path().join("home");
        trust(&home, trusted_ca_pems);
        // No speculative connections ("Preload pages: No preloading"): for a navigation,
        // Chromium otherwise preconnects two sockets to the page's server before it knows the
        // server speaks HTTP/2, and keeps or closes the spare one as timing goes; a test that
        // counts connections wants only those its pages make.
        let default_profile = profile.path().join("data/Default");
        std::fs::create_dir_all(&default_profile).expect("Chromium profile dir");
        std::fs::write(
            default_profile.join("Preferences"),
            r#"{"net": {"network_prediction_options": 2}}"#,
        )
        .expect("Chromium preferences");
        // Chromium keeps its singleton socket in a directory of its own under TMPDIR, which
        // a killed browser leaves behind: under the profile, it goes with the profile.
        let tmp = profile.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("Chromium temporary dir");
        let child = Command::new(executable())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-gpu",
                // Containers often give /dev/shm 64 MiB, too little for a renderer.
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--window-size=640,480",
            ])
            .arg(format!(
                "--user-data-dir={}",
                profile.path().join("data").display()
            ))
            .arg("about:blank")
            .env("HOME", &home)
            .env("TMPDIR", &tmp)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let endpoint = devtools_endpoint(&profile.path().join("data")).await;
        let (ws, _) = tokio_tungstenite::connect_async(endpoint.as_str())
            .await
            .expect("connect to DevTools");
        Chromium {
            child,
            cdp: tokio::sync::Mutex::new(Cdp {
                ws,
                next_id: 0,
                events: Vec::new(),
            }),
            _profile: profile,
        }
    }

    /// Sends one DevTools command (to a page when `session` is set) and returns its result,
    /// or the protocol's error object.
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        let mut cdp = self.cdp.lock().await;
        cdp.next_id += 1;
        let id = cdp.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        cdp.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to DevTools");
        let answer = tokio::time::timeout(PATIENCE, async {
            loop {
                let frame = cdp.ws.next().await.expect("DevTools open").expect("read");
                let Message::Text(text) = frame else { continue };
                let value: Value = serde_json::from_str(&text).expect("DevTools JSON");
                if value["id"] == json!(id) {
                    return value;
                }
                if value.get("method").is_some() {
                    cdp.events.push(value);
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("DevTools {method}: no answer within {PATIENCE:?}"));
        match answer.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(answer["result"].clone()),
        }
    }

    /// Opens a new tab on `url` and waits until it has loaded.
    pub async fn open(&self, url: &str) -> Page<'_> {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await
            .expect("create tab");
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await
            .expect("attach to tab");
        let page = Page {
            browser: self,
            session: attached["sessionId"].as_str().expect("session").to_owned(),
        };
        page.command("Log.enable", json!({})).await;
        page.command("Page.navigate", json!({ "url": url })).await;
        page.wait_for(
            "document.readyState === 'complete' && location.href !== 'about:blank'",
            &format!("{url} to load"),
        )
        .await;
        page
    }

    /// Browser log entries (`Log.entryAdded`) read so far, as text.
    pub async fn log_entries(&self) -> Vec<String> {
        self.cdp
            .lock()
            .await
            .events
            .iter()
            .filter(|e| e["method"] == "Log.entryAdded")
            .map(|e| {
                e["params"]["entry"]["text"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    }
}

/// One tab.
pub struct Page<'a> {
    browser: &'a Chromium,
    session: String,
}

impl Page<'_> {
    async fn command(&self, method: &str, params: Value) -> Value {
        self.browser
            .call(Some(&self.session), method, params)
            .await
            .unwrap_or_else(|e| panic!("DevTools {method}: {e}"))
    }

    /// Evaluates `expression` in the page, awaiting it if it is a promise; its JSON value.
    pub async fn eval(&self, expression: &str) -> Value {
        let result = self
            .command(
                "Runtime.evaluate",
                json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
            )
            .await;
        if let Some(e) = result.get("exceptionDetails") {
            panic!("{expression} threw: {e}");
        }
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy; its value. Fails after [`PATIENCE`].
    pub async fn wait_for(&self, expression: &str, what: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let v = self.eval(expression).await;
            if !(v.is_null() || v == json!(false) || v == json!("")) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what} ({expression})"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Writes a PNG screenshot of the tab to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let shot = self
            .command("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

/// Serves `html` for every request on a free port of 127.0.0.1, until the test ends.
pub async fn serve_page(html: String) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind page server");
    let addr = listener.local_addr().expect("page server address");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
        html.len()
    );
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

/// Makes the NSS database Chromium reads under `home` trust each CA in `pems`.
fn trust(home: &Path, pems: &[&str]) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).expect("nssdb dir");
    trust_nss(&db, pems);
}

/// Creates an NSS database in `db` that trusts each CA in `pems` for TLS servers
/// (`certutil` from Debian's `libnss3-tools`): what Chromium and Firefox read.
pub fn trust_nss(db: &Path, pems: &[&str]) {
    let db_arg = format!("sql:{}", db.display());
    let certutil = |args: &[&str]| {
        let out = Command::new("certutil")
            .arg("-d")
            .arg(&db_arg)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("certutil: {e}: install it (Debian: apt-get install libnss3-tools)")
            });
        assert!(
            out.status.success(),
            "certutil {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    certutil(&["-N", "--empty-password"]);
    for (i, pem) in pems.iter().enumerate() {
        let file = db.join(format!("ca-{i}.pem"));
        std::fs::write(&file, pem).expect("write CA");
        let file = file.to_str().expect("utf-8 path").to_owned();
        certutil(&[
            "-A",
            "-n",
            &format!("wsgate-test-ca-{i}"),
            "-t",
            "C,,",
            "-i",
            &file,
        ]);
    }
}

/// Waits for Chromium to write `DevToolsActivePort` in its profile and returns the
/// browser's DevTools WebSocket address.
async fn devtools_endpoint(data_dir: &Path) -> String {
    let file = data_dir.join("DevToolsActivePort");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                return format!("ws://127.0.0.1:{port}{path}");
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Chromium did not open its DevTools port within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
