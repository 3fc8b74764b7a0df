//! The chart's pods on a real node: `helm install` onto kubelet, containerd and kube-proxy
//! built from their Go modules, in namespaces of the test's own (tests/support/node.rs),
//! with wsgate's image assembled from the test binary (`hack/image/build`). Traffic enters
//! through the chart's Service as a NodePort on the node's address, from the host side.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::helm::{CONDITIONS, STOPPED, helm};
use support::node::Cluster;
use support::{PATIENCE, Upstream, connect, echo};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/wsgate");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const RELEASE_NS: &str = "wsgate-system";
/// The chart Service's NodePort for WebSocket traffic.
const NODE_PORT: u16 = 30080;
const HOST: &str = "chat.example.com";
const ALLOWED: &str = "https://app.example.com";

/// How long the chart's pods may take to become Ready after `helm install` (the README
/// states the same bound).
const PODS_READY: Duration = Duration::from_secs(120);

/// One node at a time: each test starts its own cluster, and two would compete for this
/// machine's two cores.
static ONE_NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// wsgate's image, built once per test run into `target/image/`: from the binary
/// `WSGATE_IMAGE_BINARY` names (`hack/test` builds the release binary users run and names
/// it), else from this test build's binary with its debug sections left out.
fn wsgate_image() -> &'static std::path::Path {
    static IMAGE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = PathBuf::from(format!("{ROOT}/target/image"));
        std::fs::create_dir_all(&dir).expect("target/image");
        let binary = match std::env::var_os("WSGATE_IMAGE_BINARY") {
            Some(path) => PathBuf::from(path),
            None => {
                let stripped = dir.join("wsgate-test-stripped");
                let status = std::process::Command::new("objcopy")
                    .args(["--strip-debug", support::bin()])
                    .arg(&stripped)
                    .status()
                    .expect("run objcopy");
                assert!(status.success(), "objcopy --strip-debug failed");
                stripped
            }
        };
        let out = std::process::Command::new("bash")
            .arg(format!("{ROOT}/hack/image/build"))
            .arg("--binary")
            .arg(&binary)
            .arg("--out")
            .arg(dir.join("wsgate-node-test.tar"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run hack/image/build");
        assert!(out.status.success(), "hack/image/build failed; see above");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// A cluster with wsgate's image on its node and the chart installed with its defaults but a
/// NodePort Service; returns once every pod of the release is Ready, with the time it took.
fn installed() -> (Cluster, Duration) {
    let cluster = Cluster::start(&[wsgate_image().to_owned()]);
    let started = Instant::now();
    helm_ok(
        &cluster,
        &[
            "install",
            "wsgate",
            CHART,
            "--namespace",
            RELEASE_NS,
            "--create-namespace",
            "--set",
            "service.type=NodePort",
            "--set",
            &format!("service.nodePort={NODE_PORT}"),
        ],
    );
    rolled_out(&cluster, PODS_READY);
    let took = started.elapsed();
    eprintln!("helm install to every pod Ready: {took:.1?}");
    (cluster, took)
}

/// The names of the release's pods.
fn pods(cluster: &Cluster) -> Vec<String> {
    cluster
        .kubectl_ok(&[
            "get",
            "pods",
            "--namespace",
            RELEASE_NS,
            "-l",
            "app.kubernetes.io/name=wsgate",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Runs helm with `args` against `cluster`; its output, or a panic with its error and what
/// the cluster looks like.
fn helm_ok(cluster: &Cluster, args: &[&str]) -> String {
    let out = helm(Some(&cluster.plane.kubeconfig))
        .args(args)
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm {args:?} failed: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        cluster.explain()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the release's Deployment has rolled out: every pod of its newest template
/// Ready, the old ones gone.
fn rolled_out(cluster: &Cluster, patience: Duration) {
    cluster.kubectl_ok(&[
        "rollout",
        "status",
        "deployment/wsgate",
        "--namespace",
        RELEASE_NS,
        &format!("--timeout={}s", patience.as_secs()),
    ]);
}

/// The pod holding the chart's Lease.
fn lease_holder(cluster: &Cluster) -> String {
    cluster.kubectl_ok(&[
        "get",
        "lease",
        "wsgate",
        "--namespace",
        RELEASE_NS,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
}

/// `kubectl apply` of `yaml`.
fn apply_yaml(cluster: &Cluster, yaml: &str) {
    use std::io::Write;
    let mut child = cluster
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl apply");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write");
    assert!(
        child.wait().expect("wait").success(),
        "kubectl apply failed"
    );
}

/// Applies a route in namespace `demo` to `upstream` and waits until it is Ready.
fn route_to(cluster: &Cluster, upstream: &Upstream) {
    let yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: demo}}\n---\napiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {{name: chat, namespace: demo}}\nspec:\n  hostnames: [\"{HOST}\"]\n  origins: {{allow: [\"{ALLOWED}\"]}}\n  upstream: {{url: \"ws://{}\"}}\n",
        upstream.addr
    );
    apply_yaml(cluster, &yaml);
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "websocketroute/chat",
        "--namespace",
        "demo",
        &format!("--timeout={}s", PATIENCE.as_secs()),
    ]);
}

/// The chart Service's NodePort on the node, once kube-proxy forwards it to a ready pod.
async fn node_port(cluster: &Cluster) -> SocketAddr {
    let addr: SocketAddr = format!("{}:{NODE_PORT}", cluster.node_ip)
        .parse()
        .expect("addr");
    let deadline = Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing answers on the NodePort {addr}\n{}",
            cluster.explain()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_install_runs_two_ready_pods_that_both_serve_routes_through_the_service() {
    let _turn = ONE_NODE.lock().await;
    let (cluster, took) = installed();
    assert!(took < PODS_READY);
    let names = pods(&cluster);
    assert_eq!(names.len(), 2, "the default replica count: {names:?}");

    // One of them holds the Lease and writes the route's status.
    let holder = lease_holder(&cluster);
    assert!(names.contains(&holder), "holder {holder:?} of {names:?}");
    let upstream = Upstream::start_on(&cluster.host_ip).await;
    route_to(&cluster, &upstream);

    // What the README tells users to run next: a pod of the chart's own image runs
    // `wsgate probe` against both Services, found by their names in the cluster's DNS.
    let tested = helm_ok(
        &cluster,
        &["test", "wsgate", "--namespace", RELEASE_NS, "--logs"],
    );
    eprintln!("{tested}");

    // Through the NodePort: allowed 101 and echoed, denied 403.
    let gate = node_port(&cluster).await;
    // Each pod's access log says which handshakes it admitted. kube-proxy picks a pod per
    // connection, and may not list the second pod yet: go on until both have served.
    let admitted = |pod: &str| {
        cluster
            .kubectl_ok(&["logs", pod, "--namespace", RELEASE_NS])
            .lines()
            .filter(|l| l.contains(r#"route="demo/chat""#) && l.contains(r#"result="accepted""#))
            .count()
    };
    let deadline = Instant::now() + PATIENCE;
    let mut made = 0;
    let served = loop {
        for _ in 0..10 {
            echo(gate, HOST, "/", ALLOWED, &[]).await;
            let denied = connect(gate, HOST, "/", Some("https://evil.example"), &[]).await;
            assert_eq!(denied.err(), Some(403));
            made += 1;
        }
        let served: Vec<usize> = names.iter().map(|pod| admitted(pod)).collect();
        if served.iter().all(|&n| n > 0) || Instant::now() > deadline {
            break served;
        }
    };
    eprintln!("{made} allowed handshakes through the NodePort, admitted per pod: {served:?}");
    assert_eq!(served.iter().sum::<usize>(), made);
    assert!(served.iter().all(|&n| n > 0), "both pods serve: {served:?}");
}

/// How one of the WebSockets open before a rollout ended, and whether its client got
/// through again.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    /// A Close frame with this code; the reconnection echoed (true) or failed (false).
    Closed(u16, bool),
    /// No Close frame: a reset, an EOF or a protocol error.
    Broken(String),
}

/// Opens a WebSocket through `gate`, echoes once and counts itself in `open`, waits for its
/// end, then reconnects once.
async fn held(gate: SocketAddr, open: Arc<AtomicUsize>) -> Ending {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = connect(gate, HOST, "/", Some(ALLOWED), &[])
        .await
        .unwrap_or_else(|code| panic!("refused with {code} before the rollout"));
    ws.send(Message::text("before")).await.expect("send");
    assert_eq!(
        ws.next().await.expect("reply").expect("echo"),
        Message::text("before")
    );
    open.fetch_add(1, Ordering::SeqCst);
    let code = loop {
        match ws.next().await {
            Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(Message::Close(None))) => break 1005,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Ending::Broken(e.to_string()),
            None => return Ending::Broken("EOF without a Close frame".into()),
        }
    };
    // tungstenite answers the Close while the stream is read to its end.
    while ws.next().await.is_some() {}
    let again = match connect(gate, HOST, "/", Some(ALLOWED), &[]).await {
        Ok((mut ws, _)) => {
            ws.send(Message::text("after")).await.is_ok()
                && matches!(ws.next().await, Some(Ok(m)) if m == Message::text("after"))
        }
        Err(_) => false,
    };
    Ending::Closed(code, again)
}

/// One new handshake and echo, as a client arriving during a rollout makes it; the failure
/// if it did not get through.
async fn arrival(gate: SocketAddr) -> Result<(), String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let tcp = tokio::net::TcpStream::connect(gate)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request = format!("ws://{HOST}:{NODE_PORT}/");
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(request)
            .expect("request");
    request
        .headers_mut()
        .insert("origin", ALLOWED.parse().expect("origin"));
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    ws.send(Message::text("new"))
        .await
        .map_err(|e| format!("send: {e}"))?;
    match ws.next().await {
        Some(Ok(m)) if m == Message::text("new") => {}
        other => return Err(format!("echo: {other:?}")),
    }
    ws.close(None).await.map_err(|e| format!("close: {e}"))?;
    while ws.next().await.is_some() {}
    Ok(())
}

/// Holds `HELD` WebSockets through the Service while `roll` replaces the pods, with new
/// clients arriving all along; checks that every held one ended with Close 1012 and got
/// through again, and that no arrival was refused or reset.
async fn rollout_drops_nothing(cluster: &Cluster, what: &str, roll: impl FnOnce()) {
    const HELD: usize = 200;
    let gate = node_port(cluster).await;
    let open = Arc::new(AtomicUsize::new(0));
    let held: Vec<_> = (0..HELD)
        .map(|_| tokio::spawn(held(gate, open.clone())))
        .collect();
    // Every held connection is open before the rollout starts.
    let deadline = Instant::now() + PATIENCE;
    while open.load(Ordering::SeqCst) < HELD {
        assert!(Instant::now() < deadline, "{HELD} connections not open");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let arrivals = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let at = Instant::now();
                results.push((at, arrival(gate).await));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            results
        })
    };
    let started = Instant::now();
    roll();
    rolled_out(cluster, Duration::from_secs(180));
    let rolled = started.elapsed();
    let ended = Instant::now();
    let mut endings = std::collections::BTreeMap::new();
    for task in held {
        let ending = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("every held connection ends within the drain")
            .expect("held task");
        *endings.entry(ending).or_insert(0usize) += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let arrivals = arrivals.await.expect("arrivals task");
    let failed: Vec<&String> = arrivals
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    let during = arrivals
        .iter()
        .filter(|(at, _)| (started..ended).contains(at))
        .count();
    eprintln!(
        "{what}: rollout took {rolled:.1?}; {HELD} held connections ended {endings:?}; {during} new handshakes began during the rollout and {} more during the drain, {} failed: {failed:?}",
        arrivals.len() - during,
        failed.len()
    );
    assert_eq!(
        endings.into_iter().collect::<Vec<_>>(),
        [(Ending::Closed(1012, true), HELD)],
        "every held connection ends with 1012 and reconnects"
    );
    assert!(failed.is_empty(), "arrivals refused or reset: {failed:?}");
    // An arrival every few tens of milliseconds: a rollout of seconds sees many.
    assert!(
        during >= 10,
        "only {during} arrivals began during the rollout"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_restart_and_helm_upgrade_close_every_websocket_with_1012_and_refuse_no_arrival() {
    let _turn = ONE_NODE.lock().await;
    let (cluster, _) = installed();
    let upstream = Upstream::start_on(&cluster.host_ip).await;
    route_to(&cluster, &upstream);
    rollout_drops_nothing(&cluster, "kubectl rollout restart", || {
        cluster.kubectl_ok(&[
            "rollout",
            "restart",
            "deployment/wsgate",
            "--namespace",
            RELEASE_NS,
        ]);
    })
    .await;
    rollout_drops_nothing(&cluster, "helm upgrade --set logLevel=debug", || {
        helm_ok(
            &cluster,
            &[
                "upgrade",
                "wsgate",
                CHART,
                "--namespace",
                RELEASE_NS,
                "--reuse-values",
                "--set",
                "logLevel=debug",
            ],
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_lease_holders_pod_hands_status_writing_to_the_other_pod_in_time() {
    let _turn = ONE_NODE.lock().await;
    let (cluster, _) = installed();
    let upstream = Upstream::start_on(&cluster.host_ip).await;
    route_to(&cluster, &upstream);
    let old = lease_holder(&cluster);
    assert!(pods(&cluster).contains(&old), "{old:?} holds the Lease");
    // kubectl delete waits until the pod is gone: preStop, drain, exit.
    cluster.kubectl_ok(&["delete", "pod", &old, "--namespace", RELEASE_NS]);
    let gone = Instant::now();
    // The stopping holder gave the Lease up (the claim would still run for seconds).
    assert_ne!(
        lease_holder(&cluster),
        old,
        "the Lease is given up, not left to expire"
    );
    // A route made now can only get its status from a pod that is still there.
    let yaml = format!(
        "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {{name: later, namespace: demo}}\nspec:\n  hostnames: [\"later.example.com\"]\n  origins: {{allow: [\"{ALLOWED}\"]}}\n  upstream: {{url: \"ws://{}\"}}\n",
        upstream.addr
    );
    apply_yaml(&cluster, &yaml);
    let lease_seconds = 15; // the chart's lease.durationSeconds
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "websocketroute/later",
        "--namespace",
        "demo",
        &format!("--timeout={lease_seconds}s"),
    ]);
    let took = gone.elapsed();
    let new = lease_holder(&cluster);
    eprintln!("the holder's pod gone: {new} wrote status {took:.1?} later");
    assert_ne!(new, old);
    assert!(
        pods(&cluster).contains(&new),
        "{new:?} is a pod of the release"
    );
}

/// The container processes of the release's pods on the node: pid and `/proc` text.
fn wsgate_processes() -> Vec<(u32, String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(pid) = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .parse::<u32>()
        else {
            continue;
        };
        let read =
            |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
        // This test's node only: its cgroups are named for it.
        if read("cmdline") == "/usr/local/bin/wsgate\0controller\0"
            && read("cgroup").contains("wsgate-node-")
        {
            found.push((pid, read("status"), read("mountinfo")));
        }
    }
    found
}

/// A field of `/proc/PID/status`.
fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map_or("", str::trim)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pods_run_confined_as_the_chart_says_with_the_kubelet_probing_them_and_uninstall_leaves_none()
 {
    let _turn = ONE_NODE.lock().await;
    let (cluster, _) = installed();

    // What the kernel says of each wsgate process the node runs.
    let processes = wsgate_processes();
    assert_eq!(processes.len(), 2, "one wsgate process per pod");
    for (pid, status, mountinfo) in &processes {
        for (field, want) in [
            ("Uid", "65532\t65532\t65532\t65532"),
            ("Gid", "65532\t65532\t65532\t65532"),
            ("CapInh", "0000000000000000"),
            ("CapPrm", "0000000000000000"),
            ("CapEff", "0000000000000000"),
            ("CapBnd", "0000000000000000"),
            ("CapAmb", "0000000000000000"),
            ("NoNewPrivs", "1"),
            // 2: a seccomp filter is installed (the runtime's default profile).
            ("Seccomp", "2"),
        ] {
            assert_eq!(status_field(status, field), want, "{field} of pid {pid}");
        }
        let root = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some("/"))
            .expect("a root mount");
        let options = root.split(' ').nth(5).unwrap_or("");
        assert!(
            options.split(',').any(|o| o == "ro"),
            "root filesystem read-only for pid {pid}: {root}"
        );
    }

    // The kubelet runs both probes against wsgate's admin endpoints, and they pass.
    let spec = cluster.kubectl_ok(&[
        "get",
        "deployment",
        "wsgate",
        "--namespace",
        RELEASE_NS,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].livenessProbe.httpGet.path} {.spec.template.spec.containers[0].readinessProbe.httpGet.path}",
    ]);
    assert_eq!(spec, "/healthz /readyz");
    let seccomp = cluster.kubectl_ok(&[
        "get",
        "deployment",
        "wsgate",
        "--namespace",
        RELEASE_NS,
        "-o",
        "jsonpath={.spec.template.spec.securityContext.seccompProfile.type}",
    ]);
    assert_eq!(
        seccomp, "RuntimeDefault",
        "the filter above is the runtime's default"
    );
    let names = pods(&cluster);
    // The liveness probe runs every 10 s.
    let deadline = Instant::now() + PATIENCE;
    let probes = loop {
        let probes = cluster.kubelet_metrics("/metrics/probes");
        let passed = |pod: &str, kind: &str| {
            probes.lines().any(|l| {
                l.starts_with("prober_probe_total{")
                    && l.contains(&format!("pod=\"{pod}\""))
                    && l.contains(&format!("probe_type=\"{kind}\""))
                    && l.contains("container=\"wsgate\"")
                    && l.contains("result=\"successful\"")
                    && !l.ends_with(" 0")
            })
        };
        if names
            .iter()
            .all(|pod| passed(pod, "Liveness") && passed(pod, "Readiness"))
        {
            break probes;
        }
        assert!(
            Instant::now() < deadline,
            "the kubelet did not report passing liveness and readiness probes:\n{probes}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for line in probes
        .lines()
        .filter(|l| l.starts_with("prober_probe_total{") && l.contains("wsgate"))
    {
        eprintln!("{line}");
        assert!(
            !(line.contains("probe_type=\"Liveness\"") && line.contains("result=\"failed\"")),
            "a liveness probe failed: {line}"
        );
    }
    let restarts = cluster.kubectl_ok(&[
        "get",
        "pods",
        "--namespace",
        RELEASE_NS,
        "-o",
        "jsonpath={.items[*].status.containerStatuses[*].restartCount}",
    ]);
    assert_eq!(restarts, "0 0", "no container was restarted");

    // helm uninstall: its pre-delete hook scales the Deployment to 0 first, so the last
    // replica marks the route GatewayStopped while it may still write status; then the
    // pods are gone and nothing of the release runs.
    let upstream = Upstream::start_on(&cluster.host_ip).await;
    route_to(&cluster, &upstream);
    let out = helm(Some(&cluster.plane.kubeconfig))
        .args(["uninstall", "wsgate", "--namespace", RELEASE_NS, "--wait"])
        .output()
        .expect("run helm");
    if !out.status.success() {
        let job = cluster
            .kubectl()
            .args(["logs", "job/wsgate-uninstall", "--namespace", RELEASE_NS])
            .output()
            .expect("run kubectl");
        panic!(
            "helm uninstall failed: {}\nthe hook's log: {}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&job.stdout),
            String::from_utf8_lossy(&job.stderr),
            cluster.explain()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pods(&cluster).is_empty() || !wsgate_processes().is_empty() {
        assert!(
            Instant::now() < deadline,
            "pods left after helm uninstall: {:?}",
            pods(&cluster)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let conditions = cluster.kubectl_ok(&[
        "get",
        "websocketroute/chat",
        "--namespace",
        "demo",
        "-o",
        CONDITIONS,
    ]);
    assert_eq!(
        conditions.trim(),
        STOPPED,
        "after helm uninstall the route says nothing serves it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_node_leaves_no_link_cgroup_or_process_behind() {
    let _turn = ONE_NODE.lock().await;
    let cluster = Cluster::start(&[]);
    let pid = cluster.node_pid();
    let link = format!("wsn{pid}");
    let cgroup = format!("wsgate-node-{pid}");
    let links = || {
        let out = std::process::Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let cgroups = || {
        let out = std::process::Command::new("find")
            .args(["/sys/fs/cgroup", "-maxdepth", "5", "-name", &cgroup])
            .output()
            .expect("run find");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let kubelets = || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &cluster_marker(&cluster)])
            .output()
            .expect("run pgrep");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // While it runs, all three are there: the checks below can see them.
    assert!(links().contains(&format!("{link}@")), "{}", links());
    assert!(!cgroups().is_empty(), "no cgroup {cgroup}");
    assert!(!kubelets().is_empty(), "no kubelet of this node");
    let marker = cluster_marker(&cluster);
    drop(cluster);
    assert!(!links().contains(&format!("{link}@")), "{}", links());
    assert_eq!(cgroups(), "", "cgroups left");
    let left = std::process::Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .expect("run pgrep");
    assert!(
        left.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// A string in the command line of every process of `cluster`'s node: its state directory.
fn cluster_marker(cluster: &Cluster) -> String {
    cluster.state_dir().display().to_string()
}
