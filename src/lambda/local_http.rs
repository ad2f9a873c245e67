//! A minimal blocking HTTP/1.1 client for the Lambda Runtime API on
//! localhost: one keep-alive TCP connection, requests written in one piece,
//! responses read with `Content-Length`, chunked encoding or to the end.
//!
//! The Extensions API is plain HTTP on the loopback interface and only a few
//! calls are made per invoke, so a general client (ureq: pool checks, 128 KiB
//! buffers, TLS plumbing) costs more than it gives on the main thread and
//! at cold start. Sending and receiving are separate steps so the first
//! `event/next` can be on its way before the other threads are started.

use std::io::{self, Read, Write};
use std::net::TcpStream;

/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Longest response body accepted (lifecycle events are small).
const MAX_BODY: usize = 6 * 1024 * 1024;
/// Most header lines read in a response (Lambda sends a handful).
const MAX_HEADERS: usize = 64;

/// A response: status, headers (names as sent), body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One connection to `host:port`, reopened when the server closes it.
pub struct Connection {
    addr: String,
    stream: Option<TcpStream>,
    /// The last request, kept to resend once on a stale kept-alive socket.
    request: Vec<u8>,
    /// Bytes read but not yet consumed.
    buf: Vec<u8>,
    /// The last request went out on a connection that had served before.
    reused: bool,
}

impl Connection {
    pub fn new(addr: &str) -> Connection {
        Connection {
            addr: addr.to_string(),
            stream: None,
            request: Vec::new(),
            buf: Vec::new(),
            reused: false,
        }
    }

    /// Writes a request; `receive` reads its response.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<()> {
        self.request.clear();
        write_request(&mut self.request, &self.addr, method, path, headers, body);
        self.write_request()
    }

    /// Reads the response to the request last sent. If a kept-alive
    /// connection turns out to have been closed by the server while idle (end
    /// of stream or reset before any byte of an answer), the request is sent
    /// again on a new connection, once. On a fresh connection nothing is
    /// resent: the server may have acted on the request.
    pub fn receive(&mut self) -> io::Result<Response> {
        match self.read_response() {
            Err((e, true)) if self.reused && stale(&e) => {
                self.stream = None;
                self.write_request()?;
                self.read_response().map_err(|(e, _)| e)
            }
            r => r.map_err(|(e, _)| e),
        }
    }

    /// `send` then `receive`.
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        self.send(method, path, headers, body)?;
        self.receive()
    }

    fn write_request(&mut self) -> io::Result<()> {
        if let Some(stream) = self.stream.as_mut() {
            match stream.write_all(&self.request) {
                Ok(()) => {
                    self.reused = true;
                    return Ok(());
                }
                // Closed by the server while idle: reconnect below.
                Err(e) if stale(&e) => self.stream = None,
                Err(e) => {
                    self.stream = None;
                    return Err(e);
                }
            }
        }
        self.reused = false;
        let mut stream = TcpStream::connect(self.addr.as_str())?;
        stream.set_nodelay(true)?;
        self.buf.clear();
        stream.write_all(&self.request)?;
        self.stream = Some(stream);
        Ok(())
    }

    /// The response, or an error and whether no byte of an answer came.
    fn read_response(&mut self) -> Result<Response, (io::Error, bool)> {
        let Some(stream) = self.stream.as_mut() else {
            let e = io::Error::new(io::ErrorKind::NotConnected, "no request sent");
            return Err((e, false));
        };
        let mut counted = Counted {
            inner: stream,
            bytes: 0,
        };
        match read_response(&mut counted, &mut self.buf) {
            Ok((response, keep_alive)) => {
                if !keep_alive {
                    self.stream = None;
                }
                Ok(response)
            }
            Err(e) => {
                let nothing = counted.bytes == 0 && self.buf.is_empty();
                self.stream = None;
                Err((e, nothing))
            }
        }
    }
}

/// Errors that mean the peer had closed the connection.
fn stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Counts the bytes read through it.
struct Counted<'a, R> {
    inner: &'a mut R,
    bytes: usize,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.bytes += n;
        Ok(n)
    }
}

/// Serialises a request with `Content-Length` (always: Lambda reads it).
fn write_request(
    out: &mut Vec<u8>,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    use std::fmt::Write as _;
    let mut head = String::with_capacity(256);
    let _ = write!(head, "{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    let _ = write!(head, "Content-Length: {}\r\n\r\n", body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
}

/// Reads one response from `r`; `buf` carries bytes between responses.
/// Returns the response and whether the connection can be used again.
fn read_response<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<(Response, bool)> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("response head too long"));
        }
        if fill(r, buf)? == 0 {
            return Err(if buf.is_empty() {
                io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")
            } else {
                invalid("connection closed inside the response head")
            });
        }
    };
    let (status, headers) = parse_head(&buf[..head_end])?;
    buf.drain(..head_end);
    let response_header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    let mut keep_alive =
        !response_header("Connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let chunked = response_header("Transfer-Encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = match response_header("Content-Length") {
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| invalid("bad Content-Length"))?,
        ),
        None => None,
    };
    let body = if status / 100 == 1 || status == 204 || status == 304 {
        Vec::new()
    } else if chunked {
        read_chunked(r, buf)?
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(invalid("response body too large"));
        }
        while buf.len() < n {
            if fill(r, buf)? == 0 {
                return Err(invalid("connection closed inside the response body"));
            }
        }
        buf.drain(..n).collect()
    } else {
        // Delimited by the end of the connection.
        keep_alive = false;
        while fill(r, buf)? != 0 {
            if buf.len() > MAX_BODY {
                return Err(invalid("response body too large"));
            }
        }
        std::mem::take(buf)
    };
    Ok((
        Response {
            status,
            headers,
            body,
        },
        keep_alive,
    ))
}

