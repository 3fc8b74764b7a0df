//! The contenders: wsgate, nginx, HAProxy and the floor relay, each started as its own
//! process pinned to CPU 0, with the same route and origin allowlist.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::h2::Certificate;
use crate::plain;
use crate::wss::{TLS_GROUP, TLS13_SUITE};
use crate::{ALLOWED, HOST};

/// One proxy under test.
pub(crate) struct Proxy {
    /// As the table shows it.
    pub(crate) name: &'static str,
    /// Where clients connect.
    pub(crate) addr: SocketAddr,
    /// Where plain HTTP requests go: `addr` for a proxy (which routes them by path), the
    /// HTTP upstream for the upstreams reached directly.
    pub(crate) http_addr: SocketAddr,
    /// The process whose CPU time and memory are charged; `None` for the upstream reached
    /// directly.
    pub(crate) pid: Option<u32>,
    _child: Option<Child>,
}

impl Proxy {
    /// The upstreams themselves, reached without a proxy.
    pub(crate) fn direct(addr: SocketAddr, http_addr: SocketAddr) -> Proxy {
        Proxy {
            name: "direct",
            addr,
            http_addr,
            pid: None,
            _child: None,
        }
    }

    /// `child`, once something listens on `addr`.
    async fn started(name: &'static str, addr: SocketAddr, child: Child) -> Proxy {
        wait_listening(addr).await;
        Proxy {
            name,
            addr,
            http_addr: addr,
            pid: Some(child.id()),
            _child: Some(child),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(child) = &mut self._child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// CPU seconds (user + system) the process has used.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces), 1-based: utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // CLK_TCK is 100 on Linux.
    ticks as f64 / 100.0
}

/// Resident set size of the process, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// Starts `program` pinned to CPU 0, with its output discarded.
fn pinned(program: &str, args: &[&str]) -> Child {
    Command::new("taskset")
        .args(["-c", "0", program])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
}

async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {addr} (the proxy did not start)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The benchmark's route on `host`, as YAML.
pub(crate) fn route_yaml(name: &str, host: &str, upstream: SocketAddr) -> String {
    format!(
        "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {{name: {name}, namespace: bench}}\nspec:\n  hostnames: [{host}]\n  origins: {{allow: [\"{ALLOWED}\"]}}\n  upstream: {{url: \"ws://{upstream}\"}}\n"
    )
}

/// The route that passes plain HTTP under [`plain::PREFIX`] on the benchmark's hostname to
/// `upstream`, as YAML.
fn http_route_yaml(upstream: SocketAddr) -> String {
    let prefix = plain::PREFIX.trim_end_matches('/');
    format!(
        "apiVersion: wsgate.dev/v1alpha1\nkind: WebSocketRoute\nmetadata: {{name: poll, namespace: bench}}\nspec:\n  hostnames: [{HOST}]\n  path: {{type: PathPrefix, value: {prefix}}}\n  origins: {{allow: [\"{ALLOWED}\"]}}\n  upstream: {{url: \"ws://{upstream}\"}}\n  http: {{}}\n"
    )
}

/// The wsgate `program` with the benchmark's route, its plain-HTTP route to `http_upstream`
/// and `others` more routes on other hostnames (so that a reader can see whether route
/// lookup grows with the route count). With `tls`, clients connect to its TLS listener,
/// where the benchmark's route serves that certificate.
pub(crate) async fn start_wsgate(
    name: &'static str,
    program: &str,
    dir: &Path,
    upstream: SocketAddr,
    http_upstream: SocketAddr,
    others: usize,
    tls: Option<&Certificate>,
) -> Proxy {
    // The plain-HTTP route in a file of its own: a baseline build from before `http` refuses
    // that file and serves the other, so it can still be measured on WebSockets.
    let routes = dir.join(format!(
        "{}-routes-{others}",
        name.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    ));
    std::fs::create_dir_all(&routes).expect("routes directory");
    std::fs::write(routes.join("poll.yaml"), http_route_yaml(http_upstream)).expect("poll route");
    let mut text = route_yaml("chat", HOST, upstream);
    if tls.is_some() {
        text.push_str(&format!("  tls: {{secretName: {}}}\n", Certificate::SECRET));
    }
    for i in 0..others {
        text.push_str("---\n");
        text.push_str(&route_yaml(
            &format!("r{i}"),
            &format!("r{i}.example.com"),
            upstream,
        ));
    }
    std::fs::write(routes.join("routes.yaml"), text).expect("routes file");
    let mut extra = Vec::new();
    if let Some(certificate) = tls {
        extra.extend(["--secret-dir", certificate.secret_dir()]);
    }
    start_wsgate_on(name, program, &routes, tls.is_some(), &extra).await
}

/// The wsgate `program` serving the route files in `routes`, with `extra` flags; clients
/// connect to its TLS listener if `tls`, else to its plain one.
pub(crate) async fn start_wsgate_on(
    name: &'static str,
    program: &str,
    routes: &Path,
    tls: bool,
    extra: &[&str],
) -> Proxy {
    let [listen, admin, listen_tls] =
        [free_port(), free_port(), free_port()].map(|port| format!("127.0.0.1:{port}"));
    let mut args = vec![
        "standalone",
        "--routes",
        routes.to_str().expect("utf-8 path"),
        "--listen",
        &listen,
        "--admin",
        &admin,
        "--listen-tls",
        &listen_tls,
        "--log",
        "warn",
    ];
    args.extend(extra);
    let child = pinned(program, &args);
    let measured = if tls { &listen_tls } else { &listen };
    Proxy::started(name, measured.parse().expect("addr"), child).await
}

/// nginx with the WebSocket location and, under [`plain::PREFIX`], plain HTTP to
/// `http_upstream` over kept-alive upstream connections. With `tls`, it listens with that
/// certificate, TLS 1.3 only with the one suite and group every contender uses, HTTP/1.1
/// only (nginx has no WebSockets over HTTP/2).
pub(crate) async fn start_nginx(
    name: &'static str,
    dir: &Path,
    upstream: SocketAddr,
    http_upstream: SocketAddr,
    tls: Option<&Certificate>,
) -> Proxy {
    let port = free_port();
    let prefix = plain::PREFIX;
    let d = dir.display();
    let (ssl, ssl_config) = match tls {
        Some(certificate) => (
            " ssl",
            format!(
                "ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.3;\n    ssl_conf_command Ciphersuites {TLS13_SUITE};\n    ssl_ecdh_curve {TLS_GROUP};",
                certificate.cert().display(),
                certificate.key().display()
            ),
        ),
        None => ("", String::new()),
    };
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"worker_processes 1;
# Client and upstream connections both count: 9,000 idle proxied connections need more
# than 19,000 here (it warns "worker_connections are not enough" at 19,000).
worker_rlimit_nofile 20000;
master_process off;
daemon off;
pid {d}/nginx.pid;
error_log stderr error;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  map $http_origin $origin_allowed {{ default 0; "{ALLOWED}" 1; }}
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  # Up to 32 idle connections kept, as wsgate keeps; by default nginx closes a client or
  # upstream connection after its 1,000th request, which wsgate and HAProxy do not.
  upstream poll {{ server {http_upstream}; keepalive 32; keepalive_requests 1000000; }}
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port}{ssl};
    {ssl_config}
    location {prefix} {{
      if ($origin_allowed = 0) {{ return 403; }}
      proxy_pass http://poll;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_read_timeout 1h;
    }}
    location / {{
      if ($origin_allowed = 0) {{ return 403; }}
      proxy_pass http://{upstream};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_read_timeout 1h;
    }}
  }}
}}
"#
        ),
    )
    .expect("nginx.conf");
    let child = pinned(
        "nginx",
        &["-p", &d.to_string(), "-c", conf.to_str().expect("path")],
    );
    Proxy::started(name, SocketAddr::from(([127, 0, 0, 1], port)), child).await
}

