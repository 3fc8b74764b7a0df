//! The data plane: the listener, the handshake in the order of docs/design.md §5, the upstream
//! exchange and the frame relay. Reads only the active [`Snapshot`]; never imports the API
//! types or a Kubernetes client, and never waits on the control plane.
//!
//! Phases of one request, and what an error in each means:
//! 1. route selection by host and path (404);
//! 2. upgrade validation, RFC 6455 §4.2.1 (426, 400);
//! 3. origin policy (403, or 101 then Close 1008 with `rejection: Close`);
//! 4. admission limits (503, 429) and the subprotocol allowlist (403);
//! 5. upstream connect and handshake (502, 504, or the upstream's own answer);
//! 6. relay until either side closes.

pub mod admission;
pub mod client;
pub mod extensions;
pub mod frame;
pub mod handshake;
pub mod http1;
pub mod registry;
pub mod relay;
pub mod stream;
pub mod upstream;

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;

use crate::accept::stopped;
use crate::accept::{AcceptErrors, accept};
use crate::access::{AccessLog, Handshake};
use crate::auth::AuthFailure;
use crate::metrics::{CloseLabels, EndLabels, Metrics, RouteLabels, TrafficLabels};
use crate::policy::RequestOrigin;
use crate::route::{OriginRejection, Route, RouteAuth};
use crate::snapshot::Published;
use admission::{Admissions, Denied, Slot};
use client::TrustedProxies;
use handshake::{AcceptKey, Reject};
use http1::{HeadError, Headers, Prefixed};
use registry::{CLOSE_POLICY, CLOSE_RESTART, Registry};
use relay::{ConnControl, Ended, Side};
use stream::Stream;
use upstream::{ClientInfo, UpstreamTimeouts};

/// Tunables of the data plane.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Upstream connect and response timeouts.
    pub upstream: UpstreamTimeouts,
    /// How long a client may take to send its request head.
    pub header_read_timeout: Duration,
    /// Largest request head accepted, in bytes.
    pub max_header_bytes: usize,
    /// How long to wait for a peer's Close reply, or for the other direction after one
    /// side ended.
    pub close_linger: Duration,
    /// Most client connections open at once (503 beyond).
    pub max_connections: usize,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// Whether every connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            upstream: UpstreamTimeouts {
                connect: Duration::from_secs(5),
                response: Duration::from_secs(10),
            },
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            close_linger: Duration::from_secs(2),
            max_connections: 100_000,
            trusted_proxies: TrustedProxies::default(),
            proxy_protocol: false,
        }
    }
}

/// State shared by the listener, the route source and the admin endpoints.
pub struct Gateway {
    published: Arc<Published>,
    connections: Arc<Registry>,
    admissions: Arc<Admissions>,
    /// Set while at `max_connections`, so reaching it is logged once, not per connection.
    full: AtomicBool,
    metrics: Metrics,
    access: AccessLog,
    config: ProxyConfig,
    /// HTTP connections not yet upgraded (or done), for draining.
    http_connections: AtomicUsize,
    http_idle: Notify,
}

impl Gateway {
    /// A gateway serving what is published in `published`; with nothing published yet,
    /// every handshake gets 503. Each snapshot published from now on closes the live
    /// connections it no longer admits (1008, or 1001 when their route is gone).
    pub fn new(config: ProxyConfig, published: Arc<Published>) -> Arc<Gateway> {
        let connections = Arc::new(Registry::default());
        let registry = connections.clone();
        published.on_publish(move |snapshot| {
            let revoked = registry.revoke(&snapshot.table);
            if revoked.policy + revoked.gone > 0 {
                tracing::info!(
                    version = snapshot.version,
                    origin_revoked = revoked.policy,
                    route_removed = revoked.gone,
                    "closed connections the new snapshot no longer admits"
                );
            }
        });
        Arc::new(Gateway {
            metrics: published.metrics().clone(),
            published,
            connections,
            admissions: Arc::new(Admissions::default()),
            full: AtomicBool::new(false),
            access: AccessLog::new(),
            config,
            http_connections: AtomicUsize::new(0),
            http_idle: Notify::new(),
        })
    }

