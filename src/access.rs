//! The access log: one line per handshake (route, client, origin, result, reason), one per
//! plain HTTP request (the same, with method and status) and one per finished connection
//! (duration, bytes, close code), under the tracing target
//! `wsgate::access`. Lines for refused handshakes are capped per second, so a flood of bad
//! handshakes cannot fill a disk; how many were left out is logged once the second is over.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Refused-handshake lines written per second at most.
pub const REFUSED_LINES_PER_SECOND: u64 = 20;

/// The access log's per-second cap on refused-handshake lines.
#[derive(Debug)]
pub struct AccessLog {
    started: Instant,
    /// The second (since `started`) the counts below belong to.
    second: AtomicU64,
    /// Refused lines in that second, written or not.
    refused: AtomicU64,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog::new()
    }
}

/// One handshake's outcome, as logged.
#[derive(Debug, Clone, Copy)]
pub struct Handshake<'a> {
    /// `namespace/name` of the selected route, if one matched.
    pub route: Option<&'a str>,
    /// The client's address.
    pub client: IpAddr,
    /// The request's `Origin` header, if any (cut to 256 bytes).
    pub origin: Option<&'a str>,
    /// `accepted`, `rejected` or `failed`.
    pub result: &'static str,
    /// `ok` or why not.
    pub reason: &'static str,
    /// The HTTP version the handshake came in: `1.1`, or `2` for an HTTP/2 stream.
    pub http: &'static str,
}

/// One plain request's outcome, as logged.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `namespace/name` of the selected route, if one matched.
    pub route: Option<&'a str>,
    /// The client's address.
    pub client: IpAddr,
    /// The request's `Origin` header, if any (cut to 256 bytes).
    pub origin: Option<&'a str>,
    /// The request method.
    pub method: &'a str,
    /// The status the client got.
    pub status: u16,
    /// `accepted`, `rejected` or `failed`.
    pub result: &'static str,
    /// `ok`, `preflight`, or why not.
    pub reason: &'static str,
    /// Until the response head was sent.
    pub duration: Duration,
}

impl AccessLog {
    /// A log whose first second starts now.
    pub fn new() -> AccessLog {
        AccessLog {
            started: Instant::now(),
            second: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Whether a line with this `result` is written: access lines are on, and a refused one
    /// still fits this second's cap.
    fn writes(&self, result: &str) -> bool {
        // Nothing to count when access lines are filtered out anyway.
        tracing::enabled!(target: "wsgate::access", tracing::Level::INFO)
            && (result == "accepted" || self.admit_refused())
    }

    /// Logs a handshake; a refused one only while this second's cap is not reached.
    pub fn handshake(&self, h: Handshake<'_>) {
        if !self.writes(h.result) {
            return;
        }
        tracing::info!(
            target: "wsgate::access",
            route = h.route.unwrap_or("-"),
            client = %h.client,
            origin = shown(h.origin),
            result = h.result,
            reason = h.reason,
            http = h.http,
            "handshake"
        );
    }

    /// Logs a plain request; a refused one only while this second's cap is not reached.
    pub fn request(&self, r: Request<'_>) {
        if !self.writes(r.result) {
            return;
        }
        tracing::info!(
            target: "wsgate::access",
            route = r.route.unwrap_or("-"),
            client = %r.client,
            origin = shown(r.origin),
            method = r.method,
            status = r.status,
            result = r.result,
            reason = r.reason,
            duration_ms = r.duration.as_millis() as u64,
            "request"
        );
    }

    /// Logs a finished connection.
    pub fn closed(
        &self,
        route: &str,
        client: IpAddr,
        duration: Duration,
        bytes: (u64, u64),
        code: &str,
        ended_by: &str,
    ) {
        tracing::info!(
            target: "wsgate::access",
            route,
            client = %client,
            duration_ms = duration.as_millis() as u64,
            bytes_from_client = bytes.0,
            bytes_from_upstream = bytes.1,
            code,
            ended_by,
            "closed"
        );
    }

    /// Whether one more refused line fits this second; reports the lines left out of the
    /// second before, once.
    fn admit_refused(&self) -> bool {
        let now = self.started.elapsed().as_secs();
        let second = self.second.load(Ordering::Relaxed);
        if now != second
            && self
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let previous = self.refused.swap(0, Ordering::Relaxed);
            if previous > REFUSED_LINES_PER_SECOND {
                tracing::warn!(
                    target: "wsgate::access",
                    left_out = previous - REFUSED_LINES_PER_SECOND,
                    "refused-handshake lines left out (more than {REFUSED_LINES_PER_SECOND} a second)"
                );
            }
        }
        self.refused.fetch_add(1, Ordering::Relaxed) < REFUSED_LINES_PER_SECOND
    }
}

/// An `Origin` as a line shows it: cut to 256 bytes, `-` when there was none.
fn shown(origin: Option<&str>) -> &str {
    origin.map_or("-", |o| &o[..floor_char_boundary(o, 256)])
}

/// The largest index ≤ `at` that is a char boundary of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut i = at.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_lines_are_capped_per_second() {
        let log = AccessLog::new();
        let admitted = (0..100).filter(|_| log.admit_refused()).count() as u64;
        assert_eq!(admitted, REFUSED_LINES_PER_SECOND);
    }

    #[test]
    fn origins_are_cut_at_a_char_boundary() {
        let s = "é".repeat(200);
        let at = floor_char_boundary(&s, 256);
        assert!(at <= 256 && s.is_char_boundary(at));
    }
}
