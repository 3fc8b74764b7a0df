//! The serving lifecycle shared by every mode: bind the proxy and admin listeners, run them,
//! and shut down gracefully (readyz 503, delay, stop accepting, Close 1012, drain or grace).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ServeArgs;
use crate::proxy::Gateway;
use crate::snapshot::Published;

/// A listener that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the {what}: {source}; pick a free address with {flag}")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// `proxy` or `admin endpoints`.
    pub what: &'static str,
    /// The flag that sets it.
    pub flag: &'static str,
    /// The I/O error.
    pub source: std::io::Error,
}

/// Running listeners.
pub struct Server {
    gateway: Arc<Gateway>,
    /// The bound proxy address (useful with port 0).
    pub proxy_addr: SocketAddr,
    /// The bound admin address.
    pub admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Binds `addr` and returns the listener with the address it got (port 0 picks one).
async fn bind(
    addr: SocketAddr,
    what: &'static str,
    flag: &'static str,
) -> Result<(TcpListener, SocketAddr), BindError> {
    let failed = |source| BindError {
        addr,
        what,
        flag,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    Ok((listener, bound))
}

impl Server {
    /// Binds the listeners `serve` names and starts serving what is published in
    /// `published`; from now on each snapshot published there also closes the live
    /// connections it no longer admits.
    pub async fn start(serve: &ServeArgs, published: Arc<Published>) -> Result<Server, BindError> {
        let gateway = Gateway::new(serve.proxy_config(), published);
        let (proxy, proxy_addr) = bind(serve.listen, "proxy", "--listen").await?;
        let (proxy_tls, tls_addr) = bind(serve.listen_tls, "TLS proxy", "--listen-tls").await?;
        let (admin, admin_addr) = bind(serve.admin, "admin endpoints", "--admin").await?;
        let config = gateway.config();
        tracing::info!(
            address = %proxy_addr,
            max_connections = config.max_connections,
            proxy_protocol = config.proxy_protocol,
            trusted_proxies = %config.trusted_proxies,
            "proxy listening"
        );
        tracing::info!(address = %tls_addr, "tls listening");
        tracing::info!(address = %admin_addr, "admin listening");
        let (stop, stop_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(crate::proxy::serve(
                proxy,
                gateway.clone(),
                None,
                stop_rx.clone(),
            )),
            tokio::spawn(crate::proxy::serve(
                proxy_tls,
                gateway.clone(),
                Some(crate::proxy::tls_acceptor(gateway.clone())),
                stop_rx.clone(),
            )),
            tokio::spawn(crate::admin::serve(
                admin,
                gateway.published().clone(),
                serve.admin_config(),
                stop_rx,
            )),
        ];
        Ok(Server {
            gateway,
            proxy_addr,
            admin_addr,
            stop,
            tasks,
        })
    }

    /// docs/design.md §7: readyz turns 503 at once; after `delay` the listener stops accepting and
    /// every connection gets Close 1012 (spread over `jitter`); returns once they are gone or
    /// `grace` ends.
    pub async fn shutdown(self, plan: Shutdown) {
        let Shutdown {
            delay,
            grace,
            jitter,
        } = plan;
        self.gateway.published().start_draining();
        tracing::info!(
            delay_seconds = delay.as_secs_f64(),
            "shutting down: readyz now answers 503"
        );
        tokio::time::sleep(delay).await;
        // Stops both accept loops; HTTP connections finish their current request.
        let _ = self.stop.send(true);
        match tokio::time::timeout(grace, self.gateway.drain(jitter)).await {
            Ok(()) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!(
                remaining = self.gateway.live_connections(),
                remaining_http = self.gateway.http_connections(),
                grace_seconds = grace.as_secs_f64(),
                "shutdown grace ended with connections still open"
            ),
        }
        for task in self.tasks {
            task.abort();
        }
    }
}

/// How a gateway shuts down (`--shutdown-delay`, `--shutdown-grace`, `--shutdown-jitter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    /// From SIGTERM (readyz 503) to closing the listeners.
    pub delay: Duration,
    /// How long connections have to close after that.
    pub grace: Duration,
    /// The window the Close 1012 frames are spread over; shorter than `grace`.
    pub jitter: Duration,
}

/// Installs the SIGTERM and SIGINT handlers now, and returns a future that resolves on
/// either. Call it before serving: a signal that arrives before the handlers exist would end
/// the process at once, skipping the drain.
#[cfg(unix)]
pub fn termination() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Installs the Ctrl-C handler and returns a future that resolves on it.
#[cfg(not(unix))]
pub fn termination() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
