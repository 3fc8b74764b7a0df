//! The HTTP/1.1 the gateway speaks on both sides of a WebSocket opening handshake: reading
//! one request or response head, looking up headers in the parsed head, writing heads, and
//! handing bytes that arrived after a head on to the relay. Only what one upgrade exchange
//! needs, over plain sockets: no keep-alive, no request bodies. Parsing is `httparse`'s (the
//! parser hyper uses); hyper's connection machinery around it cost about a quarter of the
//! gateway's CPU per handshake (README, "Beside nginx and HAProxy").

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Most headers a head may have (hyper's default too).
pub const MAX_HEADERS: usize = 100;

/// What the first read of a head is sized for; typical handshakes are 200–600 bytes.
const FIRST_READ: usize = 1024;

/// Why no complete head could be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// More bytes than the limit without the blank line that ends a head.
    #[error("head larger than {0} bytes")]
    TooLarge(usize),
    /// The peer closed before the head was complete.
    #[error("connection closed before a complete head")]
    Closed,
    /// The socket failed.
    #[error("reading the head: {0}")]
    Io(#[from] io::Error),
}

/// Reads from `io` into `buf` until `buf` holds a complete head (up to the blank line) and
/// returns the head's length; bytes after it are the next layer's. At most `max` bytes.
pub async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<usize, HeadError> {
    let mut scanned = 0;
    loop {
        if let Some(end) = head_end(buf, scanned) {
            return if end > max {
                Err(HeadError::TooLarge(max))
            } else {
                Ok(end)
            };
        }
        if buf.len() >= max {
            return Err(HeadError::TooLarge(max));
        }
        // The blank line may straddle two reads.
        scanned = buf.len().saturating_sub(3);
        buf.reserve(FIRST_READ.min(max + 1 - buf.len()));
        if io.read_buf(buf).await? == 0 {
            return Err(HeadError::Closed);
        }
    }
}

/// The end of a head in `buf` (just past its blank line, `\r\n\r\n` or a bare `\n\n` as
/// httparse accepts), looking at line feeds from `from` on.
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(p) = buf.get(at..)?.iter().position(|&b| b == b'\n') {
        let nl = at + p;
        match (buf.get(nl + 1), buf.get(nl + 2)) {
            (Some(b'\n'), _) => return Some(nl + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(nl + 3),
            _ => at = nl + 1,
        }
    }
    None
}

/// The headers of a parsed head, looked up by name case-insensitively, in arrival order.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a>(&'a [httparse::Header<'a>]);

impl<'a> crate::request::HeaderLookup<'a> for Headers<'a> {
    fn values(self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name)
    }
}

impl<'a> Headers<'a> {
    /// A view of the headers httparse filled in.
    pub fn new(headers: &'a [httparse::Header<'a>]) -> Headers<'a> {
        Headers(headers)
    }

    /// Every value of `name` (lowercase), in order.
    pub fn get_all(self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.0
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The first value of `name` (lowercase).
    pub fn get(self, name: &'static str) -> Option<&'a [u8]> {
        self.get_all(name).next()
    }

    /// Whether a header `name` holds `token` in its comma-separated list, ignoring case.
    pub fn has_token(self, name: &'static str, token: &str) -> bool {
        crate::request::has_token(self, name, token)
    }

    /// All headers as (name, value), in order.
    pub fn iter(self) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        self.0.iter().map(|h| (h.name, h.value))
    }

    /// Whether `name` describes the connection rather than the message (RFC 9110 §7.6.1):
    /// one of the standard hop-by-hop headers, or named by a `Connection` header (except
    /// `Host`, `Origin` and `Sec-WebSocket-*`). With
    /// `keep_framing`, `Transfer-Encoding` is kept: a body passed on unchanged needs it.
    pub fn is_hop_by_hop(self, name: &str, keep_framing: bool) -> bool {
        if HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            return true;
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return !keep_framing;
        }
        // Whatever `Connection` lists, the headers a WebSocket handshake is about go end to
        // end: `Connection: Upgrade, Origin` must not hide the Origin from the upstream.
        const END_TO_END: [&str; 7] = [
            "host",
            "origin",
            "sec-websocket-key",
            "sec-websocket-version",
            "sec-websocket-protocol",
            "sec-websocket-extensions",
            "sec-websocket-accept",
        ];
        if END_TO_END.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            return false;
        }
        self.has_token("connection", name)
    }
}

pub use crate::request::{absolute_form, split_target};

/// The headers that always describe the connection, not the message (RFC 9110 §7.6.1),
/// besides `Transfer-Encoding`.
pub const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Appends `name: value\r\n`.
pub fn put_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends a status line.
pub fn put_status(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa(u64::from(code), &mut [0; 20]));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The decimal digits of `n`, written into `buf`.
pub fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// A socket whose first reads return bytes that arrived after a head (a client's first
/// frames sent right behind its request, an upstream's right behind its 101), so the relay
/// sees every byte in order.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Option<Box<[u8]>>,
    io: S,
}

impl<S> Prefixed<S> {
    /// `io`, to be read after `prefix`.
    pub fn new(io: S, prefix: &[u8]) -> Prefixed<S> {
        Prefixed {
            prefix: (!prefix.is_empty()).then(|| prefix.into()),
            io,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(prefix) = self.prefix.take() {
            let n = prefix.len().min(buf.remaining());
            buf.put_slice(&prefix[..n]);
            if n < prefix.len() {
                self.prefix = Some(prefix[n..].into());
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Request headers from (name, value) pairs, as httparse would give them: for tests.
#[cfg(test)]
pub(crate) fn headers_from<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<httparse::Header<'a>> {
    pairs
        .iter()
        .map(|&(name, value)| httparse::Header {
            name,
            value: value.as_bytes(),
        })
        .collect()
}

#[cfg(test)]
mod tests;
