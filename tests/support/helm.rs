//! Helm, built from its Go module by `hack/helm/build` (cached outside the clone), with its
//! caches and configuration kept out of the user's home; and how the chart's tests read a
//! route's conditions.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// kubectl's `-o` for a route's conditions on one line: `Type=Status/Reason ...`.
pub const CONDITIONS: &str =
    "jsonpath={range .status.conditions[*]}{.type}={.status}/{.reason} {end}";

/// What `CONDITIONS` shows once the last replica has stopped (scaled to 0 or uninstalled).
pub const STOPPED: &str = "Accepted=True/Accepted ResolvedRefs=True/ResolvedRefs Programmed=False/GatewayStopped Ready=False/GatewayStopped";

/// The directory holding `helm` and the ServiceMonitor CRD, built on first use.
pub fn helm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("bash")
            .arg(format!("{ROOT}/hack/helm/build"))
            .output()
            .expect("run hack/helm/build");
        assert!(
            out.status.success(),
            "hack/helm/build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// `helm`, talking to the cluster of `kubeconfig` if given.
pub fn helm(kubeconfig: Option<&Path>) -> Command {
    let mut cmd = Command::new(helm_dir().join("helm"));
    if let Some(k) = kubeconfig {
        cmd.arg("--kubeconfig").arg(k);
    }
    // Keep Helm's caches and config out of the user's home.
    let home = std::env::temp_dir().join("wsgate-helm-home");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}
