//! Handshake authentication with JSON Web Tokens (docs/design.md §6 `auth.jwt`): where a token is
//! found (query parameter, header, cookie), which keys verify it (a JWKS document, a PEM public
//! key or an HMAC secret from a Secret), and which claims go upstream as headers. Pure: the
//! caller passes the time; signatures are checked by `jsonwebtoken`.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, Validation};
use serde_json::{Map, Value};

use crate::memo::ContentMemo;
use crate::request::{HeaderLookup, split_target};

/// Headers a forwarded claim may not be sent in: the gateway's own, and those that steer the
/// upstream exchange.
const RESERVED_HEADERS: [&str; 14] = [
    "host",
    "origin",
    "connection",
    "upgrade",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "proxy-authorization",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
];

/// Why a route's JWT settings or keys cannot be used; said so a person can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key material is none of the accepted forms.
    #[error(
        "holds no usable key: write a JWKS document (`{{\"keys\": [...]}}`), a PEM public key (RSA of at least 2048 bits, EC P-256/P-384 or Ed25519), or an HMAC secret of at least 32 bytes"
    )]
    Unusable,
    /// A JWKS document without a key wsgate can verify with.
    #[error("is a JWKS document without a usable key ({0})")]
    EmptyJwks(String),
    /// A forwarded claim's header name is not allowed.
    #[error(
        "auth.jwt.forwardClaims header `{0}` cannot be used: name an HTTP token header that is not hop-by-hop, Host, Origin, Sec-WebSocket-* or a forwarding header, like `X-User-Id`"
    )]
    ReservedHeader(String),
}

/// Why a handshake's token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No token in any configured place.
    Missing,
    /// A token was present but is not valid; the reason is for logs, never the token.
    Invalid(&'static str),
    /// A token was given more than once (twice in one place, or in two places): which copy
    /// the upstream reads is unknowable, so none is trusted.
    Repeated,
}

/// One place a token may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenPlace {
    /// A query parameter of this name.
    Query(String),
    /// A header of this name (any case); `authorization` takes `Bearer <token>`.
    Header(String),
    /// A cookie of this name.
    Cookie(String),
}

/// What a route's JWT check is built from: plain settings, which `compile` derives from the
/// route's `auth.jwt`, so this module knows nothing of the resource.
#[derive(Debug, Clone, Default)]
pub struct JwtSettings {
    /// Where tokens are looked for, in order.
    pub places: Vec<TokenPlace>,
    /// The required `iss`, if any.
    pub issuer: Option<String>,
    /// Accepted `aud` values; empty means `aud` is not checked.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// Claims to forward upstream, as (claim, header name).
    pub forward: Vec<(String, String)>,
}

/// A verification key and the algorithms it may verify.
struct VerifyKey {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// A route's compiled JWT check.
pub struct JwtAuth {
    sources: Vec<TokenPlace>,
    /// Shared with every route (in this and later snapshots) whose key material is the same.
    keys: Arc<[VerifyKey]>,
    issuer: Option<String>,
    audiences: Vec<String>,
    leeway: u64,
    /// Claims to forward, each in the header of the same index in `forward_headers`.
    forward_claims: Vec<String>,
    /// Lowercase header names for `forward_claims`.
    forward_headers: Vec<String>,
}

impl fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth")
            .field("sources", &self.sources)
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .finish()
    }
}

impl JwtAuth {
    /// The check `settings` describe, with the key material from the route's Secret.
    pub fn new(settings: JwtSettings, material: &[u8]) -> Result<JwtAuth, KeyError> {
        let sources = settings
            .places
            .into_iter()
            .map(|place| match place {
                TokenPlace::Header(h) => TokenPlace::Header(h.to_ascii_lowercase()),
                other => other,
            })
            .fold(Vec::new(), |mut sources, source| {
                // A place listed twice is one place: its token is not "given twice".
                if !sources.contains(&source) {
                    sources.push(source);
                }
                sources
            });
        let (mut forward_claims, mut forward_headers) = (Vec::new(), Vec::new());
        for (claim, header) in settings.forward {
            let lower = header.to_ascii_lowercase();
            let token = !lower.is_empty()
                && lower
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token
                || RESERVED_HEADERS.contains(&lower.as_str())
                || lower.starts_with("sec-websocket-")
            {
                return Err(KeyError::ReservedHeader(header));
            }
            forward_claims.push(claim);
            forward_headers.push(lower);
        }
        Ok(JwtAuth {
            sources,
            keys: keys(material)?,
            issuer: settings.issuer,
            audiences: settings.audiences,
            leeway: settings.leeway_seconds,
            forward_claims,
            forward_headers,
        })
    }

