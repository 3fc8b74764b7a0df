//! Leadership among replicas: one `coordination.k8s.io/v1` Lease; only its holder writes
//! route status and Events, every replica serves traffic.
//!
//! Written here rather than on `kube-lease-manager` (0.13), because measurements showed it
//! falls short: a holder that cannot renew (API server away, Lease deleted) kept reporting
//! itself leader indefinitely; a deleted Lease was never recreated; followers polled only
//! when the claim they last saw ran out, so a released Lease waited ~12 s for a new holder;
//! and takeover patched without `resourceVersion`, so two replicas could both believe they
//! won. This loop follows client-go's leader election instead:
//! - every write is a `replace` with the `resourceVersion` last read (or a `create`), so of
//!   two competitors exactly one succeeds;
//! - a holder counts as leader only until `sent + duration − margin`, where `sent` is when
//!   its last successful renewal left; every competitor waits `duration` from when it
//!   *saw* that renewal (always later), so even with the API server unreachable there are
//!   never two writers;
//! - the Lease is watched, so a release or deletion is seen at once;
//! - on shutdown the holder releases it (holder cleared, as client-go's `ReleaseOnCancel`);
//!   a stopping replica never recreates it, and neither does any once their Deployment is
//!   gone (`helm uninstall` deletes the Lease too).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::deployment::{Outlook, OwnDeployment};

/// How long one API request may take when nothing sooner bounds it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed attempt before the next one.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Which Lease to hold, and as whom.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// The Lease's name.
    pub name: String,
    /// The Lease's namespace.
    pub namespace: String,
    /// This replica's holder identity (pod name, or host name and process id).
    pub identity: String,
    /// How long a holder's claim lasts without renewal, in whole seconds, at least 3. It
    /// renews every third of this, and stops acting as holder a fifth of it before the
    /// claim could run out.
    pub duration: Duration,
}

/// Why the Lease cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot use Lease {namespace}/{name}: {}; grant get/list/watch/create/update on leases.coordination.k8s.io in {namespace}, or pick another with --lease-namespace",
    crate::apierror::brief(cause)
)]
pub struct LeaderError {
    name: String,
    namespace: String,
    /// Not a `#[source]`: the message already says it, briefly (`apierror::brief`).
    cause: kube::Error,
}

/// A running campaign for the Lease.
pub struct Leadership {
    is_leader: watch::Receiver<bool>,
    winding_down: Arc<AtomicBool>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Leadership {
    /// Starts competing for the Lease (creating it when missing), keeps renewing it while
    /// held, and sets `gauge` to 1 exactly while this replica acts as holder. Fails if the
    /// Lease cannot even be read. With the replicas' `deployment`, a Lease deleted once it
    /// wants no replicas is not recreated.
    pub async fn campaign(
        client: Client,
        settings: &LeaseSettings,
        gauge: Gauge,
        deployment: Option<OwnDeployment>,
    ) -> Result<Leadership, LeaderError> {
        let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
        let error = |cause| LeaderError {
            name: settings.name.clone(),
            namespace: settings.namespace.clone(),
            cause,
        };
        let found = api.get_opt(&settings.name).await.map_err(error)?;
        let mut campaign = Campaign::new(settings, Instant::now());
        campaign.observe(found, Instant::now());
        let config = watcher::Config::default().fields(&format!("metadata.name={}", settings.name));
        let events = watcher::watcher(api.clone(), config).default_backoff();
        let (publish, is_leader) = watch::channel(false);
        let (stop, stopped) = oneshot::channel();
        let winding_down = Arc::new(AtomicBool::new(false));
        let runner = Runner {
            api,
            settings: settings.clone(),
            campaign,
            publish,
            gauge,
            winding_down: winding_down.clone(),
            deployment,
            failing: Failing::default(),
        };
        let task = tokio::spawn(runner.run(events, stopped));
        Ok(Leadership {
            is_leader,
            winding_down,
            stop,
            task,
        })
    }

    /// Whether this replica acts as holder, updated as that changes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.is_leader.clone()
    }

