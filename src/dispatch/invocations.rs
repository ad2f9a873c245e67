//! What the dispatcher knows of invocations, from the lifecycle and from
//! the platform events: the current one (default Lambda), the rate and
//! length of invokes (for the flush policy), the last runtimeDone and
//! report, and on Lambda Managed Instances the ones started and not yet
//! reported.

use std::time::{Duration, Instant};

use crate::dispatch::flush::History;
use crate::lambda::model::Model;
use crate::lambda::telemetry::{Delivery, Event, Kind};
use crate::lambda::view::Figures;

/// Most requests tracked as open (Managed Instances): far above the
/// concurrency one environment runs.
const MAX_OPEN_REQUESTS: usize = 4096;

pub struct Invocations {
    model: Model,
    /// Smoothed invoke rate and duration.
    pub history: History,
    last_invoke: Option<Instant>,
    /// The invocation in progress (default Lambda).
    pub current: Option<String>,
    last_runtime_done: Option<Box<str>>,
    /// When the delivery with that runtimeDone arrived.
    last_runtime_done_at: Option<Instant>,
    last_report: Option<Box<str>>,
    /// Managed Instances: requests started and not yet reported, oldest
    /// first (what SHUTDOWN waits for).
    open: Vec<Box<str>>,
    /// When the last telemetry delivery arrived.
    last_delivery: Instant,
}

impl Invocations {
    pub fn new(model: Model) -> Invocations {
        Invocations {
            model,
            history: History::default(),
            last_invoke: None,
            current: None,
            last_runtime_done: None,
            last_runtime_done_at: None,
            last_report: None,
            open: Vec::new(),
            last_delivery: Instant::now(),
        }
    }

    /// A delivery arrived: takes note of its platform events.
    pub fn delivered(&mut self, d: &Delivery) {
        self.last_delivery = d.received;
        for e in &d.events {
            self.saw(e);
        }
    }

    /// Whether the last telemetry is in at SHUTDOWN (which came at `since`):
    /// on default Lambda the current invoke's report. On Managed Instances
    /// invocations run at once: the report of every one started, and a
    /// quiet spell (see `quiet_until`).
    pub fn last_telemetry_in(&self, since: Instant, buffering: Duration) -> bool {
        self.all_reported()
            && (self.model == Model::Default
                || Instant::now() >= self.quiet_until(since, buffering))
    }

    /// Managed Instances: what Lambda still buffered at SHUTDOWN arrives
    /// within its `buffering` time, so the last telemetry is in once that
    /// much passed since SHUTDOWN and since the last delivery.
    pub fn quiet_until(&self, since: Instant, buffering: Duration) -> Instant {
        since.max(self.last_delivery) + buffering
    }

    /// An INVOKE for `request_id` arrived now.
    pub fn invoked(&mut self, request_id: String) {
        let now = Instant::now();
        self.history.invoke(self.last_invoke.map(|t| now - t));
        self.last_invoke = Some(now);
        self.current = Some(request_id);
    }

    /// Takes note of a platform event.
    pub fn saw(&mut self, e: &Event) {
        match e.view.kind {
            Kind::RuntimeDone => {
                self.last_runtime_done = e.request_id().map(Box::from);
                self.last_runtime_done_at = Some(self.last_delivery);
                if let Figures::Duration(ms) = e.view.figures() {
                    self.history.duration(ms);
                }
            }
            Kind::Report => {
                if let Some(id) = e.request_id() {
                    self.open.retain(|open| &**open != id);
                }
                self.last_report = e.request_id().map(Box::from);
            }
            Kind::Start if self.model == Model::ManagedInstances => {
                if let Some(id) = e.request_id() {
                    if self.open.len() >= MAX_OPEN_REQUESTS {
                        // Reports lost (Lambda dropped them): forget the
                        // oldest rather than grow.
                        self.open.remove(0);
                    }
                    self.open.push(id.into());
                }
            }
            _ => {}
        }
    }

    /// Whether `request_id`'s runtimeDone has come.
    pub fn runtime_done(&self, request_id: &str) -> bool {
        self.last_runtime_done.as_deref() == Some(request_id)
    }

    /// When `request_id`'s runtimeDone arrived (`None`: not yet).
    pub fn runtime_done_at(&self, request_id: &str) -> Option<Instant> {
        self.last_runtime_done_at
            .filter(|_| self.runtime_done(request_id))
    }

    /// Whether every invocation's report is in: on default Lambda the
    /// current one's, on Managed Instances that of every one started.
    pub fn all_reported(&self) -> bool {
        match (self.model, &self.current) {
            (Model::ManagedInstances, _) => self.open.is_empty(),
            (Model::Default, Some(id)) => self.last_report.as_deref() == Some(id.as_str()),
            (Model::Default, None) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lambda::telemetry::split_body;
    use std::sync::Arc;

    fn events(body: &str) -> Vec<Event> {
        // (platform events are read whole whatever the reading)
        split_body(&Arc::new(body.as_bytes().to_vec()), Default::default()).unwrap()
    }

    #[test]
    fn managed_instances_wait_for_every_started_request() {
        let mut inv = Invocations::new(Model::ManagedInstances);
        assert!(inv.all_reported());
        for e in events(
            r#"[{"type":"platform.start","record":{"requestId":"a"}},
                {"type":"platform.start","record":{"requestId":"b"}},
                {"type":"platform.report","record":{"requestId":"a"}}]"#,
        ) {
            inv.saw(&e);
        }
        assert!(!inv.all_reported(), "b is still open");
        for e in events(r#"[{"type":"platform.report","record":{"requestId":"b"}}]"#) {
            inv.saw(&e);
        }
        assert!(inv.all_reported());
    }

    #[test]
    fn default_lambda_waits_for_the_current_invocation_only() {
        let mut inv = Invocations::new(Model::Default);
        inv.invoked("r1".into());
        for e in events(r#"[{"type":"platform.runtimeDone","record":{"requestId":"r1"}}]"#) {
            inv.saw(&e);
        }
        assert!(inv.runtime_done("r1") && !inv.runtime_done("r2"));
        assert!(!inv.all_reported());
        for e in events(r#"[{"type":"platform.report","record":{"requestId":"r1"}}]"#) {
            inv.saw(&e);
        }
        assert!(inv.all_reported());
    }
}
