//! Upstream `url`s: `ws://` and `wss://` URLs parsed into an [`Upstream`].

use crate::route::{Target, Upstream};

/// Why an upstream `url` is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUrl {
    /// Not a URL at all.
    #[error("upstream url `{0}` is not a URL: write e.g. `ws://10.0.0.5:8080/socket`")]
    Malformed(String),
    /// A scheme other than ws or wss.
    #[error("upstream url `{0}` must start with `ws://` or `wss://`")]
    Scheme(String),
    /// A query string, which would be ambiguous with the request's.
    #[error("upstream url `{0}` must not have a query: the request's query is forwarded")]
    Query(String),
}

/// Parses a `ws://host[:port][/path]` or `wss://...` upstream URL (TLS settings are added
/// by the caller).
pub fn parse_url(url: &str) -> Result<Upstream, InvalidUrl> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| InvalidUrl::Malformed(url.to_owned()))?;
    let default_port = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("ws") => 80,
        Some("wss") => 443,
        _ => return Err(InvalidUrl::Scheme(url.to_owned())),
    };
    let Some(authority) = uri.authority() else {
        return Err(InvalidUrl::Malformed(url.to_owned()));
    };
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return Err(InvalidUrl::Malformed(url.to_owned()));
    }
    if uri.query().is_some() {
        return Err(InvalidUrl::Query(url.to_owned()));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    // Only a path written in the URL replaces the request path; `ws://h:1` has none.
    let after_authority = &url[url.find("://").map_or(0, |i| i + 3) + authority.as_str().len()..];
    let path = (!after_authority.is_empty()).then(|| uri.path().to_owned());
    Ok(Upstream {
        targets: vec![Target {
            host,
            port: authority.port_u16().unwrap_or(default_port),
        }],
        path,
        tls: None,
        client_affinity: false,
    })
}
