//! How long a policy change takes to reach the data plane in controller mode: the time from
//! `kubectl apply` returning to the first handshake that sees the new allowlist, with 1 and
//! with 1,000 routes in the cluster. Real kube-apiserver, etcd, kubectl, Helm and wsgate
//! binary; the controller runs out of cluster as the Helm chart's ServiceAccount, with the
//! chart's RBAC.
//!
//! Run: `bash bench/reconfigure` (or `cargo bench --bench reconfigure`). Prints figures;
//! asserts nothing about them.

#![allow(missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kube::Api;
use kube::api::PostParams;
use support::control_plane::ControlPlane;
use support::{Gate, Upstream, connect};
use wsgate::api::WebSocketRoute;

/// Policy changes measured per cluster size.
const CHANGES: usize = 20;
const HOST: &str = "measured.example.test";

fn route_yaml(name: &str, host: &str, origin: &str, upstream: &str) -> String {
    support::route(
        name,
        host,
        "/",
        &format!("{{allow: [\"{origin}\"]}}"),
        upstream,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: only build then.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("reconfigure: a benchmark; run it with `bash bench/reconfigure`");
        return;
    }
    eprintln!("starting etcd and kube-apiserver (builds them on first use) ...");
    let plane = ControlPlane::start();
    let client = plane.client().await;
    plane.install_crd(&client).await;
    let up = Upstream::start().await;
    let as_chart = chart_service_account(&plane);
    let gate = Gate::launch(
        &["controller".into()],
        &[
            ("KUBECONFIG", as_chart.as_os_str()),
            ("WSGATE_LEASE_NAMESPACE", RELEASE_NS.as_ref()),
            ("WSGATE_DEPLOYMENT", "wsgate".as_ref()),
            ("WSGATE_LOG", "info".as_ref()),
        ],
    )
    .await;
    let api: Api<WebSocketRoute> = Api::namespaced(client, "default");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("measured.yaml");

    println!(
        "reconfiguration latency: `kubectl apply` returned -> first handshake with the new policy"
    );
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>21}",
        "routes", "min", "median", "p90", "max", "compile+swap (mean)"
    );
    let mut in_cluster = 0;
    for total in [1, 1000] {
        // Filler routes on other hostnames, created through the API (not timed).
        let fillers = total - 1;
        futures_util::stream::iter(in_cluster..fillers)
            .for_each_concurrent(16, |i| {
                let api = api.clone();
                let yaml = route_yaml(
                    &format!("filler-{i}"),
                    &format!("h{i}.example.test"),
                    "https://app.example.test",
                    &up.url(),
                );
                async move {
                    let route: WebSocketRoute = serde_saphyr::from_str(&yaml).expect("route");
                    api.create(&PostParams::default(), &route)
                        .await
                        .expect("create filler");
                }
            })
            .await;
        in_cluster = fillers;
        // Fillers, plus the measured route once the first round created it.
        let expected = (fillers + usize::from(total > 1)) as f64;
        gate.wait_for(
            || async { gate.metric("wsgate_snapshot_routes").await == Some(expected) },
            "the filler routes to be served",
        )
        .await;

        let apply_sum = "wsgate_snapshot_apply_seconds_sum";
        let apply_count = "wsgate_snapshot_apply_seconds_count";
        let (sum0, count0) = (gate.metric(apply_sum).await, gate.metric(apply_count).await);
        let mut samples = Vec::with_capacity(CHANGES);
        for change in 0..=CHANGES {
            let origin = format!("https://o{total}-{change}.example.test");
            std::fs::write(&file, route_yaml("measured", HOST, &origin, &up.url()))
                .expect("write route file");
            let out = Command::new(plane.bin.join("kubectl"))
                .arg("--kubeconfig")
                .arg(&plane.kubeconfig)
                .args(["apply", "--server-side", "-f"])
                .arg(&file)
                .output()
                .expect("run kubectl");
            let applied = Instant::now();
            assert!(
                out.status.success(),
                "kubectl apply failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            loop {
                if connect(gate.proxy, HOST, "/", Some(&origin), &[])
                    .await
                    .is_ok()
                {
                    break;
                }
                assert!(
                    applied.elapsed() < Duration::from_secs(30),
                    "the new policy never arrived"
                );
            }
            // The first change creates the route; only edits of an existing route count.
            if change > 0 {
                samples.push(applied.elapsed());
            }
        }
        let (sum1, count1) = (gate.metric(apply_sum).await, gate.metric(apply_count).await);
        let applies = count1.unwrap_or(0.0) - count0.unwrap_or(0.0);
        let compile_ms = (sum1.unwrap_or(0.0) - sum0.unwrap_or(0.0)) * 1000.0 / applies.max(1.0);
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        println!(
            "{:>8} {:>10.1?} {:>10.1?} {:>10.1?} {:>10.1?} {:>19.2}ms",
            total,
            samples[0],
            at(0.5),
            at(0.9),
            samples[samples.len() - 1],
            compile_ms
        );
    }
    for routes in bulk_sizes() {
        bulk(&plane, &gate, &up, routes).await;
    }
}

/// The namespace the chart is installed in.
const RELEASE_NS: &str = "wsgate-system";

/// Installs the Helm chart (its CRD is already there) and returns a kubeconfig that acts as
/// the chart's ServiceAccount, so that the controller has what a pod of the chart has.
fn chart_service_account(plane: &ControlPlane) -> std::path::PathBuf {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/wsgate");
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("run");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eprintln!("installing the Helm chart (builds helm on first use) ...");
    run(support::helm::helm(Some(&plane.kubeconfig)).args([
        "install",
        "wsgate",
        chart,
        "--namespace",
        RELEASE_NS,
        "--create-namespace",
    ]));
    let token = run(Command::new(plane.bin.join("kubectl"))
        .arg("--kubeconfig")
        .arg(&plane.kubeconfig)
        .args(["create", "token", "wsgate", "--namespace", RELEASE_NS]));
    let admin = std::fs::read_to_string(&plane.kubeconfig).expect("kubeconfig");
    let path = plane.kubeconfig.with_file_name("kubeconfig-chart-sa");
    std::fs::write(&path, admin.replace("admin-token", token.trim())).expect("write kubeconfig");
    path
}

