//! What the client is answered: a gateway refusal ([`refuse`]), an upstream's refusal passed
//! on ([`pass_refusal`]), a 101 ([`answer_client`], [`switching_protocols`]), and the
//! metrics and access-log line of every handshake's outcome ([`outcome`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::extensions;
use super::handshake::{AcceptKey, Reject};
use super::http1::{self, Headers};
use super::state::Gateway;
use super::stream::Stream;
use super::upstream::{self, ClientInfo};
use crate::access::Handshake;
use crate::route::Route;

/// What the client is sent for an upstream's response.
pub(super) enum Reply {
    /// A 101 head, and whether it negotiated `permessage-deflate`.
    Upgrade(Vec<u8>, bool),
    /// The head of the upstream's refusal, and how much body follows it.
    Refusal(Vec<u8>, RefusalBody),
}

/// How long a refusal's body is, by its status and framing headers (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RefusalBody {
    /// 1xx, 204 and 304 responses have none.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked or unframed: whatever comes until the upstream closes.
    UntilClose,
}

impl RefusalBody {
    /// The body that follows a response head with this status and these headers.
    fn of(code: u16, headers: Headers<'_>) -> RefusalBody {
        if code < 200 || code == 204 || code == 304 {
            return RefusalBody::Empty;
        }
        if headers.get("transfer-encoding").is_some() {
            return RefusalBody::UntilClose;
        }
        headers
            .get("content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse().ok())
            .map_or(RefusalBody::UntilClose, RefusalBody::Length)
    }

    /// Bytes to pass on, at most `cap`.
    fn limit(self, cap: u64) -> u64 {
        match self {
            RefusalBody::Empty => 0,
            RefusalBody::Length(n) => n.min(cap),
            RefusalBody::UntilClose => cap,
        }
    }
}

/// The client's answer to an upstream response: a 101 with the upstream's headers but
/// hop-by-hop ones, or the head of the upstream's refusal. A 101 whose accept value does not
/// match the client's key, or that accepts an extension not among the `extensions` offered
/// to the upstream, is refused here, where a status code still can be sent: the client would
/// fail the connection (RFC 6455 §4.1), and the relay could not check its frames.
pub(super) fn answer_client(
    answer: &upstream::Answer,
    accept: AcceptKey,
    extensions: Option<&str>,
) -> Result<Reply, Reject> {
    let mut slots = [httparse::EMPTY_HEADER; http1::MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    match resp.parse(&answer.buf[..answer.head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Reject::UpstreamInvalid),
    }
    let code = resp.code.unwrap_or(0);
    let headers = Headers::new(resp.headers);
    if code != 101 {
        let mut out = Vec::with_capacity(answer.head_len + 32);
        http1::put_status(&mut out, code, resp.reason.unwrap_or(""));
        for (name, value) in headers.iter() {
            if !headers.is_hop_by_hop(name, true) {
                http1::put_header(&mut out, name, value);
            }
        }
        out.extend_from_slice(b"connection: close\r\n\r\n");
        return Ok(Reply::Refusal(out, RefusalBody::of(code, headers)));
    }
    if headers.get("sec-websocket-accept") != Some(accept.as_bytes()) {
        return Err(Reject::UpstreamInvalid);
    }
    let deflate = extensions::negotiated(headers, extensions).map_err(|e| {
        tracing::debug!(error = %e, "upstream 101 refused");
        Reject::UpstreamInvalid
    })?;
    Ok(Reply::Upgrade(
        switching_protocols(Some(headers), accept),
        deflate,
    ))
}

/// A 101 answer: the upstream's headers but hop-by-hop ones (or just the accept value when
/// there is no upstream answer), and the upgrade headers.
pub(super) fn switching_protocols(upstream: Option<Headers<'_>>, accept: AcceptKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    match upstream {
        Some(headers) => {
            for (name, value) in headers.iter() {
                if !headers.is_hop_by_hop(name, false) {
                    http1::put_header(&mut out, name, value);
                }
            }
        }
        None => http1::put_header(&mut out, "sec-websocket-accept", accept.as_bytes()),
    }
    out.extend_from_slice(b"connection: Upgrade\r\nupgrade: websocket\r\n\r\n");
    out
}

/// Largest refusal body passed on from an upstream.
const MAX_REFUSAL_BODY: u64 = 1 << 20;

/// An upstream refusal's body as it comes, cut at [`MAX_REFUSAL_BODY`]: what followed the
/// head in the same reads, then the rest from its connection.
fn refusal_reader(answer: upstream::Answer, body: RefusalBody) -> impl AsyncRead + Unpin {
    let upstream::Answer {
        stream,
        mut buf,
        head_len,
    } = answer;
    let limit = body.limit(MAX_REFUSAL_BODY);
    buf.drain(..head_len);
    buf.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let rest = limit - buf.len() as u64;
    std::io::Cursor::new(buf).chain(stream.take(rest))
}

/// Sends an upstream's refusal head, then its body as it comes (`Content-Length` bytes, or
/// chunks unchanged until the upstream closes), within `patience`; then closes both. An
/// upstream that keeps its connection open after a sized body does not hold the client.
pub(super) async fn pass_refusal(
    mut client: Stream,
    answer: upstream::Answer,
    head: &[u8],
    body: RefusalBody,
    patience: Duration,
) {
    let mut body = refusal_reader(answer, body);
    let sent = async {
        client.write_all(head).await?;
        tokio::io::copy(&mut body, &mut client).await?;
        client.shutdown().await
    };
    if let Ok(Err(e)) = tokio::time::timeout(patience, sent).await {
        tracing::debug!(error = %e, "passing the upstream's refusal on failed");
    }
}

/// An upstream refusal's body, read whole within `patience`: an HTTP/2 stream answers
/// with it, where an HTTP/1.1 client gets it as it comes.
pub(super) async fn refusal_body(
    answer: upstream::Answer,
    body: RefusalBody,
    patience: Duration,
) -> bytes::Bytes {
    let mut out = Vec::new();
    let mut body = refusal_reader(answer, body);
    let read = body.read_to_end(&mut out);
    if let Ok(Err(e)) = tokio::time::timeout(patience, read).await {
        tracing::debug!(error = %e, "reading the upstream's refusal failed");
    }
    out.into()
}

/// Counts a handshake's outcome and writes its access-log line.
pub(super) fn outcome(
    gateway: &Gateway,
    route: Option<&Arc<str>>,
    client: ClientInfo,
    origin: Option<&str>,
    result: &'static str,
    reason: &'static str,
) {
    gateway.metrics.handshake(route, result, reason);
    gateway.access.handshake(Handshake {
        route: route.map(|r| &**r),
        client: client.ip,
        origin,
        result,
        reason,
        http: client.version,
    });
}

/// Answers with a rejection, counts it and closes.
pub(super) async fn refuse(
    stream: &mut Stream,
    gateway: &Gateway,
    route: Option<&Route>,
    r: Reject,
    client: ClientInfo,
    origin: Option<&str>,
) {
    let response = refusal(gateway, route, r, client, origin);
    // Dropping the socket then closes it with a FIN after the response.
    let _ = stream.write_all(&response).await;
}

/// Counts a rejection and logs it; returns the response to send before closing.
pub(super) fn refusal(
    gateway: &Gateway,
    route: Option<&Route>,
    r: Reject,
    client: ClientInfo,
    origin: Option<&str>,
) -> Vec<u8> {
    let name = route.map(|r| &r.label);
    outcome(gateway, name, client, origin, r.result(), r.reason());
    r.log("handshake", client.ip, name.map_or("", |n| &**n));
    let mut response = Vec::with_capacity(256);
    r.write_response(&mut response);
    response
}

#[cfg(test)]
mod tests;
