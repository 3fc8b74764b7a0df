//! The data plane: the listener, the handshake in the order of DESIGN §5, the upstream
//! exchange and the frame relay. Reads only the active [`Snapshot`]; never imports the API
//! types or a Kubernetes client, and never waits on the control plane.
//!
//! Phases of one request, and what an error in each means:
//! 1. route selection by host and path (404);
//! 2. upgrade validation, RFC 6455 §4.2.1 (426, 400);
//! 3. origin policy (403, or 101 then Close 1008 with `rejection: Close`);
//! 4. subprotocol allowlist (403);
//! 5. upstream connect and handshake (502, 504, or the upstream's own answer);
//! 6. relay until either side closes.

pub mod frame;
pub mod handshake;
pub mod registry;
pub mod relay;
pub mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::access::{AccessLog, Handshake};
use crate::metrics::{CloseLabels, EndLabels, Metrics, RouteLabels, TrafficLabels};
use crate::policy::RequestOrigin;
use crate::route::{OriginRejection, Route};
use crate::snapshot::Snapshot;
use handshake::Reject;
use registry::{CLOSE_POLICY, Registry};
use relay::{Ended, Side};
use upstream::{ClientInfo, UpstreamTimeouts};

/// The body of every response the proxy sends: its own text, or the upstream's body.
pub type Body = Either<Full<Bytes>, Incoming>;

/// Tunables of the data plane.
#[derive(Debug, Clone, Copy)]
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
        }
    }
}

/// State shared by the listener, the route source and the admin endpoints.
pub struct Gateway {
    snapshot: ArcSwapOption<Snapshot>,
    connections: Arc<Registry>,
    metrics: Metrics,
    access: AccessLog,
    config: ProxyConfig,
    draining: AtomicBool,
    /// HTTP connections not yet upgraded (or done), for draining.
    http_connections: AtomicUsize,
    http_idle: Notify,
}

impl Gateway {
    /// A gateway with no snapshot yet: not ready, every handshake gets 503.
    pub fn new(config: ProxyConfig, metrics: Metrics) -> Arc<Gateway> {
        Arc::new(Gateway {
            snapshot: ArcSwapOption::empty(),
            connections: Arc::new(Registry::default()),
            metrics,
            access: AccessLog::new(),
            config,
            draining: AtomicBool::new(false),
            http_connections: AtomicUsize::new(0),
            http_idle: Notify::new(),
        })
    }

    /// Makes `snapshot` active: new handshakes see it at once; live connections it no longer
    /// admits are closed (1008, or 1001 when their route is gone).
    pub fn publish(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        self.snapshot.store(Some(snapshot.clone()));
        self.metrics.snapshot_version.set(snapshot.version as i64);
        self.metrics
            .snapshot_routes
            .set(snapshot.table.len() as i64);
        self.metrics
            .source_errors
            .set(snapshot.problems.len() as i64);
        let revoked = self.connections.revoke(&snapshot.table);
        if revoked.policy + revoked.gone > 0 {
            tracing::info!(
                version = snapshot.version,
                origin_revoked = revoked.policy,
                route_removed = revoked.gone,
                "closed connections the new snapshot no longer admits"
            );
        }
    }

    /// The active snapshot, if one was published.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.load_full()
    }

    /// Ready once a snapshot is active, and no longer once draining.
    pub fn ready(&self) -> bool {
        self.snapshot.load().is_some() && !self.draining.load(Ordering::Acquire)
    }

    /// The metric families.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Marks the gateway as draining: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Sends Close 1012 to every relayed connection (and every one that completes its
    /// handshake from now on) and resolves once all are gone.
    pub async fn drain(&self) {
        self.start_draining();
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
}

