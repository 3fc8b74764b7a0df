//! The load client: what each scenario does to a proxy.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;

use crate::wire;
use crate::{ALLOWED, HOST};

/// Concurrent clients in the handshake scenarios and connections in the throughput ones.
pub(crate) const CLIENTS: usize = 32;

/// Runs `clients` copies of `work` for `run`, each given its client's index; returns units
/// done. A panic in `work` (a failed check) fails the benchmark.
pub(crate) async fn run_for<F, Fut>(run: Duration, clients: usize, work: F) -> u64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let work = Arc::new(work);
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (stop, done, work) = (stop.clone(), done.clone(), work.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    done.fetch_add(work(client).await, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client task");
    }
    done.load(Ordering::Relaxed)
}

/// Opens a WebSocket from the allowed origin with a WebSocket library, as an application
/// would, then closes it; 1 on a 101.
pub(crate) async fn handshake(addr: SocketAddr) -> u64 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("request");
    let headers = request.headers_mut();
    headers.insert("host", HOST.parse().expect("host"));
    headers.insert("origin", ALLOWED.parse().expect("origin"));
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

/// Sends an upgrade request from a denied origin; 1 on a 403.
pub(crate) async fn denied(addr: SocketAddr) -> u64 {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return 0;
    };
    if stream
        .write_all(&wire::upgrade_request("https://evil.example"))
        .await
        .is_err()
    {
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

/// `n` WebSockets through the proxy at `addr`, opened 250 at a time, from `sources` in turn
/// (from the default address when empty).
pub(crate) async fn open_many(addr: SocketAddr, n: usize, sources: &[IpAddr]) -> Vec<TcpStream> {
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let start = all.len();
        let chunk = (start..n.min(start + 250)).map(|i| {
            let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
            wire::open(addr, source)
        });
        for opened in futures_util::future::join_all(chunk).await {
            let opened = opened.unwrap_or_else(|e| {
                panic!(
                    "WebSocket {} of {n} through {addr} failed: {e}",
                    all.len() + 1
                )
            });
            all.push(opened);
        }
    }
    all
}

/// Source addresses for many connections: several in 127.0.0.0/8, as clients behind
/// different addresses would be.
pub(crate) fn loopback_sources() -> Vec<IpAddr> {
    (2..=10)
        .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .collect()
}

/// Has each connection echo one `len`-byte message, so every buffer a relay uses has been
/// used once.
pub(crate) async fn echo_once<S: AsyncRead + AsyncWrite + Unpin>(conns: &mut [S], len: usize) {
    let frame = wire::client_frames(len, 1);
    let mut buf = vec![0u8; 64 * 1024];
    for chunk in conns.chunks_mut(250) {
        for stream in chunk.iter_mut() {
            stream.write_all(&frame).await.expect("send");
            // Over TLS, the last bytes may still wait in the TLS layer's buffer.
            stream.flush().await.expect("send");
        }
        for stream in chunk.iter_mut() {
            wire::read_exactly(stream, &mut buf, wire::echo_len(len))
                .await
                .expect("echo");
        }
    }
}

/// Streams `len`-byte messages on every connection (its read and write halves) for `run`,
/// each with at most `window` messages in flight, written a quarter of the window at a
/// time; returns messages echoed.
pub(crate) async fn stream<R, W>(
    conns: Vec<(R, W)>,
    len: usize,
    window: usize,
    run: Duration,
) -> u64
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let stop_at = tokio::time::Instant::now() + run;
    let batch = window.div_ceil(4);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(rd, wr)| tokio::spawn(stream_one(rd, wr, len, window, batch, stop_at)))
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("stream task");
    }
    total
}

async fn stream_one<R, W>(
    mut rd: R,
    mut wr: W,
    len: usize,
    window: usize,
    batch: usize,
    stop_at: tokio::time::Instant,
) -> u64
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // One permit per message the upstream has not echoed yet.
    let credit = Arc::new(Semaphore::new(window));
    let frames = wire::client_frames(len, batch);
    let writer = tokio::spawn({
        let credit = credit.clone();
        async move {
            while let Ok(Ok(permits)) =
                tokio::time::timeout_at(stop_at, credit.acquire_many(batch as u32)).await
            {
                permits.forget();
                // Over TLS, what the socket did not take waits in the TLS layer until
                // flushed.
                if wr.write_all(&frames).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
            }
        }
    });
    let echo = wire::echo_len(len) as u64;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut bytes, mut echoed) = (0u64, 0u64);
    while let Ok(Ok(n @ 1..)) = tokio::time::timeout_at(stop_at, rd.read(&mut buf)).await {
        bytes += n as u64;
        let now = bytes / echo;
        credit.add_permits((now - echoed) as usize);
        echoed = now;
    }
    writer.abort();
    echoed
}

/// Sends one 64-byte message per connection every `period` (the connections' start times
/// spread over one period) for `run`; returns every round-trip time, in µs.
pub(crate) async fn latency(conns: Vec<TcpStream>, period: Duration, run: Duration) -> Vec<u32> {
    let stop_at = Instant::now() + run;
    let n = conns.len() as u32;
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let offset = period * i as u32 / n;
            tokio::spawn(latency_one(conn, offset, period, stop_at))
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("latency task"));
    }
    all
}

async fn latency_one(
    mut conn: TcpStream,
    offset: Duration,
    period: Duration,
    stop_at: Instant,
) -> Vec<u32> {
    let frame = wire::client_frames(64, 1);
    let want = wire::echo_len(64);
    let mut buf = [0u8; 256];
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if Instant::now() >= stop_at {
            return samples;
        }
        let sent = Instant::now();
        conn.write_all(&frame).await.expect("send");
        wire::read_exactly(&mut conn, &mut buf, want)
            .await
            .expect("echo");
        samples.push(sent.elapsed().as_micros() as u32);
    }
}

/// Opens one WebSocket and echoes one message through the proxy at `addr`: run once per
/// proxy before anything is measured, so a broken setup fails loudly.
pub(crate) async fn check(addr: SocketAddr) {
    let mut conn = wire::open(addr, None)
        .await
        .unwrap_or_else(|e| panic!("no WebSocket through {addr}: {e}"));
    echo_once(std::slice::from_mut(&mut conn), 1024).await;
}
