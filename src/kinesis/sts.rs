//! Writing to a stream in another account: STS `AssumeRole` with the
//! function's credentials, and `PutRecords` signed with the role's. Owns the
//! role settings' rules (`role_arn_ok`, `external_id_ok`, `session_name_ok`,
//! `default_session_name`), the Query API request (`request_body`), the
//! minimal reading of its XML answer (`parse_answer`), when to refresh
//! (`needs_refresh`), and the cached role credentials (`AssumedRole`).
//!
//! The call is made where `PutRecords` fetches its credentials (on the
//! dispatcher thread, only while the sandbox is thawed): never on the
//! cold-start path, and never in flight across a freeze. STS refusals are
//! `Failure::AssumeRole`, which `error` classifies (parked, throttled, retried).

use std::io::Read;
use std::time::{Duration, SystemTime};

use crate::kinesis::credentials::StaticCredentials;
use crate::kinesis::error::{ErrorAnswer, Failure};
use crate::kinesis::sigv4;

/// The role to assume, validated by `config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSettings {
    pub arn: String,
    pub external_id: Option<String>,
    pub session_name: String,
    /// Base URL of STS, without a trailing slash.
    pub endpoint: String,
}

/// How long the role's credentials are asked for (STS's default; a role's
/// maximum session duration is at least this).
pub const DURATION_SECONDS: u32 = 3600;
/// Refresh this long before the role's credentials expire, like the SDKs.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// Signing name of STS.
pub const SERVICE: &str = "sts";
/// Most of an STS answer read (a success is ~1.5 KB).
const MAX_ANSWER_BYTES: u64 = 64 << 10;

/// What a role ARN must be.
pub const ROLE_ARN_EXPECTED: &str =
    "an IAM role ARN like arn:aws:iam::123456789012:role/NAME (or role/PATH/NAME)";
/// What an external id must be (STS's rules).
pub const EXTERNAL_ID_EXPECTED: &str = "2-1224 characters of a-z A-Z 0-9 _ + = , . @ : / -";
/// What a session name must be (STS's rules).
pub const SESSION_NAME_EXPECTED: &str = "2-64 characters of a-z A-Z 0-9 _ + = , . @ -";

fn session_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'=' | b',' | b'.' | b'@' | b'-')
}

/// `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`, the name 1-64 characters.
pub fn role_arn_ok(s: &str) -> bool {
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let [arn, partition, iam, region, account, resource] = parts[..] else {
        return false;
    };
    let name = resource
        .strip_prefix("role/")
        .map(|r| r.rsplit('/').next().unwrap_or(""));
    arn == "arn"
        && partition.starts_with("aws")
        && iam == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource.len() <= 512
        && resource.bytes().all(|b| session_char(b) || b == b'/')
        && name.is_some_and(|n| (1..=64).contains(&n.len()))
}

pub fn external_id_ok(s: &str) -> bool {
    (2..=1224).contains(&s.len()) && s.bytes().all(|b| session_char(b) || b == b':' || b == b'/')
}

pub fn session_name_ok(s: &str) -> bool {
    (2..=64).contains(&s.len()) && s.bytes().all(session_char)
}

/// The session name when none is set: the function's name with characters
/// STS does not take left out, at most 64 (a fixed name when too little is left).
pub fn default_session_name(function: Option<&str>) -> String {
    let name: String = function
        .unwrap_or("")
        .bytes()
        .filter(|b| session_char(*b))
        .take(64)
        .map(char::from)
        .collect();
    match name.len() {
        0 | 1 => "kinesis-telemetry-extension".into(),
        _ => name,
    }
}

/// Whether credentials expiring at `expires` should be replaced at `now`.
pub fn needs_refresh(now: SystemTime, expires: SystemTime) -> bool {
    now + REFRESH_BEFORE >= expires
}

/// The form body of an `AssumeRole` request.
pub fn request_body(role: &RoleSettings, duration: u32) -> String {
    let mut b = String::from("Action=AssumeRole&Version=2011-06-15");
    let mut field = |k: &str, v: &str| {
        b.push('&');
        b.push_str(k);
        b.push('=');
        for c in v.bytes() {
            match c {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    b.push(char::from(c))
                }
                _ => b.push_str(&format!("%{c:02X}")),
            }
        }
    };
    field("RoleArn", &role.arn);
    field("RoleSessionName", &role.session_name);
    if let Some(id) = &role.external_id {
        field("ExternalId", id);
    }
    field("DurationSeconds", &duration.to_string());
    b
}

