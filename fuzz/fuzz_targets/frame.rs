//! The relay's frame tracker over a byte stream: fed whole, or split at fuzzer-chosen
//! points, it finds the same frames, the same violations, the same Close code and the same
//! position; checking headers never changes where frames are; and every header it passes
//! keeps the rules RFC 6455 §5 and RFC 7692 set for it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::proxy::frame::{FrameHeader, FrameTracker, Rules, Violation};

/// What the tracker said at one completed header.
type Seen = (FrameHeader, Option<Violation>);

/// Feeds `data` to `tracker` in pieces of these sizes (the rest at once); returns each
/// header completed with its violation, and the boundaries reached.
fn feed_all(tracker: &mut FrameTracker, data: &[u8], splits: &[u8]) -> (Vec<Seen>, u64) {
    let (mut headers, mut boundaries) = (Vec::new(), 0);
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    for &s in splits {
        let (piece, tail) = rest.split_at(usize::from(s).min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    pieces.push(rest);
    for mut piece in pieces {
        while !piece.is_empty() {
            let fed = tracker.feed(piece);
            assert!(fed.consumed <= piece.len(), "consumed more than given");
            assert!(fed.consumed > 0 || piece.is_empty(), "no progress");
            if fed.header {
                headers.push((tracker.current(), tracker.violation()));
            }
            boundaries += u64::from(fed.boundary);
            piece = &piece[fed.consumed..];
        }
    }
    (headers, boundaries)
}

/// An independent reading of the rules: whether `h` may pass, given whether a fragmented
/// message is open before it.
fn allowed(rules: Rules, h: &FrameHeader, in_message: bool) -> bool {
    let control = matches!(h.opcode, 0x8..=0xA);
    let data = matches!(h.opcode, 0x0..=0x2);
    let rsv_ok = h.rsv == 0 || (h.rsv == 0b100 && rules.deflate && matches!(h.opcode, 1 | 2));
    let order_ok = match h.opcode {
        0x0 => in_message,
        0x1 | 0x2 => !in_message,
        _ => true,
    };
    (control || data)
        && h.mask.is_some() == rules.from_client
        && rsv_ok
        && (!control || (h.fin && h.payload_len <= 125))
        && !(h.opcode == 0x8 && h.payload_len == 1)
        && order_ok
}

fuzz_target!(|input: (u8, Vec<u8>, Vec<u8>)| {
    let (flags, data, splits) = input;
    let rules = Rules {
        from_client: flags & 1 != 0,
        deflate: flags & 2 != 0,
    };
    let mut whole = FrameTracker::checked(rules);
    let mut split = FrameTracker::checked(rules);
    let mut plain = FrameTracker::new();
    let (whole_headers, _) = feed_all(&mut whole, &data, &[]);
    let (split_headers, _) = feed_all(&mut split, &data, &splits);
    let (plain_headers, _) = feed_all(&mut plain, &data, &splits);
    assert_eq!(whole_headers.len() as u64, whole.frames());
    assert_eq!(whole.frames(), split.frames());
    assert_eq!(whole_headers, split_headers);
    assert_eq!(whole.close_seen(), split.close_seen());
    assert_eq!(whole.close_code(), split.close_code());
    assert_eq!(whole.at_boundary(), split.at_boundary());
    assert_eq!(whole.remaining(), split.remaining());
    assert_eq!(whole.partial_header(), split.partial_header());
    // What the relay holds back of a header not complete yet is the stream's last bytes.
    assert_eq!(whole.partial_bytes(), split.partial_bytes());
    assert!(data.ends_with(whole.partial_bytes()));
    // Checking never moves a frame, and an unchecked tracker finds nothing wrong.
    assert_eq!(plain_headers.len(), whole_headers.len());
    for ((p, none), (w, _)) in plain_headers.iter().zip(&whole_headers) {
        assert_eq!(p, w);
        assert_eq!(*none, None);
    }
    assert_eq!(plain.close_code(), whole.close_code());
    // A frame in violation is left out of the fragmentation state (the relay stops there).
    let mut in_message = false;
    for (h, violation) in &whole_headers {
        assert_eq!(
            violation.is_none(),
            allowed(rules, h, in_message),
            "{h:?} {violation:?}"
        );
        if violation.is_none() && !matches!(h.opcode, 0x8..=0xF) {
            in_message = !h.fin;
        }
    }
});
