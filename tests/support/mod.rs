//! Shared harness for tests that run the real `wsgate` binary on ephemeral loopback ports,
//! with real upstreams and real WebSocket clients.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Response};
use tokio_tungstenite::tungstenite::http::{HeaderMap, StatusCode};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod browser;
pub mod control_plane;
pub mod firefox;
pub mod helm;
pub mod node;

/// How long any wait in these tests may take before it is a failure (generous: CI is noisy).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A running `wsgate` process.
pub struct Gate {
    child: Child,
    pub proxy: SocketAddr,
    /// The TLS listener.
    pub tls: SocketAddr,
    pub admin: SocketAddr,
    log: Arc<Mutex<String>>,
    _dir: Option<tempfile::TempDir>,
    pub routes_dir: PathBuf,
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_wsgate")
}

impl Gate {
    /// Starts `wsgate standalone` on a temp directory holding `files` (name, content).
    pub async fn start(files: &[(&str, String)], extra: &[&str]) -> Gate {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).expect("write route file");
        }
        let path = dir.path().to_owned();
        let mut gate = Gate::start_on(&path, extra).await;
        gate._dir = Some(dir);
        gate
    }

    /// Starts `wsgate standalone --routes path`.
    pub async fn start_on(path: &Path, extra: &[&str]) -> Gate {
        let mut args: Vec<std::ffi::OsString> =
            vec!["standalone".into(), "--routes".into(), path.into()];
        args.extend(extra.iter().map(Into::into));
        let mut gate = Gate::launch(&args, &[]).await;
        gate.routes_dir = path.to_owned();
        gate
    }

    /// Starts `wsgate ARGS` on ephemeral loopback ports with `env` set, and waits for
    /// `/readyz`.
    pub async fn launch(args: &[std::ffi::OsString], env: &[(&str, &std::ffi::OsStr)]) -> Gate {
        let gate = Gate::spawn(args, env).await;
        gate.wait_for(
            || async { gate.admin_get("/readyz").await.0 == 200 },
            "readyz",
        )
        .await;
        gate
    }

    /// Starts wsgate and returns once its listeners are open, ready or not. It dies with
    /// the thread that started it, so a killed test leaves no gateway behind.
    pub async fn spawn(args: &[std::ffi::OsString], env: &[(&str, &std::ffi::OsStr)]) -> Gate {
        let mut child = control_plane::dies_with_test(Path::new(bin()))
            .args(args)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--listen-tls",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ])
            // Debug logs unless the caller chose a level (flag or environment).
            .args(
                if env.iter().any(|(k, _)| *k == "WSGATE_LOG") || args.iter().any(|a| a == "--log")
                {
                    &[][..]
                } else {
                    &["--log", "info,wsgate=debug"][..]
                },
            )
            .args(if args.iter().any(|a| a == "--shutdown-delay") {
                &[][..]
            } else {
                &["--shutdown-delay", "0"][..]
            })
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wsgate");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let _ = tx.send(line.clone());
                    log.lock().expect("log").push_str(&(line + "\n"));
                }
            });
        }
        let (mut proxy, mut tls, mut admin) = (None, None, None);
        let found = tokio::time::timeout(PATIENCE, async {
            while proxy.is_none() || tls.is_none() || admin.is_none() {
                let Some(line) = rx.recv().await else { break };
                // Text (`address=...`) or JSON (`"address":"..."`) log lines.
                let addr = || -> Option<SocketAddr> {
                    if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
                        return json["fields"]["address"].as_str()?.parse().ok();
                    }
                    line.split("address=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                };
                if line.contains("proxy listening") {
                    proxy = addr();
                } else if line.contains("tls listening") {
                    tls = addr();
                } else if line.contains("admin listening") {
                    admin = addr();
                }
            }
        })
        .await;
        let (Ok(()), Some(proxy), Some(tls), Some(admin)) = (found, proxy, tls, admin) else {
            let _ = child.kill();
            panic!("wsgate did not start: {}", log.lock().expect("log"));
        };
        Gate {
            child,
            proxy,
            tls,
            admin,
            log,
            _dir: None,
            routes_dir: PathBuf::new(),
        }
    }

    /// Sends SIGTERM, as Kubernetes does to a pod it stops.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// The value of one sample on `/metrics`, e.g. `wsgate_leader`, if present.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let (_, text) = self.admin_get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "wsgate did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let raw = raw_request(
            self.admin,
            &format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"),
        )
        .await;
        (raw.status, raw.body)
    }

    /// The snapshot version reported by `/routes`.
    pub async fn version(&self) -> u64 {
        let (_, body) = self.admin_get("/routes").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["version"].as_u64().unwrap_or(0)
    }

    /// Writes a route file and waits until a newer snapshot is active.
    pub async fn write_and_wait(&self, name: &str, content: &str) {
        let before = self.version().await;
        std::fs::write(self.routes_dir.join(name), content).expect("write");
        self.wait_for(
            || async { self.version().await > before },
            "snapshot after write",
        )
        .await;
    }

    /// Polls `check` until it holds, or fails after [`PATIENCE`].
    pub async fn wait_for<F, Fut>(&self, check: F, what: &str)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A route YAML document.
