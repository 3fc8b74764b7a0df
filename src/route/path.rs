//! Request paths as routes see them: one spelling per path, so that the route a path selects
//! is the route whose backend serves it. A backend resolves `/ws/%2e%2e/admin` to `/admin`;
//! matched raw, that path would be routed by a `/ws` route and reach `/admin` under its policy.
//!
//! Normalization (RFC 3986 §6.2.2): percent-encoded unreserved characters are decoded, other
//! escapes get uppercase hex, dot segments are removed (§5.2.4) and runs of `/` are merged
//! (as nginx's `merge_slashes` does: many backends merge them too). What a backend could read
//! in another way is refused instead: an encoded `/`, `\` or NUL, a literal `\`, and path
//! parameters (`;`) on a dot segment (`..;/`, which servlet containers resolve as `..`).

use std::borrow::Cow;

/// Why a path cannot be normalized safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the path does not start with `/`")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("a `%` is not followed by two hex digits")]
    BadEscape,
    /// `%2F`, `%5C`, `%00` or a literal `\`: a backend may read it as a separator or an end.
    #[error("the path has an encoded `/` (%2F), `\\` (%5C) or NUL (%00), or a `\\`")]
    Separator,
    /// A `.` or `..` segment with path parameters, like `..;x`.
    #[error("the path has `;` parameters on a `.` or `..` segment")]
    DotParameters,
}

/// The normal form of a request path (without its query), or why it has none. Borrows
/// `path` when it is already normal, which is the common case.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let escaped = normalize_escapes(path)?;
    if !has_segments_to_resolve(&escaped) {
        return Ok(escaped);
    }
    Ok(Cow::Owned(resolve_segments(&escaped)))
}

/// `path` with its escapes in normal form (unreserved characters decoded, other escapes in
/// uppercase hex), refusing separators a backend could read differently and parameters on
/// dot segments. Segments are left as they are.
pub fn normalize_escapes(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if path.contains('\\') {
        return Err(PathError::Separator);
    }
    let escaped = if path.contains('%') {
        let decoded = decode_unreserved(path)?;
        if decoded == path {
            Cow::Borrowed(path)
        } else {
            Cow::Owned(decoded)
        }
    } else {
        Cow::Borrowed(path)
    };
    if escaped.contains(';') || escaped.contains('%') {
        for segment in escaped.split('/') {
            if dot_with_parameters(segment) {
                return Err(PathError::DotParameters);
            }
        }
    }
    Ok(escaped)
}

/// Whether `path` has dot segments or empty segments (`//`) that [`resolve_segments`] changes.
fn has_segments_to_resolve(path: &str) -> bool {
    path.contains("//")
        || path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
}

/// RFC 3986 §2.3: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes escapes of unreserved characters and uppercases the hex of the others
/// (RFC 3986 §6.2.2.1, §6.2.2.2).
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    // Runs between escapes are copied as they are: `%` is ASCII, so each run is whole UTF-8.
    let mut copied = 0;
    while let Some(at) = path[copied..].find('%').map(|p| copied + p) {
        out.push_str(&path[copied..at]);
        let (Some(hi), Some(lo)) = (
            bytes.get(at + 1).copied().and_then(hex_value),
            bytes.get(at + 2).copied().and_then(hex_value),
        ) else {
            return Err(PathError::BadEscape);
        };
        let byte = hi << 4 | lo;
        if matches!(byte, b'/' | b'\\' | 0) {
            return Err(PathError::Separator);
        }
        if is_unreserved(byte) {
            out.push(char::from(byte));
        } else {
            out.extend([
                '%',
                char::from(HEX[usize::from(hi)]),
                char::from(HEX[usize::from(lo)]),
            ]);
        }
        copied = at + 3;
    }
    out.push_str(&path[copied..]);
    Ok(out)
}

/// Whether a segment, with every escape decoded, is `.` or `..` followed by parameters
/// (`..;x`, `.%3Bx`): a servlet container strips the parameters and then resolves the dots.
fn dot_with_parameters(segment: &str) -> bool {
    let mut decoded = Vec::with_capacity(3);
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() && decoded.len() < 3 {
        let b = match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(&[hi, lo])) => match (hex_value(hi), hex_value(lo)) {
                (Some(hi), Some(lo)) => {
                    i += 2;
                    hi << 4 | lo
                }
                _ => b'%',
            },
            (b, _) => b,
        };
        decoded.push(b);
        i += 1;
    }
    matches!(&decoded[..], [b'.', b';', ..] | [b'.', b'.', b';'])
}

/// Removes dot segments (RFC 3986 §5.2.4) and merges runs of `/`; a path that ends in a
/// dot segment or `/` keeps a trailing `/`. `..` above the root stays at the root.
pub fn resolve_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing = false;
    for segment in path.split('/').skip(1) {
        trailing = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            name => kept.push(name),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing || kept.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for path in [
            "/",
            "/ws",
            "/ws/",
            "/ws/chat.v2",
            "/caf%C3%A9",
            "/a;b=c",
            "/...",
            "/.a/..b",
        ] {
            assert!(
                matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn dot_segments_escapes_and_slashes_take_their_normal_form() {
        for (raw, normal) in [
            ("/ws/../admin", "/admin"),
            ("/ws/%2e%2e/admin", "/admin"),
            ("/ws/%2E./admin", "/admin"),
            ("/ws/.%2e/admin", "/admin"),
            ("/ws/./chat", "/ws/chat"),
            ("/ws/chat/.", "/ws/chat/"),
            ("/ws/chat/..", "/ws/"),
            ("/../../etc", "/etc"),
            ("/..", "/"),
            ("//ws//chat", "/ws/chat"),
            // Slashes merge before dots resolve, as in nginx; the backend gets this form.
            ("/ws//../admin", "/admin"),
            ("/%77%73", "/ws"),
            ("/ws%7Echat", "/ws~chat"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%3bb", "/a%3Bb"),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(normal), "{raw}");
        }
    }

    #[test]
    fn what_a_backend_could_read_otherwise_is_refused() {
        for (raw, why) in [
            ("ws", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("/ws/%2fadmin", PathError::Separator),
            ("/ws/%2F..%2Fadmin", PathError::Separator),
            ("/ws/%5c../admin", PathError::Separator),
            ("/ws\\..\\admin", PathError::Separator),
            ("/ws%00.html", PathError::Separator),
            ("/ws/%zz", PathError::BadEscape),
            ("/ws/%4", PathError::BadEscape),
            ("/ws/..;/admin", PathError::DotParameters),
            ("/ws/..;jsessionid=x/admin", PathError::DotParameters),
            ("/ws/.;/admin", PathError::DotParameters),
            ("/ws/%2e%2e;/admin", PathError::DotParameters),
            ("/ws/..%3b/admin", PathError::DotParameters),
            ("/ws/.%3Bx/admin", PathError::DotParameters),
        ] {
            assert_eq!(normalize(raw), Err(why), "{raw}");
        }
    }

    #[test]
    fn parameters_on_other_segments_are_kept() {
        assert_eq!(normalize("/ws;v=1/chat").as_deref(), Ok("/ws;v=1/chat"));
        assert_eq!(normalize("/ws/...;x").as_deref(), Ok("/ws/...;x"));
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for raw in [
            "/ws/%2e%2e/admin",
            "//a/./b/../c/",
            "/caf%c3%a9/%7e",
            "/x/..",
            "/",
        ] {
            let once = normalize(raw).expect("normalizes").into_owned();
            assert_eq!(normalize(&once).as_deref(), Ok(once.as_str()), "{raw}");
        }
    }
}
