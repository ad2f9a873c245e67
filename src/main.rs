//! kinesis-telemetry-extension: an AWS Lambda external extension that
//! forwards everything the Telemetry API produces to a Kinesis data stream.
//!
//! The main thread owns the Lambda lifecycle (register, subscribe, the
//! `event/next` loop); `listener` receives telemetry; `dispatcher` batches
//! and sends it. See docs/how-it-works.md.

// The stages, in the order data flows through them (blank lines keep
// rustfmt from sorting them).
// Extensions API, the telemetry listener, event splitting.
mod lambda;

// Events -> records: shaping, partition keys, the queue, record formats.
mod records;

// The dispatcher thread: when to send, retries, counting losses.
mod dispatch;

// PutRecords: wire format, errors, client, SigV4, credentials.
mod kinesis;

// Shared by the stages.
mod base64;
mod config;
mod files;
mod json;
mod logging;
mod rng;
mod slices;
mod stats;
mod time;

#[cfg(test)]
mod properties;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use config::{LifecycleSettings, Settings};
use dispatch::backlog::Backlog;
use dispatch::dispatcher::{Control, Dispatcher};
use kinesis::client::KinesisClient;
use kinesis::endpoint::redacted_url;
use lambda::extensions_api::{
    self, ExtensionsApi, LifecycleEvent, Subscription, SubscriptionSettings,
};
use lambda::model::{self, Model};
use lambda::{gate, listener};
use stats::Stats;

/// Name used when argv[0] is unusable.
const DEFAULT_NAME: &str = "kinesis-telemetry-extension";
/// Time kept free before an invoke deadline.
const INVOKE_MARGIN: Duration = Duration::from_millis(100);
/// Time kept free before the shutdown deadline (Lambda SIGKILLs at it).
const SHUTDOWN_MARGIN: Duration = Duration::from_millis(200);

fn main() {
    // Lambda's runtime init waits for every extension to register: do it
    // before anything else.
    let name = extension_name();
    let Some(runtime_api) = std::env::var("AWS_LAMBDA_RUNTIME_API")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        eprintln!(
            "[{name}] AWS_LAMBDA_RUNTIME_API is not set: this program is a Lambda extension; put it in a layer's extensions/ folder"
        );
        std::process::exit(2);
    };
    let detected = Model::from_env(&|k| std::env::var(k).ok());
    let (api, info, model) = match ExtensionsApi::register(&runtime_api, &name, detected) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("[{name}] ERROR registering with Lambda: {e}");
            std::process::exit(1);
        }
    };
    logging::init(&name);
    if model != detected {
        log::info!("Lambda refused an INVOKE registration (Extension.InvalidEventType): running as on Lambda Managed Instances, registered for SHUTDOWN only");
    }
    log::debug!(
        "registered as {name} for function {} version {} ({model:?})",
        info.function_name,
        info.function_version
    );
    let mut lambda = Lambda {
        api,
        model,
        failures: 0,
    };
    let cfg = match config::from_process_env() {
        Ok(cfg) => cfg,
        Err(errors) => lambda.config_failed(&errors.to_string(), errors.strict),
    };
    let context = vec![
        ("functionName", info.function_name),
        ("functionVersion", info.function_version),
        ("accountId", info.account_id.unwrap_or_default()),
        // The region records are sent to: AWS_REGION, or the stream ARN's
        // when AWS_REGION is unset.
        ("region", cfg.kinesis.region.clone()),
    ];
    run(lambda, cfg, context);
}

/// The executable's file name: Lambda requires it as the registration name.
fn extension_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAME.to_string())
}

/// The main thread's handle on Lambda: the Extensions API and the
/// execution model, which decides what a failure may do.
struct Lambda {
    api: ExtensionsApi,
    model: Model,
    /// Extensions API failures in a row (the wait before the next try).
    failures: u32,
}

/// Longest wait between Extensions API retries on Managed Instances.
const API_RETRY_CAP: Duration = Duration::from_secs(30);

impl Lambda {
    /// Invalid configuration: by default stay registered but idle, so the
    /// function keeps working; in strict mode fail the function's init.
    fn config_failed(&mut self, problem: &str, strict: bool) -> ! {
        if strict {
            log::error!("invalid configuration: {problem}. KINESIS_TELEMETRY_STRICT is set: failing the function's init with Extension.ConfigInvalid");
            if let Err(e) = self.api.init_error("Extension.ConfigInvalid", problem) {
                log::error!("{e}");
            }
            // After init/error the extension should exit (Extensions API),
            // on Managed Instances too: its `event/next` is refused from then
            // on (403 InvalidExtensionState), and Lambda ends the init when
            // the extension exits, with the error reported first, not
            // Extension.Crash (emulator, LMI: rapi/handler/agentiniterror.go
            // keeps the first fatal error, rapid/shutdown.go ends the init
            // flow on the exit). No invocation has run yet: none is lost.
            std::process::exit(1);
        } else {
            log::error!(
                "invalid configuration: {problem}. No telemetry will be sent until this is fixed; the function runs normally (set KINESIS_TELEMETRY_STRICT=true to fail init instead)"
            );
        }
        loop {
            match self.api.next() {
                Ok(LifecycleEvent::Invoke { .. }) => self.failures = 0,
                Ok(LifecycleEvent::Shutdown { .. }) => std::process::exit(0),
                Err(e) => self.api_failed(e),
            }
        }
    }

