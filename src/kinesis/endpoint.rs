//! Which URL `PutRecords` goes to when none is configured: the AWS SDKs'
//! endpoint rules for Kinesis (as of aws-sdk-go-v2's
//! `service/kinesis/endpoints.go`), for the `aws`, `aws-cn`, `aws-us-gov`,
//! `aws-iso` and `aws-iso-b` partitions, with `AWS_USE_FIPS_ENDPOINT` and
//! `AWS_USE_DUALSTACK_ENDPOINT`. A configured endpoint URL wins over all of
//! this (docs/configuration.md); what such a URL must be is checked here too
//! (`url_problem`), and shown without its credentials (`redacted_url`).

use crate::kinesis::settings::StreamTarget;

/// What is wrong with an endpoint URL, if anything: an http(s) scheme, a
/// host of ASCII letters, digits, `-`, `.` and `_` (or a bracketed IPv6
/// address), an optional port from 1 to 65535.
pub fn url_problem(url: &str) -> Option<&'static str> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Some("no http:// or https:// scheme");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Credentials in the URL are allowed (and never logged).
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Some("an IPv6 address without its closing ]");
        };
        if addr.is_empty()
            || !addr
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Some("an invalid IPv6 address");
        }
        match after {
            "" => (addr, None),
            p => match p.strip_prefix(':') {
                Some(p) => (addr, Some(p)),
                None => return Some("text after the IPv6 address"),
            },
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Some("no host");
    }
    if !host_port.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Some("a host that is not ASCII letters, digits, - . _");
    }
    match port.map(|p| p.parse::<u16>()) {
        None | Some(Ok(1..)) => None,
        Some(_) => Some("a port that is not 1 to 65535"),
    }
}

/// `url` with any credentials in it replaced by `***`, for logs.
pub fn redacted_url(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]).into(),
        None => url.into(),
    }
}

/// A partition's DNS suffixes.
struct Partition {
    name: &'static str,
    dns: &'static str,
    /// `None`: the partition has no dual-stack endpoints.
    dual_stack: Option<&'static str>,
}

fn partition(region: &str) -> Partition {
    let (name, dns, dual_stack) = if region.starts_with("cn-") {
        (
            "aws-cn",
            "amazonaws.com.cn",
            Some("api.amazonwebservices.com.cn"),
        )
    } else if region.starts_with("us-gov-") {
        ("aws-us-gov", "amazonaws.com", Some("api.aws"))
    } else if region.starts_with("us-isob-") {
        ("aws-iso-b", "sc2s.sgov.gov", None)
    } else if region.starts_with("us-iso-") {
        ("aws-iso", "c2s.ic.gov", None)
    } else {
        ("aws", "amazonaws.com", Some("api.aws"))
    };
    Partition {
        name,
        dns,
        dual_stack,
    }
}

/// Why there is no endpoint for a region and stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoEndpoint {
    /// Dual-stack asked for in a partition without such endpoints.
    NoDualStack {
        partition: &'static str,
        region: String,
    },
    /// The stream ARN cannot be parsed, or names no valid account.
    BadArn(String),
    /// The stream ARN is in another partition than the region.
    OtherPartition { arn: String, region: &'static str },
}

impl std::fmt::Display for NoEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoEndpoint::NoDualStack { partition, region } => write!(
                f,
                "AWS_USE_DUALSTACK_ENDPOINT is set but the {partition} partition ({region}) has no dual-stack endpoints"
            ),
            NoEndpoint::BadArn(arn) => {
                write!(f, "the stream ARN {arn:?} cannot be parsed or has no valid account id")
            }
            NoEndpoint::OtherPartition { arn, region } => write!(
                f,
                "the stream ARN is in partition {arn} but AWS_REGION is in {region}"
            ),
        }
    }
}

/// `region`'s partition, and the DNS suffix of its endpoints (dual-stack's
/// if asked for: an error where the partition has none).
fn partition_and_suffix(
    region: &str,
    dual_stack: bool,
) -> Result<(Partition, &'static str), NoEndpoint> {
    let p = partition(region);
    let suffix = match (dual_stack, p.dual_stack) {
        (false, _) => p.dns,
        (true, Some(ds)) => ds,
        (true, None) => {
            return Err(NoEndpoint::NoDualStack {
                partition: p.name,
                region: region.to_string(),
            })
        }
    };
    Ok((p, suffix))
}

