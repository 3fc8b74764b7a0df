//! The chat demo's two servers in one process: the chat upstream wsgate proxies to (every
//! message goes to everyone connected), and the demo page, served on two ports so that it has
//! two origins: one the route allows, one it does not.
//!
//! Run with `bash examples/chat/run.sh`, which also starts wsgate on `route.yaml`; or
//! `cargo run --example chat -- --help` for the addresses it takes.

use std::net::SocketAddr;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// The demo page: static, it reads the gateway's address from `?gateway=`.
const PAGE: &str = include_str!("index.html");
/// Longest message the upstream relays; longer ones are dropped.
const MAX_MESSAGE: usize = 2048;

#[derive(Parser)]
#[command(about = "The wsgate chat demo: a chat upstream and the demo page on two origins")]
struct Args {
    /// Where the chat upstream listens (the route's `upstream.url`).
    #[arg(long, default_value = "127.0.0.1:9002")]
    upstream: SocketAddr,
    /// Where the page is served for the origin the route allows, `http://127.0.0.1:PORT`.
    #[arg(long, default_value = "127.0.0.1:8000")]
    page: SocketAddr,
    /// Where the same page is served for an origin the route does not allow: it is opened as
    /// `http://localhost:PORT`, another origin than `http://127.0.0.1:PORT`.
    #[arg(long, default_value = "127.0.0.1:8001")]
    other_page: SocketAddr,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let upstream = bind(args.upstream, "--upstream").await;
    let page = bind(args.page, "--page").await;
    let other = bind(args.other_page, "--other-page").await;
    // Printed with the bound ports, so that port 0 works (the browser test uses it).
    println!("chat upstream listening on ws://{}", upstream.local_addr()?);
    println!(
        "allowed page: http://127.0.0.1:{}/",
        page.local_addr()?.port()
    );
    println!(
        "refused page: http://localhost:{}/",
        other.local_addr()?.port()
    );
    tokio::spawn(serve_page(page));
    tokio::spawn(serve_page(other));
    let (room, _) = broadcast::channel::<String>(256);
    loop {
        let (stream, _) = upstream.accept().await?;
        tokio::spawn(chat(stream, room.clone()));
    }
}

/// Listens on `addr`, or exits naming the address and the flag that moves it.
async fn bind(addr: SocketAddr, flag: &str) -> TcpListener {
    TcpListener::bind(addr).await.unwrap_or_else(|e| {
        eprintln!("chat: cannot listen on {addr}: {e}; choose another address with {flag}");
        std::process::exit(1)
    })
}

/// Answers every HTTP request on `listener` with the page.
async fn serve_page(listener: TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{PAGE}",
                PAGE.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// One chat member: announces who joined (with the Origin wsgate let through), then relays
/// each text message to everyone, this member included.
async fn chat(stream: TcpStream, room: broadcast::Sender<String>) {
    let mut origin = String::from("no origin");
    #[allow(clippy::result_large_err)] // the callback's type is tungstenite's
    let record = |req: &Request, resp: Response| {
        if let Some(o) = req.headers().get("origin").and_then(|v| v.to_str().ok()) {
            origin = o.to_owned();
        }
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
        return;
    };
    let (mut tx, mut rx) = ws.split();
    let mut heard = room.subscribe();
    let _ = room.send(system(&format!("someone joined from {origin}")));
    loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Text(text))) if text.len() <= MAX_MESSAGE => {
                    let _ = room.send(text.as_str().to_owned());
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            said = heard.recv() => match said {
                Ok(text) => if tx.send(Message::text(text)).await.is_err() { break },
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    let _ = room.send(system(&format!("someone from {origin} left")));
}

/// A message from the server itself, in the page's JSON shape.
fn system(text: &str) -> String {
    serde_json::json!({ "system": text }).to_string()
}
