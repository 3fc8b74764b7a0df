//! WebSocket extensions (RFC 6455 §9) at the gateway: which of the client's offers reach the
//! upstream, and whether the upstream's choice is one of them. Owns header values only.
//!
//! The relay checks every frame's RSV bits, so it must know what each negotiated extension
//! does with them: only `permessage-deflate` (RFC 7692) is passed on, and not on a route
//! with `maxMessageBytes`, whose limit counts what the upstream receives and so could not
//! be enforced on compressed frames.

use super::http1::Headers;

/// The one extension the gateway lets through (RFC 7692).
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// Why an upstream's 101 names extensions the gateway cannot let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    /// It accepted an extension that was not offered to it (RFC 6455 §4.1 makes the client
    /// fail such a handshake).
    #[error("the upstream accepted an extension that was not offered to it")]
    NotOffered,
    /// It accepted `permessage-deflate` more than once (RFC 7692 §5).
    #[error("the upstream accepted permessage-deflate more than once")]
    Repeated,
}

/// The extensions in `Sec-WebSocket-Extensions` values: each one's name and the whole
/// entry (name and parameters), trimmed. Parameter values are tokens (RFC 6455 §9.1), so
/// a comma always separates two entries.
fn entries<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
    values
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let name = entry.split(|&b| b == b';').next().unwrap_or(entry);
            (name.trim_ascii(), entry)
        })
}

/// The client's extension offers to send upstream, as one `Sec-WebSocket-Extensions` value:
/// its `permessage-deflate` offers when `deflate` allows them, nothing else. `None` when no
/// offer is left (the header is then not sent).
pub fn offers(headers: Headers<'_>, deflate: bool) -> Option<String> {
    if !deflate {
        return None;
    }
    let kept: Vec<&str> = entries(headers.get_all("sec-websocket-extensions"))
        .filter(|(name, _)| name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE.as_bytes()))
        // Printable ASCII only, so the value is sent as it came.
        .filter_map(|(_, entry)| {
            entry
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
                .then(|| std::str::from_utf8(entry).ok())
                .flatten()
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

/// Whether the upstream's 101 (its `headers`) negotiated `permessage-deflate`, given the
/// extensions `offered` to it; an error when it accepted anything that was not offered.
pub fn negotiated(headers: Headers<'_>, offered: Option<&str>) -> Result<bool, ExtensionError> {
    let offered = offered.unwrap_or("");
    let mut deflate = false;
    for (name, _) in entries(headers.get_all("sec-websocket-extensions")) {
        if !entries(std::iter::once(offered.as_bytes())).any(|(o, _)| o.eq_ignore_ascii_case(name))
        {
            return Err(ExtensionError::NotOffered);
        }
        if deflate {
            return Err(ExtensionError::Repeated);
        }
        deflate = true;
    }
    Ok(deflate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::http1::headers_from;

    fn offered(values: &[&'static str], deflate: bool) -> Option<String> {
        let pairs: Vec<_> = values
            .iter()
            .map(|v| ("Sec-WebSocket-Extensions", *v))
            .collect();
        offers(Headers::new(&headers_from(&pairs)), deflate)
    }

    fn accepted(value: &'static str, offered: Option<&str>) -> Result<bool, ExtensionError> {
        let headers = headers_from(&[("Sec-WebSocket-Extensions", value)]);
        negotiated(Headers::new(&headers), offered)
    }

    #[test]
    fn only_permessage_deflate_offers_are_forwarded_with_their_parameters() {
        assert_eq!(
            offered(
                &[
                    "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits",
                    "Permessage-Deflate;server_no_context_takeover , foo; permessage-deflate",
                ],
                true
            )
            .as_deref(),
            Some(
                "permessage-deflate; client_max_window_bits, \
                 Permessage-Deflate;server_no_context_takeover"
            )
        );
    }

    #[test]
    fn no_offer_is_forwarded_on_a_route_with_a_message_limit() {
        assert_eq!(offered(&["permessage-deflate"], false), None);
    }

    #[test]
    fn nothing_left_means_no_header() {
        assert_eq!(offered(&["x-custom, , bar; a=1"], true), None);
        assert_eq!(offered(&[], true), None);
    }

    #[test]
    fn the_upstream_may_accept_only_what_was_offered_once() {
        let pmd = Some("permessage-deflate; client_max_window_bits");
        assert_eq!(
            accepted("permessage-deflate; server_max_window_bits=10", pmd),
            Ok(true)
        );
        assert_eq!(accepted("", pmd), Ok(false));
        assert_eq!(accepted("", None), Ok(false));
        assert_eq!(
            accepted("permessage-deflate", None),
            Err(ExtensionError::NotOffered)
        );
        assert_eq!(accepted("x-custom", pmd), Err(ExtensionError::NotOffered));
        assert_eq!(
            accepted("permessage-deflate, permessage-deflate", pmd),
            Err(ExtensionError::Repeated)
        );
    }

    #[test]
    fn no_extension_header_in_the_101_means_no_extension() {
        assert_eq!(
            negotiated(Headers::new(&[]), Some("permessage-deflate")),
            Ok(false)
        );
    }
}
