//! The relay's frame tracker over a byte stream: fed whole, or split at fuzzer-chosen
//! points, it finds the same frames, the same Close code and the same position.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::proxy::frame::FrameTracker;

/// Feeds `data` to `tracker` in pieces of these sizes (the rest at once); returns the
/// headers completed and the boundaries reached.
fn feed_all(tracker: &mut FrameTracker, data: &[u8], splits: &[u8]) -> (u64, u64) {
    let (mut headers, mut boundaries) = (0, 0);
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
            headers += u64::from(fed.header);
            boundaries += u64::from(fed.boundary);
            piece = &piece[fed.consumed..];
        }
    }
    (headers, boundaries)
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (data, splits) = input;
    let mut whole = FrameTracker::new();
    let mut split = FrameTracker::new();
    let (whole_headers, _) = feed_all(&mut whole, &data, &[]);
    let (split_headers, _) = feed_all(&mut split, &data, &splits);
    assert_eq!(whole_headers, whole.frames());
    assert_eq!(whole.frames(), split.frames());
    assert_eq!(whole_headers, split_headers);
    assert_eq!(whole.close_seen(), split.close_seen());
    assert_eq!(whole.close_code(), split.close_code());
    assert_eq!(whole.at_boundary(), split.at_boundary());
    assert_eq!(whole.remaining(), split.remaining());
    assert_eq!(whole.partial_header(), split.partial_header());
});
