//! The server side of TLS on the data plane, on rustls' unbuffered API. A connection keeps
//! rustls' state and only what is in flight: records are read into, and encrypted in, a
//! buffer each thread shares, and only an incomplete record, plaintext the reader had no
//! room for, or bytes the socket did not take are copied into buffers of the connection's
//! own, freed once empty. So an idle TLS WebSocket holds no buffer at all (rustls' buffered
//! `ServerConnection`, as tokio-rustls drives it, keeps a 4 KiB read buffer per connection
//! for its whole life).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConnectionData};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, WriteTraffic};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The largest record on the wire (RFC 8446 §5.2: 2^14 bytes of plaintext, at most 256 of
/// expansion, and the 5-byte header): one read of this size always completes a record.
const MAX_RECORD: usize = 5 + (1 << 14) + 256;

/// Plaintext sealed per write: four full records, so a large message costs few writes.
const WRITE_CHUNK: usize = 4 << 14;

/// Size of a thread's shared buffer: a read of two full records, or a sealed write chunk.
const SCRATCH: usize = 2 * MAX_RECORD;

thread_local! {
    /// The thread's buffer for received and sealed records; used within one poll, never
    /// across an await.
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
    /// The server name of the ClientHello rustls last resolved a certificate for on this
    /// thread; see [`NoteName`].
    static ASKED: RefCell<Option<Box<str>>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's shared buffer (a fresh one if it is already in use, which
/// the callers here never cause).
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH_BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut vec![0; SCRATCH]),
    })
}

/// Accepts TLS connections with a server configuration whose certificates come from
/// `resolver`.
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
}

impl TlsAcceptor {
    /// An acceptor with the data plane's TLS settings (`crate::tls::server_config`).
    pub fn new(resolver: Arc<dyn ResolvesServerCert>) -> TlsAcceptor {
        TlsAcceptor {
            config: Arc::new(crate::tls::server_config(Arc::new(NoteName(resolver)))),
        }
    }

    /// Runs the TLS handshake on `tcp`, whose first bytes (`received`) were read already.
    pub async fn accept(&self, tcp: TcpStream, received: &[u8]) -> io::Result<TlsServer> {
        let conn = UnbufferedServerConnection::new(self.config.clone()).map_err(tls_error)?;
        let mut tls = TlsServer {
            tcp,
            session: Session {
                conn,
                outgoing: Vec::new(),
                sent: 0,
                plain: Vec::new(),
                plain_at: 0,
                peer_closed: false,
                close_sent: false,
            },
            incoming: received.to_vec(),
            sni: None,
        };
        loop {
            ASKED.with(|asked| asked.borrow_mut().take());
            let processed = tls.session.process(&mut tls.incoming, None);
            if let Some(name) = ASKED.with(|asked| asked.borrow_mut().take()) {
                tls.sni = Some(name);
            }
            match processed {
                Ok(consumed) => {
                    tls.incoming.drain(..consumed);
                }
                Err(e) => {
                    tls.send_alert();
                    return Err(e);
                }
            }
            std::future::poll_fn(|cx| tls.poll_send(cx)).await?;
            if !tls.session.conn.is_handshaking() {
                break;
            }
            tls.incoming.reserve(MAX_RECORD);
            if tls.tcp.read_buf(&mut tls.incoming).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection during the TLS handshake",
                ));
            }
        }
        if tls.incoming.is_empty() {
            tls.incoming = Vec::new();
        }
        Ok(tls)
    }
}

/// Passes certificate resolution on to the gateway's resolver, noting the name the client
/// asked for: rustls' unbuffered server connection does not tell it, and rustls asks the
/// resolver on every ClientHello (resumptions too), inside the `process_tls_records` call
/// [`TlsAcceptor::accept`] makes on this thread.
#[derive(Debug)]
struct NoteName(Arc<dyn ResolvesServerCert>);

impl ResolvesServerCert for NoteName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(Box::from);
        ASKED.with(|asked| *asked.borrow_mut() = name);
        self.0.resolve(hello)
    }
}

/// A TLS connection from a client, handshake done.
pub struct TlsServer {
    tcp: TcpStream,
    session: Session,
    /// Received bytes rustls has not consumed: the start of an incomplete record.
    incoming: Vec<u8>,
    sni: Option<Box<str>>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("tcp", &self.tcp)
            .field("sni", &self.sni)
            .finish_non_exhaustive()
    }
}

