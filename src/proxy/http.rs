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

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;

use self::body::{Limited, Reply, Streamed};
use self::pool::Failed;
pub(super) use self::pool::Pool;
use super::decide::{Refusal, Selected, authenticate, request_host, select};
use super::handshake::Reject;
use super::http1::{self, Headers, Prefixed};
use super::state::{Gateway, HttpPhase};
use super::stream::Stream;
use super::upstream::{self, ClientInfo, Forwarding, UpstreamTimeouts};
use crate::accept::{Idle, stopped};
use crate::policy::RequestOrigin;
use crate::policy::fetch::{self, Admission, Fetch};
use crate::request::HeaderLookup;
use crate::route::{Route, RouteAuth};

/// How long browsers may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// One connection's requests: who sent them and on which listener.
struct Peer {
    gateway: Arc<Gateway>,
    client: ClientInfo,
    sni: Option<String>,
}

/// Serves a connection whose first request (still unread in `io`) is a plain request,
/// until the client closes it, it stays idle, or the gateway drains (then the request under
/// way completes and the connection closes).
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
            TokioIo::new(Idle::new(io, config.http_idle_timeout)),
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
async fn answer(request: Request<Incoming>, peer: &Peer) -> Response<Reply> {
    let gateway = &peer.gateway;
    let started = Instant::now();
    let (parts, incoming) = request.into_parts();
    let mut client = peer.client;
    if !gateway.config.trusted_proxies.is_empty() {
        client.ip = gateway.config.trusted_proxies.client(
            client.ip,
            HeaderLookup::values(&parts.headers, "x-forwarded-for"),
        );
    }
    let (route, response) = match forward(&parts, incoming, peer, client).await {
        Ok((route, response)) => (Some(route), response),
        Err((route, reject)) => {
            let label = route.as_ref().map(|r| &*r.label).unwrap_or("");
            match reject.blame() {
                super::handshake::Blame::Downstream => {
                    tracing::debug!(client = %client.ip, route = label, reason = reject.reason(), "request refused")
                }
                _ => {
                    tracing::warn!(client = %client.ip, route = label, reason = reject.reason(), "request failed")
                }
            }
            (route, refusal(reject))
        }
    };
    let Outcome { result, reason } =
        response
            .extensions()
            .get::<Outcome>()
            .copied()
            .unwrap_or(Outcome {
                result: "accepted",
                reason: "ok",
            });
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

/// What the gateway made of a request it answered itself, kept on the response for the
/// metrics and the access log; a response without one is the upstream's.
#[derive(Clone, Copy)]
struct Outcome {
    result: &'static str,
    reason: &'static str,
}

/// The gateway's refusal: its status, fixed text and headers; the connection closes after.
fn refusal(reject: Reject) -> Response<Reply> {
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
    reject.put_headers(|name, value| {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(name, value);
        }
    });
    response.extensions_mut().insert(Outcome {
        result: reject.result(),
        reason: reject.reason(),
    });
    response
}