/// The endpoint URL for `region`, or why there is none.
pub fn resolve(
    region: &str,
    stream: &StreamTarget,
    fips: bool,
    dual_stack: bool,
) -> Result<String, NoEndpoint> {
    let (p, suffix) = partition_and_suffix(region, dual_stack)?;
    let fips_part = if fips { "-fips" } else { "" };
    // A stream ARN sends data-plane calls to the stream's account endpoint
    // (not in the ISO partitions). The host takes the client's region.
    if let (StreamTarget::Arn(arn), false) = (stream, p.name.starts_with("aws-iso")) {
        let account = arn_account(arn, p.name)?;
        return Ok(format!(
            "https://{account}.data-kinesis{fips_part}.{region}.{suffix}"
        ));
    }
    // GovCloud's regional endpoints are FIPS endpoints already.
    if fips && !dual_stack && p.name == "aws-us-gov" {
        return Ok(format!("https://kinesis.{region}.{suffix}"));
    }
    Ok(format!("https://kinesis{fips_part}.{region}.{suffix}"))
}

/// The STS endpoint for `region`, by the SDKs' STS rules (regional
/// endpoints, `sts-fips.` for FIPS, the dual-stack suffix; GovCloud's
/// regional endpoints are FIPS already).
pub fn sts(region: &str, fips: bool, dual_stack: bool) -> Result<String, NoEndpoint> {
    let (p, suffix) = partition_and_suffix(region, dual_stack)?;
    // GovCloud's regional endpoints are FIPS already (not its dual-stack ones).
    let fips_part = match fips && (dual_stack || p.name != "aws-us-gov") {
        true => "-fips",
        false => "",
    };
    Ok(format!("https://sts{fips_part}.{region}.{suffix}"))
}

