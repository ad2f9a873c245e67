//! The Lambda Extensions API (2020-01-01) and the Telemetry API subscription
//! (2022-07-01): register, subscribe, wait for the next lifecycle event,
//! report an init error.
//!
//! `event/next` has no timeout on purpose: the sandbox may be frozen inside
//! that call for minutes or hours.
//!
//! What the subscription asks for (`SubscriptionSettings`: types, buffering,
//! schema version) and the largest body Lambda may POST with that buffering
//! (`largest_batch`) are defined here.

use serde::Deserialize;

use crate::lambda::local_http::{Connection, Response};
use crate::lambda::model::Model;

/// Bytes Lambda adds around each record of a batch, rounded up: the
/// envelope `{"time":"…","type":"…","record":…}` (83 bytes with a 24-byte
/// time and the longest type name known, `platform.telemetrySubscription`)
/// and the comma between events.
pub const EVENT_ENVELOPE_BYTES: u64 = 128;

/// The largest Telemetry API body Lambda may POST with this buffering:
/// "anticipate receiving payloads as large as `2 * maxBytes +
/// metadataBytes`", where Lambda adds metadata to each record (Lambda
/// Developer Guide, telemetry-api, "Configuring memory usage and
/// buffering"), for at most `maxItems` records. A smaller body limit
/// refuses Lambda's own batches, and Lambda drops what it cannot deliver.
pub const fn largest_batch(max_bytes: u64, max_items: u64) -> u64 {
    2 * max_bytes + max_items * EVENT_ENVELOPE_BYTES
}

/// What the subscription asks of the Telemetry API.
#[derive(Debug, Clone, Copy)]
pub struct SubscriptionSettings {
    /// The streams forwarded (the platform stream is subscribed anyway).
    pub types: Types,
    pub buffering: Buffering,
    /// Telemetry API schema version; `None`: the execution model's own.
    pub schema_version: Option<&'static str>,
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

/// Lambda's answer to `register`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct RegisterInfo {
    #[serde(rename = "functionName", default)]
    pub function_name: String,
    #[serde(rename = "functionVersion", default)]
    pub function_version: String,
    #[serde(rename = "accountId", default)]
    pub account_id: Option<String>,
}

/// A lifecycle event from `event/next` (what the lifecycle needs of it:
/// INVOKE's `invokedFunctionArn` and `tracing` are not read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleEvent {
    Invoke {
        request_id: String,
        deadline_ms: u64,
    },
    Shutdown {
        reason: String,
        deadline_ms: u64,
    },
}

/// A failed Extensions API call.
#[derive(Debug)]
pub enum ApiError {
    /// Lambda answered with an error status.
    Status {
        call: &'static str,
        status: u16,
        body: String,
    },
    /// The call did not complete (connection, I/O).
    Transport {
        call: &'static str,
        error: std::io::Error,
    },
    /// Lambda's answer could not be understood.
    Malformed {
        call: &'static str,
        error: Unreadable,
    },
}

/// What made an answer of Lambda's unreadable.
#[derive(Debug)]
pub enum Unreadable {
    /// The register answer had no `Lambda-Extension-Identifier`.
    NoIdentifier,
    /// The event is not the JSON object Lambda sends.
    Json(serde_json::Error),
    /// An `eventType` other than INVOKE and SHUTDOWN.
    EventType(String),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::NoIdentifier => f.write_str("no Lambda-Extension-Identifier header"),
            Unreadable::Json(e) => write!(f, "{e}"),
            Unreadable::EventType(t) => write!(f, "unknown eventType {t:?}"),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Status { call, status, body } => {
                write!(f, "Extensions API {call} answered HTTP {status}: {body}")
            }
            ApiError::Transport { call, error } => {
                write!(f, "Extensions API {call} failed: {error}")
            }
            ApiError::Malformed { call, error } => {
                write!(
                    f,
                    "Extensions API {call} answered something unreadable: {error}"
                )
            }
        }
    }
}

impl std::error::Error for ApiError {}

/// What the Telemetry API said to our subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// 200: telemetry will be delivered.
    Active,
    /// Refused with a 4xx: its status and body.
    Refused(u16, String),
    /// Anything else (202 from local emulators, 404, errors): no telemetry
    /// will come; the reason is for the log.
    Unavailable(String),
}

/// A registered extension's handle on the API.
pub struct ExtensionsApi {
    conn: Connection,
    id: String,
}

const REGISTER: &str = "/2020-01-01/extension/register";
const NEXT: &str = "/2020-01-01/extension/event/next";
const INIT_ERROR: &str = "/2020-01-01/extension/init/error";
const TELEMETRY: &str = "/2022-07-01/telemetry";
/// The error type of a registration for an event the model does not have.
const INVALID_EVENT_TYPE: &str = "Extension.InvalidEventType";

