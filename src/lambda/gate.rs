//! The telemetry listener's front door: it owns the subscribed port (bound
//! on the addresses `hosts` finds for `sandbox.localdomain`, without DNS),
//! and only complete, well-formed `POST /` deliveries pass it on their way to
//! tiny_http (`listener`). Anything in the sandbox can connect here, so every
//! resource a client can make us hold is bounded (docs/delivery.md, "What the
//! listener bounds"):
//!
//! - connections: at most `Limits::connections`; past it one is shed in
//!   the order of `shed_rank` (strangers before connections that carried
//!   a delivery; idle, then slow), or the newcomer gets a 503. The accepting thread only accepts, sheds and spawns: it never
//!   reads from or waits on a client, and survives every accept error
//!   (`EMFILE` under Lambda's 1,024-file limit included);
//! - a request head: at most `head_bytes` (431 past it), decided on before
//!   any body byte is read (`request_head`), so a refused request never
//!   waits for its body;
//! - body bytes held across all connections: at most `bodies_in_flight`
//!   (503 past it), each body at most the body limit (413);
//! - time: a request must arrive whole within `request_time` of thawed time
//!   from its first byte (408 past it). Freezes do not count: a read that
//!   waited far longer than its tick was frozen, not slow.
//!
//! A delivery is read whole here, then handed to tiny_http over one private
//! connection (one delivery at a time, as Lambda sends them); tiny_http's
//! answer, which comes after the events are queued, goes back to the client.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::lambda::hosts::{self, Source, SANDBOX_HOST};
use crate::lambda::local_http::find;
use crate::lambda::request_head::{self, Body, Refusal};
use crate::stats::Stats;

/// How long one read waits before the request's clock is checked.
const TICK: Duration = Duration::from_millis(500);
/// A read that took longer than this waited through a freeze.
const FROZEN: Duration = Duration::from_secs(2);
/// Bounds the wait for a client that does not read its answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After a refusal, what is read (and dropped) of the refused body so that
/// closing does not reset the connection before the client reads the answer.
const LINGER_BYTES: usize = 64 * 1024;
const LINGER_TIME: Duration = Duration::from_millis(200);
/// While the bodies in flight leave no room: how often, and how long
/// apart, to shed a slow request and look again before answering 503 (in
/// all, longer than `Limits::grace`, so some holder becomes sheddable).
const ROOM_TRIES: u32 = 80;
const ROOM_WAIT: Duration = Duration::from_millis(5);
/// Stack of a connection thread (no JSON is parsed here).
const CONNECTION_STACK: usize = 64 * 1024;

/// Every bound of the front door, in one place.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections: usize,
    pub head_bytes: usize,
    pub body_bytes: usize,
    pub bodies_in_flight: usize,
    pub request_time: Duration,
    /// A request younger than this is not shed to make room.
    pub grace: Duration,
}

impl Limits {
    /// The defaults for a body limit of `body_bytes`
    /// (`KINESIS_TELEMETRY_MAX_BODY_BYTES`).
    pub fn new(body_bytes: usize) -> Limits {
        Limits {
            connections: 16,
            head_bytes: 8 * 1024,
            body_bytes,
            bodies_in_flight: 2 * body_bytes,
            request_time: Duration::from_secs(10),
            grace: Duration::from_millis(250),
        }
    }
}

/// Binds the port on the addresses `/etc/hosts` gives `sandbox.localdomain`
/// (Lambda delivers there), else on loopback and, if this machine has it,
/// Lambda's telemetry address (`hosts`: no DNS query either way). Port 0
/// means any free port; returns the port.
pub fn bind(port: u16) -> Result<(Vec<TcpListener>, u16), String> {
    let addrs = hosts::sandbox_addresses();
    if addrs.from == Source::Fallback {
        log::debug!(
            "{SANDBOX_HOST} is not in /etc/hosts: listening on 127.0.0.1 (a local run; Lambda names it there)"
        );
    }
    let mut sockets = Vec::new();
    let mut port = port;
    for ip in addrs.ips {
        match TcpListener::bind((ip, port)) {
            Ok(s) => {
                if port == 0 {
                    port = s
                        .local_addr()
                        .map_err(|e| format!("the listener has no address: {e}"))?
                        .port();
                }
                sockets.push(s);
            }
            Err(e) if sockets.is_empty() => {
                return Err(format!("cannot listen on {ip} port {port}: {e}"));
            }
            Err(e) if addrs.from == Source::Fallback => {
                log::debug!("telemetry listener: not also on {ip} port {port}: {e}");
            }
            Err(e) => log::warn!("telemetry listener: cannot also listen on {ip} port {port}: {e}"),
        }
    }
    Ok((sockets, port))
}

