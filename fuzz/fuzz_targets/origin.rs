//! `Origin` header values and allow-list patterns: parsing, normalization and matching
//! (docs/design.md §5.1). Input: a header value, then allow patterns, one per line.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::policy::{Origin, OriginPolicy, RequestOrigin};

fuzz_target!(|input: &str| {
    let mut lines = input.split('\n');
    let value = lines.next().unwrap_or_default();
    let patterns: Vec<&str> = lines.collect();
    let request = RequestOrigin::from_header_values([value.as_bytes()]);

    if let Ok(origin) = Origin::parse(value) {
        // Normalization is idempotent: the serialized form parses to the same origin.
        let again = Origin::parse(&origin.to_string()).expect("a normalized origin parses");
        assert_eq!(again, origin, "{value:?}");
        // Nothing an origin may not carry survives parsing.
        let text = origin.to_string();
        let after_scheme = text.split_once("://").map_or("", |(_, rest)| rest);
        assert!(
            !after_scheme.contains(['/', '?', '#', '@', ' ']),
            "{text:?} from {value:?}"
        );
        // `*` admits every well-formed origin.
        let any = OriginPolicy::new(&["*"], false, false).expect("`*` is a valid pattern");
        assert!(any.allows(&request), "`*` refused {value:?}");
        // A wildcard admits only proper subdomains of its suffix.
        let wild =
            OriginPolicy::new(&["https://*.example.com"], false, false).expect("valid pattern");
        if wild.allows(&request) {
            assert_eq!(origin.scheme(), "https");
            assert!(origin.host().ends_with(".example.com"), "{value:?}");
            assert!(origin.host().len() > ".example.com".len());
        }
    }
    // `null` and a missing header only ever pass by their own flags.
    let any = OriginPolicy::new(&["*"], false, false).expect("valid pattern");
    assert!(!any.allows(&RequestOrigin::from_header_values([b"null".as_slice()])));
    assert!(!any.allows(&RequestOrigin::from_header_values(std::iter::empty())));

    if let Ok(policy) = OriginPolicy::new(&patterns, false, false) {
        if policy.allows(&request) {
            assert!(
                Origin::parse(value).is_ok(),
                "an invalid origin {value:?} was admitted"
            );
        }
    }
});