pub fn route(name: &str, host: &str, path: &str, origins: &str, upstream: &str) -> String {
    format!(
        "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {{name: {name}}}\nspec:\n  hostnames: [\"{host}\"]\n  path: {{type: PathPrefix, value: \"{path}\"}}\n  origins: {origins}\n  upstream: {upstream}\n"
    )
}

/// What an upstream saw of one handshake.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
}

/// A WebSocket echo upstream that records every handshake it receives. Requests for
/// `/refuse` get `401` with a body instead of an upgrade.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: mpsc::UnboundedReceiver<Seen>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::start_on("127.0.0.1").await
    }

    /// An echo upstream on a free port of `ip`.
    pub async fn start_on(ip: &str) -> Upstream {
        Upstream::start_on_addr(&format!("{ip}:0")).await
    }

    /// An echo upstream on `addr` (`host:port`).
    pub async fn start_on_addr(addr: &str) -> Upstream {
        Upstream::serve(addr, None).await
    }

    /// An echo upstream speaking TLS with this certificate and key (PEM).
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Upstream {
        use rustls::pki_types::pem::PemObject;
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate");
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(wsgate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Upstream::serve("127.0.0.1:0", Some(acceptor)).await
    }

    async fn serve(addr: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
        let addr = listener.local_addr().expect("addr");
        let (tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let stream: Box<dyn Io> = match tls {
                        None => Box::new(stream),
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(s) => Box::new(s),
                            Err(_) => return,
                        },
                    };
                    #[allow(clippy::result_large_err)] // the callback's type is tungstenite's
                    let callback = |req: &Request, mut resp: Response| {
                        let _ = tx.send(Seen {
                            path: req.uri().to_string(),
                            headers: req.headers().clone(),
                        });
                        if req.uri().path() == "/refuse" {
                            let mut err = ErrorResponse::new(Some("go away".into()));
                            *err.status_mut() = StatusCode::UNAUTHORIZED;
                            return Err(err);
                        }
                        if let Some(p) = req.headers().get("sec-websocket-protocol") {
                            let first = p
                                .to_str()
                                .unwrap_or("")
                                .split(',')
                                .next()
                                .unwrap_or("")
                                .trim()
                                .to_owned();
                            resp.headers_mut()
                                .insert("sec-websocket-protocol", first.parse().expect("value"));
                        }
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                    else {
                        return;
                    };
                    // After a Close the loop reads on, so tungstenite sends the Close reply.
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Upstream { addr, seen }
    }

    /// How many handshakes arrived since the last call.
    pub fn handshakes(&mut self) -> usize {
        std::iter::from_fn(|| self.seen.try_recv().ok()).count()
    }

    pub fn url(&self) -> String {
        format!("{{url: \"ws://{}\"}}", self.addr)
    }
}

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A byte stream the test upstream serves, plain or TLS.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Writes Secret `name` with these keys under `dir`, as a mounted Secret volume looks.
pub fn write_secret(dir: &Path, name: &str, keys: &[(&str, &str)]) {
    let secret = dir.join(name);
    std::fs::create_dir_all(&secret).expect("secret dir");
    for (key, value) in keys {
        // Written beside and renamed over, so the gateway never reads half a file.
        let tmp = secret.join(format!(".{key}.tmp"));
        std::fs::write(&tmp, value).expect("write");
        std::fs::rename(&tmp, secret.join(key)).expect("rename");
    }
}

/// A certificate authority for tests, issuing server certificates.
pub struct TestCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    /// The CA certificate, PEM.
    pub pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wsgate test CA");
        let key = rcgen::KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        TestCa { params, key, pem }
    }

    /// A server certificate for `names`, and its key (PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = rcgen::CertificateParams::new(names).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A TLS client configuration trusting only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                rustls::pki_types::CertificateDer::from_pem_slice(self.pem.as_bytes()).expect("CA"),
            )
            .expect("anchor");
        let mut config = rustls::ClientConfig::builder_with_provider(wsgate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A TLS connection to `addr` asking for `sni`, trusting `ca`; the TLS error if the
/// handshake fails.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    ca: &TestCa,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let connector = tokio_rustls::TlsConnector::from(ca.client_config());
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("server name");
    connector.connect(name, tcp).await
}