/// The private connection to tiny_http, reopened by `open` if it breaks.
pub struct Inner {
    conn: Mutex<Option<UnixStream>>,
    open: Box<dyn Fn() -> io::Result<UnixStream> + Send + Sync>,
}

impl Inner {
    pub fn new(open: impl Fn() -> io::Result<UnixStream> + Send + Sync + 'static) -> Inner {
        Inner {
            conn: Mutex::new(None),
            open: Box::new(open),
        }
    }

    /// Hands one body to tiny_http and returns its answer's status.
    fn forward(&self, body: &[u8]) -> io::Result<u16> {
        let mut conn = lock(&self.conn);
        if conn.is_none() {
            *conn = Some((self.open)()?);
        }
        let result = conn.as_mut().map_or_else(
            || Err(ErrorKind::NotConnected.into()),
            |s| exchange(s, body),
        );
        if result.is_err() {
            *conn = None;
        }
        result
    }
}

fn exchange(s: &mut UnixStream, body: &[u8]) -> io::Result<u16> {
    let head = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut answer = [0u8; 1024];
    let mut n = 0;
    loop {
        let k = s.read(&mut answer[n..])?;
        if k == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        n += k;
        if find(&answer[..n], b"\r\n\r\n").is_some() {
            return answer
                .get(9..12)
                .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
                .ok_or_else(|| ErrorKind::InvalidData.into());
        }
        if n == answer.len() {
            return Err(ErrorKind::InvalidData.into());
        }
    }
}

/// Deliveries taken whole but not answered yet: the process waits for them
/// before it exits, so Lambda does not see a delivery fail that was taken.
#[derive(Debug, Default)]
pub struct Unanswered(AtomicUsize);

