//! The admin listener: `/healthz`, `/readyz`, `/metrics` and `/routes` (the active snapshot
//! and every route's conditions as JSON). Reads the published snapshot; changes nothing.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};

use crate::accept::{AcceptErrors, accept};
use crate::compile::Verdict;
use crate::route::Route;
use crate::snapshot::Published;
use crate::snapshot::{Snapshot, SourceProblem};

/// Limits of the admin listener, which must never cost the proxy its descriptors.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Host names answered besides IP literals, `localhost` and in-cluster names
    /// (see [`host_allowed`]); lower case, without a trailing dot.
    pub hosts: Vec<String>,
    /// Most admin connections open at once; one beyond is closed at once.
    pub max_connections: usize,
    /// How long a client may take to send a request head (also how long an idle
    /// keep-alive connection stays open).
    pub head_timeout: Duration,
    /// How long a connection may make no progress reading or writing.
    pub idle_timeout: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            hosts: Vec::new(),
            max_connections: 64,
            head_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves the admin endpoints on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    published: Arc<Published>,
    config: AdminConfig,
    mut stop: watch::Receiver<bool>,
) {
    let config = Arc::new(config);
    let room = Arc::new(Semaphore::new(config.max_connections));
    let mut errors = AcceptErrors::new("admin");
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener, &mut errors) => accepted,
            () = crate::accept::stopped(&mut stop) => return,
        };
        // Dropping the stream closes it: a connection beyond the cap costs nothing more.
        let Ok(permit) = room.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = config.max_connections, "admin connection refused: at the cap");
            continue;
        };
        let published = published.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(|req| {
                let answer = respond(&req, &published, &config.hosts);
                async move { Ok::<_, Infallible>(answer) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(config.head_timeout)
                .serve_connection(
                    TokioIo::new(Idle::new(stream, config.idle_timeout)),
                    service,
                )
                .await;
        });
    }
}

/// Whether the admin answers a request for `host` (a `Host` header value): an IP literal,
/// `localhost` or a name under it, a Kubernetes Service name (`*.svc`,
/// `*.svc.cluster.local`, or a single label, as in-cluster short names are), or one of
/// `extra`; with any port. Any other name could be an attacker's that they have pointed at
/// this address (DNS rebinding), letting their page in a browser read `/routes`.
pub fn host_allowed(host: &str, extra: &[String]) -> bool {
    let Some(name) = host_name(host) else {
        return false;
    };
    if name.is_empty() {
        return false;
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || name.ends_with(".svc")
        || name.ends_with(".svc.cluster.local")
        || !name.contains('.')
        || extra.contains(&name)
}

/// The name part of a `Host` value: without its port, an IPv6 literal without brackets.
/// `None` if it is malformed.
fn host_name(host: &str) -> Option<&str> {
    let port_ok = |p: &str| p.is_empty() || p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<Ipv6Addr>().ok()?;
        return match after.strip_prefix(':') {
            Some(port) if port_ok(port) => Some(v6),
            None if after.is_empty() => Some(v6),
            _ => None,
        };
    }
    match host.split_once(':') {
        Some((name, port)) if port_ok(port) => Some(name),
        Some(_) => None,
        None => Some(host),
    }
}

