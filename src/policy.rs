//! Origin policy: parses and normalizes `Origin` header values (RFC 6454) and matches them
//! against a route's compiled allow-list. Pure code that depends on nothing but `idna` and
//! `thiserror`.
//!
//! The received side is strict (anything a browser would not send is [`InvalidOrigin`] and
//! denied); the pattern side is forgiving about case, default ports and Unicode hosts but
//! rejects anything ambiguous with an [`InvalidPattern`] that says what to write instead.

pub mod fetch;

use std::collections::HashSet;
use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr};

/// A serialized origin (RFC 6454 §6.2), normalized: lowercase scheme and host, IPv6 hosts in
/// brackets and canonical form, the scheme's default port elided.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: String,
    host: String,
    /// `None` is the scheme's default port, or no port for a scheme without a default.
    port: Option<u16>,
}

impl Origin {
    /// Parses one received `Origin` value strictly: exactly `scheme "://" host [":" port]`
    /// in ASCII, nothing else (RFC 6454 §7.1 `serialized-origin`; `null` is not an origin).
    pub fn parse(value: &str) -> Result<Origin, InvalidOrigin> {
        check_received_characters(value)?;
        let parts = split(value).map_err(|e| match e {
            Syntax::NoScheme => InvalidOrigin::MissingScheme,
            Syntax::BadScheme => InvalidOrigin::InvalidScheme,
            Syntax::Path(_) => InvalidOrigin::Path,
            Syntax::Query(_) => InvalidOrigin::Query,
            Syntax::Fragment(_) => InvalidOrigin::Fragment,
            Syntax::Userinfo(_) => InvalidOrigin::Userinfo,
            Syntax::EmptyHost => InvalidOrigin::EmptyHost,
            Syntax::BadHost | Syntax::UnbracketedIpv6 => InvalidOrigin::InvalidHost,
        })?;
        let scheme = parts.scheme.to_ascii_lowercase();
        let host = normalize_ascii_host(&parts.host.to_ascii_lowercase())
            .map_err(|_| InvalidOrigin::InvalidHost)?;
        let port = match parts.port {
            None => None,
            Some(text) => Some(parse_port(text).map_err(|e| match e {
                PortError::Empty => InvalidOrigin::EmptyPort,
                PortError::NotDigits => InvalidOrigin::InvalidPort,
                PortError::OutOfRange => InvalidOrigin::PortOutOfRange,
            })?),
        };
        let port = elide_default_port(&scheme, port);
        Ok(Origin { scheme, host, port })
    }

    /// The scheme, lowercase.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The host, lowercase ASCII (punycode); an IPv6 address in brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The explicit port; `None` when it is the scheme's default (or there is none).
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

impl fmt::Display for Origin {
    /// RFC 6454 §6.2 serialization: `scheme "://" host [ ":" port ]`, the port only when it
    /// is not the scheme's default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// What a handshake carried in its `Origin` header(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOrigin {
    /// No `Origin` header: typically a non-browser client.
    Missing,
    /// The opaque origin, sent as the literal `null` (sandboxed frames, `file:` pages).
    Null,
    /// One well-formed origin, normalized.
    Valid(Origin),
    /// Anything else; always denied.
    Invalid(InvalidOrigin),
}

impl RequestOrigin {
    /// Classifies all values of the `Origin` header as received (0, 1 or several), raw
    /// bytes. RFC 6454 §7.1 allows one header whose value is `null` or origins; browsers send
    /// exactly one origin, so anything more is [`RequestOrigin::Invalid`].
    pub fn from_header_values<'a, I: IntoIterator<Item = &'a [u8]>>(values: I) -> RequestOrigin {
        let mut values = values.into_iter();
        let Some(first) = values.next() else {
            return RequestOrigin::Missing;
        };
        if values.next().is_some() {
            return RequestOrigin::Invalid(InvalidOrigin::MultipleHeaders);
        }
        let Ok(text) = std::str::from_utf8(first) else {
            return RequestOrigin::Invalid(InvalidOrigin::NotUtf8);
        };
        // RFC 6454 §7.1: `null` is %x6E %x75 %x6C %x6C, so case-sensitive.
        if text == "null" {
            return RequestOrigin::Null;
        }
        match Origin::parse(text) {
            Ok(origin) => RequestOrigin::Valid(origin),
            Err(e) => RequestOrigin::Invalid(e),
        }
    }

