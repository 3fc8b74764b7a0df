//! One connection's life: its task ([`Connection`]), the handshake driver that reads the
//! request head, acts on the decision and exchanges with the upstream, and the accounting of
//! the relay that follows (metrics and the access-log line when it ends).

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::admission::Slot;
use super::client;
use super::decide::{Plan, Step, plan};
use super::handshake::{AcceptKey, Reject};
use super::http1::{self, HeadError, Prefixed};
use super::registry::{self, CLOSE_POLICY, CLOSE_RESTART};
use super::relay::{self, ConnControl, Ended, Side};
use super::reply::{
    RefusalBody, Reply, answer_client, outcome, pass_refusal, refusal, refuse, switching_protocols,
};
use super::state::{Gateway, HttpPhase};
use super::stream::Stream;
use super::tls_server::TlsAcceptor;
use super::upstream::{self, ClientInfo};
use crate::accept::{Unregistered, stopped};
use crate::metrics::{CloseLabels, EndLabels, RouteLabels, TrafficLabels};
use crate::policy::RequestOrigin;
use crate::route::{OriginRejection, Route};

/// Bytes reserved for a request head before its first read.
const HEAD_CAPACITY: usize = 1024;

/// One connection's task: its handshake, then the relay. Written by hand, not as an `async
/// fn`, because this task's size is what every idle connection costs: the handshake's future
/// (connect, timers, the upstream exchange) is large and short-lived, so it is boxed and
/// freed before the relay starts, and the relay's state is held once rather than copied
/// between an `async fn`'s locals (1.5 KiB per connection as one).
#[expect(
    clippy::large_enum_variant,
    reason = "the relay is the state an idle connection holds; boxing it saves nothing"
)]
pub(super) enum Connection {
    Handshake(
        Arc<Gateway>,
        Pin<Box<dyn Future<Output = Option<Upgraded>> + Send>>,
    ),
    Relaying(Relaying),
    Done,
}

