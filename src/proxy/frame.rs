//! RFC 6455 frame boundaries in one direction of a byte stream, and the Close frame encoder.
//! Owns framing only: no I/O, no HTTP, no policy, no Kubernetes, and no allocation.
//!
//! [`FrameTracker`] follows frame headers (§5.2) and counts payload bytes without copying or
//! unmasking them, so the relay can tell where one frame ends and the next begins. Given
//! [`Rules`], it also checks each header against RFC 6455 and RFC 7692 and names what is
//! wrong with it ([`Violation`]) as soon as the header is complete, before any of its payload.

/// Opcode of a continuation frame (RFC 6455 §5.2, §5.4).
pub const OPCODE_CONTINUATION: u8 = 0x0;
/// Opcode of a text frame (RFC 6455 §5.6).
pub const OPCODE_TEXT: u8 = 0x1;
/// Opcode of a binary frame (RFC 6455 §5.6).
pub const OPCODE_BINARY: u8 = 0x2;
/// Opcode of a Close frame (RFC 6455 §5.5.1).
pub const OPCODE_CLOSE: u8 = 0x8;
/// Opcode of a Ping frame (RFC 6455 §5.5.2).
pub const OPCODE_PING: u8 = 0x9;
/// Opcode of a Pong frame (RFC 6455 §5.5.3).
pub const OPCODE_PONG: u8 = 0xA;

/// Longest frame header (RFC 6455 §5.2): 2 bytes, an 8-byte extended length, a 4-byte mask key.
pub const MAX_HEADER: usize = 14;
/// Largest payload of a control frame, and so of a Close frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Largest encoded Close frame: 2-byte header, 4-byte mask key, 125 payload bytes.
pub const MAX_CLOSE_FRAME: usize = 2 + 4 + MAX_CONTROL_PAYLOAD;

/// The fields of one frame header (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: this is the last fragment of a message.
    pub fin: bool,
    /// RSV1, RSV2, RSV3 as the low three bits (nonzero only with a negotiated extension).
    pub rsv: u8,
    /// The opcode (low four bits of the first byte).
    pub opcode: u8,
    /// The masking key, present on every client-to-server frame (§5.3).
    pub mask: Option<[u8; 4]>,
    /// Declared payload length in bytes.
    pub payload_len: u64,
}

impl FrameHeader {
    /// Whether this is a control frame (Close, Ping, Pong): opcodes with the high bit set (§5.5).
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// What frames from one side may carry, for [`FrameTracker::checked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Frames come from a client, so each must be masked; from a server, none may be
    /// (RFC 6455 §5.1, §5.3).
    pub from_client: bool,
    /// `permessage-deflate` was negotiated: RSV1 may mark the first frame of a data message
    /// (RFC 7692 §6).
    pub deflate: bool,
}

/// What makes a frame header a protocol error (RFC 6455 §7.4.1: Close 1002).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// An opcode RFC 6455 reserves: 0x3-0x7 and 0xB-0xF (§5.2).
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A control frame with more than 125 payload bytes (§5.5). Its length is not kept, so
    /// the tracker stays small.
    #[error("control frame over 125 bytes")]
    ControlTooLong,
    /// A control frame without FIN: control frames are never fragmented (§5.5).
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A Close payload of one byte: half a status code (§5.5.1).
    #[error("Close frame with a 1-byte payload")]
    CloseCodeCut,
    /// A client frame without a masking key (§5.1).
    #[error("unmasked frame from the client")]
    Unmasked,
    /// A server frame with a masking key (§5.1).
    #[error("masked frame from the server")]
    Masked,
    /// RSV bits no negotiated extension defines (§5.2; RFC 7692 §6 for RSV1).
    #[error("reserved bits {0:#05b} set")]
    ReservedBits(u8),
    /// A continuation frame with no fragmented message open (§5.4).
    #[error("continuation frame outside a message")]
    StrayContinuation,
    /// A text or binary frame while a fragmented message is still open (§5.4).
    #[error("new message inside a fragmented one")]
    InterleavedMessage,
}