/// The text of the first `<tag>` element, XML entities decoded.
fn xml_text(body: &str, tag: &str) -> Option<String> {
    let start = body.find(&format!("<{tag}>"))? + tag.len() + 2;
    let len = body[start..].find(&format!("</{tag}>"))?;
    let raw = body[start..start + len].trim();
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// Reads an STS answer: the role's credentials and when they expire, or
/// the refusal (its `<Code>`, `HTTP<status>` without one).
pub fn parse_answer(status: u16, body: &[u8]) -> Result<(StaticCredentials, SystemTime), Failure> {
    let text = String::from_utf8_lossy(body);
    if status != 200 {
        return Err(Failure::AssumeRole(ErrorAnswer {
            status,
            code: xml_text(&text, "Code").unwrap_or_else(|| format!("HTTP{status}")),
            message: xml_text(&text, "Message").unwrap_or_default(),
        }));
    }
    let field = |tag| {
        xml_text(&text, tag)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Failure::Malformed(format!("STS AssumeRole answer without {tag}")))
    };
    let expiration = field("Expiration")?;
    let expires = crate::time::parse_rfc3339(&expiration).ok_or_else(|| {
        Failure::Malformed(format!(
            "STS AssumeRole answer: unreadable Expiration {expiration:?}"
        ))
    })?;
    Ok((
        StaticCredentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: field("SecretAccessKey")?,
            session_token: Some(field("SessionToken")?),
        },
        expires,
    ))
}

/// The role's credentials, assumed when first needed and again ahead of
/// their expiry.
pub struct AssumedRole {
    pub settings: RoleSettings,
    cached: Option<(StaticCredentials, SystemTime)>,
    /// `AssumeRole` calls made (answered or not), for the debug log.
    calls: u64,
}

impl AssumedRole {
    pub fn new(settings: RoleSettings) -> AssumedRole {
        AssumedRole {
            settings,
            cached: None,
            calls: 0,
        }
    }

    /// Forgets the role's credentials (Kinesis called them expired).
    pub fn invalidate(&mut self) {
        self.cached = None;
    }

    /// The role's credentials, assuming it (with `base`, over `agent`, within
    /// `timeout`) when there are none or they expire within `REFRESH_BEFORE`.
    /// A failed refresh keeps credentials that have not expired yet.
    pub fn get(
        &mut self,
        agent: &ureq::Agent,
        base: &StaticCredentials,
        region: &str,
        timeout: Duration,
    ) -> Result<&StaticCredentials, Failure> {
        let now = SystemTime::now();
        let due = match &self.cached {
            Some((_, expires)) => needs_refresh(now, *expires),
            None => true,
        };
        if due {
            self.calls += 1;
            match self.assume(agent, base, region, timeout) {
                Ok(got) => {
                    log::debug!(
                        "assumed {} (AssumeRole call {})",
                        self.settings.arn,
                        self.calls
                    );
                    self.cached = Some(got);
                }
                Err(f) => match &self.cached {
                    Some((_, expires)) if now < *expires => {
                        log::warn!("{f}; using the role's credentials until they expire");
                    }
                    _ => return Err(f),
                },
            }
        }
        Ok(&self.cached.as_ref().expect("cached above").0)
    }

