//! Kinesis `PutRecords` on the wire: the request body, the response, and how
//! each error is treated (retry, re-sign, give up). Pure functions; the HTTP
//! call itself lives in `sender`.

use serde::Deserialize;

use crate::base64;
use crate::config::StreamTarget;
use crate::records::pack::Wire;
use crate::records::queue::Record;

/// `X-Amz-Target` of the one API call the extension makes.
pub const PUT_RECORDS_TARGET: &str = "Kinesis_20131202.PutRecords";
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// Builds the JSON body of a `PutRecords` request.
#[cfg(test)]
pub fn put_records_body(target: &StreamTarget, records: &[Wire]) -> Vec<u8> {
    let mut out = Vec::new();
    write_put_records_body(&mut out, target, records);
    out
}

/// JSON around one record's data and key (`{"Data":"","PartitionKey":"",
/// "ExplicitHashKey":"…"}`, the hash key up to 39 digits): only sizes the buffer.
const RECORD_JSON_OVERHEAD: usize = 80;

/// Builds the JSON body of a `PutRecords` request in `out` (cleared first),
/// so the sender can reuse one buffer for every request.
pub fn write_put_records_body(out: &mut Vec<u8>, target: &StreamTarget, records: &[Wire]) {
    let payload: usize = records
        .iter()
        .map(|r| base64::encoded_len(r.data().len()) + r.key.len() + RECORD_JSON_OVERHEAD)
        .sum();
    out.clear();
    out.reserve(payload + 64);
    match target {
        StreamTarget::Name(n) => {
            out.extend_from_slice(b"{\"StreamName\":");
            push_json(out, n);
        }
        StreamTarget::Arn(a) => {
            out.extend_from_slice(b"{\"StreamARN\":");
            push_json(out, a);
        }
    }
    out.extend_from_slice(b",\"Records\":[");
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"Data\":\"");
        base64::encode_into(out, r.data());
        out.extend_from_slice(b"\",\"PartitionKey\":");
        push_json(out, &r.key);
        if let Some(h) = &r.hash_key {
            out.extend_from_slice(b",\"ExplicitHashKey\":");
            push_json(out, h);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

fn push_json(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

/// How to treat an error.
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
    /// Retrying cannot help: the records are lost and counted.
    Never,
}

impl Retry {
    pub fn is_retryable(self) -> bool {
        self != Retry::Never
    }
}

/// Classifies an error code from a whole-request failure.
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
        | "RequestTimeoutException"
        | "MalformedResponse"
        | "TransportError"
        | "CredentialsError" => Retry::Transient,
        _ if status == 429 => Retry::Throttled,
        _ if status >= 500 => Retry::Transient,
        _ if status == 408 => Retry::Transient,
        _ => Retry::Never,
    }
}

/// Per-record error codes worth resending (the rest are final).
pub fn record_error_retryable(code: &str) -> bool {
    matches!(
        code,
        "ProvisionedThroughputExceededException" | "InternalFailure" | "KMSThrottlingException"
    )
}

/// What became of the records of a request Kinesis answered 200.
#[derive(Debug, Default)]
pub struct Settled {
    /// Kinesis records stored, their size, and the telemetry records in them.
    pub stored: usize,
    pub stored_bytes: usize,
    pub stored_members: usize,
    /// Telemetry records to send again, in their order, and the first code
    /// that asked for it.
    pub resend: Vec<Record>,
    pub retry_code: Option<String>,
    /// Per Kinesis record refused for good: its code and how many telemetry
    /// records it carried.
    pub rejected: Vec<(String, usize)>,
}

/// Settles a 200 answer: `codes` has one entry per wire record, in request
/// order, as `parse_response` returns them (`None`: stored).
pub fn settle(wires: Vec<Wire>, codes: Vec<Option<String>>) -> Settled {
    let mut s = Settled::default();
    for (w, code) in wires.into_iter().zip(codes) {
        match code {
            None => {
                s.stored += 1;
                s.stored_bytes += w.size();
                s.stored_members += w.members.len();
            }
            Some(c) if record_error_retryable(&c) => {
                s.retry_code.get_or_insert(c);
                s.resend.extend(w.members);
            }
            Some(c) => s.rejected.push((c, w.members.len())),
        }
    }
    s
}

/// An error answer to a whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn retry(&self) -> Retry {
        classify(self.status, &self.code)
    }

    /// What a user should do about it, for the log line.
    pub fn advice(&self) -> &'static str {
        match self.code.as_str() {
            "AccessDeniedException" | "AccessDenied" => {
                "give the function's execution role kinesis:PutRecords on this stream (and kms:GenerateDataKey on its key if it uses a customer managed key)"
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
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.code)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// The parsed answer to a `PutRecords` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// 200: per record, `None` for success or `Some(code)` for a failure,
    /// in request order.
    Records(Vec<Option<String>>),
    Error(ApiError),
}

