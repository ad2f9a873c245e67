//! Load generator for the instant sink: sends prebuilt PutRecords requests
//! (RECORDS records of RECORD_BYTES bytes each) back to back over CONNS
//! keep-alive connections for SECONDS, and prints what the sink sustained.
//!
//!   sinkload --addr 127.0.0.1:P [--seconds 3] [--records 500] [--record-bytes 200] [--conns 1]
//!            [--stream NAME]   (with a stream name it also sends a dummy SigV4
//!                               Authorization header, enough for kinesalite)
#[path = "../http.rs"]
mod http;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut addr, mut secs, mut records, mut rec_bytes, mut conns) =
        (String::new(), 3.0f64, 500usize, 200usize, 1usize);
    let mut stream = String::new();
    while let Some(a) = args.next() {
        let v = args.next().unwrap();
        match a.as_str() {
            "--addr" => addr = v,
            "--seconds" => secs = v.parse().unwrap(),
            "--records" => records = v.parse().unwrap(),
            "--record-bytes" => rec_bytes = v.parse().unwrap(),
            "--conns" => conns = v.parse().unwrap(),
            "--stream" => stream = v,
            o => panic!("unknown {o}"),
        }
    }
    let data = "QUJD".repeat(rec_bytes.div_ceil(3)); // base64-ish, ~4/3 of rec_bytes
    let auth = if stream.is_empty() {
        stream = "bench".into();
        String::new()
    } else {
        "X-Amz-Date: 20260101T000000Z\r\nAuthorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host;x-amz-date;x-amz-target, Signature=0000000000000000000000000000000000000000000000000000000000000000\r\n".into()
    };
    let mut body = format!(r#"{{"StreamName":"{stream}","Records":["#);
    for i in 0..records {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(r#"{{"Data":"{data}","PartitionKey":"k{i}"}}"#));
    }
    body.push_str("]}");
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-amz-json-1.1\r\nX-Amz-Target: Kinesis_20131202.PutRecords\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let (addr, req) = (addr.clone(), req.clone());
            std::thread::spawn(move || {
                let s = TcpStream::connect(&addr).expect("connect");
                let _ = s.set_nodelay(true);
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut n = 0u64;
                while Instant::now() < end {
                    w.write_all(req.as_bytes()).unwrap();
                    let (status, body) = http::read_response(&mut r).unwrap();
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                    n += 1;
                }
                n
            })
        })
        .collect();
    let reqs: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let dt = t0.elapsed().as_secs_f64();
    println!(
        "{{\"requests\":{reqs},\"records\":{},\"seconds\":{dt:.3},\"requests_per_s\":{:.1},\"records_per_s\":{:.0},\"request_bytes\":{}}}",
        reqs * records as u64,
        reqs as f64 / dt,
        (reqs * records as u64) as f64 / dt,
        req.len()
    );
}
