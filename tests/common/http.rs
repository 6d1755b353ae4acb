//! HTTP helpers: a ureq agent that returns 4xx/5xx as responses, and a raw TCP client
//! for requests a client library will not send (wrong framing, no Content-Type, aborts).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// Status, Content-Type and body of one HTTP answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON, or `Value::Null` with the text kept for messages.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A keep-alive ureq agent: 4xx/5xx are answers, not errors; 10 s overall timeout.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// POST `body` to `url` with an optional Content-Type, through `agent`.
pub fn post_with(agent: &ureq::Agent, url: &str, body: &[u8], content_type: Option<&str>) -> Reply {
    let mut req = agent.post(url);
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    let mut resp = req.send(body).unwrap_or_else(|e| panic!("POST {url}: {e}"));
    to_reply(&mut resp, url)
}

/// POST `body` as application/json; `Err` when there is no answer (connection refused or closed).
pub fn try_post_with(agent: &ureq::Agent, url: &str, body: &[u8]) -> Result<Reply, ureq::Error> {
    let mut resp = agent.post(url).header("Content-Type", "application/json").send(body)?;
    Ok(to_reply(&mut resp, url))
}

/// POST `body` as application/json on a fresh agent.
pub fn post(url: &str, body: &[u8]) -> Reply {
    post_with(&agent(), url, body, Some("application/json"))
}

/// GET `url` on a fresh agent.
pub fn get(url: &str) -> Reply {
    try_get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// GET `url`; transport errors (connection refused, reset) are returned, not panicked.
pub fn try_get(url: &str) -> Result<Reply, ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut resp = agent.get(url).call()?;
    Ok(to_reply(&mut resp, url))
}

fn to_reply(resp: &mut ureq::http::Response<ureq::Body>, url: &str) -> Reply {
    let status = resp.status().as_u16();
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = resp.body_mut().read_to_vec().unwrap_or_else(|e| panic!("reading the answer of {url}: {e}"));
    Reply { status, content_type, body }
}

/// Sends `head` (request line and headers, CRLF-terminated, without the blank line),
/// a `Connection: close` header, the blank line and `body`, then reads the whole answer.
/// Write errors after the head are ignored: the server may answer and close early.
pub fn raw_request(addr: &str, head: &str, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    let mut request = head.as_bytes().to_vec();
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    stream.write_all(&request).expect("write request head");
    let _ = stream.write_all(body);
    let _ = stream.flush();
    read_reply(&mut stream).unwrap_or_else(|e| panic!("raw request to {addr}: {e}\n{head}"))
}

/// A POST with a Content-Length larger than the bytes sent, whose write side is then
/// closed: the body cannot be read in full. Returns the answer if one comes.
pub fn aborted_post(addr: &str, path: &str, declared: usize, sent: &[u8]) -> Option<Reply> {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("write head");
    stream.write_all(sent).expect("write partial body");
    let _ = stream.shutdown(Shutdown::Write);
    read_reply(&mut stream).ok()
}

/// Reads one HTTP/1.1 answer until EOF or its Content-Length / chunked end.
pub fn read_reply(stream: &mut TcpStream) -> Result<Reply, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("connection closed before a full answer: {:?}", String::from_utf8_lossy(&buf)));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut content_type = None;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-type" => content_type = Some(value.to_string()),
                "content-length" => content_length = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
    }
    let mut body = buf[header_end + 4..].to_vec();
    loop {
        let done = match (content_length, chunked) {
            (Some(len), _) => body.len() >= len,
            (None, true) => find(&body, b"0\r\n\r\n").is_some(),
            (None, false) => false,
        };
        if done {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if body.is_empty() && content_length != Some(0) => return Err(format!("reading body: {e}")),
            Err(_) => break,
        }
    }
    if let Some(len) = content_length {
        body.truncate(len);
    } else if chunked {
        body = dechunk(&body);
    }
    Ok(Reply { status, content_type, body })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a chunked transfer-encoded body (no trailers expected).
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = find(data, b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..i]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = i + 2;
        let end = (start + size).min(data.len());
        out.extend_from_slice(&data[start..end]);
        data = &data[(end + 2).min(data.len())..];
    }
    out
}
