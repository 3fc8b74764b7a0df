use super::*;
use crate::route::PathRule;

fn route(name: &str, allow: &[&str], revoke: bool) -> Route {
    Route {
        revoke_on_policy_change: revoke,
        ..Route::named("ns", name, allow)
    }
}

fn origin(value: &str) -> RequestOrigin {
    RequestOrigin::from_header_values([value.as_bytes()])
}

fn table(routes: Vec<Route>) -> RouteTable {
    let mut t = RouteTable::default();
    for (i, r) in routes.into_iter().enumerate() {
        t.insert(
            &[format!("h{i}.example.com").into()],
            &PathRule::prefix("/"),
            Arc::new(r),
        );
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

#[test]
fn the_new_routes_revocation_setting_decides() {
    let registry = Arc::new(Registry::default());
    let was_off = registry.register(
        Arc::new(route("chat", &["https://a.com", "https://b.com"], false)),
        origin("https://a.com"),
    );
    let revoked = registry.revoke(&table(vec![route("chat", &["https://b.com"], true)]));
    assert_eq!(revoked, Revoked { policy: 1, gone: 0 });
    assert_eq!(was_off.control().requested(), Some(CLOSE_POLICY));

    let was_on = registry.register(
        Arc::new(route("talk", &["https://a.com", "https://b.com"], true)),
        origin("https://a.com"),
    );
    let revoked = registry.revoke(&table(vec![route("talk", &["https://b.com"], false)]));
    assert_eq!(revoked, Revoked::default());
    assert_eq!(was_on.control().requested(), None);
}

#[test]
fn a_handshake_in_flight_is_judged_by_the_newest_table_whatever_its_setting() {
    let registry = Arc::new(Registry::default());
    let mut pending = registry.register(
        Arc::new(route("chat", &["https://a.com", "https://b.com"], false)),
        origin("https://a.com"),
    );
    assert_eq!(registry.len(), 0, "not relaying yet");
    assert!(!registry.is_empty());
    let allowed = table(vec![route("chat", &["https://a.com"], false)]);
    assert_eq!(pending.verdict(&allowed), None);
    let narrowed = table(vec![route("chat", &["https://b.com"], false)]);
    assert_eq!(
        pending.verdict(&narrowed),
        Some((CLOSE_POLICY, "origin not allowed"))
    );
    assert_eq!(
        pending.verdict(&RouteTable::default()),
        Some((CLOSE_GOING_AWAY, "route removed"))
    );
    pending.relaying();
    assert_eq!(registry.len(), 1);
    drop(pending);
    assert_eq!(registry.len(), 0);
    assert!(registry.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_spread_drain_tells_connections_in_turn_over_the_window() {
    let registry = Arc::new(Registry::default());
    let live: Vec<_> = (0..100)
        .map(|_| registry.register(Arc::new(route("chat", &[], true)), RequestOrigin::Missing))
        .collect();
    let told = |live: &[Registration]| {
        live.iter()
            .filter(|r| r.control().requested() == Some(CLOSE_RESTART))
            .count()
    };
    let window = Duration::from_secs(10);
    let start = tokio::time::Instant::now();
    let spread = tokio::spawn(close_spread(registry.start_draining(), window));
    tokio::task::yield_now().await;
    assert_eq!(told(&live), 1, "the first at once");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let halfway = told(&live);
    assert!(
        (45..=55).contains(&halfway),
        "{halfway} of 100 told halfway"
    );
    spread.await.expect("spread");
    assert_eq!(told(&live), 100);
    // The paused clock moves only by the spread's own sleeps.
    assert!(
        start.elapsed() <= window + SPREAD_TICK,
        "every connection told within the window, after {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn draining_closes_live_and_late_connections_with_1012_and_waits_for_them() {
    let registry = Arc::new(Registry::default());
    let live = registry.register(Arc::new(route("chat", &[], true)), RequestOrigin::Missing);
    let told = registry.start_draining();
    assert_eq!(told.len(), 1);
    close_spread(told, Duration::ZERO).await;
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
