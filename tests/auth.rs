//! Handshake authentication through real sockets (docs/design.md §6 `auth.jwt`): tokens from each
//! place, refused tokens get 401 before any upstream contact, the query parameter never
//! reaches the upstream, and claims arrive as headers the client cannot forge.

mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use support::*;

const HOST: &str = "chat.example.test";
const APP: &str = "https://app.example.test";
const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn token(patch: serde_json::Value, key: &str) -> String {
    let mut claims =
        json!({"sub": "alice", "iss": "https://issuer.test", "aud": "chat", "exp": now() + 300});
    claims
        .as_object_mut()
        .expect("object")
        .extend(patch.as_object().expect("object").clone());
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .expect("token")
}

async fn gate(up: &Upstream, secrets: &std::path::Path) -> Gate {
    let auth = "  auth:\n    jwt:\n      keys: {secretName: jwt}\n      tokenSources: [{query: access_token}, {cookie: session}, {header: Authorization}]\n      issuer: https://issuer.test\n      audiences: [chat]\n      forwardClaims: [{claim: sub, header: X-User-Id}]\n";
    let origins = "{allow: [\"https://app.example.test\"]}";
    let keyless = auth.replace("secretName: jwt", "secretName: absent");
    Gate::start(
        &[
            (
                "chat.yaml",
                route("chat", HOST, "/ws", origins, &up.url()) + auth,
            ),
            (
                "keyless.yaml",
                route("keyless", "keyless.example.test", "/ws", origins, &up.url()) + &keyless,
            ),
        ],
        &["--secret-dir", secrets.to_str().expect("utf-8")],
    )
    .await
}

fn request(path: &str, extra: &str) -> String {
    upgrade_request(HOST, path, &format!("Origin: {APP}\r\n{extra}"))
}

#[tokio::test]
async fn a_refused_origin_without_a_token_gets_403_not_401() {
    let mut up = Upstream::start().await;
    let secrets = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(secrets.path().join("jwt")).expect("dir");
    std::fs::write(secrets.path().join("jwt/secret"), SECRET).expect("key");
    let gate = gate(&up, secrets.path()).await;
    // The origin is judged before the token: a page from elsewhere learns nothing about
    // the route's authentication.
    let raw = raw_request(
        gate.proxy,
        &upgrade_request(HOST, "/ws", "Origin: https://evil.example.test\r\n"),
    )
    .await;
    assert_eq!(raw.status, 403, "{}", raw.head);
    assert_eq!(up.handshakes(), 0);
}

#[tokio::test]
async fn missing_and_bad_tokens_get_401_before_the_upstream_is_contacted() {
    let mut up = Upstream::start().await;
    let secrets = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(secrets.path().join("jwt")).expect("dir");
    std::fs::write(secrets.path().join("jwt/secret"), SECRET).expect("key");
    let gate = gate(&up, secrets.path()).await;

    let missing = raw_request(gate.proxy, &request("/ws", "")).await;
    assert_eq!(missing.status, 401);
    assert!(
        missing
            .head
            .contains("www-authenticate: Bearer realm=\"wsgate\"\r\n")
            || missing
                .head
                .ends_with("www-authenticate: Bearer realm=\"wsgate\""),
        "{}",
        missing.head
    );
    assert_eq!(missing.body, "authentication required\n");

    for bad in [
        token(json!({"exp": now() - 3600}), SECRET),
        token(json!({"aud": "billing"}), SECRET),
        token(json!({"iss": "https://evil.test"}), SECRET),
        token(json!({}), "another-secret-of-thirty-two-byt"),
        "not.a.token".to_owned(),
    ] {
        let refused =
            raw_request(gate.proxy, &request(&format!("/ws?access_token={bad}"), "")).await;
        assert_eq!(refused.status, 401, "{bad}");
        assert!(
            refused.head.contains("error=\"invalid_token\""),
            "{}",
            refused.head
        );
        assert!(!refused.body.contains(&bad), "the token is never echoed");
    }
    assert_eq!(
        up.handshakes(),
        0,
        "no refused handshake reached the upstream"
    );

    // Keys that cannot be read refuse everyone rather than let anyone in.
    let keyless = raw_request(
        gate.proxy,
        &upgrade_request(
            "keyless.example.test",
            "/ws",
            &format!(
                "Origin: {APP}\r\nAuthorization: Bearer {}\r\n",
                token(json!({}), SECRET)
            ),
        ),
    )
    .await;
    assert_eq!(keyless.status, 503);
    let (_, routes) = gate.admin_get("/routes").await;
    assert!(
        routes.contains("Secret default/absent not found"),
        "{routes}"
    );
}

