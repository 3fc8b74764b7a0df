//! The upstream side of a handshake: connect to one of the route's targets and forward the
//! client's upgrade request with forwarding headers (docs/design.md §5 step 6). Knows HTTP and
//! sockets; knows nothing of origins or routes' policies.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::handshake::Reject;
use super::http1::{self, Headers, Prefixed};
use super::stream::Stream;
use crate::route::{Target, Upstream};

/// Largest upstream response head accepted, in bytes.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Headers the gateway sets itself on the forwarded request; the client's are replaced
/// (`X-Forwarded-For` and `Forwarded` are appended to when the peer is a trusted proxy).
const FORWARDING: [&str; 7] = [
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "connection",
    "upgrade",
];

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
    /// Where the connection came from: the socket peer, or with `--proxy-protocol` the
    /// source the load balancer names. `X-Forwarded-For` is appended with its address.
    pub addr: SocketAddr,
    /// The client: `addr`'s address, unless `addr` is a trusted proxy and
    /// `X-Forwarded-For` names someone further away. `X-Real-IP`, limits and logs use it.
    pub ip: IpAddr,
    /// `http` or `https`: the listener the client used.
    pub proto: &'static str,
}

/// Headers of verified token claims (`auth.jwt.forwardClaims`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Claims<'a> {
    /// Header names (lowercase) the client may not send itself: claims go in them.
    pub dropped: &'a [String],
    /// The claims' headers.
    pub added: &'a [(String, String)],
}

/// What the gateway adds to a forwarded request besides the client's own headers.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The client, for `X-Forwarded-For`, `Forwarded` and `X-Real-IP`.
    pub client: ClientInfo,
    /// The connection came from a trusted proxy, whose `X-Forwarded-For` and `Forwarded`
    /// are kept and appended to; anyone else's are replaced.
    pub trusted_peer: bool,
    /// The allowed subprotocols the client offered, when the route filters them.
    pub subprotocols: Option<&'a str>,
    /// The extension offers passed on (`extensions::offer`), if any.
    pub extensions: Option<&'a str>,
    /// The verified claims' headers.
    pub claims: Claims<'a>,
}

/// Whether `name`, with `_` read as `-` (as CGI and WSGI backends read header names), is
/// `set`: a client's `X-Real_IP` must not stand beside the gateway's `X-Real-IP`.
fn collides(name: &str, set: &str) -> bool {
    name.len() == set.len()
        && name.bytes().zip(set.bytes()).all(|(n, s)| {
            let n = if n == b'_' { b'-' } else { n };
            n.eq_ignore_ascii_case(&s)
        })
}

