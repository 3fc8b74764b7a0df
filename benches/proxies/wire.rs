//! WebSocket on raw bytes for the load client and the echo upstream: prebuilt masked client
//! frames, a handshake that leaves the socket to the caller, and an echo upstream that
//! answers a whole read with one write. Cheaper per message than a full WebSocket library,
//! so the client side's core saturates later than the proxy under test.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use wsgate::proxy::frame;

use crate::{ALLOWED, HOST};

/// The mask every client frame uses (any fixed key will do for a benchmark).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// An upgrade request for the benchmark's route, from `origin`.
pub(crate) fn upgrade_request(origin: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n"
    )
    .into_bytes()
}

/// Writes an unmasked frame's length field (RFC 6455 §5.2) in place, for the echo.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 126 {
        out.push(len as u8);
    } else if len <= 0xffff {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// `count` masked binary frames of `len` payload bytes each, back to back.
pub(crate) fn client_frames(len: usize, count: usize) -> Vec<u8> {
    frame::encode(0x82, &vec![b'x'; len], Some(MASK)).repeat(count)
}

/// Bytes of the upstream's unmasked echo of a `len`-byte message.
pub(crate) fn echo_len(len: usize) -> usize {
    let extended = match len {
        0..126 => 0,
        126..=0xffff => 2,
        _ => 8,
    };
    2 + extended + len
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Connects to `addr` (from `source` when given), with Nagle's algorithm off.
pub(crate) async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let stream = match source {
        Some(ip) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
        None => TcpStream::connect(addr).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects to `addr` (from `source` when given) and completes an allowed-origin handshake;
/// the socket is then the caller's, with nothing read beyond the 101 response.
pub(crate) async fn open(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let mut stream = connect(addr, source).await?;
    upgrade(&mut stream).await?;
    Ok(stream)
}

/// Completes an allowed-origin handshake on `stream` (plain or TLS), reading nothing beyond
/// the 101 response.
pub(crate) async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> io::Result<()> {
    stream.write_all(&upgrade_request(ALLOWED)).await?;
    // Over TLS, the request may still wait in the TLS layer's buffer.
    stream.flush().await?;
    let mut head = [0u8; 1024];
    let mut got = 0;
    loop {
        let n = stream.read(&mut head[got..]).await?;
        if n == 0 || got + n == head.len() {
            return Err(io::Error::other("no complete response head"));
        }
        got += n;
        if let Some(end) = find(&head[..got], b"\r\n\r\n") {
            if !head.starts_with(b"HTTP/1.1 101") {
                let status = head[..got]
                    .split(|&b| b == b'\r')
                    .next()
                    .unwrap_or_default();
                return Err(io::Error::other(format!(
                    "handshake refused: {}",
                    String::from_utf8_lossy(status)
                )));
            }
            if end + 4 != got {
                return Err(io::Error::other("bytes behind the 101 response"));
            }
            return Ok(());
        }
    }
}

/// Reads until `want` more bytes arrived.
pub(crate) async fn read_exactly<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    want: usize,
) -> io::Result<()> {
    let mut got = 0;
    while got < want {
        let room = (want - got).min(buf.len());
        let n = stream.read(&mut buf[..room]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(())
}

/// A WebSocket echo upstream in this process: text and binary frames come back unmasked,
/// pings as pongs, a Close is answered with a Close and the end of the connection.
pub(crate) async fn echo_upstream() -> SocketAddr {
    // A backlog deep enough for several gateways connecting at once (a listener's default
    // is 128 here).
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind upstream");
    let listener = socket.listen(4096).expect("listen");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(echo(stream));
                }
                // Out of descriptors, say: report it, and keep serving once some are free.
                Err(e) => {
                    eprintln!("echo upstream: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    addr
}

/// A complete frame at the start of `buf`: (header length, payload length, mask).
fn frame(buf: &[u8]) -> Option<(usize, usize, Option<[u8; 4]>)> {
    let b1 = *buf.get(1)?;
    let (mut at, len) = match b1 & 0x7f {
        126 => (
            4,
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            10,
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
        ),
        n => (2, n as usize),
    };
    let mask = if b1 & 0x80 != 0 {
        at += 4;
        Some(buf.get(at - 4..at)?.try_into().ok()?)
    } else {
        None
    };
    (buf.len() >= at + len).then_some((at, len, mask))
}

async fn echo(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut have = 0;
    let end = loop {
        let n = stream.read(&mut buf[have..]).await?;
        if n == 0 {
            return Ok(());
        }
        have += n;
        if let Some(end) = find(&buf[..have], b"\r\n\r\n") {
            break end + 4;
        }
        if have == buf.len() {
            return Err(io::Error::other("request head too large"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .ok_or_else(|| io::Error::other("no Sec-WebSocket-Key"))?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;
    buf.copy_within(end..have, 0);
    have -= end;
    let mut out = Vec::new();
    loop {
        let mut at = 0;
        let mut closing = false;
        while let Some((header, len, mask)) = frame(&buf[at..have]) {
            let b0 = buf[at];
            let opcode = b0 & 0x0f;
            // A ping is answered with a pong; everything else comes back as it was sent.
            out.push(if opcode == 9 { (b0 & 0xf0) | 10 } else { b0 });
            push_len(&mut out, len);
            let start = out.len();
            out.extend_from_slice(&buf[at + header..at + header + len]);
            if let Some(mask) = mask {
                for (i, b) in out[start..].iter_mut().enumerate() {
                    *b ^= mask[i & 3];
                }
            }
            at += header + len;
            if opcode == 8 {
                closing = true;
                break;
            }
        }
        buf.copy_within(at..have, 0);
        have -= at;
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if closing {
            return Ok(());
        }
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[have..]).await?;
        if n == 0 {
            return Ok(());
        }
        have += n;
    }
}
