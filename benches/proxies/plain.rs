//! Plain HTTP/1.1 for the `http-*` scenarios, as a Socket.IO long-polling client and server
//! exchange it: an upstream in this process (hyper, keep-alive) that answers a POST at once
//! and holds a GET until released, and a client on raw bytes (prebuilt requests, a response
//! parser that reads the head and a `Content-Length` body) that costs less per request than
//! the proxy under test.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::{ALLOWED, HOST};

/// The path prefix every contender routes to the HTTP upstream.
pub(crate) const PREFIX: &str = "/poll/";

/// The upstream's answer to every request: a Socket.IO message packet.
const REPLY: &[u8] = br#"42["chat",{"from":"upstream","text":"hello"}]"#;

/// What a client sends in one message: the size of a small Socket.IO chat message.
const MESSAGE_LEN: usize = 100;

/// The plain-HTTP upstream, and the long-polls it holds.
pub(crate) struct Upstream {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// GET requests waiting for [`Upstream::release`].
    held: Arc<AtomicUsize>,
    /// Counts releases; a held GET is answered when it changes.
    release: watch::Sender<u64>,
}

impl Upstream {
    /// Starts the upstream on a port of its own.
    pub(crate) async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind HTTP upstream");
        let addr = listener.local_addr().expect("addr");
        let held = Arc::new(AtomicUsize::new(0));
        let (release, released) = watch::channel(0);
        let state = (held.clone(), released);
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let (held, released) = state.clone();
                        tokio::spawn(async move {
                            let _ = stream.set_nodelay(true);
                            let service = hyper::service::service_fn(move |request| {
                                answer(request, held.clone(), released.clone())
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    // Out of descriptors, say: report it, and keep serving once some are free.
                    Err(e) => {
                        eprintln!("HTTP upstream: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Upstream {
            addr,
            held,
            release,
        }
    }

    /// Answers every GET held so far.
    fn release(&self) {
        self.release.send_modify(|n| *n += 1);
    }
}

/// Counts a held GET for as long as it is held, even if the proxy gives it up.
struct Holding(Arc<AtomicUsize>);

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A POST is read to its end and answered; a GET (a long-poll) waits for the next release.
async fn answer(
    request: Request<Incoming>,
    held: Arc<AtomicUsize>,
    mut released: watch::Receiver<u64>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() == Method::GET {
        // Only releases after this request arrived answer it.
        released.borrow_and_update();
        held.fetch_add(1, Ordering::Relaxed);
        let _holding = Holding(held);
        let _ = released.changed().await;
    } else {
        let _ = request.into_body().collect().await;
    }
    Ok(Response::builder()
        .header(http::header::CONTENT_TYPE, "text/plain; charset=UTF-8")
        .body(Full::new(Bytes::from_static(REPLY)))
        .expect("response"))
}

/// A Socket.IO-style POST of a 100-byte message from `origin`.
fn post(origin: &str) -> Vec<u8> {
    let mut request = format!(
        "POST {PREFIX}?EIO=4&transport=polling&sid=bench HTTP/1.1\r\nHost: {HOST}\r\nOrigin: {origin}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {MESSAGE_LEN}\r\n\r\n"
    )
    .into_bytes();
    request.extend_from_slice(&[b'x'; MESSAGE_LEN]);
    request
}

/// A Socket.IO-style long-poll GET from the allowed origin.
fn long_poll() -> Vec<u8> {
    format!(
        "GET {PREFIX}?EIO=4&transport=polling&sid=bench HTTP/1.1\r\nHost: {HOST}\r\nOrigin: {ALLOWED}\r\n\r\n"
    )
    .into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response with a `Content-Length` body into `buf` (the previous response is
/// read to its end, as nothing is pipelined); returns its status.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<u16> {
    buf.clear();
    let (head_end, body_len) = loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len().max(1024));
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(io::Error::other)?;
            let len = head
                .split("\r\n")
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .ok_or_else(|| io::Error::other("a response without Content-Length"))?;
            break (end + 4, len);
        }
    };
    let status = buf
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("no status line"))?;
    while buf.len() < head_end + body_len {
        buf.reserve(head_end + body_len - buf.len());
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    if buf.len() > head_end + body_len {
        return Err(io::Error::other("bytes behind the response"));
    }
    Ok(status)
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends one POST from `origin` on a new connection; the response's status.
async fn post_once(addr: SocketAddr, origin: &str) -> io::Result<u16> {
    let mut stream = connect(addr).await?;
    stream.write_all(&post(origin)).await?;
    read_response(&mut stream, &mut Vec::with_capacity(1024)).await
}

/// Sends a POST from the allowed origin and, through a proxy (`refuses`), one from another
/// origin: run once per proxy before anything is measured, so a setup that passes nothing,
/// or passes what it should refuse, fails loudly.
pub(crate) async fn check(addr: SocketAddr, refuses: bool) {
    let allowed = post_once(addr, ALLOWED).await;
    assert!(
        matches!(allowed, Ok(200)),
        "a POST through {addr} from the allowed origin: {allowed:?}, not 200"
    );
    if refuses {
        let denied = post_once(addr, "https://evil.example").await;
        assert!(
            matches!(denied, Ok(403)),
            "a POST through {addr} from another origin: {denied:?}, not 403"
        );
    }
}

/// `connections` clients, each sending POSTs one after the other on one kept-alive
/// connection (a new one if the proxy closes it) for `run`; returns requests answered.
pub(crate) async fn keep_alive(addr: SocketAddr, connections: usize, run: Duration) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let request: Arc<[u8]> = post(ALLOWED).into();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (stop, done, request) = (stop.clone(), done.clone(), request.clone());
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(1024);
                let mut answered = 0;
                'connections: while !stop.load(Ordering::Relaxed) {
                    let mut stream = connect(addr).await.expect("connect");
                    while !stop.load(Ordering::Relaxed) {
                        if stream.write_all(&request).await.is_err() {
                            continue 'connections;
                        }
                        match read_response(&mut stream, &mut buf).await {
                            Ok(200) => answered += 1,
                            Ok(status) => panic!("a POST through {addr}: {status}, not 200"),
                            Err(_) => continue 'connections,
                        }
                    }
                }
                done.fetch_add(answered, Ordering::Relaxed);
            })
        })
        .collect();
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("keep-alive client");
    }
    done.load(Ordering::Relaxed)
}

