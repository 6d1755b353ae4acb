//! Raw connections for the edge tests: requests on one kept-alive socket, slow clients, closure
//! detection, large or endless bodies written from another thread, and a minimal h2c client.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http::{self, Reply};

/// Connects to `addr`; reads time out after `read_timeout`, writes after 10 s.
pub fn connect(addr: &str, read_timeout: Duration) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(read_timeout)).expect("read timeout");
    stream.set_write_timeout(Some(Duration::from_secs(10))).expect("write timeout");
    let _ = stream.set_nodelay(true);
    stream
}

/// The head of a keep-alive `POST {path_query}` (Host, Content-Type application/json), `framing`
/// (e.g. `"Content-Length: 2\r\n"`) and the blank line.
pub fn post_head(addr: &str, path_query: &str, framing: &str) -> String {
    format!("POST {path_query} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{framing}\r\n")
}

/// Sends one keep-alive POST with a Content-Length on `stream` and reads its answer.
pub fn keep_alive_post(stream: &mut TcpStream, addr: &str, path_query: &str, body: &[u8]) -> Result<Reply, String> {
    let mut request = post_head(addr, path_query, &format!("Content-Length: {}\r\n", body.len())).into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).map_err(|e| format!("write: {e}"))?;
    http::read_reply(stream)
}

/// What a client saw until the server closed its connection (or it gave up waiting).
#[derive(Debug, Default)]
pub struct Closed {
    /// Time from the start of the wait until end of stream or reset; `None` if still open.
    pub after: Option<Duration>,
    /// Bytes received meanwhile (an answer the server sent before closing, say).
    pub received: Vec<u8>,
}

/// Reads from `stream`, keeping what arrives, until the server closes it or `timeout` passes.
pub fn wait_closed(stream: &mut TcpStream, timeout: Duration) -> Closed {
    let started = Instant::now();
    let mut closed = Closed::default();
    let mut buf = [0u8; 8192];
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return closed;
        }
        stream.set_read_timeout(Some(left.min(Duration::from_millis(100)))).expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => closed.received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => break,
        }
    }
    closed.after = Some(started.elapsed());
    closed
}

/// Writes `data` to a clone of `stream` from another thread in 64 KiB pieces, stopping at the first
/// error (the server closed, or a write blocked for 10 s); the thread returns the bytes written.
pub fn write_in_background(stream: &TcpStream, data: Vec<u8>) -> JoinHandle<usize> {
    let mut stream = stream.try_clone().expect("clone stream");
    std::thread::spawn(move || {
        let mut written = 0;
        for piece in data.chunks(64 * 1024) {
            if stream.write_all(piece).is_err() {
                break;
            }
            written += piece.len();
        }
        written
    })
}

/// Writes one-byte chunks (`1\r\nx\r\n`, never the last chunk) to a clone of `stream` every `every`
/// until a write fails or `until`; the thread returns how many it wrote.
pub fn drip_chunks(stream: &TcpStream, every: Duration, until: Instant) -> JoinHandle<usize> {
    let mut stream = stream.try_clone().expect("clone stream");
    std::thread::spawn(move || {
        let mut chunks = 0;
        while Instant::now() < until {
            if stream.write_all(b"1\r\nx\r\n").is_err() {
                break;
            }
            chunks += 1;
            std::thread::sleep(every);
        }
        chunks
    })
}

/// One connection of a slow client.
#[derive(Debug)]
pub struct SlowConn {
    /// From connect to the server's close; `None` when it was still open at the end.
    pub lifetime: Option<Duration>,
    /// Bytes of the prefix sent before it ended.
    pub sent: usize,
    /// Bytes the server sent (an error answer, if any).
    pub received: Vec<u8>,
}

