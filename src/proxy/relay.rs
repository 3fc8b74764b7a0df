//! The frame relay: once the WebSocket upgrade has succeeded on both sides, copies frames both
//! ways between the client and the upstream until either side closes, following RFC 6455
//! frame boundaries so a Close can be injected between frames, and checking each frame header
//! before any of the frame goes on (a header split across reads is held back until it is
//! complete). Owns bytes and frames only: no HTTP, no policy, no Kubernetes.
//!
//! One hand-written future polls both directions; nothing is spawned.
//!
//! Memory: a read buffer is borrowed from a small per-thread pool only for a read that returns
//! data, and kept only while those bytes wait for the other side to accept them; a read that
//! is not ready gives it straight back (nothing is written into a buffer then). An idle relay
//! holds its two streams, two frame trackers and a few flags, nothing else. No allocation per
//! frame: only a close that needs a timer allocates it, once.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::frame::{
    FrameTracker, MAX_HEADER, OPCODE_CLOSE, OPCODE_CONTINUATION, OPCODE_PONG, PING_PAYLOAD, Rules,
    Violation, apply_mask, close_frame, ping_frame,
};
use crate::route::Limits;

/// Size of a pooled read buffer.
pub const BUFFER_SIZE: usize = 16 * 1024;
/// Buffers kept per thread; more are freed, so a burst does not pin memory for good.
pub const POOL_LIMIT: usize = 64;
/// Reads one direction does in one poll before it lets other tasks run.
const READS_PER_POLL: usize = 32;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A read buffer from this thread's pool, or a new one.
fn take_buffer() -> Box<[u8]> {
    POOL.try_with(|p| p.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice())
}

/// Returns a buffer to this thread's pool, or frees it when the pool is full.
fn give_buffer(buf: Box<[u8]>) {
    let _ = POOL.try_with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_LIMIT {
            pool.push(buf);
        }
    });
}

/// Lets other tasks ask one relay to close its connection (policy revocation 1008, route
/// deletion 1001, gateway shutdown 1012). Shared as `Arc<ConnControl>`.
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
    /// Wakes the relay.
    pub fn close(&self, code: u16, reason: &'static str) {
        let _ = self.request.set((code, reason));
        self.waker.wake();
    }

    /// The close code requested, if any.
    pub fn requested(&self) -> Option<u16> {
        self.request.get().map(|&(code, _)| code)
    }

    /// The close code and reason requested, if any.
    pub fn request(&self) -> Option<(u16, &'static str)> {
        self.request.get().copied()
    }

    /// Resolves with the close code and reason once one is requested. One task at a time
    /// waits: the handshake until the upstream answers, then the relay.
    pub async fn requested_close(&self) -> (u16, &'static str) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            match self.request() {
                Some(request) => Poll::Ready(request),
                None => Poll::Pending,
            }
        })
        .await
    }
}

/// One end of the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The WebSocket client (browser), downstream of the gateway.
    Client,
    /// The backend the gateway connected to.
    Upstream,
}

impl Side {
    /// Stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

/// Traffic of one direction, as read from the sending side (frames discarded while the
/// gateway closes the connection are counted too).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes read, frame headers included.
    pub bytes: u64,
    /// Frames whose header was read.
    pub frames: u64,
    /// Whole data messages (text or binary), counted at their final frame's header.
    pub messages: u64,
    /// Status code of the first Close frame the sending side sent, if it carried one.
    pub close_code: Option<u16>,
    /// The sending side sent a Close frame (with a code or without).
    pub close_sent: bool,
}

/// How a relay ended: what happened first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client closed first: it sent a Close frame or ended its stream.
    Client,
    /// The upstream closed first: it sent a Close frame or ended its stream.
    Upstream,
    /// The gateway closed both sides with this code through [`ConnControl::close`].
    Injected(u16),
    /// A read from, or a write to, this side failed first.
    Error(Side, io::ErrorKind),
    /// This side sent a message over the route's `maxMessageBytes`: it got Close 1009, the
    /// other side 1001.
    MessageTooBig(Side),
    /// Neither side sent a data frame for the route's `idleTimeoutSeconds`: both got 1001.
    IdleTimeout,
    /// This side did not answer the gateway's Ping in time (route `heartbeat`).
    HeartbeatTimeout(Side),
    /// This side sent a frame RFC 6455 forbids (a [`Violation`]): it got Close 1002, the
    /// other side 1001, and the frame was not forwarded.
    ProtocolError(Side),
}

impl Ended {
    /// Stable label for metrics (`ended_by`) and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Ended::Client => "client",
            Ended::Upstream => "upstream",
            Ended::Injected(1008) => "revoked",
            Ended::Injected(1001) => "route_removed",
            Ended::Injected(1012) => "shutdown",
            Ended::Injected(_) => "gateway",
            Ended::Error(Side::Client, _) => "client_error",
            Ended::Error(Side::Upstream, _) => "upstream_error",
            Ended::MessageTooBig(Side::Client) => "client_message_too_big",
            Ended::MessageTooBig(Side::Upstream) => "upstream_message_too_big",
            Ended::IdleTimeout => "idle_timeout",
            Ended::HeartbeatTimeout(Side::Client) => "client_heartbeat_timeout",
            Ended::HeartbeatTimeout(Side::Upstream) => "upstream_heartbeat_timeout",
            Ended::ProtocolError(Side::Client) => "client_protocol_error",
            Ended::ProtocolError(Side::Upstream) => "upstream_protocol_error",
        }
    }
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Injected(code) => write!(f, "{} ({code})", self.label()),
            Ended::Error(_, kind) => write!(f, "{} ({kind})", self.label()),
            _ => f.write_str(self.label()),
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
    /// What ended it.
    pub ended: Ended,
    /// The close linger ran out: a side was dropped before finishing its closing handshake
    /// (or mid-frame).
    pub timed_out: bool,
}

/// A Close to write into one direction, with the mask key for a frame to the upstream.
#[derive(Debug, Clone, Copy)]
struct Injection {
    code: u16,
    reason: &'static str,
    mask: [u8; 4],
}

/// The gateway is closing the connection: what each side gets.
#[derive(Debug, Clone, Copy)]
struct Closing {
    to_client: (u16, &'static str),
    to_upstream: (u16, &'static str),
    /// RFC 6455 §5.3: a fresh, unpredictable masking key for the Close to the upstream.
    mask: [u8; 4],
}

impl Closing {
    fn new(to_client: (u16, &'static str), to_upstream: (u16, &'static str)) -> Closing {
        Closing {
            to_client,
            to_upstream,
            mask: fastrand::u32(..).to_ne_bytes(),
        }
    }

    /// The Close for the direction reading from `from` (it writes to the other side).
    fn injection(&self, from: Side) -> Injection {
        let (code, reason) = match from {
            Side::Client => self.to_upstream,
            Side::Upstream => self.to_client,
        };
        Injection {
            code,
            reason,
            mask: self.mask,
        }
    }
}

/// Progress of the Close frame injected into one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inject {
    /// Not yet at a frame boundary (or no close requested).
    Idle,
    /// Writing the Close frame; this many bytes are out.
    Writing(u8),
    /// Written.
    Sent,
    /// Not needed: this direction already carried its sender's Close, and an endpoint must
    /// not receive frames after a Close (RFC 6455 §5.5.1).
    Skipped,
}

/// Bytes read but not yet accepted by the destination: `buf[start..end]`.
struct Held {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

/// One direction: reads frames from one side, writes them to the other.
struct Half {
    /// The side this direction reads from.
    from: Side,
    tracker: FrameTracker,
    held: Option<Held>,
    inject: Inject,
    /// A close was requested and forwarding stopped at a frame boundary: from here on bytes
    /// are read and tracked (to see the sender's Close reply), never forwarded.
    cut: bool,
    /// A Close frame from the sender was forwarded.
    close_forwarded: bool,
    /// The route's largest message, if limited.
    max_message: Option<u64>,
    /// Bytes of the message in progress, across its continuation frames.
    message_len: u64,
    /// Messages whose final frame began.
    messages: u64,
    /// The sender went over `max_message`.
    too_big: bool,
    /// The sender broke the protocol with a frame, which was not forwarded.
    violation: Option<Violation>,
    /// A data frame (not Ping, Pong or Close) began since the relay last looked.
    data_seen: bool,
    /// A read returned data since the relay last looked (heartbeat: the sender is alive).
    heard: bool,
    /// A gateway Ping (payload, mask key) to write to the destination at the next frame
    /// boundary, and how many of its bytes are out.
    ping_out: Option<([u8; PING_PAYLOAD], [u8; 4])>,
    ping_done: u8,
    /// The payload of the gateway's unanswered Ping to the source: its Pong is taken out
    /// of the stream, never forwarded.
    expect_pong: Option<[u8; PING_PAYLOAD]>,
    /// That Pong arrived since the relay last looked.
    pong_seen: bool,
    /// Bytes were written since the destination was last flushed.
    need_flush: bool,
    /// The source ended (or failed).
    read_done: bool,
    /// Nothing more to do in this direction.
    finished: bool,
    error: Option<(Side, io::ErrorKind)>,
    bytes: u64,
}

impl Drop for Half {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            give_buffer(held.buf);
        }
    }
}