    /// Where the gateway's snapshots are published.
    pub fn published(&self) -> &Arc<Published> {
        &self.published
    }

    /// The data plane's tunables.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// The metric families.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sends Close 1012 to every relayed connection (and every one that completes its
    /// handshake from now on) and resolves once all are gone.
    pub async fn drain(&self) {
        self.published.start_draining();
        let n = self.connections.close_all();
        tracing::info!(connections = n, "closing live connections with 1012");
        tokio::join!(self.connections.wait_empty(), self.wait_http_idle());
    }

    async fn wait_http_idle(&self) {
        loop {
            let idle = self.http_idle.notified();
            if self.http_connections.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// How many relayed connections are live.
    pub fn live_connections(&self) -> usize {
        self.connections.len()
    }

    /// Client connections open: handshaking and relayed (a connection finishing its
    /// handshake may be counted twice for a moment, which errs towards the cap).
    fn open_connections(&self) -> usize {
        self.http_connections.load(Ordering::Acquire) + self.connections.len()
    }

    /// Whether one more connection fits under `max_connections`; logs reaching the cap and
    /// leaving it once each.
    fn has_room(&self) -> bool {
        let room = self.open_connections() < self.config.max_connections;
        if self.full.swap(!room, Ordering::AcqRel) == room {
            if room {
                tracing::info!(
                    limit = self.config.max_connections,
                    "below the connection limit again"
                );
            } else {
                tracing::warn!(
                    limit = self.config.max_connections,
                    "at the connection limit (--max-connections): new connections get 503"
                );
            }
        }
        room
    }
}

/// A TLS acceptor for the TLS listener: each handshake's certificate is picked by SNI from
/// the gateway's active snapshot, so a new snapshot (a rotated Secret) applies to the next
/// handshake; an unknown name fails the handshake rather than get another's certificate.
pub fn tls_acceptor(gateway: Arc<Gateway>) -> TlsAcceptor {
    TlsAcceptor::from(Arc::new(crate::tls::server_config(Arc::new(SniResolver(
        gateway,
    )))))
}

/// Picks a certificate by SNI from the active snapshot.
struct SniResolver(Arc<Gateway>);

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl rustls::server::ResolvesServerCert for SniResolver {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let name = hello.server_name()?;
        self.0
            .published
            .current()?
            .table
            .certificates()
            .lookup(name)
            .cloned()
    }
}

/// Accepts connections on `listener` until `stop` turns true; each connection is served
/// in its own task, handshake and relay alike; with `tls`, each speaks TLS first.
/// Connections still reading their request head then close; those further along finish
/// their handshake.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let mut errors = AcceptErrors::new(if tls.is_some() { "tls" } else { "proxy" });
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener, &mut errors) => accepted,
            () = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        if !gateway.has_room() {
            tokio::spawn(turn_away(stream, peer, gateway.clone()));
            continue;
        }
        let phase = HttpPhase::enter(gateway.clone());
        tokio::spawn(Connection::new(
            stream,
            peer,
            phase,
            tls.clone(),
            stop.clone(),
        ));
    }
}

/// How long a connection turned away at the connection limit may take to send its request,
/// which is read and discarded so the 503 is not lost to a reset.
const TURN_AWAY_LINGER: Duration = Duration::from_secs(1);

/// Answers a connection beyond `max_connections` with 503 without reading its request
/// first (its request would cost what the limit protects), then reads and discards what it
/// sends for a moment: closing a socket with unread data resets it, and the client would
/// lose the answer.
async fn turn_away(mut stream: TcpStream, peer: SocketAddr, gateway: Arc<Gateway>) {
    let r = Reject::Overloaded;
    outcome(
        &gateway,
        None,
        ClientInfo {
            addr: peer,
            ip: peer.ip(),
            proto: "http",
        },
        None,
        r.result(),
        r.reason(),
    );
    let mut response = Vec::with_capacity(192);
    r.write_response(&mut response);
    if stream.write_all(&response).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(TURN_AWAY_LINGER, async {
        while matches!(tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await, Ok(n) if n > 0)
        {
        }
    })
    .await;
}

