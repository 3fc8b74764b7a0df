//! A WebSocket echo server to put behind wsgate: every text or binary message comes back,
//! and every handshake's Origin and forwarding headers are printed.
//!
//! Run with: `cargo run --example echo` (listens on 127.0.0.1:9001), or
//! `cargo run --example echo -- 127.0.0.1:9100` for another address.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    println!("echo upstream listening on ws://{addr}");
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            #[allow(clippy::result_large_err)] // the callback's type is tungstenite's
            let log = |req: &Request, resp: Response| {
                let h = |name| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                };
                println!(
                    "{peer}: {} origin={} x-forwarded-for={} x-forwarded-host={}",
                    req.uri(),
                    h("origin"),
                    h("x-forwarded-for"),
                    h("x-forwarded-host")
                );
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, log).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
    }
}
