//! A deliberately small HTTP/1.1 client over `std::net`, so the tests see exactly
//! what happens on the wire: which connection, which bytes, which header.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }

    /// Whether the server said it closes the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// How reading a response failed.
#[derive(Debug)]
pub enum ReadError {
    /// The connection ended (EOF or reset) before a single byte of a response:
    /// the server never took the request.
    Nothing(io::Error),
    /// Part of a response arrived, or it was malformed: a broken request.
    Broken(String),
}

pub fn write_request(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)
}

pub fn read_response(reader: &mut impl BufRead) -> Result<Response, ReadError> {
    let broken = |what: String| ReadError::Broken(what);
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => {
            return Err(ReadError::Nothing(io::Error::from(
                io::ErrorKind::UnexpectedEof,
            )));
        }
        Ok(_) => {}
        Err(e) if line.is_empty() => return Err(ReadError::Nothing(e)),
        Err(e) => return Err(broken(format!("status line: {e}"))),
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| broken(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Err(broken("EOF in headers".into())),
            Ok(_) => {}
            Err(e) => return Err(broken(format!("headers: {e}"))),
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| broken(format!("bad header {line:?}")))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if let Some(length) = response.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| broken(format!("bad content-length {length}")))?;
        response.body.resize(length, 0);
        reader
            .read_exact(&mut response.body)
            .map_err(|e| broken(format!("body: {e}")))?;
    } else if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            reader
                .read_line(&mut size)
                .map_err(|e| broken(format!("chunk: {e}")))?;
            let size = usize::from_str_radix(size.trim(), 16)
                .map_err(|_| broken(format!("bad chunk size {size:?}")))?;
            let mut chunk = vec![0; size + 2];
            reader
                .read_exact(&mut chunk)
                .map_err(|e| broken(format!("chunk: {e}")))?;
            if size == 0 {
                break;
            }
            response.body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader
            .read_to_end(&mut response.body)
            .map_err(|e| broken(format!("body: {e}")))?;
    }
    Ok(response)
}

pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One request on a fresh connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> io::Result<Response> {
    let mut stream = connect(addr)?;
    write_request(&mut stream, method, path, content_type, body, true)?;
    read_response(&mut BufReader::new(stream)).map_err(|e| match e {
        ReadError::Nothing(e) => e,
        ReadError::Broken(what) => io::Error::other(what),
    })
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, None, b"").unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

pub fn send_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    value: &serde_json::Value,
) -> Response {
    let body = serde_json::to_vec(value).unwrap();
    request(addr, method, path, Some("application/json"), &body)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}
