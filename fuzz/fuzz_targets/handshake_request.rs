//! A client's request head, as the gateway parses and judges it before any upstream contact:
//! head framing (`read_head` over reads of fuzzer-chosen sizes), the upgrade checks, the
//! subprotocol filter, targets, origins, forwarding and token-parameter stripping. Nothing
//! may panic; the framing and stripping keep their invariants.

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};
use wsgate::auth::strip_query_params;
use wsgate::policy::RequestOrigin;
use wsgate::proxy::client::TrustedProxies;
use wsgate::proxy::handshake::{filter_subprotocols, validate};
use wsgate::proxy::http1::{self, Headers, MAX_HEADERS};

/// Hands out its bytes `chunk` at a time, always ready.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

const MAX: usize = 16 * 1024;

fuzz_target!(|input: &[u8]| {
    let Some((&chunk, data)) = input.split_first() else {
        return;
    };
    // Framing: the head ends where a whole read says it does, within the limit.
    let mut reader = Chunked {
        data,
        chunk: usize::from(chunk.max(1)),
    };
    let mut buf = Vec::new();
    let framed = {
        let mut read = pin!(http1::read_head(&mut reader, &mut buf, MAX));
        let Poll::Ready(framed) = read.as_mut().poll(&mut Context::from_waker(Waker::noop()))
        else {
            panic!("read_head pended on an always-ready reader");
        };
        framed
    };
    if let Ok(len) = framed {
        assert!(len <= buf.len() && len <= MAX, "head of {len} bytes");
        assert!(buf[..len].ends_with(b"\n"), "a head ends with a line feed");
    }

    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return;
    };
    let headers = Headers::new(req.headers);
    let _ = validate(method, headers);
    let _ = filter_subprotocols(headers, &["chat.v2".to_owned(), "json".to_owned()]);
    let (path, query) = http1::split_target(target);
    // An absolute-form target's path sits after its authority; an empty one is `/`.
    assert!(
        path == "/" || target.contains(path),
        "{path:?} not in {target:?}"
    );
    if let Some(q) = query {
        assert!(target.ends_with(q));
    }
    let _ = http1::absolute_form(target);
    for (name, _) in headers.iter() {
        let _ = headers.is_hop_by_hop(name, true);
    }
    let _ = RequestOrigin::from_header_values(headers.get_all("origin"));
    let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().expect("cidr")]);
    let _ = trusted.client(
        "10.0.0.1".parse().expect("ip"),
        headers.get_all("x-forwarded-for"),
    );
    let stripped = strip_query_params(target, |n| n == "access_token");
    let (stripped_path, stripped_query) = http1::split_target(&stripped);
    assert_eq!(stripped_path, path, "stripping {target:?} changed its path");
    if let Some(rest) = stripped_query {
        assert!(
            !rest
                .split('&')
                .any(|p| p == "access_token" || p.starts_with("access_token=")),
            "{target} kept its token: {stripped}"
        );
    }
});
