//! AWS credentials for signing: the execution role's keys from the
//! environment (how Lambda normally passes them), or the container
//! credentials endpoint (how SnapStart functions and ECS-style environments
//! get them), fetched lazily on the dispatcher thread, cached, and refreshed
//! before they expire or when Kinesis says they have. Also what a key,
//! secret or token must be to be sent (`header_safe`), which `config`
//! checks at start.

use std::fmt;
use std::io::Read;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// AWS credentials taken from the standard environment variables.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets, not even in debug logs.
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where signing credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialsSource {
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`.
    Static(StaticCredentials),
    /// The container credentials endpoint (SnapStart, ECS-style):
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` (or `_RELATIVE_URI`) with
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN` (or `_TOKEN_FILE`).
    Container {
        url: String,
        token: Option<String>,
        token_file: Option<String>,
    },
}

/// The most read of `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`: the token
/// goes in an HTTP header (a service account token is ~1 KB).
pub const TOKEN_FILE_MAX_BYTES: u64 = 64 << 10;

/// The variable naming the token file, for messages (the settings table
/// defines it; a test in `config` holds the two together).
pub const TOKEN_FILE_VAR: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE";

/// What a key, secret or token must be to go in an HTTP header.
pub const SECRET_EXPECTED: &str =
    "printable ASCII without spaces or line breaks (check how the value was pasted)";

/// Whether a key, secret or token can be sent in an HTTP header.
pub fn header_safe(v: &str) -> bool {
    v.bytes().all(|b| b.is_ascii_graphic())
}

/// Refresh this long before `Expiration`, like the AWS SDKs.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// A credentials fetch (a local endpoint on Lambda) gives up after this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why credentials could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsError(pub String);

impl std::fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot get AWS credentials: {}", self.0)
    }
}

pub struct Provider {
    source: CredentialsSource,
    cached: Option<(StaticCredentials, Option<SystemTime>)>,
    agent: Option<ureq::Agent>,
    /// The last failed fetch: no new attempt before its wait has passed, so
    /// a broken endpoint is not asked on every send.
    failed: Option<(std::time::Instant, Duration, CredentialsError)>,
}

/// Waits between fetch attempts after failures: doubling, capped.
const FETCH_RETRY_FIRST: Duration = Duration::from_secs(1);
const FETCH_RETRY_CAP: Duration = Duration::from_secs(60);

impl Provider {
    pub fn new(source: CredentialsSource) -> Provider {
        Provider {
            source,
            cached: None,
            agent: None,
            failed: None,
        }
    }

    /// Current credentials, fetching or refreshing them when needed.
    pub fn get(&mut self) -> Result<&StaticCredentials, CredentialsError> {
        let fresh = match &self.cached {
            Some((_, None)) => true,
            Some((_, Some(exp))) => SystemTime::now() + REFRESH_BEFORE < *exp,
            None => false,
        };
        if !fresh {
            let waiting = matches!(&self.failed, Some((at, wait, _)) if at.elapsed() < *wait);
            let got = match &self.failed {
                Some((_, _, e)) if waiting => Err(e.clone()),
                _ => self.fetch(),
            };
            match &got {
                Ok(_) => self.failed = None,
                Err(e) if !waiting => {
                    let wait = self
                        .failed
                        .as_ref()
                        .map_or(FETCH_RETRY_FIRST, |(_, w, _)| (*w * 2).min(FETCH_RETRY_CAP));
                    self.failed = Some((std::time::Instant::now(), wait, e.clone()));
                }
                Err(_) => {}
            }
            match got {
                Ok(c) => self.cached = Some(c),
                // Keep using credentials that have not expired yet.
                Err(e) => match &self.cached {
                    Some((_, Some(exp))) if SystemTime::now() < *exp => {
                        log::warn!("{e}; using the cached credentials until they expire");
                    }
                    _ => return Err(e),
                },
            }
        }
        Ok(&self.cached.as_ref().expect("cached above").0)
    }

    /// Forgets cached credentials (after Kinesis called them expired); true
    /// when a refresh can produce new ones.
    pub fn invalidate(&mut self) -> bool {
        match self.source {
            CredentialsSource::Static(_) => false,
            CredentialsSource::Container { .. } => {
                self.cached = None;
                true
            }
        }
    }

    fn fetch(&mut self) -> Result<(StaticCredentials, Option<SystemTime>), CredentialsError> {
        let (url, token, token_file) = match &self.source {
            CredentialsSource::Static(c) => return Ok((c.clone(), None)),
            CredentialsSource::Container {
                url,
                token,
                token_file,
            } => (url.clone(), token.clone(), token_file.clone()),
        };
        let token = match (token, token_file) {
            (Some(t), _) => Some(t),
            (None, Some(path)) => Some(read_token_file(&path)?),
            (None, None) => None,
        };
        let agent = self.agent.get_or_insert_with(|| {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                // NO_PROXY read as for PutRecords (as the AWS SDKs read it).
                .proxy(crate::kinesis::proxy::proxy_for(&url))
                .timeout_global(Some(FETCH_TIMEOUT))
                .build()
                .into()
        });
        let mut req = agent.get(&url);
        if let Some(t) = &token {
            req = req.header("Authorization", t);
        }
        let mut resp = req
            .call()
            .map_err(|e| CredentialsError(format!("GET {url}: {e}")))?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        resp.body_mut()
            .as_reader()
            .take(64 * 1024)
            .read_to_end(&mut body)
            .map_err(|e| CredentialsError(format!("GET {url}: {e}")))?;
        if status != 200 {
            return Err(CredentialsError(format!(
                "GET {url} answered HTTP {status}: {} (check AWS_CONTAINER_AUTHORIZATION_TOKEN)",
                String::from_utf8_lossy(&body).trim()
            )));
        }
        parse_container_credentials(&body).map_err(|e| CredentialsError(format!("GET {url}: {e}")))
    }
}

#[derive(Deserialize)]
struct ContainerCredentials {
    #[serde(rename = "AccessKeyId")]
    access_key_id: String,
    #[serde(rename = "SecretAccessKey")]
    secret_access_key: String,
    #[serde(rename = "Token", default)]
    token: Option<String>,
    #[serde(rename = "Expiration", default)]
    expiration: Option<String>,
}

/// Parses the endpoint's JSON answer.
/// The token in `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, read at each fetch
/// (it may be rotated) within `files::read_file`'s bounds: a regular file
/// of at most `TOKEN_FILE_MAX_BYTES`, UTF-8, never a blocking open.
fn read_token_file(path: &str) -> Result<String, CredentialsError> {
    let var = TOKEN_FILE_VAR;
    let bytes = crate::files::read_file(path, TOKEN_FILE_MAX_BYTES)
        .map_err(|e| CredentialsError(format!("{var}={path}: {e}")))?;
    match String::from_utf8(bytes) {
        Ok(token) => Ok(token.trim().to_string()),
        Err(_) => Err(CredentialsError(format!("{var}={path}: not UTF-8 text"))),
    }
}

/// Why the credentials endpoint's answer could not be read.
#[derive(Debug)]
pub enum BadAnswer {
    Json(serde_json::Error),
    Expiration(String),
}

impl std::fmt::Display for BadAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadAnswer::Json(e) => write!(f, "unreadable credentials: {e}"),
            BadAnswer::Expiration(s) => write!(f, "unreadable Expiration {s:?}"),
        }
    }
}

