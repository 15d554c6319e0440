//! Which addresses user-defined endpoints may reach (SSRF): public ones, and those in
//! `webhooks.allow_networks`. Names are checked after they resolve, by the HTTP client's
//! resolver, so a name cannot resolve to a private address at call time (DNS rebinding);
//! literal addresses are checked before the call and on every redirect.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64: may reach anything inside
                || (s[0..6] == [0, 0, 0, 0, 0, 0])) // IPv4-compatible
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared (CGNAT)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking
        || o[0] >= 240) // reserved
}

/// The addresses endpoints may reach.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allow: Arc<Vec<IpNet>>,
}

impl Policy {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow: Arc::new(allow) }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Checks a URL whose host is a literal address; a name is checked when it resolves.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err("the URL has no host".into()),
        };
        if self.allows(ip) {
            Ok(())
        } else {
            Err(format!("{ip} is not a public address (webhooks.allow_networks)"))
        }
    }
}

impl Resolve for Policy {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found.iter().copied().filter(|a| policy.allows(a.ip())).collect();
            if allowed.is_empty() {
                let why = if found.is_empty() {
                    format!("{host} does not resolve")
                } else {
                    format!("{host} resolves only to addresses that are not public (webhooks.allow_networks)")
                };
                return Err(Box::new(Refused(why)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// An address an endpoint may not reach.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The endpoint client: resolves through `policy`, and follows at most 5 redirects, each
/// to an allowed literal address or a name (checked as it resolves).
pub fn client(policy: Policy) -> Result<reqwest::Client, reqwest::Error> {
    let redirects = policy.clone();
    reqwest::Client::builder()
        .dns_resolver(Arc::new(policy))
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("too many redirects")
            } else if let Err(why) = redirects.check_url(attempt.url()) {
                attempt.error(Refused(why))
            } else {
                attempt.follow()
            }
        }))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_and_link_local_are_not_public() {
        for a in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::127.0.0.1",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
        for a in ["1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:1.1.1.1"] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn an_allowed_network_opens_only_itself() {
        let p = Policy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(p.allows("127.0.0.1".parse().unwrap()));
        assert!(!p.allows("10.0.0.1".parse().unwrap()));
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        assert!(p.check_url(&url("http://127.0.0.1:9/x")).is_ok());
        assert!(p.check_url(&url("http://10.0.0.1/x")).is_err());
        assert!(p.check_url(&url("http://[::1]/x")).is_err());
        assert!(
            p.check_url(&url("http://example.com/x")).is_ok(),
            "names are checked as they resolve"
        );
        assert!(
            Policy::default().check_url(&url("http://0x7f.1/")).is_err(),
            "a hex literal is an address"
        );
    }

    #[tokio::test]
    async fn names_that_resolve_to_private_addresses_are_refused() {
        let p = Policy::default();
        let r = p.resolve("localhost".parse::<Name>().unwrap()).await;
        assert!(r.is_err());
        let p = Policy::new(vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
        assert!(p.resolve("localhost".parse::<Name>().unwrap()).await.is_ok());
    }
}
