//! The HTTP side of `PutRecords`: one signed POST per call, with connect and
//! overall timeouts bounded by the caller's deadline. Transport failures
//! come back as errors of code `TransportError` so the caller treats every
//! failure the same way, through `kinesis::Retry`.

use std::io::Read;
use std::time::{Duration, Instant, SystemTime};

use crate::batch::Record;
use crate::config::{Config, StaticCredentials, StreamTarget};
use crate::kinesis::{self, ApiError, Response};
use crate::sigv4;

/// Error code used for failures below HTTP (connect, reset, timeout).
pub const TRANSPORT_ERROR: &str = "TransportError";

pub struct KinesisClient {
    agent: ureq::Agent,
    url: String,
    region: String,
    credentials: StaticCredentials,
    target: StreamTarget,
    request_timeout: Duration,
}

impl KinesisClient {
    pub fn new(cfg: &Config) -> KinesisClient {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(cfg.connect_timeout))
            // Kinesis answers are small; the default 128 KiB buffers are not needed.
            .input_buffer_size(16 * 1024)
            .user_agent(concat!(
                "kinesis-telemetry-extension/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .into();
        KinesisClient {
            agent,
            url: format!("{}/", cfg.endpoint),
            region: cfg.region.clone(),
            credentials: cfg.credentials.clone(),
            target: cfg.stream.clone(),
            request_timeout: cfg.request_timeout,
        }
    }

    /// Sends one `PutRecords` request; never lasts past `deadline`.
    pub fn put_records(&self, records: &[Record], deadline: Instant) -> Response {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) {
            return transport_error("no time left before the deadline".into());
        }
        let body = kinesis::put_records_body(&self.target, records);
        let base = [
            ("content-type", kinesis::CONTENT_TYPE),
            ("x-amz-target", kinesis::PUT_RECORDS_TARGET),
        ];
        let signed = match sigv4::sign_post(
            &self.credentials,
            &self.region,
            &self.url,
            &base,
            &body,
            SystemTime::now(),
        ) {
            Ok(h) => h,
            Err(e) => {
                return Response::Error(ApiError {
                    status: 0,
                    code: "SigningError".into(),
                    message: e.to_string(),
                })
            }
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
        let mut resp = match req.send(&body[..]) {
            Ok(r) => r,
            Err(e) => return transport_error(e.to_string()),
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
            .take(4 << 20)
            .read_to_end(&mut answer)
        {
            return transport_error(format!("reading the response failed: {e}"));
        }
        kinesis::parse_response(status, error_type.as_deref(), &answer, records.len())
    }
}

fn transport_error(message: String) -> Response {
    Response::Error(ApiError {
        status: 0,
        code: TRANSPORT_ERROR.into(),
        message,
    })
}