pub fn parse_container_credentials(
    body: &[u8],
) -> Result<(StaticCredentials, Option<SystemTime>), BadAnswer> {
    let c: ContainerCredentials = serde_json::from_slice(body).map_err(BadAnswer::Json)?;
    let expiration = match c.expiration {
        Some(s) => match crate::time::parse_rfc3339(&s) {
            Some(t) => Some(t),
            None => return Err(BadAnswer::Expiration(s)),
        },
        None => None,
    };
    Ok((
        StaticCredentials {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: c.token.filter(|t| !t.is_empty()),
        },
        expiration,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn container_answer() {
        let (c, exp) = parse_container_credentials(
            br#"{"AccessKeyId":"AK","SecretAccessKey":"SK","Token":"TOK","Expiration":"2025-11-25T21:54:08Z"}"#,
        )
        .unwrap();
        assert_eq!(c.access_key_id, "AK");
        assert_eq!(c.session_token.as_deref(), Some("TOK"));
        assert_eq!(
            exp.unwrap().duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_764_107_648
        );
        assert!(parse_container_credentials(b"{}").is_err());
    }

    #[test]
    fn a_token_file_that_cannot_be_read_safely_is_an_error_naming_the_variable() {
        let dir = std::env::temp_dir().join(format!("kte-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  tok-123\n").unwrap();
        assert_eq!(read_token_file(file.to_str().unwrap()).unwrap(), "tok-123");
        let fifo = dir.join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success()));
        for (path, why) in [
            (fifo.to_str().unwrap(), "FIFO"),
            ("/dev/zero", "character device"),
        ] {
            let e = read_token_file(path).unwrap_err().to_string();
            assert!(
                e.contains("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=") && e.contains(why),
                "{e}"
            );
        }
        std::fs::write(&file, vec![b'x'; 64 * 1024 + 1]).unwrap();
        assert!(read_token_file(file.to_str().unwrap()).is_err());
        std::fs::write(&file, b"\xff").unwrap();
        let e = read_token_file(file.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn static_credentials_never_refresh() {
        let c = StaticCredentials {
            access_key_id: "a".into(),
            secret_access_key: "b".into(),
            session_token: None,
        };
        let mut p = Provider::new(CredentialsSource::Static(c.clone()));
        assert_eq!(p.get().unwrap(), &c);
        assert!(!p.invalidate());
    }
}