/// A slow-loris client: connects to `addr` and sends `prefix` one byte every `every`; when the
/// server closes the connection it connects again, until `until`. The thread returns every connection.
pub fn slow_loris(addr: &str, prefix: Vec<u8>, every: Duration, until: Instant) -> JoinHandle<Vec<SlowConn>> {
    let addr = addr.to_string();
    std::thread::spawn(move || {
        let mut conns = Vec::new();
        while Instant::now() < until {
            let started = Instant::now();
            let Ok(mut stream) = TcpStream::connect(&addr) else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            stream.set_read_timeout(Some(every)).expect("read timeout");
            stream.set_write_timeout(Some(Duration::from_secs(2))).expect("write timeout");
            let mut conn = SlowConn { lifetime: None, sent: 0, received: Vec::new() };
            let mut buf = [0u8; 4096];
            // Reading with a timeout of `every` paces the bytes and notices the close at once.
            while Instant::now() < until {
                if conn.sent < prefix.len() {
                    if stream.write_all(&prefix[conn.sent..=conn.sent]).is_err() {
                        conn.lifetime = Some(started.elapsed());
                        break;
                    }
                    conn.sent += 1;
                }
                match stream.read(&mut buf) {
                    Ok(0) => {
                        conn.lifetime = Some(started.elapsed());
                        break;
                    }
                    Ok(n) => conn.received.extend_from_slice(&buf[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => {
                        conn.lifetime = Some(started.elapsed());
                        break;
                    }
                }
            }
            conns.push(conn);
        }
        conns
    })
}

/// The connection preface of HTTP/2 (RFC 9113 section 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The answer of a minimal HTTP/2 exchange.
#[derive(Debug)]
pub struct H2Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One HTTP/2 frame header and payload.
fn h2_frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    frame.extend_from_slice(&stream_id.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An HPACK integer with a `prefix_bits` prefix, `flags` in the bits above it (RFC 7541 section 5.1).
fn hpack_int(out: &mut Vec<u8>, flags: u8, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal header field without indexing, its name from static table entry `index`, the value
/// not Huffman-coded.
fn hpack_literal(out: &mut Vec<u8>, index: usize, value: &str) {
    hpack_int(out, 0x00, 4, index);
    hpack_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// Reads an HPACK integer with a `prefix_bits` prefix from `block` at `*pos`.
fn read_hpack_int(block: &[u8], pos: &mut usize, prefix_bits: u32) -> Option<usize> {
    let max = (1usize << prefix_bits) - 1;
    let mut value = (*block.get(*pos)? as usize) & max;
    *pos += 1;
    if value < max {
        return Some(value);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*pos)?;
        *pos += 1;
        value += ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
}

/// The `:status` of a response header block: the first field, indexed (static entries 8 to 14) or a
/// literal with name index 8 and a plain or Huffman-coded value of digits.
pub fn hpack_status(block: &[u8]) -> Option<u16> {
    let mut pos = 0;
    // Dynamic table size updates may come first.
    while block.get(pos).is_some_and(|b| b & 0xe0 == 0x20) {
        read_hpack_int(block, &mut pos, 5)?;
    }
    let first = *block.get(pos)?;
    if first & 0x80 != 0 {
        let index = read_hpack_int(block, &mut pos, 7)?;
        return [200, 204, 206, 304, 400, 404, 500].get(index.checked_sub(8)?).copied();
    }
    let prefix = if first & 0xc0 == 0x40 { 6 } else { 4 };
    if read_hpack_int(block, &mut pos, prefix)? != 8 {
        return None;
    }
    let huffman = block.get(pos)? & 0x80 != 0;
    let len = read_hpack_int(block, &mut pos, 7)?;
    let raw = block.get(pos..pos + len)?;
    let text = if huffman { huffman_digits(raw)? } else { String::from_utf8(raw.to_vec()).ok()? };
    text.parse().ok()
}

/// Decodes a Huffman-coded string of ASCII digits (RFC 7541 appendix B: '0'-'2' are 5 bits,
/// '3'-'9' 6 bits), ignoring the all-ones padding.
fn huffman_digits(raw: &[u8]) -> Option<String> {
    let bits: Vec<u8> = raw.iter().flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1)).collect();
    let value = |from: usize, n: usize| bits[from..from + n].iter().fold(0u8, |v, b| v << 1 | b);
    let mut text = String::new();
    let mut i = 0;
    while i + 5 <= bits.len() {
        let five = value(i, 5);
        if five <= 2 {
            text.push((b'0' + five) as char);
            i += 5;
        } else if i + 6 <= bits.len() && (0b011001..=0b011111).contains(&value(i, 6)) {
            text.push((b'0' + 3 + value(i, 6) - 0b011001) as char);
            i += 6;
        } else {
            break;
        }
    }
    bits[i..].iter().all(|b| *b == 1).then_some(text)
}

/// POSTs `body` to `path_query` over cleartext HTTP/2 with prior knowledge (a hand-written client:
/// preface, SETTINGS, one HEADERS and one DATA frame on stream 1), waiting at most `timeout`.
/// `Err` holds what the server did instead, with the bytes it sent.
pub fn h2c_post(addr: &str, path_query: &str, body: &[u8], timeout: Duration) -> Result<H2Reply, String> {
    let mut stream = connect(addr, timeout);
    let mut headers = Vec::new();
    headers.push(0x83); // :method POST
    headers.push(0x86); // :scheme http
    hpack_literal(&mut headers, 4, path_query); // :path
    hpack_literal(&mut headers, 1, addr); // :authority
    hpack_literal(&mut headers, 31, "application/json"); // content-type
    let mut out = H2_PREFACE.to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    out.extend(h2_frame(0x1, 0x4, 1, &headers));
    out.extend(h2_frame(0x0, 0x1, 1, body));
    stream.write_all(&out).map_err(|e| format!("write: {e}"))?;

    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    let mut status = None;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        // Parse every complete frame received so far.
        while received.len() >= 9 {
            let len = (received[0] as usize) << 16 | (received[1] as usize) << 8 | received[2] as usize;
            if received.len() < 9 + len {
                break;
            }
            let (kind, flags) = (received[3], received[4]);
            let stream_id = u32::from_be_bytes([received[5], received[6], received[7], received[8]]) & 0x7fff_ffff;
            let payload: Vec<u8> = received[9..9 + len].to_vec();
            received.drain(..9 + len);
            let unpadded = |p: &[u8]| -> Vec<u8> {
                if flags & 0x8 != 0 && !p.is_empty() {
                    let pad = p[0] as usize;
                    p[1..p.len().saturating_sub(pad)].to_vec()
                } else {
                    p.to_vec()
                }
            };
            match (kind, stream_id) {
                (0x4, 0) if flags & 0x1 == 0 => {
                    let _ = stream.write_all(&h2_frame(0x4, 0x1, 0, &[]));
                }
                (0x1, 1) => {
                    let mut block = unpadded(&payload);
                    if flags & 0x20 != 0 {
                        block.drain(..5.min(block.len()));
                    }
                    status = Some(hpack_status(&block).ok_or_else(|| format!("unreadable :status in {block:02x?}"))?);
                    if flags & 0x1 != 0 {
                        return Ok(H2Reply { status: status.unwrap_or_default(), body: answer });
                    }
                }
                (0x0, 1) => {
                    answer.extend(unpadded(&payload));
                    if flags & 0x1 != 0 {
                        return match status {
                            Some(status) => Ok(H2Reply { status, body: answer }),
                            None => Err("DATA before HEADERS".into()),
                        };
                    }
                }
                (0x3, 1) => return Err(format!("RST_STREAM {payload:02x?}")),
                (0x7, _) => return Err(format!("GOAWAY {payload:02x?}")),
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("no complete answer within {timeout:?}; pending bytes {:?}", lossy(&received)));
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err(format!("connection closed; pending bytes {:?}", lossy(&received))),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("read: {e}; pending bytes {:?}", lossy(&received))),
        }
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
