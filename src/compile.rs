//! The compile step: a pure function from the declared routes (and the backends they may
//! reference) to a [`RouteTable`] and one [`Verdict`] per route. Standalone mode, the
//! controller and `wsgate check` all call [`compile`], so a route's verdict is the same
//! everywhere. No I/O, no clocks, no Kubernetes client.
//!
//! This file holds the entry point and conflict resolution; the parts live beside it:
//! `verdict` (condition types, reasons, warnings, [`Verdict`]), `checks` (each route's
//! fields on their own), `backends` (Services, EndpointSlices and Secrets, resolved),
//! `upstream_url` ([`parse_url`]) and `ownership` (which namespace owns a hostname).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

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

use backends::{Read, still_hold};
use checks::check_route;

/// The result of [`compile`].
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// The accepted routes, ready for lookup.
    pub table: RouteTable,
    /// One verdict per input route, in input order. A route whose verdict did not change
    /// since the last compile of the same [`Compiler`] has the same `Arc` as then.
    pub verdicts: Vec<Arc<Verdict>>,
}

/// Compiles routes into a route table and a verdict for each route, once (`wsgate check`,
/// tests); a source that compiles again on every change keeps a [`Compiler`].
pub fn compile(routes: &[WebSocketRoute], backends: &Backends) -> Compiled {
    let shared: Vec<Arc<WebSocketRoute>> = routes.iter().cloned().map(Arc::new).collect();
    Compiler::default().compile(&shared, backends)
}

/// Compiles routes again and again, checking again only what changed: a route whose
/// declaration and whatever it read from the backends are as at the last compile keeps its
/// checked form (and its compiled [`Route`], so the data plane keeps the same `Arc`), and
/// its verdict when its conflicts are as then. What the other steps decide across routes
/// (conflicts, hostname ownership, certificates) is decided afresh every time. The result
/// is always what a fresh compile of the same input gives.
///
/// One compiler serves one source: the hints in its messages come from the backends of
/// the compile that checked the route (standalone or cluster), which a source never mixes.
#[derive(Default)]
pub struct Compiler {
    /// The last compile's routes by namespace, then name (looked up without copying either).
    known: foldhash::HashMap<String, foldhash::HashMap<String, Known>>,
    policies: checks::Policies,
    /// Counts compiles: a route not seen in the latest is forgotten.
    compiles: u64,
}

/// A route as the last compile saw it.
struct Known {
    /// The declaration it was checked from: the same `Arc` (a watch store's object that did
    /// not change) or an equal one means the check still holds.
    declared: Arc<WebSocketRoute>,
    checked: Arc<Checked>,
    seen: u64,
}

/// One route checked on its own, and the verdict it was last given.
struct Checked {
    check: Check,
    /// The last verdict with what conflict resolution decided for it.
    last: Mutex<Option<(Outcome, Arc<Verdict>)>>,
}

impl Compiler {
    /// Compiles `routes` (as a watch store holds them, shared) against `backends`.
    ///
    /// Invalid routes are left out of the table and never affect the others. Two valid
    /// routes that claim the same hostname and path (same type and value) conflict: the one
    /// with the older `creationTimestamp` wins, then namespace/name order; the loser is not
    /// served at all. A route on a hostname another namespace owns, without its grant,
    /// conflicts too (the `ownership` module).
    pub fn compile(&mut self, routes: &[Arc<WebSocketRoute>], backends: &Backends) -> Compiled {
        self.compiles += 1;
        let mut declared_twice = false;
        let checked: Vec<Arc<Checked>> = routes
            .iter()
            .map(|route| {
                let (checked, again) = self.checked(route, backends);
                declared_twice |= again;
                checked
            })
            .collect();
        self.forget_gone();
        self.policies.prune();
        let (table, outcomes) = resolve(&checked, declared_twice);
        let verdicts = checked
            .iter()
            .zip(outcomes)
            .map(|(checked, outcome)| checked.verdict(outcome))
            .collect();
        Compiled { table, verdicts }
    }