    /// Stable short label for metrics and logs: `missing`, `null`, `valid` or `invalid`.
    pub fn kind(&self) -> &'static str {
        match self {
            RequestOrigin::Missing => "missing",
            RequestOrigin::Null => "null",
            RequestOrigin::Valid(_) => "valid",
            RequestOrigin::Invalid(_) => "invalid",
        }
    }
}

/// Why a received `Origin` value is not one serialized origin. The messages never echo the
/// value: it is attacker-controlled and ends up in logs.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidOrigin {
    /// More than one `Origin` header.
    #[error("more than one Origin header")]
    MultipleHeaders,
    /// Bytes that are not UTF-8.
    #[error("the Origin header is not UTF-8")]
    NotUtf8,
    /// An empty value.
    #[error("the Origin header is empty")]
    Empty,
    /// Several origins in one value (comma- or space-separated).
    #[error("the Origin header holds a list of origins, not one")]
    List,
    /// Whitespace or a control character anywhere in the value.
    #[error("the Origin header contains whitespace or a control character")]
    WhitespaceOrControl,
    /// Non-ASCII characters: browsers send hosts as punycode.
    #[error("the Origin header contains non-ASCII characters (hosts must be punycode)")]
    NonAscii,
    /// No `scheme://` prefix.
    #[error("the Origin header has no `scheme://`")]
    MissingScheme,
    /// A scheme outside `[a-z][a-z0-9+.-]*`.
    #[error("the Origin header has a malformed scheme")]
    InvalidScheme,
    /// A path, even a lone trailing `/`.
    #[error("the Origin header has a path (even a lone `/` is one)")]
    Path,
    /// A query string.
    #[error("the Origin header has a query")]
    Query,
    /// A fragment.
    #[error("the Origin header has a fragment")]
    Fragment,
    /// `user@` or `user:password@` before the host.
    #[error("the Origin header has userinfo before the host")]
    Userinfo,
    /// Nothing between `://` and the port.
    #[error("the Origin header has an empty host")]
    EmptyHost,
    /// A host that is not a domain name, a dotted-quad IPv4 address or a bracketed IPv6
    /// address.
    #[error("the Origin header has a malformed host")]
    InvalidHost,
    /// A `:` with no port after it.
    #[error("the Origin header has an empty port after `:`")]
    EmptyPort,
    /// A port that is not made of digits.
    #[error("the Origin header has a port that is not a number")]
    InvalidPort,
    /// A port outside 1..65535 (including 0).
    #[error("the Origin header has a port outside 1..65535")]
    PortOutOfRange,
}

/// An allow-list entry that is not one of the accepted forms. The message names the pattern
/// and says what to write instead: it goes straight into a status condition a person reads.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("origin pattern `{pattern}` {reason}")]
pub struct InvalidPattern {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong and what to write instead; reads after "origin pattern `…` ".
    pub reason: String,
}

/// A compiled allow-list plus the `null` and missing-header flags.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    /// Exact origins, looked up by their normalized (scheme, host, port).
    exact: HashSet<Origin>,
    /// `scheme://host:*`: (scheme, host).
    any_port: Vec<(String, String)>,
    /// `scheme://*.domain[:port|:*]`.
    wildcards: Vec<Wildcard>,
    /// `*` was listed.
    any: bool,
    allow_null: bool,
    allow_missing: bool,
    /// Normalized patterns in the order written, for display.
    shown: Vec<String>,
}

