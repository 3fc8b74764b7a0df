use super::*;

fn client() -> ClientInfo {
    ClientInfo {
        addr: "192.0.2.7:5555".parse().expect("addr"),
        ip: "192.0.2.7".parse().expect("ip"),
        proto: "http",
        version: "1.1",
    }
}

fn upstream(path: Option<&str>) -> Upstream {
    Upstream {
        targets: vec![],
        path: path.map(str::to_owned),
        tls: None,
        client_affinity: false,
    }
}

fn client_headers() -> Vec<httparse::Header<'static>> {
    http1::headers_from(&[
        ("Host", "chat.example.com"),
        ("Origin", "https://app.example.com"),
        ("Connection", "keep-alive, Upgrade, x-secret, Origin, Host"),
        ("Upgrade", "websocket"),
        ("x-secret", "1"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("Forwarded", "for=203.0.113.9;proto=https"),
        ("X-Real_IP", "203.0.113.66"),
        ("X-User_Id", "mallory"),
        ("X-Forwarded-Proto", "https"),
        ("Sec-WebSocket-Protocol", "evil, chat"),
        ("Sec-WebSocket-Extensions", "x-evil, permessage-deflate"),
        ("X-User-Id", "mallory"),
    ])
}

fn forwarded(target: &str, path: Option<&str>, subprotocols: Option<&str>) -> String {
    forwarded_with(target, path, subprotocols, Claims::default())
}

fn forwarded_with(
    target: &str,
    path: Option<&str>,
    subprotocols: Option<&str>,
    claims: Claims<'_>,
) -> String {
    forward(
        target,
        &upstream(path),
        Forwarding {
            client: client(),
            trusted_peer: false,
            subprotocols,
            extensions: Some("permessage-deflate"),
            claims,
        },
    )
}

fn forward(target: &str, upstream: &Upstream, forwarding: Forwarding<'_>) -> String {
    let headers = client_headers();
    let out = forward_request(target, Headers::new(&headers), upstream, forwarding);
    String::from_utf8(out).expect("utf-8")
}

/// The forwarded request's header lines equal to `want`, counted.
fn count(request: &str, want: &str) -> usize {
    request.split("\r\n").filter(|l| *l == want).count()
}

#[test]
fn claim_headers_replace_whatever_the_client_sent_under_their_names() {
    let added = [("x-user-id".to_owned(), "alice".to_owned())];
    let out = forwarded_with(
        "/ws",
        None,
        None,
        Claims {
            dropped: &["x-user-id".to_owned()],
            added: &added,
        },
    );
    assert!(out.contains("x-user-id: alice\r\n"), "{out}");
    assert!(!out.contains("mallory"), "{out}");
}

#[test]
fn every_target_is_tried_once_in_turn_from_a_random_start() {
    let targets: Vec<Target> = (1..=4)
        .map(|port| Target {
            host: "10.0.0.1".into(),
            port,
        })
        .collect();
    let mut starts = std::collections::HashSet::new();
    for _ in 0..200 {
        let ports: Vec<u16> = order(&targets, None).map(|t| t.port).collect();
        assert_eq!(ports.len(), 4);
        let start = ports[0];
        let expected: Vec<u16> = (0..4).map(|i| (start - 1 + i) % 4 + 1).collect();
        assert_eq!(ports, expected);
        starts.insert(start);
    }
    assert_eq!(starts.len(), 4, "every endpoint gets to be first");
    assert_eq!(order(&[], None).count(), 0);
}

#[test]
fn under_affinity_a_client_keeps_its_target_and_only_a_removed_targets_clients_move() {
    let targets: Vec<Target> = (1..=3)
        .map(|port| Target {
            host: "10.0.0.1".into(),
            port,
        })
        .collect();
    let clients: Vec<std::net::IpAddr> = (1..=60u8)
        .map(|i| std::net::IpAddr::from([192, 0, 2, i]))
        .collect();
    let first = |targets: &[Target], c| order(targets, Some(c)).next().map(|t| t.port);
    let mut used = std::collections::HashSet::new();
    for &c in &clients {
        let port = first(&targets, c);
        assert_eq!(first(&targets, c), port, "the same client, the same target");
        assert_eq!(
            order(&targets, Some(c)).count(),
            3,
            "the rest stay as fallbacks"
        );
        used.insert(port);
    }
    assert_eq!(used.len(), 3, "clients spread over every target");
    let without_second: Vec<Target> = targets.iter().filter(|t| t.port != 2).cloned().collect();
    for &c in &clients {
        if first(&targets, c) != Some(2) {
            assert_eq!(first(&without_second, c), first(&targets, c));
        }
    }
}

