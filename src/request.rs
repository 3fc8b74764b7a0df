//! A request as the route decision and authentication see it, whatever protocol carried
//! it: its target split into path and query, and its headers looked up by name. HTTP/1.1
//! parsing (`proxy::http1`) and hyper's header maps feed these; nothing here knows how a
//! request arrived.

/// Header values by name, as a request carries them; `'a` is how long the values live.
pub trait HeaderLookup<'a>: Copy {
    /// Every value of header `name` (matched without regard to case), in order.
    fn values(self, name: &str) -> impl Iterator<Item = &'a [u8]>;
}

impl<'a> HeaderLookup<'a> for &'a http::HeaderMap {
    fn values(self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name)
            .into_iter()
            .map(http::HeaderValue::as_bytes)
    }
}

/// Whether a header `name` holds `token` in its comma-separated list, ignoring case.
pub fn has_token<'a>(headers: impl HeaderLookup<'a>, name: &str, token: &str) -> bool {
    headers.values(name).any(|v| {
        v.split(|&b| b == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Whether a request names its host twice (RFC 9112 §3.2): two `Host` values, or one that
/// differs from the absolute-form target's `authority`. Such a request could be routed by
/// one host and served by the other.
pub fn ambiguous_host<'a>(
    mut hosts: impl Iterator<Item = &'a [u8]>,
    authority: Option<&str>,
) -> bool {
    let (first, second) = (hosts.next(), hosts.next());
    second.is_some()
        || authority.zip(first).is_some_and(|(authority, host)| {
            !host.trim_ascii().eq_ignore_ascii_case(authority.as_bytes())
        })
}

/// An absolute-form request-target (`http://host:port/path?q`) split into its authority and
/// the origin-form rest (`/path?q`, or empty); `None` for an origin-form target.
pub fn absolute_form(target: &str) -> Option<(&str, &str)> {
    if target.starts_with('/') {
        return None;
    }
    let rest = &target[target.find("://")? + 3..];
    Some(rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len())))
}

/// The request-target split into path and query; an absolute-form target gives its path.
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    let origin_form = absolute_form(target).map_or(target, |(_, rest)| rest);
    let (path, query) = match origin_form.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (origin_form, None),
    };
    (if path.is_empty() { "/" } else { path }, query)
}

/// Request headers as (name, value) pairs: what the decision and auth tests hand over, with
/// nothing of how a request arrived.
#[cfg(test)]
#[derive(Clone, Copy)]
pub(crate) struct Pairs<'a>(pub(crate) &'a [(&'a str, &'a str)]);

#[cfg(test)]
impl<'a> HeaderLookup<'a> for Pairs<'a> {
    fn values(self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    }
}
