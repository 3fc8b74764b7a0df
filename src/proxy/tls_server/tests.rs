use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ClientConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::{TlsAcceptor, TlsServer};

const NAME: &str = "chat.example.test";

/// Serves one certificate for [`NAME`], and none for any other name.
#[derive(Debug)]
struct OneName(Arc<CertifiedKey>);

impl ResolvesServerCert for OneName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        (hello.server_name() == Some(NAME)).then(|| self.0.clone())
    }
}

/// An acceptor for [`NAME`] and a client configuration that trusts it.
fn pair() -> (TlsAcceptor, Arc<ClientConfig>) {
    let (acceptor, roots) = acceptor_and_roots();
    let mut client = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    (acceptor, Arc::new(client))
}

/// An acceptor for [`NAME`] and the trust anchor for its certificate.
fn acceptor_and_roots() -> (TlsAcceptor, rustls::RootCertStore) {
    let cert = rcgen::generate_simple_self_signed(vec![NAME.to_owned()]).expect("certificate");
    let (chain, key) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let key = crate::tls::certified_key(chain.as_bytes(), key.as_bytes()).expect("key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("anchor");
    (TlsAcceptor::new(Arc::new(OneName(key))), roots)
}

/// A connected loopback pair: (client side, server side).
async fn sockets() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    client.set_nodelay(true).expect("nodelay");
    (client, server)
}

/// Writes at most one byte per write, so that the server reads records in pieces.
struct Dribble(TcpStream);

impl AsyncRead for Dribble {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Dribble {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(1);
        Pin::new(&mut self.0).poll_write(cx, &buf[..n])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Runs a handshake: the client's side over `io`, the server's over `server`.
async fn handshake<IO: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    client: Arc<ClientConfig>,
    io: IO,
    server: TcpStream,
) -> (tokio_rustls::client::TlsStream<IO>, TlsServer) {
    let name = ServerName::try_from(NAME).expect("name");
    let connector = tokio_rustls::TlsConnector::from(client);
    let (client, server) = tokio::join!(connector.connect(name, io), acceptor.accept(server, &[]));
    (
        client.expect("client handshake"),
        server.expect("server handshake"),
    )
}

#[tokio::test]
async fn records_and_a_handshake_that_arrive_a_byte_at_a_time_are_read_whole() {
    let (acceptor, config) = pair();
    let (client, server) = sockets().await;
    let (mut client, mut server) = handshake(&acceptor, config, Dribble(client), server).await;
    assert_eq!(server.server_name(), Some(NAME));
    assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));

    let message = b"GET /chat HTTP/1.1\r\nHost: chat.example.test\r\n\r\n";
    let (sent, mut read) = tokio::join!(client.write_all(message), async {
        let mut read = vec![0; message.len()];
        server.read_exact(&mut read).await.map(|_| read)
    });
    sent.expect("client write");
    assert_eq!(read.as_mut().expect("server read"), message);

    server
        .write_all(b"HTTP/1.1 101\r\n\r\n")
        .await
        .expect("server write");
    let mut answer = [0; 16];
    client.read_exact(&mut answer).await.expect("client read");
    assert_eq!(&answer, b"HTTP/1.1 101\r\n\r\n");
}

#[tokio::test]
async fn messages_larger_than_a_record_and_the_readers_buffer_arrive_in_order_both_ways() {
    let (acceptor, config) = pair();
    let (client, server) = sockets().await;
    let (client, mut server) = handshake(&acceptor, config, client, server).await;
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let upload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let download: Vec<u8> = (0..500_000u32).map(|i| (i % 241) as u8).collect();

    let client_side = async {
        client_write.write_all(&upload).await.expect("upload");
        let mut got = vec![0; download.len()];
        client_read.read_exact(&mut got).await.expect("download");
        got
    };
    let server_side = async {
        // A reader with a small buffer takes one record in several reads.
        let mut got = Vec::new();
        let mut small = [0; 1000];
        while got.len() < upload.len() {
            let n = server.read(&mut small).await.expect("server read");
            assert_ne!(n, 0, "the stream ended early");
            got.extend_from_slice(&small[..n]);
        }
        server.write_all(&download).await.expect("server write");
        server.flush().await.expect("flush");
        got
    };
    let (downloaded, uploaded) = tokio::join!(client_side, server_side);
    assert!(uploaded == upload, "the upload arrived changed");
    assert!(downloaded == download, "the download arrived changed");
}

#[tokio::test]
async fn a_key_update_the_client_asks_for_is_answered_and_data_flows_after_it() {
    let (acceptor, config) = pair();
    let (client, server) = sockets().await;
    let (mut client, mut server) = handshake(&acceptor, config, client, server).await;
    // The client's KeyUpdate asks the server to update its keys too: what the server sends
    // next is readable only if it did, and said so.
    for round in 0..3u8 {
        client
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("key update");
        client.write_all(&[round; 10]).await.expect("client write");
        let mut got = [0; 10];
        server.read_exact(&mut got).await.expect("server read");
        assert_eq!(got, [round; 10]);
        server
            .write_all(&[round + 100; 10])
            .await
            .expect("server write");
        client.read_exact(&mut got).await.expect("client read");
        assert_eq!(got, [round + 100; 10]);
    }
}