/// Writes `data[*written..]` to `dst`, advancing `written`.
fn poll_write_all<D: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    dst: &mut D,
    data: &[u8],
    written: &mut usize,
) -> Poll<io::Result<()>> {
    while *written < data.len() {
        match Pin::new(&mut *dst).poll_write(cx, &data[*written..]) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => *written += n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

impl Half {
    fn new(from: Side, max_message: Option<u64>, deflate: bool) -> Half {
        Half {
            from,
            tracker: FrameTracker::checked(Rules {
                from_client: from == Side::Client,
                deflate,
            }),
            held: None,
            inject: Inject::Idle,
            cut: false,
            close_forwarded: false,
            max_message,
            message_len: 0,
            messages: 0,
            too_big: false,
            violation: None,
            data_seen: false,
            heard: false,
            ping_out: None,
            ping_done: 0,
            expect_pong: None,
            pong_seen: false,
            need_flush: false,
            read_done: false,
            finished: false,
            error: None,
            bytes: 0,
        }
    }

    fn traffic(&self) -> Traffic {
        Traffic {
            bytes: self.bytes,
            frames: self.tracker.frames(),
            messages: self.messages,
            close_code: self.tracker.close_code(),
            close_sent: self.tracker.close_seen(),
        }
    }

    /// What this direction says about how the connection is ending, if anything.
    fn ended(&self) -> Option<Ended> {
        if let Some((side, kind)) = self.error {
            return Some(Ended::Error(side, kind));
        }
        (self.read_done || self.tracker.close_seen()).then_some(match self.from {
            Side::Client => Ended::Client,
            Side::Upstream => Ended::Upstream,
        })
    }

    /// The sender's Close frame has gone by whole (forwarded or, after an injected Close,
    /// discarded), and nothing of ours is left to write; or the direction is over.
    fn close_complete(&self, injecting: bool) -> bool {
        let injected = match self.inject {
            Inject::Writing(_) => false,
            Inject::Idle => !injecting,
            Inject::Sent | Inject::Skipped => true,
        };
        self.finished
            || (self.tracker.close_seen()
                && self.tracker.at_boundary()
                && self.held.is_none()
                && injected)
    }

    /// The destination failed: this direction is over.
    fn write_failed(&mut self, error: &io::Error) -> Poll<()> {
        self.error.get_or_insert((self.from.other(), error.kind()));
        if let Some(held) = self.held.take() {
            give_buffer(held.buf);
        }
        self.finished = true;
        Poll::Ready(())
    }

    /// Moves data until the direction is over (`Ready`) or nothing can move (`Pending`).
    fn poll_dir<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        injection: Option<Injection>,
    ) -> Poll<()>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        if self.finished {
            return Poll::Ready(());
        }
        for _ in 0..READS_PER_POLL {
            // 1. Bytes an earlier read left: written before anything else; the buffer goes
            //    back to the pool once they are out.
            if let Some(held) = &mut self.held {
                match poll_write_all(cx, dst, &held.buf[..held.end], &mut held.start) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return self.write_failed(&e),
                    Poll::Ready(Ok(())) => {}
                }
                if let Some(held) = self.held.take() {
                    give_buffer(held.buf);
                }
                self.need_flush = true;
            }

            // 2. A gateway Ping goes out at a frame boundary, unless the connection is
            //    closing; once begun, it is finished before anything else. Outside a payload
            //    the destination is between frames: a header not complete yet is withheld.
            if let Some((payload, key)) = self.ping_out
                && (self.ping_done > 0
                    || (injection.is_none() && !self.cut && self.tracker.remaining() == 0))
            {
                let mask = (self.from == Side::Client).then_some(key);
                let (frame, len) = ping_frame(payload, mask);
                let mut written = usize::from(self.ping_done);
                let step = poll_write_all(cx, dst, &frame[..len], &mut written);
                // `len` ≤ 14, so the count fits a byte.
                self.ping_done = written as u8;
                match step {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return self.write_failed(&e),
                    Poll::Ready(Ok(())) => {}
                }
                self.ping_out = None;
                self.ping_done = 0;
                self.need_flush = true;
            }

            // 3. A requested close goes out at the first frame boundary (never inside a
            //    frame): RFC 6455 §5.5.1, unmasked to the client, masked to the upstream
            //    (§5.3: every client-to-server frame is masked).
            if let Some(inj) = injection {
                if self.inject == Inject::Idle && (self.cut || self.tracker.remaining() == 0) {
                    self.cut = true;
                    self.inject = if self.close_forwarded {
                        Inject::Skipped
                    } else {
                        Inject::Writing(0)
                    };
                }
                if let Inject::Writing(done) = self.inject {
                    let mask = (self.from == Side::Client).then_some(inj.mask);
                    let (frame, len) = close_frame(inj.code, inj.reason, mask);
                    let mut written = usize::from(done);
                    let step = poll_write_all(cx, dst, &frame[..len], &mut written);
                    // `len` ≤ 131, so the count fits a byte.
                    self.inject = Inject::Writing(written as u8);
                    match step {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return self.write_failed(&e),
                        Poll::Ready(Ok(())) => {}
                    }
                    tracing::trace!(
                        to = self.from.other().label(),
                        code = inj.code,
                        "close sent"
                    );
                    self.inject = Inject::Sent;
                    self.need_flush = true;
                }
            }

            // 4. The source ended: pass that on by shutting down the destination's write
            //    half (best effort: it may be gone already).
            if self.read_done {
                if Pin::new(&mut *dst).poll_shutdown(cx).is_pending() {
                    return Poll::Pending;
                }
                self.finished = true;
                return Poll::Ready(());
            }

            // 5. Read. A read that is not ready writes nothing into the buffer (AsyncRead
            //    contract), so the buffer goes straight back to the pool. The read lands
            //    after room for the start of a header withheld from the last read.
            let mut buf = take_buffer();
            let mut read = ReadBuf::new(&mut buf[MAX_HEADER..]);
            match Pin::new(&mut *src).poll_read(cx, &mut read) {
                Poll::Pending => {
                    give_buffer(buf);
                    if self.need_flush {
                        match Pin::new(&mut *dst).poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.need_flush = false,
                            Poll::Ready(Err(e)) => return self.write_failed(&e),
                            Poll::Pending => {}
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    give_buffer(buf);
                    self.error.get_or_insert((self.from, e.kind()));
                    self.read_done = true;
                    continue;
                }
                Poll::Ready(Ok(())) => {}
            }
            let n = read.filled().len();
            if n == 0 {
                give_buffer(buf);
                self.read_done = true;
                continue;
            }
            self.bytes += n as u64;
            self.heard = true;
            let carried = self.tracker.partial_header();
            let start = MAX_HEADER - carried;
            buf[start..MAX_HEADER].copy_from_slice(self.tracker.partial_bytes());
            let forward = self.track(
                &mut buf[MAX_HEADER..MAX_HEADER + n],
                carried,
                injection.is_some(),
            );
            if forward == 0 {
                give_buffer(buf);
            } else {
                self.held = Some(Held {
                    buf,
                    start,
                    end: start + forward,
                });
            }
        }
        // Data keeps coming: let other tasks run, then carry on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Walks the frames in `data` (RFC 6455 §5.2) and returns how many bytes to forward of
    /// the `carried` bytes of a header withheld from the last read followed by `data`: all
    /// of them, or with a close requested, those up to the end of the frame in progress (the
    /// rest is only tracked). A header not complete at the end of `data` is withheld until
    /// it is, so that no part of a frame goes out before its header is checked.
    ///
    /// A data frame that takes its message over the limit is not forwarded at all: the
    /// direction is cut where its header began, and `too_big` set. So is a frame that breaks
    /// the protocol, with `violation` set. The Pong answering the gateway's own Ping is taken
    /// out of `data` (the bytes after it move up), so the other side never sees it.
    fn track(&mut self, data: &mut [u8], carried: usize, closing: bool) -> usize {
        let mut len = data.len();
        let mut cut_at = self.cut.then_some(0);
        let mut pos = 0;
        while pos < len {
            let start = pos;
            let earlier = self.tracker.partial_header();
            let fed = self.tracker.feed(&data[pos..len]);
            pos += fed.consumed;
            if fed.header {
                let header = self.tracker.current();
                if cut_at.is_none()
                    && let Some(violation) = self.tracker.violation()
                {
                    self.violation = Some(violation);
                    self.cut = true;
                    cut_at = Some(start);
                    continue;
                }
                if earlier == 0 && self.is_our_pong(&data[pos..len]) {
                    let end = pos + PING_PAYLOAD;
                    self.tracker.feed(&data[pos..end]);
                    self.expect_pong = None;
                    self.pong_seen = true;
                    if cut_at.is_none() {
                        data.copy_within(end..len, start);
                        len -= end - start;
                        pos = start;
                    } else {
                        pos = end;
                    }
                    continue;
                }
                if !header.is_control() {
                    self.data_seen = true;
                    self.messages += u64::from(header.fin);
                    // §5.4: a message is its first frame plus the continuations after it.
                    self.message_len = if header.opcode == OPCODE_CONTINUATION {
                        self.message_len.saturating_add(header.payload_len)
                    } else {
                        header.payload_len
                    };
                    if cut_at.is_none()
                        && self.max_message.is_some_and(|max| self.message_len > max)
                    {
                        self.too_big = true;
                        self.cut = true;
                        cut_at = Some(start);
                    }
                }
                if cut_at.is_none() && header.opcode == OPCODE_CLOSE {
                    self.close_forwarded = true;
                }
            }
            if fed.boundary && closing && cut_at.is_none() {
                cut_at = Some(pos);
                self.cut = true;
            }
        }
        match cut_at {
            // Cut before anything of this read, or where a header carried over begins.
            Some(0) => 0,
            Some(at) => carried + at,
            None => carried + len - self.tracker.partial_header(),
        }
    }

    /// Whether the frame whose header was just read is the Pong to the gateway's Ping, with
    /// its whole payload at the start of `rest`. A Pong split across reads is forwarded
    /// (RFC 6455 §5.5.3 allows an unsolicited Pong) and the Ping counts as unanswered.
    fn is_our_pong(&self, rest: &[u8]) -> bool {
        let header = self.tracker.current();
        let Some(expected) = self.expect_pong else {
            return false;
        };
        if header.opcode != OPCODE_PONG
            || header.payload_len != PING_PAYLOAD as u64
            || rest.len() < PING_PAYLOAD
        {
            return false;
        }
        let mut payload = [0u8; PING_PAYLOAD];
        payload.copy_from_slice(&rest[..PING_PAYLOAD]);
        apply_mask(&mut payload, header.mask);
        payload == expected
    }
}

/// The relay future: both directions, polled together in one task.
pub struct Relay<C, U> {
    client: C,
    upstream: U,
    control: Arc<ConnControl>,
    c2u: Half,
    u2c: Half,
    /// Set once the gateway closes the connection (asked through `control`, or a limit).
    closing: Option<Closing>,
    first: Option<Ended>,
    linger: Duration,
    /// Armed when the connection starts closing: past it, both sides are dropped.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The route's idle timeout, if any, and when a data frame last began either way.
    idle: Option<Duration>,
    last_data: Instant,
    /// Fires at `last_data + idle` (moved on lazily, not per frame); allocated only when
    /// the route has an idle timeout.
    idle_timer: Option<Pin<Box<Sleep>>>,
    /// The route's heartbeat; allocated only when it has one.
    heartbeat: Option<Box<Heartbeat>>,
}

/// Heartbeat state of one connection.
struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    /// Client, then upstream.
    sides: [Beat; 2],
    /// Fires at the next interval or timeout of either side.
    timer: Pin<Box<Sleep>>,
}

