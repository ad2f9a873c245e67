//! Configuration: every tunable of the extension, read once from environment
//! variables and validated before the first telemetry arrives.
//!
//! All of the extension's own variables share the prefix `KINESIS_TELEMETRY_`;
//! region, endpoint and credentials use the standard AWS names. Each variable
//! is defined once, in the table below (`SETTINGS`): its full name, default,
//! accepted values and meaning; the parser reads it through that definition,
//! and a test holds the configuration table (docs/configuration.md) to it. Parsing takes
//! a lookup function instead of reading the process environment so that it can
//! be tested without touching global state. Every problem is collected (not
//! just the first) and names the variable, the bad value and what is accepted;
//! a value that is not UTF-8 is one too (`from_env_os`), never read as unset.
//! The files settings name are checked here and read with `files`' bounds.
//!
//! `from_env` reads every setting once and builds from them one value per
//! stage (`Settings`: Kinesis, subscription, listener, dispatch with its
//! flush, send, buffer, sampling and shape parts, lifecycle), the way a
//! command line's low-level arguments become high-level ones. Each stage
//! defines its own settings type and the rules its values must meet (an
//! endpoint URL's are `kinesis::endpoint`'s, credentials' are
//! `kinesis::credentials`', redaction patterns' are `records::redact`'s);
//! `config` calls them while reading and names the variable in the error.
//! Imports go one way: `config` uses the stages, no stage uses `config`.

use std::fmt;
use std::time::Duration;

use crate::dispatch::buffer::BufferSettings;
use crate::dispatch::dispatcher::DispatchSettings;
use crate::dispatch::flush::{FlushMode, FlushSettings};
use crate::dispatch::retry::Policy;
use crate::dispatch::sampling::SamplingSettings;
use crate::dispatch::send::{request_limits, HashKeyMode, SendSettings};
use crate::kinesis::credentials::{
    header_safe, CredentialsSource, StaticCredentials, SECRET_EXPECTED,
};
use crate::kinesis::endpoint::sts as sts_endpoint;
use crate::kinesis::endpoint::{redacted_url, resolve, url_problem, NoEndpoint};
use crate::kinesis::proxy::{NO_PROXY_VARS, PROXY_VARS};
use crate::kinesis::settings::{KinesisSettings, StreamTarget, STREAM_EXPECTED};
use crate::kinesis::sts::{
    default_session_name, external_id_ok, role_arn_ok, session_name_ok, RoleSettings,
    EXTERNAL_ID_EXPECTED, ROLE_ARN_EXPECTED, SESSION_NAME_EXPECTED,
};
use crate::kinesis::tls::CA_BUNDLE_MAX_BYTES;
use crate::lambda::extensions_api::{
    largest_batch, Buffering, SubscriptionSettings, Types, EVENT_ENVELOPE_BYTES,
};
use crate::lambda::listener::ListenerSettings;
use crate::lambda::view::LEVELS;
use crate::records::format::{cwlogs, otlp_json, Format};
use crate::records::partition::PartitionKeyMode;
use crate::records::redact::{parse_built_in, parse_patterns, Rules};
use crate::records::sample::SCALE;
use crate::records::shape::ShapeSettings;

/// One environment variable the extension reads, as its row in the README's
/// configuration table shows it (a test checks that row against this).
#[derive(Debug, Clone, Copy)]
// `meaning` and the texts in `Accepts` are for people: the README's check reads them.
#[cfg_attr(not(test), allow(dead_code))]
pub struct Setting {
    /// The full name: what is read, and what errors name.
    pub var: &'static str,
    /// What is accepted, and the default: the README's Default and Range.
    pub accepts: Accepts,
    /// What it does, in one line: the README's Meaning starts with it.
    pub meaning: Meaning,
}

/// A setting's meaning: text for people, which only the tests read (the
/// README check), so the binary does not carry it (~5 KB).
#[derive(Debug, Clone, Copy)]
pub struct Meaning(#[cfg(test)] pub &'static str);

/// `Meaning` of `text` (dropped outside tests).
const fn m(text: &'static str) -> Meaning {
    #[cfg(test)]
    return Meaning(text);
    #[cfg(not(test))]
    {
        let _ = text;
        Meaning()
    }
}

/// What a setting accepts, and its default.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(test), allow(dead_code))]
pub enum Accepts {
    /// An integer from `min` to `max` (milliseconds for a `_MS` name);
    /// `default` when unset, or when invalid (which is also an error).
    Int { default: u64, min: u64, max: u64 },
    /// As `Int`, but `from_env` works the default out, as `default` says.
    IntDerived {
        default: &'static str,
        min: u64,
        max: u64,
    },
    /// One of `words`, in any case; `default` when unset or invalid.
    Word {
        default: &'static str,
        words: &'static [&'static str],
    },
    /// Read by code of its own: the default and what is accepted, as shown
    /// to users.
    Other {
        default: &'static str,
        range: &'static str,
    },
}

/// Defines each setting as a constant named like its variable (less
/// `KINESIS_TELEMETRY_`), and `SETTINGS`, all of them.
macro_rules! settings {
    ($($name:ident = $setting:expr;)*) => {
        $(pub const $name: Setting = {
            use Accepts::*;
            $setting
        };)*
        /// Every setting, in the order of the README's configuration table.
        #[cfg_attr(not(test), allow(dead_code))] // read by tests only
        pub const SETTINGS: &[Setting] = &[$($name),*];
        /// Every setting's variable: what the binary needs of `SETTINGS`
        /// at run time (not the texts for people).
        const VARIABLES: &[&str] = &[$($name.var),*];
    };
}