/// A connection in its HTTP phase (before the relay), counted so that draining waits for
/// handshakes under way.
struct HttpPhase(Arc<Gateway>);

impl HttpPhase {
    fn enter(gateway: Arc<Gateway>) -> HttpPhase {
        gateway.http_connections.fetch_add(1, Ordering::AcqRel);
        HttpPhase(gateway)
    }
}

impl Drop for HttpPhase {
    fn drop(&mut self) {
        if self.0.http_connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.http_idle.notify_waiters();
        }
    }
}

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
enum Connection {
    Handshake(
        Arc<Gateway>,
        Pin<Box<dyn Future<Output = Option<Upgraded>> + Send>>,
    ),
    Relaying(Relaying),
    Done,
}

impl Connection {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        phase: HttpPhase,
        tls: Option<TlsAcceptor>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let gateway = phase.0.clone();
        Connection::Handshake(gateway, Box::pin(handshake(stream, peer, phase, tls, stop)))
    }
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
                    let stats = std::task::ready!(Pin::new(&mut relaying.relay).poll(cx));
                    relaying.finish(&stats);
                    *this = Connection::Done;
                }
                Connection::Done => return Poll::Ready(()),
            }
        }
    }
}

/// A relayed connection and what its end is recorded with.
struct Relaying {
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
    fn start(gateway: Arc<Gateway>, upgraded: Upgraded) -> Relaying {
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
struct Upgraded {
    route: Arc<Route>,
    client: ClientInfo,
    client_io: Prefixed<Stream>,
    upstream_io: Prefixed<Stream>,
    /// The upstream accepted `permessage-deflate`.
    deflate: bool,
    registration: registry::Registration,
    admission: Option<Box<Slot>>,
}

/// Serves the HTTP phase of a connection: answers it, or returns it upgraded.
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    phase: HttpPhase,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) -> Option<Upgraded> {
    let gateway = phase.0.clone();
    let mut client = ClientInfo {
        addr: peer,
        ip: peer.ip(),
        proto: if tls.is_some() { "https" } else { "http" },
    };
    let mut buf = Vec::with_capacity(HEAD_CAPACITY);
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
                let io = Prefixed::new(tcp, &buf);
                buf.clear();
                let tls = acceptor.accept(io).await.map_err(Unread::Tls)?;
                Stream::Tls(Box::new(tls.into()))
            }
        };
        let stream = opened.insert(stream);
        let head_len = http1::read_head(stream, &mut buf, config.max_header_bytes)
            .await
            .map_err(Unread::Head)?;
        Ok((source, head_len))
    };
    // One deadline covers the PROXY header, the TLS handshake and the request head: a slow
    // client cannot hold its socket longer by sending any of them a byte at a time.
    let read = tokio::select! {
        read = tokio::time::timeout(config.header_read_timeout, read) => read,
        // Nothing was asked yet: just close.
        () = stopped(&mut stop) => return None,
    };
    drop(stop);
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
    let mut stream = opened?;
    let plan = plan(&buf[..head_len], &gateway, client, stream.sni());
    let client = plan.client;
    let leftover = &buf[head_len..];
    let origin = plan
        .origin
        .clone()
        .and_then(|r| std::str::from_utf8(&buf[r]).ok());
    match plan.step {
        Step::Refuse(route, reject) => {
            refuse(
                &mut stream,
                &gateway,
                route.as_deref(),
                reject,
                client,
                origin,
            )
            .await;
        }
        Step::CloseAfterUpgrade(route, accept) => {
            close_after_upgrade(stream, leftover, phase, &route, accept, client, origin).await;
        }
        Step::Forward {
            route,
            request,
            extensions,
            origin: request_origin,
            accept,
            admission,
        } => {
            // Registered before the upstream is asked, so that a snapshot published while it
            // answers applies to this connection as to the relayed ones.
            let mut registration = gateway.connections.register(route.clone(), request_origin);
            let control = registration.control();
            let sent = upstream::send(
                &route.upstream,
                &request,
                gateway.config.upstream,
                &gateway.metrics.upstream_connect_seconds,
            );
            let answer = tokio::select! {
                answer = sent => answer,
                code = revoked_in_flight(&control) => Err(revocation(code)),
            };
            let answer = match answer {
                Ok(answer) => answer,
                Err(reject) => {
                    refuse_decided(
                        stream, leftover, phase, &route, reject, accept, client, origin,
                    )
                    .await;
                    return None;
                }
            };
            drop(request);
            // The newest snapshot decides, also one published between this handshake's
            // decision and its registration, and whatever the route's revokeOnPolicyChange:
            // nothing relays yet.
            if let Some((code, _)) = gateway
                .published
                .current()
                .and_then(|newest| registration.verdict(&newest.table))
            {
                refuse_decided(
                    stream,
                    leftover,
                    phase,
                    &route,
                    revocation(code),
                    accept,
                    client,
                    origin,
                )
                .await;
                return None;
            }
            let (reply, deflate) = match answer_client(&answer, accept, extensions.as_deref()) {
                Ok(Reply::Upgrade(reply, deflate)) => (reply, deflate),
                Ok(Reply::Refusal(head, body)) => {
                    // The upstream refused: its status and body go back to the client.
                    outcome(
                        &gateway,
                        Some(&route.label),
                        client,
                        origin,
                        "rejected",
                        "upstream_refused",
                    );
                    let patience = gateway.config.upstream.response;
                    pass_refusal(stream, answer, &head, body, patience).await;
                    return None;
                }
                Err(reject) => {
                    refuse(&mut stream, &gateway, Some(&route), reject, client, origin).await;
                    return None;
                }
            };
            registration.relaying();
            outcome(
                &gateway,
                Some(&route.label),
                client,
                origin,
                "accepted",
                "ok",
            );
            if let Err(e) = stream.write_all(&reply).await {
                tracing::debug!(%peer, error = %e, "client went away before its 101");
                return None;
            }
            let upstream_io = Prefixed::new(answer.stream, &answer.buf[answer.head_len..]);
            let client_io = Prefixed::new(stream, leftover);
            return Some(Upgraded {
                route,
                client,
                client_io,
                upstream_io,
                deflate,
                registration,
                admission,
            });
        }
    }
    None
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

