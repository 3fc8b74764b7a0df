//! The live relayed connections, so that a new snapshot can revoke the ones it no longer
//! admits (1008 / 1001) and shutdown can close them all (1012). Knows routes and origins;
//! does not touch sockets: it only signals each connection's [`ConnControl`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::relay::ConnControl;
use crate::policy::RequestOrigin;
use crate::route::{Route, RouteTable};

/// RFC 6455 §7.4.1: the endpoint is going away (here: its route was removed).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// RFC 6455 §7.4.1: policy violation (here: the origin is no longer allowed).
pub const CLOSE_POLICY: u16 = 1008;
/// IANA WebSocket close code registry: service restart.
pub const CLOSE_RESTART: u16 = 1012;

struct Entry {
    route: Arc<Route>,
    origin: RequestOrigin,
    control: Arc<ConnControl>,
}

/// The set of live relayed connections.
#[derive(Default)]
pub struct Registry {
    entries: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
    /// Registered connections that are relaying (past their 101).
    relaying: AtomicUsize,
    draining: AtomicBool,
    emptied: Notify,
}

/// Removes its connection from the registry when dropped.
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
    control: Arc<ConnControl>,
    relaying: bool,
}

impl Registration {
    /// The control handle the handshake and then the relay watch.
    pub fn control(&self) -> Arc<ConnControl> {
        self.control.clone()
    }

    /// Whether `table` still admits this connection; if not, the close code and reason it
    /// calls for, whatever the route's `revokeOnPolicyChange` (a handshake not yet answered
    /// has nothing to keep).
    pub fn verdict(&self, table: &RouteTable) -> Option<(u16, &'static str)> {
        let entries = self.registry.lock();
        let entry = entries.get(&self.id)?;
        verdict(&entry.route, &entry.origin, table)
    }

    /// Counts the connection as relaying: its handshake is answered.
    pub fn relaying(&mut self) {
        if !self.relaying {
            self.relaying = true;
            self.registry.relaying.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.relaying {
            self.registry.relaying.fetch_sub(1, Ordering::AcqRel);
        }
        let mut entries = self.registry.lock();
        entries.remove(&self.id);
        if entries.is_empty() {
            self.registry.emptied.notify_waiters();
        }
    }
}

/// How many connections a revocation pass closed, by code.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    /// Closed with 1008: the origin is no longer allowed.
    pub policy: usize,
    /// Closed with 1001: the route is gone.
    pub gone: usize,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic while holding this lock leaves the map consistent (single inserts and
        // removes), so a poisoned lock is still safe to use.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection admitted by `route` with `origin`, from its decision on: a snapshot
    /// published while its upstream is still answering applies to it too. While draining,
    /// the new connection is told to close with 1012 at once.
    pub fn register(self: &Arc<Self>, route: Arc<Route>, origin: RequestOrigin) -> Registration {
        let control = Arc::new(ConnControl::new());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Entry {
                route,
                origin,
                control: control.clone(),
            },
        );
        if self.draining.load(Ordering::Acquire) {
            control.close(CLOSE_RESTART, "service restart");
        }
        Registration {
            registry: self.clone(),
            id,
            control,
            relaying: false,
        }
    }

    /// Closes the connections `table` no longer admits, for routes that ask for it
    /// (`revokeOnPolicyChange`, as the route in `table` says, or as the removed route said):
    /// 1001 when the route is gone (deleted, invalid or conflicted), 1008 when the route no
    /// longer allows the connection's origin.
    pub fn revoke(&self, table: &RouteTable) -> Revoked {
        let mut revoked = Revoked::default();
        for entry in self.lock().values() {
            let asks = table
                .get(&entry.route.key)
                .map_or(entry.route.revoke_on_policy_change, |r| {
                    r.revoke_on_policy_change
                });
            if !asks {
                continue;
            }
            if let Some((code, reason)) = verdict(&entry.route, &entry.origin, table) {
                entry.control.close(code, reason);
                match code {
                    CLOSE_POLICY => revoked.policy += 1,
                    _ => revoked.gone += 1,
                }
            }
        }
        revoked
    }

    /// Tells every connection registered from now on to close with 1012 at once, and returns
    /// the controls of those already registered, in random order, for the caller to tell.
    pub fn start_draining(&self) -> Vec<Arc<ConnControl>> {
        self.draining.store(true, Ordering::Release);
        let mut live: Vec<_> = self.lock().values().map(|e| e.control.clone()).collect();
        fastrand::shuffle(&mut live);
        live
    }

    /// How many connections are relaying (handshakes waiting for their upstream are not
    /// counted: they are counted as handshakes).
    pub fn len(&self) -> usize {
        self.relaying.load(Ordering::Acquire)
    }

    /// Whether no connection is registered, relaying or waiting for its upstream.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Resolves once no connection is registered.
    pub async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.is_empty() {
                return;
            }
            emptied.await;
        }
    }
}

/// How often a spread drain wakes to tell the connections whose turn has come: one timer for
/// all of them, not one per connection.
const SPREAD_TICK: Duration = Duration::from_millis(10);

/// Tells each of `live` to close with 1012, in their order, evenly over `window` (all at
/// once if it is zero): the first at once, the last just before `window` ends.
pub async fn close_spread(live: Vec<Arc<ConnControl>>, window: Duration) {
    let started = tokio::time::Instant::now();
    let mut told = 0;
    while told < live.len() {
        let due = if window.is_zero() {
            live.len()
        } else {
            let share = started.elapsed().as_secs_f64() / window.as_secs_f64();
            ((share * live.len() as f64) as usize + 1).min(live.len())
        };
        for control in &live[told..due] {
            control.close(CLOSE_RESTART, "service restart");
        }
        told = due;
        if told < live.len() {
            tokio::time::sleep(SPREAD_TICK).await;
        }
    }
}

/// What `table` makes of a connection `route` admitted with `origin`: nothing while the
/// route is there and allows the origin, else the close code and reason.
fn verdict(
    route: &Route,
    origin: &RequestOrigin,
    table: &RouteTable,
) -> Option<(u16, &'static str)> {
    match table.get(&route.key) {
        None => Some((CLOSE_GOING_AWAY, "route removed")),
        Some(now) if !now.origins.allows(origin) => Some((CLOSE_POLICY, "origin not allowed")),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests;
