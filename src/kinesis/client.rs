//! The HTTP side of `PutRecords`: one signed POST per call, with connect and
//! overall timeouts bounded by the caller's deadline. Transport failures
//! come back as errors of code `TransportError` so the caller treats every
//! failure the same way, through `kinesis::Retry`; each answer also says
//! whether the request may have reached Kinesis despite failing (a reset or
//! timeout after sending), which is when a resend risks a duplicate.

use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::config::{Config, StaticCredentials, StreamTarget};
use crate::kinesis::credentials::Provider;
use crate::kinesis::sigv4;
use crate::kinesis::wire::{self, ApiError, Response};
use crate::records::pack::Wire;

/// Error code used for failures below HTTP (connect, reset, timeout).
pub const TRANSPORT_ERROR: &str = "TransportError";
/// Most of an answer read (a PutRecords answer for 500 records is ~60 KB).
const MAX_ANSWER_BYTES: u64 = 4 << 20;

/// The answer to one call.
pub struct Outcome {
    pub response: Response,
    /// The request may have reached Kinesis although it failed (reset or
    /// timeout after sending): resending risks a duplicate.
    pub ambiguous: bool,
    /// A request went out (false: it failed before, e.g. no credentials).
    pub sent: bool,
}

pub struct KinesisClient {
    agent: ureq::Agent,
    url: String,
    region: String,
    credentials: Provider,
    target: StreamTarget,
    request_timeout: Duration,
    connect_timeout: Duration,
    /// Idle pooled connections older than this are not reused. The monotonic
    /// clock keeps running while Lambda freezes the sandbox, so this also
    /// drops connections that sat through a long freeze (likely dead: NAT
    /// and load balancers forget idle flows, silently).
    max_idle: Duration,
    /// The request body, reused: a fresh multi-100-KiB buffer per request
    /// is an mmap, a page fault per page and an munmap with a TLB shootdown
    /// (musl's malloc maps large blocks directly).
    body: Vec<u8>,
}

/// Body buffers larger than this are released after the request instead of
/// kept for the next one (idle memory matters more than a rare large send).
const KEEP_BODY_BYTES: usize = 1 << 20;

impl KinesisClient {
    pub fn new(cfg: &Config) -> KinesisClient {
        KinesisClient {
            agent: new_agent(cfg.connect_timeout, cfg.connection_max_idle),
            url: format!("{}/", cfg.endpoint),
            region: cfg.region.clone(),
            credentials: Provider::new(cfg.credentials.clone()),
            target: cfg.stream.clone(),
            request_timeout: cfg.request_timeout,
            connect_timeout: cfg.connect_timeout,
            max_idle: cfg.connection_max_idle,
            body: Vec::new(),
        }
    }

    /// Fetches credentials ahead of the first send (container credentials
    /// take a round trip); failures are retried at send time.
    pub fn warm_up(&mut self) -> Result<(), String> {
        self.credentials
            .get()
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Drops pooled connections, so the next attempt starts on a fresh one.
    pub fn reset_connections(&mut self) {
        self.agent = new_agent(self.connect_timeout, self.max_idle);
    }

    /// Forgets credentials Kinesis called expired; true if new ones can be fetched.
    pub fn refresh_credentials(&mut self) -> bool {
        self.credentials.invalidate()
    }

    /// Sends one `PutRecords` request; never lasts past `deadline`.
    pub fn put_records(&mut self, records: &[Wire], deadline: Instant) -> Outcome {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) {
            return unsent(TRANSPORT_ERROR, "no time left before the deadline".into());
        }
        let credentials = match self.credentials.get() {
            Ok(c) => c.clone(),
            Err(e) => return unsent("CredentialsError", e.to_string()),
        };
        let mut body = std::mem::take(&mut self.body);
        wire::write_put_records_body(&mut body, &self.target, records);
        let outcome = self.send(&credentials, &body, left, records.len());
        if body.capacity() <= KEEP_BODY_BYTES {
            self.body = body;
        }
        outcome
    }

