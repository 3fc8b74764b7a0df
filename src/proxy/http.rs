//! Plain HTTP/1.1 requests on routes that pass them (`http`): the long-polling and
//! streaming transports of Socket.IO, SockJS, SignalR and Phoenix. A connection comes here
//! when its first request is not an upgrade and its route has `http`; hyper serves it from
//! then on (keep-alive, body framing), and each request is decided on its own, in the order
//! of a handshake: route and TLS (`decide::select`), the origin table of
//! [`policy::fetch`](crate::policy::fetch) (CORS preflights answered here), the token, the
//! body limit. Then it goes to the upstream over a pooled connection, and the response
//! streams back with the gateway's CORS headers in place of the upstream's.

mod body;
mod pool;
mod stall;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;

pub(super) use self::body::Reply;
use self::body::{Limited, Progress, Streamed};
use self::pool::Failed;
pub(super) use self::pool::Pool;
use self::stall::WriteStall;
use super::decide::{Refusal, Selected, authenticate, request_host, select};
use super::handshake::Reject;
use super::http1::{self, HOP_BY_HOP, Headers, Prefixed};
use super::state::{Gateway, HttpPhase};
use super::stream::Stream;
use super::upstream::{self, ClientInfo, Forwarding};
use crate::accept::stopped;
use crate::policy::RequestOrigin;
use crate::policy::fetch::{self, Fetch};
use crate::request::{HeaderLookup, ambiguous_host, has_token};
use crate::route::{Route, RouteAuth};

/// How long browsers may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// One connection's requests: who sent them and on which listener.
pub(super) struct Peer {
    pub(super) gateway: Arc<Gateway>,
    /// The connection's client, before any request's `X-Forwarded-For`.
    pub(super) client: ClientInfo,
    pub(super) sni: Option<String>,
}

/// Serves a connection whose first request (still unread in `io`) is a plain request,
/// until the client closes it, leaves it idle past `--handshake-timeout`, stops reading for
/// `--http-send-timeout`, or the gateway drains (then the request under way completes and
/// the connection closes).
pub(super) async fn serve(
    io: Prefixed<Stream>,
    sni: Option<String>,
    client: ClientInfo,
    phase: HttpPhase,
    mut stop: watch::Receiver<bool>,
) {
    let gateway = phase.0.clone();
    let config = &gateway.config;
    let peer = Arc::new(Peer {
        gateway: gateway.clone(),
        client,
        sni,
    });
    let service = hyper::service::service_fn(move |request| {
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(answer(request, &peer).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(config.max_header_bytes)
        .max_headers(http1::MAX_HEADERS)
        .serve_connection(
            TokioIo::new(WriteStall::new(io, config.http_send_timeout)),
            service,
        );
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(client = %client.ip, error = %e, "plain HTTP connection ended");
    }
    drop(phase);
}

/// Answers one request, and counts and logs it.
pub(super) async fn answer(request: Request<Incoming>, peer: &Peer) -> Response<Reply> {
    let gateway = &peer.gateway;
    let started = Instant::now();
    let (parts, incoming) = request.into_parts();
    let client = peer.client.of_request(
        &gateway.config.trusted_proxies,
        HeaderLookup::values(&parts.headers, "x-forwarded-for"),
    );
    let (route, response, result, reason) = match forward(&parts, incoming, peer, client).await {
        Ok((route, response, reason)) => (Some(route), response, "accepted", reason),
        Err((route, reject)) => {
            reject.log(
                "request",
                client.ip,
                route.as_ref().map_or("", |r| &*r.label),
            );
            (route, refusal(reject), reject.result(), reject.reason())
        }
    };
    let label = route.as_ref().map(|r| &r.label);
    gateway.metrics.http_request(label, result, reason);
    gateway.access.request(crate::access::Request {
        route: label.map(|l| &**l),
        client: client.ip,
        origin: parts
            .headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok()),
        method: parts.method.as_str(),
        status: response.status().as_u16(),
        result,
        reason,
        duration: started.elapsed(),
    });
    response
}

/// The gateway's refusal: its status, fixed text and headers; the connection closes after.
pub(super) fn refusal(reject: Reject) -> Response<Reply> {
    let mut response = Response::new(Reply::Fixed(Some(Bytes::from_static(
        reject.body().as_bytes(),
    ))));
    *response.status_mut() = reject.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // A refused request may have left a body unread: the next request could not be found.
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    // Another origin may get another answer for the same URL.
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    reject.put_headers(|name, value| {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(name, value);
        }
    });
    response
}

