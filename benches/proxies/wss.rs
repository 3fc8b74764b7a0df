//! The `wss-*` scenarios: WebSockets on TLS 1.3 over HTTP/1.1, wsgate beside nginx, HAProxy
//! and the TLS floor (the floor relay behind a tokio-rustls handshake), all serving one
//! ECDSA P-256 certificate with TLS_AES_128_GCM_SHA256 and X25519 only. The client offers
//! nothing else, and checks on every connection that TLS 1.3, that suite, that group and
//! ALPN http/1.1 were negotiated, and whether the handshake was full or resumed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::join_all;
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::ServerName;
use rustls::{CipherSuite, ClientConfig, ClientConnection, HandshakeKind, NamedGroup};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::contenders::{self, Proxy, rss_bytes};
use crate::h2::Certificate;
use crate::{ALLOWED, HOST, RUN, Sample, load, median, micros, per_unit, timed, wire};

/// The TLS 1.3 suite every contender is configured to, as OpenSSL names it.
pub(crate) const TLS13_SUITE: &str = "TLS_AES_128_GCM_SHA256";
/// The key exchange group every contender is configured to, as OpenSSL names it.
pub(crate) const TLS_GROUP: &str = "X25519";
/// Idle TLS connections held per proxy: two descriptors each in the proxy and in this
/// process, well within the 20,000 each may hold.
const IDLE: usize = 5_000;
/// Connections opened, and echoed once, before the idle figure, so that the allocator and pools are
/// warm.
const IDLE_WARM: usize = 200;
/// Sessions each client of the resumed scenario remembers (one server name: one is enough).
const SESSIONS: usize = 1;

/// rustls' ring provider with only [`TLS13_SUITE`] and [`TLS_GROUP`]: the client's and the
/// TLS floor's.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![ring::kx_group::X25519],
        ..ring::default_provider()
    })
}

/// A client configuration trusting `certificate`'s CA, offering TLS 1.3 with [`provider`]'s
/// suite and group only and `alpn`, keeping session tickets as `resumption` says.
pub(crate) fn client_config(
    certificate: &Certificate,
    alpn: &[u8],
    resumption: Resumption,
) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(certificate.roots())
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = resumption;
    Arc::new(config)
}

/// Asserts that `session` with `addr` negotiated TLS 1.3, [`TLS13_SUITE`], [`TLS_GROUP`]
/// and `alpn`; returns whether its handshake was full or resumed.
pub(crate) fn negotiated(
    session: &ClientConnection,
    addr: SocketAddr,
    alpn: &[u8],
) -> HandshakeKind {
    assert_eq!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3),
        "TLS version with {addr}"
    );
    assert_eq!(
        session.negotiated_cipher_suite().map(|s| s.suite()),
        Some(CipherSuite::TLS13_AES_128_GCM_SHA256),
        "cipher suite with {addr}"
    );
    assert_eq!(
        session.negotiated_key_exchange_group().map(|g| g.name()),
        Some(NamedGroup::X25519),
        "key exchange group with {addr}"
    );
    assert_eq!(session.alpn_protocol(), Some(alpn), "ALPN with {addr}");
    session.handshake_kind().expect("handshake done")
}

/// What [`negotiated`] asserts, as the log says it.
const CHECKED: &str = "TLS 1.3, TLS_AES_128_GCM_SHA256, X25519, ALPN http/1.1";

/// A wss scenario.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Wss {
    /// Memory per idle TLS connection, [`IDLE`] held.
    Idle,
    /// Full handshakes: TLS (a new session each time), 101, close.
    Handshakes,
    /// Handshakes resuming the session of the client's previous connection.
    Resumed,
    /// Messages of this many bytes streamed and echoed.
    Throughput(usize),
}

impl Wss {
    /// Every wss scenario, in the order they run: memory first, in processes that have
    /// done nothing but warm up.
    pub(crate) const ALL: [Wss; 5] = [
        Wss::Idle,
        Wss::Handshakes,
        Wss::Resumed,
        Wss::Throughput(1024),
        Wss::Throughput(64 * 1024),
    ];

    /// The name `bash bench/proxies NAME` selects it by.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Wss::Idle => "wss-idle",
            Wss::Handshakes => "wss-handshakes",
            Wss::Resumed => "wss-resumed",
            Wss::Throughput(1024) => "wss-throughput-1k",
            Wss::Throughput(_) => "wss-throughput-64k",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Wss::Idle => "wss: memory per idle TLS connection, 5,000 held",
            Wss::Handshakes => "wss: full TLS handshake (new session), 101, close",
            Wss::Resumed => "wss: resumed TLS handshake (session ticket), 101, close",
            Wss::Throughput(1024) => "wss: 1 KiB messages streamed and echoed",
            Wss::Throughput(_) => "wss: 64 KiB messages streamed and echoed",
        }
    }

    fn rounds(self) -> usize {
        match self {
            // Memory freed by a round is reused by the next: only the first shows growth.
            Wss::Idle => 1,
            _ => 3,
        }
    }
}

