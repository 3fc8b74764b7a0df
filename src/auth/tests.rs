use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

use super::*;
use crate::request::Pairs;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_800_000_000;

fn spec(places: &[TokenPlace]) -> JwtSettings {
    JwtSettings {
        places: places.to_vec(),
        issuer: Some("https://issuer.test".into()),
        audiences: vec!["chat".into()],
        leeway_seconds: 30,
        forward: vec![
            ("sub".into(), "X-User-Id".into()),
            ("admin".into(), "X-Admin".into()),
        ],
    }
}

fn query(name: &str) -> TokenPlace {
    TokenPlace::Query(name.into())
}

fn header(name: &str) -> TokenPlace {
    TokenPlace::Header(name.into())
}

fn cookie(name: &str) -> TokenPlace {
    TokenPlace::Cookie(name.into())
}

fn claims() -> serde_json::Value {
    json!({"sub": "alice", "iss": "https://issuer.test", "aud": ["chat"], "exp": NOW + 60, "admin": true})
}

fn hs256(claims: &serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
    .expect("token")
}

/// Runs `check` with these request headers.
fn check(
    auth: &JwtAuth,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<Vec<(String, String)>, AuthFailure> {
    auth.check(target, Pairs(headers), NOW)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn a_valid_hs256_token_forwards_its_claims_as_headers() {
    let auth = JwtAuth::new(spec(&[header("Authorization")]), SECRET).expect("keys");
    let forwarded = check(
        &auth,
        "/ws",
        &[("Authorization", &bearer(&hs256(&claims())))],
    )
    .expect("valid");
    assert_eq!(
        forwarded,
        vec![
            ("x-user-id".to_owned(), "alice".to_owned()),
            ("x-admin".to_owned(), "true".to_owned())
        ]
    );
}

#[test]
fn an_es256_token_verifies_with_a_pem_public_key_and_not_with_another() {
    let key = rcgen::KeyPair::generate().expect("P-256 key");
    let token = encode(
        &Header::new(Algorithm::ES256),
        &claims(),
        &EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("encoding key"),
    )
    .expect("token");
    let auth = JwtAuth::new(
        spec(&[header("Authorization")]),
        key.public_key_pem().as_bytes(),
    )
    .expect("PEM key");
    assert!(check(&auth, "/", &[("authorization", &bearer(&token))]).is_ok());
    let other = rcgen::KeyPair::generate().expect("key");
    let auth = JwtAuth::new(
        spec(&[header("Authorization")]),
        other.public_key_pem().as_bytes(),
    )
    .expect("PEM key");
    assert_eq!(
        check(&auth, "/", &[("authorization", &bearer(&token))]),
        Err(AuthFailure::Invalid("signature or algorithm not accepted"))
    );
}

#[test]
fn an_hs256_token_is_refused_by_a_public_key_and_alg_none_by_everything() {
    // Algorithm confusion: an HMAC token "signed" with a public key's bytes.
    let key = rcgen::KeyPair::generate().expect("key");
    let public = key.public_key_pem();
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(public.as_bytes()),
    )
    .expect("token");
    let auth = JwtAuth::new(spec(&[header("Authorization")]), public.as_bytes()).expect("PEM");
    assert!(check(&auth, "/", &[("authorization", &bearer(&forged))]).is_err());

    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims().to_string())
    );
    let auth = JwtAuth::new(spec(&[header("Authorization")]), SECRET).expect("keys");
    assert!(check(&auth, "/", &[("authorization", &bearer(&none))]).is_err());
}

#[test]
fn jwks_keys_are_chosen_by_kid() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let other = b"another-secret-of-thirty-two-byt";
    let jwks = json!({"keys": [
        {"kty": "oct", "kid": "one", "alg": "HS256", "k": b64.encode(other)},
        {"kty": "oct", "kid": "two", "alg": "HS256", "k": b64.encode(SECRET)},
    ]});
    let auth = JwtAuth::new(
        spec(&[header("Authorization")]),
        jwks.to_string().as_bytes(),
    )
    .expect("JWKS");
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("two".into());
    let token = encode(&h, &claims(), &EncodingKey::from_secret(SECRET)).expect("token");
    assert!(check(&auth, "/", &[("authorization", &bearer(&token))]).is_ok());
    h.kid = Some("one".into());
    let wrong_kid = encode(&h, &claims(), &EncodingKey::from_secret(SECRET)).expect("token");
    assert!(check(&auth, "/", &[("authorization", &bearer(&wrong_kid))]).is_err());
}

