//! wsgate beside nginx and HAProxy (both from Debian, one worker each, the same origin
//! allowlist enforced before the upgrade) and the upstream reached directly, as the floor.
//! The proxy under test runs pinned to CPU 0; this process (load client and echo upstream)
//! should run on CPU 1 (`bash bench/proxies` does both). Each scenario runs the proxies in
//! turn, round after round, and reports medians and the proxy's own CPU time per unit of
//! work, which a saturated client cannot hide.
//!
//! Run: `bash bench/proxies`. Prints a markdown table and writes it to
//! `target/bench-proxies.md`; asserts nothing about the figures.

#![allow(missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const HOST: &str = "chat.example.com";
const ALLOWED: &str = "https://app.example.com";
const ROUNDS: usize = 3;
const RUN: Duration = Duration::from_secs(3);
/// Concurrent clients in the handshake scenarios and connections in the message scenario.
const CLIENTS: usize = 32;

/// One proxy under test.
struct Proxy {
    name: &'static str,
    addr: SocketAddr,
    /// The process whose CPU time is charged; `None` for the direct floor.
    pid: Option<u32>,
    _child: Option<Child>,
}

impl Proxy {
    /// `child`, once something listens on `addr`.
    async fn started(name: &'static str, addr: SocketAddr, child: Child) -> Proxy {
        wait_listening(addr).await;
        Proxy {
            name,
            addr,
            pid: Some(child.id()),
            _child: Some(child),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(child) = &mut self._child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces), 1-based: utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // CLK_TCK is 100 on Linux.
    ticks as f64 / 100.0
}

/// Starts `program` pinned to CPU 0, with its output discarded.
fn pinned(program: &str, args: &[&str]) -> Child {
    Command::new("taskset")
        .args(["-c", "0", program])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
}

async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {addr} (the proxy did not start)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A lean WebSocket echo upstream, in this process.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// wsgate with the benchmark's route and `others` more routes on other hostnames (so that a
/// reader can see whether route lookup grows with the route count).
async fn start_wsgate(
    name: &'static str,
    dir: &Path,
    upstream: SocketAddr,
    others: usize,
) -> Proxy {
    let routes = dir.join(format!("routes-{others}.yaml"));
    let route = |name: &str, host: &str| {
        format!(
            "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {{name: {name}, namespace: bench}}\nspec:\n  hostnames: [{host}]\n  origins: {{allow: [\"{ALLOWED}\"]}}\n  upstream: {{url: \"ws://{upstream}\"}}\n"
        )
    };
    let mut text = route("chat", HOST);
    for i in 0..others {
        text.push_str("---\n");
        text.push_str(&route(&format!("r{i}"), &format!("r{i}.example.com")));
    }
    std::fs::write(&routes, text).expect("routes file");
    let port = free_port();
    let (listen, admin) = (
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{}", free_port()),
    );
    let child = pinned(
        env!("CARGO_BIN_EXE_wsgate"),
        &[
            "standalone",
            "--routes",
            routes.to_str().expect("utf-8 path"),
            "--listen",
            &listen,
            "--admin",
            &admin,
            "--log",
            "warn",
        ],
    );
    Proxy::started(name, listen.parse().expect("addr"), child).await
}

async fn start_nginx(dir: &Path, upstream: SocketAddr) -> Proxy {
    let port = free_port();
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"worker_processes 1;
master_process off;
daemon off;
pid {d}/nginx.pid;
error_log stderr error;
events {{ worker_connections 9000; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  map $http_origin $origin_allowed {{ default 0; "{ALLOWED}" 1; }}
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      if ($origin_allowed = 0) {{ return 403; }}
      proxy_pass http://{upstream};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_read_timeout 1h;
    }}
  }}
}}
"#
        ),
    )
    .expect("nginx.conf");
    let child = pinned(
        "nginx",
        &["-p", &d.to_string(), "-c", conf.to_str().expect("path")],
    );
    Proxy::started("nginx", SocketAddr::from(([127, 0, 0, 1], port)), child).await
}

async fn start_haproxy(dir: &Path, upstream: SocketAddr) -> Proxy {
    let port = free_port();
    let conf = dir.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            r#"global
  nbthread 1
  # Two descriptors per proxied connection; this machine allows 20,000 per process.
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend fe
  bind 127.0.0.1:{port}
  acl allowed_origin req.hdr(origin) -m str {ALLOWED}
  http-request deny deny_status 403 unless allowed_origin
  default_backend be
backend be
  server up {upstream}
"#
        ),
    )
    .expect("haproxy.cfg");
    let child = pinned("haproxy", &["-db", "-f", conf.to_str().expect("path")]);
    Proxy::started("haproxy", SocketAddr::from(([127, 0, 0, 1], port)), child).await
}

/// Runs `CLIENTS` copies of `work` for `RUN`; returns units done.
async fn run_for<F, Fut>(work: F) -> u64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let work = Arc::new(work);
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, done, work) = (stop.clone(), done.clone(), work.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    done.fetch_add(work().await, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed)
}

/// Opens a WebSocket with `origin`, then closes it; 1 on a 101.
async fn handshake(addr: SocketAddr) -> u64 {
    let request = http_request(addr, ALLOWED);
    let Ok(stream) = TcpStream::connect(addr).await else {
        return 0;
    };
    let _ = stream.set_nodelay(true);
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((mut ws, _)) => {
            let _ = ws.close(None).await;
            while ws.next().await.is_some() {}
            1
        }
        Err(_) => 0,
    }
}