#[tokio::test]
async fn close_notify_ends_the_stream_and_a_bare_close_is_an_unexpected_end() {
    let (acceptor, config) = pair();
    let (client, server) = sockets().await;
    let (mut client, mut server) = handshake(&acceptor, config.clone(), client, server).await;
    client.write_all(b"last words").await.expect("write");
    client.shutdown().await.expect("close_notify");
    let mut all = Vec::new();
    server.read_to_end(&mut all).await.expect("a clean end");
    assert_eq!(all, b"last words");
    // The server's own close_notify reaches the client as a clean end too.
    server.shutdown().await.expect("server close_notify");
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .await
        .expect("the server closed cleanly");
    assert!(rest.is_empty());

    let (client, server) = sockets().await;
    let (mut client, mut server) = handshake(&acceptor, config, client, server).await;
    // The client reads what the server sent (its session tickets first), so that closing
    // its socket sends a FIN rather than a reset.
    server.write_all(b"bye").await.expect("write");
    let mut bye = [0; 3];
    client.read_exact(&mut bye).await.expect("read");
    drop(client.into_inner().0);
    let error = server.read_to_end(&mut Vec::new()).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn bytes_read_before_the_handshake_are_its_start() {
    let (acceptor, config) = pair();
    let (mut client, server) = sockets().await;
    // The client's hello, of which the caller already read the first 7 bytes.
    let mut conn =
        rustls::ClientConnection::new(config, ServerName::try_from(NAME).unwrap()).expect("client");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("hello");
    client.write_all(&hello[7..]).await.expect("send");
    let accepting = tokio::spawn(async move {
        let tls = acceptor.accept(server, &hello[..7]).await;
        tls.map(|tls| tls.server_name().map(str::to_owned))
    });
    // The server answers the whole hello: its flight decodes.
    while conn.is_handshaking() {
        let mut flight = vec![0; 4096];
        let n = client.read(&mut flight).await.expect("server flight");
        assert_ne!(n, 0, "the server closed the connection");
        let mut read = &flight[..n];
        while !read.is_empty() {
            conn.read_tls(&mut read).expect("read_tls");
        }
        conn.process_new_packets().expect("a valid server flight");
    }
    let mut finished = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut finished).expect("finished");
    }
    client.write_all(&finished).await.expect("send finished");
    let name = accepting.await.expect("task").expect("server handshake");
    assert_eq!(name.as_deref(), Some(NAME));
}

#[tokio::test]
async fn a_name_without_a_certificate_fails_the_handshake_with_an_alert() {
    let (acceptor, config) = pair();
    let (client, server) = sockets().await;
    let connector = tokio_rustls::TlsConnector::from(config);
    let other = ServerName::try_from("other.example.test").expect("name");
    let (client, server) = tokio::join!(
        connector.connect(other, client),
        acceptor.accept(server, &[])
    );
    assert!(server.is_err());
    let error = client.unwrap_err().to_string();
    assert!(error.contains("AccessDenied"), "{error}");
}

#[tokio::test]
async fn a_tls_1_2_client_is_served() {
    let (acceptor, roots) = acceptor_and_roots();
    let tls12 = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (client, server) = sockets().await;
    let (mut client, mut server) = handshake(&acceptor, Arc::new(tls12), client, server).await;
    assert_eq!(
        server.session.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    client.write_all(b"ping").await.expect("write");
    let mut got = [0; 4];
    server.read_exact(&mut got).await.expect("read");
    server.write_all(b"pong").await.expect("write");
    client.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"pong");
}

#[tokio::test]
async fn key_updates_a_client_asks_for_and_never_reads_do_not_pile_up() {
    let (acceptor, config) = pair();
    // Small socket buffers, so that the server's answers could not hide in the kernel (the
    // accepted socket inherits the listener's send buffer).
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_send_buffer_size(4096).expect("sndbuf");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let listener = socket.listen(1).expect("listen");
    let client = tokio::net::TcpSocket::new_v4().expect("socket");
    client.set_recv_buffer_size(4096).expect("rcvbuf");
    let client = client
        .connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    let (mut client, mut server) = handshake(&acceptor, config, client, server).await;

    // Each round asks the server to update its keys; the client never reads the answers.
    const ROUNDS: usize = 10_000;
    let sender = tokio::spawn(async move {
        for _ in 0..ROUNDS {
            client
                .get_mut()
                .1
                .refresh_traffic_keys()
                .expect("key update");
            client.write_all(b"x").await.expect("client write");
        }
        client.flush().await.expect("client flush");
        client
    });
    let mut got = vec![0; ROUNDS];
    server.read_exact(&mut got).await.expect("every round read");
    // rustls keeps one answer until the server next sends data: none waits in `outgoing`.
    assert_eq!(server.session.outgoing.len(), server.session.sent);
    let mut client = sender.await.expect("client task");
    server.write_all(b"after").await.expect("server write");
    let mut after = [0; 5];
    client
        .read_exact(&mut after)
        .await
        .expect("read with the updated keys");
    assert_eq!(&after, b"after");
}