    fn send(
        &self,
        credentials: &StaticCredentials,
        body: &[u8],
        left: Duration,
        records: usize,
    ) -> Outcome {
        let base = [
            ("content-type", wire::CONTENT_TYPE),
            ("x-amz-target", wire::PUT_RECORDS_TARGET),
        ];
        let signed = match sigv4::sign_post(
            credentials,
            &self.region,
            &self.url,
            &base,
            body,
            SystemTime::now(),
        ) {
            Ok(h) => h,
            Err(e) => return unsent("SigningError", e.to_string()),
        };
        let mut req = self
            .agent
            .post(&self.url)
            .config()
            .timeout_global(Some(left.min(self.request_timeout)))
            .build();
        for (k, v) in base {
            req = req.header(k, v);
        }
        for (k, v) in &signed {
            req = req.header(*k, v.as_str());
        }
        let mut resp = match req.send(body) {
            Ok(r) => r,
            Err(e) => {
                let ambiguous = !never_sent(&e);
                return failure(TRANSPORT_ERROR, e.to_string(), ambiguous);
            }
        };
        let status = resp.status().as_u16();
        let error_type = resp
            .headers()
            .get("x-amzn-ErrorType")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut answer = Vec::new();
        if let Err(e) = resp
            .body_mut()
            .as_reader()
            .take(MAX_ANSWER_BYTES)
            .read_to_end(&mut answer)
        {
            return failure(
                TRANSPORT_ERROR,
                format!("reading the response failed: {e}"),
                true,
            );
        }
        let response = wire::parse_response(status, error_type.as_deref(), &answer, records);
        Outcome {
            // A 200 we cannot read may have stored every record: resending
            // them risks duplicates, which is what `ambiguous` counts.
            ambiguous: status == 200 && matches!(response, Response::Error(_)),
            response,
            sent: true,
        }
    }
}

fn new_agent(connect_timeout: Duration, max_idle: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(connect_timeout))
        .max_idle_age(max_idle)
        .max_idle_connections(4)
        // Kinesis answers are small; the default 128 KiB buffers are not needed.
        .input_buffer_size(16 * 1024)
        .user_agent(concat!(
            "kinesis-telemetry-extension/",
            env!("CARGO_PKG_VERSION")
        ))
        .build();
    ureq::Agent::with_parts(config, DefaultConnector::new(), CachingResolver::default())
}

/// How long a resolved endpoint address is reused. The monotonic clock runs
/// through freezes, so a sandbox thawed after a long freeze resolves again.
const RESOLVE_TTL: Duration = Duration::from_secs(30);

/// ureq resolves the host on every request, even one that reuses a pooled
/// connection, and with a timeout set (ours always is) it resolves on a new
/// thread: a thread, with its stack mapped and unmapped, per PutRecords. This
/// keeps the last answer for `RESOLVE_TTL`; lookups still run under ureq's
/// timeout, and failures are not kept.
#[derive(Debug, Default)]
struct CachingResolver {
    inner: DefaultResolver,
    last: Mutex<Option<(String, ResolvedSocketAddrs, Instant)>>,
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or_default(),
            uri.authority().map(|a| a.as_str()).unwrap_or_default()
        );
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, addrs, at)) = &*last {
            if *k == key && at.elapsed() < RESOLVE_TTL {
                return Ok(addrs.clone());
            }
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        *last = Some((key, addrs.clone(), Instant::now()));
        Ok(addrs)
    }
}

/// Failures that happen before any byte of the request left.
fn never_sent(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve),
        ureq::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

fn failure(code: &str, message: String, ambiguous: bool) -> Outcome {
    Outcome {
        response: Response::Error(ApiError {
            status: 0,
            code: code.into(),
            message,
        }),
        ambiguous,
        sent: true,
    }
}

/// A failure before anything was sent.
fn unsent(code: &str, message: String) -> Outcome {
    Outcome {
        sent: false,
        ..failure(code, message, false)
    }
}
