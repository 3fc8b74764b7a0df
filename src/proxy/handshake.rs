//! Validation of a client's WebSocket opening handshake (RFC 6455 §4.2.1) and the closed set
//! of rejections with their fixed status codes and plain-text bodies (docs/design.md §5). Pure: no
//! sockets, no routes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::StatusCode;
use sha1::{Digest, Sha1};

use super::http1::{self, Headers};

/// Why a handshake was not relayed. Each variant has one status code, one metric reason and
/// one body; bodies never echo request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The request head does not parse as HTTP/1.1.
    Malformed,
    /// The request head is over the size limit.
    HeadTooLarge,
    /// The request names its host twice: two `Host` headers, or a `Host` that differs
    /// from an absolute-form target's authority (RFC 9112 §3.2).
    AmbiguousHost,
    /// The request path cannot be normalized safely (`route::path`).
    BadPath,
    /// No route for this host and path.
    NoRoute,
    /// The gateway has not loaded its first snapshot yet.
    NotReady,
    /// Not a WebSocket upgrade request.
    NotWebSocket,
    /// `Sec-WebSocket-Version` is not 13.
    BadVersion,
    /// `Sec-WebSocket-Key` missing or not base64 of 16 bytes.
    BadKey,
    /// The route does not allow this origin.
    OriginDenied,
    /// The client offered no subprotocol the route allows.
    SubprotocolDenied,
    /// The route holds its `maxConnections`.
    RouteFull,
    /// The client holds its `maxConnectionsPerClient` on the route.
    TooManyConnections,
    /// The client started handshakes faster than `handshakesPerSecondPerClient`; the next is
    /// allowed after this many seconds.
    TooManyHandshakes(u32),
    /// The gateway holds its `--max-connections`.
    Overloaded,
    /// The route requires a token and the request carries none.
    Unauthorized,
    /// The request's token is not valid (signature, time, issuer or audience).
    InvalidToken,
    /// The request gives its token more than once (twice in one place, or in two places).
    TokenRepeated,
    /// The route requires a token but its keys are missing or unusable.
    AuthUnavailable,
    /// A TLS client's `Host` is not the name it asked for in SNI.
    Misdirected,
    /// An HTTP/2 stream asks for a socket on a route with `webSocketsOverHttp2: Refuse`.
    Http2Refused,
    /// The route is served only over TLS, and this request came in plain.
    TlsRequired,
    /// The TLS handshake with the upstream failed (its certificate did not verify, or it
    /// does not speak TLS).
    UpstreamTls,
    /// The route's backend has no address (unresolved service).
    NoUpstream,
    /// Connecting to the upstream failed.
    UpstreamUnreachable,
    /// Connecting to or hearing from the upstream took too long.
    UpstreamTimeout,
    /// The upstream answered 101 with a handshake the client would refuse.
    UpstreamInvalid,
    /// A plain request's body is over its route's `http.maxRequestBodyBytes`.
    BodyTooLarge,
    /// A plain request gives both `Content-Length` and `Transfer-Encoding`, or two lengths:
    /// a proxy in front may have read another body than the gateway would (RFC 9112 §6.3).
    AmbiguousFraming,
    /// A WebSocket upgrade after plain requests on one connection.
    UpgradeOnReusedConnection,
    /// A plain `CONNECT`: the gateway opens no tunnels.
    Tunnel,
    /// The client's request body ended before its declared end, or was malformed.
    BodyIncomplete,
    /// The client's request body stopped moving for the route's response timeout.
    BodyTimeout,
}

/// Who is to blame for a rejection: picks the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The client's request (logged at debug level: clients cannot flood the logs).
    Downstream,
    /// The upstream.
    Upstream,
    /// The gateway itself.
    Internal,
}