    /// Whether `other` verifies with the very same parsed keys (not merely equal ones).
    #[cfg(test)]
    pub(crate) fn shares_keys_with(&self, other: &JwtAuth) -> bool {
        Arc::ptr_eq(&self.keys, &other.keys)
    }

    /// `target` without the query parameters tokens may come in: a token is never forwarded.
    pub fn strip_token_params<'a>(&self, target: &'a str) -> Cow<'a, str> {
        strip_query_params(target, |name| {
            self.sources
                .iter()
                .any(|s| matches!(s, TokenPlace::Query(q) if q == name))
        })
    }

    /// The headers claims are forwarded in (lowercase): a client's own are never forwarded.
    pub fn forwarded_headers(&self) -> &[String] {
        &self.forward_headers
    }

    /// Finds and verifies the request's token at Unix time `now`; returns the headers to
    /// forward (lowercase name, value) for the claims that are present.
    pub fn check<'h>(
        &self,
        target: &str,
        headers: impl HeaderLookup<'h>,
        now: u64,
    ) -> Result<Vec<(String, String)>, AuthFailure> {
        let mut token = None;
        for source in &self.sources {
            match find_token(source, target, headers) {
                Copies::None => {}
                Copies::One(copy) if token.is_none() => token = Some(copy),
                Copies::One(_) | Copies::Many => return Err(AuthFailure::Repeated),
            }
        }
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(AuthFailure::Missing)?;
        let claims = self.verify(&token, now)?;
        Ok(self
            .forward_claims
            .iter()
            .zip(&self.forward_headers)
            .filter_map(|(claim, header)| {
                let value = match claims.get(claim)? {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                // A header value cannot carry line breaks or other control characters.
                (!value.bytes().any(|b| b.is_ascii_control())).then(|| (header.clone(), value))
            })
            .collect())
    }

    /// The keys a token with `alg` and `kid` is checked against:
    /// - with a `kid`, only the keys of that kid (none: refused), when the keys carry kids
    ///   at all; a PEM key, a secret or a JWKS without kids has no kid to compare, so its
    ///   tokens are taken as kid-less;
    /// - without one, the kid-less keys; if there are none, the one key for `alg` if there
    ///   is exactly one; otherwise refused, rather than trying every key (which would let a
    ///   token pass with a key its issuer never meant, and costs a verification per key).
    fn candidates<'k>(
        &'k self,
        alg: Algorithm,
        kid: Option<&'k str>,
    ) -> Result<impl Iterator<Item = &'k VerifyKey> + 'k, AuthFailure> {
        enum Pick<'a> {
            Kid(&'a str),
            KidLess,
            Only(usize),
        }
        let of_alg = move |k: &VerifyKey| k.algorithms.contains(&alg);
        let mut keys = self.keys.iter().enumerate().filter(move |(_, k)| of_alg(k));
        let pick = match kid {
            Some(kid) if self.keys.iter().any(|k| k.kid.is_some()) => {
                if !keys.clone().any(|(_, k)| k.kid.as_deref() == Some(kid)) {
                    return Err(AuthFailure::Invalid("no key with the token's kid"));
                }
                Pick::Kid(kid)
            }
            _ if keys.clone().any(|(_, k)| k.kid.is_none()) => Pick::KidLess,
            _ => match (keys.next(), keys.next()) {
                (Some((only, _)), None) => Pick::Only(only),
                (None, _) => return Err(AuthFailure::Invalid("no key for the token's alg")),
                (Some(_), Some(_)) => {
                    return Err(AuthFailure::Invalid(
                        "no kid in the token and several keys for its alg",
                    ));
                }
            },
        };
        Ok(self
            .keys
            .iter()
            .enumerate()
            .filter(move |(i, k)| {
                of_alg(k)
                    && match pick {
                        Pick::Kid(kid) => k.kid.as_deref() == Some(kid),
                        Pick::KidLess => k.kid.is_none(),
                        Pick::Only(only) => *i == only,
                    }
            })
            .map(|(_, k)| k))
    }

    fn verify(&self, token: &str, now: u64) -> Result<Map<String, Value>, AuthFailure> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthFailure::Invalid("malformed token"))?;
        let candidates = self.candidates(header.alg, header.kid.as_deref())?;
        let mut verified = None;
        for key in candidates {
            let mut validation = Validation::new(header.alg);
            // Times are checked below against the caller's clock.
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.validate_aud = false;
            validation.required_spec_claims.clear();
            if let Ok(data) =
                jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            {
                verified = Some(data.claims);
                break;
            }
        }
        let claims = verified.ok_or(AuthFailure::Invalid("signature or algorithm not accepted"))?;
        // NumericDates may have fractions (RFC 7519 §2); f64 holds every whole second up to
        // 2^53 exactly, so whole-second dates compare as they would as integers.
        let (now, leeway) = (now as f64, self.leeway as f64);
        let exp = numeric_date(&claims, "exp")
            .ok_or(AuthFailure::Invalid("exp is not a number"))?
            .ok_or(AuthFailure::Invalid("no exp claim"))?;
        if exp + leeway <= now {
            return Err(AuthFailure::Invalid("expired"));
        }
        if numeric_date(&claims, "nbf")
            .ok_or(AuthFailure::Invalid("nbf is not a number"))?
            .is_some_and(|nbf| nbf > now + leeway)
        {
            return Err(AuthFailure::Invalid("not yet valid"));
        }
        if let Some(issuer) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(issuer)
        {
            return Err(AuthFailure::Invalid("wrong issuer"));
        }
        if !self.audiences.is_empty() {
            let matches = |a: &Value| {
                a.as_str()
                    .is_some_and(|a| self.audiences.iter().any(|w| w == a))
            };
            let ok = match claims.get("aud") {
                Some(Value::Array(list)) => list.iter().any(matches),
                Some(one) => matches(one),
                None => false,
            };
            if !ok {
                return Err(AuthFailure::Invalid("wrong audience"));
            }
        }
        Ok(claims)
    }
}