/// Opens a WebSocket over `tls` to `host` + `path` with `origin`; the HTTP status when it
/// is refused.
pub async fn ws_over<S>(
    tls: S,
    host: &str,
    path: &str,
    origin: &str,
) -> Result<WebSocketStream<S>, u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("wss://{host}{path}")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("origin", origin.parse().expect("origin"));
    match tokio_tungstenite::client_async(req, tls).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("handshake failed unexpectedly: {e}"),
    }
}

/// Opens a WebSocket through the gateway to `host` + `path`, with optional Origin and
/// extra headers. Returns the client or the HTTP status of the refusal.
pub async fn connect(
    gate: SocketAddr,
    host: &str,
    path: &str,
    origin: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<
    (
        Client,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    u16,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{host}:{}{path}", gate.port())
        .into_client_request()
        .expect("request");
    if let Some(o) = origin {
        req.headers_mut()
            .insert("origin", o.parse().expect("origin"));
    }
    for (k, v) in extra {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
            .expect("name");
        req.headers_mut().insert(name, v.parse().expect("value"));
    }
    let tcp = TcpStream::connect(gate).await.expect("connect gateway");
    match tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)).await {
        Ok(pair) => Ok(pair),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("handshake failed unexpectedly: {e}"),
    }
}

/// Opens a WebSocket through the gateway, sends one text message and expects it echoed;
/// panics with the status when the handshake is refused.
pub async fn echo(gate: SocketAddr, host: &str, path: &str, origin: &str, extra: &[(&str, &str)]) {
    let (mut ws, _) = connect(gate, host, path, Some(origin), extra)
        .await
        .unwrap_or_else(|code| panic!("{host}{path} from {origin}: refused with {code}"));
    ws.send(Message::text("ping")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("reply").expect("ok"),
        Message::text("ping")
    );
}

/// Reads messages until a Close frame; returns its code and reason.
pub async fn close_code(client: &mut Client) -> (u16, String) {
    let wait = async {
        while let Some(msg) = client.next().await {
            match msg {
                Ok(Message::Close(Some(frame))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Ok(Message::Close(None)) => return (1005, String::new()),
                Ok(_) => continue,
                Err(e) => panic!("connection failed before a Close frame: {e}"),
            }
        }
        panic!("connection ended without a Close frame");
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("close within patience")
}

/// A raw HTTP exchange.
pub struct Raw {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends `request` verbatim and reads the response until the server closes (or the
/// head and a short body arrived).
pub async fn raw_request(addr: SocketAddr, request: &str) -> Raw {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if head.starts_with("http/1.1 101") || len.is_some_and(|n| buf.len() >= end + 4 + n)
                {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("response within patience");
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Raw {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A valid WebSocket upgrade request head for raw tests, with extra header lines.
pub fn upgrade_request(host: &str, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}