    /// From now on never creates the Lease, but keeps renewing it while held: this replica
    /// is stopping, and a Lease it recreated (say, one `helm uninstall` deleted) would
    /// outlive it.
    pub fn wind_down(&self) {
        self.winding_down.store(true, Ordering::Relaxed);
    }

    /// Stops acting as holder and releases the Lease if this replica holds it, so another
    /// replica takes it at once; waits at most `within`.
    pub async fn resign(self, within: Duration) {
        self.wind_down();
        let _ = self.stop.send(());
        match tokio::time::timeout(within, self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "lease task failed"),
            Err(_) => tracing::warn!("lease not released in time; it expires on its own"),
        }
    }
}

/// The Lease fields that show whether a claim is being renewed.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    holder: Option<String>,
    renewed: Option<MicroTime>,
    seconds: Option<i32>,
}

impl Record {
    fn of(lease: &Lease) -> Record {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            // client-go releases by writing an empty holder.
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renewed: spec.renew_time,
            seconds: spec.lease_duration_seconds,
        }
    }
}

/// The Lease as last read or written, and when this replica first saw its current record.
#[derive(Debug, Clone)]
struct Seen {
    lease: Lease,
    record: Record,
    since: Instant,
}

/// What to send next.
#[derive(Debug)]
enum Step {
    Create(Lease),
    Replace(Lease),
}

/// The decisions of the election, on an explicit clock so they can be tested without one.
#[derive(Debug)]
struct Campaign {
    name: String,
    identity: String,
    duration: Duration,
    /// The Lease, or `None` while it is known not to exist.
    seen: Option<Seen>,
    /// After the Lease vanished: when the last claim seen on it could run out. Recreating
    /// it earlier could make a second writer if its holder has not noticed yet.
    vanished_claim_until: Option<Instant>,
    /// When the last successful acquisition or renewal was sent, while this replica holds.
    sent: Option<Instant>,
    /// No attempt before this (after a failure).
    retry_at: Instant,
    /// Whether the Lease was ever seen to exist, so a missing one was deleted.
    existed: bool,
}

impl Campaign {
    fn new(settings: &LeaseSettings, now: Instant) -> Campaign {
        Campaign {
            name: settings.name.clone(),
            identity: settings.identity.clone(),
            // What the Lease can state (whole seconds), and room for renewals and the margin.
            duration: Duration::from_secs(settings.duration.as_secs().max(3)),
            seen: None,
            vanished_claim_until: None,
            sent: None,
            retry_at: now,
            existed: false,
        }
    }

    /// Margin for clock-rate differences and scheduling between this replica and the
    /// others: the holder stops this long before any competitor could take over.
    fn margin(&self) -> Duration {
        self.duration / 5
    }

    /// Until when this replica may act as holder (`None`: it does not hold the Lease).
    fn leading_until(&self) -> Option<Instant> {
        self.sent.map(|sent| sent + self.duration - self.margin())
    }

    /// Whether this replica may act as holder at `now`.
    fn is_leader(&self, now: Instant) -> bool {
        self.leading_until().is_some_and(|until| now < until)
    }

    fn holds_record(&self) -> bool {
        self.seen
            .as_ref()
            .is_some_and(|s| s.record.holder.as_deref() == Some(self.identity.as_str()))
    }

