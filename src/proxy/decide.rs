//! The decision: from a request head to what the handshake does next ([`Step`]), in the
//! order of docs/design.md §5. CPU work on borrowed bytes: nothing here awaits or touches a
//! socket (the one side effect is taking the connection's admission slot), and the handshake
//! driver in `connection` acts on the step.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use super::admission::{Denied, Slot};
use super::extensions;
use super::handshake::{self, AcceptKey, Reject};
use super::http1::{self, Headers};
use super::state::Gateway;
use super::upstream::{self, ClientInfo};
use crate::auth::AuthFailure;
use crate::policy::RequestOrigin;
use crate::request::HeaderLookup;
use crate::route::{OriginRejection, Route, RouteAuth};

/// What to do with a request, decided from its head alone.
pub(super) struct Plan {
    /// Where the `Origin` header's value is in the head, for the access log.
    pub(super) origin: Option<Range<usize>>,
    /// The client, with `X-Forwarded-For` applied when it came through a trusted proxy.
    pub(super) client: ClientInfo,
    /// What the handshake does next.
    pub(super) step: Step,
}

impl Plan {
    /// The request's `Origin` in `head`, the head this plan was made from, if it is UTF-8.
    pub(super) fn origin_in<'a>(&self, head: &'a [u8]) -> Option<&'a str> {
        let span = self.origin.clone()?;
        std::str::from_utf8(&head[span]).ok()
    }
}

/// What the handshake does next.
pub(super) enum Step {
    /// Answer with this rejection.
    Refuse(Option<Arc<Route>>, Reject),
    /// `rejection: Close`: 101, then Close 1008.
    CloseAfterUpgrade(Arc<Route>, AcceptKey),
    /// A plain HTTP request on a route that passes them (`http`): the connection goes to
    /// `proxy::http`, which decides each of its requests.
    Plain,
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
pub(super) fn plan(
    head: &[u8],
    gateway: &Gateway,
    mut client: ClientInfo,
    sni: Option<&str>,
) -> Plan {
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
    client = client.of_request(
        &gateway.config.trusted_proxies,
        headers.get_all("x-forwarded-for"),
    );
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

/// The HTTP/1.1 side of the decision: what only an HTTP/1.1 request can get wrong (two
/// hosts, no upgrade), then the [`decision`], then the HTTP/1.1 request to forward.
fn decide(
    method: &str,
    target: &str,
    version: Option<u8>,
    headers: Headers<'_>,
    gateway: &Gateway,
    client: ClientInfo,
    sni: Option<&str>,
) -> Step {
    let host_header = headers.get("host");
    let absolute = http1::absolute_form(target);
    let ambiguous = crate::request::ambiguous_host(
        headers.get_all("host"),
        absolute.map(|(authority, _)| authority),
    );
    // HTTP/1.0 has no Upgrade.
    let upgrade = match version {
        Some(1) => handshake::validate(method, headers),
        _ => Err(Reject::NotWebSocket),
    };
    let request = Request {
        host: match ambiguous {
            true => Err(Reject::AmbiguousHost),
            false => Ok(request_host(host_header, target)),
        },
        target: absolute.map_or(target, |(_, rest)| rest),
        headers,
        upgrade,
        sni,
        client,
        http2: false,
    };
    let forward = match decision(&request, gateway) {
        Decision::Refuse(route, reject) => return Step::Refuse(route, reject),
        Decision::CloseAfterUpgrade(route, accept) => {
            return Step::CloseAfterUpgrade(route, accept);
        }
        Decision::Plain(route) => {
            // hyper would take Transfer-Encoding over Content-Length (RFC 9112 §6.3); a proxy
            // in front may have done the opposite, so neither is guessed.
            let lengths = headers.get_all("content-length").count();
            let ambiguous =
                lengths > 1 || (lengths == 1 && headers.get("transfer-encoding").is_some());
            return match ambiguous {
                true => Step::Refuse(Some(route), Reject::AmbiguousFraming),
                false => Step::Plain,
            };
        }
        Decision::Forward(forward) => forward,
    };
    let (request, extensions) = forward.upstream_request(headers, client, gateway);
    Step::Forward {
        route: forward.route,
        request,
        extensions,
        origin: forward.origin,
        accept: forward.accept,
        admission: forward.admission,
    }
}

/// A WebSocket request as the decision sees it, whatever protocol carried it.
pub(super) struct Request<'a, H> {
    /// The host asked for (lowercase, without port or trailing dot), or why the request
    /// names none unambiguously.
    pub(super) host: Result<Cow<'a, str>, Reject>,
    /// The origin-form target: path and query as sent.
    pub(super) target: &'a str,
    /// The request's headers.
    pub(super) headers: H,
    /// Whether the protocol's own WebSocket checks passed, and the key to answer with.
    pub(super) upgrade: Result<AcceptKey, Reject>,
    /// The TLS server name, on the TLS listener.
    pub(super) sni: Option<&'a str>,
    /// Who asks.
    pub(super) client: ClientInfo,
    /// The request is a stream of an HTTP/2 connection.
    pub(super) http2: bool,
}

/// What the decision leaves to the protocol: where to forward, and what to add.
pub(super) struct Forward<'a> {
    /// The route that admitted the request.
    pub(super) route: Arc<Route>,
    /// The target to forward: normalized, without token parameters.
    pub(super) target: Cow<'a, str>,
    /// The request's origin, for revocation later.
    pub(super) origin: RequestOrigin,
    /// The key to answer the client's upgrade with.
    pub(super) accept: AcceptKey,
    /// Headers from verified claims, to add.
    pub(super) claims: Vec<(String, String)>,
    /// The allowed subprotocols the client offered, when the route filters them.
    pub(super) subprotocols: Option<String>,
    /// The connection's place under its route's limits.
    pub(super) admission: Option<Box<Slot>>,
}

