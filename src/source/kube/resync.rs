//! Keeping the watches going through API server trouble. A failed watch starts over from a
//! fresh list after a short pause (none after 410 Gone, at most a second otherwise), so a
//! change made while the API server was away applies as soon as it answers again, and the
//! list completing says for certain that the view is current. After the API server was
//! unreachable, the list waits for its `/readyz`: a request for a custom resource that
//! reaches a starting API server is held there for seconds after it is ready, while one
//! sent once it is ready is answered in about one. Each kind's staleness is
//! logged once when it starts and once when it ends, and exported as
//! `wsgate_watch_stale_seconds`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde::de::DeserializeOwned;

use crate::metrics::WatchStaleness;

/// What went wrong talking to the API server, named the way an operator needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Trouble {
    /// 410 Gone: the watch's resourceVersion is too old, as after an API server restart; a
    /// relist is expected and harmless.
    Expired,
    /// No answer: connection refused, reset or timed out.
    Unreachable,
    /// 401: the credentials are not accepted.
    Unauthorized,
    /// 403: RBAC refuses, or the API server's authorizer is still warming up after a start.
    Forbidden,
    /// Any other error status (429, 5xx, ...).
    Status(u16),
    /// Anything else, e.g. a response that does not decode.
    Other,
}

impl fmt::Display for Trouble {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trouble::Expired => f.write_str("resource version expired (410), relisting"),
            Trouble::Unreachable => f.write_str("API server unreachable"),
            Trouble::Unauthorized => f.write_str("unauthorized (401); check the credentials"),
            Trouble::Forbidden => f.write_str(
                "forbidden (the API server may still be starting; if this lasts, check RBAC)",
            ),
            Trouble::Status(code) => write!(f, "the API server answered {code}"),
            Trouble::Other => f.write_str("unexpected response"),
        }
    }
}

impl Trouble {
    /// The class of a watch error.
    pub(super) fn of_watch(e: &watcher::Error) -> Trouble {
        match e {
            watcher::Error::InitialListFailed(e)
            | watcher::Error::WatchStartFailed(e)
            | watcher::Error::WatchFailed(e) => Trouble::of(e),
            watcher::Error::WatchError(status) => Trouble::of_code(status.code),
            watcher::Error::NoResourceVersion => Trouble::Other,
        }
    }

    /// The class of a request error.
    pub(super) fn of(e: &kube::Error) -> Trouble {
        match e {
            kube::Error::Api(status) => Trouble::of_code(status.code),
            kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
                Trouble::Unreachable
            }
            _ => Trouble::Other,
        }
    }

    /// Whether the API server answered that it is not ready to serve yet.
    fn unready(self) -> bool {
        matches!(self, Trouble::Unreachable | Trouble::Status(429 | 500..))
    }

    fn of_code(code: u16) -> Trouble {
        match code {
            410 => Trouble::Expired,
            401 => Trouble::Unauthorized,
            403 => Trouble::Forbidden,
            code => Trouble::Status(code),
        }
    }
}

/// The first pause after a failure.
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// The longest pause: an outage costs each watch one request a second, and a change made
/// during it applies within about a second of the API server answering.
const MAX_RETRY: Duration = Duration::from_secs(1);

/// Pauses between attempts of one watch: from [`FIRST_RETRY`] doubling to [`MAX_RETRY`],
/// each drawn between half and all of that so replicas do not retry in step.
#[derive(Debug, Default)]
struct Backoff {
    /// The next pause before jitter; `None` means [`FIRST_RETRY`].
    next: Option<Duration>,
    /// The previous failure since the last sync.
    last: Option<Trouble>,
}

