use super::*;

#[test]
fn ping_frames_round_trip_masked_and_unmasked() {
    let payload = *b"wsgt0001";
    for mask in [None, Some([1, 2, 3, 4])] {
        let (frame, len) = ping_frame(payload, mask);
        let mut t = FrameTracker::new();
        let fed = t.feed(&frame[..len]);
        assert!(fed.header);
        let h = t.current();
        assert_eq!((h.opcode, h.payload_len, h.mask), (OPCODE_PING, 8, mask));
        let mut body = frame[fed.consumed..len].to_vec();
        apply_mask(&mut body, mask);
        assert_eq!(body, payload);
    }
}

/// Encodes a frame header for tests (RFC 6455 §5.2).
fn header(fin: bool, opcode: u8, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut h = vec![if fin { 0x80 } else { 0 } | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match len {
        0..=125 => h.push(m | len as u8),
        126..=0xffff => {
            h.push(m | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            h.push(m | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
    }
    if let Some(key) = mask {
        h.extend_from_slice(&key);
    }
    h
}

fn frame(opcode: u8, len: usize, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = header(true, opcode, len as u64, mask);
    f.extend(std::iter::repeat_n(0xaa, len));
    f
}

/// Feeds `data` in pieces of `step` bytes; returns the offsets of every header end and
/// every boundary, and the tracker.
fn walk(data: &[u8], step: usize) -> (Vec<usize>, Vec<usize>, FrameTracker) {
    let mut t = FrameTracker::new();
    let (mut headers, mut boundaries) = (Vec::new(), Vec::new());
    let mut pos = 0;
    for chunk in data.chunks(step) {
        let mut i = 0;
        while i < chunk.len() {
            let fed = t.feed(&chunk[i..]);
            assert!(fed.consumed > 0, "progress at {}", pos + i);
            i += fed.consumed;
            if fed.header {
                headers.push(pos + i);
            }
            if fed.boundary {
                boundaries.push(pos + i);
            }
        }
        pos += chunk.len();
    }
    (headers, boundaries, t)
}

const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

#[test]
fn each_length_encoding_masked_and_unmasked() {
    for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
        for mask in [None, Some(KEY)] {
            let f = frame(OPCODE_BINARY, len, mask);
            let header_len = f.len() - len;
            let expected_header = match len {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            } + if mask.is_some() { 4 } else { 0 };
            assert_eq!(header_len, expected_header);
            let (headers, boundaries, t) = walk(&f, f.len());
            assert_eq!(headers, vec![header_len], "len {len} mask {mask:?}");
            assert_eq!(boundaries, vec![f.len()], "len {len} mask {mask:?}");
            let h = t.current();
            assert_eq!(
                (h.fin, h.opcode, h.mask, h.payload_len),
                (true, OPCODE_BINARY, mask, len as u64)
            );
            assert!(t.at_boundary());
        }
    }
}

#[test]
fn headers_split_at_every_byte_position() {
    // One header of each size, each split at every position of the whole stream.
    let mut data = frame(OPCODE_TEXT, 3, Some(KEY)); // 6-byte header
    data.extend(frame(OPCODE_PING, 0, None)); // 2-byte header
    data.extend(frame(OPCODE_BINARY, 300, Some(KEY))); // 8-byte header
    data.extend(frame(OPCODE_CONTINUATION, 70_000, Some(KEY))); // 14-byte header
    data.extend(frame(OPCODE_PONG, 2, None));
    let (headers, boundaries, _) = walk(&data, data.len());
    assert_eq!(headers.len(), 5);
    assert_eq!(boundaries.len(), 5);
    for step in 1..=16 {
        let (h, b, t) = walk(&data, step);
        assert_eq!((&h, &b), (&headers, &boundaries), "step {step}");
        assert_eq!(t.frames(), 5);
    }
    // And every split into two reads.
    for cut in 0..data.len().min(400) {
        let mut t = FrameTracker::new();
        let mut found = Vec::new();
        for (base, part) in [(0, &data[..cut]), (cut, &data[cut..])] {
            let mut i = 0;
            while i < part.len() {
                let fed = t.feed(&part[i..]);
                i += fed.consumed;
                if fed.boundary {
                    found.push(base + i);
                }
            }
        }
        assert_eq!(found, boundaries, "cut {cut}");
    }
}

#[test]
fn several_frames_in_one_read() {
    let mut data = Vec::new();
    for i in 0..10 {
        data.extend(frame(OPCODE_TEXT, i * 7, Some(KEY)));
    }
    let (headers, boundaries, t) = walk(&data, data.len());
    assert_eq!((headers.len(), boundaries.len()), (10, 10));
    assert_eq!(t.frames(), 10);
    assert_eq!(*boundaries.last().unwrap_or(&0), data.len());
}

#[test]
fn fragments_keep_fin_and_opcode() {
    let mut t = FrameTracker::new();
    let first = header(false, OPCODE_TEXT, 0, Some(KEY));
    assert!(t.feed(&first).header);
    assert_eq!((t.current().fin, t.current().opcode), (false, OPCODE_TEXT));
    let last = header(true, OPCODE_CONTINUATION, 0, Some(KEY));
    assert!(t.feed(&last).header);
    let h = t.current();
    assert_eq!((h.fin, h.opcode, h.is_control()), (true, 0, false));
}

#[test]
fn huge_declared_length_is_only_counted() {
    let mut t = FrameTracker::new();
    let fed = t.feed(&header(true, OPCODE_BINARY, u64::MAX, None));
    assert_eq!(
        fed,
        Fed {
            consumed: 10,
            header: true,
            boundary: false
        }
    );
    assert_eq!(t.remaining(), u64::MAX);
    let chunk = [0u8; 4096];
    let fed = t.feed(&chunk);
    assert_eq!(fed.consumed, chunk.len());
    assert!(!fed.boundary);
    assert_eq!(t.remaining(), u64::MAX - 4096);
    assert!(!t.at_boundary());
}

#[test]
fn close_frames_are_noticed_with_their_code() {
    for mask in [None, Some(KEY)] {
        let (f, n) = close_frame(1001, "going away", mask);
        for step in 1..=n {
            let (_, boundaries, t) = walk(&f[..n], step);
            assert_eq!(boundaries, vec![n]);
            assert!(t.close_seen());
            assert_eq!(t.close_code(), Some(1001), "step {step} mask {mask:?}");
            assert_eq!(t.frames(), 1);
        }
    }
    // A Close with no payload has no code; only the first Close's code counts.
    let mut data = frame(OPCODE_CLOSE, 0, None);
    data.extend_from_slice(&close_frame(1000, "", None).0[..4]);
    let (_, _, t) = walk(&data, data.len());
    assert!(t.close_seen());
    assert_eq!(t.close_code(), None);
}

#[test]
fn close_frame_encodes_code_reason_and_mask() {
    let (f, n) = close_frame(1008, "origin not allowed", None);
    assert_eq!(&f[..4], &[0x88, 20, 0x03, 0xf0]);
    assert_eq!(&f[4..n], b"origin not allowed");
    let (m, mn) = close_frame(1008, "origin not allowed", Some([1, 2, 3, 4]));
    assert_eq!(mn, n + 4);
    assert_eq!(&m[..6], &[0x88, 0x80 | 20, 1, 2, 3, 4]);
    let unmasked: Vec<u8> = m[6..mn]
        .iter()
        .enumerate()
        .map(|(j, b)| b ^ [1, 2, 3, 4][j % 4])
        .collect();
    assert_eq!(&unmasked[..], &f[2..n]);
    // A long reason is cut at a character boundary, within 125 payload bytes.
    let long = "é".repeat(100);
    let (l, ln) = close_frame(1000, &long, Some(KEY));
    assert_eq!(usize::from(l[1] & 0x7f), ln - 6);
    assert!(ln - 6 <= MAX_CONTROL_PAYLOAD);
    assert_eq!(ln - 6, 2 + 122);
}

const CLIENT: Rules = Rules {
    from_client: true,
    deflate: false,
};
const SERVER: Rules = Rules {
    from_client: false,
    deflate: false,
};

/// Feeds `data` whole to a tracker checking `rules`; the violation found at each header.
fn violations(rules: Rules, data: &[u8]) -> Vec<Option<Violation>> {
    let mut t = FrameTracker::checked(rules);
    let mut found = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let fed = t.feed(&data[pos..]);
        pos += fed.consumed;
        if fed.header {
            found.push(t.violation());
        }
    }
    found
}

/// A header with `first` as its first byte (FIN, RSV, opcode) and no payload.
fn raw(first: u8, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut h = header(false, 0, 0, mask);
    h[0] = first;
    h
}

#[test]
fn reserved_opcodes_are_protocol_errors() {
    for opcode in (0x3..=0x7).chain(0xB..=0xF) {
        assert_eq!(
            violations(CLIENT, &frame(opcode, 0, Some(KEY))),
            [Some(Violation::ReservedOpcode(opcode))]
        );
    }
    for opcode in [OPCODE_TEXT, OPCODE_BINARY, OPCODE_PING, OPCODE_PONG] {
        assert_eq!(violations(CLIENT, &frame(opcode, 0, Some(KEY))), [None]);
    }
}

#[test]
fn control_frames_over_125_bytes_or_without_fin_are_protocol_errors() {
    for opcode in [OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG] {
        assert_eq!(violations(SERVER, &frame(opcode, 125, None)), [None]);
        assert_eq!(
            violations(SERVER, &frame(opcode, 126, None)),
            [Some(Violation::ControlTooLong)]
        );
        assert_eq!(
            violations(SERVER, &header(false, opcode, 0, None)),
            [Some(Violation::FragmentedControl)]
        );
    }
    // Found at the header: a 1 MiB Ping is refused before any of its payload.
    let mut t = FrameTracker::checked(CLIENT);
    let fed = t.feed(&header(true, OPCODE_PING, 1 << 20, Some(KEY)));
    assert!(fed.header);
    assert_eq!(t.violation(), Some(Violation::ControlTooLong));
}

#[test]
fn a_close_with_a_one_byte_payload_is_a_protocol_error() {
    assert_eq!(
        violations(SERVER, &frame(OPCODE_CLOSE, 1, None)),
        [Some(Violation::CloseCodeCut)]
    );
    assert_eq!(violations(SERVER, &frame(OPCODE_CLOSE, 0, None)), [None]);
    assert_eq!(violations(SERVER, &frame(OPCODE_CLOSE, 2, None)), [None]);
}

#[test]
fn client_frames_must_be_masked_and_server_frames_must_not() {
    assert_eq!(
        violations(CLIENT, &frame(OPCODE_TEXT, 3, None)),
        [Some(Violation::Unmasked)]
    );
    assert_eq!(
        violations(SERVER, &frame(OPCODE_TEXT, 3, Some(KEY))),
        [Some(Violation::Masked)]
    );
    assert_eq!(
        violations(CLIENT, &frame(OPCODE_TEXT, 3, Some(KEY))),
        [None]
    );
    assert_eq!(violations(SERVER, &frame(OPCODE_TEXT, 3, None)), [None]);
}

#[test]
fn rsv_bits_without_an_extension_are_protocol_errors() {
    for rsv in [0x40, 0x20, 0x10] {
        assert_eq!(
            violations(SERVER, &raw(0x80 | rsv | OPCODE_TEXT, None)),
            [Some(Violation::ReservedBits(rsv >> 4))]
        );
    }
}

#[test]
fn with_permessage_deflate_rsv1_marks_only_a_first_data_frame() {
    let deflate = Rules {
        from_client: false,
        deflate: true,
    };
    // A compressed message in two fragments: RSV1 on the first only (RFC 7692 §6.1).
    let mut data = raw(0x40 | OPCODE_TEXT, None);
    data.extend(raw(0x80 | OPCODE_CONTINUATION, None));
    data.extend(raw(0x80 | 0x40 | OPCODE_BINARY, None));
    assert_eq!(violations(deflate, &data), [None, None, None]);
    // Not on a continuation, a control frame, or as RSV2/RSV3.
    let mut data = raw(OPCODE_TEXT, None);
    data.extend(raw(0x80 | 0x40 | OPCODE_CONTINUATION, None));
    assert_eq!(
        violations(deflate, &data),
        [None, Some(Violation::ReservedBits(0b100))]
    );
    assert_eq!(
        violations(deflate, &raw(0x80 | 0x40 | OPCODE_PING, None)),
        [Some(Violation::ReservedBits(0b100))]
    );
    assert_eq!(
        violations(deflate, &raw(0x80 | 0x60 | OPCODE_TEXT, None)),
        [Some(Violation::ReservedBits(0b110))]
    );
}

#[test]
fn fragments_must_continue_an_open_message_and_only_that() {
    let stray = header(true, OPCODE_CONTINUATION, 0, None);
    assert_eq!(
        violations(SERVER, &stray),
        [Some(Violation::StrayContinuation)]
    );
    // A control frame may come between fragments; a new message may not (§5.4).
    let mut data = header(false, OPCODE_TEXT, 0, None);
    data.extend(frame(OPCODE_PING, 1, None));
    data.extend(header(true, OPCODE_BINARY, 0, None));
    data.extend(header(true, OPCODE_CONTINUATION, 0, None));
    data.extend(stray.clone());
    assert_eq!(
        violations(SERVER, &data),
        [
            None,
            None,
            Some(Violation::InterleavedMessage),
            None,
            Some(Violation::StrayContinuation)
        ]
    );
}

#[test]
fn an_unchecked_tracker_finds_no_violation() {
    let mut t = FrameTracker::new();
    t.feed(&frame(0x3, 0, None));
    assert_eq!(t.violation(), None);
}