#[test]
fn a_kid_picks_only_its_keys_and_a_kidless_token_needs_an_unambiguous_key() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let other = b"another-secret-of-thirty-two-byt";
    let signed = |kid: Option<&str>| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(str::to_owned);
        bearer(&encode(&h, &claims(), &EncodingKey::from_secret(SECRET)).expect("token"))
    };
    let with_keys = |keys: serde_json::Value| {
        let jwks = json!({ "keys": keys }).to_string();
        JwtAuth::new(spec(&[header("Authorization")]), jwks.as_bytes()).expect("JWKS")
    };
    let verify = |auth: &JwtAuth, kid: Option<&str>| {
        check(auth, "/", &[("authorization", &signed(kid))]).map(|_| ())
    };

    let two_kids = with_keys(json!([
        {"kty": "oct", "kid": "one", "alg": "HS256", "k": b64.encode(other)},
        {"kty": "oct", "kid": "two", "alg": "HS256", "k": b64.encode(SECRET)},
    ]));
    assert_eq!(
        verify(&two_kids, Some("three")),
        Err(AuthFailure::Invalid("no key with the token's kid"))
    );
    assert_eq!(
        verify(&two_kids, None),
        Err(AuthFailure::Invalid(
            "no kid in the token and several keys for its alg"
        )),
        "a kid-less token does not try every key"
    );

    // One kid-less key: kid-less tokens are checked against it alone, and a kid never
    // falls back to it.
    let mixed = with_keys(json!([
        {"kty": "oct", "kid": "one", "alg": "HS256", "k": b64.encode(other)},
        {"kty": "oct", "alg": "HS256", "k": b64.encode(SECRET)},
    ]));
    assert_eq!(verify(&mixed, None), Ok(()));
    assert_eq!(
        verify(&mixed, Some("one")),
        Err(AuthFailure::Invalid("signature or algorithm not accepted"))
    );

    // No kid-less key: the one key of the token's alg.
    let one_per_alg = with_keys(json!([
        {"kty": "oct", "kid": "hs256", "alg": "HS256", "k": b64.encode(SECRET)},
        {"kty": "oct", "kid": "hs384", "alg": "HS384", "k": b64.encode(other)},
    ]));
    assert_eq!(verify(&one_per_alg, None), Ok(()));

    // A secret (or PEM key) has no kid to compare: a token's kid does not matter.
    let secret = JwtAuth::new(spec(&[header("Authorization")]), SECRET).expect("secret");
    assert_eq!(verify(&secret, Some("any")), Ok(()));
    assert_eq!(verify(&secret, None), Ok(()));
}

#[test]
fn times_issuer_and_audience_are_checked_with_leeway() {
    let auth = JwtAuth::new(spec(&[header("Authorization")]), SECRET).expect("keys");
    let with = |patch: serde_json::Value| {
        let mut c = claims();
        c.as_object_mut()
            .expect("object")
            .extend(patch.as_object().expect("object").clone());
        let token = hs256(&c);
        check(&auth, "/", &[("authorization", &bearer(&token))]).map(|_| ())
    };
    assert_eq!(with(json!({"exp": NOW - 10})), Ok(()), "within leeway");
    assert_eq!(
        with(json!({"exp": NOW - 31})),
        Err(AuthFailure::Invalid("expired"))
    );
    assert_eq!(
        with(json!({"nbf": NOW + 60})),
        Err(AuthFailure::Invalid("not yet valid"))
    );
    assert_eq!(with(json!({"nbf": NOW + 20})), Ok(()));
    assert_eq!(
        with(json!({"iss": "https://evil.test"})),
        Err(AuthFailure::Invalid("wrong issuer"))
    );
    assert_eq!(
        with(json!({"aud": "billing"})),
        Err(AuthFailure::Invalid("wrong audience"))
    );
    assert_eq!(with(json!({"aud": "chat"})), Ok(()));
    let mut no_exp = claims();
    no_exp.as_object_mut().expect("object").remove("exp");
    let token = hs256(&no_exp);
    assert_eq!(
        check(&auth, "/", &[("authorization", &bearer(&token))]),
        Err(AuthFailure::Invalid("no exp claim"))
    );
}

