//! The `wsgate` commands that do not serve: `check`, `crd` and `probe`, through the real binary.

mod support;

use std::process::Command;

fn route(name: &str, host: &str, origins: &str) -> String {
    support::route(name, host, "/", origins, "{url: \"ws://127.0.0.1:9\"}")
}

fn check(files: &[(&str, String)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).expect("write");
    }
    let out = Command::new(support::bin())
        .arg("check")
        .arg(dir.path())
        .output()
        .expect("run check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_exits_0_and_prints_conditions_when_every_route_is_accepted() {
    let (code, out, _) = check(&[(
        "a.yaml",
        route(
            "a",
            "a.example.test",
            "{allow: [\"https://a.example.test\"]}",
        ),
    )]);
    assert_eq!(code, Some(0), "{out}");
    for needle in [
        "kind: WebSocketRoute",
        "name: a",
        "type: Accepted",
        "status: \"True\"",
        "type: Ready",
        "lastTransitionTime",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
}

#[test]
fn check_exits_1_when_a_route_is_invalid_or_conflicted() {
    let (code, out, _) = check(&[(
        "a.yaml",
        route("a", "a.example.test", "{allow: [\"https://*.com\"]}"),
    )]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("reason: Invalid") && out.contains("https://*.com"),
        "{out}"
    );

    let (code, out, err) = check(&[
        ("a.yaml", route("a", "a.example.test", "{allow: []}")),
        ("b.yaml", route("b", "a.example.test", "{allow: []}")),
    ]);
    assert_eq!(code, Some(1));
    assert!(out.contains("reason: Conflicted"), "{out}");
    assert!(err.contains("1 conflicted"), "{err}");
}

#[test]
fn check_exits_1_with_path_and_line_when_a_file_does_not_parse() {
    let (code, _, err) = check(&[(
        "bad.yaml",
        "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nspec: {hostnames: [\n".to_owned(),
    )]);
    assert_eq!(code, Some(1));
    assert!(err.contains("bad.yaml:"), "{err}");
}

#[test]
fn check_warns_that_star_disables_the_protection() {
    let (code, _, err) = check(&[("a.yaml", route("a", "a.example.test", "{allow: [\"*\"]}"))]);
    assert_eq!(code, Some(0));
    assert!(
        err.contains("warning:") && err.contains("disables"),
        "{err}"
    );
}

#[test]
fn check_exits_2_on_a_usage_error() {
    let out = Command::new(support::bin())
        .args(["check", "/nonexistent/routes"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(support::bin())
        .arg("check")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bundled_examples_are_all_accepted() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/routes");
    let out = Command::new(support::bin())
        .args(["check", examples])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn checked_in_crd_matches_the_generator() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/websocketroutes.wsgate.dev.yaml"
    );
    let checked_in = std::fs::read_to_string(path).expect("crds/ file exists");
    let out = Command::new(support::bin())
        .arg("crd")
        .output()
        .expect("run crd");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        checked_in,
        "crds/ is out of date: run `cargo run -- crd > crds/websocketroutes.wsgate.dev.yaml`"
    );
}

#[test]
fn standalone_with_a_missing_routes_path_fails_with_a_hint() {
    let out = Command::new(support::bin())
        .args([
            "standalone",
            "--routes",
            "/nonexistent/routes",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--routes"));
}

/// Runs `wsgate probe` against these listeners.
async fn probe(
    admin: std::net::SocketAddr,
    proxy: std::net::SocketAddr,
) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(support::bin())
        .args([
            "probe",
            "--admin",
            &admin.to_string(),
            "--proxy",
            &proxy.to_string(),
        ])
        .output()
        .await
        .expect("run probe");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn probe_passes_on_a_serving_gateway_and_fails_on_anything_else() {
    let up = support::Upstream::start().await;
    let gate = support::Gate::start(
        &[("a.yaml", route("a", "a.example.test", "{allow: []}"))],
        &[],
    )
    .await;
    let (code, out, err) = probe(gate.admin, gate.proxy).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("admin /readyz: 200 OK: ready"), "{out}");
    assert!(
        out.contains("proxy: 404 Not Found: no route for this host and path"),
        "{out}"
    );

    // Another WebSocket server where the proxy should be is not wsgate.
    let (code, out, err) = probe(gate.admin, up.addr).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("expected 404 no route"), "{err}");
    drop(gate);
    let (code, _, err) = probe(up.addr, up.addr).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("expected 200 ready"), "{err}");
}
