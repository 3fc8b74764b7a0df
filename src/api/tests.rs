use super::*;
use kube::core::cel::{Validator, WarningKind, compile_schema, estimate_rule_cost};
use serde_json::{Value, json};

/// The example in the module's design note, every field written out.
const FULL: &str = r#"apiVersion: wsgate.dev/v1alpha1
kind: WebSocketRoute
metadata: {name: chat, namespace: apps}
spec:
  hostnames: ["chat.example.com"]
  path: {type: PathPrefix, value: /ws}
  origins:
    allow: ["https://app.example.com", "https://*.example.com", "http://localhost:*"]
    allowNull: false
    allowMissing: false
    rejection: Forbidden
  upstream:
    service: {name: chat-backend, port: 8080}
  subprotocols: ["chat.v2"]
  revokeOnPolicyChange: true
status:
  observedGeneration: 4
  conditions:
  - type: Ready
    status: "True"
    reason: Programmed
    message: serving
    lastTransitionTime: "2025-01-02T03:04:05Z"
    observedGeneration: 4
"#;

const MINIMAL: &str = "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {name: m}\nspec: {hostnames: [a.example.com], upstream: {url: \"ws://127.0.0.1:9000\"}}\n";

fn from_yaml(yaml: &str) -> WebSocketRoute {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}\n{e}"))
}

fn schema() -> Value {
    let crd = crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("openAPIV3Schema");
    serde_json::to_value(schema).expect("schema as JSON")
}

#[test]
fn full_example_round_trips() {
    let route = from_yaml(FULL);
    let spec = &route.spec;
    assert_eq!(spec.hostnames, ["chat.example.com"]);
    assert_eq!(
        spec.path,
        PathMatch {
            match_type: PathMatchType::PathPrefix,
            value: "/ws".into()
        }
    );
    assert_eq!(spec.origins.allow.len(), 3);
    assert_eq!(spec.origins.allow[2], "http://localhost:*");
    assert!(!spec.origins.allow_null && !spec.origins.allow_missing);
    assert_eq!(spec.origins.rejection, Rejection::Forbidden);
    assert_eq!(
        spec.upstream.service,
        Some(ServiceRef {
            name: "chat-backend".into(),
            port: 8080
        })
    );
    assert_eq!(spec.upstream.url, None);
    assert_eq!(
        spec.subprotocols.as_deref(),
        Some(&["chat.v2".to_owned()][..])
    );
    assert!(spec.revoke_on_policy_change);
    let status = route.status.as_ref().expect("status");
    assert_eq!(status.observed_generation, Some(4));
    assert_eq!(status.conditions[0].type_, "Ready");

    // JSON (what the API server stores) and YAML (what people write) both round-trip.
    let json = serde_json::to_value(&route).expect("to JSON");
    assert_eq!(
        json["spec"]["path"],
        json!({"type": "PathPrefix", "value": "/ws"})
    );
    assert_eq!(json["spec"]["origins"]["allowNull"], false);
    assert_eq!(json["spec"]["revokeOnPolicyChange"], true);
    assert_eq!(json["status"]["observedGeneration"], 4);
    assert_eq!(
        serde_json::from_value::<WebSocketRoute>(json).expect("from JSON"),
        route
    );
    let yaml = serde_saphyr::to_string(&route).expect("to YAML");
    assert_eq!(from_yaml(&yaml), route);
}

#[test]
fn minimal_spec_gets_every_default() {
    let route = from_yaml(MINIMAL);
    let spec = &route.spec;
    assert_eq!(spec.path, PathMatch::default());
    assert_eq!(spec.path.match_type, PathMatchType::PathPrefix);
    assert_eq!(spec.path.value, "/");
    assert_eq!(spec.origins, OriginsSpec::default());
    assert!(spec.origins.allow.is_empty());
    assert!(!spec.origins.allow_null && !spec.origins.allow_missing);
    assert_eq!(spec.origins.rejection, Rejection::Forbidden);
    assert_eq!(spec.upstream.url.as_deref(), Some("ws://127.0.0.1:9000"));
    assert_eq!(spec.upstream.service, None);
    assert_eq!(spec.subprotocols, None);
    assert!(spec.revoke_on_policy_change);
    assert_eq!(route.status, None);

    // Omitted optionals stay omitted on the way out.
    let json = serde_json::to_value(&route).expect("to JSON");
    assert!(json["spec"]["upstream"].get("service").is_none());
    assert!(json["spec"].get("subprotocols").is_none());
    assert!(json.get("status").is_none());
}