#[test]
fn fractional_numeric_dates_are_accepted_and_checked_with_leeway() {
    let auth = JwtAuth::new(spec(&[header("Authorization")]), SECRET).expect("keys");
    let with = |patch: serde_json::Value| {
        let mut c = claims();
        c.as_object_mut()
            .expect("object")
            .extend(patch.as_object().expect("object").clone());
        check(&auth, "/", &[("authorization", &bearer(&hs256(&c)))]).map(|_| ())
    };
    let now = NOW as f64;
    assert_eq!(
        with(json!({"exp": now + 60.5, "nbf": now - 0.25, "iat": now - 0.25})),
        Ok(())
    );
    assert_eq!(with(json!({"exp": now - 29.5})), Ok(()), "within leeway");
    assert_eq!(
        with(json!({"exp": now - 30.5})),
        Err(AuthFailure::Invalid("expired"))
    );
    assert_eq!(
        with(json!({"nbf": now + 30.5})),
        Err(AuthFailure::Invalid("not yet valid"))
    );
    assert_eq!(
        with(json!({"exp": "soon"})),
        Err(AuthFailure::Invalid("exp is not a number"))
    );
    assert_eq!(
        with(json!({"nbf": "later"})),
        Err(AuthFailure::Invalid("nbf is not a number"))
    );
}

#[test]
fn tokens_come_from_each_source() {
    let token = hs256(&claims());
    let auth = JwtAuth::new(
        spec(&[query("access_token"), cookie("session"), header("X-Token")]),
        SECRET,
    )
    .expect("keys");
    assert!(check(&auth, &format!("/ws?room=1&access_token={token}"), &[]).is_ok());
    assert!(
        check(
            &auth,
            "/ws",
            &[("Cookie", &format!("a=b; session={token}"))]
        )
        .is_ok()
    );
    assert!(
        check(
            &auth,
            "/ws",
            &[("Cookie", "a=b"), ("Cookie", &format!("session={token}"))]
        )
        .is_ok()
    );
    assert!(check(&auth, "/ws", &[("x-token", &token)]).is_ok());
    assert_eq!(check(&auth, "/ws", &[]), Err(AuthFailure::Missing));
    // Percent-encoded query values are decoded.
    let auth = JwtAuth::new(spec(&[header("authorization")]), SECRET).expect("keys");
    assert!(check(&auth, "/", &[("Authorization", &format!("bEaReR {token}"))]).is_ok());
    assert_eq!(
        check(&auth, "/", &[("Authorization", &format!("Basic {token}"))]),
        Err(AuthFailure::Missing)
    );
}

#[test]
fn a_token_given_twice_in_one_place_or_in_two_places_is_refused_as_repeated() {
    let token = hs256(&claims());
    let auth = JwtAuth::new(
        spec(&[
            query("access_token"),
            cookie("session"),
            header("Authorization"),
        ]),
        SECRET,
    )
    .expect("keys");
    let bearer = bearer(&token);
    let both = format!("session={token}; session=x");
    let one = format!("session={token}");
    let twice: [(String, Vec<(&str, &str)>); 7] = [
        (
            format!("/ws?access_token={token}&access_token={token}"),
            vec![],
        ),
        (format!("/ws?access_token=&access_token={token}"), vec![]),
        (format!("/ws?access%5Ftoken=x&access_token={token}"), vec![]),
        (
            "/ws".into(),
            vec![("authorization", &bearer), ("Authorization", &bearer)],
        ),
        ("/ws".into(), vec![("cookie", &both)]),
        (
            "/ws".into(),
            vec![("cookie", &one), ("cookie", "session=x")],
        ),
        (
            format!("/ws?access_token={token}"),
            vec![("authorization", &bearer)],
        ),
    ];
    for (target, headers) in &twice {
        assert_eq!(
            check(&auth, target, headers),
            Err(AuthFailure::Repeated),
            "{target} {headers:?}"
        );
    }
    // Another scheme in a second Authorization header carries no token of ours.
    assert!(
        check(
            &auth,
            "/ws",
            &[("authorization", "Basic YTpi"), ("authorization", &bearer)]
        )
        .is_ok()
    );
}

#[test]
fn a_place_listed_twice_in_token_sources_is_one_place() {
    let token = hs256(&claims());
    let auth = JwtAuth::new(
        spec(&[header("Authorization"), header("authorization")]),
        SECRET,
    )
    .expect("keys");
    assert!(check(&auth, "/ws", &[("authorization", &bearer(&token))]).is_ok());
}

#[test]
fn bad_keys_and_reserved_forward_headers_say_what_to_write() {
    assert_eq!(
        JwtAuth::new(spec(&[]), b"short").unwrap_err(),
        KeyError::Unusable
    );
    assert!(matches!(
        JwtAuth::new(spec(&[]), b"{\"keys\": []}").unwrap_err(),
        KeyError::EmptyJwks(_)
    ));
    for reserved in [
        "Host",
        "X-Forwarded-For",
        "Sec-WebSocket-Protocol",
        "bad header",
    ] {
        let mut s = spec(&[]);
        s.forward[0].1 = reserved.into();
        assert_eq!(
            JwtAuth::new(s, SECRET).unwrap_err(),
            KeyError::ReservedHeader(reserved.into())
        );
    }
}

