//! Instant Kinesis sink: answers every `PutRecords` with a valid all-success
//! response with one entry per request record, without doing any other work
//! (the response is cut from a prebuilt buffer). Any other POST (e.g. a
//! telemetry batch, to measure a feeder) gets an empty 200.
//!
//!   sink [--port P]     prints the port, serves until stdin reaches EOF
//!   GET /count          {"records":N,"requests":N,"bytes":N}
//!   POST /reset         zeroes the counters
//!
//! Records are counted as occurrences of `"PartitionKey"` in the body (the
//! data is base64, so it never contains a quote).
#[path = "../http.rs"]
mod http;

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const ENTRY: &str = r#"{"SequenceNumber":"49590338271490256608559692538361571095921575989136588898","ShardId":"shardId-000000000000"}"#;
const MAX_RECORDS: usize = 500;

#[derive(Default)]
struct Counts {
    records: AtomicU64,
    requests: AtomicU64,
    bytes: AtomicU64,
}

fn count_records(body: &[u8]) -> usize {
    const NEEDLE: &[u8] = b"\"PartitionKey\"";
    let mut n = 0;
    let mut i = 0;
    while i + NEEDLE.len() <= body.len() {
        match body[i..].iter().position(|&b| b == b'"') {
            None => break,
            Some(p) => {
                i += p;
                if body[i..].starts_with(NEEDLE) {
                    n += 1;
                    i += NEEDLE.len();
                } else {
                    i += 1;
                }
            }
        }
    }
    n
}

fn serve(stream: TcpStream, counts: Arc<Counts>, entries: Arc<Vec<u8>>) {
    let _ = stream.set_nodelay(true);
    let mut w = stream.try_clone().expect("clone");
    let mut r = BufReader::with_capacity(256 * 1024, stream);
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        let req = match http::read_request(&mut r, || w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")) {
            Ok(Some(req)) => req,
            _ => return,
        };
        out.clear();
        let target = req.header("x-amz-target").unwrap_or("");
        if req.method == "GET" && req.path.starts_with("/count") {
            let body = format!(
                r#"{{"records":{},"requests":{},"bytes":{}}}"#,
                counts.records.load(Ordering::Relaxed),
                counts.requests.load(Ordering::Relaxed),
                counts.bytes.load(Ordering::Relaxed)
            );
            write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        } else if req.method == "POST" && req.path.starts_with("/reset") {
            counts.records.store(0, Ordering::Relaxed);
            counts.requests.store(0, Ordering::Relaxed);
            counts.bytes.store(0, Ordering::Relaxed);
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        } else if target.ends_with(".PutRecords") {
            let n = count_records(&req.body).min(MAX_RECORDS);
            counts.records.fetch_add(n as u64, Ordering::Relaxed);
            counts.requests.fetch_add(1, Ordering::Relaxed);
            counts.bytes.fetch_add(req.body.len() as u64, Ordering::Relaxed);
            let list = if n == 0 { &entries[..0] } else { &entries[..n * (ENTRY.len() + 1) - 1] };
            let prefix = br#"{"FailedRecordCount":0,"Records":["#;
            let len = prefix.len() + list.len() + 2;
            write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: 3f1c7a52-0d2b-4e8f-9a61-5b0c2d7e8f90\r\nContent-Length: {len}\r\n\r\n").unwrap();
            out.extend_from_slice(prefix);
            out.extend_from_slice(list);
            out.extend_from_slice(b"]}");
        } else if !target.is_empty() {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: 2\r\n\r\n{}");
        } else {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
        if w.write_all(&out).is_err() {
            return;
        }
    }
}

fn main() {
    let mut port = 0u16;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--port" {
            port = args.next().unwrap().parse().unwrap();
        }
    }
    let mut entries = Vec::with_capacity(MAX_RECORDS * (ENTRY.len() + 1));
    for i in 0..MAX_RECORDS {
        if i > 0 {
            entries.push(b',');
        }
        entries.extend_from_slice(ENTRY.as_bytes());
    }
    entries.push(b',');
    let entries = Arc::new(entries);
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    println!("{}", listener.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    // Lifeline: exit when whoever started us closes our stdin.
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    let counts = Arc::new(Counts::default());
    for s in listener.incoming().flatten() {
        let (c, e) = (counts.clone(), entries.clone());
        std::thread::spawn(move || serve(s, c, e));
    }
}
