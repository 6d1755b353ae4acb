//! Who is calling: the client address (through trusted proxies' `X-Forwarded-For`) and the source allowlist.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// Which client addresses may post callbacks.
#[derive(Debug, Clone, Default)]
pub struct SourcePolicy {
    allow: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
}

/// A CIDR that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {value:?} is not an IP address or CIDR")]
pub struct SourcePolicyError {
    /// The flag holding it.
    pub flag: &'static str,
    /// The bad value.
    pub value: String,
}

fn parse_nets(flag: &'static str, values: &[String]) -> Result<Vec<IpNet>, SourcePolicyError> {
    values
        .iter()
        .map(|value| {
            value
                .parse::<IpNet>()
                .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| SourcePolicyError { flag, value: value.clone() })
        })
        .collect()
}

impl SourcePolicy {
    /// `allow` empty: every source is allowed. `trusted_proxies`: peers whose `X-Forwarded-For` is believed.
    pub fn new(allow: &[String], trusted_proxies: &[String]) -> Result<Self, SourcePolicyError> {
        Ok(SourcePolicy {
            allow: parse_nets("--allow-cidr", allow)?,
            trusted_proxies: parse_nets("--trusted-proxy", trusted_proxies)?,
        })
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// True when `peer` is a trusted proxy.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        self.trusted(canonical(peer))
    }

    /// The client's address: the TCP peer, or, when the peer is a trusted proxy, the right-most
    /// `X-Forwarded-For` entry that is not itself a trusted proxy (every header line counts, in order, as one
    /// list). The list is walked from the right: trusted proxies are skipped, the first other entry is the client.
    /// `None` when an entry met on the way does not parse as an IP address (empty, `ip:port`, garbage): a proxy
    /// chain we cannot read is refused, never guessed at. Entries left of the client are the client's own words
    /// and are not looked at. When every entry is a trusted proxy, the left-most one is the client.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = canonical(peer);
        if !self.trusted(peer) {
            return Some(peer);
        }
        let mut lines = headers.get_all("x-forwarded-for").iter().rev().peekable();
        if lines.peek().is_none() {
            return Some(peer);
        }
        let mut leftmost = peer;
        for line in lines {
            let line = line.to_str().ok()?;
            for entry in line.rsplit(',') {
                let ip = canonical(entry.trim().parse::<IpAddr>().ok()?);
                if !self.trusted(ip) {
                    return Some(ip);
                }
                leftmost = ip;
            }
        }
        Some(leftmost)
    }

    /// True when trusted proxies are configured.
    pub fn has_trusted_proxies(&self) -> bool {
        !self.trusted_proxies.is_empty()
    }

    /// True when the peer itself must be inside the allowlist: an allowlist and no trusted proxy, so that a
    /// disallowed peer can be dropped as soon as it connects.
    pub fn checks_peers_at_accept(&self) -> bool {
        !self.allow.is_empty() && self.trusted_proxies.is_empty()
    }

    /// True when `client` may post callbacks.
    pub fn allows(&self, client: IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&client))
    }

    /// True when neither an allowlist nor trusted proxies are configured (nothing to check).
    pub fn is_open(&self) -> bool {
        self.allow.is_empty()
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is; others unchanged.
pub(super) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in xff {
            map.append("x-forwarded-for", value.parse().unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let policy = SourcePolicy::new(&["203.0.113.0/24".into()], &["10.0.0.0/8".into()]).unwrap();
        let forged = headers(&["203.0.113.7"]);
        assert_eq!(policy.client_ip(ip("198.51.100.1"), &forged), Some(ip("198.51.100.1")));
        assert!(!policy.allows(policy.client_ip(ip("198.51.100.1"), &forged).unwrap()));
        assert_eq!(policy.client_ip(ip("10.1.2.3"), &forged), Some(ip("203.0.113.7")));
        // A client-supplied entry left of the real one does not win.
        let chained = headers(&["203.0.113.9, 198.51.100.5", "10.0.0.2"]);
        assert_eq!(policy.client_ip(ip("10.1.2.3"), &chained), Some(ip("198.51.100.5")));
        assert_eq!(policy.client_ip(ip("::ffff:10.1.2.3"), &forged), Some(ip("203.0.113.7")));
    }

    #[test]
    fn an_entry_that_does_not_parse_on_the_way_to_the_client_is_refused() {
        let policy = SourcePolicy::new(&["203.0.113.0/24".into()], &["10.0.0.0/8".into()]).unwrap();
        let proxy = ip("10.1.2.3");
        for xff in [
            &["203.0.113.7, x"][..],
            &["203.0.113.7,"],
            &["203.0.113.7:80"],
            &["203.0.113.7, 10.0.0.9:80"],
            &["203.0.113.7", "x"],
            &["203.0.113.7", ""],
            &["[2001:db8::1]"],
        ] {
            assert_eq!(policy.client_ip(proxy, &headers(xff)), None, "{xff:?}");
        }
        assert_eq!(policy.client_ip(proxy, &headers(&["x, 203.0.113.7, 10.0.0.1"])), Some(ip("203.0.113.7")));
        assert_eq!(policy.client_ip(proxy, &headers(&["10.0.0.7, 10.0.0.1"])), Some(ip("10.0.0.7")));
        assert_eq!(policy.client_ip(proxy, &headers(&[])), Some(proxy));
        assert!(!policy.checks_peers_at_accept());
        assert!(SourcePolicy::new(&["203.0.113.0/24".into()], &[]).unwrap().checks_peers_at_accept());
        assert!(!SourcePolicy::default().checks_peers_at_accept());
    }

    #[test]
    fn empty_allowlist_allows_all_and_bad_cidrs_name_the_flag() {
        assert!(SourcePolicy::default().allows(ip("192.0.2.1")));
        let err = SourcePolicy::new(&["not-a-net".into()], &[]).unwrap_err();
        assert!(err.to_string().contains("--allow-cidr"));
        assert!(SourcePolicy::new(&["192.0.2.1".into()], &[]).unwrap().allows(ip("192.0.2.1")));
    }
}