settings! {
    STREAM = Setting {
        var: "KINESIS_TELEMETRY_STREAM",
        accepts: Other {
            default: "(required)",
            range: "name (1–128 of `a-zA-Z0-9_.-`) or stream ARN",
        },
        meaning: m("The stream to write to."),
    };
    TYPES = Setting {
        var: "KINESIS_TELEMETRY_TYPES",
        accepts: Other { default: "`platform,function,extension`", range: "non-empty subset" },
        meaning: m("Which telemetry streams to forward."),
    };
    BUFFER_MAX_ITEMS = Setting {
        var: "KINESIS_TELEMETRY_BUFFER_MAX_ITEMS",
        accepts: Int { default: 1000, min: 1000, max: 10_000 },
        meaning: m("Telemetry API buffering `maxItems`"),
    };
    BUFFER_MAX_BYTES = Setting {
        var: "KINESIS_TELEMETRY_BUFFER_MAX_BYTES",
        accepts: Int { default: 262_144, min: 262_144, max: 1_048_576 },
        meaning: m("Telemetry API buffering `maxBytes`"),
    };
    BUFFER_TIMEOUT_MS = Setting {
        var: "KINESIS_TELEMETRY_BUFFER_TIMEOUT_MS",
        accepts: Int { default: 25, min: 25, max: 30_000 },
        meaning: m("Telemetry API buffering `timeoutMs`"),
    };
    SCHEMA_VERSION = Setting {
        var: "KINESIS_TELEMETRY_SCHEMA_VERSION",
        accepts: Word { default: "auto", words: &["auto", "2022-12-13", "2025-01-29"] },
        meaning: m("Telemetry API schema version to subscribe with; `auto`: `2025-01-29` on Lambda Managed Instances, `2022-12-13` elsewhere."),
    };
    LISTENER_PORT = Setting {
        var: "KINESIS_TELEMETRY_LISTENER_PORT",
        accepts: Int { default: 0, min: 0, max: 65_535 },
        meaning: m("Port of the telemetry listener; 0 picks a free one."),
    };
    FLUSH = Setting {
        var: "KINESIS_TELEMETRY_FLUSH",
        accepts: Word { default: "adaptive", words: &["adaptive", "end", "periodic", "batch"] },
        meaning: m("Flush policy"),
    };
    FLUSH_INTERVAL_MS = Setting {
        var: "KINESIS_TELEMETRY_FLUSH_INTERVAL_MS",
        accepts: Int { default: 1_000, min: 1, max: 900_000 },
        meaning: m("`periodic`/`adaptive`: send buffered data once its oldest record is this old (wall clock)."),
    };
    MAX_DELAY_MS = Setting {
        var: "KINESIS_TELEMETRY_MAX_DELAY_MS",
        accepts: Int { default: 10_000, min: 1, max: 3_600_000 },
        meaning: m("`adaptive`: use periodic flushing only while invokes come often enough that data waits less than this"),
    };
    BATCH_MAX_AGE_MS = Setting {
        var: "KINESIS_TELEMETRY_BATCH_MAX_AGE_MS",
        accepts: Int { default: 5_000, min: 1, max: 900_000 },
        meaning: m("`batch` mode: send a partial batch once its oldest record is this old (thawed time only)."),
    };
    RUNTIME_DONE_TIMEOUT_MS = Setting {
        var: "KINESIS_TELEMETRY_RUNTIME_DONE_TIMEOUT_MS",
        accepts: Int { default: 0, min: 0, max: 900_000 },
        meaning: m("Longest wait after INVOKE for the invoke's `platform.runtimeDone`; 0 = until the invoke deadline."),
    };
    FLUSH_TIMEOUT_MS = Setting {
        var: "KINESIS_TELEMETRY_FLUSH_TIMEOUT_MS",
        accepts: Int { default: 2_000, min: 10, max: 900_000 },
        meaning: m("Longest time an end-of-invoke flush may take, and the time each request gets"),
    };
    MAX_RECORDS_PER_REQUEST = Setting {
        var: "KINESIS_TELEMETRY_MAX_RECORDS_PER_REQUEST",
        accepts: Int { default: 500, min: 1, max: 500 },
        meaning: m("Records per `PutRecords` call."),
    };
    MAX_BYTES_PER_REQUEST = Setting {
        var: "KINESIS_TELEMETRY_MAX_BYTES_PER_REQUEST",
        accepts: Int { default: 5 * MIB, min: 1024, max: 10 * MIB },
        meaning: m("Bytes (data + partition keys) per call."),
    };
    MAX_RECORD_BYTES = Setting {
        var: "KINESIS_TELEMETRY_MAX_RECORD_BYTES",
        accepts: IntDerived {
            default: "`1048576` (or the request limit if lower)",
            min: 1024,
            max: 10 * MIB,
        },
        meaning: m("Largest record (data + partition key)."),
    };
    PARTITION_KEY = Setting {
        var: "KINESIS_TELEMETRY_PARTITION_KEY",
        accepts: Word { default: "environment", words: &["environment", "request", "random"] },
        meaning: m("How records are spread over shards"),
    };
    HASH_KEY = Setting {
        var: "KINESIS_TELEMETRY_HASH_KEY",
        accepts: Word { default: "none", words: &["none", "random"] },
        meaning: m("`random`: a random `ExplicitHashKey` per Kinesis record, for an even spread over shards whatever the partition key."),
    };
    FORMAT = Setting {
        var: "KINESIS_TELEMETRY_FORMAT",
        accepts: Word { default: "json", words: &["json", "kpl", "ndjson-gzip", "cwlogs", "otlp-json"] },
        meaning: m("Record format"),
    };
    CWLOGS_LOG_GROUP = Setting {
        var: "KINESIS_TELEMETRY_CWLOGS_LOG_GROUP",
        accepts: Other { default: "`/aws/lambda/<function name>`", range: "1–512 bytes" },
        meaning: m("`cwlogs` records' `logGroup`."),
    };
    CWLOGS_LOG_STREAM = Setting {
        var: "KINESIS_TELEMETRY_CWLOGS_LOG_STREAM",
        accepts: Other {
            default: "`YYYY/MM/DD/[<version>]<32 hex>`",
            range: "1–512 bytes",
        },
        meaning: m("`cwlogs` records' `logStream` (by default one per execution environment, named as Lambda names them)."),
    };
    CWLOGS_FILTER_NAME = Setting {
        var: "KINESIS_TELEMETRY_CWLOGS_FILTER_NAME",
        accepts: Other { default: "`kinesis-telemetry-extension`", range: "1–512 bytes" },
        meaning: m("`cwlogs` records' `subscriptionFilters` entry."),
    };
    CWLOGS_PLATFORM = Setting {
        var: "KINESIS_TELEMETRY_CWLOGS_PLATFORM",
        accepts: Word { default: "text", words: &["text", "json"] },
        meaning: m("`cwlogs` records: platform events as CloudWatch's `START`/`END`/`REPORT` lines, or as their JSON."),
    };
    OTLP_COMPRESSION = Setting {
        var: "KINESIS_TELEMETRY_OTLP_COMPRESSION",
        accepts: Word { default: "none", words: &["none", "gzip"] },
        meaning: m("`otlp-json` records: as they are, or gzip-compressed (as the OpenTelemetry collector's Kinesis exporter writes them with `compression: gzip`)."),
    };
    PLATFORM_EVENTS = Setting {
        var: "KINESIS_TELEMETRY_PLATFORM_EVENTS",
        accepts: Other { default: "`*`", range: "`*` or names such as `start,runtimeDone,report`" },
        meaning: m("Which `platform.*` events to forward (the `platform.` prefix is optional)."),
    };
    MIN_LEVEL = Setting {
        var: "KINESIS_TELEMETRY_MIN_LEVEL",
        accepts: Other {
            default: "(all)",
            range: "`TRACE`, `DEBUG`, `INFO`, `WARN`, `ERROR`, `FATAL`",
        },
        meaning: m("Drop JSON-format function/extension log events below this level (a record's `level` in any case; Python's `WARNING` and `CRITICAL` count as `WARN` and `FATAL`). Text-format lines have no level and are always kept."),
    };
    ENRICH = Setting {
        var: "KINESIS_TELEMETRY_ENRICH",
        accepts: Word { default: "false", words: &["false", "true"] },
        meaning: m("Wrap each event in an envelope with function name, version, region, account id, environment id, a record id, request id and trace id"),
    };
    TAGS = Setting {
        var: "KINESIS_TELEMETRY_TAGS",
        accepts: Other {
            default: "(none)",
            range: "comma-separated `key=value`, at most 50; keys 1–128 of `A-Za-z0-9_.:/+@-`, values 0–256 of those, `=` and space",
        },
        meaning: m("Tags added to every envelope as `tags`, or to `otlp-json`'s resource attributes, in the order given; needs `KINESIS_TELEMETRY_ENRICH=true` or `KINESIS_TELEMETRY_FORMAT=otlp-json`"),
    };
    SAMPLE_SUCCESS = Setting {
        var: "KINESIS_TELEMETRY_SAMPLE_SUCCESS",
        accepts: Other { default: "`1`", range: "a fraction from `0` to `1` (to the millionth)" },
        meaning: m("Share of successful invocations whose function and extension log lines are forwarded; every line of an invocation that did not succeed is"),
    };
    SAMPLE_HOLD_MS = Setting {
        var: "KINESIS_TELEMETRY_SAMPLE_HOLD_MS",
        accepts: Int { default: 60_000, min: 10, max: 900_000 },
        meaning: m("While sampling, the longest an invocation's lines wait for its outcome (thawed time) before they are forwarded anyway."),
    };
    REDACT = Setting {
        var: "KINESIS_TELEMETRY_REDACT",
        accepts: Other {
            default: "(none)",
            range: "comma-separated `aws-keys`, `bearer`, `jwt`, `email`, `card`, or `all`",
        },
        meaning: m("Built-in rules whose matches in function and extension log records are replaced by `[REDACTED:<rule>]`"),
    };
    REDACT_PATTERNS = Setting {
        var: "KINESIS_TELEMETRY_REDACT_PATTERNS",
        accepts: Other {
            default: "(none)",
            range: "a JSON array of regular expressions or `{\"name\": …, \"pattern\": …}` objects",
        },
        meaning: m("Your own redaction rules, applied after the built-in ones"),
    };
    SHUTDOWN_WAIT_MS = Setting {
        var: "KINESIS_TELEMETRY_SHUTDOWN_WAIT_MS",
        accepts: Int { default: 500, min: 0, max: 1_500 },
        meaning: m("At SHUTDOWN, how long to wait for the last telemetry (the final `platform.report`) before the last flush"),
    };
    MAX_ATTEMPTS = Setting {
        var: "KINESIS_TELEMETRY_MAX_ATTEMPTS",
        accepts: Int { default: 5, min: 1, max: 100 },
        meaning: m("Failed rounds in a row before a flush gives up for now (records stay buffered)."),
    };
    RETRY_BUDGET = Setting {
        var: "KINESIS_TELEMETRY_RETRY_BUDGET",
        accepts: Int { default: 500, min: 0, max: 100_000 },
        meaning: m("Retry tokens (AWS SDK standard mode)"),
    };
    METRICS_INTERVAL_MS = Setting {
        var: "KINESIS_TELEMETRY_METRICS_INTERVAL_MS",
        accepts: Int { default: 60_000, min: 0, max: 86_400_000 },
        meaning: m("Also write the metrics record this often while telemetry is flowing (none for an idle interval, and no wake-up either); 0: only at shutdown."),
    };
    EMF = Setting {
        var: "KINESIS_TELEMETRY_EMF",
        accepts: Word { default: "false", words: &["false", "true"] },
        meaning: m("Also write the extension's health as CloudWatch metrics: one Embedded Metric Format line on stdout with each metrics record"),
    };
    EMF_NAMESPACE = Setting {
        var: "KINESIS_TELEMETRY_EMF_NAMESPACE",
        accepts: Other {
            default: "`KinesisTelemetryExtension`",
            range: "a CloudWatch namespace: 1–255 of `a-zA-Z0-9._/#:-` and space, not `AWS/…`",
        },
        meaning: m("The metrics' namespace."),
    };
    EMF_VERSION_DIMENSION = Setting {
        var: "KINESIS_TELEMETRY_EMF_VERSION_DIMENSION",
        accepts: Word { default: "false", words: &["false", "true"] },
        meaning: m("Also publish each metric per function version"),
    };
    BACKOFF_BASE_MS = Setting {
        var: "KINESIS_TELEMETRY_BACKOFF_BASE_MS",
        accepts: Int { default: 25, min: 1, max: 60_000 },
        meaning: m("Retry backoff base: full jitter in [0, min(cap, base·2ⁿ)]."),
    };
    BACKOFF_CAP_MS = Setting {
        var: "KINESIS_TELEMETRY_BACKOFF_CAP_MS",
        accepts: Int { default: 1_000, min: 1, max: 300_000 },
        meaning: m("Retry backoff cap."),
    };
    PROBE_INTERVAL_MS = Setting {
        var: "KINESIS_TELEMETRY_PROBE_INTERVAL_MS",
        accepts: Int { default: 1_000, min: 1, max: 3_600_000 },
        meaning: m("While Kinesis refuses every request for a cause an operator can fix (records parked), the first wait before a probe request; it doubles after each refused probe."),
    };
    PROBE_MAX_MS = Setting {
        var: "KINESIS_TELEMETRY_PROBE_MAX_MS",
        accepts: Int { default: 60_000, min: 1, max: 3_600_000 },
        meaning: m("The longest wait between probes while records are parked."),
    };
    CONNECT_TIMEOUT_MS = Setting {
        var: "KINESIS_TELEMETRY_CONNECT_TIMEOUT_MS",
        accepts: Int { default: 1_000, min: 10, max: 60_000 },
        meaning: m("TCP/TLS connect timeout to Kinesis."),
    };
    REQUEST_TIMEOUT_MS = Setting {
        var: "KINESIS_TELEMETRY_REQUEST_TIMEOUT_MS",
        accepts: Int { default: 2_000, min: 10, max: 300_000 },
        meaning: m("Whole-request timeout to Kinesis (always also bounded by the deadline at hand)."),
    };
    CONNECTION_MAX_IDLE_MS = Setting {
        var: "KINESIS_TELEMETRY_CONNECTION_MAX_IDLE_MS",
        accepts: Int { default: 20_000, min: 0, max: 3_600_000 },
        meaning: m("Pooled connections idle longer than this (time frozen included) are not reused"),
    };
    BUFFER_LIMIT_BYTES = Setting {
        var: "KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES",
        accepts: IntDerived { default: "function memory / 8, 4–64 MiB", min: MIB, max: 4096 * MIB },
        meaning: m("Memory cap for buffered records; past it the listener pushes back on Lambda."),
    };
    MAX_BODY_BYTES = Setting {
        var: "KINESIS_TELEMETRY_MAX_BODY_BYTES",
        accepts: Int {
            default: 4 * MIB,
            min: largest_batch(262_144, 1000),
            max: 64 * MIB,
        },
        meaning: m("Largest Telemetry API POST body read."),
    };
    STRICT = Setting {
        var: "KINESIS_TELEMETRY_STRICT",
        accepts: Word { default: "false", words: &["true", "false", "1", "0", "yes", "no"] },
        meaning: m("Fail the function's init on invalid configuration instead of idling."),
    };
    AWS_REGION = Setting {
        var: "AWS_REGION",
        accepts: Other {
            default: "set by Lambda",
            range: "letters, digits and `-`, such as `us-east-1`",
        },
        meaning: m("Region for the endpoint and the signature."),
    };
    AWS_DEFAULT_REGION = Setting {
        var: "AWS_DEFAULT_REGION",
        accepts: Other { default: "(unset)", range: "as `AWS_REGION`" },
        meaning: m("Used when `AWS_REGION` is unset; without either, the region of a stream ARN."),
    };
    AWS_ENDPOINT_URL_KINESIS = Setting {
        var: "AWS_ENDPOINT_URL_KINESIS",
        accepts: Other {
            default: "`https://kinesis.{region}.amazonaws.com` (`.com.cn` in China regions; FIPS, dual-stack and stream ARNs below)",
            range: "http(s) URL with an ASCII host (or `[IPv6]`) and an optional port 1–65535",
        },
        meaning: m("Endpoint override (VPC endpoints, FIPS, local emulators)."),
    };
    AWS_ENDPOINT_URL = Setting {
        var: "AWS_ENDPOINT_URL",
        accepts: Other { default: "(unset)", range: "as `AWS_ENDPOINT_URL_KINESIS`" },
        meaning: m("Used when `AWS_ENDPOINT_URL_KINESIS` is unset."),
    };
    ROLE_ARN = Setting {
        var: "KINESIS_TELEMETRY_ROLE_ARN",
        accepts: Other {
            default: "(unset: the function's own credentials sign)",
            range: "an IAM role ARN, `arn:aws:iam::ACCOUNT:role/NAME`",
        },
        meaning: m("A role to assume with STS `AssumeRole` and sign `PutRecords` as: for a stream in another account."),
    };
    ROLE_EXTERNAL_ID = Setting {
        var: "KINESIS_TELEMETRY_ROLE_EXTERNAL_ID",
        accepts: Other { default: "(unset)", range: "2–1224 of `a-zA-Z0-9_+=,.@:/-`" },
        meaning: m("The external id the role's trust policy asks for (`sts:ExternalId`)."),
    };
    ROLE_SESSION_NAME = Setting {
        var: "KINESIS_TELEMETRY_ROLE_SESSION_NAME",
        accepts: Other {
            default: "the function's name (characters STS does not take left out)",
            range: "2–64 of `a-zA-Z0-9_+=,.@-`",
        },
        meaning: m("The role session's name, seen in the role account's CloudTrail."),
    };
    AWS_ENDPOINT_URL_STS = Setting {
        var: "AWS_ENDPOINT_URL_STS",
        accepts: Other {
            default: "`https://sts.{region}.amazonaws.com` (FIPS and dual-stack as for Kinesis); `AWS_ENDPOINT_URL` when set",
            range: "as `AWS_ENDPOINT_URL_KINESIS`",
        },
        meaning: m("Where `AssumeRole` goes, when a role is set."),
    };
    AWS_CA_BUNDLE = Setting {
        var: "AWS_CA_BUNDLE",
        accepts: Other { default: "(unset)", range: "a readable PEM file" },
        meaning: m("Certificates trusted for Kinesis in addition to the built-in roots (a private CA, a TLS-inspecting proxy), as the AWS CLI and SDKs do."),
    };
    AWS_USE_FIPS_ENDPOINT = Setting {
        var: "AWS_USE_FIPS_ENDPOINT",
        accepts: Word { default: "false", words: &["false", "true"] },
        meaning: m("Use the FIPS endpoint, resolved as the AWS SDKs do (an endpoint URL above wins)."),
    };
    AWS_USE_DUALSTACK_ENDPOINT = Setting {
        var: "AWS_USE_DUALSTACK_ENDPOINT",
        accepts: Word { default: "false", words: &["false", "true"] },
        meaning: m("Use the dual-stack (IPv4 and IPv6) endpoint, resolved as the AWS SDKs do (an endpoint URL above wins)."),
    };
    AWS_ACCESS_KEY_ID = Setting {
        var: "AWS_ACCESS_KEY_ID",
        accepts: Other {
            default: "set by Lambda",
            range: "printable ASCII, no spaces or line breaks",
        },
        meaning: m("Credentials of the execution role, with the next two."),
    };
    AWS_SECRET_ACCESS_KEY = Setting {
        var: "AWS_SECRET_ACCESS_KEY",
        accepts: Other {
            default: "set by Lambda",
            range: "printable ASCII, no spaces or line breaks",
        },
        meaning: m("The secret key that goes with `AWS_ACCESS_KEY_ID`."),
    };
    AWS_SESSION_TOKEN = Setting {
        var: "AWS_SESSION_TOKEN",
        accepts: Other {
            default: "set by Lambda",
            range: "printable ASCII, no spaces or line breaks",
        },
        meaning: m("The session token that goes with them."),
    };
    AWS_CONTAINER_CREDENTIALS_FULL_URI = Setting {
        var: "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        accepts: Other { default: "set by Lambda with SnapStart", range: "http(s) URL" },
        meaning: m("Used when the keys above are absent: credentials fetched from this endpoint"),
    };
    AWS_CONTAINER_CREDENTIALS_RELATIVE_URI = Setting {
        var: "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        accepts: Other { default: "(unset)", range: "a path" },
        meaning: m("Used when `AWS_CONTAINER_CREDENTIALS_FULL_URI` is unset: the endpoint is `http://169.254.170.2` and this path."),
    };
    AWS_CONTAINER_AUTHORIZATION_TOKEN = Setting {
        var: "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        accepts: Other {
            default: "set by Lambda with SnapStart",
            range: "printable ASCII, no spaces or line breaks",
        },
        meaning: m("The `Authorization` header sent to the credentials endpoint."),
    };
    AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE = Setting {
        var: "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        accepts: Other { default: "(unset)", range: "a file path" },
        meaning: m("Used when `AWS_CONTAINER_AUTHORIZATION_TOKEN` is unset: the token is read from this file at each fetch."),
    };
    AWS_LAMBDA_FUNCTION_MEMORY_SIZE = Setting {
        var: "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        accepts: Other {
            default: "set by Lambda (128 if unset)",
            range: "megabytes (any other value counts as 128)",
        },
        meaning: m("The function's memory: it sets the default of `KINESIS_TELEMETRY_BUFFER_LIMIT_BYTES`, and is `otlp-json`'s `faas.max_memory`."),
    };
    RUST_LOG = Setting {
        var: "RUST_LOG",
        accepts: Other { default: "(unset)", range: "env_logger syntax (`debug`, `warn`, ...)" },
        meaning: m("Log level; wins over `AWS_LAMBDA_LOG_LEVEL`."),
    };
    AWS_LAMBDA_LOG_LEVEL = Setting {
        var: "AWS_LAMBDA_LOG_LEVEL",
        accepts: Other { default: "`INFO`", range: "`TRACE`…`FATAL`" },
        meaning: m("Lambda's log level control, used when `RUST_LOG` is unset."),
    };
    AWS_LAMBDA_LOG_FORMAT = Setting {
        var: "AWS_LAMBDA_LOG_FORMAT",
        accepts: Other { default: "`Text`", range: "`Text`, `JSON`" },
        meaning: m("Lambda's log format control: with `JSON` the extension's own log lines are JSON objects (`timestamp`, `level`, `message`, `extension`)."),
    };
}

