//! Admission control before a handshake is forwarded (DESIGN §6 `limits`): how many
//! connections a route and each of its clients hold, and how fast a client opens them. Counts
//! outlive snapshots (they are keyed by the route's `namespace/name`), so a route change does
//! not reset them. Knows route labels and client addresses; no sockets, no clock reads.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::route::Admission;

/// Why a handshake was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The route holds `maxConnections`.
    RouteFull,
    /// The client holds `maxConnectionsPerClient` on the route.
    ClientConnections,
    /// The client's bucket is empty; the next handshake is allowed after this many seconds.
    ClientRate(u32),
}

/// A client as limits count it: an IPv4 address, or an IPv6 /64 (what one host is usually
/// given, so rotating addresses inside it does not evade a limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of a client address; an IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(_) => ClientKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => ClientKey(IpAddr::V6(Ipv6Addr::from_bits(
                    v6.to_bits() & !u128::from(u64::MAX),
                ))),
            },
        }
    }
}

/// One client's use of one route.
#[derive(Debug)]
struct ClientUse {
    connections: u32,
    /// Handshakes left in the bucket; refilled at the route's rate up to one second's worth.
    tokens: f64,
    refilled: Instant,
}

impl ClientUse {
    fn new(now: Instant, rate: Option<u32>) -> ClientUse {
        ClientUse {
            connections: 0,
            tokens: rate.map_or(0.0, f64::from),
            refilled: now,
        }
    }

    fn refill(&mut self, rate: u32, now: Instant) {
        let rate = f64::from(rate);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled = now;
    }

    /// Whether forgetting this client loses nothing: no connection, and a bucket that would
    /// be full again by `now`.
    fn idle(&self, rate: Option<u32>, now: Instant) -> bool {
        if self.connections > 0 {
            return false;
        }
        rate.is_none_or(|rate| {
            let rate = f64::from(rate);
            let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
            self.tokens + elapsed * rate >= rate
        })
    }
}

/// One route's use.
#[derive(Debug, Default)]
struct RouteUse {
    connections: u32,
    clients: foldhash::HashMap<ClientKey, ClientUse>,
    /// Client entries after the last sweep: the next sweep runs when they have doubled, so
    /// sweeping costs O(1) per handshake and the map stays within twice the live clients.
    swept_len: usize,
}

/// The connection counts and handshake buckets of every route with limits.
#[derive(Debug, Default)]
pub struct Admissions {
    routes: Mutex<foldhash::HashMap<Arc<str>, RouteUse>>,
}

/// A connection counted against its route's limits until it is dropped.
#[derive(Debug)]
pub struct Slot {
    admissions: Arc<Admissions>,
    route: Arc<str>,
    client: ClientKey,
}

impl Admissions {
    fn lock(&self) -> MutexGuard<'_, foldhash::HashMap<Arc<str>, RouteUse>> {
        // Every update under this lock is a few integer changes: a poisoned map is consistent.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a handshake from `ip` on the route labelled `route`, or says which limit it
    /// meets. A route without limits is not counted (`None`).
    pub fn admit(
        self: &Arc<Self>,
        route: &Arc<str>,
        limits: Admission,
        ip: IpAddr,
        now: Instant,
    ) -> Result<Option<Slot>, Denied> {
        if !limits.any() {
            return Ok(None);
        }
        let client = ClientKey::of(ip);
        let rate = limits.handshakes_per_second_per_client;
        let mut routes = self.lock();
        if !routes.contains_key(&**route) {
            routes.insert(route.clone(), RouteUse::default());
        }
        let usage = routes.get_mut(&**route).expect("inserted above");
        if usage.clients.len() >= 64 && usage.clients.len() >= 2 * usage.swept_len {
            usage.clients.retain(|_, c| !c.idle(rate, now));
            usage.swept_len = usage.clients.len();
        }
        let tracked = rate.is_some() || limits.max_connections_per_client.is_some();
        if tracked {
            let entry = usage
                .clients
                .entry(client)
                .or_insert_with(|| ClientUse::new(now, rate));
            if let Some(rate) = rate {
                entry.refill(rate, now);
                if entry.tokens < 1.0 {
                    let wait = (1.0 - entry.tokens) / f64::from(rate);
                    return Err(Denied::ClientRate(wait.ceil().max(1.0) as u32));
                }
                entry.tokens -= 1.0;
            }
            if limits
                .max_connections_per_client
                .is_some_and(|max| entry.connections >= max)
            {
                return Err(Denied::ClientConnections);
            }
        }
        if limits
            .max_connections
            .is_some_and(|max| usage.connections >= max)
        {
            return Err(Denied::RouteFull);
        }
        usage.connections += 1;
        if tracked && let Some(entry) = usage.clients.get_mut(&client) {
            entry.connections += 1;
        }
        Ok(Some(Slot {
            admissions: self.clone(),
            route: route.clone(),
            client,
        }))
    }

    /// Connections counted on the route labelled `route`.
    pub fn connections(&self, route: &str) -> u32 {
        self.lock().get(route).map_or(0, |u| u.connections)
    }

