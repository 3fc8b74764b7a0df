//! The admin listener through the real binary: which `Host` it answers (DNS rebinding), and
//! that its connections are capped and timed out, so it cannot take the proxy's descriptors.

mod support;

use std::net::SocketAddr;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET /healthz` on the admin listener with `host` as the `Host` header.
async fn healthz_for(admin: SocketAddr, host: &str) -> Raw {
    raw_request(
        admin,
        &format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Reads until the gateway closes `stream`; fails the test if it does not within patience.
async fn closed_by_gateway(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the admin listener keeps the connection open");
}

/// A keep-alive connection to the admin listener that has been answered once (so it holds a
/// slot), or `None` if the listener closed it unanswered (it was over the cap).
async fn answered_and_kept_open(admin: SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(admin).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.ends_with(b"ok\n") {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("the admin listener neither answers nor closes")
            .ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(stream)
}

#[tokio::test]
async fn a_rebinding_host_is_refused_while_addresses_and_localhost_are_answered() {
    let gate = Gate::start(&[], &[]).await;
    let refused = healthz_for(gate.admin, "evil.example").await;
    assert_eq!(refused.status, 421, "{}", refused.head);
    assert!(refused.body.contains("--admin-host"), "{}", refused.body);
    for host in [
        gate.admin.to_string(),
        "localhost:9090".into(),
        "localhost".into(),
    ] {
        let answered = healthz_for(gate.admin, &host).await;
        assert_eq!(
            (answered.status, answered.body.as_str()),
            (200, "ok\n"),
            "{host}"
        );
    }
    let two = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    assert_eq!(
        raw_request(gate.admin, two).await.status,
        421,
        "a second Host is checked too"
    );
}

#[tokio::test]
async fn a_host_given_with_admin_host_is_answered() {
    let gate = Gate::start(&[], &["--admin-host", "metrics.example.com"]).await;
    assert_eq!(
        healthz_for(gate.admin, "metrics.example.com:9090")
            .await
            .status,
        200
    );
    assert_eq!(healthz_for(gate.admin, "evil.example").await.status, 421);
}

#[tokio::test]
async fn admin_connections_beyond_the_cap_are_closed_at_once() {
    let gate = Gate::start(
        &[],
        &[
            "--admin-max-connections",
            "2",
            "--admin-head-timeout",
            "600",
        ],
    )
    .await;
    // Gate::start's readiness probe may still hold a slot for a moment after its answer, so a
    // connection counts as held only once it has been answered.
    let mut held = Vec::new();
    let fill = async {
        while held.len() < 2 {
            if let Some(stream) = answered_and_kept_open(gate.admin).await {
                held.push(stream);
            }
        }
    };
    tokio::time::timeout(PATIENCE, fill)
        .await
        .expect("two admin connections answered within the cap of two");
    let first = held.remove(0);
    // The two held connections fill the cap, so this one is over it.
    let mut third = TcpStream::connect(gate.admin).await.expect("connect");
    closed_by_gateway(&mut third).await;
    // A slot freed is taken again.
    drop(first);
    gate.wait_for(
        || async { gate.admin_get("/healthz").await.0 == 200 },
        "an admin answer once a slot is free",
    )
    .await;
}

#[tokio::test]
async fn an_admin_connection_that_sends_no_head_is_closed_after_the_head_timeout() {
    let gate = Gate::start(&[], &["--admin-head-timeout", "0.5"]).await;
    let mut silent = TcpStream::connect(gate.admin).await.expect("connect");
    let mut partial = TcpStream::connect(gate.admin).await.expect("connect");
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write");
    closed_by_gateway(&mut silent).await;
    closed_by_gateway(&mut partial).await;
}

/// The "accept failed" lines logged so far, and the largest count of failures one of them
/// says it left out.
fn accept_failures(log: &str) -> (usize, u64) {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("accept failed"))
        .collect();
    let suppressed = lines
        .iter()
        .filter_map(|l| {
            l.split("suppressed=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0);
    (lines.len(), suppressed)
}

#[tokio::test]
async fn at_the_descriptor_limit_accept_failures_back_off_and_are_logged_with_a_count() {
    let gate = Gate::start(&[], &["--handshake-timeout", "600"]).await;
    let pid = gate.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the gateway's descriptors")
        .count();
    let limit = open + 8;
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("prlimit runs");
    assert!(status.success(), "prlimit");
    // More connections than descriptors left: the rest wait in the backlog, and every
    // accept fails with EMFILE until one is freed.
    let mut held = Vec::new();
    for _ in 0..32 {
        held.push(TcpStream::connect(gate.proxy).await.expect("connect"));
    }
    gate.wait_for(
        || async { accept_failures(&gate.log()).1 > 0 },
        "an accept-failed line that counts the failures it stands for",
    )
    .await;
    let (lines, _) = accept_failures(&gate.log());
    assert!(
        lines < 200,
        "{lines} accept-failed lines: the log is not rate-limited"
    );
    // Descriptors freed, both listeners accept again.
    drop(held);
    gate.wait_for(
        || async { gate.admin_get("/healthz").await.0 == 200 },
        "the admin answering once descriptors are free",
    )
    .await;
}
