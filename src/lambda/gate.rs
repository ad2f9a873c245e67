//! The telemetry listener's front door: it owns the subscribed port (bound
//! on the addresses `hosts` finds for `sandbox.localdomain`, without DNS),
//! frames each request once (the head with httparse, `request_head`; the
//! body by its length or chunks), hands each whole `POST /` delivery to the
//! intake (`listener`) on the connection's own thread, and answers with
//! tiny_http's `Response`. Anything in the sandbox can connect here, so
//! every resource a client can make us hold is bounded (README "What the
//! listener bounds"); the bounds are the pure functions at the top, each
//! with unit tests:
//!
//! - connections: at most `Limits::connections` (`admission`); past it one
//!   is shed in the order of `shed_rank` (strangers before connections that
//!   carried a delivery; idle, then slow), or the newcomer waits, then gets
//!   a 503. A shed connection hands nothing over, not even a request that
//!   had arrived whole: it cannot answer, and Lambda delivers again what it
//!   had no answer to. The accepting thread only accepts, sheds and
//!   spawns: it never reads from or waits on a client, and survives every
//!   accept error (`EMFILE` under Lambda's 1,024-file limit included);
//! - a request head: at most `head_bytes` (431 past it), decided on before
//!   any body byte is read (`request_head`), so a refused request never
//!   waits for its body;
//! - body bytes held across all connections: at most `bodies_in_flight`
//!   (`BodyRoom`; 503 past it), each body at most the body limit (413);
//! - time: a request must arrive whole within `request_time` of thawed time
//!   from its first byte (`Clock`; 408 past it). Freezes do not count: a
//!   read that waited far longer than its tick was frozen, not slow.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tiny_http::{HTTPVersion, Response};

use crate::lambda::hosts::{self, Source, SANDBOX_HOST};
use crate::lambda::listener::{Intake, ListenerSettings, Taken, READER_STACK};
use crate::lambda::request_head::{self, Body, Refusal};

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
/// While there is no room (a slot, body bytes): how often, and how long
/// apart, to look again (in all, longer than `Limits::grace`, so some
/// holder becomes sheddable) before answering 503.
const ROOM_TRIES: u32 = 80;
const ROOM_WAIT: Duration = Duration::from_millis(5);

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
    /// The defaults, with the configured body limit
    /// (`KINESIS_TELEMETRY_MAX_BODY_BYTES`).
    pub fn new(settings: &ListenerSettings) -> Limits {
        let body_bytes = settings.max_body_bytes;
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

// ------------------------------------------------------------------ policy

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a request (a kept-alive connection).
    Idle,
    /// A request is arriving.
    Reading,
    /// A whole delivery is being handed over: never shed (that would lose it).
    Delivering,
}

/// What the shedding order looks at in a connection.
#[derive(Debug, Clone, Copy)]
struct Standing {
    state: State,
    /// When the state began.
    since: Instant,
    /// It has carried a delivery the intake took: Lambda's, most likely,
    /// kept alive between deliveries.
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
/// Body room is made from slow requests only. Never one delivering.
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

/// What a new connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// A free slot.
    Slot,
    /// The slot of connection `.0`, shed for it.
    Shed(usize),
    /// No slot can be had yet: wait on a thread of its own.
    Wait,
    /// As many wait already: 503.
    Refuse,
}

/// `open` connections hold slots, `waiting` newcomers wait for one, and
/// `first` is the one `pick` would shed for a slot.
fn admission(open: usize, waiting: usize, limit: usize, first: Option<usize>) -> Admission {
    match first {
        _ if open < limit => Admission::Slot,
        Some(i) => Admission::Shed(i),
        None if waiting < limit => Admission::Wait,
        None => Admission::Refuse,
    }
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

/// Body bytes a request holds of the budget all share (`total`, at most
/// `limit`), returned when it ends.
struct BodyRoom<'a> {
    total: &'a AtomicUsize,
    limit: usize,
    mine: usize,
}

impl BodyRoom<'_> {
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

impl Drop for BodyRoom<'_> {
    fn drop(&mut self) {
        self.total.fetch_sub(self.mine, Ordering::AcqRel);
    }
}

