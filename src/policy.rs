//! Origin policy: parsing and normalizing `Origin` header values (RFC 6454) and matching
//! them against a route's allow-list (DESIGN §5.1). Pure: depends on nothing but `idna`.

use std::collections::HashSet;
use std::fmt;

/// A serialized origin (RFC 6454 §6.2), normalized: lowercase scheme and host, the scheme's
/// default port elided.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: String,
    host: String,
    /// `None` is the scheme's default port (or a scheme without one).
    port: Option<u16>,
}

/// Why a received `Origin` value is not a serialized origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOrigin {
    /// More than one `Origin` header.
    #[error("more than one Origin header")]
    Multiple,
    /// A comma-separated list in one header.
    #[error("a list of origins")]
    List,
    /// Bytes that are not printable ASCII, or whitespace.
    #[error("whitespace, control or non-ASCII characters")]
    Characters,
    /// No `scheme://`.
    #[error("no scheme")]
    Scheme,
    /// A path, even a lone `/`.
    #[error("a path")]
    Path,
    /// A query string.
    #[error("a query")]
    Query,
    /// A fragment.
    #[error("a fragment")]
    Fragment,
    /// `user@` before the host.
    #[error("userinfo")]
    Userinfo,
    /// Nothing between `://` and the port.
    #[error("an empty host")]
    EmptyHost,
    /// A host that is neither a DNS name, an IPv4 address nor a bracketed IPv6 address.
    #[error("a malformed host")]
    Host,
    /// A port that is empty, not a number, or outside 1..65535.
    #[error("a port outside 1..65535")]
    Port,
}

/// RFC 6454 §4 step 4-ish defaults: the ports browsers elide when serializing.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )` (RFC 3986 §3.1).
fn valid_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// A lowercase reg-name or IPv4 address: dot-separated labels of letters, digits, `-`, `_`.
fn valid_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').enumerate().all(|(i, label)| {
            // A single trailing dot (fully qualified name) is allowed; no other empty label.
            (label.is_empty() && i > 0 && host.ends_with('.') && host.len() > 1)
                || (!label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        })
}

fn valid_ipv6(inner: &str) -> bool {
    inner.parse::<std::net::Ipv6Addr>().is_ok()
}

/// Splits `host[:port]` where host may be a bracketed IPv6 literal. Returns the host (with
/// brackets) and the port text, if any.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), InvalidOrigin> {
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']').ok_or(InvalidOrigin::Host)?;
        let (host, after) = authority.split_at(end + 2);
        match after {
            "" => Ok((host, None)),
            _ => after
                .strip_prefix(':')
                .map(|p| (host, Some(p)))
                .ok_or(InvalidOrigin::Host),
        }
    } else {
        Ok(match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        })
    }
}

fn parse_port(text: &str) -> Result<u16, InvalidOrigin> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidOrigin::Port);
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(InvalidOrigin::Port),
        Ok(p) => Ok(p),
    }
}

/// Splits `scheme://authority` and rejects anything after the authority (RFC 6454 §6.2:
/// an origin serializes as scheme, host and port only).
fn split_origin(value: &str) -> Result<(String, &str), InvalidOrigin> {
    let (scheme, rest) = value.split_once("://").ok_or(InvalidOrigin::Scheme)?;
    if !valid_scheme(scheme) {
        return Err(InvalidOrigin::Scheme);
    }
    if let Some(i) = rest.find(['/', '?', '#']) {
        return Err(match rest.as_bytes()[i] {
            b'/' => InvalidOrigin::Path,
            b'?' => InvalidOrigin::Query,
            _ => InvalidOrigin::Fragment,
        });
    }
    if rest.contains('@') {
        return Err(InvalidOrigin::Userinfo);
    }
    Ok((scheme.to_ascii_lowercase(), rest))
}

impl Origin {
    /// Parses a received `Origin` value strictly (RFC 6454 §7.1 grammar, one origin).
    pub fn parse(value: &str) -> Result<Origin, InvalidOrigin> {
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidOrigin::Characters);
        }
        if value.contains(',') {
            return Err(InvalidOrigin::List);
        }
        let (scheme, authority) = split_origin(value)?;
        let (host, port) = split_host_port(authority)?;
        if host.is_empty() {
            return Err(InvalidOrigin::EmptyHost);
        }
        let host = host.to_ascii_lowercase();
        let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(inner) => valid_ipv6(inner),
            None => valid_name(&host),
        };
        if !host_ok {
            return Err(InvalidOrigin::Host);
        }
        let port = port.map(parse_port).transpose()?;
        let port = port.filter(|p| Some(*p) != default_port(&scheme));
        Ok(Origin { scheme, host, port })
    }

    /// The scheme, lowercase.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The host, lowercase (IPv6 in brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, `None` when it is the scheme's default.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