/// Answers a handshake refused after its decision: an origin refusal on a route with
/// `rejection: Close` is a 101 and Close 1008, like one refused at once; anything else is
/// its status.
#[allow(clippy::too_many_arguments)]
async fn refuse_decided(
    mut stream: Stream,
    leftover: &[u8],
    phase: HttpPhase,
    route: &Route,
    reject: Reject,
    accept: AcceptKey,
    client: ClientInfo,
    origin: Option<&str>,
) {
    if reject == Reject::OriginDenied && route.rejection == OriginRejection::Close {
        close_after_upgrade(stream, leftover, phase, route, accept, client, origin).await;
    } else {
        refuse(&mut stream, &phase.0, Some(route), reject, client, origin).await;
    }
}

/// `rejection: Close`: a 101, then Close 1008 `origin not allowed`.
async fn close_after_upgrade(
    mut stream: Stream,
    leftover: &[u8],
    phase: HttpPhase,
    route: &Route,
    accept: AcceptKey,
    client: ClientInfo,
    origin: Option<&str>,
) {
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

/// What to do with a request, decided from its head alone.
struct Plan {
    /// Where the `Origin` header's value is in the head, for the access log.
    origin: Option<Range<usize>>,
    /// The client, with `X-Forwarded-For` applied when it came through a trusted proxy.
    client: ClientInfo,
    step: Step,
}

enum Step {
    /// Answer with this rejection.
    Refuse(Option<Arc<Route>>, Reject),
    /// `rejection: Close`: 101, then Close 1008.
    CloseAfterUpgrade(Arc<Route>, AcceptKey),
    /// Send `request` to the route's upstream.
    Forward {
        route: Arc<Route>,
        request: Vec<u8>,
        /// The `Sec-WebSocket-Extensions` offers in `request`, if any.
        extensions: Option<String>,
        origin: RequestOrigin,
        accept: AcceptKey,
        /// The connection's place under its route's limits.
        admission: Option<Box<Slot>>,
    },
}

/// Steps 1–4 of the handshake and the upstream request, from the request head: pure CPU work
/// on borrowed bytes, done before any await so that no parsed header outlives it.
fn plan(head: &[u8], gateway: &Gateway, mut client: ClientInfo, sni: Option<&str>) -> Plan {
    let mut slots = [httparse::EMPTY_HEADER; http1::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let refuse = |route, reject| Plan {
        origin: None,
        client,
        step: Step::Refuse(route, reject),
    };
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return refuse(None, Reject::HeadTooLarge),
        _ => return refuse(None, Reject::Malformed),
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return refuse(None, Reject::Malformed);
    };
    let headers = Headers::new(req.headers);
    if !gateway.config.trusted_proxies.is_empty() {
        client.ip = gateway
            .config
            .trusted_proxies
            .client(client.ip, headers.get_all("x-forwarded-for"));
    }
    let origin_span = headers.get("origin").map(|v| {
        // A value httparse returned lies inside `head`.
        let start = v.as_ptr() as usize - head.as_ptr() as usize;
        start..start + v.len()
    });
    let step = decide(method, target, req.version, headers, gateway, client, sni);
    Plan {
        origin: origin_span,
        client,
        step,
    }
}

fn decide(
    method: &str,
    target: &str,
    version: Option<u8>,
    headers: Headers<'_>,
    gateway: &Gateway,
    client: ClientInfo,
    sni: Option<&str>,
) -> Step {
    let Some(snapshot) = gateway.published.current() else {
        return Step::Refuse(None, Reject::NotReady);
    };
    let mut hosts = headers.get_all("host");
    let (host_header, second_host) = (hosts.next(), hosts.next());
    let absolute = http1::absolute_form(target);
    // RFC 9112 §3.2: one Host; with an absolute-form target, its authority is the host. A
    // request that names two hosts could be routed by one and served by the other.
    if second_host.is_some()
        || absolute
            .zip(host_header)
            .is_some_and(|((authority, _), host)| {
                !host.trim_ascii().eq_ignore_ascii_case(authority.as_bytes())
            })
    {
        return Step::Refuse(None, Reject::AmbiguousHost);
    }
    let host = request_host(host_header, target);
    // Routed and forwarded in normal form, so the route that matches is the one whose
    // backend serves the path.
    let (raw_path, query) = http1::split_target(target);
    let Ok(path) = crate::route::path::normalize(raw_path) else {
        return Step::Refuse(None, Reject::BadPath);
    };
    let target = match (&path, absolute) {
        (Cow::Borrowed(_), None) => Cow::Borrowed(target),
        _ => Cow::Owned(match query {
            Some(query) => format!("{path}?{query}"),
            None => path.clone().into_owned(),
        }),
    };

    // A TLS client asks for one host in SNI and another in Host: refused, so one tenant's
    // certificate cannot front another tenant's route (RFC 9110 §15.5.20).
    if sni.is_some_and(|name| !name.trim_end_matches('.').eq_ignore_ascii_case(&host)) {
        return Step::Refuse(None, Reject::Misdirected);
    }
    let Some((route, tls_only)) = snapshot.table.select(&host, &path) else {
        return Step::Refuse(None, Reject::NoRoute);
    };
    let route = route.clone();
    // TLS-only is a property of the hostname: no route serves part of it in clear text.
    if tls_only && sni.is_none() {
        return Step::Refuse(Some(route), Reject::TlsRequired);
    }
    // Snapshots are swapped whole; this handshake keeps the route it selected.
    drop(snapshot);
    if version != Some(1) {
        // HTTP/1.0 has no Upgrade.
        return Step::Refuse(Some(route), Reject::NotWebSocket);
    }
    let accept = match handshake::validate(method, headers) {
        Ok(accept) => accept,
        Err(r) => return Step::Refuse(Some(route), r),
    };
    let origin = RequestOrigin::from_header_values(headers.get_all("origin"));
    if !route.origins.allows(&origin) {
        return match route.rejection {
            OriginRejection::Forbidden => Step::Refuse(Some(route), Reject::OriginDenied),
            OriginRejection::Close => Step::CloseAfterUpgrade(route, accept),
        };
    }
    let (target, claims) = match &route.auth {
        None => (target, Vec::new()),
        Some(RouteAuth::Unavailable) => return Step::Refuse(Some(route), Reject::AuthUnavailable),
        Some(RouteAuth::Jwt(jwt)) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            match jwt.check(&target, headers, now) {
                Ok(claims) => {
                    let stripped = match target {
                        Cow::Borrowed(target) => jwt.strip_token_params(target),
                        Cow::Owned(target) => {
                            Cow::Owned(jwt.strip_token_params(&target).into_owned())
                        }
                    };
                    (stripped, claims)
                }
                Err(AuthFailure::Missing) => {
                    return Step::Refuse(Some(route), Reject::Unauthorized);
                }
                Err(AuthFailure::Repeated) => {
                    return Step::Refuse(Some(route), Reject::TokenRepeated);
                }
                Err(AuthFailure::Invalid(why)) => {
                    tracing::debug!(client = %client.ip, route = %route.label, reason = why, "token refused");
                    return Step::Refuse(Some(route), Reject::InvalidToken);
                }
            }
        }
    };
    let admission = match gateway.admissions.admit(
        &route.label,
        route.admission,
        client.ip,
        std::time::Instant::now(),
    ) {
        Ok(slot) => slot.map(Box::new),
        Err(denied) => {
            let reject = match denied {
                Denied::RouteFull => Reject::RouteFull,
                Denied::ClientConnections => Reject::TooManyConnections,
                Denied::ClientRate(seconds) => Reject::TooManyHandshakes(seconds),
            };
            return Step::Refuse(Some(route), reject);
        }
    };
    let subprotocols = match &route.subprotocols {
        Some(allowed) => match handshake::filter_subprotocols(headers, allowed) {
            Some(kept) => Some(kept),
            None => return Step::Refuse(Some(route), Reject::SubprotocolDenied),
        },
        None => None,
    };
    let dropped = match &route.auth {
        Some(RouteAuth::Jwt(jwt)) => jwt.forwarded_headers(),
        _ => &[],
    };
    // No compression under a message limit: the limit counts what the upstream receives.
    let extensions = extensions::offers(headers, route.limits.max_message_bytes.is_none());
    let request = upstream::forward_request(
        &target,
        headers,
        &route.upstream,
        upstream::Forwarding {
            client,
            trusted_peer: gateway.config.trusted_proxies.contains(client.addr.ip()),
            subprotocols: subprotocols.as_deref(),
            extensions: extensions.as_deref(),
            claims: upstream::Claims {
                dropped,
                added: &claims,
            },
        },
    );
    Step::Forward {
        route,
        request,
        extensions,
        origin,
        accept,
        admission,
    }
}

