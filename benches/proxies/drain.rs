//! Closing many sockets at once: one route edit that revokes every socket's origin (1008),
//! and SIGTERM with every socket open (1012), at once and with `--shutdown-jitter`. Each
//! client notes when its Close arrived and hangs up: the time until the last Close, the most
//! Closes in any 100 ms (the rate at which clients that reconnect on Close would arrive at
//! the other replicas and through them at the upstreams), and the gateway's CPU for the
//! whole of it, teardown included (after a drain, read from the exited process before it is
//! reaped). One client core reads about 30,000 Closes a second, so a burst faster than that
//! shows as the client's rate.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::contenders::{self, Proxy, cpu_seconds};
use crate::{ALLOWED, HOST, IDLE, load};

/// The window of the jittered drain.
const JITTER: &str = "5";
/// Longer than the 2 s a gateway waits for a Close reply, so a revocation's teardown is done.
const SETTLE: Duration = Duration::from_secs(3);
/// How long a scenario may take before the benchmark gives up on it.
const PATIENCE: Duration = Duration::from_secs(120);

/// What one mass close cost.
struct Closed {
    /// From the trigger to the last Close a client received.
    last: Duration,
    /// The gateway's CPU seconds over that time.
    cpu: f64,
    /// The most Closes received in any 100 ms.
    peak_per_100ms: usize,
    /// Sockets that got a Close with the expected code.
    with_code: usize,
}

/// Runs the three scenarios on `IDLE` sockets each and adds their rows to `table`.
pub(crate) async fn bench(table: &mut String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = crate::wire::echo_upstream().await;
    let ours = env!("CARGO_BIN_EXE_wsgate");

    eprintln!("revoke: {IDLE} sockets");
    let routes = routes_dir(dir.path(), "revoke", upstream);
    let gate = contenders::start_wsgate_on("wsgate", ours, &routes, false, &[]).await;
    let closed = mass_close(
        &gate,
        1008,
        || {
            let denied = contenders::route_yaml("chat", HOST, upstream)
                .replace(ALLOWED, "https://elsewhere.example.com");
            std::fs::write(routes.join("routes.yaml"), denied).expect("rewrite the route");
        },
        |_| tokio::time::sleep(SETTLE),
    )
    .await;
    row(
        table,
        "one edit revokes every socket's origin (1008)",
        &closed,
    );
    drop(gate);

    for (label, jitter) in [
        ("SIGTERM, every socket open (1012)", "0"),
        ("SIGTERM with --shutdown-jitter 5 (1012)", JITTER),
    ] {
        eprintln!("{label}: {IDLE} sockets");
        let routes = routes_dir(dir.path(), &format!("drain-{jitter}"), upstream);
        let extra = [
            "--shutdown-delay",
            "0",
            "--shutdown-grace",
            "30",
            "--shutdown-jitter",
            jitter,
        ];
        let gate = contenders::start_wsgate_on("wsgate", ours, &routes, false, &extra).await;
        let pid = gate.pid.expect("a process");
        let closed = mass_close(
            &gate,
            1012,
            || {
                let status = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .expect("kill");
                assert!(status.success());
            },
            exited,
        )
        .await;
        row(table, label, &closed);
    }
}

/// A directory holding the benchmark's route to `upstream`.
fn routes_dir(dir: &Path, name: &str, upstream: SocketAddr) -> std::path::PathBuf {
    let routes = dir.join(name);
    std::fs::create_dir_all(&routes).expect("routes directory");
    std::fs::write(
        routes.join("routes.yaml"),
        contenders::route_yaml("chat", HOST, upstream),
    )
    .expect("routes file");
    routes
}

/// Opens `IDLE` sockets through `gate`, runs `trigger`, waits for every socket's Close, then
/// for `done` (the gateway's teardown) before reading its CPU.
async fn mass_close<F: Future<Output = ()>>(
    gate: &Proxy,
    code: u16,
    trigger: impl FnOnce(),
    done: impl FnOnce(u32) -> F,
) -> Closed {
    let pid = gate.pid.expect("a process");
    let sockets = load::open_many(gate.addr, IDLE, &load::loopback_sources()).await;
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let waiting: Vec<_> = sockets
        .into_iter()
        .map(|s| tokio::spawn(close_of(s)))
        .collect();
    trigger();
    let mut arrivals = Vec::with_capacity(IDLE);
    let mut with_code = 0;
    for waiter in waiting {
        let (at, got) = tokio::time::timeout(PATIENCE, waiter)
            .await
            .expect("every socket closed in time")
            .expect("reader");
        with_code += usize::from(got == Some(code));
        arrivals.push(at - started);
    }
    done(pid).await;
    let cpu = cpu_seconds(pid) - cpu_before;
    let last = arrivals.iter().copied().max().unwrap_or_default();
    let mut buckets = vec![0usize; (last.as_millis() / 100) as usize + 1];
    for at in &arrivals {
        buckets[(at.as_millis() / 100) as usize] += 1;
    }
    Closed {
        last,
        cpu,
        peak_per_100ms: buckets.into_iter().max().unwrap_or(0),
        with_code,
    }
}

/// Reads `socket` until the gateway's Close frame, then hangs up: when it came and its code.
async fn close_of(mut socket: TcpStream) -> (Instant, Option<u16>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return (Instant::now(), None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        // An idle socket receives nothing before the Close: 0x88, length, code, reason.
        if got.len() >= 4 {
            let code = (got[0] == 0x88).then(|| u16::from_be_bytes([got[2], got[3]]));
            return (Instant::now(), code);
        }
    }
}

/// Resolves once process `pid` has exited (a zombie until its parent reaps it, which keeps
/// its CPU times readable).
async fn exited(pid: u32) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
        let state = stat[stat.rfind(')').expect("stat format") + 2..]
            .chars()
            .next();
        if state == Some('Z') {
            return;
        }
        assert!(Instant::now() < deadline, "the gateway did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn row(table: &mut String, scenario: &str, closed: &Closed) {
    table.push_str(&format!(
        "| {scenario}, {IDLE} sockets | wsgate | last Close after {:.2} s; at most {} Closes in 100 ms; {} of {IDLE} with the code | {:.2} s in all, {:.0} µs per socket | - |\n",
        closed.last.as_secs_f64(),
        closed.peak_per_100ms,
        closed.with_code,
        closed.cpu,
        closed.cpu * 1e6 / IDLE as f64,
    ));
}
