//! Admission control before a handshake is forwarded (docs/design.md §6 `limits`): how many
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
mod tests;