impl Forward<'_> {
    /// The HTTP/1.1 handshake the upstream gets, made of the client's `headers`, and the
    /// `Sec-WebSocket-Extensions` offers it carries: the same for either protocol the
    /// client spoke.
    pub(super) fn upstream_request(
        &self,
        headers: Headers<'_>,
        client: ClientInfo,
        gateway: &Gateway,
    ) -> (Vec<u8>, Option<String>) {
        let route = &self.route;
        let dropped = match &route.auth {
            Some(RouteAuth::Jwt(jwt)) => jwt.forwarded_headers(),
            _ => &[],
        };
        // No compression under a message limit: the limit counts what the upstream receives.
        let extensions = extensions::offers(headers, route.limits.max_message_bytes.is_none());
        let request = upstream::forward_request(
            &self.target,
            headers,
            &route.upstream,
            upstream::Forwarding {
                client,
                trusted_peer: gateway.config.trusted_proxies.contains(client.addr.ip()),
                subprotocols: self.subprotocols.as_deref(),
                extensions: extensions.as_deref(),
                claims: upstream::Claims {
                    dropped,
                    added: &self.claims,
                },
            },
        );
        (request, extensions)
    }
}

/// What the decision says.
pub(super) enum Decision<'a> {
    /// Answer with this rejection.
    Refuse(Option<Arc<Route>>, Reject),
    /// `rejection: Close`: 101, then Close 1008.
    CloseAfterUpgrade(Arc<Route>, AcceptKey),
    /// Not an upgrade, on this route, which passes plain HTTP requests.
    Plain(Arc<Route>),
    /// Forward to the route's upstream.
    Forward(Forward<'a>),
}

/// The route a request selected, and its target in normal form.
pub(super) struct Selected<'a> {
    /// The route; its snapshot may be replaced meanwhile, the request keeps it.
    pub(super) route: Arc<Route>,
    /// The target to forward: normalized path, query as sent.
    pub(super) target: Cow<'a, str>,
}

/// A refusal, with the route it happened on when one was selected.
pub(super) type Refusal = (Option<Arc<Route>>, Reject);

/// Steps 1 and 2 of docs/design.md §5 for any request: host, path and route, and TLS.
pub(super) fn select<'a>(
    host: &Result<Cow<'_, str>, Reject>,
    target: &'a str,
    sni: Option<&str>,
    gateway: &Gateway,
) -> Result<Selected<'a>, Refusal> {
    let Some(snapshot) = gateway.published.current() else {
        return Err((None, Reject::NotReady));
    };
    let host = host.as_ref().map_err(|reject| (None, *reject))?;
    // Routed and forwarded in normal form, so the route that matches is the one whose
    // backend serves the path.
    let (raw_path, query) = http1::split_target(target);
    let Ok(path) = crate::route::path::normalize(raw_path) else {
        return Err((None, Reject::BadPath));
    };
    // Most paths are already in normal form: then the target goes as it came.
    let target = match (&path, query) {
        (Cow::Borrowed(_), _) => Cow::Borrowed(target),
        (_, Some(query)) => Cow::Owned(format!("{path}?{query}")),
        (_, None) => Cow::Owned(path.clone().into_owned()),
    };
    // A TLS client asks for one host in SNI and another in Host: refused, so one tenant's
    // certificate cannot front another tenant's route (RFC 9110 §15.5.20).
    if sni.is_some_and(|name| !name.trim_end_matches('.').eq_ignore_ascii_case(host)) {
        return Err((None, Reject::Misdirected));
    }
    let Some((route, tls_only)) = snapshot.table.select(host, &path) else {
        return Err((None, Reject::NoRoute));
    };
    let route = route.clone();
    // TLS-only is a property of the hostname: no route serves part of it in clear text.
    if tls_only && sni.is_none() {
        return Err((Some(route), Reject::TlsRequired));
    }
    Ok(Selected { route, target })
}

