//! RFC 6455 §5.2 frame boundaries in a byte stream: a tiny state machine that follows frame
//! headers and skips payloads without copying or unmasking them. No I/O, no allocation.

/// Opcode of a Close frame (RFC 6455 §5.5.1).
pub const OPCODE_CLOSE: u8 = 0x8;

/// Longest frame header: 2 bytes, 8 bytes of extended length, 4 bytes of mask key.
const MAX_HEADER: usize = 14;

/// Follows frame boundaries in one direction of a WebSocket connection.
#[derive(Debug, Default, Clone)]
pub struct FrameTracker {
    header: [u8; MAX_HEADER],
    /// Header bytes collected so far (0 = between frames, or in a payload).
    have: u8,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// Opcode of the frame whose payload is being skipped.
    opcode: u8,
    /// Frames whose header has been read.
    frames: u64,
    /// A Close frame's header has been seen.
    close_seen: bool,
}

/// What [`FrameTracker::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Bytes consumed from the input.
    pub consumed: usize,
    /// The consumed bytes end exactly at a frame boundary.
    pub boundary: bool,
}

impl FrameTracker {
    /// Whether the stream is between two frames.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Frames whose header has been seen.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Whether a Close frame has been seen.
    pub fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// Length of the header whose first bytes are collected, once that is known.
    /// RFC 6455 §5.2: payload length 126 means a 16-bit length follows, 127 a 64-bit one;
    /// the MASK bit adds a 4-byte masking key.
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let ext = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        }
    }

    /// Consumes `data` up to the end of the current frame (or all of it, if the frame
    /// continues past it). Call again with the rest to walk several frames.
    pub fn feed(&mut self, data: &[u8]) -> Fed {
        let mut i = 0;
        while i < data.len() {
            if self.remaining > 0 {
                let take = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - i);
                i += take;
                self.remaining -= take as u64;
                return Fed {
                    consumed: i,
                    boundary: self.remaining == 0,
                };
            }
            // Collect header bytes; the needed length grows once the second byte is in.
            let need = self.header_len();
            let take = (need - usize::from(self.have)).min(data.len() - i);
            let have = usize::from(self.have);
            self.header[have..have + take].copy_from_slice(&data[i..i + take]);
            self.have += take as u8;
            i += take;
            if usize::from(self.have) == self.header_len() {
                self.opcode = self.header[0] & 0x0f;
                self.frames += 1;
                if self.opcode == OPCODE_CLOSE {
                    self.close_seen = true;
                }
                self.remaining = self.payload_len();
                self.have = 0;
                if self.remaining == 0 {
                    return Fed {
                        consumed: i,
                        boundary: true,
                    };
                }
            }
        }
        Fed {
            consumed: i,
            boundary: self.at_boundary(),
        }
    }
}

/// The largest Close frame: 2-byte header, 4-byte mask, 125 bytes of payload.
pub const MAX_CLOSE_FRAME: usize = 2 + 4 + 125;