impl Connection {
    /// The task of a connection just accepted, counted in its HTTP phase, or `None` when it
    /// needs none. A plain connection is read once before tokio registers it: the listener
    /// hands it over once its first bytes arrived (`accept::Unregistered`), so its request
    /// head is usually whole already, and is decided at once; a refusal is then answered and
    /// closed without a registration or a task, which is what a flood of hostile pages costs.
    /// Anything else becomes a task: TLS, a PROXY header, a head still on its way.
    pub(super) fn accepted(
        socket: mio::net::TcpStream,
        peer: SocketAddr,
        phase: HttpPhase,
        tls: Option<TlsAcceptor>,
        stop: watch::Receiver<bool>,
    ) -> Option<Self> {
        let gateway = phase.0.clone();
        let client = ClientInfo::direct(peer, tls.is_some());
        let mut buf = Vec::with_capacity(HEAD_CAPACITY);
        if tls.is_none() && !gateway.config.proxy_protocol {
            match read_at_once(&socket, &mut buf) {
                // Closed before asking anything.
                Ok(0) => return None,
                Ok(_) => {
                    let max = gateway.config.max_header_bytes;
                    if let Some(head_len) = http1::head_end(&buf, 0).filter(|&end| end <= max) {
                        let plan = plan(&buf[..head_len], &gateway, client, None);
                        return decided(socket, buf, head_len, plan, phase, stop);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
        }
        let tcp = registered(socket)?;
        let handshake = handshake(tcp, client, phase, tls, stop, buf);
        Some(Connection::Handshake(gateway, Box::pin(handshake)))
    }
}

/// Reads what a connection sent before it was accepted into `buf`, up to a head's first
/// read; `WouldBlock` if nothing yet.
fn read_at_once(socket: &mio::net::TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.resize(HEAD_CAPACITY, 0);
    let read = (&mut &*socket).read(buf);
    buf.truncate(*read.as_ref().unwrap_or(&0));
    read
}

/// A connection accepted with its request head and `plan` decided, before it is registered:
/// a refusal is answered and the socket closed here, anything else becomes a task.
fn decided(
    socket: mio::net::TcpStream,
    buf: Vec<u8>,
    head_len: usize,
    plan: Plan,
    phase: HttpPhase,
    stop: watch::Receiver<bool>,
) -> Option<Connection> {
    let gateway = phase.0.clone();
    let Step::Refuse(route, reject) = &plan.step else {
        let stream = Stream::Plain(registered(socket)?);
        let answer = answer(stream, buf, head_len, plan, phase, stop);
        return Some(Connection::Handshake(gateway, Box::pin(answer)));
    };
    let origin = plan.origin_in(&buf);
    let response = refusal(&gateway, route.as_deref(), *reject, plan.client, origin);
    let sent = match (&mut &socket).write(&response) {
        Ok(n) if n < response.len() => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        // All sent, or the client is gone: dropping the socket closes it, with a FIN after
        // the response.
        _ => return None,
    };
    // A fresh socket's send buffer holds a refusal many times over; should it not, the
    // rest is sent when it has room.
    let mut tcp = registered(socket)?;
    let rest = async move {
        let _ = tcp.write_all(&response[sent..]).await;
        // Counted in its HTTP phase until answered.
        drop(phase);
        None
    };
    Some(Connection::Handshake(gateway, Box::pin(rest)))
}

/// Registers an accepted connection with tokio's reactor; `None` (closed) if it cannot be.
fn registered(socket: mio::net::TcpStream) -> Option<TcpStream> {
    Unregistered::register(socket)
        .inspect_err(|e| tracing::warn!(error = %e, "cannot register a connection; closing"))
        .ok()
}

impl Future for Connection {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            match this {
                Connection::Handshake(gateway, handshake) => match handshake.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => *this = Connection::Done,
                    Poll::Ready(Some(upgraded)) => {
                        *this = Connection::Relaying(Relaying::start(gateway.clone(), upgraded));
                    }
                },
                Connection::Relaying(relaying) => {
                    std::task::ready!(Pin::new(relaying).poll(cx));
                    *this = Connection::Done;
                }
                Connection::Done => return Poll::Ready(()),
            }
        }
    }
}

/// A relayed connection and what its end is recorded with.
pub(super) struct Relaying {
    relay: relay::Relay<Prefixed<Stream>, Prefixed<Stream>>,
    gateway: Arc<Gateway>,
    route: Arc<Route>,
    client: ClientInfo,
    active: prometheus_client::metrics::gauge::Gauge,
    started: std::time::Instant,
    /// Keeps the connection in the registry (revocation, drain) until it ends.
    _registration: registry::Registration,
    /// Keeps the connection counted against its route's limits until it ends (boxed: most
    /// routes have none, and this is held by every idle connection).
    _admission: Option<Box<Slot>>,
}

impl Relaying {
    /// Starts relaying an upgraded connection, counted as active on its route.
    pub(super) fn start(gateway: Arc<Gateway>, upgraded: Upgraded) -> Relaying {
        let Upgraded {
            route,
            client,
            client_io,
            upstream_io,
            deflate,
            registration,
            admission,
        } = upgraded;
        let active = gateway
            .metrics
            .active_connections
            .get_or_create(&RouteLabels {
                route: route.label.clone(),
            })
            .clone();
        active.inc();
        let relay = relay::relay(
            client_io,
            upstream_io,
            registration.control(),
            gateway.config.close_linger,
            route.limits,
            deflate,
        );
        Relaying {
            relay,
            gateway,
            route,
            client,
            active,
            started: std::time::Instant::now(),
            _registration: registration,
            _admission: admission,
        }
    }

    /// Counts the finished connection and writes its access-log line.
    fn finish(&self, stats: &relay::RelayStats) {
        self.active.dec();
        record_relay(
            &self.gateway,
            &self.route.label,
            self.client,
            self.started.elapsed(),
            stats,
        );
    }
}