    /// The declaration of route `namespace/name` the last compile had, if it had one.
    pub fn compiled(&self, namespace: &str, name: &str) -> Option<&WebSocketRoute> {
        let known = self.known.get(namespace)?.get(name)?;
        Some(&known.declared)
    }

    /// The route checked, by the last compile if it still holds, and whether this compile
    /// has seen a route of the same namespace and name before.
    fn checked(
        &mut self,
        route: &Arc<WebSocketRoute>,
        backends: &Backends,
    ) -> (Arc<Checked>, bool) {
        let (namespace, name) = borrowed_key(route);
        let compiles = self.compiles;
        let mut again = false;
        if let Some(known) = self.known.get_mut(namespace).and_then(|n| n.get_mut(name)) {
            again = known.seen == compiles;
            if (Arc::ptr_eq(&known.declared, route) || same_declaration(&known.declared, route))
                && still_hold(&known.checked.check.reads, backends, namespace)
            {
                // The newest object is kept, so an older copy of an equal one is not.
                known.declared = route.clone();
                known.seen = compiles;
                return (known.checked.clone(), again);
            }
        }
        let checked = Arc::new(Checked {
            check: check_route(route, backends, &mut self.policies),
            last: Mutex::new(None),
        });
        self.known.entry(namespace.to_owned()).or_default().insert(
            name.to_owned(),
            Known {
                declared: route.clone(),
                checked: checked.clone(),
                seen: compiles,
            },
        );
        (checked, again)
    }

    /// Forgets the routes the latest compile did not see.
    fn forget_gone(&mut self) {
        let latest = self.compiles;
        self.known.retain(|_, names| {
            names.retain(|_, known| known.seen == latest);
            !names.is_empty()
        });
    }
}

/// Whether two declarations of a route check the same: what `check_route` reads of them.
fn same_declaration(a: &WebSocketRoute, b: &WebSocketRoute) -> bool {
    a.metadata.generation == b.metadata.generation
        && a.metadata.creation_timestamp == b.metadata.creation_timestamp
        && borrowed_key(a) == borrowed_key(b)
        && a.spec == b.spec
}

/// Conflict resolution in age order (so that the verdict does not depend on input order),
/// and the table of the routes that are served. Returns the table and, per route, what was
/// decided for it. Reads only the checks (touching the declarations again would cost a
/// cache miss per route at 100,000 routes); `declared_twice`: some route is in the input
/// more than once.
fn resolve(checked: &[Arc<Checked>], declared_twice: bool) -> (RouteTable, Vec<Outcome>) {
    let checks: Vec<&Check> = checked.iter().map(|c| &c.check).collect();
    let mut order: Vec<usize> = (0..checks.len()).collect();
    // Stable, so that of two declarations of one route the first in the input counts as older.
    order.sort_by(|&a, &b| age_order(checks[a], checks[b]));
    let mut outcomes: Vec<Outcome> = (0..checks.len()).map(|_| Outcome::default()).collect();
    let mut seen_keys: foldhash::HashSet<&RouteKey> = foldhash::HashSet::default();
    let mut owners = ownership::Owners::with_capacity(checks.len());
    for c in &checks {
        if let Some(valid) = &c.valid
            && !c.grants.is_empty()
        {
            let granted = c.grants.iter().map(String::as_str);
            owners.grant(&c.key.namespace, &valid.hostnames, granted);
        }
    }
    // The table is filled in age order as routes win, so it also answers which older route
    // serves a hostname and path already.
    let mut table = RouteTable::with_capacity(checks.len());
    // Which route's Secret serves each hostname on the TLS listener: the oldest's.
    let mut certificate_of: HashMap<&str, (&RouteKey, &str)> = HashMap::new();
    for i in order {
        let c = checks[i];
        if declared_twice && !seen_keys.insert(&c.key) {
            outcomes[i].conflict = Some(format!(
                "route {} is declared more than once; the oldest declaration is served",
                c.key
            ));
            continue;
        }
        let Some(valid) = &c.valid else {
            continue;
        };
        if let Some(trespass) = owners.trespass(&c.key.namespace, &valid.hostnames) {
            outcomes[i].conflict = Some(trespass.to_string());
            continue;
        }
        let clash = valid
            .hostnames
            .iter()
            .find_map(|h| table.serving(h, &valid.path).map(|winner| (h, &winner.key)));
        if let Some((host, winner)) = clash {
            outcomes[i].conflict = Some(format!(
                "hostname {host} with path {} is already served by route {winner}, which is older; change the hostname or path, or delete one of them",
                valid.path
            ));
            continue;
        }
        owners.claim(&c.key, &valid.hostnames);
        outcomes[i].programmed = true;
        if let Some((key, secret)) = &valid.certificate {
            for h in &valid.hostnames {
                match certificate_of.get(&**h) {
                    Some((owner, theirs)) if theirs != secret => {
                        outcomes[i].shadowed.push(Warning {
                            reason: warning::CERTIFICATE_SHADOWED,
                            message: format!(
                                "hostname {h} is served with the certificate of route {owner} (Secret {theirs}), which is older; this route's Secret {secret} is not used for it"
                            ),
                        })
                    }
                    Some(_) => {}
                    None => {
                        certificate_of.insert(h, (&c.key, secret));
                    }
                }
            }
            table.insert_certificate(&valid.hostnames, key);
        }
        table.insert(&valid.hostnames, &valid.path, valid.route.clone());
    }
    (table, outcomes)
}

