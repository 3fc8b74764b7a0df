use super::*;

fn body_of(code: u16, headers: &[(&str, &str)]) -> RefusalBody {
    let parsed = http1::headers_from(headers);
    RefusalBody::of(code, Headers::new(&parsed))
}

#[test]
fn a_refusal_body_is_sized_by_status_then_framing_headers() {
    assert_eq!(body_of(204, &[("Content-Length", "5")]), RefusalBody::Empty);
    assert_eq!(body_of(304, &[]), RefusalBody::Empty);
    assert_eq!(
        body_of(403, &[("Content-Length", " 12 ")]),
        RefusalBody::Length(12)
    );
    // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
    assert_eq!(
        body_of(
            403,
            &[("Transfer-Encoding", "chunked"), ("Content-Length", "5")]
        ),
        RefusalBody::UntilClose
    );
    assert_eq!(body_of(401, &[]), RefusalBody::UntilClose);
    assert_eq!(
        body_of(401, &[("Content-Length", "lots")]),
        RefusalBody::UntilClose
    );
}

#[test]
fn a_refusal_body_passed_on_is_capped() {
    assert_eq!(RefusalBody::Length(5).limit(1024), 5);
    assert_eq!(RefusalBody::Length(5000).limit(1024), 1024);
    assert_eq!(RefusalBody::UntilClose.limit(1024), 1024);
    assert_eq!(RefusalBody::Empty.limit(1024), 0);
}
