//! Configuration: every tunable of the extension, read once from environment
//! variables and validated before the first telemetry arrives.
//!
//! All of the extension's own variables share the prefix `KINESIS_TELEMETRY_`;
//! region, endpoint and credentials use the standard AWS names. Parsing takes
//! a lookup function instead of reading the process environment so that it can
//! be tested without touching global state. Every problem is collected (not
//! just the first) and names the variable, the bad value and what is accepted.

use std::fmt;
use std::time::Duration;

/// Prefix shared by the extension's own variables.
pub const PREFIX: &str = "KINESIS_TELEMETRY_";

/// Which stream to write to: Kinesis accepts either field in `PutRecords`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamTarget {
    Name(String),
    Arn(String),
}

/// When buffered telemetry is sent (see README "Flush policy").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// After each invoke's `platform.runtimeDone`, send everything and wait for it.
    End,
    /// Send only full batches or batches older than `batch_max_age`.
    Batch,
    /// Send when the oldest record is older than `flush_interval`, at invoke
    /// start or while thawed; never wait for runtimeDone.
    Periodic,
    /// `End` while invokes are rare or their rate unknown, `Periodic` when
    /// they come often (gap below `max_delay`).
    Adaptive,
}

/// Explicit hash keys (`KINESIS_TELEMETRY_HASH_KEY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKeyMode {
    /// Kinesis hashes the partition key.
    None,
    /// A random 128-bit hash key per record: an even spread over shards.
    Random,
}

/// Log levels of JSON-format logs, lowest first.
pub const LEVELS: [&str; 6] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"];

/// How each record's partition key is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionKeyMode {
    /// One random key per execution environment: ordered per environment,
    /// environments spread over shards.
    Environment,
    /// The request id of the invocation the event belongs to.
    Request,
    /// A fresh random key per record: the most even spread, no ordering.
    Random,
}

/// Telemetry API buffering: how Lambda batches what it POSTs to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffering {
    pub max_items: u32,
    pub max_bytes: u32,
    pub timeout_ms: u32,
}

/// The telemetry streams a function can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Types {
    pub platform: bool,
    pub function: bool,
    pub extension: bool,
}

impl Types {
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.platform {
            v.push("platform");
        }
        if self.function {
            v.push("function");
        }
        if self.extension {
            v.push("extension");
        }
        v
    }
}