/// Heartbeat state of one side.
#[derive(Clone, Copy)]
struct Beat {
    /// When a read from this side last returned data.
    last_heard: Instant,
    /// When the unanswered Ping to it went out.
    ping_sent: Option<Instant>,
    /// Pings sent so far (part of each Ping's payload).
    pings: u32,
}

impl Heartbeat {
    fn new((interval, timeout): (Duration, Duration)) -> Heartbeat {
        let now = Instant::now();
        let beat = Beat {
            last_heard: now,
            ping_sent: None,
            pings: 0,
        };
        Heartbeat {
            interval,
            timeout,
            sides: [beat; 2],
            timer: Box::pin(tokio::time::sleep_until(now + interval)),
        }
    }
}

impl<C, U> Relay<C, U> {
    fn new(
        client: C,
        upstream: U,
        control: Arc<ConnControl>,
        linger: Duration,
        limits: Limits,
        deflate: bool,
    ) -> Self {
        Relay {
            client,
            upstream,
            control,
            c2u: Half::new(Side::Client, limits.max_message_bytes, deflate),
            u2c: Half::new(Side::Upstream, limits.max_message_bytes, deflate),
            closing: None,
            first: None,
            linger,
            deadline: None,
            idle: limits.idle_timeout,
            last_data: Instant::now(),
            idle_timer: None,
            heartbeat: limits.heartbeat.map(|h| Box::new(Heartbeat::new(h))),
        }
    }

    fn stats(&self, timed_out: bool) -> RelayStats {
        RelayStats {
            client_to_upstream: self.c2u.traffic(),
            upstream_to_client: self.u2c.traffic(),
            ended: self
                .first
                .or_else(|| self.c2u.ended())
                .or_else(|| self.u2c.ended())
                .unwrap_or(Ended::Client),
            timed_out,
        }
    }

    /// Starts the gateway's close: each side gets its Close at its next frame boundary.
    fn close(&mut self, closing: Closing, why: Ended, cx: &mut Context<'_>) {
        self.closing = Some(closing);
        self.first.get_or_insert(why);
        // The halves learn of it on the next poll.
        cx.waker().wake_by_ref();
    }