/// The target to forward and the verified claims' headers.
pub(super) type Authenticated<'a> = (Cow<'a, str>, Vec<(String, String)>);

/// Step 5's token check: the target to forward (without token parameters) and the headers
/// of the verified claims, or why the request is refused.
pub(super) fn authenticate<'a, 'h, H: HeaderLookup<'h>>(
    route: &Route,
    target: Cow<'a, str>,
    headers: H,
    client: ClientInfo,
) -> Result<Authenticated<'a>, Reject> {
    match &route.auth {
        None => Ok((target, Vec::new())),
        Some(RouteAuth::Unavailable) => Err(Reject::AuthUnavailable),
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
                    Ok((stripped, claims))
                }
                Err(AuthFailure::Missing) => Err(Reject::Unauthorized),
                Err(AuthFailure::Repeated) => Err(Reject::TokenRepeated),
                Err(AuthFailure::Invalid(why)) => {
                    tracing::debug!(client = %client.ip, route = %route.label, reason = why, "token refused");
                    Err(Reject::InvalidToken)
                }
            }
        }
    }
}

/// Steps 1 to 5 of docs/design.md §5 that hold for any protocol: path and route, TLS, the
/// protocol's upgrade checks, origin, token, limits and subprotocols. The one side effect
/// is taking the connection's admission slot.
pub(super) fn decision<'a, 'h, H: HeaderLookup<'h>>(
    request: &Request<'a, H>,
    gateway: &Gateway,
) -> Decision<'a> {
    let client = request.client;
    let Selected { route, target } =
        match select(&request.host, request.target, request.sni, gateway) {
            Ok(selected) => selected,
            Err((route, reject)) => return Decision::Refuse(route, reject),
        };
    let accept = match &request.upgrade {
        Ok(accept) => *accept,
        // A request that asks for a WebSocket and gets it wrong is told so, not passed on.
        Err(Reject::NotWebSocket)
            if route.http.is_some()
                && !crate::request::has_token(request.headers, "upgrade", "websocket") =>
        {
            return Decision::Plain(route);
        }
        Err(r) => return Decision::Refuse(Some(route), *r),
    };
    let headers = request.headers;
    let origin = RequestOrigin::from_header_values(headers.values("origin"));
    if !route.origins.allows(&origin) {
        return match route.rejection {
            OriginRejection::Forbidden => Decision::Refuse(Some(route), Reject::OriginDenied),
            OriginRejection::Close => Decision::CloseAfterUpgrade(route, accept),
        };
    }
    let (target, claims) = match authenticate(&route, target, headers, client) {
        Ok(authenticated) => authenticated,
        Err(reject) => return Decision::Refuse(Some(route), reject),
    };
    if request.http2 && !route.http2_sockets {
        return Decision::Refuse(Some(route), Reject::Http2Refused);
    }
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
            return Decision::Refuse(Some(route), reject);
        }
    };
    let subprotocols = match &route.subprotocols {
        Some(allowed) => match handshake::filter_subprotocols(headers, allowed) {
            Some(kept) => Some(kept),
            None => return Decision::Refuse(Some(route), Reject::SubprotocolDenied),
        },
        None => None,
    };
    Decision::Forward(Forward {
        route,
        target,
        origin,
        accept,
        claims,
        subprotocols,
        admission,
    })
}

/// The Host header (or the absolute-form target's authority), lowercase, without the port or
/// a trailing dot.
pub(super) fn request_host<'a>(host: Option<&'a [u8]>, target: &'a str) -> Cow<'a, str> {
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

#[cfg(test)]
mod tests;