#[derive(Deserialize)]
struct PutRecordsOutput {
    #[serde(rename = "Records")]
    records: Vec<ResultEntry>,
}

#[derive(Deserialize)]
struct ResultEntry {
    #[serde(rename = "ErrorCode", default)]
    error_code: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "__type", default)]
    ty: Option<String>,
    #[serde(rename = "message", alias = "Message", default)]
    message: Option<String>,
}

/// The message for an error answer that carries none: what the body
/// starts with, so the log shows what answered.
fn unexplained(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match text.trim() {
        "" => "the answer had no error code and an empty body (is AWS_ENDPOINT_URL_KINESIS a Kinesis endpoint?)".into(),
        t => format!("the answer had no error code; its body begins: {t}"),
    }
}

/// Parses a response. `expected` is the number of records sent: a success
/// that does not account for each of them is treated as a transient error.
pub fn parse_response(
    status: u16,
    error_type_header: Option<&str>,
    body: &[u8],
    expected: usize,
) -> Response {
    if status == 200 {
        return match serde_json::from_slice::<PutRecordsOutput>(body) {
            Ok(out) if out.records.len() == expected => Response::Records(
                out.records
                    .into_iter()
                    // Some emulators answer `"ErrorCode": null` or "" for successes.
                    .map(|e| e.error_code.filter(|c| !c.is_empty()))
                    .collect(),
            ),
            Ok(out) => Response::Error(ApiError {
                status,
                code: "MalformedResponse".into(),
                message: format!("{} results for {expected} records", out.records.len()),
            }),
            Err(e) => Response::Error(ApiError {
                status,
                code: "MalformedResponse".into(),
                message: format!("unreadable PutRecords response: {e}"),
            }),
        };
    }
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    let code = parsed
        .as_ref()
        .and_then(|b| b.ty.clone())
        .or_else(|| error_type_header.map(str::to_string))
        .or_else(|| xml_tag(body, "Code"))
        .map(|c| clean_code(&c).to_string())
        .unwrap_or_else(|| format!("HTTP{status}"));
    let message = parsed
        .and_then(|b| b.message)
        .or_else(|| xml_tag(body, "Message"))
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| unexplained(body));
    Response::Error(ApiError {
        status,
        code,
        message,
    })
}

/// Strips the `namespace#` prefix and `:url` suffix AWS error types may carry.
pub fn clean_code(code: &str) -> &str {
    let code = code.rsplit('#').next().unwrap_or(code);
    code.split(':').next().unwrap_or(code).trim()
}

