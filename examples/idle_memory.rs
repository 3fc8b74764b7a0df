//! Benchmark: how much memory one idle proxied WebSocket costs in the `wsgate` process.
//!
//! Starts the real `wsgate` binary in standalone mode in front of an in-process echo
//! upstream, opens N connections through it, has each exchange one 1 KiB message (so every
//! buffer the relay uses has been used once), leaves them idle, and reports the growth of
//! wsgate's resident set size (VmRSS from /proc) divided by N.
//!
//! Run with: `bash bench/idle-memory` (builds in release mode), or
//! `cargo run --release --example idle_memory -- target/release/wsgate 5000`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_binary() && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn open(proxy: SocketAddr) -> Client {
    let mut req = format!("ws://bench.local:{}/", proxy.port())
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("origin", "https://bench.local".parse().expect("origin"));
    let tcp = TcpStream::connect(proxy).await.expect("connect");
    let (mut ws, _) =
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
            .await
            .expect("handshake");
    ws.send(Message::binary(vec![1u8; 1024]))
        .await
        .expect("send");
    ws.next().await.expect("echo").expect("echo ok");
    ws
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let bin = args
        .next()
        .unwrap_or_else(|| "target/release/wsgate".to_owned());
    let n: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(5000);

    let upstream = echo_upstream().await;
    let dir = std::env::temp_dir().join(format!("wsgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("bench.yaml"),
        format!(
            "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {{name: bench}}\nspec:\n  hostnames: [bench.local]\n  origins: {{allow: [\"https://bench.local\"]}}\n  upstream: {{url: \"ws://{upstream}\"}}\n"
        ),
    )
    .expect("route file");

    let mut child = Command::new(&bin)
        .args(["standalone", "--routes"])
        .arg(&dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--log",
            "warn,wsgate::server=info",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}; build it with cargo build --release"));
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let proxy: SocketAddr = loop {
        let line = lines.next().expect("wsgate exited").expect("read log");
        if line.contains("proxy listening") {
            break line
                .split("address=")
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .expect("address in log");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let pid = child.id();

    // Warm up: let the runtime, allocator and buffer pools reach their steady state.
    let warm: Vec<Client> = futures_util::future::join_all((0..200).map(|_| open(proxy))).await;
    drop(warm);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid);

    let mut clients = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(250) {
        let size = 250.min(n - chunk * 250);
        clients.extend(futures_util::future::join_all((0..size).map(|_| open(proxy))).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);

    let per_conn = (after.saturating_sub(before) as f64 * 1024.0) / n as f64;
    println!("wsgate idle-connection memory ({n} connections, each after one 1 KiB echo)");
    println!("  RSS before: {before} KiB");
    println!("  RSS after:  {after} KiB");
    println!(
        "  per idle proxied connection: {per_conn:.0} bytes ({:.2} KiB)",
        per_conn / 1024.0
    );
    drop(clients);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
