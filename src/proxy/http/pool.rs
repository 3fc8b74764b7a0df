//! Upstream connections for plain requests, kept after a response for the next request to
//! the same target: what makes a long-polling client cost one upstream connection, not one
//! per poll.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;

use super::body::Limited;
use crate::proxy::handshake::Reject;
use crate::proxy::upstream;
use crate::route::{Target, Upstream};
use crate::tls::UpstreamTls;

/// Idle connections kept per target; one returned beyond it is closed.
const MAX_IDLE_PER_TARGET: usize = 32;

/// How long an idle connection is kept: below the 5 s after which Node's HTTP server
/// closes an idle keep-alive connection, so a request rarely meets one closing under it.
const KEEP_IDLE: Duration = Duration::from_secs(4);

/// Idle upstream connections by target.
#[derive(Default)]
pub(in crate::proxy) struct Pool {
    idle: Mutex<Idle>,
}

/// The idle connections, and when they were last swept of stale ones.
#[derive(Default)]
struct Idle {
    by_target: HashMap<Key, Vec<Kept>>,
    swept: Option<Instant>,
}

/// One target as reached: its address, and the TLS it is verified with (compared by value:
/// a recompiled route with the same trust reuses its connections).
#[derive(Clone, PartialEq, Eq)]
struct Key {
    target: Target,
    tls: Option<Arc<UpstreamTls>>,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.target.hash(state);
        self.tls.as_ref().map(|t| &t.anchors).hash(state);
    }
}

/// A connection waiting for its next request.
struct Kept {
    sender: SendRequest<Limited>,
    since: Instant,
}

/// A connection carrying one response: [`Lease::release`] returns it once the response
/// body has been read to its end; dropped before, it is closed.
pub(in crate::proxy) struct Lease {
    pool: Arc<Pool>,
    key: Key,
    sender: SendRequest<Limited>,
}

impl Lease {
    /// Puts the connection back for the next request to its target. Every `KEEP_IDLE`, a
    /// release also closes the stale connections of every target, so targets that get no
    /// more requests (endpoints gone, trust changed) keep nothing open for long.
    pub(super) fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle
            .swept
            .is_none_or(|at| now.duration_since(at) >= KEEP_IDLE)
        {
            idle.swept = Some(now);
            idle.by_target.retain(|_, kept| {
                kept.retain(|k| fresh(k, now));
                !kept.is_empty()
            });
        }
        let kept = idle.by_target.entry(self.key).or_default();
        kept.retain(|k| fresh(k, now));
        if kept.len() < MAX_IDLE_PER_TARGET {
            kept.push(Kept {
                sender: self.sender,
                since: now,
            });
        }
    }
}

/// Whether an idle connection may still carry a request.
fn fresh(kept: &Kept, now: Instant) -> bool {
    now.duration_since(kept.since) < KEEP_IDLE && kept.sender.is_ready()
}

/// Why a plain request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failed {
    /// No connection: the refusal a handshake would get.
    #[error("no connection to the upstream: {}", .0.reason())]
    Open(Reject),
    /// The client's request body failed (it went over its limit, or the client went away
    /// while sending it).
    #[error("the request body failed: {0}")]
    Body(hyper::Error),
    /// The upstream connection failed during the exchange.
    #[error("the exchange with the upstream failed: {0}")]
    Exchange(hyper::Error),
}

impl From<hyper::Error> for Failed {
    fn from(e: hyper::Error) -> Failed {
        // hyper calls errors of the body it was given to send the user's.
        match e.is_user() {
            true => Failed::Body(e),
            false => Failed::Exchange(e),
        }
    }
}

impl Pool {
    /// Sends `request` to the upstream: over an idle connection to a target the client may
    /// reach (under affinity, only its own), else over a new one. A request an idle
    /// connection could not take (it closed meanwhile) goes to the next.
    pub(super) async fn send(
        self: &Arc<Pool>,
        upstream: &Upstream,
        client: IpAddr,
        mut request: Request<Limited>,
        connect_timeout: Duration,
        connect_latency: &Histogram,
    ) -> Result<(Response<Incoming>, Lease), Failed> {
        let affinity = upstream.client_affinity.then_some(client);
        let reachable = upstream::order(&upstream.targets, affinity).take(match affinity {
            Some(_) => 1,
            None => usize::MAX,
        });
        for target in reachable {
            let key = Key {
                target: target.clone(),
                tls: upstream.tls.clone(),
            };
            while let Some(mut sender) = self.take(&key) {
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        let lease = Lease {
                            pool: self.clone(),
                            key,
                            sender,
                        };
                        return Ok((response, lease));
                    }
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => request = unsent,
                        None => return Err(e.into_error().into()),
                    },
                }
            }
        }
        let (stream, target) = upstream::open(upstream, client, connect_timeout, connect_latency)
            .await
            .map_err(Failed::Open)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection for plain requests ended");
            }
        });
        let response = sender.send_request(request).await?;
        let lease = Lease {
            pool: self.clone(),
            key: Key {
                target: target.clone(),
                tls: upstream.tls.clone(),
            },
            sender,
        };
        Ok((response, lease))
    }

    /// An idle connection to `key` that can take a request now; stale ones are dropped,
    /// and a target left without any is forgotten.
    fn take(&self, key: &Key) -> Option<SendRequest<Limited>> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let kept = idle.by_target.get_mut(key)?;
        let mut taken = None;
        while let Some(candidate) = kept.pop() {
            if fresh(&candidate, now) {
                taken = Some(candidate.sender);
                break;
            }
        }
        if kept.is_empty() {
            idle.by_target.remove(key);
        }
        taken
    }
}
