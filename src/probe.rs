//! `wsgate probe`: checks from outside that a running gateway answers, for `helm test` and
//! for people: the admin listener's `/readyz` is 200, and the proxy listener answers a
//! WebSocket handshake for a host no route serves with wsgate's own 404. Plain TCP and
//! HTTP/1.1, so it runs in the gateway's own image, which has no shell and no curl.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one check may take, connecting included.
const PATIENCE: Duration = Duration::from_secs(10);

/// The body wsgate sends with a 404 (`proxy::handshake::Reject::NoRoute`).
const NO_ROUTE: &str = "no route for this host and path";

/// A host name no route can serve (`.invalid` is reserved, RFC 6761).
const PROBE_HOST: &str = "wsgate-probe.invalid";

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing answered at the address.
    #[error("{what} at {addr}: cannot connect: {source}")]
    Connect {
        /// Which listener.
        what: &'static str,
        /// Its address.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// No complete answer in time.
    #[error("{what} at {addr}: no answer within {}s", PATIENCE.as_secs())]
    Timeout {
        /// Which listener.
        what: &'static str,
        /// Its address.
        addr: String,
    },
    /// An answer, but not the expected one.
    #[error("{what} at {addr}: {got}; expected {expected}")]
    Unexpected {
        /// Which listener.
        what: &'static str,
        /// Its address.
        addr: String,
        /// The status line and body received.
        got: String,
        /// What a healthy gateway answers.
        expected: &'static str,
    },
}

/// What the probe saw.
#[derive(Debug)]
pub struct Report {
    /// The admin listener's `/readyz` answer.
    pub ready: String,
    /// The proxy listener's answer to a handshake for an unrouted host.
    pub proxy: String,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "admin /readyz: {}", self.ready)?;
        write!(f, "proxy: {} (wsgate answers)", self.proxy)
    }
}

/// Probes the admin listener at `admin` and the proxy listener at `proxy` (`host:port`).
pub async fn run(admin: &str, proxy: &str) -> Result<Report, ProbeError> {
    let ready = exchange(
        "admin",
        admin,
        "GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_owned(),
    )
    .await?;
    if !ready.starts_with("200") {
        return Err(ProbeError::Unexpected {
            what: "admin",
            addr: admin.to_owned(),
            got: ready,
            expected: "200 ready",
        });
    }
    let handshake = format!(
        "GET / HTTP/1.1\r\nHost: {PROBE_HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let answer = exchange("proxy", proxy, handshake).await?;
    if !(answer.starts_with("404") && answer.contains(NO_ROUTE)) {
        return Err(ProbeError::Unexpected {
            what: "proxy",
            addr: proxy.to_owned(),
            got: answer,
            expected: "404 no route for this host and path",
        });
    }
    Ok(Report {
        ready,
        proxy: answer,
    })
}

/// Sends `request` to `addr` and returns the status code, reason and body on one line.
async fn exchange(what: &'static str, addr: &str, request: String) -> Result<String, ProbeError> {
    let talk = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ProbeError::Connect {
                what,
                addr: addr.to_owned(),
                source,
            })?;
        let mut answer = Vec::new();
        if stream.write_all(request.as_bytes()).await.is_ok() {
            let mut chunk = [0u8; 4096];
            // Until the head and its `Content-Length` body are in (the socket may stay open
            // a moment after the answer), the end of the stream, or 64 KiB.
            while !complete(&answer) && answer.len() < 64 * 1024 {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&chunk[..n]),
                }
            }
        }
        Ok(summary(&String::from_utf8_lossy(&answer)))
    };
    tokio::time::timeout(PATIENCE, talk)
        .await
        .unwrap_or_else(|_| {
            Err(ProbeError::Timeout {
                what,
                addr: addr.to_owned(),
            })
        })
}

/// Whether `answer` holds a whole response head and the body its `Content-Length` announces.
fn complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    answer.len() >= end + 4 + length
}

/// `HTTP/1.1 404 Not Found ... body` as `404 Not Found: body`.
fn summary(answer: &str) -> String {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_once(' '))
        .map_or("no HTTP answer", |(_, status)| status);
    match body.trim() {
        "" => status.to_owned(),
        body => format!("{status}: {body}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_summed_up_as_status_and_body() {
        assert_eq!(
            summary(
                "HTTP/1.1 404 Not Found\r\nContent-Length: 32\r\n\r\nno route for this host and path\n"
            ),
            "404 Not Found: no route for this host and path"
        );
        assert_eq!(summary("HTTP/1.1 200 OK\r\n\r\n"), "200 OK");
        assert_eq!(summary(""), "no HTTP answer");
    }
}
