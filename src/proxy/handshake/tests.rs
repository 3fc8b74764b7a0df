use super::*;
use crate::proxy::http1::headers_from;

fn upgrade(extra: &[(&'static str, &'static str)]) -> Vec<httparse::Header<'static>> {
    let mut pairs = vec![
        ("Upgrade", "WebSocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    pairs.extend_from_slice(extra);
    headers_from(&pairs)
}

fn without(
    mut headers: Vec<httparse::Header<'static>>,
    name: &str,
) -> Vec<httparse::Header<'static>> {
    headers.retain(|h| !h.name.eq_ignore_ascii_case(name));
    headers
}

fn response(r: Reject) -> String {
    let mut out = Vec::new();
    r.write_response(&mut out);
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn rfc6455_sample_key_gives_sample_accept() {
    let accept = validate("GET", Headers::new(&upgrade(&[]))).expect("valid");
    assert_eq!(accept.as_bytes(), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#[test]
fn post_or_missing_upgrade_is_not_websocket() {
    let h = upgrade(&[]);
    assert_eq!(
        validate("POST", Headers::new(&h)),
        Err(Reject::NotWebSocket)
    );
    let h = without(upgrade(&[]), "connection");
    assert_eq!(validate("GET", Headers::new(&h)), Err(Reject::NotWebSocket));
}

#[test]
fn version_other_than_13_is_426() {
    let h = without(upgrade(&[]), "sec-websocket-version");
    let mut h = h;
    h.extend(headers_from(&[("Sec-WebSocket-Version", "8")]));
    assert_eq!(validate("GET", Headers::new(&h)), Err(Reject::BadVersion));
    let r = response(Reject::BadVersion);
    assert!(r.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{r}");
    assert!(r.contains("\r\nsec-websocket-version: 13\r\n"), "{r}");
}

#[test]
fn key_must_be_base64_of_16_bytes() {
    for bad in [
        "",
        "abc",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZWVl",
    ] {
        let mut h = without(upgrade(&[]), "sec-websocket-key");
        h.extend(headers_from(&[("Sec-WebSocket-Key", bad)]));
        assert_eq!(
            validate("GET", Headers::new(&h)),
            Err(Reject::BadKey),
            "{bad}"
        );
    }
    let h = without(upgrade(&[]), "sec-websocket-key");
    assert_eq!(validate("GET", Headers::new(&h)), Err(Reject::BadKey));
    let h = upgrade(&[("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]);
    assert_eq!(
        validate("GET", Headers::new(&h)),
        Err(Reject::BadKey),
        "two keys"
    );
}

#[test]
fn subprotocol_offer_is_filtered_in_client_order() {
    let allowed = vec!["chat.v2".to_owned(), "chat.v1".to_owned()];
    let h = headers_from(&[
        ("sec-websocket-protocol", "evil, chat.v1"),
        ("Sec-WebSocket-Protocol", "chat.v2"),
    ]);
    assert_eq!(
        filter_subprotocols(Headers::new(&h), &allowed).expect("kept"),
        "chat.v1, chat.v2"
    );
    let none = headers_from(&[("sec-websocket-protocol", "evil")]);
    assert_eq!(filter_subprotocols(Headers::new(&none), &allowed), None);
    assert_eq!(filter_subprotocols(Headers::new(&[]), &allowed), None);
}

#[test]
fn rejections_are_fixed_plain_text_with_a_length_and_close_the_connection() {
    assert_eq!(
        response(Reject::OriginDenied),
        "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 19\r\nconnection: close\r\n\r\norigin not allowed\n"
    );
    assert!(response(Reject::NotWebSocket).contains("\r\nupgrade: websocket\r\n"));
    assert!(response(Reject::NotReady).contains("\r\nretry-after: 1\r\n"));
    assert!(response(Reject::HeadTooLarge).starts_with("HTTP/1.1 431 "));
}