/// The Host header (or the absolute-form target's authority), lowercase, without the port or
/// a trailing dot.
fn request_host<'a>(host: Option<&'a [u8]>, target: &'a str) -> Cow<'a, str> {
    let raw = host
        .and_then(|h| std::str::from_utf8(h).ok())
        .or_else(|| http1::absolute_form(target).map(|(authority, _)| authority))
        .unwrap_or("")
        .trim();
    let host = if raw.starts_with('[') {
        // A bracketed IPv6 literal: the port, if any, follows the `]`.
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    // `chat.example.com.` (fully qualified) names the same host.
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// What the client is sent for an upstream's response.
enum Reply {
    /// A 101 head, and whether it negotiated `permessage-deflate`.
    Upgrade(Vec<u8>, bool),
    /// The head of the upstream's refusal, and how much body follows it.
    Refusal(Vec<u8>, RefusalBody),
}

/// How long a refusal's body is, by its status and framing headers (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefusalBody {
    /// 1xx, 204 and 304 responses have none.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked or unframed: whatever comes until the upstream closes.
    UntilClose,
}

impl RefusalBody {
    fn of(code: u16, headers: Headers<'_>) -> RefusalBody {
        if code < 200 || code == 204 || code == 304 {
            return RefusalBody::Empty;
        }
        if headers.get("transfer-encoding").is_some() {
            return RefusalBody::UntilClose;
        }
        headers
            .get("content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse().ok())
            .map_or(RefusalBody::UntilClose, RefusalBody::Length)
    }

    /// Bytes to pass on, at most `cap`.
    fn limit(self, cap: u64) -> u64 {
        match self {
            RefusalBody::Empty => 0,
            RefusalBody::Length(n) => n.min(cap),
            RefusalBody::UntilClose => cap,
        }
    }
}

/// The client's answer to an upstream response: a 101 with the upstream's headers but
/// hop-by-hop ones, or the head of the upstream's refusal. A 101 whose accept value does not
/// match the client's key, or that accepts an extension not among the `extensions` offered
/// to the upstream, is refused here, where a status code still can be sent: the client would
/// fail the connection (RFC 6455 §4.1), and the relay could not check its frames.
fn answer_client(
    answer: &upstream::Answer,
    accept: AcceptKey,
    extensions: Option<&str>,
) -> Result<Reply, Reject> {
    let mut slots = [httparse::EMPTY_HEADER; http1::MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    match resp.parse(&answer.buf[..answer.head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Reject::UpstreamInvalid),
    }
    let code = resp.code.unwrap_or(0);
    let headers = Headers::new(resp.headers);
    if code != 101 {
        let mut out = Vec::with_capacity(answer.head_len + 32);
        http1::put_status(&mut out, code, resp.reason.unwrap_or(""));
        for (name, value) in headers.iter() {
            if !headers.is_hop_by_hop(name, true) {
                http1::put_header(&mut out, name, value);
            }
        }
        out.extend_from_slice(b"connection: close\r\n\r\n");
        return Ok(Reply::Refusal(out, RefusalBody::of(code, headers)));
    }
    if headers.get("sec-websocket-accept") != Some(accept.as_bytes()) {
        return Err(Reject::UpstreamInvalid);
    }
    let deflate = extensions::negotiated(headers, extensions).map_err(|e| {
        tracing::debug!(error = %e, "upstream 101 refused");
        Reject::UpstreamInvalid
    })?;
    Ok(Reply::Upgrade(
        switching_protocols(Some(headers), accept),
        deflate,
    ))
}

/// A 101 answer: the upstream's headers but hop-by-hop ones (or just the accept value when
/// there is no upstream answer), and the upgrade headers.
fn switching_protocols(upstream: Option<Headers<'_>>, accept: AcceptKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    match upstream {
        Some(headers) => {
            for (name, value) in headers.iter() {
                if !headers.is_hop_by_hop(name, false) {
                    http1::put_header(&mut out, name, value);
                }
            }
        }
        None => http1::put_header(&mut out, "sec-websocket-accept", accept.as_bytes()),
    }
    out.extend_from_slice(b"connection: Upgrade\r\nupgrade: websocket\r\n\r\n");
    out
}

/// Largest refusal body passed on from an upstream.
const MAX_REFUSAL_BODY: u64 = 1 << 20;

/// Sends an upstream's refusal head, then its body as it comes (`Content-Length` bytes, or
/// chunks unchanged until the upstream closes), within `patience`; then closes both. An
/// upstream that keeps its connection open after a sized body does not hold the client.
async fn pass_refusal(
    mut client: Stream,
    answer: upstream::Answer,
    head: &[u8],
    body: RefusalBody,
    patience: Duration,
) {
    let upstream::Answer {
        stream: upstream,
        buf,
        head_len,
    } = answer;
    let body = async {
        client.write_all(head).await?;
        let limit = body.limit(MAX_REFUSAL_BODY);
        let first = &buf[head_len..];
        let first = &first[..first.len().min(limit as usize)];
        client.write_all(first).await?;
        let mut rest = tokio::io::AsyncReadExt::take(upstream, limit - first.len() as u64);
        tokio::io::copy(&mut rest, &mut client).await?;
        client.shutdown().await
    };
    if let Ok(Err(e)) = tokio::time::timeout(patience, body).await {
        tracing::debug!(error = %e, "passing the upstream's refusal on failed");
    }
}

/// Counts a handshake's outcome and writes its access-log line.
fn outcome(
    gateway: &Gateway,
    route: Option<&Arc<str>>,
    client: ClientInfo,
    origin: Option<&str>,
    result: &'static str,
    reason: &'static str,
) {
    gateway.metrics.handshake(route, result, reason);
    gateway.access.handshake(Handshake {
        route: route.map(|r| &**r),
        client: client.ip,
        origin,
        result,
        reason,
    });
}

/// Answers with a rejection, counts it and closes.
async fn refuse(
    stream: &mut Stream,
    gateway: &Gateway,
    route: Option<&Route>,
    r: Reject,
    client: ClientInfo,
    origin: Option<&str>,
) {
    let name = route.map(|r| &r.label);
    outcome(gateway, name, client, origin, r.result(), r.reason());
    let name = name.map(|n| &**n);
    match r.blame() {
        handshake::Blame::Downstream => {
            tracing::debug!(client = %client.ip, route = name.unwrap_or(""), reason = r.reason(), "handshake rejected")
        }
        _ => {
            tracing::warn!(client = %client.ip, route = name.unwrap_or(""), reason = r.reason(), "handshake failed")
        }
    }
    let mut response = Vec::with_capacity(256);
    r.write_response(&mut response);
    // Dropping the socket then closes it with a FIN after the response.
    let _ = stream.write_all(&response).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(code: u16, headers: &[(&str, &str)]) -> RefusalBody {
        let parsed = http1::headers_from(headers);
        RefusalBody::of(code, Headers::new(&parsed))
    }

    #[test]
    fn a_refusal_body_is_sized_by_status_then_framing_headers() {
        assert_eq!(body_of(204, &[("Content-Length", "5")]), RefusalBody::Empty);
        assert_eq!(body_of(304, &[]), RefusalBody::Empty);
        assert_eq!(
            body_of(403, &[("Content-Length", " 12 ")]),
            RefusalBody::Length(12)
        );
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
        assert_eq!(
            body_of(
                403,
                &[("Transfer-Encoding", "chunked"), ("Content-Length", "5")]
            ),
            RefusalBody::UntilClose
        );
        assert_eq!(body_of(401, &[]), RefusalBody::UntilClose);
        assert_eq!(
            body_of(401, &[("Content-Length", "lots")]),
            RefusalBody::UntilClose
        );
    }

    #[test]
    fn a_refusal_body_passed_on_is_capped() {
        assert_eq!(RefusalBody::Length(5).limit(1024), 5);
        assert_eq!(RefusalBody::Length(5000).limit(1024), 1024);
        assert_eq!(RefusalBody::UntilClose.limit(1024), 1024);
        assert_eq!(RefusalBody::Empty.limit(1024), 0);
    }
}