// ----------------------------------------------------------------- sockets

/// Why the listener could not bind its port.
#[derive(Debug)]
pub enum BindError {
    Listen {
        ip: std::net::IpAddr,
        port: u16,
        source: io::Error,
    },
    /// Bound to port 0, but the system would not say which port it got.
    NoAddress(io::Error),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::Listen { ip, port, source } => {
                write!(f, "cannot listen on {ip} port {port}: {source}")
            }
            BindError::NoAddress(e) => write!(f, "the listener has no address: {e}"),
        }
    }
}

/// Binds the port on the addresses `/etc/hosts` gives `sandbox.localdomain`
/// (Lambda delivers there), else on loopback and, if this machine has it,
/// Lambda's telemetry address (`hosts`: no DNS query either way). Port 0
/// means any free port; returns the port.
pub fn bind(port: u16) -> Result<(Vec<TcpListener>, u16), BindError> {
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
                    port = s.local_addr().map_err(BindError::NoAddress)?.port();
                }
                sockets.push(s);
            }
            Err(source) if sockets.is_empty() => {
                return Err(BindError::Listen { ip, port, source })
            }
            Err(e) if addrs.from == Source::Fallback => {
                log::debug!("telemetry listener: not also on {ip} port {port}: {e}");
            }
            Err(e) => log::warn!("telemetry listener: cannot also listen on {ip} port {port}: {e}"),
        }
    }
    Ok((sockets, port))
}

/// Deliveries taken whole but not answered yet: the process waits for them
/// before it exits, so Lambda does not see a delivery fail that was taken.
#[derive(Debug, Default)]
pub struct Unanswered {
    count: Mutex<usize>,
    answered: Condvar,
}

impl Unanswered {
    /// Waits until every delivery is answered, or `until`.
    pub fn wait(&self, until: Instant) {
        let timeout = until.saturating_duration_since(Instant::now());
        let _ = self
            .answered
            .wait_timeout_while(lock(&self.count), timeout, |n| *n > 0);
    }

    fn add(&self) {
        *lock(&self.count) += 1;
    }

    fn done(&self) {
        *lock(&self.count) -= 1;
        self.answered.notify_all();
    }
}

/// Serves `sockets` until the process exits: one accepting thread each.
pub fn serve(
    sockets: Vec<TcpListener>,
    intake: Intake,
    limits: Limits,
    unanswered: Arc<Unanswered>,
) {
    let shared = Arc::new(Shared {
        limits,
        intake,
        unanswered,
        slots: Mutex::new(Slots::default()),
        held: AtomicUsize::new(0),
        warned: Default::default(),
    });
    let mut sockets = sockets.into_iter();
    let Some(first) = sockets.next() else { return };
    for socket in sockets {
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("accept".into())
            .stack_size(64 * 1024)
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
            Ok((stream, _)) => shared.admit(stream),
            Err(e) => shared.accept_failed(&e),
        }
    }
}

struct Slot {
    id: u64,
    /// A handle to shut the connection down with when it is shed.
    stream: TcpStream,
    standing: Standing,
}

#[derive(Default)]
struct Slots {
    next_id: u64,
    list: Vec<Slot>,
    /// New connections waiting for a slot.
    waiting: usize,
}

impl Slots {
    /// Shuts down and forgets the connection first in the shedding order,
    /// other than `except`, if any may be shed. Its thread ends on its next
    /// read. The caller counts it.
    fn shed_first(&mut self, grace: Duration, room: Room, except: Option<u64>) -> bool {
        let standings = self.list.iter();
        let standings = standings.map(|s| (Some(s.id) != except).then_some(s.standing));
        let Some(i) = pick(standings, Instant::now(), grace, room) else {
            return false;
        };
        self.shed(i);
        true
    }

    fn shed(&mut self, i: usize) {
        let _ = self.list.swap_remove(i).stream.shutdown(Shutdown::Both);
    }

    fn get(&mut self, id: u64) -> Option<&mut Standing> {
        let slot = self.list.iter_mut().find(|s| s.id == id);
        slot.map(|s| &mut s.standing)
    }
}