impl fmt::Display for Origin {
    /// RFC 6454 §6.2: `scheme "://" host [ ":" port ]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// What a handshake carried in its `Origin` header(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOrigin {
    /// No `Origin` header: a non-browser client.
    Missing,
    /// The opaque origin `null` (sandboxed iframes, `file://`).
    Null,
    /// A well-formed origin, normalized.
    Valid(Origin),
    /// Anything else; always denied.
    Invalid(InvalidOrigin),
}

impl RequestOrigin {
    /// Classifies every value of the `Origin` header as received (0, 1 or several).
    pub fn from_header_values<'a, I: IntoIterator<Item = &'a [u8]>>(values: I) -> RequestOrigin {
        let mut values = values.into_iter();
        let Some(first) = values.next() else {
            return RequestOrigin::Missing;
        };
        if values.next().is_some() {
            return RequestOrigin::Invalid(InvalidOrigin::Multiple);
        }
        let Ok(text) = std::str::from_utf8(first) else {
            return RequestOrigin::Invalid(InvalidOrigin::Characters);
        };
        if text == "null" {
            return RequestOrigin::Null;
        }
        match Origin::parse(text) {
            Ok(o) => RequestOrigin::Valid(o),
            Err(e) => RequestOrigin::Invalid(e),
        }
    }

    /// Stable short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RequestOrigin::Missing => "missing",
            RequestOrigin::Null => "null",
            RequestOrigin::Valid(_) => "valid",
            RequestOrigin::Invalid(_) => "invalid",
        }
    }
}

/// An origin pattern that is not one of the accepted forms, with what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("origin pattern `{pattern}` {reason}")]
pub struct InvalidPattern {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong and what to write instead.
    pub reason: String,
}

/// Which ports a pattern admits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PortRule {
    /// Exactly this one (`None`: the scheme's default).
    Is(Option<u16>),
    /// `:*`: any port, including the default.
    Any,
}

impl PortRule {
    fn admits(&self, port: Option<u16>) -> bool {
        match self {
            PortRule::Is(p) => *p == port,
            PortRule::Any => true,
        }
    }
}

/// `scheme://*.suffix[:port|:*]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wildcard {
    scheme: String,
    /// The domain after `*.`, with a leading dot: `.example.com`.
    dot_suffix: String,
    port: PortRule,
}

impl Wildcard {
    fn matches(&self, o: &Origin) -> bool {
        o.scheme == self.scheme
            && self.port.admits(o.port)
            && o.host.len() > self.dot_suffix.len()
            && o.host.ends_with(&self.dot_suffix)
    }
}

/// `scheme://host:*`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AnyPort {
    scheme: String,
    host: String,
}

/// A compiled allow-list plus the `null` and missing-header flags.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    exact: HashSet<Origin>,
    any_port: Vec<AnyPort>,
    wildcards: Vec<Wildcard>,
    any: bool,
    allow_null: bool,
    allow_missing: bool,
    /// The normalized patterns, in the order written, for display.
    written: Vec<String>,
}

impl OriginPolicy {
    /// Compiles an allow-list; the first invalid pattern is the error.
    pub fn new<S: AsRef<str>>(
        allow: &[S],
        allow_null: bool,
        allow_missing: bool,
    ) -> Result<OriginPolicy, InvalidPattern> {
        let mut policy = OriginPolicy {
            allow_null,
            allow_missing,
            ..OriginPolicy::default()
        };
        for pattern in allow {
            policy.add(pattern.as_ref())?;
        }
        Ok(policy)
    }

