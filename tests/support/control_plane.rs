//! A real etcd + kube-apiserver on loopback for tests: binaries from
//! `hack/control-plane/build` (built from Go modules, cached by pins), serving certificates
//! and service-account keys made with openssl in a temp dir, an admin identity by static
//! token, RBAC authorization, the CRD from `crds/` installed. Torn down on drop, also when a
//! test panics. No mocks.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A running control plane; every process is killed on drop.
pub struct ControlPlane {
    etcd: Child,
    apiserver: Child,
    apiserver_args: Vec<String>,
    /// The API server's URL.
    pub server: String,
    dir: tempfile::TempDir,
    /// A kubeconfig file for the admin identity.
    pub kubeconfig: PathBuf,
    /// The directory holding kube-apiserver, kubectl and etcd.
    pub bin: PathBuf,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds (or finds in the cache) the control-plane binaries.
fn binaries() -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/control-plane/build");
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run hack/control-plane/build");
    assert!(
        out.status.success(),
        "hack/control-plane/build failed (it needs Go 1.26+); see its output above"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The `kubernetes` Service's address in the test cluster's service range (10.0.0.0/24):
/// pods reach the API server there, so the serving certificate names it.
pub const KUBERNETES_SERVICE_IP: &str = "10.0.0.1";

/// Certificates and keys: a CA, a serving cert for 127.0.0.1 and `address`, service-account
/// keys.
fn pki(dir: &Path, address: &str) {
    let openssl = |args: &[&str]| run(Command::new("openssl").args(args).current_dir(dir));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=wsgate-test-ca",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "serving.key",
        "-out",
        "serving.csr",
        "-subj",
        "/CN=kube-apiserver",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        format!(
            "subjectAltName=IP:127.0.0.1,IP:{address},IP:{KUBERNETES_SERVICE_IP},DNS:localhost,DNS:kubernetes.default.svc\n"
        ),
    )
    .expect("san");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "serving.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "serving.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    openssl(&["genrsa", "-out", "sa.key", "2048"]);
    openssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
    std::fs::write(
        dir.join("tokens.csv"),
        "admin-token,admin,admin-uid,\"system:masters\"\nwsgate-token,wsgate,wsgate-uid\n",
    )
    .expect("tokens");
}

/// A server that exited while starting (typically: its port was taken meanwhile).
struct Exited;

/// Waits until `ready`; `Err(Exited)` if the child exits first; panics with the tail of
/// its log on timeout.
fn wait_for_child(
    what: &str,
    child: &mut Child,
    log: &Path,
    deadline: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), Exited> {
    let start = Instant::now();
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("{what} exited while starting ({status}): {}", tail(log));
            return Err(Exited);
        }
        assert!(
            start.elapsed() < deadline,
            "{what} not ready after {deadline:?}; its log ends: {}",
            tail(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let from = text.len().saturating_sub(2000);
    let from = (from..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[from..].to_owned()
}

fn curl_ok(args: &[&str]) -> bool {
    Command::new("curl")
        .args(["-sf", "--max-time", "2"])
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A port found free may be taken before the server binds it (by another test's
/// outgoing connection, for one), so a server that exits while starting is given new
/// ports this many times.
const START_ATTEMPTS: u32 = 3;

/// `program`, killed by the kernel when the thread that started it ends, so that a test
/// killed outright leaves no server behind (Drop covers every other ending).
pub fn dies_with_test(program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
    cmd
}

fn log_file(path: PathBuf) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file")
}

fn spawn_etcd(bin: &Path, d: &Path) -> (Child, String) {
    for attempt in 1..=START_ATTEMPTS {
        let (etcd_port, peer_port) = (free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let data = d.join("etcd");
        let _ = std::fs::remove_dir_all(&data);
        let mut etcd = dies_with_test(&bin.join("etcd"))
            .args(["--name", "default", "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .args(["--unsafe-no-fsync", "--log-level", "warn"])
            .stdout(log_file(d.join("etcd.log")))
            .stderr(log_file(d.join("etcd.err")))
            .spawn()
            .expect("start etcd");
        let health = format!("{etcd_url}/health");
        let started = wait_for_child(
            "etcd",
            &mut etcd,
            &d.join("etcd.err"),
            Duration::from_secs(30),
            || curl_ok(&[&health]),
        );
        match started {
            Ok(()) => return (etcd, etcd_url),
            Err(Exited) => eprintln!("etcd attempt {attempt} of {START_ATTEMPTS} failed"),
        }
    }
    panic!("etcd did not start in {START_ATTEMPTS} attempts; see the logs above")
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver on free loopback ports and waits for `/readyz`.
    pub fn start() -> ControlPlane {
        ControlPlane::start_at("127.0.0.1")
    }

    /// Starts the control plane with kube-apiserver listening on `address` (etcd stays on
    /// loopback). On an address other than loopback the API server is what a node and its
    /// pods reach: it advertises that address as the `kubernetes` Service's endpoint and
    /// admits pods with their service account, which a controller manager must then create.
    pub fn start_at(address: &str) -> ControlPlane {
        let bin = binaries();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_owned();
        let loopback = address == "127.0.0.1";
        pki(&d, address);
        let (etcd, etcd_url) = spawn_etcd(&bin, &d);
        // From here on, Drop kills what started, even if a wait below panics.
        let mut plane = ControlPlane {
            etcd,
            // Replaced below; `true` exits at once and is a harmless child to kill.
            apiserver: Command::new("true").spawn().expect("spawn true"),
            apiserver_args: Vec::new(),
            server: String::new(),
            kubeconfig: d.join("kubeconfig"),
            bin,
            dir,
        };
        let pki = |f: &str| d.join(f).display().to_string();
        for attempt in 1..=START_ATTEMPTS {
            let api_port = free_port();
            plane.apiserver_args = vec![
                format!("--etcd-servers={etcd_url}"),
                format!("--bind-address={address}"),
                format!("--advertise-address={address}"),
                format!("--secure-port={api_port}"),
                format!("--tls-cert-file={}", pki("serving.crt")),
                format!("--tls-private-key-file={}", pki("serving.key")),
                format!("--client-ca-file={}", pki("ca.crt")),
                format!("--token-auth-file={}", pki("tokens.csv")),
                "--authorization-mode=RBAC".into(),
                format!("--service-account-issuer=https://{address}:{api_port}"),
                format!("--service-account-key-file={}", pki("sa.pub")),
                format!("--service-account-signing-key-file={}", pki("sa.key")),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ];
            if !loopback {
                // The test node's name is in no DNS: reach its kubelet by address.
                plane
                    .apiserver_args
                    .push("--kubelet-preferred-address-types=InternalIP".into());
            }
            if loopback {
                plane.apiserver_args.extend([
                    // The default reconciler refuses a loopback advertise address.
                    "--endpoint-reconciler-type=none".into(),
                    // No controller manager creates service accounts for pods here.
                    "--disable-admission-plugins=ServiceAccount".into(),
                ]);
            }
            plane.server = format!("https://{address}:{api_port}");
            match plane.launch_apiserver() {
                Ok(()) => break,
                Err(Exited) if attempt < START_ATTEMPTS => {
                    eprintln!("kube-apiserver attempt {attempt} of {START_ATTEMPTS} failed")
                }
                Err(Exited) => panic!("kube-apiserver did not start; see the log above"),
            }
        }
        let (server, ca) = (plane.server.clone(), pki("ca.crt"));
        std::fs::write(
            &plane.kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: test, cluster: {{server: \"{server}\", certificate-authority: \"{ca}\"}}}}]\nusers: [{{name: admin, user: {{token: admin-token}}}}]\ncontexts: [{{name: test, context: {{cluster: test, user: admin}}}}]\ncurrent-context: test\n"
            ),
        )
        .expect("kubeconfig");
        plane
    }

    /// Starts kube-apiserver (again) with the same flags and port; waits for `/readyz`.
    pub fn start_apiserver(&mut self) {
        if self.launch_apiserver().is_err() {
            panic!("kube-apiserver exited while restarting; see the log above");
        }
    }

    fn launch_apiserver(&mut self) -> Result<(), Exited> {
        let d = self.dir.path();
        self.apiserver = dies_with_test(&self.bin.join("kube-apiserver"))
            .args(&self.apiserver_args)
            .stdout(log_file(d.join("apiserver.log")))
            .stderr(log_file(d.join("apiserver.err")))
            .spawn()
            .expect("start kube-apiserver");
        let ca = d.join("ca.crt").display().to_string();
        let readyz = format!("{}/readyz", self.server);
        wait_for_child(
            "kube-apiserver",
            &mut self.apiserver,
            &d.join("apiserver.err"),
            Duration::from_secs(60),
            || {
                curl_ok(&[
                    "--cacert",
                    &ca,
                    "-H",
                    "Authorization: Bearer admin-token",
                    &readyz,
                ])
            },
        )
    }

    /// Kills kube-apiserver (etcd keeps running), as when the control plane goes away.
    pub fn stop_apiserver(&mut self) {
        let _ = self.apiserver.kill();
        let _ = self.apiserver.wait();
    }

    /// Rewrites the stored object at `key` (under `/registry/`, stored as JSON, as custom
    /// resources are) straight in etcd, so it changes even while the API server is down.
    pub fn edit_in_etcd(&self, key: &str, edit: impl FnOnce(&mut serde_json::Value)) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let etcd = self
            .apiserver_args
            .iter()
            .find_map(|a| a.strip_prefix("--etcd-servers="))
            .expect("--etcd-servers");
        let post = |path: &str, body: serde_json::Value| -> serde_json::Value {
            let out = Command::new("curl")
                .args(["-sf", "-X", "POST", &format!("{etcd}{path}"), "-d"])
                .arg(body.to_string())
                .output()
                .expect("run curl");
            assert!(out.status.success(), "etcd {path}: {out:?}");
            serde_json::from_slice(&out.stdout).expect("etcd answers JSON")
        };
        let key = b64.encode(key);
        let got = post("/v3/kv/range", serde_json::json!({"key": key}));
        let value = got["kvs"][0]["value"]
            .as_str()
            .unwrap_or_else(|| panic!("no such key in etcd: {got}"));
        let mut object: serde_json::Value =
            serde_json::from_slice(&b64.decode(value).expect("base64")).expect("stored as JSON");
        edit(&mut object);
        post(
            "/v3/kv/put",
            serde_json::json!({"key": key, "value": b64.encode(object.to_string())}),
        );
    }

    /// A file of the control plane's PKI (`ca.crt`, `sa.key`, ...).
    pub fn pki(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A kubeconfig for the user `wsgate`, who may do only what RBAC grants it.
    pub fn kubeconfig_wsgate(&self) -> PathBuf {
        let admin = std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig");
        let path = self.dir.path().join("kubeconfig-wsgate");
        std::fs::write(&path, admin.replace("admin-token", "wsgate-token"))
            .expect("write kubeconfig");
        path
    }

    /// Starts a control plane with the CRD installed; returns it with an admin client.
    pub async fn with_crd() -> (ControlPlane, Client) {
        let plane = ControlPlane::start();
        let client = plane.client().await;
        plane.install_crd(&client).await;
        (plane, client)
    }

    /// A client for the admin identity.
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("config");
        Client::try_from(config).expect("client")
    }

    /// Installs the CRD from `crds/` and waits until it is served.
    pub async fn install_crd(&self, client: &Client) {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crds/websocketroutes.wsgate.dev.yaml"
        );
        let text = std::fs::read_to_string(path).expect("crds/ file");
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&text).expect("CRD parses");
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        api.create(&PostParams::default(), &crd)
            .await
            .expect("create CRD");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = api
                .get("websocketroutes.wsgate.dev")
                .await
                .expect("get CRD");
            let established = got
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                return;
            }
            assert!(Instant::now() < deadline, "CRD not established");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
