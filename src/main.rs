//! kinesis-telemetry-extension: an AWS Lambda external extension that
//! forwards everything the Telemetry API produces to a Kinesis data stream.
//!
//! The main thread owns the Lambda lifecycle (register, subscribe, the
//! `event/next` loop); `listener` receives telemetry; `dispatcher` batches
//! and sends it. See README "How it works".

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
mod json;
mod logging;
mod md5;
mod rng;
mod slices;
mod stats;
mod time;

#[cfg(test)]
mod properties;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Sender};

use config::Config;
use dispatch::dispatcher::{Control, Dispatcher};
use lambda::extensions_api::{self, ExtensionsApi, LifecycleEvent, Subscription};
use lambda::{gate, listener};
use stats::Stats;

/// Name used when argv[0] is unusable.
const DEFAULT_NAME: &str = "kinesis-telemetry-extension";
/// Time kept free before an invoke deadline.
const INVOKE_MARGIN: Duration = Duration::from_millis(100);
/// Time kept free before the shutdown deadline (Lambda SIGKILLs at it).
const SHUTDOWN_MARGIN: Duration = Duration::from_millis(200);
/// Telemetry POSTs the listener may queue ahead of the dispatcher.
const CHANNEL_BATCHES: usize = 4;

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
    let (mut api, info) = match ExtensionsApi::register(&runtime_api, &name) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("[{name}] ERROR registering with Lambda: {e}");
            std::process::exit(1);
        }
    };
    logging::init(&name);
    log::debug!(
        "registered as {name} for function {} version {}",
        info.function_name,
        info.function_version
    );

    let cfg = match config::from_env(&|k| std::env::var(k).ok()) {
        Ok(cfg) => cfg,
        Err(errors) => config_failed(&mut api, &errors.to_string(), errors.strict),
    };
    let context = vec![
        ("functionName", info.function_name),
        ("functionVersion", info.function_version),
        ("accountId", info.account_id.unwrap_or_default()),
        (
            "region",
            std::env::var(config::AWS_REGION.var).unwrap_or_default(),
        ),
    ];
    run(api, cfg, context);
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

/// Invalid configuration: by default stay registered but idle, so the
/// function keeps working; in strict mode fail the function's init.
fn config_failed(api: &mut ExtensionsApi, problem: &str, strict: bool) -> ! {
    if strict {
        log::error!("invalid configuration: {problem}. KINESIS_TELEMETRY_STRICT is set: failing the function's init with Extension.ConfigInvalid");
        if let Err(e) = api.init_error("Extension.ConfigInvalid", problem) {
            log::error!("{e}");
        }
        std::process::exit(1);
    }
    log::error!(
        "invalid configuration: {problem}. No telemetry will be sent until this is fixed; the function runs normally (set KINESIS_TELEMETRY_STRICT=true to fail init instead)"
    );
    loop {
        match api.next() {
            Ok(LifecycleEvent::Invoke { .. }) => {}
            Ok(LifecycleEvent::Shutdown { .. }) => std::process::exit(0),
            Err(e) => exit_on_api_error(e),
        }
    }
}

fn exit_on_api_error(e: extensions_api::ApiError) -> ! {
    log::error!("{e}; exiting");
    std::process::exit(1);
}

