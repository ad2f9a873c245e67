//! The HTTP proxy `PutRecords` (and a credentials fetch) go through: the
//! variables read (`PROXY_VARS`, `NO_PROXY_VARS`), and `NO_PROXY` matched as
//! the AWS SDKs match it (`NoProxy`).

use ureq::http::Uri;

/// The HTTP proxy variables, read for `PutRecords` in this order (ureq's).
pub const PROXY_VARS: [&str; 6] = [
    "ALL_PROXY",
    "all_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
];

/// The hosts that bypass the proxy, the first one set (see
/// `NoProxy`).
pub const NO_PROXY_VARS: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// The HTTP proxy requests to `url` go through: ureq picks it from
/// `ALL_PROXY`, `HTTPS_PROXY`, `HTTP_PROXY` (and lower-case forms), and
/// `NO_PROXY` (or `no_proxy`) is matched here, as the AWS SDKs match it
/// (`NoProxy`), instead of by ureq (which knows neither CIDR ranges nor
/// domains that cover their subdomains). `None` when no proxy applies. (The
/// Extensions API and the listener never use one.)
pub fn proxy_for(url: &str) -> Option<ureq::Proxy> {
    let proxy = ureq::Proxy::try_from_env()?;
    let uri: Uri = url.parse().ok()?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let list = NO_PROXY_VARS
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .unwrap_or_default();
    let (no_proxy, ignored) = NoProxy::parse(&list);
    for entry in ignored {
        log::warn!("NO_PROXY entry {entry:?} not understood: ignored");
    }
    if no_proxy.matches(uri.host()?, port) {
        return None;
    }
    // The same proxy without ureq's own reading of NO_PROXY.
    ureq::Proxy::new(&proxy.uri().to_string()).ok()
}

/// A proxy described without its credentials, for logs.
pub fn describe(proxy: &ureq::Proxy) -> String {
    let scheme = format!("{:?}", proxy.protocol()).to_ascii_lowercase();
    format!("{scheme}://{}:{}", proxy.host(), proxy.port())
}

/// `NO_PROXY`: the hosts that bypass the proxy, as the AWS SDKs read it (the
/// SDK for Rust through hyper-util's matcher, the CRT-based ones through
/// aws-c-http's port of curl's): comma-separated entries, each
/// - `*`: every host;
/// - a domain, with or without a leading `.` (or `*.`): that domain and its
///   subdomains, in any case (`example.com` covers `kinesis.example.com`,
///   not `notexample.com`);
/// - an IPv4 or IPv6 address (`[…]` or bare), or a CIDR range
///   (`10.0.0.0/8`, `fd00::/8`): the endpoint's address as written in its
///   URL (names are never resolved for this);
/// - any of these with `:port`: only for that port (as Go and botocore;
///   the Rust SDK and curl ignore such entries);
/// - a URL (`https://host:port/path`): its host and port (the SDKs ignore
///   such entries; the intent is plain).
///
/// Anything else is ignored, and logged.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NoProxy(Vec<NoProxyEntry>);

#[derive(Debug, PartialEq, Eq)]
enum NoProxyEntry {
    All,
    /// Lower case, without leading or trailing dots.
    Domain(String, Option<u16>),
    Network(std::net::IpAddr, u8, Option<u16>),
}

impl NoProxy {
    /// The entries understood, and those that are not.
    pub fn parse(list: &str) -> (NoProxy, Vec<String>) {
        let mut entries = Vec::new();
        let mut ignored = Vec::new();
        for raw in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match NoProxyEntry::parse(raw) {
                Some(e) => entries.push(e),
                None => ignored.push(raw.to_string()),
            }
        }
        (NoProxy(entries), ignored)
    }

    /// Whether requests to `host` (as in a URL: an IPv6 address in
    /// brackets) on `port` bypass the proxy.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ip = bare.parse::<std::net::IpAddr>().ok();
        let name = bare.trim_end_matches('.').to_ascii_lowercase();
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        self.0.iter().any(|e| match e {
            NoProxyEntry::All => true,
            NoProxyEntry::Domain(d, p) => {
                ip.is_none()
                    && port_ok(p)
                    && (name == *d
                        || name
                            .strip_suffix(d.as_str())
                            .is_some_and(|rest| rest.ends_with('.')))
            }
            NoProxyEntry::Network(net, bits, p) => {
                port_ok(p) && ip.is_some_and(|ip| in_network(ip, *net, *bits))
            }
        })
    }
}

