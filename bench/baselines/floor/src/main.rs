//! Bench baseline (a): the least an external extension can do. Registers for
//! INVOKE and SHUTDOWN with the executable's file name, then loops on
//! event/next over one keep-alive connection, exiting on SHUTDOWN.
//!
//! Two variants measure what a telemetry extension cannot avoid:
//! FLOOR_SUBSCRIBE=1 also binds a listener and subscribes to the Telemetry
//! API before the first next (the protocol's price); FLOOR_RECEIVE=1 also
//! (and implies FLOOR_SUBSCRIBE) accepts Lambda's deliveries on that
//! listener, on 127.0.0.1 as the extension does where /etc/hosts does not
//! name sandbox.localdomain: an accepting thread and a thread per
//! connection that reads each request and answers 200, keeping the
//! connection alive (what every telemetry extension must do, and no more);
//! FLOOR_IDLE_THREADS=N also starts N threads that only sleep (what each
//! thread costs when Lambda freezes and thaws the process).
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

/// FLOOR_RECEIVE: reads requests (head, then a Content-Length or chunked
/// body) off one connection and answers each 200 with an empty body, until
/// the peer closes it.
fn answer(stream: TcpStream) -> Option<()> {
    let mut r = BufReader::new(stream.try_clone().ok()?);
    let mut w = stream;
    let mut line = String::new();
    loop {
        let (mut len, mut chunked) = (0usize, false);
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        loop {
            line.clear();
            r.read_line(&mut line).ok()?;
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse().ok()?;
            } else if l.starts_with("transfer-encoding:") && l.ends_with("chunked") {
                chunked = true;
            }
        }
        while chunked {
            line.clear();
            r.read_line(&mut line).ok()?;
            let n = usize::from_str_radix(line.trim_end().split(';').next()?, 16).ok()?;
            std::io::copy(&mut (&mut r).take(n as u64 + 2), &mut std::io::sink()).ok()?;
            chunked = n > 0; // the last chunk's CRLF ends the body (no trailers)
        }
        std::io::copy(&mut (&mut r).take(len as u64), &mut std::io::sink()).ok()?;
        w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .ok()?;
    }
}

fn call(conn: &mut BufReader<TcpStream>, req: &str) -> (Vec<(String, String)>, Vec<u8>) {
    conn.get_mut().write_all(req.as_bytes()).expect("write");
    let mut headers = Vec::new();
    let mut line = String::new();
    conn.read_line(&mut line).expect("status line");
    let mut len = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line).expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            if k == "content-length" {
                len = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).expect("body");
    (headers, body)
}

fn main() {
    let name = std::env::args()
        .next()
        .and_then(|a| a.rsplit('/').next().map(str::to_string))
        .unwrap_or_default();
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API").expect("AWS_LAMBDA_RUNTIME_API");
    let mut conn = BufReader::new(TcpStream::connect(&api).expect("connect"));
    let _ = conn.get_ref().set_nodelay(true);
    let body = r#"{"events":["INVOKE","SHUTDOWN"]}"#;
    let req = format!(
        "POST /2020-01-01/extension/register HTTP/1.1\r\nHost: {api}\r\nLambda-Extension-Name: {name}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (headers, _) = call(&mut conn, &req);
    let id = headers
        .iter()
        .find(|(k, _)| k == "lambda-extension-identifier")
        .map(|(_, v)| v.clone())
        .expect("no Lambda-Extension-Identifier");
    let receive = std::env::var_os("FLOOR_RECEIVE").is_some();
    if receive || std::env::var_os("FLOOR_SUBSCRIBE").is_some() {
        let ip = if receive { "127.0.0.1" } else { "0.0.0.0" };
        let listener = TcpListener::bind((ip, 0)).expect("bind");
        let port = listener.local_addr().expect("port").port();
        let body = format!(
            r#"{{"schemaVersion":"2022-12-13","types":["platform","function","extension"],"buffering":{{"maxItems":1000,"maxBytes":262144,"timeoutMs":25}},"destination":{{"protocol":"HTTP","URI":"http://sandbox.localdomain:{port}"}}}}"#
        );
        let req = format!(
            "PUT /2022-07-01/telemetry HTTP/1.1\r\nHost: {api}\r\nLambda-Extension-Identifier: {id}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        call(&mut conn, &req);
        if receive {
            std::thread::spawn(move || {
                for s in listener.incoming().flatten() {
                    std::thread::spawn(move || answer(s));
                }
            });
        } else {
            std::mem::forget(listener);
        }
    }
    let idle: usize = std::env::var("FLOOR_IDLE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for _ in 0..idle {
        std::thread::spawn(|| loop {
            std::thread::park();
        });
    }
    let next = format!(
        "GET /2020-01-01/extension/event/next HTTP/1.1\r\nHost: {api}\r\nLambda-Extension-Identifier: {id}\r\n\r\n"
    );
    loop {
        let (_, event) = call(&mut conn, &next);
        if event.windows(10).any(|w| w == b"\"SHUTDOWN\"") {
            return;
        }
    }
}