fn run(mut api: ExtensionsApi, cfg: Config, context: Vec<(&'static str, String)>) {
    let (sockets, port) = match gate::bind(cfg.listener_port) {
        Ok(s) => s,
        Err(e) => config_failed(
            &mut api,
            &format!("{e} ({}={})", config::LISTENER_PORT.var, cfg.listener_port),
            cfg.strict,
        ),
    };
    let telemetry = subscribe(&mut api, &cfg, port);
    // One random key per execution environment (partition key, metrics).
    let environment = rng::Rng::from_os().hex(16);
    // Logged before `next` so that it appears in the function's init log.
    log::info!(
        "forwarding {} telemetry to Kinesis stream {:?} via {} (flush {:?}, format {:?}, partition key {:?} {environment})",
        cfg.types.names().join(","),
        match &cfg.stream {
            config::StreamTarget::Name(n) | config::StreamTarget::Arn(n) => n,
        },
        config::redacted_url(&cfg.endpoint),
        cfg.flush,
        cfg.format,
        cfg.partition_key,
    );
    // Ready: the first event/next goes out before any thread is started, so
    // the function's init is not kept waiting for them. Telemetry POSTed
    // meanwhile waits in the bound socket's backlog; the dispatcher starts
    // paused, so nothing is sent while Lambda considers us idle.
    if let Err(e) = api.request_next() {
        exit_on_api_error(e);
    }
    let threads = start_threads(&cfg, sockets, context, environment);
    let lifecycle = Lifecycle {
        control: threads.control,
        telemetry,
        cfg: &cfg,
    };
    loop {
        match api.next_event() {
            Ok(LifecycleEvent::Invoke {
                request_id,
                deadline_ms,
            }) => {
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
            Err(e) => exit_on_api_error(e),
        }
        if let Err(e) = api.request_next() {
            exit_on_api_error(e);
        }
    }
}

/// Subscribes the listener on `port` to the Telemetry API; false when
/// telemetry is unavailable (the extension then only follows the lifecycle).
fn subscribe(api: &mut ExtensionsApi, cfg: &Config, port: u16) -> bool {
    // The platform stream is always subscribed: its runtimeDone events drive
    // the flush policy. Platform events are forwarded only if configured.
    let mut types = cfg.types;
    types.platform = true;
    let body = extensions_api::subscription_body(&types.names(), cfg.buffering, port);
    match api.subscribe(&body) {
        Subscription::Active => true,
        Subscription::Unavailable(why) => {
            log::warn!("{why}; no telemetry will arrive, the extension only follows the lifecycle");
            false
        }
    }
}

/// What the main thread keeps of the threads it starts.
struct Threads {
    control: Sender<Control>,
    stats: Arc<Stats>,
    unanswered: Arc<gate::Unanswered>,
}

/// Starts the listener (behind its gate, on `sockets`) and the dispatcher.
fn start_threads(
    cfg: &Config,
    sockets: Vec<std::net::TcpListener>,
    context: Vec<(&'static str, String)>,
    environment: String,
) -> Threads {
    let stats = Arc::new(Stats::default());
    let unanswered = Arc::new(gate::Unanswered::default());
    let (events_tx, events_rx) = bounded(CHANNEL_BATCHES);
    let (control, control_rx) = bounded(1);
    {
        let (stats, unanswered) = (stats.clone(), unanswered.clone());
        let max_body = cfg.max_body_bytes;
        spawn("listener", move || {
            let limits = gate::Limits::new(max_body);
            let inner = {
                let stats = stats.clone();
                gate::Inner::new(move || {
                    listener::start(events_tx.clone(), max_body, stats.clone())
                })
            };
            gate::serve(sockets, inner, limits, stats, unanswered)
        });
    }
    {
        let (cfg, stats) = (cfg.clone(), stats.clone());
        spawn("dispatcher", move || {
            Dispatcher::new(cfg, events_rx, control_rx, stats, context, &environment).run()
        });
    }
    Threads {
        control,
        stats,
        unanswered,
    }
}

/// The main thread's side of the conversation with the dispatcher.
struct Lifecycle<'a> {
    control: Sender<Control>,
    telemetry: bool,
    cfg: &'a Config,
}

impl Lifecycle<'_> {
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
        let wait_until = match self.cfg.runtime_done_timeout {
            Some(t) => deadline.min(Instant::now() + t),
            None => deadline,
        };
        let (reply, done) = bounded(1);
        self.send(Control::Invoke {
            request_id,
            deadline,
            wait_runtime_done: self.telemetry,
            wait_until,
            reply,
        });
        // An error means the dispatcher dropped the reply: it is gone.
        let _ = done.recv();
    }

    fn shutdown(&self, deadline: Instant) {
        let wait_until = if self.telemetry {
            deadline.min(Instant::now() + self.cfg.shutdown_wait)
        } else {
            Instant::now()
        };
        let (reply, done) = bounded(1);
        self.send(Control::Shutdown {
            wait_until,
            deadline,
            reply,
        });
        // Never outlive the deadline, whatever the dispatcher is doing.
        let left = deadline.saturating_duration_since(Instant::now()) + SHUTDOWN_MARGIN / 2;
        if done.recv_timeout(left).is_err() {
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
