//! Reports what the data plane serves back on the routes, while this replica holds the
//! Lease: status conditions by server-side apply on the status subresource (only when they
//! change), and Warning Events when a route is refused (`Invalid`, `Conflicted`) or admits
//! every origin (`*`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource};
use tokio::sync::watch;

use crate::api::WebSocketRoute;
use crate::compile::{Verdict, condition, reason};
use crate::metrics::{Metrics, WriteLabels};
use crate::route::RouteKey;
use crate::snapshot::Published;
use crate::source::kube::Stores;
use crate::status::{Columns, columns};

/// The field manager that owns the status wsgate writes.
pub const FIELD_MANAGER: &str = "wsgate";
/// How long one status write or Event may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// When a write failed, how long before the next attempt (sooner if something changes).
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Writes in flight at once, so a thousand routes do not queue behind one another.
const CONCURRENT_WRITES: usize = 8;

/// Writes status and Events for the routes of the active snapshot.
pub struct StatusReporter {
    client: Client,
    routes: Stores<WebSocketRoute>,
    published: Arc<Published>,
    recorder: Recorder,
    /// What this replica last wrote per route, so that the next report compares against
    /// it while the watch has not shown that write yet.
    written: HashMap<RouteKey, Written>,
}

/// A status this replica wrote (or found already shown).
#[derive(Debug, Clone)]
struct Written {
    /// The object's uid: a route may be deleted and recreated under its name.
    uid: Option<String>,
    /// The object's resourceVersion in the watch store when it was written: while the store
    /// still has it, the store has not seen the write.
    seen: Option<String>,
    shown: Shown,
    /// The verdict it was decided on: while neither the verdict nor the object has changed
    /// since, there is nothing to decide again. The compiler hands out the same `Arc` for a
    /// verdict that did not change, so that is told without comparing.
    verdict: Arc<Verdict>,
    /// The version of the last snapshot that had the route.
    present: u64,
}

/// What the route shows now: what this replica wrote, while the watch store is older than
/// that write; else what the store has (the write, or someone else's since).
fn current<'a>(
    ours: Option<&'a Written>,
    resource_version: &Option<String>,
    stored: Option<&'a Shown>,
) -> Option<&'a Shown> {
    match ours {
        Some(w) if w.seen == *resource_version => Some(&w.shown),
        _ => stored,
    }
}

/// A route's status as written.
#[derive(Debug, Clone, PartialEq)]
struct Shown {
    generation: Option<i64>,
    conditions: Vec<Condition>,
    columns: Columns,
}

/// One route's pending write.
struct Write {
    /// The route's resourceVersion the write was decided on.
    seen: Option<String>,
    /// The verdict it was decided on.
    verdict: Arc<Verdict>,
    route: Arc<WebSocketRoute>,
    key: RouteKey,
    shown: Shown,
    /// False when the object already shows `shown` and only Events are due.
    patch: bool,
    /// The snapshot the verdict comes from.
    version: u64,
    events: Vec<Event>,
}

