//! The bodies of plain requests: the client's, cut at its route's limit on the way up, and
//! the upstream's, watched for silence on the way down and its connection handed back to
//! the pool once it is read to the end.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use super::pool::Lease;

/// What a body fails with.
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a body stopped early.
#[derive(Debug, thiserror::Error)]
pub(super) enum Cut {
    /// The client sent more than the route allows.
    #[error("request body over the route's http.maxRequestBodyBytes")]
    TooLarge,
    /// The upstream sent nothing for the route's response timeout.
    #[error("upstream silent for longer than the route's http.responseTimeoutSeconds")]
    Silent,
}

/// How a request body is going, as the request's waiting side sees it: whether it went
/// over its limit, whether it is complete, and when it last moved.
pub(super) struct Progress {
    started: Instant,
    /// Milliseconds from `started` to the last piece of body.
    moved: AtomicU64,
    complete: AtomicBool,
    over: AtomicBool,
}

impl Progress {
    /// A body that has not moved yet.
    pub(super) fn new() -> Arc<Progress> {
        Arc::new(Progress {
            started: Instant::now(),
            moved: AtomicU64::new(0),
            complete: AtomicBool::new(false),
            over: AtomicBool::new(false),
        })
    }

    /// When the body last moved (or started).
    pub(super) fn moved(&self) -> Instant {
        self.started + Duration::from_millis(self.moved.load(Ordering::Acquire))
    }

    /// The client sent its whole body.
    pub(super) fn complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// The body went over its limit.
    pub(super) fn over(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }

    fn moving(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.moved.store(ms, Ordering::Release);
    }
}

/// The client's request body, failing once it passes `limit` bytes, and reporting its
/// [`Progress`] (so a request can be answered 413, or 408 when the client stalls).
pub(super) struct Limited {
    inner: Incoming,
    left: u64,
    progress: Arc<Progress>,
}

impl Limited {
    /// `inner`, allowed `limit` bytes.
    pub(super) fn new(inner: Incoming, limit: u64, progress: Arc<Progress>) -> Limited {
        if inner.is_end_stream() {
            progress.complete.store(true, Ordering::Release);
        }
        Limited {
            inner,
            left: limit,
            progress,
        }
    }
}

impl Body for Limited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        let progress = &this.progress;
        progress.moving();
        match frame {
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                let Some(left) = this.left.checked_sub(len) else {
                    progress.over.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(Cut::TooLarge.into())));
                };
                this.left = left;
                if this.inner.is_end_stream() {
                    progress.complete.store(true, Ordering::Release);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => {
                progress.complete.store(true, Ordering::Release);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body sent to the client: a refusal's fixed text, or the upstream's body.
pub(in crate::proxy) enum Reply {
    /// A fixed body (empty for a preflight answer).
    Fixed(Option<Bytes>),
    /// The upstream's body, as it comes.
    Upstream(Box<Streamed>),
}

/// The upstream's response body: cut when the upstream stays silent for `silence` while
/// the client waits for more, and the upstream connection returned to the pool once the
/// body has been read to its end.
pub(in crate::proxy) struct Streamed {
    inner: Incoming,
    silence: Duration,
    deadline: Pin<Box<Sleep>>,
    /// The last poll found nothing: the deadline runs. While the client is not reading
    /// (nobody polls), the upstream is held back, not silent.
    waiting: bool,
    lease: Option<Lease>,
}

impl Streamed {
    /// `inner`, from the upstream connection `lease`.
    pub(super) fn new(inner: Incoming, silence: Duration, lease: Lease) -> Streamed {
        Streamed {
            inner,
            silence,
            deadline: Box::pin(tokio::time::sleep(silence)),
            waiting: false,
            lease: Some(lease),
        }
    }

    /// The body is read to its end: its connection can carry another request.
    fn finished(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        // A body nobody polled (HEAD, 204, 304) may be complete without its end being seen;
        // a body left half-read leaves its connection unusable, and it is closed.
        if self.inner.is_end_stream() {
            self.finished();
        }
    }
}

impl Body for Reply {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let streamed = match self.get_mut() {
            Reply::Fixed(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Reply::Upstream(streamed) => &mut **streamed,
        };
        let polled = Pin::new(&mut streamed.inner).poll_frame(cx);
        if polled.is_ready() {
            streamed.waiting = false;
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                streamed.finished();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if !streamed.waiting {
                    streamed.waiting = true;
                    let deadline = Instant::now() + streamed.silence;
                    streamed.deadline.as_mut().reset(deadline);
                }
                match streamed.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Cut::Silent.into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Reply::Fixed(bytes) => bytes.is_none(),
            Reply::Upstream(streamed) => streamed.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Reply::Fixed(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Reply::Upstream(streamed) => streamed.inner.size_hint(),
        }
    }
}