/// A connection both sides of which have switched to WebSocket.
pub(super) struct Upgraded {
    route: Arc<Route>,
    client: ClientInfo,
    client_io: Prefixed<Stream>,
    upstream_io: Prefixed<Stream>,
    /// The upstream accepted `permessage-deflate`.
    deflate: bool,
    registration: registry::Registration,
    admission: Option<Box<Slot>>,
}

impl Future for Relaying {
    type Output = ();

    /// Relays until the connection ends, then counts it and writes its access-log line.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let stats = std::task::ready!(Pin::new(&mut self.relay).poll(cx));
        self.finish(&stats);
        Poll::Ready(())
    }
}

/// Serves the HTTP phase of a connection that sent `buf` so far: answers it, or returns it
/// upgraded.
async fn handshake(
    tcp: TcpStream,
    mut client: ClientInfo,
    phase: HttpPhase,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    mut buf: Vec<u8>,
) -> Option<Upgraded> {
    let gateway = phase.0.clone();
    let peer = client.addr;
    let config = &gateway.config;
    // Where the connection is once it speaks HTTP, kept outside the read so that a head
    // that is too large can still be answered.
    let mut opened: Option<Stream> = None;
    let read = async {
        let mut tcp = tcp;
        let source = if config.proxy_protocol {
            client::read_proxy_header(&mut tcp, &mut buf)
                .await
                .map_err(Unread::Proxy)?
        } else {
            None
        };
        let stream = match &tls {
            None => Stream::Plain(tcp),
            Some(acceptor) => {
                // Bytes after a PROXY header are the start of the TLS handshake.
                let tls = acceptor.accept(tcp, &buf).await.map_err(Unread::Tls)?;
                buf.clear();
                Stream::Tls(Box::new(tls))
            }
        };
        let stream = opened.insert(stream);
        // An HTTP/2 client's requests are streams: hyper reads them.
        if stream.is_h2() {
            return Ok((source, None));
        }
        let head_len = http1::read_head(stream, &mut buf, config.max_header_bytes)
            .await
            .map_err(Unread::Head)?;
        Ok((source, Some(head_len)))
    };
    // One deadline covers the PROXY header, the TLS handshake and the request head: a slow
    // client cannot hold its socket longer by sending any of them a byte at a time.
    let read = tokio::select! {
        read = tokio::time::timeout(config.header_read_timeout, read) => read,
        // Nothing was asked yet: just close.
        () = stopped(&mut stop) => return None,
    };
    let head_len = match read {
        Ok(Ok((source, head_len))) => {
            if let Some(source) = source {
                client.addr = source;
                client.ip = source.ip();
            }
            head_len
        }
        Ok(Err(Unread::Head(HeadError::TooLarge(_)))) => {
            if let Some(stream) = &mut opened {
                refuse(stream, &gateway, None, Reject::HeadTooLarge, client, None).await;
            }
            return None;
        }
        Ok(Err(Unread::Tls(e))) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed; closing");
            return closed_unanswered(&gateway, client, "tls_handshake_failed");
        }
        Ok(Err(Unread::Proxy(e))) => {
            tracing::debug!(%peer, error = %e, "no valid PROXY protocol header; closing");
            return closed_unanswered(&gateway, client, "proxy_header_invalid");
        }
        Ok(Err(Unread::Head(e))) => {
            tracing::debug!(%peer, error = %e, "client went away during its handshake");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "request head not complete in time; closing");
            return closed_unanswered(&gateway, client, "head_timeout");
        }
    };
    let stream = opened?;
    let Some(head_len) = head_len else {
        let sni = stream.sni().map(str::to_owned);
        super::h2::serve(stream, sni, client, phase, stop).await;
        return None;
    };
    let plan = plan(&buf[..head_len], &gateway, client, stream.sni());
    answer(stream, buf, head_len, plan, phase, stop).await
}

