//! The HTTP side of `PutRecords`: one signed POST per call, with connect and
//! overall timeouts bounded by the caller's deadline. Each call ends in an
//! `PutOutcome` that says whether the request went out and whether it may have
//! reached Kinesis despite failing (a reset or timeout after sending), which
//! is when a resend risks a duplicate. Requests go through an HTTP proxy
//! when `proxy` says so.

use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    ConnectProxyConnector, Connector, DefaultConnector, NextTimeout, TcpConnector,
};

use crate::kinesis::credentials::{Provider, StaticCredentials};
use crate::kinesis::error::Failure;
use crate::kinesis::proxy::{describe, proxy_for};
use crate::kinesis::settings::{KinesisSettings, StreamTarget};
use crate::kinesis::sigv4;
use crate::kinesis::sts::AssumedRole;
use crate::kinesis::tls::BundleTls;
use crate::kinesis::wire::{self, RecordCodes};
use crate::records::format::Wire;

/// Most of an answer read (a PutRecords answer for 500 records is ~60 KB).
const MAX_ANSWER_BYTES: u64 = 4 << 20;

/// What happened to one `PutRecords` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// Kinesis answered 200 (some records may still have been refused).
    Answered(RecordCodes),
    /// Nothing left this process: no credentials, no signature, no time.
    NotSent(Failure),
    /// The request failed and did not reach Kinesis (a refused connection),
    /// or Kinesis refused it as a whole.
    Failed(Failure),
    /// The request failed but may have reached Kinesis (a reset or timeout
    /// after sending, a 200 that cannot be read): resending risks a duplicate.
    MaybeDelivered(Failure),
}

/// Where the dispatcher sends requests: `KinesisClient`, or a scripted one
/// in the dispatcher's tests.
pub trait PutRecords {
    /// Sends one request; never lasts past `deadline`.
    fn put_records(&mut self, records: &[Wire], deadline: Instant) -> PutOutcome;

    /// Forgets credentials Kinesis called expired; true if new ones can be
    /// fetched.
    fn refresh_credentials(&mut self) -> bool {
        false
    }

    /// Fetches what the first request needs ahead of it.
    fn warm_up(&mut self) -> Result<(), Failure> {
        Ok(())
    }
}

pub struct KinesisClient {
    agent: ureq::Agent,
    url: String,
    region: String,
    credentials: Provider,
    target: StreamTarget,
    request_timeout: Duration,
    /// What each agent is made of (connections are reset by a new agent).
    parts: AgentParts,
    /// The request body, reused: a fresh multi-100-KiB buffer per request
    /// is an mmap, a page fault per page and an munmap with a TLB shootdown
    /// (musl's malloc maps large blocks directly).
    body: Vec<u8>,
    /// The HTTP proxy requests go through, for error messages.
    proxy: Option<String>,
    /// The role `PutRecords` are signed as (another account's stream).
    role: Option<AssumedRole>,
    /// The agent STS calls go through, made at the first.
    sts_agent: Option<ureq::Agent>,
}

/// The settings an agent is made with.
#[derive(Debug, Clone)]
struct AgentParts {
    connect_timeout: Duration,
    /// Idle pooled connections older than this are not reused. The monotonic
    /// clock keeps running while Lambda freezes the sandbox, so this also
    /// drops connections that sat through a long freeze (likely dead: NAT
    /// and load balancers forget idle flows, silently).
    max_idle: Duration,
    /// TLS with `AWS_CA_BUNDLE`'s certificates (`None`: ureq's own).
    tls: Option<BundleTls>,
    /// The proxy, if one applies to the endpoint (`proxy_for`).
    proxy: Option<ureq::Proxy>,
}

/// Body buffers larger than this are released after the request instead of
/// kept for the next one (idle memory matters more than a rare large send).
const KEEP_BODY_BYTES: usize = 1 << 20;

impl PutRecords for KinesisClient {
    fn put_records(&mut self, records: &[Wire], deadline: Instant) -> PutOutcome {
        let outcome = self.put(records, deadline);
        if let PutOutcome::NotSent(Failure::Transport(_))
        | PutOutcome::Failed(Failure::Transport(_))
        | PutOutcome::MaybeDelivered(Failure::Transport(_)) = outcome
        {
            // The next attempt starts on a fresh connection: a pooled one
            // may have died (in a freeze, say).
            self.reset_connections();
        }
        outcome
    }

    fn refresh_credentials(&mut self) -> bool {
        let base = self.credentials.invalidate();
        match &mut self.role {
            Some(role) => {
                role.invalidate();
                true
            }
            None => base,
        }
    }

    /// Fetches credentials ahead of the first send (container credentials
    /// take a round trip); failures are retried at send time.
    fn warm_up(&mut self) -> Result<(), Failure> {
        match self.credentials.get() {
            Ok(_) => Ok(()),
            Err(e) => Err(Failure::Credentials(e.to_string())),
        }
    }
}