#[test]
fn forwarded_claims_never_carry_line_breaks() {
    let auth = JwtAuth::new(spec(&[header("Authorization")]), SECRET).expect("keys");
    let mut c = claims();
    c["sub"] = json!("alice\r\nX-Admin: true");
    let forwarded = check(&auth, "/", &[("authorization", &bearer(&hs256(&c)))]).expect("valid");
    assert_eq!(forwarded, vec![("x-admin".to_owned(), "true".to_owned())]);
}

#[test]
fn the_token_query_parameter_is_stripped_and_the_rest_kept() {
    for (target, stripped) in [
        ("/ws", "/ws"),
        ("/ws?access_token=x", "/ws"),
        ("/ws?access_token=x&room=1", "/ws?room=1"),
        ("/ws?room=1&access_token=x&b=%20", "/ws?room=1&b=%20"),
        ("/ws?room=1&access_token=x", "/ws?room=1"),
        ("/ws?access_token=x&access_token=y", "/ws"),
        ("/ws?access_token2=x", "/ws?access_token2=x"),
        ("/ws?access%5Ftoken=x", "/ws"),
    ] {
        assert_eq!(
            strip_query_params(target, |n| n == "access_token"),
            stripped,
            "{target}"
        );
    }
}

#[test]
fn an_ed25519_key_shorter_than_32_bytes_is_refused_at_load_and_never_reached() {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let short = json!({"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": b64(&[7; 16])});
    let jwks = |keys: serde_json::Value| json!({ "keys": keys }).to_string().into_bytes();
    assert!(matches!(
        JwtAuth::new(spec(&[]), &jwks(json!([short]))).unwrap_err(),
        KeyError::EmptyJwks(_)
    ));
    // The same short key in PEM form (SubjectPublicKeyInfo, OID 1.3.101.112).
    let mut spki = vec![
        0x30, 0x1a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x11, 0x00,
    ];
    spki.extend_from_slice(&[7; 16]);
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    assert_eq!(
        JwtAuth::new(spec(&[]), pem.as_bytes()).unwrap_err(),
        KeyError::Unusable
    );
    // Beside a usable key, the short one is left out: a token naming it is refused, and
    // verifying it does not panic (jsonwebtoken slices an EdDSA key to 32 bytes).
    let oct = json!({"kty": "oct", "kid": "shared", "k": b64(SECRET)});
    let auth = JwtAuth::new(spec(&[header("Authorization")]), &jwks(json!([short, oct])))
        .expect("the oct key is usable");
    let token = format!(
        "{}.{}.{}",
        b64(br#"{"alg":"EdDSA","kid":"short"}"#),
        b64(claims().to_string().as_bytes()),
        b64(&[0; 64])
    );
    assert!(matches!(
        check(&auth, "/", &[("Authorization", &bearer(&token))]),
        Err(AuthFailure::Invalid(_))
    ));
}

#[test]
fn an_rsa_key_under_2048_bits_is_refused_in_pem_and_in_a_jwks() {
    use base64::Engine as _;
    // `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024`, public half.
    const RSA_1024: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC0M5WrLkOiDsozwaKm6yv7qG6s
xTYvqYAzL8H57yORi/oMpgA4sEsHlVg5+8Oq1wBjXGaolF3RHvb+CxfQSGufUa6c
eU7mihAJ86xreGJhUsakXuYFx7aUd5D1++C68IvA/AflqLCY7+hvoTE43m5iSsbf
cKpNOBc3VVDo7cF1xQIDAQAB
-----END PUBLIC KEY-----
";
    assert_eq!(
        JwtAuth::new(spec(&[]), RSA_1024.as_bytes()).unwrap_err(),
        KeyError::Unusable
    );
    assert!(
        KeyError::Unusable
            .to_string()
            .contains("RSA of at least 2048 bits")
    );
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = |n: &[u8]| json!({"keys": [{"kty": "RSA", "kid": "k", "n": b64(n), "e": "AQAB"}]});
    // A 2047-bit modulus (its top byte 0x7f) is one bit short; 2048 bits pass.
    let mut n = vec![0xff; 256];
    n[0] = 0x7f;
    assert!(matches!(
        JwtAuth::new(spec(&[]), jwk(&n).to_string().as_bytes()).unwrap_err(),
        KeyError::EmptyJwks(_)
    ));
    n[0] = 0x80;
    JwtAuth::new(spec(&[]), jwk(&n).to_string().as_bytes()).expect("2048 bits are usable");
}
