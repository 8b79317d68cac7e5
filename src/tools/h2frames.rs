//! Hand-written HTTP/2 frames (RFC 9113), enough to misbehave with: what
//! the hostile-client tests and `bench hostile` send to a replica.

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn settings() -> Vec<u8> {
    frame(SETTINGS, 0, 0, &[])
}

/// A header block of literal fields (no indexing, no Huffman).
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        for text in [name, value] {
            string_length(&mut out, text.len());
            out.extend_from_slice(text.as_bytes());
        }
    }
    out
}

/// An HPACK string length: an integer with a 7-bit prefix (RFC 7541 5.1).
fn string_length(out: &mut Vec<u8>, len: usize) {
    if len < 127 {
        out.push(len as u8);
        return;
    }
    out.push(127);
    let mut rest = len - 127;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// The headers of a unary call to `path`.
pub fn request(path: &str) -> Vec<u8> {
    request_with(path, None)
}

/// ... carrying client credentials ([`crate::auth`]) when given.
pub fn request_with(path: &str, credentials: Option<&str>) -> Vec<u8> {
    let mut fields = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "replica"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ];
    if let Some(credentials) = credentials {
        fields.push((crate::auth::AUTH_HEADER, credentials));
    }
    block(&fields)
}

pub fn headers(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(HEADERS, flags, stream, block)
}

pub fn continuation(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(CONTINUATION, flags, stream, block)
}

pub fn rst(stream: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &8u32.to_be_bytes())
}

/// What a client sends to open a Watch with data that it then never
/// reads: it announces a window of zero (SETTINGS_INITIAL_WINDOW_SIZE).
pub fn unread_watch() -> Vec<u8> {
    unread_watches(1)
}

/// A connection opening `streams` Watches with data that it never reads.
pub fn unread_watches(streams: u32) -> Vec<u8> {
    unread_watches_with(streams, None)
}

/// ... with client credentials when given.
pub fn unread_watches_with(streams: u32, credentials: Option<&str>) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    let request = request_with("/mindoo.replica.v1.Store/Watch", credentials);
    for i in 0..streams {
        let stream = 2 * i + 1;
        out.extend(headers(stream, END_HEADERS, &request));
        // A WatchRequest with include_data (field 2) set, gRPC length-prefixed.
        out.extend(frame(
            DATA,
            END_STREAM,
            stream,
            &[0, 0, 0, 0, 2, 0x10, 0x01],
        ));
    }
    out
}

const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
pub const ACK: u8 = 0x1;

/// A WINDOW_UPDATE opening `stream`'s window (0: the connection's) by
/// `increment` bytes.
pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(
        WINDOW_UPDATE,
        0,
        stream,
        &(increment & 0x7fff_ffff).to_be_bytes(),
    )
}

/// One frame as read off a connection.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn is_data(&self) -> bool {
        self.kind == DATA
    }

    pub fn is_ping(&self) -> bool {
        self.kind == PING && self.flags & ACK == 0
    }

    pub fn is_goaway(&self) -> bool {
        self.kind == 0x7
    }

    /// The answer to a PING: the same payload, acknowledged.
    pub fn ping_ack(&self) -> Vec<u8> {
        frame(PING, ACK, 0, &self.payload)
    }
}

/// Reads the next frame the server sends; an error once it closes.
pub async fn read_frame(conn: &mut (impl tokio::io::AsyncRead + Unpin)) -> std::io::Result<Frame> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    conn.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    conn.read_exact(&mut payload).await?;
    Ok(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// Reads what the server sends, answering its PINGs (as a live client
/// does) but nothing else, until it closes the connection.
pub async fn answer_pings_until_closed(conn: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    while let Ok(frame) = read_frame(conn).await {
        if frame.is_ping() && conn.write_all(&frame.ping_ack()).await.is_err() {
            return;
        }
    }
}