const MIB: u64 = 1024 * 1024;

/// The validated configuration: one value per stage, each stage's type
/// defined by the stage (config builds them; no stage reads `config`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The stream, endpoint, credentials and transport.
    pub kinesis: KinesisSettings,
    /// What the Telemetry API subscription asks for.
    pub subscription: SubscriptionSettings,
    pub listener: ListenerSettings,
    /// Flush policy, sending and retries, buffer and sampling, shaping.
    pub dispatch: DispatchSettings,
    /// The main thread's waits at INVOKE and SHUTDOWN.
    pub lifecycle: LifecycleSettings,
    /// A problem found later (the listener's port cannot be bound) fails the
    /// function's init too.
    pub strict: bool,
}

/// The main thread's waits (see `main::Lifecycle`).
#[derive(Debug, Clone, Copy)]
pub struct LifecycleSettings {
    /// Longest wait for `platform.runtimeDone` after INVOKE; `None`: until
    /// the invoke deadline.
    pub runtime_done_timeout: Option<Duration>,
    /// At SHUTDOWN, how long to wait for the last telemetry.
    pub shutdown_wait: Duration,
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
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
    /// `KINESIS_TELEMETRY_STRICT` as far as it could be read (a value that is
    /// no switch counts as false): whether these errors fail the function's init.
    pub strict: bool,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

struct Reader<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    /// The trimmed value of a variable, `None` when unset or blank.
    fn raw(&self, s: &Setting) -> Option<String> {
        (self.get)(s.var)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn fail(&mut self, s: &Setting, value: Option<String>, expected: impl Into<String>) {
        self.errors.push(ConfigError {
            var: s.var.to_string(),
            value,
            expected: expected.into(),
            secret: false,
        });
    }

    /// A secret (credentials): it must be usable in an HTTP header. An
    /// error names the variable and the rule, never the value.
    fn secret(&mut self, s: &Setting) -> Option<String> {
        let v = self.raw(s)?;
        if !header_safe(&v) {
            self.errors.push(ConfigError {
                var: s.var.to_string(),
                value: Some(String::new()),
                expected: SECRET_EXPECTED.into(),
                secret: true,
            });
        }
        Some(v)
    }

    /// An `Int` setting.
    fn int(&mut self, s: &Setting) -> u64 {
        let Accepts::Int { default, .. } = s.accepts else {
            unreachable!("{} has no fixed default", s.var)
        };
        self.int_or(s, default)
    }

    /// An integer setting whose default the caller worked out.
    fn int_or(&mut self, s: &Setting, default: u64) -> u64 {
        let (Accepts::Int { min, max, .. } | Accepts::IntDerived { min, max, .. }) = s.accepts
        else {
            unreachable!("{} is not an integer", s.var)
        };
        let Some(v) = self.raw(s) else {
            return default;
        };
        match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                self.fail(s, Some(v), format!("an integer from {min} to {max}"));
                default
            }
        }
    }

    fn millis(&mut self, s: &Setting) -> Duration {
        Duration::from_millis(self.int(s))
    }

    /// A `Word` setting: the word as the table spells it.
    fn word(&mut self, s: &Setting) -> &'static str {
        let Accepts::Word { default, words } = s.accepts else {
            unreachable!("{} is not a word", s.var)
        };
        let Some(v) = self.raw(s) else {
            return default;
        };
        if let Some(w) = words.iter().find(|w| w.eq_ignore_ascii_case(&v)) {
            return w;
        }
        self.fail(s, Some(v), format!("one of {}", words.join(", ")));
        default
    }
}

/// Every variable the extension reads: the settings and the proxy ones.
fn every_variable() -> impl Iterator<Item = &'static str> {
    VARIABLES
        .iter()
        .copied()
        .chain(PROXY_VARS)
        .chain(NO_PROXY_VARS)
}

/// Reads and validates the whole configuration from the process
/// environment (see `from_env_os`).
pub fn from_process_env() -> Result<Settings, ConfigErrors> {
    from_env_os(&|k| std::env::var_os(k))
}