impl Backoff {
    /// The pause before the attempt that follows a failure of class `trouble`. A 410 first
    /// after a sync relists at once; the API server answering after being unreachable starts
    /// the pauses over, so a brief 403 while it warms up costs little.
    fn after(&mut self, trouble: Trouble) -> Duration {
        let previous = self.last.replace(trouble);
        if previous.is_none() && trouble == Trouble::Expired {
            return Duration::ZERO;
        }
        if previous == Some(Trouble::Unreachable) && trouble != Trouble::Unreachable {
            self.next = None;
        }
        let pause = self.next.unwrap_or(FIRST_RETRY);
        self.next = Some((pause * 2).min(MAX_RETRY));
        pause.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

/// How many not-ready answers from `/readyz` in a row a relist waits through before it goes
/// ahead anyway (about ten seconds of them), so an API server that serves but never reports
/// ready cannot keep a watch stale for good.
const READY_CHECKS: u32 = 50;

/// `watcher(api, config)`, started over from a fresh list after every error, following a
/// [`Backoff`] pause that a completed list resets; after the API server was unreachable,
/// the list waits until its `/readyz` says it is ready. Errors are passed on as they happen,
/// a failed readiness check as a failed list.
pub(super) fn relisting<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + DeserializeOwned + fmt::Debug + Send + 'static,
{
    let events = watcher::watcher(api.clone(), config.clone()).boxed();
    let state = Relisting {
        client: api.clone().into(),
        api,
        config,
        events,
        backoff: Backoff::default(),
        pause: Duration::ZERO,
        unready: None,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        if !s.pause.is_zero() {
            tokio::time::sleep(std::mem::take(&mut s.pause)).await;
        }
        if let Some(checks) = s.unready {
            match ready(&s.client).await {
                Err(e) if checks < READY_CHECKS => {
                    let trouble = Trouble::of(&e);
                    let pause = s.backoff.after(trouble);
                    // A server that answers is asked again soon: the check is cheap, and it
                    // is ready any moment now.
                    (s.pause, s.unready) = if trouble == Trouble::Unreachable {
                        (pause, Some(checks))
                    } else {
                        (FIRST_RETRY, Some(checks + 1))
                    };
                    return Some((Err(watcher::Error::InitialListFailed(e)), s));
                }
                _ => s.unready = None,
            }
        }
        let item = s.events.next().await?;
        match &item {
            Err(e) => {
                let trouble = Trouble::of_watch(e);
                s.pause = s.backoff.after(trouble);
                if trouble == Trouble::Unreachable {
                    s.unready = Some(0);
                }
                s.events = watcher::watcher(s.api.clone(), s.config.clone()).boxed();
            }
            Ok(Event::InitDone) => s.backoff = Backoff::default(),
            Ok(_) => {}
        }
        Some((item, s))
    })
}

/// Whether the API server says it is ready: `Err` if it cannot be reached or answers that it
/// is not (5xx, 429). Any other answer (401, 403, 404: `/readyz` is not ours to read) counts
/// as ready, since the list itself then tells.
async fn ready(client: &Client) -> Result<(), kube::Error> {
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    match client.request_text(request).await {
        // Its body lists every check, one a line: too much for a log line.
        Err(kube::Error::Api(status)) if Trouble::of_code(status.code).unready() => {
            let brief = kube::core::Status::failure("/readyz: not ready", "NotReady");
            Err(kube::Error::Api(Box::new(brief.with_code(status.code))))
        }
        Err(e) if Trouble::of(&e).unready() => Err(e),
        _ => Ok(()),
    }
}

/// What [`relisting`] carries from one item to the next.
struct Relisting<K: 'static> {
    api: Api<K>,
    client: Client,
    config: watcher::Config,
    events: BoxStream<'static, Result<Event<K>, watcher::Error>>,
    backoff: Backoff,
    pause: Duration,
    /// Set after the API server was unreachable: how many readiness checks have failed since.
    unready: Option<u32>,
}

/// How long a kind may stay stale before its WARN is repeated (with the failures since).
const STALE_REMINDER: Duration = Duration::from_secs(60);

/// Whether each watch's view is current; logs a kind going stale and catching up, and keeps
/// `wsgate_watch_stale_seconds`.
#[derive(Clone)]
pub(super) struct Freshness {
    state: Arc<Mutex<Health>>,
    metric: WatchStaleness,
}

#[derive(Default)]
struct Health {
    /// By watch index: its kind, and since when its view has not been current.
    watches: HashMap<usize, (&'static str, Option<Instant>)>,
    /// Kinds with a failing watch, and since when they fail.
    failing: HashMap<&'static str, Outage>,
}

/// One kind's failures since its watches were last all current.
struct Outage {
    since: Instant,
    failures: u64,
    warned: Instant,
}

impl Freshness {
    /// No watches yet; their staleness goes to `metric`.
    pub(super) fn new(metric: WatchStaleness) -> Freshness {
        Freshness {
            state: Arc::default(),
            metric,
        }
    }

    /// Watch `index`, of `kind`, starts: not current until its first list completes.
    pub(super) fn watching(&self, index: usize, kind: &'static str) {
        let mut health = self.lock();
        health.watches.insert(index, (kind, Some(Instant::now())));
        self.export(&health, kind);
    }

