//! wsgate beside nginx and HAProxy (both from Debian, one worker each, the same origin
//! allowlist enforced before the upgrade), a bare tokio relay (the floor any tokio proxy
//! stands on) and the upstreams reached directly, for WebSockets and for plain HTTP
//! requests (keep-alive POSTs and held long-polls, as Socket.IO's polling transport sends
//! them). Each proxy runs pinned to CPU 0; this process (load client, echo upstream and
//! HTTP upstream) should run on CPU 1 (`bash bench/proxies` does both). Each scenario runs
//! the proxies in turn, round after round (A B C A B C ...), and reports medians and the
//! proxy's own CPU time per unit of work, which a saturated client cannot hide.
//!
//! Run: `bash bench/proxies [scenario ...]`, scenarios `handshakes`, `denied`, `latency`,
//! `throughput-1k`, `throughput-64k`, `idle`, `http-keepalive`, `http-longpoll`,
//! `h2-sockets` (WebSockets over HTTP/2 beside HTTP/1.1 on TLS, with contenders of its own:
//! see `h2.rs`), `wss-idle`, `wss-handshakes`, `wss-resumed`, `wss-throughput-1k`,
//! `wss-throughput-64k` (WebSockets on TLS 1.3 beside a TLS floor: see `wss.rs`), `drain`
//! (revocation and shutdown of 9,000 sockets: see `drain.rs`) and `snapshot`. Prints a markdown table and writes it to `target/bench-proxies.md`; asserts
//! nothing about the figures.

#![allow(missing_docs)]

mod contenders;
mod drain;
mod fleet;
mod floor;
mod h2;
mod heap;
mod load;
mod plain;
mod wire;
mod wss;

use std::sync::Arc;
use std::time::{Duration, Instant};

use contenders::{Proxy, cpu_seconds, rss_bytes};
use tokio::net::TcpStream;
use wsgate::api::WebSocketRoute;
use wsgate::compile::{Backends, Compiler};
use wsgate::metrics::Metrics;
use wsgate::proxy::{Gateway, ProxyConfig};
use wsgate::snapshot::{Published, Snapshot};

const HOST: &str = "chat.example.com";
const ALLOWED: &str = "https://app.example.com";
/// How long one proxy is measured in one round.
const RUN: Duration = Duration::from_secs(3);
/// Connections and rate of the latency scenario: 100 connections, 5,000 messages/s.
const LATENCY_CONNECTIONS: usize = 100;
const LATENCY_PERIOD: Duration = Duration::from_millis(20);
const LATENCY_RUN: Duration = Duration::from_secs(5);
/// Idle connections held per proxy: two descriptors each in the proxy, which may hold at
/// most 20,000 here.
const IDLE: usize = 9_000;
/// Client connections of the keep-alive scenario, each sending one request after another.
const KEEPALIVE_CONNECTIONS: usize = 50;
/// Long-polls held per proxy: two descriptors each in the proxy and in this process, well
/// within the 20,000 each may hold.
const LONGPOLLS: usize = 2_000;
/// Names another wsgate binary to measure beside this one (`WSGATE_BASELINE=path`).
const BASELINE: &str = "WSGATE_BASELINE";
/// Scenarios with contenders of their own, run after those of [`Scenario`].
const EXTRA_SCENARIOS: [&str; 4] = ["h2-sockets", "snapshot", "drain", "idle-100k"];
/// Route counts of the snapshot scenario.
const SNAPSHOT_ROUTES: [usize; 3] = [10, 10_000, 100_000];

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Handshakes,
    Denied,
    Latency,
    Throughput(usize),
    Idle,
    HttpKeepAlive,
    HttpLongPoll,
}

impl Scenario {
    const ALL: [Scenario; 8] = [
        Scenario::Handshakes,
        Scenario::Denied,
        Scenario::Latency,
        Scenario::Throughput(1024),
        Scenario::Throughput(64 * 1024),
        Scenario::Idle,
        Scenario::HttpKeepAlive,
        Scenario::HttpLongPoll,
    ];

