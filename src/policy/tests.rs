use proptest::prelude::*;

use super::*;

fn req(value: &str) -> RequestOrigin {
    RequestOrigin::from_header_values([value.as_bytes()])
}

fn normal(value: &str) -> String {
    match Origin::parse(value) {
        Ok(o) => o.to_string(),
        Err(e) => panic!("{value:?} should be valid: {e}"),
    }
}

fn invalid(value: &str) -> InvalidOrigin {
    match req(value) {
        RequestOrigin::Invalid(e) => e,
        other => panic!("{value:?} should be invalid, got {other:?}"),
    }
}

fn policy(allow: &[&str]) -> OriginPolicy {
    OriginPolicy::new(allow, false, false).expect("valid patterns")
}

fn allows(allow: &[&str], value: &str) -> bool {
    policy(allow).allows(&req(value))
}

fn pattern_error(p: &str) -> String {
    OriginPolicy::new(&[p], false, false)
        .expect_err(p)
        .to_string()
}

fn shown(p: &str) -> String {
    policy(&[p]).patterns().collect::<Vec<_>>().join(" ")
}

// === Normalization ===

#[test]
fn scheme_and_host_are_lowercased() {
    assert_eq!(normal("HTTPS://App.Example.COM"), "https://app.example.com");
    assert_eq!(
        normal("Chrome-Extension://ABCDEF"),
        "chrome-extension://abcdef"
    );
}

#[test]
fn default_https_port_is_elided() {
    assert_eq!(normal("https://a.com:443"), "https://a.com");
    assert_eq!(
        Origin::parse("https://a.com:443").expect("valid").port(),
        None
    );
    assert_eq!(
        Origin::parse("https://a.com:443").expect("valid"),
        Origin::parse("https://a.com").expect("valid")
    );
}

#[test]
fn default_http_port_is_elided() {
    assert_eq!(normal("http://a.com:80"), "http://a.com");
}

#[test]
fn default_ws_and_wss_ports_are_elided() {
    assert_eq!(normal("ws://a.com:80"), "ws://a.com");
    assert_eq!(normal("wss://a.com:443"), "wss://a.com");
}

#[test]
fn another_schemes_default_port_is_kept() {
    assert_eq!(normal("https://a.com:80"), "https://a.com:80");
    assert_eq!(normal("http://a.com:443"), "http://a.com:443");
    assert_eq!(normal("wss://a.com:80"), "wss://a.com:80");
    assert_eq!(
        normal("chrome-extension://abc:443"),
        "chrome-extension://abc:443"
    );
}

#[test]
fn explicit_port_is_kept() {
    let o = Origin::parse("http://localhost:3000").expect("valid");
    assert_eq!(
        (o.scheme(), o.host(), o.port()),
        ("http", "localhost", Some(3000))
    );
    assert_eq!(o.to_string(), "http://localhost:3000");
}

#[test]
fn ipv4_host_is_valid() {
    let o = Origin::parse("http://127.0.0.1:8080").expect("valid");
    assert_eq!((o.host(), o.port()), ("127.0.0.1", Some(8080)));
    assert_eq!(normal("https://10.0.0.1"), "https://10.0.0.1");
}

#[test]
fn non_canonical_ipv4_is_invalid() {
    // A browser would have sent these as dotted quads.
    for v in [
        "http://127.1",
        "http://0x7f.0.0.1",
        "http://127.0.0.01",
        "http://256.0.0.1",
        "http://1.2.3.4.5",
    ] {
        assert_eq!(invalid(v), InvalidOrigin::InvalidHost, "{v}");
    }
}

#[test]
fn bracketed_ipv6_host_is_valid() {
    let o = Origin::parse("http://[::1]:8080").expect("valid");
    assert_eq!((o.host(), o.port()), ("[::1]", Some(8080)));
    assert_eq!(o.to_string(), "http://[::1]:8080");
    assert_eq!(normal("https://[::1]"), "https://[::1]");
    assert_eq!(normal("https://[::1]:443"), "https://[::1]");
}