/// Encodes a Close frame (RFC 6455 §5.5.1: 2-byte status code, then a UTF-8 reason; at most
/// 125 payload bytes, so a longer reason is cut at a character boundary). With `mask`, the
/// payload is masked as frames from a client must be (§5.3).
pub fn close_frame(
    code: u16,
    reason: &str,
    mask: Option<[u8; 4]>,
) -> ([u8; MAX_CLOSE_FRAME], usize) {
    let mut reason_len = reason.len().min(123);
    while !reason.is_char_boundary(reason_len) {
        reason_len -= 1;
    }
    let payload_len = 2 + reason_len;
    let mut frame = [0u8; MAX_CLOSE_FRAME];
    frame[0] = 0x80 | OPCODE_CLOSE; // FIN + Close
    frame[1] = payload_len as u8;
    let mut at = 2;
    if let Some(key) = mask {
        frame[1] |= 0x80;
        frame[2..6].copy_from_slice(&key);
        at = 6;
    }
    frame[at..at + 2].copy_from_slice(&code.to_be_bytes());
    frame[at + 2..at + payload_len].copy_from_slice(&reason.as_bytes()[..reason_len]);
    if let Some(key) = mask {
        for (j, b) in frame[at..at + payload_len].iter_mut().enumerate() {
            *b ^= key[j % 4];
        }
    }
    (frame, at + payload_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a frame header for tests.
    fn header(opcode: u8, len: u64, mask: bool) -> Vec<u8> {
        let mut h = vec![0x80 | opcode];
        let m = if mask { 0x80 } else { 0 };
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
        if mask {
            h.extend_from_slice(&[1, 2, 3, 4]);
        }
        h
    }

    fn frame(opcode: u8, len: usize, mask: bool) -> Vec<u8> {
        let mut f = header(opcode, len as u64, mask);
        f.extend(std::iter::repeat_n(0xaa, len));
        f
    }

    /// Feeds `data` in pieces of `step` bytes; returns the offsets of every boundary.
    fn boundaries(data: &[u8], step: usize) -> Vec<usize> {
        let mut t = FrameTracker::default();
        let mut out = Vec::new();
        let mut pos = 0;
        for chunk in data.chunks(step) {
            let mut i = 0;
            while i < chunk.len() {
                let fed = t.feed(&chunk[i..]);
                i += fed.consumed;
                if fed.boundary {
                    out.push(pos + i);
                }
            }
            pos += chunk.len();
        }
        out
    }

    #[test]
    fn each_length_encoding_ends_at_the_right_byte() {
        for (len, mask) in [
            (0, false),
            (5, true),
            (125, false),
            (126, true),
            (70_000, false),
            (65_535, true),
        ] {
            let f = frame(0x2, len, mask);
            assert_eq!(
                boundaries(&f, f.len()),
                vec![f.len()],
                "len {len} mask {mask}"
            );
        }
    }

    #[test]
    fn several_frames_in_one_read_and_headers_split_at_every_byte() {
        let mut data = frame(0x1, 3, true);
        data.extend(frame(0x9, 0, true));
        data.extend(frame(0x2, 300, true));
        data.extend(frame(0x0, 70_000, true));
        let expected = boundaries(&data, data.len());
        assert_eq!(expected.len(), 4);
        for step in 1..20 {
            assert_eq!(boundaries(&data, step), expected, "step {step}");
        }
    }

    #[test]
    fn huge_declared_length_is_only_counted() {
        let mut t = FrameTracker::default();
        let fed = t.feed(&header(0x2, u64::MAX / 2, false));
        assert!(!fed.boundary);
        assert_eq!(t.remaining, u64::MAX / 2);
        assert!(!t.at_boundary());
    }

    #[test]
    fn close_frames_are_noticed_and_counted() {
        let mut t = FrameTracker::default();
        let (f, n) = close_frame(1000, "bye", None);
        let fed = t.feed(&f[..n]);
        assert_eq!(
            fed,
            Fed {
                consumed: n,
                boundary: true
            }
        );
        assert!(t.close_seen());
        assert_eq!(t.frames(), 1);
    }

    #[test]
    fn close_frame_encodes_code_reason_and_mask() {
        let (f, n) = close_frame(1008, "origin not allowed", None);
        assert_eq!(&f[..4], &[0x88, 20, 0x03, 0xf0]);
        assert_eq!(&f[4..n], b"origin not allowed");
        let (m, mn) = close_frame(1008, "origin not allowed", Some([1, 2, 3, 4]));
        assert_eq!(mn, n + 4);
        assert_eq!(m[1], 0x80 | 20);
        let unmasked: Vec<u8> = m[6..mn]
            .iter()
            .enumerate()
            .map(|(j, b)| b ^ [1, 2, 3, 4][j % 4])
            .collect();
        assert_eq!(&unmasked[..], &f[2..n]);
        let long = "é".repeat(100);
        let (_, ln) = close_frame(1000, &long, None);
        assert!(ln <= 2 + 125);
    }
}
