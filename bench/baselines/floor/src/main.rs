//! Bench baseline (a): the least an external extension can do. Registers for
//! INVOKE and SHUTDOWN with the executable's file name, then loops on
//! event/next over one keep-alive connection, exiting on SHUTDOWN.
//!
//! Two variants measure what a telemetry extension cannot avoid:
//! FLOOR_SUBSCRIBE=1 also binds a listener and subscribes to the Telemetry
//! API before the first next (the protocol's price); FLOOR_IDLE_THREADS=N
//! also starts N threads that only sleep (what each thread costs when Lambda
//! freezes and thaws the process).
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

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
    if std::env::var_os("FLOOR_SUBSCRIBE").is_some() {
        let listener = std::net::TcpListener::bind(("0.0.0.0", 0)).expect("bind");
        let port = listener.local_addr().expect("port").port();
        let body = format!(
            r#"{{"schemaVersion":"2022-12-13","types":["platform","function","extension"],"buffering":{{"maxItems":1000,"maxBytes":262144,"timeoutMs":25}},"destination":{{"protocol":"HTTP","URI":"http://sandbox.localdomain:{port}"}}}}"#
        );
        let req = format!(
            "PUT /2022-07-01/telemetry HTTP/1.1\r\nHost: {api}\r\nLambda-Extension-Identifier: {id}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        call(&mut conn, &req);
        std::mem::forget(listener);
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