/// Accepts connections on `listener` until `stop` turns true; each connection is served
/// in its own task. Connections still in their HTTP phase then finish their current
/// request and close.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let stop = stop.clone();
        gateway.http_connections.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            serve_connection(stream, peer, &gateway, stop).await;
            if gateway.http_connections.fetch_sub(1, Ordering::AcqRel) == 1 {
                gateway.http_idle.notify_waiters();
            }
        });
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    gateway: &Arc<Gateway>,
    mut stop: watch::Receiver<bool>,
) {
    let client = ClientInfo {
        addr: peer,
        proto: "http",
    };
    let service = {
        let gateway = gateway.clone();
        service_fn(move |req| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(handle(req, &gateway, client).await) }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(gateway.config.header_read_timeout)
        .max_buf_size(gateway.config.max_header_bytes.max(8192));
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "client connection error");
    }
}

/// Runs the handshake and turns a rejection into its response, counting either.
async fn handle(
    req: Request<Incoming>,
    gateway: &Arc<Gateway>,
    client: ClientInfo,
) -> Response<Body> {
    // For the access log; a header value clone shares its bytes.
    let origin = req.headers().get(header::ORIGIN).cloned();
    let origin = origin.as_ref();
    let Some(snapshot) = gateway.snapshot() else {
        return reject(gateway, None, Reject::NotReady, client, origin);
    };
    let host = request_host(&req);
    let Some(route) = snapshot.table.lookup(&host, req.uri().path()).cloned() else {
        return reject(gateway, None, Reject::NoRoute, client, origin);
    };
    // Snapshots are swapped whole; this handshake keeps the route it selected.
    drop(snapshot);
    match admit(req, gateway, &route, client).await {
        Ok(response) => response,
        Err(r) => reject(gateway, Some(&route), r, client, origin),
    }
}

/// Counts a handshake's outcome and writes its access-log line.
fn outcome(
    gateway: &Gateway,
    route: Option<&str>,
    client: ClientInfo,
    origin: Option<&HeaderValue>,
    result: &'static str,
    reason: &'static str,
) {
    gateway.metrics.handshake(route, result, reason);
    gateway.access.handshake(Handshake {
        route,
        client: client.addr,
        origin: origin.and_then(|o| o.to_str().ok()),
        result,
        reason,
    });
}

fn reject(
    gateway: &Gateway,
    route: Option<&Route>,
    r: Reject,
    client: ClientInfo,
    origin: Option<&HeaderValue>,
) -> Response<Body> {
    let name = route.map(|r| r.key.to_string());
    outcome(
        gateway,
        name.as_deref(),
        client,
        origin,
        r.result(),
        r.reason(),
    );
    match r.blame() {
        handshake::Blame::Downstream => {
            tracing::debug!(client = %client.addr, route = name.as_deref().unwrap_or(""), reason = r.reason(), "handshake rejected")
        }
        _ => {
            tracing::warn!(client = %client.addr, route = name.as_deref().unwrap_or(""), reason = r.reason(), "handshake failed")
        }
    }
    r.response::<Full<Bytes>>().map(Either::Left)
}