impl ExtensionsApi {
    /// Registers under `name` (the executable's file name) for the events
    /// of `model`. When default Lambda's INVOKE is refused as an invalid
    /// event type, this is Lambda Managed Instances without its variable:
    /// registers again for SHUTDOWN only and says so in the model returned.
    pub fn register(
        runtime_api: &str,
        name: &str,
        model: Model,
    ) -> Result<(ExtensionsApi, RegisterInfo, Model), ApiError> {
        match Self::register_for(runtime_api, name, model) {
            Err(ApiError::Status {
                status: 403, body, ..
            }) if model == Model::Default && body.contains(INVALID_EVENT_TYPE) => {
                let lmi = Model::ManagedInstances;
                let (api, info) = Self::register_for(runtime_api, name, lmi)?;
                Ok((api, info, lmi))
            }
            other => other.map(|(api, info)| (api, info, model)),
        }
    }

    fn register_for(
        runtime_api: &str,
        name: &str,
        model: Model,
    ) -> Result<(ExtensionsApi, RegisterInfo), ApiError> {
        const CALL: &str = "register";
        let mut conn = Connection::new(runtime_api);
        let resp = conn
            .call(
                "POST",
                REGISTER,
                &[
                    ("Lambda-Extension-Name", name),
                    ("Lambda-Extension-Accept-Feature", "accountId"),
                    ("Content-Type", "application/json"),
                ],
                model.register_body(),
            )
            .map_err(|e| transport(CALL, e))?;
        let resp = expect_ok(resp, CALL)?;
        let id = resp
            .header("Lambda-Extension-Identifier")
            .map(str::to_string)
            .ok_or(ApiError::Malformed {
                call: CALL,
                error: Unreadable::NoIdentifier,
            })?;
        // The body is informative only; an odd one must not stop the extension.
        let info = serde_json::from_slice(&resp.body).unwrap_or_default();
        Ok((ExtensionsApi { conn, id }, info))
    }

    /// Subscribes to the Telemetry API with a prepared body.
    pub fn subscribe(&mut self, body: &str) -> Subscription {
        let resp = self.conn.call(
            "PUT",
            TELEMETRY,
            &[
                ("Lambda-Extension-Identifier", &self.id),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        );
        match resp {
            Ok(r) => match r.status {
                200 => Subscription::Active,
                202 => Subscription::Unavailable(
                    "the Telemetry API accepted the subscription with 202 but will not deliver (a local emulator without Telemetry API support)".into(),
                ),
                404 => Subscription::Unavailable(format!(
                    "the Telemetry API answered HTTP 404: {}",
                    String::from_utf8_lossy(&r.body).trim()
                )),
                s @ 400..=499 => {
                    Subscription::Refused(s, String::from_utf8_lossy(&r.body).trim().to_string())
                }
                s => Subscription::Unavailable(format!(
                    "the Telemetry API answered HTTP {s}: {}",
                    String::from_utf8_lossy(&r.body).trim()
                )),
            },
            Err(e) => {
                Subscription::Unavailable(format!("the Telemetry API could not be reached: {e}"))
            }
        }
    }

    /// Sends `event/next` without waiting for the answer: Lambda counts the
    /// extension as ready from here. `next_event` reads the answer.
    pub fn request_next(&mut self) -> Result<(), ApiError> {
        self.conn
            .send(
                "GET",
                NEXT,
                &[("Lambda-Extension-Identifier", &self.id)],
                b"",
            )
            .map_err(|e| transport("event/next", e))
    }

    /// Waits, without timeout, for the answer to `request_next`.
    pub fn next_event(&mut self) -> Result<LifecycleEvent, ApiError> {
        const CALL: &str = "event/next";
        let resp = self.conn.receive().map_err(|e| transport(CALL, e))?;
        let resp = expect_ok(resp, CALL)?;
        parse_event(&resp.body).map_err(|error| ApiError::Malformed { call: CALL, error })
    }

    /// `request_next` then `next_event`.
    pub fn next(&mut self) -> Result<LifecycleEvent, ApiError> {
        self.request_next()?;
        self.next_event()
    }

    /// Reports an initialisation error (`Extension.ConfigInvalid`, ...).
    /// Lambda then fails the function's init; the caller should exit.
    pub fn init_error(&mut self, error_type: &str, message: &str) -> Result<(), ApiError> {
        const CALL: &str = "init/error";
        let body = serde_json::json!({
            "errorMessage": message,
            "errorType": error_type,
            "stackTrace": [],
        })
        .to_string();
        let resp = self
            .conn
            .call(
                "POST",
                INIT_ERROR,
                &[
                    ("Lambda-Extension-Identifier", &self.id),
                    ("Lambda-Extension-Function-Error-Type", error_type),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            )
            .map_err(|e| transport(CALL, e))?;
        if resp.status >= 300 {
            return Err(ApiError::Status {
                call: CALL,
                status: resp.status,
                body: String::from_utf8_lossy(&resp.body).into_owned(),
            });
        }
        Ok(())
    }
}

fn transport(call: &'static str, error: std::io::Error) -> ApiError {
    ApiError::Transport { call, error }
}

/// A 200 answer; any other status is an error carrying the body.
fn expect_ok(resp: Response, call: &'static str) -> Result<Response, ApiError> {
    if resp.status != 200 {
        return Err(ApiError::Status {
            call,
            status: resp.status,
            body: String::from_utf8_lossy(&resp.body).into_owned(),
        });
    }
    Ok(resp)
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "eventType")]
    event_type: String,
    #[serde(rename = "requestId", default)]
    request_id: String,
    #[serde(rename = "deadlineMs", default)]
    deadline_ms: u64,
    #[serde(rename = "shutdownReason", default)]
    shutdown_reason: String,
}