/// The text of `<tag>…</tag>` in an XML error body (some endpoints, and
/// moto's signature errors, answer XML).
fn xml_tag(body: &[u8], tag: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find("</")? + start;
    Some(text[start..end].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::queue::Record;

    #[test]
    fn explicit_hash_key_is_sent() {
        let mut recs = Wire::singles(vec![Record::new(b"x".to_vec(), "k")]);
        recs[0].hash_key = Some("340282366920938463463374607431768211455".into());
        let body = put_records_body(&StreamTarget::Name("s".into()), &recs);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["Records"][0]["ExplicitHashKey"],
            "340282366920938463463374607431768211455"
        );
    }

    #[test]
    fn body_by_name_and_arn() {
        let recs = Wire::singles(vec![
            Record::new(b"{\"a\":\"\xc3\xa9\"}".to_vec(), "k1"),
            Record::new(b"plain".to_vec(), "k\"2"),
        ]);
        let body = put_records_body(&StreamTarget::Name("s".into()), &recs);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["StreamName"], "s");
        assert_eq!(v["Records"][0]["Data"], "eyJhIjoiw6kifQ==");
        assert_eq!(v["Records"][0]["PartitionKey"], "k1");
        assert_eq!(v["Records"][1]["Data"], "cGxhaW4=");
        assert_eq!(v["Records"][1]["PartitionKey"], "k\"2");
        let arn = "arn:aws:kinesis:us-east-1:1:stream/s";
        let body = put_records_body(&StreamTarget::Arn(arn.into()), &recs[..1]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["StreamARN"], arn);
        assert!(v.get("StreamName").is_none());
    }

    #[test]
    fn partial_failure_in_order_with_null_codes() {
        let body = br#"{"FailedRecordCount":2,"Records":[
            {"SequenceNumber":"1","ShardId":"shardId-000000000000","ErrorCode":null},
            {"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"slow down"},
            {"SequenceNumber":"2","ShardId":"shardId-000000000000"},
            {"ErrorCode":"InternalFailure","ErrorMessage":"oops"}]}"#;
        assert_eq!(
            parse_response(200, None, body, 4),
            Response::Records(vec![
                None,
                Some("ProvisionedThroughputExceededException".into()),
                None,
                Some("InternalFailure".into())
            ])
        );
        assert!(record_error_retryable("InternalFailure"));
        assert!(!record_error_retryable("KMSAccessDeniedException"));
    }

    #[test]
    fn settle_sorts_each_record_and_keeps_the_resend_order() {
        let wire = |tag: &str| Wire::singles(vec![Record::new(tag.as_bytes().to_vec(), "k")]);
        let wires: Vec<Wire> = ["a", "b", "c", "d", "e"]
            .iter()
            .flat_map(|t| wire(t))
            .collect();
        let codes = vec![
            None,
            Some("ProvisionedThroughputExceededException".to_string()),
            Some("KMSAccessDeniedException".to_string()),
            Some("InternalFailure".to_string()),
            None,
        ];
        let s = settle(wires, codes);
        assert_eq!((s.stored, s.stored_members, s.stored_bytes), (2, 2, 4));
        let resent: Vec<&[u8]> = s.resend.iter().map(|r| &*r.data).collect();
        assert_eq!(resent, vec![b"b".as_slice(), b"d".as_slice()]);
        assert_eq!(
            s.retry_code.as_deref(),
            Some("ProvisionedThroughputExceededException")
        );
        assert_eq!(
            s.rejected,
            vec![("KMSAccessDeniedException".to_string(), 1)]
        );
        let none = settle(Vec::new(), Vec::new());
        assert_eq!(
            (none.stored, none.resend.len(), none.rejected.len()),
            (0, 0, 0)
        );
    }

    #[test]
    fn count_mismatch_is_an_error() {
        let r = parse_response(200, None, br#"{"Records":[]}"#, 2);
        let Response::Error(e) = r else { panic!() };
        assert_eq!(e.retry(), Retry::Transient);
        let r = parse_response(200, None, b"garbage", 2);
        assert!(matches!(r, Response::Error(e) if e.code == "MalformedResponse"));
    }

    #[test]
    fn an_error_without_code_or_message_says_what_answered() {
        let Response::Error(e) = parse_response(400, None, b"", 1) else {
            panic!()
        };
        assert_eq!(e.code, "HTTP400");
        assert!(
            e.message.contains("AWS_ENDPOINT_URL_KINESIS"),
            "{}",
            e.message
        );
        let Response::Error(e) = parse_response(400, None, b"<html>\nBad gateway</html>", 1) else {
            panic!()
        };
        assert!(e.to_string().contains("<html> Bad gateway"), "{e}");
    }

    #[test]
    fn whole_request_errors() {
        let r = parse_response(
            400,
            None,
            br#"{"__type":"com.amazonaws.kinesis#ProvisionedThroughputExceededException","message":"Rate exceeded"}"#,
            1,
        );
        let Response::Error(e) = r else { panic!() };
        assert_eq!(e.code, "ProvisionedThroughputExceededException");
        assert_eq!(e.message, "Rate exceeded");
        assert_eq!(e.retry(), Retry::Throttled);

        let r = parse_response(
            400,
            Some("ResourceNotFoundException:http://internal.amazon.com/"),
            b"",
            1,
        );
        let Response::Error(e) = r else { panic!() };
        assert_eq!(e.code, "ResourceNotFoundException");
        assert_eq!(e.retry(), Retry::Never);
        assert!(e.advice().contains("KINESIS_TELEMETRY_STREAM"));

        let xml = b"<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>bad sig</Message></Error></ErrorResponse>";
        let Response::Error(e) = parse_response(403, None, xml, 1) else {
            panic!()
        };
        assert_eq!(e.code, "SignatureDoesNotMatch");
        assert_eq!(e.message, "bad sig");
        assert_eq!(e.retry(), Retry::Resign);

        let Response::Error(e) = parse_response(503, None, b"<html>", 1) else {
            panic!()
        };
        assert_eq!(e.code, "HTTP503");
        assert_eq!(e.retry(), Retry::Transient);
    }

    #[test]
    fn classification() {
        assert_eq!(classify(400, "KMSThrottlingException"), Retry::Throttled);
        assert_eq!(classify(400, "LimitExceededException"), Retry::Throttled);
        assert_eq!(classify(400, "AccessDeniedException"), Retry::Never);
        assert_eq!(classify(400, "ValidationException"), Retry::Never);
        assert_eq!(classify(400, "KMSDisabledException"), Retry::Never);
        assert_eq!(
            classify(400, "ExpiredTokenException"),
            Retry::RefreshCredentials
        );
        assert_eq!(classify(400, "RequestExpired"), Retry::Resign);
        assert_eq!(classify(500, "Whatever"), Retry::Transient);
        assert_eq!(classify(429, "Whatever"), Retry::Throttled);
        assert_eq!(classify(0, "TransportError"), Retry::Transient);
        assert_eq!(clean_code("a.b#Code:http://x"), "Code");
    }
}