/// The NumericDate claim `name`: `Some(None)` if absent, `None` if it is not a number.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Option<Option<f64>> {
    match claims.get(name) {
        None => Some(None),
        Some(value) => value.as_f64().map(Some),
    }
}

/// Most parsed key sets remembered across compiles.
const MEMO_CAPACITY: usize = 256;

/// The keys in `material`; the same bytes again give the same keys without parsing again.
fn keys(material: &[u8]) -> Result<Arc<[VerifyKey]>, KeyError> {
    static MEMO: LazyLock<ContentMemo<Result<Arc<[VerifyKey]>, KeyError>>> =
        LazyLock::new(|| ContentMemo::new(MEMO_CAPACITY));
    MEMO.get_or_parse(&[material], || parse_keys(material).map(Arc::from))
}

/// The keys in `material`: a JWKS document, a PEM public key, or an HMAC secret.
fn parse_keys(material: &[u8]) -> Result<Vec<VerifyKey>, KeyError> {
    let trimmed = material.trim_ascii();
    if trimmed.starts_with(b"{") {
        let set: JwkSet =
            serde_json::from_slice(trimmed).map_err(|e| KeyError::EmptyJwks(e.to_string()))?;
        let keys: Vec<VerifyKey> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).ok().filter(usable)?;
                let declared = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| Algorithm::from_str(&a.to_string()).ok());
                let algorithms = match declared {
                    Some(a) => vec![a],
                    None => match &jwk.algorithm {
                        AlgorithmParameters::RSA(_) => rsa_algorithms(),
                        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                            EllipticCurve::P256 => vec![Algorithm::ES256],
                            EllipticCurve::P384 => vec![Algorithm::ES384],
                            _ => return None,
                        },
                        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
                        AlgorithmParameters::OctetKey(_) => hmac_algorithms(),
                        _ => return None,
                    },
                };
                Some(VerifyKey {
                    kid: jwk.common.key_id.clone(),
                    key,
                    algorithms,
                })
            })
            .collect();
        if keys.is_empty() {
            return Err(KeyError::EmptyJwks(format!(
                "{} keys, none usable",
                set.keys.len()
            )));
        }
        return Ok(keys);
    }
    if trimmed.starts_with(b"-----BEGIN") {
        let pem = [
            (
                DecodingKey::from_rsa_pem(trimmed).ok().filter(usable),
                rsa_algorithms(),
            ),
            (
                DecodingKey::from_ec_pem(trimmed).ok(),
                vec![Algorithm::ES256, Algorithm::ES384],
            ),
            (
                DecodingKey::from_ed_pem(trimmed).ok().filter(usable),
                vec![Algorithm::EdDSA],
            ),
        ];
        return pem
            .into_iter()
            .find_map(|(key, algorithms)| {
                key.map(|key| {
                    vec![VerifyKey {
                        kid: None,
                        key,
                        algorithms,
                    }]
                })
            })
            .ok_or(KeyError::Unusable);
    }
    // A shared secret shorter than the hash output is guessable (RFC 7518 §3.2).
    if trimmed.len() < 32 {
        return Err(KeyError::Unusable);
    }
    Ok(vec![VerifyKey {
        kid: None,
        key: DecodingKey::from_secret(trimmed),
        algorithms: hmac_algorithms(),
    }])
}