impl StatusReporter {
    /// A reporter reading routes from `routes` (the watch's store) and verdicts from the
    /// active snapshot; Events name `identity` as the reporting instance.
    pub fn new(
        client: Client,
        routes: Stores<WebSocketRoute>,
        published: Arc<Published>,
        identity: &str,
    ) -> StatusReporter {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_owned(),
                instance: Some(identity.to_owned()),
            },
        );
        StatusReporter {
            client,
            routes,
            published,
            recorder,
            written: HashMap::new(),
        }
    }

    /// Reports after every published snapshot and whenever leadership is gained; retries
    /// failed writes. Runs until either channel closes.
    pub async fn run(
        mut self,
        mut published: watch::Receiver<u64>,
        mut leader: watch::Receiver<bool>,
    ) {
        loop {
            let leading = *leader.borrow_and_update();
            published.borrow_and_update();
            let failed = if leading {
                // Leadership can end mid-write (its claim about to run out): stop writing at once.
                tokio::select! {
                    ok = self.report() => !ok,
                    _ = leader.wait_for(|l| !*l) => false,
                }
            } else {
                // Another replica writes meanwhile; what this one wrote may be stale.
                self.written.clear();
                false
            };
            tokio::select! {
                r = published.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                () = tokio::time::sleep(RETRY_AFTER), if failed => {}
            }
        }
    }

    /// Writes every route whose shown status or Events are behind the active snapshot.
    /// Returns whether all writes succeeded.
    async fn report(&mut self) -> bool {
        let Some(snapshot) = self.published.current() else {
            return true;
        };
        // Kubernetes keeps times to the second; a finer `now` would never compare equal.
        let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_default();
        let mut writes = Vec::new();
        for verdict in &snapshot.verdicts {
            // Marked as still declared; what no verdict marks is forgotten below.
            let ours = self.written.get_mut(&verdict.key).map(|w| {
                w.present = snapshot.version;
                &*w
            });
            let reference = ObjectRef::new(&verdict.key.name).within(&verdict.key.namespace);
            let Some(route) = self.routes.get(&reference) else {
                continue;
            };
            // Edited since this snapshot was compiled: the next snapshot reports it.
            if route.metadata.generation != verdict.generation {
                continue;
            }
            // Settled for this verdict and this version of the object: a snapshot that changed
            // other routes costs this one no more than the lookup.
            let ours = ours.filter(|w| w.uid == route.metadata.uid);
            if ours.is_some_and(|w| {
                w.seen == route.metadata.resource_version
                    && (Arc::ptr_eq(&w.verdict, verdict) || w.verdict == *verdict)
            }) {
                continue;
            }
            let stored = route.status.as_ref().map(|s| Shown {
                generation: s.observed_generation,
                conditions: s.conditions.clone(),
                columns: Columns {
                    hostnames: s.hostnames.clone().unwrap_or_default(),
                    origins: s.origins.clone().unwrap_or_default(),
                    upstream: s.upstream.clone().unwrap_or_default(),
                },
            });
            let uid = route.metadata.uid.clone();
            let seen = route.metadata.resource_version.clone();
            let previous = ours.map(|w| &w.shown).or(stored.as_ref());
            let shown = Shown {
                generation: verdict.generation,
                conditions: crate::status::conditions(
                    verdict,
                    previous
                        .map(|p| p.conditions.as_slice())
                        .unwrap_or_default(),
                    now,
                ),
                columns: columns(&route.spec),
            };
            let events = events_for(verdict, previous);
            // Compared with what the object shows now, not with the watch store alone: a
            // store that has not caught up with the last write would call for it again with
            // every snapshot published meanwhile.
            let patch = current(ours, &seen, stored.as_ref()) != Some(&shown);
            if !patch && events.is_empty() {
                let written = Written {
                    uid,
                    seen,
                    shown,
                    verdict: verdict.clone(),
                    present: snapshot.version,
                };
                self.written.insert(verdict.key.clone(), written);
                continue;
            }
            writes.push(Write {
                seen,
                verdict: verdict.clone(),
                route,
                key: verdict.key.clone(),
                shown,
                patch,
                version: snapshot.version,
                events,
            });
        }

        let mut all_ok = true;
        for (w, ok) in self.send(writes).await {
            if ok {
                let written = Written {
                    uid: w.route.metadata.uid.clone(),
                    seen: w.seen,
                    shown: w.shown,
                    verdict: w.verdict,
                    present: snapshot.version,
                };
                self.written.insert(w.key, written);
            } else {
                all_ok = false;
            }
        }
        self.written.retain(|_, w| w.present == snapshot.version);
        all_ok
    }

    /// Writes every route of the active snapshot as no longer served: `Programmed` and
    /// `Ready` False with reason `GatewayStopped` and `message`, for the last replica to
    /// leave. Returns whether every write succeeded.
    pub async fn report_stopped(&self, message: &str) -> bool {
        let Some(snapshot) = self.published.current() else {
            return true;
        };
        let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_default();
        let writes = snapshot
            .verdicts
            .iter()
            .filter_map(|verdict| {
                let reference = ObjectRef::new(&verdict.key.name).within(&verdict.key.namespace);
                let route = self.routes.get(&reference)?;
                let previous = route
                    .status
                    .as_ref()
                    .map(|s| s.conditions.as_slice())
                    .unwrap_or_default();
                let stopped = crate::status::stopped(verdict, message);
                let shown = Shown {
                    generation: verdict.generation,
                    conditions: crate::status::conditions(&stopped, previous, now),
                    columns: columns(&route.spec),
                };
                Some(Write {
                    seen: route.metadata.resource_version.clone(),
                    verdict: Arc::new(stopped),
                    route,
                    key: verdict.key.clone(),
                    shown,
                    patch: true,
                    version: snapshot.version,
                    events: Vec::new(),
                })
            })
            .collect();
        self.send(writes).await.iter().all(|(_, ok)| *ok)
    }

    /// Sends `writes`, some at once; returns each with whether it succeeded.
    async fn send(&self, writes: Vec<Write>) -> Vec<(Write, bool)> {
        let metrics = self.published.metrics();
        futures_util::stream::iter(writes)
            .map(|w| write(&self.client, &self.recorder, metrics, w))
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await
    }
}