/// Problems logged at WARN the first time, at DEBUG after that.
#[derive(Clone, Copy)]
enum Warn {
    Shed,
    Accept,
    Refused,
    Stalled,
    Full,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Shared {
    limits: Limits,
    intake: Intake,
    slots: Mutex<Slots>,
    /// Body bytes held by all connections (`BodyRoom`).
    held: AtomicUsize,
    unanswered: Arc<Unanswered>,
    warned: [AtomicBool; 5],
}

/// Where a new connection is in `Shared::enter`.
enum Entry {
    Slot(u64),
    Wait(TcpStream),
    Refused,
}

impl Shared {
    /// Counts a problem; logs it at WARN the first time, at DEBUG after.
    fn note(&self, w: Warn, what: std::fmt::Arguments) {
        let stats = &self.intake.stats;
        let counter = match w {
            Warn::Shed | Warn::Full => &stats.shed_connections,
            Warn::Accept => &stats.accept_errors,
            Warn::Refused => &stats.refused_requests,
            Warn::Stalled => &stats.stalled_requests,
        };
        counter.add(1);
        let level = match self.warned[w as usize].swap(true, Ordering::Relaxed) {
            true => log::Level::Debug,
            false => log::Level::Warn,
        };
        log::log!(level, "telemetry listener: {what}");
    }

    /// A new connection: a slot and a thread, or shed.
    fn admit(self: &Arc<Self>, stream: TcpStream) {
        let handle = match stream.try_clone() {
            Ok(h) => h,
            Err(e) => return self.shed(stream, &e.to_string()),
        };
        // A slot now, or (when every connection is busy with a young request)
        // a wait of its own for one: the accepting thread never waits.
        let entry = self.enter(handle, false);
        let taken = match entry {
            Entry::Refused => return self.shed(stream, "the connection limit is reached"),
            Entry::Slot(id) => Some(id),
            Entry::Wait(_) => None,
        };
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("connection".into())
            .stack_size(READER_STACK)
            .spawn(move || {
                let Some(id) = me.slot_of(entry) else {
                    return me.shed(stream, "no connection became free in time");
                };
                let reader = BufReader::new(Timed {
                    stream,
                    clock: None,
                });
                Client {
                    reader,
                    id,
                    shared: &me,
                }
                .run();
                lock(&me.slots).list.retain(|s| s.id != id);
            });
        if let Err(e) = spawned {
            let mut slots = lock(&self.slots);
            match taken {
                Some(id) => slots.list.retain(|s| s.id != id),
                None => slots.waiting -= 1,
            }
            drop(slots);
            self.count_shed(&format!("cannot start a thread for it: {e}"));
        }
    }

