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

/// What the policy says about a plain request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Pass it; with the origin to name in `Access-Control-Allow-Origin`, when the request
    /// carried one the route allows.
    Admitted(Option<Origin>),
    /// Refuse it (403).
    Denied,
}

/// The request as the table reads it.
#[derive(Debug, Clone, Copy)]
pub struct Fetch<'a, I> {
    /// The `Origin` header, classified.
    pub origin: &'a RequestOrigin,
    /// Every `Sec-Fetch-Site` value the request carries.
    pub fetch_site: I,
    /// GET or HEAD: what a top-level navigation sends.
    pub navigation_method: bool,
    /// `http` or `https`: the listener the request came in on.
    pub scheme: &'a str,
    /// The request's `Host`, as sent (port included).
    pub host: &'a str,
}

/// Applies the table to one request.
pub fn admit<'h, I: Iterator<Item = &'h [u8]>>(
    policy: &OriginPolicy,
    request: Fetch<'_, I>,
) -> Admission {
    let Fetch {
        origin,
        mut fetch_site,
        navigation_method,
        scheme,
        host,
    } = request;
    let verdict = |allowed: bool, cors: Option<Origin>| match allowed {
        true => Admission::Admitted(cors),
        false => Admission::Denied,
    };
    if !matches!(origin, RequestOrigin::Missing) {
        let cors = match origin {
            RequestOrigin::Valid(o) => Some(o.clone()),
            _ => None,
        };
        return verdict(policy.allows(origin), cors);
    }
    let site = match (fetch_site.next(), fetch_site.next()) {
        (None, _) => return verdict(policy.allows(&RequestOrigin::Missing), None),
        (Some(site), None) => site,
        (Some(_), Some(_)) => return Admission::Denied,
    };
    match site {
        b"same-origin" => {
            let own = Origin::parse(&format!("{scheme}://{host}"))
                .map_or(RequestOrigin::Missing, RequestOrigin::Valid);
            verdict(
                matches!(own, RequestOrigin::Valid(_)) && policy.allows(&own),
                None,
            )
        }
        b"none" => verdict(navigation_method, None),
        _ => Admission::Denied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow_missing: bool) -> OriginPolicy {
        OriginPolicy::new(&["https://app.example.com"], false, allow_missing).expect("policy")
    }

    /// One row: the origin header (if any), the Sec-Fetch-Site values, the method.
    fn row(
        policy: &OriginPolicy,
        origin: Option<&str>,
        sites: &[&str],
        method: &str,
        host: &str,
    ) -> Admission {
        let origin = RequestOrigin::from_header_values(origin.map(str::as_bytes));
        admit(
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

    const HOST: &str = "app.example.com";

    #[test]
    fn a_present_origin_is_judged_by_the_allowlist_whatever_the_fetch_site_says() {
        let p = policy(false);
        let allowed = Origin::parse("https://app.example.com").ok();
        for site in [&[][..], &["cross-site"], &["same-origin"], &["none"]] {
            for method in ["GET", "POST"] {
                assert_eq!(
                    row(&p, Some("https://app.example.com"), site, method, HOST),
                    Admission::Admitted(allowed.clone())
                );
                assert_eq!(
                    row(&p, Some("https://evil.example"), site, method, HOST),
                    Admission::Denied
                );
                assert_eq!(row(&p, Some("null"), site, method, HOST), Admission::Denied);
            }
        }
        let with_null = OriginPolicy::new(&["https://app.example.com"], true, false).expect("p");
        assert_eq!(
            row(&with_null, Some("null"), &[], "POST", HOST),
            Admission::Admitted(None)
        );
    }

    #[test]
    fn same_origin_without_origin_is_judged_as_the_requests_own_origin() {
        let p = policy(false);
        assert_eq!(
            row(&p, None, &["same-origin"], "GET", "app.example.com:443"),
            Admission::Admitted(None)
        );
        assert_eq!(
            row(&p, None, &["same-origin"], "POST", HOST),
            Admission::Admitted(None)
        );
        // A page on another host of the gateway is same-origin with itself, not with the app.
        assert_eq!(
            row(&p, None, &["same-origin"], "GET", "other.example.com"),
            Admission::Denied
        );
        assert_eq!(
            row(&p, None, &["same-origin"], "GET", "bad host"),
            Admission::Denied
        );
    }

    #[test]
    fn a_navigation_the_user_started_passes_only_as_get_or_head() {
        let p = policy(false);
        for method in ["GET", "HEAD"] {
            assert_eq!(
                row(&p, None, &["none"], method, HOST),
                Admission::Admitted(None)
            );
        }
        assert_eq!(row(&p, None, &["none"], "POST", HOST), Admission::Denied);
    }

    #[test]
    fn cross_site_and_same_site_requests_without_origin_are_denied() {
        let p = policy(true);
        for site in ["cross-site", "same-site", "CROSS-SITE", "bogus", ""] {
            for method in ["GET", "POST"] {
                assert_eq!(
                    row(&p, None, &[site], method, HOST),
                    Admission::Denied,
                    "{site}"
                );
            }
        }
        assert_eq!(
            row(&p, None, &["same-origin", "same-origin"], "GET", HOST),
            Admission::Denied
        );
    }

    #[test]
    fn neither_header_is_judged_by_allow_missing() {
        assert_eq!(
            row(&policy(false), None, &[], "GET", HOST),
            Admission::Denied
        );
        assert_eq!(
            row(&policy(true), None, &[], "POST", HOST),
            Admission::Admitted(None)
        );
    }
}