    fn add(&mut self, pattern: &str) -> Result<(), InvalidPattern> {
        let invalid = |reason: String| InvalidPattern {
            pattern: pattern.to_owned(),
            reason,
        };
        if pattern == "*" {
            self.any = true;
            self.written.push("*".to_owned());
            return Ok(());
        }
        if pattern.eq_ignore_ascii_case("null") {
            return Err(invalid(
                "is not a pattern: set `allowNull: true` to admit the `null` origin".to_owned(),
            ));
        }
        if pattern
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
        {
            return Err(invalid(
                "must be one origin without spaces or commas: list each origin separately"
                    .to_owned(),
            ));
        }
        let Some((scheme, _)) = pattern.split_once("://") else {
            return Err(invalid(format!(
                "needs a scheme: write `https://{}`",
                pattern.trim_start_matches("//")
            )));
        };
        if !valid_scheme(scheme) {
            return Err(invalid(format!(
                "has an invalid scheme `{scheme}`: write e.g. `https://app.example.com`"
            )));
        }
        let scheme = scheme.to_ascii_lowercase();
        let rest = &pattern[scheme.len() + 3..];
        if let Some(i) = rest.find(['/', '?', '#']) {
            let authority = &rest[..i];
            return Err(invalid(format!(
                "must not have a path, query or fragment: write `{scheme}://{authority}`"
            )));
        }
        if rest.contains('@') {
            return Err(invalid(
                "must not have userinfo (`user@`): write only scheme, host and port".to_owned(),
            ));
        }
        let (host, port_text) = split_host_port(rest).map_err(|_| {
            invalid(
                "has a malformed host: write e.g. `https://app.example.com` or `http://[::1]:8080`"
                    .to_owned(),
            )
        })?;
        let port = match port_text {
            None => PortRule::Is(None),
            Some("*") => PortRule::Any,
            Some(p) => {
                let port = parse_port(p).map_err(|_| {
                    invalid(format!(
                        "has port `{p}`: use a port in 1..65535, or `*` for any port"
                    ))
                })?;
                PortRule::Is(Some(port).filter(|p| Some(*p) != default_port(&scheme)))
            }
        };
        let port_text = match &port {
            PortRule::Is(None) => String::new(),
            PortRule::Is(Some(p)) => format!(":{p}"),
            PortRule::Any => ":*".to_owned(),
        };

        if let Some(domain) = host.strip_prefix("*.") {
            let domain = to_ascii_host(domain).map_err(invalid)?;
            let labels: Vec<&str> = domain.trim_end_matches('.').split('.').collect();
            if domain.contains('*') || domain.starts_with('[') {
                return Err(invalid(
                    "may use `*` only as the whole leftmost label, as in `https://*.example.com`"
                        .to_owned(),
                ));
            }
            if labels.len() < 2 {
                return Err(invalid(format!(
                    "must name a domain of at least two labels after `*.`, as in `{scheme}://*.example.com`"
                )));
            }
            if labels
                .last()
                .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(invalid(
                    "cannot put a wildcard on an IP address: list the address itself".to_owned(),
                ));
            }
            self.written
                .push(format!("{scheme}://*.{domain}{port_text}"));
            self.wildcards.push(Wildcard {
                scheme,
                dot_suffix: format!(".{domain}"),
                port,
            });
            return Ok(());
        }
        if host == "*" {
            return Err(invalid(format!(
                "must name a domain after `*.`: write e.g. `{scheme}://*.example.com`, or `*` alone for every origin"
            )));
        }
        if host.contains('*') {
            return Err(invalid(
                "may use `*` only as the whole leftmost label, as in `https://*.example.com`"
                    .to_owned(),
            ));
        }
        let host = if host.starts_with('[') {
            let lower = host.to_ascii_lowercase();
            if !lower
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .is_some_and(valid_ipv6)
            {
                return Err(invalid(
                    "has a malformed IPv6 address: write e.g. `http://[::1]:8080`".to_owned(),
                ));
            }
            lower
        } else {
            to_ascii_host(host).map_err(invalid)?
        };
        self.written.push(format!("{scheme}://{host}{port_text}"));
        match port {
            PortRule::Any => self.any_port.push(AnyPort { scheme, host }),
            PortRule::Is(port) => {
                self.exact.insert(Origin { scheme, host, port });
            }
        }
        Ok(())
    }

    /// Whether a handshake with this origin is admitted. Runs on every handshake:
    /// allocation-free.
    pub fn allows(&self, origin: &RequestOrigin) -> bool {
        match origin {
            RequestOrigin::Missing => self.allow_missing,
            RequestOrigin::Null => self.allow_null,
            RequestOrigin::Invalid(_) => false,
            RequestOrigin::Valid(o) => {
                self.any
                    || self.exact.contains(o)
                    || self
                        .any_port
                        .iter()
                        .any(|p| p.scheme == o.scheme && p.host == o.host)
                    || self.wildcards.iter().any(|w| w.matches(o))
            }
        }
    }

    /// Whether `*` is in the list (every web page may connect).
    pub fn allows_any_origin(&self) -> bool {
        self.any
    }

    /// The normalized patterns as written, for display.
    pub fn patterns(&self) -> impl Iterator<Item = String> + '_ {
        self.written.iter().cloned()
    }
}

/// Lowercases a host and converts Unicode labels to punycode (UTS #46).
fn to_ascii_host(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("has an empty host: write e.g. `https://app.example.com`".to_owned());
    }
    let ascii = idna::domain_to_ascii(host)
        .map_err(|_| format!("has a host `{host}` that is not a valid domain name"))?;
    if !valid_name(&ascii) {
        return Err(format!(
            "has a host `{host}` that is not a domain name or IPv4 address"
        ));
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests;