impl Rules {
    /// What is wrong with `h`, if anything, given whether a fragmented data message is open
    /// before it.
    fn check(self, h: &FrameHeader, in_message: bool) -> Option<Violation> {
        let reserved_opcode = !matches!(
            h.opcode,
            OPCODE_CONTINUATION
                | OPCODE_TEXT
                | OPCODE_BINARY
                | OPCODE_CLOSE
                | OPCODE_PING
                | OPCODE_PONG
        );
        // RFC 7692 §6: RSV1 ("Per-Message Compressed") only on a message's first frame.
        let rsv1_allowed = self.deflate && matches!(h.opcode, OPCODE_TEXT | OPCODE_BINARY);
        let allowed_rsv = if rsv1_allowed { 0b100 } else { 0 };
        if reserved_opcode {
            Some(Violation::ReservedOpcode(h.opcode))
        } else if h.mask.is_some() != self.from_client {
            Some(if self.from_client {
                Violation::Unmasked
            } else {
                Violation::Masked
            })
        } else if h.rsv & !allowed_rsv != 0 {
            Some(Violation::ReservedBits(h.rsv))
        } else if h.is_control() && h.payload_len > MAX_CONTROL_PAYLOAD as u64 {
            Some(Violation::ControlTooLong)
        } else if h.is_control() && !h.fin {
            Some(Violation::FragmentedControl)
        } else if h.opcode == OPCODE_CLOSE && h.payload_len == 1 {
            Some(Violation::CloseCodeCut)
        } else if h.opcode == OPCODE_CONTINUATION && !in_message {
            Some(Violation::StrayContinuation)
        } else if matches!(h.opcode, OPCODE_TEXT | OPCODE_BINARY) && in_message {
            Some(Violation::InterleavedMessage)
        } else {
            None
        }
    }
}

/// What one call of [`FrameTracker::feed`] consumed and found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Bytes consumed from the input.
    pub consumed: usize,
    /// The consumed bytes completed a frame header: [`FrameTracker::current`] describes it.
    pub header: bool,
    /// The consumed bytes end exactly at a frame boundary (between two frames).
    pub boundary: bool,
}

/// Follows frame boundaries in one direction of a WebSocket connection.
///
/// A state machine over the byte stream: header bytes collected so far (inline, at most
/// [`MAX_HEADER`]), payload bytes still to come, and the header of the current frame.
/// A declared length of any size is only counted, never allocated.
#[derive(Debug, Clone, Default)]
pub struct FrameTracker {
    /// The header being collected.
    header: [u8; MAX_HEADER],
    /// Header bytes collected so far; 0 between frames and inside a payload.
    have: u8,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// The last header completed.
    current: FrameHeader,
    /// Headers completed so far.
    frames: u64,
    /// A Close frame's header has been seen.
    close_seen: bool,
    /// The first Close frame's payload is being skipped: its status code is being captured.
    capturing: bool,
    /// The first two payload bytes of the first Close frame, unmasked.
    code_bytes: [u8; 2],
    /// The status code of the first Close frame, once its two bytes are in.
    close_code: Option<u16>,
    /// What each header is checked against; `None`: headers are only followed.
    rules: Option<Rules>,
    /// A data message's first frame without FIN went by and its final frame has not (§5.4).
    in_message: bool,
    /// What is wrong with the last header completed, if it was checked.
    violation: Option<Violation>,
}

impl FrameTracker {
    /// A tracker at the start of a stream (a frame boundary).
    pub fn new() -> FrameTracker {
        FrameTracker::default()
    }

    /// A tracker at the start of a stream that also checks every header against `rules`;
    /// see [`FrameTracker::violation`].
    pub fn checked(rules: Rules) -> FrameTracker {
        FrameTracker {
            rules: Some(rules),
            ..FrameTracker::default()
        }
    }

    /// What is wrong with the header of the current frame (the last one completed), if it
    /// was checked. A frame in violation does not change the fragmentation state, so the
    /// frames after it are checked as if it had not been sent.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// Whether the stream is between two frames.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// The header of the frame in progress (or of the last frame, at a boundary).
    pub fn current(&self) -> FrameHeader {
        self.current
    }

