//! Validation of a client's WebSocket opening handshake (RFC 6455 §4.2.1) and the closed set
//! of rejections with their fixed status codes and plain-text bodies (DESIGN §5). Pure: no
//! sockets, no routes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use sha1::{Digest, Sha1};

/// Why a handshake was not relayed. Each variant has one status code, one metric reason and
/// one body; bodies never echo request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
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
    /// The route's backend has no address (unresolved service).
    NoUpstream,
    /// Connecting to the upstream failed.
    UpstreamUnreachable,
    /// Connecting to or hearing from the upstream took too long.
    UpstreamTimeout,
    /// The upstream answered 101 with a handshake the client would refuse.
    UpstreamInvalid,
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
            Reject::NoRoute => StatusCode::NOT_FOUND,
            Reject::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Reject::NotWebSocket | Reject::BadVersion => StatusCode::UPGRADE_REQUIRED,
            Reject::BadKey => StatusCode::BAD_REQUEST,
            Reject::OriginDenied | Reject::SubprotocolDenied => StatusCode::FORBIDDEN,
            Reject::NoUpstream | Reject::UpstreamUnreachable | Reject::UpstreamInvalid => {
                StatusCode::BAD_GATEWAY
            }
            Reject::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Stable label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Reject::NoRoute => "no_route",
            Reject::NotReady => "not_ready",
            Reject::NotWebSocket => "not_websocket",
            Reject::BadVersion => "bad_version",
            Reject::BadKey => "bad_key",
            Reject::OriginDenied => "origin_not_allowed",
            Reject::SubprotocolDenied => "subprotocol_not_allowed",
            Reject::NoUpstream => "no_upstream",
            Reject::UpstreamUnreachable => "upstream_unreachable",
            Reject::UpstreamTimeout => "upstream_timeout",
            Reject::UpstreamInvalid => "upstream_invalid",
        }
    }

    /// The plain-text body naming the rule.
    pub fn body(self) -> &'static str {
        match self {
            Reject::NoRoute => "no route for this host and path\n",
            Reject::NotReady => "gateway is starting: no routes loaded yet\n",
            Reject::NotWebSocket => "this endpoint only accepts WebSocket upgrades\n",
            Reject::BadVersion => "unsupported WebSocket version: use 13\n",
            Reject::BadKey => "invalid Sec-WebSocket-Key\n",
            Reject::OriginDenied => "origin not allowed\n",
            Reject::SubprotocolDenied => "subprotocol not allowed\n",
            Reject::NoUpstream => "no upstream available\n",
            Reject::UpstreamUnreachable => "upstream unreachable\n",
            Reject::UpstreamTimeout => "upstream timed out\n",
            Reject::UpstreamInvalid => "upstream sent an invalid handshake\n",
        }
    }

    /// Whose fault it is.
    pub fn blame(self) -> Blame {
        match self {
            Reject::NoUpstream
            | Reject::UpstreamUnreachable
            | Reject::UpstreamTimeout
            | Reject::UpstreamInvalid => Blame::Upstream,
            Reject::NotReady => Blame::Internal,
            _ => Blame::Downstream,
        }
    }

    /// The metric `result` label: `rejected` for policy, `failed` for upstream trouble.
    pub fn result(self) -> &'static str {
        match self.blame() {
            Blame::Downstream => "rejected",
            Blame::Upstream | Blame::Internal => "failed",
        }
    }

    /// The complete response.
    pub fn response<B: From<Full<Bytes>>>(self) -> Response<B> {
        let mut response = Response::new(B::from(Full::new(Bytes::from_static(
            self.body().as_bytes(),
        ))));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self {
            // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to.
            Reject::NotWebSocket => {
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            // RFC 6455 §4.4: answer with the versions the server supports.
            Reject::BadVersion => {
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            Reject::NotReady => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// Whether a header holds `token` in its comma-separated list, case-insensitively.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// RFC 6455 §4.2.1 items 1–6: checks the request is a version-13 WebSocket upgrade with a
/// valid key, and returns the `Sec-WebSocket-Accept` value for that key.
pub fn validate(method: &Method, headers: &HeaderMap) -> Result<HeaderValue, Reject> {
    if method != Method::GET
        || !has_token(headers, header::UPGRADE, "websocket")
        || !has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(Reject::NotWebSocket);
    }
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.as_bytes() == b"13" => {}
        _ => return Err(Reject::BadVersion),
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k,
        _ => return Err(Reject::BadKey),
    };
    // RFC 6455 §4.1: the key is a base64-encoded 16-byte nonce, i.e. 24 characters.
    let mut nonce = [0u8; 18];
    match BASE64.decode_slice(key.as_bytes(), &mut nonce) {
        Ok(16) if key.len() == 24 => Ok(accept_key(key.as_bytes())),
        _ => Err(Reject::BadKey),
    }
}

/// RFC 6455 §4.2.2 item 5.4: base64(SHA-1(key ++ GUID)).
pub fn accept_key(key: &[u8]) -> HeaderValue {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    let mut out = [0u8; 28];
    let n = BASE64
        .encode_slice(sha.finalize(), &mut out)
        .unwrap_or_default();
    // Base64 output is always a valid header value.
    HeaderValue::from_bytes(&out[..n]).unwrap_or(HeaderValue::from_static(""))
}

/// Filters the client's offered subprotocols (RFC 6455 §4.1 `Sec-WebSocket-Protocol`, any
/// number of headers, comma-separated) to `allowed`, keeping the client's order. `None` when
/// nothing offered is allowed.
pub fn filter_subprotocols(headers: &HeaderMap, allowed: &[String]) -> Option<HeaderValue> {
    let kept: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|offered| allowed.iter().any(|a| a == offered))
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn upgrade(extra: &[(&str, &str)]) -> HeaderMap {
        let mut pairs = vec![
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        pairs.extend_from_slice(extra);
        headers(&pairs)
    }

    #[test]
    fn rfc6455_sample_key_gives_sample_accept() {
        let accept = validate(&Method::GET, &upgrade(&[])).expect("valid");
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn post_or_missing_upgrade_is_not_websocket() {
        assert_eq!(
            validate(&Method::POST, &upgrade(&[])),
            Err(Reject::NotWebSocket)
        );
        let mut h = upgrade(&[]);
        h.remove(header::CONNECTION);
        assert_eq!(validate(&Method::GET, &h), Err(Reject::NotWebSocket));
    }

    #[test]
    fn version_other_than_13_is_426() {
        let mut h = upgrade(&[]);
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(validate(&Method::GET, &h), Err(Reject::BadVersion));
        let r: Response<Full<Bytes>> = Reject::BadVersion.response();
        assert_eq!(r.status(), 426);
        assert_eq!(r.headers()[header::SEC_WEBSOCKET_VERSION], "13");
    }

    #[test]
    fn key_must_be_base64_of_16_bytes() {
        for bad in [
            "",
            "abc",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZWVl",
        ] {
            let mut h = upgrade(&[]);
            h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static(bad));
            assert_eq!(validate(&Method::GET, &h), Err(Reject::BadKey), "{bad}");
        }
        let mut h = upgrade(&[]);
        h.remove(header::SEC_WEBSOCKET_KEY);
        assert_eq!(validate(&Method::GET, &h), Err(Reject::BadKey));
    }

    #[test]
    fn subprotocol_offer_is_filtered_in_client_order() {
        let allowed = vec!["chat.v2".to_owned(), "chat.v1".to_owned()];
        let h = headers(&[
            ("sec-websocket-protocol", "evil, chat.v1"),
            ("sec-websocket-protocol", "chat.v2"),
        ]);
        assert_eq!(
            filter_subprotocols(&h, &allowed).expect("kept"),
            "chat.v1, chat.v2"
        );
        let none = headers(&[("sec-websocket-protocol", "evil")]);
        assert_eq!(filter_subprotocols(&none, &allowed), None);
        assert_eq!(filter_subprotocols(&HeaderMap::new(), &allowed), None);
    }

    #[test]
    fn rejection_bodies_are_fixed_plain_text() {
        let r: Response<Full<Bytes>> = Reject::OriginDenied.response();
        assert_eq!(r.status(), 403);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        let r: Response<Full<Bytes>> = Reject::NotWebSocket.response();
        assert_eq!(r.headers()[header::UPGRADE], "websocket");
    }
}