/// Decides a request and, when it passes, sends it upstream and returns the response to
/// stream back.
async fn forward(
    parts: &Parts,
    incoming: Incoming,
    peer: &Peer,
    client: ClientInfo,
) -> Result<(Arc<Route>, Response<Reply>), Refusal> {
    let gateway = &peer.gateway;
    let headers = &parts.headers;
    // Its target is a host, not a path on any route.
    if parts.method == Method::CONNECT {
        return Err((None, Reject::Tunnel));
    }
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let host = host_of(parts);
    let Selected { route, target } = select(&host, target, peer.sni.as_deref(), gateway)?;
    let refuse = |reject| Err((Some(route.clone()), reject));
    let Some(limits) = route.http else {
        return refuse(Reject::NotWebSocket);
    };
    if has_token(headers, header::UPGRADE, "websocket") {
        return refuse(Reject::UpgradeOnReusedConnection);
    }
    let origin = RequestOrigin::from_header_values(HeaderLookup::values(headers, "origin"));
    if parts.method == Method::OPTIONS
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        && !matches!(origin, RequestOrigin::Missing)
    {
        return match (&origin, route.origins.allows(&origin)) {
            (RequestOrigin::Valid(_) | RequestOrigin::Null, true) => {
                Ok((route.clone(), preflight(headers)))
            }
            _ => refuse(Reject::OriginDenied),
        };
    }
    let host_value = host
        .as_ref()
        .ok()
        .and(headers.get(header::HOST))
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let admitted = fetch::admit(
        &route.origins,
        Fetch {
            origin: &origin,
            fetch_site: HeaderLookup::values(headers, "sec-fetch-site"),
            navigation_method: matches!(parts.method, Method::GET | Method::HEAD),
            scheme: client.proto,
            host: host_value,
        },
    );
    let Admission::Admitted(cors) = admitted else {
        return refuse(Reject::OriginDenied);
    };
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
    let over = Arc::new(AtomicBool::new(false));
    let upstream_request = match upstream_request(parts, &route, &target, &claims, client, gateway)
    {
        Some(request) => {
            request.map(|()| Limited::new(incoming, limits.max_request_body, over.clone()))
        }
        None => return refuse(Reject::BadPath),
    };
    let timeouts = UpstreamTimeouts {
        connect: gateway.config.upstream.connect,
        response: limits.response_timeout,
    };
    let sent = gateway.pool.send(
        &route.upstream,
        client.ip,
        upstream_request,
        timeouts,
        &gateway.metrics.upstream_connect_seconds,
    );
    let (response, lease) = match tokio::time::timeout(limits.response_timeout, sent).await {
        Ok(Ok(exchanged)) => exchanged,
        Ok(Err(_)) if over.load(Ordering::Acquire) => return refuse(Reject::BodyTooLarge),
        Ok(Err(Failed::Open(reject))) => return refuse(reject),
        Ok(Err(Failed::Exchange(e))) => {
            tracing::debug!(route = %route.label, error = %e, "plain request to the upstream failed");
            return refuse(Reject::UpstreamUnreachable);
        }
        Err(_) => return refuse(Reject::UpstreamTimeout),
    };
    let (mut head, body) = response.into_parts();
    // The Origin as the browser sent it: it compares the answer byte for byte.
    let cors = cors.and(headers.get(header::ORIGIN));
    shape_headers(&mut head.headers, cors);
    let body = Reply::Upstream(Box::new(Streamed::new(
        body,
        limits.response_timeout,
        lease,
    )));
    Ok((route.clone(), Response::from_parts(head, body)))
}

/// The host a request names: its one `Host`, or an absolute-form target's authority; two
/// that differ, or two `Host` headers, are ambiguous (RFC 9112 §3.2).
fn host_of(parts: &Parts) -> Result<std::borrow::Cow<'_, str>, Reject> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    let authority = parts.uri.authority().map(|a| a.as_str());
    match (first, second, authority) {
        (_, Some(_), _) => Err(Reject::AmbiguousHost),
        (Some(host), None, Some(authority))
            if !host
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(authority.as_bytes()) =>
        {
            Err(Reject::AmbiguousHost)
        }
        (host, None, authority) => Ok(request_host(
            host.map(HeaderValue::as_bytes)
                .or(authority.map(str::as_bytes)),
            "",
        )),
    }
}

/// Whether header `name` holds `token` in its comma-separated list, ignoring case.
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
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
    gateway: &Gateway,
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
            trusted_peer: gateway.config.trusted_proxies.contains(client.addr.ip()),
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
/// allowed origin the request came from, if any.
fn shape_headers(headers: &mut HeaderMap, cors: Option<&HeaderValue>) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    ] {
        headers.remove(name);
    }
    if let Some(origin) = cors {
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
    out.insert(header::VARY, HeaderValue::from_static("Origin"));
    response.extensions_mut().insert(Outcome {
        result: "accepted",
        reason: "preflight",
    });
    response
}