/// AWS credentials taken from the standard environment variables.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets, not even in debug logs.
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where signing credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialsSource {
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`.
    Static(StaticCredentials),
    /// The container credentials endpoint (SnapStart, ECS-style):
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` (or `_RELATIVE_URI`) with
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN` (or `_TOKEN_FILE`).
    Container {
        url: String,
        token: Option<String>,
        token_file: Option<String>,
    },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub stream: StreamTarget,
    pub region: String,
    /// Base URL of the Kinesis API, without a trailing slash.
    pub endpoint: String,
    pub credentials: CredentialsSource,
    pub types: Types,
    pub buffering: Buffering,
    /// 0 lets the OS pick a free port.
    pub listener_port: u16,
    pub flush: FlushMode,
    pub batch_max_age: Duration,
    pub flush_interval: Duration,
    pub max_delay: Duration,
    pub format: crate::records::pack::Format,
    pub hash_key: HashKeyMode,
    /// Platform event names (without `platform.`) to forward; `None`: all.
    pub platform_events: Option<Vec<String>>,
    /// Index in `LEVELS` below which JSON log events are not forwarded.
    pub min_level: Option<usize>,
    pub enrich: bool,
    /// Longest wait for `platform.runtimeDone` after INVOKE; `None`: until the
    /// invoke deadline.
    pub runtime_done_timeout: Option<Duration>,
    pub flush_timeout: Duration,
    pub max_records_per_request: usize,
    pub max_bytes_per_request: usize,
    pub max_record_bytes: usize,
    pub partition_key: PartitionKeyMode,
    pub shutdown_wait: Duration,
    pub max_attempts: u32,
    /// Retry tokens (AWS SDK standard mode): retries spend them, successes
    /// earn them back; when empty, failures wait for the next flush.
    pub retry_budget: u32,
    /// How often counters are also written to the stream while busy
    /// (`None`: only at shutdown).
    pub metrics_interval: Option<Duration>,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Pooled connections idle longer than this (freezes included) are not reused.
    pub connection_max_idle: Duration,
    /// Upper bound on telemetry held in memory before the listener pushes back.
    pub buffer_limit_bytes: usize,
    /// Largest Telemetry API body the listener reads.
    pub max_body_bytes: usize,
}

/// One invalid or missing variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: String,
    pub value: Option<String>,
    pub expected: String,
    /// The value is a secret: say that it is wrong, never what it is.
    pub secret: bool,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(_) if self.secret => write!(
                f,
                "{} is invalid (value not shown): expected {}",
                self.var, self.expected
            ),
            Some(v) if v.trim().is_empty() => {
                write!(f, "{} is empty: expected {}", self.var, self.expected)
            }
            Some(v) => write!(
                f,
                "{}={:?} is invalid: expected {}",
                self.var, v, self.expected
            ),
            None => write!(f, "{} is not set: expected {}", self.var, self.expected),
        }
    }
}

impl std::error::Error for ConfigError {}

/// All problems found in one pass, so a user fixes them in one deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// `KINESIS_TELEMETRY_STRICT`: read on its own because it decides what to do
/// when the rest of the configuration is invalid. Anything but a true value is false.
/// The words `KINESIS_TELEMETRY_STRICT` (and every other switch) takes.
const SWITCH: [(&str, bool); 6] = [
    ("true", true),
    ("false", false),
    ("1", true),
    ("0", false),
    ("yes", true),
    ("no", false),
];

/// `KINESIS_TELEMETRY_STRICT`, read on its own: configuration errors need it
/// when the rest cannot be read. A value that is not a switch is false here,
/// and an error in `from_env`.
pub fn strict_mode(get: &dyn Fn(&str) -> Option<String>) -> bool {
    get("KINESIS_TELEMETRY_STRICT").is_some_and(|v| {
        let v = v.trim().to_ascii_lowercase();
        SWITCH.iter().any(|(w, on)| *on && *w == v)
    })
}

struct Reader<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    /// The trimmed value of a variable, `None` when unset or blank.
    fn raw(&self, var: &str) -> Option<String> {
        (self.get)(var)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn fail(&mut self, var: &str, value: Option<String>, expected: impl Into<String>) {
        self.errors.push(ConfigError {
            var: var.to_string(),
            value,
            expected: expected.into(),
            secret: false,
        });
    }

    /// A secret (credentials): it must be usable in an HTTP header. An
    /// error names the variable and the rule, never the value.
    fn secret(&mut self, var: &str) -> Option<String> {
        let v = self.raw(var)?;
        if !v.bytes().all(|b| b.is_ascii_graphic()) {
            self.errors.push(ConfigError {
                var: var.to_string(),
                value: Some(String::new()),
                expected:
                    "printable ASCII without spaces or line breaks (check how the value was pasted)"
                        .into(),
                secret: true,
            });
        }
        Some(v)
    }

    /// An integer in `min..=max`, or `default` when unset.
    fn int(&mut self, name: &str, default: u64, min: u64, max: u64) -> u64 {
        let var = format!("{PREFIX}{name}");
        let Some(v) = self.raw(&var) else {
            return default;
        };
        match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                self.fail(&var, Some(v), format!("an integer from {min} to {max}"));
                default
            }
        }
    }

    fn millis(&mut self, name: &str, default: u64, min: u64, max: u64) -> Duration {
        Duration::from_millis(self.int(name, default, min, max))
    }

    /// One of a fixed set of words, or `default` when unset.
    fn choice<T: Copy>(&mut self, name: &str, default: T, options: &[(&str, T)]) -> T {
        let var = format!("{PREFIX}{name}");
        let Some(v) = self.raw(&var) else {
            return default;
        };
        let lower = v.to_ascii_lowercase();
        if let Some((_, t)) = options.iter().find(|(word, _)| *word == lower) {
            return *t;
        }
        let words: Vec<&str> = options.iter().map(|(w, _)| *w).collect();
        self.fail(&var, Some(v), format!("one of {}", words.join(", ")));
        default
    }
}

/// Reads and validates the whole configuration.
pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let mut r = Reader {
        get,
        errors: Vec::new(),
    };

    let stream_var = r.raw("KINESIS_TELEMETRY_STREAM").or_else(|| {
        // Set but empty is a mistake of its own, not a missing setting.
        get("KINESIS_TELEMETRY_STREAM").filter(|v| v.trim().is_empty())
    });
    let stream = match stream_var {
        Some(s) if s.starts_with("arn:") => {
            if is_stream_arn(&s) {
                StreamTarget::Arn(s)
            } else {
                r.fail(
                    "KINESIS_TELEMETRY_STREAM",
                    Some(s),
                    "a stream name or an ARN like arn:aws:kinesis:REGION:ACCOUNT:stream/NAME",
                );
                StreamTarget::Name(String::new())
            }
        }
        Some(s) if is_stream_name(&s) => StreamTarget::Name(s),
        other => {
            r.fail(
                "KINESIS_TELEMETRY_STREAM",
                other,
                "the Kinesis stream name (1-128 of a-z A-Z 0-9 _ . -) or stream ARN",
            );
            StreamTarget::Name(String::new())
        }
    };

    // Region: AWS_REGION as Lambda sets it; the ARN's region wins when it differs
    // would be surprising, so an ARN only fills in a missing region.
    let arn_region = match &stream {
        StreamTarget::Arn(a) => a.split(':').nth(3).map(str::to_string),
        StreamTarget::Name(_) => None,
    };
    let region = r
        .raw("AWS_REGION")
        .or_else(|| r.raw("AWS_DEFAULT_REGION"))
        .or(arn_region)
        .unwrap_or_default();
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        let value = r.raw("AWS_REGION");
        r.fail("AWS_REGION", value, "an AWS region such as us-east-1");
    }

    let endpoint = match r
        .raw("AWS_ENDPOINT_URL_KINESIS")
        .map(|v| ("AWS_ENDPOINT_URL_KINESIS", v))
        .or_else(|| r.raw("AWS_ENDPOINT_URL").map(|v| ("AWS_ENDPOINT_URL", v)))
    {
        Some((var, url)) => match url_problem(&url) {
            None => url.trim_end_matches('/').to_string(),
            Some(problem) => {
                r.fail(
                    var,
                    Some(redacted_url(&url).into_owned()),
                    format!("an http:// or https:// URL with a host ({problem})"),
                );
                String::new()
            }
        },
        None if region.contains("cn-") => format!("https://kinesis.{region}.amazonaws.com.cn"),
        None => format!("https://kinesis.{region}.amazonaws.com"),
    };

    let credentials = credentials_source(&mut r);

    let types = match r.raw("KINESIS_TELEMETRY_TYPES") {
        None => Types {
            platform: true,
            function: true,
            extension: true,
        },
        Some(v) => match parse_types(&v) {
            Some(t) => t,
            None => {
                r.fail(
                    "KINESIS_TELEMETRY_TYPES",
                    Some(v),
                    "a comma-separated, non-empty subset of platform,function,extension",
                );
                Types::default()
            }
        },
    };

    let buffering = Buffering {
        max_items: r.int("BUFFER_MAX_ITEMS", 1000, 1000, 10_000) as u32,
        max_bytes: r.int("BUFFER_MAX_BYTES", 262_144, 262_144, 1_048_576) as u32,
        timeout_ms: r.int("BUFFER_TIMEOUT_MS", 25, 25, 30_000) as u32,
    };

    let listener_port = {
        let port = r.int("LISTENER_PORT", 0, 0, 65_535) as u16;
        if port == 9001 {
            r.fail(
                "KINESIS_TELEMETRY_LISTENER_PORT",
                Some("9001".into()),
                "0 (any free port) or a port other than 9001, which Lambda reserves",
            );
        }
        port
    };

    let flush = r.choice(
        "FLUSH",
        FlushMode::Adaptive,
        &[
            ("adaptive", FlushMode::Adaptive),
            ("end", FlushMode::End),
            ("periodic", FlushMode::Periodic),
            ("batch", FlushMode::Batch),
        ],
    );
    let batch_max_age = r.millis("BATCH_MAX_AGE_MS", 5_000, 1, 900_000);
    let flush_interval = r.millis("FLUSH_INTERVAL_MS", 1_000, 1, 900_000);
    let max_delay = r.millis("MAX_DELAY_MS", 10_000, 1, 3_600_000);
    let format = r.choice(
        "FORMAT",
        crate::records::pack::Format::Json,
        &[
            ("json", crate::records::pack::Format::Json),
            ("kpl", crate::records::pack::Format::Kpl),
            ("ndjson-gzip", crate::records::pack::Format::NdjsonGzip),
        ],
    );
    let hash_key = r.choice(
        "HASH_KEY",
        HashKeyMode::None,
        &[("none", HashKeyMode::None), ("random", HashKeyMode::Random)],
    );
    let platform_events = match r.raw("KINESIS_TELEMETRY_PLATFORM_EVENTS") {
        None => None,
        Some(v) if v == "*" => None,
        Some(v) => {
            let names: Vec<String> = v
                .split(',')
                .map(|n| n.trim().trim_start_matches("platform.").to_string())
                .filter(|n| !n.is_empty())
                .collect();
            let valid = !names.is_empty()
                && names
                    .iter()
                    .all(|n| n.bytes().all(|b| b.is_ascii_alphanumeric()));
            if !valid {
                r.fail(
                    "KINESIS_TELEMETRY_PLATFORM_EVENTS",
                    Some(v),
                    "* or a comma-separated list of platform event names such as start,runtimeDone,report",
                );
            }
            Some(names)
        }
    };
    let min_level = match r.raw("KINESIS_TELEMETRY_MIN_LEVEL") {
        None => None,
        Some(v) => match LEVELS.iter().position(|l| l.eq_ignore_ascii_case(&v)) {
            Some(i) => Some(i),
            None => {
                r.fail(
                    "KINESIS_TELEMETRY_MIN_LEVEL",
                    Some(v),
                    "one of TRACE, DEBUG, INFO, WARN, ERROR, FATAL",
                );
                None
            }
        },
    };
    let enrich = r.choice("ENRICH", false, &[("false", false), ("true", true)]);
    let runtime_done_timeout = match r.int("RUNTIME_DONE_TIMEOUT_MS", 0, 0, 900_000) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    let flush_timeout = r.millis("FLUSH_TIMEOUT_MS", 2_000, 10, 900_000);
    let max_records_per_request = r.int("MAX_RECORDS_PER_REQUEST", 500, 1, 500) as usize;
    let max_bytes_per_request = r.int("MAX_BYTES_PER_REQUEST", 5 * MIB, 1024, 10 * MIB) as usize;
    // Unset, the record limit follows a lowered request limit; set, it must fit in it.
    let max_record_bytes = r.int(
        "MAX_RECORD_BYTES",
        MIB.min(max_bytes_per_request as u64),
        1024,
        10 * MIB,
    ) as usize;
    if max_record_bytes > max_bytes_per_request {
        r.fail(
            "KINESIS_TELEMETRY_MAX_RECORD_BYTES",
            Some(max_record_bytes.to_string()),
            format!("at most KINESIS_TELEMETRY_MAX_BYTES_PER_REQUEST ({max_bytes_per_request})"),
        );
    }
    let partition_key = r.choice(
        "PARTITION_KEY",
        PartitionKeyMode::Environment,
        &[
            ("environment", PartitionKeyMode::Environment),
            ("request", PartitionKeyMode::Request),
            ("random", PartitionKeyMode::Random),
        ],
    );
    let shutdown_wait = r.millis("SHUTDOWN_WAIT_MS", 500, 0, 1_500);
    let max_attempts = r.int("MAX_ATTEMPTS", 5, 1, 100) as u32;
    let retry_budget = r.int("RETRY_BUDGET", 500, 0, 100_000) as u32;
    let metrics_interval = match r.int("METRICS_INTERVAL_MS", 60_000, 0, 86_400_000) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    let backoff_base = r.millis("BACKOFF_BASE_MS", 25, 1, 60_000);
    let backoff_cap = r.millis("BACKOFF_CAP_MS", 1_000, 1, 300_000);
    let connect_timeout = r.millis("CONNECT_TIMEOUT_MS", 1_000, 10, 60_000);
    let request_timeout = r.millis("REQUEST_TIMEOUT_MS", 2_000, 10, 300_000);
    let connection_max_idle = r.millis("CONNECTION_MAX_IDLE_MS", 20_000, 0, 3_600_000);
    let buffer_limit_bytes = r.int(
        "BUFFER_LIMIT_BYTES",
        default_buffer_limit(get),
        MIB,
        4096 * MIB,
    ) as usize;
    let max_body_bytes = r.int("MAX_BODY_BYTES", 4 * MIB, 256 * 1024, 64 * MIB) as usize;
    // Read on its own by `strict_mode`; here a value that is no switch is
    // reported instead of quietly meaning false.
    r.choice("STRICT", false, &SWITCH);

    if !r.errors.is_empty() {
        return Err(ConfigErrors(r.errors));
    }
    Ok(Config {
        stream,
        region,
        endpoint,
        credentials,
        types,
        buffering,
        listener_port,
        flush,
        batch_max_age,
        flush_interval,
        max_delay,
        format,
        hash_key,
        platform_events,
        min_level,
        enrich,
        runtime_done_timeout,
        flush_timeout,
        max_records_per_request,
        max_bytes_per_request,
        max_record_bytes,
        partition_key,
        shutdown_wait,
        max_attempts,
        retry_budget,
        metrics_interval,
        backoff_base,
        backoff_cap,
        connect_timeout,
        request_timeout,
        connection_max_idle,
        buffer_limit_bytes,
        max_body_bytes,
    })
}

const MIB: u64 = 1024 * 1024;

/// What is wrong with an endpoint URL, if anything: an http(s) scheme, a
/// host of ASCII letters, digits, `-`, `.` and `_` (or a bracketed IPv6
/// address), an optional port from 1 to 65535.
fn url_problem(url: &str) -> Option<&'static str> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Some("no http:// or https:// scheme");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Credentials in the URL are allowed (and never logged).
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Some("an IPv6 address without its closing ]");
        };
        if addr.is_empty()
            || !addr
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Some("an invalid IPv6 address");
        }
        match after {
            "" => (addr, None),
            p => match p.strip_prefix(':') {
                Some(p) => (addr, Some(p)),
                None => return Some("text after the IPv6 address"),
            },
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Some("no host");
    }
    if !host_port.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Some("a host that is not ASCII letters, digits, - . _");
    }
    match port.map(|p| p.parse::<u16>()) {
        None | Some(Ok(1..)) => None,
        Some(_) => Some("a port that is not 1 to 65535"),
    }
}

/// `url` with any credentials in it replaced by `***`, for logs.
pub fn redacted_url(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]).into(),
        None => url.into(),
    }
}

/// Credentials as the AWS SDKs look for them: environment keys first, then
/// the container credentials endpoint.
fn credentials_source(r: &mut Reader) -> CredentialsSource {
    let empty = || {
        CredentialsSource::Static(StaticCredentials {
            access_key_id: String::new(),
            secret_access_key: String::new(),
            session_token: None,
        })
    };
    match (r.raw("AWS_ACCESS_KEY_ID"), r.raw("AWS_SECRET_ACCESS_KEY")) {
        (Some(_), Some(_)) => {
            return CredentialsSource::Static(StaticCredentials {
                access_key_id: r.secret("AWS_ACCESS_KEY_ID").unwrap_or_default(),
                secret_access_key: r.secret("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
                session_token: r.secret("AWS_SESSION_TOKEN"),
            })
        }
        (Some(_), None) => {
            r.fail(
                "AWS_SECRET_ACCESS_KEY",
                None,
                "the secret key that goes with AWS_ACCESS_KEY_ID",
            );
            return empty();
        }
        _ => {}
    }
    let url = if let Some(full) = r.raw("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
        if !full.starts_with("http://") && !full.starts_with("https://") {
            r.fail(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                Some(full),
                "an http:// or https:// URL",
            );
            return empty();
        }
        full
    } else if let Some(rel) = r.raw("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        format!("http://169.254.170.2{rel}")
    } else {
        r.fail(
            "AWS_ACCESS_KEY_ID",
            None,
            "AWS credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (Lambda sets them from the execution role) or AWS_CONTAINER_CREDENTIALS_FULL_URI (SnapStart)",
        );
        return empty();
    };
    CredentialsSource::Container {
        url,
        token: r.secret("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        token_file: r.raw("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
    }
}

/// Default memory cap for buffered telemetry: an eighth of the function's
/// memory (which the extension shares), at least 4 MiB and at most 64 MiB.
fn default_buffer_limit(get: &dyn Fn(&str) -> Option<String>) -> u64 {
    let memory_mb = get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(128);
    (memory_mb * MIB / 8).clamp(4 * MIB, 64 * MIB)
}

fn parse_types(v: &str) -> Option<Types> {
    let mut t = Types::default();
    for word in v.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word.to_ascii_lowercase().as_str() {
            "platform" => t.platform = true,
            "function" => t.function = true,
            "extension" => t.extension = true,
            _ => return None,
        }
    }
    (t != Types::default()).then_some(t)
}

fn is_stream_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn is_stream_arn(s: &str) -> bool {
    // arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    parts.len() == 6
        && parts[2] == "kinesis"
        && !parts[3].is_empty()
        && parts[5].strip_prefix("stream/").is_some_and(is_stream_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let mut m: HashMap<String, String> = [
            ("KINESIS_TELEMETRY_STREAM", "telemetry"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in pairs {
            m.insert(k.to_string(), v.to_string());
        }
        move |k: &str| m.get(k).cloned()
    }

    fn errors(pairs: &[(&str, &str)]) -> Vec<ConfigError> {
        from_env(&env(pairs)).unwrap_err().0
    }

    #[test]
    fn endpoint_urls_are_checked_and_never_logged_with_credentials() {
        for bad in [
            "http://",
            "https://",
            "http://[::1",
            "http://kinésis.example",
            "http://host:0",
            "http://host:99999",
            "http://host:port",
            "ftp://host",
            "http://user:pw@",
        ] {
            let e = errors(&[("AWS_ENDPOINT_URL_KINESIS", bad)]);
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert_eq!(e[0].var, "AWS_ENDPOINT_URL_KINESIS");
        }
        for good in [
            "http://127.0.0.1:4567",
            "https://kinesis.us-east-1.amazonaws.com/",
            "http://[::1]:8080",
            "http://localstack_main:4566/path?q",
            "http://user:secret@proxy.local:3128",
        ] {
            assert!(
                from_env(&env(&[("AWS_ENDPOINT_URL_KINESIS", good)])).is_ok(),
                "{good}"
            );
        }
        let e = errors(&[("AWS_ENDPOINT_URL", "http://user:hunter2@/x")]);
        assert!(!e[0].to_string().contains("hunter2"), "{}", e[0]);
        assert_eq!(redacted_url("http://u:p@h:1/a@b"), "http://***@h:1/a@b");
        assert_eq!(redacted_url("https://h/x"), "https://h/x");
    }

    #[test]
    fn credentials_that_cannot_be_sent_are_errors_that_hide_the_value() {
        for var in [
            "AWS_SESSION_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ACCESS_KEY_ID",
        ] {
            let e = errors(&[(var, "abc\ndef-secretpart")]);
            assert_eq!(e.len(), 1, "{e:?}");
            assert_eq!(e[0].var, var);
            let msg = e[0].to_string();
            assert!(msg.contains(var) && !msg.contains("secretpart"), "{msg}");
        }
    }

    #[test]
    fn empty_stream_and_unknown_switch_words_are_named() {
        let e = errors(&[("KINESIS_TELEMETRY_STREAM", "")]);
        assert!(
            e[0].to_string()
                .contains("KINESIS_TELEMETRY_STREAM is empty"),
            "{}",
            e[0]
        );
        let e = errors(&[("KINESIS_TELEMETRY_STRICT", "maybe")]);
        assert_eq!(e[0].var, "KINESIS_TELEMETRY_STRICT");
        assert!(from_env(&env(&[("KINESIS_TELEMETRY_STRICT", "No")])).is_ok());
        assert!(strict_mode(&|_| Some("Yes".into())));
        assert!(!strict_mode(&|_| Some("maybe".into())));
    }

    #[test]
    fn defaults() {
        let c = from_env(&env(&[])).unwrap();
        assert_eq!(c.stream, StreamTarget::Name("telemetry".into()));
        assert_eq!(c.endpoint, "https://kinesis.eu-west-1.amazonaws.com");
        assert_eq!(c.types.names(), vec!["platform", "function", "extension"]);
        assert_eq!(
            c.buffering,
            Buffering {
                max_items: 1000,
                max_bytes: 262_144,
                timeout_ms: 25
            }
        );
        assert_eq!(c.flush, FlushMode::Adaptive);
        assert_eq!(c.format, crate::records::pack::Format::Json);
        assert_eq!(c.hash_key, HashKeyMode::None);
        assert_eq!(c.platform_events, None);
        assert_eq!(c.min_level, None);
        assert!(!c.enrich);
        assert_eq!(c.partition_key, PartitionKeyMode::Environment);
        assert_eq!(c.max_records_per_request, 500);
        assert_eq!(c.max_bytes_per_request, 5 * 1024 * 1024);
        assert_eq!(c.max_record_bytes, 1024 * 1024);
        assert_eq!(c.listener_port, 0);
        assert_eq!(c.runtime_done_timeout, None);
        assert_eq!(c.buffer_limit_bytes, 16 * 1024 * 1024);
        assert!(matches!(
            c.credentials,
            CredentialsSource::Static(StaticCredentials {
                session_token: None,
                ..
            })
        ));
        assert_eq!(c.retry_budget, 500);
        assert_eq!(c.metrics_interval, Some(Duration::from_secs(60)));
    }

    #[test]
    fn endpoint_precedence() {
        let c = from_env(&env(&[
            ("AWS_ENDPOINT_URL", "http://a:1"),
            ("AWS_ENDPOINT_URL_KINESIS", "http://b:2/"),
        ]))
        .unwrap();
        assert_eq!(c.endpoint, "http://b:2");
        let c = from_env(&env(&[("AWS_ENDPOINT_URL", "http://a:1")])).unwrap();
        assert_eq!(c.endpoint, "http://a:1");
        let e = errors(&[("AWS_ENDPOINT_URL_KINESIS", "localhost:1")]);
        assert_eq!(e[0].var, "AWS_ENDPOINT_URL_KINESIS");
    }

    #[test]
    fn region_fallback() {
        let m = env(&[("AWS_REGION", " "), ("AWS_DEFAULT_REGION", "ap-south-1")]);
        assert_eq!(from_env(&m).unwrap().region, "ap-south-1");
    }

    #[test]
    fn stream_arn() {
        let arn = "arn:aws:kinesis:us-east-2:123456789012:stream/my-stream";
        let c = from_env(&env(&[("KINESIS_TELEMETRY_STREAM", arn)])).unwrap();
        assert_eq!(c.stream, StreamTarget::Arn(arn.into()));
        let e = errors(&[("KINESIS_TELEMETRY_STREAM", "arn:aws:s3:::bucket")]);
        assert_eq!(e[0].var, "KINESIS_TELEMETRY_STREAM");
    }

    #[test]
    fn missing_stream_is_named() {
        let m = env(&[]);
        let get = |k: &str| {
            if k == "KINESIS_TELEMETRY_STREAM" {
                None
            } else {
                m(k)
            }
        };
        let e = from_env(&get).unwrap_err();
        assert_eq!(e.0.len(), 1);
        let msg = e.to_string();
        assert!(msg.contains("KINESIS_TELEMETRY_STREAM is not set"), "{msg}");
    }

    #[test]
    fn every_error_is_reported_with_value_and_range() {
        let e = errors(&[
            ("KINESIS_TELEMETRY_BUFFER_MAX_ITEMS", "10"),
            ("KINESIS_TELEMETRY_FLUSH", "sometimes"),
            ("KINESIS_TELEMETRY_TYPES", "platform,logs"),
            ("KINESIS_TELEMETRY_PARTITION_KEY", "x"),
            ("KINESIS_TELEMETRY_BUFFER_TIMEOUT_MS", "abc"),
        ]);
        let text: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        assert_eq!(e.len(), 5, "{text:?}");
        assert!(text
            .iter()
            .any(|t| t.contains("KINESIS_TELEMETRY_BUFFER_MAX_ITEMS=\"10\"")
                && t.contains("from 1000 to 10000")));
        assert!(text
            .iter()
            .any(|t| t.contains("KINESIS_TELEMETRY_FLUSH=\"sometimes\"")
                && t.contains("one of adaptive, end, periodic, batch")));
        assert!(text
            .iter()
            .any(|t| t.contains("platform,function,extension")));
    }

    #[test]
    fn formats_filters_and_enrichment() {
        let c = from_env(&env(&[
            ("KINESIS_TELEMETRY_FORMAT", "ndjson-gzip"),
            ("KINESIS_TELEMETRY_HASH_KEY", "random"),
            (
                "KINESIS_TELEMETRY_PLATFORM_EVENTS",
                "platform.start, report",
            ),
            ("KINESIS_TELEMETRY_MIN_LEVEL", "warn"),
            ("KINESIS_TELEMETRY_ENRICH", "TRUE"),
        ]))
        .unwrap();
        assert_eq!(c.format, crate::records::pack::Format::NdjsonGzip);
        assert_eq!(c.hash_key, HashKeyMode::Random);
        assert_eq!(
            c.platform_events,
            Some(vec!["start".to_string(), "report".to_string()])
        );
        assert_eq!(c.min_level, Some(3));
        assert!(c.enrich);
        let e = errors(&[
            ("KINESIS_TELEMETRY_MIN_LEVEL", "loud"),
            ("KINESIS_TELEMETRY_PLATFORM_EVENTS", "start,re port"),
            ("KINESIS_TELEMETRY_FORMAT", "xml"),
        ]);
        assert_eq!(e.len(), 3);
    }

    #[test]
    fn types_subset_and_case() {
        let c = from_env(&env(&[("KINESIS_TELEMETRY_TYPES", " Function , platform")])).unwrap();
        assert_eq!(c.types.names(), vec!["platform", "function"]);
        assert_eq!(errors(&[("KINESIS_TELEMETRY_TYPES", ",")]).len(), 1);
    }

    #[test]
    fn record_limit_follows_request_limit() {
        let c = from_env(&env(&[(
            "KINESIS_TELEMETRY_MAX_BYTES_PER_REQUEST",
            "100000",
        )]))
        .unwrap();
        assert_eq!(c.max_record_bytes, 100_000);
    }

    #[test]
    fn reserved_port_and_record_limit() {
        assert_eq!(
            errors(&[("KINESIS_TELEMETRY_LISTENER_PORT", "9001")]).len(),
            1
        );
        let e = errors(&[
            ("KINESIS_TELEMETRY_MAX_RECORD_BYTES", "2097152"),
            ("KINESIS_TELEMETRY_MAX_BYTES_PER_REQUEST", "1048576"),
        ]);
        assert_eq!(e[0].var, "KINESIS_TELEMETRY_MAX_RECORD_BYTES");
    }

    #[test]
    fn buffer_limit_follows_memory() {
        let c = from_env(&env(&[("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "10240")])).unwrap();
        assert_eq!(c.buffer_limit_bytes, 64 * 1024 * 1024);
        let c = from_env(&env(&[("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")])).unwrap();
        assert_eq!(c.buffer_limit_bytes, 16 * 1024 * 1024);
    }

    #[test]
    fn credentials_required_and_hidden() {
        let m = env(&[]);
        let get = |k: &str| {
            if k == "AWS_SECRET_ACCESS_KEY" {
                None
            } else {
                m(k)
            }
        };
        let e = from_env(&get).unwrap_err();
        assert_eq!(e.0[0].var, "AWS_SECRET_ACCESS_KEY");
        let c = from_env(&env(&[("AWS_SESSION_TOKEN", "tok")])).unwrap();
        assert!(!format!("{:?}", c.credentials).contains("secret"));
        let CredentialsSource::Static(s) = c.credentials else {
            panic!()
        };
        assert_eq!(s.session_token.as_deref(), Some("tok"));
    }

    #[test]
    fn container_credentials_when_no_keys() {
        let m = env(&[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:9/creds",
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "tok"),
        ]);
        let get = |k: &str| {
            if k.starts_with("AWS_ACCESS") || k.starts_with("AWS_SECRET") {
                None
            } else {
                m(k)
            }
        };
        let c = from_env(&get).unwrap();
        assert_eq!(
            c.credentials,
            CredentialsSource::Container {
                url: "http://127.0.0.1:9/creds".into(),
                token: Some("tok".into()),
                token_file: None
            }
        );
        let none = |k: &str| {
            if k.starts_with("AWS_ACCESS") || k.starts_with("AWS_SECRET") {
                None
            } else {
                env(&[])(k)
            }
        };
        let e = from_env(&none).unwrap_err();
        assert!(e.to_string().contains("AWS_CONTAINER_CREDENTIALS_FULL_URI"));
    }

    #[test]
    fn strict_flag() {
        assert!(strict_mode(&|_| Some("true".into())));
        assert!(!strict_mode(&|_| Some("no".into())));
        assert!(!strict_mode(&|_| None));
    }
}
