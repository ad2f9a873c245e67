//! What the Kinesis stage is given: the stream, the region, the endpoint,
//! credentials and the transport's timeouts (`KinesisSettings`, built by
//! `config` from its table), and the rules a stream name or ARN must meet.
//! The endpoint URL's rules are `endpoint`'s; the credentials', `credentials`'.

use std::time::Duration;

use crate::kinesis::credentials::CredentialsSource;
use crate::kinesis::sts::RoleSettings;

/// Everything `KinesisClient` needs, validated.
#[derive(Debug, Clone)]
pub struct KinesisSettings {
    pub stream: StreamTarget,
    pub region: String,
    /// Base URL of the Kinesis API, without a trailing slash.
    pub endpoint: String,
    /// `AWS_CA_BUNDLE`: a PEM file whose certificates are trusted too (read
    /// when the client is made).
    pub ca_bundle: Option<String>,
    pub credentials: CredentialsSource,
    /// The role to assume and sign `PutRecords` as (`None`: the function's
    /// own credentials sign them).
    pub role: Option<RoleSettings>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Pooled connections idle longer than this (freezes included) are not reused.
    pub connection_max_idle: Duration,
}

/// Which stream to write to: Kinesis accepts either field in `PutRecords`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamTarget {
    Name(String),
    Arn(String),
}

/// What a stream setting must be, when it is neither.
pub const STREAM_EXPECTED: &str =
    "the Kinesis stream name (1-128 of a-z A-Z 0-9 _ . -) or stream ARN";

impl StreamTarget {
    /// A stream name or ARN; `Err`: what is expected instead.
    pub fn parse(s: &str) -> Result<StreamTarget, &'static str> {
        if s.starts_with("arn:") {
            return match is_stream_arn(s) {
                true => Ok(StreamTarget::Arn(s.to_string())),
                false => {
                    Err("a stream name or an ARN like arn:aws:kinesis:REGION:ACCOUNT:stream/NAME")
                }
            };
        }
        match is_stream_name(s) {
            true => Ok(StreamTarget::Name(s.to_string())),
            false => Err(STREAM_EXPECTED),
        }
    }

    /// The region an ARN names.
    pub fn arn_region(&self) -> Option<&str> {
        match self {
            StreamTarget::Arn(a) => a.split(':').nth(3),
            StreamTarget::Name(_) => None,
        }
    }

    /// The name or ARN, as given.
    pub fn as_str(&self) -> &str {
        match self {
            StreamTarget::Name(n) | StreamTarget::Arn(n) => n,
        }
    }
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

    #[test]
    fn names_and_arns() {
        assert!(StreamTarget::parse("a.b_c-1").is_ok());
        assert!(StreamTarget::parse(&"x".repeat(129)).is_err());
        assert!(StreamTarget::parse("bad name").is_err());
        let arn = StreamTarget::parse("arn:aws:kinesis:eu-west-1:123:stream/s").unwrap();
        assert_eq!(arn.arn_region(), Some("eu-west-1"));
        assert!(StreamTarget::parse("arn:aws:sqs:eu-west-1:123:queue/s").is_err());
        assert!(StreamTarget::parse("arn:aws:kinesis::123:stream/s").is_err());
    }
}
