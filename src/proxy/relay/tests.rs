use std::sync::Arc;
use std::task::Waker;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{DuplexStream, duplex};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use super::*;
use crate::proxy::frame::encode;

const LINGER: Duration = Duration::from_secs(2);

type Ws<S> = WebSocketStream<S>;

struct Pair<S> {
    client: Ws<S>,
    upstream: Ws<S>,
    control: Arc<ConnControl>,
    relay: tokio::task::JoinHandle<RelayStats>,
}

fn spawn_relay<S>(
    gw_client: S,
    gw_upstream: S,
    limits: Limits,
) -> (Arc<ConnControl>, tokio::task::JoinHandle<RelayStats>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let control = Arc::new(ConnControl::new());
    let c = control.clone();
    let task =
        tokio::spawn(async move { relay(gw_client, gw_upstream, c, LINGER, limits, false).await });
    (control, task)
}

/// A tungstenite client and server, already upgraded, with a relay between them.
async fn pair() -> Pair<DuplexStream> {
    limited_pair(Limits::default()).await
}

/// The same, with the relay enforcing `limits`.
async fn limited_pair(limits: Limits) -> Pair<DuplexStream> {
    let (client_io, gw_client) = duplex(64 * 1024);
    let (gw_upstream, upstream_io) = duplex(64 * 1024);
    let (control, relay) = spawn_relay(gw_client, gw_upstream, limits);
    Pair {
        client: WebSocketStream::from_raw_socket(client_io, Role::Client, None).await,
        upstream: WebSocketStream::from_raw_socket(upstream_io, Role::Server, None).await,
        control,
        relay,
    }
}

/// The same over loopback TCP.
async fn tcp_pair() -> Pair<TcpStream> {
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.expect("connect"), b.expect("accept").0)
    }
    let (client_io, gw_client) = connected().await;
    let (gw_upstream, upstream_io) = connected().await;
    let (control, relay) = spawn_relay(gw_client, gw_upstream, Limits::default());
    Pair {
        client: WebSocketStream::from_raw_socket(client_io, Role::Client, None).await,
        upstream: WebSocketStream::from_raw_socket(upstream_io, Role::Server, None).await,
        control,
        relay,
    }
}

async fn next_msg<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> Message {
    ws.next().await.expect("a message").expect("no error")
}

/// Reads until the connection ends (the Close reply goes out on the way); the Close
/// frame seen, if any.
async fn drain<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> Option<(u16, String)> {
    let mut close = None;
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Close(f) = msg {
            close = Some(f.map_or((1005, String::new()), |f| {
                (f.code.into(), f.reason.to_string())
            }));
        }
    }
    close
}

async fn both_ways<S: AsyncRead + AsyncWrite + Unpin>(p: &mut Pair<S>) {
    p.client.send(Message::text("hi")).await.expect("send");
    assert_eq!(next_msg(&mut p.upstream).await, Message::text("hi"));
    p.upstream.send(Message::text("hello")).await.expect("send");
    assert_eq!(next_msg(&mut p.client).await, Message::text("hello"));
    p.client
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send");
    assert_eq!(
        next_msg(&mut p.upstream).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );
    p.upstream
        .send(Message::binary(vec![7u8; 200]))
        .await
        .expect("send");
    assert_eq!(
        next_msg(&mut p.client).await,
        Message::binary(vec![7u8; 200])
    );
}

#[tokio::test]
async fn text_and_binary_pass_both_ways() {
    let mut p = pair().await;
    both_ways(&mut p).await;
    drop(p.client);
    drop(p.upstream);
    let stats = p.relay.await.expect("relay");
    assert_eq!(stats.client_to_upstream.frames, 2);
    assert_eq!(stats.upstream_to_client.frames, 2);
    // Masked client frames: 6-byte headers; unmasked 200-byte server frame: 4 bytes.
    assert_eq!(stats.client_to_upstream.bytes, (6 + 2) + (6 + 4));
    assert_eq!(stats.upstream_to_client.bytes, (2 + 5) + (4 + 200));
}

#[tokio::test]
async fn messages_pass_over_tcp_and_a_client_close_ends_it() {
    let mut p = tcp_pair().await;
    both_ways(&mut p).await;
    p.client.close(None).await.expect("close");
    let (up, cl) = tokio::join!(drain(&mut p.upstream), drain(&mut p.client));
    assert_eq!(up.map(|c| c.0), Some(1005));
    assert_eq!(cl.map(|c| c.0), Some(1005));
    let stats = p.relay.await.expect("relay");
    assert_eq!((stats.ended, stats.timed_out), (Ended::Client, false));
}

