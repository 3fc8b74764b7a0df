//! Accepting connections without spinning: the proxy and admin listeners share one loop step
//! that backs off after a failed `accept` (at the descriptor limit, `EMFILE`/`ENFILE`, it
//! fails at once and forever until a descriptor is freed) and logs the failure at most once
//! a second, with how many failures went unlogged. The proxy's listeners are
//! [`Unregistered`]: their connections reach the proxy with their first bytes, before tokio
//! registers them.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Wait after the first failed accept in a row; doubled per further failure.
const FIRST_BACK_OFF: Duration = Duration::from_millis(10);
/// Longest wait between accept attempts: a freed descriptor is used within this.
const MAX_BACK_OFF: Duration = Duration::from_secs(1);
/// At most one "accept failed" line per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Accept failures of one listener: the back-off in effect and the log line's rate limit.
#[derive(Debug)]
pub struct AcceptErrors {
    /// `proxy`, `tls` or `admin`, for the log line.
    listener: &'static str,
    back_off: Duration,
    log: RateLimit,
}

impl AcceptErrors {
    /// No failures yet on the listener named `listener` in log lines.
    pub fn new(listener: &'static str) -> AcceptErrors {
        AcceptErrors {
            listener,
            back_off: Duration::ZERO,
            log: RateLimit::new(LOG_INTERVAL),
        }
    }

    /// Notes a failure: logs it unless a line was written less than a second ago, and
    /// returns how long to wait before the next attempt.
    fn failed(&mut self, error: &io::Error) -> Duration {
        if let Some(suppressed) = self.log.allow(Instant::now()) {
            tracing::warn!(
                listener = self.listener,
                error = %error,
                suppressed,
                "accept failed; backing off"
            );
        }
        self.back_off = (self.back_off * 2).clamp(FIRST_BACK_OFF, MAX_BACK_OFF);
        self.back_off
    }

    /// Notes a success: the next failure starts the back-off afresh.
    fn succeeded(&mut self) {
        self.back_off = Duration::ZERO;
    }
}

/// Accepts the next connection on `listener`, waiting out failures (see the module doc).
/// Cancel-safe, so it can race a stop signal in `select!`.
pub async fn accept(listener: &TcpListener, errors: &mut AcceptErrors) -> (TcpStream, SocketAddr) {
    retry(|| listener.accept(), errors).await
}

/// A listener whose connections come out unregistered with tokio's reactor, so that one
/// can be read, and a refusal answered, before it costs the registration (an `epoll_ctl` to
/// add it and one to remove it) and a task: see `proxy::listener`.
#[derive(Debug)]
pub struct Unregistered(AsyncFd<mio::net::TcpListener>);

impl Unregistered {
    /// Takes over `listener`, registered with tokio for readiness only, and has the kernel
    /// hold each connection until its first bytes arrive (see [`defer_accept`]).
    #[expect(
        unsafe_code,
        reason = "tokio's only constructors of an AsyncFd that are not deprecated are `unsafe`"
    )]
    pub fn new(listener: TcpListener) -> io::Result<Unregistered> {
        let listener = mio::net::TcpListener::from_std(listener.into_std()?);
        if let Err(e) = defer_accept(&listener) {
            tracing::warn!(error = %e, "cannot defer accepting connections until they send; accepting them once established");
        }
        // SAFETY: the mio listener owns its descriptor and is owned by the AsyncFd, so the
        // descriptor stays open and the same for as long as the AsyncFd.
        let registered = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) };
        Ok(Unregistered(registered.map_err(io::Error::from)?))
    }

    /// Accepts the next connection on `listener`, non-blocking and not yet registered,
    /// waiting out failures as [`accept`] does. Cancel-safe.
    pub async fn accept(&self, errors: &mut AcceptErrors) -> (mio::net::TcpStream, SocketAddr) {
        retry(|| self.accept_once(), errors).await
    }

    /// Registers a connection this listener accepted, so that it can be awaited.
    pub fn register(socket: mio::net::TcpStream) -> io::Result<TcpStream> {
        TcpStream::from_std(socket.into())
    }

    async fn accept_once(&self) -> io::Result<(mio::net::TcpStream, SocketAddr)> {
        loop {
            let mut ready = self.0.readable().await?;
            if let Ok(accepted) = ready.try_io(|listener| listener.get_ref().accept()) {
                return accepted;
            }
        }
    }
}