    /// Heartbeats: notes who was heard and which Pong came back, asks for a Ping to a side
    /// silent for the interval, and returns a side whose Ping went unanswered too long.
    fn beat(&mut self, cx: &mut Context<'_>) -> Option<Side> {
        let hb = self.heartbeat.as_deref_mut()?;
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for (i, side) in [Side::Client, Side::Upstream].into_iter().enumerate() {
            // The half reading from this side sees its Pong; the other one writes its Ping.
            let (reader, writer) = match side {
                Side::Client => (&mut self.c2u, &mut self.u2c),
                Side::Upstream => (&mut self.u2c, &mut self.c2u),
            };
            let beat = &mut hb.sides[i];
            if std::mem::take(&mut reader.heard) {
                beat.last_heard = now;
            }
            if std::mem::take(&mut reader.pong_seen) {
                beat.ping_sent = None;
            }
            let due = match beat.ping_sent {
                Some(sent) if now >= sent + hb.timeout => return Some(side),
                Some(sent) => sent + hb.timeout,
                None if now >= beat.last_heard + hb.interval => {
                    beat.pings = beat.pings.wrapping_add(1);
                    let mut payload = *b"wsgt\0\0\0\0";
                    payload[4..].copy_from_slice(&beat.pings.to_be_bytes());
                    // RFC 6455 §5.3: a fresh masking key (used only toward the upstream).
                    writer.ping_out = Some((payload, fastrand::u32(..).to_ne_bytes()));
                    reader.expect_pong = Some(payload);
                    beat.ping_sent = Some(now);
                    // The writing half sends it on the next poll.
                    cx.waker().wake_by_ref();
                    now + hb.timeout
                }
                None => beat.last_heard + hb.interval,
            };
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        if let Some(due) = next {
            if hb.timer.deadline() != due {
                hb.timer.as_mut().reset(due);
            }
            if hb.timer.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        None
    }

    /// Whether the idle timeout has passed; keeps the timer aimed at the current deadline.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(idle) = self.idle else {
            return false;
        };
        let due = self.last_data + idle;
        let timer = self
            .idle_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

impl<C, U> Future for Relay<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    type Output = RelayStats;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayStats> {
        let this = self.get_mut();
        if this.closing.is_none() {
            this.control.waker.register(cx.waker());
            if let Some(request) = this.control.request() {
                this.closing = Some(Closing::new(request, request));
                this.first.get_or_insert(Ended::Injected(request.0));
            }
        }
        let closing = this.closing;
        let c2u = this.c2u.poll_dir(
            cx,
            &mut this.client,
            &mut this.upstream,
            closing.map(|c| c.injection(Side::Client)),
        );
        let u2c = this.u2c.poll_dir(
            cx,
            &mut this.upstream,
            &mut this.client,
            closing.map(|c| c.injection(Side::Upstream)),
        );
        if this.c2u.data_seen || this.u2c.data_seen {
            this.c2u.data_seen = false;
            this.u2c.data_seen = false;
            if this.idle.is_some() {
                this.last_data = Instant::now();
            }
        }
        if this.closing.is_none() {
            const TOO_BIG: (u16, &str) = (1009, "message too big");
            const GOING_AWAY: (u16, &str) = (1001, "going away");
            const IDLE: (u16, &str) = (1001, "idle timeout");
            const PROTOCOL: (u16, &str) = (1002, "protocol error");
            let violation = this
                .c2u
                .violation
                .map(|v| (Side::Client, v))
                .or_else(|| this.u2c.violation.map(|v| (Side::Upstream, v)));
            if let Some((side, violation)) = violation {
                tracing::debug!(side = side.label(), %violation, "protocol error");
                let closing = match side {
                    Side::Client => Closing::new(PROTOCOL, GOING_AWAY),
                    Side::Upstream => Closing::new(GOING_AWAY, PROTOCOL),
                };
                this.close(closing, Ended::ProtocolError(side), cx);
            } else if this.c2u.too_big {
                let why = Ended::MessageTooBig(Side::Client);
                this.close(Closing::new(TOO_BIG, GOING_AWAY), why, cx);
            } else if this.u2c.too_big {
                let why = Ended::MessageTooBig(Side::Upstream);
                this.close(Closing::new(GOING_AWAY, TOO_BIG), why, cx);
            } else if this.idle_expired(cx) {
                this.close(Closing::new(IDLE, IDLE), Ended::IdleTimeout, cx);
            } else if let Some(dead) = this.beat(cx) {
                const NO_PONG: (u16, &str) = (1001, "ping timeout");
                let closing = match dead {
                    Side::Client => Closing::new(NO_PONG, GOING_AWAY),
                    Side::Upstream => Closing::new((1011, "upstream not responding"), NO_PONG),
                };
                this.close(closing, Ended::HeartbeatTimeout(dead), cx);
            }
        }
        if this.first.is_none() {
            this.first = this.c2u.ended().or_else(|| this.u2c.ended());
        }
        if c2u.is_ready() && u2c.is_ready() {
            return Poll::Ready(this.stats(false));
        }

        let injecting = closing.is_some();
        if this.c2u.close_complete(injecting) && this.u2c.close_complete(injecting) {
            // Both Close frames have gone by (RFC 6455 §5.5.1, §7.1.1): the WebSocket is
            // closed. Dropping the sockets closes them, each with a FIN after what was
            // written; shutting them down first would only cost two more system calls.
            return Poll::Ready(this.stats(false));
        }

        if this.first.is_some() {
            let linger = this.linger;
            let deadline = this
                .deadline
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(linger)));
            if deadline.as_mut().poll(cx).is_ready() {
                tracing::debug!(
                    ended = %this.first.unwrap_or(Ended::Client),
                    "close linger ran out; dropping both sides"
                );
                return Poll::Ready(this.stats(true));
            }
        }
        Poll::Pending
    }
}

/// Relays frames between `client` and `upstream` (both already upgraded) until both
/// directions end or both Close frames have gone by; at most `close_linger` after either
/// side sent a Close, ended its stream or failed, `control` asked for a close, a limit
/// of `limits` was reached, or a side broke the protocol. `deflate`: the handshake
/// negotiated `permessage-deflate`, so RSV1 may mark a message's first frame.
///
/// It returns the hand-written future itself, which is smaller per connection than an
/// `async fn` wrapping it and can be held in another hand-written future.
pub fn relay<C, U>(
    client: C,
    upstream: U,
    control: Arc<ConnControl>,
    close_linger: Duration,
    limits: Limits,
    deflate: bool,
) -> Relay<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    U: AsyncRead + AsyncWrite + Unpin + Send,
{
    Relay::new(client, upstream, control, close_linger, limits, deflate)
}

