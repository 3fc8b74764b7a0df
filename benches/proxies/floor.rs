//! The floor: a minimal tokio relay that forwards bytes both ways without parsing anything
//! (no origin check, no frame tracking), run as its own process like the other proxies.
//! It waits on readiness and reads into one buffer per thread, so it holds no buffer while
//! idle: the least any relay on tokio can do. The TLS floor is the same relay behind a
//! tokio-rustls handshake (what any tokio proxy on rustls pays): it decrypts into that one
//! buffer and encrypts from it, so what it holds per connection is rustls' own state.

use std::cell::RefCell;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

/// Serves `listen`, relaying every connection to `upstream`, until killed; with `tls`,
/// each client speaks TLS first.
pub(crate) fn run(listen: SocketAddr, upstream: SocketAddr, tls: Option<TlsAcceptor>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        while let Ok((client, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let _ = match tls {
                    // A TLS proxy reaches its upstream once the client has proved itself.
                    Some(acceptor) => match acceptor.accept(client).await {
                        Ok(client) => match connect(upstream).await {
                            Ok(upstream) => pipe_tls(client, upstream).await,
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    },
                    None => match connect(upstream).await {
                        Ok(upstream) => pipe(client, upstream).await,
                        Err(e) => Err(e),
                    },
                };
            });
        }
    });
}

/// A connection to the upstream, with Nagle's algorithm off.
async fn connect(upstream: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The TLS floor's acceptor: the certificate and key (PEM files), TLS 1.3 with the
/// benchmark's one suite and group only, ALPN http/1.1; rustls' defaults otherwise (as in
/// wsgate): two session tickets after each handshake, resumable from an in-memory cache of
/// 256 sessions.
pub(crate) fn acceptor(cert: &Path, key: &Path) -> TlsAcceptor {
    let chain = CertificateDer::pem_file_iter(cert)
        .expect("certificate file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate");
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let mut config = rustls::ServerConfig::builder_with_provider(crate::wss::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// Relays until either side ends.
async fn pipe(mut a: TcpStream, mut b: TcpStream) -> io::Result<()> {
    loop {
        tokio::select! {
            ready = a.readable() => { ready?; forward(&mut a, &mut b).await?; }
            ready = b.readable() => { ready?; forward(&mut b, &mut a).await?; }
        }
    }
}

/// Moves what `from` has to `to`; the bytes `to` cannot take at once wait in a buffer of
/// their own.
async fn forward(from: &mut TcpStream, to: &mut TcpStream) -> io::Result<()> {
    loop {
        let leftover = BUF.with_borrow_mut(|buf| -> io::Result<Option<Vec<u8>>> {
            let n = match from.try_read(buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            };
            let written = match to.try_write(&buf[..n]) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            Ok(Some(buf[written..n].to_vec()))
        })?;
        match leftover {
            None => return Ok(()),
            Some(rest) if rest.is_empty() => {}
            Some(rest) => to.write_all(&rest).await?,
        }
    }
}

/// Relays between a TLS client and the upstream until either side ends.
async fn pipe_tls(mut client: TlsStream<TcpStream>, mut upstream: TcpStream) -> io::Result<()> {
    // rustls encrypts what it is given at once into a queue of its own, which each forward
    // flushes before reading more: it holds one read at most, so its limit (which would
    // take part of a read and leave the rest to us) is not needed.
    client.get_mut().1.set_buffer_limit(None);
    loop {
        tokio::select! {
            rest = std::future::poll_fn(|cx| decrypt(cx, &mut client, &upstream)) => {
                let rest = rest?;
                if !rest.is_empty() {
                    upstream.write_all(&rest).await?;
                }
            }
            ready = upstream.readable() => { ready?; encrypt(&mut upstream, &mut client).await?; }
        }
    }
}

/// Decrypts what `from` has into the thread's buffer and writes it to `to`; returns the
/// bytes `to` could not take at once.
fn decrypt(
    cx: &mut Context<'_>,
    from: &mut TlsStream<TcpStream>,
    to: &TcpStream,
) -> Poll<io::Result<Vec<u8>>> {
    BUF.with_borrow_mut(|buf| {
        let mut read = ReadBuf::new(buf);
        ready!(Pin::new(&mut *from).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
        }
        let written = match to.try_write(&buf[..n]) {
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Poll::Ready(Err(e)),
        };
        Poll::Ready(Ok(buf[written..n].to_vec()))
    })
}

/// Moves what `from` has to `to`, encrypted, until `from` has nothing more.
async fn encrypt(from: &mut TcpStream, to: &mut TlsStream<TcpStream>) -> io::Result<()> {
    loop {
        let got = BUF.with_borrow_mut(|buf| -> io::Result<bool> {
            let n = match from.try_read(buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            to.get_mut().1.writer().write_all(&buf[..n])?;
            Ok(true)
        })?;
        if !got {
            return Ok(());
        }
        to.flush().await?;
    }
}