/// HAProxy with the WebSocket backend and, under [`plain::PREFIX`], a backend for plain HTTP
/// to `http_upstream`, whose connections are reused (`http-reuse safe`, the default). With
/// `tls`, it listens with that certificate, TLS 1.3 only with the one suite and group every
/// contender uses, offering h2 and http/1.1: HAProxy
/// (2.4 and later) announces WebSockets over HTTP/2 (RFC 8441) on an h2 listener unless told
/// not to (`h2-workaround-bogus-websocket-clients`), and relays them over HTTP/1.1 here.
pub(crate) async fn start_haproxy(
    name: &'static str,
    dir: &Path,
    upstream: SocketAddr,
    http_upstream: SocketAddr,
    tls: Option<&Certificate>,
) -> Proxy {
    let prefix = plain::PREFIX;
    let port = free_port();
    let ssl = match tls {
        Some(certificate) => format!(
            " ssl crt {} alpn h2,http/1.1 ssl-min-ver TLSv1.3 ciphersuites {TLS13_SUITE} curves {TLS_GROUP}",
            certificate.combined().display()
        ),
        None => String::new(),
    };
    // One file per instance: the scenario with TLS runs two.
    let conf = dir.join(format!("haproxy-{port}.cfg"));
    std::fs::write(
        &conf,
        format!(
            r#"global
  nbthread 1
  # Two descriptors per proxied connection; this machine allows 20,000 per process.
  maxconn 9100
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend fe
  bind 127.0.0.1:{port}{ssl}
  acl allowed_origin req.hdr(origin) -m str {ALLOWED}
  http-request deny deny_status 403 unless allowed_origin
  use_backend poll if {{ path_beg {prefix} }}
  default_backend be
backend be
  server up {upstream}
backend poll
  http-reuse safe
  server up {http_upstream}
"#
        ),
    )
    .expect("haproxy.cfg");
    let child = pinned("haproxy", &["-db", "-f", conf.to_str().expect("path")]);
    Proxy::started(name, SocketAddr::from(([127, 0, 0, 1], port)), child).await
}

/// The floor relay: this benchmark's own binary in its `floor-relay` role.
pub(crate) async fn start_floor(upstream: SocketAddr) -> Proxy {
    start_floor_relay("floor (bare tokio relay)", upstream, None).await
}

/// The TLS floor: the floor relay behind a tokio-rustls handshake with that certificate.
pub(crate) async fn start_tls_floor(upstream: SocketAddr, tls: &Certificate) -> Proxy {
    start_floor_relay("TLS floor (bare tokio-rustls relay)", upstream, Some(tls)).await
}

async fn start_floor_relay(
    name: &'static str,
    upstream: SocketAddr,
    tls: Option<&Certificate>,
) -> Proxy {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let exe = std::env::current_exe().expect("own path");
    let (listen_arg, upstream_arg) = (listen.to_string(), upstream.to_string());
    let mut args = vec!["floor-relay", &listen_arg, &upstream_arg];
    let files = tls.map(|c| [c.cert(), c.key()]);
    if let Some([cert, key]) = &files {
        args.extend([
            cert.to_str().expect("utf-8 path"),
            key.to_str().expect("utf-8 path"),
        ]);
    }
    let child = pinned(exe.to_str().expect("utf-8 path"), &args);
    Proxy::started(name, listen, child).await
}