/// The account id of a Kinesis stream ARN in `partition`.
fn arn_account<'a>(arn: &'a str, partition: &'static str) -> Result<&'a str, NoEndpoint> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [_, arn_partition, _, _, account, _] = parts[..] else {
        return Err(NoEndpoint::BadArn(arn.to_string()));
    };
    if arn_partition != partition {
        return Err(NoEndpoint::OtherPartition {
            arn: arn_partition.to_string(),
            region: partition,
        });
    }
    if account.is_empty() || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NoEndpoint::BadArn(arn.to_string()));
    }
    Ok(account)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(region: &str, fips: bool, ds: bool) -> String {
        resolve(region, &StreamTarget::Name("s".into()), fips, ds).unwrap()
    }

    fn arn(region: &str, arn: &str, fips: bool, ds: bool) -> Result<String, NoEndpoint> {
        resolve(region, &StreamTarget::Arn(arn.into()), fips, ds)
    }

    /// Cases from aws-sdk-go-v2's `service/kinesis/endpoints_test.go`
    /// (TestEndpointCaseN), the SDKs' shared endpoint tests.
    #[test]
    fn regional_endpoints_as_the_sdks_resolve_them() {
        let cases = [
            (
                "us-east-1",
                false,
                false,
                "https://kinesis.us-east-1.amazonaws.com",
            ), // 18
            (
                "us-east-1",
                true,
                false,
                "https://kinesis-fips.us-east-1.amazonaws.com",
            ), // 19
            (
                "us-east-1",
                true,
                true,
                "https://kinesis-fips.us-east-1.api.aws",
            ), // 26
            (
                "us-east-1",
                false,
                true,
                "https://kinesis.us-east-1.api.aws",
            ), // 27
            (
                "us-west-2",
                true,
                false,
                "https://kinesis-fips.us-west-2.amazonaws.com",
            ), // 25
            (
                "cn-north-1",
                false,
                false,
                "https://kinesis.cn-north-1.amazonaws.com.cn",
            ), // 28
            (
                "cn-northwest-1",
                false,
                false,
                "https://kinesis.cn-northwest-1.amazonaws.com.cn",
            ), // 29
            (
                "cn-north-1",
                true,
                true,
                "https://kinesis-fips.cn-north-1.api.amazonwebservices.com.cn",
            ), // 30
            (
                "cn-north-1",
                true,
                false,
                "https://kinesis-fips.cn-north-1.amazonaws.com.cn",
            ), // 31
            (
                "cn-north-1",
                false,
                true,
                "https://kinesis.cn-north-1.api.amazonwebservices.com.cn",
            ), // 32
            (
                "us-gov-east-1",
                false,
                false,
                "https://kinesis.us-gov-east-1.amazonaws.com",
            ), // 33
            (
                "us-gov-east-1",
                true,
                false,
                "https://kinesis.us-gov-east-1.amazonaws.com",
            ), // 34
            (
                "us-gov-west-1",
                false,
                false,
                "https://kinesis.us-gov-west-1.amazonaws.com",
            ), // 35
            (
                "us-gov-west-1",
                true,
                false,
                "https://kinesis.us-gov-west-1.amazonaws.com",
            ), // 36
            (
                "us-gov-east-1",
                true,
                true,
                "https://kinesis-fips.us-gov-east-1.api.aws",
            ), // 37
            (
                "us-gov-east-1",
                false,
                true,
                "https://kinesis.us-gov-east-1.api.aws",
            ), // 38
            (
                "us-iso-east-1",
                true,
                false,
                "https://kinesis-fips.us-iso-east-1.c2s.ic.gov",
            ), // 41
        ];
        for (region, fips, ds, want) in cases {
            assert_eq!(name(region, fips, ds), want, "{region} fips={fips} ds={ds}");
        }
        let e = resolve(
            "us-iso-east-1",
            &StreamTarget::Name("s".into()),
            false,
            true,
        );
        assert!(e.unwrap_err().to_string().contains("no dual-stack"));
    }

    /// Cases from aws-sdk-go-v2's `service/sts/endpoints_test.go` (with
    /// `UseGlobalEndpoint` false, the SDKs' default now).
    #[test]
    fn sts_endpoints_as_the_sdks_resolve_them() {
        let cases = [
            (
                "us-east-1",
                false,
                false,
                "https://sts.us-east-1.amazonaws.com",
            ),
            (
                "us-east-1",
                true,
                false,
                "https://sts-fips.us-east-1.amazonaws.com",
            ),
            (
                "us-east-1",
                true,
                true,
                "https://sts-fips.us-east-1.api.aws",
            ),
            ("us-east-1", false, true, "https://sts.us-east-1.api.aws"),
            (
                "eu-west-1",
                false,
                false,
                "https://sts.eu-west-1.amazonaws.com",
            ),
            (
                "cn-north-1",
                false,
                false,
                "https://sts.cn-north-1.amazonaws.com.cn",
            ),
            (
                "cn-north-1",
                false,
                true,
                "https://sts.cn-north-1.api.amazonwebservices.com.cn",
            ),
            (
                "us-gov-west-1",
                true,
                false,
                "https://sts.us-gov-west-1.amazonaws.com",
            ),
            (
                "us-gov-west-1",
                true,
                true,
                "https://sts-fips.us-gov-west-1.api.aws",
            ),
            (
                "us-iso-east-1",
                false,
                false,
                "https://sts.us-iso-east-1.c2s.ic.gov",
            ),
        ];
        for (region, fips, ds, want) in cases {
            assert_eq!(
                sts(region, fips, ds).unwrap(),
                want,
                "{region} fips={fips} ds={ds}"
            );
        }
        assert!(sts("us-isob-east-1", false, true).is_err());
    }

    #[test]
    fn stream_arns_go_to_the_account_data_endpoint() {
        let a = "arn:aws:kinesis:us-east-1:123:stream/test-stream";
        let cases = [
            (
                "us-east-1",
                a,
                false,
                false,
                "https://123.data-kinesis.us-east-1.amazonaws.com",
            ), // 61
            (
                "us-east-1",
                a,
                true,
                false,
                "https://123.data-kinesis-fips.us-east-1.amazonaws.com",
            ), // 62
            (
                "us-west-1",
                "arn:aws:kinesis:us-west-1:123:stream/test-stream",
                false,
                true,
                "https://123.data-kinesis.us-west-1.api.aws",
            ), // 65
            (
                "us-east-1",
                "arn:aws:kinesis:us-west-1:123:stream/testStream",
                false,
                false,
                "https://123.data-kinesis.us-east-1.amazonaws.com",
            ), // 67: the client's region
            (
                "cn-northwest-1",
                "arn:aws-cn:kinesis:cn-northwest-1:123:stream/test-stream",
                true,
                true,
                "https://123.data-kinesis-fips.cn-northwest-1.api.amazonwebservices.com.cn",
            ), // 69
            (
                "us-iso-east-1",
                "arn:aws-iso:kinesis:us-iso-east-1:123:stream/test-stream",
                false,
                false,
                "https://kinesis.us-iso-east-1.c2s.ic.gov",
            ), // 70: no account endpoints in ISO
        ];
        for (region, stream, fips, ds, want) in cases {
            assert_eq!(
                arn(region, stream, fips, ds).unwrap(),
                want,
                "{region} {stream}"
            );
        }
        // 51: partitions must match
        let e = arn(
            "us-gov-west-1",
            "arn:aws:kinesis:us-west-2:123456789012:stream/testStream",
            false,
            false,
        );
        assert!(e.unwrap_err().to_string().contains("partition aws"));
        // 55: an account id is needed
        let e = arn(
            "us-east-1",
            "arn:aws:kinesis:us-east-1::stream/testStream",
            false,
            false,
        );
        assert!(e.unwrap_err().to_string().contains("no valid account id"));
    }
}