impl KinesisClient {
    pub fn new(cfg: &KinesisSettings) -> KinesisClient {
        let tls = cfg.ca_bundle.as_deref().and_then(|path| match BundleTls::from_file(path) {
            Ok((tls, n)) => {
                log::info!("AWS_CA_BUNDLE={path}: trusting its {n} certificates besides the built-in roots");
                Some(tls)
            }
            Err(e) => {
                log::error!("AWS_CA_BUNDLE={path}: {e}; only the built-in roots are trusted (fix the file, or unset the variable)");
                None
            }
        });
        // Worked out here, in the dispatcher thread after the first
        // `event/next`, not on the cold-start path.
        let proxy = proxy_for(&cfg.endpoint);
        let proxy_name = proxy.as_ref().map(describe);
        if let Some(p) = &proxy_name {
            log::info!("PutRecords go through the proxy {p} (HTTPS_PROXY; NO_PROXY does not match the endpoint)");
        }
        let parts = AgentParts {
            connect_timeout: cfg.connect_timeout,
            max_idle: cfg.connection_max_idle,
            tls,
            proxy,
        };
        KinesisClient {
            agent: new_agent(&parts),
            url: format!("{}/", cfg.endpoint),
            region: cfg.region.clone(),
            credentials: Provider::new(cfg.credentials.clone()),
            target: cfg.stream.clone(),
            request_timeout: cfg.request_timeout,
            parts,
            body: Vec::new(),
            proxy: proxy_name,
            role: cfg.role.clone().map(AssumedRole::new),
            sts_agent: None,
        }
    }

    /// Drops pooled connections, so the next attempt starts on a fresh one.
    fn reset_connections(&mut self) {
        self.agent = new_agent(&self.parts);
    }

    fn put(&mut self, records: &[Wire], deadline: Instant) -> PutOutcome {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) {
            let why = "no time left before the deadline";
            return PutOutcome::NotSent(Failure::Transport(why.into()));
        }
        let credentials = match self.credentials.get() {
            Ok(c) => c.clone(),
            Err(e) => return PutOutcome::NotSent(Failure::Credentials(e.to_string())),
        };
        // Another account's stream: the role's credentials, assumed here
        // (only while thawed, never on the cold-start path) when needed.
        let credentials = match &mut self.role {
            None => credentials,
            Some(role) => {
                let parts = &self.parts;
                let agent = self.sts_agent.get_or_insert_with(|| {
                    new_agent(&AgentParts {
                        proxy: proxy_for(&role.settings.endpoint),
                        ..parts.clone()
                    })
                });
                let timeout = left.min(self.request_timeout);
                match role.get(agent, &credentials, &self.region, timeout) {
                    Ok(c) => c.clone(),
                    Err(f) => {
                        if matches!(f, Failure::Credentials(_)) {
                            self.sts_agent = None; // a fresh connection next time
                        }
                        return PutOutcome::NotSent(f);
                    }
                }
            }
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
    ) -> PutOutcome {
        let base = [
            ("content-type", wire::CONTENT_TYPE),
            ("x-amz-target", wire::PUT_RECORDS_TARGET),
        ];
        let signed = match sigv4::sign_post(
            credentials,
            &self.region,
            sigv4::SERVICE,
            &self.url,
            &base,
            body,
            SystemTime::now(),
        ) {
            Ok(h) => h,
            Err(e) => return PutOutcome::NotSent(Failure::Signing(e.to_string())),
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
                let failure = Failure::Transport(match &self.proxy {
                    Some(p) => format!("{e} (through the proxy {p})"),
                    None => e.to_string(),
                });
                return match never_sent(&e) {
                    true => PutOutcome::Failed(failure),
                    false => PutOutcome::MaybeDelivered(failure),
                };
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
            let why = format!("reading the response failed: {e}");
            return PutOutcome::MaybeDelivered(Failure::Transport(why));
        }
        match wire::parse_response(status, error_type.as_deref(), &answer, records) {
            Ok(codes) => PutOutcome::Answered(codes),
            // A 200 we cannot read may have stored every record.
            Err(f) if status == 200 => PutOutcome::MaybeDelivered(f),
            Err(f) => PutOutcome::Failed(f),
        }
    }
}

fn new_agent(parts: &AgentParts) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(parts.proxy.clone())
        .timeout_connect(Some(parts.connect_timeout))
        .max_idle_age(parts.max_idle)
        .max_idle_connections(4)
        // Kinesis answers are small; the default 128 KiB buffers are not needed.
        .input_buffer_size(16 * 1024)
        .user_agent(concat!(
            "kinesis-telemetry-extension/",
            env!("CARGO_PKG_VERSION")
        ))
        .build();
    match parts.tls.clone() {
        None => {
            ureq::Agent::with_parts(config, DefaultConnector::new(), CachingResolver::default())
        }
        // ureq's default chain, with our TLS in place of its own.
        Some(tls) => {
            let connector =
                ().chain(ConnectProxyConnector::default())
                    .chain(TcpConnector::default())
                    .chain(tls);
            ureq::Agent::with_parts(config, connector, CachingResolver::default())
        }
    }
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
