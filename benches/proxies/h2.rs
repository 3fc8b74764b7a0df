//! The `h2-sockets` scenario: WebSockets over HTTP/2 (RFC 8441 extended CONNECT), 100 on one
//! connection, beside the same sockets each on a TLS connection of its own (HTTP/1.1), all
//! on TLS 1.3 with one certificate. wsgate and HAProxy are measured both ways, each way in a
//! process of its own (memory one way frees is reused by the other); nginx, which does not
//! implement RFC 8441, over HTTP/1.1 only. Every connection's ALPN result and TLS version
//! are checked, and every socket echoes one message before it counts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::ext::Protocol;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::contenders::{self, Proxy, rss_bytes};
use crate::{ALLOWED, HOST, RUN, Sample, load, median, micros, per_unit, timed, wire, wss};

/// Sockets opened together: on one HTTP/2 connection, or each on its own TLS connection.
const BATCH: usize = 100;
/// Batches held for the memory figure: 2,000 sockets.
const HELD_BATCHES: usize = 20;
/// Batches held before memory is measured, so that the allocator and pools are warm.
const WARM_BATCHES: usize = 2;
/// Batches under way at once while CPU is measured.
const CONCURRENT_BATCHES: usize = 2;
/// Rounds of the CPU figure (memory is measured once: what a round frees, the next reuses).
const ROUNDS: usize = 3;
/// Bytes of the message each socket echoes.
const MESSAGE: usize = 1024;

/// The certificate every TLS contender serves for [`HOST`] (ECDSA P-256), issued by a CA of
/// the benchmark's own, as files each proxy reads, and the trust a client needs.
pub(crate) struct Certificate {
    /// Holds Secret [`Certificate::SECRET`] (`tls.crt`, `tls.key`) for wsgate, and
    /// `combined.pem` for HAProxy.
    dir: PathBuf,
    /// The CA, for clients.
    ca: CertificateDer<'static>,
}

impl Certificate {
    /// The Secret that wsgate's route names.
    pub(crate) const SECRET: &str = "bench-tls";

    /// Issues the certificate and writes its files under `dir`.
    pub(crate) fn issue(dir: &Path) -> Certificate {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec![HOST.to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("certificate");
        let (cert, key) = (cert.pem(), key.serialize_pem());
        let secret = dir.join(Certificate::SECRET);
        std::fs::create_dir_all(&secret).expect("secret directory");
        std::fs::write(secret.join("tls.crt"), &cert).expect("tls.crt");
        std::fs::write(secret.join("tls.key"), &key).expect("tls.key");
        std::fs::write(dir.join("combined.pem"), cert + &key).expect("combined.pem");
        Certificate {
            dir: dir.to_owned(),
            ca: CertificateDer::from_pem_slice(ca.pem().as_bytes()).expect("CA"),
        }
    }

    /// wsgate's `--secret-dir`.
    pub(crate) fn secret_dir(&self) -> &str {
        self.dir.to_str().expect("utf-8 path")
    }

    /// The certificate, PEM.
    pub(crate) fn cert(&self) -> PathBuf {
        self.dir.join(Certificate::SECRET).join("tls.crt")
    }

    /// Its key, PEM.
    pub(crate) fn key(&self) -> PathBuf {
        self.dir.join(Certificate::SECRET).join("tls.key")
    }

    /// The certificate then its key, in one file.
    pub(crate) fn combined(&self) -> PathBuf {
        self.dir.join("combined.pem")
    }

    /// Trust in the CA alone.
    pub(crate) fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("trust anchor");
        roots
    }

    /// A client configuration trusting the CA, offering TLS 1.3 with the benchmark's one
    /// suite and group and `transport`'s ALPN, and resuming sessions as rustls does by
    /// default.
    fn client(&self, transport: Transport) -> Arc<rustls::ClientConfig> {
        wss::client_config(
            self,
            transport.alpn(),
            rustls::client::Resumption::default(),
        )
    }
}