#[test]
fn ipv6_host_is_canonicalized_like_a_browser() {
    assert_eq!(normal("http://[0:0:0:0:0:0:0:1]"), "http://[::1]");
    assert_eq!(
        normal("http://[2001:DB8:0:0:1:0:0:1]"),
        "http://[2001:db8::1:0:0:1]"
    );
    assert_eq!(normal("http://[::ffff:1.2.3.4]"), "http://[::ffff:102:304]");
    assert_eq!(normal("http://[1::]"), "http://[1::]");
    assert_eq!(
        normal("http://[1:0:2:3:4:5:6:7]"),
        "http://[1:0:2:3:4:5:6:7]"
    );
}

#[test]
fn unbracketed_or_malformed_ipv6_is_invalid() {
    for v in [
        "http://::1",
        "http://[::1",
        "http://[::1]x",
        "http://[::g]",
        "http://[fe80::1%25eth0]",
    ] {
        assert_eq!(invalid(v), InvalidOrigin::InvalidHost, "{v}");
    }
}

#[test]
fn any_scheme_is_accepted() {
    assert_eq!(
        normal("chrome-extension://abcdef"),
        "chrome-extension://abcdef"
    );
    assert_eq!(normal("moz-extension://x.y"), "moz-extension://x.y");
    assert_eq!(normal("a+b.c-d://h"), "a+b.c-d://h");
}

// === Invalid values ===

#[test]
fn trailing_slash_is_invalid() {
    assert_eq!(invalid("https://a.com/"), InvalidOrigin::Path);
}

#[test]
fn path_is_invalid() {
    assert_eq!(invalid("https://a.com/x"), InvalidOrigin::Path);
    assert_eq!(invalid("https://a.com:8080/"), InvalidOrigin::Path);
}

#[test]
fn query_is_invalid() {
    assert_eq!(invalid("https://a.com?x"), InvalidOrigin::Query);
}

#[test]
fn fragment_is_invalid() {
    assert_eq!(invalid("https://a.com#f"), InvalidOrigin::Fragment);
}

#[test]
fn userinfo_is_invalid() {
    assert_eq!(invalid("https://u@a.com"), InvalidOrigin::Userinfo);
    assert_eq!(invalid("https://u:p@a.com"), InvalidOrigin::Userinfo);
    assert_eq!(invalid("https://a.com@evil.com"), InvalidOrigin::Userinfo);
}

#[test]
fn empty_host_is_invalid() {
    assert_eq!(invalid("https://"), InvalidOrigin::EmptyHost);
    assert_eq!(invalid("https://:443"), InvalidOrigin::EmptyHost);
}

#[test]
fn malformed_host_is_invalid() {
    for v in [
        "https://a..com",
        "https://.a.com",
        "https://a.com.",
        "https://*.a.com",
        "https://a!.com",
        "https://a%2e.com",
    ] {
        assert_eq!(invalid(v), InvalidOrigin::InvalidHost, "{v}");
    }
    let long_label = format!("https://{}.com", "a".repeat(64));
    assert_eq!(invalid(&long_label), InvalidOrigin::InvalidHost);
}

#[test]
fn port_zero_is_invalid() {
    assert_eq!(invalid("https://a.com:0"), InvalidOrigin::PortOutOfRange);
}

#[test]
fn port_65536_is_invalid() {
    assert_eq!(
        invalid("https://a.com:65536"),
        InvalidOrigin::PortOutOfRange
    );
    assert_eq!(
        invalid("https://a.com:99999999999999999999"),
        InvalidOrigin::PortOutOfRange
    );
    assert_eq!(normal("https://a.com:65535"), "https://a.com:65535");
    assert_eq!(normal("https://a.com:1"), "https://a.com:1");
}