#[tokio::test]
async fn tokens_from_each_source_pass_with_claims_and_without_the_query_parameter() {
    let mut up = Upstream::start().await;
    let secrets = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(secrets.path().join("jwt")).expect("dir");
    std::fs::write(secrets.path().join("jwt/secret"), SECRET).expect("key");
    let gate = gate(&up, secrets.path()).await;
    let good = token(json!({}), SECRET);

    let by_query = raw_request(
        gate.proxy,
        &request(
            &format!("/ws?room=1&access_token={good}&x=2"),
            "X-User-Id: mallory\r\n",
        ),
    )
    .await;
    assert_eq!(by_query.status, 101);
    let seen = up.seen.recv().await.expect("handshake");
    assert_eq!(
        seen.path, "/ws?room=1&x=2",
        "the token does not travel upstream"
    );
    assert_eq!(
        seen.headers.get_all("x-user-id").iter().collect::<Vec<_>>(),
        ["alice"],
        "the claim replaces the client's forged header"
    );

    let by_cookie = raw_request(
        gate.proxy,
        &request("/ws", &format!("Cookie: theme=dark; session={good}\r\n")),
    )
    .await;
    assert_eq!(by_cookie.status, 101);
    let by_header = raw_request(
        gate.proxy,
        &request("/ws", &format!("Authorization: Bearer {good}\r\n")),
    )
    .await;
    assert_eq!(by_header.status, 101);
    assert_eq!(up.handshakes(), 2);
}

/// Runs openssl (a test prerequisite, as for the control plane) with these arguments.
fn openssl(args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    if let Some(bytes) = input {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(bytes)
            .expect("write");
    }
    let out = child.wait_with_output().expect("openssl output");
    assert!(out.status.success(), "openssl {args:?} failed");
    out.stdout
}

#[tokio::test]
async fn an_rs256_token_verifies_with_the_routes_pem_public_key() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key.pem");
    let key = key.to_str().expect("utf-8");
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            key,
        ],
        None,
    );
    let public = openssl(&["pkey", "-in", key, "-pubout"], None);
    let secrets = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(secrets.path().join("jwt")).expect("dir");
    std::fs::write(secrets.path().join("jwt/key.pem"), &public).expect("key");
    let up = Upstream::start().await;
    let gate = gate(&up, secrets.path()).await;

    let claims =
        json!({"sub": "alice", "iss": "https://issuer.test", "aud": "chat", "exp": now() + 300});
    let signing_input = format!(
        "{}.{}",
        b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    );
    let signature = openssl(
        &["dgst", "-sha256", "-sign", key],
        Some(signing_input.as_bytes()),
    );
    let token = format!("{signing_input}.{}", b64.encode(signature));
    let accepted = raw_request(
        gate.proxy,
        &request("/ws", &format!("Authorization: Bearer {token}\r\n")),
    )
    .await;
    assert_eq!(accepted.status, 101);
    // The same signature over other claims.
    let forged_claims =
        json!({"sub": "mallory", "iss": "https://issuer.test", "aud": "chat", "exp": now() + 300});
    let mut parts = token.split('.');
    let (header, _, signature) = (
        parts.next().expect("header"),
        parts.next().expect("claims"),
        parts.next().expect("signature"),
    );
    let tampered = format!(
        "{header}.{}.{signature}",
        b64.encode(forged_claims.to_string())
    );
    let refused = raw_request(
        gate.proxy,
        &request("/ws", &format!("Authorization: Bearer {tampered}\r\n")),
    )
    .await;
    assert_eq!(refused.status, 401);
}

#[tokio::test]
async fn a_token_given_twice_gets_400_invalid_request_before_the_upstream_is_contacted() {
    let mut up = Upstream::start().await;
    let secrets = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(secrets.path().join("jwt")).expect("dir");
    std::fs::write(secrets.path().join("jwt/secret"), SECRET).expect("key");
    let gate = gate(&up, secrets.path()).await;
    let good = token(json!({}), SECRET);
    let forged = token(
        json!({"sub": "mallory"}),
        "another-secret-of-thirty-two-byt",
    );

    for (path, extra) in [
        (
            format!("/ws?access_token={good}&access_token={forged}"),
            String::new(),
        ),
        (
            "/ws".to_owned(),
            format!("Authorization: Bearer {good}\r\nAuthorization: Bearer {forged}\r\n"),
        ),
        (
            "/ws".to_owned(),
            format!("Cookie: session={good}; session={forged}\r\n"),
        ),
        (
            format!("/ws?access_token={good}"),
            format!("Cookie: session={forged}\r\n"),
        ),
    ] {
        let refused = raw_request(gate.proxy, &request(&path, &extra)).await;
        assert_eq!(refused.status, 400, "{path} {extra}");
        assert!(
            refused
                .head
                .contains("www-authenticate: Bearer realm=\"wsgate\", error=\"invalid_request\""),
            "{}",
            refused.head
        );
        assert!(!refused.body.contains(&good), "the token is never echoed");
    }
    assert_eq!(up.handshakes(), 0, "no repeated token reached the upstream");
    let (_, metrics) = gate.admin_get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wsgate_handshakes_total{")
                && l.contains("reason=\"token_repeated\"")
                && l.ends_with(" 4")),
        "{metrics}"
    );
}