/// Sends `n` long-polls through `addr`, each on its own connection, 250 at a time, and
/// waits until the upstream holds them all.
pub(crate) async fn hold(addr: SocketAddr, n: usize, upstream: &Upstream) -> Vec<TcpStream> {
    let before = upstream.held.load(Ordering::Relaxed);
    let request = long_poll();
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let chunk = (all.len()..n.min(all.len() + 250)).map(|_| async {
            let mut stream = connect(addr).await?;
            stream.write_all(&request).await?;
            io::Result::Ok(stream)
        });
        for sent in futures_util::future::join_all(chunk).await {
            all.push(sent.unwrap_or_else(|e| {
                panic!("long-poll {} of {n} through {addr}: {e}", all.len() + 1)
            }));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while upstream.held.load(Ordering::Relaxed) < before + n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} long-polls through {addr} reached the upstream",
            upstream.held.load(Ordering::Relaxed) - before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    all
}

/// Has the upstream answer every held long-poll, and reads each answer through the proxy.
pub(crate) async fn release(upstream: &Upstream, mut held: Vec<TcpStream>) {
    upstream.release();
    let mut buf = Vec::with_capacity(1024);
    for stream in &mut held {
        let status = tokio::time::timeout(Duration::from_secs(10), read_response(stream, &mut buf))
            .await
            .expect("a released long-poll answered");
        assert!(
            matches!(status, Ok(200)),
            "a released long-poll: {status:?}, not 200"
        );
    }
}
