//! The Prometheus metric families wsgate exports on `/metrics`, and the one registry that
//! holds them. Counting only; no HTTP here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a handshake's or a plain request's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `namespace/name` of the selected route, empty when no route matched.
    pub route: Arc<str>,
    /// `accepted`, `rejected` or `failed` (upstream trouble).
    pub result: &'static str,
    /// The rejection reason, or `ok`.
    pub reason: &'static str,
}

/// Labels of per-route gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// `namespace/name`.
    pub route: Arc<str>,
}

/// Labels of relay traffic counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    /// `namespace/name`.
    pub route: Arc<str>,
    /// `client_to_upstream` or `upstream_to_client`.
    pub direction: &'static str,
}

/// Labels of WebSocket closes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    /// The close code: 1000-1015 as themselves (1005: a Close without a code, 1006: no
    /// Close at all), `3xxx`, `4xxx` or `invalid`.
    pub code: &'static str,
    /// `client`, `upstream` or `gateway`.
    pub initiator: &'static str,
}

/// Labels of how relayed connections ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    /// Who or what ended the connection.
    pub ended_by: &'static str,
}

/// Labels of status writes to the API server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of per-kind watch metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    /// `WebSocketRoute`, `Service`, `EndpointSlice` or `Secret`.
    kind: &'static str,
}

/// Since when each watched kind's view has not been known current (controller mode), for
/// `wsgate_watch_stale_seconds`; computed at scrape time, so it grows between changes.
#[derive(Clone, Debug, Default)]
pub struct WatchStaleness(Arc<Mutex<BTreeMap<&'static str, Option<Instant>>>>);

impl WatchStaleness {
    /// Records that `kind`'s view is current (`None`) or has not been since `since`.
    pub fn set(&self, kind: &'static str, since: Option<Instant>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(kind, since);
    }
}

impl Collector for WatchStaleness {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let kinds = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let gauge = ConstGauge::new(0.0);
        let mut family = encoder.encode_descriptor(
            "watch_stale_seconds",
            "Seconds since this kind's view of the API server was last known current; 0 while its watches are up",
            None,
            gauge.metric_type(),
        )?;
        for (kind, since) in kinds {
            let seconds = since.map_or(0.0, |s| s.elapsed().as_secs_f64());
            ConstGauge::new(seconds).encode(family.encode_family(&KindLabels { kind })?)?;
        }
        Ok(())
    }
}