/// As `from_env`, from values that need not be UTF-8: one that is not
/// (`std::env::var` calls it absent) is an error naming its variable, for
/// every variable the extension reads, instead of the setting silently
/// falling back to its default (a `KINESIS_TELEMETRY_REDACT` that would
/// turn redaction off, say).
pub fn from_env_os(
    get: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Settings, ConfigErrors> {
    let mut errors: Vec<ConfigError> = every_variable()
        .filter_map(|var| {
            let value = get(var)?;
            value.to_str().is_none().then(|| not_utf8(var, &value))
        })
        .collect();
    let parsed = from_env(&|k| get(k).and_then(|v| v.into_string().ok()));
    match parsed {
        Ok(config) if errors.is_empty() => Ok(config),
        Ok(config) => Err(ConfigErrors {
            errors,
            strict: config.strict,
        }),
        Err(e) => {
            // A variable that is not UTF-8 reads as unset: what that leads
            // to ("is not set") is not news.
            let reported: Vec<String> = errors.iter().map(|e| e.var.clone()).collect();
            errors.extend(e.errors.into_iter().filter(|e| !reported.contains(&e.var)));
            Err(ConfigErrors {
                errors,
                strict: e.strict,
            })
        }
    }
}

/// The error for a value that is not UTF-8: shown with U+FFFD for the bad
/// bytes, unless it may hold a secret.
fn not_utf8(var: &str, value: &std::ffi::OsStr) -> ConfigError {
    use std::os::unix::ffi::OsStrExt;
    let secret = [
        &AWS_ACCESS_KEY_ID,
        &AWS_SECRET_ACCESS_KEY,
        &AWS_SESSION_TOKEN,
        &AWS_CONTAINER_AUTHORIZATION_TOKEN,
    ]
    .iter()
    .any(|s| s.var == var)
        || PROXY_VARS.contains(&var);
    let lossy = String::from_utf8_lossy(value.as_bytes());
    ConfigError {
        var: var.to_string(),
        value: Some(redacted_url(&lossy).into_owned()),
        expected: "UTF-8 text (a byte is not UTF-8)".into(),
        secret,
    }
}

/// Reads and validates the whole configuration in one pass: each setting is
/// read once, in the order of the table (so errors come in that order), then
/// the stages' values are built from what was read.
pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigErrors> {
    let mut r = Reader {
        get,
        errors: Vec::new(),
    };
    let stream = stream(&mut r);
    let region = region(&mut r, &stream);
    let endpoint = endpoint(&mut r, &region, &stream);
    let ca_bundle = ca_bundle(&mut r);
    let credentials = credentials_source(&mut r);
    let role = role(&mut r, &region);
    let types = types(&mut r);
    let buffering = Buffering {
        max_items: r.int(&BUFFER_MAX_ITEMS) as u32,
        max_bytes: r.int(&BUFFER_MAX_BYTES) as u32,
        timeout_ms: r.int(&BUFFER_TIMEOUT_MS) as u32,
    };
    let schema_version = match r.word(&SCHEMA_VERSION) {
        "auto" => None,
        version => Some(version),
    };
    let listener_port = listener_port(&mut r);
    // A word's `_` arm is its default word (a test checks that each word
    // has a value of its own).
    let flush_mode = match r.word(&FLUSH) {
        "end" => FlushMode::End,
        "periodic" => FlushMode::Periodic,
        "batch" => FlushMode::Batch,
        _ => FlushMode::Adaptive,
    };
    let batch_max_age = r.millis(&BATCH_MAX_AGE_MS);
    let flush_interval = r.millis(&FLUSH_INTERVAL_MS);
    let max_delay = r.millis(&MAX_DELAY_MS);
    let format = match r.word(&FORMAT) {
        "kpl" => Format::Kpl,
        "ndjson-gzip" => Format::NdjsonGzip,
        "cwlogs" => Format::Cwlogs,
        "otlp-json" => Format::OtlpJson,
        _ => Format::Json,
    };
    let cwlogs_names = cwlogs_names(&mut r);
    let cwlogs_platform = match r.word(&CWLOGS_PLATFORM) {
        "json" => cwlogs::Platform::Json,
        _ => cwlogs::Platform::Text,
    };
    let otlp_gzip = r.word(&OTLP_COMPRESSION) == "gzip";
    let hash_key = match r.word(&HASH_KEY) {
        "random" => HashKeyMode::Random,
        _ => HashKeyMode::None,
    };
    let platform_events = platform_events(&mut r);
    let min_level = min_level(&mut r);
    let enrich = r.word(&ENRICH) == "true";
    let tags = tags(&mut r, enrich || format == Format::OtlpJson);
    let sample_success = sample_success(&mut r);
    let sample_hold = r.millis(&SAMPLE_HOLD_MS);
    let redact = redaction_rules(&mut r);
    let runtime_done_timeout = nonzero(r.millis(&RUNTIME_DONE_TIMEOUT_MS));
    let flush_timeout = r.millis(&FLUSH_TIMEOUT_MS);
    let max_records_per_request = r.int(&MAX_RECORDS_PER_REQUEST) as usize;
    let request_bytes = r.int(&MAX_BYTES_PER_REQUEST);
    let max_record_bytes = max_record_bytes(&mut r, request_bytes);
    match format {
        Format::Cwlogs => cwlogs_fits(&mut r, enrich, max_record_bytes),
        Format::OtlpJson => otlp_fits(&mut r, enrich, max_record_bytes, &tags),
        _ => {}
    }
    let partition_key = match r.word(&PARTITION_KEY) {
        "request" => PartitionKeyMode::Request,
        "random" => PartitionKeyMode::Random,
        _ => PartitionKeyMode::Environment,
    };
    let shutdown_wait = r.millis(&SHUTDOWN_WAIT_MS);
    let max_attempts = r.int(&MAX_ATTEMPTS) as u32;
    let budget = r.int(&RETRY_BUDGET) as u32;
    let metrics_interval = nonzero(r.millis(&METRICS_INTERVAL_MS));
    let emf = emf(&mut r);
    let retry = Policy {
        max_attempts,
        budget,
        backoff_base: r.millis(&BACKOFF_BASE_MS),
        backoff_cap: r.millis(&BACKOFF_CAP_MS),
        probe_interval: r.millis(&PROBE_INTERVAL_MS),
        probe_max: r.millis(&PROBE_MAX_MS),
    };
    let connect_timeout = r.millis(&CONNECT_TIMEOUT_MS);
    let request_timeout = r.millis(&REQUEST_TIMEOUT_MS);
    let connection_max_idle = r.millis(&CONNECTION_MAX_IDLE_MS);
    let buffer_cap = r.int_or(&BUFFER_LIMIT_BYTES, default_buffer_limit(get)) as usize;
    let max_body_bytes = max_body_bytes(&mut r, buffering);
    let strict = matches!(r.word(&STRICT), "true" | "1" | "yes");

    // From the settings read, each stage's value. Sampling is on or off
    // here, once: the stages see `Some` or `None`.
    let sampling = (sample_success < SCALE).then_some(SamplingSettings {
        success: sample_success,
        hold: sample_hold,
        max_held: buffer_cap / 2,
    });
    let settings = Settings {
        kinesis: KinesisSettings {
            stream,
            region,
            endpoint,
            ca_bundle,
            credentials,
            role,
            connect_timeout,
            request_timeout,
            connection_max_idle,
        },
        subscription: SubscriptionSettings {
            types,
            buffering,
            schema_version,
        },
        listener: ListenerSettings {
            port: listener_port,
            max_body_bytes,
        },
        dispatch: DispatchSettings {
            flush: FlushSettings {
                mode: flush_mode,
                batch_max_age,
                flush_interval,
                max_delay,
                flush_timeout,
                lambda_timeout: Duration::from_millis(buffering.timeout_ms.into()),
            },
            send: SendSettings {
                retry,
                limits: request_limits(
                    max_records_per_request,
                    request_bytes as usize,
                    buffer_cap,
                    max_record_bytes,
                ),
                format,
                cwlogs: cwlogs_names,
                max_record_bytes,
                hash_key,
            },
            buffer: BufferSettings {
                cap: buffer_cap,
                max_record_bytes,
                sampling,
            },
            shape: ShapeSettings {
                types,
                platform_events,
                min_level,
                enrich,
                partition_key,
                max_record_bytes,
                redact,
                sampling: sampling.is_some(),
                own_emf: emf.on,
                format,
                cwlogs_platform,
                otlp_gzip,
                tags,
                memory_mb: get(AWS_LAMBDA_FUNCTION_MEMORY_SIZE.var)
                    .and_then(|v| v.trim().parse().ok()),
            },
            metrics_interval,
            emf,
        },
        lifecycle: LifecycleSettings {
            runtime_done_timeout,
            shutdown_wait,
        },
        strict,
    };
    if r.errors.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigErrors {
            errors: r.errors,
            strict,
        })
    }
}

/// `KINESIS_TELEMETRY_EMF*`: the namespace is checked even when EMF is off
/// (a mistake there is one to hear about before turning it on).
fn emf(r: &mut Reader) -> crate::dispatch::emf::Settings {
    const DEFAULT: &str = "KinesisTelemetryExtension";
    let namespace = match r.raw(&EMF_NAMESPACE) {
        None => DEFAULT.to_string(),
        Some(v) => match crate::dispatch::emf::namespace_problem(&v) {
            None => v,
            Some(rule) => {
                let expected = format!("a CloudWatch namespace: {rule}");
                r.fail(&EMF_NAMESPACE, Some(v), expected);
                DEFAULT.to_string()
            }
        },
    };
    crate::dispatch::emf::Settings {
        on: r.word(&EMF) == "true",
        namespace,
        version_dimension: r.word(&EMF_VERSION_DIMENSION) == "true",
    }
}

/// 0 means "no limit" / "never".
fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

fn stream(r: &mut Reader) -> StreamTarget {
    let value = r.raw(&STREAM).or_else(|| {
        // Set but empty is a mistake of its own, not a missing setting.
        (r.get)(STREAM.var).filter(|v| v.trim().is_empty())
    });
    let Some(s) = value else {
        r.fail(&STREAM, None, STREAM_EXPECTED);
        return StreamTarget::Name(String::new());
    };
    StreamTarget::parse(&s).unwrap_or_else(|expected| {
        r.fail(&STREAM, Some(s), expected);
        StreamTarget::Name(String::new())
    })
}

fn region(r: &mut Reader, stream: &StreamTarget) -> String {
    // Region: AWS_REGION as Lambda sets it; the ARN's region wins when it differs
    // would be surprising, so an ARN only fills in a missing region.
    let arn_region = stream.arn_region().map(str::to_string);
    let region = r
        .raw(&AWS_REGION)
        .or_else(|| r.raw(&AWS_DEFAULT_REGION))
        .or(arn_region)
        .unwrap_or_default();
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        let value = r.raw(&AWS_REGION);
        r.fail(&AWS_REGION, value, "an AWS region such as us-east-1");
    }
    region
}

/// `AWS_CA_BUNDLE`: only checked here (a stat, an open, an fstat: no
/// read); read and parsed later, off the cold-start path.
fn ca_bundle(r: &mut Reader) -> Option<String> {
    let path = r.raw(&AWS_CA_BUNDLE)?;
    match crate::files::open_regular(&path, CA_BUNDLE_MAX_BYTES) {
        Ok(_) => Some(path),
        Err(problem) => {
            r.fail(
                &AWS_CA_BUNDLE,
                Some(path),
                format!("a readable PEM file ({problem})"),
            );
            None
        }
    }
}

fn endpoint(r: &mut Reader, region: &str, stream: &StreamTarget) -> String {
    let set = [&AWS_ENDPOINT_URL_KINESIS, &AWS_ENDPOINT_URL]
        .into_iter()
        .find_map(|s| r.raw(s).map(|url| (s, url)));
    match set {
        Some((s, url)) => match url_problem(&url) {
            None => url.trim_end_matches('/').to_string(),
            Some(problem) => {
                r.fail(
                    s,
                    Some(redacted_url(&url).into_owned()),
                    format!("an http:// or https:// URL with a host ({problem})"),
                );
                String::new()
            }
        },
        None => {
            let fips = r.word(&AWS_USE_FIPS_ENDPOINT) == "true";
            let dual_stack = r.word(&AWS_USE_DUALSTACK_ENDPOINT) == "true";
            match resolve(region, stream, fips, dual_stack) {
                Ok(url) => url,
                Err(problem) => {
                    let s = match problem {
                        NoEndpoint::NoDualStack { .. } => &AWS_USE_DUALSTACK_ENDPOINT,
                        NoEndpoint::BadArn(_) | NoEndpoint::OtherPartition { .. } => &STREAM,
                    };
                    let value = r.raw(s);
                    r.fail(s, value, problem.to_string());
                    String::new()
                }
            }
        }
    }
}

/// The role to assume, if one is set (docs/cross-account.md).
fn role(r: &mut Reader, region: &str) -> Option<RoleSettings> {
    let external_id = r.raw(&ROLE_EXTERNAL_ID);
    if external_id.as_deref().is_some_and(|id| !external_id_ok(id)) {
        // An external id is a shared secret of sorts: not shown.
        r.errors.push(ConfigError {
            var: ROLE_EXTERNAL_ID.var.to_string(),
            value: Some(String::new()),
            expected: EXTERNAL_ID_EXPECTED.into(),
            secret: true,
        });
    }
    let session_name = r.raw(&ROLE_SESSION_NAME);
    if let Some(name) = session_name.clone().filter(|n| !session_name_ok(n)) {
        r.fail(&ROLE_SESSION_NAME, Some(name), SESSION_NAME_EXPECTED);
    }
    let Some(arn) = r.raw(&ROLE_ARN) else {
        // Named by the variable that is set, not the one missing.
        let alone = [
            (&ROLE_EXTERNAL_ID, &external_id),
            (&ROLE_SESSION_NAME, &session_name),
        ];
        if let Some((s, _)) = alone.into_iter().find(|(_, v)| v.is_some()) {
            let why = "KINESIS_TELEMETRY_ROLE_ARN set too: the external id and session name are for a role to assume";
            r.fail(s, None, why);
        }
        return None;
    };
    if !role_arn_ok(&arn) {
        r.fail(&ROLE_ARN, Some(arn.clone()), ROLE_ARN_EXPECTED);
    }
    let already = |r: &Reader, s: &Setting| r.errors.iter().any(|e| e.var == s.var);
    let set = [&AWS_ENDPOINT_URL_STS, &AWS_ENDPOINT_URL]
        .into_iter()
        .find_map(|s| r.raw(s).map(|url| (s, url)));
    let endpoint = match set {
        Some((s, url)) => match url_problem(&url) {
            None => url.trim_end_matches('/').to_string(),
            Some(problem) => {
                if !already(r, s) {
                    let value = Some(redacted_url(&url).into_owned());
                    r.fail(
                        s,
                        value,
                        format!("an http:// or https:// URL with a host ({problem})"),
                    );
                }
                String::new()
            }
        },
        None => {
            // Read as `endpoint` reads them (which reports a bad value).
            let on = |s: &Setting| r.raw(s).is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let (fips, dual_stack) = (on(&AWS_USE_FIPS_ENDPOINT), on(&AWS_USE_DUALSTACK_ENDPOINT));
            match sts_endpoint(region, fips, dual_stack) {
                Ok(url) => url,
                Err(problem) => {
                    if !already(r, &AWS_USE_DUALSTACK_ENDPOINT) {
                        let value = r.raw(&AWS_USE_DUALSTACK_ENDPOINT);
                        r.fail(&AWS_USE_DUALSTACK_ENDPOINT, value, problem.to_string());
                    }
                    String::new()
                }
            }
        }
    };
    let function = (r.get)("AWS_LAMBDA_FUNCTION_NAME");
    Some(RoleSettings {
        arn,
        external_id,
        session_name: session_name.unwrap_or_else(|| default_session_name(function.as_deref())),
        endpoint,
    })
}

