//! What the listener's front door decides from a request head alone, before
//! it reads a byte of the body: a pure function, so every refusal is a unit
//! test. Only `POST /` with a sane length is a Telemetry API delivery. The
//! head's syntax is httparse's (in the binary already, for the Extensions
//! API's answers); what the fields mean for a delivery is decided here.

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Length(u64),
    Chunked,
}

/// A head that may carry a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub body: Body,
    /// The client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
    /// The connection ends after this request (`Connection: close`, HTTP/1.0).
    pub close: bool,
}

/// Why a head is refused; each maps to a status, and the connection is
/// closed after it (the body is never read, so nothing can stall on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not HTTP/1.x, or a malformed line or header.
    Malformed,
    /// No end of the head within the head limit.
    HeadTooLarge,
    /// An HTTP version other than 1.0 and 1.1.
    Version,
    /// A method other than POST.
    Method,
    /// A path other than `/` (we subscribe with a URI without a path).
    Path,
    /// A declared length over the body limit.
    TooLarge(u64),
    /// A transfer coding other than chunked, or one with a length too.
    Coding,
    /// An `Expect` other than `100-continue`.
    Expectation,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::Malformed => 400,
            Refusal::HeadTooLarge => 431,
            Refusal::Version => 505,
            Refusal::Method => 405,
            Refusal::Path => 404,
            Refusal::TooLarge(_) => 413,
            Refusal::Coding => 501,
            Refusal::Expectation => 417,
        }
    }
}

/// Most header fields a head may have (Lambda sends about five); more is
/// answered like a head over its size.
const MAX_FIELDS: usize = 64;

/// Decides on `head`, the bytes up to and including the blank line.
pub fn parse(head: &[u8], max_body: u64) -> Result<Admitted, Refusal> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut fields);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::Version) if names_a_version(head) => return Err(Refusal::Version),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::HeadTooLarge),
        _ => return Err(Refusal::Malformed),
    }
    let mut length = None;
    let mut chunked = false;
    let mut expect_continue = false;
    let mut close = request.version == Some(0);
    for field in request.headers.iter() {
        let value = std::str::from_utf8(field.value).map_err(|_| Refusal::Malformed)?;
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(value).ok_or(Refusal::Malformed)?;
            if length.is_some_and(|l| l != n) {
                return Err(Refusal::Malformed);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !value.eq_ignore_ascii_case("chunked") || chunked {
                return Err(Refusal::Coding);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case("100-continue") {
                return Err(Refusal::Expectation);
            }
            expect_continue = true;
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") || v.contains("upgrade") {
                close = true;
            } else if v.contains("keep-alive") {
                close = false;
            }
        }
    }
    if request.method != Some("POST") {
        return Err(Refusal::Method);
    }
    if !matches!(
        request.path.and_then(|p| p.split('?').next()),
        Some("/" | "")
    ) {
        return Err(Refusal::Path);
    }
    let body = match (chunked, length) {
        // A length beside a coding is how requests are smuggled: refuse.
        (true, Some(_)) => return Err(Refusal::Coding),
        (true, None) => Body::Chunked,
        (false, Some(n)) if n > max_body => return Err(Refusal::TooLarge(n)),
        (false, n) => Body::Length(n.unwrap_or(0)),
    };
    Ok(Admitted {
        body,
        expect_continue,
        close,
    })
}

/// The request line is three words, the last `HTTP/…`: a version other
/// than 1.0 and 1.1, not a garbled line.
fn names_a_version(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let words: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    words.len() == 3 && words[2].starts_with(b"HTTP/")
}