/// Decides a request and, when it passes, sends it upstream and returns the response to
/// stream back, with its reason label (`ok`, or `preflight` when the gateway answered).
async fn forward(
    parts: &Parts,
    incoming: Incoming,
    peer: &Peer,
    client: ClientInfo,
) -> Result<(Arc<Route>, Response<Reply>, &'static str), Refusal> {
    let gateway = &peer.gateway;
    let headers = &parts.headers;
    // Its target is a host, not a path on any route.
    if parts.method == Method::CONNECT {
        return Err((None, Reject::Tunnel));
    }
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let authority = parts.uri.authority().map(|a| a.as_str());
    let host = match ambiguous_host(HeaderLookup::values(headers, "host"), authority) {
        true => Err(Reject::AmbiguousHost),
        false => Ok(request_host(
            headers
                .get(header::HOST)
                .map(HeaderValue::as_bytes)
                .or(authority.map(str::as_bytes)),
            "",
        )),
    };
    let Selected { route, target } = select(&host, target, peer.sni.as_deref(), gateway)?;
    let refuse = |reject| Err((Some(route.clone()), reject));
    let Some(limits) = route.http else {
        return refuse(Reject::NotWebSocket);
    };
    if has_token(headers, "upgrade", "websocket") {
        return refuse(Reject::UpgradeOnReusedConnection);
    }
    let origin = RequestOrigin::from_header_values(HeaderLookup::values(headers, "origin"));
    if parts.method == Method::OPTIONS
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        && !matches!(origin, RequestOrigin::Missing)
    {
        return match route.origins.allows(&origin) {
            true => Ok((route.clone(), preflight(headers), "preflight")),
            false => refuse(Reject::OriginDenied),
        };
    }
    let trusted_peer = gateway.config.trusted_proxies.contains(client.addr.ip());
    let admitted = fetch::admits(
        &route.origins,
        Fetch {
            origin: &origin,
            fetch_site: HeaderLookup::values(headers, "sec-fetch-site"),
            navigation_method: matches!(parts.method, Method::GET | Method::HEAD),
            scheme: scheme(headers, client, trusted_peer),
            host: headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or(authority)
                .unwrap_or(""),
        },
    );
    if !admitted {
        return refuse(Reject::OriginDenied);
    }
    let (target, claims) = match authenticate(&route, target, headers, client) {
        Ok(authenticated) => authenticated,
        Err(reject) => return refuse(reject),
    };
    if incoming
        .size_hint()
        .exact()
        .is_some_and(|n| n > limits.max_request_body)
    {
        return refuse(Reject::BodyTooLarge);
    }

    let progress = Progress::new();
    let body = Limited::new(incoming, limits.max_request_body, progress.clone());
    let Some(upstream_request) =
        upstream_request(parts, &route, &target, &claims, client, trusted_peer)
    else {
        return refuse(Reject::Malformed);
    };
    let sent = gateway.pool.send(
        &route.upstream,
        client.ip,
        upstream_request.map(|()| body),
        gateway.config.upstream.connect,
        &gateway.metrics.upstream_connect_seconds,
    );
    let (response, lease) = match waited(sent, &progress, limits.response_timeout).await {
        Ok(exchanged) => exchanged,
        Err(Waited::Failed(_)) if progress.over() => return refuse(Reject::BodyTooLarge),
        Err(Waited::Failed(Failed::Open(reject))) => return refuse(reject),
        Err(Waited::Failed(Failed::Body(e))) => {
            tracing::debug!(route = %route.label, error = %e, "the client's request body failed");
            return refuse(Reject::BodyIncomplete);
        }
        Err(Waited::Failed(Failed::Exchange(e))) => {
            tracing::debug!(route = %route.label, error = %e, "plain request to the upstream failed");
            return refuse(Reject::UpstreamUnreachable);
        }
        Err(Waited::ClientSilent) => return refuse(Reject::BodyTimeout),
        Err(Waited::UpstreamSilent) => return refuse(Reject::UpstreamTimeout),
    };
    let (mut head, body) = response.into_parts();
    // The Origin as the browser sent it, which it compares byte for byte: the route allowed
    // it (a request without one gets no CORS answer).
    shape_headers(&mut head.headers, headers.get(header::ORIGIN));
    let body = Reply::Upstream(Box::new(Streamed::new(
        body,
        limits.response_timeout,
        lease,
    )));
    Ok((route.clone(), Response::from_parts(head, body), "ok"))
}