/// Every metric family, registered once.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Handshakes by route, result and reason.
    pub handshakes: Family<OutcomeLabels, Counter>,
    /// Plain HTTP requests on routes with `http`, by route, result and reason.
    pub http_requests: Family<OutcomeLabels, Counter>,
    /// Relayed connections open now, by route.
    pub active_connections: Family<RouteLabels, Gauge>,
    /// Relayed bytes by route and direction.
    pub bytes: Family<TrafficLabels, Counter>,
    /// Relayed WebSocket messages by route and direction.
    pub messages: Family<TrafficLabels, Counter>,
    /// How long relayed connections lasted, by route.
    pub connection_duration: Family<RouteLabels, Histogram>,
    /// WebSocket closes by code and by who closed first.
    pub closes: Family<CloseLabels, Counter>,
    /// Seconds to open a TCP connection to an upstream.
    pub upstream_connect_seconds: Histogram,
    /// Finished relays by how they ended.
    pub connections_ended: Family<EndLabels, Counter>,
    /// Client connections that chose HTTP/2 (ALPN `h2`), each carrying any number of
    /// requests and sockets.
    pub http2_connections: Counter,
    /// Version of the active snapshot (increments on every applied change).
    pub snapshot_version: Gauge,
    /// Routes in the active snapshot.
    pub snapshot_routes: Gauge,
    /// Route sources that failed to load (files that do not parse).
    pub source_errors: Gauge,
    /// Seconds from a change being seen to its snapshot serving (compile and swap).
    pub snapshot_apply_seconds: Histogram,
    /// 1 while this replica holds the status Lease (controller mode), else 0.
    pub leader: Gauge,
    /// Route status writes by result (controller mode, leader only).
    pub status_writes: Family<WriteLabels, Counter>,
    /// How stale each watched kind is (controller mode).
    pub watch_staleness: WatchStaleness,
    /// The route label of handshakes no route matched (empty), made once.
    no_route: Arc<str>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wsgate");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            handshakes: Family::default(),
            http_requests: Family::default(),
            active_connections: Family::default(),
            bytes: Family::default(),
            messages: Family::default(),
            // 1 s .. ~18 h.
            connection_duration: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    1.0, 4.0, 9,
                ))
            }),
            closes: Family::default(),
            // 100 µs .. ~3.3 s.
            upstream_connect_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_1, 2.0, 16),
            ),
            connections_ended: Family::default(),
            http2_connections: Counter::default(),
            snapshot_version: Gauge::default(),
            snapshot_routes: Gauge::default(),
            source_errors: Gauge::default(),
            // 50 µs .. ~1.6 s.
            snapshot_apply_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 16),
            ),
            leader: Gauge::default(),
            status_writes: Family::default(),
            watch_staleness: WatchStaleness::default(),
            no_route: Arc::from(""),
        };
        registry.register(
            "handshakes",
            "WebSocket handshakes by route, result and reason",
            m.handshakes.clone(),
        );
        registry.register(
            "http_requests",
            "Plain HTTP requests (not upgrades) by route, result and reason",
            m.http_requests.clone(),
        );
        registry.register(
            "active_connections",
            "Relayed WebSocket connections open now, by route",
            m.active_connections.clone(),
        );
        registry.register(
            "relayed_bytes",
            "Bytes relayed, by route and direction",
            m.bytes.clone(),
        );
        registry.register(
            "relayed_messages",
            "WebSocket messages relayed, by route and direction",
            m.messages.clone(),
        );
        registry.register(
            "connection_duration_seconds",
            "How long relayed connections lasted, by route",
            m.connection_duration.clone(),
        );
        registry.register(
            "closes",
            "WebSocket closes by close code and by who closed first",
            m.closes.clone(),
        );
        registry.register(
            "upstream_connect_seconds",
            "Seconds to open a TCP connection to an upstream",
            m.upstream_connect_seconds.clone(),
        );
        registry.register(
            "connections_ended",
            "Relayed connections that ended, by what ended them",
            m.connections_ended.clone(),
        );
        registry.register(
            "snapshot_version",
            "Version of the active route snapshot",
            m.snapshot_version.clone(),
        );
        registry.register(
            "snapshot_routes",
            "Routes in the active snapshot",
            m.snapshot_routes.clone(),
        );
        registry.register(
            "source_errors",
            "Route sources (files) that currently fail to load",
            m.source_errors.clone(),
        );
        registry.register(
            "snapshot_apply_seconds",
            "Seconds from a route change being seen to the new snapshot serving",
            m.snapshot_apply_seconds.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the Lease and writes route status",
            m.leader.clone(),
        );
        registry.register(
            "status_writes",
            "Route status writes to the API server, by result",
            m.status_writes.clone(),
        );
        registry.register(
            "http2_connections",
            "Client connections that chose HTTP/2 on the TLS listener (each carries many requests and sockets)",
            m.http2_connections.clone(),
        );
        registry.register_collector(Box::new(m.watch_staleness.clone()));
        Metrics {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// Renders every family in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts one plain request's outcome.
    pub fn http_request(
        &self,
        route: Option<&Arc<str>>,
        result: &'static str,
        reason: &'static str,
    ) {
        self.outcome(&self.http_requests, route, result, reason);
    }

    /// Counts one handshake outcome.
    pub fn handshake(&self, route: Option<&Arc<str>>, result: &'static str, reason: &'static str) {
        self.outcome(&self.handshakes, route, result, reason);
    }

    /// Counts one outcome in `family`; no route is the empty label.
    fn outcome(
        &self,
        family: &Family<OutcomeLabels, Counter>,
        route: Option<&Arc<str>>,
        result: &'static str,
        reason: &'static str,
    ) {
        family
            .get_or_create(&OutcomeLabels {
                route: route.unwrap_or(&self.no_route).clone(),
                result,
                reason,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_counts_appear_in_the_text_output() {
        let m = Metrics::new();
        m.handshake(
            Some(&Arc::from("apps/chat")),
            "rejected",
            "origin_not_allowed",
        );
        let text = m.render();
        assert!(
            text.contains(
                r#"wsgate_handshakes_total{route="apps/chat",result="rejected",reason="origin_not_allowed"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn watch_staleness_is_zero_while_current_and_grows_while_not() {
        let m = Metrics::new();
        m.watch_staleness.set("Service", None);
        m.watch_staleness.set(
            "Secret",
            Instant::now().checked_sub(std::time::Duration::from_secs(5)),
        );
        let text = m.render();
        assert!(
            text.contains("# TYPE wsgate_watch_stale_seconds gauge"),
            "{text}"
        );
        assert!(
            text.contains(r#"wsgate_watch_stale_seconds{kind="Service"} 0.0"#),
            "{text}"
        );
        let secret: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(r#"wsgate_watch_stale_seconds{kind="Secret"} "#))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Secret sample: {text}"));
        assert!((5.0..60.0).contains(&secret), "{secret}");
    }
}