#[test]
fn partial_objects_get_their_remaining_defaults() {
    let route = from_yaml(
        "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {name: p}\nspec:\n  hostnames: [a.example.com]\n  path: {type: Exact}\n  origins: {allow: [\"https://a.example.com\"], rejection: Close}\n  upstream: {service: {name: s, port: 80}}\n  revokeOnPolicyChange: false\n",
    );
    assert_eq!(route.spec.path.match_type, PathMatchType::Exact);
    assert_eq!(route.spec.path.value, "/");
    assert_eq!(route.spec.origins.rejection, Rejection::Close);
    assert!(!route.spec.origins.allow_null);
    assert!(!route.spec.revoke_on_policy_change);
    let route = from_yaml(
        "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {name: p}\nspec:\n  hostnames: [a.example.com]\n  path: {value: /ws}\n  upstream: {url: \"wss://b:1\"}\n",
    );
    assert_eq!(route.spec.path.match_type, PathMatchType::PathPrefix);
    assert_eq!(route.spec.path.value, "/ws");
}

#[test]
fn schema_defaults_match_serde_defaults() {
    // What the API server fills in from the schema equals what serde fills in.
    let raw: Value = serde_saphyr::from_str(MINIMAL).expect("YAML");
    let defaulted = kube::core::cel::apply_defaults(&schema(), &raw);
    let expected = serde_json::to_value(from_yaml(MINIMAL)).expect("to JSON");
    assert_eq!(defaulted["spec"], expected["spec"]);
    let s = schema();
    let spec = &s["properties"]["spec"]["properties"];
    assert_eq!(
        spec["path"]["default"],
        json!({"type": "PathPrefix", "value": "/"})
    );
    assert_eq!(spec["path"]["properties"]["value"]["default"], "/");
    assert_eq!(spec["path"]["properties"]["type"]["default"], "PathPrefix");
    assert_eq!(
        spec["origins"]["properties"]["rejection"]["default"],
        "Forbidden"
    );
    assert_eq!(spec["origins"]["properties"]["allow"]["default"], json!([]));
    assert_eq!(spec["revokeOnPolicyChange"]["default"], true);
    assert_eq!(
        s["properties"]["spec"]["required"],
        json!(["hostnames", "upstream"])
    );
}