/// How a contender's sockets reach it.
#[derive(Clone, Copy)]
enum Transport {
    /// A batch's sockets are streams of one HTTP/2 connection.
    Http2,
    /// Each socket is a TLS connection of its own, upgraded over HTTP/1.1.
    Http1,
}

impl Transport {
    fn alpn(self) -> &'static [u8] {
        match self {
            Transport::Http2 => b"h2",
            Transport::Http1 => b"http/1.1",
        }
    }

    /// What [`Contender::open`] asserts of every batch.
    fn checked(self) -> &'static str {
        match self {
            Transport::Http2 => {
                "TLS 1.3, TLS_AES_128_GCM_SHA256, X25519, ALPN h2, SETTINGS_ENABLE_CONNECT_PROTOCOL announced, 100 extended \
                 CONNECT streams answered 200, each echoed"
            }
            Transport::Http1 => {
                "TLS 1.3, TLS_AES_128_GCM_SHA256, X25519, ALPN http/1.1 on each connection, 101, \
                 each echoed"
            }
        }
    }
}

/// One row of the table: a proxy process, and how it is reached.
struct Contender {
    proxy: Proxy,
    transport: Transport,
    client: Arc<rustls::ClientConfig>,
}

/// A socket's bytes, over TLS or on an HTTP/2 stream.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Socket = WebSocketStream<Box<dyn Io>>;

/// Sockets opened together, each of which has echoed once, and the task that drives their
/// HTTP/2 connection, if they share one.
struct Batch {
    sockets: Vec<Socket>,
    connection: Option<JoinHandle<()>>,
}

/// A TLS 1.3 connection to `addr` for [`HOST`] that negotiated the benchmark's suite and
/// group and `transport`'s ALPN.
async fn tls(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    transport: Transport,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = ServerName::try_from(HOST).expect("server name");
    let tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS with {addr}: {e}"));
    wss::negotiated(tls.get_ref().1, addr, transport.alpn());
    tls
}

/// An allowed-origin WebSocket as an extended CONNECT stream on `sender`'s connection.
async fn h2_socket(mut sender: SendRequest<Empty<Bytes>>) -> Socket {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://{HOST}/ws"))
        .header("sec-websocket-version", "13")
        .header("origin", ALLOWED)
        .body(Empty::new())
        .expect("request");
    request
        .extensions_mut()
        .insert(Protocol::from_static("websocket"));
    sender.ready().await.expect("HTTP/2 connection ready");
    let response = sender
        .send_request(request)
        .await
        .expect("extended CONNECT answered");
    assert_eq!(response.status(), StatusCode::OK, "extended CONNECT");
    let upgraded = hyper::upgrade::on(response).await.expect("stream upgraded");
    let io: Box<dyn Io> = Box::new(TokioIo::new(upgraded));
    WebSocketStream::from_raw_socket(io, Role::Client, None).await
}

/// An allowed-origin WebSocket on a TLS connection of its own.
async fn h1_socket(addr: SocketAddr, client: Arc<rustls::ClientConfig>) -> Socket {
    let tls = tls(addr, &client, Transport::Http1).await;
    let mut request = format!("wss://{HOST}/ws")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("origin", ALLOWED.parse().expect("origin"));
    let io: Box<dyn Io> = Box::new(tls);
    tokio_tungstenite::client_async(request, io)
        .await
        .unwrap_or_else(|e| panic!("WebSocket over HTTP/1.1 through {addr}: {e}"))
        .0
}

/// Sends one message on `socket` and waits for its echo.
async fn echo(socket: &mut Socket) {
    let message = Message::binary(vec![b'x'; MESSAGE]);
    socket.send(message.clone()).await.expect("send");
    let echoed = socket.next().await.expect("an echo").expect("echo");
    assert_eq!(echoed, message, "the echo");
}

