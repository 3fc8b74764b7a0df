//! The upstream side of a handshake: connect to one of the route's targets and forward the
//! client's upgrade request with forwarding headers (DESIGN §5 step 6). Knows HTTP and
//! sockets; knows nothing of origins or routes' policies.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::histogram::Histogram;
use tokio::net::TcpStream;

use super::handshake::Reject;
use crate::route::{Target, Upstream};

/// `X-Real-IP`, not in `http`'s constants.
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Timeouts for reaching an upstream.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// From connected to the upstream's response head.
    pub response: Duration,
}

/// What the client is and how it came in, for the forwarding headers.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// The client's address (the socket peer).
    pub addr: SocketAddr,
    /// `http` or `https`: the listener the client used.
    pub proto: &'static str,
}

/// RFC 9110 §7.6.1: headers that describe one connection, not the message, plus `Upgrade`
/// (set anew) and `Host`-independent proxy headers.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
}

/// Builds the request sent upstream from the client's request parts.
///
/// The path and query go unchanged unless the upstream URL has a path, which then replaces
/// the request path (the query is kept). `Host` and `Origin` pass through unchanged.
pub fn forward_request(
    uri: &Uri,
    client_headers: &HeaderMap,
    upstream: &Upstream,
    subprotocols: Option<HeaderValue>,
    client: ClientInfo,
) -> Request<Empty<Bytes>> {
    let target = match (&upstream.path, uri.query()) {
        (Some(path), Some(q)) => format!("{path}?{q}"),
        (Some(path), None) => path.clone(),
        (None, _) => uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
    };
    let mut headers = client_headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Some(p) = subprotocols {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }

    let ip = client.addr.ip().to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip.clone(),
    };
    let mut set = |name: &HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name.clone(), v);
        }
    };
    set(&X_FORWARDED_FOR, &xff);
    set(&X_REAL_IP, &ip);
    set(&X_FORWARDED_PROTO, client.proto);
    if let Some(host) = client_headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    } else {
        headers.remove(&X_FORWARDED_HOST);
    }

    let mut request = Request::new(Empty::new());
    // The target is built from a valid URI's parts and a validated path.
    *request.uri_mut() = target.parse().unwrap_or_else(|_| Uri::from_static("/"));
    *request.headers_mut() = headers;
    request
}

/// The targets in the order one handshake tries them: from a uniformly random start, then
/// the following ones in turn, so load spreads evenly and each is tried at most once.
fn order(targets: &[Target]) -> impl Iterator<Item = &Target> {
    let start = match targets.len() {
        0 => 0,
        n => fastrand::usize(..n),
    };
    targets[start..].iter().chain(&targets[..start])
}

/// Connects to the first target that accepts a TCP connection. One that refuses (or is
/// unreachable) is skipped at once; one that does not answer within the timeout ends the
/// attempt, so a handshake never waits more than one connect timeout.
async fn connect<'a>(
    targets: &'a [Target],
    timeout: Duration,
    latency: &Histogram,
) -> Result<(TcpStream, &'a Target), Reject> {
    let mut last = Reject::NoUpstream;
    for target in order(targets) {
        let started = std::time::Instant::now();
        match tokio::time::timeout(
            timeout,
            TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await
        {
            Ok(Ok(stream)) => {
                latency.observe(started.elapsed().as_secs_f64());
                return Ok((stream, target));
            }
            Ok(Err(e)) => {
                tracing::debug!(%target, error = %e, "upstream connect failed; trying the next endpoint");
                last = Reject::UpstreamUnreachable;
            }
            Err(_) => return Err(Reject::UpstreamTimeout),
        }
    }
    Err(last)
}

/// Connects to the upstream and sends the handshake. Returns the upstream's response; on
/// 101 its `OnUpgrade` is ready to be awaited for the relay. Successful connects are timed
/// into `connect_latency`.
pub async fn send(
    upstream: &Upstream,
    request: Request<Empty<Bytes>>,
    timeouts: UpstreamTimeouts,
    connect_latency: &Histogram,
) -> Result<Response<Incoming>, Reject> {
    let (stream, target) = connect(&upstream.targets, timeouts.connect, connect_latency).await?;
    // Small frames must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);

    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Reject::UpstreamUnreachable)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        sender.send_request(request).await.map_err(|e| {
            tracing::debug!(%target, error = %e, "upstream handshake failed");
            Reject::UpstreamUnreachable
        })
    };
    tokio::time::timeout(timeouts.response, exchange)
        .await
        .map_err(|_| Reject::UpstreamTimeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientInfo {
        ClientInfo {
            addr: "192.0.2.7:5555".parse().expect("addr"),
            proto: "http",
        }
    }

    fn upstream(path: Option<&str>) -> Upstream {
        Upstream {
            targets: vec![],
            path: path.map(str::to_owned),
        }
    }

    fn client_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("chat.example.com"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://app.example.com"),
        );
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h
    }

    #[test]
    fn every_target_is_tried_once_in_turn_from_a_random_start() {
        let targets: Vec<Target> = (1..=4)
            .map(|port| Target {
                host: "10.0.0.1".into(),
                port,
            })
            .collect();
        let mut starts = std::collections::HashSet::new();
        for _ in 0..200 {
            let ports: Vec<u16> = order(&targets).map(|t| t.port).collect();
            assert_eq!(ports.len(), 4);
            let start = ports[0];
            let expected: Vec<u16> = (0..4).map(|i| (start - 1 + i) % 4 + 1).collect();
            assert_eq!(ports, expected);
            starts.insert(start);
        }
        assert_eq!(starts.len(), 4, "every endpoint gets to be first");
        assert_eq!(order(&[]).count(), 0);
    }

    #[test]
    fn path_and_query_pass_through_unchanged() {
        let uri: Uri = "/ws/room?id=7".parse().expect("uri");
        let r = forward_request(&uri, &client_headers(), &upstream(None), None, client());
        assert_eq!(r.uri(), "/ws/room?id=7");
    }

    #[test]
    fn url_path_replaces_request_path_and_keeps_query() {
        let uri: Uri = "/ws/room?id=7".parse().expect("uri");
        let r = forward_request(
            &uri,
            &client_headers(),
            &upstream(Some("/socket")),
            None,
            client(),
        );
        assert_eq!(r.uri(), "/socket?id=7");
    }

    #[test]
    fn forwarding_headers_are_set_and_origin_passes_through() {
        let uri: Uri = "/".parse().expect("uri");
        let r = forward_request(&uri, &client_headers(), &upstream(None), None, client());
        let h = r.headers();
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.9, 192.0.2.7");
        assert_eq!(h[&X_REAL_IP], "192.0.2.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "chat.example.com");
        assert_eq!(h[header::ORIGIN], "https://app.example.com");
        assert_eq!(h[header::HOST], "chat.example.com");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "Upgrade");
        assert!(
            h.get("x-secret").is_none(),
            "headers named by Connection are hop-by-hop"
        );
    }
}
