use proptest::prelude::*;

use super::*;

fn req(value: &str) -> RequestOrigin {
    RequestOrigin::from_header_values([value.as_bytes()])
}

fn policy(allow: &[&str]) -> OriginPolicy {
    OriginPolicy::new(allow, false, false).expect("valid patterns")
}

fn invalid(value: &str) -> InvalidOrigin {
    match req(value) {
        RequestOrigin::Invalid(e) => e,
        other => panic!("{value:?} should be invalid, got {other:?}"),
    }
}

fn pattern_error(p: &str) -> String {
    OriginPolicy::new(&[p], false, false)
        .expect_err(p)
        .to_string()
}

// === Normalization ===

#[test]
fn scheme_and_host_are_lowercased() {
    assert_eq!(
        Origin::parse("HTTPS://App.Example.COM")
            .expect("valid")
            .to_string(),
        "https://app.example.com"
    );
}

#[test]
fn default_ports_are_elided() {
    for (value, normal) in [
        ("https://a.com:443", "https://a.com"),
        ("http://a.com:80", "http://a.com"),
        ("wss://a.com:443", "wss://a.com"),
        ("ws://a.com:80", "ws://a.com"),
        ("https://a.com:80", "https://a.com:80"),
        ("http://a.com:443", "http://a.com:443"),
    ] {
        assert_eq!(Origin::parse(value).expect(value).to_string(), normal);
    }
}

#[test]
fn ip_hosts_are_valid() {
    assert_eq!(
        Origin::parse("http://127.0.0.1:3000").expect("v4").host(),
        "127.0.0.1"
    );
    let v6 = Origin::parse("http://[::1]:8080").expect("v6");
    assert_eq!((v6.host(), v6.port()), ("[::1]", Some(8080)));
    assert!(Origin::parse("http://[::1]").is_ok());
}

// === Invalid values ===

#[test]
fn path_even_a_trailing_slash_is_invalid() {
    assert_eq!(invalid("https://a.com/"), InvalidOrigin::Path);
    assert_eq!(invalid("https://a.com/x"), InvalidOrigin::Path);
}

#[test]
fn query_fragment_and_userinfo_are_invalid() {
    assert_eq!(invalid("https://a.com?x"), InvalidOrigin::Query);
    assert_eq!(invalid("https://a.com#f"), InvalidOrigin::Fragment);
    assert_eq!(invalid("https://u@a.com"), InvalidOrigin::Userinfo);
    assert_eq!(invalid("https://u:p@a.com"), InvalidOrigin::Userinfo);
}

#[test]
fn empty_host_and_bad_ports_are_invalid() {
    assert_eq!(invalid("https://"), InvalidOrigin::EmptyHost);
    assert_eq!(invalid("https://:443"), InvalidOrigin::EmptyHost);
    for port in ["0", "65536", "", "8o", "-1", "99999999"] {
        assert_eq!(
            invalid(&format!("https://a.com:{port}")),
            InvalidOrigin::Port,
            "{port}"
        );
    }
    assert!(Origin::parse("https://a.com:65535").is_ok());
    assert!(Origin::parse("https://a.com:1").is_ok());
}

#[test]
fn whitespace_control_and_non_ascii_are_invalid() {
    for v in [
        "https://a.com ",
        " https://a.com",
        "https://a\t.com",
        "https://a.com\r",
        "https://bücher.example",
    ] {
        assert_eq!(invalid(v), InvalidOrigin::Characters, "{v:?}");
    }
    assert_eq!(
        RequestOrigin::from_header_values([&[0xff, 0xfe][..]]),
        RequestOrigin::Invalid(InvalidOrigin::Characters)
    );
}

#[test]
fn two_origin_headers_or_a_list_are_invalid() {
    let two = RequestOrigin::from_header_values([
        b"https://a.com".as_slice(),
        b"https://a.com".as_slice(),
    ]);
    assert_eq!(two, RequestOrigin::Invalid(InvalidOrigin::Multiple));
    assert_eq!(invalid("https://a.com,https://b.com"), InvalidOrigin::List);
    assert_eq!(
        invalid("https://a.com, https://b.com"),
        InvalidOrigin::Characters
    );
}