/// Drives an HTTP/2 connection to its end, keeping `announced` up to date with whether the
/// server has enabled extended CONNECT (RFC 8441 §3).
async fn drive(
    mut connection: hyper::client::conn::http2::Connection<
        TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
        Empty<Bytes>,
        TokioExecutor,
    >,
    announced: Arc<AtomicBool>,
) {
    let _ = std::future::poll_fn(|cx| {
        let polled = Pin::new(&mut connection).poll(cx);
        announced.store(
            connection.is_extended_connect_protocol_enabled(),
            Ordering::Relaxed,
        );
        polled
    })
    .await;
}

impl Contender {
    /// Opens [`BATCH`] sockets together and has each echo once.
    async fn open(&self) -> Batch {
        let addr = self.proxy.addr;
        let (mut sockets, connection) = match self.transport {
            Transport::Http2 => {
                let tls = tls(addr, &self.client, Transport::Http2).await;
                let (sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .expect("HTTP/2 handshake");
                let announced = Arc::new(AtomicBool::new(false));
                let connection = tokio::spawn(drive(connection, announced.clone()));
                // The first alone: the server's SETTINGS arrive before its first answer,
                // and hyper's request task (which reads them for `drive`) runs again only
                // when the next request is sent.
                let mut sockets = vec![h2_socket(sender.clone()).await];
                sockets.extend(join_all((1..BATCH).map(|_| h2_socket(sender.clone()))).await);
                assert!(
                    announced.load(Ordering::Relaxed),
                    "{addr} announced SETTINGS_ENABLE_CONNECT_PROTOCOL"
                );
                (sockets, Some(connection))
            }
            Transport::Http1 => {
                let opened = (0..BATCH).map(|_| h1_socket(addr, self.client.clone()));
                (join_all(opened).await, None)
            }
        };
        join_all(sockets.iter_mut().map(echo)).await;
        Batch {
            sockets,
            connection,
        }
    }
}

impl Batch {
    /// Closes every socket (Close, and the Close in answer), then their HTTP/2 connection.
    async fn close(self) {
        join_all(self.sockets.into_iter().map(|mut socket| async move {
            let _ = socket.close(None).await;
            while socket.next().await.is_some() {}
        }))
        .await;
        if let Some(connection) = self.connection {
            // No stream and no request handle left: hyper ends the connection itself.
            tokio::time::timeout(Duration::from_secs(10), connection)
                .await
                .expect("the HTTP/2 connection ended")
                .expect("connection task");
        }
    }
}

/// Resident memory growth per socket with [`HELD_BATCHES`] batches held, after
/// [`WARM_BATCHES`] opened and closed.
async fn memory(contender: &Contender) -> Sample {
    let pid = contender.proxy.pid.expect("a proxy process");
    for _ in 0..WARM_BATCHES {
        contender.open().await.close().await;
    }
    eprintln!("    checked: {}", contender.transport.checked());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_bytes(pid);
    let mut held = Vec::with_capacity(HELD_BATCHES);
    for _ in 0..HELD_BATCHES {
        held.push(contender.open().await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_bytes(pid);
    join_all(held.into_iter().map(Batch::close)).await;
    Sample {
        bytes_per_conn: after.saturating_sub(before) as f64 / (HELD_BATCHES * BATCH) as f64,
        ..Sample::default()
    }
}

/// Batches opened, echoed and closed for [`RUN`], [`CONCURRENT_BATCHES`] at a time; the
/// proxy's CPU per socket.
async fn cpu(contender: &Arc<Contender>) -> Sample {
    let work = {
        let contender = contender.clone();
        move |_| {
            let contender = contender.clone();
            async move {
                contender.open().await.close().await;
                BATCH as u64
            }
        }
    };
    let (units, elapsed, cpu) = timed(
        &contender.proxy,
        load::run_for(RUN, CONCURRENT_BATCHES, work),
    )
    .await;
    per_unit(units, elapsed, cpu)
}

/// wsgate's figure (over HTTP/2) over each contender's, round by round.
fn ratios(ours: &[Sample], theirs: &[Sample], figure: fn(&Sample) -> f64) -> String {
    ours.iter()
        .zip(theirs)
        .map(|(o, t)| format!("{:.2}", figure(o) / figure(t)))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// What the table's footnote says of this scenario's rows.
pub(crate) const NOTE: &str = "For the WebSockets on TLS 1.3 (`h2-sockets`), wsgate/this is \
    wsgate over h2 against this row. nginx does not implement WebSockets over HTTP/2 (RFC 8441), \
    so it is measured over HTTP/1.1 only.\n";

/// Runs the scenario, adding its rows to `table`.
pub(crate) async fn bench(table: &mut String) {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let certificate = Certificate::issue(dir.path());
    let upstream = wire::echo_upstream().await;
    // No plain-HTTP route is measured here; the contenders' configurations name one.
    let unused = SocketAddr::from(([127, 0, 0, 1], 9));
    let ours = env!("CARGO_BIN_EXE_wsgate");
    let tls = Some(&certificate);
    let path = dir.path();
    let rows = [
        (
            contenders::start_wsgate("wsgate, h2", ours, path, upstream, unused, 0, tls).await,
            Transport::Http2,
        ),
        (
            contenders::start_wsgate("wsgate, HTTP/1.1", ours, path, upstream, unused, 0, tls)
                .await,
            Transport::Http1,
        ),
        (
            contenders::start_haproxy("haproxy, h2", path, upstream, unused, tls).await,
            Transport::Http2,
        ),
        (
            contenders::start_haproxy("haproxy, HTTP/1.1", path, upstream, unused, tls).await,
            Transport::Http1,
        ),
        (
            contenders::start_nginx("nginx, HTTP/1.1", path, upstream, unused, tls).await,
            Transport::Http1,
        ),
    ];
    let contenders: Vec<Arc<Contender>> = rows
        .into_iter()
        .map(|(proxy, transport)| {
            Arc::new(Contender {
                proxy,
                transport,
                client: certificate.client(transport),
            })
        })
        .collect();
    // Memory first, in processes that have done nothing but warm up.
    let mut held = Vec::new();
    for contender in &contenders {
        eprintln!("h2-sockets: memory, {}", contender.proxy.name);
        held.push(memory(contender).await);
    }
    let mut opened: Vec<Vec<Sample>> = vec![Vec::new(); contenders.len()];
    for round in 0..ROUNDS {
        eprintln!("h2-sockets: CPU, round {} of {ROUNDS}", round + 1);
        for (i, contender) in contenders.iter().enumerate() {
            eprintln!("  {}", contender.proxy.name);
            opened[i].push(cpu(contender).await);
        }
    }
    let title =
        "WebSockets on TLS 1.3: memory per idle socket, 2,000 held (h2: 100 per connection)";
    for (i, contender) in contenders.iter().enumerate() {
        let ratio = match i {
            0 => "-".to_owned(),
            _ => ratios(&held[..1], &held[i..=i], |s| s.bytes_per_conn),
        };
        table.push_str(&format!(
            "| {title} | {} | {:.0} B | - | {ratio} |\n",
            contender.proxy.name, held[i].bytes_per_conn,
        ));
    }
    let title = "WebSockets on TLS 1.3: 100 opened together (h2: on one connection), each echoes 1 KiB, closed";
    for (i, contender) in contenders.iter().enumerate() {
        let ratio = match i {
            0 => "-".to_owned(),
            _ => ratios(&opened[0], &opened[i], |s| s.cpu_us),
        };
        table.push_str(&format!(
            "| {title} | {} | {:.0} sockets/s | {} | {ratio} |\n",
            contender.proxy.name,
            median(opened[i].iter().map(|s| s.per_second).collect()),
            micros(median(opened[i].iter().map(|s| s.cpu_us).collect())),
        ));
    }
    eprintln!("h2-sockets: {:.0} s", started.elapsed().as_secs_f64());
}