#[tokio::test]
async fn fragmented_messages_pass_whole() {
    let mut p = pair().await;
    // RFC 6455 §5.4: fragments, with a control frame between them.
    for frame in [
        Frame::message("hel", OpCode::Data(Data::Text), false),
        Frame::message("lo ", OpCode::Data(Data::Continue), false),
        Frame::ping(vec![9u8]),
        Frame::message("world", OpCode::Data(Data::Continue), true),
    ] {
        p.client.send(Message::Frame(frame)).await.expect("send");
    }
    assert_eq!(
        next_msg(&mut p.upstream).await,
        Message::Ping(vec![9u8].into())
    );
    assert_eq!(
        next_msg(&mut p.upstream).await,
        Message::text("hello world")
    );
    for frame in [
        Frame::message(vec![1u8; 100], OpCode::Data(Data::Binary), false),
        Frame::message(vec![2u8; 70_000], OpCode::Data(Data::Continue), true),
    ] {
        p.upstream.send(Message::Frame(frame)).await.expect("send");
    }
    let mut expected = vec![1u8; 100];
    expected.extend(vec![2u8; 70_000]);
    // The client also gets the upstream's Pong (sent on the upstream's next write).
    loop {
        match next_msg(&mut p.client).await {
            Message::Pong(_) => continue,
            m => {
                assert_eq!(m, Message::binary(expected));
                break;
            }
        }
    }
    drop(p.client);
    drop(p.upstream);
    let stats = p.relay.await.expect("relay");
    assert_eq!(stats.client_to_upstream.frames, 4);
    assert_eq!(stats.client_to_upstream.messages, 1);
    assert_eq!(stats.upstream_to_client.messages, 1);
}

#[tokio::test]
async fn a_one_mib_message_passes_both_ways() {
    let mut p = pair().await;
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let (sent, got) = tokio::join!(
        p.client.send(Message::binary(big.clone())),
        p.upstream.next()
    );
    sent.expect("send");
    assert_eq!(got.expect("msg").expect("ok"), Message::binary(big.clone()));
    let (sent, got) = tokio::join!(
        p.upstream.send(Message::binary(big.clone())),
        p.client.next()
    );
    sent.expect("send");
    assert_eq!(got.expect("msg").expect("ok"), Message::binary(big));
}

#[tokio::test]
async fn ping_and_pong_pass() {
    let mut p = pair().await;
    p.client
        .send(Message::Ping(vec![1, 2].into()))
        .await
        .expect("ping");
    assert_eq!(
        next_msg(&mut p.upstream).await,
        Message::Ping(vec![1, 2].into())
    );
    // tungstenite queues the Pong; flushing sends it back through the relay.
    p.upstream.flush().await.expect("pong");
    assert_eq!(
        next_msg(&mut p.client).await,
        Message::Pong(vec![1, 2].into())
    );
}

#[tokio::test]
async fn close_from_the_client_passes_through_with_its_code() {
    let mut p = pair().await;
    p.client
        .close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "bye".into(),
        }))
        .await
        .expect("close");
    let (up, cl) = tokio::join!(drain(&mut p.upstream), drain(&mut p.client));
    assert_eq!(up, Some((1001, "bye".to_owned())));
    // tungstenite's reply echoes the code.
    assert_eq!(cl.map(|c| c.0), Some(1001));
    let stats = p.relay.await.expect("relay");
    assert_eq!((stats.ended, stats.timed_out), (Ended::Client, false));
    assert_eq!(stats.client_to_upstream.close_code, Some(1001));
    assert_eq!(stats.upstream_to_client.close_code, Some(1001));
}

#[tokio::test]
async fn close_from_the_upstream_passes_through_with_its_code() {
    let mut p = pair().await;
    p.upstream
        .close(Some(CloseFrame {
            code: CloseCode::Restart,
            reason: "redeploy".into(),
        }))
        .await
        .expect("close");
    let (cl, up) = tokio::join!(drain(&mut p.client), drain(&mut p.upstream));
    assert_eq!(cl, Some((1012, "redeploy".to_owned())));
    assert_eq!(up.map(|c| c.0), Some(1012));
    let stats = p.relay.await.expect("relay");
    assert_eq!((stats.ended, stats.timed_out), (Ended::Upstream, false));
    assert_eq!(stats.upstream_to_client.close_code, Some(1012));
}

