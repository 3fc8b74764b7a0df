use std::time::Duration;

use super::*;

fn limits(max: Option<u32>, per_client: Option<u32>, rate: Option<u32>) -> Admission {
    Admission {
        max_connections: max,
        max_connections_per_client: per_client,
        handshakes_per_second_per_client: rate,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn a_route_without_limits_is_not_counted() {
    let admissions = Arc::new(Admissions::default());
    let route: Arc<str> = "ns/a".into();
    let slot = admissions.admit(&route, Admission::default(), ip("10.0.0.1"), Instant::now());
    assert!(matches!(slot, Ok(None)));
    assert_eq!(admissions.connections("ns/a"), 0);
}

#[test]
fn a_full_route_refuses_until_a_connection_ends() {
    let admissions = Arc::new(Admissions::default());
    let route: Arc<str> = "ns/a".into();
    let now = Instant::now();
    let l = limits(Some(2), None, None);
    let first = admissions
        .admit(&route, l, ip("10.0.0.1"), now)
        .expect("1st");
    let _second = admissions
        .admit(&route, l, ip("10.0.0.2"), now)
        .expect("2nd");
    assert_eq!(
        admissions
            .admit(&route, l, ip("10.0.0.3"), now)
            .unwrap_err(),
        Denied::RouteFull
    );
    drop(first);
    assert!(admissions.admit(&route, l, ip("10.0.0.3"), now).is_ok());
}

#[test]
fn each_client_is_limited_on_its_own() {
    let admissions = Arc::new(Admissions::default());
    let route: Arc<str> = "ns/a".into();
    let now = Instant::now();
    let l = limits(None, Some(1), None);
    let held = admissions
        .admit(&route, l, ip("10.0.0.1"), now)
        .expect("1st");
    assert_eq!(
        admissions
            .admit(&route, l, ip("10.0.0.1"), now)
            .unwrap_err(),
        Denied::ClientConnections
    );
    let _other = admissions
        .admit(&route, l, ip("10.0.0.2"), now)
        .expect("other");
    // Another route's count is its own.
    let other_route: Arc<str> = "ns/b".into();
    let _b = admissions
        .admit(&other_route, l, ip("10.0.0.1"), now)
        .expect("b");
    drop(held);
    assert!(admissions.admit(&route, l, ip("10.0.0.1"), now).is_ok());
}

#[test]
fn an_ipv6_client_is_its_slash_64() {
    let admissions = Arc::new(Admissions::default());
    let route: Arc<str> = "ns/a".into();
    let now = Instant::now();
    let l = limits(None, Some(1), None);
    let _held = admissions
        .admit(&route, l, ip("2001:db8:1:2::1"), now)
        .expect("1st");
    assert_eq!(
        admissions
            .admit(&route, l, ip("2001:db8:1:2:ffff::9"), now)
            .unwrap_err(),
        Denied::ClientConnections
    );
    assert!(
        admissions
            .admit(&route, l, ip("2001:db8:1:3::1"), now)
            .is_ok()
    );
    assert_eq!(
        ClientKey::of(ip("::ffff:10.0.0.1")),
        ClientKey::of(ip("10.0.0.1"))
    );
}

#[test]
fn the_handshake_rate_allows_a_seconds_burst_then_refills() {
    let admissions = Arc::new(Admissions::default());
    let route: Arc<str> = "ns/a".into();
    let start = Instant::now();
    let l = limits(None, None, Some(2));
    let client = ip("10.0.0.1");
    let _a = admissions.admit(&route, l, client, start).expect("1");
    let _b = admissions.admit(&route, l, client, start).expect("2");
    assert_eq!(
        admissions.admit(&route, l, client, start).unwrap_err(),
        Denied::ClientRate(1)
    );
    // Another client has its own bucket.
    assert!(admissions.admit(&route, l, ip("10.0.0.2"), start).is_ok());
    // Half a second refills one handshake at 2 per second.
    let later = start + Duration::from_millis(500);
    assert!(admissions.admit(&route, l, client, later).is_ok());
    assert!(admissions.admit(&route, l, client, later).is_err());
}

#[test]
fn idle_clients_are_forgotten_so_the_map_stays_bounded() {
    let admissions = Arc::new(Admissions::default());
    let route: Arc<str> = "ns/a".into();
    let start = Instant::now();
    let l = limits(None, None, Some(1));
    for i in 0..1000u32 {
        let at = start + Duration::from_secs(u64::from(i) * 2);
        let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        drop(admissions.admit(&route, l, addr, at).expect("admitted"));
    }
    let clients = admissions.lock()["ns/a"].clients.len();
    assert!(clients < 200, "{clients} client entries kept");
}

#[test]
fn counts_survive_a_new_snapshot_of_the_same_route() {
    let admissions = Arc::new(Admissions::default());
    let now = Instant::now();
    let l = limits(Some(1), None, None);
    // Two snapshots build two labels with the same text.
    let before: Arc<str> = "ns/a".into();
    let after: Arc<str> = "ns/a".into();
    let _held = admissions
        .admit(&before, l, ip("10.0.0.1"), now)
        .expect("1st");
    assert_eq!(
        admissions
            .admit(&after, l, ip("10.0.0.2"), now)
            .unwrap_err(),
        Denied::RouteFull
    );
}
