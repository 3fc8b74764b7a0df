//! Headless Firefox (Debian's `firefox-esr`) driven over WebDriver BiDi, for tests that need
//! a second real browser engine: its own `Origin` headers, WebSocket API, HTTP/2 stack and
//! certificate checks.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::PATIENCE;

/// The browser to run: `$WSGATE_FIREFOX`, else Debian's `/usr/bin/firefox-esr`.
pub fn executable() -> PathBuf {
    let path = std::env::var_os("WSGATE_FIREFOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/firefox-esr"));
    assert!(
        path.exists(),
        "{} not found: install Firefox (Debian: apt-get install firefox-esr; hack/test does) or \
         set WSGATE_FIREFOX to a Firefox binary",
        path.display()
    );
    path
}

/// Preferences for a quiet, offline test profile: nothing reaches the Internet on its own
/// (updates, telemetry, Safe Browsing, captive-portal and connectivity checks, prefetching,
/// DNS over HTTPS, remote settings), so the only connections are the ones a test's pages
/// make; and no HTTP/3, which a test of HTTP/2 must not be upgraded away from.
const PREFS: &[(&str, &str)] = &[
    ("app.update.disabledForTesting", "true"),
    ("app.update.auto", "false"),
    ("browser.shell.checkDefaultBrowser", "false"),
    ("browser.startup.homepage_override.mstone", "\"ignore\""),
    ("browser.aboutwelcome.enabled", "false"),
    ("datareporting.policy.dataSubmissionEnabled", "false"),
    ("datareporting.healthreport.uploadEnabled", "false"),
    ("toolkit.telemetry.enabled", "false"),
    ("toolkit.telemetry.unified", "false"),
    ("browser.safebrowsing.malware.enabled", "false"),
    ("browser.safebrowsing.phishing.enabled", "false"),
    ("browser.safebrowsing.downloads.enabled", "false"),
    ("browser.safebrowsing.blockedURIs.enabled", "false"),
    ("network.captive-portal-service.enabled", "false"),
    ("network.connectivity-service.enabled", "false"),
    ("network.prefetch-next", "false"),
    ("network.dns.disablePrefetch", "true"),
    ("network.predictor.enabled", "false"),
    // No speculative connections, which the browser tests would count.
    ("network.http.speculative-parallel-limit", "0"),
    ("network.trr.mode", "5"),
    ("network.http.http3.enable", "false"),
    (
        "services.settings.server",
        "\"http://127.0.0.1:9/remote-settings\"",
    ),
    ("extensions.update.enabled", "false"),
    ("browser.search.update", "false"),
];

/// A headless Firefox with its own profile (and certificate store), killed on drop.
pub struct Firefox {
    child: Child,
    bidi: tokio::sync::Mutex<Bidi>,
    _profile: tempfile::TempDir,
}

/// The WebDriver BiDi session.
struct Bidi {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Drop for Firefox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Firefox {
    /// Starts Firefox trusting the CA certificates in `trusted_ca_pems` (in its profile's
    /// NSS database, as a user's certificate store would be) with the quiet preferences,
    /// and opens a WebDriver BiDi session.
    pub async fn launch(trusted_ca_pems: &[&str]) -> Firefox {
        let dir = tempfile::tempdir().expect("firefox dir");
        let profile = dir.path().join("profile");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&profile).expect("profile dir");
        std::fs::create_dir_all(&home).expect("home dir");
        // Firefox creates its own NSS database only when the profile has none.
        super::browser::trust_nss(&profile, trusted_ca_pems);
        let user_js: String = PREFS
            .iter()
            .map(|(name, value)| format!("user_pref({}, {value});\n", json!(name)))
            .collect();
        std::fs::write(profile.join("user.js"), user_js).expect("user.js");
        let mut child = super::control_plane::dies_with_test(&executable())
            .args(["--headless", "--no-remote", "--remote-debugging-port", "0"])
            .arg("--profile")
            .arg(&profile)
            .env("HOME", &home)
            // Without it Firefox ignores `services.settings.server` and asks Mozilla's.
            .env("MOZ_REMOTE_SETTINGS_DEVTOOLS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start firefox");
        let endpoint = bidi_endpoint(&mut child).await;
        let (ws, _) = tokio_tungstenite::connect_async(format!("{endpoint}/session"))
            .await
            .expect("connect to WebDriver BiDi");
        let firefox = Firefox {
            child,
            bidi: tokio::sync::Mutex::new(Bidi { ws, next_id: 0 }),
            _profile: dir,
        };
        firefox
            .call("session.new", json!({ "capabilities": {} }))
            .await
            .expect("BiDi session");
        firefox
    }

    /// Sends one BiDi command and returns its result, or the protocol's error answer.
    async fn call(&self, method: &str, params: Value) -> Result<Value, Value> {
        let mut bidi = self.bidi.lock().await;
        bidi.next_id += 1;
        let id = bidi.next_id;
        let msg = json!({ "id": id, "method": method, "params": params });
        bidi.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to Firefox");
        let answer = tokio::time::timeout(PATIENCE, async {
            loop {
                let frame = bidi.ws.next().await.expect("BiDi open").expect("read");
                let Message::Text(text) = frame else { continue };
                let value: Value = serde_json::from_str(&text).expect("BiDi JSON");
                // Events are not subscribed to; anything else without our id is skipped.
                if value["id"] == json!(id) {
                    return value;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("BiDi {method}: no answer within {PATIENCE:?}"));
        match answer["type"].as_str() {
            Some("success") => Ok(answer["result"].clone()),
            _ => Err(answer),
        }
    }

    /// Opens a new tab on `url` and waits until it has loaded.
    pub async fn open(&self, url: &str) -> Tab<'_> {
        let created = self
            .call("browsingContext.create", json!({ "type": "tab" }))
            .await
            .expect("create tab");
        let context = created["context"].as_str().expect("context").to_owned();
        self.call(
            "browsingContext.navigate",
            json!({ "context": context, "url": url, "wait": "complete" }),
        )
        .await
        .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
        Tab {
            browser: self,
            context,
        }
    }
}

/// One tab.
pub struct Tab<'a> {
    browser: &'a Firefox,
    context: String,
}

impl Tab<'_> {
    /// Evaluates `expression` in the page, awaiting it if it is a promise; its JSON value
    /// (`null` for `undefined`).
    pub async fn eval(&self, expression: &str) -> Value {
        // BiDi answers with its own typed encoding of values; JSON is what the caller wants.
        let wrapped = format!("(async () => JSON.stringify(await ({expression})))()");
        let result = self
            .browser
            .call(
                "script.evaluate",
                json!({
                    "expression": wrapped,
                    "target": { "context": self.context },
                    "awaitPromise": true,
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("BiDi script.evaluate {expression}: {e}"));
        if result["type"] == "exception" {
            panic!("{expression} threw: {}", result["exceptionDetails"]);
        }
        match result["result"]["value"].as_str() {
            Some(text) => serde_json::from_str(text).expect("JSON from the page"),
            None => Value::Null,
        }
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
}

/// Reads Firefox's stderr until it says where WebDriver BiDi listens (`ws://127.0.0.1:PORT`),
/// and keeps draining it afterwards so that Firefox never blocks on a full pipe.
async fn bidi_endpoint(child: &mut Child) -> String {
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("WebDriver BiDi listening on ")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    tokio::time::timeout(PATIENCE, rx)
        .await
        .unwrap_or_else(|_| panic!("Firefox did not open WebDriver BiDi within {PATIENCE:?}"))
        .expect("Firefox exited before opening WebDriver BiDi")
}