impl OriginPolicy {
    /// Compiles an allow-list (patterns normalized like received values, Unicode hosts to
    /// punycode). The first invalid pattern is the error. An empty list denies every browser
    /// origin; `null` and a missing header follow only their own flags.
    pub fn new<S: AsRef<str>>(
        allow: &[S],
        allow_null: bool,
        allow_missing: bool,
    ) -> Result<OriginPolicy, InvalidPattern> {
        let mut policy = OriginPolicy {
            exact: HashSet::new(),
            any_port: Vec::new(),
            wildcards: Vec::new(),
            any: false,
            allow_null,
            allow_missing,
            shown: Vec::with_capacity(allow.len()),
        };
        for written in allow {
            let written = written.as_ref();
            let pattern = compile_pattern(written).map_err(|reason| InvalidPattern {
                pattern: written.to_owned(),
                reason,
            })?;
            policy.shown.push(pattern.to_string());
            match pattern {
                Pattern::Any => policy.any = true,
                Pattern::Exact(origin) => {
                    policy.exact.insert(origin);
                }
                Pattern::AnyPort { scheme, host } => policy.any_port.push((scheme, host)),
                Pattern::Wildcard(w) => policy.wildcards.push(w),
            }
        }
        Ok(policy)
    }

    /// Whether a handshake that carried this origin may proceed. Runs on every handshake, so
    /// it does not allocate.
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
                        .any(|(scheme, host)| *scheme == o.scheme && *host == o.host)
                    || self.wildcards.iter().any(|w| w.matches(o))
            }
        }
    }

    /// Whether `*` is in the list: every web page may connect, which disables the
    /// cross-site WebSocket protection (callers should warn).
    pub fn allows_any_origin(&self) -> bool {
        self.any
    }

    /// Whether the opaque origin `null` is admitted (`allowNull`).
    pub fn allows_null(&self) -> bool {
        self.allow_null
    }

    /// Whether a handshake without an `Origin` header is admitted (`allowMissing`).
    pub fn allows_missing(&self) -> bool {
        self.allow_missing
    }

    /// The normalized patterns as strings, in the order written (for a JSON routes view).
    pub fn patterns(&self) -> impl Iterator<Item = String> + '_ {
        self.shown.iter().cloned()
    }
}

// ---- Patterns ----

/// One compiled allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `*`: every well-formed origin.
    Any,
    /// `scheme://host[:port]`.
    Exact(Origin),
    /// `scheme://host:*`.
    AnyPort { scheme: String, host: String },
    /// `scheme://*.domain[:port|:*]`.
    Wildcard(Wildcard),
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Any => f.write_str("*"),
            Pattern::Exact(origin) => origin.fmt(f),
            Pattern::AnyPort { scheme, host } => write!(f, "{scheme}://{host}:*"),
            Pattern::Wildcard(w) => {
                // The suffix keeps its leading dot, so `*` + suffix is `*.domain`.
                write!(f, "{}://*{}", w.scheme, w.dot_suffix)?;
                match w.port {
                    PortRule::Is(None) => Ok(()),
                    PortRule::Is(Some(p)) => write!(f, ":{p}"),
                    PortRule::Any => f.write_str(":*"),
                }
            }
        }
    }
}

/// Which ports a wildcard pattern admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortRule {
    /// Exactly this port (`None`: the scheme's default).
    Is(Option<u16>),
    /// `:*`: any explicit port and the default.
    Any,
}

/// `scheme://*.domain[:port|:*]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wildcard {
    scheme: String,
    /// `.domain`: the leading dot is what keeps `evil-example.com` out of `*.example.com`.
    dot_suffix: String,
    port: PortRule,
}

