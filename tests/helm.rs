//! The user's path, end to end, against a real kube-apiserver: the Helm chart lints,
//! renders and is accepted by the API server with every option on; `helm install`, then
//! `wsgate controller` running as the chart's ServiceAccount (so a missing RBAC rule fails
//! here), `kubectl apply` of an example route, `kubectl wait`, a WebSocket through the proxy,
//! `kubectl get wsr`, `helm upgrade`, `helm uninstall`. Helm and kubectl are built from
//! their Go modules (`hack/helm/build`, `hack/control-plane/build`).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use support::control_plane::ControlPlane;
use support::helm::{CONDITIONS, STOPPED, helm, helm_dir};
use support::{Gate, Upstream, connect, echo};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/wsgate");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const RELEASE_NS: &str = "wsgate-system";
/// The example route's upstream (`examples/routes/chat.yaml`).
const EXAMPLE_UPSTREAM: &str = "127.0.0.1:9001";

/// The directory holding `helm` and the ServiceMonitor CRD, built on first use.
/// Runs a command, returning its output; panics with stderr when it fails or when the API
/// server warned about the schema.
fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    no_schema_warnings(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CRD the API server finds fault with makes every apply print warnings; ours must not.
fn no_schema_warnings(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("unrecognized format"),
        "the API server warned:\n{stderr}"
    );
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn kubectl(plane: &ControlPlane, kubeconfig: &Path) -> Command {
    let mut cmd = Command::new(plane.bin.join("kubectl"));
    cmd.arg("--kubeconfig").arg(kubeconfig);
    cmd
}

/// Runs kubectl (as admin) with `input` on standard input.
fn kubectl_with_input(plane: &ControlPlane, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = kubectl(plane, &plane.kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to kubectl");
    child.wait_with_output().expect("kubectl")
}

/// `kubectl apply` of `yaml` from standard input; returns what it printed.
fn apply(plane: &ControlPlane, args: &[&str], yaml: &str) -> String {
    let out = kubectl_with_input(plane, &[&["apply", "-f", "-"], args].concat(), yaml);
    assert!(
        out.status.success(),
        "kubectl apply {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    no_schema_warnings(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn namespace(plane: &ControlPlane, name: &str) {
    apply(
        plane,
        &[],
        &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n"),
    );
}

#[test]
fn the_charts_crd_is_the_generated_crd() {
    let chart = std::fs::read_to_string(format!("{CHART}/crds/websocketroutes.wsgate.dev.yaml"))
        .expect("chart CRD");
    let top = std::fs::read_to_string(format!("{ROOT}/crds/websocketroutes.wsgate.dev.yaml"))
        .expect("crds/ file");
    assert!(
        chart == top,
        "charts/wsgate/crds/ differs from crds/: run `cp crds/websocketroutes.wsgate.dev.yaml charts/wsgate/crds/`"
    );
}

/// Every leaf of `values` (`resources` counts as one), by dotted key.
fn leaves(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match value {
        serde_json::Value::Object(map) if !map.is_empty() && prefix != "resources" => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

#[test]
fn the_readme_lists_every_chart_value_with_its_default() {
    let values: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(format!("{CHART}/values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml parses");
    let mut expected = BTreeMap::new();
    leaves("", &values, &mut expected);
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).expect("README");
    let mut listed = BTreeMap::new();
    for row in readme
        .lines()
        .skip_while(|l| !l.starts_with("| value | default | meaning |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
    {
        let cells: Vec<&str> = row
            .split(" | ")
            .map(|c| c.trim_matches(['|', ' ', '`']))
            .collect();
        assert!(
            cells.len() == 3 && !cells[2].is_empty(),
            "README chart row without a meaning: {row}"
        );
        let default: serde_json::Value = serde_json::from_str(cells[1])
            .unwrap_or_else(|e| panic!("README default of `{}` is not JSON: {e}", cells[0]));
        listed.insert(cells[0].to_owned(), default);
    }
    assert_eq!(
        listed, expected,
        "the README's chart table must list every value of charts/wsgate/values.yaml with its default (as JSON)"
    );
}

#[tokio::test]
async fn the_chart_lints_renders_and_every_manifest_is_accepted_by_the_api_server() {
    let plane = ControlPlane::start();
    let crds = format!(
        "{}\n---\n{}",
        std::fs::read_to_string(format!("{CHART}/crds/websocketroutes.wsgate.dev.yaml"))
            .expect("CRD"),
        std::fs::read_to_string(helm_dir().join("servicemonitors.yaml"))
            .expect("ServiceMonitor CRD"),
    );
    apply(&plane, &["--server-side"], &crds);
    for ns in [RELEASE_NS, "red", "blue"] {
        namespace(&plane, ns);
    }
    run_ok(kubectl(&plane, &plane.kubeconfig).args([
        "wait",
        "--for=condition=Established",
        "crd/servicemonitors.monitoring.coreos.com",
        "--timeout=30s",
    ]));
    let all_on = format!("{CHART}/ci/all-on-values.yaml");
    for values in [None, Some(all_on.as_str())] {
        let with_values = |cmd: &mut Command| {
            if let Some(v) = values {
                cmd.args(["-f", v]);
            }
        };
        let mut lint = helm(None);
        lint.args(["lint", "--strict", CHART]);
        with_values(&mut lint);
        run_ok(&mut lint);
        let mut template = helm(None);
        template.args(["template", "wsgate", CHART, "--namespace", RELEASE_NS]);
        with_values(&mut template);
        let rendered = run_ok(&mut template);
        let accepted = apply(&plane, &["--dry-run=server"], &rendered);
        let rendered_objects = rendered.lines().filter(|l| l.starts_with("kind: ")).count();
        assert_eq!(
            accepted.matches("(server dry run)").count(),
            rendered_objects,
            "{values:?}: {accepted}"
        );
        assert!(rendered_objects >= 9, "{rendered}");
    }

    // A typo in values fails with a message naming it; so does one inside `resources`, and
    // a quantity Kubernetes would refuse.
    for (set, says) in [
        ("replicaCont=3", "'replicaCont' not allowed"),
        ("resources.requets.cpu=1", "'requets' not allowed"),
        ("resources.requests.cpu=lots", "resources/requests/cpu"),
        (
            "shutdown.jitterSeconds=30",
            "shutdown.jitterSeconds (30) must be shorter than shutdown.graceSeconds (30)",
        ),
    ] {
        let out = run(helm(None).args(["template", "wsgate", CHART, "--set", set]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(stderr.contains(says), "{set}: {stderr}");
    }

    // By default the replicas prefer different nodes, and `helm test` probes the gateway
    // with its own image; a chosen affinity replaces the default one.
    let default = run_ok(helm(None).args(["template", "wsgate", CHART]));
    assert!(
        default.contains("podAntiAffinity:")
            && default.contains("topologyKey: kubernetes.io/hostname"),
        "{default}"
    );
    assert!(default.contains("\"helm.sh/hook\": test"), "{default}");
    assert!(default.contains("- probe\n"), "{default}");
    assert!(default.contains("ephemeral-storage: 64Mi"), "{default}");
    let unspread = run_ok(helm(None).args([
        "template",
        "wsgate",
        CHART,
        "--set",
        "spreadAcrossNodes=false",
    ]));
    assert!(!unspread.contains("podAntiAffinity:"), "{unspread}");
}

/// The example upstream's port is fixed, so the end-to-end tests take turns.
static EXAMPLE_PORT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Installs the chart, runs wsgate as its ServiceAccount, and walks the user's path.
async fn walk_the_users_path(watch_namespaces: &[&str]) {
    let _turn = EXAMPLE_PORT.lock().await;
    let plane = ControlPlane::start();
    let admin = plane.kubeconfig.clone();
    // The chart puts Roles into watched namespaces, so they exist first.
    for ns in ["demo", "other"] {
        namespace(&plane, ns);
    }
    let mut install = helm(Some(&admin));
    install.args([
        "install",
        "wsgate",
        CHART,
        "--namespace",
        RELEASE_NS,
        "--create-namespace",
    ]);
    if !watch_namespaces.is_empty() {
        install.args([
            "--set",
            &format!("watchNamespaces={{{}}}", watch_namespaces.join(",")),
        ]);
    }
    let notes = run_ok(&mut install);
    assert!(
        notes.contains("kubectl wait --for=condition=Ready"),
        "{notes}"
    );

    // wsgate on this machine, as the chart's ServiceAccount: what RBAC lacks fails here.
    let token = run_ok(kubectl(&plane, &admin).args([
        "create",
        "token",
        "wsgate",
        "--namespace",
        RELEASE_NS,
    ]));
    let text = std::fs::read_to_string(&admin).expect("kubeconfig");
    let as_sa = admin.with_file_name("kubeconfig-chart-sa");
    std::fs::write(&as_sa, text.replace("admin-token", token.trim())).expect("write kubeconfig");
    let namespaces = watch_namespaces.join(",");
    let mut env: Vec<(&str, &std::ffi::OsStr)> = vec![
        ("KUBECONFIG", as_sa.as_os_str()),
        ("WSGATE_LEASE_NAMESPACE", RELEASE_NS.as_ref()),
        // As the chart's Deployment sets it.
        ("WSGATE_DEPLOYMENT", "wsgate".as_ref()),
    ];
    if !watch_namespaces.is_empty() {
        env.push(("WSGATE_NAMESPACE", namespaces.as_ref()));
    }
    let up = Upstream::start_on_addr(EXAMPLE_UPSTREAM).await;
    let mut gate = Gate::launch(&["controller".into()], &env).await;

    let example = std::fs::read_to_string(format!("{ROOT}/examples/routes/chat.yaml"))
        .expect("example route");
    apply(&plane, &[], &example);
    run_ok(kubectl(&plane, &admin).args([
        "wait",
        "--for=condition=Ready",
        "wsr/chat",
        "--namespace",
        "demo",
        "--timeout=30s",
    ]));
    // The Lease is watched too (by name, which the chart's Role is limited to).
    assert!(!gate.log().contains("lease watch failed"), "{}", gate.log());
    let chat_v2 = [("Sec-WebSocket-Protocol", "chat.v2")];
    echo(
        gate.proxy,
        "chat.localhost",
        "/ws",
        "https://app.example.com",
        &chat_v2,
    )
    .await;
    assert_eq!(
        connect(
            gate.proxy,
            "chat.localhost",
            "/ws",
            Some("https://evil.example"),
            &chat_v2
        )
        .await
        .err(),
        Some(403)
    );
    let table = run_ok(kubectl(&plane, &admin).args(["get", "wsr", "--namespace", "demo"]));
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "HOSTS", "PATH", "ORIGINS", "READY", "REASON", "AGE"],
        "{table}"
    );
    // Lists read as lists, not JSON.
    assert!(
        table.lines().nth(1).is_some_and(|l| l.starts_with("chat ")
            && l.contains("chat.example.com, chat.localhost")
            && l.contains("https://app.example.com, https://*.example.com")
            && l.contains("True")
            && l.contains("Ready")),
        "{table}"
    );
    let wide =
        run_ok(kubectl(&plane, &admin).args(["get", "wsr", "--namespace", "demo", "-o", "wide"]));
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header[header.len() - 3..],
        ["UPSTREAM", "SNAPSHOT", "GENERATION"],
        "{wide}"
    );
    assert!(wide.contains("ws://127.0.0.1:9001/chat"), "{wide}");
    drop(up);

    // A conflicting copy is refused with a Warning Event (the chart grants Events).
    apply(
        &plane,
        &[],
        &example.replace("name: chat\n", "name: chat-copy\n"),
    );
    let deadline = std::time::Instant::now() + support::PATIENCE;
    loop {
        let events = run_ok(kubectl(&plane, &admin).args([
            "get",
            "events.events.k8s.io",
            "--namespace",
            "demo",
            "--field-selector",
            "reason=Conflicted,type=Warning",
            "-o",
            "jsonpath={.items[*].regarding.name}",
        ]));
        if events.split_whitespace().any(|n| n == "chat-copy") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no Conflicted Event: {}",
            gate.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    if !watch_namespaces.is_empty() {
        // A route elsewhere is not served and gets no status; no cluster-wide rights.
        apply(
            &plane,
            &[],
            &example
                .replace("namespace: demo", "namespace: other")
                .replace("value: /ws", "value: /elsewhere"),
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let status = run_ok(kubectl(&plane, &admin).args([
            "get",
            "wsr/chat",
            "--namespace",
            "other",
            "-o",
            "jsonpath={.status}",
        ]));
        assert_eq!(status, "", "a route outside watchNamespaces got status");
        assert_eq!(
            connect(
                gate.proxy,
                "chat.localhost",
                "/elsewhere",
                Some("https://app.example.com"),
                &chat_v2
            )
            .await
            .err(),
            Some(404)
        );
        let sa = format!("system:serviceaccount:{RELEASE_NS}:wsgate");
        let can = |args: &[&str]| {
            let out = run(kubectl(&plane, &admin)
                .args(["auth", "can-i", "--as", &sa])
                .args(args));
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        assert_eq!(
            can(&["list", "websocketroutes.wsgate.dev", "--all-namespaces"]),
            "no"
        );
        assert_eq!(
            can(&["list", "websocketroutes.wsgate.dev", "-n", "other"]),
            "no"
        );
        assert_eq!(
            can(&["list", "websocketroutes.wsgate.dev", "-n", "demo"]),
            "yes"
        );
    }

    // Upgrade with changed values.
    let mut upgrade = helm(Some(&admin));
    upgrade.args([
        "upgrade",
        "wsgate",
        CHART,
        "--namespace",
        RELEASE_NS,
        "--reuse-values",
        "--set",
        "replicaCount=3",
    ]);
    run_ok(&mut upgrade);
    let replicas = run_ok(kubectl(&plane, &admin).args([
        "get",
        "deployment/wsgate",
        "--namespace",
        RELEASE_NS,
        "-o",
        "jsonpath={.spec.replicas}",
    ]));
    assert_eq!(replicas, "3");

    // Scaled to 0, the last replica to stop says the routes are not served.
    run_ok(kubectl(&plane, &admin).args([
        "scale",
        "deployment/wsgate",
        "--namespace",
        RELEASE_NS,
        "--replicas=0",
    ]));
    gate.terminate();
    assert_eq!(gate.wait_exit().await, Some(0), "{}", gate.log());
    let conditions = run_ok(kubectl(&plane, &admin).args([
        "get",
        "wsr/chat",
        "--namespace",
        "demo",
        "-o",
        CONDITIONS,
    ]));
    assert_eq!(conditions.trim(), STOPPED, "{}", gate.log());

    // Uninstall leaves nothing but the CRD (Helm never deletes what `crds/` installed), and
    // no Lease at all, labelled or not.
    // No node runs the pre-delete hook's Job here; tests/node.rs runs it.
    run_ok(helm(Some(&admin)).args([
        "uninstall",
        "wsgate",
        "--namespace",
        RELEASE_NS,
        "--no-hooks",
    ]));
    let leases = run_ok(kubectl(&plane, &admin).args([
        "get",
        "leases",
        "--namespace",
        RELEASE_NS,
        "-o",
        "name",
    ]));
    assert_eq!(leases, "", "a Lease outlived the release");
    let left = run_ok(kubectl(&plane, &admin).args([
        "get",
        "deployments,services,serviceaccounts,roles,rolebindings,clusterroles,clusterrolebindings,poddisruptionbudgets,horizontalpodautoscalers,networkpolicies,leases",
        "--all-namespaces",
        "-l",
        "app.kubernetes.io/instance=wsgate",
        "-o",
        "name",
    ]));
    assert_eq!(left, "", "objects left after uninstall");
    run_ok(kubectl(&plane, &admin).args(["get", "crd", "websocketroutes.wsgate.dev"]));
}

#[tokio::test]
async fn helm_install_then_kubectl_routes_serve_as_the_charts_service_account() {
    walk_the_users_path(&[]).await;
}

#[tokio::test]
async fn with_watch_namespaces_only_those_routes_serve_and_rights_stay_there() {
    walk_the_users_path(&["demo"]).await;
}

#[tokio::test]
async fn the_pods_pass_the_restricted_pod_security_standard_and_drain_in_time() {
    let plane = ControlPlane::start();
    let rendered =
        run_ok(helm(None).args(["template", "wsgate", CHART, "--namespace", RELEASE_NS]));
    let deployment: serde_json::Value = rendered
        .split("\n---")
        .filter_map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).ok())
        .find(|doc| doc["kind"] == "Deployment")
        .expect("a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["lifecycle"]["preStop"]["sleep"]["seconds"], 5);
    // preStop 5 + drain delay 2 + grace 30 + 5 spare.
    assert_eq!(pod["terminationGracePeriodSeconds"], 42);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);

    // The real API server's Pod Security admission judges the pod the chart would run.
    apply(
        &plane,
        &[],
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: restricted\n  labels: {pod-security.kubernetes.io/enforce: restricted}\n",
    );
    let as_pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "wsgate-pod-check", "namespace": "restricted"},
        "spec": pod,
    });
    let out = apply(&plane, &["--dry-run=server"], &as_pod.to_string());
    assert!(out.contains("created (server dry run)"), "{out}");

    // And it would refuse a pod that is not locked down, so the check above means something.
    let mut loose = as_pod.clone();
    loose["spec"]["containers"][0]["securityContext"] = serde_json::json!({});
    let out = kubectl_with_input(
        &plane,
        &["create", "--dry-run=server", "-f", "-"],
        &loose.to_string(),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("violates PodSecurity \"restricted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The (resource, verb) pairs a README sentence grants: `verb`, ... on `resource`, ...
/// statements separated by `;`, notes in parentheses left out, API groups dropped.
fn documented_rights(text: &str) -> std::collections::BTreeSet<(String, String)> {
    let mut plain = String::new();
    let mut depth = 0;
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    let ticked =
        |s: &str| -> Vec<String> { s.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
    let mut rights = std::collections::BTreeSet::new();
    for statement in plain.split(';') {
        let Some((verbs, resources)) = statement.split_once(" on ") else {
            continue;
        };
        for resource in ticked(resources) {
            // `discovery.k8s.io/endpointslices` → endpointslices; `websocketroutes.wsgate.dev`
            // → websocketroutes; `websocketroutes/status` stays.
            let resource = match resource.split_once('/') {
                Some((group, rest)) if group.contains('.') => rest.to_owned(),
                _ => resource.split('.').next().unwrap_or_default().to_owned(),
            };
            for verb in ticked(verbs) {
                rights.insert((resource.clone(), verb));
            }
        }
    }
    rights
}

#[test]
fn the_readmes_rbac_list_is_what_the_chart_grants() {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).expect("README");
    let bullet: String = readme
        .lines()
        .skip_while(|l| !l.starts_with("- **RBAC** the controller needs:"))
        .take_while(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let documented =
        documented_rights(bullet.trim_start_matches("- **RBAC** the controller needs:"));
    let rendered = run_ok(helm(None).args(["template", "wsgate", CHART]));
    let mut granted = std::collections::BTreeSet::new();
    for doc in rendered.split("\n---") {
        let Ok(object) = serde_saphyr::from_str::<serde_json::Value>(doc) else {
            continue;
        };
        if !matches!(object["kind"].as_str(), Some("ClusterRole" | "Role")) {
            continue;
        }
        // The uninstall hook's Role is the hook Job's, not the controller's: README lists it
        // beside the hook.
        if object["metadata"]["annotations"]["helm.sh/hook"].is_string() {
            continue;
        }
        for rule in object["rules"].as_array().into_iter().flatten() {
            for resource in rule["resources"].as_array().into_iter().flatten() {
                for verb in rule["verbs"].as_array().into_iter().flatten() {
                    granted.insert((
                        resource.as_str().expect("resource").to_owned(),
                        verb.as_str().expect("verb").to_owned(),
                    ));
                }
            }
        }
    }
    assert!(!granted.is_empty(), "{rendered}");
    assert_eq!(
        documented, granted,
        "README's RBAC list and the chart's Roles differ"
    );
}