    fn release(&self, route: &str, client: ClientKey) {
        let mut routes = self.lock();
        let Some(usage) = routes.get_mut(route) else {
            return;
        };
        usage.connections = usage.connections.saturating_sub(1);
        if let Some(entry) = usage.clients.get_mut(&client) {
            entry.connections = entry.connections.saturating_sub(1);
        }
        if usage.connections == 0 && usage.clients.is_empty() {
            routes.remove(route);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admissions.release(&self.route, self.client);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(max: Option<u32>, per_client: Option<u32>, rate: Option<u32>) -> Admission {
        Admission {
            max_connections: max,
            max_connections_per_client: per_client,
            handshakes_per_second_per_client: rate,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_route_without_limits_is_not_counted() {
        let admissions = Arc::new(Admissions::default());
        let route: Arc<str> = "ns/a".into();
        let slot = admissions.admit(&route, Admission::default(), ip("10.0.0.1"), Instant::now());
        assert!(matches!(slot, Ok(None)));
        assert_eq!(admissions.connections("ns/a"), 0);
    }

    #[test]
    fn a_full_route_refuses_until_a_connection_ends() {
        let admissions = Arc::new(Admissions::default());
        let route: Arc<str> = "ns/a".into();
        let now = Instant::now();
        let l = limits(Some(2), None, None);
        let first = admissions
            .admit(&route, l, ip("10.0.0.1"), now)
            .expect("1st");
        let _second = admissions
            .admit(&route, l, ip("10.0.0.2"), now)
            .expect("2nd");
        assert_eq!(
            admissions
                .admit(&route, l, ip("10.0.0.3"), now)
                .unwrap_err(),
            Denied::RouteFull
        );
        drop(first);
        assert!(admissions.admit(&route, l, ip("10.0.0.3"), now).is_ok());
    }

    #[test]
    fn each_client_is_limited_on_its_own() {
        let admissions = Arc::new(Admissions::default());
        let route: Arc<str> = "ns/a".into();
        let now = Instant::now();
        let l = limits(None, Some(1), None);
        let held = admissions
            .admit(&route, l, ip("10.0.0.1"), now)
            .expect("1st");
        assert_eq!(
            admissions
                .admit(&route, l, ip("10.0.0.1"), now)
                .unwrap_err(),
            Denied::ClientConnections
        );
        let _other = admissions
            .admit(&route, l, ip("10.0.0.2"), now)
            .expect("other");
        // Another route's count is its own.
        let other_route: Arc<str> = "ns/b".into();
        let _b = admissions
            .admit(&other_route, l, ip("10.0.0.1"), now)
            .expect("b");
        drop(held);
        assert!(admissions.admit(&route, l, ip("10.0.0.1"), now).is_ok());
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let admissions = Arc::new(Admissions::default());
        let route: Arc<str> = "ns/a".into();
        let now = Instant::now();
        let l = limits(None, Some(1), None);
        let _held = admissions
            .admit(&route, l, ip("2001:db8:1:2::1"), now)
            .expect("1st");
        assert_eq!(
            admissions
                .admit(&route, l, ip("2001:db8:1:2:ffff::9"), now)
                .unwrap_err(),
            Denied::ClientConnections
        );
        assert!(
            admissions
                .admit(&route, l, ip("2001:db8:1:3::1"), now)
                .is_ok()
        );
        assert_eq!(
            ClientKey::of(ip("::ffff:10.0.0.1")),
            ClientKey::of(ip("10.0.0.1"))
        );
    }

    #[test]
    fn the_handshake_rate_allows_a_seconds_burst_then_refills() {
        let admissions = Arc::new(Admissions::default());
        let route: Arc<str> = "ns/a".into();
        let start = Instant::now();
        let l = limits(None, None, Some(2));
        let client = ip("10.0.0.1");
        let _a = admissions.admit(&route, l, client, start).expect("1");
        let _b = admissions.admit(&route, l, client, start).expect("2");
        assert_eq!(
            admissions.admit(&route, l, client, start).unwrap_err(),
            Denied::ClientRate(1)
        );
        // Another client has its own bucket.
        assert!(admissions.admit(&route, l, ip("10.0.0.2"), start).is_ok());
        // Half a second refills one handshake at 2 per second.
        let later = start + Duration::from_millis(500);
        assert!(admissions.admit(&route, l, client, later).is_ok());
        assert!(admissions.admit(&route, l, client, later).is_err());
    }

    #[test]
    fn idle_clients_are_forgotten_so_the_map_stays_bounded() {
        let admissions = Arc::new(Admissions::default());
        let route: Arc<str> = "ns/a".into();
        let start = Instant::now();
        let l = limits(None, None, Some(1));
        for i in 0..1000u32 {
            let at = start + Duration::from_secs(u64::from(i) * 2);
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            drop(admissions.admit(&route, l, addr, at).expect("admitted"));
        }
        let clients = admissions.lock()["ns/a"].clients.len();
        assert!(clients < 200, "{clients} client entries kept");
    }

    #[test]
    fn counts_survive_a_new_snapshot_of_the_same_route() {
        let admissions = Arc::new(Admissions::default());
        let now = Instant::now();
        let l = limits(Some(1), None, None);
        // Two snapshots build two labels with the same text.
        let before: Arc<str> = "ns/a".into();
        let after: Arc<str> = "ns/a".into();
        let _held = admissions
            .admit(&before, l, ip("10.0.0.1"), now)
            .expect("1st");
        assert_eq!(
            admissions
                .admit(&after, l, ip("10.0.0.2"), now)
                .unwrap_err(),
            Denied::RouteFull
        );
    }
}