    /// Takes in the Lease as read, written or watched at `now` (`None`: it does not exist).
    /// Anything older than what is known already is ignored.
    fn observe(&mut self, lease: Option<Lease>, now: Instant) {
        let Some(lease) = lease else {
            if let Some(seen) = self.seen.take() {
                let mine = seen.record.holder.as_deref() == Some(self.identity.as_str());
                self.vanished_claim_until = match seen.record.holder {
                    // Its own claim ends when it stops acting on it, which is now.
                    Some(_) if mine => None,
                    Some(_) => Some(seen.since + self.claim(&seen.record)),
                    None => None,
                };
                if mine {
                    tracing::warn!(lease = %self.name, "the lease was deleted; no longer leader");
                }
            }
            self.sent = None;
            return;
        };
        if let Some(seen) = &self.seen
            && is_older(&lease, &seen.lease)
        {
            return;
        }
        self.existed = true;
        let record = Record::of(&lease);
        let since = match &self.seen {
            Some(seen) if seen.record == record => seen.since,
            _ => now,
        };
        if record.holder.as_deref() != Some(self.identity.as_str()) {
            if self.sent.is_some() {
                tracing::warn!(lease = %self.name, holder = ?record.holder, "the lease was taken over; no longer leader");
            }
            self.sent = None;
        }
        self.vanished_claim_until = None;
        self.seen = Some(Seen {
            lease,
            record,
            since,
        });
    }

    /// Takes in a watched deletion of `lease`, unless what is known is newer (a Lease
    /// recreated since).
    fn deleted(&mut self, lease: &Lease, now: Instant) {
        if self
            .seen
            .as_ref()
            .is_some_and(|seen| is_older(lease, &seen.lease))
        {
            return;
        }
        self.observe(None, now);
    }

    /// How long a claim lasts unrenewed: the duration it states, or ours.
    fn claim(&self, record: &Record) -> Duration {
        record
            .seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.duration, Duration::from_secs)
    }

    /// When to send the next acquisition or renewal.
    fn next_attempt(&self) -> Instant {
        let due = match (&self.seen, self.sent) {
            // Renew a third of the way in: two more chances before the margin.
            (_, Some(sent)) => sent + self.duration / 3,
            (None, _) => self.vanished_claim_until.unwrap_or(self.retry_at),
            (Some(seen), None) => match &seen.record.holder {
                None => self.retry_at,
                // Still ours on record: a write against its resourceVersion is safe.
                Some(h) if *h == self.identity => self.retry_at,
                Some(_) => seen.since + self.claim(&seen.record),
            },
        };
        due.max(self.retry_at)
    }

    /// The request that acquires, recreates or renews the Lease, stamped `wall`.
    fn step(&self, wall: Timestamp) -> Step {
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let now = Some(MicroTime(wall));
        let Some(seen) = &self.seen else {
            let mut lease = Lease::default();
            lease.metadata.name = Some(self.name.clone());
            lease.spec = Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                acquire_time: now.clone(),
                renew_time: now,
                lease_duration_seconds: Some(seconds),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            });
            return Step::Create(lease);
        };
        let mut lease = seen.lease.clone();
        let spec = lease.spec.get_or_insert_default();
        if !self.holds_record() {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = now.clone();
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = now;
        spec.lease_duration_seconds = Some(seconds);
        Step::Replace(lease)
    }

    /// The request that gives the Lease up, if this replica is its holder on record.
    fn release(&self, wall: Timestamp) -> Option<Lease> {
        if !self.holds_record() {
            return None;
        }
        let mut lease = self.seen.as_ref()?.lease.clone();
        let spec = lease.spec.get_or_insert_default();
        let now = Some(MicroTime(wall));
        spec.holder_identity = None;
        spec.acquire_time = now.clone();
        spec.renew_time = now;
        spec.lease_duration_seconds = Some(1);
        Some(lease)
    }

    /// A write sent at `sent` succeeded and the server answered `lease` at `now`.
    fn won(&mut self, lease: Lease, sent: Instant, now: Instant) {
        self.observe(Some(lease), now);
        if self.holds_record() {
            if self.sent.is_none() {
                tracing::info!(lease = %self.name, "acquired the lease; now leader");
            }
            self.sent = Some(sent);
        }
    }

    /// Another write got in first: stop acting as holder until the Lease is read again.
    fn lost(&mut self, now: Instant) {
        self.sent = None;
        self.retry_at = now + RETRY_AFTER;
    }

    /// The attempt failed for another reason; the claim stands until it runs out.
    fn failed(&mut self, now: Instant) {
        self.retry_at = now + RETRY_AFTER;
    }
}