impl Wildcard {
    fn matches(&self, o: &Origin) -> bool {
        let port_ok = match self.port {
            PortRule::Is(p) => p == o.port,
            PortRule::Any => true,
        };
        // Strictly longer: the bare domain (`example.com`) is not its own subdomain. Hosts
        // have no empty labels, so a longer host ending in `.domain` has a label before it.
        port_ok
            && o.scheme == self.scheme
            && o.host.len() > self.dot_suffix.len()
            && o.host.ends_with(self.dot_suffix.as_str())
    }
}

const EXAMPLE: &str = "https://app.example.com";

/// Compiles one allow-list entry; the error is the reason, phrased to follow
/// "origin pattern `…` ".
fn compile_pattern(p: &str) -> Result<Pattern, String> {
    if p.is_empty() {
        return Err(format!("is empty: write an origin such as `{EXAMPLE}`"));
    }
    if p == "*" {
        return Ok(Pattern::Any);
    }
    if p.eq_ignore_ascii_case("null") {
        return Err("is not a pattern: set `allowNull: true` instead".to_owned());
    }
    if p.contains(',') {
        return Err("is a list: write each origin as its own entry".to_owned());
    }
    if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        let trimmed = p.trim();
        let inner = |c: char| c.is_whitespace() || c.is_control();
        // Only suggest for whitespace around the pattern; `trimmed` then has none, so
        // `suggest` cannot come back here.
        let fixed = (!trimmed.contains(inner))
            .then(|| suggest(trimmed))
            .flatten();
        return Err(match fixed {
            Some(s) => format!("must not have surrounding whitespace: write `{s}`"),
            None => "must not contain whitespace or control characters".to_owned(),
        });
    }
    // Before `split`, which would read `*.[::1]` as a host `*.[` with a port.
    if let Some((scheme, rest)) = p.split_once("://")
        && rest.starts_with("*.[")
    {
        return Err(wildcard_over_ip(&scheme.to_ascii_lowercase()));
    }
    let parts = match split(p) {
        Ok(parts) => parts,
        Err(e) => return Err(syntax_reason(p, e)),
    };
    let scheme = parts.scheme.to_ascii_lowercase();
    let port = match parts.port {
        None => PortRule::Is(None),
        Some("*") => PortRule::Any,
        Some(text) => match parse_port(text) {
            Ok(port) => PortRule::Is(elide_default_port(&scheme, Some(port))),
            Err(PortError::Empty) => {
                return Err(format!(
                    "has an empty port after `:`: write `{scheme}://{host}` for the default port or `{scheme}://{host}:*` for any port",
                    host = parts.host
                ));
            }
            Err(_) => {
                return Err(format!(
                    "has port `{text}`: use a port in 1..65535, `*` for any port, or no port for the default"
                ));
            }
        },
    };

    if let Some(domain) = parts.host.strip_prefix("*.") {
        if domain.contains('*') {
            return Err(star_placement(&scheme));
        }
        return compile_wildcard(&scheme, domain, port).map(Pattern::Wildcard);
    }
    if parts.host == "*" {
        return Err(format!(
            "must name a domain after `*.`: write e.g. `{scheme}://*.example.com`, or `*` alone to admit every origin"
        ));
    }
    if parts.host.contains('*') {
        return Err(star_placement(&scheme));
    }
    let host = normalize_pattern_host(parts.host)?;
    Ok(match port {
        PortRule::Any => Pattern::AnyPort { scheme, host },
        PortRule::Is(port) => Pattern::Exact(Origin { scheme, host, port }),
    })
}

fn compile_wildcard(scheme: &str, domain: &str, port: PortRule) -> Result<Wildcard, String> {
    if domain.starts_with('[') || domain.parse::<Ipv6Addr>().is_ok() {
        return Err(wildcard_over_ip(scheme));
    }
    let ascii = to_ascii_domain(domain)?;
    // Checked before the IPv4 grammar so `*.0.0.1` gets this message, not "bad IPv4".
    if ends_in_number(&ascii) {
        return Err(wildcard_over_ip(scheme));
    }
    check_domain_name(&ascii, domain)?;
    // One label after `*.` would admit a whole top-level domain (or every single-label
    // host): treat it as a mistake rather than a policy.
    if !ascii.contains('.') {
        return Err(format!(
            "must name a domain of at least two labels after `*.`, as in `{scheme}://*.example.com`"
        ));
    }
    Ok(Wildcard {
        scheme: scheme.to_owned(),
        dot_suffix: format!(".{ascii}"),
        port,
    })
}

