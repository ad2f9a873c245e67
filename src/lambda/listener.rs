//! The Telemetry API destination's HTTP server: tiny_http, behind the front
//! door (`gate`), which hands it one whole, well-formed delivery at a time
//! over a private Unix socket. It splits each body into events and hands
//! them to the dispatcher over a bounded channel.
//!
//! It answers 200 to every POST it has taken responsibility for, even one it
//! could not parse (a 4xx would only make Lambda redeliver the same bytes). It
//! answers as soon as the events are handed over, whatever the dispatcher
//! is doing (a slow Kinesis request included); only when memory is at its
//! cap (`Backlog`) does the answer wait, and Lambda buffers, then drops and
//! reports `platform.logsDropped`, instead of this process growing.

use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::SystemTime;

use crossbeam_channel::Sender;
use tiny_http::{Request, Response, Server};

use crate::dispatch::backlog::Backlog;
use crate::lambda::telemetry::{self, Delivery, Event};
use crate::lambda::view::Reading;
use crate::stats::Stats;

/// Stack of the thread that splits bodies: enough for serde_json's
/// 128-level nesting limit (tested in lambda/telemetry.rs).
pub const READER_STACK: usize = 128 * 1024;

/// Starts tiny_http on a Unix socket of its own and returns the one
/// connection to it. The socket's file is removed once connected: nothing
/// else in the sandbox can reach the server around the front door.
pub fn start(
    tx: Sender<Delivery>,
    backlog: Arc<Backlog>,
    max_body: usize,
    reading: Reading,
    stats: Arc<Stats>,
) -> std::io::Result<UnixStream> {
    let name = format!(
        "kinesis-telemetry-{}-{}.sock",
        std::process::id(),
        crate::rng::Rng::from_os().hex(8)
    );
    let (server, conn) = match private_socket(&std::env::temp_dir().join(&name)) {
        Ok(pair) => pair,
        Err(e) => {
            // No usable temporary directory: an abstract socket (Linux),
            // with a random name nothing else knows.
            log::debug!("telemetry listener: no socket file in the temporary directory ({e}); using an abstract socket");
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            let server = Server::from_listener(UnixListener::bind_addr(&addr)?, None)
                .map_err(std::io::Error::other)?;
            (server, UnixStream::connect_addr(&addr)?)
        }
    };
    std::thread::Builder::new()
        .name("http".into())
        .stack_size(READER_STACK)
        .spawn(move || loop {
            match server.recv() {
                Ok(request) => serve(request, &tx, &backlog, (max_body, reading), &stats),
                Err(e) => log::warn!("telemetry listener: {e}"),
            }
        })?;
    Ok(conn)
}

/// tiny_http on a socket file, connected to, and the file removed.
fn private_socket(path: &std::path::Path) -> std::io::Result<(Server, UnixStream)> {
    let socket = UnixListener::bind(path)?;
    let server = Server::from_listener(socket, None);
    let conn = UnixStream::connect(path);
    let _ = std::fs::remove_file(path);
    Ok((server.map_err(std::io::Error::other)?, conn?))
}

fn serve(
    mut request: Request,
    tx: &Sender<Delivery>,
    backlog: &Backlog,
    read: (usize, Reading),
    stats: &Stats,
) {
    let received = std::time::Instant::now();
    let (events, body_bytes) = read_events(&mut request, read, stats);
    if !events.is_empty() {
        let n = events.len() as u64;
        let delivery = Delivery {
            received,
            events,
            body_bytes,
        };
        // Waits only while memory is at its cap (see `Backlog`).
        backlog.admit(body_bytes);
        if tx.send(delivery).is_err() {
            // The dispatcher has finished (shutdown): these came after the
            // final flush (such as our own last log lines). Not taken, so not
            // 200: Lambda keeps them, and drops them with the environment.
            log::debug!(
                "telemetry listener: {n} events arrived after the final flush; answered 503"
            );
            let _ = request.respond(Response::empty(503));
            return;
        }
    }
    let _ = request.respond(Response::empty(200));
}

/// Reads one body (at most `max_body` bytes) and turns it into events (see
/// module comment), which are ranges of the body, each read as `reading`
/// asks; also returns the body's size.
fn read_events(
    request: &mut Request,
    (max_body, reading): (usize, Reading),
    stats: &Stats,
) -> (Vec<Event>, usize) {
    stats.bodies.add(1);
    // The front door checked the length: it is exact and within the limit.
    let mut body = Vec::with_capacity(request.body_length().unwrap_or(0).min(max_body));
    if let Err(e) = request.as_reader().read_to_end(&mut body) {
        log::warn!(
            "telemetry listener: reading a body failed after {} bytes: {e}",
            body.len()
        );
    }
    let body = Arc::new(body);
    let events = match telemetry::split_body(&body, reading) {
        Ok(events) => events,
        Err(e) => {
            stats.unparsed_bodies.add(1);
            log::warn!(
                "telemetry listener: {e}; forwarding the {} bytes as one {} record",
                body.len(),
                telemetry::UNPARSED_TYPE
            );
            vec![telemetry::unparsed(&body, &e.0, SystemTime::now())]
        }
    };
    stats.events.add(events.len() as u64);
    stats
        .event_bytes
        .add(events.iter().map(|e| e.json.len() as u64).sum());
    (events, body.len())
}