/// For a handshake already answered with 101: sends a Close frame with `code` and `reason`
/// at once (RFC 6455 §5.5.1), waits up to `close_linger` for the client's Close reply
/// (discarding anything else), then shuts the connection down.
pub async fn reject_after_upgrade<C>(mut client: C, code: u16, reason: &str, close_linger: Duration)
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    let deadline = Instant::now() + close_linger;
    let (frame, len) = close_frame(code, reason, None);
    let handshake = async {
        client.write_all(&frame[..len]).await?;
        client.flush().await?;
        let mut tracker = FrameTracker::new();
        let mut buf = [0u8; 512];
        while !(tracker.close_seen() && tracker.at_boundary()) {
            let n = client.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            let mut pos = 0;
            while pos < n {
                pos += tracker.feed(&buf[pos..n]).consumed;
            }
        }
        io::Result::Ok(())
    };
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(())) => {
            let _ = tokio::time::timeout_at(deadline, client.shutdown()).await;
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "closing after upgrade failed"),
        Err(_) => tracing::debug!("client did not answer the Close in time"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Waker;

    use futures_util::{FutureExt, SinkExt, StreamExt};
    use tokio::io::{DuplexStream, duplex};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

    use super::*;

    const LINGER: Duration = Duration::from_secs(2);

    type Ws<S> = WebSocketStream<S>;

    struct Pair<S> {
        client: Ws<S>,
        upstream: Ws<S>,
        control: Arc<ConnControl>,
        relay: tokio::task::JoinHandle<RelayStats>,
    }

    fn spawn_relay<S>(
        gw_client: S,
        gw_upstream: S,
        limits: Limits,
    ) -> (Arc<ConnControl>, tokio::task::JoinHandle<RelayStats>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let control = Arc::new(ConnControl::new());
        let c = control.clone();
        let task =
            tokio::spawn(
                async move { relay(gw_client, gw_upstream, c, LINGER, limits, false).await },
            );
        (control, task)
    }

    /// A tungstenite client and server, already upgraded, with a relay between them.
    async fn pair() -> Pair<DuplexStream> {
        limited_pair(Limits::default()).await
    }

    /// The same, with the relay enforcing `limits`.
    async fn limited_pair(limits: Limits) -> Pair<DuplexStream> {
        let (client_io, gw_client) = duplex(64 * 1024);
        let (gw_upstream, upstream_io) = duplex(64 * 1024);
        let (control, relay) = spawn_relay(gw_client, gw_upstream, limits);
        Pair {
            client: WebSocketStream::from_raw_socket(client_io, Role::Client, None).await,
            upstream: WebSocketStream::from_raw_socket(upstream_io, Role::Server, None).await,
            control,
            relay,
        }
    }

    /// The same over loopback TCP.
    async fn tcp_pair() -> Pair<TcpStream> {
        async fn connected() -> (TcpStream, TcpStream) {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
            (a.expect("connect"), b.expect("accept").0)
        }
        let (client_io, gw_client) = connected().await;
        let (gw_upstream, upstream_io) = connected().await;
        let (control, relay) = spawn_relay(gw_client, gw_upstream, Limits::default());
        Pair {
            client: WebSocketStream::from_raw_socket(client_io, Role::Client, None).await,
            upstream: WebSocketStream::from_raw_socket(upstream_io, Role::Server, None).await,
            control,
            relay,
        }
    }

    async fn next_msg<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> Message {
        ws.next().await.expect("a message").expect("no error")
    }

    /// Reads until the connection ends (the Close reply goes out on the way); the Close
    /// frame seen, if any.
    async fn drain<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> Option<(u16, String)> {
        let mut close = None;
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(f) = msg {
                close = Some(f.map_or((1005, String::new()), |f| {
                    (f.code.into(), f.reason.to_string())
                }));
            }
        }
        close
    }

    async fn both_ways<S: AsyncRead + AsyncWrite + Unpin>(p: &mut Pair<S>) {
        p.client.send(Message::text("hi")).await.expect("send");
        assert_eq!(next_msg(&mut p.upstream).await, Message::text("hi"));
        p.upstream.send(Message::text("hello")).await.expect("send");
        assert_eq!(next_msg(&mut p.client).await, Message::text("hello"));
        p.client
            .send(Message::binary(vec![0u8, 1, 2, 255]))
            .await
            .expect("send");
        assert_eq!(
            next_msg(&mut p.upstream).await,
            Message::binary(vec![0u8, 1, 2, 255])
        );
        p.upstream
            .send(Message::binary(vec![7u8; 200]))
            .await
            .expect("send");
        assert_eq!(
            next_msg(&mut p.client).await,
            Message::binary(vec![7u8; 200])
        );
    }

    #[tokio::test]
    async fn text_and_binary_pass_both_ways() {
        let mut p = pair().await;
        both_ways(&mut p).await;
        drop(p.client);
        drop(p.upstream);
        let stats = p.relay.await.expect("relay");
        assert_eq!(stats.client_to_upstream.frames, 2);
        assert_eq!(stats.upstream_to_client.frames, 2);
        // Masked client frames: 6-byte headers; unmasked 200-byte server frame: 4 bytes.
        assert_eq!(stats.client_to_upstream.bytes, (6 + 2) + (6 + 4));
        assert_eq!(stats.upstream_to_client.bytes, (2 + 5) + (4 + 200));
    }

    #[tokio::test]
    async fn messages_pass_over_tcp_and_a_client_close_ends_it() {
        let mut p = tcp_pair().await;
        both_ways(&mut p).await;
        p.client.close(None).await.expect("close");
        let (up, cl) = tokio::join!(drain(&mut p.upstream), drain(&mut p.client));
        assert_eq!(up.map(|c| c.0), Some(1005));
        assert_eq!(cl.map(|c| c.0), Some(1005));
        let stats = p.relay.await.expect("relay");
        assert_eq!((stats.ended, stats.timed_out), (Ended::Client, false));
    }

    #[tokio::test]
    async fn fragmented_messages_pass_whole() {
        let mut p = pair().await;
        // RFC 6455 §5.4: fragments, with a control frame between them.
        for frame in [
            Frame::message("hel", OpCode::Data(Data::Text), false),
            Frame::message("lo ", OpCode::Data(Data::Continue), false),
            Frame::ping(vec![9u8]),
            Frame::message("world", OpCode::Data(Data::Continue), true),
        ] {
            p.client.send(Message::Frame(frame)).await.expect("send");
        }
        assert_eq!(
            next_msg(&mut p.upstream).await,
            Message::Ping(vec![9u8].into())
        );
        assert_eq!(
            next_msg(&mut p.upstream).await,
            Message::text("hello world")
        );
        for frame in [
            Frame::message(vec![1u8; 100], OpCode::Data(Data::Binary), false),
            Frame::message(vec![2u8; 70_000], OpCode::Data(Data::Continue), true),
        ] {
            p.upstream.send(Message::Frame(frame)).await.expect("send");
        }
        let mut expected = vec![1u8; 100];
        expected.extend(vec![2u8; 70_000]);
        // The client also gets the upstream's Pong (sent on the upstream's next write).
        loop {
            match next_msg(&mut p.client).await {
                Message::Pong(_) => continue,
                m => {
                    assert_eq!(m, Message::binary(expected));
                    break;
                }
            }
        }
        drop(p.client);
        drop(p.upstream);
        let stats = p.relay.await.expect("relay");
        assert_eq!(stats.client_to_upstream.frames, 4);
        assert_eq!(stats.client_to_upstream.messages, 1);
        assert_eq!(stats.upstream_to_client.messages, 1);
    }

    #[tokio::test]
    async fn a_one_mib_message_passes_both_ways() {
        let mut p = pair().await;
        let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let (sent, got) = tokio::join!(
            p.client.send(Message::binary(big.clone())),
            p.upstream.next()
        );
        sent.expect("send");
        assert_eq!(got.expect("msg").expect("ok"), Message::binary(big.clone()));
        let (sent, got) = tokio::join!(
            p.upstream.send(Message::binary(big.clone())),
            p.client.next()
        );
        sent.expect("send");
        assert_eq!(got.expect("msg").expect("ok"), Message::binary(big));
    }

    #[tokio::test]
    async fn ping_and_pong_pass() {
        let mut p = pair().await;
        p.client
            .send(Message::Ping(vec![1, 2].into()))
            .await
            .expect("ping");
        assert_eq!(
            next_msg(&mut p.upstream).await,
            Message::Ping(vec![1, 2].into())
        );
        // tungstenite queues the Pong; flushing sends it back through the relay.
        p.upstream.flush().await.expect("pong");
        assert_eq!(
            next_msg(&mut p.client).await,
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
        let (up, cl) = tokio::join!(drain(&mut p.upstream), drain(&mut p.client));
        assert_eq!(up, Some((1001, "bye".to_owned())));
        // tungstenite's reply echoes the code.
        assert_eq!(cl.map(|c| c.0), Some(1001));
        let stats = p.relay.await.expect("relay");
        assert_eq!((stats.ended, stats.timed_out), (Ended::Client, false));
        assert_eq!(stats.client_to_upstream.close_code, Some(1001));
        assert_eq!(stats.upstream_to_client.close_code, Some(1001));
    }

    #[tokio::test]
    async fn close_from_the_upstream_passes_through_with_its_code() {
        let mut p = pair().await;
        p.upstream
            .close(Some(CloseFrame {
                code: CloseCode::Restart,
                reason: "redeploy".into(),
            }))
            .await
            .expect("close");
        let (cl, up) = tokio::join!(drain(&mut p.client), drain(&mut p.upstream));
        assert_eq!(cl, Some((1012, "redeploy".to_owned())));
        assert_eq!(up.map(|c| c.0), Some(1012));
        let stats = p.relay.await.expect("relay");
        assert_eq!((stats.ended, stats.timed_out), (Ended::Upstream, false));
        assert_eq!(stats.upstream_to_client.close_code, Some(1012));
    }

    #[tokio::test]
    async fn injected_close_reaches_both_sides_with_its_code() {
        let mut p = pair().await;
        both_ways(&mut p).await;
        p.control.close(1008, "origin not allowed");
        p.control.close(1001, "second request loses");
        assert_eq!(p.control.requested(), Some(1008));
        let (cl, up) = tokio::join!(drain(&mut p.client), drain(&mut p.upstream));
        assert_eq!(cl, Some((1008, "origin not allowed".to_owned())));
        assert_eq!(up, Some((1008, "origin not allowed".to_owned())));
        let stats = p.relay.await.expect("relay");
        // Both replied (tungstenite echoes the Close), so no linger ran out.
        assert_eq!(
            (stats.ended, stats.timed_out),
            (Ended::Injected(1008), false)
        );
        assert_eq!(stats.ended.label(), "revoked");
    }

    #[tokio::test]
    async fn a_fragmented_message_over_the_limit_gets_its_sender_1009_and_the_other_1001() {
        let limits = Limits {
            max_message_bytes: Some(100),
            ..Limits::default()
        };
        let mut p = limited_pair(limits).await;
        // Under the limit, whole and in fragments: passes.
        p.client
            .send(Message::binary(vec![1u8; 100]))
            .await
            .expect("send");
        assert_eq!(
            next_msg(&mut p.upstream).await,
            Message::binary(vec![1u8; 100])
        );
        // 60 + 60 in two fragments: the second takes the message over 100.
        for frame in [
            Frame::message(vec![2u8; 60], OpCode::Data(Data::Binary), false),
            Frame::message(vec![3u8; 60], OpCode::Data(Data::Continue), true),
        ] {
            p.client.send(Message::Frame(frame)).await.expect("send");
        }
        let (cl, up) = tokio::join!(drain(&mut p.client), async {
            // The first fragment went on before the limit was known; then the Close, which
            // may come between fragments (RFC 6455 §5.4), so no whole message arrives.
            let mut frames = 0;
            let mut close = None;
            while let Some(Ok(m)) = p.upstream.next().await {
                match m {
                    Message::Close(f) => {
                        close = f.map(|f| (u16::from(f.code), f.reason.to_string()))
                    }
                    Message::Frame(_) | Message::Binary(_) => frames += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            (frames, close)
        });
        assert_eq!(cl, Some((1009, "message too big".to_owned())));
        assert_eq!(up, (0, Some((1001, "going away".to_owned()))));
        let stats = p.relay.await.expect("relay");
        assert_eq!(stats.ended, Ended::MessageTooBig(Side::Client));
        assert_eq!(stats.ended.label(), "client_message_too_big");
        assert!(!stats.timed_out);
    }

    #[tokio::test]
    async fn an_upstream_message_over_the_limit_gets_the_upstream_1009() {
        let limits = Limits {
            max_message_bytes: Some(10),
            ..Limits::default()
        };
        let mut p = limited_pair(limits).await;
        p.upstream
            .send(Message::text("x".repeat(11)))
            .await
            .expect("send");
        let (cl, up) = tokio::join!(drain(&mut p.client), drain(&mut p.upstream));
        assert_eq!(cl, Some((1001, "going away".to_owned())));
        assert_eq!(up, Some((1009, "message too big".to_owned())));
        assert_eq!(
            p.relay.await.expect("relay").ended,
            Ended::MessageTooBig(Side::Upstream)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silence_past_the_idle_timeout_closes_both_sides_1001_but_pings_do_not_count() {
        let limits = Limits {
            idle_timeout: Some(Duration::from_secs(60)),
            ..Limits::default()
        };
        let mut p = limited_pair(limits).await;
        tokio::time::sleep(Duration::from_secs(50)).await;
        both_ways(&mut p).await;
        let data_at = Instant::now();
        // 50 s after that data, a ping (not data) passes; the timeout still runs from the data.
        tokio::time::sleep(Duration::from_secs(50)).await;
        p.client
            .send(Message::Ping(vec![1u8].into()))
            .await
            .expect("ping");
        assert_eq!(
            next_msg(&mut p.upstream).await,
            Message::Ping(vec![1u8].into())
        );
        let (cl, up) = tokio::join!(drain(&mut p.client), drain(&mut p.upstream));
        assert_eq!(cl, Some((1001, "idle timeout".to_owned())));
        assert_eq!(up, Some((1001, "idle timeout".to_owned())));
        let closed_after = Instant::now() - data_at;
        assert!(
            closed_after >= Duration::from_secs(60) && closed_after < Duration::from_secs(61),
            "{closed_after:?}"
        );
        let stats = p.relay.await.expect("relay");
        assert_eq!(stats.ended, Ended::IdleTimeout);
    }

    fn heartbeat(interval: u64, timeout: u64) -> Limits {
        Limits {
            heartbeat: Some((Duration::from_secs(interval), Duration::from_secs(timeout))),
            ..Limits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silent_sides_are_pinged_and_their_pongs_stay_with_the_gateway() {
        let mut p = limited_pair(heartbeat(10, 5)).await;
        tokio::time::sleep(Duration::from_secs(11)).await;
        for ws in [&mut p.client, &mut p.upstream] {
            match next_msg(ws).await {
                Message::Ping(d) => assert!(d.starts_with(b"wsgt"), "{d:?}"),
                other => panic!("expected the gateway's Ping, got {other:?}"),
            }
        }
        // Tungstenite sends its Pong before the next message; had the relay forwarded it,
        // the other side would read a Pong here instead of the message.
        both_ways(&mut p).await;
        both_ways(&mut p).await;
        drop(p.client);
        drop(p.upstream);
        let stats = p.relay.await.expect("relay");
        assert_eq!(stats.ended, Ended::Client);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_stops_answering_is_dropped_and_the_client_gets_1011() {
        let mut p = limited_pair(heartbeat(10, 5)).await;
        both_ways(&mut p).await;
        let started = Instant::now();
        // The client keeps reading (and so answers Pings); the upstream is never read again.
        let close = drain(&mut p.client).await;
        assert_eq!(close, Some((1011, "upstream not responding".to_owned())));
        assert!(Instant::now() - started >= Duration::from_secs(15));
        let stats = p.relay.await.expect("relay");
        assert_eq!(stats.ended, Ended::HeartbeatTimeout(Side::Upstream));
        assert_eq!(stats.ended.label(), "upstream_heartbeat_timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_answering_is_dropped_and_the_upstream_gets_1001() {
        let mut p = limited_pair(heartbeat(10, 5)).await;
        let close = drain(&mut p.upstream).await;
        assert_eq!(close, Some((1001, "going away".to_owned())));
        assert_eq!(
            p.relay.await.expect("relay").ended,
            Ended::HeartbeatTimeout(Side::Client)
        );
    }

    /// A masked (client) frame header with a 16-bit length (RFC 6455 §5.2).
    fn masked_header(len: u16, key: [u8; 4]) -> Vec<u8> {
        let mut h = vec![0x82, 0x80 | 126];
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&key);
        h
    }

    fn unmasked_header(len: u16) -> Vec<u8> {
        let mut h = vec![0x82, 126];
        h.extend_from_slice(&len.to_be_bytes());
        h
    }

    async fn read_n(io: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        io.read_exact(&mut buf).await.expect("read");
        buf
    }

    #[tokio::test]
    async fn injection_waits_for_the_frames_in_flight_then_discards() {
        let (mut client, gw_client) = duplex(256 * 1024);
        let (gw_upstream, mut upstream) = duplex(256 * 1024);
        let (control, task) = spawn_relay(gw_client, gw_upstream, Limits::default());
        const LEN: u16 = 60_000;
        let key = [9, 8, 7, 6];
        let (c_head, u_head) = (masked_header(LEN, key), unmasked_header(LEN));
        let half = usize::from(LEN) / 2;
        let payload = vec![0x5a_u8; usize::from(LEN)];

        // Half of a large frame each way; reading it on the far side proves the relay has
        // forwarded it, so the close below lands mid-frame in both directions.
        client.write_all(&c_head).await.expect("write");
        client.write_all(&payload[..half]).await.expect("write");
        upstream.write_all(&u_head).await.expect("write");
        upstream.write_all(&payload[..half]).await.expect("write");
        assert_eq!(
            read_n(&mut upstream, c_head.len() + half).await[..c_head.len()],
            c_head
        );
        assert_eq!(
            read_n(&mut client, u_head.len() + half).await[..u_head.len()],
            u_head
        );

        control.close(1001, "route removed");
        // The rest of each frame, then a frame that must not be forwarded any more.
        client.write_all(&payload[half..]).await.expect("write");
        client
            .write_all(&[0x81, 0x80 | 1, 0, 0, 0, 0, b'x'])
            .await
            .expect("write");
        upstream.write_all(&payload[half..]).await.expect("write");
        upstream.write_all(&[0x81, 1, b'y']).await.expect("write");

        // Each side gets the end of its frame, then the Close: unmasked to the client...
        assert_eq!(
            read_n(&mut client, usize::from(LEN) - half).await,
            payload[half..]
        );
        let (expected, n) = close_frame(1001, "route removed", None);
        assert_eq!(read_n(&mut client, n).await, expected[..n]);
        // ... and masked to the upstream (RFC 6455 §5.3).
        assert_eq!(
            read_n(&mut upstream, usize::from(LEN) - half).await,
            payload[half..]
        );
        let close = read_n(&mut upstream, n + 4).await;
        assert_eq!(&close[..2], &[0x88, 0x80 | (n as u8 - 2)]);
        let key: [u8; 4] = close[2..6].try_into().expect("key");
        let (remasked, _) = close_frame(1001, "route removed", Some(key));
        assert_eq!(close, remasked[..n + 4]);

        // Both reply with a Close; the relay closes both and nothing else arrived.
        let (reply, rn) = close_frame(1001, "", Some([1, 2, 3, 4]));
        client.write_all(&reply[..rn]).await.expect("reply");
        let (reply, rn) = close_frame(1001, "", None);
        upstream.write_all(&reply[..rn]).await.expect("reply");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty(), "forwarded after the close: {rest:?}");
        upstream.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty(), "forwarded after the close: {rest:?}");
        let stats = task.await.expect("relay");
        assert_eq!(
            (stats.ended, stats.timed_out),
            (Ended::Injected(1001), false)
        );
        assert_eq!(stats.client_to_upstream.frames, 3);
        assert_eq!(stats.client_to_upstream.close_code, Some(1001));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peers_are_dropped_after_the_linger() {
        let (mut client, gw_client) = duplex(1024);
        let (gw_upstream, mut upstream) = duplex(1024);
        let control = Arc::new(ConnControl::new());
        control.close(1012, "service restart");
        // Nobody answers the Close: the relay gives up after the linger.
        let stats = relay(
            gw_client,
            gw_upstream,
            control,
            LINGER,
            Limits::default(),
            false,
        )
        .await;
        assert_eq!(
            (stats.ended, stats.timed_out),
            (Ended::Injected(1012), true)
        );
        assert_eq!(stats.ended.label(), "shutdown");
        let (expected, n) = close_frame(1012, "service restart", None);
        assert_eq!(read_n(&mut client, n).await, expected[..n]);
        assert_eq!(
            read_n(&mut upstream, n + 4).await[..2],
            [0x88, 0x80 | (n as u8 - 2)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_stuck_mid_way_is_dropped_after_the_linger() {
        let (mut client, gw_client) = duplex(1024);
        let (gw_upstream, mut upstream) = duplex(1024);
        let control = Arc::new(ConnControl::new());
        let c = control.clone();
        let task = tokio::spawn(async move {
            relay(gw_client, gw_upstream, c, LINGER, Limits::default(), false).await
        });
        upstream
            .write_all(&[0x82, 100, 1, 2, 3])
            .await
            .expect("write");
        assert_eq!(read_n(&mut client, 5).await, [0x82, 100, 1, 2, 3]);
        let start = Instant::now();
        control.close(1008, "origin not allowed");
        let stats = task.await.expect("relay");
        assert!(start.elapsed() >= LINGER);
        assert_eq!(
            (stats.ended, stats.timed_out),
            (Ended::Injected(1008), true)
        );
        // The client never got a Close in the middle of the frame: only the stream's end.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn end_of_stream_is_passed_on_and_the_other_direction_goes_on() {
        let (mut client, gw_client) = duplex(1024);
        let (gw_upstream, mut upstream) = duplex(1024);
        let (_control, task) = spawn_relay(gw_client, gw_upstream, Limits::default());
        client.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        upstream.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty());
        // The upstream can still answer.
        upstream
            .write_all(&[0x81, 2, b'o', b'k'])
            .await
            .expect("write");
        assert_eq!(read_n(&mut client, 4).await, [0x81, 2, b'o', b'k']);
        drop(upstream);
        let stats = task.await.expect("relay");
        assert_eq!((stats.ended, stats.timed_out), (Ended::Client, false));
        assert_eq!(stats.upstream_to_client.frames, 1);
    }

    #[tokio::test]
    async fn reject_after_upgrade_closes_with_its_code() {
        let (client_io, gw_client) = duplex(1024);
        let task = tokio::spawn(reject_after_upgrade(
            gw_client,
            1008,
            "origin not allowed",
            LINGER,
        ));
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        // The client sees the Close, replies, and the gateway hangs up.
        assert_eq!(
            drain(&mut client).await,
            Some((1008, "origin not allowed".to_owned()))
        );
        task.await.expect("task");
    }

    #[tokio::test(start_paused = true)]
    async fn reject_after_upgrade_gives_up_on_a_silent_client() {
        let (mut client, gw_client) = duplex(1024);
        let start = Instant::now();
        reject_after_upgrade(gw_client, 1008, "origin not allowed", LINGER).await;
        assert!(start.elapsed() >= LINGER);
        let (expected, n) = close_frame(1008, "origin not allowed", None);
        assert_eq!(read_n(&mut client, n).await, expected[..n]);
    }

    #[test]
    fn pool_keeps_at_most_its_limit() {
        let bufs: Vec<_> = (0..POOL_LIMIT + 10).map(|_| take_buffer()).collect();
        for b in bufs {
            give_buffer(b);
        }
        assert_eq!(POOL.with(|p| p.borrow().len()), POOL_LIMIT);
    }

    fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn a_buffer_is_held_only_while_the_peer_is_not_ready() {
        let (mut client, gw_client) = duplex(64 * 1024);
        // Room for 1 KiB only towards the upstream.
        let (gw_upstream, mut upstream) = duplex(1024);
        let control = Arc::new(ConnControl::new());
        let mut relay = Relay::new(
            gw_client,
            gw_upstream,
            control,
            LINGER,
            Limits::default(),
            false,
        );
        assert!(poll_once(&mut relay).is_pending());
        assert!(relay.c2u.held.is_none() && relay.u2c.held.is_none());

        let mut frame = masked_header(4000, [1, 2, 3, 4]);
        frame.extend(vec![0u8; 4000]);
        client.write_all(&frame).await.expect("write");
        assert!(poll_once(&mut relay).is_pending());
        let held = relay
            .c2u
            .held
            .as_ref()
            .expect("held while the upstream is full");
        // The read lands after room for a withheld header.
        assert_eq!(
            (held.start, held.end),
            (MAX_HEADER + 1024, MAX_HEADER + frame.len())
        );

        let mut got = Vec::new();
        while got.len() < frame.len() {
            let mut buf = [0u8; 1024];
            let n = upstream.read(&mut buf).await.expect("read");
            got.extend_from_slice(&buf[..n]);
            assert!(poll_once(&mut relay).is_pending());
        }
        assert_eq!(got, frame);
        assert!(relay.c2u.held.is_none(), "returned once written");
        assert_eq!(relay.c2u.tracker.frames(), 1);
        assert!(relay.c2u.tracker.at_boundary());
    }

    /// A frame with `first` as its first byte (FIN, RSV, opcode) and `payload`, masked with
    /// `mask` if given (RFC 6455 §5.2, §5.3).
    fn raw_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let m = if mask.is_some() { 0x80 } else { 0 };
        let mut f = vec![first];
        match payload.len() {
            n @ 0..=125 => f.push(m | n as u8),
            n @ 126..=0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mut body = payload.to_vec();
        if let Some(key) = mask {
            f.extend_from_slice(&key);
            apply_mask(&mut body, mask);
        }
        f.extend(body);
        f
    }

    /// Reads one frame, which must be a Close; its code.
    async fn read_close(io: &mut DuplexStream) -> u16 {
        let head = read_n(io, 2).await;
        assert_eq!(head[0], 0x88, "expected a Close, got {head:?}");
        let key = if head[1] & 0x80 != 0 {
            Some(read_n(io, 4).await.try_into().expect("key"))
        } else {
            None
        };
        let mut payload = read_n(io, usize::from(head[1] & 0x7f)).await;
        apply_mask(&mut payload, key);
        u16::from_be_bytes([payload[0], payload[1]])
    }

    const CLIENT_KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// `from` sends a good text frame and then `bad` in one write. Checks that the other
    /// side gets the good frame and then, with nothing of `bad`, Close 1001, while `from`
    /// gets Close 1002; both answer the Close; returns how the relay ended.
    async fn refused(from: Side, bad: Vec<u8>, deflate: bool) -> Ended {
        let (mut client, gw_client) = duplex(64 * 1024);
        let (gw_upstream, mut upstream) = duplex(64 * 1024);
        let control = Arc::new(ConnControl::new());
        let task = tokio::spawn(relay(
            gw_client,
            gw_upstream,
            control,
            LINGER,
            Limits::default(),
            deflate,
        ));
        let (sender, receiver, key, receiver_key) = match from {
            Side::Client => (&mut client, &mut upstream, Some(CLIENT_KEY), None),
            Side::Upstream => (&mut upstream, &mut client, None, Some(CLIENT_KEY)),
        };
        let good = raw_frame(0x81, b"ok", key);
        let mut data = good.clone();
        data.extend_from_slice(&bad);
        let (written, got) = tokio::join!(sender.write_all(&data), async {
            let got = read_n(receiver, good.len()).await;
            (got, read_close(receiver).await)
        });
        written.expect("write");
        assert_eq!(got.0, good, "the good frame passes");
        assert_eq!(got.1, 1001, "the other side gets 1001, not the bad frame");
        assert_eq!(read_close(sender).await, 1002);
        let (reply, n) = close_frame(1002, "", key);
        sender.write_all(&reply[..n]).await.expect("reply");
        let (reply, n) = close_frame(1001, "", receiver_key);
        receiver.write_all(&reply[..n]).await.expect("reply");
        let stats = task.await.expect("relay");
        let mut rest = Vec::new();
        receiver.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty(), "forwarded after the close: {rest:?}");
        assert!(!stats.timed_out);
        stats.ended
    }

    #[tokio::test]
    async fn a_one_mib_ping_from_the_client_never_reaches_the_upstream_and_gets_1002() {
        let bad = raw_frame(0x89, &vec![0x42; 1 << 20], Some(CLIENT_KEY));
        let ended = refused(Side::Client, bad, false).await;
        assert_eq!(ended, Ended::ProtocolError(Side::Client));
        assert_eq!(ended.label(), "client_protocol_error");
    }

    #[tokio::test]
    async fn frames_that_break_rfc_6455_get_their_sender_1002_and_the_other_side_1001() {
        let k = Some(CLIENT_KEY);
        for (from, bad) in [
            (Side::Client, raw_frame(0x83, b"x", k)),
            (Side::Client, raw_frame(0x8B, b"", k)),
            (Side::Client, raw_frame(0x81, b"unmasked", None)),
            (Side::Client, raw_frame(0x09, b"", k)),
            (Side::Client, raw_frame(0x88, b"\x03", k)),
            (Side::Client, raw_frame(0x80, b"stray", k)),
            (Side::Upstream, raw_frame(0x81, b"masked", k)),
            (Side::Upstream, raw_frame(0xC1, b"rsv1", None)),
            (Side::Upstream, raw_frame(0x8A, &[0; 126], None)),
        ] {
            assert_eq!(
                refused(from, bad.clone(), false).await,
                Ended::ProtocolError(from),
                "{bad:?}"
            );
        }
        let ended = refused(Side::Upstream, raw_frame(0xA1, b"rsv2", None), true).await;
        assert_eq!(ended.label(), "upstream_protocol_error");
    }

    #[tokio::test]
    async fn a_new_message_inside_a_fragmented_one_is_a_protocol_error() {
        // The open fragment passes; the text frame that interrupts it does not.
        let mut bad = raw_frame(0x01, b"frag", Some(CLIENT_KEY));
        bad.extend(raw_frame(0x81, b"new", Some(CLIENT_KEY)));
        let (mut client, gw_client) = duplex(1024);
        let (gw_upstream, mut upstream) = duplex(1024);
        let (_control, task) = spawn_relay(gw_client, gw_upstream, Limits::default());
        client.write_all(&bad).await.expect("write");
        let first = raw_frame(0x01, b"frag", Some(CLIENT_KEY));
        assert_eq!(read_n(&mut upstream, first.len()).await, first);
        assert_eq!(read_close(&mut upstream).await, 1001);
        assert_eq!(read_close(&mut client).await, 1002);
        drop((client, upstream));
        assert_eq!(
            task.await.expect("relay").ended,
            Ended::ProtocolError(Side::Client)
        );
    }

    #[tokio::test]
    async fn with_permessage_deflate_compressed_messages_pass_both_ways() {
        let (mut client, gw_client) = duplex(1024);
        let (gw_upstream, mut upstream) = duplex(1024);
        let control = Arc::new(ConnControl::new());
        let c = control.clone();
        let task = tokio::spawn(async move {
            relay(gw_client, gw_upstream, c, LINGER, Limits::default(), true).await
        });
        // RSV1 on the first fragment only (RFC 7692 §6.1); payloads are opaque here.
        let mut sent = raw_frame(0x41, b"\xf2\x48", Some(CLIENT_KEY));
        sent.extend(raw_frame(0x80, b"\xcd\xc9", Some(CLIENT_KEY)));
        client.write_all(&sent).await.expect("write");
        assert_eq!(read_n(&mut upstream, sent.len()).await, sent);
        let back = raw_frame(0xC2, b"\x03\x00", None);
        upstream.write_all(&back).await.expect("write");
        assert_eq!(read_n(&mut client, back.len()).await, back);
        drop((client, upstream));
        assert_eq!(task.await.expect("relay").ended, Ended::Client);
    }

    /// Whether nothing is waiting to be read from `io`.
    fn nothing_to_read(io: &mut DuplexStream) -> bool {
        let mut byte = [0u8; 1];
        io.read(&mut byte).now_or_never().is_none()
    }

    #[tokio::test]
    async fn a_header_split_across_reads_is_withheld_until_it_is_checked() {
        let (mut client, gw_client) = duplex(256 * 1024);
        let (gw_upstream, mut upstream) = duplex(64 * 1024);
        let control = Arc::new(ConnControl::new());
        let mut relay = Relay::new(
            gw_client,
            gw_upstream,
            control,
            LINGER,
            Limits::default(),
            false,
        );
        // A good frame whose header comes in two reads goes on whole once it is complete.
        let good = raw_frame(0x81, b"hello", Some(CLIENT_KEY));
        client.write_all(&good[..3]).await.expect("write");
        assert!(poll_once(&mut relay).is_pending());
        assert!(nothing_to_read(&mut upstream));
        client.write_all(&good[3..]).await.expect("write");
        assert!(poll_once(&mut relay).is_pending());
        assert_eq!(read_n(&mut upstream, good.len()).await, good);
        // A 70 kB Ping (a 14-byte header) whose header comes in two reads: none of it ever
        // goes on, and the upstream still gets its Close, as no frame was left unfinished.
        let bad = raw_frame(0x89, &[0x42; 70_000], Some(CLIENT_KEY));
        client.write_all(&bad[..5]).await.expect("write");
        assert!(poll_once(&mut relay).is_pending());
        assert!(nothing_to_read(&mut upstream));
        client.write_all(&bad[5..]).await.expect("write");
        assert!(poll_once(&mut relay).is_pending());
        assert!(poll_once(&mut relay).is_pending());
        assert_eq!(read_close(&mut upstream).await, 1001);
        assert_eq!(read_close(&mut client).await, 1002);
        assert_eq!(relay.first, Some(Ended::ProtocolError(Side::Client)));
    }
}