    /// `handle`'s connection by `admission`; `waiting`: it waits already.
    fn enter(&self, handle: TcpStream, waiting: bool) -> Entry {
        let mut slots = lock(&self.slots);
        let (open, limit) = (slots.list.len(), self.limits.connections);
        let first = if open < limit {
            None
        } else {
            let standings = slots.list.iter().map(|s| Some(s.standing));
            pick(standings, Instant::now(), self.limits.grace, Room::Slot)
        };
        let others = slots.waiting - usize::from(waiting);
        let decision = admission(open, others, limit, first);
        slots.waiting = others + usize::from(decision == Admission::Wait);
        match decision {
            Admission::Slot => {}
            Admission::Shed(i) => {
                slots.shed(i);
                self.count_shed("the oldest connection was shed for a new one");
            }
            Admission::Wait => return Entry::Wait(handle),
            Admission::Refuse => return Entry::Refused,
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
        Entry::Slot(id)
    }

    /// The slot an entry has, or waits (on the new connection's own thread)
    /// for: at most `ROOM_WAIT × ROOM_TRIES`, longer than the grace time.
    fn slot_of(&self, mut entry: Entry) -> Option<u64> {
        for _ in 0..ROOM_TRIES {
            let Entry::Wait(handle) = entry else { break };
            std::thread::sleep(ROOM_WAIT);
            entry = self.enter(handle, true);
        }
        match entry {
            Entry::Slot(id) => Some(id),
            Entry::Refused => None,
            Entry::Wait(_) => {
                lock(&self.slots).waiting -= 1;
                None
            }
        }
    }

    fn count_shed(&self, why: &str) {
        let most = self.limits.connections;
        self.note(Warn::Shed, format_args!("a connection was shed ({why}; at most {most} at once): something in the sandbox holds connections to the telemetry port; counted as shedConnections"));
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
        let open = lock(&self.slots).list.len();
        self.note(Warn::Accept, format_args!("accepting a connection failed: {e} ({open} connections open); shedding the oldest and trying again (counted as acceptErrors)"));
        // Out of file descriptors (or memory): make room, and do not spin.
        if lock(&self.slots).shed_first(Duration::ZERO, Room::Slot, None) {
            self.count_shed("the process is out of resources");
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    /// Takes `n` more body bytes for connection `me`, shedding the oldest
    /// slow requests (past the grace time; strangers' first) while the
    /// bodies in flight leave no room (their threads give their bytes back
    /// as they end); 503 if none goes in time.
    fn make_room(&self, budget: &mut BodyRoom, n: usize, me: u64) -> Result<(), Stopped> {
        for _ in 0..ROOM_TRIES {
            if budget.take(n) {
                return Ok(());
            }
            if lock(&self.slots).shed_first(self.limits.grace, Room::Body, Some(me)) {
                self.count_shed("a slow request was shed to make room for body bytes");
            }
            std::thread::sleep(ROOM_WAIT);
        }
        if budget.take(n) {
            return Ok(());
        }
        let most = self.limits.bodies_in_flight;
        self.note(Warn::Full, format_args!("{most} bytes of bodies are being read already; answered 503 (counted as shedConnections)"));
        Err(Stopped::Refused(503))
    }

    /// False if the connection was shed: it has no slot any more.
    fn set_state(&self, id: u64, state: State) -> bool {
        let mut slots = lock(&self.slots);
        let Some(s) = slots.get(id) else { return false };
        s.state = state;
        s.since = Instant::now();
        true
    }
}

/// The bytes of a bodiless answer, as tiny_http writes them. Its
/// `Response` leaves out a `Connection` header (its server adds that
/// itself): a closing answer gets it here.
fn answer(status: u16, close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    let _ = Response::empty(status).raw_print(&mut out, HTTPVersion(1, 1), &[], false, None);
    if close && out.ends_with(b"\r\n\r\n") {
        out.truncate(out.len() - 2);
        out.extend_from_slice(b"Connection: close\r\n\r\n");
    }
    out
}

/// Why a request ended without a delivery.
#[derive(Debug)]
enum Stopped {
    /// Answered with this status, then the connection closes.
    Refused(u16),
    /// The client went away (or was shed): nothing to answer.
    Gone,
}

/// A connection's socket as its requests read it: each read waits at most
/// a tick, and is charged to the request's `clock`; past its limit a read
/// fails with `TimedOut`. Without a clock (between requests) a read waits
/// as long as it takes.
struct Timed {
    stream: TcpStream,
    clock: Option<Clock>,
}

impl Read for Timed {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let started = Instant::now();
            let result = self.stream.read(out);
            let waited = started.elapsed();
            let in_time = self.clock.as_mut().is_none_or(|c| c.charge(waited));
            match result {
                Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(e)
                }
                _ if !in_time => return Err(ErrorKind::TimedOut.into()),
                Err(_) => {} // a tick: wait again
                ok => return ok,
            }
        }
    }
}

/// One client connection, on its own thread.
struct Client<'a> {
    reader: BufReader<Timed>,
    id: u64,
    shared: &'a Shared,
}