/// Full and resumed handshakes seen by the client.
#[derive(Default)]
struct Kinds {
    full: AtomicU64,
    resumed: AtomicU64,
}

impl Kinds {
    fn record(&self, kind: HandshakeKind) {
        match kind {
            HandshakeKind::Resumed => &self.resumed,
            _ => &self.full,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// The share of handshakes that resumed.
    fn resumed(&self) -> f64 {
        let resumed = self.resumed.load(Ordering::Relaxed) as f64;
        resumed / (resumed + self.full.load(Ordering::Relaxed) as f64).max(1.0)
    }
}

/// A checked TLS connection to `addr` (from `source` when given).
async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    client: &Arc<ClientConfig>,
) -> std::io::Result<(TlsStream<TcpStream>, HandshakeKind)> {
    let tcp = wire::connect(addr, source).await?;
    let name = ServerName::try_from(HOST).expect("server name");
    let tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await?;
    let kind = negotiated(tls.get_ref().1, addr, b"http/1.1");
    Ok((tls, kind))
}

/// Opens a wss WebSocket with a WebSocket library, as an application would, then closes
/// it; 1 on a 101. Counts the TLS handshake in `kinds`.
async fn handshake(addr: SocketAddr, client: Arc<ClientConfig>, kinds: Arc<Kinds>) -> u64 {
    let Ok((tls, kind)) = connect(addr, None, &client).await else {
        return 0;
    };
    kinds.record(kind);
    let mut request = format!("wss://{HOST}/ws")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("origin", ALLOWED.parse().expect("origin"));
    match tokio_tungstenite::client_async(request, tls).await {
        Ok((mut ws, _)) => {
            let _ = ws.close(None).await;
            while ws.next().await.is_some() {}
            1
        }
        Err(_) => 0,
    }
}

/// `n` wss WebSockets through `addr`, opened 250 at a time, from `sources` in turn (from
/// the default address when empty); full handshakes.
async fn open_many(
    addr: SocketAddr,
    n: usize,
    sources: &[IpAddr],
    client: &Arc<ClientConfig>,
) -> Vec<TlsStream<TcpStream>> {
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let start = all.len();
        let chunk = (start..n.min(start + 250)).map(|i| {
            let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
            async move {
                let (mut tls, _) = connect(addr, source, client).await?;
                wire::upgrade(&mut tls).await?;
                std::io::Result::Ok(tls)
            }
        });
        for opened in join_all(chunk).await {
            let opened = opened.unwrap_or_else(|e| {
                panic!(
                    "wss WebSocket {} of {n} through {addr} failed: {e}",
                    all.len() + 1
                )
            });
            all.push(opened);
        }
    }
    all
}

/// One contender's figures in one round, and the share of its handshakes that resumed.
struct Measured {
    sample: Sample,
    resumed: f64,
}

