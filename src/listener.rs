//! The Telemetry API destination: an HTTP listener (tiny_http) that reads
//! each POSTed batch, splits it into events and hands them to the dispatcher
//! over a bounded channel.
//!
//! It answers 200 to every POST it has taken responsibility for, even one it
//! could not parse (a 4xx would only make Lambda redeliver the same bytes). It
//! answers after the events are queued, so when the dispatcher falls behind
//! the full channel slows the answers down and Lambda buffers, then drops and
//! reports `platform.logsDropped`, instead of this process growing.
//!
//! Bodies are read off the accepting thread (at most `MAX_READERS` at once):
//! tiny_http offers no read timeout, so a client that never finishes its body
//! (slow-loris) would otherwise stall every delivery behind it. One reader
//! thread serves Lambda, which sends one batch at a time; a body arriving
//! while it is busy gets a short-lived thread of its own.

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crossbeam_channel::Sender;
use tiny_http::{Method, Request, Response, Server};

use crate::stats::Stats;
use crate::telemetry::{self, Delivery, Event};

/// Bodies read at once; past this, requests are answered 503 (Lambda
/// retries). Lambda sends one at a time, so only clients that stall (which
/// tiny_http cannot time out) fill these; each holds at most what it sent.
const MAX_READERS: usize = 32;
/// Stack of a body-reader thread: enough for serde_json's 128-level nesting
/// limit (tested in telemetry.rs).
pub const READER_STACK: usize = 128 * 1024;

/// Binds the listening socket on all interfaces (Lambda connects through
/// `sandbox.localdomain`), port 0 meaning any free port; returns the port.
/// Connections wait in the kernel's backlog until `run` serves them.
pub fn bind(port: u16) -> Result<(TcpListener, u16), String> {
    let socket = TcpListener::bind(("0.0.0.0", port))
        .map_err(|e| format!("cannot listen on port {port}: {e}"))?;
    let port = socket
        .local_addr()
        .map_err(|e| format!("the listener has no address: {e}"))?
        .port();
    Ok((socket, port))
}

/// Serves until the process exits.
pub fn run(socket: TcpListener, tx: Sender<Delivery>, max_body: usize, stats: Arc<Stats>) {
    let server = match Server::from_listener(socket, None) {
        Ok(s) => s,
        Err(e) => {
            log::error!("telemetry listener: cannot serve: {e}; no telemetry will be received");
            return;
        }
    };
    // One reader thread waits for bodies; a body that arrives while it is
    // busy (only a stalled client makes that happen: Lambda sends one at a
    // time) gets a thread of its own.
    let (to_reader, bodies) = crossbeam_channel::bounded::<Request>(0);
    let readers = Arc::new(AtomicUsize::new(1));
    {
        let (tx, stats) = (tx.clone(), stats.clone());
        spawn_reader(move || {
            for request in bodies {
                serve(request, &tx, max_body, &stats);
            }
        });
    }
    loop {
        let request = match server.recv() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("telemetry listener: accepting a connection failed: {e}");
                continue;
            }
        };
        if let Some(status) = refusal(&request) {
            Stats::add(&stats.refused_requests, 1);
            let _ = request.respond(Response::empty(status));
            continue;
        }
        let request = match to_reader.try_send(request) {
            Ok(()) => continue,
            Err(e) => e.into_inner(),
        };
        if readers.fetch_add(1, Ordering::AcqRel) >= MAX_READERS {
            readers.fetch_sub(1, Ordering::AcqRel);
            Stats::add(&stats.refused_requests, 1);
            log::warn!("telemetry listener: {MAX_READERS} bodies still being read; answering 503");
            let _ = request.respond(Response::empty(503));
            continue;
        }
        let (tx, stats, readers) = (tx.clone(), stats.clone(), readers.clone());
        spawn_reader(move || {
            serve(request, &tx, max_body, &stats);
            readers.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

fn spawn_reader(f: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("body".into())
        .stack_size(READER_STACK)
        .spawn(f);
    if let Err(e) = spawned {
        log::error!("telemetry listener: cannot start a reader thread: {e}");
    }
}

/// The status for requests that are not Telemetry API deliveries.
fn refusal(request: &Request) -> Option<u16> {
    if *request.method() != Method::Post {
        return Some(405);
    }
    // We subscribe with a URI without a path, so Lambda POSTs to "/".
    match request.url().split('?').next() {
        Some("/" | "") => None,
        _ => Some(404),
    }
}

fn serve(mut request: Request, tx: &Sender<Delivery>, max_body: usize, stats: &Stats) {
    let received = std::time::Instant::now();
    let (events, body_bytes) = read_events(&mut request, max_body, stats);
    if !events.is_empty() {
        let n = events.len() as u64;
        let delivery = Delivery {
            received,
            events,
            body_bytes,
        };
        if tx.send(delivery).is_err() {
            // The dispatcher has finished (shutdown): these came after the
            // final flush. Still 200 (any other answer makes Lambda redeliver
            // to a process about to exit), and counted.
            Stats::add(&stats.dropped_shutdown, n);
        }
    }
    let _ = request.respond(Response::empty(200));
}

/// Reads one body and turns it into events (see module comment), which are
/// ranges of the body; also returns the body's size.
fn read_events(request: &mut Request, max_body: usize, stats: &Stats) -> (Vec<Event>, usize) {
    Stats::add(&stats.bodies, 1);
    let mut body = Vec::with_capacity(request.body_length().unwrap_or(0).min(max_body));
    let reader = request.as_reader();
    if let Err(e) = reader.take(max_body as u64 + 1).read_to_end(&mut body) {
        log::warn!(
            "telemetry listener: reading a body failed after {} bytes: {e}",
            body.len()
        );
    }
    if body.len() > max_body {
        let rest = std::io::copy(reader, &mut std::io::sink()).unwrap_or(0);
        let total = body.len() as u64 + rest;
        Stats::add(&stats.oversized_bodies, 1);
        Stats::add(&stats.oversized_bytes, total);
        log::error!(
            "telemetry listener: dropped a {total}-byte body over the {max_body}-byte limit; raise KINESIS_TELEMETRY_MAX_BODY_BYTES or lower KINESIS_TELEMETRY_BUFFER_MAX_BYTES"
        );
        return (Vec::new(), 0);
    }
    let body = Arc::new(body);
    let events = match telemetry::split_body(&body) {
        Ok(events) => events,
        Err(e) => {
            Stats::add(&stats.unparsed_bodies, 1);
            log::warn!(
                "telemetry listener: {e}; forwarding the {} bytes as one {} record",
                body.len(),
                telemetry::UNPARSED_TYPE
            );
            vec![telemetry::unparsed(&body, &e.0, SystemTime::now())]
        }
    };
    Stats::add(&stats.events, events.len() as u64);
    Stats::add(
        &stats.event_bytes,
        events.iter().map(|e| e.json.len() as u64).sum(),
    );
    (events, body.len())
}