    /// An Extensions API call failed. On default Lambda the extension
    /// exits (Lambda restarts the environment); on Managed Instances an
    /// exit would end every invocation in flight, so it waits and the
    /// caller tries again.
    fn api_failed(&mut self, e: extensions_api::ApiError) {
        if self.model == Model::Default {
            log::error!("{e}; exiting");
            std::process::exit(1);
        }
        self.failures = self.failures.saturating_add(1);
        let wait = Duration::from_secs(1 << self.failures.min(5)).min(API_RETRY_CAP);
        log::error!(
            "{e}; trying again in {} s (on Lambda Managed Instances an exit would end every invocation in flight)",
            wait.as_secs()
        );
        std::thread::sleep(wait);
    }

    /// Sends `event/next` (its answer is read by `next_event`).
    fn request_next(&mut self) {
        if let Err(e) = self.api.request_next() {
            self.api_failed(e);
        }
    }
}

fn run(mut lambda: Lambda, cfg: Settings, context: Vec<(&'static str, String)>) {
    let (sockets, port) = match gate::bind(cfg.listener.port) {
        Ok(s) => s,
        Err(e) => lambda.config_failed(
            &format!("{e} ({}={})", config::LISTENER_PORT.var, cfg.listener.port),
            cfg.strict,
        ),
    };
    let model = lambda.model;
    let schema = subscribe(&mut lambda.api, &cfg.subscription, port, model);
    let telemetry = schema.is_some();
    // One random key per execution environment (partition key, metrics).
    let environment = rng::Rng::from_os().hex(16);
    // Logged before `next` so that it appears in the function's init log.
    log::info!(
        "forwarding {} telemetry to Kinesis stream {:?} via {} ({}, schema {}, flush {:?}, format {:?}, partition key {:?} {environment})",
        cfg.subscription.types.names().join(","),
        cfg.kinesis.stream.as_str(),
        redacted_url(&cfg.kinesis.endpoint),
        match model {
            Model::Default => "default Lambda",
            Model::ManagedInstances => "Lambda Managed Instances",
        },
        schema.unwrap_or("none"),
        cfg.dispatch.flush.mode,
        cfg.dispatch.send.format,
        cfg.dispatch.shape.partition_key,
    );
    // Ready: the first event/next goes out before any thread is started, so
    // the function's init is not kept waiting for them. Telemetry POSTed
    // meanwhile waits in the bound socket's backlog; the dispatcher starts
    // paused, so nothing is sent while Lambda considers us idle. (On
    // Managed Instances it sends from the start: nothing is ever frozen.)
    lambda.request_next();
    let settings = cfg.lifecycle;
    let threads = start_threads(cfg, model, sockets, context, environment);
    let (reply, done) = bounded(1);
    let lifecycle = Lifecycle {
        control: threads.control,
        reply,
        done,
        telemetry,
        settings,
    };
    loop {
        match lambda.api.next_event() {
            Ok(LifecycleEvent::Invoke {
                request_id,
                deadline_ms,
            }) => {
                lambda.failures = 0;
                lifecycle.invoke(request_id, instant_of(deadline_ms));
            }
            Ok(LifecycleEvent::Shutdown {
                reason,
                deadline_ms,
            }) => {
                let deadline = instant_of(deadline_ms)
                    .checked_sub(SHUTDOWN_MARGIN)
                    .unwrap_or_else(Instant::now);
                lifecycle.shutdown(deadline);
                // A delivery taken meanwhile gets its answer before we go.
                threads.unanswered.wait(deadline + SHUTDOWN_MARGIN / 2);
                log::info!("shutdown ({reason}): {}", threads.stats.summary());
                std::process::exit(0);
            }
            Err(e) => lambda.api_failed(e),
        }
        lambda.request_next();
    }
}

/// Subscribes the listener on `port` to the Telemetry API with the
/// configured schema version, or the model's; if Lambda refuses that
/// version, with the other one once. Returns the version in use, or `None`
/// when telemetry is unavailable (the extension then only follows the
/// lifecycle).
fn subscribe(
    api: &mut ExtensionsApi,
    cfg: &SubscriptionSettings,
    port: u16,
    model: Model,
) -> Option<&'static str> {
    // The platform stream is always subscribed: its runtimeDone events drive
    // the flush policy. Platform events are forwarded only if configured.
    let mut types = cfg.types;
    types.platform = true;
    let mut try_version = |version: &str| {
        let body = extensions_api::subscription_body(version, &types.names(), cfg.buffering, port);
        api.subscribe(&body)
    };
    let first = cfg.schema_version.unwrap_or(model.schema_version());
    let (version, answer) = match try_version(first) {
        Subscription::Refused(status, body) if body.to_ascii_lowercase().contains("schema") => {
            let other = model::other_schema(first);
            log::warn!("the Telemetry API refused schema version {first} (HTTP {status}: {body}); trying {other}");
            (other, try_version(other))
        }
        answer => (first, answer),
    };
    let why = match answer {
        Subscription::Active => return Some(version),
        Subscription::Refused(status, body) => {
            format!("the Telemetry API answered HTTP {status}: {body}")
        }
        Subscription::Unavailable(why) => why,
    };
    log::warn!("{why}; no telemetry will arrive, the extension only follows the lifecycle");
    None
}