/// Parses the body of `event/next`.
pub fn parse_event(body: &[u8]) -> Result<LifecycleEvent, Unreadable> {
    let e: RawEvent = serde_json::from_slice(body).map_err(Unreadable::Json)?;
    match e.event_type.as_str() {
        "INVOKE" => Ok(LifecycleEvent::Invoke {
            request_id: e.request_id,
            deadline_ms: e.deadline_ms,
        }),
        "SHUTDOWN" => Ok(LifecycleEvent::Shutdown {
            reason: e.shutdown_reason,
            deadline_ms: e.deadline_ms,
        }),
        _ => Err(Unreadable::EventType(e.event_type)),
    }
}

/// The Telemetry API subscription body.
pub fn subscription_body(version: &str, types: &[&str], b: Buffering, port: u16) -> String {
    serde_json::json!({
        "schemaVersion": version,
        "types": types,
        "buffering": {
            "maxItems": b.max_items,
            "maxBytes": b.max_bytes,
            "timeoutMs": b.timeout_ms,
        },
        "destination": {
            "protocol": "HTTP",
            "URI": format!("http://sandbox.localdomain:{port}"),
        },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_and_shutdown_events() {
        // Lambda's whole INVOKE body. Its `tracing` is not read: the trace
        // comes from `platform.start`, always subscribed, and is kept
        // whatever is forwarded (`records::shape`'s tests).
        let e = parse_event(
            br#"{"eventType":"INVOKE","deadlineMs":1700000003000,"requestId":"r1",
                "invokedFunctionArn":"arn:aws:lambda:us-east-1:1:function:f",
                "tracing":{"type":"X-Amzn-Trace-Id","value":"Root=1"}}"#,
        )
        .unwrap();
        assert_eq!(
            e,
            LifecycleEvent::Invoke {
                request_id: "r1".into(),
                deadline_ms: 1_700_000_003_000
            }
        );
        let e =
            parse_event(br#"{"eventType":"SHUTDOWN","shutdownReason":"spindown","deadlineMs":5}"#)
                .unwrap();
        assert_eq!(
            e,
            LifecycleEvent::Shutdown {
                reason: "spindown".into(),
                deadline_ms: 5
            }
        );
        assert!(parse_event(br#"{"eventType":"RESTORE"}"#).is_err());
        assert!(parse_event(b"nope").is_err());
    }

    #[test]
    fn subscription_request() {
        let b = Buffering {
            max_items: 1000,
            max_bytes: 262_144,
            timeout_ms: 25,
        };
        let v: serde_json::Value = serde_json::from_str(&subscription_body(
            "2022-12-13",
            &["platform", "function"],
            b,
            1234,
        ))
        .unwrap();
        assert_eq!(v["schemaVersion"], "2022-12-13");
        assert_eq!(v["types"], serde_json::json!(["platform", "function"]));
        assert_eq!(v["buffering"]["maxBytes"], 262_144);
        assert_eq!(v["buffering"]["timeoutMs"], 25);
        assert_eq!(v["destination"]["URI"], "http://sandbox.localdomain:1234");
    }

    #[test]
    fn register_info_tolerates_missing_fields() {
        let i: RegisterInfo =
            serde_json::from_str(r#"{"functionName":"f","handler":"h","accountId":"1"}"#).unwrap();
        assert_eq!(i.function_name, "f");
        assert_eq!(i.account_id.as_deref(), Some("1"));
    }
}
