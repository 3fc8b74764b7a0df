//! The README's "Coming from nginx" guide, run: its nginx config (nginx from Debian) and its
//! wsgate route, taken from the README itself, side by side before one upstream. The same
//! origins are admitted and refused, and the upstream sees the same forwarding headers,
//! except where the guide says wsgate differs.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use support::*;

/// The body of the first fenced block of `lang` after `heading` in the README.
fn readme_block(heading: &str, lang: &str) -> String {
    let readme = std::fs::read_to_string("README.md").expect("README.md");
    let section = &readme[readme.find(heading).unwrap_or_else(|| panic!("{heading}"))..];
    let start = section
        .find(&format!("```{lang}\n"))
        .unwrap_or_else(|| panic!("a ```{lang} block under {heading}"))
        + lang.len()
        + 4;
    let len = section[start..].find("```").expect("closing fence");
    section[start..start + len].to_owned()
}

/// `text` with `from` replaced; fails if the README no longer has `from`.
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the guide's block has `{from}`");
    text.replace(from, to)
}

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nginx not found: install it (Debian: apt-get install nginx-light; hack/test does)")
}

/// nginx running the guide's server block on a free loopback port, killed on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    async fn start(guide: &str, upstream: SocketAddr) -> Nginx {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        // Plain HTTP on loopback: the TLS lines are the guide's, not what is compared.
        let server = swap(
            guide,
            "listen 443 ssl;",
            &format!("listen 127.0.0.1:{port};"),
        );
        let server = swap(
            &server,
            "proxy_pass http://10.0.0.5:8080;",
            &format!("proxy_pass http://{upstream};"),
        );
        let server: String = server
            .lines()
            .filter(|l| !l.trim_start().starts_with("ssl_certificate"))
            .map(|l| format!("  {l}\n"))
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "master_process off;\ndaemon off;\npid {d}/nginx.pid;\nerror_log stderr error;\n\
                 events {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n\
                 client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
                 scgi_temp_path {d}/scgi;\n{server}}}\n"
            ),
        )
        .expect("nginx.conf");
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .spawn()
            .expect("start nginx");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nginx did not listen on {addr}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Nginx {
            child,
            addr,
            _dir: dir,
        }
    }
}

/// A browser-like handshake for `chat.example.com/ws` with this `Origin` (none for `None`)
/// and a client-supplied `X-Forwarded-For`; the status.
async fn handshake(addr: SocketAddr, origin: Option<&str>) -> u16 {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let extra = format!("{origin}X-Forwarded-For: 203.0.113.9\r\n");
    let host = format!("chat.example.com:{}", addr.port());
    raw_request(addr, &upgrade_request(&host, "/ws", &extra))
        .await
        .status
}

/// The headers the guide's nginx lines set, as the upstream saw them.
fn forwarded(seen: &Seen) -> Vec<(&'static str, String)> {
    [
        "host",
        "upgrade",
        "connection",
        "x-real-ip",
        "x-forwarded-for",
        "x-forwarded-proto",
        "origin",
    ]
    .into_iter()
    .map(|h| {
        let v = seen
            .headers
            .get(h)
            .map(|v| v.to_str().expect("ascii").to_lowercase());
        (h, v.unwrap_or_default())
    })
    .collect()
}

#[tokio::test]
async fn the_guides_nginx_config_and_wsgate_route_admit_the_same_origins_and_forward_alike() {
    let mut up = Upstream::start().await;
    let nginx = Nginx::start(&readme_block("## Coming from nginx", "nginx"), up.addr).await;
    let route = readme_block("## Coming from nginx", "yaml");
    let route = swap(
        &route,
        "url: ws://10.0.0.5:8080",
        &format!("url: ws://{}", up.addr),
    );
    let route = swap(&route, "  tls: {secretName: chat-tls}\n", "");
    let gate = Gate::start(&[("chat.yaml", route)], &[]).await;
    let proxies = [("nginx", nginx.addr), ("wsgate", gate.proxy)];

    let same = [
        (Some("https://app.example.com"), 101),
        (Some("https://chat.example.com"), 101),
        (Some("https://a.b.example.com"), 101),
        (Some("https://example.com"), 403),
        (Some("https://app.example.com.evil.net"), 403),
        (Some("https://evil-example.com"), 403),
        (Some("http://app.example.com"), 403),
        (Some("https://app.example.com/"), 403),
        (Some("null"), 403),
        (None, 403),
    ];
    for (origin, status) in same {
        for (name, addr) in proxies {
            assert_eq!(
                handshake(addr, origin).await,
                status,
                "{name}, Origin {origin:?}"
            );
        }
    }
    // The guide's stated difference: wsgate compares origins after dropping a default port.
    assert_eq!(
        handshake(nginx.addr, Some("https://app.example.com:443")).await,
        403
    );
    assert_eq!(
        handshake(gate.proxy, Some("https://app.example.com:443")).await,
        101
    );
    up.handshakes();

    let mut seen = Vec::new();
    for (_, addr) in proxies {
        assert_eq!(handshake(addr, Some("https://app.example.com")).await, 101);
        seen.push(forwarded(
            &up.seen.recv().await.expect("the upstream saw it"),
        ));
    }
    let (nginx_saw, wsgate_saw) = (&seen[0], &seen[1]);
    for (i, (header, value)) in nginx_saw.iter().enumerate() {
        if *header == "host" {
            // The guide's other stated difference: nginx's `$host` drops the port.
            assert_eq!(value, "chat.example.com");
            assert_eq!(
                wsgate_saw[i].1,
                format!("chat.example.com:{}", gate.proxy.port())
            );
        } else if *header == "x-forwarded-for" {
            // And a third: nginx appends to any client's list, wsgate only to a trusted
            // proxy's (`--trusted-proxies`); anyone else's is replaced.
            assert_eq!(value, "203.0.113.9, 127.0.0.1");
            assert_eq!(wsgate_saw[i].1, "127.0.0.1");
        } else {
            assert_eq!(
                &wsgate_saw[i],
                &(*header, value.clone()),
                "nginx and wsgate forward {header} alike"
            );
        }
    }
}
