//! What the phases share: the data plane's tunables ([`ProxyConfig`]), the [`Gateway`] every
//! connection holds, and the counting of connections that drain and `max_connections` rely on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use super::admission::Admissions;
use super::client::TrustedProxies;
use super::registry::{Registry, close_spread};
use super::upstream::UpstreamTimeouts;
use crate::access::AccessLog;
use crate::metrics::Metrics;
use crate::snapshot::Published;

/// Tunables of the data plane.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Upstream connect and response timeouts.
    pub upstream: UpstreamTimeouts,
    /// How long a client may take to send its request head.
    pub header_read_timeout: Duration,
    /// Largest request head accepted, in bytes.
    pub max_header_bytes: usize,
    /// How long to wait for a peer's Close reply, or for the other direction after one
    /// side ended.
    pub close_linger: Duration,
    /// Most client connections open at once (503 beyond).
    pub max_connections: usize,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// Whether every connection starts with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// How long a write to a client of plain HTTP requests may wait for it to read.
    pub http_send_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            upstream: UpstreamTimeouts {
                connect: Duration::from_secs(5),
                response: Duration::from_secs(10),
            },
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            close_linger: Duration::from_secs(2),
            max_connections: 100_000,
            trusted_proxies: TrustedProxies::default(),
            proxy_protocol: false,
            http_send_timeout: Duration::from_secs(60),
        }
    }
}

/// State shared by the listener, the route source and the admin endpoints.
pub struct Gateway {
    /// Where the snapshots every handshake is decided against are published.
    pub(super) published: Arc<Published>,
    /// Relayed connections, and handshakes waiting for their upstream: what a snapshot
    /// revokes and a drain closes.
    pub(super) connections: Arc<Registry>,
    /// What the routes' and clients' limits count.
    pub(super) admissions: Arc<Admissions>,
    /// Set while at `max_connections`, so reaching it is logged once, not per connection.
    full: AtomicBool,
    /// The metric families.
    pub(super) metrics: Metrics,
    /// Where each handshake and each relayed connection's end is logged.
    pub(super) access: AccessLog,
    /// The data plane's tunables.
    pub(super) config: ProxyConfig,
    /// Upstream connections kept for plain requests.
    pub(super) pool: Arc<super::http::Pool>,
    /// HTTP connections not yet upgraded (or done), for draining.
    http_connections: AtomicUsize,
    http_idle: Notify,
}

impl Gateway {
    /// A gateway serving what is published in `published`; with nothing published yet,
    /// every handshake gets 503. Each snapshot published from now on closes the live
    /// connections it no longer admits (1008, or 1001 when their route is gone).
    pub fn new(config: ProxyConfig, published: Arc<Published>) -> Arc<Gateway> {
        let connections = Arc::new(Registry::default());
        let registry = connections.clone();
        published.on_publish(move |snapshot| {
            let revoked = registry.revoke(&snapshot.table);
            if revoked.policy + revoked.gone > 0 {
                tracing::info!(
                    version = snapshot.version,
                    origin_revoked = revoked.policy,
                    route_removed = revoked.gone,
                    "closed connections the new snapshot no longer admits"
                );
            }
        });
        Arc::new(Gateway {
            metrics: published.metrics().clone(),
            published,
            connections,
            admissions: Arc::new(Admissions::default()),
            full: AtomicBool::new(false),
            access: AccessLog::new(),
            config,
            pool: Arc::default(),
            http_connections: AtomicUsize::new(0),
            http_idle: Notify::new(),
        })
    }

    /// Where the gateway's snapshots are published.
    pub fn published(&self) -> &Arc<Published> {
        &self.published
    }

    /// The data plane's tunables.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// The metric families.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sends Close 1012 to every relayed connection, spread in random order over `jitter`
    /// (every one that completes its handshake from now on gets it at once), and resolves
    /// once all are gone.
    pub async fn drain(&self, jitter: Duration) {
        self.published.start_draining();
        let live = self.connections.start_draining();
        tracing::info!(
            connections = live.len(),
            jitter_seconds = jitter.as_secs_f64(),
            "closing live connections with 1012"
        );
        tokio::join!(
            close_spread(live, jitter),
            self.connections.wait_empty(),
            self.wait_http_idle()
        );
    }

    /// Resolves once no connection is in its HTTP phase.
    async fn wait_http_idle(&self) {
        loop {
            let idle = self.http_idle.notified();
            if self.http_connections.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// How many relayed connections are live.
    pub fn live_connections(&self) -> usize {
        self.connections.len()
    }

    /// Connections in their HTTP phase: handshaking, or carrying plain requests.
    pub fn http_connections(&self) -> usize {
        self.http_connections.load(Ordering::Acquire)
    }

    /// Client connections open: handshaking and relayed (a connection finishing its
    /// handshake may be counted twice for a moment, which errs towards the cap).
    fn open_connections(&self) -> usize {
        self.http_connections() + self.connections.len()
    }

    /// Whether one more connection fits under `max_connections`; logs reaching the cap and
    /// leaving it once each.
    pub(super) fn has_room(&self) -> bool {
        let room = self.open_connections() < self.config.max_connections;
        if self.full.swap(!room, Ordering::AcqRel) == room {
            if room {
                tracing::info!(
                    limit = self.config.max_connections,
                    "below the connection limit again"
                );
            } else {
                tracing::warn!(
                    limit = self.config.max_connections,
                    "at the connection limit (--max-connections): new connections get 503"
                );
            }
        }
        room
    }
}

/// A connection in its HTTP phase (before the relay), counted so that draining waits for
/// handshakes under way.
pub(super) struct HttpPhase(pub(super) Arc<Gateway>);

impl HttpPhase {
    /// Counts `gateway`'s connection as in its HTTP phase until the guard drops.
    pub(super) fn enter(gateway: Arc<Gateway>) -> HttpPhase {
        gateway.http_connections.fetch_add(1, Ordering::AcqRel);
        HttpPhase(gateway)
    }
}

impl Drop for HttpPhase {
    fn drop(&mut self) {
        if self.0.http_connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.http_idle.notify_waiters();
        }
    }
}