/// Whether `lease` is an older version than `known`, as when the watch delivers what this
/// replica's own write already replaced. Resource versions are opaque, but the API
/// server's are etcd revisions, ordered across deletion and recreation; anything else
/// counts as newer.
fn is_older(lease: &Lease, known: &Lease) -> bool {
    let version = |l: &Lease| l.metadata.resource_version.as_deref()?.parse::<u64>().ok();
    matches!((version(lease), version(known)), (Some(a), Some(b)) if a < b)
}

/// The task behind [`Leadership`].
struct Runner {
    api: Api<Lease>,
    settings: LeaseSettings,
    campaign: Campaign,
    publish: watch::Sender<bool>,
    gauge: Gauge,
    /// Set once this replica is stopping, or its Deployment wants no replicas: it no longer
    /// creates the Lease.
    winding_down: Arc<AtomicBool>,
    deployment: Option<OwnDeployment>,
    failing: Failing,
}

/// Lease requests failing while the API server is away: one WARN when they start, DEBUG
/// for the repeats (an outage would otherwise log two lines a second), one INFO when a
/// request is answered again.
#[derive(Debug, Default)]
struct Failing {
    /// When the failures began, and how many so far.
    since: Option<(Instant, u64)>,
}

impl Failing {
    fn failed(&mut self, what: &str, error: &dyn std::fmt::Display) {
        match &mut self.since {
            Some((_, count)) => {
                *count += 1;
                tracing::debug!(%error, "{what}");
            }
            None => {
                self.since = Some((Instant::now(), 1));
                tracing::warn!(%error, "{what}; retrying, and logging the repeats at debug level until it works again");
            }
        }
    }

    fn answered(&mut self) {
        if let Some((since, failures)) = self.since.take() {
            let seconds = since.elapsed().as_secs_f64();
            tracing::info!(failures, seconds, "lease requests are answered again");
        }
    }
}

