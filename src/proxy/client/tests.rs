use super::*;

fn trusted(ranges: &[&str]) -> TrustedProxies {
    TrustedProxies::new(ranges.iter().map(|r| r.parse().expect("cidr")).collect())
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
    let t = trusted(&["10.0.0.0/8"]);
    let xff = [&b"6.6.6.6"[..]];
    assert_eq!(t.client(ip("192.0.2.1"), xff.into_iter()), ip("192.0.2.1"));
}

#[test]
fn a_trusted_peer_hands_over_the_nearest_untrusted_hop() {
    let t = trusted(&["10.0.0.0/8", "fd00::/8"]);
    // A client-supplied (spoofed) entry on the left is not believed: the walk stops at
    // the first untrusted hop from the right.
    let xff = [&b"6.6.6.6, 203.0.113.9"[..], &b"10.1.1.1"[..]];
    assert_eq!(t.client(ip("10.0.0.2"), xff.into_iter()), ip("203.0.113.9"));
    let v6 = [&b"[2001:db8::7]:443, fd00::1"[..]];
    assert_eq!(t.client(ip("fd00::2"), v6.into_iter()), ip("2001:db8::7"));
    // IPv4-mapped peers count as their IPv4 address.
    let one = [&b"203.0.113.9"[..]];
    assert_eq!(
        t.client(ip("::ffff:10.0.0.2"), one.into_iter()),
        ip("203.0.113.9")
    );
}

#[test]
fn a_trusted_peer_without_forwarded_for_or_with_garbage_is_the_client() {
    let t = trusted(&["10.0.0.0/8"]);
    assert_eq!(t.client(ip("10.0.0.2"), std::iter::empty()), ip("10.0.0.2"));
    let junk = [&b"203.0.113.9, unknown"[..]];
    assert_eq!(t.client(ip("10.0.0.2"), junk.into_iter()), ip("10.0.0.2"));
    // All hops trusted: the leftmost one is the client.
    let inner = [&b"10.9.9.9, 10.1.1.1"[..]];
    assert_eq!(t.client(ip("10.0.0.2"), inner.into_iter()), ip("10.9.9.9"));
}

#[test]
fn proxy_v1_names_the_source_and_leaves_what_follows() {
    let input = b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n";
    let (len, source) = parse_proxy_header(input).expect("valid").expect("complete");
    assert_eq!(source, Some("203.0.113.9:51000".parse().expect("addr")));
    assert_eq!(&input[len..], b"GET / HTTP/1.1\r\n");
    let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n";
    let (_, source) = parse_proxy_header(v6).expect("valid").expect("complete");
    assert_eq!(source, Some("[2001:db8::7]:51000".parse().expect("addr")));
    let unknown = b"PROXY UNKNOWN\r\n";
    assert_eq!(
        parse_proxy_header(unknown).expect("valid"),
        Some((unknown.len(), None))
    );
}

fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x20 | command);
    out.push(family);
    out.extend_from_slice(&u16::try_from(addresses.len()).expect("len").to_be_bytes());
    out.extend_from_slice(addresses);
    out
}

#[test]
fn proxy_v2_names_the_source_and_local_keeps_the_peer() {
    let mut addresses = vec![203, 0, 113, 9, 10, 0, 0, 1];
    addresses.extend_from_slice(&51000u16.to_be_bytes());
    addresses.extend_from_slice(&443u16.to_be_bytes());
    let mut input = v2(1, 0x11, &addresses);
    let header_len = input.len();
    input.extend_from_slice(b"GET");
    let (len, source) = parse_proxy_header(&input)
        .expect("valid")
        .expect("complete");
    assert_eq!(
        (len, source),
        (header_len, Some("203.0.113.9:51000".parse().expect("addr")))
    );
    let local = v2(0, 0, &[]);
    assert_eq!(
        parse_proxy_header(&local).expect("valid"),
        Some((local.len(), None))
    );
}

#[test]
fn a_partial_header_waits_and_a_wrong_one_is_refused() {
    assert!(matches!(parse_proxy_header(b"PROXY TCP4 203.0"), Ok(None)));
    assert!(matches!(parse_proxy_header(b"\r\n\r\n\0"), Ok(None)));
    assert!(parse_proxy_header(b"GET / HTTP/1.1\r\n\r\n").is_err());
    assert!(parse_proxy_header(b"PROXY TCP4 nonsense\r\n").is_err());
}

#[tokio::test]
async fn reading_a_header_split_across_reads_keeps_the_rest() {
    let (mut client, mut server) = tokio::io::duplex(64);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        client
            .write_all(b"PROXY TCP4 203.0.113.9 ")
            .await
            .expect("write");
        tokio::task::yield_now().await;
        client
            .write_all(b"10.0.0.1 51000 443\r\nGET /")
            .await
            .expect("write");
    });
    let mut buf = Vec::new();
    let source = read_proxy_header(&mut server, &mut buf)
        .await
        .expect("header");
    writer.await.expect("writer");
    assert_eq!(source, Some("203.0.113.9:51000".parse().expect("addr")));
    assert_eq!(buf, b"GET /");
}
