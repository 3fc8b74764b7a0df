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

/// Size of a pooled read buffer: a 64 KiB message, or many small ones streamed, in one read
/// and one write (16 KiB cost a 64 KiB message a fifth more CPU, README "64 KiB reads").
pub const BUFFER_SIZE: usize = 64 * 1024;
/// Buffers kept per thread; more are freed, so a burst does not pin memory for good.
pub const POOL_LIMIT: usize = 16;
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
        dst_closing: bool,
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
            //    half (best effort: it may be gone already). After a Close of the gateway's
            //    own, not before the destination has answered it (or the linger runs out):
            //    a browser that sees its stream end first reports an unclean close.
            if self.read_done {
                if self.inject == Inject::Sent && dst_closing {
                    return Poll::Pending;
                }
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
        // Each direction is told whether its destination still owes its Close, from what
        // the other direction has read (the second from this very poll).
        let upstream_closing = this.u2c.ended().is_none();
        let c2u = this.c2u.poll_dir(
            cx,
            &mut this.client,
            &mut this.upstream,
            closing.map(|c| c.injection(Side::Client)),
            upstream_closing,
        );
        let client_closing = this.c2u.ended().is_none();
        let u2c = this.u2c.poll_dir(
            cx,
            &mut this.upstream,
            &mut this.client,
            closing.map(|c| c.injection(Side::Upstream)),
            client_closing,
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
mod tests;
