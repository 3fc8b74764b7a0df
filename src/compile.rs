//! The compile step: a pure function from the declared routes (and the backends they may
//! reference) to a [`RouteTable`] and one [`Verdict`] per route. Standalone mode, the
//! controller and `wsgate check` all call [`compile`], so a route's verdict is the same
//! everywhere. No I/O, no clocks, no Kubernetes client.
//!
//! This file holds the entry point and conflict resolution; the parts live beside it:
//! `verdict` (condition types, reasons, warnings, [`Verdict`]), `checks` (each route's
//! fields on their own), `backends` (Services, EndpointSlices and Secrets, resolved),
//! `upstream_url` ([`parse_url`]) and `ownership` (which namespace owns a hostname).

use std::borrow::{Borrow, Cow};
use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use rustls::sign::CertifiedKey;

use crate::api::WebSocketRoute;
use crate::route::{PathRule, Route, RouteKey, RouteTable};

mod backends;
mod checks;
mod ownership;
mod upstream_url;
mod verdict;

pub use backends::{BackendProblem, Backends, SecretData};
pub use upstream_url::{InvalidUrl, parse_url};
pub use verdict::{ConditionState, Verdict, Warning, condition, reason, warning};

use checks::check_route;

/// The result of [`compile`].
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// The accepted routes, ready for lookup.
    pub table: RouteTable,
    /// One verdict per input route, in input order.
    pub verdicts: Vec<Verdict>,
}

/// Compiles routes into a route table and a verdict for each route.
///
/// Invalid routes are left out of the table and never affect the others. Two valid routes
/// that claim the same hostname and path (same type and value) conflict: the one with the
/// older `creationTimestamp` wins, then namespace/name order; the loser is not served at all.
/// A route on a hostname another namespace owns, without its grant, conflicts too
/// (the `ownership` module).
///
/// `routes` may be owned or shared (`Arc`, as a watch store holds them), so a caller need
/// not copy every route to compile.
pub fn compile<R: Borrow<WebSocketRoute>>(routes: &[R], backends: &Backends) -> Compiled {
    let mut policies = checks::Policies::default();
    let mut checked: Vec<Checked> = routes
        .iter()
        .map(|r| check_route(r.borrow(), backends, &mut policies))
        .collect();

    // Conflict resolution in age order, so the verdict does not depend on input order.
    let mut order: Vec<usize> = (0..checked.len()).collect();
    order.sort_by(|&a, &b| age_order(routes[a].borrow(), routes[b].borrow()));
    // Decided on borrowed keys first (nothing is copied per hostname), applied after.
    let mut conflicts: Vec<Option<String>> = vec![None; checked.len()];
    let mut served = vec![false; checked.len()];
    {
        let mut claimed: foldhash::HashMap<(&str, &PathRule), &RouteKey> =
            foldhash::HashMap::with_capacity_and_hasher(checked.len(), Default::default());
        let mut seen_keys: foldhash::HashSet<&RouteKey> =
            foldhash::HashSet::with_capacity_and_hasher(checked.len(), Default::default());
        let mut owners = ownership::Owners::default();
        for (c, route) in checked.iter().zip(routes.iter().map(Borrow::borrow)) {
            if let Some(valid) = &c.valid {
                let granted = route.spec.hostname_grants.iter();
                owners.grant(
                    &c.key.namespace,
                    &valid.hostnames,
                    granted.map(|g| g.namespace.as_str()),
                );
            }
        }
        for &i in &order {
            let c = &checked[i];
            if !seen_keys.insert(&c.key) {
                conflicts[i] = Some(format!(
                    "route {} is declared more than once; the oldest declaration is served",
                    c.key
                ));
                continue;
            }
            let Some(valid) = &c.valid else {
                continue;
            };
            if let Some(trespass) = owners.trespass(&c.key.namespace, &valid.hostnames) {
                conflicts[i] = Some(trespass.to_string());
                continue;
            }
            let clash = valid.hostnames.iter().find_map(|h| {
                claimed
                    .get(&(h.as_str(), &valid.path))
                    .map(|winner| (h, winner))
            });
            if let Some((host, winner)) = clash {
                conflicts[i] = Some(format!(
                    "hostname {host} with path {} is already served by route {winner}, which is older; change the hostname or path, or delete one of them",
                    valid.path
                ));
                continue;
            }
            for h in &valid.hostnames {
                claimed.insert((h, &valid.path), &c.key);
            }
            owners.claim(&c.key, &valid.hostnames);
            served[i] = true;
        }
    }
    let mut table = RouteTable::with_capacity(checked.len());
    // Which route's Secret serves each hostname on the TLS listener: the oldest's.
    let mut certificate_of: HashMap<String, (RouteKey, String)> = HashMap::new();
    for i in order {
        let c = &mut checked[i];
        c.conflict = conflicts[i].take();
        if served[i]
            && let Some(valid) = c.valid.take()
        {
            c.programmed = true;
            if let Some((key, secret)) = &valid.certificate {
                for h in &valid.hostnames {
                    match certificate_of.get(h) {
                        Some((owner, theirs)) if theirs != secret => c.warnings.push(Warning {
                            reason: warning::CERTIFICATE_SHADOWED,
                            message: format!(
                                "hostname {h} is served with the certificate of route {owner} (Secret {theirs}), which is older; this route's Secret {secret} is not used for it"
                            ),
                        }),
                        Some(_) => {}
                        None => {
                            certificate_of.insert(h.clone(), (c.key.clone(), secret.clone()));
                        }
                    }
                }
                table.insert_certificate(&valid.hostnames, key);
            }
            table.insert(&valid.hostnames, &valid.path, valid.route);
        }
    }

    let verdicts = checked.into_iter().map(Checked::into_verdict).collect();
    Compiled { table, verdicts }
}

