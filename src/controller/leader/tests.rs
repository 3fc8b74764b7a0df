use super::*;

const DURATION: Duration = Duration::from_secs(15);

fn campaign(identity: &str, now: Instant) -> Campaign {
    let settings = LeaseSettings {
        name: "wsgate".to_owned(),
        namespace: "default".to_owned(),
        identity: identity.to_owned(),
        duration: DURATION,
    };
    Campaign::new(&settings, now)
}

/// The Lease as the API server would return it: held by `holder` at `version`.
fn lease(holder: Option<&str>, version: u64, renewed_second: i64) -> Lease {
    let mut lease = Lease::default();
    lease.metadata.name = Some("wsgate".to_owned());
    lease.metadata.resource_version = Some(version.to_string());
    lease.spec = Some(LeaseSpec {
        holder_identity: holder.map(str::to_owned),
        renew_time: Some(MicroTime(Timestamp::from_second(renewed_second).unwrap())),
        lease_duration_seconds: Some(15),
        ..LeaseSpec::default()
    });
    lease
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_holder_stops_leading_before_any_competitor_may_take_over() {
    let t0 = Instant::now();
    let mut a = campaign("a", t0);
    let mut b = campaign("b", t0);
    // a's renewal leaves at t0; the server stores it; b sees it no earlier.
    a.won(lease(Some("a"), 10, 100), t0, t0 + ms(300));
    b.observe(Some(lease(Some("a"), 10, 100)), t0 + ms(5));
    // Then nothing more gets through: the API server is away.
    let until = a.leading_until().expect("a leads");
    assert!(a.is_leader(until - ms(1)));
    assert!(!a.is_leader(until));
    assert!(until <= t0 + DURATION - DURATION / 5);
    assert!(b.next_attempt() >= t0 + ms(5) + DURATION);
    assert!(b.next_attempt() > until);
    assert!(!b.is_leader(b.next_attempt()));
}

#[test]
fn claims_last_whole_seconds_and_at_least_three() {
    let t0 = Instant::now();
    let mut settings = LeaseSettings {
        name: "wsgate".to_owned(),
        namespace: "default".to_owned(),
        identity: "a".to_owned(),
        duration: Duration::from_millis(3500),
    };
    assert_eq!(
        Campaign::new(&settings, t0).duration,
        Duration::from_secs(3)
    );
    settings.duration = Duration::from_secs(1);
    let a = Campaign::new(&settings, t0);
    let Step::Create(created) = a.step(Timestamp::from_second(200).unwrap()) else {
        panic!("a missing Lease is created");
    };
    let spec = created.spec.expect("spec");
    assert_eq!(spec.lease_duration_seconds, Some(3));
}

#[test]
fn failed_renewals_do_not_extend_the_claim() {
    let t0 = Instant::now();
    let mut a = campaign("a", t0);
    a.won(lease(Some("a"), 10, 100), t0, t0 + ms(20));
    let until = a.leading_until().expect("a leads");
    assert_eq!(a.next_attempt(), t0 + DURATION / 3);
    for k in 1..20 {
        a.failed(t0 + DURATION / 3 + ms(k * 500));
    }
    assert_eq!(a.leading_until(), Some(until));
    assert!(!a.is_leader(until));
}

#[test]
fn a_lease_held_by_another_is_taken_only_after_its_claim_runs_out_unrenewed() {
    let t0 = Instant::now();
    let mut b = campaign("b", t0);
    b.observe(Some(lease(Some("a"), 10, 100)), t0);
    assert_eq!(b.next_attempt(), t0 + DURATION);
    // A renewal seen restarts the wait; the same record seen again does not.
    b.observe(Some(lease(Some("a"), 11, 105)), t0 + ms(5000));
    b.observe(Some(lease(Some("a"), 11, 105)), t0 + ms(9000));
    assert_eq!(b.next_attempt(), t0 + ms(5000) + DURATION);
    let Step::Replace(taken) = b.step(Timestamp::from_second(200).unwrap()) else {
        panic!("expected a replace of the version seen");
    };
    assert_eq!(taken.metadata.resource_version.as_deref(), Some("11"));
    let spec = taken.spec.expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
}

#[test]
fn a_released_lease_is_taken_at_once() {
    let t0 = Instant::now();
    let mut b = campaign("b", t0);
    b.observe(Some(lease(Some("a"), 10, 100)), t0);
    b.observe(Some(lease(Some(""), 11, 101)), t0 + ms(100));
    assert!(b.next_attempt() <= t0 + ms(100));
    b.observe(Some(lease(None, 12, 101)), t0 + ms(200));
    assert!(b.next_attempt() <= t0 + ms(200));
}

#[test]
fn the_holder_releases_only_a_lease_it_holds_on_record() {
    let t0 = Instant::now();
    let mut a = campaign("a", t0);
    a.observe(Some(lease(Some("b"), 10, 100)), t0);
    assert!(a.release(Timestamp::from_second(200).unwrap()).is_none());
    a.won(lease(Some("a"), 11, 100), t0, t0);
    let released = a
        .release(Timestamp::from_second(200).unwrap())
        .expect("release");
    assert_eq!(released.metadata.resource_version.as_deref(), Some("11"));
    let spec = released.spec.expect("spec");
    assert_eq!(spec.holder_identity, None);
    assert_eq!(spec.lease_duration_seconds, Some(1));
}

#[test]
fn a_deleted_lease_stops_its_holder_which_may_recreate_it_at_once() {
    let t0 = Instant::now();
    let mut a = campaign("a", t0);
    a.won(lease(Some("a"), 10, 100), t0, t0);
    a.deleted(&lease(Some("a"), 12, 100), t0 + ms(1000));
    assert!(!a.is_leader(t0 + ms(1000)));
    assert!(a.next_attempt() <= t0 + ms(1000));
    assert!(matches!(
        a.step(Timestamp::from_second(200).unwrap()),
        Step::Create(_)
    ));
}

#[test]
fn others_recreate_a_deleted_lease_only_once_its_last_claim_ran_out() {
    let t0 = Instant::now();
    let mut b = campaign("b", t0);
    b.observe(Some(lease(Some("a"), 10, 100)), t0);
    b.deleted(&lease(Some("a"), 12, 100), t0 + ms(1000));
    assert_eq!(b.next_attempt(), t0 + DURATION);
    assert!(matches!(
        b.step(Timestamp::from_second(200).unwrap()),
        Step::Create(_)
    ));
    // A replica that never saw a holder creates it at once.
    let c = campaign("c", t0);
    assert!(c.next_attempt() <= t0);
}

#[test]
fn a_stale_watch_event_does_not_undo_a_newer_write() {
    let t0 = Instant::now();
    let mut a = campaign("a", t0);
    a.won(lease(Some("a"), 20, 100), t0, t0);
    // The release a replaced, and the deletion before a recreated it, arrive late.
    a.observe(Some(lease(None, 19, 99)), t0 + ms(10));
    a.deleted(&lease(Some("b"), 18, 98), t0 + ms(20));
    assert!(a.is_leader(t0 + ms(30)));
}

#[test]
fn a_takeover_or_a_lost_race_stops_leading_at_once() {
    let t0 = Instant::now();
    let mut a = campaign("a", t0);
    a.won(lease(Some("a"), 10, 100), t0, t0);
    a.observe(Some(lease(Some("b"), 11, 101)), t0 + ms(10));
    assert!(!a.is_leader(t0 + ms(10)));

    let mut a = campaign("a", t0);
    a.won(lease(Some("a"), 10, 100), t0, t0);
    a.lost(t0 + ms(10));
    assert!(!a.is_leader(t0 + ms(10)));
    assert!(a.next_attempt() >= t0 + ms(10) + RETRY_AFTER);
}