#[test]
fn crd_has_names_columns_status_and_rules() {
    let crd = crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("websocketroutes.wsgate.dev")
    );
    assert_eq!(crd.spec.group, "wsgate.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "WebSocketRoute");
    assert_eq!(crd.spec.names.plural, "websocketroutes");
    assert_eq!(crd.spec.names.short_names, Some(vec!["wsr".to_owned()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.served && version.storage);
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<(&str, &str, Option<i32>)> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.json_path.as_str(), c.priority))
        .collect();
    // Lists come from status strings (a column shows a list as JSON); `-o wide` adds three.
    assert_eq!(
        columns,
        [
            ("Hosts", ".status.hostnames", None),
            ("Path", ".spec.path.value", None),
            ("Origins", ".status.origins", None),
            (
                "Ready",
                r#".status.conditions[?(@.type=="Ready")].status"#,
                None
            ),
            (
                "Reason",
                r#".status.conditions[?(@.type=="Ready")].reason"#,
                None
            ),
            ("Age", ".metadata.creationTimestamp", None),
            ("Upstream", ".status.upstream", Some(1)),
            ("Snapshot", ".status.snapshotVersion", Some(1)),
            ("Generation", ".status.observedGeneration", Some(1)),
        ]
    );

    let s = schema();
    let conditions = &s["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    let spec = &s["properties"]["spec"]["properties"];
    assert_eq!(spec["hostnames"]["maxItems"], 16);
    assert_eq!(spec["hostnames"]["minItems"], 1);
    assert_eq!(spec["hostnames"]["items"]["maxLength"], 253);
    assert_eq!(spec["origins"]["properties"]["allow"]["maxItems"], 64);
    assert_eq!(
        spec["upstream"]["properties"]["service"]["properties"]["port"]["maximum"],
        65535.0
    );
    assert_eq!(
        spec["upstream"]["properties"]["service"]["properties"]["port"]["minimum"],
        1.0
    );
    assert_eq!(
        spec["path"]["properties"]["type"]["enum"],
        json!(["Exact", "PathPrefix"])
    );
    assert_eq!(
        spec["origins"]["properties"]["rejection"]["enum"],
        json!(["Forbidden", "Close"])
    );

    let yaml = crd_yaml();
    assert!(yaml.starts_with("# Generated by `wsgate crd`; do not edit.\n"));
    for needle in [
        "\n    shortNames:\n    - wsr\n",
        "\n    subresources:\n      status: {}\n",
        "x-kubernetes-list-type: map",
        "x-kubernetes-validations:",
    ] {
        assert!(yaml.contains(needle), "missing {needle:?} in\n{yaml}");
    }
    // Long rules and messages are folded in the YAML: look for them in the JSON.
    let json = serde_json::to_string(&crd).expect("CRD as JSON");
    for needle in [
        "has(self.service) != has(self.url)",
        "exactly one of `service` or `url`",
        "self.all(h, self.exists_one(x, x == h))",
        "set `allowNull: true` instead",
        "at least two labels after `*.`",
        "url must be `ws://host:port[/path]`",
        "no path or trailing slash",
        "path value must start with `/`",
        "HTTP token",
    ] {
        assert!(json.contains(needle), "missing {needle:?} in\n{json}");
    }
    // `kubectl explain` rewraps descriptions itself: hard line breaks would show.
    fn one_line(node: &Value, at: &str) {
        if let Some(d) = node["description"].as_str() {
            assert!(
                !d.contains('\n'),
                "{at}: description has a line break: {d:?}"
            );
        }
        for (k, v) in node["properties"].as_object().into_iter().flatten() {
            one_line(v, &format!("{at}.{k}"));
        }
    }
    one_line(&s["properties"]["spec"], "spec");

    // The file parses back into the same CRD.
    let back: CustomResourceDefinition = serde_saphyr::from_str(&yaml).expect("CRD YAML");
    assert_eq!(back, crd);
}

/// Every `x-kubernetes-validations` rule in the schema, with the path of its node.
fn rules(node: &Value, at: &str, out: &mut Vec<(String, String)>) {
    if let Some(list) = node["x-kubernetes-validations"].as_array() {
        for r in list {
            out.push((at.to_owned(), r["rule"].as_str().expect("rule").to_owned()));
            assert!(r["message"].is_string(), "{at}: rule without message: {r}");
        }
    }
    if let Some(props) = node["properties"].as_object() {
        for (k, v) in props {
            rules(v, &format!("{at}.{k}"), out);
        }
    }
    if node["items"].is_object() {
        rules(&node["items"], &format!("{at}[]"), out);
    }
}

#[test]
fn every_rule_compiles_and_stays_within_the_cost_budget() {
    let s = schema();
    let compiled = compile_schema(&s);
    let mut all = Vec::new();
    rules(&s, "", &mut all);
    assert_eq!(all.len(), 19, "{all:#?}");
    fn errors(c: &kube::core::cel::CompiledSchema, out: &mut Vec<String>) {
        out.extend(c.compilation_errors().iter().map(|e| format!("{e:?}")));
        c.properties.values().for_each(|p| errors(p, out));
        if let Some(i) = &c.items {
            errors(i, out);
        }
    }
    let mut errs = Vec::new();
    errors(&compiled, &mut errs);
    assert!(errs.is_empty(), "{errs:#?}");
    // The estimate needs the node each rule sits on.
    for (at, rule) in &all {
        let mut node = &compiled;
        for key in at.split('.').filter(|k| !k.is_empty()) {
            node = match key.strip_suffix("[]") {
                Some(list) => node.properties[list].items.as_deref().expect("items"),
                None => &node.properties[key],
            };
        }
        let warnings = estimate_rule_cost(rule, node);
        assert!(
            !warnings.iter().any(|w| matches!(
                w.kind,
                WarningKind::CostExceeded | WarningKind::MissingBounds
            )),
            "{at}: {rule}: {warnings:?}"
        );
    }
}

/// Runs the CRD's CEL rules on a raw spec (schema defaults applied first, as the API
/// server does), returning the failure messages.
fn cel(spec: &str) -> Vec<String> {
    let yaml = format!(
        "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {{name: r, namespace: ns}}\nspec:\n{spec}"
    );
    let raw: Value = serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{yaml}\n{e}"));
    match Validator::new().validate(&schema(), &raw, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

const UP: &str = "  upstream: {url: \"ws://127.0.0.1:9000\"}\n";

#[test]
fn rules_admit_valid_routes() {
    for spec in [
        format!("  hostnames: [a.example.com]\n{UP}"),
        format!(
            "  hostnames: [chat.example.com, \"*.example.com\", \"*.a.b.example.com\", localhost, x-1.y9.io]\n{UP}"
        ),
        format!("  hostnames: [a.example.com]\n  path: {{type: Exact, value: /ws}}\n{UP}"),
        format!("  hostnames: [a.example.com]\n  path: {{value: \"/a/b%20c;x=1\"}}\n{UP}"),
        format!(
            "  hostnames: [a.example.com]\n  origins: {{allow: [\"https://app.example.com\", \"https://*.example.com\", \"http://localhost:*\", \"https://*.example.com:*\", \"http://localhost:8080\", \"HTTPS://App.Example.com\", \"chrome-extension://abcdef\", \"http://[::1]:8080\", \"http://127.0.0.1:65535\", \"https://*.bücher.example\", \"https://例え.テスト\", \"https://a_b.example.com\", \"https://example.com.\", \"*\"], allowNull: true, allowMissing: true, rejection: Close}}\n{UP}"
        ),
        format!(
            "  hostnames: [a.example.com]\n  subprotocols: [chat.v2, \"x-y_z\", \"a!#$%&'*+.^_`|~\"]\n{UP}"
        ),
        format!("  hostnames: [a.example.com]\n  subprotocols: []\n{UP}"),
        "  hostnames: [a.example.com]\n  upstream: {service: {name: chat-backend, port: 8080}}\n"
            .to_owned(),
        "  hostnames: [a.example.com]\n  upstream: {url: \"wss://backend.internal:9000/socket\"}\n"
            .to_owned(),
        "  hostnames: [a.example.com]\n  upstream: {url: \"ws://[fd00::5]:80/\"}\n".to_owned(),
        "  hostnames: [a.example.com]\n  upstream: {url: \"ws://10.0.0.5\"}\n".to_owned(),
        format!(
            "  hostnames: [a.example.com]\n  tls: {{secretName: chat-tls}}\n  auth: {{jwt: {{keys: {{secretName: jwt}}, tokenSources: [{{query: access_token}}, {{cookie: s}}]}}}}\n{UP}"
        ),
    ] {
        assert_eq!(cel(&spec), Vec::<String>::new(), "refused:\n{spec}");
    }
}

#[test]
fn rules_refuse_invalid_routes_with_their_message() {
    for (spec, message) in [
            (format!("  hostnames: [Chat.Example.com]\n{UP}"), "lowercase DNS name"),
            (format!("  hostnames: [\"bücher.example\"]\n{UP}"), "punycode"),
            (format!("  hostnames: [\"a.*.example.com\"]\n{UP}"), "whole leftmost label"),
            (format!("  hostnames: [\"*a.example.com\"]\n{UP}"), "whole leftmost label"),
            (format!("  hostnames: [\"*\"]\n{UP}"), "whole leftmost label"),
            (format!("  hostnames: [\"a..example.com\"]\n{UP}"), "lowercase DNS name"),
            (format!("  hostnames: [\"-a.example.com\"]\n{UP}"), "lowercase DNS name"),
            (format!("  hostnames: [\"a.example.com:8080\"]\n{UP}"), "lowercase DNS name"),
            (format!("  hostnames: [\"*.com\"]\n{UP}"), "at least two labels after `*.`"),
            (format!("  hostnames: [a.example.com, b.example.com, a.example.com]\n{UP}"), "unique"),
            (format!("  hostnames: [a.example.com]\n  path: {{value: ws}}\n{UP}"), "must start with `/`"),
            (format!("  hostnames: [a.example.com]\n  path: {{value: \"/ws?x=1\"}}\n{UP}"), "drop the query"),
            (format!("  hostnames: [a.example.com]\n  path: {{value: \"/ws#top\"}}\n{UP}"), "drop the query"),
            (format!("  hostnames: [a.example.com]\n  path: {{value: \"/a b\"}}\n{UP}"), "percent-encode"),
            (format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"null\"]}}\n{UP}"), "set `allowNull: true` instead"),
            (format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"https://app.example.com/\"]}}\n{UP}"), "no path or trailing slash"),
            (format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"https://app.example.com/chat\"]}}\n{UP}"), "no path or trailing slash"),
            (format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"app.example.com\"]}}\n{UP}"), "scheme://host[:port]"),
            (format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"https://*\"]}}\n{UP}"), "scheme://host[:port]"),
            (format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"https://a.*.example.com\"]}}\n{UP}"), "scheme://host[:port]"),
            (format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"https://u@a.com\"]}}\n{UP}"), "scheme://host[:port]"),
            (format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"https://a.com:0\"]}}\n{UP}"), "port 1-65535"),
            (format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"https://a.com:65536\"]}}\n{UP}"), "port 1-65535"),
            (format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"https://a.com,https://b.com\"]}}\n{UP}"), "scheme://host[:port]"),
            (format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"https://a.com?x\"]}}\n{UP}"), "scheme://host[:port]"),
            (format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"https://*.com\"]}}\n{UP}"), "at least two labels after `*.`"),
            (format!("  hostnames: [a.example.com]\n  origins: {{allow: [\"*.example.com\"]}}\n{UP}"), "scheme://host[:port]"),
            (format!("  hostnames: [a.example.com]\n  subprotocols: [\"a b\"]\n{UP}"), "HTTP token"),
            (format!("  hostnames: [a.example.com]\n  subprotocols: [\"a,b\"]\n{UP}"), "HTTP token"),
            (format!("  hostnames: [a.example.com]\n  subprotocols: [\"chat/2\"]\n{UP}"), "HTTP token"),
            ("  hostnames: [a.example.com]\n  upstream: {url: \"http://127.0.0.1:9000\"}\n".to_owned(), "url must be `ws://host:port[/path]`"),
            ("  hostnames: [a.example.com]\n  upstream: {url: \"ws://127.0.0.1:9000/x?y=1\"}\n".to_owned(), "without userinfo, query or fragment"),
            ("  hostnames: [a.example.com]\n  upstream: {url: \"ws://u:p@127.0.0.1:9000\"}\n".to_owned(), "without userinfo"),
            ("  hostnames: [a.example.com]\n  upstream: {url: \"ws://a:99999\"}\n".to_owned(), "url must be"),
            ("  hostnames: [a.example.com]\n  upstream: {url: \"ws://127.0.0.1:9000\", service: {name: s, port: 80}}\n".to_owned(), "exactly one of `service` or `url`"),
            ("  hostnames: [a.example.com]\n  upstream: {}\n".to_owned(), "exactly one of `service` or `url`"),
            ("  hostnames: [a.example.com]\n  upstream: {service: {name: Chat_Backend, port: 80}}\n".to_owned(), "service name must be"),
            (format!("  hostnames: [a.example.com]\n  auth: {{jwt: {{keys: {{secretName: jwt}}, tokenSources: [{{query: t, cookie: s}}]}}}}\n{UP}"), "exactly one of `query`, `header` or `cookie`"),
            (format!("  hostnames: [a.example.com]\n  tls: {{secretName: Chat_TLS}}\n{UP}"), "secretName must be a Secret's name"),
        ] {
            let got = cel(&spec);
            assert!(
                got.iter().any(|m| m.contains(message)),
                "want {message:?} for\n{spec}got {got:#?}"
            );
        }
}
