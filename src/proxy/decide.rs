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

/// What the handshake does next.
pub(super) enum Step {
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

/// Steps 1 to 5 of docs/design.md §5 on the parsed head: host, path and route, TLS, upgrade,
/// origin, token, limits and subprotocols; then the request to forward.
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
