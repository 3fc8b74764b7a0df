//! The accept loop: [`serve`] accepts each connection before tokio registers it, answers a
//! plain one whose request is refused outright there and then, hands any other its own
//! task, or turns it away at `max_connections`; [`tls_acceptor`] picks each TLS handshake's certificate by SNI.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::connection::Connection;
use super::handshake::Reject;
use super::reply::outcome;
use super::state::{Gateway, HttpPhase};
use super::tls_server::TlsAcceptor;
use super::upstream::ClientInfo;
use crate::accept::{AcceptErrors, Unregistered, stopped};

/// A TLS acceptor for the TLS listener: each handshake's certificate is picked by SNI from
/// the gateway's active snapshot, so a new snapshot (a rotated Secret) applies to the next
/// handshake; an unknown name fails the handshake rather than get another's certificate.
pub fn tls_acceptor(gateway: Arc<Gateway>) -> TlsAcceptor {
    TlsAcceptor::new(Arc::new(SniResolver(gateway)))
}

/// Picks a certificate by SNI from the active snapshot.
struct SniResolver(Arc<Gateway>);

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl rustls::server::ResolvesServerCert for SniResolver {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let name = hello.server_name()?;
        self.0
            .published
            .current()?
            .table
            .certificates()
            .lookup(name)
            .cloned()
    }
}

/// Accepts connections on `listener` until `stop` turns true; each connection is served
/// in its own task, handshake and relay alike; with `tls`, each speaks TLS first.
/// Connections still reading their request head then close; those further along finish
/// their handshake.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let name = if tls.is_some() { "tls" } else { "proxy" };
    let listener = match Unregistered::new(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(listener = name, error = %e, "cannot poll the listener; not serving it");
            return;
        }
    };
    let mut errors = AcceptErrors::new(name);
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept(&mut errors) => accepted,
            () = stopped(&mut stop) => break,
        };
        // Plain connections turn it off once they are served (`Stream::serve_promptly`).
        if tls.is_some() {
            let _ = socket.set_nodelay(true);
        }
        if !gateway.has_room() {
            if let Ok(stream) = Unregistered::register(socket) {
                tokio::spawn(turn_away(stream, peer, gateway.clone()));
            }
            continue;
        }
        let phase = HttpPhase::enter(gateway.clone());
        if let Some(connection) =
            Connection::accepted(socket, peer, phase, tls.clone(), stop.clone())
        {
            tokio::spawn(connection);
        }
    }
}

/// How long a connection turned away at the connection limit may take to send its request,
/// which is read and discarded so the 503 is not lost to a reset.
const TURN_AWAY_LINGER: Duration = Duration::from_secs(1);

/// Answers a connection beyond `max_connections` with 503 without reading its request
/// first (its request would cost what the limit protects), then reads and discards what it
/// sends for a moment: closing a socket with unread data resets it, and the client would
/// lose the answer.
async fn turn_away(mut stream: TcpStream, peer: SocketAddr, gateway: Arc<Gateway>) {
    let r = Reject::Overloaded;
    outcome(
        &gateway,
        None,
        ClientInfo::direct(peer, false),
        None,
        r.result(),
        r.reason(),
    );
    let mut response = Vec::with_capacity(192);
    r.write_response(&mut response);
    if stream.write_all(&response).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(TURN_AWAY_LINGER, async {
        while matches!(tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await, Ok(n) if n > 0)
        {
        }
    })
    .await;
}