    /// The name `bash bench/proxies NAME` selects it by.
    fn name(self) -> &'static str {
        match self {
            Scenario::Handshakes => "handshakes",
            Scenario::Denied => "denied",
            Scenario::Latency => "latency",
            Scenario::Throughput(1024) => "throughput-1k",
            Scenario::Throughput(_) => "throughput-64k",
            Scenario::Idle => "idle",
            Scenario::HttpKeepAlive => "http-keepalive",
            Scenario::HttpLongPoll => "http-longpoll",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Scenario::Handshakes => "allowed-origin handshakes (open, 101, close)",
            Scenario::Denied => "denied-origin handshakes (403)",
            Scenario::Latency => "round trip of 64 B messages, 100 connections, 5,000 msg/s",
            Scenario::Throughput(1024) => "1 KiB messages streamed and echoed",
            Scenario::Throughput(_) => "64 KiB messages streamed and echoed",
            Scenario::Idle => "memory per idle proxied connection, 9,000 held",
            Scenario::HttpKeepAlive => {
                "plain HTTP: 100 B POSTs, one after another on 50 kept-alive connections"
            }
            Scenario::HttpLongPoll => "plain HTTP: memory per held long-poll, 2,000 held",
        }
    }

    fn rounds(self) -> usize {
        match self {
            // Tails are noisy: medians of five interleaved runs.
            Scenario::Latency => 5,
            // Memory freed by a round is reused by the next: only the first shows growth.
            Scenario::Idle | Scenario::HttpLongPoll => 1,
            _ => 3,
        }
    }

    fn applies_to(self, proxy: &Proxy) -> bool {
        let routes_10k = proxy.name.contains("routes");
        let floor = proxy.name.starts_with("floor");
        match self {
            Scenario::Handshakes => true,
            // The floor checks no origin; the upstream itself refuses nothing.
            Scenario::Denied => proxy.pid.is_some() && !floor && !routes_10k,
            Scenario::Idle => proxy.pid.is_some() && !routes_10k,
            // The floor would relay plain requests to the WebSocket upstream.
            Scenario::HttpKeepAlive => !floor && !routes_10k,
            Scenario::HttpLongPoll => proxy.pid.is_some() && !floor && !routes_10k,
            _ => !routes_10k,
        }
    }
}

/// One proxy's figures in one round.
#[derive(Clone, Copy, Default)]
struct Sample {
    per_second: f64,
    cpu_us: f64,
    /// p50, p99, p99.9 round trip (latency scenario).
    latency_us: [f64; 3],
    /// Resident memory growth per connection (idle and long-poll scenarios).
    bytes_per_conn: f64,
}

impl Sample {
    /// The figure compared across proxies: lower is better.
    fn headline(&self, scenario: Scenario) -> f64 {
        match scenario {
            Scenario::Latency => self.latency_us[0],
            Scenario::Idle | Scenario::HttpLongPoll => self.bytes_per_conn,
            _ => self.cpu_us,
        }
    }
}

/// Runs `work`, returning its output, the seconds it took and the proxy's CPU seconds, and
/// reports how busy this process (load client and upstreams) was meanwhile.
async fn timed<T>(proxy: &Proxy, work: impl Future<Output = T>) -> (T, f64, f64) {
    let cpu0 = proxy.pid.map(cpu_seconds);
    let ours0 = cpu_seconds(std::process::id());
    let started = Instant::now();
    let out = work.await;
    let elapsed = started.elapsed().as_secs_f64();
    // Near 100%, the client's core and not the proxy set the pace.
    eprintln!(
        "    load client and upstreams: {:.0}% of their core",
        (cpu_seconds(std::process::id()) - ours0) * 100.0 / elapsed
    );
    let cpu = match (proxy.pid, cpu0) {
        (Some(pid), Some(c0)) => cpu_seconds(pid) - c0,
        _ => f64::NAN,
    };
    (out, elapsed, cpu)
}

fn per_unit(units: u64, elapsed: f64, cpu: f64) -> Sample {
    Sample {
        per_second: units as f64 / elapsed,
        cpu_us: cpu * 1e6 / units.max(1) as f64,
        ..Sample::default()
    }
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    f64::from(sorted[((sorted.len() - 1) as f64 * q).round() as usize])
}