fn respond(
    req: &Request<Incoming>,
    published: &Published,
    hosts: &[String],
) -> Response<Full<Bytes>> {
    // A request without a Host cannot come from a browser, so it cannot be a rebinding.
    // Every host a request names must be allowed (an absolute target's and each `Host`), so
    // a second `Host` cannot carry the one a proxy in front routes by.
    let named = req.uri().authority().map(|a| a.as_str()).into_iter().chain(
        req.headers()
            .get_all(header::HOST)
            .iter()
            .map(|h| h.to_str().unwrap_or("")),
    );
    if let Some(host) = named.into_iter().find(|h| !host_allowed(h, hosts)) {
        return refuse_host(host);
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if published.ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(published.metrics().render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/routes" => {
            let body = match published.current() {
                Some(s) => serde_json::to_vec_pretty(&RoutesView::of(&s)),
                None => serde_json::to_vec_pretty(&serde_json::json!({"ready": false})),
            };
            let mut r = Response::new(Full::new(Bytes::from(body.unwrap_or_default())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz, /metrics or /routes\n",
        ),
    }
}

/// 421: this name is not one the admin answers to; the body says how to allow it.
fn refuse_host(host: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "the admin endpoints do not answer to Host `{host}` (a guard against DNS rebinding); \
         they answer to IP addresses, localhost and in-cluster Service names; to allow this \
         name, start wsgate with --admin-host NAME (or WSGATE_ADMIN_HOST)\n"
    );
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::MISDIRECTED_REQUEST;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// An admin connection that fails once it has made no progress, reading or writing, for
/// its limit: a client that stops reading a response must not hold its slot forever.
struct Idle<T> {
    io: T,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<T> Idle<T> {
    fn new(io: T, limit: Duration) -> Idle<T> {
        Idle {
            io,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }

    /// After progress: the limit starts again.
    fn progressed<R>(&mut self, result: R) -> Poll<R> {
        self.deadline.as_mut().reset(Instant::now() + self.limit);
        Poll::Ready(result)
    }

    /// While waiting: an error once the limit has passed.
    fn waiting<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Idle<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => this.progressed(result),
            Poll::Pending => this.waiting(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Idle<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(result) => this.progressed(result),
            Poll::Pending => this.waiting(cx),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Ready(result) => this.progressed(result),
            Poll::Pending => this.waiting(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The JSON shape of `/routes`.
#[derive(Serialize)]
struct RoutesView<'a> {
    version: u64,
    routes: Vec<RouteView<'a>>,
    problems: &'a [SourceProblem],
}

#[derive(Serialize)]
struct RouteView<'a> {
    namespace: &'a str,
    name: &'a str,
    programmed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    origins: Option<OriginsView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<Vec<String>>,
    conditions: Vec<ConditionView<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OriginsView {
    allow: Vec<String>,
    allow_null: bool,
    allow_missing: bool,
}

#[derive(Serialize)]
struct ConditionView<'a> {
    #[serde(rename = "type")]
    type_: &'a str,
    status: &'static str,
    reason: &'a str,
    message: &'a str,
}

impl<'a> RoutesView<'a> {
    fn of(snapshot: &'a Snapshot) -> RoutesView<'a> {
        let routes = snapshot
            .verdicts
            .iter()
            .map(|v| RouteView::of(v, snapshot.table.get(&v.key).map(|r| &**r)))
            .collect();
        RoutesView {
            version: snapshot.version,
            routes,
            problems: &snapshot.problems,
        }
    }
}

impl<'a> RouteView<'a> {
    fn of(verdict: &'a Verdict, route: Option<&Route>) -> RouteView<'a> {
        RouteView {
            namespace: &verdict.key.namespace,
            name: &verdict.key.name,
            programmed: route.is_some(),
            origins: route.map(|r| OriginsView {
                allow: r.origins.patterns().collect(),
                allow_null: r.origins.allows_null(),
                allow_missing: r.origins.allows_missing(),
            }),
            upstream: route.map(|r| r.upstream.targets.iter().map(ToString::to_string).collect()),
            conditions: verdict
                .conditions
                .iter()
                .map(|c| ConditionView {
                    type_: c.type_,
                    status: if c.status { "True" } else { "False" },
                    reason: c.reason,
                    message: &c.message,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_answers_addresses_localhost_and_cluster_names() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:9090",
            "10.1.2.3:9090",
            "[::1]:9090",
            "[fd00::5]",
            "localhost",
            "LOCALHOST:9090",
            "admin.localhost",
            "wsgate-admin",
            "wsgate-admin:9090",
            "wsgate-admin.wsgate-system.svc:9090",
            "wsgate-admin.wsgate-system.svc.cluster.local.",
        ] {
            assert!(host_allowed(host, &[]), "{host}");
        }
    }

    #[test]
    fn admin_refuses_other_names_unless_given_with_admin_host() {
        let extra = ["metrics.example.com".to_owned()];
        for host in [
            "evil.example",
            "evil.example:9090",
            "localhost.evil.example",
            "svc.cluster.local.evil.example",
            "",
            ":9090",
            "127.0.0.1:90a",
            "[::1",
            "[evil.example]:80",
            "::1",
        ] {
            assert!(!host_allowed(host, &extra), "{host}");
        }
        assert!(!host_allowed("metrics.example.com", &[]));
        assert!(host_allowed("Metrics.Example.com:9090", &extra));
    }

    #[tokio::test(start_paused = true)]
    async fn an_admin_connection_without_progress_fails_after_the_idle_limit() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(64);
        let mut idle = Idle::new(server, Duration::from_secs(30));
        let mut client = client;
        tokio::time::advance(Duration::from_secs(20)).await;
        client.write_all(b"x").await.expect("write");
        let mut byte = [0u8; 1];
        idle.read_exact(&mut byte)
            .await
            .expect("progress within the limit");
        // The read above started the limit again; nothing arrives from now on.
        let started = Instant::now();
        let err = idle.read(&mut byte).await.expect_err("times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }
}
