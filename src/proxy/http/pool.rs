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
use crate::proxy::upstream::{self, UpstreamTimeouts};
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
    idle: Mutex<HashMap<Key, Vec<Idle>>>,
}

/// One target as reached: its address, and the TLS it is verified with (by identity, so a
/// route whose trust changes does not reuse a connection verified under the old one).
#[derive(Clone)]
struct Key {
    target: Target,
    tls: Option<Arc<UpstreamTls>>,
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.target == other.target
            && match (&self.tls, &other.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.target.hash(state);
        self.tls.as_ref().map(Arc::as_ptr).hash(state);
    }
}

/// A connection waiting for its next request.
struct Idle {
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
    /// Puts the connection back for the next request to its target.
    pub(super) fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        let kept = idle.entry(self.key).or_default();
        kept.retain(|i| fresh(i, now));
        if kept.len() < MAX_IDLE_PER_TARGET {
            kept.push(Idle {
                sender: self.sender,
                since: now,
            });
        }
    }
}

/// Whether an idle connection may still carry a request.
fn fresh(idle: &Idle, now: Instant) -> bool {
    now.duration_since(idle.since) < KEEP_IDLE && idle.sender.is_ready()
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
        timeouts: UpstreamTimeouts,
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
                        None => return Err(Failed::Exchange(e.into_error())),
                    },
                }
            }
        }
        let (stream, target) = upstream::open(upstream, client, timeouts, connect_latency)
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
    /// and a target left without any is forgotten (endpoints come and go).
    fn take(&self, key: &Key) -> Option<SendRequest<Limited>> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let kept = idle.get_mut(key)?;
        let mut taken = None;
        while let Some(candidate) = kept.pop() {
            if fresh(&candidate, now) {
                taken = Some(candidate.sender);
                break;
            }
        }
        if kept.is_empty() {
            idle.remove(key);
        }
        taken
    }
}

/// Why a plain request got no response from the upstream.
#[derive(Debug)]
pub(super) enum Failed {
    /// No connection: the refusal a handshake would get.
    Open(Reject),
    /// The exchange failed (the request body too, when it went over its limit).
    Exchange(hyper::Error),
}

impl From<hyper::Error> for Failed {
    fn from(e: hyper::Error) -> Failed {
        Failed::Exchange(e)
    }
}