fn star_placement(scheme: &str) -> String {
    format!(
        "may use `*` only as the whole leftmost label of the host (`{scheme}://*.example.com`), as the port (`:*`), or alone"
    )
}

fn wildcard_over_ip(scheme: &str) -> String {
    format!(
        "puts a wildcard over an IP address: list the address itself, e.g. `{scheme}://127.0.0.1` or `{scheme}://[::1]`"
    )
}

/// The normalized form of `candidate` when it is a valid pattern, for "write `…`" advice.
fn suggest(candidate: &str) -> Option<String> {
    compile_pattern(candidate).ok().map(|p| p.to_string())
}

fn syntax_reason(p: &str, e: Syntax) -> String {
    // Each suggestion removes the offending part, so `suggest` never recurses into the same
    // branch.
    let write_or = |candidate: &str, fallback: String| match suggest(candidate) {
        Some(s) => format!("{fallback}: write `{s}`"),
        None => fallback,
    };
    let scheme_end = p.find("://").map_or(0, |i| i + 3);
    match e {
        Syntax::NoScheme => {
            let bare = p.trim_start_matches('/');
            match suggest(&format!("https://{bare}")) {
                Some(s) => format!("needs a scheme: write `{s}`"),
                None => format!("needs a scheme, as in `{EXAMPLE}`"),
            }
        }
        Syntax::BadScheme if p[..scheme_end].contains('*') => {
            "must not use `*` in the scheme: list each scheme, e.g. `https://app.example.com` and `http://app.example.com`".to_owned()
        }
        Syntax::BadScheme => format!(
            "has a malformed scheme: a scheme is a letter then letters, digits, `+`, `-` or `.`, as in `{EXAMPLE}`"
        ),
        Syntax::Path(i) => write_or(&p[..i], "must not have a path".to_owned()),
        Syntax::Query(i) => write_or(&p[..i], "must not have a query".to_owned()),
        Syntax::Fragment(i) => write_or(&p[..i], "must not have a fragment".to_owned()),
        Syntax::Userinfo(i) => write_or(
            &format!("{}{}", &p[..scheme_end], &p[i + 1..]),
            "must not have userinfo (`user@`)".to_owned(),
        ),
        Syntax::EmptyHost => format!("has an empty host, write e.g. `{EXAMPLE}`"),
        Syntax::UnbracketedIpv6 => write_or(
            &format!("{}[{}]", &p[..scheme_end], &p[scheme_end..]),
            "has an IPv6 address without brackets".to_owned(),
        ),
        Syntax::BadHost => "has a malformed host: write a domain name, an IPv4 address or a bracketed IPv6 address, as in `http://[::1]:8080`".to_owned(),
    }
}

/// Normalizes a pattern's host: IPv6 to canonical bracketed form, names through UTS #46
/// (`idna`) to lowercase punycode, IPv4 as dotted quad.
fn normalize_pattern_host(host: &str) -> Result<String, String> {
    if let Some(inner) = host.strip_prefix('[') {
        return inner
            .strip_suffix(']')
            .and_then(|a| a.parse::<Ipv6Addr>().ok())
            .map(ipv6_host)
            .ok_or_else(|| {
                format!("has a malformed IPv6 address `{host}`: write e.g. `http://[::1]:8080`")
            });
    }
    let ascii = to_ascii_domain(host)?;
    if ends_in_number(&ascii) {
        return if is_dotted_quad(&ascii) {
            Ok(ascii)
        } else {
            Err(format!(
                "has host `{host}`, which is not a dotted-quad IPv4 address: write e.g. `http://127.0.0.1:3000`"
            ))
        };
    }
    check_domain_name(&ascii, host)?;
    Ok(ascii)
}