fn http_request(
    addr: SocketAddr,
    origin: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("request");
    let headers = request.headers_mut();
    headers.insert("host", HOST.parse().expect("host"));
    headers.insert("origin", origin.parse().expect("origin"));
    request
}

/// Sends an upgrade request from a denied origin; 1 on a 403.
async fn denied(addr: SocketAddr) -> u64 {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return 0;
    };
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://evil.example\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match stream.read(&mut buf[got..]).await {
            Ok(0) | Err(_) => return 0,
            Ok(n) => got += n,
        }
    }
    u64::from(buf.starts_with(b"HTTP/1.1 403"))
}

/// Echoes 1 KiB messages on one connection for `RUN`; returns messages echoed.
async fn messages(addr: SocketAddr, stop_at: Instant) -> u64 {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.set_nodelay(true);
    let (mut ws, _) = tokio_tungstenite::client_async(http_request(addr, ALLOWED), stream)
        .await
        .expect("handshake");
    let payload = vec![7u8; 1024];
    let mut n = 0;
    while Instant::now() < stop_at {
        ws.send(Message::binary(payload.clone()))
            .await
            .expect("send");
        match ws.next().await {
            Some(Ok(_)) => n += 1,
            _ => break,
        }
    }
    let _ = ws.close(None).await;
    n
}

/// One measured figure: units per second and proxy CPU µs per unit.
#[derive(Clone, Copy)]
struct Figure {
    rate: f64,
    cpu_us: f64,
}

async fn measure(proxy: &Proxy, scenario: &str) -> Figure {
    let cpu0 = proxy.pid.map(cpu_seconds);
    let started = Instant::now();
    let addr = proxy.addr;
    let units = match scenario {
        "handshakes" => run_for(move || handshake(addr)).await,
        "denied" => run_for(move || denied(addr)).await,
        _ => {
            let stop_at = Instant::now() + RUN;
            let tasks: Vec<_> = (0..CLIENTS)
                .map(|_| tokio::spawn(messages(addr, stop_at)))
                .collect();
            let mut total = 0;
            for t in tasks {
                total += t.await.expect("client");
            }
            total
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = match (proxy.pid, cpu0) {
        (Some(pid), Some(c0)) => cpu_seconds(pid) - c0,
        _ => f64::NAN,
    };
    Figure {
        rate: units as f64 / elapsed,
        cpu_us: cpu * 1e6 / units.max(1) as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("proxies: a benchmark; run it with `bash bench/proxies`");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = echo_upstream().await;
    let proxies = [
        start_wsgate("wsgate", dir.path(), upstream, 0).await,
        start_nginx(dir.path(), upstream).await,
        start_haproxy(dir.path(), upstream).await,
        Proxy {
            name: "direct",
            addr: upstream,
            pid: None,
            _child: None,
        },
        // Measured in the allowed-handshake scenario only.
        start_wsgate("wsgate, 10,000 routes", dir.path(), upstream, 9_999).await,
    ];
    let scenarios = [
        (
            "handshakes",
            "allowed-origin handshakes (open, 101, close)",
            "/s",
        ),
        ("denied", "denied-origin handshakes (403)", "/s"),
        ("messages", "1 KiB messages echoed", "/s"),
    ];
    let mut table = String::from(
        "| scenario | proxy | rate (median) | proxy CPU per unit (median) | wsgate/this, CPU per unit |\n|---|---|---|---|---|\n",
    );
    // `bash bench/proxies handshakes denied` runs just those scenarios.
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for (scenario, title, unit) in scenarios {
        if !chosen.is_empty() && !chosen.iter().any(|c| c == scenario) {
            continue;
        }
        let mut figures: Vec<Vec<Figure>> = vec![Vec::new(); proxies.len()];
        for round in 0..ROUNDS {
            eprintln!("{scenario}: round {} of {ROUNDS}", round + 1);
            for (i, proxy) in proxies.iter().enumerate() {
                let skip = (scenario == "denied" && proxy.pid.is_none())
                    || (scenario != "handshakes" && proxy.name.contains("routes"));
                if skip {
                    continue;
                }
                figures[i].push(measure(proxy, scenario).await);
            }
        }
        let cpu_of = |i: usize| median(figures[i].iter().map(|f| f.cpu_us).collect());
        for (i, proxy) in proxies.iter().enumerate() {
            if figures[i].is_empty() {
                continue;
            }
            let rate = median(figures[i].iter().map(|f| f.rate).collect());
            let (cpu, ratio) = match proxy.pid {
                Some(_) => (
                    format!("{:.1} µs", cpu_of(i)),
                    format!("{:.2}", cpu_of(0) / cpu_of(i)),
                ),
                None => ("-".to_owned(), "-".to_owned()),
            };
            table.push_str(&format!(
                "| {title} | {} | {rate:.0}{unit} | {cpu} | {ratio} |\n",
                proxy.name
            ));
        }
    }
    println!("{table}");
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-proxies.md");
    std::fs::write(out, &table).expect("write the table");
    eprintln!("written to {out}");
}