    /// Header bytes collected so far of a header not yet complete (0 at a boundary and
    /// inside a payload).
    pub fn partial_header(&self) -> usize {
        usize::from(self.have)
    }

    /// The header bytes collected so far of a header not yet complete (empty at a boundary
    /// and inside a payload).
    pub fn partial_bytes(&self) -> &[u8] {
        &self.header[..usize::from(self.have)]
    }

    /// Payload bytes of the current frame still to come.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Frames whose header has been read.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Whether a Close frame's header has been seen.
    pub fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// The status code of the first Close frame seen, if it carried one (RFC 6455 §5.5.1).
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    /// Length of the header being collected, as far as its first bytes tell.
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

    /// Decodes the complete header in `self.header` (RFC 6455 §5.2).
    fn parse_header(&self) -> FrameHeader {
        let h = &self.header;
        let (payload_len, ext) = match h[1] & 0x7f {
            // §5.2: 126 → the next 2 bytes are a 16-bit unsigned length (network order).
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 2),
            // §5.2: 127 → the next 8 bytes are a 64-bit unsigned length (network order).
            127 => (
                u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                8,
            ),
            n => (u64::from(n), 0),
        };
        // §5.2: the masking key follows the length when MASK is set.
        let mask = (h[1] & 0x80 != 0).then(|| {
            let at = 2 + ext;
            [h[at], h[at + 1], h[at + 2], h[at + 3]]
        });
        FrameHeader {
            fin: h[0] & 0x80 != 0,
            rsv: (h[0] >> 4) & 0x7,
            opcode: h[0] & 0x0f,
            mask,
            payload_len,
        }
    }

    /// Consumes `data` up to the next event: the end of a header, the end of a frame, or the
    /// end of `data`. Call again with the rest (`data[consumed..]`) to walk several frames.
    pub fn feed(&mut self, data: &[u8]) -> Fed {
        if self.remaining > 0 {
            // Inside a payload (§5.2 "Payload data"): skipped, neither copied nor unmasked.
            let take = usize::try_from(self.remaining).map_or(data.len(), |r| r.min(data.len()));
            if self.capturing {
                self.capture_code(&data[..take]);
            }
            self.remaining -= take as u64;
            return Fed {
                consumed: take,
                header: false,
                boundary: self.remaining == 0,
            };
        }
        let mut i = 0;
        while i < data.len() {
            // The needed length grows once the second byte (length and MASK bit) is in.
            let have = usize::from(self.have);
            let take = (self.header_len() - have).min(data.len() - i);
            self.header[have..have + take].copy_from_slice(&data[i..i + take]);
            self.have += take as u8;
            i += take;
            if usize::from(self.have) == self.header_len() {
                self.current = self.parse_header();
                self.have = 0;
                self.remaining = self.current.payload_len;
                self.frames += 1;
                self.violation = self
                    .rules
                    .and_then(|rules| rules.check(&self.current, self.in_message));
                if self.violation.is_none() && !self.current.is_control() {
                    // §5.4: a message runs from its first frame to the one with FIN.
                    self.in_message = !self.current.fin;
                }
                if self.current.opcode == OPCODE_CLOSE && !self.close_seen {
                    self.close_seen = true;
                    // §5.5.1: a Close payload, if any, starts with a 2-byte status code.
                    self.capturing = self.remaining >= 2;
                }
                return Fed {
                    consumed: i,
                    header: true,
                    boundary: self.remaining == 0,
                };
            }
        }
        Fed {
            consumed: i,
            header: false,
            boundary: self.at_boundary(),
        }
    }

    /// Unmasks and keeps the first two payload bytes of the first Close frame: its status
    /// code (RFC 6455 §5.5.1; unmasking per §5.3: byte i XOR key[i mod 4]).
    fn capture_code(&mut self, payload: &[u8]) {
        let offset = self.current.payload_len - self.remaining;
        let key = self.current.mask.unwrap_or([0; 4]);
        for (j, &b) in payload.iter().enumerate() {
            let at = offset + j as u64;
            if at >= 2 {
                break;
            }
            let at = at as usize;
            self.code_bytes[at] = b ^ key[at % 4];
            if at == 1 {
                self.close_code = Some(u16::from_be_bytes(self.code_bytes));
                self.capturing = false;
            }
        }
    }
}