/// Whether a key can be trusted with tokens. An Ed25519 key must be 32 bytes: jsonwebtoken
/// reads it as its first 32 and panics on fewer, so a short one is refused at load rather
/// than left as a panic waiting for a token that names it. An RSA modulus must have at least
/// 2048 bits (NIST SP 800-131A): shorter ones are within reach of factoring.
fn usable(key: &DecodingKey) -> bool {
    match key.family() {
        AlgorithmFamily::Ed => key.try_get_as_bytes().is_ok_and(|b| b.len() == 32),
        AlgorithmFamily::Rsa => rsa_bits(key).is_some_and(|bits| bits >= MIN_RSA_BITS),
        _ => true,
    }
}

/// The smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// The size of an RSA key's modulus in bits, from JWK components or PKCS#1 DER.
fn rsa_bits(key: &DecodingKey) -> Option<usize> {
    use rsa::pkcs1::DecodeRsaPublicKey as _;
    use rsa::traits::PublicKeyParts as _;
    match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, .. } => {
            let n = &n[n.iter().position(|&b| b != 0)?..];
            Some(n.len() * 8 - n[0].leading_zeros() as usize)
        }
        DecodingKeyKind::SecretOrDer(der) => rsa::RsaPublicKey::from_pkcs1_der(der)
            .ok()
            .map(|k| k.n().bits()),
    }
}

fn rsa_algorithms() -> Vec<Algorithm> {
    vec![
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ]
}

fn hmac_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]
}

/// The copies of a token in one place.
enum Copies {
    None,
    One(String),
    Many,
}

impl Copies {
    fn of(mut copies: impl Iterator<Item = String>) -> Copies {
        match (copies.next(), copies.next()) {
            (None, _) => Copies::None,
            (Some(one), None) => Copies::One(one),
            (Some(_), Some(_)) => Copies::Many,
        }
    }
}

/// The token in `source`, counting empty copies too (an empty copy beside a real one is
/// still a second copy an upstream might read).
fn find_token<'h>(source: &TokenPlace, target: &str, headers: impl HeaderLookup<'h>) -> Copies {
    match source {
        TokenPlace::Query(name) => {
            let (_, query) = split_target(target);
            Copies::of(
                form_urlencoded::parse(query.unwrap_or("").as_bytes())
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned()),
            )
        }
        TokenPlace::Header(name) => Copies::of(headers.values(name).filter_map(|value| {
            let value = std::str::from_utf8(value).ok()?.trim();
            if name == "authorization" {
                // Other schemes (Basic, ...) carry no token of ours.
                let (scheme, token) = value.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_owned())
            } else {
                Some(value.to_owned())
            }
        })),
        TokenPlace::Cookie(name) => Copies::of(
            headers
                .values("cookie")
                .filter_map(|v| std::str::from_utf8(v).ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.trim_matches('"').to_owned()),
        ),
    }
}

/// `target` without the query parameters whose (decoded) name is `named` (every occurrence);
/// the rest of the query is kept byte for byte, and a query left empty loses its `?`.
pub fn strip_query_params(target: &str, named: impl Fn(&str) -> bool) -> Cow<'_, str> {
    let (path, Some(query)) = split_target(target) else {
        return Cow::Borrowed(target);
    };
    let is_named = |pair: &str| {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        named(&percent_decoded(key))
    };
    if !query.split('&').any(is_named) {
        return Cow::Borrowed(target);
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_named(p)).collect();
    let mut out = path.to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Cow::Owned(out)
}

fn percent_decoded(key: &str) -> String {
    form_urlencoded::parse(key.as_bytes())
        .next()
        .map(|(k, _)| k.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
