//! The frame relay: after both sides upgraded, copies bytes both ways while following frame
//! boundaries (so Close frames can be injected between frames), until either side closes.
//! No HTTP, no policy, no Kubernetes.
//!
//! Memory: a read buffer is borrowed from a small per-thread pool only while a read returns
//! data and until that data is written on; a read that is not ready gives it straight back.
//! An idle relay holds its two streams and two frame trackers, nothing else.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::frame::{FrameTracker, close_frame};

/// Size of a pooled read buffer.
const BUFFER_SIZE: usize = 16 * 1024;
/// Buffers kept per thread; more are freed, so a burst does not pin memory forever.
const POOL_LIMIT: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buffer() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice())
}

fn give_buffer(buf: Box<[u8]>) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_LIMIT {
            pool.push(buf);
        }
    });
}

/// Lets other tasks ask a relay to close its connection with a given code.
#[derive(Debug, Default)]
pub struct ConnControl {
    request: OnceLock<(u16, &'static str)>,
    waker: AtomicWaker,
}

impl ConnControl {
    /// A handle with no close requested.
    pub fn new() -> ConnControl {
        ConnControl::default()
    }

    /// Asks the relay to close both sides with `code` and `reason`; the first request wins.
    pub fn close(&self, code: u16, reason: &'static str) {
        let _ = self.request.set((code, reason));
        self.waker.wake();
    }

    /// The close code requested, if any.
    pub fn requested(&self) -> Option<u16> {
        self.request.get().map(|(code, _)| *code)
    }
}

/// Traffic of one direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes relayed (frames as they are on the wire).
    pub bytes: u64,
    /// Frames seen.
    pub frames: u64,
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client closed first (Close frame or end of stream).
    Client,
    /// The upstream closed first.
    Upstream,
    /// The gateway closed it with this code (revocation, shutdown).
    Gateway(u16),
    /// A read or write failed.
    Error,
}

impl Ended {
    /// Stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Ended::Client => "client",
            Ended::Upstream => "upstream",
            Ended::Gateway(1008) => "revoked",
            Ended::Gateway(1001) => "route_removed",
            Ended::Gateway(1012) => "shutdown",
            Ended::Gateway(_) => "gateway",
            Ended::Error => "error",
        }
    }
}

/// What a finished relay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    /// Client to upstream.
    pub client_to_upstream: Traffic,
    /// Upstream to client.
    pub upstream_to_client: Traffic,
    /// How it ended.
    pub ended: Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inject {
    No,
    /// Writing the Close frame; this many bytes are out.
    Writing(usize),
    Done,
}

/// One direction: reads frames from `src`, writes them to `dst`.
struct Half {
    /// Bytes read but not yet written: `buf[start..end]`.
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    tracker: FrameTracker,
    /// The injected Close frame goes out once the forwarded bytes reach this boundary.
    inject: Inject,
    /// After the injected Close: bytes are read and tracked, never forwarded.
    discard: bool,
    /// Frames written by `dst`'s peer need a mask (client to upstream).
    masked: bool,
    eof: bool,
    shut: bool,
    bytes: u64,
}

impl Half {
    fn new(masked: bool) -> Half {
        Half {
            buf: None,
            start: 0,
            end: 0,
            tracker: FrameTracker::default(),
            inject: Inject::No,
            discard: false,
            masked,
            eof: false,
            shut: false,
            bytes: 0,
        }
    }

    fn traffic(&self) -> Traffic {
        Traffic {
            bytes: self.bytes,
            frames: self.tracker.frames(),
        }
    }

    /// Whether this direction's peer has sent its Close or ended its stream.
    fn peer_closed(&self) -> bool {
        self.eof || self.tracker.close_seen()
    }