#[test]
fn empty_port_is_invalid() {
    assert_eq!(invalid("https://a.com:"), InvalidOrigin::EmptyPort);
    assert_eq!(invalid("http://[::1]:"), InvalidOrigin::EmptyPort);
}

#[test]
fn non_digit_port_is_invalid() {
    assert_eq!(invalid("https://a.com:8o"), InvalidOrigin::InvalidPort);
    assert_eq!(invalid("https://a.com:-1"), InvalidOrigin::InvalidPort);
    assert_eq!(invalid("https://a.com:+443"), InvalidOrigin::InvalidPort);
    assert_eq!(invalid("https://a.com:80:90"), InvalidOrigin::InvalidPort);
    assert_eq!(invalid("https://a.com:*"), InvalidOrigin::InvalidPort);
}

#[test]
fn whitespace_inside_is_invalid() {
    for v in [
        "https://a .com",
        "https://a.com\t",
        "\thttps://a.com",
        "https://a.com\r",
        "https://a.com\r\nX: y",
        " https://a.com",
        "https://a.com ",
    ] {
        assert_eq!(invalid(v), InvalidOrigin::WhitespaceOrControl, "{v:?}");
    }
}

#[test]
fn control_characters_are_invalid() {
    for v in ["https://a.com\0", "https://a\x7f.com", "https://a\x01.com"] {
        assert_eq!(invalid(v), InvalidOrigin::WhitespaceOrControl, "{v:?}");
    }
}

#[test]
fn non_ascii_host_is_invalid() {
    assert_eq!(invalid("https://bücher.example"), InvalidOrigin::NonAscii);
    assert_eq!(
        normal("https://xn--bcher-kva.example"),
        "https://xn--bcher-kva.example"
    );
}

#[test]
fn non_utf8_bytes_are_invalid() {
    let value: &[u8] = b"https://a\xff.com";
    assert_eq!(
        RequestOrigin::from_header_values([value]),
        RequestOrigin::Invalid(InvalidOrigin::NotUtf8)
    );
}

#[test]
fn two_origin_headers_are_invalid() {
    let two: [&[u8]; 2] = [b"https://a.com", b"https://a.com"];
    assert_eq!(
        RequestOrigin::from_header_values(two),
        RequestOrigin::Invalid(InvalidOrigin::MultipleHeaders)
    );
    let with_null: [&[u8]; 2] = [b"null", b"https://a.com"];
    assert_eq!(
        RequestOrigin::from_header_values(with_null),
        RequestOrigin::Invalid(InvalidOrigin::MultipleHeaders)
    );
}

#[test]
fn comma_joined_list_is_invalid() {
    assert_eq!(invalid("https://a.com, https://b.com"), InvalidOrigin::List);
    assert_eq!(invalid("https://a.com,https://b.com"), InvalidOrigin::List);
    assert_eq!(invalid("https://a.com,"), InvalidOrigin::List);
}

#[test]
fn space_separated_list_is_invalid() {
    // RFC 6454 §7.1's own list form.
    assert_eq!(invalid("https://a.com https://b.com"), InvalidOrigin::List);
}

#[test]
fn empty_value_is_invalid() {
    assert_eq!(invalid(""), InvalidOrigin::Empty);
}

#[test]
fn missing_scheme_is_invalid() {
    assert_eq!(invalid("a.com"), InvalidOrigin::MissingScheme);
    assert_eq!(invalid("//a.com"), InvalidOrigin::MissingScheme);
    assert_eq!(invalid("https:a.com"), InvalidOrigin::MissingScheme);
}

#[test]
fn malformed_scheme_is_invalid() {
    assert_eq!(invalid("1http://a.com"), InvalidOrigin::InvalidScheme);
    assert_eq!(invalid("://a.com"), InvalidOrigin::InvalidScheme);
    assert_eq!(invalid("ht_tp://a.com"), InvalidOrigin::InvalidScheme);
}

