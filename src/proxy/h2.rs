//! HTTP/2 on the TLS listener: WebSockets as extended CONNECT streams (RFC 8441), many on
//! one connection, each decided as an HTTP/1.1 upgrade is (`decide::decision`: route, TLS,
//! origin, token, limits, subprotocols) and relayed to the upstream over HTTP/1.1, as
//! today; other requests go to `proxy::http` as on an HTTP/1.1 connection.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::ext::Protocol;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{Notify, watch};

use super::admission::Slot;
use super::connection::{self, Exchange, Relaying, Switched};
use super::decide::{self, Decision, Forward};
use super::handshake::{self, Reject};
use super::http::{self as plain, Peer, Reply};
use super::http1::{Headers, Prefixed};
use super::registry::CLOSE_POLICY;
use super::relay;
use super::reply::{self, outcome};
use super::state::{Gateway, HttpPhase};
use super::stream::Stream;
use super::upstream::ClientInfo;
use crate::accept::stopped;
use crate::request::{HeaderLookup, ambiguous_host};
use crate::route::{OriginRejection, Route};

/// Streams one client may have open at once (sockets and requests); the next is refused
/// (RST_STREAM REFUSED_STREAM), as nginx's and Envoy's defaults do at 128 and 100.
const MAX_STREAMS: u32 = 128;

/// Streams a client may reset before the gateway has taken them up: past it, GOAWAY
/// ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487). h2's default, set here so the README's
/// figure cannot move with a dependency.
const MAX_EARLY_RESETS: usize = 20;

/// Bytes a client may send on one stream, and on all of them, before the gateway has read
/// them: what the gateway may hold of an HTTP/2 client's data at once.
const STREAM_WINDOW: u32 = 256 << 10;
const CONNECTION_WINDOW: u32 = 1 << 20;

/// Bytes queued towards a client on one stream before the relay waits for the client to
/// read: the gateway holds no more for a client that stops reading (with HTTP/1.1 the
/// socket's send buffer does this).
const STREAM_SEND_BUFFER: usize = 64 << 10;

/// Serves an HTTP/2 connection until the client closes it or the gateway drains (then
/// GOAWAY: the streams under way continue, and the drain closes their sockets with 1012).
pub(super) async fn serve(
    io: Stream,
    sni: Option<String>,
    client: ClientInfo,
    phase: HttpPhase,
    mut stop: watch::Receiver<bool>,
) {
    let gateway = phase.0.clone();
    let config = &gateway.config;
    let client = ClientInfo {
        version: "2",
        ..client
    };
    // SETTINGS_ENABLE_CONNECT_PROTOCOL goes out before the client names a path: a
    // hostname with a route that refuses sockets over HTTP/2 gets none on its connections,
    // and browsers open them over HTTP/1.1 instead.
    let sockets = match (&sni, gateway.published.current()) {
        (Some(name), Some(snapshot)) => snapshot
            .table
            .http2_sockets(&name.trim_end_matches('.').to_ascii_lowercase()),
        _ => true,
    };
    let peer = Arc::new(Peer {
        gateway: gateway.clone(),
        client,
        sni,
    });
    let in_use = InUse::default();
    let streams = in_use.clone();
    let service = hyper::service::service_fn(move |request| {
        let peer = peer.clone();
        let busy = streams.busy();
        async move { Ok::<_, Infallible>(stream(request, &peer, busy).await) }
    });
    gateway.metrics.http2_connections.inc();
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_pending_accept_reset_streams(MAX_EARLY_RESETS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buf_size(STREAM_SEND_BUFFER)
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    if sockets {
        builder.enable_connect_protocol();
    }
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    // A connection without streams is closed (GOAWAY) after --handshake-timeout, as an
    // HTTP/1.1 connection idle between requests is: it would hold a descriptor and count
    // under --max-connections for nothing.
    let ended = tokio::select! {
        served = connection.as_mut() => Some(served),
        () = stopped(&mut stop) => None,
        () = in_use.idle_for(config.header_read_timeout) => None,
    };
    // GOAWAY; the streams under way finish. A client that then neither closes nor answers
    // the shutdown's PING is dropped once no stream is left for the same time.
    let served = match ended {
        Some(served) => served,
        None => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                served = connection.as_mut() => served,
                () = in_use.idle_for(config.header_read_timeout) => Ok(()),
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(client = %client.ip, error = %e, "HTTP/2 connection ended");
    }
    drop(phase);
}

/// One stream: a WebSocket, or a plain request. `busy` keeps the connection in use until
/// the response is sent (and a socket's relay holds one of its own).
async fn stream(request: Request<Incoming>, peer: &Peer, busy: Busy) -> Response<Tracked> {
    let websocket = request.method() == Method::CONNECT
        && request
            .extensions()
            .get::<Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    let response = match websocket {
        true => websocket_stream(request, peer, busy.0.busy()).await,
        false => plain::answer(request, peer).await,
    };
    response.map(|body| Tracked { body, _busy: busy })
}

/// The streams of one connection in use: requests being answered, responses being sent,
/// sockets being relayed.
#[derive(Clone, Default)]
struct InUse(Arc<(AtomicUsize, Notify)>);

/// One use of a connection, until dropped.
struct Busy(InUse);

impl InUse {
    /// Counts one more use until the guard drops.
    fn busy(&self) -> Busy {
        if self.0.0.fetch_add(1, Ordering::AcqRel) == 0 {
            self.0.1.notify_waiters();
        }
        Busy(self.clone())
    }

    /// Resolves once the connection has had no use for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let changed = self.0.1.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.0.0.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(limit) => {
                    if self.0.0.load(Ordering::Acquire) == 0 {
                        return;
                    }
                }
                () = changed => {}
            }
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.0.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.0.1.notify_waiters();
        }
    }
}