#[test]
fn missing_scheme_and_malformed_hosts_are_invalid() {
    assert_eq!(invalid("a.com"), InvalidOrigin::Scheme);
    assert_eq!(invalid("1http://a.com"), InvalidOrigin::Scheme);
    assert_eq!(invalid("https://a..com"), InvalidOrigin::Host);
    assert_eq!(invalid("https://[::1"), InvalidOrigin::Host);
    assert_eq!(invalid("https://[zz]"), InvalidOrigin::Host);
}

#[test]
fn invalid_values_are_denied_even_by_star() {
    let p = policy(&["*"]);
    assert!(!p.allows(&req("https://a.com/")));
    assert!(p.allows(&req("https://a.com")));
}

// === null and missing ===

#[test]
fn null_matches_only_with_allow_null() {
    assert_eq!(req("null"), RequestOrigin::Null);
    assert!(!policy(&["*"]).allows(&RequestOrigin::Null));
    let p = OriginPolicy::new::<&str>(&[], true, false).expect("valid");
    assert!(p.allows(&RequestOrigin::Null));
    assert!(!p.allows(&RequestOrigin::Missing));
}

#[test]
fn missing_header_matches_only_with_allow_missing() {
    assert_eq!(
        RequestOrigin::from_header_values(std::iter::empty()),
        RequestOrigin::Missing
    );
    assert!(!policy(&["*"]).allows(&RequestOrigin::Missing));
    let p = OriginPolicy::new::<&str>(&[], false, true).expect("valid");
    assert!(p.allows(&RequestOrigin::Missing));
    assert!(!p.allows(&RequestOrigin::Null));
}

#[test]
fn empty_allow_list_denies_every_browser_origin() {
    let p = policy(&[]);
    assert!(!p.allows(&req("https://a.com")));
    assert!(!p.allows(&RequestOrigin::Missing));
}

// === Patterns ===

#[test]
fn exact_pattern_matches_its_origin_only_and_any_scheme_works() {
    let p = policy(&[
        "https://app.example.com",
        "http://localhost:3000",
        "chrome-extension://abcdef",
    ]);
    assert!(p.allows(&req("https://app.example.com")));
    assert!(p.allows(&req("https://APP.example.com:443")));
    assert!(!p.allows(&req("http://app.example.com")));
    assert!(!p.allows(&req("https://app.example.com:8443")));
    assert!(p.allows(&req("http://localhost:3000")));
    assert!(!p.allows(&req("http://localhost:3001")));
    assert!(!p.allows(&req("http://localhost")));
    assert!(p.allows(&req("chrome-extension://abcdef")));
}

#[test]
fn pattern_default_port_is_elided_too() {
    let p = policy(&["https://app.example.com:443"]);
    assert!(p.allows(&req("https://app.example.com")));
}

#[test]
fn wildcard_matches_subdomains_at_any_depth() {
    let p = policy(&["https://*.example.com"]);
    assert!(p.allows(&req("https://a.example.com")));
    assert!(p.allows(&req("https://a.b.example.com")));
}

#[test]
fn wildcard_does_not_match_bare_domain_or_look_alikes() {
    let p = policy(&["https://*.example.com"]);
    for evil in [
        "https://example.com",
        "https://evil-example.com",
        "https://evilexample.com",
        "https://example.com.evil.com",
        "http://a.example.com",
        "https://a.example.com:8443",
        "https://a.example.co",
    ] {
        assert!(!p.allows(&req(evil)), "{evil}");
    }
}

#[test]
fn any_port_admits_every_port_and_the_default() {
    let p = policy(&["http://localhost:*"]);
    for ok in [
        "http://localhost",
        "http://localhost:1",
        "http://localhost:3000",
        "http://localhost:65535",
    ] {
        assert!(p.allows(&req(ok)), "{ok}");
    }
    assert!(!p.allows(&req("https://localhost:3000")));
    assert!(!p.allows(&req("http://localhost.evil.com:3000")));
    let w = policy(&["https://*.example.com:*"]);
    assert!(w.allows(&req("https://a.example.com:8443")));
    assert!(w.allows(&req("https://a.example.com")));
    assert!(!w.allows(&req("https://example.com:8443")));
}

#[test]
fn star_admits_every_well_formed_origin_and_is_flagged() {
    let p = policy(&["*"]);
    assert!(p.allows_any_origin());
    assert!(p.allows(&req("https://anything.example")));
    assert!(!policy(&["https://a.com"]).allows_any_origin());
}