/// Status code and headers of a response head (ending with the blank line).
fn parse_head(head: &[u8]) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(invalid("incomplete response head")),
        Err(e) => return Err(invalid(&format!("bad response head: {e}"))),
    }
    let status = response.code.ok_or_else(|| invalid("bad status line"))?;
    let headers = response
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value);
            (h.name.to_string(), value.trim().to_string())
        })
        .collect();
    Ok((status, headers))
}

/// Decodes a chunked body (trailers are read and ignored).
fn read_chunked<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r, buf)?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the blank line.
            while !read_line(r, buf)?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(invalid("response body too large"));
        }
        while buf.len() < size + 2 {
            if fill(r, buf)? == 0 {
                return Err(invalid("connection closed inside a chunk"));
            }
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(invalid("chunk not followed by CRLF"));
        }
        buf.drain(..size + 2);
    }
}

fn read_line<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<String> {
    loop {
        if let Some(i) = find(buf, b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 2);
            return Ok(line);
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("chunk line too long"));
        }
        if fill(r, buf)? == 0 {
            return Err(invalid("connection closed inside a chunked body"));
        }
    }
}

/// Appends what one read returns; 0 at the end of the stream.
fn fill<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        match r.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Where `needle` first starts in `haystack` (HTTP head ends, line ends).
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `step` bytes per read.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn read_all(data: &[u8], step: usize) -> Vec<io::Result<(Response, bool)>> {
        let mut r = Trickle { data, step };
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let res = read_response(&mut r, &mut buf);
            let stop = match &res {
                Ok((_, keep_alive)) => !keep_alive,
                Err(_) => true,
            };
            out.push(res);
            if stop {
                return out;
            }
        }
    }

    #[test]
    fn content_length_responses_back_to_back_in_any_pieces() {
        let data = b"HTTP/1.1 200 OK\r\nLambda-Extension-Identifier: abc\r\ncontent-length: 5\r\n\r\nhello\
HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno";
        for step in [1, 3, 7, 4096] {
            let out = read_all(data, step);
            assert_eq!(out.len(), 2, "step {step}");
            let (a, keep) = out[0].as_ref().unwrap();
            assert_eq!(
                (a.status, a.body.as_slice(), *keep),
                (200, &b"hello"[..], true)
            );
            assert_eq!(a.header("lambda-extension-identifier"), Some("abc"));
            let (b, keep) = out[1].as_ref().unwrap();
            assert_eq!(
                (b.status, b.body.as_slice(), *keep),
                (403, &b"no"[..], false)
            );
        }
    }

    #[test]
    fn chunked_and_close_delimited_bodies() {
        let data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nT: 1\r\n\r\n\
HTTP/1.0 200 OK\r\n\r\nuntil the end";
        for step in [1, 2, 4096] {
            let out = read_all(data, step);
            let (a, keep) = out[0].as_ref().unwrap();
            assert_eq!((a.body.as_slice(), *keep), (&b"Wikipedia"[..], true));
            let (b, keep) = out[1].as_ref().unwrap();
            assert_eq!((b.body.as_slice(), *keep), (&b"until the end"[..], false));
        }
    }

    #[test]
    fn broken_responses_are_errors() {
        let eof = read_all(b"", 10);
        assert_eq!(
            eof[0].as_ref().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Le",
        ] {
            let out = read_all(bad, 3);
            let e = out.last().unwrap().as_ref().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
    }

    /// A kept-alive connection the server closed while idle is reopened and
    /// the request sent again; a fresh connection closed before any answer
    /// is an error (the request may have been acted on: not resent).
    #[test]
    fn stale_kept_alive_connection_is_reopened_once() {
        use std::io::BufRead;
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap().to_string();
        let (closed_tx, closed) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            // 1st connection: answers one request, then closes (idle timeout).
            // 2nd: answers the resent request. 3rd: reads and closes unanswered.
            for answer in [true, true, false] {
                let (s, _) = server.accept().unwrap();
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                seen.push(line.trim().to_string());
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h == "\r\n" {
                        break;
                    }
                }
                if answer {
                    (&s).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .unwrap();
                }
                drop((r, s));
                let _ = closed_tx.send(());
            }
            seen
        });
        let mut c = Connection::new(&addr);
        assert_eq!(c.call("GET", "/a", &[], b"").unwrap().body, b"ok");
        closed.recv().unwrap(); // the server has closed the first connection
        assert_eq!(c.call("GET", "/b", &[], b"").unwrap().body, b"ok");
        c.stream = None; // a fresh connection for the last call
        let e = c.call("GET", "/c", &[], b"").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(
            handle.join().unwrap(),
            ["GET /a HTTP/1.1", "GET /b HTTP/1.1", "GET /c HTTP/1.1"]
        );
    }

    #[test]
    fn requests_carry_host_headers_and_length() {
        let mut out = Vec::new();
        write_request(
            &mut out,
            "127.0.0.1:9001",
            "PUT",
            "/2022-07-01/telemetry",
            &[("Lambda-Extension-Identifier", "id")],
            b"{}",
        );
        assert_eq!(
            out,
            b"PUT /2022-07-01/telemetry HTTP/1.1\r\nHost: 127.0.0.1:9001\r\nLambda-Extension-Identifier: id\r\nContent-Length: 2\r\n\r\n{}"
        );
    }
}