impl Runner {
    async fn run(
        mut self,
        events: impl Stream<Item = Result<Event<Lease>, watcher::Error>>,
        mut stopped: oneshot::Receiver<()>,
    ) {
        let mut events = std::pin::pin!(events);
        // Objects of a relist, until it completes: absent from it means deleted.
        let mut relist: Option<Option<Lease>> = None;
        loop {
            let now = Instant::now();
            self.set_leader(self.campaign.is_leader(now));
            let attempt = self.campaign.next_attempt();
            let wake = self
                .campaign
                .leading_until()
                .filter(|until| *until > now)
                .map_or(attempt, |until| until.min(attempt));
            tokio::select! {
                biased;
                _ = &mut stopped => break,
                event = events.next() => match event {
                    Some(Ok(Event::Apply(lease))) => self.campaign.observe(Some(lease), Instant::now()),
                    Some(Ok(Event::Delete(lease))) => self.campaign.deleted(&lease, Instant::now()),
                    Some(Ok(Event::Init)) => relist = Some(None),
                    Some(Ok(Event::InitApply(lease))) => relist = Some(Some(lease)),
                    Some(Ok(Event::InitDone)) => {
                        self.failing.answered();
                        if let Some(found) = relist.take() {
                            self.campaign.observe(found, Instant::now());
                        }
                    }
                    // Without the watch a release is seen only when the claim runs out.
                    Some(Err(e)) => self.failing.failed(
                        &format!("lease watch failed (it needs list/watch on leases.coordination.k8s.io in {})", self.settings.namespace),
                        &e,
                    ),
                    None => break,
                },
                () = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= self.campaign.next_attempt() {
                        self.attempt().await;
                    }
                }
            }
        }
        self.set_leader(false);
        self.release().await;
    }

    fn set_leader(&self, leading: bool) {
        self.gauge.set(i64::from(leading));
        self.publish
            .send_if_modified(|l| std::mem::replace(l, leading) != leading);
    }

    /// Sends one acquisition, creation or renewal; a holder gives up waiting for it when its
    /// claim would otherwise outlast what it can be sure of.
    async fn attempt(&mut self) {
        let sent = Instant::now();
        let limit = self
            .campaign
            .leading_until()
            .filter(|until| *until > sent)
            .map_or(sent + REQUEST_TIMEOUT, |until| {
                until.min(sent + REQUEST_TIMEOUT)
            });
        let step = self.campaign.step(Timestamp::now());
        if matches!(step, Step::Create(_))
            && (self.winding_down.load(Ordering::Relaxed) || self.deployment_ended().await)
        {
            self.campaign.failed(Instant::now());
            return;
        }
        let params = PostParams::default();
        let name = &self.settings.name;
        let request = async {
            match step {
                Step::Create(lease) => self.api.create(&params, &lease).await,
                Step::Replace(lease) => self.api.replace(name, &params, &lease).await,
            }
        };
        let result = tokio::time::timeout_at(limit, request).await;
        let now = Instant::now();
        match result {
            Ok(Ok(lease)) => {
                self.failing.answered();
                self.campaign.won(lease, sent, now);
            }
            Ok(Err(kube::Error::Api(s))) if s.is_conflict() || s.is_already_exists() => {
                self.failing.answered();
                self.campaign.lost(now);
                self.reread().await;
            }
            Ok(Err(kube::Error::Api(s))) if s.is_not_found() => {
                self.failing.answered();
                self.campaign.observe(None, now);
            }
            Ok(Err(cause)) => {
                self.campaign.failed(now);
                let error = LeaderError {
                    name: self.settings.name.clone(),
                    namespace: self.settings.namespace.clone(),
                    cause,
                };
                self.failing.failed("lease attempt failed", &error);
            }
            Err(_) => {
                self.campaign.failed(now);
                self.failing
                    .failed("lease request timed out", &self.settings.name.clone());
            }
        }
    }

    /// Whether the Lease was deleted because the release is going away: it existed, and the
    /// Deployment wants no replicas. `helm uninstall` deletes both, and a Lease recreated
    /// then would be left behind; from then on this replica never creates it.
    async fn deployment_ended(&self) -> bool {
        let (true, Some(deployment)) = (self.campaign.existed, &self.deployment) else {
            return false;
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, deployment.outlook()).await {
            Ok(Outlook::Ends(why)) => {
                tracing::info!(lease = %self.settings.name, %why, "not recreating the deleted lease");
                self.winding_down.store(true, Ordering::Relaxed);
                true
            }
            Ok(Outlook::Continues) => false,
            Ok(Outlook::Unknown(e)) => {
                tracing::warn!(error = %e, deployment = %deployment.path(), "cannot read the Deployment (it needs get on it); recreating the lease");
                false
            }
            Err(_) => false,
        }
    }

    /// Reads the Lease after losing a race, so the next decision starts from the winner's.
    async fn reread(&mut self) {
        let read = tokio::time::timeout(REQUEST_TIMEOUT, self.api.get_opt(&self.settings.name));
        if let Ok(Ok(found)) = read.await {
            self.campaign.observe(found, Instant::now());
        }
    }

    /// Gives the Lease up if this replica is its holder on record.
    async fn release(&self) {
        let Some(lease) = self.campaign.release(Timestamp::now()) else {
            return;
        };
        let params = PostParams::default();
        let request = self.api.replace(&self.settings.name, &params, &lease);
        match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(Ok(_)) => tracing::info!(lease = %self.settings.name, "released the lease"),
            Ok(Err(e)) => {
                let error = crate::apierror::brief(&e);
                tracing::warn!(%error, "releasing the lease failed; it expires on its own")
            }
            Err(_) => tracing::warn!("releasing the lease timed out; it expires on its own"),
        }
    }
}

#[cfg(test)]
mod tests;