/// A Content-Length: decimal digits only, no sign, no overflow.
fn parse_length(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// The size line of a chunk (`1a2b;ext=1`): its size, if well-formed. The
/// size is hex digits only (RFC 9112 `chunk-size = 1*HEXDIG`: no sign, no
/// `0x`, nothing before it); only blanks may follow it, before `;`.
pub fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = std::str::from_utf8(line).ok()?;
    let hex = line.split(';').next()?.trim_end_matches([' ', '\t']);
    if hex.is_empty() || hex.len() > 15 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 4 << 20;

    fn p(head: &str) -> Result<Admitted, Refusal> {
        parse(format!("{head}\r\n\r\n").as_bytes(), MAX)
    }

    #[test]
    fn lambda_delivery_is_admitted() {
        let h = "POST / HTTP/1.1\r\nHost: sandbox.localdomain:1234\r\nContent-Type: application/json\r\nContent-Length: 42";
        assert_eq!(
            p(h),
            Ok(Admitted {
                body: Body::Length(42),
                expect_continue: false,
                close: false
            })
        );
        let h = "POST /?x=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue";
        let a = p(h).unwrap();
        assert_eq!(a.body, Body::Chunked);
        assert!(a.expect_continue);
        assert_eq!(p("POST / HTTP/1.1").unwrap().body, Body::Length(0));
    }

    #[test]
    fn close_follows_the_version_and_the_header() {
        assert!(p("POST / HTTP/1.0\r\nContent-Length: 1").unwrap().close);
        assert!(
            !p("POST / HTTP/1.0\r\nConnection: Keep-Alive\r\nContent-Length: 1")
                .unwrap()
                .close
        );
        assert!(p("POST / HTTP/1.1\r\nConnection: close").unwrap().close);
    }

    #[test]
    fn hostile_lengths_are_refused_before_any_body_is_read() {
        for n in ["9223372036854775807", "18446744073709551615", "4194305"] {
            let h = format!("POST / HTTP/1.1\r\nContent-Length: {n}");
            assert!(matches!(p(&h), Err(Refusal::TooLarge(_))), "{n}");
        }
        for bad in ["18446744073709551616", "-1", "+5", "1 2", "0x10", ""] {
            let h = format!("POST / HTTP/1.1\r\nContent-Length: {bad}");
            assert_eq!(p(&h), Err(Refusal::Malformed), "{bad:?}");
        }
        let two = "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6";
        assert_eq!(p(two), Err(Refusal::Malformed));
        let smuggle = "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked";
        assert_eq!(p(smuggle), Err(Refusal::Coding));
        let gzip = "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked";
        assert_eq!(p(gzip), Err(Refusal::Coding));
    }

    #[test]
    fn other_methods_paths_and_garbage_are_refused() {
        let get = "GET / HTTP/1.1\r\nContent-Length: 18446744073709551615";
        assert_eq!(p(get), Err(Refusal::Method));
        assert_eq!(
            p("GET / HTTP/1.1\r\nContent-Length: 2000"),
            Err(Refusal::Method)
        );
        assert_eq!(p("POST /telemetry HTTP/1.1"), Err(Refusal::Path));
        assert_eq!(p("POST //  HTTP/1.1"), Err(Refusal::Malformed));
        assert_eq!(p("HELLO THERE"), Err(Refusal::Malformed));
        assert_eq!(p("POST / HTTP/2.0"), Err(Refusal::Version));
        assert_eq!(p("POST / HTTP/1.1\r\nno colon"), Err(Refusal::Malformed));
        assert_eq!(p("POST / HTTP/1.1\r\n folded: x"), Err(Refusal::Malformed));
        assert_eq!(
            p("POST / HTTP/1.1\r\nExpect: magic"),
            Err(Refusal::Expectation)
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nX: \xff\r\n\r\n", MAX),
            Err(Refusal::Malformed)
        );
        for r in [Refusal::Method, Refusal::Path, Refusal::TooLarge(1)] {
            assert!((400..500).contains(&r.status()));
        }
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"0;name=value"), Some(0));
        assert_eq!(chunk_size(b"FFFFFFFFFFFFFFFF"), None);
        assert_eq!(chunk_size(b""), None);
        assert_eq!(chunk_size(b"zz"), None);
        assert_eq!(chunk_size(b"1a ;x"), Some(26));
        // from_str_radix alone takes a sign: RFC 9112 allows hex digits only.
        for bad in [&b"+5"[..], b"-0", b"+0", b" 5", b"0x5", b"5 5", b"\t1a"] {
            assert_eq!(chunk_size(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
