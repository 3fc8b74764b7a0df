//! What the log leaves out. The Kubernetes client libraries log every failed request
//! themselves, as ERROR or WARN, though wsgate logs each failure it gets back from them,
//! classified (see `source::kube`'s watches). During an API server outage that was dozens of
//! lines a minute, and in the second after a restart `... is forbidden` while the server's
//! authorizer warms up, which reads as an RBAC failure. So by default the two that only
//! repeat what wsgate reports are off, and every other warning or error from those
//! libraries is shown at most once a minute per line of code.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer};

/// Targets whose warnings and errors repeat what wsgate logs itself: every failed request
/// (`builder`), and the watcher's 403s.
const DUPLICATES: [&str; 2] = [
    "kube_client::client::builder=off",
    "kube_runtime::watcher=off",
];

/// How often one library call site may log a warning or an error.
const LIBRARY_NOISE_EVERY: Duration = Duration::from_secs(60);

/// The filter for `--log FILTER`: as given, plus the duplicating library targets off unless the filter names
/// a `kube` target itself (then it is taken as written).
pub fn filter(log: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let mut filter = EnvFilter::try_new(log)?;
    if !log.contains("kube") {
        for directive in DUPLICATES {
            filter = filter.add_directive(directive.parse()?);
        }
    }
    Ok(filter)
}

/// Lets through at most one warning or error a minute from each call site in the
/// Kubernetes client libraries (targets `kube*`); everything else passes.
#[derive(Debug, Default)]
pub struct QuietLibraries {
    last: Mutex<HashMap<Identifier, Instant>>,
}

impl QuietLibraries {
    /// Whether an event at `level` from `target` and `callsite` is shown now.
    fn admits(&self, target: &str, level: Level, callsite: Identifier) -> bool {
        if !target.starts_with("kube") || level > Level::WARN {
            return true;
        }
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match last.get(&callsite) {
            Some(at) if now.duration_since(*at) < LIBRARY_NOISE_EVERY => false,
            _ => {
                last.insert(callsite, now);
                true
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for QuietLibraries {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let meta = event.metadata();
        self.admits(meta.target(), *meta.level(), meta.callsite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call site that is only compared (a field, so two are never at the same address).
    struct Site(u8);
    impl tracing::callsite::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unreachable!("site {}: only its identity is used", self.0)
        }
    }
    static A: Site = Site(1);
    static B: Site = Site(2);

    #[test]
    fn a_library_call_site_warns_once_a_minute_and_wsgate_always() {
        let quiet = QuietLibraries::default();
        let (a, b) = (Identifier(&A), Identifier(&B));
        assert!(quiet.admits("kube_client::client", Level::WARN, a.clone()));
        assert!(!quiet.admits("kube_client::client", Level::WARN, a.clone()));
        assert!(!quiet.admits("kube_client::client", Level::ERROR, a.clone()));
        assert!(quiet.admits("kube_lease_manager::manager", Level::ERROR, b.clone()));
        assert!(quiet.admits("kube_client::client", Level::DEBUG, a.clone()));
        for _ in 0..3 {
            assert!(quiet.admits("wsgate::source::kube", Level::WARN, a.clone()));
        }
    }

    #[test]
    fn the_duplicated_library_logs_are_off_unless_the_filter_names_kube() {
        let default = filter("info").expect("filter").to_string();
        assert!(default.contains("kube_runtime::watcher=off"), "{default}");
        let chosen = filter("info,kube_runtime=debug")
            .expect("filter")
            .to_string();
        assert!(!chosen.contains("=off"), "{chosen}");
    }
}