/// The Host header (or the request target's authority), lowercase, without the port or a
/// trailing dot.
fn request_host(req: &Request<Incoming>) -> String {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("");
    let host = if raw.starts_with('[') {
        // A bracketed IPv6 literal: the port, if any, follows the `]`.
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    // `chat.example.com.` (fully qualified) names the same host.
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Steps 2–6 of the handshake for a request that selected `route`.
async fn admit(
    mut req: Request<Incoming>,
    gateway: &Arc<Gateway>,
    route: &Arc<Route>,
    client: ClientInfo,
) -> Result<Response<Body>, Reject> {
    let accept = handshake::validate(req.method(), req.headers())?;

    let origin = RequestOrigin::from_header_values(
        req.headers()
            .get_all(header::ORIGIN)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    if !route.origins.allows(&origin) {
        return match route.rejection {
            OriginRejection::Forbidden => Err(Reject::OriginDenied),
            OriginRejection::Close => {
                Ok(upgrade_then_close(&mut req, gateway, route, accept, client))
            }
        };
    }

    let subprotocols = match &route.subprotocols {
        Some(allowed) => Some(
            handshake::filter_subprotocols(req.headers(), allowed)
                .ok_or(Reject::SubprotocolDenied)?,
        ),
        None => None,
    };

    let request = upstream::forward_request(
        req.uri(),
        req.headers(),
        &route.upstream,
        subprotocols,
        client,
    );
    let mut response = upstream::send(
        &route.upstream,
        request,
        gateway.config.upstream,
        &gateway.metrics.upstream_connect_seconds,
    )
    .await?;
    let key = route.key.to_string();
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The upstream refused: its status and body go back to the client.
        outcome(
            gateway,
            Some(&key),
            client,
            req.headers().get(header::ORIGIN),
            "rejected",
            "upstream_refused",
        );
        let (mut parts, body) = response.into_parts();
        upstream::strip_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(parts, Either::Right(body)));
    }
    // RFC 6455 §4.1: the client fails the connection unless the accept value matches; catch
    // a broken upstream here, where it can still get a status code.
    if response.headers().get(header::SEC_WEBSOCKET_ACCEPT) != Some(&accept) {
        return Err(Reject::UpstreamInvalid);
    }

    let client_upgrade = hyper::upgrade::on(&mut req);
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    let registration = gateway.connections.register(route.clone(), origin);
    outcome(
        gateway,
        Some(&key),
        client,
        req.headers().get(header::ORIGIN),
        "accepted",
        "ok",
    );
    let gw = gateway.clone();
    let route_label = RouteLabels { route: key };
    let limits = route.limits;
    tokio::spawn(async move {
        let (client_io, upstream_io) = match tokio::join!(client_upgrade, upstream_upgrade) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::debug!(
                    client_ok = c.is_ok(),
                    upstream_ok = u.is_ok(),
                    "upgrade did not complete"
                );
                return;
            }
        };
        let active = gw
            .metrics
            .active_connections
            .get_or_create(&route_label)
            .clone();
        active.inc();
        let started = std::time::Instant::now();
        let stats = relay::relay(
            TokioIo::new(client_io),
            TokioIo::new(upstream_io),
            registration.control(),
            gw.config.close_linger,
            limits,
        )
        .await;
        active.dec();
        record_relay(&gw, &route_label.route, client, started.elapsed(), &stats);
        drop(registration);
    });

    let (parts, _) = response.into_parts();
    let mut reply = Response::from_parts(parts, Either::Left(Full::new(Bytes::new())));
    upstream::strip_hop_by_hop(reply.headers_mut());
    let headers = reply.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    Ok(reply)
}

/// Counts a finished connection (traffic, duration, how it ended and closed) and writes
/// its access-log line.
fn record_relay(
    gw: &Gateway,
    route: &str,
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
            route: route.to_owned(),
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
            route: route.to_owned(),
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
        client.addr,
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

/// `rejection: Close`: complete the upgrade without contacting the upstream, then close
/// with 1008 at once. For clients that treat a failed handshake differently from a close.
fn upgrade_then_close(
    req: &mut Request<Incoming>,
    gateway: &Arc<Gateway>,
    route: &Route,
    accept: HeaderValue,
    client: ClientInfo,
) -> Response<Body> {
    outcome(
        gateway,
        Some(&route.key.to_string()),
        client,
        req.headers().get(header::ORIGIN),
        "rejected",
        Reject::OriginDenied.reason(),
    );
    tracing::debug!(client = %client.addr, route = %route.key, "origin not allowed: closing after upgrade");
    let on_upgrade = hyper::upgrade::on(req);
    let linger = gateway.config.close_linger;
    tokio::spawn(async move {
        if let Ok(io) = on_upgrade.await {
            relay::reject_after_upgrade(
                TokioIo::new(io),
                CLOSE_POLICY,
                "origin not allowed",
                linger,
            )
            .await;
        }
    });
    let mut response = Response::new(Either::Left(Full::new(Bytes::new())));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}