#[test]
fn invalid_origin_message_does_not_echo_the_value() {
    let e = invalid("https://secret-host.example/path");
    assert_eq!(e, InvalidOrigin::Path);
    assert!(!e.to_string().contains("secret"), "{e}");
}

// === null and missing ===

#[test]
fn null_is_case_sensitive() {
    assert_eq!(req("null"), RequestOrigin::Null);
    assert_eq!(invalid("NULL"), InvalidOrigin::MissingScheme);
    assert_eq!(invalid("Null"), InvalidOrigin::MissingScheme);
}

#[test]
fn null_matches_only_with_allow_null() {
    let null = req("null");
    assert!(!policy(&["*"]).allows(&null));
    assert!(!policy(&["https://a.com"]).allows(&null));
    let p = OriginPolicy::new(&["https://a.com"], true, false).expect("valid");
    assert!(p.allows(&null));
    assert!(p.allows_null());
    assert!(!p.allows(&RequestOrigin::Missing));
}

#[test]
fn missing_header_matches_only_with_allow_missing() {
    let none: [&[u8]; 0] = [];
    let missing = RequestOrigin::from_header_values(none);
    assert_eq!(missing, RequestOrigin::Missing);
    assert!(!policy(&["*"]).allows(&missing));
    let p = OriginPolicy::new::<&str>(&[], false, true).expect("valid");
    assert!(p.allows(&missing));
    assert!(p.allows_missing());
    assert!(!p.allows(&req("null")));
}

#[test]
fn kind_labels_are_stable() {
    let none: [&[u8]; 0] = [];
    assert_eq!(RequestOrigin::from_header_values(none).kind(), "missing");
    assert_eq!(req("null").kind(), "null");
    assert_eq!(req("https://a.com").kind(), "valid");
    assert_eq!(req("https://a.com/").kind(), "invalid");
}

// === Matching ===

#[test]
fn empty_allow_list_denies_every_browser_origin() {
    let p = OriginPolicy::new::<&str>(&[], false, false).expect("valid");
    assert!(!p.allows(&req("https://a.com")));
    assert!(!p.allows(&req("http://localhost:3000")));
    assert!(!p.allows_any_origin());
    assert_eq!(p.patterns().count(), 0);
}

#[test]
fn exact_pattern_matches_its_origin() {
    assert!(allows(
        &["https://app.example.com"],
        "https://app.example.com"
    ));
    assert!(allows(&["http://localhost:3000"], "http://localhost:3000"));
    assert!(allows(
        &["chrome-extension://abcdef"],
        "chrome-extension://abcdef"
    ));
}

#[test]
fn exact_pattern_does_not_match_other_scheme_host_or_port() {
    let p = ["https://app.example.com"];
    assert!(!allows(&p, "http://app.example.com"));
    assert!(!allows(&p, "wss://app.example.com"));
    assert!(!allows(&p, "https://app.example.com:8443"));
    assert!(!allows(&p, "https://x.app.example.com"));
    assert!(!allows(&p, "https://example.com"));
    assert!(!allows(&["http://localhost:3000"], "http://localhost:3001"));
    assert!(!allows(&["http://localhost:3000"], "http://localhost"));
}

#[test]
fn uppercase_origin_matches_lowercase_pattern() {
    assert!(allows(
        &["https://app.example.com"],
        "HTTPS://APP.Example.com"
    ));
    assert!(allows(
        &["HTTPS://APP.EXAMPLE.COM"],
        "https://app.example.com"
    ));
}

#[test]
fn default_port_is_elided_on_both_sides() {
    assert!(allows(&["https://a.com"], "https://a.com:443"));
    assert!(allows(&["https://a.com:443"], "https://a.com"));
    assert!(allows(&["ws://a.com:80"], "ws://a.com"));
    assert_eq!(shown("https://a.com:443"), "https://a.com");
}

