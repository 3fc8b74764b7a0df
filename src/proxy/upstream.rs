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
use super::http1::{self, Headers};
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
    /// `1.1`, or `2` for a stream of an HTTP/2 connection: the HTTP version it spoke.
    pub version: &'static str,
}

impl ClientInfo {
    /// A client that connected from `peer`, over TLS or not, as it first speaks: HTTP/1.1.
    pub fn direct(peer: SocketAddr, tls: bool) -> ClientInfo {
        ClientInfo {
            addr: peer,
            ip: peer.ip(),
            proto: if tls { "https" } else { "http" },
            version: "1.1",
        }
    }

    /// The client of one request on this connection: the connection's own address, or,
    /// when that is a trusted proxy, the one its `forwarded_for` names. Each request of a
    /// kept-alive connection from a proxy may be another client's.
    pub fn of_request<'a>(
        self,
        proxies: &super::client::TrustedProxies,
        forwarded_for: impl Iterator<Item = &'a [u8]>,
    ) -> ClientInfo {
        if proxies.is_empty() {
            return self;
        }
        ClientInfo {
            ip: proxies.client(self.addr.ip(), forwarded_for),
            ..self
        }
    }
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

/// Where forwarded headers go: the raw head of a handshake sent upstream, or the header map
/// of a plain request.
pub trait HeaderSink {
    /// Appends `name: value`.
    fn put(&mut self, name: &str, value: &[u8]);
    /// Appends `name` with the value `value` writes into the buffer it is given.
    fn put_with(&mut self, name: &'static str, value: impl FnOnce(&mut Vec<u8>));
}

impl HeaderSink for Vec<u8> {
    fn put(&mut self, name: &str, value: &[u8]) {
        http1::put_header(self, name, value);
    }

    // Written in place: no buffer per handshake for a value.
    fn put_with(&mut self, name: &'static str, value: impl FnOnce(&mut Vec<u8>)) {
        self.extend_from_slice(name.as_bytes());
        self.extend_from_slice(b": ");
        value(self);
        self.extend_from_slice(b"\r\n");
    }
}

impl HeaderSink for http::HeaderMap {
    /// A name or value that is not valid HTTP is left out (a claim's value can be anything).
    fn put(&mut self, name: &str, value: &[u8]) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) {
            self.append(name, value);
        }
    }

    fn put_with(&mut self, name: &'static str, value: impl FnOnce(&mut Vec<u8>)) {
        let mut buf = Vec::with_capacity(64);
        value(&mut buf);
        self.put(name, &buf);
    }
}

/// The path and query sent upstream for the normalized `target`: the upstream URL's path,
/// when it has one, replaces the request's (the query is kept).
pub fn upstream_target<'a>(target: &'a str, upstream: &'a Upstream) -> (&'a str, Option<&'a str>) {
    let (path, query) = http1::split_target(target);
    (upstream.path.as_deref().unwrap_or(path), query)
}