/// Patches one route's status and publishes its Events; returns the write and whether all
/// of it worked.
async fn write(client: &Client, recorder: &Recorder, metrics: &Metrics, w: Write) -> (Write, bool) {
    let mut ok = true;
    if w.patch {
        let patch = serde_json::json!({
            "apiVersion": WebSocketRoute::api_version(&()),
            "kind": WebSocketRoute::kind(&()),
            "status": {
                "observedGeneration": w.shown.generation,
                "conditions": w.shown.conditions,
                "hostnames": w.shown.columns.hostnames,
                "origins": w.shown.columns.origins,
                "upstream": w.shown.columns.upstream,
                "snapshotVersion": w.version,
            },
        });
        let api = Api::<WebSocketRoute>::namespaced(client.clone(), &w.key.namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let result = tokio::time::timeout(
            WRITE_TIMEOUT,
            api.patch_status(&w.key.name, &params, &Patch::Apply(&patch)),
        )
        .await;
        let error = match result {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(crate::apierror::brief(&e)),
            Err(_) => Some(format!("no answer within {}s", WRITE_TIMEOUT.as_secs())),
        };
        metrics
            .status_writes
            .get_or_create(&WriteLabels {
                result: if error.is_none() { "ok" } else { "error" },
            })
            .inc();
        if let Some(error) = error {
            tracing::warn!(route = %w.key, %error, "writing status failed; will retry");
            ok = false;
        }
    }
    // Events only once the status they describe is written, so a retry does not repeat them.
    if ok {
        let reference = w.route.object_ref(&());
        for event in &w.events {
            match tokio::time::timeout(WRITE_TIMEOUT, recorder.publish(event, &reference)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let error = crate::apierror::brief(&e);
                    tracing::warn!(route = %w.key, %error, "publishing an Event failed")
                }
                Err(_) => tracing::warn!(route = %w.key, "publishing an Event timed out"),
            }
        }
    }
    (w, ok)
}

/// The Events a verdict calls for, given what the route showed before: a Warning when it
/// becomes refused or is refused for a new reason, and one per warning when its spec is new.
fn events_for(verdict: &Verdict, previous: Option<&Shown>) -> Vec<Event> {
    let mut events = Vec::new();
    if let Some(accepted) = verdict.condition(condition::ACCEPTED)
        && !accepted.status
    {
        let before =
            previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == condition::ACCEPTED));
        let unchanged = before.is_some_and(|b| {
            b.status == "False" && b.reason == accepted.reason && b.message == accepted.message
        });
        if !unchanged {
            events.push(Event {
                type_: EventType::Warning,
                reason: accepted.reason.to_owned(),
                note: Some(truncate(&accepted.message)),
                action: if accepted.reason == reason::CONFLICTED {
                    "Admit".to_owned()
                } else {
                    "Validate".to_owned()
                },
                secondary: None,
            });
        }
    }
    let new_spec = previous.is_none_or(|p| p.generation != verdict.generation);
    if new_spec {
        events.extend(verdict.warnings.iter().map(|w| Event {
            type_: EventType::Warning,
            reason: w.reason.to_owned(),
            note: Some(truncate(&w.message)),
            action: "Validate".to_owned(),
            secondary: None,
        }));
    }
    events
}