async fn measure(proxy: &Proxy, scenario: Scenario, http: &plain::Upstream) -> Sample {
    let addr = proxy.addr;
    match scenario {
        Scenario::Handshakes => {
            let (units, elapsed, cpu) = timed(
                proxy,
                load::run_for(RUN, load::CLIENTS, move |_| load::handshake(addr)),
            )
            .await;
            per_unit(units, elapsed, cpu)
        }
        Scenario::Denied => {
            let (units, elapsed, cpu) = timed(
                proxy,
                load::run_for(RUN, load::CLIENTS, move |_| load::denied(addr)),
            )
            .await;
            per_unit(units, elapsed, cpu)
        }
        Scenario::Throughput(len) => {
            let conns = load::open_many(addr, load::CLIENTS, &[]).await;
            // Up to 64 KiB in flight per connection, at least 4 messages.
            let window = (64 * 1024 / len).max(4);
            let halves = conns.into_iter().map(TcpStream::into_split).collect();
            let (units, elapsed, cpu) = timed(proxy, load::stream(halves, len, window, RUN)).await;
            per_unit(units, elapsed, cpu)
        }
        Scenario::Latency => {
            let conns = load::open_many(addr, LATENCY_CONNECTIONS, &[]).await;
            let (mut rtts, elapsed, cpu) =
                timed(proxy, load::latency(conns, LATENCY_PERIOD, LATENCY_RUN)).await;
            rtts.sort_unstable();
            Sample {
                latency_us: [0.5, 0.99, 0.999].map(|q| percentile(&rtts, q)),
                ..per_unit(rtts.len() as u64, elapsed, cpu)
            }
        }
        Scenario::Idle => {
            let pid = proxy.pid.expect("a proxy process");
            let sources = load::loopback_sources();
            // Warm up: the runtime, allocator and pools reach their steady state first.
            let mut warm = load::open_many(addr, 200, &sources).await;
            load::echo_once(&mut warm, 1024).await;
            drop(warm);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = rss_bytes(pid);
            let mut held = load::open_many(addr, IDLE, &sources).await;
            load::echo_once(&mut held, 1024).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = rss_bytes(pid);
            drop(held);
            // Let the proxy close its upstream sides before the next one is measured.
            tokio::time::sleep(Duration::from_secs(2)).await;
            Sample {
                bytes_per_conn: after.saturating_sub(before) as f64 / IDLE as f64,
                ..Sample::default()
            }
        }
        Scenario::HttpKeepAlive => {
            let (units, elapsed, cpu) = timed(
                proxy,
                plain::keep_alive(proxy.http_addr, KEEPALIVE_CONNECTIONS, RUN),
            )
            .await;
            per_unit(units, elapsed, cpu)
        }
        Scenario::HttpLongPoll => {
            let pid = proxy.pid.expect("a proxy process");
            // Warm up, as for idle connections; the upstream connections a proxy keeps
            // after the answers are part of its steady state.
            let warm = plain::hold(proxy.http_addr, 200, http).await;
            plain::release(http, warm).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = rss_bytes(pid);
            let held = plain::hold(proxy.http_addr, LONGPOLLS, http).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = rss_bytes(pid);
            plain::release(http, held).await;
            // Let the proxy close the connections before the next one is measured.
            tokio::time::sleep(Duration::from_secs(2)).await;
            Sample {
                bytes_per_conn: after.saturating_sub(before) as f64 / LONGPOLLS as f64,
                ..Sample::default()
            }
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn micros(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2} µs")
    } else {
        format!("{v:.1} µs")
    }
}

/// The result column of one proxy's row: medians over its rounds.
fn result(scenario: Scenario, samples: &[Sample]) -> String {
    let med = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    match scenario {
        Scenario::Handshakes | Scenario::Denied => format!("{:.0}/s", med(&|s| s.per_second)),
        Scenario::Throughput(len) => {
            let rate = med(&|s| s.per_second);
            format!(
                "{rate:.0} msg/s ({:.0} MiB/s each way)",
                rate * len as f64 / (1024.0 * 1024.0)
            )
        }
        Scenario::Latency => format!(
            "p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs",
            med(&|s| s.latency_us[0]),
            med(&|s| s.latency_us[1]),
            med(&|s| s.latency_us[2]),
        ),
        Scenario::Idle | Scenario::HttpLongPoll => format!("{:.0} B", med(&|s| s.bytes_per_conn)),
        Scenario::HttpKeepAlive => format!("{:.0} requests/s", med(&|s| s.per_second)),
    }
}

/// What compiling and swapping in a snapshot of some routes cost.
struct SnapshotCost {
    /// Milliseconds for the first snapshot (every route checked).
    first_ms: f64,
    /// Milliseconds per change of one route: the median and the fastest of eleven (wall time
    /// on a shared VM varies).
    median_ms: f64,
    fastest_ms: f64,
    /// Heap bytes per route held by the declared routes (what a source keeps) and by the
    /// active snapshot (what the data plane keeps).
    declared_bytes: f64,
    snapshot_bytes: f64,
}

/// Compiles and swaps in the first snapshot of `routes` routes, then one per change of one
/// route, as a source does.
fn snapshot_cost(routes: usize) -> SnapshotCost {
    let upstream = "127.0.0.1:9".parse().expect("addr");
    let before = heap::live_bytes();
    let mut declared: Vec<Arc<WebSocketRoute>> = (0..routes)
        .map(|i| {
            let yaml =
                contenders::route_yaml(&format!("r{i}"), &format!("r{i}.example.com"), upstream);
            Arc::new(serde_saphyr::from_str(&yaml).expect("route"))
        })
        .collect();
    let declared_bytes = heap::live_bytes().saturating_sub(before) as f64 / routes as f64;
    let published = Published::new(Metrics::new());
    // The proxy's revocation runs on every publish, as in the gateway.
    let _gateway = Gateway::new(ProxyConfig::default(), published.clone());
    let backends = Backends::standalone();
    let mut compiler = Compiler::default();
    let unpublished = heap::live_bytes();
    let started = Instant::now();
    published.publish(Snapshot::new(
        1,
        compiler.compile(&declared, &backends),
        Vec::new(),
    ));
    let first_ms = started.elapsed().as_secs_f64() * 1000.0;
    // What the compiler keeps to compile the next change counts too.
    let snapshot_bytes = heap::live_bytes().saturating_sub(unpublished) as f64 / routes as f64;
    let times: Vec<f64> = (2..=12)
        .map(|version| {
            // Changes are apart, as in a cluster: the previous table is freed in between.
            std::thread::sleep(Duration::from_millis(200));
            // One route, in the middle of the list, lets one more origin in.
            let changed = &mut declared[routes / 2];
            let mut edited = WebSocketRoute::clone(changed);
            edited
                .spec
                .origins
                .allow
                .push(format!("https://v{version}.example.com"));
            *changed = Arc::new(edited);
            let started = Instant::now();
            published.publish(Snapshot::new(
                version,
                compiler.compile(&declared, &backends),
                Vec::new(),
            ));
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let fastest_ms = times.iter().copied().fold(f64::INFINITY, f64::min);
    SnapshotCost {
        first_ms,
        median_ms: median(times),
        fastest_ms,
        declared_bytes,
        snapshot_bytes,
    }
}

/// Starts every contender and runs `scenarios` on them, adding rows to `table`.
async fn proxy_scenarios(scenarios: &[Scenario], table: &mut String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = wire::echo_upstream().await;
    let http = plain::Upstream::start().await;
    let ours = env!("CARGO_BIN_EXE_wsgate");
    let mut proxies = vec![
        contenders::start_wsgate("wsgate", ours, dir.path(), upstream, http.addr, 0, None).await,
        contenders::start_nginx("nginx", dir.path(), upstream, http.addr, None).await,
        contenders::start_haproxy("haproxy", dir.path(), upstream, http.addr, None).await,
        contenders::start_floor(upstream).await,
        Proxy::direct(upstream, http.addr),
        // Measured in the allowed-handshake scenario only.
        contenders::start_wsgate(
            "wsgate, 100,000 routes",
            ours,
            dir.path(),
            upstream,
            http.addr,
            99_999,
            None,
        )
        .await,
    ];
    // Another build of wsgate measured in the same rounds, so that a change is compared with
    // what it changed under the same noise.
    if let Ok(baseline) = std::env::var(BASELINE) {
        eprintln!("{BASELINE}: also measuring {baseline}");
        proxies.push(
            contenders::start_wsgate(
                "wsgate baseline",
                &baseline,
                dir.path(),
                upstream,
                http.addr,
                0,
                None,
            )
            .await,
        );
    }
    let plain_http = scenarios
        .iter()
        .any(|s| matches!(s, Scenario::HttpKeepAlive | Scenario::HttpLongPoll));
    for proxy in &proxies {
        load::check(proxy.addr).await;
        // An allowed POST passes; a proxy (not the upstream itself) refuses another origin's.
        // Checked only when measured: a baseline from before `http` passes no plain request.
        if plain_http && Scenario::HttpKeepAlive.applies_to(proxy) {
            plain::check(proxy.http_addr, proxy.pid.is_some()).await;
        }
    }
    for &scenario in scenarios {
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); proxies.len()];
        for round in 0..scenario.rounds() {
            eprintln!(
                "{}: round {} of {}",
                scenario.name(),
                round + 1,
                scenario.rounds()
            );
            for (i, proxy) in proxies.iter().enumerate() {
                if scenario.applies_to(proxy) {
                    eprintln!("  {}", proxy.name);
                    samples[i].push(measure(proxy, scenario, &http).await);
                }
            }
        }
        for (i, proxy) in proxies.iter().enumerate() {
            if samples[i].is_empty() {
                continue;
            }
            let cpu = match (proxy.pid, scenario) {
                (None, _) | (_, Scenario::Idle | Scenario::HttpLongPoll) => "-".to_owned(),
                _ => micros(median(samples[i].iter().map(|s| s.cpu_us).collect())),
            };
            let ratios = match proxy.pid {
                Some(_) if i > 0 => samples[0]
                    .iter()
                    .zip(&samples[i])
                    .map(|(ours, theirs)| {
                        format!("{:.2}", ours.headline(scenario) / theirs.headline(scenario))
                    })
                    .collect::<Vec<_>>()
                    .join(" · "),
                _ => "-".to_owned(),
            };
            table.push_str(&format!(
                "| {} | {} | {} | {cpu} | {ratios} |\n",
                scenario.title(),
                proxy.name,
                result(scenario, &samples[i]),
            ));
        }
    }
}

async fn bench(chosen: &[String]) {
    let wanted = |name: &str| chosen.is_empty() || chosen.iter().any(|c| c == name);
    let mut table = String::from(
        "| scenario | proxy | result (median) | proxy CPU per unit (median) | wsgate/this, per round |\n|---|---|---|---|---|\n",
    );
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| wanted(s.name()))
        .collect();
    if !scenarios.is_empty() {
        proxy_scenarios(&scenarios, &mut table).await;
    }
    let h2_sockets = wanted("h2-sockets");
    if h2_sockets {
        h2::bench(&mut table).await;
    }
    let wss: Vec<wss::Wss> = wss::Wss::ALL
        .into_iter()
        .filter(|s| wanted(s.name()))
        .collect();
    if !wss.is_empty() {
        wss::bench(&wss, &mut table).await;
    }
    if wanted("drain") {
        drain::bench(&mut table).await;
    }
    if wanted("idle-100k") {
        fleet::bench(&mut table).await;
    }
    if wanted("snapshot") {
        for routes in SNAPSHOT_ROUTES {
            eprintln!("snapshot: {routes} routes");
            let cost = snapshot_cost(routes);
            table.push_str(&format!(
                "| snapshot compiled and swapped in, {routes} routes | wsgate | one route changed: {:.2} ms (fastest {:.2} ms); the first: {:.2} ms; heap per route: {:.0} B declared, {:.0} B in the snapshot and the compiler | - | - |\n",
                cost.median_ms, cost.fastest_ms, cost.first_ms, cost.declared_bytes, cost.snapshot_bytes,
            ));
        }
    }
    table.push_str(
        "\nwsgate/this: wsgate's figure divided by this proxy's, in each round (CPU per unit; for \
         the round trip, the p50; for memory, bytes per connection); below 1, wsgate used less.\n",
    );
    if h2_sockets {
        table.push_str(h2::NOTE);
    }
    if !wss.is_empty() {
        table.push_str(wss::NOTE);
    }
    println!("{table}");
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-proxies.md");
    std::fs::write(out, &table).expect("write the table");
    eprintln!("written to {out}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [role] if role == "fleet-echo" => return fleet::echo(),
        [role, count, addrs @ ..] if role == "fleet-clients" => {
            return fleet::clients(count, addrs);
        }
        _ => {}
    }
    if let [role, listen, upstream, tls @ ..] = args.as_slice()
        && role == "floor-relay"
    {
        let tls = match tls {
            [cert, key] => Some(floor::acceptor(cert.as_ref(), key.as_ref())),
            _ => None,
        };
        floor::run(
            listen.parse().expect("listen address"),
            upstream.parse().expect("upstream address"),
            tls,
        );
        return;
    }
    // `cargo test --all-targets` runs bench binaries without `--bench`: only build then.
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("proxies: a benchmark; run it with `bash bench/proxies`");
        return;
    }
    let chosen: Vec<String> = args.into_iter().filter(|a| !a.starts_with('-')).collect();
    if let Some(unknown) = chosen.iter().find(|c| {
        !EXTRA_SCENARIOS.contains(&c.as_str())
            && !Scenario::ALL.iter().any(|s| s.name() == c.as_str())
            && !wss::Wss::ALL.iter().any(|s| s.name() == c.as_str())
    }) {
        let names: Vec<&str> = Scenario::ALL
            .iter()
            .map(|s| s.name())
            .chain(wss::Wss::ALL.iter().map(|s| s.name()))
            .collect();
        eprintln!(
            "proxies: no scenario {unknown:?}; choose from {}, {}",
            names.join(", "),
            EXTRA_SCENARIOS.join(", ")
        );
        std::process::exit(2);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench(&chosen));
}