/// Writes the handshake request sent upstream: `GET`, the [`upstream_target`], and the
/// [`forward_headers`] of an upgrade.
pub fn forward_request(
    target: &str,
    headers: Headers<'_>,
    upstream: &Upstream,
    forwarding: Forwarding<'_>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(768);
    out.extend_from_slice(b"GET ");
    let (path, query) = upstream_target(target, upstream);
    out.extend_from_slice(path.as_bytes());
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    forward_headers(&mut out, headers, forwarding, true);
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes the headers of a forwarded request: the client's, without hop-by-hop headers,
/// forwarding headers and the verified claims' headers; for an `upgrade`, the upgrade
/// headers, the allowed subprotocols and the extension offers the gateway lets through (the
/// client's own `Sec-WebSocket-Extensions` never passes). A client header whose name differs
/// from one the gateway sets only by `_` for `-` is dropped. `Host` and `Origin` pass
/// through unchanged.
pub fn forward_headers(
    out: &mut impl HeaderSink,
    headers: Headers<'_>,
    forwarding: Forwarding<'_>,
    upgrade: bool,
) {
    let Forwarding {
        client,
        trusted_peer,
        subprotocols,
        extensions,
        claims,
    } = forwarding;
    for (name, value) in headers.iter() {
        let replaced = FORWARDING.iter().any(|f| collides(name, f))
            || claims.dropped.iter().any(|d| collides(name, d))
            || (subprotocols.is_some() && collides(name, "sec-websocket-protocol"))
            || (upgrade && collides(name, "sec-websocket-extensions"));
        // A plain request's framing is the HTTP library's to write, from the body it sends.
        let framing = !upgrade && collides(name, "content-length");
        if !replaced && !framing && !headers.is_hop_by_hop(name, false) {
            out.put(name, value);
        }
    }
    if upgrade {
        out.put("connection", b"Upgrade");
        out.put("upgrade", b"websocket");
    }
    if let Some(p) = subprotocols {
        out.put("sec-websocket-protocol", p.as_bytes());
    }
    if let Some(e) = extensions {
        out.put("sec-websocket-extensions", e.as_bytes());
    }

    let hop = client.addr.ip().to_canonical();
    out.put_with("x-forwarded-for", |out| {
        if trusted_peer {
            put_prior(out, headers.get_all("x-forwarded-for"));
        }
        let _ = write!(out, "{hop}");
    });
    // RFC 7239 §4: `for` the address that connected, `proto`, and `host` as the client sent it.
    out.put_with("forwarded", |out| {
        if trusted_peer {
            put_prior(out, headers.get_all("forwarded"));
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
    });
    out.put_with("x-real-ip", |out| {
        let _ = write!(out, "{}", client.ip);
    });
    out.put("x-forwarded-proto", client.proto.as_bytes());
    if let Some(host) = headers.get("host") {
        out.put("x-forwarded-host", host);
    }
    for (name, value) in claims.added {
        out.put(name, value.as_bytes());
    }
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

/// The targets in the order one connection tries them, each at most once: from the
/// client's own target under affinity, else from a uniformly random one (so load spreads
/// evenly), then the following ones in turn.
pub fn order(targets: &[Target], affinity: Option<IpAddr>) -> impl Iterator<Item = &Target> {
    let start = match (targets.len(), affinity) {
        (0, _) => 0,
        (n, None) => fastrand::usize(..n),
        (_, Some(client)) => preferred(targets, client),
    };
    targets[start..].iter().chain(&targets[..start])
}

/// The index of `client`'s target by rendezvous hashing: the target with the highest hash
/// of (client, target). It depends only on the client and that target, so every replica
/// picks the same one, and when a target goes away only its own clients move.
fn preferred(targets: &[Target], client: IpAddr) -> usize {
    use std::hash::BuildHasher;
    // A fixed seed: replicas of one build must agree.
    let hasher = foldhash::fast::FixedState::with_seed(0x7773_6761_7465);
    let client = client.to_canonical();
    (0..targets.len())
        .max_by_key(|&i| hasher.hash_one((client, &targets[i].host, targets[i].port)))
        .unwrap_or(0)
}

/// Connects to the first target (in [`order`]) that accepts a TCP connection. One that
/// refuses (or is unreachable) is skipped at once; one that does not answer within the
/// timeout ends the attempt, so a request never waits more than one connect timeout.
async fn connect<'a>(
    targets: &'a [Target],
    affinity: Option<IpAddr>,
    timeout: Duration,
    latency: &Histogram,
) -> Result<(TcpStream, &'a Target), Reject> {
    let mut last = Reject::NoUpstream;
    for target in order(targets, affinity) {
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

/// A TCP connection to one of the upstream's targets (the client's own target under
/// `client_affinity`), Nagle off. Successful connects are timed into `connect_latency`.
async fn reach<'a>(
    upstream: &'a Upstream,
    client: IpAddr,
    connect_timeout: Duration,
    connect_latency: &Histogram,
) -> Result<(TcpStream, &'a Target), Reject> {
    let affinity = upstream.client_affinity.then_some(client);
    let (tcp, target) = connect(
        &upstream.targets,
        affinity,
        connect_timeout,
        connect_latency,
    )
    .await?;
    // Small frames must not wait for Nagle's algorithm.
    let _ = tcp.set_nodelay(true);
    Ok((tcp, target))
}

/// `tcp` to `target`, with TLS over it when the upstream has it; the caller bounds the TLS
/// handshake's time.
async fn secure(upstream: &Upstream, tcp: TcpStream, target: &Target) -> Result<Stream, Reject> {
    let Some(tls) = &upstream.tls else {
        return Ok(Stream::Plain(tcp));
    };
    let connector = tokio_rustls::TlsConnector::from(tls.client_config());
    let secured = connector
        .connect(tls.server_name.clone(), tcp)
        .await
        .map_err(|e| {
            tracing::warn!(%target, server_name = ?tls.server_name, error = %e, "upstream TLS handshake failed");
            Reject::UpstreamTls
        })?;
    Ok(Stream::UpstreamTls(Box::new(secured)))
}

/// A connection to one of the upstream's targets ([`reach`]), TLS done ([`secure`]); the
/// caller bounds the TLS handshake's time.
pub async fn open<'a>(
    upstream: &'a Upstream,
    client: IpAddr,
    connect_timeout: Duration,
    connect_latency: &Histogram,
) -> Result<(Stream, &'a Target), Reject> {
    let (tcp, target) = reach(upstream, client, connect_timeout, connect_latency).await?;
    Ok((secure(upstream, tcp, target).await?, target))
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

/// Connects to the upstream (the client's own target under affinity), sends the handshake
/// `request` and reads the response head. Once connected, one response timeout covers the
/// TLS handshake, the request and the answer.
pub async fn send(
    upstream: &Upstream,
    client: IpAddr,
    request: &[u8],
    timeouts: UpstreamTimeouts,
    connect_latency: &Histogram,
) -> Result<Answer, Reject> {
    let (tcp, target) = reach(upstream, client, timeouts.connect, connect_latency).await?;
    let mut buf = Vec::new();
    let exchange = async {
        let mut stream = secure(upstream, tcp, target).await?;
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