#[test]
fn path_and_query_pass_through_unchanged() {
    assert!(forwarded("/ws/room?id=7", None, None).starts_with("GET /ws/room?id=7 HTTP/1.1\r\n"));
    assert!(
        forwarded("http://chat.example.com/ws?id=7", None, None)
            .starts_with("GET /ws?id=7 HTTP/1.1\r\n"),
        "absolute form"
    );
}

#[test]
fn url_path_replaces_request_path_and_keeps_query() {
    assert!(
        forwarded("/ws/room?id=7", Some("/socket"), None)
            .starts_with("GET /socket?id=7 HTTP/1.1\r\n")
    );
}

#[test]
fn forwarding_headers_are_set_and_origin_passes_through() {
    let r = forwarded("/", None, Some("chat"));
    for want in [
        "x-forwarded-for: 192.0.2.7",
        "forwarded: for=192.0.2.7;proto=http;host=\"chat.example.com\"",
        "x-real-ip: 192.0.2.7",
        "x-forwarded-proto: http",
        "x-forwarded-host: chat.example.com",
        "Origin: https://app.example.com",
        "Host: chat.example.com",
        "upgrade: websocket",
        "connection: Upgrade",
        "sec-websocket-protocol: chat",
        "sec-websocket-extensions: permessage-deflate",
    ] {
        assert_eq!(count(&r, want), 1, "{want} once in {r}");
    }
    assert!(
        !r.to_ascii_lowercase().contains("x-secret"),
        "headers named by Connection are hop-by-hop: {r}"
    );
    assert!(!r.contains("X-Forwarded-Proto: https"), "{r}");
    assert!(!r.contains("evil"), "{r}");
    assert!(r.ends_with("\r\n\r\n"));
}

#[test]
fn an_untrusted_peers_forwarding_lists_and_underscore_spellings_are_dropped() {
    let r = forwarded("/", None, None);
    assert!(!r.contains("203.0.113"), "{r}");
    assert!(!r.contains("X-Real_IP"), "{r}");
    // Not a header the gateway sets here (no claim is forwarded): passed on.
    assert!(r.contains("X-User_Id: mallory\r\n"), "{r}");
}

#[test]
fn a_trusted_peers_forwarding_lists_are_appended_to() {
    let r = forward(
        "/",
        &upstream(None),
        Forwarding {
            client: client(),
            trusted_peer: true,
            subprotocols: None,
            extensions: None,
            claims: Claims::default(),
        },
    );
    assert_eq!(
        count(&r, "x-forwarded-for: 203.0.113.9, 192.0.2.7"),
        1,
        "{r}"
    );
    let forwarded = "forwarded: for=203.0.113.9;proto=https, for=192.0.2.7;proto=http;host=\"chat.example.com\"";
    assert_eq!(count(&r, forwarded), 1, "{r}");
    assert!(!r.contains("203.0.113.66"), "{r}");
}

#[test]
fn an_ipv6_client_is_quoted_in_forwarded() {
    let r = forward(
        "/",
        &upstream(None),
        Forwarding {
            client: ClientInfo {
                addr: "[2001:db8::7]:5555".parse().expect("addr"),
                ip: "2001:db8::7".parse().expect("ip"),
                proto: "https",
                version: "1.1",
            },
            trusted_peer: false,
            subprotocols: None,
            extensions: None,
            claims: Claims::default(),
        },
    );
    let want = "forwarded: for=\"[2001:db8::7]\";proto=https;host=\"chat.example.com\"";
    assert_eq!(count(&r, want), 1, "{r}");
}