/// UTS #46 to lowercase punycode, as browsers do before they send a host.
fn to_ascii_domain(host: &str) -> Result<String, String> {
    idna::domain_to_ascii(host).map_err(|_| {
        format!("has host `{host}`, which is not a valid domain name (IDNA conversion failed)")
    })
}

fn check_domain_name(ascii: &str, written: &str) -> Result<(), String> {
    if let Some(stripped) = ascii.strip_suffix('.')
        && is_domain_name(stripped)
    {
        // Browsers keep the trailing dot, so `a.com.` would be a different origin from
        // `a.com` and received values with it are invalid: it could never match.
        return Err(format!(
            "has a trailing dot in host `{written}`: write the host without it (`{stripped}`)"
        ));
    }
    if is_domain_name(ascii) {
        Ok(())
    } else {
        Err(format!(
            "has host `{written}`, which is not a domain name: use labels of letters, digits, `-` and `_`, at most 63 characters each"
        ))
    }
}

// ---- Shared grammar ----

/// How a value failed the `scheme "://" host [":" port]` shape (RFC 6454 §6.2). The
/// `usize` is where the offending part starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    NoScheme,
    BadScheme,
    Path(usize),
    Query(usize),
    Fragment(usize),
    Userinfo(usize),
    EmptyHost,
    UnbracketedIpv6,
    BadHost,
}

/// The pieces of `scheme "://" host [":" port]`, as written.
#[derive(Debug, Clone, Copy)]
struct Parts<'a> {
    scheme: &'a str,
    /// Brackets included for IPv6.
    host: &'a str,
    /// The text after `:`, if there was a `:`.
    port: Option<&'a str>,
}

/// Splits a value into scheme, host and port text; anything else an URL may carry (path,
/// query, fragment, userinfo) is an error, since an origin serializes without them
/// (RFC 6454 §6.2).
fn split(value: &str) -> Result<Parts<'_>, Syntax> {
    let (scheme, rest) = value.split_once("://").ok_or(Syntax::NoScheme)?;
    if !is_scheme(scheme) {
        return Err(Syntax::BadScheme);
    }
    let start = scheme.len() + 3;
    if let Some(i) = rest.find(['/', '?', '#']) {
        return Err(match rest.as_bytes()[i] {
            b'/' => Syntax::Path(start + i),
            b'?' => Syntax::Query(start + i),
            _ => Syntax::Fragment(start + i),
        });
    }
    if let Some(i) = rest.rfind('@') {
        return Err(Syntax::Userinfo(start + i));
    }
    let (host, port) = if rest.starts_with('[') {
        let end = rest.find(']').ok_or(Syntax::BadHost)?;
        let (host, after) = rest.split_at(end + 1);
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or(Syntax::BadHost)?)),
        }
    } else if rest.parse::<Ipv6Addr>().is_ok() {
        return Err(Syntax::UnbracketedIpv6);
    } else if rest.contains(['[', ']']) {
        return Err(Syntax::BadHost);
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(Syntax::EmptyHost);
    }
    Ok(Parts { scheme, host, port })
}

