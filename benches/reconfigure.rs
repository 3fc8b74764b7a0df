//! How long a policy change takes to reach the data plane in controller mode: the time from
//! `kubectl apply` returning to the first handshake that sees the new allowlist, with 1 and
//! with 1,000 routes in the cluster. Real kube-apiserver, etcd, kubectl and wsgate binary.
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

#[tokio::main]
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
    let gate = Gate::launch(
        &["controller".into()],
        &[
            ("KUBECONFIG", plane.kubeconfig.as_os_str()),
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
}