/// An Event note is at most 1 kB.
fn truncate(message: &str) -> String {
    const LIMIT: usize = 1000;
    if message.len() <= LIMIT {
        return message.to_owned();
    }
    let mut end = LIMIT;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::ConditionState;

    fn verdict(accepted: bool, reason: &'static str, message: &str, warnings: &[&str]) -> Verdict {
        Verdict {
            key: RouteKey {
                namespace: "apps".into(),
                name: "chat".into(),
            },
            generation: Some(2),
            conditions: vec![ConditionState {
                type_: condition::ACCEPTED,
                status: accepted,
                reason,
                message: message.to_owned().into(),
            }],
            warnings: warnings
                .iter()
                .map(|w| crate::compile::Warning {
                    reason: crate::compile::warning::ANY_ORIGIN,
                    message: (*w).to_owned(),
                })
                .collect(),
        }
    }

    fn shown_for(v: &Verdict) -> Shown {
        Shown {
            generation: v.generation,
            conditions: crate::status::conditions(v, &[], Timestamp::UNIX_EPOCH),
            columns: Columns::default(),
        }
    }

    #[test]
    fn a_refused_route_gets_one_warning_until_its_reason_changes() {
        let invalid = verdict(false, reason::INVALID, "origin pattern `x` is bad", &[]);
        let events = events_for(&invalid, None);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].type_, EventType::Warning);
        assert_eq!(events[0].reason, "Invalid");
        assert_eq!(events[0].note.as_deref(), Some("origin pattern `x` is bad"));

        assert!(events_for(&invalid, Some(&shown_for(&invalid))).is_empty());

        let conflicted = verdict(false, reason::CONFLICTED, "apps/older owns it", &[]);
        let events = events_for(&conflicted, Some(&shown_for(&invalid)));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, "Conflicted");
    }

    #[test]
    fn an_accepted_route_gets_no_event() {
        let ok = verdict(true, reason::ACCEPTED, "ok", &[]);
        assert!(events_for(&ok, None).is_empty());
    }

    #[test]
    fn any_origin_warns_once_per_generation() {
        let any = verdict(
            true,
            reason::ACCEPTED,
            "ok",
            &["origin `*` admits every web page"],
        );
        let events = events_for(&any, None);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].reason, crate::compile::warning::ANY_ORIGIN);
        assert!(events_for(&any, Some(&shown_for(&any))).is_empty());
        let mut older = shown_for(&any);
        older.generation = Some(1);
        assert_eq!(events_for(&any, Some(&older)).len(), 1);
    }

    #[test]
    fn long_notes_are_cut_at_a_char_boundary() {
        let long = "é".repeat(700);
        let cut = truncate(&long);
        assert!(cut.len() <= 1003, "{}", cut.len());
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn a_write_the_watch_has_not_shown_yet_counts_as_shown_until_the_object_moves_on() {
        let ready = shown_for(&verdict(true, reason::ACCEPTED, "", &[]));
        let refused = shown_for(&verdict(false, reason::INVALID, "bad", &[]));
        let ours = Written {
            uid: Some("u".into()),
            seen: Some("7".into()),
            shown: ready.clone(),
            verdict: Arc::new(verdict(true, reason::ACCEPTED, "", &[])),
            present: 1,
        };
        let rv = |v: &str| Some(v.to_owned());
        // The store still has the object as it was when written: the write stands.
        assert_eq!(current(Some(&ours), &rv("7"), Some(&refused)), Some(&ready));
        // The store moved on (the write, or someone else's): the store is what is shown.
        assert_eq!(
            current(Some(&ours), &rv("8"), Some(&refused)),
            Some(&refused)
        );
        assert_eq!(current(None, &rv("7"), Some(&refused)), Some(&refused));
    }
}
