use super::*;
use tokio::io::AsyncWriteExt;

#[test]
fn a_head_ends_at_its_blank_line_with_or_without_carriage_returns() {
    assert_eq!(
        head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest", 0),
        Some(27)
    );
    assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nrest", 0), Some(24));
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0), None);
}

#[tokio::test]
async fn a_head_split_across_reads_is_found_and_what_follows_is_kept() {
    let (mut client, mut server) = tokio::io::duplex(64);
    let writer = tokio::spawn(async move {
        for part in [&b"GET / HTTP/1.1\r\nHost: a\r"[..], b"\n\r", b"\nFRAME"] {
            client.write_all(part).await.expect("write");
            tokio::task::yield_now().await;
        }
        client
    });
    let mut buf = Vec::new();
    let end = read_head(&mut server, &mut buf, 1024).await.expect("head");
    assert_eq!(&buf[..end], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let _client = writer.await.expect("writer");
    let mut rest = buf[end..].to_vec();
    while rest.len() < 5 {
        let mut more = [0u8; 8];
        let n = server.read(&mut more).await.expect("read");
        rest.extend_from_slice(&more[..n]);
    }
    assert_eq!(rest, b"FRAME");
}

#[tokio::test]
async fn a_head_over_the_limit_or_cut_short_is_an_error() {
    let (mut client, mut server) = tokio::io::duplex(4096);
    client
        .write_all(format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(300)).as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    assert!(matches!(
        read_head(&mut server, &mut buf, 256).await,
        Err(HeadError::TooLarge(256))
    ));
    let (mut client, mut server) = tokio::io::duplex(4096);
    client
        .write_all(b"GET / HTTP/1.1\r\n")
        .await
        .expect("write");
    drop(client);
    assert!(matches!(
        read_head(&mut server, &mut Vec::new(), 256).await,
        Err(HeadError::Closed)
    ));
}

#[test]
fn headers_are_found_by_name_and_hop_by_hop_ones_recognized() {
    let raw = [
        httparse::Header {
            name: "Connection",
            value: b"keep-alive, Upgrade, X-Secret",
        },
        httparse::Header {
            name: "Sec-WebSocket-Protocol",
            value: b"a",
        },
        httparse::Header {
            name: "sec-websocket-protocol",
            value: b"b",
        },
    ];
    let h = Headers::new(&raw);
    assert_eq!(
        h.get_all("sec-websocket-protocol").collect::<Vec<_>>(),
        [b"a", b"b"]
    );
    assert!(h.has_token("connection", "upgrade"));
    assert!(!h.has_token("connection", "close"));
    assert!(h.is_hop_by_hop("x-secret", false));
    assert!(h.is_hop_by_hop("Keep-Alive", false));
    assert!(h.is_hop_by_hop("transfer-encoding", false));
    assert!(!h.is_hop_by_hop("transfer-encoding", true));
    assert!(!h.is_hop_by_hop("origin", false));
}

#[tokio::test]
async fn a_prefixed_socket_reads_its_prefix_first_in_any_read_size() {
    let (mut client, server) = tokio::io::duplex(64);
    client.write_all(b" world").await.expect("write");
    let mut io = Prefixed::new(server, b"hello");
    let mut got = Vec::new();
    let mut small = [0u8; 3];
    while got.len() < 11 {
        let n = io.read(&mut small).await.expect("read");
        got.extend_from_slice(&small[..n]);
    }
    assert_eq!(got, b"hello world");
}

#[test]
fn targets_split_into_authority_path_and_query() {
    assert_eq!(split_target("/a?b=c"), ("/a", Some("b=c")));
    assert_eq!(split_target("/a"), ("/a", None));
    assert_eq!(split_target("http://h:1?x"), ("/", Some("x")));
    assert_eq!(split_target("http://h/p"), ("/p", None));
    assert_eq!(absolute_form("http://h:1/p?x"), Some(("h:1", "/p?x")));
    assert_eq!(absolute_form("/p"), None);
}

#[test]
fn numbers_are_written_in_decimal() {
    let mut buf = [0; 20];
    assert_eq!(itoa(0, &mut buf), b"0");
    assert_eq!(itoa(431, &mut buf), b"431");
    assert_eq!(itoa(u64::MAX, &mut buf), b"18446744073709551615");
}