    /// Watch `index` failed with `error`; it is relisting.
    pub(super) fn failed(&self, index: usize, error: &watcher::Error) {
        let trouble = Trouble::of_watch(error);
        let now = Instant::now();
        let mut health = self.lock();
        let Some((kind, stale)) = health.watches.get_mut(&index) else {
            return;
        };
        let kind = *kind;
        stale.get_or_insert(now);
        self.export(&health, kind);
        if trouble == Trouble::Expired {
            tracing::debug!(kind, "watch expired (410 Gone); relisting");
            return;
        }
        match health.failing.get_mut(kind) {
            None => {
                tracing::warn!(
                    kind,
                    cause = %trouble,
                    error = %error,
                    "watch stale: retrying every second at most; the last snapshot keeps serving"
                );
                let outage = Outage {
                    since: now,
                    failures: 1,
                    warned: now,
                };
                health.failing.insert(kind, outage);
            }
            Some(outage) => {
                outage.failures += 1;
                if now.duration_since(outage.warned) >= STALE_REMINDER {
                    outage.warned = now;
                    tracing::warn!(
                        kind,
                        cause = %trouble,
                        error = %error,
                        stale_seconds = now.duration_since(outage.since).as_secs(),
                        failures = outage.failures,
                        "watch still stale; the last snapshot keeps serving"
                    );
                } else {
                    tracing::debug!(kind, cause = %trouble, error = %error, "watch failed again");
                }
            }
        }
    }

    /// Watch `index` completed a list: its view is current.
    pub(super) fn synced(&self, index: usize) {
        let mut health = self.lock();
        let Some((kind, stale)) = health.watches.get_mut(&index) else {
            return;
        };
        let kind = *kind;
        *stale = None;
        self.export(&health, kind);
        let current = health
            .watches
            .values()
            .all(|(k, stale)| *k != kind || stale.is_none());
        if let Some(outage) = current.then(|| health.failing.remove(kind)).flatten() {
            tracing::info!(
                kind,
                stale_seconds = format_args!("{:.1}", outage.since.elapsed().as_secs_f64()),
                failures = outage.failures,
                "watch caught up"
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets `kind`'s metric from its stalest watch.
    fn export(&self, health: &Health, kind: &'static str) {
        let since = health
            .watches
            .values()
            .filter(|(k, _)| *k == kind)
            .filter_map(|(_, stale)| *stale)
            .min();
        self.metric.set(kind, since);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api_error(code: u16) -> watcher::Error {
        watcher::Error::InitialListFailed(kube::Error::Api(Box::new(
            Status::failure("refused", "Whatever").with_code(code),
        )))
    }

    #[test]
    fn errors_are_classified_for_the_operator() {
        assert_eq!(Trouble::of_watch(&api_error(410)), Trouble::Expired);
        assert_eq!(Trouble::of_watch(&api_error(403)), Trouble::Forbidden);
        assert_eq!(Trouble::of_watch(&api_error(503)), Trouble::Status(503));
        let gone =
            watcher::Error::WatchError(Box::new(Status::failure("old", "Expired").with_code(410)));
        assert_eq!(Trouble::of_watch(&gone), Trouble::Expired);
        let refused = kube::Error::Service(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(Trouble::of(&refused), Trouble::Unreachable);
        assert!(Trouble::Forbidden.to_string().contains("check RBAC"));
    }

    #[test]
    fn pauses_stay_under_a_second_a_410_relists_at_once_and_an_answer_starts_over() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.after(Trouble::Expired), Duration::ZERO);
        let mut backoff = Backoff::default();
        let pauses: Vec<Duration> = (0..20)
            .map(|_| backoff.after(Trouble::Unreachable))
            .collect();
        assert!(pauses.iter().all(|p| *p <= MAX_RETRY), "{pauses:?}");
        assert!(pauses[0] <= FIRST_RETRY, "{pauses:?}");
        assert!(pauses[19] >= MAX_RETRY / 2, "{pauses:?}");
        assert!(backoff.after(Trouble::Forbidden) <= FIRST_RETRY);
        assert!(backoff.after(Trouble::Forbidden) > FIRST_RETRY / 2);
    }

    #[test]
    fn a_kind_is_stale_from_its_first_failure_until_every_watch_of_it_relisted() {
        let metrics = crate::metrics::Metrics::new();
        let freshness = Freshness::new(metrics.watch_staleness.clone());
        let sample = |kind: &str| {
            let text = metrics.render();
            let prefix = format!("wsgate_watch_stale_seconds{{kind=\"{kind}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix)?.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {kind} sample: {text}"))
        };
        freshness.watching(0, "Service");
        freshness.watching(1, "Service");
        freshness.watching(2, "Secret");
        for i in 0..3 {
            freshness.synced(i);
        }
        assert_eq!((sample("Service"), sample("Secret")), (0.0, 0.0));
        let refused = watcher::Error::WatchStartFailed(kube::Error::Service(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        )));
        freshness.failed(0, &refused);
        freshness.failed(1, &refused);
        std::thread::sleep(Duration::from_millis(20));
        assert!(sample("Service") > 0.0);
        assert_eq!(sample("Secret"), 0.0);
        freshness.synced(0);
        assert!(
            sample("Service") > 0.0,
            "one watch of the kind is still stale"
        );
        freshness.synced(1);
        assert_eq!(sample("Service"), 0.0);
    }
}
