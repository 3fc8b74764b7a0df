//! The floor: a minimal tokio relay that forwards bytes both ways without parsing anything
//! (no origin check, no frame tracking), run as its own process like the other proxies.
//! It waits on readiness and reads into one buffer per thread, so it holds no buffer while
//! idle: the least any relay on tokio can do.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

/// Serves `listen`, relaying every connection to `upstream`, until killed.
pub(crate) fn run(listen: SocketAddr, upstream: SocketAddr) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(upstream) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let _ = pipe(client, upstream).await;
            });
        }
    });
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
