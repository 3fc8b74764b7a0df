//! A connection as the data plane sees it, on either side: a plain TCP socket, or TLS over
//! one (a client on the TLS listener, a `wss://` upstream). One type for both keeps the
//! handshake and the relay free of TLS.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::tls_server::TlsServer;

/// A plain or TLS connection.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS from a client on the TLS listener; boxed because TLS state is large and most
    /// connections are plain.
    Tls(Box<TlsServer>),
    /// TLS to a `wss://` upstream.
    UpstreamTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// One WebSocket of an HTTP/2 connection (an extended CONNECT stream, RFC 8441).
    Tunnel(Box<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>),
}

impl Stream {
    /// The SNI name a TLS client asked for.
    pub fn sni(&self) -> Option<&str> {
        match self {
            Stream::Tls(tls) => tls.server_name(),
            Stream::Plain(_) | Stream::UpstreamTls(_) | Stream::Tunnel(_) => None,
        }
    }

    /// Turns Nagle's algorithm off on a plain connection that is going to be served (TLS
    /// ones have it off from the start, for the handshake's flights). A refusal is one
    /// write before the close, which Nagle does not delay, so a refused connection is
    /// spared the system call.
    pub fn serve_promptly(&self) {
        if let Stream::Plain(tcp) = self {
            let _ = tcp.set_nodelay(true);
        }
    }

    /// Whether the TLS client chose HTTP/2 (ALPN `h2`).
    pub fn is_h2(&self) -> bool {
        match self {
            Stream::Tls(tls) => tls.alpn_protocol() == Some(b"h2"),
            _ => false,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Stream::UpstreamTls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Stream::Tunnel(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Stream::UpstreamTls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Stream::Tunnel(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            Stream::UpstreamTls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            Stream::Tunnel(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::UpstreamTls(s) => s.is_write_vectored(),
            Stream::Tunnel(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::UpstreamTls(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::Tunnel(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::UpstreamTls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::Tunnel(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
