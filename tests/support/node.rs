//! A real one-node Kubernetes cluster for tests: the control plane of `control_plane`
//! listening on the host's end of a veth pair, kube-scheduler and kube-controller-manager
//! beside it, and a node (containerd, kubelet, kube-proxy, from `hack/node/build`) in
//! namespaces of its own, started by `hack/node/run`, with CoreDNS as the cluster's DNS
//! (`coredns.yaml`). Images are built locally
//! (`hack/image/build`) and imported into the node: nothing is pulled. Everything is
//! stopped on drop, also when a test panics, and the node's namespaces, veth pair and
//! cgroups go with it.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::control_plane::{ControlPlane, dies_with_test};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// How long a node may take to start and register (first start imports the images).
const NODE_START: Duration = Duration::from_secs(180);

/// The node's name in the API.
pub const NODE_NAME: &str = "wsgate-test-node";

/// A control plane with one node that runs pods.
pub struct Cluster {
    node: Child,
    scheduler: Child,
    controller_manager: Child,
    /// The API server, listening on the host's end of the veth pair.
    pub plane: ControlPlane,
    /// The node's address, reachable from the host (NodePorts listen there).
    pub node_ip: String,
    /// The host's end of the veth pair: what the node and its pods reach the host at.
    pub host_ip: String,
    /// Logs of the node's processes and of the scheduler and controller manager.
    pub logs: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGTERM: the node stops its pods and removes its cgroups before it exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.node.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.node.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for child in [
            &mut self.node,
            &mut self.scheduler,
            &mut self.controller_manager,
        ] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a build script that prints a directory; returns it.
fn built(script: &str, args: &[&str]) -> PathBuf {
    let out = Command::new("bash")
        .arg(format!("{ROOT}/{script}"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed; see its output above"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Addresses of the veth pair: a /30 in 10.213.0.0/16 that no interface of this machine
/// has (Linux would accept a second one, and traffic would silently go astray).
fn addresses() -> (String, String) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    for _ in 0..64 * 250 {
        let n = (std::process::id() * 7 + NEXT.fetch_add(1, Ordering::Relaxed)) % (64 * 250);
        let (third, fourth) = (n / 64, (n % 64) * 4);
        let net = format!("10.213.{third}.{fourth}/30");
        let taken = Command::new("ip")
            .args(["-o", "-4", "addr", "show", "to", &net])
            .output()
            .expect("run ip");
        if taken.status.success() && taken.stdout.is_empty() {
            return (
                format!("10.213.{third}.{}", fourth + 1),
                format!("10.213.{third}.{}", fourth + 2),
            );
        }
    }
    panic!("every /30 of 10.213.0.0/16 is in use on this machine")
}

impl Cluster {
    /// Starts a cluster whose node has `images` (OCI archives) besides the sandbox image.
    pub fn start(images: &[PathBuf]) -> Cluster {
        let started = Instant::now();
        let node_bin = built("hack/node/build", &[]);
        let image = |program: &str| {
            built(
                "hack/image/build",
                &[
                    "--static",
                    node_bin.join(program).to_str().expect("utf-8 path"),
                ],
            )
        };
        let (pause, coredns) = (image("pause"), image("coredns"));
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).expect("logs dir");
        let kubeconfig = dir.path().join("node.kubeconfig");
        let (host_ip, node_ip) = addresses();
        let mut node = Command::new("bash");
        node.arg(format!("{ROOT}/hack/node/run"))
            .arg("--bin")
            .arg(&node_bin)
            .arg("--state")
            .arg(dir.path().join("node"))
            .args(["--node-name", NODE_NAME, "--host-ip", &host_ip])
            .args(["--node-ip", &node_ip])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--image")
            .arg(&pause)
            .arg("--image")
            .arg(&coredns);
        for image in images {
            node.arg("--image").arg(image);
        }
        let mut node = node
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hack/node/run");
        // The node's progress lines go to this test's output; "network up" and "running"
        // are waited for.
        let (said, hear) = mpsc::channel();
        let stderr = node.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let _ = said.send(line);
            }
        });
        let wait_for = |what: &str| {
            let deadline = Instant::now() + NODE_START;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match hear.recv_timeout(left) {
                    Ok(line) if line.starts_with(&format!("node: {what}")) => return,
                    Ok(_) => {}
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        panic!("the node did not say {what:?} in {NODE_START:?}")
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        panic!("the node stopped before it said {what:?}; see its lines above")
                    }
                }
            }
        };
        wait_for("network up");
        let plane = ControlPlane::start_at(&host_ip);
        let admin = std::fs::read_to_string(&plane.kubeconfig).expect("admin kubeconfig");
        let spawn = |name: &str, args: &[String]| {
            dies_with_test(&node_bin.join(name))
                .args(args)
                .stdout(log(&logs, &format!("{name}.log")))
                .stderr(log(&logs, &format!("{name}.log")))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
        };
        let kc = format!("--kubeconfig={}", plane.kubeconfig.display());
        let scheduler = spawn(
            "kube-scheduler",
            &[kc.clone(), "--leader-elect=false".into(), "--v=1".into()],
        );
        let controller_manager = spawn(
            "kube-controller-manager",
            &[
                kc,
                "--leader-elect=false".into(),
                format!(
                    "--service-account-private-key-file={}",
                    plane.pki("sa.key").display()
                ),
                format!("--root-ca-file={}", plane.pki("ca.crt").display()),
                "--use-service-account-credentials=false".into(),
                "--v=1".into(),
            ],
        );
        let mut cluster = Cluster {
            node,
            scheduler,
            controller_manager,
            plane,
            node_ip,
            host_ip,
            logs,
            dir,
        };
        // kubelet and kube-proxy start once their kubeconfig exists.
        std::fs::write(&kubeconfig, admin).expect("node kubeconfig");
        wait_for("running");
        cluster.wait_node_ready();
        cluster.start_dns();
        eprintln!(
            "node {NODE_NAME} Ready {:.1?} after the cluster began to start",
            started.elapsed()
        );
        cluster
    }

    /// The PID of `hack/node/run`, which names the node's veth (`wsn<PID>`) and cgroups
    /// (`wsgate-node-<PID>`).
    pub fn node_pid(&self) -> u32 {
        self.node.id()
    }

    /// The node's state directory, which every node process's command line names.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("node")
    }

    /// kubectl as the admin identity.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.plane.bin.join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.plane.kubeconfig);
        cmd
    }

    /// Runs kubectl with `args`; its standard output, or a panic with its error and what
    /// the cluster looks like.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl().args(args).output().expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.explain()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A metrics page of the node's kubelet (`/metrics/probes`, ...), which answers
    /// anonymous reads here.
    pub fn kubelet_metrics(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-sfk", "--max-time", "5"])
            .arg(format!("https://{}:10250{path}", self.node_ip))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the cluster's DNS (tests/support/coredns.yaml) and waits until it answers.
    fn start_dns(&self) {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/coredns.yaml");
        self.kubectl_ok(&["apply", "-f", manifest]);
        self.kubectl_ok(&[
            "rollout",
            "status",
            "deployment/coredns",
            "--namespace",
            "kube-system",
            &format!("--timeout={}s", NODE_START.as_secs()),
        ]);
    }

    fn wait_node_ready(&mut self) {
        let deadline = Instant::now() + NODE_START;
        loop {
            if let Ok(Some(status)) = self.node.try_wait() {
                panic!(
                    "the node exited ({status}) before it was Ready; kubelet.log ends:\n{}\ncontainerd.log ends:\n{}",
                    self.log_tail("kubelet.log"),
                    self.log_tail("containerd.log")
                );
            }
            let out = self
                .kubectl()
                .args(["get", "node", NODE_NAME, "-o"])
                .arg("jsonpath={.status.conditions[?(@.type==\"Ready\")].status}")
                .output()
                .expect("run kubectl");
            if String::from_utf8_lossy(&out.stdout).trim() == "True" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {NODE_NAME} not Ready after {NODE_START:?}; see {}",
                self.logs.display()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// What a failure message needs: every pod, the events, and the ends of the node's
    /// logs.
    pub fn explain(&self) -> String {
        let run = |args: &[&str]| {
            let out = self.kubectl().args(args).output().expect("run kubectl");
            format!(
                "$ kubectl {}\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        [
            run(&["get", "pods", "-A", "-o", "wide"]),
            run(&["get", "events", "-A", "--sort-by=.lastTimestamp"]),
            format!("kubelet.log ends:\n{}", self.log_tail("kubelet.log")),
            format!("containerd.log ends:\n{}", self.log_tail("containerd.log")),
        ]
        .join("\n")
    }

    /// The end of one of the node's logs (kubelet, containerd, kube-proxy) or the control
    /// plane's.
    pub fn log_tail(&self, name: &str) -> String {
        let path = self.dir.path().join("node/logs").join(name);
        let text = std::fs::read_to_string(&path)
            .or_else(|_| std::fs::read_to_string(self.logs.join(name)))
            .unwrap_or_default();
        text.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn log(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("log file")
}