/// Rejects what no browser puts in an `Origin` value. Whitespace anywhere counts: the HTTP
/// parser has already removed the optional whitespace around the field value (RFC 9110
/// §5.5), so any left is inside it.
fn check_received_characters(value: &str) -> Result<(), InvalidOrigin> {
    if value.is_empty() {
        return Err(InvalidOrigin::Empty);
    }
    // RFC 6454 §7.1 separates origins with SP; a comma is the usual HTTP list separator.
    // Report either as a list, the more useful reason than "whitespace".
    let words = value.split(' ').filter(|w| !w.is_empty());
    if value.contains(',')
        || (value.contains(' ')
            && words.clone().count() > 1
            && words.clone().all(|w| w.contains("://")))
    {
        return Err(InvalidOrigin::List);
    }
    for b in value.bytes() {
        if b.is_ascii_whitespace() || b.is_ascii_control() {
            return Err(InvalidOrigin::WhitespaceOrControl);
        }
        if !b.is_ascii() {
            return Err(InvalidOrigin::NonAscii);
        }
    }
    Ok(())
}

/// `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )` (RFC 3986 §3.1), any case.
fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// Validates and canonicalizes an already-lowercase ASCII host as browsers serialize it
/// (WHATWG URL host serializer): bracketed canonical IPv6, dotted-quad IPv4, or a name.
fn normalize_ascii_host(host: &str) -> Result<String, ()> {
    if let Some(inner) = host.strip_prefix('[') {
        return inner
            .strip_suffix(']')
            .and_then(|a| a.parse::<Ipv6Addr>().ok())
            .map(ipv6_host)
            .ok_or(());
    }
    // A browser parses a host ending in a number as IPv4 and sends it as a dotted quad,
    // so any other numeric form (`127.1`, `0x7f.0.0.1`) did not come from one.
    let ok = if ends_in_number(host) {
        is_dotted_quad(host)
    } else {
        is_domain_name(host)
    };
    if ok { Ok(host.to_owned()) } else { Err(()) }
}

/// A lowercase name: 1..=63-character labels of `[a-z0-9_-]`, at most 253 characters, no
/// empty label (so no trailing dot).
fn is_domain_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

/// WHATWG URL "ends in a number": the last label is decimal digits or `0x` hex, so a
/// browser would have parsed the host as IPv4.
fn ends_in_number(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or(host);
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}

fn is_dotted_quad(host: &str) -> bool {
    // Round-trip so only the canonical spelling passes (no leading zeros).
    host.parse::<Ipv4Addr>()
        .is_ok_and(|a| a.to_string() == host)
}

/// The WHATWG URL IPv6 serialization browsers send: lowercase hex, the first longest run of
/// two or more zero pieces compressed to `::`, never the dotted IPv4 tail.
fn ipv6_host(addr: Ipv6Addr) -> String {
    let pieces = addr.segments();
    let mut compress = None;
    let (mut best, mut i) = (1, 0);
    while i < pieces.len() {
        let run = pieces[i..].iter().take_while(|&&p| p == 0).count();
        if run > best {
            (best, compress) = (run, Some(i));
        }
        i += run.max(1);
    }
    let mut out = String::with_capacity(41);
    out.push('[');
    let mut ignore_zero = false;
    for (i, &piece) in pieces.iter().enumerate() {
        if ignore_zero && piece == 0 {
            continue;
        }
        ignore_zero = false;
        if compress == Some(i) {
            out.push_str(if i == 0 { "::" } else { ":" });
            ignore_zero = true;
            continue;
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{piece:x}");
        if i != pieces.len() - 1 {
            out.push(':');
        }
    }
    out.push(']');
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortError {
    Empty,
    NotDigits,
    OutOfRange,
}

/// `port = *DIGIT` (RFC 3986 §3.2.3), limited to 1..=65535.
fn parse_port(text: &str) -> Result<u16, PortError> {
    if text.is_empty() {
        return Err(PortError::Empty);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortError::NotDigits);
    }
    // All digits, so a parse failure can only be overflow.
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(PortError::OutOfRange),
        Ok(port) => Ok(port),
    }
}

/// The ports a browser leaves out when it serializes an origin of this scheme.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

fn elide_default_port(scheme: &str, port: Option<u16>) -> Option<u16> {
    port.filter(|&p| Some(p) != default_port(scheme))
}

#[cfg(test)]
mod tests;