    fn assume(
        &self,
        agent: &ureq::Agent,
        base: &StaticCredentials,
        region: &str,
        timeout: Duration,
    ) -> Result<(StaticCredentials, SystemTime), Failure> {
        let url = format!("{}/", self.settings.endpoint);
        let body = request_body(&self.settings, DURATION_SECONDS);
        let content_type = (
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        );
        let signed = sigv4::sign_post(
            base,
            region,
            SERVICE,
            &url,
            &[content_type],
            body.as_bytes(),
            SystemTime::now(),
        )
        .map_err(|e| Failure::Signing(e.to_string()))?;
        let mut req = agent
            .post(&url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header(content_type.0, content_type.1);
        for (k, v) in &signed {
            req = req.header(*k, v.as_str());
        }
        let unreachable = |e: &dyn std::fmt::Display| {
            let url = crate::kinesis::endpoint::redacted_url(&url);
            Failure::Credentials(format!("STS AssumeRole at {url}: {e}"))
        };
        let mut resp = req.send(body.as_bytes()).map_err(|e| unreachable(&e))?;
        let status = resp.status().as_u16();
        let mut answer = Vec::new();
        resp.body_mut()
            .as_reader()
            .take(MAX_ANSWER_BYTES)
            .read_to_end(&mut answer)
            .map_err(|e| unreachable(&e))?;
        parse_answer(status, &answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::error::{Cause, Retry};
    use std::time::UNIX_EPOCH;

    #[test]
    fn role_settings_rules() {
        assert!(role_arn_ok("arn:aws:iam::123456789012:role/writer"));
        assert!(role_arn_ok(
            "arn:aws-cn:iam::123456789012:role/a/b/writer+=,.@-_"
        ));
        for bad in [
            "arn:aws:iam::123:role/writer",
            "arn:aws:iam::123456789012:user/writer",
            "arn:aws:iam:us-east-1:123456789012:role/writer",
            "arn:aws:sts::123456789012:role/writer",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/wr iter",
            "writer",
        ] {
            assert!(!role_arn_ok(bad), "{bad}");
        }
        assert!(!role_arn_ok(&format!(
            "arn:aws:iam::123456789012:role/{}",
            "x".repeat(65)
        )));
        assert!(external_id_ok("ab") && external_id_ok("a:b/c=d@e"));
        assert!(
            !external_id_ok("a") && !external_id_ok("a b") && !external_id_ok(&"x".repeat(1225))
        );
        assert!(session_name_ok("fn-1@x") && !session_name_ok("a:b") && !session_name_ok("a"));
        assert!(!session_name_ok(&"x".repeat(65)));
    }

    #[test]
    fn the_default_session_name_is_the_function_name_cleaned() {
        assert_eq!(default_session_name(Some("my-fn")), "my-fn");
        assert_eq!(default_session_name(Some("a:b c")), "abc");
        assert_eq!(default_session_name(Some(&"f".repeat(80))), "f".repeat(64));
        assert_eq!(default_session_name(None), "kinesis-telemetry-extension");
        assert_eq!(
            default_session_name(Some(":x")),
            "kinesis-telemetry-extension"
        );
        for f in [None, Some("a:b c"), Some(&*"f".repeat(80))] {
            assert!(session_name_ok(&default_session_name(f)));
        }
    }

    #[test]
    fn refreshed_five_minutes_before_expiry_and_not_before() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let expires = t0 + Duration::from_secs(u64::from(DURATION_SECONDS));
        assert!(!needs_refresh(t0, expires));
        assert!(!needs_refresh(expires - Duration::from_secs(301), expires));
        assert!(needs_refresh(expires - Duration::from_secs(300), expires));
        assert!(needs_refresh(expires + Duration::from_secs(1), expires));
        // One call per lifetime: from one refresh to the next, 55 minutes.
        let mut now = t0;
        let mut calls = 0;
        let mut exp = t0;
        while now < t0 + Duration::from_secs(10 * 3600) {
            if needs_refresh(now, exp) {
                calls += 1;
                exp = now + Duration::from_secs(u64::from(DURATION_SECONDS));
            }
            now += Duration::from_secs(1);
        }
        assert_eq!(calls, 11); // 10 h / 55 min, rounded up
    }

    #[test]
    fn the_request_is_form_encoded() {
        let role = RoleSettings {
            arn: "arn:aws:iam::123456789012:role/p/w".into(),
            external_id: Some("a:b/c=d".into()),
            session_name: "f@x".into(),
            endpoint: "https://sts.us-east-1.amazonaws.com".into(),
        };
        assert_eq!(
            request_body(&role, 900),
            "Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fp%2Fw&RoleSessionName=f%40x&ExternalId=a%3Ab%2Fc%3Dd&DurationSeconds=900"
        );
        let none = RoleSettings {
            external_id: None,
            ..role
        };
        assert!(!request_body(&none, 900).contains("ExternalId"));
    }

    #[test]
    fn answers_are_read() {
        let ok = br#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult><Credentials>
      <AccessKeyId>ASIAX</AccessKeyId>
      <SecretAccessKey>se/cr+et</SecretAccessKey>
      <SessionToken>to&amp;ken</SessionToken>
      <Expiration>2025-11-25T21:54:08.123Z</Expiration>
  </Credentials></AssumeRoleResult></AssumeRoleResponse>"#;
        let (c, exp) = parse_answer(200, ok).unwrap();
        assert_eq!(c.access_key_id, "ASIAX");
        assert_eq!(c.secret_access_key, "se/cr+et");
        assert_eq!(c.session_token.as_deref(), Some("to&ken"));
        assert_eq!(
            exp.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_764_107_648
        );
        assert!(matches!(
            parse_answer(200, b"<x/>"),
            Err(Failure::Malformed(_))
        ));

        let refused = br#"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>
  <Message>User: arn:aws:iam::1:user/u is not authorized to perform: sts:AssumeRole</Message>
  </Error></ErrorResponse>"#;
        let f = parse_answer(403, refused).unwrap_err();
        assert_eq!(f.code(), "AccessDenied");
        assert_eq!(f.retry(), Retry::Park);
        assert_eq!(Cause::of(f.code()), Some(Cause::AccessDenied));
        assert!(f.advice().contains("trust policy") && f.advice().contains("sts:AssumeRole"));
        assert!(f.to_string().contains("AssumeRole"), "{f}");
        let throttled = b"<ErrorResponse><Error><Code>Throttling</Code></Error></ErrorResponse>";
        assert_eq!(
            parse_answer(400, throttled).unwrap_err().retry(),
            Retry::Throttled
        );
        assert_eq!(
            parse_answer(503, b"").unwrap_err().retry(),
            Retry::Transient
        );
        let disabled = b"<Error><Code>RegionDisabledException</Code></Error>";
        assert_eq!(
            parse_answer(403, disabled).unwrap_err().retry(),
            Retry::Park
        );
    }
}