/// rustls' state and the bytes in flight through it.
struct Session {
    conn: UnbufferedServerConnection,
    /// Records for the client the socket has not taken yet (from `sent` on).
    outgoing: Vec<u8>,
    sent: usize,
    /// Plaintext received that the reader had no room for yet (from `plain_at` on).
    plain: Vec<u8>,
    plain_at: usize,
    /// The client sent close_notify: no more data comes.
    peer_closed: bool,
    close_sent: bool,
}

impl Session {
    /// Feeds `data` to rustls until it needs more, and returns how many bytes of it were
    /// consumed (the rest is an incomplete record, to be passed again in front of what
    /// follows). Plaintext goes to `into` as far as it has room, the rest to `plain`.
    fn process(&mut self, data: &mut [u8], into: Option<&mut ReadBuf<'_>>) -> io::Result<usize> {
        self.drive(data, into, |_, _| Ok(()))
            .map(|(consumed, _)| consumed)
    }

    /// Runs `f` once rustls may send application data, after queueing whatever it has to
    /// send first (a key update).
    fn writing<R>(
        &mut self,
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> io::Result<R>,
    ) -> io::Result<R> {
        match self.drive(&mut [], None, f)? {
            (_, Some(wrote)) => Ok(wrote),
            (_, None) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection cannot send: closed, or its handshake not done",
            )),
        }
    }

    /// The one loop over rustls' states behind [`Session::process`] and
    /// [`Session::writing`]: feeds `data`, queues in `outgoing` the records rustls wants
    /// sent, and stops when rustls needs more bytes or may send application data, which
    /// `write` is then given (its result is the second value).
    fn drive<R>(
        &mut self,
        data: &mut [u8],
        mut into: Option<&mut ReadBuf<'_>>,
        write: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> io::Result<R>,
    ) -> io::Result<(usize, Option<R>)> {
        let mut consumed = 0;
        loop {
            let status = self.conn.process_tls_records(&mut data[consumed..]);
            consumed += status.discard;
            match status.state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let payload = record.map_err(tls_error)?.payload;
                        let mut taken = 0;
                        if let Some(into) = into.as_deref_mut()
                            && self.plain.len() == self.plain_at
                        {
                            taken = payload.len().min(into.remaining());
                            into.put_slice(&payload[..taken]);
                        }
                        self.plain.extend_from_slice(&payload[taken..]);
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(&mut self.outgoing, |out| encode.encode(out), encode_room)?;
                }
                // `outgoing` keeps the records in order until the socket takes them.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::PeerClosed => self.peer_closed = true,
                ConnectionState::WriteTraffic(mut traffic) => {
                    let wrote = write(&mut traffic, &mut self.outgoing)?;
                    return Ok((consumed, Some(wrote)));
                }
                ConnectionState::BlockedHandshake => return Ok((consumed, None)),
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    return Ok((consumed, None));
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected TLS state {other:?} (early data is not accepted)"),
                    ));
                }
            }
        }
    }
}

/// Seals `plain` into the front of `scratch`, growing it (never shrinking it) if the
/// records need more room, and returns their length.
fn seal(
    write: &mut WriteTraffic<'_, ServerConnectionData>,
    plain: &[u8],
    scratch: &mut Vec<u8>,
) -> io::Result<usize> {
    loop {
        match write.encrypt(plain, scratch) {
            Ok(n) => return Ok(n),
            Err(e) => match room_needed(&e) {
                Some(size) => scratch.resize(size, 0),
                None => return Err(io::Error::other(e)),
            },
        }
    }
}

/// Has `write` put bytes at the end of `out`, growing it as rustls asks (`room` reads the
/// size it needs from its error).
fn append<E: std::error::Error + Send + Sync + 'static>(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    room: impl Fn(&E) -> Option<usize>,
) -> io::Result<()> {
    let at = out.len();
    loop {
        match write(&mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(e) => match room(&e) {
                Some(size) => out.resize(at + size, 0),
                None => return Err(io::Error::other(e)),
            },
        }
    }
}

/// The room an encoding that failed for the want of it needs.
fn encode_room(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(size) => Some(size.required_size),
        EncodeError::AlreadyEncoded => None,
    }
}

/// The room an encryption that failed for the want of it needs.
fn room_needed(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(size) => Some(size.required_size),
        EncryptError::EncryptExhausted => None,
    }
}

