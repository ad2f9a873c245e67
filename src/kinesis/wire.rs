//! Kinesis `PutRecords` on the wire: the request body, the response, and
//! what became of each record of a 200. Pure functions; the HTTP call itself
//! lives in `client`, the treatment of errors in `error`.

use serde::Deserialize;

use crate::base64;
use crate::json;
use crate::kinesis::error::{record_error_retryable, ErrorAnswer, Failure};
use crate::kinesis::settings::StreamTarget;
use crate::records::format::Wire;
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
            json::push_str(out, n);
        }
        StreamTarget::Arn(a) => {
            out.extend_from_slice(b"{\"StreamARN\":");
            json::push_str(out, a);
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
        json::push_str(out, &r.key);
        if let Some(h) = &r.hash_key {
            out.extend_from_slice(b",\"ExplicitHashKey\":");
            json::push_str(out, h);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
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
pub fn settle(wires: Vec<Wire>, codes: RecordCodes) -> Settled {
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

/// Per record of a 200 answer, in request order: `None` if it was stored,
/// else its error code.
pub type RecordCodes = Vec<Option<String>>;

/// Parses a response. `expected` is the number of records sent: a 200 that
/// does not account for each of them is `Failure::Malformed`.
pub fn parse_response(
    status: u16,
    error_type_header: Option<&str>,
    body: &[u8],
    expected: usize,
) -> Result<RecordCodes, Failure> {
    if status == 200 {
        return match serde_json::from_slice::<PutRecordsOutput>(body) {
            Ok(out) if out.records.len() == expected => Ok(out
                .records
                .into_iter()
                // Some emulators answer `"ErrorCode": null` or "" for successes.
                .map(|e| e.error_code.filter(|c| !c.is_empty()))
                .collect()),
            Ok(out) => Err(Failure::Malformed(format!(
                "{} results for {expected} records",
                out.records.len()
            ))),
            Err(e) => Err(Failure::Malformed(format!(
                "unreadable PutRecords response: {e}"
            ))),
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
    Err(Failure::Answer(ErrorAnswer {
        status,
        code,
        message,
    }))
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
    use crate::kinesis::error::{classify, Retry};
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
            Ok(vec![
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
        let Err(e) = r else { panic!() };
        assert_eq!(e.retry(), Retry::Transient);
        let r = parse_response(200, None, b"garbage", 2);
        assert!(matches!(r, Err(e) if e.code() == "MalformedResponse"));
    }

    #[test]
    fn an_error_without_code_or_message_says_what_answered() {
        let Err(Failure::Answer(e)) = parse_response(400, None, b"", 1) else {
            panic!()
        };
        assert_eq!(e.code, "HTTP400");
        assert!(
            e.message.contains("AWS_ENDPOINT_URL_KINESIS"),
            "{}",
            e.message
        );
        let Err(Failure::Answer(e)) = parse_response(400, None, b"<html>\nBad gateway</html>", 1)
        else {
            panic!()
        };
        assert!(e.message.contains("<html> Bad gateway"), "{}", e.message);
    }

    #[test]
    fn whole_request_errors() {
        let r = parse_response(
            400,
            None,
            br#"{"__type":"com.amazonaws.kinesis#ProvisionedThroughputExceededException","message":"Rate exceeded"}"#,
            1,
        );
        let Err(Failure::Answer(e)) = r else { panic!() };
        assert_eq!(e.code, "ProvisionedThroughputExceededException");
        assert_eq!(e.message, "Rate exceeded");
        assert_eq!(classify(e.status, &e.code), Retry::Throttled);

        let r = parse_response(
            400,
            Some("ResourceNotFoundException:http://internal.amazon.com/"),
            b"",
            1,
        );
        let Err(Failure::Answer(e)) = r else { panic!() };
        assert_eq!(e.code, "ResourceNotFoundException");
        assert_eq!(classify(e.status, &e.code), Retry::Park);
        assert!(Failure::Answer(e.clone())
            .advice()
            .contains("KINESIS_TELEMETRY_STREAM"));

        let xml = b"<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>bad sig</Message></Error></ErrorResponse>";
        let Err(Failure::Answer(e)) = parse_response(403, None, xml, 1) else {
            panic!()
        };
        assert_eq!(e.code, "SignatureDoesNotMatch");
        assert_eq!(e.message, "bad sig");
        assert_eq!(classify(e.status, &e.code), Retry::Resign);

        let Err(Failure::Answer(e)) = parse_response(503, None, b"<html>", 1) else {
            panic!()
        };
        assert_eq!(e.code, "HTTP503");
        assert_eq!(classify(e.status, &e.code), Retry::Transient);
    }

    #[test]
    fn codes_lose_namespace_and_url() {
        assert_eq!(clean_code("a.b#Code:http://x"), "Code");
    }
}