#[test]
fn ip_patterns_match() {
    assert!(allows(&["http://127.0.0.1:8080"], "http://127.0.0.1:8080"));
    assert!(allows(&["http://[::1]:8080"], "http://[::1]:8080"));
    assert!(allows(&["http://[0:0::1]:8080"], "http://[::1]:8080"));
    assert_eq!(shown("http://[0:0:0:0:0:0:0:1]:8080"), "http://[::1]:8080");
    assert!(!allows(&["http://[::1]:8080"], "http://127.0.0.1:8080"));
}

#[test]
fn wildcard_matches_subdomains_at_any_depth() {
    let p = ["https://*.example.com"];
    assert!(allows(&p, "https://a.example.com"));
    assert!(allows(&p, "https://a.b.example.com"));
    assert!(allows(&p, "https://A.Example.COM:443"));
}

#[test]
fn wildcard_does_not_match_bare_domain() {
    assert!(!allows(&["https://*.example.com"], "https://example.com"));
}

#[test]
fn wildcard_does_not_match_look_alikes() {
    let p = ["https://*.example.com"];
    assert!(!allows(&p, "https://evil-example.com"));
    assert!(!allows(&p, "https://evilexample.com"));
    assert!(!allows(&p, "https://example.com.evil.com"));
    assert!(!allows(&p, "https://a.example.co"));
    assert!(!allows(&p, "https://a.example.com.au"));
}

#[test]
fn wildcard_checks_scheme_and_port() {
    let p = ["https://*.example.com"];
    assert!(!allows(&p, "http://a.example.com"));
    assert!(!allows(&p, "https://a.example.com:8443"));
    assert!(allows(
        &["https://*.example.com:8443"],
        "https://a.example.com:8443"
    ));
    assert!(!allows(
        &["https://*.example.com:8443"],
        "https://a.example.com"
    ));
}

#[test]
fn any_port_admits_every_port_and_the_default() {
    let p = ["http://localhost:*"];
    assert!(allows(&p, "http://localhost:3000"));
    assert!(allows(&p, "http://localhost:1"));
    assert!(allows(&p, "http://localhost:65535"));
    assert!(allows(&p, "http://localhost"));
    assert!(allows(&p, "http://localhost:80"));
    assert!(!allows(&p, "https://localhost:3000"));
    assert!(!allows(&p, "http://localhost.evil.com:3000"));
    assert!(!allows(&p, "http://a.localhost:3000"));
    assert_eq!(shown("HTTP://LocalHost:*"), "http://localhost:*");
}

#[test]
fn any_port_combines_with_a_wildcard_host() {
    let p = ["https://*.example.com:*"];
    assert!(allows(&p, "https://a.example.com:8443"));
    assert!(allows(&p, "https://a.example.com"));
    assert!(!allows(&p, "https://example.com:8443"));
    assert!(!allows(&p, "http://a.example.com:8443"));
    assert_eq!(shown("https://*.example.com:*"), "https://*.example.com:*");
}

#[test]
fn star_admits_every_well_formed_origin_and_is_flagged() {
    let p = policy(&["*"]);
    assert!(p.allows_any_origin());
    assert!(p.allows(&req("https://anything.example")));
    assert!(p.allows(&req("chrome-extension://x")));
    assert!(!p.allows(&req("https://a.com/")));
    assert!(!p.allows(&req("null")));
    assert!(!p.allows(&RequestOrigin::Missing));
    assert!(!policy(&["https://a.com"]).allows_any_origin());
    assert_eq!(p.patterns().collect::<Vec<_>>(), ["*"]);
}

#[test]
fn invalid_values_are_denied_even_by_star() {
    let p = OriginPolicy::new(&["*"], true, true).expect("valid");
    for v in [
        "https://a.com/",
        "https://u@a.com",
        "https://a.com:0",
        "NULL",
        "",
    ] {
        assert!(!p.allows(&req(v)), "{v:?}");
    }
}