/// Acts on the `plan` made from the request head that is `buf`'s first `head_len` bytes.
async fn answer(
    stream: Stream,
    buf: Vec<u8>,
    head_len: usize,
    plan: Plan,
    phase: HttpPhase,
    stop: watch::Receiver<bool>,
) -> Option<Upgraded> {
    let gateway = phase.0.clone();
    let peer = plan.client.addr;
    let mut asker = Asker {
        stream,
        leftover: &buf[head_len..],
        phase,
        client: plan.client,
        origin: plan.origin_in(&buf),
    };
    let (client, origin) = (asker.client, asker.origin);
    if !matches!(plan.step, Step::Refuse(..)) {
        asker.stream.serve_promptly();
    }
    match plan.step {
        Step::Plain => {
            let sni = asker.stream.sni().map(str::to_owned);
            // hyper reads the request again, from the start.
            let io = Prefixed::new(asker.stream, &buf);
            super::http::serve(io, sni, client, asker.phase, stop).await;
        }
        Step::Refuse(route, reject) => {
            refuse(
                &mut asker.stream,
                &gateway,
                route.as_deref(),
                reject,
                client,
                origin,
            )
            .await;
        }
        Step::CloseAfterUpgrade(route, accept) => {
            close_after_upgrade(asker, &route, accept).await;
        }
        Step::Forward {
            route,
            request,
            extensions,
            origin: request_origin,
            accept,
            admission,
        } => {
            let exchanged = exchange(
                &gateway,
                &route,
                (client, origin),
                request_origin,
                &request,
                accept,
                extensions.as_deref(),
            )
            .await;
            drop(request);
            let switched = match exchanged {
                Exchange::Upgrade(switched) => switched,
                Exchange::Refusal { answer, head, body } => {
                    // The upstream refused: its status and body go back to the client.
                    let patience = gateway.config.upstream.response;
                    pass_refusal(asker.stream, answer, &head, body, patience).await;
                    return None;
                }
                Exchange::Refused(reject) => {
                    refuse_decided(asker, &route, reject, accept).await;
                    return None;
                }
            };
            if let Err(e) = asker.stream.write_all(&switched.reply).await {
                tracing::debug!(%peer, error = %e, "client went away before its 101");
                return None;
            }
            let client_io = Prefixed::new(asker.stream, asker.leftover);
            return Some(switched.upgraded(route, client, client_io, admission));
        }
    }
    None
}

/// What the upstream made of a handshake the gateway admitted.
pub(super) enum Exchange {
    /// It switched protocols (counted as accepted).
    Upgrade(Switched),
    /// It refused (counted): the head to pass on, and how much body follows it.
    Refusal {
        answer: upstream::Answer,
        head: Vec<u8>,
        body: RefusalBody,
    },
    /// The gateway refuses after all (not yet counted): the upstream failed or answered
    /// wrongly, or a newer snapshot revoked the handshake while it waited.
    Refused(Reject),
}

/// An upstream that switched protocols, waiting for the client's side to be answered.
pub(super) struct Switched {
    /// The client's 101 head: the upstream's headers but hop-by-hop ones.
    pub(super) reply: Vec<u8>,
    /// The upstream, with the frames it sent right behind its 101.
    upstream_io: Prefixed<Stream>,
    /// The upstream accepted `permessage-deflate`.
    deflate: bool,
    /// The connection, registered for revocation and drain.
    registration: registry::Registration,
}

impl Switched {
    /// Both sides upgraded, ready to relay.
    pub(super) fn upgraded(
        self,
        route: Arc<Route>,
        client: ClientInfo,
        client_io: Prefixed<Stream>,
        admission: Option<Box<Slot>>,
    ) -> Upgraded {
        Upgraded {
            route,
            client,
            client_io,
            upstream_io: self.upstream_io,
            deflate: self.deflate,
            registration: self.registration,
            admission,
        }
    }
}