/// Encodes a Close frame without allocating (RFC 6455 §5.5.1): FIN and opcode 0x8, then a
/// payload of the 2-byte status code in network order and a UTF-8 reason, at most 125 bytes
/// in all, so a longer reason is cut at a character boundary. With `mask`, the frame is
/// masked as frames from a client must be (§5.3). Returns the buffer and the frame's length.
pub fn close_frame(
    code: u16,
    reason: &str,
    mask: Option<[u8; 4]>,
) -> ([u8; MAX_CLOSE_FRAME], usize) {
    let mut reason_len = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(reason_len) {
        reason_len -= 1;
    }
    let payload_len = 2 + reason_len;
    let mut frame = [0u8; MAX_CLOSE_FRAME];
    let at = control_header(&mut frame, OPCODE_CLOSE, payload_len, mask);
    frame[at..at + 2].copy_from_slice(&code.to_be_bytes());
    frame[at + 2..at + payload_len].copy_from_slice(&reason.as_bytes()[..reason_len]);
    apply_mask(&mut frame[at..at + payload_len], mask);
    (frame, at + payload_len)
}

/// Writes the header of a control frame (FIN set, `payload_len` ≤ 125) into `frame`, with
/// the masking key when there is one; returns where the payload starts.
fn control_header(
    frame: &mut [u8],
    opcode: u8,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    // §5.2: FIN (0x80) + opcode; one byte of length (≤125 needs no extended length).
    frame[0] = 0x80 | opcode;
    frame[1] = payload_len as u8;
    match mask {
        Some(key) => {
            // §5.2: MASK bit, then the 4-byte masking key before the payload.
            frame[1] |= 0x80;
            frame[2..6].copy_from_slice(&key);
            6
        }
        None => 2,
    }
}

/// Payload length of the gateway's own Ping frames.
pub const PING_PAYLOAD: usize = 8;
/// Longest encoded gateway Ping: 2-byte header, 4-byte mask key, the payload.
pub const MAX_PING_FRAME: usize = 2 + 4 + PING_PAYLOAD;

/// Encodes a Ping frame carrying `payload` (RFC 6455 §5.5.2), masked with `mask` when it goes
/// to a server (§5.3). Returns the buffer and the frame's length.
pub fn ping_frame(
    payload: [u8; PING_PAYLOAD],
    mask: Option<[u8; 4]>,
) -> ([u8; MAX_PING_FRAME], usize) {
    let mut frame = [0u8; MAX_PING_FRAME];
    let at = control_header(&mut frame, OPCODE_PING, PING_PAYLOAD, mask);
    frame[at..at + PING_PAYLOAD].copy_from_slice(&payload);
    apply_mask(&mut frame[at..at + PING_PAYLOAD], mask);
    (frame, at + PING_PAYLOAD)
}

/// Encodes a whole frame with `first` as its first byte (FIN, RSV bits, opcode) and
/// `payload`, masked with `mask` if given (RFC 6455 §5.2, §5.3), into a new buffer. Any
/// first byte is written as given, so a peer can send what the relay must refuse; the relay
/// itself sends only `close_frame` and `ping_frame`, which do not allocate.
pub fn encode(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.push(first);
    match payload.len() {
        n @ 0..=125 => frame.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if let Some(key) = mask {
        frame.extend_from_slice(&key);
    }
    let at = frame.len();
    frame.extend_from_slice(payload);
    apply_mask(&mut frame[at..], mask);
    frame
}

/// Masks or unmasks `payload` in place with `mask`, if any (RFC 6455 §5.3: octet i is
/// XORed with octet i mod 4 of the key, which undoes itself).
pub fn apply_mask(payload: &mut [u8], mask: Option<[u8; 4]>) {
    if let Some(key) = mask {
        for (j, b) in payload.iter_mut().enumerate() {
            *b ^= key[j % 4];
        }
    }
}

#[cfg(test)]
mod tests;