#[test]
fn unicode_pattern_hosts_become_punycode() {
    assert_eq!(
        shown("https://*.bücher.example"),
        "https://*.xn--bcher-kva.example"
    );
    assert_eq!(
        shown("https://BÜCHER.example"),
        "https://xn--bcher-kva.example"
    );
    assert!(allows(
        &["https://*.bücher.example"],
        "https://shop.xn--bcher-kva.example"
    ));
    assert!(allows(
        &["https://bücher.example"],
        "https://xn--bcher-kva.example"
    ));
}

#[test]
fn patterns_are_shown_normalized_in_order() {
    let p = policy(&[
        "HTTPS://App.Example.com:443",
        "http://localhost:*",
        "https://*.Example.com",
        "*",
    ]);
    assert_eq!(
        p.patterns().collect::<Vec<_>>(),
        [
            "https://app.example.com",
            "http://localhost:*",
            "https://*.example.com",
            "*"
        ]
    );
}

#[test]
fn several_patterns_combine() {
    let p = policy(&["https://a.com", "https://*.b.com", "http://localhost:*"]);
    assert!(p.allows(&req("https://a.com")));
    assert!(p.allows(&req("https://x.b.com")));
    assert!(p.allows(&req("http://localhost:5173")));
    assert!(!p.allows(&req("https://c.com")));
}

// === Pattern errors ===

#[test]
fn pattern_error_names_the_pattern() {
    let e = OriginPolicy::new(&["https://a.com", "https://*"], false, false).expect_err("bad");
    assert_eq!(e.pattern, "https://*");
    assert!(
        e.to_string().starts_with("origin pattern `https://*` "),
        "{e}"
    );
}

#[test]
fn bare_wildcard_host_is_an_error() {
    let e = pattern_error("https://*");
    assert!(e.contains("must name a domain after `*.`"), "{e}");
    assert!(e.contains("https://*.example.com"), "{e}");
}

#[test]
fn wildcard_over_one_label_is_an_error() {
    let e = pattern_error("https://*.com");
    assert!(e.contains("at least two labels"), "{e}");
    assert!(pattern_error("https://*.localhost").contains("at least two labels"));
}

#[test]
fn wildcard_over_an_ip_address_is_an_error() {
    for p in [
        "https://*.0.0.1",
        "https://*.1",
        "http://*.0x7f",
        "http://*.[::1]",
    ] {
        let e = pattern_error(p);
        assert!(e.contains("wildcard over an IP address"), "{e}");
    }
}

#[test]
fn star_elsewhere_is_an_error() {
    for p in [
        "https://a.*.com",
        "https://*a.example.com",
        "https://a*.example.com",
        "https://*.*.example.com",
        "https://**.example.com",
        "https://example.*",
    ] {
        let e = pattern_error(p);
        assert!(e.contains("only as the whole leftmost label"), "{p}: {e}");
    }
    let e = pattern_error("*://a.com");
    assert!(e.contains("must not use `*` in the scheme"), "{e}");
}

#[test]
fn pattern_with_a_path_is_an_error_that_says_what_to_write() {
    assert_eq!(
        pattern_error("https://app.example.com/"),
        "origin pattern `https://app.example.com/` must not have a path: write `https://app.example.com`"
    );
    assert!(pattern_error("https://a.com/x?y").contains("write `https://a.com`"));
}

#[test]
fn pattern_with_query_fragment_or_userinfo_is_an_error() {
    assert!(
        pattern_error("https://a.com?x").contains("must not have a query: write `https://a.com`")
    );
    assert!(
        pattern_error("https://a.com#f")
            .contains("must not have a fragment: write `https://a.com`")
    );
    assert!(pattern_error("https://u:p@a.com").contains("userinfo"));
    assert!(pattern_error("https://u:p@a.com").contains("write `https://a.com`"));
}