/// Older first; a route without a creation timestamp counts as newest.
fn age_order(a: &WebSocketRoute, b: &WebSocketRoute) -> std::cmp::Ordering {
    let ts = |r: &WebSocketRoute| -> Option<Timestamp> {
        r.metadata.creation_timestamp.as_ref().map(|t| t.0)
    };
    let (ta, tb) = (ts(a), ts(b));
    let by_time = match (ta, tb) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    };
    by_time.then_with(|| borrowed_key(a).cmp(&borrowed_key(b)))
}

/// `key_of` without allocating, for comparisons (they run n·log n times per compile).
fn borrowed_key(route: &WebSocketRoute) -> (&str, &str) {
    (
        route.metadata.namespace.as_deref().unwrap_or("default"),
        route.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// The key of a route; a route without a namespace is in `default`, as kubectl would put it.
pub fn key_of(route: &WebSocketRoute) -> RouteKey {
    RouteKey {
        namespace: route
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        name: route.metadata.name.clone().unwrap_or_default(),
    }
}

/// A route after validation, before conflict resolution.
struct Checked {
    key: RouteKey,
    generation: Option<i64>,
    /// Set when the spec is valid.
    valid: Option<ValidRoute>,
    problems: Vec<String>,
    refs: Result<(), (&'static str, String)>,
    warnings: Vec<Warning>,
    conflict: Option<String>,
    programmed: bool,
    /// `route serves HOSTNAMES PATH`, when the spec is valid: the Accepted message.
    serves: String,
}

struct ValidRoute {
    hostnames: Vec<String>,
    path: PathRule,
    route: Route,
    /// The route's TLS certificate and its Secret (`namespace/name`), when it has `tls` and
    /// its Secret is usable.
    certificate: Option<(Arc<CertifiedKey>, String)>,
}

impl Checked {
    fn into_verdict(self) -> Verdict {
        let accepted = match (&self.conflict, self.problems.is_empty()) {
            (_, false) => cond(
                condition::ACCEPTED,
                false,
                reason::INVALID,
                self.problems.join("; ").into(),
            ),
            (Some(msg), true) => cond(
                condition::ACCEPTED,
                false,
                reason::CONFLICTED,
                msg.clone().into(),
            ),
            (None, true) => {
                let mut msg = self.serves;
                for w in &self.warnings {
                    msg.push_str("; warning: ");
                    msg.push_str(&w.message);
                }
                cond(condition::ACCEPTED, true, reason::ACCEPTED, msg.into())
            }
        };
        let resolved = match &self.refs {
            Ok(()) => cond(
                condition::RESOLVED_REFS,
                true,
                reason::RESOLVED_REFS,
                "upstream resolved".into(),
            ),
            Err((r, msg)) => cond(condition::RESOLVED_REFS, false, r, msg.clone().into()),
        };
        let programmed = if self.programmed {
            cond(
                condition::PROGRAMMED,
                true,
                reason::PROGRAMMED,
                "route is in the active snapshot".into(),
            )
        } else {
            cond(
                condition::PROGRAMMED,
                false,
                reason::NOT_PROGRAMMED,
                "route is not accepted, so it is not served".into(),
            )
        };
        let ready = match [&accepted, &resolved, &programmed]
            .into_iter()
            .find(|c| !c.status)
        {
            Some(failing) => cond(
                condition::READY,
                false,
                failing.reason,
                failing.message.clone(),
            ),
            None => cond(
                condition::READY,
                true,
                reason::READY,
                "route is accepted, resolved and programmed".into(),
            ),
        };
        Verdict {
            key: self.key,
            generation: self.generation,
            conditions: vec![accepted, resolved, programmed, ready],
            warnings: self.warnings,
        }
    }
}

fn cond(
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: Cow<'static, str>,
) -> ConditionState {
    ConditionState {
        type_,
        status,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests;