fn types(r: &mut Reader) -> Types {
    let Some(v) = r.raw(&TYPES) else {
        return Types {
            platform: true,
            function: true,
            extension: true,
        };
    };
    match parse_types(&v) {
        Some(t) => t,
        None => {
            r.fail(
                &TYPES,
                Some(v),
                "a comma-separated, non-empty subset of platform,function,extension",
            );
            Types::default()
        }
    }
}

fn listener_port(r: &mut Reader) -> u16 {
    let port = r.int(&LISTENER_PORT) as u16;
    if port == 9001 {
        r.fail(
            &LISTENER_PORT,
            Some("9001".into()),
            "0 (any free port) or a port other than 9001, which Lambda reserves",
        );
    }
    port
}

/// The names `cwlogs` records carry; each at most CloudWatch's 512 bytes.
fn cwlogs_names(r: &mut Reader) -> cwlogs::Names {
    let mut name = |s: &Setting| {
        let v = r.raw(s)?;
        if v.len() > cwlogs::MAX_NAME {
            r.fail(
                s,
                Some(v.clone()),
                "at most 512 bytes (CloudWatch Logs' limit)",
            );
        }
        Some(v)
    };
    cwlogs::Names {
        log_group: name(&CWLOGS_LOG_GROUP),
        log_stream: name(&CWLOGS_LOG_STREAM),
        filter: name(&CWLOGS_FILTER_NAME).unwrap_or_else(|| "kinesis-telemetry-extension".into()),
    }
}

/// `cwlogs` records carry CloudWatch's fields only (no envelope), and need
/// room for the `DATA_MESSAGE` around a log event.
fn cwlogs_fits(r: &mut Reader, enrich: bool, max_record_bytes: usize) {
    if enrich {
        r.fail(
            &ENRICH,
            Some("true".into()),
            "false with KINESIS_TELEMETRY_FORMAT=cwlogs: its records carry CloudWatch Logs' fields (owner, logGroup, logStream, id), not the envelope; unset one of the two",
        );
    }
    if max_record_bytes < 2 * cwlogs::RESERVE {
        r.fail(
            &MAX_RECORD_BYTES,
            Some(max_record_bytes.to_string()),
            "at least 6144 with KINESIS_TELEMETRY_FORMAT=cwlogs (room for the DATA_MESSAGE around each log event)",
        );
    }
}

/// `otlp-json` records carry OTLP's fields only (no envelope: the resource
/// attributes say what it would), and need room for the resource (and the
/// tags in it) around each log record.
fn otlp_fits(r: &mut Reader, enrich: bool, max_record_bytes: usize, tags: &[(String, String)]) {
    if enrich {
        r.fail(
            &ENRICH,
            Some("true".into()),
            "false with KINESIS_TELEMETRY_FORMAT=otlp-json: its records carry the function, environment and tags as OTLP resource attributes, and each log record its request and trace, not the envelope; unset one of the two",
        );
    }
    let needed = 2 * otlp_json::reserve(tags);
    if max_record_bytes < needed {
        r.fail(
            &MAX_RECORD_BYTES,
            Some(max_record_bytes.to_string()),
            format!("at least {needed} with KINESIS_TELEMETRY_FORMAT=otlp-json (room for the resource and its tags around each log record)"),
        );
    }
}

/// `KINESIS_TELEMETRY_TAGS`: each bad tag an error naming it. `carried`:
/// the records carry tags (the envelope, or `otlp-json`).
fn tags(r: &mut Reader, carried: bool) -> Vec<(String, String)> {
    let Some(v) = r.raw(&TAGS) else {
        return Vec::new();
    };
    let (tags, problems) = parse_tags(&v);
    for p in problems {
        r.fail(&TAGS, Some(v.clone()), p);
    }
    if !carried {
        r.fail(
            &TAGS,
            Some(v),
            "unset without KINESIS_TELEMETRY_ENRICH=true or KINESIS_TELEMETRY_FORMAT=otlp-json: tags go in the envelope or the OTLP resource",
        );
    }
    tags
}

/// Most tags: AWS's limit on a resource's tags.
const MAX_TAGS: usize = 50;

/// `key=value,…` (the key ends at the first `=`): the tags, and what is
/// wrong with each bad one (naming it).
fn parse_tags(v: &str) -> (Vec<(String, String)>, Vec<String>) {
    let key_byte = |b: u8| b.is_ascii_alphanumeric() || b"_.:/+@-".contains(&b);
    let mut tags: Vec<(String, String)> = Vec::new();
    let mut problems = Vec::new();
    for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((k, val)) = item.split_once('=') else {
            problems.push(format!(
                "key=value pairs separated by commas; {item:?} has no ="
            ));
            continue;
        };
        let (k, val) = (k.trim(), val.trim());
        if k.is_empty() || k.len() > 128 || !k.bytes().all(key_byte) {
            problems.push(format!(
                "keys of 1 to 128 characters A-Za-z0-9_.:/+@- ; tag {item:?}"
            ));
        } else if val.len() > 256 || !val.bytes().all(|b| key_byte(b) || b == b'=' || b == b' ') {
            problems.push(format!(
                "values of 0 to 256 characters A-Za-z0-9_.:/+@-= or space; tag {item:?}"
            ));
        } else if tags.iter().any(|(seen, _)| seen == k) {
            problems.push(format!("each key once; {k:?} is given twice"));
        } else {
            tags.push((k.to_string(), val.to_string()));
        }
    }
    if tags.len() > MAX_TAGS {
        problems.push(format!("at most {MAX_TAGS} tags; {} given", tags.len()));
    }
    (tags, problems)
}

fn platform_events(r: &mut Reader) -> Option<Vec<String>> {
    let v = r.raw(&PLATFORM_EVENTS).filter(|v| v != "*")?;
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
            &PLATFORM_EVENTS,
            Some(v),
            "* or a comma-separated list of platform event names such as start,runtimeDone,report",
        );
    }
    Some(names)
}

fn min_level(r: &mut Reader) -> Option<usize> {
    let v = r.raw(&MIN_LEVEL)?;
    let level = LEVELS.iter().position(|l| l.eq_ignore_ascii_case(&v));
    if level.is_none() {
        r.fail(
            &MIN_LEVEL,
            Some(v),
            "one of TRACE, DEBUG, INFO, WARN, ERROR, FATAL",
        );
    }
    level
}

/// A fraction from 0 to 1, in millionths.
fn sample_success(r: &mut Reader) -> u32 {
    let Some(v) = r.raw(&SAMPLE_SUCCESS) else {
        return SCALE;
    };
    match millionths(&v) {
        Some(m) if m <= SCALE => m,
        _ => {
            r.fail(
                &SAMPLE_SUCCESS,
                Some(v),
                "a fraction from 0 to 1, such as 0.1 (1: every invocation)",
            );
            SCALE
        }
    }
}