#[test]
fn null_pattern_is_an_error() {
    for p in ["null", "NULL"] {
        let e = pattern_error(p);
        assert!(e.contains("is not a pattern: set `allowNull: true`"), "{e}");
    }
}

#[test]
fn pattern_without_scheme_is_an_error_that_suggests_one() {
    assert_eq!(
        pattern_error("app.example.com"),
        "origin pattern `app.example.com` needs a scheme: write `https://app.example.com`"
    );
    assert!(pattern_error("//a.com").contains("write `https://a.com`"));
    assert!(pattern_error("*.example.com").contains("write `https://*.example.com`"));
    // No suggestion when adding a scheme would not fix it.
    assert!(pattern_error("*:*").contains("needs a scheme, as in"));
}

#[test]
fn pattern_port_errors_say_what_to_write() {
    assert!(pattern_error("https://a.com:0").contains("use a port in 1..65535"));
    assert!(pattern_error("https://a.com:65536").contains("use a port in 1..65535"));
    assert!(pattern_error("https://a.com:x").contains("use a port in 1..65535"));
    let e = pattern_error("https://a.com:");
    assert!(
        e.contains("write `https://a.com` for the default port"),
        "{e}"
    );
}

#[test]
fn pattern_host_errors_say_what_is_wrong() {
    assert!(pattern_error("https://").contains("empty host"));
    assert!(pattern_error("https://a..com").contains("not a"));
    assert!(pattern_error("https://a.com.").contains("trailing dot"));
    assert!(pattern_error("http://127.1").contains("dotted-quad"));
    assert!(pattern_error("http://[::g]").contains("malformed IPv6"));
    assert!(pattern_error("http://::1").contains("write `http://[::1]`"));
    assert!(pattern_error("1http://a.com").contains("malformed scheme"));
}

#[test]
fn pattern_with_whitespace_or_a_list_is_an_error() {
    assert_eq!(
        pattern_error(" https://a.com "),
        "origin pattern ` https://a.com ` must not have surrounding whitespace: write `https://a.com`"
    );
    assert!(pattern_error("https://a .com").contains("whitespace"));
    assert!(pattern_error("https://a.com, https://b.com").contains("each origin as its own entry"));
    assert!(pattern_error("").contains("is empty"));
}

// === Properties ===

fn label() -> impl Strategy<Value = String> {
    // `xn--` labels must be valid punycode in a pattern, which random text is not.
    "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?".prop_filter("not an A-label", |l| !l.starts_with("xn--"))
}

/// Two or more labels, the last one not all digits (so not an IP).
fn domain() -> impl Strategy<Value = String> {
    (prop::collection::vec(label(), 1..4), "[a-z][a-z0-9]{0,5}").prop_map(|(mut labels, tld)| {
        labels.push(tld);
        labels.join(".")
    })
}

/// Any host a browser may send: a name of one or more labels, IPv4 or IPv6.
fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(label(), 1..5)
            .prop_map(|l| l.join("."))
            .prop_filter("a browser reads a numeric last label as IPv4", |h| !ends_in_number(h)),
        4 => domain(),
        1 => any::<std::net::Ipv4Addr>().prop_map(|a| a.to_string()),
        1 => any::<std::net::Ipv6Addr>().prop_map(|a| format!("[{a}]")),
    ]
}

fn scheme() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("http".to_owned()),
        Just("https".to_owned()),
        Just("ws".to_owned()),
        Just("wss".to_owned()),
        "[a-zA-Z][a-zA-Z0-9+.-]{0,12}",
    ]
}

fn mixed_case(s: &str, flips: &[bool]) -> String {
    s.chars()
        .zip(flips.iter().cycle())
        .map(|(c, &up)| if up { c.to_ascii_uppercase() } else { c })
        .collect()
}

