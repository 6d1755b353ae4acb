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

    /// The client's address: the TCP peer, or, when the peer is a trusted proxy, the right-most
    /// `X-Forwarded-For` entry that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusted(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map_while(|entry| entry.trim().parse::<IpAddr>().ok().map(canonical))
            .collect();
        forwarded.iter().rev().copied().find(|ip| !self.trusted(*ip)).or(forwarded.first().copied()).unwrap_or(peer)
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

fn canonical(ip: IpAddr) -> IpAddr {
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
        assert_eq!(policy.client_ip(ip("198.51.100.1"), &forged), ip("198.51.100.1"));
        assert!(!policy.allows(policy.client_ip(ip("198.51.100.1"), &forged)));
        assert_eq!(policy.client_ip(ip("10.1.2.3"), &forged), ip("203.0.113.7"));
        // A client-supplied entry left of the real one does not win.
        let chained = headers(&["203.0.113.9, 198.51.100.5", "10.0.0.2"]);
        assert_eq!(policy.client_ip(ip("10.1.2.3"), &chained), ip("198.51.100.5"));
        assert_eq!(policy.client_ip(ip("::ffff:10.1.2.3"), &forged), ip("203.0.113.7"));
    }

    #[test]
    fn empty_allowlist_allows_all_and_bad_cidrs_name_the_flag() {
        assert!(SourcePolicy::default().allows(ip("192.0.2.1")));
        let err = SourcePolicy::new(&["not-a-net".into()], &[]).unwrap_err();
        assert!(err.to_string().contains("--allow-cidr"));
        assert!(SourcePolicy::new(&["192.0.2.1".into()], &[]).unwrap().allows(ip("192.0.2.1")));
    }
}