impl Reject {
    /// The HTTP status sent to the client.
    pub fn status(self) -> StatusCode {
        match self {
            Reject::Malformed
            | Reject::AmbiguousHost
            | Reject::BadPath
            | Reject::AmbiguousFraming
            | Reject::UpgradeOnReusedConnection => StatusCode::BAD_REQUEST,
            Reject::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::Tunnel => StatusCode::METHOD_NOT_ALLOWED,
            Reject::BodyIncomplete => StatusCode::BAD_REQUEST,
            Reject::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Reject::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reject::NoRoute => StatusCode::NOT_FOUND,
            Reject::Unauthorized | Reject::InvalidToken => StatusCode::UNAUTHORIZED,
            Reject::NotReady | Reject::RouteFull | Reject::Overloaded | Reject::AuthUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Reject::TooManyConnections | Reject::TooManyHandshakes(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Reject::NotWebSocket | Reject::BadVersion => StatusCode::UPGRADE_REQUIRED,
            Reject::BadKey | Reject::TokenRepeated => StatusCode::BAD_REQUEST,
            Reject::OriginDenied | Reject::SubprotocolDenied | Reject::TlsRequired => {
                StatusCode::FORBIDDEN
            }
            Reject::Misdirected | Reject::Http2Refused => StatusCode::MISDIRECTED_REQUEST,
            Reject::NoUpstream
            | Reject::UpstreamUnreachable
            | Reject::UpstreamInvalid
            | Reject::UpstreamTls => StatusCode::BAD_GATEWAY,
            Reject::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Stable label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed_request",
            Reject::HeadTooLarge => "head_too_large",
            Reject::AmbiguousHost => "ambiguous_host",
            Reject::BadPath => "bad_path",
            Reject::NoRoute => "no_route",
            Reject::NotReady => "not_ready",
            Reject::NotWebSocket => "not_websocket",
            Reject::BadVersion => "bad_version",
            Reject::BadKey => "bad_key",
            Reject::OriginDenied => "origin_not_allowed",
            Reject::SubprotocolDenied => "subprotocol_not_allowed",
            Reject::RouteFull => "route_full",
            Reject::TooManyConnections => "client_connections",
            Reject::TooManyHandshakes(_) => "client_rate",
            Reject::Overloaded => "gateway_full",
            Reject::Unauthorized => "token_missing",
            Reject::InvalidToken => "token_invalid",
            Reject::TokenRepeated => "token_repeated",
            Reject::AuthUnavailable => "auth_unavailable",
            Reject::Misdirected => "misdirected_request",
            Reject::Http2Refused => "http2_refused",
            Reject::TlsRequired => "tls_required",
            Reject::UpstreamTls => "upstream_tls",
            Reject::NoUpstream => "no_upstream",
            Reject::UpstreamUnreachable => "upstream_unreachable",
            Reject::UpstreamTimeout => "upstream_timeout",
            Reject::UpstreamInvalid => "upstream_invalid",
            Reject::BodyTooLarge => "body_too_large",
            Reject::AmbiguousFraming => "ambiguous_framing",
            Reject::UpgradeOnReusedConnection => "upgrade_on_reused_connection",
            Reject::Tunnel => "method_not_allowed",
            Reject::BodyIncomplete => "body_incomplete",
            Reject::BodyTimeout => "body_timeout",
        }
    }

    /// The plain-text body naming the rule.
    pub fn body(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed HTTP/1.1 request\n",
            Reject::HeadTooLarge => "request head too large\n",
            Reject::AmbiguousHost => {
                "send one Host header, naming the same host as an absolute-form target\n"
            }
            Reject::BadPath => {
                "path not accepted: no encoded / \\ or NUL (%2F %5C %00), no \\, and no ; parameters on . or .. segments\n"
            }
            Reject::NoRoute => "no route for this host and path\n",
            Reject::NotReady => "gateway is starting: no routes loaded yet\n",
            Reject::NotWebSocket => "this endpoint only accepts WebSocket upgrades\n",
            Reject::BadVersion => "unsupported WebSocket version: use 13\n",
            Reject::BadKey => "invalid Sec-WebSocket-Key\n",
            Reject::OriginDenied => "origin not allowed\n",
            Reject::SubprotocolDenied => "subprotocol not allowed\n",
            Reject::RouteFull => "route at its connection limit: retry later\n",
            Reject::TooManyConnections => "too many connections from this client\n",
            Reject::TooManyHandshakes(_) => "too many handshakes from this client: slow down\n",
            Reject::Overloaded => "gateway at its connection limit: retry later\n",
            Reject::Unauthorized => "authentication required\n",
            Reject::InvalidToken => "invalid token\n",
            Reject::TokenRepeated => "token given more than once: send it in one place\n",
            Reject::AuthUnavailable => "authentication is not available: retry later\n",
            Reject::Misdirected => "Host does not match the TLS server name\n",
            Reject::Http2Refused => "this route takes WebSockets over HTTP/1.1 only\n",
            Reject::TlsRequired => "this route is served over TLS only: use wss://\n",
            Reject::UpstreamTls => "upstream TLS handshake failed\n",
            Reject::NoUpstream => "no upstream available\n",
            Reject::UpstreamUnreachable => "upstream unreachable\n",
            Reject::UpstreamTimeout => "upstream timed out\n",
            Reject::UpstreamInvalid => "upstream sent an invalid handshake\n",
            Reject::BodyTooLarge => "request body too large\n",
            Reject::AmbiguousFraming => {
                "send one Content-Length, or Transfer-Encoding: chunked, not both\n"
            }
            Reject::UpgradeOnReusedConnection => "open each WebSocket on a new connection\n",
            Reject::Tunnel => "CONNECT is not passed: the gateway opens no tunnels\n",
            Reject::BodyIncomplete => "request body incomplete\n",
            Reject::BodyTimeout => "request body not sent in time\n",
        }
    }

    /// Whose fault it is.
    pub fn blame(self) -> Blame {
        match self {
            Reject::NoUpstream
            | Reject::UpstreamUnreachable
            | Reject::UpstreamTimeout
            | Reject::UpstreamInvalid
            | Reject::UpstreamTls => Blame::Upstream,
            Reject::NotReady | Reject::AuthUnavailable => Blame::Internal,
            _ => Blame::Downstream,
        }
    }