/// A response body that keeps its connection in use until it is sent or dropped.
struct Tracked {
    body: Reply,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = <Reply as hyper::body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The gateway's refusal of a WebSocket stream, counted and logged as a handshake's.
fn refused(
    gateway: &Gateway,
    route: Option<&Arc<str>>,
    client: ClientInfo,
    origin: Option<&str>,
    reject: Reject,
) -> Response<Reply> {
    outcome(
        gateway,
        route,
        client,
        origin,
        reject.result(),
        reject.reason(),
    );
    reject.log("handshake", client.ip, route.map_or("", |r| &**r));
    // The same answer as a plain request's refusal (hyper drops its `Connection: close`).
    plain::refusal(reject)
}

/// `rejection: Close` on a stream: 200, then Close 1008 `origin not allowed`.
fn close_after_upgrade(
    gateway: &Arc<Gateway>,
    route: &Route,
    client: ClientInfo,
    origin: Option<&str>,
    on_upgrade: OnUpgrade,
) -> Response<Reply> {
    outcome(
        gateway,
        Some(&route.label),
        client,
        origin,
        "rejected",
        Reject::OriginDenied.reason(),
    );
    let linger = gateway.config.close_linger;
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            relay::reject_after_upgrade(
                TokioIo::new(upgraded),
                CLOSE_POLICY,
                "origin not allowed",
                linger,
            )
            .await;
        }
    });
    Response::new(Reply::Fixed(None))
}