/// Fails the benchmark when `what` has not happened 10 minutes after `since`, rather than
/// wait for ever on a route that was refused.
fn give_up_after(since: Instant, what: &str) {
    assert!(
        since.elapsed() < Duration::from_secs(600),
        "gave up waiting for {what}"
    );
}

/// Route counts for the bulk scenario: `WSGATE_BULK_ROUTES` (comma-separated), else 2,000.
fn bulk_sizes() -> Vec<usize> {
    std::env::var("WSGATE_BULK_ROUTES")
        .unwrap_or_else(|_| "2000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// The gateway's CPU seconds (user + system) and resident memory in MiB, from /proc.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15; after the comm, 12 and 13 from 0.
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    // USER_HZ is 100 on Linux.
    (ticks / 100.0, rss_kb / 1024.0)
}

/// `routes` routes in namespace `bulk` created by 10 `kubectl apply` at once, then deleted
/// by 10 `kubectl delete` at once: when the API server had them all, when the data plane
/// served (or stopped serving) the last, when every one was Ready, and what the controller
/// spent on it.
async fn bulk(plane: &ControlPlane, gate: &Gate, up: &Upstream, routes: usize) {
    const APPLIERS: usize = 10;
    let kubectl = |args: &[&str], file: &std::path::Path| {
        Command::new(plane.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&plane.kubeconfig)
            .args(args)
            .arg(file)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("run kubectl")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let namespace = dir.path().join("namespace.yaml");
    std::fs::write(
        &namespace,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: bulk}\n",
    )
    .expect("write");
    assert!(
        kubectl(&["apply", "-f"], &namespace)
            .wait()
            .expect("kubectl")
            .success()
    );
    let files: Vec<std::path::PathBuf> = (0..APPLIERS)
        .map(|f| {
            let file = dir.path().join(format!("bulk-{f}.yaml"));
            let docs: Vec<String> = (f..routes)
                .step_by(APPLIERS)
                .map(|i| {
                    let yaml = route_yaml(
                        &format!("bulk-{i}"),
                        &format!("b{i}.bulk.example.test"),
                        "https://app.example.test",
                        &up.url(),
                    );
                    yaml.replace("metadata: {name: ", "metadata: {namespace: bulk, name: ")
                })
                .collect();
            std::fs::write(&file, docs.join("---\n")).expect("write");
            file
        })
        .collect();
    let served = || async { gate.metric("wsgate_snapshot_routes").await.unwrap_or(0.0) };
    let writes = || async {
        gate.metric(r#"wsgate_status_writes_total{result="ok"}"#)
            .await
            .unwrap_or(0.0)
    };
    let versions = || async { gate.metric("wsgate_snapshot_version").await.unwrap_or(0.0) };
    let before = served().await;
    let (cpu0, _) = usage(gate.pid());
    let (writes0, versions0) = (writes().await, versions().await);
    let started = Instant::now();
    let mut appliers: Vec<_> = files
        .iter()
        .map(|f| kubectl(&["apply", "--server-side", "-f"], f))
        .collect();
    let wait_all = |appliers: &mut Vec<std::process::Child>| {
        for a in appliers.iter_mut() {
            assert!(a.wait().expect("kubectl").success(), "kubectl failed");
        }
    };
    let api_done = tokio::task::block_in_place(|| {
        wait_all(&mut appliers);
        started.elapsed()
    });
    let target = before + routes as f64;
    while served().await < target {
        give_up_after(started, "the data plane to serve every route");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let serving = started.elapsed();
    let bulk_api: Api<WebSocketRoute> = Api::namespaced(plane.client().await, "bulk");
    loop {
        let list = bulk_api.list(&Default::default()).await.expect("list");
        let ready = list
            .items
            .iter()
            .filter(|r| {
                r.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if ready == routes {
            break;
        }
        give_up_after(started, "every route to be Ready");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all_ready = started.elapsed();
    let (cpu1, rss) = usage(gate.pid());
    let (writes1, versions1) = (writes().await, versions().await);

    let deleting = Instant::now();
    let mut deleters: Vec<_> = files
        .iter()
        .map(|f| kubectl(&["delete", "-f"], f))
        .collect();
    let delete_api = tokio::task::block_in_place(|| {
        wait_all(&mut deleters);
        deleting.elapsed()
    });
    while served().await > before {
        give_up_after(deleting, "the data plane to stop serving the routes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unserved = deleting.elapsed();
    let (cpu2, rss_after) = usage(gate.pid());
    let versions2 = versions().await;
    println!(
        "bulk create of {routes} routes by {APPLIERS} kubectl apply: API accepted all {:.1?}, \
         data plane serves the last {:.1?}, all Ready {:.1?}; controller CPU {:.1} s, RSS \
         {:.0} MiB, status writes {}, snapshots {}",
        api_done,
        serving,
        all_ready,
        cpu1 - cpu0,
        rss,
        writes1 - writes0,
        versions1 - versions0,
    );
    println!(
        "bulk delete: API removed all {:.1?}, data plane stopped serving the last {:.1?}; \
         controller CPU {:.1} s, RSS after {:.0} MiB, snapshots {}",
        delete_api,
        unserved,
        cpu2 - cpu1,
        rss_after,
        versions2 - versions1,
    );
}
