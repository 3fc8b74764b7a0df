//! A client connection whose writes may wait for the client to read for a limited time
//! only (`--http-send-timeout`, as nginx's `send_timeout`): a client that stops reading a
//! response must not hold its connection, and the upstream's response, forever. Reads are
//! not limited here: hyper bounds the wait for a request head, and the route's timeouts
//! the wait for a request body and for the upstream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `io`, failing a write that has waited `limit` without any byte taken.
pub(super) struct WriteStall<T> {
    io: T,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
    /// A write is waiting: the deadline runs.
    stalled: bool,
}

impl<T> WriteStall<T> {
    /// `io`, whose writes may wait `limit`.
    pub(super) fn new(io: T, limit: Duration) -> WriteStall<T> {
        WriteStall {
            io,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
            stalled: false,
        }
    }

    /// What a write (or flush) returned: progress ends the stall; waiting starts one, or
    /// fails once it has lasted the limit.
    fn judge<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.stalled = false;
            return polled;
        }
        if !self.stalled {
            self.stalled = true;
            let deadline = Instant::now() + self.limit;
            self.deadline.as_mut().reset(deadline);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStall<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStall<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.judge(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.judge(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.judge(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_does_not_take_fails_after_the_limit_and_a_quiet_read_does_not() {
        let (mut client, server) = tokio::io::duplex(8);
        let mut conn = WriteStall::new(server, Duration::from_secs(60));
        // Nobody writes for longer than the limit: reading is not limited.
        let quiet = tokio::time::timeout(Duration::from_secs(120), conn.read_u8()).await;
        assert!(quiet.is_err(), "the read was still waiting");
        client.write_all(b"x").await.expect("write");
        assert_eq!(conn.read_u8().await.expect("read"), b'x');
        // The peer reads nothing: the buffer fills and the write waits, then fails.
        let started = Instant::now();
        let err = conn.write_all(&[0; 64]).await.expect_err("times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }
}