/// A response from an HTTP/1.1 head the gateway made for a client (a 101, or an
/// upstream's refusal): its status (`switched` for a 101) and its headers but those
/// HTTP/2 forbids or that framed the HTTP/1.1 exchange.
fn from_head(head: &[u8], switched: StatusCode, body: Reply) -> Response<Reply> {
    let mut response = Response::new(body);
    let mut slots = [httparse::EMPTY_HEADER; super::http1::MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    if !matches!(parsed.parse(head), Ok(httparse::Status::Complete(_))) {
        *response.status_mut() = StatusCode::BAD_GATEWAY;
        return response;
    }
    *response.status_mut() = match parsed.code {
        Some(101) => switched,
        code => code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY),
    };
    for h in parsed.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let dropped = matches!(
            name.as_str(),
            "connection"
                | "upgrade"
                | "keep-alive"
                | "proxy-connection"
                | "transfer-encoding"
                | "content-length"
                | "sec-websocket-accept"
        );
        if let (false, Ok(name), Ok(value)) = (
            dropped,
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// An extended CONNECT for `websocket`: decided, exchanged with the upstream over
/// HTTP/1.1, answered 200, then relayed.
async fn websocket_stream(
    mut request: Request<Incoming>,
    peer: &Peer,
    busy: Busy,
) -> Response<Reply> {
    let on_upgrade = hyper::upgrade::on(&mut request);
    let gateway = peer.gateway.clone();
    let (parts, _) = request.into_parts();
    let headers = &parts.headers;
    let client = peer.client.of_request(
        &gateway.config.trusted_proxies,
        HeaderLookup::values(headers, "x-forwarded-for"),
    );
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    let authority = parts.uri.authority().map_or("", |a| a.as_str());
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    // RFC 8441 §5: the version as for HTTP/1.1; there is no key, so the gateway makes one
    // for the HTTP/1.1 handshake with the upstream.
    let mut versions = HeaderLookup::values(headers, "sec-websocket-version");
    let version_13 = matches!((versions.next(), versions.next()), (Some(b"13"), None));
    let key = base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_le_bytes());
    let accept = handshake::accept_key(key.as_bytes());
    // RFC 9113 §8.3.1: a Host beside `:authority` must name the same; the upstream reads
    // Host, so one that differs from what the decision used is refused, as two Hosts are.
    let host = match ambiguous_host(HeaderLookup::values(headers, "host"), Some(authority)) {
        true => Err(Reject::AmbiguousHost),
        false => Ok(decide::request_host(Some(authority.as_bytes()), "")),
    };
    let decided = decide::Request {
        host,
        target,
        headers,
        upgrade: match version_13 {
            true => Ok(accept),
            false => Err(Reject::BadVersion),
        },
        sni: peer.sni.as_deref(),
        client,
        http2: true,
    };
    // Each socket counts under --max-connections, whichever connection carries it.
    if !gateway.has_room() {
        return refused(&gateway, None, client, origin, Reject::Overloaded);
    }
    let forward = match decide::decision(&decided, &gateway) {
        Decision::Refuse(route, reject) => {
            return refused(
                &gateway,
                route.as_ref().map(|r| &r.label),
                client,
                origin,
                reject,
            );
        }
        Decision::Plain(route) => {
            return refused(
                &gateway,
                Some(&route.label),
                client,
                origin,
                Reject::NotWebSocket,
            );
        }
        Decision::CloseAfterUpgrade(route, _) => {
            return close_after_upgrade(&gateway, &route, client, origin, on_upgrade);
        }
        Decision::Forward(forward) => forward,
    };
    // The HTTP/1.1 handshake the upstream gets: the stream's headers, with the Host the
    // authority names and the gateway's key in place of any the client sent.
    let mut pairs: Vec<httparse::Header<'_>> = headers
        .iter()
        .filter(|(name, _)| *name != header::HOST && *name != header::SEC_WEBSOCKET_KEY)
        .map(|(name, value)| httparse::Header {
            name: name.as_str(),
            value: value.as_bytes(),
        })
        .collect();
    pairs.push(httparse::Header {
        name: "host",
        value: authority.as_bytes(),
    });
    pairs.push(httparse::Header {
        name: "sec-websocket-key",
        value: key.as_bytes(),
    });
    let (upstream_request, offered) =
        forward.upstream_request(Headers::new(&pairs), client, &gateway);
    let Forward {
        route,
        origin: request_origin,
        accept,
        admission,
        ..
    } = forward;
    let exchanged = connection::exchange(
        &gateway,
        &route,
        (client, origin),
        request_origin,
        &upstream_request,
        accept,
        offered.as_deref(),
    )
    .await;
    drop(upstream_request);
    let switched = match exchanged {
        Exchange::Upgrade(switched) => switched,
        Exchange::Refusal { answer, head, body } => {
            // The upstream refused: its status, headers and body go back on the stream.
            let patience = gateway.config.upstream.response;
            let body = reply::refusal_body(answer, body, patience).await;
            return from_head(&head, StatusCode::BAD_GATEWAY, Reply::Fixed(Some(body)));
        }
        Exchange::Refused(reject)
            if reject == Reject::OriginDenied && route.rejection == OriginRejection::Close =>
        {
            return close_after_upgrade(&gateway, &route, client, origin, on_upgrade);
        }
        Exchange::Refused(reject) => {
            return refused(&gateway, Some(&route.label), client, origin, reject);
        }
    };
    // RFC 8441 §5: a 2xx, with the upstream's headers but those of the HTTP/1.1 upgrade.
    let response = from_head(&switched.reply, StatusCode::OK, Reply::Fixed(None));
    let handover = Handover {
        gateway,
        switched,
        route,
        client,
        admission,
        busy,
    };
    tokio::spawn(Tunnel::Upgrading(on_upgrade, Some(Box::new(handover))));
    response
}

/// A socket's stream: handed over by hyper once the 200 is out, then relayed. Written by
/// hand, as `connection::Connection` is, so that an idle socket's task holds the relay's
/// state once, not beside the handover's.
#[expect(
    clippy::large_enum_variant,
    reason = "the relay is the state an idle socket holds; boxing it saves nothing"
)]
enum Tunnel {
    Upgrading(OnUpgrade, Option<Box<Handover>>),
    Relaying {
        relaying: Relaying,
        /// Keeps the connection in use while the socket lives.
        _busy: Busy,
    },
    Done,
}

/// What relaying a socket's stream needs besides the stream.
struct Handover {
    gateway: Arc<Gateway>,
    switched: Switched,
    route: Arc<Route>,
    client: ClientInfo,
    admission: Option<Box<Slot>>,
    busy: Busy,
}

impl Future for Tunnel {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            match this {
                Tunnel::Upgrading(on_upgrade, handover) => {
                    let upgraded = std::task::ready!(Pin::new(on_upgrade).poll(cx));
                    // The client went away before its 200: dropping the handover ends the
                    // registration and the admission slot.
                    *this = match (upgraded, handover.take()) {
                        (Ok(upgraded), Some(h)) => {
                            let io = Stream::Tunnel(Box::new(TokioIo::new(upgraded)));
                            let client_io = Prefixed::new(io, &[]);
                            let upgraded =
                                h.switched
                                    .upgraded(h.route, h.client, client_io, h.admission);
                            Tunnel::Relaying {
                                relaying: Relaying::start(h.gateway, upgraded),
                                _busy: h.busy,
                            }
                        }
                        _ => Tunnel::Done,
                    };
                }
                Tunnel::Relaying { relaying, .. } => {
                    std::task::ready!(Pin::new(relaying).poll(cx));
                    *this = Tunnel::Done;
                }
                Tunnel::Done => return Poll::Ready(()),
            }
        }
    }
}