    /// Moves data until `src` ends (`Ready(Ok)`), an error, or nothing can move (`Pending`).
    fn poll_step<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        close: Option<(u16, &'static str, [u8; 4])>,
    ) -> Poll<io::Result<()>>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        loop {
            if let Some(buf) = &self.buf {
                while self.start < self.end {
                    let n = ready!(Pin::new(&mut *dst).poll_write(cx, &buf[self.start..self.end]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.start += n;
                    self.bytes += n as u64;
                }
                ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                if let Some(buf) = self.buf.take() {
                    give_buffer(buf);
                }
            }
            if let Some((code, reason, mask)) = close {
                if self.inject == Inject::No && !self.discard && self.tracker.at_boundary() {
                    self.inject = Inject::Writing(0);
                }
                if let Inject::Writing(mut written) = self.inject {
                    let (frame, len) = close_frame(code, reason, self.masked.then_some(mask));
                    while written < len {
                        let n = ready!(Pin::new(&mut *dst).poll_write(cx, &frame[written..len]))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        written += n;
                        self.inject = Inject::Writing(written);
                    }
                    ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                    self.inject = Inject::Done;
                    self.discard = true;
                }
            }
            if self.eof {
                if !self.shut {
                    // The peer may already be gone; shutting down is best effort.
                    let _ = ready!(Pin::new(&mut *dst).poll_shutdown(cx));
                    self.shut = true;
                }
                return Poll::Ready(Ok(()));
            }

            let mut buf = take_buffer();
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(&mut *src).poll_read(cx, &mut read) {
                Poll::Pending => {
                    give_buffer(buf);
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    give_buffer(buf);
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) => {}
            }
            let n = read.filled().len();
            if n == 0 {
                give_buffer(buf);
                self.eof = true;
                continue;
            }
            let mut forward = if self.discard { 0 } else { n };
            let mut pos = 0;
            while pos < n {
                let fed = self.tracker.feed(&buf[pos..n]);
                pos += fed.consumed;
                // With a close pending, forward only up to the first frame boundary; the
                // Close goes out there and the rest is dropped (but still tracked, to see
                // the peer's Close reply).
                if fed.boundary && close.is_some() && self.inject == Inject::No && !self.discard {
                    forward = pos;
                    self.inject = Inject::Writing(0);
                }
            }
            if forward == 0 {
                give_buffer(buf);
            } else {
                self.buf = Some(buf);
                self.start = 0;
                self.end = forward;
            }
        }
    }
}

/// The relay future: both directions, polled together in one task.
struct Relay<'a, C, U> {
    client: C,
    upstream: U,
    control: &'a ConnControl,
    c2u: Half,
    u2c: Half,
    c2u_done: bool,
    u2c_done: bool,
    linger: Duration,
    /// Set once the connection is closing: past it, both sides are dropped.
    deadline: Option<Pin<Box<Sleep>>>,
    first: Option<Ended>,
    mask: [u8; 4],
}

impl<C, U> Relay<'_, C, U> {
    fn stats(&self, ended: Ended) -> RelayStats {
        RelayStats {
            client_to_upstream: self.c2u.traffic(),
            upstream_to_client: self.u2c.traffic(),
            ended: self.first.unwrap_or(ended),
        }
    }

    fn start_linger(&mut self) {
        if self.deadline.is_none() {
            self.deadline = Some(Box::pin(tokio::time::sleep_until(
                Instant::now() + self.linger,
            )));
        }
    }
}

impl<C, U> Future for Relay<'_, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    type Output = RelayStats;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayStats> {
        let this = self.get_mut();
        this.control.waker.register(cx.waker());
        let close = this
            .control
            .request
            .get()
            .map(|(code, reason)| (*code, *reason, this.mask));
        if let Some((code, ..)) = close {
            this.first.get_or_insert(Ended::Gateway(code));
            this.start_linger();
        }

        if !this.c2u_done {
            match this
                .c2u
                .poll_step(cx, &mut this.client, &mut this.upstream, close)
            {
                Poll::Ready(Ok(())) => this.c2u_done = true,
                Poll::Ready(Err(_)) => return Poll::Ready(this.stats(Ended::Error)),
                Poll::Pending => {}
            }
        }
        if !this.u2c_done {
            match this
                .u2c
                .poll_step(cx, &mut this.upstream, &mut this.client, close)
            {
                Poll::Ready(Ok(())) => this.u2c_done = true,
                Poll::Ready(Err(_)) => return Poll::Ready(this.stats(Ended::Error)),
                Poll::Pending => {}
            }
        }
        if this.first.is_none() {
            if this.c2u.peer_closed() {
                this.first = Some(Ended::Client);
            } else if this.u2c.peer_closed() {
                this.first = Some(Ended::Upstream);
            }
        }
        if this.c2u_done && this.u2c_done {
            return Poll::Ready(this.stats(Ended::Error));
        }
        let injected_both = this.c2u.discard && this.u2c.discard;
        if injected_both && this.c2u.peer_closed() && this.u2c.peer_closed() {
            // Both peers answered the injected Close: nothing more is owed to either.
            return Poll::Ready(this.stats(Ended::Error));
        }
        if this.first.is_some() {
            this.start_linger();
        }
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(this.stats(Ended::Error));
        }
        Poll::Pending
    }
}

