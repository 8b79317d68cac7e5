//! Where HTTP/2 frames begin and end in a byte stream (RFC 9113 §4.1), read
//! from the 9-byte frame headers alone: enough to know whether a frame or
//! a header block is half received, and how much DATA has been written.
//! Nothing is decoded; the HTTP/2 implementation does that.

const HEADER_LEN: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Follows the frames of one direction of a connection.
#[derive(Debug, Default)]
pub struct FrameTracker {
    header: [u8; HEADER_LEN],
    /// Bytes of the current frame header seen so far.
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    kind: u8,
    flags: u8,
    /// A header block (HEADERS, then CONTINUATION up to END_HEADERS) has
    /// begun and not ended.
    in_header_block: bool,
}

/// What one call of [`FrameTracker::feed`] saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// DATA payload bytes.
    pub data_bytes: usize,
    /// Frames that ended.
    pub frames_ended: usize,
}

impl FrameTracker {
    /// Follows `bytes`, the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Fed {
        let mut fed = Fed::default();
        while !bytes.is_empty() {
            if self.header_len < HEADER_LEN {
                let take = (HEADER_LEN - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.header_len < HEADER_LEN {
                    break;
                }
                let h = self.header;
                self.payload_left = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                (self.kind, self.flags) = (h[3], h[4]);
                if self.kind == HEADERS {
                    self.in_header_block = true;
                }
            }
            let take = self.payload_left.min(bytes.len());
            if self.kind == DATA {
                fed.data_bytes += take;
            }
            self.payload_left -= take;
            bytes = &bytes[take..];
            if self.payload_left == 0 {
                if matches!(self.kind, HEADERS | CONTINUATION) && self.flags & END_HEADERS != 0 {
                    self.in_header_block = false;
                }
                self.header_len = 0;
                fed.frames_ended += 1;
            }
        }
        fed
    }

    /// A frame has begun and not ended.
    pub fn mid_frame(&self) -> bool {
        self.header_len > 0
    }

    /// A header block has begun and not ended.
    pub fn in_header_block(&self) -> bool {
        self.in_header_block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn follows_frames_split_anywhere() {
        let mut bytes = frame(0x4, 0, &[]);
        bytes.extend(frame(HEADERS, 0, &[1; 10]));
        bytes.extend(frame(CONTINUATION, END_HEADERS, &[2; 5]));
        bytes.extend(frame(DATA, 0, &[3; 100]));
        for split in 0..bytes.len() {
            let mut t = FrameTracker::default();
            let a = t.feed(&bytes[..split]);
            let b = t.feed(&bytes[split..]);
            assert_eq!(a.data_bytes + b.data_bytes, 100, "split at {split}");
            assert_eq!(a.frames_ended + b.frames_ended, 4);
            assert!(!t.mid_frame() && !t.in_header_block());
        }
    }

    #[test]
    fn a_header_block_is_open_until_end_headers() {
        let mut t = FrameTracker::default();
        t.feed(&frame(HEADERS, 0, &[1; 10])[..3]);
        assert!(t.mid_frame());
        let mut t = FrameTracker::default();
        t.feed(&frame(HEADERS, 0, &[1; 10]));
        assert!(!t.mid_frame() && t.in_header_block());
        t.feed(&frame(CONTINUATION, 0, &[1; 10]));
        assert!(t.in_header_block());
        t.feed(&frame(CONTINUATION, END_HEADERS, &[1; 10]));
        assert!(!t.in_header_block());
        t.feed(&frame(HEADERS, END_HEADERS, &[1; 10]));
        assert!(!t.in_header_block());
    }
}