#[test]
fn unicode_pattern_hosts_become_punycode() {
    let p = policy(&["https://*.bücher.example", "https://münchen.example"]);
    assert!(p.allows(&req("https://shop.xn--bcher-kva.example")));
    assert!(p.allows(&req("https://xn--mnchen-3ya.example")));
    let written: Vec<String> = p.patterns().collect();
    assert_eq!(
        written,
        [
            "https://*.xn--bcher-kva.example",
            "https://xn--mnchen-3ya.example"
        ]
    );
}

#[test]
fn bad_patterns_name_themselves_and_say_what_to_write() {
    for (pattern, needle) in [
        ("https://*", "must name a domain after `*.`"),
        ("https://*.com", "at least two labels"),
        ("https://a.*.com", "whole leftmost label"),
        ("https://*a.example.com", "whole leftmost label"),
        (
            "https://app.example.com/",
            "write `https://app.example.com`",
        ),
        ("https://app.example.com/ws", "must not have a path"),
        ("app.example.com", "write `https://app.example.com`"),
        ("null", "allowNull: true"),
        ("https://a.com:0", "1..65535"),
        ("https://a.com:x", "1..65535"),
        ("https://u@a.com", "userinfo"),
        ("https://a.com, https://b.com", "separately"),
        ("https://*.0.0.1", "IP address"),
        ("https://", "empty host"),
        ("*://a.com", "invalid scheme"),
    ] {
        let message = pattern_error(pattern);
        assert!(message.contains(&format!("`{pattern}`")), "{message}");
        assert!(message.contains(needle), "{pattern}: {message}");
    }
}

#[test]
fn kind_labels_are_stable() {
    assert_eq!(RequestOrigin::Missing.kind(), "missing");
    assert_eq!(req("null").kind(), "null");
    assert_eq!(req("https://a.com").kind(), "valid");
    assert_eq!(req("https://a.com/").kind(), "invalid");
}

// === Properties ===

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
}

/// Two to four labels, the last alphabetic (a top-level domain, not an IP address).
fn domain() -> impl Strategy<Value = String> {
    (prop::collection::vec(label(), 1..4), "[a-z]{2,6}")
        .prop_map(|(l, tld)| format!("{}.{tld}", l.join(".")))
}

proptest! {
    #[test]
    fn wildcard_matches_exactly_the_hosts_under_its_domain(d in domain(), h in domain(), sub in label()) {
        let p = policy(&[&format!("https://*.{d}")]);
        let inside = h.ends_with(&format!(".{d}"));
        prop_assert_eq!(p.allows(&req(&format!("https://{h}"))), inside);
        let inner = format!("https://{sub}.{d}");
        prop_assert!(p.allows(&req(&inner)));
    }

    #[test]
    fn look_alikes_never_match_a_wildcard(d in domain(), evil in label()) {
        let p = policy(&[&format!("https://*.{d}")]);
        for attack in [
            d.clone(),
            format!("{d}.{evil}.com"),
            format!("{evil}{d}"),
            format!("{evil}-{d}"),
            format!("{evil}.{d}x"),
        ] {
            prop_assert!(!p.allows(&req(&format!("https://{attack}"))), "{} matched {}", attack, d);
        }
        let other_scheme = format!("http://{evil}.{d}");
        let other_port = format!("https://{evil}.{d}:8443");
        prop_assert!(!p.allows(&req(&other_scheme)));
        prop_assert!(!p.allows(&req(&other_port)));
    }

    #[test]
    fn case_never_changes_a_verdict(d in domain(), sub in label()) {
        let p = policy(&[&format!("https://*.{d}")]);
        let upper = format!("HTTPS://{}.{}", sub.to_uppercase(), d.to_uppercase());
        prop_assert!(p.allows(&req(&upper)));
    }

    #[test]
    fn valid_origins_round_trip_through_display(
        scheme in "(http|https|ws|wss|chrome-extension)",
        host in domain(),
        port in proptest::option::of(1u16..),
    ) {
        let text = match port {
            Some(p) => format!("{scheme}://{host}:{p}"),
            None => format!("{scheme}://{host}"),
        };
        let o = Origin::parse(&text).expect("valid");
        prop_assert_eq!(Origin::parse(&o.to_string()).expect("valid"), o);
    }
}
