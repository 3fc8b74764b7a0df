//! 100,000 idle WebSockets across several wsgate processes. A process may hold 20,000
//! descriptors here and a relayed socket takes two in the gateway, so the sockets are spread
//! over [`GATEWAYS`] gateways; the echo upstreams and the load clients run as child
//! processes of this benchmark for the same reason (`fleet-echo`, `fleet-clients`). Reports
//! the gateways' memory per socket, the kernel's memory per TCP socket (slab, machine-wide:
//! a relayed socket is four TCP sockets here, two of them in the gateway), the time to open
//! them, and what one replica holding all of them would need.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::contenders::{self, Proxy, rss_bytes};
use crate::{HOST, load, wire};

/// Sockets held in all.
const SOCKETS: usize = 100_000;
/// Gateways: 8,334 sockets, 16,668 descriptors each.
const GATEWAYS: usize = 12;
/// Echo upstreams (one per gateway) and load clients (16,667 sockets each).
const UPSTREAMS: usize = GATEWAYS;
const CLIENTS: usize = 6;
/// Sockets each gateway opens and closes first, so that its runtime, allocator and pools
/// are in their steady state when measuring starts.
const WARM: usize = 200;

/// A child process of this benchmark, killed when dropped.
struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    /// Runs this benchmark's binary in `role` with `args`.
    fn start(role: &str, args: &[String]) -> Helper {
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .arg(role)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {role}: {e}"));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Helper {
            child,
            stdin,
            stdout,
        }
    }

    /// The next line the child prints; it panics if the child ended instead.
    fn line(&mut self) -> String {
        let mut line = String::new();
        let read = self
            .stdout
            .read_line(&mut line)
            .expect("read a child's output");
        assert!(read > 0, "a helper process ended early");
        line.trim().to_owned()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the scenario and adds its row to `table`.
pub(crate) async fn bench(table: &mut String) {
    eprintln!("idle-100k: {SOCKETS} sockets through {GATEWAYS} gateways");
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = env!("CARGO_BIN_EXE_wsgate");
    let mut upstreams: Vec<Helper> = (0..UPSTREAMS)
        .map(|_| Helper::start("fleet-echo", &[]))
        .collect();
    let upstream_addrs: Vec<SocketAddr> = upstreams
        .iter_mut()
        .map(|u| u.line().parse().expect("an upstream's address"))
        .collect();
    let mut gateways: Vec<Proxy> = Vec::with_capacity(GATEWAYS);
    for i in 0..GATEWAYS {
        let routes = dir.path().join(format!("gateway-{i}"));
        std::fs::create_dir_all(&routes).expect("routes directory");
        let route = contenders::route_yaml("chat", HOST, upstream_addrs[i % UPSTREAMS]);
        std::fs::write(routes.join("routes.yaml"), route).expect("routes file");
        gateways.push(contenders::start_wsgate_on("wsgate", ours, &routes, false, &[]).await);
    }
    for gateway in &gateways {
        let mut warm = load::open_many(gateway.addr, WARM, &[]).await;
        load::echo_once(&mut warm, 1024).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pids: Vec<u32> = gateways.iter().map(|g| g.pid.expect("a process")).collect();
    let before: Vec<u64> = pids.iter().map(|&p| rss_bytes(p)).collect();
    let kernel_before = slab_bytes();

    let addrs: Vec<String> = gateways.iter().map(|g| g.addr.to_string()).collect();
    let started = Instant::now();
    let mut clients: Vec<Helper> = (0..CLIENTS)
        .map(|c| {
            let share = SOCKETS / CLIENTS + usize::from(c < SOCKETS % CLIENTS);
            // Each client starts at another gateway, so the remainders spread too.
            let mut args = vec![share.to_string()];
            args.extend(addrs.iter().cycle().skip(c * 2).take(GATEWAYS).cloned());
            Helper::start("fleet-clients", &args)
        })
        .collect();
    for client in &mut clients {
        assert_eq!(client.line(), "ready", "a load client");
    }
    let opened_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<u64> = pids.iter().map(|&p| rss_bytes(p)).collect();
    let kernel = slab_bytes().saturating_sub(kernel_before);

    let grown: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.saturating_sub(*b) as f64)
        .collect();
    let per_socket = grown.iter().sum::<f64>() / SOCKETS as f64;
    let per_gateway = SOCKETS as f64 / GATEWAYS as f64;
    let (least, most) = grown.iter().fold((f64::INFINITY, 0.0f64), |(l, m), g| {
        (l.min(g / per_gateway), m.max(g / per_gateway))
    });
    let base = before.iter().sum::<u64>() as f64 / GATEWAYS as f64;
    let one_replica = base + per_socket * SOCKETS as f64;
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let per_kernel_socket = kernel as f64 / (4 * SOCKETS) as f64;
    eprintln!(
        "  opened in {:.1} s; gateway memory per socket {per_socket:.0} B; kernel slab {kernel} B",
        opened_in.as_secs_f64()
    );
    table.push_str(&format!(
        "| {SOCKETS} idle WebSockets through {GATEWAYS} wsgate processes (20,000 descriptors each) | wsgate | {per_socket:.0} B per socket (per process {least:.0}-{most:.0} B), opened in {:.1} s; kernel memory {:.0} B per TCP socket (two per relayed socket in the gateway); one replica holding them all would need {} descriptors (`--max-connections` is 100,000 by default), about {:.0} MiB resident ({:.0} MiB before the sockets) and about {:.0} MiB of kernel memory for its sockets, which the pod's memory limit is charged with too | - | - |\n",
        opened_in.as_secs_f64(),
        per_kernel_socket,
        2 * SOCKETS + 64,
        mib(one_replica),
        mib(base),
        mib(per_kernel_socket * (2 * SOCKETS) as f64),
    ));
    for client in &mut clients {
        // The clients hang up and exit when their input closes.
        drop(client.stdin.take());
    }
    drop(clients);
    drop(gateways);
    drop(upstreams);
}

/// The kernel's slab memory now (`Slab` in /proc/meminfo), where socket structures live.
fn slab_bytes() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let kib = info
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .expect("Slab in /proc/meminfo");
    kib * 1024
}

/// The `fleet-echo` role: an echo upstream that prints its address and serves until killed.
pub(crate) fn echo() {
    runtime().block_on(async {
        let addr = wire::echo_upstream().await;
        println!("{addr}");
        std::future::pending::<()>().await;
    });
}

/// The `fleet-clients` role: opens `count` sockets spread over the gateways at `addrs`,
/// echoes one message on each, prints `ready`, and holds them until its input closes.
pub(crate) fn clients(count: &str, addrs: &[String]) {
    let count: usize = count.parse().expect("a socket count");
    let addrs: Vec<SocketAddr> = addrs
        .iter()
        .map(|a| a.parse().expect("a gateway's address"))
        .collect();
    let runtime = runtime();
    let held = runtime.block_on(async {
        let mut held = Vec::with_capacity(count);
        for (i, addr) in addrs.iter().enumerate() {
            let share = count / addrs.len() + usize::from(i < count % addrs.len());
            // From the default address: a port taken by `bind` (as other scenarios do, to
            // spread clients over addresses) is one `connect` can no longer pick for any
            // destination, and the gateways need 100,000 connects from 127.0.0.1 for their
            // upstreams; `connect` alone reuses a port across destinations.
            held.extend(load::open_many(*addr, share, &[]).await);
        }
        load::echo_once(&mut held, 1024).await;
        held
    });
    println!("ready");
    std::io::stdout().flush().expect("flush");
    let _ = std::io::stdin().lines().count();
    drop(held);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