impl Client<'_> {
    fn run(mut self) {
        let _ = self.stream().set_nodelay(true);
        let _ = self.stream().set_write_timeout(Some(WRITE_TIMEOUT));
        loop {
            self.shared.set_state(self.id, State::Idle);
            match self.request() {
                Ok(true) => {}
                Ok(false) | Err(Stopped::Gone) => return,
                Err(Stopped::Refused(status)) => return self.refuse(status),
            }
        }
    }

    fn stream(&mut self) -> &mut TcpStream {
        &mut self.reader.get_mut().stream
    }

    /// One request, from its first byte to its answer. Ok(keep-alive).
    fn request(&mut self) -> Result<bool, Stopped> {
        let limits = self.shared.limits;
        if self.reader.buffer().is_empty() {
            // A kept-alive connection waits without a clock (freezes, idle
            // time between invokes); shedding it ends the wait.
            let _ = self.stream().set_read_timeout(None);
            self.reader.get_mut().clock = None;
            if self.reader.fill_buf().map_or(true, |b| b.is_empty()) {
                return Err(Stopped::Gone);
            }
        }
        self.shared.set_state(self.id, State::Reading);
        let _ = self.stream().set_read_timeout(Some(TICK));
        self.reader.get_mut().clock = Some(Clock {
            spent: Duration::ZERO,
            limit: limits.request_time,
        });
        let head = self.head()?;
        let decision = request_head::parse(&head, limits.body_bytes as u64);
        let admitted = decision.map_err(|r| self.refused(r))?;
        if admitted.expect_continue {
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let mut budget = BodyRoom {
            total: &self.shared.held,
            limit: limits.bodies_in_flight,
            mine: 0,
        };
        let mut body = Vec::new();
        match admitted.body {
            Body::Length(n) => self.read_body(&mut body, n as usize, &mut budget)?,
            Body::Chunked => self.chunked(&mut body, &mut budget)?,
        }
        // Shed meanwhile, a connection still reads what had arrived but can
        // no longer answer: Lambda sees it close and delivers again, so it
        // must not be taken. Delivering, it is no longer shed.
        if !self.shared.set_state(self.id, State::Delivering) {
            return Err(Stopped::Gone);
        }
        let unanswered = &self.shared.unanswered;
        unanswered.add();
        let status = match self.shared.intake.take(body) {
            Taken::Queued => {
                if let Some(s) = lock(&self.shared.slots).get(self.id) {
                    s.trusted = true;
                }
                200
            }
            // (Lambda's connection all the same: a push-back, not a stranger)
            Taken::Refused => {
                if let Some(s) = lock(&self.shared.slots).get(self.id) {
                    s.trusted = true;
                }
                503
            }
            Taken::TooLate => 503,
        };
        drop(budget);
        let written = self.write(&answer(status, admitted.close));
        unanswered.done();
        written?;
        Ok(!admitted.close)
    }

    /// The head, up to and including its blank line, at most `head_bytes`.
    fn head(&mut self) -> Result<Vec<u8>, Stopped> {
        let limit = self.shared.limits.head_bytes;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let room = limit.saturating_sub(head.len()) as u64;
            let read = (&mut self.reader).take(room).read_until(b'\n', &mut head);
            match read.map_err(|e| self.lost(&e))? {
                0 if head.len() >= limit => return Err(self.refused(Refusal::HeadTooLarge)),
                0 => return Err(Stopped::Gone),
                _ => {}
            }
        }
        Ok(head)
    }

    /// The next CRLF-terminated line of a chunked body (without it), at
    /// most a head's size.
    fn line(&mut self) -> Result<Vec<u8>, Stopped> {
        let limit = self.shared.limits.head_bytes as u64;
        let mut line = Vec::new();
        let read = (&mut self.reader).take(limit).read_until(b'\n', &mut line);
        read.map_err(|e| self.lost(&e))?;
        if line.ends_with(b"\r\n") {
            line.truncate(line.len() - 2);
            return Ok(line);
        }
        if line.ends_with(b"\n") || line.len() as u64 >= limit {
            return Err(self.refused(Refusal::Malformed));
        }
        Err(Stopped::Gone)
    }

    /// Appends `n` body bytes to `body`, within the body budget: room is
    /// made by doubling (up to the body limit), so that many small chunks
    /// do not cost a copy each.
    fn read_body(
        &mut self,
        body: &mut Vec<u8>,
        n: usize,
        budget: &mut BodyRoom,
    ) -> Result<(), Stopped> {
        let end = body.len() + n;
        if end > body.capacity() {
            let cap = end
                .max(body.capacity() * 2)
                .min(end.max(self.shared.limits.body_bytes));
            let more = cap - body.capacity();
            self.shared.make_room(budget, more, self.id)?;
            body.reserve_exact(cap - body.len());
        }
        let read = (&mut self.reader).take(n as u64).read_to_end(body);
        read.map_err(|e| self.lost(&e))?;
        if body.len() < end {
            return Err(Stopped::Gone);
        }
        Ok(())
    }

    fn chunked(&mut self, body: &mut Vec<u8>, budget: &mut BodyRoom) -> Result<(), Stopped> {
        loop {
            let line = self.line()?;
            let size = request_head::chunk_size(&line);
            let size = size.ok_or_else(|| self.refused(Refusal::Malformed))?;
            if size == 0 {
                break;
            }
            let total = body.len() as u64 + size;
            if total > self.shared.limits.body_bytes as u64 {
                return Err(self.refused(Refusal::TooLarge(total)));
            }
            self.read_body(body, size as usize, budget)?;
            if !self.line()?.is_empty() {
                return Err(self.refused(Refusal::Malformed));
            }
        }
        // Trailers, up to the blank line.
        while !self.line()?.is_empty() {}
        Ok(())
    }

    /// A failed read: over the request's time (408), or the client is gone.
    fn lost(&self, e: &io::Error) -> Stopped {
        if e.kind() != ErrorKind::TimedOut {
            return Stopped::Gone;
        }
        let time = self.shared.limits.request_time;
        self.shared.note(Warn::Stalled, format_args!("a request took over {time:?} to arrive; answered 408 and closed (counted as stalledRequests)"));
        Stopped::Refused(408)
    }

    /// Counts and logs a refused head; the status to answer.
    fn refused(&self, r: Refusal) -> Stopped {
        let stats = &self.shared.intake.stats;
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
                let status = r.status();
                self.shared.note(Warn::Refused, format_args!("refused a request that is not a Telemetry API delivery ({r:?}, answered {status}); counted as refusedRequests"));
            }
        }
        Stopped::Refused(r.status())
    }

    /// Answers `status` and closes, reading (a bounded part of) what the
    /// client still sends so the answer is not lost to a reset.
    fn refuse(&mut self, status: u16) {
        if self.write(&answer(status, true)).is_err() {
            return;
        }
        let stream = self.stream();
        let _ = stream.shutdown(Shutdown::Write);
        let _ = stream.set_read_timeout(Some(LINGER_TIME));
        let start = Instant::now();
        let mut read = 0;
        let mut scratch = [0u8; 4096];
        while read < LINGER_BYTES && start.elapsed() < LINGER_TIME {
            match stream.read(&mut scratch) {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Stopped> {
        self.stream().write_all(bytes).map_err(|_| Stopped::Gone)
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

    use State::{Delivering, Idle, Reading};

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
                &[(Reading, 0, false), (Delivering, 9000, false)],
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
        assert_eq!(first(&[(Delivering, 9000, true)], Room::Slot), None);
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
    fn the_body_budget_is_bounded_and_returned() {
        let total = AtomicUsize::new(0);
        {
            let mut a = BodyRoom {
                total: &total,
                limit: 100,
                mine: 0,
            };
            assert!(a.take(60));
            let mut b = BodyRoom {
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
    fn newcomers_take_a_free_slot_else_shed_one_else_wait_in_bounds() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(10);
        let idle = |ms| Standing {
            state: Idle,
            since: now - Duration::from_millis(ms),
            trusted: false,
        };
        let young = Standing {
            state: Reading,
            since: now,
            trusted: false,
        };
        let first =
            |list: &[Standing]| pick(list.iter().copied().map(Some), now, GRACE, Room::Slot);
        assert_eq!(admission(15, 0, 16, None), Admission::Slot);
        // Full: the first in the shedding order goes (the older idle one).
        let full: Vec<Standing> = (0..16)
            .map(|i| if i == 7 { idle(900) } else { idle(300) })
            .collect();
        assert_eq!(admission(16, 0, 16, first(&full)), Admission::Shed(7));
        // Full of young requests: nothing may go; the newcomer waits, as
        // long as fewer than the limit wait already.
        let busy = vec![young; 16];
        assert_eq!(first(&busy), None);
        assert_eq!(admission(16, 15, 16, first(&busy)), Admission::Wait);
        assert_eq!(admission(16, 16, 16, first(&busy)), Admission::Refuse);
    }

    /// A front door with one connection from "Lambda" in a slot: its
    /// `Shared`, the connection's id and server end, Lambda's end, and what
    /// the intake hands the dispatcher.
    fn one_connection() -> (
        Shared,
        u64,
        TcpStream,
        TcpStream,
        crossbeam_channel::Receiver<crate::lambda::telemetry::Delivery>,
    ) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let settings = ListenerSettings {
            port: 0,
            max_body_bytes: 1 << 20,
        };
        let shared = Shared {
            limits: Limits::new(&settings),
            intake: Intake {
                tx,
                backlog: Arc::new(crate::dispatch::backlog::Backlog::new(1 << 24)),
                reading: Default::default(),
                stats: Default::default(),
            },
            slots: Default::default(),
            held: AtomicUsize::new(0),
            unanswered: Default::default(),
            warned: Default::default(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let lambda = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let Entry::Slot(id) = shared.enter(conn.try_clone().unwrap(), false) else {
            panic!("no slot")
        };
        (shared, id, conn, lambda, rx)
    }

    /// Sends one whole delivery (closing) and waits until all of it is in
    /// the server end's receive queue.
    fn deliver(lambda: &mut TcpStream, conn: &TcpStream) {
        let body = br#"[{"time":"2026-01-01T00:00:00.000Z","type":"function","record":"x"}]"#;
        let head = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let request = [head.as_bytes(), body].concat();
        lambda.write_all(&request).unwrap();
        let mut peeked = vec![0; request.len()];
        while conn.peek(&mut peeked).unwrap() < request.len() {}
    }

    fn serve_one(shared: &Shared, id: u64, conn: TcpStream) {
        let reader = BufReader::new(Timed {
            stream: conn,
            clock: None,
        });
        Client { reader, id, shared }.run();
        lock(&shared.slots).list.retain(|s| s.id != id);
    }

    #[test]
    fn a_delivery_is_taken_and_answered() {
        let (shared, id, conn, mut lambda, rx) = one_connection();
        deliver(&mut lambda, &conn);
        serve_one(&shared, id, conn);
        assert_eq!(rx.try_recv().unwrap().events.len(), 1);
        let mut got = String::new();
        lambda.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    }

    #[test]
    fn a_shed_connection_does_not_hand_over_what_it_cannot_answer() {
        // Lambda's delivery has arrived whole when its connection is shed
        // (its thread not yet at it): shut down, the socket still reads what
        // arrived, but cannot answer. Lambda sees it close unanswered and
        // delivers again, so it must not have been taken: it would be on
        // the stream twice.
        let (shared, id, conn, mut lambda, rx) = one_connection();
        deliver(&mut lambda, &conn);
        assert!(lock(&shared.slots).shed_first(Duration::ZERO, Room::Slot, None));
        serve_one(&shared, id, conn);
        let mut got = Vec::new();
        let _ = lambda.read_to_end(&mut got);
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
        assert!(rx.try_recv().is_err(), "taken, yet never answered");
    }

    #[test]
    fn answers_are_complete_heads() {
        for (status, close, line) in [
            (405, true, "HTTP/1.1 405 Method Not Allowed\r\n"),
            (200, false, "HTTP/1.1 200 OK\r\n"),
            (
                431,
                true,
                "HTTP/1.1 431 Request Header Fields Too Large\r\n",
            ),
        ] {
            let a = String::from_utf8(answer(status, close)).unwrap();
            assert!(a.starts_with(line), "{a}");
            assert!(
                a.ends_with("\r\n\r\n") && a.contains("\r\nContent-Length: 0\r\n"),
                "{a}"
            );
            assert_eq!(a.contains("\r\nConnection: close\r\n"), close, "{a}");
            assert_eq!(a.matches("\r\n\r\n").count(), 1, "{a}");
        }
    }
}