/// What the main thread keeps of the threads it starts.
struct Threads {
    control: Sender<Control>,
    stats: Arc<Stats>,
    unanswered: Arc<gate::Unanswered>,
}

/// Starts the listener (behind its gate, on `sockets`) and the dispatcher,
/// each with its own settings.
fn start_threads(
    cfg: Settings,
    model: Model,
    sockets: Vec<std::net::TcpListener>,
    context: Vec<(&'static str, String)>,
    environment: String,
) -> Threads {
    let stats = Arc::new(Stats::default());
    let unanswered = Arc::new(gate::Unanswered::default());
    // Unbounded in count, bounded in bytes: the backlog holds the listener
    // back only at the memory cap, never while the dispatcher is sending.
    let (events_tx, events_rx) = unbounded();
    let backlog = Arc::new(Backlog::new(cfg.dispatch.buffer.cap));
    let (control, control_rx) = bounded(1);
    {
        let (stats, unanswered, backlog) = (stats.clone(), unanswered.clone(), backlog.clone());
        let limits = gate::Limits::new(&cfg.listener);
        let reading = crate::records::shape::reading(&cfg.dispatch.shape, model);
        spawn("listener", move || {
            let intake = listener::Intake {
                tx: events_tx,
                backlog,
                reading,
                stats,
            };
            gate::serve(sockets, intake, limits, unanswered)
        });
    }
    {
        let (kinesis, dispatch, stats) = (cfg.kinesis, cfg.dispatch, stats.clone());
        spawn("dispatcher", move || {
            let client = KinesisClient::new(&kinesis);
            Dispatcher::new(
                dispatch,
                model,
                client,
                events_rx,
                control_rx,
                stats,
                backlog,
                context,
                &environment,
            )
            .run()
        });
    }
    Threads {
        control,
        stats,
        unanswered,
    }
}

/// The main thread's side of the conversation with the dispatcher.
struct Lifecycle {
    control: Sender<Control>,
    /// The dispatcher's "paused" (a clone goes with each order), and where
    /// the main thread waits for it: one channel for the process's life,
    /// not one per invoke (each new one allocated, and freed on its reply,
    /// a page musl's allocator maps and unmaps again: a page fault and two
    /// system calls on every invoke). Orders are one at a time, each waited
    /// for, so a reply is always the last order's.
    reply: Sender<()>,
    done: Receiver<()>,
    telemetry: bool,
    settings: LifecycleSettings,
}

impl Lifecycle {
    fn send(&self, c: Control) {
        if self.control.send(c).is_err() {
            log::error!("the dispatcher thread is gone; exiting");
            std::process::exit(1);
        }
    }

    /// An invoke started: lets the dispatcher send, then waits until it has
    /// stopped again, so that no request is in flight at `event/next`. The
    /// dispatcher may first wait for the request's runtimeDone and flush,
    /// if the flush policy says so.
    fn invoke(&self, request_id: String, invoke_deadline: Instant) {
        // Background sends must end before the invoke does.
        let deadline = invoke_deadline
            .checked_sub(INVOKE_MARGIN)
            .unwrap_or_else(Instant::now);
        let wait_until = match self.settings.runtime_done_timeout {
            Some(t) => deadline.min(Instant::now() + t),
            None => deadline,
        };
        self.send(Control::Invoke {
            request_id,
            deadline,
            wait_runtime_done: self.telemetry,
            wait_until,
            reply: self.reply.clone(),
        });
        // (The dispatcher stops only after SHUTDOWN, and a panic aborts
        // the process in every profile (Cargo.toml); a send to a dead one
        // fails above.)
        let _ = self.done.recv();
    }

    fn shutdown(&self, deadline: Instant) {
        let wait_until = if self.telemetry {
            deadline.min(Instant::now() + self.settings.shutdown_wait)
        } else {
            Instant::now()
        };
        self.send(Control::Shutdown {
            wait_until,
            deadline,
            reply: self.reply.clone(),
        });
        // Never outlive the deadline, whatever the dispatcher is doing.
        let left = deadline.saturating_duration_since(Instant::now()) + SHUTDOWN_MARGIN / 2;
        if self.done.recv_timeout(left).is_err() {
            log::error!("the dispatcher did not finish before the shutdown deadline");
        }
    }
}

/// Converts a Lambda deadline (epoch milliseconds) to an `Instant`.
fn instant_of(deadline_ms: u64) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}

fn spawn<F: FnOnce() + Send + 'static>(name: &str, f: F) {
    std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(256 * 1024)
        .spawn(f)
        .expect("cannot start a thread");
}