/// Older first; a route without a creation timestamp counts as newest; then by namespace
/// and name.
fn age_order(a: &Check, b: &Check) -> std::cmp::Ordering {
    let by_time = match (a.created, b.created) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    };
    by_time.then_with(|| a.key.cmp(&b.key))
}

/// `key_of` without allocating: every compile looks each route up by it.
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

/// A route's fields checked on their own (the `checks` module): what holds until the route
/// or what it read from the backends changes.
struct Check {
    key: RouteKey,
    generation: Option<i64>,
    /// `creationTimestamp`: the older route wins a conflict.
    created: Option<Timestamp>,
    /// The namespaces `hostnameGrants` lets serve the route's hostnames.
    grants: Vec<String>,
    /// Set when the spec is valid.
    valid: Option<ValidRoute>,
    problems: Vec<String>,
    refs: Result<(), (&'static str, String)>,
    warnings: Vec<Warning>,
    /// `route serves HOSTNAMES PATH`, when the spec is valid: the Accepted message.
    serves: String,
    /// The backend lookups the check made, with what they found.
    reads: Vec<Read>,
}

/// What conflict resolution decided for one route.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    conflict: Option<String>,
    programmed: bool,
    /// The hostnames whose certificate an older route's Secret serves.
    shadowed: Vec<Warning>,
}

struct ValidRoute {
    /// Shared with the route table, which keys its hostnames by them.
    hostnames: Vec<Arc<str>>,
    path: PathRule,
    route: Arc<Route>,
    /// The route's TLS certificate and its Secret (`namespace/name`), when it has `tls` and
    /// its Secret is usable.
    certificate: Option<(Arc<CertifiedKey>, String)>,
}

impl Checked {
    /// The verdict for `outcome`: the last one when it was given for the same.
    fn verdict(&self, outcome: Outcome) -> Arc<Verdict> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match &*last {
            Some((then, verdict)) if *then == outcome => verdict.clone(),
            _ => {
                let verdict = Arc::new(self.check.verdict(&outcome));
                *last = Some((outcome, verdict.clone()));
                verdict
            }
        }
    }
}

impl Check {
    fn verdict(&self, outcome: &Outcome) -> Verdict {
        let warnings: Vec<Warning> = self
            .warnings
            .iter()
            .chain(&outcome.shadowed)
            .cloned()
            .collect();
        let accepted = match (&outcome.conflict, self.problems.is_empty()) {
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
                let mut msg = self.serves.clone();
                for w in &warnings {
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
        let programmed = if outcome.programmed {
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
            key: self.key.clone(),
            generation: self.generation,
            conditions: vec![accepted, resolved, programmed, ready],
            warnings,
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