/// Writes the request sent upstream: the client's path and headers, without hop-by-hop
/// headers, with the upgrade headers, the allowed subprotocols, the extension offers the
/// gateway lets through (the client's own `Sec-WebSocket-Extensions` never passes),
/// forwarding headers and the verified claims' headers. A client header whose name differs
/// from one the gateway sets only by `_` for `-` is dropped.
///
/// `target` is the normalized request target; the path goes unless the upstream URL has a
/// path, which then replaces it (the query is kept). `Host` and `Origin` pass through
/// unchanged.
pub fn forward_request(
    target: &str,
    headers: Headers<'_>,
    upstream: &Upstream,
    forwarding: Forwarding<'_>,
) -> Vec<u8> {
    let Forwarding {
        client,
        trusted_peer,
        subprotocols,
        extensions,
        claims,
    } = forwarding;
    let mut out = Vec::with_capacity(768);
    out.extend_from_slice(b"GET ");
    let (path, query) = http1::split_target(target);
    out.extend_from_slice(upstream.path.as_deref().unwrap_or(path).as_bytes());
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers.iter() {
        let replaced = FORWARDING.iter().any(|f| collides(name, f))
            || claims.dropped.iter().any(|d| collides(name, d))
            || (subprotocols.is_some() && collides(name, "sec-websocket-protocol"))
            || collides(name, "sec-websocket-extensions");
        if !replaced && !headers.is_hop_by_hop(name, false) {
            http1::put_header(&mut out, name, value);
        }
    }
    out.extend_from_slice(b"connection: Upgrade\r\nupgrade: websocket\r\n");
    if let Some(p) = subprotocols {
        http1::put_header(&mut out, "sec-websocket-protocol", p.as_bytes());
    }
    if let Some(e) = extensions {
        http1::put_header(&mut out, "sec-websocket-extensions", e.as_bytes());
    }

    let hop = client.addr.ip().to_canonical();
    out.extend_from_slice(b"x-forwarded-for: ");
    if trusted_peer {
        put_prior(&mut out, headers.get_all("x-forwarded-for"));
    }
    // Written in place: no string per handshake for an address.
    let _ = write!(out, "{hop}\r\n");
    // RFC 7239 §4: `for` the address that connected, `proto`, and `host` as the client sent it.
    out.extend_from_slice(b"forwarded: ");
    if trusted_peer {
        put_prior(&mut out, headers.get_all("forwarded"));
    }
    match hop {
        IpAddr::V4(v4) => {
            let _ = write!(out, "for={v4}");
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "for=\"[{v6}]\"");
        }
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(client.proto.as_bytes());
    if let Some(host) = headers.get("host") {
        out.extend_from_slice(b";host=\"");
        for &b in host.trim_ascii() {
            // A quoted-string escapes `"` and `\` (RFC 9110 §5.6.4).
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n");
    http1::put_header(&mut out, "x-real-ip", client.ip.to_string().as_bytes());
    http1::put_header(&mut out, "x-forwarded-proto", client.proto.as_bytes());
    if let Some(host) = headers.get("host") {
        http1::put_header(&mut out, "x-forwarded-host", host);
    }
    for (name, value) in claims.added {
        http1::put_header(&mut out, name, value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes each non-empty `prior` list followed by `, `: what a trusted proxy said before us.
fn put_prior<'a>(out: &mut Vec<u8>, prior: impl Iterator<Item = &'a [u8]>) {
    for value in prior {
        let value = value.trim_ascii();
        if !value.is_empty() {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
    }
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

/// The upstream's answer to a forwarded handshake.
#[derive(Debug)]
pub struct Answer {
    /// The connection, positioned after the response head.
    pub stream: Stream,
    /// The response head, then whatever followed it in the same reads.
    pub buf: Vec<u8>,
    /// The head's length in `buf`.
    pub head_len: usize,
}

/// Connects to the upstream, sends the handshake `request` and reads the response head.
/// Successful connects are timed into `connect_latency`.
pub async fn send(
    upstream: &Upstream,
    request: &[u8],
    timeouts: UpstreamTimeouts,
    connect_latency: &Histogram,
) -> Result<Answer, Reject> {
    let (tcp, target) = connect(&upstream.targets, timeouts.connect, connect_latency).await?;
    // Small frames must not wait for Nagle's algorithm.
    let _ = tcp.set_nodelay(true);
    let mut buf = Vec::new();
    let exchange = async {
        let mut stream = match &upstream.tls {
            None => Stream::Plain(tcp),
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.client_config());
                let io = Prefixed::new(tcp, &[]);
                let secured = connector
                    .connect(tls.server_name.clone(), io)
                    .await
                    .map_err(|e| {
                        tracing::warn!(%target, server_name = ?tls.server_name, error = %e, "upstream TLS handshake failed");
                        Reject::UpstreamTls
                    })?;
                Stream::Tls(Box::new(secured.into()))
            }
        };
        stream.write_all(request).await.map_err(|e| {
            tracing::debug!(%target, error = %e, "sending the handshake upstream failed");
            Reject::UpstreamUnreachable
        })?;
        let head_len = http1::read_head(&mut stream, &mut buf, MAX_RESPONSE_HEAD)
            .await
            .map_err(|e| {
                tracing::debug!(%target, error = %e, "no response head from the upstream");
                match e {
                    http1::HeadError::TooLarge(_) => Reject::UpstreamInvalid,
                    _ => Reject::UpstreamUnreachable,
                }
            })?;
        Ok((stream, head_len))
    };
    let (stream, head_len) = tokio::time::timeout(timeouts.response, exchange)
        .await
        .map_err(|_| Reject::UpstreamTimeout)??;
    Ok(Answer {
        stream,
        buf,
        head_len,
    })
}

#[cfg(test)]
mod tests;