/// Why no response came.
enum Waited {
    /// The exchange failed.
    Failed(Failed),
    /// The client's body stopped moving for the response timeout.
    ClientSilent,
    /// The upstream said nothing for the response timeout after the whole body.
    UpstreamSilent,
}

/// Waits for `sent`: `silence` after the request body last moved, the client is to blame
/// if its body is unfinished, else the upstream. A slow upload is not an upstream timeout.
async fn waited<T>(
    sent: impl Future<Output = Result<T, Failed>>,
    progress: &Progress,
    silence: std::time::Duration,
) -> Result<T, Waited> {
    tokio::pin!(sent);
    loop {
        let deadline = progress.moved() + silence;
        tokio::select! {
            done = &mut sent => return done.map_err(Waited::Failed),
            () = tokio::time::sleep_until(deadline) => {
                if progress.moved() + silence > tokio::time::Instant::now() {
                    continue;
                }
                return Err(match progress.complete() {
                    true => Waited::UpstreamSilent,
                    false => Waited::ClientSilent,
                });
            }
        }
    }
}

/// The scheme of the request's own origin: the listener's, or behind a trusted proxy that
/// terminates TLS, the first `X-Forwarded-Proto` it sent (`http` or `https` only).
fn scheme(headers: &HeaderMap, client: ClientInfo, trusted_peer: bool) -> &'static str {
    let forwarded = || {
        let first = headers
            .get("x-forwarded-proto")?
            .as_bytes()
            .split(|&b| b == b',')
            .next()?;
        match first.trim_ascii() {
            b"https" => Some("https"),
            b"http" => Some("http"),
            _ => None,
        }
    };
    trusted_peer
        .then(forwarded)
        .flatten()
        .unwrap_or(client.proto)
}

/// The request sent upstream, without its body: the client's method, the upstream target,
/// the forwarded headers (as for a handshake, less the upgrade) and the claims' headers.
/// `None` when the target does not make a URI.
fn upstream_request(
    parts: &Parts,
    route: &Route,
    target: &str,
    claims: &[(String, String)],
    client: ClientInfo,
    trusted_peer: bool,
) -> Option<Request<()>> {
    let (path, query) = upstream::upstream_target(target, &route.upstream);
    let uri = match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(())
        .ok()?;
    let pairs: Vec<httparse::Header<'_>> = parts
        .headers
        .iter()
        .map(|(name, value)| httparse::Header {
            name: name.as_str(),
            value: value.as_bytes(),
        })
        .collect();
    let dropped = match &route.auth {
        Some(RouteAuth::Jwt(jwt)) => jwt.forwarded_headers(),
        _ => &[],
    };
    let headers = request.headers_mut();
    headers.reserve(pairs.len() + 6);
    upstream::forward_headers(
        headers,
        Headers::new(&pairs),
        Forwarding {
            client,
            trusted_peer,
            subprotocols: None,
            extensions: None,
            claims: upstream::Claims {
                dropped,
                added: claims,
            },
        },
        false,
    );
    Some(request)
}

/// The upstream's response headers as the client gets them: without hop-by-hop headers and
/// without the upstream's own CORS answer, which could name more origins than the route
/// allows (an upstream with `cors: {origin: true}` echoes any); the gateway names the
/// allowed `origin` the request came from, if any.
fn shape_headers(headers: &mut HeaderMap, origin: Option<&HeaderValue>) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    // A length beside chunked framing describes nothing hyper read (RFC 9112 §6.3).
    if headers.remove(header::TRANSFER_ENCODING).is_some() {
        headers.remove(header::CONTENT_LENGTH);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
    headers.remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    // Whatever the upstream varies on, the gateway's answer varies on the Origin.
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// The answer to a CORS preflight from an allowed origin: that origin, with credentials,
/// the method and headers it asked for. The upstream is not asked: its CORS settings cannot
/// widen what the route allows.
fn preflight(headers: &HeaderMap) -> Response<Reply> {
    let mut response = Response::new(Reply::Fixed(None));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let out = response.headers_mut();
    if let Some(origin) = headers.get(header::ORIGIN) {
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    out.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    for (asked, allowed) in [
        (
            header::ACCESS_CONTROL_REQUEST_METHOD,
            header::ACCESS_CONTROL_ALLOW_METHODS,
        ),
        (
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
        ),
    ] {
        if let Some(value) = headers.get(asked) {
            out.insert(allowed, value.clone());
        }
    }
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE),
    );
    // The answer echoes all three.
    out.insert(
        header::VARY,
        HeaderValue::from_static(
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        ),
    );
    response
}
