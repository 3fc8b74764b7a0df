//! The CRD's CEL rules (what the API server refuses at `kubectl apply`) and the compile step
//! (what `wsgate check` and standalone mode refuse) agree: every spec the rules refuse,
//! compile calls Invalid, and the valid specs pass both. The rules run in kube's client-side
//! CEL evaluator against the generated schema, so a rule that does not parse fails here too.

use kube::core::cel::Validator;
use wsgate::api::{WebSocketRoute, crd};
use wsgate::compile::{Backends, compile};

fn route(spec: &str) -> (WebSocketRoute, serde_json::Value) {
    let yaml = format!(
        "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {{name: r, namespace: ns}}\nspec:\n{spec}"
    );
    let route: WebSocketRoute =
        serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
    // Serialized with every default filled in, as the API server would see it.
    let json = serde_json::to_value(&route).expect("serializes");
    (route, json)
}

fn cel_accepts(json: &serde_json::Value) -> Result<(), String> {
    let crd = crd();
    let schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema"),
    )
    .expect("schema json");
    Validator::new()
        .validate(&schema, json, None)
        .map_err(|e| format!("{e:?}"))
}

fn compile_accepts(route: &WebSocketRoute) -> bool {
    compile(std::slice::from_ref(route), &Backends::standalone()).verdicts[0].accepted()
}

const UP: &str = "  upstream: {url: \"ws://127.0.0.1:9000\"}\n";

#[test]
fn valid_specs_pass_the_rules_and_compile() {
    for spec in [
        format!("  hostnames: [chat.example.com]\n{UP}"),
        format!(
            "  hostnames: [\"*.example.com\", localhost]\n  path: {{type: Exact, value: /ws}}\n{UP}"
        ),
        format!(
            "  hostnames: [a.example.com]\n  origins: {{allow: [\"https://app.example.com\", \"https://*.example.com:*\", \"http://localhost:*\", \"chrome-extension://abc\", \"http://[::1]:8080\", \"https://*.bücher.example\", \"*\"]}}\n{UP}"
        ),
        format!("  hostnames: [a.example.com]\n  subprotocols: [chat.v2, \"x-y_z\"]\n{UP}"),
        "  hostnames: [a.example.com]\n  upstream: {service: {name: chat, port: 8080}}\n"
            .to_owned(),
        "  hostnames: [a.example.com]\n  upstream: {url: \"ws://backend.internal:9000/socket\"}\n"
            .to_owned(),
        format!(
            "  hostnames: [a.example.com]\n  path: {{value: \"/caf%C3%A9/a;v=1/.../.x/\"}}\n{UP}"
        ),
        format!(
            "  hostnames: [a.example.com]\n  hostnameGrants: [{{namespace: team-b}}, {{namespace: b2}}]\n{UP}"
        ),
    ] {
        let (route, json) = route(&spec);
        assert_eq!(cel_accepts(&json), Ok(()), "CEL refused\n{spec}");
        assert!(compile_accepts(&route), "compile refused\n{spec}");
    }
}

#[test]
fn every_spec_the_rules_refuse_compile_refuses_too() {
    for spec in [
        format!("  hostnames: [Chat.Example.com]\n{UP}"),
        format!("  hostnames: [\"*.com\"]\n{UP}"),
        format!("  hostnames: [\"a.*.example.com\"]\n{UP}"),
        format!("  hostnames: [a.example.com, a.example.com]\n{UP}"),
        format!("  hostnames: [a.example.com]\n  path: {{value: ws}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  path: {{value: \"/ws?x=1\"}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"null\"]}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"https://app.example.com/\"]}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"app.example.com\"]}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"https://*\"]}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"https://*.com\"]}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"https://u@a.com\"]}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  subprotocols: [\"a b\"]\n{UP}"),
        "  hostnames: [a.example.com]\n  upstream: {url: \"http://127.0.0.1:9000\"}\n".to_owned(),
        "  hostnames: [a.example.com]\n  upstream: {url: \"ws://127.0.0.1:9000/x?y=1\"}\n".to_owned(),
        "  hostnames: [a.example.com]\n  upstream: {url: \"ws://127.0.0.1:9000\", service: {name: s, port: 80}}\n".to_owned(),
        "  hostnames: [a.example.com]\n  upstream: {}\n".to_owned(),
        format!("  hostnames: [a.example.com]\n  path: {{value: /ws/../admin}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  path: {{value: /ws/.}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  path: {{value: \"/ws/%2E%2e/admin\"}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  path: {{value: \"/ws/..;x/admin\"}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  path: {{value: \"/ws/.%3b/admin\"}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  path: {{value: //ws}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  path: {{value: \"/ws%2fadmin\"}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  path: {{value: \"/ws%5Cadmin\"}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  path: {{value: \"/ws%00\"}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  path: {{value: '/ws\\\\admin'}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  path: {{value: \"/ws%zz\"}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  path: {{value: \"/ws%4\"}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  hostnameGrants: [{{namespace: Team_B}}]\n{UP}"),
        format!("  hostnames: [a.example.com]\n  hostnameGrants: [{{namespace: -b}}]\n{UP}"),
    ] {
        let (route, json) = route(&spec);
        assert!(cel_accepts(&json).is_err(), "CEL accepted\n{spec}");
        assert!(!compile_accepts(&route), "compile accepted what the API server refuses\n{spec}");
    }
}