#[tokio::test]
async fn injected_close_reaches_both_sides_with_its_code() {
    let mut p = pair().await;
    both_ways(&mut p).await;
    p.control.close(1008, "origin not allowed");
    p.control.close(1001, "second request loses");
    assert_eq!(p.control.requested(), Some(1008));
    let (cl, up) = tokio::join!(drain(&mut p.client), drain(&mut p.upstream));
    assert_eq!(cl, Some((1008, "origin not allowed".to_owned())));
    assert_eq!(up, Some((1008, "origin not allowed".to_owned())));
    let stats = p.relay.await.expect("relay");
    // Both replied (tungstenite echoes the Close), so no linger ran out.
    assert_eq!(
        (stats.ended, stats.timed_out),
        (Ended::Injected(1008), false)
    );
    assert_eq!(stats.ended.label(), "revoked");
}

#[tokio::test]
async fn a_fragmented_message_over_the_limit_gets_its_sender_1009_and_the_other_1001() {
    let limits = Limits {
        max_message_bytes: Some(100),
        ..Limits::default()
    };
    let mut p = limited_pair(limits).await;
    // Under the limit, whole and in fragments: passes.
    p.client
        .send(Message::binary(vec![1u8; 100]))
        .await
        .expect("send");
    assert_eq!(
        next_msg(&mut p.upstream).await,
        Message::binary(vec![1u8; 100])
    );
    // 60 + 60 in two fragments: the second takes the message over 100.
    for frame in [
        Frame::message(vec![2u8; 60], OpCode::Data(Data::Binary), false),
        Frame::message(vec![3u8; 60], OpCode::Data(Data::Continue), true),
    ] {
        p.client.send(Message::Frame(frame)).await.expect("send");
    }
    let (cl, up) = tokio::join!(drain(&mut p.client), async {
        // The first fragment went on before the limit was known; then the Close, which
        // may come between fragments (RFC 6455 §5.4), so no whole message arrives.
        let mut frames = 0;
        let mut close = None;
        while let Some(Ok(m)) = p.upstream.next().await {
            match m {
                Message::Close(f) => close = f.map(|f| (u16::from(f.code), f.reason.to_string())),
                Message::Frame(_) | Message::Binary(_) => frames += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        (frames, close)
    });
    assert_eq!(cl, Some((1009, "message too big".to_owned())));
    assert_eq!(up, (0, Some((1001, "going away".to_owned()))));
    let stats = p.relay.await.expect("relay");
    assert_eq!(stats.ended, Ended::MessageTooBig(Side::Client));
    assert_eq!(stats.ended.label(), "client_message_too_big");
    assert!(!stats.timed_out);
}

#[tokio::test]
async fn an_upstream_message_over_the_limit_gets_the_upstream_1009() {
    let limits = Limits {
        max_message_bytes: Some(10),
        ..Limits::default()
    };
    let mut p = limited_pair(limits).await;
    p.upstream
        .send(Message::text("x".repeat(11)))
        .await
        .expect("send");
    let (cl, up) = tokio::join!(drain(&mut p.client), drain(&mut p.upstream));
    assert_eq!(cl, Some((1001, "going away".to_owned())));
    assert_eq!(up, Some((1009, "message too big".to_owned())));
    assert_eq!(
        p.relay.await.expect("relay").ended,
        Ended::MessageTooBig(Side::Upstream)
    );
}

#[tokio::test(start_paused = true)]
async fn silence_past_the_idle_timeout_closes_both_sides_1001_but_pings_do_not_count() {
    let limits = Limits {
        idle_timeout: Some(Duration::from_secs(60)),
        ..Limits::default()
    };
    let mut p = limited_pair(limits).await;
    tokio::time::sleep(Duration::from_secs(50)).await;
    both_ways(&mut p).await;
    let data_at = Instant::now();
    // 50 s after that data, a ping (not data) passes; the timeout still runs from the data.
    tokio::time::sleep(Duration::from_secs(50)).await;
    p.client
        .send(Message::Ping(vec![1u8].into()))
        .await
        .expect("ping");
    assert_eq!(
        next_msg(&mut p.upstream).await,
        Message::Ping(vec![1u8].into())
    );
    let (cl, up) = tokio::join!(drain(&mut p.client), drain(&mut p.upstream));
    assert_eq!(cl, Some((1001, "idle timeout".to_owned())));
    assert_eq!(up, Some((1001, "idle timeout".to_owned())));
    let closed_after = Instant::now() - data_at;
    assert!(
        closed_after >= Duration::from_secs(60) && closed_after < Duration::from_secs(61),
        "{closed_after:?}"
    );
    let stats = p.relay.await.expect("relay");
    assert_eq!(stats.ended, Ended::IdleTimeout);
}

fn heartbeat(interval: u64, timeout: u64) -> Limits {
    Limits {
        heartbeat: Some((Duration::from_secs(interval), Duration::from_secs(timeout))),
        ..Limits::default()
    }
}

#[tokio::test(start_paused = true)]
async fn silent_sides_are_pinged_and_their_pongs_stay_with_the_gateway() {
    let mut p = limited_pair(heartbeat(10, 5)).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    for ws in [&mut p.client, &mut p.upstream] {
        match next_msg(ws).await {
            Message::Ping(d) => assert!(d.starts_with(b"wsgt"), "{d:?}"),
            other => panic!("expected the gateway's Ping, got {other:?}"),
        }
    }
    // Tungstenite sends its Pong before the next message; had the relay forwarded it,
    // the other side would read a Pong here instead of the message.
    both_ways(&mut p).await;
    both_ways(&mut p).await;
    drop(p.client);
    drop(p.upstream);
    let stats = p.relay.await.expect("relay");
    assert_eq!(stats.ended, Ended::Client);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_stops_answering_is_dropped_and_the_client_gets_1011() {
    let mut p = limited_pair(heartbeat(10, 5)).await;
    both_ways(&mut p).await;
    let started = Instant::now();
    // The client keeps reading (and so answers Pings); the upstream is never read again.
    let close = drain(&mut p.client).await;
    assert_eq!(close, Some((1011, "upstream not responding".to_owned())));
    assert!(Instant::now() - started >= Duration::from_secs(15));
    let stats = p.relay.await.expect("relay");
    assert_eq!(stats.ended, Ended::HeartbeatTimeout(Side::Upstream));
    assert_eq!(stats.ended.label(), "upstream_heartbeat_timeout");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_answering_is_dropped_and_the_upstream_gets_1001() {
    let mut p = limited_pair(heartbeat(10, 5)).await;
    let close = drain(&mut p.upstream).await;
    assert_eq!(close, Some((1001, "going away".to_owned())));
    assert_eq!(
        p.relay.await.expect("relay").ended,
        Ended::HeartbeatTimeout(Side::Client)
    );
}

/// A masked (client) frame header with a 16-bit length (RFC 6455 §5.2).
fn masked_header(len: u16, key: [u8; 4]) -> Vec<u8> {
    let mut h = vec![0x82, 0x80 | 126];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&key);
    h
}

fn unmasked_header(len: u16) -> Vec<u8> {
    let mut h = vec![0x82, 126];
    h.extend_from_slice(&len.to_be_bytes());
    h
}

async fn read_n(io: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    io.read_exact(&mut buf).await.expect("read");
    buf
}

#[tokio::test]
async fn injection_waits_for_the_frames_in_flight_then_discards() {
    let (mut client, gw_client) = duplex(256 * 1024);
    let (gw_upstream, mut upstream) = duplex(256 * 1024);
    let (control, task) = spawn_relay(gw_client, gw_upstream, Limits::default());
    const LEN: u16 = 60_000;
    let key = [9, 8, 7, 6];
    let (c_head, u_head) = (masked_header(LEN, key), unmasked_header(LEN));
    let half = usize::from(LEN) / 2;
    let payload = vec![0x5a_u8; usize::from(LEN)];

    // Half of a large frame each way; reading it on the far side proves the relay has
    // forwarded it, so the close below lands mid-frame in both directions.
    client.write_all(&c_head).await.expect("write");
    client.write_all(&payload[..half]).await.expect("write");
    upstream.write_all(&u_head).await.expect("write");
    upstream.write_all(&payload[..half]).await.expect("write");
    assert_eq!(
        read_n(&mut upstream, c_head.len() + half).await[..c_head.len()],
        c_head
    );
    assert_eq!(
        read_n(&mut client, u_head.len() + half).await[..u_head.len()],
        u_head
    );

    control.close(1001, "route removed");
    // The rest of each frame, then a frame that must not be forwarded any more.
    client.write_all(&payload[half..]).await.expect("write");
    client
        .write_all(&[0x81, 0x80 | 1, 0, 0, 0, 0, b'x'])
        .await
        .expect("write");
    upstream.write_all(&payload[half..]).await.expect("write");
    upstream.write_all(&[0x81, 1, b'y']).await.expect("write");

    // Each side gets the end of its frame, then the Close: unmasked to the client...
    assert_eq!(
        read_n(&mut client, usize::from(LEN) - half).await,
        payload[half..]
    );
    let (expected, n) = close_frame(1001, "route removed", None);
    assert_eq!(read_n(&mut client, n).await, expected[..n]);
    // ... and masked to the upstream (RFC 6455 §5.3).
    assert_eq!(
        read_n(&mut upstream, usize::from(LEN) - half).await,
        payload[half..]
    );
    let close = read_n(&mut upstream, n + 4).await;
    assert_eq!(&close[..2], &[0x88, 0x80 | (n as u8 - 2)]);
    let key: [u8; 4] = close[2..6].try_into().expect("key");
    let (remasked, _) = close_frame(1001, "route removed", Some(key));
    assert_eq!(close, remasked[..n + 4]);

    // Both reply with a Close; the relay closes both and nothing else arrived.
    let (reply, rn) = close_frame(1001, "", Some([1, 2, 3, 4]));
    client.write_all(&reply[..rn]).await.expect("reply");
    let (reply, rn) = close_frame(1001, "", None);
    upstream.write_all(&reply[..rn]).await.expect("reply");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.expect("eof");
    assert!(rest.is_empty(), "forwarded after the close: {rest:?}");
    upstream.read_to_end(&mut rest).await.expect("eof");
    assert!(rest.is_empty(), "forwarded after the close: {rest:?}");
    let stats = task.await.expect("relay");
    assert_eq!(
        (stats.ended, stats.timed_out),
        (Ended::Injected(1001), false)
    );
    assert_eq!(stats.client_to_upstream.frames, 3);
    assert_eq!(stats.client_to_upstream.close_code, Some(1001));
}

#[tokio::test(start_paused = true)]
async fn silent_peers_are_dropped_after_the_linger() {
    let (mut client, gw_client) = duplex(1024);
    let (gw_upstream, mut upstream) = duplex(1024);
    let control = Arc::new(ConnControl::new());
    control.close(1012, "service restart");
    // Nobody answers the Close: the relay gives up after the linger.
    let stats = relay(
        gw_client,
        gw_upstream,
        control,
        LINGER,
        Limits::default(),
        false,
    )
    .await;
    assert_eq!(
        (stats.ended, stats.timed_out),
        (Ended::Injected(1012), true)
    );
    assert_eq!(stats.ended.label(), "shutdown");
    let (expected, n) = close_frame(1012, "service restart", None);
    assert_eq!(read_n(&mut client, n).await, expected[..n]);
    assert_eq!(
        read_n(&mut upstream, n + 4).await[..2],
        [0x88, 0x80 | (n as u8 - 2)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_frame_stuck_mid_way_is_dropped_after_the_linger() {
    let (mut client, gw_client) = duplex(1024);
    let (gw_upstream, mut upstream) = duplex(1024);
    let control = Arc::new(ConnControl::new());
    let c = control.clone();
    let task = tokio::spawn(async move {
        relay(gw_client, gw_upstream, c, LINGER, Limits::default(), false).await
    });
    upstream
        .write_all(&[0x82, 100, 1, 2, 3])
        .await
        .expect("write");
    assert_eq!(read_n(&mut client, 5).await, [0x82, 100, 1, 2, 3]);
    let start = Instant::now();
    control.close(1008, "origin not allowed");
    let stats = task.await.expect("relay");
    assert!(start.elapsed() >= LINGER);
    assert_eq!(
        (stats.ended, stats.timed_out),
        (Ended::Injected(1008), true)
    );
    // The client never got a Close in the middle of the frame: only the stream's end.
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.expect("eof");
    assert!(rest.is_empty());
}

#[tokio::test]
async fn end_of_stream_is_passed_on_and_the_other_direction_goes_on() {
    let (mut client, gw_client) = duplex(1024);
    let (gw_upstream, mut upstream) = duplex(1024);
    let (_control, task) = spawn_relay(gw_client, gw_upstream, Limits::default());
    client.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    upstream.read_to_end(&mut rest).await.expect("eof");
    assert!(rest.is_empty());
    // The upstream can still answer.
    upstream
        .write_all(&[0x81, 2, b'o', b'k'])
        .await
        .expect("write");
    assert_eq!(read_n(&mut client, 4).await, [0x81, 2, b'o', b'k']);
    drop(upstream);
    let stats = task.await.expect("relay");
    assert_eq!((stats.ended, stats.timed_out), (Ended::Client, false));
    assert_eq!(stats.upstream_to_client.frames, 1);
}

#[tokio::test]
async fn reject_after_upgrade_closes_with_its_code() {
    let (client_io, gw_client) = duplex(1024);
    let task = tokio::spawn(reject_after_upgrade(
        gw_client,
        1008,
        "origin not allowed",
        LINGER,
    ));
    let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    // The client sees the Close, replies, and the gateway hangs up.
    assert_eq!(
        drain(&mut client).await,
        Some((1008, "origin not allowed".to_owned()))
    );
    task.await.expect("task");
}

#[tokio::test(start_paused = true)]
async fn reject_after_upgrade_gives_up_on_a_silent_client() {
    let (mut client, gw_client) = duplex(1024);
    let start = Instant::now();
    reject_after_upgrade(gw_client, 1008, "origin not allowed", LINGER).await;
    assert!(start.elapsed() >= LINGER);
    let (expected, n) = close_frame(1008, "origin not allowed", None);
    assert_eq!(read_n(&mut client, n).await, expected[..n]);
}

#[test]
fn pool_keeps_at_most_its_limit() {
    let bufs: Vec<_> = (0..POOL_LIMIT + 10).map(|_| take_buffer()).collect();
    for b in bufs {
        give_buffer(b);
    }
    assert_eq!(POOL.with(|p| p.borrow().len()), POOL_LIMIT);
}

fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

#[tokio::test]
async fn a_buffer_is_held_only_while_the_peer_is_not_ready() {
    let (mut client, gw_client) = duplex(64 * 1024);
    // Room for 1 KiB only towards the upstream.
    let (gw_upstream, mut upstream) = duplex(1024);
    let control = Arc::new(ConnControl::new());
    let mut relay = Relay::new(
        gw_client,
        gw_upstream,
        control,
        LINGER,
        Limits::default(),
        false,
    );
    assert!(poll_once(&mut relay).is_pending());
    assert!(relay.c2u.held.is_none() && relay.u2c.held.is_none());

    let mut frame = masked_header(4000, [1, 2, 3, 4]);
    frame.extend(vec![0u8; 4000]);
    client.write_all(&frame).await.expect("write");
    assert!(poll_once(&mut relay).is_pending());
    let held = relay
        .c2u
        .held
        .as_ref()
        .expect("held while the upstream is full");
    // The read lands after room for a withheld header.
    assert_eq!(
        (held.start, held.end),
        (MAX_HEADER + 1024, MAX_HEADER + frame.len())
    );

    let mut got = Vec::new();
    while got.len() < frame.len() {
        let mut buf = [0u8; 1024];
        let n = upstream.read(&mut buf).await.expect("read");
        got.extend_from_slice(&buf[..n]);
        assert!(poll_once(&mut relay).is_pending());
    }
    assert_eq!(got, frame);
    assert!(relay.c2u.held.is_none(), "returned once written");
    assert_eq!(relay.c2u.tracker.frames(), 1);
    assert!(relay.c2u.tracker.at_boundary());
}

/// Reads one frame, which must be a Close; its code.
async fn read_close(io: &mut DuplexStream) -> u16 {
    let head = read_n(io, 2).await;
    assert_eq!(head[0], 0x88, "expected a Close, got {head:?}");
    let key = if head[1] & 0x80 != 0 {
        Some(read_n(io, 4).await.try_into().expect("key"))
    } else {
        None
    };
    let mut payload = read_n(io, usize::from(head[1] & 0x7f)).await;
    apply_mask(&mut payload, key);
    u16::from_be_bytes([payload[0], payload[1]])
}

const CLIENT_KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// `from` sends a good text frame and then `bad` in one write. Checks that the other
/// side gets the good frame and then, with nothing of `bad`, Close 1001, while `from`
/// gets Close 1002; both answer the Close; returns how the relay ended.
async fn refused(from: Side, bad: Vec<u8>, deflate: bool) -> Ended {
    let (mut client, gw_client) = duplex(64 * 1024);
    let (gw_upstream, mut upstream) = duplex(64 * 1024);
    let control = Arc::new(ConnControl::new());
    let task = tokio::spawn(relay(
        gw_client,
        gw_upstream,
        control,
        LINGER,
        Limits::default(),
        deflate,
    ));
    let (sender, receiver, key, receiver_key) = match from {
        Side::Client => (&mut client, &mut upstream, Some(CLIENT_KEY), None),
        Side::Upstream => (&mut upstream, &mut client, None, Some(CLIENT_KEY)),
    };
    let good = encode(0x81, b"ok", key);
    let mut data = good.clone();
    data.extend_from_slice(&bad);
    let (written, got) = tokio::join!(sender.write_all(&data), async {
        let got = read_n(receiver, good.len()).await;
        (got, read_close(receiver).await)
    });
    written.expect("write");
    assert_eq!(got.0, good, "the good frame passes");
    assert_eq!(got.1, 1001, "the other side gets 1001, not the bad frame");
    assert_eq!(read_close(sender).await, 1002);
    let (reply, n) = close_frame(1002, "", key);
    sender.write_all(&reply[..n]).await.expect("reply");
    let (reply, n) = close_frame(1001, "", receiver_key);
    receiver.write_all(&reply[..n]).await.expect("reply");
    let stats = task.await.expect("relay");
    let mut rest = Vec::new();
    receiver.read_to_end(&mut rest).await.expect("eof");
    assert!(rest.is_empty(), "forwarded after the close: {rest:?}");
    assert!(!stats.timed_out);
    stats.ended
}

#[tokio::test]
async fn a_one_mib_ping_from_the_client_never_reaches_the_upstream_and_gets_1002() {
    let bad = encode(0x89, &vec![0x42; 1 << 20], Some(CLIENT_KEY));
    let ended = refused(Side::Client, bad, false).await;
    assert_eq!(ended, Ended::ProtocolError(Side::Client));
    assert_eq!(ended.label(), "client_protocol_error");
}

#[tokio::test]
async fn frames_that_break_rfc_6455_get_their_sender_1002_and_the_other_side_1001() {
    let k = Some(CLIENT_KEY);
    for (from, bad) in [
        (Side::Client, encode(0x83, b"x", k)),
        (Side::Client, encode(0x8B, b"", k)),
        (Side::Client, encode(0x81, b"unmasked", None)),
        (Side::Client, encode(0x09, b"", k)),
        (Side::Client, encode(0x88, b"\x03", k)),
        (Side::Client, encode(0x80, b"stray", k)),
        (Side::Upstream, encode(0x81, b"masked", k)),
        (Side::Upstream, encode(0xC1, b"rsv1", None)),
        (Side::Upstream, encode(0x8A, &[0; 126], None)),
    ] {
        assert_eq!(
            refused(from, bad.clone(), false).await,
            Ended::ProtocolError(from),
            "{bad:?}"
        );
    }
    let ended = refused(Side::Upstream, encode(0xA1, b"rsv2", None), true).await;
    assert_eq!(ended.label(), "upstream_protocol_error");
}

#[tokio::test]
async fn a_new_message_inside_a_fragmented_one_is_a_protocol_error() {
    // The open fragment passes; the text frame that interrupts it does not.
    let mut bad = encode(0x01, b"frag", Some(CLIENT_KEY));
    bad.extend(encode(0x81, b"new", Some(CLIENT_KEY)));
    let (mut client, gw_client) = duplex(1024);
    let (gw_upstream, mut upstream) = duplex(1024);
    let (_control, task) = spawn_relay(gw_client, gw_upstream, Limits::default());
    client.write_all(&bad).await.expect("write");
    let first = encode(0x01, b"frag", Some(CLIENT_KEY));
    assert_eq!(read_n(&mut upstream, first.len()).await, first);
    assert_eq!(read_close(&mut upstream).await, 1001);
    assert_eq!(read_close(&mut client).await, 1002);
    drop((client, upstream));
    assert_eq!(
        task.await.expect("relay").ended,
        Ended::ProtocolError(Side::Client)
    );
}

#[tokio::test]
async fn with_permessage_deflate_compressed_messages_pass_both_ways() {
    let (mut client, gw_client) = duplex(1024);
    let (gw_upstream, mut upstream) = duplex(1024);
    let control = Arc::new(ConnControl::new());
    let c = control.clone();
    let task = tokio::spawn(async move {
        relay(gw_client, gw_upstream, c, LINGER, Limits::default(), true).await
    });
    // RSV1 on the first fragment only (RFC 7692 §6.1); payloads are opaque here.
    let mut sent = encode(0x41, b"\xf2\x48", Some(CLIENT_KEY));
    sent.extend(encode(0x80, b"\xcd\xc9", Some(CLIENT_KEY)));
    client.write_all(&sent).await.expect("write");
    assert_eq!(read_n(&mut upstream, sent.len()).await, sent);
    let back = encode(0xC2, b"\x03\x00", None);
    upstream.write_all(&back).await.expect("write");
    assert_eq!(read_n(&mut client, back.len()).await, back);
    drop((client, upstream));
    assert_eq!(task.await.expect("relay").ended, Ended::Client);
}

/// Whether nothing is waiting to be read from `io`.
fn nothing_to_read(io: &mut DuplexStream) -> bool {
    let mut byte = [0u8; 1];
    io.read(&mut byte).now_or_never().is_none()
}

#[tokio::test]
async fn a_header_split_across_reads_is_withheld_until_it_is_checked() {
    let (mut client, gw_client) = duplex(256 * 1024);
    let (gw_upstream, mut upstream) = duplex(64 * 1024);
    let control = Arc::new(ConnControl::new());
    let mut relay = Relay::new(
        gw_client,
        gw_upstream,
        control,
        LINGER,
        Limits::default(),
        false,
    );
    // A good frame whose header comes in two reads goes on whole once it is complete.
    let good = encode(0x81, b"hello", Some(CLIENT_KEY));
    client.write_all(&good[..3]).await.expect("write");
    assert!(poll_once(&mut relay).is_pending());
    assert!(nothing_to_read(&mut upstream));
    client.write_all(&good[3..]).await.expect("write");
    assert!(poll_once(&mut relay).is_pending());
    assert_eq!(read_n(&mut upstream, good.len()).await, good);
    // A 70 kB Ping (a 14-byte header) whose header comes in two reads: none of it ever
    // goes on, and the upstream still gets its Close, as no frame was left unfinished.
    let bad = encode(0x89, &[0x42; 70_000], Some(CLIENT_KEY));
    client.write_all(&bad[..5]).await.expect("write");
    assert!(poll_once(&mut relay).is_pending());
    assert!(nothing_to_read(&mut upstream));
    client.write_all(&bad[5..]).await.expect("write");
    assert!(poll_once(&mut relay).is_pending());
    assert!(poll_once(&mut relay).is_pending());
    assert_eq!(read_close(&mut upstream).await, 1001);
    assert_eq!(read_close(&mut client).await, 1002);
    assert_eq!(relay.first, Some(Ended::ProtocolError(Side::Client)));
}

#[tokio::test(start_paused = true)]
async fn after_an_injected_close_the_client_stream_stays_open_until_the_client_answers() {
    let (mut client, gw_client) = duplex(64 * 1024);
    let (gw_upstream, upstream_io) = duplex(64 * 1024);
    let (control, relay) = spawn_relay(gw_client, gw_upstream, Limits::default());
    let mut upstream = WebSocketStream::from_raw_socket(upstream_io, Role::Server, None).await;
    control.close(1008, "origin not allowed");
    assert_eq!(read_close(&mut client).await, 1008);
    // The upstream answers the Close and is gone at once, as a quick server is.
    assert_eq!(drain(&mut upstream).await.map(|(code, _)| code), Some(1008));
    drop(upstream);
    // Time stands still until every task is idle: by then the relay has seen the upstream
    // end. The client's stream must not end before the client has sent its Close.
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), client.read(&mut byte)).await;
    assert!(early.is_err(), "the client's stream ended first: {early:?}");
    let mut reply = vec![0x88, 0x80 | 2];
    reply.extend_from_slice(&CLIENT_KEY);
    let mut code = 1008u16.to_be_bytes().to_vec();
    apply_mask(&mut code, Some(CLIENT_KEY));
    reply.extend(code);
    client.write_all(&reply).await.expect("the client's Close");
    assert_eq!(
        client.read(&mut byte).await.expect("read"),
        0,
        "then it ends"
    );
    let stats = relay.await.expect("relay");
    assert!(!stats.timed_out, "both Close frames went by");
}
