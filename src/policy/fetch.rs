//! Which plain HTTP requests (not WebSocket upgrades) a route's origin policy admits. A
//! browser sends `Origin` on every WebSocket handshake but not on every request: a
//! cross-site `<script>` or `<img>` GET carries the visitor's cookies and no `Origin`. What
//! it does carry, in every current browser, is `Sec-Fetch-Site`, which no page can set. The
//! table (README, "Plain HTTP on a route"):
//!
//! | `Origin` | `Sec-Fetch-Site` | method | verdict |
//! |---|---|---|---|
//! | present | any | any | the allowlist decides, as for a handshake (`null` by `allowNull`) |
//! | absent | `same-origin` | any | the request's own origin (scheme and `Host`) decides, by the allowlist |
//! | absent | `none` | GET, HEAD | admitted: the user asked for the URL, no page did |
//! | absent | `none` | other | denied |
//! | absent | `same-site`, `cross-site`, anything else, or several | any | denied |
//! | absent | absent | any | `allowMissing` decides, as for a handshake |

use super::{Origin, OriginPolicy, RequestOrigin};

/// The request as the table reads it.
#[derive(Debug, Clone, Copy)]
pub struct Fetch<'a, I> {
    /// The `Origin` header, classified.
    pub origin: &'a RequestOrigin,
    /// Every `Sec-Fetch-Site` value the request carries.
    pub fetch_site: I,
    /// GET or HEAD: what a top-level navigation sends.
    pub navigation_method: bool,
    /// `http` or `https`: the listener the request came in on, or what a trusted proxy in
    /// front that terminates TLS says.
    pub scheme: &'a str,
    /// The request's `Host`, as sent (port included).
    pub host: &'a str,
}

/// Applies the table to one request: whether it may pass.
pub fn admits<'h, I: Iterator<Item = &'h [u8]>>(
    policy: &OriginPolicy,
    request: Fetch<'_, I>,
) -> bool {
    let Fetch {
        origin,
        mut fetch_site,
        navigation_method,
        scheme,
        host,
    } = request;
    if !matches!(origin, RequestOrigin::Missing) {
        return policy.allows(origin);
    }
    let site = match (fetch_site.next(), fetch_site.next()) {
        (None, _) => return policy.allows(&RequestOrigin::Missing),
        (Some(site), None) => site,
        (Some(_), Some(_)) => return false,
    };
    match site {
        b"same-origin" => Origin::parse(&format!("{scheme}://{host}"))
            .is_ok_and(|own| policy.allows(&RequestOrigin::Valid(own))),
        b"none" => navigation_method,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "app.example.com";

    fn policy(allow_null: bool, allow_missing: bool) -> OriginPolicy {
        OriginPolicy::new(&["https://app.example.com"], allow_null, allow_missing).expect("policy")
    }

    /// Whether a request passes: its Origin (if any), Sec-Fetch-Site values, method, Host.
    fn passes(
        policy: &OriginPolicy,
        origin: Option<&str>,
        sites: &[&str],
        method: &str,
        host: &str,
    ) -> bool {
        let origin = RequestOrigin::from_header_values(origin.map(str::as_bytes));
        admits(
            policy,
            Fetch {
                origin: &origin,
                fetch_site: sites.iter().map(|s| s.as_bytes()),
                navigation_method: matches!(method, "GET" | "HEAD"),
                scheme: "https",
                host,
            },
        )
    }

    #[test]
    fn a_present_origin_is_judged_by_the_allowlist_whatever_the_fetch_site_says() {
        let p = policy(false, false);
        for site in [&[][..], &["cross-site"], &["same-origin"], &["none"]] {
            for method in ["GET", "POST"] {
                assert!(passes(
                    &p,
                    Some("https://app.example.com"),
                    site,
                    method,
                    HOST
                ));
                assert!(!passes(
                    &p,
                    Some("https://evil.example"),
                    site,
                    method,
                    HOST
                ));
                assert!(!passes(&p, Some("null"), site, method, HOST));
            }
        }
        assert!(passes(
            &policy(true, false),
            Some("null"),
            &[],
            "POST",
            HOST
        ));
    }

    #[test]
    fn same_origin_without_origin_is_judged_as_the_requests_own_origin() {
        let p = policy(false, false);
        assert!(passes(
            &p,
            None,
            &["same-origin"],
            "GET",
            "app.example.com:443"
        ));
        assert!(passes(&p, None, &["same-origin"], "POST", HOST));
        // A page on another host of the gateway is same-origin with itself, not with the app.
        assert!(!passes(
            &p,
            None,
            &["same-origin"],
            "GET",
            "other.example.com"
        ));
        assert!(!passes(&p, None, &["same-origin"], "GET", "bad host"));
    }

    #[test]
    fn a_navigation_the_user_started_passes_only_as_get_or_head() {
        let p = policy(false, false);
        assert!(passes(&p, None, &["none"], "GET", HOST));
        assert!(passes(&p, None, &["none"], "HEAD", HOST));
        assert!(!passes(&p, None, &["none"], "POST", HOST));
    }

    #[test]
    fn cross_site_and_same_site_requests_without_origin_are_denied() {
        let p = policy(false, true);
        for site in ["cross-site", "same-site", "CROSS-SITE", "bogus", ""] {
            for method in ["GET", "POST"] {
                assert!(!passes(&p, None, &[site], method, HOST), "{site}");
            }
        }
        assert!(!passes(
            &p,
            None,
            &["same-origin", "same-origin"],
            "GET",
            HOST
        ));
    }

    #[test]
    fn neither_header_is_judged_by_allow_missing() {
        assert!(!passes(&policy(false, false), None, &[], "GET", HOST));
        assert!(passes(&policy(false, true), None, &[], "POST", HOST));
    }
}