proptest! {
    #[test]
    fn wildcard_matches_only_longer_hosts_ending_in_dot_domain(d in domain(), h in host()) {
        let p = policy(&[&format!("https://*.{d}")]);
        let expected = h.ends_with(&format!(".{d}")) && h.len() > d.len() + 1;
        let value = format!("https://{h}");
        prop_assert_eq!(p.allows(&req(&value)), expected, "{}", value);
    }

    #[test]
    fn wildcard_matches_every_subdomain(d in domain(), subs in prop::collection::vec(label(), 1..3)) {
        let p = policy(&[&format!("https://*.{d}")]);
        let value = format!("https://{}.{d}", subs.join("."));
        prop_assert!(p.allows(&req(&value)), "{}", value);
    }

    #[test]
    fn wildcard_rejects_attacks(d in domain(), evil in label(), other_tld in "[a-z]{2,6}") {
        let p = policy(&[&format!("https://*.{d}")]);
        let (stem, last) = d.rsplit_once('.').expect("two labels");
        let mut attacks = vec![
            format!("{d}.evil.com"),
            format!("x.{d}.evil.com"),
            format!("{evil}{d}"),
            format!("evil-{d}"),
            d.clone(),
        ];
        // `x.D` with a different last label.
        if other_tld != last {
            attacks.push(format!("x.{stem}.{other_tld}"));
        }
        for host in attacks {
            let value = format!("https://{host}");
            prop_assert!(!p.allows(&req(&value)), "{} matched", value);
        }
    }

    #[test]
    fn mixed_case_of_an_allowed_host_matches(
        d in domain(),
        sub in label(),
        flips in prop::collection::vec(any::<bool>(), 1..8),
    ) {
        let exact = format!("https://{sub}.{d}");
        let mixed = mixed_case(&exact, &flips);
        let p = policy(&[&format!("https://*.{d}")]);
        prop_assert!(p.allows(&req(&mixed)), "{}", mixed);
        let q = policy(&[&mixed]);
        prop_assert!(q.allows(&req(&exact)), "{}", exact);
    }

    #[test]
    fn other_scheme_or_port_never_matches(
        d in domain(),
        sub in label(),
        s in scheme(),
        port in 1u16..=65535,
    ) {
        let p = policy(&[&format!("https://*.{d}"), &format!("https://{d}")]);
        let s = s.to_ascii_lowercase();
        let mut others = Vec::new();
        if s != "https" {
            others.push(format!("{s}://{sub}.{d}"));
            others.push(format!("{s}://{d}"));
        }
        if port != 443 {
            others.push(format!("https://{sub}.{d}:{port}"));
            others.push(format!("https://{d}:{port}"));
        }
        for value in others {
            prop_assert!(!p.allows(&req(&value)), "{} matched", value);
        }
    }

    #[test]
    fn valid_origins_round_trip_through_display(
        s in scheme(),
        h in host(),
        port in prop::option::of(1u16..=65535),
        flips in prop::collection::vec(any::<bool>(), 1..8),
    ) {
        let written = match port {
            Some(p) => format!("{s}://{h}:{p}"),
            None => format!("{s}://{h}"),
        };
        let written = mixed_case(&written, &flips);
        let origin = Origin::parse(&written).expect("generated origins are valid");
        let shown = origin.to_string();
        let again = Origin::parse(&shown).expect("display output is valid");
        prop_assert_eq!(&again, &origin);
        prop_assert_eq!(again.to_string(), shown);
        // And an exact pattern written as the received value admits it.
        prop_assert!(policy(&[&written]).allows(&RequestOrigin::Valid(origin)));
    }

    #[test]
    fn parse_never_panics(value in "\\PC{0,40}") {
        let _ = req(&value);
        let _ = OriginPolicy::new(&[&value], false, false);
    }

    #[test]
    fn star_admits_exactly_the_valid_values(value in "[a-zA-Z0-9:/.@?#\\[\\]*-]{0,24}") {
        let r = req(&value);
        prop_assert_eq!(policy(&["*"]).allows(&r), matches!(r, RequestOrigin::Valid(_)));
    }
}