impl TlsServer {
    /// The server name (SNI) the client asked for.
    pub fn server_name(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// The protocol the client and the gateway agreed on by ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.session.conn.alpn_protocol()
    }

    /// Writes the records the socket has not taken yet.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let s = &mut self.session;
        while s.sent < s.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &s.outgoing[s.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            s.sent += n;
        }
        if s.outgoing.capacity() > 0 {
            s.outgoing = Vec::new();
            s.sent = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Best effort to tell the client why its handshake failed: rustls queued an alert.
    fn send_alert(&mut self) {
        let _ = self.session.process(&mut [], None);
        let s = &self.session;
        let _ = self.tcp.try_write(&s.outgoing[s.sent..]);
    }

    /// Reads from the socket once and feeds rustls, plaintext to `into`. `Ok(false)`: the
    /// client closed the connection.
    fn poll_receive(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<bool>> {
        let received = if self.incoming.is_empty() {
            with_scratch(|scratch| {
                let mut read = ReadBuf::new(scratch);
                ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut read))?;
                let n = read.filled().len();
                if n > 0 {
                    let consumed = self.session.process(&mut scratch[..n], Some(into))?;
                    self.incoming.extend_from_slice(&scratch[consumed..n]);
                }
                Poll::Ready(Ok::<_, io::Error>(n))
            })
        } else {
            // The rest of an incomplete record goes behind its start, where rustls expects it.
            loop {
                ready!(self.tcp.poll_read_ready(cx))?;
                self.incoming.reserve(MAX_RECORD);
                match self.tcp.try_read_buf(&mut self.incoming) {
                    Ok(0) => break Poll::Ready(Ok(0)),
                    Ok(n) => {
                        let consumed = self.session.process(&mut self.incoming, Some(into))?;
                        self.incoming.drain(..consumed);
                        if self.incoming.is_empty() {
                            self.incoming = Vec::new();
                        }
                        break Poll::Ready(Ok(n));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => break Poll::Ready(Err(e)),
                }
            }
        };
        let n = ready!(received)?;
        // Records rustls answers with while reading (a key update) go out now if they can;
        // otherwise the next write sends them first.
        if !self.session.outgoing.is_empty() {
            let _ = self.poll_send(cx)?;
        }
        Poll::Ready(Ok(n > 0))
    }
}

impl AsyncRead for TlsServer {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = buf.filled().len();
        // The room is filled from the records that follow too, not only from the end of one
        // the last read had no room for: returning a record's last bytes alone would cost
        // the reader a write of their own.
        loop {
            let s = &mut this.session;
            if s.plain_at < s.plain.len() {
                let n = (s.plain.len() - s.plain_at).min(buf.remaining());
                buf.put_slice(&s.plain[s.plain_at..s.plain_at + n]);
                s.plain_at += n;
                if s.plain_at == s.plain.len() {
                    s.plain = Vec::new();
                    s.plain_at = 0;
                }
            }
            if s.peer_closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let received = this.poll_receive(cx, buf);
            match received {
                Poll::Ready(Ok(true)) => {}
                // What was read comes first; the wait, the end or the error with the next read.
                _ if buf.filled().len() > start => return Poll::Ready(Ok(())),
                // Without close_notify the end of the stream may be a truncation.
                Poll::Ready(Ok(false)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed the connection without close_notify",
                    )));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for TlsServer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Records the socket has not taken go first; until they are gone, take no more.
        ready!(this.poll_send(cx))?;
        let plain = &buf[..buf.len().min(WRITE_CHUNK)];
        with_scratch(|scratch| {
            let sealed = this
                .session
                .writing(|write, _| seal(write, plain, scratch))?;
            if this.session.outgoing.is_empty() {
                match Pin::new(&mut this.tcp).poll_write(cx, &scratch[..sealed]) {
                    Poll::Ready(Ok(n)) => {
                        this.session.outgoing.extend_from_slice(&scratch[n..sealed])
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => this.session.outgoing.extend_from_slice(&scratch[..sealed]),
                }
            } else {
                // A key update queued first: the records follow it.
                this.session.outgoing.extend_from_slice(&scratch[..sealed]);
                if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            Poll::Ready(Ok(plain.len()))
        })
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.session.close_sent {
            this.session.close_sent = true;
            // A connection both sides closed already has nothing more to say.
            let _ = this.session.writing(|write, out| {
                append(out, |room| write.queue_close_notify(room), room_needed)
            });
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// A rustls error as an I/O error, as tokio-rustls reports them.
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests;
