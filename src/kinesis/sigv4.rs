//! SigV4 signing of Kinesis (and STS) requests, through `aws-sigv4`: the headers to add
//! to one request, computed afresh for every attempt (a signature is only
//! valid for a few minutes, and a retry may come much later).

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

use crate::kinesis::credentials::StaticCredentials;

/// Signing name of Kinesis Data Streams.
pub const SERVICE: &str = "kinesis";

/// Why a request could not be signed (a bad endpoint URL, in practice).
#[derive(Debug)]
pub struct SignError(pub String);

impl std::fmt::Display for SignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot sign the request: {}", self.0)
    }
}

/// Returns the headers (`authorization`, `x-amz-date`, and
/// `x-amz-security-token` for session credentials) that sign a POST of
/// `body` to `url` carrying `headers`.
pub fn sign_post(
    creds: &StaticCredentials,
    region: &str,
    service: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    time: SystemTime,
) -> Result<Vec<(&'static str, String)>, SignError> {
    let identity = Credentials::new(
        creds.access_key_id.as_str(),
        creds.secret_access_key.as_str(),
        creds.session_token.clone(),
        None,
        "environment",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| SignError(e.to_string()))?
        .into();
    let request = SignableRequest::new(
        "POST",
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| SignError(e.to_string()))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| SignError(e.to_string()))?
        .into_parts();
    let (headers, _params) = instructions.into_parts();
    Ok(headers
        .into_iter()
        .map(|h| (h.name(), h.value().to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// Expected values computed independently with botocore's SigV4Auth
    /// (see tests/sigv4_reference.py) for the same inputs.
    #[test]
    fn known_signature() {
        let creds = StaticCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: Some("session-token-example".into()),
        };
        let body = br#"{"StreamName":"s","Records":[{"Data":"e30=","PartitionKey":"k"}]}"#;
        let time = UNIX_EPOCH + Duration::from_secs(1_764_107_648);
        let headers = sign_post(
            &creds,
            "us-east-1",
            SERVICE,
            "http://127.0.0.1:4567/",
            &[
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amz-target", "Kinesis_20131202.PutRecords"),
            ],
            body,
            time,
        )
        .unwrap();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("x-amz-date"), Some("20251125T215408Z"));
        assert_eq!(get("x-amz-security-token"), Some("session-token-example"));
        assert_eq!(get("authorization"), Some(EXPECTED_AUTHORIZATION));
    }

    const EXPECTED_AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20251125/us-east-1/kinesis/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, Signature=165667e9c0a03a68e0e6ee24c6193519dfe1ecb5486e24150cd01ba4822072be";
}
