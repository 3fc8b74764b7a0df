//! Who the client is (docs/design.md §6): the socket peer; or, with `--proxy-protocol`, the source
//! address of the PROXY protocol header (v1 or v2) a load balancer sends first; or, when the
//! peer is in `--trusted-proxies`, the nearest address in `X-Forwarded-For` that is not a
//! trusted proxy. Limits, `X-Real-IP` and the access log all use this address.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use ppp::PartialResult;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest PROXY header: v1 is at most 107 bytes; v2 carries a 16-byte fixed part and up to
/// 216 address bytes, plus TLVs we ignore but must read past, capped here.
const MAX_PROXY_HEADER: usize = 4096;

/// The address ranges whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Trusts these ranges.
    pub fn new(ranges: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(ranges)
    }

    /// Whether any range is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is in a trusted range (an IPv4-mapped IPv6 address as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`: `peer` itself unless it is trusted; then, walking
    /// `X-Forwarded-For` from the right (the hop nearest to us first), the first address that
    /// is not trusted. An entry that is not an IP address stops the walk at the last trusted
    /// hop, whose claim cannot be checked further.
    pub fn client<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'a [u8]>,
    ) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let hops: Vec<&[u8]> = forwarded_for.collect();
        let mut client = peer;
        for entry in hops.iter().rev().flat_map(|v| v.rsplit(|&b| b == b',')) {
            let Some(ip) = parse_hop(entry) else {
                break;
            };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

impl std::fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

/// One `X-Forwarded-For` entry: an IP address, possibly with a port (`1.2.3.4:5`,
/// `[::1]:5`), as some proxies write it.
fn parse_hop(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// Why a connection's PROXY protocol header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The first bytes are not a PROXY header, or it is malformed.
    #[error("expected a PROXY protocol v1 or v2 header: {0}")]
    Invalid(String),
    /// The peer closed before the header was complete.
    #[error("connection closed inside the PROXY protocol header")]
    Closed,
    /// The socket failed.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads a PROXY protocol header from the start of `io` into `buf` and returns the client
/// address it names (`None` for v2 `LOCAL` and v1 `UNKNOWN`, a load balancer's own health
/// check: the socket peer stands). The header's bytes are removed from `buf`; whatever
/// followed it stays there for the next layer.
pub async fn read_proxy_header<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    loop {
        if let Some((len, source)) = parse_proxy_header(buf)? {
            buf.drain(..len);
            return Ok(source);
        }
        if buf.len() >= MAX_PROXY_HEADER {
            return Err(ProxyHeaderError::Invalid("header too long".to_owned()));
        }
        buf.reserve(512);
        if io.read_buf(buf).await? == 0 {
            return Err(ProxyHeaderError::Closed);
        }
    }
}

/// The length of a complete PROXY header at the start of `bytes` and its source address;
/// `Ok(None)` while more bytes are needed.
pub fn parse_proxy_header(
    bytes: &[u8],
) -> Result<Option<(usize, Option<SocketAddr>)>, ProxyHeaderError> {
    let parsed = ppp::HeaderResult::parse(bytes);
    if parsed.is_incomplete() {
        // ppp calls a v1 line with a field missing incomplete even once its CRLF is here;
        // no byte that follows can complete it.
        if bytes.starts_with(b"PROXY") && bytes.windows(2).any(|w| w == b"\r\n") {
            return Err(ProxyHeaderError::Invalid(
                "a v1 header line with a field missing".to_owned(),
            ));
        }
        return Ok(None);
    }
    match parsed {
        ppp::HeaderResult::V1(Ok(header)) => {
            let source = match header.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            Ok(Some((header.header.len(), source)))
        }
        ppp::HeaderResult::V2(Ok(header)) => {
            let source = match (header.command, header.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_)) => None,
            };
            Ok(Some((header.len(), source)))
        }
        ppp::HeaderResult::V1(Err(e)) => Err(ProxyHeaderError::Invalid(e.to_string())),
        ppp::HeaderResult::V2(Err(e)) => Err(ProxyHeaderError::Invalid(e.to_string())),
    }
}

#[cfg(test)]
mod tests;