/// Sends an admitted handshake's `request` to its route's upstream and judges the answer,
/// whichever protocol the client spoke. `asker` is the client and its Origin, for the
/// metrics and the access log.
pub(super) async fn exchange(
    gateway: &Gateway,
    route: &Arc<Route>,
    asker: (ClientInfo, Option<&str>),
    request_origin: RequestOrigin,
    request: &[u8],
    accept: AcceptKey,
    extensions: Option<&str>,
) -> Exchange {
    let (client, origin) = asker;
    // Registered before the upstream is asked, so that a snapshot published while it
    // answers applies to this connection as to the relayed ones.
    let mut registration = gateway.connections.register(route.clone(), request_origin);
    let control = registration.control();
    let sent = upstream::send(
        &route.upstream,
        client.ip,
        request,
        gateway.config.upstream,
        &gateway.metrics.upstream_connect_seconds,
    );
    let answer = tokio::select! {
        answer = sent => answer,
        code = revoked_in_flight(&control) => Err(revocation(code)),
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(reject) => return Exchange::Refused(reject),
    };
    // The newest snapshot decides, also one published between this handshake's decision
    // and its registration, and whatever the route's revokeOnPolicyChange: nothing relays
    // yet.
    if let Some((code, _)) = gateway
        .published
        .current()
        .and_then(|newest| registration.verdict(&newest.table))
    {
        return Exchange::Refused(revocation(code));
    }
    match answer_client(&answer, accept, extensions) {
        Ok(Reply::Upgrade(reply, deflate)) => {
            registration.relaying();
            outcome(
                gateway,
                Some(&route.label),
                client,
                origin,
                "accepted",
                "ok",
            );
            Exchange::Upgrade(Switched {
                reply,
                upstream_io: Prefixed::new(answer.stream, &answer.buf[answer.head_len..]),
                deflate,
                registration,
            })
        }
        Ok(Reply::Refusal(head, body)) => {
            outcome(
                gateway,
                Some(&route.label),
                client,
                origin,
                "rejected",
                "upstream_refused",
            );
            Exchange::Refusal { answer, head, body }
        }
        Err(reject) => Exchange::Refused(reject),
    }
}

/// Resolves with the close code once a snapshot revokes a handshake waiting for its
/// upstream. A drain (1012) does not: that handshake completes and its relay closes.
async fn revoked_in_flight(control: &ConnControl) -> u16 {
    match control.requested_close().await {
        (CLOSE_RESTART, _) => std::future::pending().await,
        (code, _) => code,
    }
}

/// The refusal for a handshake whose route a newer snapshot no longer admits it to.
fn revocation(code: u16) -> Reject {
    match code {
        CLOSE_POLICY => Reject::OriginDenied,
        _ => Reject::NoRoute,
    }
}

/// A client whose request head was read and decided, before it is answered.
struct Asker<'a> {
    stream: Stream,
    /// Bytes the client sent after its request head.
    leftover: &'a [u8],
    phase: HttpPhase,
    client: ClientInfo,
    /// The request's Origin, for the log and metrics.
    origin: Option<&'a str>,
}

/// Answers a handshake refused after its decision: an origin refusal on a route with
/// `rejection: Close` is a 101 and Close 1008, like one refused at once; anything else is
/// its status.
async fn refuse_decided(mut asker: Asker<'_>, route: &Route, reject: Reject, accept: AcceptKey) {
    if reject == Reject::OriginDenied && route.rejection == OriginRejection::Close {
        close_after_upgrade(asker, route, accept).await;
    } else {
        let gateway = &asker.phase.0;
        refuse(
            &mut asker.stream,
            gateway,
            Some(route),
            reject,
            asker.client,
            asker.origin,
        )
        .await;
    }
}