async fn measure(proxy: &Proxy, scenario: Wss, certificate: &Certificate) -> Measured {
    let addr = proxy.addr;
    // Full handshakes only: no ticket kept, none offered.
    let fresh = client_config(certificate, b"http/1.1", Resumption::disabled());
    let kinds = Arc::new(Kinds::default());
    let sample = match scenario {
        Wss::Idle => {
            let pid = proxy.pid.expect("a proxy process");
            let sources = load::loopback_sources();
            let mut warm = open_many(addr, IDLE_WARM, &sources, &fresh).await;
            load::echo_once(&mut warm, 1024).await;
            drop(warm);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = rss_bytes(pid);
            let mut held = open_many(addr, IDLE, &sources, &fresh).await;
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
        Wss::Handshakes => {
            let work = {
                let kinds = kinds.clone();
                move |_| handshake(addr, fresh.clone(), kinds.clone())
            };
            let (units, elapsed, cpu) = timed(proxy, load::run_for(RUN, load::CLIENTS, work)).await;
            per_unit(units, elapsed, cpu)
        }
        Wss::Resumed => {
            // A ticket store per client, each primed by one full handshake (not measured):
            // every measured connection then offers the ticket its client got last.
            let clients: Vec<Arc<ClientConfig>> = (0..load::CLIENTS)
                .map(|_| {
                    let sessions = Resumption::in_memory_sessions(SESSIONS);
                    client_config(certificate, b"http/1.1", sessions)
                })
                .collect();
            let primed = Arc::new(Kinds::default());
            for client in &clients {
                handshake(addr, client.clone(), primed.clone()).await;
            }
            let work = {
                let kinds = kinds.clone();
                move |i: usize| handshake(addr, clients[i].clone(), kinds.clone())
            };
            let (units, elapsed, cpu) = timed(proxy, load::run_for(RUN, load::CLIENTS, work)).await;
            per_unit(units, elapsed, cpu)
        }
        Wss::Throughput(len) => {
            let conns = open_many(addr, load::CLIENTS, &[], &fresh).await;
            let halves = conns.into_iter().map(tokio::io::split).collect();
            // Up to 64 KiB in flight per connection, at least 4 messages, as in plaintext.
            let window = (64 * 1024 / len).max(4);
            let (units, elapsed, cpu) = timed(proxy, load::stream(halves, len, window, RUN)).await;
            per_unit(units, elapsed, cpu)
        }
    };
    if scenario == Wss::Resumed {
        eprintln!("    resumed: {:.1}% of handshakes", kinds.resumed() * 100.0);
    }
    Measured {
        sample,
        resumed: kinds.resumed(),
    }
}

/// The result column of one contender's row: medians over its rounds.
fn result(scenario: Wss, rounds: &[Measured]) -> String {
    let med = |f: &dyn Fn(&Sample) -> f64| median(rounds.iter().map(|m| f(&m.sample)).collect());
    match scenario {
        Wss::Idle => format!("{:.0} B", med(&|s| s.bytes_per_conn)),
        Wss::Handshakes => format!("{:.0}/s", med(&|s| s.per_second)),
        Wss::Resumed => {
            // The least share of any round: a contender that does not resume shows here.
            let resumed = rounds.iter().map(|m| m.resumed).fold(1.0, f64::min);
            format!(
                "{:.0}/s ({:.1}% resumed)",
                med(&|s| s.per_second),
                resumed * 100.0
            )
        }
        Wss::Throughput(len) => {
            let rate = med(&|s| s.per_second);
            format!(
                "{rate:.0} msg/s ({:.0} MiB/s each way)",
                rate * len as f64 / (1024.0 * 1024.0)
            )
        }
    }
}

/// What the table's footnote says of these scenarios' rows.
pub(crate) const NOTE: &str = "For wss (`wss-*`), every contender serves one ECDSA P-256 \
    certificate with TLS 1.3, TLS_AES_128_GCM_SHA256 and X25519 only; the client checks each \
    connection's version, suite, group and ALPN, and whether it resumed.\n";

/// Runs `scenarios` on wsgate, nginx, HAProxy and the TLS floor, adding rows to `table`.
pub(crate) async fn bench(scenarios: &[Wss], table: &mut String) {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let certificate = Certificate::issue(dir.path());
    let upstream = wire::echo_upstream().await;
    // No plain-HTTP route is measured here; the contenders' configurations name one.
    let unused = SocketAddr::from(([127, 0, 0, 1], 9));
    let ours = env!("CARGO_BIN_EXE_wsgate");
    let tls = Some(&certificate);
    let path = dir.path();
    let mut proxies = vec![
        contenders::start_wsgate("wsgate", ours, path, upstream, unused, 0, tls).await,
        contenders::start_nginx("nginx", path, upstream, unused, tls).await,
        contenders::start_haproxy("haproxy", path, upstream, unused, tls).await,
        contenders::start_tls_floor(upstream, &certificate).await,
    ];
    // Another build measured in the same rounds, as in the plaintext scenarios (a crypto
    // provider, say, compared under the same noise).
    if let Ok(baseline) = std::env::var(crate::BASELINE) {
        eprintln!("{}: also measuring {baseline}", crate::BASELINE);
        proxies.push(
            contenders::start_wsgate("wsgate baseline", &baseline, path, upstream, unused, 0, tls)
                .await,
        );
    }
    // One WebSocket through each, echoed once, so a broken setup fails loudly.
    let fresh = client_config(&certificate, b"http/1.1", Resumption::disabled());
    for proxy in &proxies {
        let mut conns = open_many(proxy.addr, 1, &[], &fresh).await;
        load::echo_once(&mut conns, 1024).await;
    }
    eprintln!("wss: checked on every connection: {CHECKED}");
    for &scenario in scenarios {
        let mut measured: Vec<Vec<Measured>> = proxies.iter().map(|_| Vec::new()).collect();
        for round in 0..scenario.rounds() {
            eprintln!(
                "{}: round {} of {}",
                scenario.name(),
                round + 1,
                scenario.rounds()
            );
            for (i, proxy) in proxies.iter().enumerate() {
                eprintln!("  {}", proxy.name);
                measured[i].push(measure(proxy, scenario, &certificate).await);
            }
        }
        let headline = |m: &Measured| match scenario {
            Wss::Idle => m.sample.bytes_per_conn,
            _ => m.sample.cpu_us,
        };
        for (i, proxy) in proxies.iter().enumerate() {
            let cpu = match scenario {
                Wss::Idle => "-".to_owned(),
                _ => micros(median(
                    measured[i].iter().map(|m| m.sample.cpu_us).collect(),
                )),
            };
            let ratios = match i {
                0 => "-".to_owned(),
                _ => measured[0]
                    .iter()
                    .zip(&measured[i])
                    .map(|(ours, theirs)| format!("{:.2}", headline(ours) / headline(theirs)))
                    .collect::<Vec<_>>()
                    .join(" · "),
            };
            table.push_str(&format!(
                "| {} | {} | {} | {cpu} | {ratios} |\n",
                scenario.title(),
                proxy.name,
                result(scenario, &measured[i]),
            ));
        }
    }
    eprintln!("wss: {:.0} s", started.elapsed().as_secs_f64());
}
