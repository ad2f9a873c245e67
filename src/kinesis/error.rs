//! Why a `PutRecords` request failed, and how each failure is treated
//! (retry, re-sign, refresh credentials, give up): the one error type of the
//! Kinesis side. AWS error codes stay strings only here, where they are
//! parsed, classified and explained.

use std::fmt;

/// Why a request failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Below HTTP: connect, reset, timeout, or no time left before the deadline.
    Transport(String),
    /// No credentials to sign with (the container endpoint failed, say).
    Credentials(String),
    /// The request could not be signed.
    Signing(String),
    /// A 200 answer that does not account for the records sent.
    Malformed(String),
    /// An error answer: Kinesis (or whatever answered) refused the request.
    Answer(ErrorAnswer),
    /// STS refused to let the function assume `KINESIS_TELEMETRY_ROLE_ARN`.
    AssumeRole(ErrorAnswer),
}

impl Failure {
    /// How to treat it.
    pub fn retry(&self) -> Retry {
        match self {
            Failure::Transport(_) | Failure::Credentials(_) | Failure::Malformed(_) => {
                Retry::Transient
            }
            Failure::Signing(_) => Retry::Never,
            Failure::Answer(a) => classify(a.status, &a.code),
            // Throttling and 5xx retry; a refusal of the role is a policy
            // (or a setting) an operator can fix: parked, never dropped.
            Failure::AssumeRole(a) => match classify(a.status, &a.code) {
                r @ (Retry::Throttled | Retry::Transient | Retry::RefreshCredentials) => r,
                _ => Retry::Park,
            },
        }
    }

    /// The code it is logged and counted under: the AWS code of an answer,
    /// a fixed name otherwise.
    pub fn code(&self) -> &str {
        match self {
            Failure::Transport(_) => "TransportError",
            Failure::Credentials(_) => "CredentialsError",
            Failure::Signing(_) => "SigningError",
            Failure::Malformed(_) => "MalformedResponse",
            Failure::Answer(a) | Failure::AssumeRole(a) => &a.code,
        }
    }

    /// What happened, without the code.
    pub fn message(&self) -> &str {
        match self {
            Failure::Transport(m)
            | Failure::Credentials(m)
            | Failure::Signing(m)
            | Failure::Malformed(m) => m,
            Failure::Answer(a) | Failure::AssumeRole(a) => &a.message,
        }
    }

    /// What a user should do about it, for the log line.
    pub fn advice(&self) -> &'static str {
        match self {
            Failure::Answer(a) => advice(&a.code),
            Failure::AssumeRole(a) => match a.code.as_str() {
                "AccessDenied" => "the function may not assume KINESIS_TELEMETRY_ROLE_ARN: allow sts:AssumeRole on that role in the execution role's policy, and name the execution role in the role's trust policy (with an sts:ExternalId condition equal to KINESIS_TELEMETRY_ROLE_EXTERNAL_ID, if one is set)",
                "RegionDisabledException" => "STS is not activated in this region for the role's account: activate it in IAM's account settings",
                _ => "check KINESIS_TELEMETRY_ROLE_ARN, KINESIS_TELEMETRY_ROLE_EXTERNAL_ID and the role's maximum session duration (at least 1 hour)",
            },
            _ => "see the error message; retrying would not help",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Answer(a) => write!(f, "HTTP {} {}", a.status, a.code)?,
            Failure::AssumeRole(a) => write!(f, "STS AssumeRole HTTP {} {}", a.status, a.code)?,
            // Not an answer: no status to show.
            other => write!(f, "{}", other.code())?,
        }
        match self.message() {
            "" => Ok(()),
            m => write!(f, ": {m}"),
        }
    }
}

/// An error answer to a whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorAnswer {
    pub status: u16,
    /// The AWS error code (`HTTP<status>` when the answer carried none).
    pub code: String,
    pub message: String,
}

/// How to treat a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Throttling: back off, then retry.
    Throttled,
    /// 5xx, I/O, timeouts, unparseable answers: back off, then retry.
    Transient,
    /// The signature was refused for its time: re-sign and retry.
    Resign,
    /// Credentials expired: refresh them, then retry.
    RefreshCredentials,
    /// Refused for a cause an operator can fix while the environment lives
    /// (a policy, the stream, the KMS key, credentials): keep the records
    /// and probe now and then until a request is accepted.
    Park,
    /// Retrying cannot help: the records are lost and counted.
    Never,
}

impl Retry {
    pub fn is_retryable(self) -> bool {
        self != Retry::Never
    }
}

/// Classifies the code of an error answer.
pub fn classify(status: u16, code: &str) -> Retry {
    match code {
        "ProvisionedThroughputExceededException"
        | "KMSThrottlingException"
        | "LimitExceededException"
        | "ThrottlingException"
        | "Throttling"
        | "ThrottledException"
        | "RequestThrottledException"
        | "TooManyRequestsException"
        | "SlowDown"
        | "RequestLimitExceeded"
        | "BandwidthLimitExceeded"
        | "EC2ThrottledException"
        | "TransactionInProgressException"
        | "PriorRequestNotComplete" => Retry::Throttled,
        "RequestExpired"
        | "RequestTimeTooSkewed"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "RequestInTheFuture" => Retry::Resign,
        "ExpiredToken"
        | "ExpiredTokenException"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException" => {
            // Temporary credentials past expiry; without a way to refresh them
            // the caller turns repeated failures into a counted loss.
            Retry::RefreshCredentials
        }
        "InternalFailure"
        | "InternalError"
        | "InternalServerError"
        | "ServiceUnavailable"
        | "RequestTimeout"
        | "RequestTimeoutException" => Retry::Transient,
        code if Cause::of(code).is_some() => Retry::Park,
        _ if status == 429 => Retry::Throttled,
        _ if status >= 500 => Retry::Transient,
        _ if status == 408 => Retry::Transient,
        _ => Retry::Never,
    }
}