/// A decimal fraction (`0.1`, `1`, `.25`, `0.0000015`) in millionths,
/// rounded half up past the sixth decimal; `None` if it is not digits with
/// at most one point. (No float parsing: core's would add 10 KB of tables
/// to the binary for this one setting.)
fn millionths(v: &str) -> Option<u32> {
    let (int, frac) = v.trim().split_once('.').unwrap_or((v.trim(), ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) || int.len() > 3 {
        return None;
    }
    let mut m: u64 = int.bytes().fold(0, |n, b| n * 10 + u64::from(b - b'0')) * 1_000_000;
    let mut place = 100_000;
    for (i, b) in frac.bytes().enumerate() {
        let d = u64::from(b - b'0');
        match i {
            0..=5 => m += d * place,
            6 => m += u64::from(d >= 5),
            _ => break,
        }
        place /= 10;
    }
    u32::try_from(m).ok()
}

/// The built-in rules chosen and the user's patterns, checked; `None`
/// when neither is set.
fn redaction_rules(r: &mut Reader) -> Option<Rules> {
    let built_in = match r.raw(&REDACT).map(|v| (parse_built_in(&v), v)) {
        None => Vec::new(),
        Some((Ok(b), _)) => b,
        Some((Err(bad), v)) => {
            r.fail(&REDACT, Some(v), bad.expected());
            Vec::new()
        }
    };
    let patterns = match r.raw(&REDACT_PATTERNS).map(|v| (parse_patterns(&v), v)) {
        None => Vec::new(),
        Some((Ok(p), _)) => p,
        Some((Err(bad), v)) => {
            r.fail(&REDACT_PATTERNS, Some(v), bad.expected());
            Vec::new()
        }
    };
    if built_in.is_empty() && patterns.is_empty() {
        return None;
    }
    match Rules::new(&built_in, &patterns) {
        Ok(rules) => Some(rules),
        Err(bad) => {
            let v = r.raw(&REDACT_PATTERNS);
            r.fail(&REDACT_PATTERNS, v, bad.expected());
            None
        }
    }
}

/// Unset, the record limit follows a lowered request limit; set, it must fit in it.
fn max_record_bytes(r: &mut Reader, request_bytes: u64) -> usize {
    let n = r.int_or(&MAX_RECORD_BYTES, MIB.min(request_bytes));
    if n > request_bytes {
        r.fail(
            &MAX_RECORD_BYTES,
            Some(n.to_string()),
            format!("at most {} ({request_bytes})", MAX_BYTES_PER_REQUEST.var),
        );
    }
    n as usize
}

/// The body limit must take Lambda's largest batch for the subscription's
/// buffering (`largest_batch`): a smaller one is refused, naming the
/// buffering settings it depends on, rather than raised behind the user's
/// back (it bounds memory, which is why someone lowered it).
fn max_body_bytes(r: &mut Reader, buffering: Buffering) -> usize {
    let Accepts::Int { default, max, .. } = MAX_BODY_BYTES.accepts else {
        unreachable!("an Int setting")
    };
    let (bytes, items) = (
        u64::from(buffering.max_bytes),
        u64::from(buffering.max_items),
    );
    let needed = largest_batch(bytes, items);
    let Some(v) = r.raw(&MAX_BODY_BYTES) else {
        return default as usize; // above the largest batch of any buffering (a test checks)
    };
    match v.parse::<u64>() {
        Ok(n) if (needed..=max).contains(&n) => return n as usize,
        Ok(n) if n < needed => r.fail(
            &MAX_BODY_BYTES,
            Some(v),
            format!(
                "at least {needed} = 2 × {} ({bytes}) + {EVENT_ENVELOPE_BYTES} × {} ({items}), Lambda's largest batch: Lambda drops the batches refused (raise it, or lower those two)",
                BUFFER_MAX_BYTES.var, BUFFER_MAX_ITEMS.var
            ),
        ),
        _ => r.fail(
            &MAX_BODY_BYTES,
            Some(v),
            format!("an integer from {needed} to {max}"),
        ),
    }
    default as usize
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
    match (r.raw(&AWS_ACCESS_KEY_ID), r.raw(&AWS_SECRET_ACCESS_KEY)) {
        (Some(_), Some(_)) => {
            return CredentialsSource::Static(StaticCredentials {
                access_key_id: r.secret(&AWS_ACCESS_KEY_ID).unwrap_or_default(),
                secret_access_key: r.secret(&AWS_SECRET_ACCESS_KEY).unwrap_or_default(),
                session_token: r.secret(&AWS_SESSION_TOKEN),
            })
        }
        (Some(_), None) => {
            r.fail(
                &AWS_SECRET_ACCESS_KEY,
                None,
                "the secret key that goes with AWS_ACCESS_KEY_ID",
            );
            return empty();
        }
        _ => {}
    }
    let url = if let Some(full) = r.raw(&AWS_CONTAINER_CREDENTIALS_FULL_URI) {
        if !full.starts_with("http://") && !full.starts_with("https://") {
            r.fail(
                &AWS_CONTAINER_CREDENTIALS_FULL_URI,
                Some(full),
                "an http:// or https:// URL",
            );
            return empty();
        }
        full
    } else if let Some(rel) = r.raw(&AWS_CONTAINER_CREDENTIALS_RELATIVE_URI) {
        format!("http://169.254.170.2{rel}")
    } else {
        r.fail(
            &AWS_ACCESS_KEY_ID,
            None,
            "AWS credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (Lambda sets them from the execution role) or AWS_CONTAINER_CREDENTIALS_FULL_URI (SnapStart)",
        );
        return empty();
    };
    CredentialsSource::Container {
        url,
        token: r.secret(&AWS_CONTAINER_AUTHORIZATION_TOKEN),
        token_file: r.raw(&AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE),
    }
}

/// Default memory cap for buffered telemetry: an eighth of the function's
/// memory (which the extension shares), at least 4 MiB and at most 64 MiB.
fn default_buffer_limit(get: &dyn Fn(&str) -> Option<String>) -> u64 {
    let memory_mb = get(AWS_LAMBDA_FUNCTION_MEMORY_SIZE.var)
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
        from_env(&env(pairs)).unwrap_err().errors
    }

    #[test]
    fn tags_are_checked_each_bad_one_named() {
        let on = ("KINESIS_TELEMETRY_ENRICH", "true");
        let c = from_env(&env(&[
            on,
            (
                "KINESIS_TELEMETRY_TAGS",
                " team=payments, env=prod,a:b/c@d+e-f.g_h=x=y z,empty=,",
            ),
        ]))
        .unwrap();
        let tags: Vec<(&str, &str)> = c
            .dispatch
            .shape
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            tags,
            [
                ("team", "payments"),
                ("env", "prod"),
                ("a:b/c@d+e-f.g_h", "x=y z"),
                ("empty", "")
            ]
        );
        assert!(from_env(&env(&[])).unwrap().dispatch.shape.tags.is_empty());
        let long_key = format!("{}=v", "k".repeat(129));
        let long_value = format!("k={}", "v".repeat(257));
        let fifty_one: Vec<String> = (0..51).map(|i| format!("k{i}=v")).collect();
        let fifty: Vec<String> = (0..50)
            .map(|i| format!("k{i}={}", "v".repeat(256)))
            .collect();
        assert!(from_env(&env(&[on, ("KINESIS_TELEMETRY_TAGS", &fifty.join(","))])).is_ok());
        let max_key = format!("{}=v", "k".repeat(128));
        assert!(from_env(&env(&[on, ("KINESIS_TELEMETRY_TAGS", &max_key)])).is_ok());
        for (bad, named) in [
            ("team", "\"team\" has no ="),
            ("=v", "tag \"=v\""),
            ("te am=x", "tag \"te am=x\""),
            ("t#=x", "tag \"t#=x\""),
            ("t=x\"y", "tag \"t=x\\\"y\""),
            ("t=a,t=b", "\"t\" is given twice"),
            (&long_key, "keys of 1 to 128"),
            (&long_value, "values of 0 to 256"),
            (&fifty_one.join(","), "at most 50 tags; 51 given"),
        ] {
            let e = errors(&[on, ("KINESIS_TELEMETRY_TAGS", bad)]);
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert_eq!(e[0].var, TAGS.var);
            assert!(e[0].to_string().contains(named), "{bad}: {}", e[0]);
        }
        let e = errors(&[("KINESIS_TELEMETRY_TAGS", "team=payments")]);
        assert_eq!(e[0].var, TAGS.var);
        assert!(
            e[0].expected.contains("KINESIS_TELEMETRY_ENRICH=true"),
            "{}",
            e[0]
        );
    }

    #[test]
    fn stages_name_variables_as_the_table_does() {
        assert_eq!(
            crate::kinesis::credentials::TOKEN_FILE_VAR,
            AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE.var
        );
    }

    #[test]
    fn sampling_and_redaction_settings() {
        let c = from_env(&env(&[])).unwrap();
        assert!(
            c.dispatch.buffer.sampling.is_none(),
            "sampling off by default"
        );
        assert!(!c.dispatch.shape.sampling);
        assert!(c.dispatch.shape.redact.is_none(), "off by default");
        let c = from_env(&env(&[
            ("KINESIS_TELEMETRY_SAMPLE_SUCCESS", "0.1"),
            ("KINESIS_TELEMETRY_REDACT", "Email, card"),
            ("KINESIS_TELEMETRY_REDACT_PATTERNS", r#"["a,b"]"#),
        ]))
        .unwrap();
        let sampling = c.dispatch.buffer.sampling.expect("sampling on");
        assert_eq!(sampling.success, 100_000);
        assert!(c.dispatch.shape.sampling);
        assert_eq!(sampling.max_held, c.dispatch.buffer.cap / 2);
        assert_eq!(
            c.dispatch.shape.redact.unwrap().names(),
            ["email", "card", "pattern-1"]
        );
        let all = from_env(&env(&[("KINESIS_TELEMETRY_REDACT", "all")])).unwrap();
        assert_eq!(all.dispatch.shape.redact.unwrap().names().len(), 5);
        for (v, m) in [
            ("1", 1_000_000),
            ("1.000", 1_000_000),
            ("0", 0),
            (".25", 250_000),
            ("0.0000015", 2),
            ("0.0000014", 1),
            (" 0.5 ", 500_000),
        ] {
            assert_eq!(millionths(v), Some(m), "{v}");
        }
        for (var, bad) in [
            ("KINESIS_TELEMETRY_SAMPLE_SUCCESS", "1.5"),
            ("KINESIS_TELEMETRY_SAMPLE_SUCCESS", "1.0000005"),
            ("KINESIS_TELEMETRY_SAMPLE_SUCCESS", "10%"),
            ("KINESIS_TELEMETRY_SAMPLE_SUCCESS", "NaN"),
            ("KINESIS_TELEMETRY_SAMPLE_SUCCESS", "1e-1"),
            ("KINESIS_TELEMETRY_SAMPLE_SUCCESS", "-0.1"),
            ("KINESIS_TELEMETRY_SAMPLE_SUCCESS", "."),
            ("KINESIS_TELEMETRY_SAMPLE_SUCCESS", "0.1.2"),
            ("KINESIS_TELEMETRY_REDACT", "email,ssn"),
            ("KINESIS_TELEMETRY_REDACT_PATTERNS", "acct-[0-9]+"),
        ] {
            let e = errors(&[(var, bad)]);
            assert_eq!(e.len(), 1, "{var}={bad}");
            assert_eq!(e[0].var, var);
        }
        // An invalid pattern: the error names it and the parser's message.
        let e = errors(&[(
            "KINESIS_TELEMETRY_REDACT_PATTERNS",
            r#"["ok", "(unclosed"]"#,
        )]);
        let text = e[0].to_string();
        assert!(
            text.contains("pattern-2") && text.contains("(unclosed"),
            "{text}"
        );
        assert!(text.contains("is not:"), "{text}");
    }

    #[test]
    fn a_body_limit_below_lambdas_largest_batch_is_refused_naming_both() {
        // 1 MiB buffers: Lambda may POST 2 × 1 MiB + 128 B × 1000 events.
        let e = errors(&[
            ("KINESIS_TELEMETRY_BUFFER_MAX_BYTES", "1048576"),
            ("KINESIS_TELEMETRY_MAX_BODY_BYTES", "1048576"),
        ]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].var, MAX_BODY_BYTES.var);
        let text = e[0].to_string();
        for needed in [
            "at least 2225152",
            BUFFER_MAX_BYTES.var,
            BUFFER_MAX_ITEMS.var,
            "(1048576)",
            "(1000)",
        ] {
            assert!(text.contains(needed), "{needed}: {text}");
        }
        // The old documented minimum, with the default buffering.
        let e = errors(&[("KINESIS_TELEMETRY_MAX_BODY_BYTES", "262144")]);
        assert!(e[0].to_string().contains("at least 652288"), "{}", e[0]);
        // More items per batch need more room.
        let e = errors(&[
            ("KINESIS_TELEMETRY_BUFFER_MAX_ITEMS", "10000"),
            ("KINESIS_TELEMETRY_MAX_BODY_BYTES", "652288"),
        ]);
        assert!(e[0].to_string().contains("at least 1804288"), "{}", e[0]);
        // The smallest safe limit is accepted; so is the default with the
        // largest buffering Lambda allows.
        let c = from_env(&env(&[
            ("KINESIS_TELEMETRY_BUFFER_MAX_BYTES", "1048576"),
            ("KINESIS_TELEMETRY_MAX_BODY_BYTES", "2225152"),
        ]))
        .unwrap();
        assert_eq!(c.listener.max_body_bytes, 2_225_152);
        let c = from_env(&env(&[
            ("KINESIS_TELEMETRY_BUFFER_MAX_BYTES", "1048576"),
            ("KINESIS_TELEMETRY_BUFFER_MAX_ITEMS", "10000"),
        ]))
        .unwrap();
        assert_eq!(c.listener.max_body_bytes, 4 * 1024 * 1024);
        let Accepts::Int { default, min, .. } = MAX_BODY_BYTES.accepts else {
            panic!()
        };
        assert!(default >= largest_batch(1_048_576, 10_000));
        assert_eq!(min, largest_batch(262_144, 1000), "the README's minimum");
        // Above the range: the range, with this buffering's minimum.
        let e = errors(&[("KINESIS_TELEMETRY_MAX_BODY_BYTES", "99999999999")]);
        assert!(
            e[0].to_string().contains("from 652288 to 67108864"),
            "{}",
            e[0]
        );
    }

    /// `env` with raw bytes for one variable.
    fn env_os(
        var: &'static str,
        bytes: &'static [u8],
    ) -> impl Fn(&str) -> Option<std::ffi::OsString> {
        use std::os::unix::ffi::OsStrExt;
        let base = env(&[]);
        move |k: &str| {
            if k == var {
                Some(std::ffi::OsStr::from_bytes(bytes).to_os_string())
            } else {
                base(k).map(Into::into)
            }
        }
    }

    #[test]
    fn a_value_that_is_not_utf8_is_an_error_naming_its_variable() {
        for var in every_variable() {
            let e = from_env_os(&env_os(var, b"all\xff-secretpart")).unwrap_err();
            let named: Vec<&ConfigError> = e.errors.iter().filter(|e| e.var == var).collect();
            assert_eq!(named.len(), 1, "{var}: {e}");
            let text = named[0].to_string();
            assert!(text.contains("not UTF-8"), "{var}: {text}");
            let secret = [
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
                "AWS_CONTAINER_AUTHORIZATION_TOKEN",
            ]
            .contains(&var)
                || PROXY_VARS.contains(&var);
            assert_eq!(text.contains("secretpart"), !secret, "{var}: {text}");
        }
        // The value redaction would have silently lost: no configuration.
        let e = from_env_os(&env_os("KINESIS_TELEMETRY_REDACT", b"aws-keys\xff")).unwrap_err();
        assert_eq!(e.errors.len(), 1, "{e}");
        assert!(
            e.to_string()
                .starts_with("KINESIS_TELEMETRY_REDACT=\"aws-keys\u{fffd}\" is invalid"),
            "{e}"
        );
        // Strict mode still counts, and the other errors are all there.
        let strict = |k: &str| match k {
            "KINESIS_TELEMETRY_STRICT" => Some("true".into()),
            "KINESIS_TELEMETRY_FLUSH" => Some("sometimes".into()),
            k => env_os("KINESIS_TELEMETRY_MIN_LEVEL", b"\xfe")(k),
        };
        let e = from_env_os(&strict).unwrap_err();
        assert!(e.strict);
        assert_eq!(e.errors.len(), 2, "{e}");
        // UTF-8 values read as before.
        assert!(from_env_os(&|k| env(&[])(k).map(Into::into)).is_ok());
    }

    #[test]
    fn a_ca_bundle_is_checked_at_start_naming_the_variable_and_why() {
        let dir = crate::files::scratch("config-files");
        let small = dir.join("small.pem");
        std::fs::write(&small, b"0123456789").unwrap();
        let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        // AWS_CA_BUNDLE is checked at start, naming the variable and why.
        for (bad, why) in [
            (path(&fifo), "FIFO"),
            ("/dev/zero".to_string(), "character device"),
            (path(&dir), "directory"),
        ] {
            let e = errors(&[("AWS_CA_BUNDLE", bad.as_str())]);
            assert_eq!(e[0].var, "AWS_CA_BUNDLE");
            let text = e[0].to_string();
            assert!(
                text.contains("a readable PEM file") && text.contains(why),
                "{text}"
            );
        }
        let big = dir.join("big.pem");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(CA_BUNDLE_MAX_BYTES + 1).unwrap();
        let e = errors(&[("AWS_CA_BUNDLE", path(&big).as_str())]);
        assert!(e[0].to_string().contains("over the 1048576"), "{}", e[0]);
        let c = from_env(&env(&[("AWS_CA_BUNDLE", path(&small).as_str())])).unwrap();
        assert_eq!(c.kinesis.ca_bundle, Some(path(&small)));
        std::fs::remove_dir_all(&dir).unwrap();
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
    }

    #[test]
    fn defaults() {
        let c = from_env(&env(&[])).unwrap();
        assert_eq!(c.kinesis.stream, StreamTarget::Name("telemetry".into()));
        assert_eq!(
            c.kinesis.endpoint,
            "https://kinesis.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            c.subscription.types.names(),
            vec!["platform", "function", "extension"]
        );
        assert_eq!(
            c.subscription.buffering,
            Buffering {
                max_items: 1000,
                max_bytes: 262_144,
                timeout_ms: 25
            }
        );
        assert_eq!(c.dispatch.flush.mode, FlushMode::Adaptive);
        assert_eq!(c.dispatch.send.format, crate::records::format::Format::Json);
        assert_eq!(c.dispatch.send.hash_key, HashKeyMode::None);
        assert_eq!(c.dispatch.shape.platform_events, None);
        assert_eq!(c.dispatch.shape.min_level, None);
        assert!(!c.dispatch.shape.enrich);
        assert_eq!(
            c.dispatch.shape.partition_key,
            PartitionKeyMode::Environment
        );
        assert_eq!(c.dispatch.send.limits.max_records, 500);
        // 5 MiB (the default) capped at a quarter of the 16 MiB memory cap.
        assert_eq!(c.dispatch.send.limits.max_bytes, 4 * 1024 * 1024);
        assert_eq!(c.dispatch.send.max_record_bytes, 1024 * 1024);
        assert_eq!(c.listener.port, 0);
        assert_eq!(c.lifecycle.runtime_done_timeout, None);
        assert_eq!(c.dispatch.buffer.cap, 16 * 1024 * 1024);
        assert!(matches!(
            c.kinesis.credentials,
            CredentialsSource::Static(StaticCredentials {
                session_token: None,
                ..
            })
        ));
        assert_eq!(c.dispatch.send.retry.budget, 500);
        assert_eq!(c.dispatch.metrics_interval, Some(Duration::from_secs(60)));
    }

    #[test]
    fn endpoint_precedence() {
        let c = from_env(&env(&[
            ("AWS_ENDPOINT_URL", "http://a:1"),
            ("AWS_ENDPOINT_URL_KINESIS", "http://b:2/"),
        ]))
        .unwrap();
        assert_eq!(c.kinesis.endpoint, "http://b:2");
        let c = from_env(&env(&[("AWS_ENDPOINT_URL", "http://a:1")])).unwrap();
        assert_eq!(c.kinesis.endpoint, "http://a:1");
        let e = errors(&[("AWS_ENDPOINT_URL_KINESIS", "localhost:1")]);
        assert_eq!(e[0].var, "AWS_ENDPOINT_URL_KINESIS");
    }

    #[test]
    fn region_fallback() {
        let m = env(&[("AWS_REGION", " "), ("AWS_DEFAULT_REGION", "ap-south-1")]);
        assert_eq!(from_env(&m).unwrap().kinesis.region, "ap-south-1");
    }

    #[test]
    fn stream_arn() {
        let arn = "arn:aws:kinesis:us-east-2:123456789012:stream/my-stream";
        let c = from_env(&env(&[("KINESIS_TELEMETRY_STREAM", arn)])).unwrap();
        assert_eq!(c.kinesis.stream, StreamTarget::Arn(arn.into()));
        let e = errors(&[("KINESIS_TELEMETRY_STREAM", "arn:aws:s3:::bucket")]);
        assert_eq!(e[0].var, "KINESIS_TELEMETRY_STREAM");
    }

    #[test]
    fn fips_and_dual_stack_resolve_unless_an_endpoint_is_set() {
        let c = from_env(&env(&[
            ("AWS_USE_FIPS_ENDPOINT", "TRUE"),
            ("AWS_REGION", "us-gov-west-1"),
            ("AWS_USE_DUALSTACK_ENDPOINT", "true"),
        ]))
        .unwrap();
        assert_eq!(
            c.kinesis.endpoint,
            "https://kinesis-fips.us-gov-west-1.api.aws"
        );
        let arn = "arn:aws:kinesis:eu-west-1:123456789012:stream/s";
        let c = from_env(&env(&[
            ("KINESIS_TELEMETRY_STREAM", arn),
            ("AWS_REGION", "eu-west-1"),
        ]))
        .unwrap();
        assert_eq!(
            c.kinesis.endpoint,
            "https://123456789012.data-kinesis.eu-west-1.amazonaws.com"
        );
        let c = from_env(&env(&[
            ("AWS_USE_FIPS_ENDPOINT", "true"),
            ("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:4567"),
        ]))
        .unwrap();
        assert_eq!(
            c.kinesis.endpoint, "http://127.0.0.1:4567",
            "an endpoint URL wins"
        );
        let e = errors(&[("AWS_USE_FIPS_ENDPOINT", "yes")]);
        assert_eq!(e[0].var, "AWS_USE_FIPS_ENDPOINT");
        let e = errors(&[
            ("AWS_REGION", "us-iso-east-1"),
            ("AWS_USE_DUALSTACK_ENDPOINT", "true"),
        ]);
        assert_eq!(e[0].var, "AWS_USE_DUALSTACK_ENDPOINT");
        assert!(e[0].to_string().contains("no dual-stack"), "{}", e[0]);
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
        assert_eq!(e.errors.len(), 1);
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
    fn cwlogs_names_and_what_it_excludes() {
        let c = from_env(&env(&[
            ("KINESIS_TELEMETRY_FORMAT", "cwlogs"),
            ("KINESIS_TELEMETRY_CWLOGS_LOG_GROUP", "/custom/group"),
        ]))
        .unwrap();
        assert_eq!(c.dispatch.send.format, Format::Cwlogs);
        assert_eq!(c.dispatch.shape.format, Format::Cwlogs);
        assert_eq!(c.dispatch.shape.cwlogs_platform, cwlogs::Platform::Text);
        let names = &c.dispatch.send.cwlogs;
        assert_eq!(names.log_group.as_deref(), Some("/custom/group"));
        assert_eq!(names.log_stream, None);
        assert_eq!(names.filter, "kinesis-telemetry-extension");
        let json = [
            ("KINESIS_TELEMETRY_FORMAT", "cwlogs"),
            ("KINESIS_TELEMETRY_CWLOGS_PLATFORM", "json"),
        ];
        let c = from_env(&env(&json)).unwrap();
        assert_eq!(c.dispatch.shape.cwlogs_platform, cwlogs::Platform::Json);
        let long = "x".repeat(513);
        let e = errors(&[
            ("KINESIS_TELEMETRY_FORMAT", "cwlogs"),
            ("KINESIS_TELEMETRY_ENRICH", "true"),
            ("KINESIS_TELEMETRY_MAX_RECORD_BYTES", "4096"),
            ("KINESIS_TELEMETRY_CWLOGS_FILTER_NAME", &long),
        ]);
        let text: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        assert_eq!(e.len(), 3, "{text:?}");
        assert!(
            text[0].contains("KINESIS_TELEMETRY_CWLOGS_FILTER_NAME"),
            "{text:?}"
        );
        assert!(text
            .iter()
            .any(|t| t.contains("KINESIS_TELEMETRY_ENRICH") && t.contains("cwlogs")));
        assert!(text
            .iter()
            .any(|t| t.contains("KINESIS_TELEMETRY_MAX_RECORD_BYTES") && t.contains("6144")));
    }

    #[test]
    fn otlp_json_carries_tags_without_the_envelope() {
        let otlp = ("KINESIS_TELEMETRY_FORMAT", "otlp-json");
        let c = from_env(&env(&[
            otlp,
            ("KINESIS_TELEMETRY_TAGS", "team=payments"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"),
        ]))
        .unwrap();
        assert_eq!(c.dispatch.send.format, Format::OtlpJson);
        assert_eq!(c.dispatch.shape.format, Format::OtlpJson);
        assert!(!c.dispatch.shape.enrich);
        assert_eq!(c.dispatch.shape.tags, [("team".into(), "payments".into())]);
        assert_eq!(c.dispatch.shape.memory_mb, Some(256));
        let e = errors(&[
            otlp,
            ("KINESIS_TELEMETRY_ENRICH", "true"),
            ("KINESIS_TELEMETRY_MAX_RECORD_BYTES", "6143"),
        ]);
        let text: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        assert_eq!(e.len(), 2, "{text:?}");
        assert!(text
            .iter()
            .any(|t| t.contains("KINESIS_TELEMETRY_ENRICH") && t.contains("otlp-json")));
        assert!(text
            .iter()
            .any(|t| t.contains("KINESIS_TELEMETRY_MAX_RECORD_BYTES") && t.contains("6144")));
        assert!(from_env(&env(&[
            otlp,
            ("KINESIS_TELEMETRY_MAX_RECORD_BYTES", "6144")
        ]))
        .is_ok());
        // Tags take room in every record: the limit grows with them.
        let fifty: Vec<String> = (0..50)
            .map(|i| format!("k{i:03}={}", "v".repeat(256)))
            .collect();
        let tags = ("KINESIS_TELEMETRY_TAGS", fifty.join(","));
        let e = errors(&[
            otlp,
            (tags.0, &tags.1),
            ("KINESIS_TELEMETRY_MAX_RECORD_BYTES", "32768"),
        ]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].expected.contains("at least 36944"),
            "{}",
            e[0].expected
        );
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
        assert_eq!(
            c.dispatch.send.format,
            crate::records::format::Format::NdjsonGzip
        );
        assert_eq!(c.dispatch.send.hash_key, HashKeyMode::Random);
        assert_eq!(
            c.dispatch.shape.platform_events,
            Some(vec!["start".to_string(), "report".to_string()])
        );
        assert_eq!(c.dispatch.shape.min_level, Some(3));
        assert!(c.dispatch.shape.enrich);
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
        assert_eq!(c.subscription.types.names(), vec!["platform", "function"]);
        assert_eq!(errors(&[("KINESIS_TELEMETRY_TYPES", ",")]).len(), 1);
    }

    #[test]
    fn record_limit_follows_request_limit() {
        let c = from_env(&env(&[(
            "KINESIS_TELEMETRY_MAX_BYTES_PER_REQUEST",
            "100000",
        )]))
        .unwrap();
        assert_eq!(c.dispatch.send.max_record_bytes, 100_000);
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
        assert_eq!(c.dispatch.buffer.cap, 64 * 1024 * 1024);
        let c = from_env(&env(&[("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")])).unwrap();
        assert_eq!(c.dispatch.buffer.cap, 16 * 1024 * 1024);
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
        assert_eq!(e.errors[0].var, "AWS_SECRET_ACCESS_KEY");
        let c = from_env(&env(&[("AWS_SESSION_TOKEN", "tok")])).unwrap();
        assert!(!format!("{:?}", c.kinesis.credentials).contains("secret"));
        let CredentialsSource::Static(s) = c.kinesis.credentials else {
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
            c.kinesis.credentials,
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
        let strict = |v: &str| {
            from_env(&env(&[("KINESIS_TELEMETRY_STRICT", v)]))
                .unwrap()
                .strict
        };
        assert!(strict("true") && strict("Yes") && strict("1"));
        assert!(!strict("no") && !strict("0") && !strict(" "));
        assert!(!from_env(&env(&[])).unwrap().strict);
        // With the rest invalid, a switch still counts; a value that is no
        // switch counts as false (and is an error of its own).
        let invalid = |v: &str| {
            from_env(&env(&[
                ("KINESIS_TELEMETRY_STRICT", v),
                ("KINESIS_TELEMETRY_FLUSH", "x"),
            ]))
            .unwrap_err()
        };
        assert!(invalid("Yes").strict);
        assert!(!invalid("maybe").strict);
        assert!(!invalid("false").strict);
    }

    #[test]
    fn role_settings() {
        assert_eq!(from_env(&env(&[])).unwrap().kinesis.role, None);
        let arn = "arn:aws:iam::123456789012:role/writer";
        let c = from_env(&env(&[
            ("KINESIS_TELEMETRY_ROLE_ARN", arn),
            ("AWS_LAMBDA_FUNCTION_NAME", "my fn:1"),
            ("AWS_USE_FIPS_ENDPOINT", "true"),
        ]))
        .unwrap();
        let role = c.kinesis.role.unwrap();
        assert_eq!(role.arn, arn);
        assert_eq!(role.session_name, "myfn1");
        assert_eq!(role.external_id, None);
        assert_eq!(role.endpoint, "https://sts-fips.eu-west-1.amazonaws.com");
        let c = from_env(&env(&[
            ("KINESIS_TELEMETRY_ROLE_ARN", arn),
            ("KINESIS_TELEMETRY_ROLE_EXTERNAL_ID", "team-42"),
            ("KINESIS_TELEMETRY_ROLE_SESSION_NAME", "tel@x"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000/"),
        ]))
        .unwrap();
        let role = c.kinesis.role.unwrap();
        assert_eq!(role.endpoint, "http://127.0.0.1:5000");
        assert_eq!(role.external_id.as_deref(), Some("team-42"));
        assert_eq!(role.session_name, "tel@x");
        let c = from_env(&env(&[
            ("KINESIS_TELEMETRY_ROLE_ARN", arn),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000/"),
            ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:6000"),
        ]))
        .unwrap();
        assert_eq!(c.kinesis.role.unwrap().endpoint, "http://127.0.0.1:6000");
        // Each bad value is an error naming its variable; the external id
        // is never shown.
        for (var, bad) in [
            ("KINESIS_TELEMETRY_ROLE_ARN", "arn:aws:iam::123:role/writer"),
            ("KINESIS_TELEMETRY_ROLE_EXTERNAL_ID", "secret id"),
            ("KINESIS_TELEMETRY_ROLE_SESSION_NAME", "a:b"),
            ("AWS_ENDPOINT_URL_STS", "sts.example"),
        ] {
            let mut pairs = vec![(var, bad)];
            if var != "KINESIS_TELEMETRY_ROLE_ARN" {
                pairs.push(("KINESIS_TELEMETRY_ROLE_ARN", arn));
            }
            let e = errors(&pairs);
            assert_eq!(e.len(), 1, "{e:?}");
            assert_eq!(e[0].var, var);
            let shown = e[0].to_string();
            assert!(!shown.contains("secret id"), "{shown}");
        }
        // An external id without a role is a mistake worth saying.
        let e = errors(&[("KINESIS_TELEMETRY_ROLE_EXTERNAL_ID", "team-42")]);
        assert_eq!(e[0].var, "KINESIS_TELEMETRY_ROLE_EXTERNAL_ID");
        assert!(
            e[0].to_string()
                .contains("KINESIS_TELEMETRY_ROLE_ARN set too"),
            "{}",
            e[0]
        );
        assert!(!e[0].to_string().contains("team-42"), "{}", e[0]);
        // A bad AWS_ENDPOINT_URL is reported once, not once per service.
        let e = errors(&[
            ("KINESIS_TELEMETRY_ROLE_ARN", arn),
            ("AWS_ENDPOINT_URL", "nohost"),
        ]);
        assert_eq!(e.len(), 1, "{e:?}");
    }

    #[test]
    fn emf_settings() {
        let c = from_env(&env(&[])).unwrap();
        assert!(!c.dispatch.emf.on && !c.dispatch.emf.version_dimension);
        assert_eq!(c.dispatch.emf.namespace, "KinesisTelemetryExtension");
        let c = from_env(&env(&[
            ("KINESIS_TELEMETRY_EMF", "TRUE"),
            ("KINESIS_TELEMETRY_EMF_NAMESPACE", " team/app "),
        ]))
        .unwrap();
        assert!(c.dispatch.emf.on);
        assert_eq!(c.dispatch.emf.namespace, "team/app");
        // A namespace CloudWatch refuses is an error naming the rule.
        let e = from_env(&env(&[("KINESIS_TELEMETRY_EMF_NAMESPACE", "AWS/Lambda")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("KINESIS_TELEMETRY_EMF_NAMESPACE") && e.contains("AWS/"),
            "{e}"
        );
    }

    #[test]
    fn every_word_of_a_setting_means_something_else() {
        for s in SETTINGS {
            let Accepts::Word { words, .. } = s.accepts else {
                continue;
            };
            // (a setting of one format, with that format)
            let format = match s.var {
                v if v == CWLOGS_PLATFORM.var => "cwlogs",
                v if v == OTLP_COMPRESSION.var => "otlp-json",
                _ => "json",
            };
            let seen: std::collections::HashSet<String> = words
                .iter()
                .map(|w| (s.var, *w))
                .map(|w| from_env(&env(&[(FORMAT.var, format), w])).unwrap())
                .map(|c| format!("{c:?}"))
                .collect();
            // KINESIS_TELEMETRY_STRICT has three words for each of its two values.
            let expected = if s.var == STRICT.var { 2 } else { words.len() };
            assert_eq!(seen.len(), expected, "{}", s.var);
        }
    }

    #[test]
    fn defaults_are_accepted_values() {
        for s in SETTINGS {
            match s.accepts {
                Accepts::Int { default, min, max } => {
                    assert!((min..=max).contains(&default), "{}", s.var)
                }
                Accepts::Word { default, words } => assert!(words.contains(&default), "{}", s.var),
                Accepts::IntDerived { .. } | Accepts::Other { .. } => {}
            }
        }
    }

    /// The Default and Range cells of a setting's README row.
    fn shown(s: &Setting) -> (String, String) {
        match s.accepts {
            Accepts::Int { default, min, max } => (format!("`{default}`"), format!("{min}–{max}")),
            Accepts::IntDerived { default, min, max } => (default.into(), format!("{min}–{max}")),
            Accepts::Word { default, words } => (
                format!("`{default}`"),
                words
                    .iter()
                    .map(|w| format!("`{w}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            Accepts::Other { default, range } => (default.into(), range.into()),
        }
    }

    /// What the configuration table (docs/configuration.md) says.
    fn readme_rows(readme: &str) -> Vec<Vec<&str>> {
        readme
            .lines()
            .skip_while(|l| !l.starts_with("| Variable | Default | Range | Meaning |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                l.trim()
                    .trim_matches('|')
                    .split('|')
                    .map(str::trim)
                    .collect()
            })
            .collect()
    }

    /// The README's configuration table has a row for each setting and no
    /// other, in the same order, with the same default and range, and a
    /// meaning that starts with the setting's.
    #[test]
    fn readme_configuration_table_matches_the_settings() {
        let rows = readme_rows(include_str!("../docs/configuration.md"));
        let mut problems = Vec::new();
        let name = |row: &Vec<&str>| row[0].trim_matches('`').to_string();
        for row in &rows {
            if row.len() != 4 {
                problems.push(format!("{row:?}: not 4 cells"));
            } else if !SETTINGS.iter().any(|s| s.var == name(row)) {
                problems.push(format!(
                    "{}: in docs/configuration.md, not in SETTINGS",
                    row[0]
                ));
            }
        }
        for s in SETTINGS {
            let Some(row) = rows.iter().find(|r| r.len() == 4 && name(r) == s.var) else {
                problems.push(format!(
                    "{}: in SETTINGS, not in docs/configuration.md",
                    s.var
                ));
                continue;
            };
            let (default, range) = shown(s);
            if row[1] != default {
                problems.push(format!(
                    "{}: docs default {:?}, code {default:?}",
                    s.var, row[1]
                ));
            }
            if row[2] != range {
                problems.push(format!(
                    "{}: docs range {:?}, code {range:?}",
                    s.var, row[2]
                ));
            }
            if !row[3].starts_with(s.meaning.0) {
                problems.push(format!(
                    "{}: docs meaning {:?} does not start with {:?}",
                    s.var, row[3], s.meaning.0
                ));
            }
        }
        let readme_order: Vec<String> = rows.iter().map(name).collect();
        let code_order: Vec<String> = SETTINGS.iter().map(|s| s.var.to_string()).collect();
        if problems.is_empty() && readme_order != code_order {
            problems.push("the rows are not in the order of SETTINGS".into());
        }
        let expected: Vec<String> = SETTINGS
            .iter()
            .map(|s| {
                let (default, range) = shown(s);
                format!("| `{}` | {default} | {range} | {} |", s.var, s.meaning.0)
            })
            .collect();
        assert!(
            problems.is_empty(),
            "docs/configuration.md's table disagrees with config::SETTINGS (the code is right):\n{}\n\nThe rows config::SETTINGS gives (a Meaning may go on):\n{}",
            problems.join("\n"),
            expected.join("\n")
        );
    }
}
