//! The live relayed connections, so that a new snapshot can revoke the ones it no longer
//! admits (1008 / 1001) and shutdown can close them all (1012). Knows routes and origins;
//! does not touch sockets: it only signals each connection's [`ConnControl`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
    draining: AtomicBool,
    emptied: Notify,
}

/// Removes its connection from the registry when dropped.
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
    control: Arc<ConnControl>,
}

impl Registration {
    /// The control handle the relay watches.
    pub fn control(&self) -> Arc<ConnControl> {
        self.control.clone()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
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

    /// Adds a connection admitted by `route` with `origin`. While draining, the new
    /// connection is told to close with 1012 at once.
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
        }
    }

    /// Closes the connections `table` no longer admits, for routes that ask for it
    /// (`revokeOnPolicyChange`): 1001 when the route is gone (deleted, invalid or
    /// conflicted), 1008 when the route no longer allows the connection's origin.
    pub fn revoke(&self, table: &RouteTable) -> Revoked {
        let mut revoked = Revoked::default();
        for entry in self.lock().values() {
            if !entry.route.revoke_on_policy_change {
                continue;
            }
            match table.get(&entry.route.key) {
                None => {
                    entry.control.close(CLOSE_GOING_AWAY, "route removed");
                    revoked.gone += 1;
                }
                Some(route) if !route.origins.allows(&entry.origin) => {
                    entry.control.close(CLOSE_POLICY, "origin not allowed");
                    revoked.policy += 1;
                }
                Some(_) => {}
            }
        }
        revoked
    }

    /// Tells every connection, and every one registered from now on, to close with 1012.
    pub fn close_all(&self) -> usize {
        self.draining.store(true, Ordering::Release);
        let entries = self.lock();
        for entry in entries.values() {
            entry.control.close(CLOSE_RESTART, "service restart");
        }
        entries.len()
    }

    /// How many connections are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once no connection is live.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{OriginRejection, PathRule, RouteKey, Upstream};

    fn route(name: &str, allow: &[&str], revoke: bool) -> Route {
        Route {
            key: RouteKey {
                namespace: "ns".into(),
                name: name.into(),
            },
            label: format!("ns/{name}").into(),
            origins: crate::policy::OriginPolicy::new(allow, false, false).expect("policy"),
            rejection: OriginRejection::Forbidden,
            upstream: Upstream {
                targets: vec![],
                path: None,
                tls: None,
            },
            subprotocols: None,
            revoke_on_policy_change: revoke,
            limits: Default::default(),
            admission: Default::default(),
            tls_only: false,
            auth: None,
        }
    }

    fn origin(value: &str) -> RequestOrigin {
        RequestOrigin::from_header_values([value.as_bytes()])
    }

    fn table(routes: Vec<Route>) -> RouteTable {
        let mut t = RouteTable::default();
        for (i, r) in routes.into_iter().enumerate() {
            t.insert(&[format!("h{i}.example.com")], &PathRule::prefix("/"), r);
        }
        t
    }

    #[test]
    fn revocation_closes_denied_origins_with_1008_and_removed_routes_with_1001() {
        let registry = Arc::new(Registry::default());
        let old = Arc::new(route("chat", &["https://a.com", "https://b.com"], true));
        let a = registry.register(old.clone(), origin("https://a.com"));
        let b = registry.register(old.clone(), origin("https://b.com"));
        let gone = registry.register(
            Arc::new(route("old", &["https://a.com"], true)),
            origin("https://a.com"),
        );

        let revoked = registry.revoke(&table(vec![route("chat", &["https://b.com"], true)]));
        assert_eq!(revoked, Revoked { policy: 1, gone: 1 });
        assert_eq!(a.control().requested(), Some(CLOSE_POLICY));
        assert_eq!(b.control().requested(), None);
        assert_eq!(gone.control().requested(), Some(CLOSE_GOING_AWAY));
    }

    #[test]
    fn routes_without_revocation_keep_their_connections() {
        let registry = Arc::new(Registry::default());
        let kept = registry.register(
            Arc::new(route("chat", &["https://a.com"], false)),
            origin("https://a.com"),
        );
        assert_eq!(registry.revoke(&RouteTable::default()), Revoked::default());
        assert_eq!(kept.control().requested(), None);
    }

    #[tokio::test]
    async fn draining_closes_live_and_late_connections_with_1012_and_waits_for_them() {
        let registry = Arc::new(Registry::default());
        let live = registry.register(Arc::new(route("chat", &[], true)), RequestOrigin::Missing);
        assert_eq!(registry.close_all(), 1);
        assert_eq!(live.control().requested(), Some(CLOSE_RESTART));
        let late = registry.register(Arc::new(route("chat", &[], true)), RequestOrigin::Missing);
        assert_eq!(late.control().requested(), Some(CLOSE_RESTART));
        let waiter = tokio::spawn({
            let registry = registry.clone();
            async move { registry.wait_empty().await }
        });
        drop(live);
        drop(late);
        waiter.await.expect("emptied");
        assert!(registry.is_empty());
    }
}