impl NoProxyEntry {
    fn parse(raw: &str) -> Option<NoProxyEntry> {
        if raw == "*" {
            return Some(NoProxyEntry::All);
        }
        // A URL: its authority, without credentials.
        let entry = match raw.split_once("://") {
            Some((_, rest)) => {
                let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
                authority.rsplit_once('@').map_or(authority, |(_, h)| h)
            }
            None => raw,
        };
        let (host, port) = split_port(entry)?;
        let (addr, bits) = match host.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits.parse::<u8>().ok()?)),
            None => (host, None),
        };
        if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = bits.unwrap_or(max);
            return (bits <= max).then_some(NoProxyEntry::Network(ip, bits, port));
        }
        let domain = host
            .strip_prefix("*.")
            .unwrap_or(host)
            .trim_matches('.')
            .to_ascii_lowercase();
        let valid = !domain.is_empty()
            && domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        valid.then_some(NoProxyEntry::Domain(domain, port))
    }
}

/// `host[:port]`, `[v6][:port]` or a bare IPv6 address (or range): the host
/// and the port; `None` when the port is not one.
fn split_port(entry: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match entry.matches(':').count() {
        1 => {
            let (host, port) = entry.split_once(':')?;
            Some((host, Some(port.parse().ok()?)))
        }
        _ => Some((entry, None)), // a name, or an IPv6 address
    }
}

/// Whether `ip` is in `net`/`bits` (never across address families).
fn in_network(ip: std::net::IpAddr, net: std::net::IpAddr, bits: u8) -> bool {
    use std::net::IpAddr::{V4, V6};
    let (ip, net, width) = match (ip, net) {
        (V4(a), V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (V6(a), V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let shift = width - u32::from(bits);
    shift >= width || (ip >> shift) == (net >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bypass(list: &str, host: &str, port: u16) -> bool {
        NoProxy::parse(list).0.matches(host, port)
    }

    #[test]
    fn no_proxy_matches_as_the_aws_sdks_do() {
        // (NO_PROXY, host as in the URL, port, bypass?)
        let cases: &[(&str, &str, u16, bool)] = &[
            ("*", "kinesis.us-east-1.amazonaws.com", 443, true),
            ("", "localhost", 80, false),
            // Domains: the domain and its subdomains, any case, with or
            // without a leading dot (or `*.`), never a longer name.
            (
                "amazonaws.com",
                "kinesis.us-east-1.amazonaws.com",
                443,
                true,
            ),
            ("amazonaws.com", "amazonaws.com", 443, true),
            (".amazonaws.com", "amazonaws.com", 443, true),
            (
                "*.amazonaws.com",
                "kinesis.eu-west-1.amazonaws.com",
                443,
                true,
            ),
            (
                "AmazonAWS.com.",
                "KINESIS.us-east-1.amazonaws.com.",
                443,
                true,
            ),
            ("amazonaws.com", "notamazonaws.com", 443, false),
            (
                "kinesis.us-east-1.amazonaws.com",
                "us-east-1.amazonaws.com",
                443,
                false,
            ),
            ("localhost", "localhost", 4567, true),
            // Addresses and CIDR ranges (IPv4 and IPv6), as written in the URL.
            ("127.0.0.1", "127.0.0.1", 4567, true),
            ("127.0.0.0/8", "127.1.2.3", 4567, true),
            ("127.0.0.0/8", "128.0.0.1", 4567, false),
            ("10.0.0.0/8, 192.168.0.0/16", "192.168.44.9", 80, true),
            ("0.0.0.0/0", "203.0.113.9", 80, true),
            ("10.1.2.3/32", "10.1.2.4", 80, false),
            ("::1", "[::1]", 443, true),
            ("[::1]", "[::1]", 443, true),
            ("fd00::/8", "[fd12:3456::1]", 443, true),
            ("fd00::/8", "[fe80::1]", 443, false),
            ("::/0", "10.0.0.1", 443, false), // never across families
            ("127.0.0.0/8", "localhost", 80, false), // names are not resolved
            ("localhost", "127.0.0.1", 80, false),
            // host:port: only that port.
            ("localhost:4567", "localhost", 4567, true),
            ("localhost:4567", "localhost", 4568, false),
            ("127.0.0.1:4567", "127.0.0.1", 4567, true),
            ("[::1]:443", "[::1]", 443, true),
            ("[::1]:443", "[::1]", 80, false),
            // URLs: their host and port.
            ("http://localhost:4567/", "localhost", 4567, true),
            (
                "https://user:pw@vpce.example.com",
                "kinesis.vpce.example.com",
                443,
                true,
            ),
            ("http://localhost:4567", "localhost", 80, false),
        ];
        for (list, host, port, expected) in cases {
            assert_eq!(
                bypass(list, host, *port),
                *expected,
                "NO_PROXY={list:?} {host}:{port}"
            );
        }
    }

    #[test]
    fn no_proxy_entries_not_understood_are_named_and_ignored() {
        let (np, ignored) =
            NoProxy::parse(" localhost , 10.0.0.0/33,ex ample.com, host:port,, ::1/129");
        assert_eq!(
            ignored,
            ["10.0.0.0/33", "ex ample.com", "host:port", "::1/129"]
        );
        assert_eq!(np.0.len(), 1);
        assert!(np.matches("LOCALHOST", 1));
    }
}