#[cfg(target_os = "linux")]
/// How long the kernel may hold a connection that has sent nothing (`TCP_DEFER_ACCEPT`): it
/// is handed over after this even so, and the request head's own deadline starts then.
const DEFER_ACCEPT_SECONDS: libc::c_int = 1;

/// Has the kernel hand over a connection once its first bytes arrive rather than once it is
/// established (`TCP_DEFER_ACCEPT`), so that an accepted connection's request head is there
/// to read before it is registered: without it the head comes a moment after the accept, and
/// every connection needs a registration and a wait (measured in the README's refused
/// handshakes). nginx's `deferred` and HAProxy's `defer-accept` set the same option.
#[cfg(target_os = "linux")]
#[expect(
    unsafe_code,
    reason = "no safe binding sets TCP_DEFER_ACCEPT: std's is unstable (rust-lang/rust#119639), \
              and socket2, rustix and nix have none"
)]
fn defer_accept(listener: &impl AsFd) -> io::Result<()> {
    let seconds = DEFER_ACCEPT_SECONDS;
    // SAFETY: the descriptor is borrowed, so open for the call, and the kernel reads a
    // `c_int` from a pointer to one, for the length given.
    let set = unsafe {
        libc::setsockopt(
            listener.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&seconds).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Other systems accept connections once they are established.
#[cfg(not(target_os = "linux"))]
fn defer_accept(_listener: &impl AsFd) -> io::Result<()> {
    Ok(())
}

/// The loop behind [`accept`], over any fallible accept, so it can be tested without
/// exhausting descriptors.
async fn retry<T, F, Fut>(mut attempt: F, errors: &mut AcceptErrors) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    loop {
        match attempt().await {
            Ok(accepted) => {
                errors.succeeded();
                return accepted;
            }
            Err(e) => tokio::time::sleep(errors.failed(&e)).await,
        }
    }
}

/// Allows one event per interval and counts those refused in between.
#[derive(Debug)]
struct RateLimit {
    interval: Duration,
    next: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    fn new(interval: Duration) -> RateLimit {
        RateLimit {
            interval,
            next: None,
            suppressed: 0,
        }
    }

    /// `Some(events refused since the last allowed one)` if an event at `now` is allowed.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|next| now < next) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + self.interval);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Resolves once `stop` turns true (or its sender is gone): how a listener learns to stop.
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_one_event_per_interval_and_reports_the_rest() {
        let start = Instant::now();
        let mut limit = RateLimit::new(Duration::from_secs(1));
        assert_eq!(limit.allow(start), Some(0));
        for ms in [1, 500, 999] {
            assert_eq!(limit.allow(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(limit.allow(start + Duration::from_secs(1)), Some(3));
        assert_eq!(limit.allow(start + Duration::from_millis(1500)), None);
        assert_eq!(limit.allow(start + Duration::from_secs(5)), Some(1));
    }

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(24)
    }

    #[tokio::test(start_paused = true)]
    async fn failed_accepts_back_off_doubling_up_to_a_second() {
        let mut errors = AcceptErrors::new("test");
        let mut failures = 12;
        let mut attempts = Vec::new();
        let start = Instant::now();
        let accepted = retry(
            || {
                attempts.push(Instant::now() - start);
                let result = if failures > 0 { Err(emfile()) } else { Ok(7) };
                failures -= 1;
                std::future::ready(result)
            },
            &mut errors,
        )
        .await;
        assert_eq!(accepted, 7);
        let gaps: Vec<u128> = attempts
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        assert_eq!(
            gaps,
            [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000, 1000]
        );
    }

    #[test]
    fn a_success_resets_the_back_off() {
        let mut errors = AcceptErrors::new("test");
        for _ in 0..5 {
            errors.failed(&emfile());
        }
        errors.succeeded();
        assert_eq!(errors.failed(&emfile()), FIRST_BACK_OFF);
    }
}