/// Relays frames between `client` and `upstream` until both directions end, an error, or
/// `close_linger` after either side (or `control`) started closing.
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    control: &ConnControl,
    close_linger: Duration,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    U: AsyncRead + AsyncWrite + Unpin + Send,
{
    Relay {
        client,
        upstream,
        control,
        c2u: Half::new(true),
        u2c: Half::new(false),
        c2u_done: false,
        u2c_done: false,
        linger: close_linger,
        deadline: None,
        first: None,
        mask: fastrand::u32(..).to_be_bytes(),
    }
    .await
}

/// For a handshake already answered with 101: sends a Close frame with `code` and `reason`
/// at once, waits up to `close_linger` for the client's Close reply (discarding anything
/// else), then shuts the connection down.
pub async fn reject_after_upgrade<C>(mut client: C, code: u16, reason: &str, close_linger: Duration)
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (frame, len) = close_frame(code, reason, None);
    if client.write_all(&frame[..len]).await.is_err() || client.flush().await.is_err() {
        return;
    }
    let drain = async {
        let mut tracker = FrameTracker::default();
        let mut buf = [0u8; 512];
        while !tracker.close_seen() {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let mut pos = 0;
                    while pos < n {
                        pos += tracker.feed(&buf[pos..n]).consumed;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(close_linger, drain).await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{DuplexStream, duplex};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

    use super::*;

    const LINGER: Duration = Duration::from_secs(2);

    struct Pair {
        client: WebSocketStream<DuplexStream>,
        upstream: WebSocketStream<DuplexStream>,
        control: Arc<ConnControl>,
        relay: tokio::task::JoinHandle<RelayStats>,
    }

    /// A client and an upstream, already upgraded, with a relay between them.
    async fn pair() -> Pair {
        let (client_io, gw_client) = duplex(64 * 1024);
        let (gw_upstream, upstream_io) = duplex(64 * 1024);
        let control = Arc::new(ConnControl::new());
        let c = control.clone();
        let relay = tokio::spawn(async move { relay(gw_client, gw_upstream, &c, LINGER).await });
        Pair {
            client: WebSocketStream::from_raw_socket(client_io, Role::Client, None).await,
            upstream: WebSocketStream::from_raw_socket(upstream_io, Role::Server, None).await,
            control,
            relay,
        }
    }

    async fn next_close(ws: &mut WebSocketStream<DuplexStream>) -> Option<CloseFrame> {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("expected a Close frame, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn messages_of_every_kind_pass_both_ways() {
        let mut p = pair().await;
        p.client.send(Message::text("hi")).await.expect("send");
        assert_eq!(
            p.upstream.next().await.expect("msg").expect("ok"),
            Message::text("hi")
        );
        let big = vec![9u8; 1 << 20];
        let (sent, got) = tokio::join!(
            p.upstream.send(Message::binary(big.clone())),
            p.client.next()
        );
        sent.expect("send");
        assert_eq!(got.expect("msg").expect("ok"), Message::binary(big));
        p.client
            .send(Message::Ping(vec![1, 2].into()))
            .await
            .expect("ping");
        // tungstenite answers pings itself; the pong comes back through the relay.
        assert_eq!(
            p.upstream.next().await.expect("msg").expect("ok"),
            Message::Ping(vec![1, 2].into())
        );
        p.upstream.flush().await.expect("flush pong");
        assert_eq!(
            p.client.next().await.expect("msg").expect("ok"),
            Message::Pong(vec![1, 2].into())
        );
    }

    #[tokio::test]
    async fn close_from_the_client_passes_through_with_its_code() {
        let mut p = pair().await;
        p.client
            .close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "bye".into(),
            }))
            .await
            .expect("close");
        let frame = next_close(&mut p.upstream).await.expect("frame");
        assert_eq!(
            (frame.code, frame.reason.as_str()),
            (CloseCode::Away, "bye")
        );
        // The upstream answers (tungstenite queues the reply; flushing sends it), the client
        // sees the reply and hangs up, and the relay ends on its own.
        p.upstream.flush().await.expect("reply");
        assert_eq!(
            next_close(&mut p.client).await.expect("reply").code,
            CloseCode::Away
        );
        drop(p.client);
        while p.upstream.next().await.is_some() {}
        let stats = p.relay.await.expect("relay");
        assert_eq!(stats.ended, Ended::Client);
        assert_eq!(stats.client_to_upstream.frames, 1);
    }

    #[tokio::test]
    async fn injected_close_reaches_both_sides_with_its_code() {
        let mut p = pair().await;
        p.control.close(1008, "origin not allowed");
        let to_client = next_close(&mut p.client).await.expect("frame");
        assert_eq!(u16::from(to_client.code), 1008);
        assert_eq!(to_client.reason.as_str(), "origin not allowed");
        let to_upstream = next_close(&mut p.upstream).await.expect("frame");
        assert_eq!(u16::from(to_upstream.code), 1008);
        let stats = p.relay.await.expect("relay");
        assert_eq!(stats.ended, Ended::Gateway(1008));
    }

    #[tokio::test]
    async fn injection_waits_for_the_frame_in_flight() {
        let (client_io, gw_client) = duplex(64 * 1024);
        let (gw_upstream, mut upstream_raw) = duplex(64 * 1024);
        let control = Arc::new(ConnControl::new());
        let c = control.clone();
        let relay = tokio::spawn(async move { relay(gw_client, gw_upstream, &c, LINGER).await });
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        // Half of a 10-byte text frame from the upstream, then the close request.
        upstream_raw
            .write_all(&[0x81, 10, b'h', b'e', b'l', b'l', b'o'])
            .await
            .expect("write");
        tokio::task::yield_now().await;
        control.close(1001, "route removed");
        upstream_raw.write_all(b"world").await.expect("write");
        assert_eq!(
            client.next().await.expect("msg").expect("ok"),
            Message::text("helloworld")
        );
        let frame = next_close(&mut client).await.expect("frame");
        assert_eq!(u16::from(frame.code), 1001);
        drop(upstream_raw);
        drop(client);
        assert_eq!(relay.await.expect("relay").ended, Ended::Gateway(1001));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peers_are_dropped_after_the_linger() {
        let (_client_io, gw_client) = duplex(1024);
        let (gw_upstream, _upstream_io) = duplex(1024);
        let control = ConnControl::new();
        control.close(1012, "service restart");
        // Nobody answers the Close: the relay gives up after the linger.
        let stats = relay(gw_client, gw_upstream, &control, LINGER).await;
        assert_eq!(stats.ended, Ended::Gateway(1012));
    }

    #[tokio::test]
    async fn reject_after_upgrade_sends_close_and_waits_for_the_reply() {
        let (client_io, gw_client) = duplex(1024);
        let task = tokio::spawn(reject_after_upgrade(
            gw_client,
            1008,
            "origin not allowed",
            LINGER,
        ));
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let frame = next_close(&mut client).await.expect("frame");
        assert_eq!(u16::from(frame.code), 1008);
        task.await.expect("task");
    }

    #[test]
    fn pool_keeps_at_most_its_limit() {
        let bufs: Vec<_> = (0..POOL_LIMIT + 10).map(|_| take_buffer()).collect();
        for b in bufs {
            give_buffer(b);
        }
        assert_eq!(POOL.with(|p| p.borrow().len()), POOL_LIMIT);
    }
}