    /// Logs this refusal of a `what` (`handshake`, `request`): at debug level when the
    /// client is to blame (clients cannot flood the logs), else as a warning.
    pub fn log(self, what: &str, client: std::net::IpAddr, route: &str) {
        match self.blame() {
            Blame::Downstream => {
                tracing::debug!(%client, route, reason = self.reason(), "{what} rejected")
            }
            _ => tracing::warn!(%client, route, reason = self.reason(), "{what} failed"),
        }
    }

    /// The metric `result` label: `rejected` for policy, `failed` for upstream trouble.
    pub fn result(self) -> &'static str {
        match self.blame() {
            Blame::Downstream => "rejected",
            Blame::Upstream | Blame::Internal => "failed",
        }
    }

    /// Gives the headers this refusal carries besides its framing to `put`.
    pub fn put_headers(self, mut put: impl FnMut(&'static str, &[u8])) {
        match self {
            // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to.
            Reject::NotWebSocket => put("upgrade", b"websocket"),
            // RFC 6455 §4.4: answer with the versions the server supports.
            Reject::BadVersion => put("sec-websocket-version", b"13"),
            // RFC 6750 §3: the scheme, and `invalid_token` when a token was presented.
            Reject::Unauthorized => put("www-authenticate", b"Bearer realm=\"wsgate\""),
            Reject::InvalidToken => put(
                "www-authenticate",
                b"Bearer realm=\"wsgate\", error=\"invalid_token\"",
            ),
            // RFC 6750 §3.1: more than one method of passing the token is `invalid_request`.
            Reject::TokenRepeated => put(
                "www-authenticate",
                b"Bearer realm=\"wsgate\", error=\"invalid_request\"",
            ),
            Reject::NotReady
            | Reject::AuthUnavailable
            | Reject::RouteFull
            | Reject::TooManyConnections
            | Reject::Overloaded => put("retry-after", b"1"),
            // RFC 9110 §15.5.6: a 405 lists the methods the target supports.
            Reject::Tunnel => put("allow", b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            Reject::TooManyHandshakes(seconds) => {
                put("retry-after", http1::itoa(u64::from(seconds), &mut [0; 20]))
            }
            _ => {}
        }
    }

    /// Appends the complete response: status, headers and body. The connection is closed
    /// after it (`Connection: close`).
    pub fn write_response(self, out: &mut Vec<u8>) {
        let status = self.status();
        http1::put_status(
            out,
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
        );
        http1::put_header(out, "content-type", b"text/plain; charset=utf-8");
        let body = self.body().as_bytes();
        http1::put_header(
            out,
            "content-length",
            http1::itoa(body.len() as u64, &mut [0; 20]),
        );
        http1::put_header(out, "connection", b"close");
        self.put_headers(|name, value| http1::put_header(out, name, value));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
    }
}

/// A `Sec-WebSocket-Accept` value: base64 of a SHA-1 digest, always 28 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptKey([u8; 28]);

impl AcceptKey {
    /// The header value.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// RFC 6455 §4.2.1 items 1–6: checks the request is a version-13 WebSocket upgrade with a
/// valid key, and returns the `Sec-WebSocket-Accept` value for that key.
pub fn validate(method: &str, headers: Headers<'_>) -> Result<AcceptKey, Reject> {
    if method != "GET"
        || !headers.has_token("upgrade", "websocket")
        || !headers.has_token("connection", "upgrade")
    {
        return Err(Reject::NotWebSocket);
    }
    let mut versions = headers.get_all("sec-websocket-version");
    match (versions.next(), versions.next()) {
        (Some(b"13"), None) => {}
        _ => return Err(Reject::BadVersion),
    }
    let mut keys = headers.get_all("sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k,
        _ => return Err(Reject::BadKey),
    };
    // RFC 6455 §4.1: the key is a base64-encoded 16-byte nonce, i.e. 24 characters.
    let mut nonce = [0u8; 18];
    match BASE64.decode_slice(key, &mut nonce) {
        Ok(16) if key.len() == 24 => Ok(accept_key(key)),
        _ => Err(Reject::BadKey),
    }
}

/// RFC 6455 §4.2.2 item 5.4: base64(SHA-1(key ++ GUID)).
pub fn accept_key(key: &[u8]) -> AcceptKey {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    let mut out = [0u8; 28];
    // 20 digest bytes always encode to exactly 28.
    let _ = BASE64.encode_slice(sha.finalize(), &mut out);
    AcceptKey(out)
}

/// Filters the client's offered subprotocols (RFC 6455 §4.1 `Sec-WebSocket-Protocol`, any
/// number of headers, comma-separated) to `allowed`, keeping the client's order. `None` when
/// nothing offered is allowed.
pub fn filter_subprotocols<'h>(
    headers: impl crate::request::HeaderLookup<'h>,
    allowed: &[String],
) -> Option<String> {
    let kept: Vec<&str> = headers
        .values("sec-websocket-protocol")
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|offered| allowed.iter().any(|a| a == offered))
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

#[cfg(test)]
mod tests;
