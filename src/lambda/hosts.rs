//! Where the telemetry listener listens: the addresses `/etc/hosts` gives
//! `sandbox.localdomain`, found without the resolver, so that no DNS query
//! (and no resolver timeout: 5 s for musl where no server answers) ever
//! stands between exec and the first `event/next`.
//!
//! Lambda delivers telemetry to `http://sandbox.localdomain:PORT`. Inside
//! Lambda the name is the sandbox's own telemetry interface (`telemetry1_sb`,
//! 169.254.79.130/30 in public dumps of a sandbox's interfaces; New Relic's
//! extension hard-codes that address as its fallback), named in the
//! sandbox's `/etc/hosts` (no public copy of that file was found: hence the
//! second fallback address). Local emulators (AWS's runtime interface emulator
//! on Managed Instances, this repository's simulator) deliver to 127.0.0.1
//! whatever the name. So: the hosts file's addresses when it names
//! `sandbox.localdomain`; otherwise loopback, plus Lambda's telemetry
//! address if this machine has it (a bind that fails at once elsewhere).
//!
//! The file is read with `files`' bounds: opened without blocking (a FIFO
//! cannot hold start-up), only a regular file, at most `MAX_BYTES`.

use std::net::{IpAddr, Ipv4Addr};

/// The host name Lambda delivers telemetry to.
pub const SANDBOX_HOST: &str = "sandbox.localdomain";
/// The address of Lambda's sandbox telemetry interface (see module comment).
pub const LAMBDA_TELEMETRY_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 79, 130));
const HOSTS: &str = "/etc/hosts";
/// More than any real hosts file: a larger one is not read (fallback).
const MAX_BYTES: u64 = 64 * 1024;

/// Where the listener's addresses came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `/etc/hosts` names `sandbox.localdomain`: listen there only.
    Hosts,
    /// It does not: loopback (required), then Lambda's telemetry address
    /// (only if this machine has it).
    Fallback,
}

/// The listener's addresses, in order; the first must be bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    pub ips: Vec<IpAddr>,
    pub from: Source,
}

/// The addresses for `sandbox.localdomain`, from `/etc/hosts` alone.
pub fn sandbox_addresses() -> Addresses {
    let text = match crate::files::read_file(HOSTS, MAX_BYTES) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(why) => {
            log::debug!("{HOSTS} not read ({why})");
            String::new()
        }
    };
    decide(&lookup(&text, SANDBOX_HOST))
}

/// The listener's addresses, given what the hosts file names the host.
pub fn decide(named: &[IpAddr]) -> Addresses {
    if named.is_empty() {
        Addresses {
            ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST), LAMBDA_TELEMETRY_ADDR],
            from: Source::Fallback,
        }
    } else {
        Addresses {
            ips: named.to_vec(),
            from: Source::Hosts,
        }
    }
}

/// The addresses a hosts file's `text` gives `name` (canonical names and
/// aliases alike, case-insensitively, a trailing dot ignored), in file
/// order, each once. Comments, blank lines, lines without a name, and
/// addresses that do not parse (such as IPv6 with a zone) are skipped.
pub fn lookup(text: &str, name: &str) -> Vec<IpAddr> {
    let name = name.trim_end_matches('.');
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_ascii_whitespace();
        let Some(Ok(ip)) = fields.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        if fields.any(|h| h.trim_end_matches('.').eq_ignore_ascii_case(name))
            && !found.contains(&ip)
        {
            found.push(ip);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn names_and_aliases_in_both_families() {
        let text = "\
# a comment: 10.0.0.1 sandbox.localdomain
127.0.0.1\tlocalhost localhost.localdomain
169.254.79.130 sandbox.localdomain sandbox   # Lambda's telemetry interface

::1 localhost ip6-localhost SANDBOX.localdomain.
127.0.0.5 sandbox sandbox.localdomain
169.254.79.130 sandbox.localdomain
";
        assert_eq!(
            lookup(text, SANDBOX_HOST),
            ips(&["169.254.79.130", "::1", "127.0.0.5"])
        );
        assert_eq!(lookup(text, "localhost"), ips(&["127.0.0.1", "::1"]));
    }

    #[test]
    fn what_is_not_an_entry_names_nothing() {
        let text = "\
#169.254.79.130 sandbox.localdomain
sandbox.localdomain 127.0.0.1
fe80::1%eth0 sandbox.localdomain
999.1.1.1 sandbox.localdomain
10.0.0.1 sandbox.localdomain.example other-sandbox.localdomain
10.0.0.2
10.0.0.3 localhost # sandbox.localdomain
\u{fffd}\u{fffd} sandbox.localdomain
";
        assert_eq!(lookup(text, SANDBOX_HOST), Vec::<IpAddr>::new());
        assert_eq!(lookup("", SANDBOX_HOST), Vec::<IpAddr>::new());
    }

    #[test]
    fn without_an_entry_loopback_first_then_lambdas_address() {
        let d = decide(&[]);
        assert_eq!(d.from, Source::Fallback);
        assert_eq!(d.ips, ips(&["127.0.0.1", "169.254.79.130"]));
        let named = ips(&["169.254.79.130", "::1"]);
        assert_eq!(
            decide(&named),
            Addresses {
                ips: named.clone(),
                from: Source::Hosts
            }
        );
    }
}
