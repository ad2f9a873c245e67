//! Start-up harness: measures, for one extension executable, the time from
//! just before exec to the arrival of `register`, of the Telemetry API
//! subscription and of the first `event/next`, on a minimal Extensions API
//! server of its own (the same for every binary, so the figures compare).
//!
//!   startup [--runs N] [--warmup W] [--cold] [--timeout-ms T] [--env K=V]... -- PROGRAM [ARGS]
//!
//! Prints one JSON object per measured run. With --cold the page cache is
//! dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before each run; if
//! that is not permitted the run says so ("cold": false, "cold_error").
//! Times are from `Instant::now()` taken right before `spawn` (which returns
//! once the child has exec'd: posix_spawn/vfork semantics), to the moment the
//! request was completely read. After the first `event/next` the child is
//! killed (SIGKILL); it never gets an answer.
#[path = "../http.rs"]
mod http;

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Sender};
use std::time::{Duration, Instant};

#[derive(Debug)]
enum Ev {
    Register(Instant),
    Subscribe(Instant),
    Next(Instant),
    Other(String),
}

fn serve(stream: TcpStream, tx: Sender<Ev>) {
    let _ = stream.set_nodelay(true);
    let mut w = stream.try_clone().expect("clone");
    let mut r = BufReader::with_capacity(65536, stream);
    loop {
        let req = match http::read_request(&mut r, || w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")) {
            Ok(Some(req)) => req,
            _ => return,
        };
        let t = Instant::now();
        let path = req.path.split('?').next().unwrap_or("").trim_end_matches('/').to_string();
        let (status, headers, body): (&str, String, String) = match (req.method.as_str(), path.as_str()) {
            ("POST", "/2020-01-01/extension/register") => {
                let _ = tx.send(Ev::Register(t));
                (
                    "200 OK",
                    "Lambda-Extension-Identifier: 6b4d3f1e-8c0a-4b8e-9f7a-2d1c0e5b7a90\r\nContent-Type: application/json\r\n".into(),
                    r#"{"functionName":"bench-fn","functionVersion":"$LATEST","handler":"index.handler","accountId":"123456789012"}"#.into(),
                )
            }
            ("PUT", "/2022-07-01/telemetry") => {
                let _ = tx.send(Ev::Subscribe(t));
                ("200 OK", "Content-Type: text/plain\r\n".into(), "OK".into())
            }
            ("GET", "/2020-01-01/extension/event/next") => {
                let _ = tx.send(Ev::Next(t));
                // Never answered: the run ends here and the child is killed.
                std::thread::sleep(Duration::from_secs(3600));
                return;
            }
            (m, p) => {
                let _ = tx.send(Ev::Other(format!("{m} {p}")));
                ("404 Not Found", "Content-Type: application/json\r\n".into(), r#"{"errorType":"InvalidRequest","errorMessage":"not here"}"#.into())
            }
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn drop_caches() -> Result<(), String> {
    let st = Command::new("sync").status().map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("sync failed".into());
    }
    std::fs::write("/proc/sys/vm/drop_caches", b"3").map_err(|e| e.to_string())
}

fn ms(a: Instant, b: Option<Instant>) -> String {
    b.map_or("null".into(), |b| format!("{:.4}", (b - a).as_secs_f64() * 1000.0))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut runs, mut warmup, mut cold, mut timeout_ms) = (20usize, 2usize, false, 10_000u64);
    let mut env: Vec<(String, String)> = Vec::new();
    let mut cmd: Vec<String> = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().unwrap().parse().unwrap(),
            "--warmup" => warmup = args.next().unwrap().parse().unwrap(),
            "--cold" => cold = true,
            "--timeout-ms" => timeout_ms = args.next().unwrap().parse().unwrap(),
            "--env" => {
                let kv = args.next().unwrap();
                let (k, v) = kv.split_once('=').expect("--env K=V");
                env.push((k.into(), v.into()));
            }
            "--" => {
                cmd = args.by_ref().collect();
            }
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(!cmd.is_empty(), "usage: startup [opts] -- PROGRAM [ARGS]");
    for i in 0..warmup + runs {
        let measured = i >= warmup;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let tx = tx.clone();
                std::thread::spawn(move || serve(s, tx));
            }
        });
        let cold_res = if cold && measured { Some(drop_caches()) } else { None };
        let mut c = Command::new(&cmd[0]);
        c.args(&cmd[1..])
            .env_clear()
            .envs(env.iter().cloned())
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let t0 = Instant::now();
        let mut child = match c.spawn() {
            Ok(ch) => ch,
            Err(e) => {
                println!("{{\"ok\":false,\"error\":\"spawn: {e}\"}}");
                std::process::exit(1);
            }
        };
        let t_spawn = Instant::now();
        let (mut reg, mut sub, mut next) = (None, None, None);
        let mut other = Vec::new();
        let mut error = None;
        let end = t0 + Duration::from_millis(timeout_ms);
        while next.is_none() {
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(Ev::Register(t)) => reg = Some(t),
                Ok(Ev::Subscribe(t)) => sub = Some(t),
                Ok(Ev::Next(t)) => next = Some(t),
                Ok(Ev::Other(s)) => other.push(s),
                Err(_) => {}
            }
            if next.is_none() {
                if let Ok(Some(st)) = child.try_wait() {
                    error = Some(format!("exited before event/next: {st}"));
                    break;
                }
                if Instant::now() > end {
                    error = Some("timeout".to_string());
                    break;
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        if !measured {
            continue;
        }
        let (cold_ok, cold_err) = match &cold_res {
            None => (false, String::new()),
            Some(Ok(())) => (true, String::new()),
            Some(Err(e)) => (false, e.replace('"', "'")),
        };
        println!(
            "{{\"ok\":{},\"cold\":{},\"cold_error\":\"{}\",\"exec_ms\":{},\"register_ms\":{},\"subscribe_ms\":{},\"next_ms\":{},\"other\":{:?},\"error\":{}}}",
            error.is_none(),
            cold_ok,
            cold_err,
            ms(t0, Some(t_spawn)),
            ms(t0, reg),
            ms(t0, sub),
            ms(t0, next),
            other,
            error.map_or("null".into(), |e| format!("{e:?}")),
        );
    }
}