/// `rejection: Close`: a 101, then Close 1008 `origin not allowed`.
async fn close_after_upgrade(asker: Asker<'_>, route: &Route, accept: AcceptKey) {
    let Asker {
        mut stream,
        leftover,
        phase,
        client,
        origin,
    } = asker;
    let gateway = phase.0.clone();
    outcome(
        &gateway,
        Some(&route.label),
        client,
        origin,
        "rejected",
        Reject::OriginDenied.reason(),
    );
    tracing::debug!(client = %client.ip, route = %route.label, "origin not allowed: closing after upgrade");
    let reply = switching_protocols(None, accept);
    if stream.write_all(&reply).await.is_ok() {
        let client_io = Prefixed::new(stream, leftover);
        // The connection is past its HTTP phase: a drain need not wait for the linger.
        drop(phase);
        relay::reject_after_upgrade(
            client_io,
            CLOSE_POLICY,
            "origin not allowed",
            gateway.config.close_linger,
        )
        .await;
    }
}

/// Counts a connection closed before it asked anything answerable (no route known).
fn closed_unanswered(
    gateway: &Gateway,
    client: ClientInfo,
    reason: &'static str,
) -> Option<Upgraded> {
    outcome(gateway, None, client, None, "rejected", reason);
    None
}

/// Why no request head was read.
enum Unread {
    Proxy(client::ProxyHeaderError),
    Tls(std::io::Error),
    Head(HeadError),
}

/// Counts a finished connection (traffic, duration, how it ended and closed) and writes
/// its access-log line.
fn record_relay(
    gw: &Gateway,
    route: &Arc<str>,
    client: ClientInfo,
    duration: std::time::Duration,
    stats: &relay::RelayStats,
) {
    let metrics = &gw.metrics;
    for (direction, traffic) in [
        ("client_to_upstream", stats.client_to_upstream),
        ("upstream_to_client", stats.upstream_to_client),
    ] {
        let labels = TrafficLabels {
            route: route.clone(),
            direction,
        };
        metrics.bytes.get_or_create(&labels).inc_by(traffic.bytes);
        metrics
            .messages
            .get_or_create(&labels)
            .inc_by(traffic.messages);
    }
    metrics
        .connection_duration
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(duration.as_secs_f64());
    metrics
        .connections_ended
        .get_or_create(&EndLabels {
            ended_by: stats.ended.label(),
        })
        .inc();
    let (initiator, code) = close_of(stats);
    let code = code_label(code);
    metrics
        .closes
        .get_or_create(&CloseLabels { code, initiator })
        .inc();
    gw.access.closed(
        route,
        client.ip,
        duration,
        (
            stats.client_to_upstream.bytes,
            stats.upstream_to_client.bytes,
        ),
        code,
        stats.ended.label(),
    );
}

/// Who closed first, and with which code: a Close without a code counts as 1005, a
/// connection that ended without a Close as 1006 (RFC 6455 §7.4.1).
fn close_of(stats: &relay::RelayStats) -> (&'static str, u16) {
    let sent = |t: relay::Traffic| match (t.close_sent, t.close_code) {
        (true, Some(code)) => code,
        (true, None) => 1005,
        (false, _) => 1006,
    };
    match stats.ended {
        Ended::Client => ("client", sent(stats.client_to_upstream)),
        Ended::Upstream => ("upstream", sent(stats.upstream_to_client)),
        Ended::Error(Side::Client, _) => ("client", 1006),
        Ended::Error(Side::Upstream, _) => ("upstream", 1006),
        Ended::Injected(code) => ("gateway", code),
        Ended::MessageTooBig(_) => ("gateway", 1009),
        Ended::IdleTimeout | Ended::HeartbeatTimeout(Side::Client) => ("gateway", 1001),
        Ended::HeartbeatTimeout(Side::Upstream) => ("gateway", 1011),
        Ended::ProtocolError(_) => ("gateway", 1002),
    }
}

/// A close code as a metric label, from a bounded set (peers choose codes freely).
fn code_label(code: u16) -> &'static str {
    const REGISTERED: [&str; 16] = [
        "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010",
        "1011", "1012", "1013", "1014", "1015",
    ];
    match code {
        1000..=1015 => REGISTERED[usize::from(code - 1000)],
        3000..=3999 => "3xxx",
        4000..=4999 => "4xxx",
        _ => "invalid",
    }
}