/// Why requests are parked: a refusal of the whole request that an operator
/// can fix while the environment lives. Each has its own loss counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The role lacks kinesis:PutRecords (a policy attached late).
    AccessDenied,
    /// The stream does not exist (yet) or is being updated.
    StreamNotFound,
    /// The stream's KMS key: access, disabled, not found, invalid state, opt-in.
    Kms,
    /// Credentials refused and not refreshable.
    Credentials,
    /// The signature refused again after re-signing.
    Signature,
}

impl Cause {
    /// The cause of a whole-request refusal with this code, if parkable.
    pub fn of(code: &str) -> Option<Cause> {
        Some(match code {
            "AccessDeniedException" | "AccessDenied" => Cause::AccessDenied,
            "ResourceNotFoundException" | "ResourceInUseException" => Cause::StreamNotFound,
            "KMSAccessDeniedException"
            | "KMSDisabledException"
            | "KMSNotFoundException"
            | "KMSInvalidStateException"
            | "KMSOptInRequired" => Cause::Kms,
            "ExpiredToken"
            | "ExpiredTokenException"
            | "InvalidClientTokenId"
            | "UnrecognizedClientException" => Cause::Credentials,
            "RequestExpired"
            | "RequestTimeTooSkewed"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "RequestInTheFuture" => Cause::Signature,
            _ => return None,
        })
    }
}

/// Per-record error codes worth resending (the rest are final).
pub fn record_error_retryable(code: &str) -> bool {
    matches!(
        code,
        "ProvisionedThroughputExceededException" | "InternalFailure" | "KMSThrottlingException"
    )
}

/// What a user should do about an error code, for the log line.
fn advice(code: &str) -> &'static str {
    match code {
        "AccessDeniedException" | "AccessDenied" => {
            "give the role that signs the requests (KINESIS_TELEMETRY_ROLE_ARN when set, else the function's execution role) kinesis:PutRecords on this stream (and kms:GenerateDataKey on its key if it uses a customer managed key)"
        }
        "ResourceNotFoundException" => {
            "check KINESIS_TELEMETRY_STREAM and AWS_REGION: the stream does not exist there"
        }
        "ValidationException" | "InvalidArgumentException" | "SerializationException" => {
            "a request was refused as invalid; if records are larger than the stream allows, lower KINESIS_TELEMETRY_MAX_RECORD_BYTES"
        }
        c if c.starts_with("KMS") => {
            "the stream's KMS key refused the write: check the key's state and the role's kms:GenerateDataKey permission"
        }
        "UnrecognizedClientException" | "InvalidClientTokenId" | "ExpiredTokenException"
        | "ExpiredToken" => "the credentials were refused: check the execution role's credentials",
        "IncompleteSignature" | "InvalidSignatureException" | "SignatureDoesNotMatch" => {
            "the signature was refused: check AWS_SECRET_ACCESS_KEY and the clock"
        }
        _ => "see the error message; retrying would not help",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify(400, "KMSThrottlingException"), Retry::Throttled);
        assert_eq!(classify(400, "LimitExceededException"), Retry::Throttled);
        assert_eq!(classify(400, "AccessDeniedException"), Retry::Park);
        assert_eq!(classify(400, "ResourceNotFoundException"), Retry::Park);
        assert_eq!(classify(400, "ValidationException"), Retry::Never);
        assert_eq!(classify(400, "KMSDisabledException"), Retry::Park);
        assert_eq!(classify(400, "KMSThrottlingException"), Retry::Throttled);
        assert_eq!(Cause::of("KMSOptInRequired"), Some(Cause::Kms));
        assert_eq!(Cause::of("SignatureDoesNotMatch"), Some(Cause::Signature));
        assert_eq!(Cause::of("ValidationException"), None);
        assert_eq!(
            classify(400, "ExpiredTokenException"),
            Retry::RefreshCredentials
        );
        assert_eq!(classify(400, "RequestExpired"), Retry::Resign);
        assert_eq!(classify(500, "Whatever"), Retry::Transient);
        assert_eq!(classify(429, "Whatever"), Retry::Throttled);
        assert_eq!(Failure::Transport("reset".into()).retry(), Retry::Transient);
        assert_eq!(Failure::Credentials("no".into()).retry(), Retry::Transient);
        assert_eq!(Failure::Signing("no".into()).retry(), Retry::Never);
    }

    #[test]
    fn failures_show_their_code_and_message() {
        let f = Failure::Transport("connection reset".into());
        assert_eq!(f.to_string(), "TransportError: connection reset");
        let a = Failure::Answer(ErrorAnswer {
            status: 400,
            code: "AccessDeniedException".into(),
            message: String::new(),
        });
        assert_eq!(a.to_string(), "HTTP 400 AccessDeniedException");
        assert_eq!(a.code(), "AccessDeniedException");
        assert!(a.advice().contains("kinesis:PutRecords"));
    }
}