impl Unanswered {
    /// Waits until every delivery is answered, or `until`.
    pub fn wait(&self, until: Instant) {
        while self.0.load(Ordering::Acquire) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Serves `sockets` until the process exits: one accepting thread each.
pub fn serve(
    sockets: Vec<TcpListener>,
    inner: Inner,
    limits: Limits,
    stats: Arc<Stats>,
    unanswered: Arc<Unanswered>,
) {
    let shared = Arc::new(Shared {
        limits,
        stats,
        inner,
        unanswered,
        slots: Mutex::new(Slots::default()),
        held: AtomicUsize::new(0),
        waiting: AtomicUsize::new(0),
        warned: Warned::default(),
    });
    let mut sockets = sockets.into_iter();
    let Some(first) = sockets.next() else { return };
    for socket in sockets {
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("accept".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || accept_loop(&socket, &shared));
        if let Err(e) = spawned {
            log::error!("telemetry listener: cannot start an accepting thread: {e}");
        }
    }
    accept_loop(&first, &shared);
}

fn accept_loop(socket: &TcpListener, shared: &Arc<Shared>) {
    loop {
        match socket.accept() {
            Ok((stream, _)) => shared.admit(stream, shared),
            Err(e) => shared.accept_failed(&e),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a request (a kept-alive connection).
    Idle,
    /// A request is arriving.
    Reading,
    /// A whole delivery is with tiny_http: never shed (that would lose it).
    Forwarding,
}

struct Slot {
    id: u64,
    /// A handle to shut the connection down with when it is shed.
    stream: TcpStream,
    standing: Standing,
}

/// What the shedding order looks at in a connection.
#[derive(Debug, Clone, Copy)]
struct Standing {
    state: State,
    /// When the state began.
    since: Instant,
    /// It has carried a delivery tiny_http took (2xx): Lambda's, most
    /// likely, kept alive between deliveries.
    trusted: bool,
}

/// What a connection is shed to make room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// A new connection (or, out of files, anything at all).
    Slot,
    /// Body bytes for another request.
    Body,
}

/// Where a connection stands in the shedding order at `now`: the lowest
/// rank goes first, the oldest among equals; `None`: not shed. Every
/// stranger goes before any trusted connection, so Lambda's kept-alive
/// connection, idle between deliveries, is not taken for an abandoned one
/// while slow strangers hold the other slots; a trusted one is still shed
/// when only trusted ones are left (trust is earned by one valid delivery,
/// which anything in the sandbox can send). Within each: a connection idle
/// for at least `grace`, then a request begun at least `grace` ago (a
/// delivery in progress is fast; a slow one is a client holding the slot),
/// then (for a slot) one idle for less than `grace` (one just accepted is
/// idle until its head arrives, and may be Lambda's, about to deliver).
/// Body room is made from slow requests only. Never one forwarding.
fn shed_rank(s: Standing, now: Instant, grace: Duration, room: Room) -> Option<u8> {
    let old = now.saturating_duration_since(s.since) >= grace;
    let rank = match (s.state, room) {
        (State::Idle, Room::Slot) if old => 0,
        (State::Reading, _) if old => 1,
        (State::Idle, Room::Slot) => 2,
        _ => return None,
    };
    Some(if s.trusted { rank + 3 } else { rank })
}

/// The connection to shed first (an index into `standings`; `None` ones
/// are not candidates), if any may be.
fn pick(
    standings: impl IntoIterator<Item = Option<Standing>>,
    now: Instant,
    grace: Duration,
    room: Room,
) -> Option<usize> {
    standings
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let s = s?;
            Some((shed_rank(s, now, grace, room)?, s.since, i))
        })
        .min()
        .map(|(_, _, i)| i)
}

#[derive(Default)]
struct Slots {
    next_id: u64,
    list: Vec<Slot>,
}

/// Problems logged at WARN the first time, at DEBUG after that.
#[derive(Default)]
struct Warned {
    shed: AtomicBool,
    accept: AtomicBool,
    refused: AtomicBool,
    stalled: AtomicBool,
    full: AtomicBool,
}

fn first_time(flag: &AtomicBool) -> log::Level {
    if flag.swap(true, Ordering::Relaxed) {
        log::Level::Debug
    } else {
        log::Level::Warn
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Shared {
    limits: Limits,
    stats: Arc<Stats>,
    inner: Inner,
    slots: Mutex<Slots>,
    /// Body bytes held by all connections.
    held: AtomicUsize,
    /// New connections waiting for a slot (at most `Limits::connections`).
    waiting: AtomicUsize,
    unanswered: Arc<Unanswered>,
    warned: Warned,
}

impl Shared {
    /// A new connection: a slot and a thread, or shed.
    fn admit(&self, stream: TcpStream, me: &Arc<Shared>) {
        let handle = match stream.try_clone() {
            Ok(h) => h,
            Err(e) => return self.shed(stream, &e.to_string()),
        };
        // A slot now, or (when every connection is busy with a young request)
        // a wait of its own for one: the accepting thread never waits.
        let slot = self.take_slot(handle);
        let taken = slot.as_ref().ok().copied();
        if taken.is_none() && self.waiting.fetch_add(1, Ordering::AcqRel) >= self.limits.connections
        {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return self.shed(stream, "the connection limit is reached");
        }
        let me = me.clone();
        let spawned = std::thread::Builder::new()
            .name("connection".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                let id = match slot {
                    Ok(id) => id,
                    Err(handle) => {
                        let id = me.wait_for_slot(handle);
                        me.waiting.fetch_sub(1, Ordering::AcqRel);
                        match id {
                            Some(id) => id,
                            None => return me.shed(stream, "no connection became free in time"),
                        }
                    }
                };
                Connection {
                    stream,
                    buf: Vec::new(),
                    id,
                    shared: &me,
                }
                .run();
                me.release(id);
            });
        if let Err(e) = spawned {
            match taken {
                Some(id) => self.release(id),
                None => {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                }
            }
            self.count_shed(&format!("cannot start a thread for it: {e}"));
        }
    }

    /// A slot for `handle`'s connection, shedding one to make room if need
    /// be; gives the handle back when every connection is too young to shed.
    fn take_slot(&self, handle: TcpStream) -> Result<u64, TcpStream> {
        let mut slots = lock(&self.slots);
        if slots.list.len() >= self.limits.connections {
            if !shed_first(&mut slots, self.limits.grace, Room::Slot, None) {
                return Err(handle);
            }
            self.count_shed("the oldest connection was shed for a new one");
        }
        let id = slots.next_id;
        slots.next_id += 1;
        slots.list.push(Slot {
            id,
            stream: handle,
            standing: Standing {
                state: State::Idle,
                since: Instant::now(),
                trusted: false,
            },
        });
        Ok(id)
    }

    /// Waits (on the new connection's own thread) until a slot can be had:
    /// at most `ROOM_WAIT × ROOM_TRIES`, longer than the grace time.
    fn wait_for_slot(&self, mut handle: TcpStream) -> Option<u64> {
        for _ in 0..ROOM_TRIES {
            std::thread::sleep(ROOM_WAIT);
            match self.take_slot(handle) {
                Ok(id) => return Some(id),
                Err(h) => handle = h,
            }
        }
        None
    }

    fn count_shed(&self, why: &str) {
        self.stats.shed_connections.add(1);
        log::log!(
            first_time(&self.warned.shed),
            "telemetry listener: a connection was shed ({why}; at most {} at once): something in the sandbox holds connections to the telemetry port; counted as shedConnections",
            self.limits.connections
        );
    }

    /// Answers 503 without waiting on the client, and closes.
    fn shed(&self, stream: TcpStream, why: &str) {
        self.count_shed(why);
        let _ = stream.set_nonblocking(true);
        let _ = (&stream).write(&answer(503, true));
    }

    fn accept_failed(&self, e: &io::Error) {
        if e.kind() == ErrorKind::Interrupted {
            return;
        }
        self.stats.accept_errors.add(1);
        let open = lock(&self.slots).list.len();
        log::log!(
            first_time(&self.warned.accept),
            "telemetry listener: accepting a connection failed: {e} ({open} connections open); shedding the oldest and trying again (counted as acceptErrors)"
        );
        // Out of file descriptors (or memory): make room, and do not spin.
        if shed_first(&mut lock(&self.slots), Duration::ZERO, Room::Slot, None) {
            self.count_shed("the process is out of resources");
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    /// Sheds the request (other than `me`'s) that began longest ago, if at
    /// least the grace time ago (a stranger's before a trusted one's).
    fn shed_slow_request(&self, me: u64) {
        let shed = shed_first(
            &mut lock(&self.slots),
            self.limits.grace,
            Room::Body,
            Some(me),
        );
        if shed {
            self.count_shed("a slow request was shed to make room for body bytes");
        }
    }

    fn set_state(&self, id: u64, state: State) {
        if let Some(s) = lock(&self.slots).list.iter_mut().find(|s| s.id == id) {
            s.standing.state = state;
            s.standing.since = Instant::now();
        }
    }

    /// The connection has carried a delivery tiny_http took.
    fn trust(&self, id: u64) {
        if let Some(s) = lock(&self.slots).list.iter_mut().find(|s| s.id == id) {
            s.standing.trusted = true;
        }
    }

    fn release(&self, id: u64) {
        lock(&self.slots).list.retain(|s| s.id != id);
    }
}

/// Shuts down and forgets the connection first in the shedding order
/// (`shed_rank`), other than `except`, if any may be shed. Its thread ends
/// on its next read. The caller counts it.
fn shed_first(slots: &mut Slots, grace: Duration, room: Room, except: Option<u64>) -> bool {
    let standings = slots
        .list
        .iter()
        .map(|s| (Some(s.id) != except).then_some(s.standing));
    let Some(i) = pick(standings, Instant::now(), grace, room) else {
        return false;
    };
    let slot = slots.list.swap_remove(i);
    let _ = slot.stream.shutdown(Shutdown::Both);
    true
}

/// The bytes of a bodiless answer.
fn answer(status: u16, close: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let close = if close { "Connection: close\r\n" } else { "" };
    format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n{close}\r\n").into_bytes()
}

/// Why a request ended without reaching tiny_http.
#[derive(Debug)]
enum Failure {
    /// Answered with this status, then the connection closes.
    Refused(u16),
    /// The client went away (or was shed): nothing to answer.
    Gone,
}

/// Thawed time a request has taken (see module comment).
struct Clock {
    spent: Duration,
    limit: Duration,
}

impl Clock {
    /// Charges one read's wait; false once the request is over its time.
    fn charge(&mut self, waited: Duration) -> bool {
        if waited < FROZEN {
            self.spent += waited;
        }
        self.spent <= self.limit
    }
}

/// Body bytes a request holds, returned when it ends.
struct Held<'a> {
    total: &'a AtomicUsize,
    limit: usize,
    mine: usize,
}

impl Held<'_> {
    fn take(&mut self, n: usize) -> bool {
        let before = self.total.fetch_add(n, Ordering::AcqRel);
        if before + n > self.limit {
            self.total.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        self.mine += n;
        true
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.total.fetch_sub(self.mine, Ordering::AcqRel);
    }
}

/// One client connection, on its own thread.
struct Connection<'a> {
    stream: TcpStream,
    /// Bytes read past what the last step used (the head, chunk lines).
    buf: Vec<u8>,
    id: u64,
    shared: &'a Shared,
}

impl Connection<'_> {
    fn run(mut self) {
        let _ = self.stream.set_nodelay(true);
        let _ = self.stream.set_write_timeout(Some(WRITE_TIMEOUT));
        loop {
            self.shared.set_state(self.id, State::Idle);
            match self.request() {
                Ok(true) => {}
                Ok(false) | Err(Failure::Gone) => return,
                Err(Failure::Refused(status)) => {
                    self.refuse(status);
                    return;
                }
            }
        }
    }

    /// One request, from its first byte to its answer. Ok(keep-alive).
    fn request(&mut self) -> Result<bool, Failure> {
        if self.buf.is_empty() {
            // A kept-alive connection waits without a clock (freezes, idle
            // time between invokes); shedding it ends the wait.
            let _ = self.stream.set_read_timeout(None);
            let mut first = [0u8; 1024];
            match self.stream.read(&mut first) {
                Ok(0) | Err(_) => return Err(Failure::Gone),
                Ok(n) => self.buf.extend_from_slice(&first[..n]),
            }
        }
        self.shared.set_state(self.id, State::Reading);
        let _ = self.stream.set_read_timeout(Some(TICK));
        let mut clock = Clock {
            spent: Duration::ZERO,
            limit: self.shared.limits.request_time,
        };
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() >= self.shared.limits.head_bytes {
                return Err(self.refused(Refusal::HeadTooLarge));
            }
            self.fill(&mut clock, self.shared.limits.head_bytes)?;
        };
        let limits = self.shared.limits;
        let decision = request_head::parse(&self.buf[..head_end], limits.body_bytes as u64);
        self.buf.drain(..head_end + 4);
        let admitted = match decision {
            Ok(a) => a,
            Err(r) => return Err(self.refused(r)),
        };
        if admitted.expect_continue {
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let mut held = Held {
            total: &self.shared.held,
            limit: limits.bodies_in_flight,
            mine: 0,
        };
        let body = match admitted.body {
            Body::Length(n) => self.body(n as usize, &mut held, &mut clock)?,
            Body::Chunked => self.chunked(&mut held, &mut clock)?,
        };
        self.shared.set_state(self.id, State::Forwarding);
        let unanswered = &self.shared.unanswered.0;
        unanswered.fetch_add(1, Ordering::AcqRel);
        let status = match self.shared.inner.forward(&body) {
            Ok(s) => s,
            Err(e) => {
                log::error!("telemetry listener: handing a delivery to the HTTP server failed: {e}; answered 503 (Lambda retries)");
                503
            }
        };
        if (200..300).contains(&status) {
            self.shared.trust(self.id);
        }
        drop(body);
        drop(held);
        let written = self.write(&answer(status, admitted.close));
        unanswered.fetch_sub(1, Ordering::AcqRel);
        written?;
        Ok(!admitted.close)
    }

    /// Counts and logs a refused head; the status to answer.
    fn refused(&self, r: Refusal) -> Failure {
        let stats = &self.shared.stats;
        match r {
            Refusal::TooLarge(n) => {
                stats.oversized_bodies.add(1);
                stats.oversized_bytes.add(n);
                log::error!(
                    "telemetry listener: refused a {n}-byte body over the {}-byte limit; raise KINESIS_TELEMETRY_MAX_BODY_BYTES or lower KINESIS_TELEMETRY_BUFFER_MAX_BYTES",
                    self.shared.limits.body_bytes
                );
            }
            _ => {
                stats.refused_requests.add(1);
                log::log!(
                    first_time(&self.shared.warned.refused),
                    "telemetry listener: refused a request that is not a Telemetry API delivery ({r:?}, answered {}); counted as refusedRequests",
                    r.status()
                );
            }
        }
        Failure::Refused(r.status())
    }

    /// Answers `status` and closes, reading (a bounded part of) what the
    /// client still sends so the answer is not lost to a reset.
    fn refuse(&mut self, status: u16) {
        if self.write(&answer(status, true)).is_err() {
            return;
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        let _ = self.stream.set_read_timeout(Some(LINGER_TIME));
        let start = Instant::now();
        let mut read = 0;
        let mut scratch = [0u8; 4096];
        while read < LINGER_BYTES && start.elapsed() < LINGER_TIME {
            match self.stream.read(&mut scratch) {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.stream.write_all(bytes).map_err(|_| Failure::Gone)
    }

    /// Reads some bytes into `out`, within the request's time.
    fn read_some(&mut self, out: &mut [u8], clock: &mut Clock) -> Result<usize, Failure> {
        loop {
            let started = Instant::now();
            let result = self.stream.read(out);
            let in_time = clock.charge(started.elapsed());
            match result {
                Ok(0) => return Err(Failure::Gone),
                Err(e)
                    if !matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    return Err(Failure::Gone)
                }
                _ if !in_time => return Err(self.stalled()),
                Ok(n) => return Ok(n),
                Err(_) => {} // a tick: wait again
            }
        }
    }

    fn stalled(&self) -> Failure {
        self.shared.stats.stalled_requests.add(1);
        log::log!(
            first_time(&self.shared.warned.stalled),
            "telemetry listener: a request took over {:?} to arrive; answered 408 and closed (counted as stalledRequests)",
            self.shared.limits.request_time
        );
        Failure::Refused(408)
    }

    /// Reads more into `buf`, keeping it under `cap` bytes.
    fn fill(&mut self, clock: &mut Clock, cap: usize) -> Result<(), Failure> {
        let mut chunk = [0u8; 4096];
        let room = cap.saturating_sub(self.buf.len()).clamp(1, chunk.len());
        let n = self.read_some(&mut chunk[..room], clock)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Appends `n` body bytes to `body`: first what `buf` holds, then reads.
    fn append(
        &mut self,
        body: &mut Vec<u8>,
        n: usize,
        held: &mut Held,
        clock: &mut Clock,
    ) -> Result<(), Failure> {
        let end = body.len() + n;
        if end > body.capacity() {
            // Doubling (up to the body limit): many small chunks must not
            // cost a copy each.
            let cap = end
                .max(body.capacity() * 2)
                .min(end.max(self.shared.limits.body_bytes));
            if !self.make_room(held, cap - body.capacity()) {
                self.shared.stats.shed_connections.add(1);
                log::log!(
                    first_time(&self.shared.warned.full),
                    "telemetry listener: {} bytes of bodies are being read already; answered 503 (counted as shedConnections)",
                    self.shared.limits.bodies_in_flight
                );
                return Err(Failure::Refused(503));
            }
            body.reserve_exact(cap - body.len());
        }
        let buffered = self.buf.len().min(n);
        body.extend(self.buf.drain(..buffered));
        let mut chunk = [0u8; 16 * 1024];
        while body.len() < end {
            let want = (end - body.len()).min(chunk.len());
            let k = self.read_some(&mut chunk[..want], clock)?;
            body.extend_from_slice(&chunk[..k]);
        }
        Ok(())
    }

    /// Takes `n` more body bytes, shedding the oldest slow requests (those
    /// past the grace time) while the bodies in flight leave no room; their
    /// threads give their bytes back as they end.
    fn make_room(&self, held: &mut Held, n: usize) -> bool {
        for _ in 0..ROOM_TRIES {
            if held.take(n) {
                return true;
            }
            self.shared.shed_slow_request(self.id);
            std::thread::sleep(ROOM_WAIT);
        }
        held.take(n)
    }

    fn body(&mut self, n: usize, held: &mut Held, clock: &mut Clock) -> Result<Vec<u8>, Failure> {
        let mut body = Vec::new();
        self.append(&mut body, n, held, clock)?;
        Ok(body)
    }

    fn chunked(&mut self, held: &mut Held, clock: &mut Clock) -> Result<Vec<u8>, Failure> {
        let mut body = Vec::new();
        loop {
            let line = self.line(clock)?;
            let size = request_head::chunk_size(&line).ok_or_else(|| self.malformed())?;
            if size == 0 {
                break;
            }
            if body.len() as u64 + size > self.shared.limits.body_bytes as u64 {
                return Err(self.refused(Refusal::TooLarge(body.len() as u64 + size)));
            }
            self.append(&mut body, size as usize, held, clock)?;
            if !self.line(clock)?.is_empty() {
                return Err(self.malformed());
            }
        }
        // Trailers, up to the blank line.
        while !self.line(clock)?.is_empty() {}
        Ok(body)
    }

    fn malformed(&self) -> Failure {
        self.refused(Refusal::Malformed)
    }

    /// The next CRLF-terminated line (without it), at most a head's size.
    fn line(&mut self, clock: &mut Clock) -> Result<Vec<u8>, Failure> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.buf.len() >= self.shared.limits.head_bytes {
                return Err(self.malformed());
            }
            self.fill(clock, self.shared.limits.head_bytes)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_millis(250);

    /// Which of `list` (state, age in ms, trusted) is shed first, at a
    /// fake "now" 10 s after a fake start.
    fn first(list: &[(State, u64, bool)], room: Room) -> Option<usize> {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(10);
        let standings = list.iter().map(|&(state, age_ms, trusted)| {
            Some(Standing {
                state,
                since: now - Duration::from_millis(age_ms),
                trusted,
            })
        });
        pick(standings, now, GRACE, room)
    }

    use State::{Forwarding, Idle, Reading};

    #[test]
    fn a_connection_just_accepted_is_shed_last_among_strangers() {
        // A slow request past its grace goes before a connection just accepted.
        assert_eq!(
            first(&[(Idle, 0, false), (Reading, 1000, false)], Room::Slot),
            Some(1)
        );
        // An old idle connection goes first of all.
        assert_eq!(
            first(&[(Reading, 1000, false), (Idle, 1000, false)], Room::Slot),
            Some(1)
        );
        // With nothing else to shed, the newest connection is not spared.
        assert_eq!(
            first(&[(Reading, 0, false), (Idle, 0, false)], Room::Slot),
            Some(1)
        );
        // Never a young request nor a delivery being forwarded.
        assert_eq!(
            first(
                &[(Reading, 0, false), (Forwarding, 9000, false)],
                Room::Slot
            ),
            None
        );
        // The oldest among equals.
        assert_eq!(
            first(
                &[(Idle, 300, false), (Idle, 900, false), (Idle, 600, false)],
                Room::Slot
            ),
            Some(1)
        );
    }

    #[test]
    fn lambdas_connection_is_shed_after_every_stranger() {
        // Lambda's kept-alive connection, idle for seconds between deliveries,
        // against strangers of every kind: each stranger goes first.
        let lambda = (Idle, 5000, true);
        for stranger in [
            (Idle, 1000, false),
            (Reading, 1000, false),
            (Idle, 0, false),
        ] {
            assert_eq!(
                first(&[lambda, stranger], Room::Slot),
                Some(1),
                "{stranger:?}"
            );
            assert_eq!(
                first(&[stranger, lambda], Room::Slot),
                Some(0),
                "{stranger:?}"
            );
        }
        // Slow strangers holding every other slot: one of them goes, the
        // oldest slow request once no stranger is idle.
        let mut full = vec![lambda];
        full.extend((0..15).map(|i| (Reading, 300 + i * 100, false)));
        assert_eq!(first(&full, Room::Slot), Some(15));
        // Besides it, only strangers that may not be shed yet (young
        // requests): it goes. Anything in the sandbox can earn trust with one
        // delivery, so trust orders the shedding, it never exempts.
        assert_eq!(first(&[lambda, (Reading, 0, false)], Room::Slot), Some(0));
        // Among trusted ones the same order holds.
        let slow_trusted = (Reading, 1000, true);
        assert_eq!(first(&[slow_trusted, lambda], Room::Slot), Some(1));
        assert_eq!(first(&[(Idle, 0, true), slow_trusted], Room::Slot), Some(1));
        assert_eq!(first(&[(Forwarding, 9000, true)], Room::Slot), None);
    }

    #[test]
    fn body_room_is_made_from_slow_requests_strangers_first() {
        let room = Room::Body;
        assert_eq!(
            first(&[(Idle, 9000, false), (Reading, 100, false)], room),
            None
        );
        assert_eq!(
            first(&[(Reading, 9000, true), (Reading, 300, false)], room),
            Some(1)
        );
        assert_eq!(
            first(&[(Reading, 9000, true), (Idle, 300, false)], room),
            Some(0)
        );
        // `except` (the asking request itself) is no candidate.
        let t0 = Instant::now();
        let me = Standing {
            state: Reading,
            since: t0,
            trusted: false,
        };
        assert_eq!(pick([None, Some(me)], t0 + GRACE, GRACE, room), Some(1));
        assert_eq!(pick([Some(me), None], t0 + GRACE, GRACE, room), Some(0));
        assert_eq!(pick([None::<Standing>], t0 + GRACE, GRACE, room), None);
        // A "now" before `since` (clocks read on two threads) is age zero.
        assert_eq!(shed_rank(me, t0 - GRACE, GRACE, Room::Slot), None);
    }

    #[test]
    fn a_freeze_does_not_count_against_a_request() {
        let mut c = Clock {
            spent: Duration::ZERO,
            limit: Duration::from_secs(10),
        };
        assert!(c.charge(Duration::from_secs(600)));
        for _ in 0..6 {
            assert!(c.charge(Duration::from_millis(1500)));
        }
        assert!(!c.charge(Duration::from_millis(1500)));
    }

    #[test]
    fn held_bytes_are_bounded_and_returned() {
        let total = AtomicUsize::new(0);
        {
            let mut a = Held {
                total: &total,
                limit: 100,
                mine: 0,
            };
            assert!(a.take(60));
            let mut b = Held {
                total: &total,
                limit: 100,
                mine: 0,
            };
            assert!(!b.take(41));
            assert!(b.take(40));
            assert_eq!(total.load(Ordering::Relaxed), 100);
        }
        assert_eq!(total.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn answers_are_complete_heads() {
        assert_eq!(
            answer(405, true),
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            answer(200, false),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        );
    }
}
