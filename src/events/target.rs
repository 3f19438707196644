//! Where Wearlink may send outbound webhooks, and where a project's own FHIR server and its token
//! URL may be (`fhir_server`): one SSRF policy for every URL a project admin chooses.
//!
//! A project admin chooses the URL; the operator's internal services must stay out of reach. The
//! rules: `https` only (plain `http` only to a loopback host, and only with
//! `WEARLINK_ALLOW_LOOPBACK_TARGETS=1`), and never to a loopback, private, link-local, metadata or
//! otherwise special-purpose address unless the operator allows that network
//! (`WEARLINK_OUTBOUND_ALLOW_CIDRS`). The host is resolved and every address checked at
//! registration ([`TargetPolicy::check_url`]) and again at delivery, where the client's DNS
//! resolver is [`TargetPolicy::resolver`], so the address connected to is the address checked.
//!
//! Caveats for the delivery client:
//! * reqwest does not call the resolver for an IP-literal host: run [`TargetPolicy::check_url`]
//!   (or at least [`TargetPolicy::check_url_syntax`]) on the URL before each delivery.
//! * Follow no redirects (`redirect::Policy::none()`): a redirect target skips the URL checks.
//! * Use `.no_proxy()`: through a proxy the resolver checks the proxy's name, not the target's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use url::{Host, Url};

/// How long [`TargetPolicy::check_url`] waits for the system resolver.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The operator's rules for outbound webhook targets.
#[derive(Clone, Debug, Default)]
pub struct TargetPolicy {
    /// `WEARLINK_ALLOW_LOOPBACK_TARGETS=1`: loopback addresses, and plain `http` to a loopback
    /// host (development and tests).
    pub allow_loopback: bool,
    /// `WEARLINK_OUTBOUND_ALLOW_CIDRS`: networks allowed whatever else they are.
    pub allow_cidrs: Vec<IpNet>,
}

/// Why a target is refused. The messages name the rule, never the address a name resolved to, so
/// they are safe to show the admin who registered the URL; the variants carry the address for logs.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TargetError {
    #[error("the target URL is not valid: {0}")]
    Invalid(String),
    #[error("the target URL must use https")]
    NotHttps,
    #[error("the target host does not resolve")]
    Unresolvable,
    #[error("the target address is a loopback address")]
    Loopback(IpAddr),
    #[error("the target address is unspecified (0.0.0.0 or ::)")]
    Unspecified(IpAddr),
    #[error("the target address is in a private network")]
    Private(IpAddr),
    #[error("the target address is link-local")]
    LinkLocal(IpAddr),
    #[error("the target address is a cloud metadata service")]
    Metadata(IpAddr),
    #[error("the target address is in the shared (carrier-grade NAT) range")]
    SharedAddress(IpAddr),
    #[error("the target address is a multicast address")]
    Multicast(IpAddr),
    #[error("the target address is a broadcast address")]
    Broadcast(IpAddr),
    #[error("the target address is reserved for special use")]
    Reserved(IpAddr),
}

/// The class of a refused address, before it is tied to the address that was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Loopback,
    Unspecified,
    Private,
    LinkLocal,
    Metadata,
    Shared,
    Multicast,
    Broadcast,
    Reserved,
}

impl Class {
    fn refuse(self, ip: IpAddr) -> TargetError {
        match self {
            Class::Loopback => TargetError::Loopback(ip),
            Class::Unspecified => TargetError::Unspecified(ip),
            Class::Private => TargetError::Private(ip),
            Class::LinkLocal => TargetError::LinkLocal(ip),
            Class::Metadata => TargetError::Metadata(ip),
            Class::Shared => TargetError::SharedAddress(ip),
            Class::Multicast => TargetError::Multicast(ip),
            Class::Broadcast => TargetError::Broadcast(ip),
            Class::Reserved => TargetError::Reserved(ip),
        }
    }
}

impl TargetPolicy {
    /// Parses `WEARLINK_OUTBOUND_ALLOW_CIDRS` ("10.1.0.0/16, fd00::/8"); a bare address means that
    /// one address. Empty entries are skipped. `Err` names the bad entry.
    pub fn parse_cidrs(raw: &str) -> Result<Vec<IpNet>, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .map(|net| net.trunc())
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "WEARLINK_OUTBOUND_ALLOW_CIDRS: `{entry}` is not a network (like 10.1.0.0/16 or fd00::/8)"
                        )
                    })
            })
            .collect()
    }

    /// Whether Wearlink may connect to this address (allowed CIDRs win over every refusal).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), TargetError> {
        if self.is_allowed_network(ip) {
            return Ok(());
        }
        match classify(ip) {
            None => Ok(()),
            Some(Class::Loopback) if self.allow_loopback => Ok(()),
            Some(class) => Err(class.refuse(ip)),
        }
    }

    /// Syntax and scheme rules, without DNS: an absolute http(s) URL with no user info and no
    /// fragment; `https`, or `http` only to a loopback host (a loopback IP literal or `localhost`)
    /// when `allow_loopback`. IP-literal hosts are checked with [`Self::check_ip`].
    pub fn check_url_syntax(&self, url: &str) -> Result<Url, TargetError> {
        let parsed = Url::parse(url).map_err(|e| TargetError::Invalid(e.to_string()))?;
        let host = match parsed.host() {
            Some(host) => host.to_owned(),
            None if matches!(parsed.scheme(), "http" | "https") => {
                return Err(TargetError::Invalid("it has no host".into()));
            }
            None => return Err(TargetError::NotHttps),
        };
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_loopback && is_loopback_host(&host) => {}
            _ => return Err(TargetError::NotHttps),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(TargetError::Invalid("it must not contain a user name or password".into()));
        }
        if parsed.fragment().is_some() {
            return Err(TargetError::Invalid("it must not contain a fragment (#…)".into()));
        }
        match host {
            Host::Ipv4(v4) => self.check_ip(IpAddr::V4(v4))?,
            Host::Ipv6(v6) => self.check_ip(IpAddr::V6(v6))?,
            Host::Domain(_) => {}
        }
        Ok(parsed)
    }

    /// [`Self::check_url_syntax`], then resolves the host (system resolver, port from the URL) and
    /// checks every address: `Err` if any address is refused or none resolves. A plain `http` URL
    /// must resolve to loopback addresses only.
    pub async fn check_url(&self, url: &str) -> Result<Url, TargetError> {
        let parsed = self.check_url_syntax(url)?;
        let Some(Host::Domain(domain)) = parsed.host() else {
            // An IP literal: check_url_syntax checked the one address there is.
            return Ok(parsed);
        };
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addrs = tokio::time::timeout(RESOLVE_TIMEOUT, resolve_checked(self, domain, port))
            .await
            .map_err(|_| TargetError::Unresolvable)??;
        if parsed.scheme() == "http" && !addrs.iter().all(|addr| is_loopback_ip(addr.ip())) {
            return Err(TargetError::NotHttps);
        }
        Ok(parsed)
    }

    /// A reqwest DNS resolver that resolves with the system resolver and fails for a name whose
    /// addresses include a refused one (the error is a [`TargetError`] in the source chain). Give
    /// it to the delivery client (`ClientBuilder::dns_resolver`) so the address connected to is
    /// the one checked, whatever the name resolves to by then (DNS rebinding).
    pub fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver { policy: self.clone() })
    }

    fn is_allowed_network(&self, ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allow_cidrs.iter().any(|net| net.contains(&ip) || embedded.is_some_and(|v4| net.contains(&v4)))
    }
}

/// A reqwest DNS resolver that refuses names resolving to addresses the policy refuses.
#[derive(Debug)]
pub struct GuardedResolver {
    policy: TargetPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts in the URL's port.
            let addrs = resolve_checked(&policy, &host, 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Resolves `host` with the system resolver; `Err` if nothing resolves or any address is refused.
async fn resolve_checked(policy: &TargetPolicy, host: &str, port: u16) -> Result<Vec<SocketAddr>, TargetError> {
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host((host, port)).await.map_err(|_| TargetError::Unresolvable)?.collect();
    if addrs.is_empty() {
        return Err(TargetError::Unresolvable);
    }
    for addr in &addrs {
        policy.check_ip(addr.ip())?;
    }
    Ok(addrs)
}

/// `localhost` or a loopback IP literal: the only hosts plain `http` may go to.
fn is_loopback_host(host: &Host<String>) -> bool {
    match host {
        Host::Domain(name) => name.eq_ignore_ascii_case("localhost") || name.eq_ignore_ascii_case("localhost."),
        Host::Ipv4(v4) => v4.is_loopback(),
        Host::Ipv6(v6) => is_loopback_ip(IpAddr::V6(*v6)),
    }
}

fn is_loopback_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// The class of an address Wearlink must not call, or `None` for a public address.
fn classify(ip: IpAddr) -> Option<Class> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(v4: Ipv4Addr) -> Option<Class> {
    let [a, b, c, _] = v4.octets();
    Some(if v4.is_unspecified() {
        Class::Unspecified
    } else if a == 0 {
        // 0.0.0.0/8, "this network" (RFC 791); Linux connects 0.x.y.z to the local host.
        Class::Reserved
    } else if v4.is_loopback() {
        Class::Loopback
    } else if v4.is_private() {
        Class::Private
    } else if v4 == Ipv4Addr::new(169, 254, 169, 254) || v4 == Ipv4Addr::new(100, 100, 100, 200) {
        // AWS/GCP/Azure/OpenStack metadata, and Alibaba Cloud's (inside 100.64/10).
        Class::Metadata
    } else if v4.is_link_local() {
        Class::LinkLocal
    } else if a == 100 && (b & 0xc0) == 64 {
        // 100.64.0.0/10, shared address space (RFC 6598); Ipv4Addr::is_shared is unstable.
        Class::Shared
    } else if a == 198 && (b & 0xfe) == 18 {
        // 198.18.0.0/15, benchmarking (RFC 2544); Ipv4Addr::is_benchmarking is unstable.
        Class::Reserved
    } else if v4.is_documentation() || (a == 192 && b == 0 && c == 0) {
        // Documentation ranges, and 192.0.0.0/24, IETF protocol assignments (RFC 6890).
        Class::Reserved
    } else if v4.is_broadcast() {
        Class::Broadcast
    } else if v4.is_multicast() {
        Class::Multicast
    } else if a >= 240 {
        // 240.0.0.0/4, reserved (RFC 1112); Ipv4Addr::is_reserved is unstable.
        Class::Reserved
    } else {
        return None;
    })
}

fn classify_v6(v6: Ipv6Addr) -> Option<Class> {
    let s = v6.segments();
    if v6.is_unspecified() {
        return Some(Class::Unspecified);
    }
    if v6.is_loopback() {
        return Some(Class::Loopback);
    }
    if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        // AWS's IPv6 metadata service (inside fc00::/7).
        return Some(Class::Metadata);
    }
    if let Some(v4) = embedded_ipv4(v6) {
        // Reaches (or is routed for) an IPv4 address: judge that address.
        return classify_v4(v4);
    }
    Some(if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        // 64:ff9b:1::/48, local-use NAT64 (RFC 8215): the embedding depends on the local prefix
        // length, so refuse it whole.
        Class::Reserved
    } else if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfec0 {
        // fc00::/7 unique local (Ipv6Addr::is_unique_local is unstable), and the deprecated
        // site-local fec0::/10.
        Class::Private
    } else if (s[0] & 0xffc0) == 0xfe80 {
        // fe80::/10 (Ipv6Addr::is_unicast_link_local is unstable).
        Class::LinkLocal
    } else if v6.is_multicast() {
        Class::Multicast
    } else if (s[0] == 0x2001 && s[1] == 0xdb8) || (s[0] & 0xfff0) == 0x3ff0 {
        // Documentation: 2001:db8::/32 and 3fff::/20 (RFC 9637).
        Class::Reserved
    } else if s[0] == 0x2001 && (s[1] == 0 || (s[1] == 2 && s[2] == 0)) {
        // 2001::/32 Teredo (embeds an obfuscated IPv4 address) and 2001:2::/48 benchmarking.
        Class::Reserved
    } else if (s[0] & 0xe000) != 0x2000 {
        // Outside 2000::/3, the only global unicast space in use (e.g. 100::/64 discard-only).
        Class::Reserved
    } else {
        return None;
    })
}

/// The IPv4 address an IPv6 address stands for, by the forms that carry one in a fixed place.
/// Call after ruling out `::` and `::1`, which the IPv4-compatible form would otherwise take.
fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    let last32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = v6.to_ipv4_mapped() {
        // ::ffff:a.b.c.d, IPv4-mapped.
        Some(v4)
    } else if s[..6] == [0; 6] {
        // ::a.b.c.d, IPv4-compatible (deprecated, RFC 4291).
        Some(last32)
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // 64:ff9b::/96, the NAT64 well-known prefix (RFC 6052).
        Some(last32)
    } else if s[0] == 0x2002 {
        // 2002::/16, 6to4 (RFC 3056): the IPv4 address is bits 16..48.
        Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A refusal, before it is given the address checked.
    type Refusal = fn(IpAddr) -> TargetError;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn strict() -> TargetPolicy {
        TargetPolicy::default()
    }

    fn loopback_ok() -> TargetPolicy {
        TargetPolicy { allow_loopback: true, ..TargetPolicy::default() }
    }

    #[test]
    fn check_ip_refuses_each_class() {
        use TargetError as E;
        let cases: &[(&str, Refusal)] = &[
            ("127.0.0.1", E::Loopback),
            ("127.255.1.2", E::Loopback),
            ("::1", E::Loopback),
            ("0.0.0.0", E::Unspecified),
            ("::", E::Unspecified),
            ("0.1.2.3", E::Reserved),
            ("10.0.0.1", E::Private),
            ("10.255.255.255", E::Private),
            ("172.16.0.1", E::Private),
            ("172.31.255.254", E::Private),
            ("192.168.1.1", E::Private),
            ("fc00::1", E::Private),
            ("fd12:3456::1", E::Private),
            ("fec0::1", E::Private),
            ("169.254.0.1", E::LinkLocal),
            ("169.254.170.2", E::LinkLocal),
            ("fe80::1", E::LinkLocal),
            ("febf::1", E::LinkLocal),
            ("169.254.169.254", E::Metadata),
            ("fd00:ec2::254", E::Metadata),
            ("100.100.100.200", E::Metadata),
            ("100.64.0.1", E::SharedAddress),
            ("100.127.255.254", E::SharedAddress),
            ("198.18.0.1", E::Reserved),
            ("198.19.255.254", E::Reserved),
            ("192.0.2.1", E::Reserved),
            ("198.51.100.1", E::Reserved),
            ("203.0.113.1", E::Reserved),
            ("192.0.0.1", E::Reserved),
            ("2001:db8::1", E::Reserved),
            ("3fff::1", E::Reserved),
            ("2001::1", E::Reserved),
            ("2001:2::1", E::Reserved),
            ("100::1", E::Reserved),
            ("64:ff9b:1::a00:1", E::Reserved),
            ("224.0.0.1", E::Multicast),
            ("239.255.255.250", E::Multicast),
            ("ff02::1", E::Multicast),
            ("255.255.255.255", E::Broadcast),
            ("240.0.0.1", E::Reserved),
            ("250.1.2.3", E::Reserved),
        ];
        for (addr, expected) in cases {
            let addr = ip(addr);
            assert_eq!(strict().check_ip(addr), Err(expected(addr)), "{addr}");
        }
    }

    #[test]
    fn check_ip_allows_public_addresses() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "169.253.255.255",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:1.1.1.1",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(strict().check_ip(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn embedded_ipv4_forms_are_judged_by_their_ipv4_address() {
        use TargetError as E;
        let cases: &[(&str, Refusal)] = &[
            ("::ffff:10.0.0.1", E::Private),
            ("::ffff:127.0.0.1", E::Loopback),
            ("::ffff:169.254.169.254", E::Metadata),
            ("::ffff:0.0.0.0", E::Unspecified),
            ("::10.0.0.1", E::Private),
            ("::169.254.169.254", E::Metadata),
            ("64:ff9b::a00:1", E::Private),
            ("64:ff9b::7f00:1", E::Loopback),
            ("64:ff9b::a9fe:a9fe", E::Metadata),
            ("2002:a00:1::1", E::Private),
            ("2002:c0a8:101::", E::Private),
            ("2002:a9fe:a9fe::1", E::Metadata),
        ];
        for (addr, expected) in cases {
            let addr = ip(addr);
            assert_eq!(strict().check_ip(addr), Err(expected(addr)), "{addr}");
        }
    }

    #[test]
    fn allow_loopback_allows_only_loopback() {
        let policy = loopback_ok();
        for addr in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(policy.check_ip(ip(addr)), Ok(()), "{addr}");
        }
        for addr in ["10.0.0.1", "169.254.169.254", "0.0.0.0", "::", "fe80::1"] {
            assert!(policy.check_ip(ip(addr)).is_err(), "{addr}");
        }
    }

    #[test]
    fn allowed_cidrs_win_over_every_refusal() {
        let policy = TargetPolicy {
            allow_cidrs: TargetPolicy::parse_cidrs("10.1.0.0/16, fd00::/8, 169.254.169.254, 127.0.0.0/8").unwrap(),
            ..TargetPolicy::default()
        };
        for addr in ["10.1.2.3", "fd00::5", "fd00:ec2::254", "169.254.169.254", "127.0.0.1", "::ffff:10.1.0.9"] {
            assert_eq!(policy.check_ip(ip(addr)), Ok(()), "{addr}");
        }
        // Only those networks.
        assert_eq!(policy.check_ip(ip("10.2.0.1")), Err(TargetError::Private(ip("10.2.0.1"))));
        assert_eq!(policy.check_ip(ip("fc00::1")), Err(TargetError::Private(ip("fc00::1"))));
        assert_eq!(policy.check_ip(ip("169.254.169.253")), Err(TargetError::LinkLocal(ip("169.254.169.253"))));
        assert_eq!(policy.check_ip(ip("::ffff:10.2.0.1")), Err(TargetError::Private(ip("::ffff:10.2.0.1"))));
    }

    #[test]
    fn parse_cidrs_accepts_lists_and_names_the_bad_entry() {
        assert_eq!(TargetPolicy::parse_cidrs("").unwrap(), vec![]);
        assert_eq!(TargetPolicy::parse_cidrs(" , ").unwrap(), vec![]);
        let nets = TargetPolicy::parse_cidrs("10.1.0.0/16, fd00::/8,192.168.5.7/24 ,10.9.9.9").unwrap();
        let expected: Vec<IpNet> =
            ["10.1.0.0/16", "fd00::/8", "192.168.5.0/24", "10.9.9.9/32"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(nets, expected);
        let err = TargetPolicy::parse_cidrs("10.1.0.0/16, 10.0.0.0/33").unwrap_err();
        assert!(err.contains("`10.0.0.0/33`"), "{err}");
        let err = TargetPolicy::parse_cidrs("internal.example").unwrap_err();
        assert!(err.contains("`internal.example`"), "{err}");
    }

    #[test]
    fn check_url_syntax_rules() {
        let strict = strict();
        let dev = loopback_ok();
        assert_eq!(strict.check_url_syntax("http://example.com/hook"), Err(TargetError::NotHttps));
        assert_eq!(dev.check_url_syntax("http://example.com/hook"), Err(TargetError::NotHttps));
        assert_eq!(strict.check_url_syntax("ftp://example.com/hook"), Err(TargetError::NotHttps));
        assert_eq!(strict.check_url_syntax("mailto:admin@example.com"), Err(TargetError::NotHttps));
        let ok = strict.check_url_syntax("https://example.com:8443/hook?x=1").unwrap();
        assert_eq!(ok.as_str(), "https://example.com:8443/hook?x=1");

        assert_eq!(strict.check_url_syntax("http://localhost:8080/hook"), Err(TargetError::NotHttps));
        assert!(dev.check_url_syntax("http://localhost:8080/hook").is_ok());
        assert!(dev.check_url_syntax("http://LOCALHOST:8080/hook").is_ok());
        assert!(dev.check_url_syntax("http://127.0.0.1:8080/hook").is_ok());
        assert!(dev.check_url_syntax("http://[::1]:8080/hook").is_ok());
        assert_eq!(strict.check_url_syntax("http://127.0.0.1:8080/"), Err(TargetError::NotHttps));
        assert_eq!(strict.check_url_syntax("https://127.0.0.1/"), Err(TargetError::Loopback(ip("127.0.0.1"))));
        assert_eq!(strict.check_url_syntax("https://[::1]/"), Err(TargetError::Loopback(ip("::1"))));
        // http to a non-loopback host stays refused, even one the operator allows.
        let allowed =
            TargetPolicy { allow_loopback: true, allow_cidrs: TargetPolicy::parse_cidrs("10.0.0.0/8").unwrap() };
        assert_eq!(allowed.check_url_syntax("http://10.0.0.1/"), Err(TargetError::NotHttps));
        assert!(allowed.check_url_syntax("https://10.0.0.1/").is_ok());

        assert!(matches!(strict.check_url_syntax("https://user:pw@example.com/"), Err(TargetError::Invalid(_))));
        assert!(matches!(strict.check_url_syntax("https://user@example.com/"), Err(TargetError::Invalid(_))));
        assert!(matches!(strict.check_url_syntax("https://:pw@example.com/"), Err(TargetError::Invalid(_))));
        assert!(matches!(strict.check_url_syntax("https://example.com/#frag"), Err(TargetError::Invalid(_))));
        assert!(matches!(strict.check_url_syntax("/relative/hook"), Err(TargetError::Invalid(_))));
        assert!(matches!(strict.check_url_syntax("https://"), Err(TargetError::Invalid(_))));
        assert!(matches!(strict.check_url_syntax("not a url"), Err(TargetError::Invalid(_))));

        assert_eq!(
            strict.check_url_syntax("https://169.254.169.254/latest/meta-data/"),
            Err(TargetError::Metadata(ip("169.254.169.254")))
        );
        assert_eq!(
            strict.check_url_syntax("https://[::ffff:10.0.0.1]/"),
            Err(TargetError::Private(ip("::ffff:10.0.0.1")))
        );
        // The URL parser normalises odd IPv4 spellings, so they cannot slip past.
        assert_eq!(strict.check_url_syntax("https://0x7f.1/"), Err(TargetError::Loopback(ip("127.0.0.1"))));
        assert_eq!(strict.check_url_syntax("https://2130706433/"), Err(TargetError::Loopback(ip("127.0.0.1"))));
        assert_eq!(
            strict.check_url_syntax("https://[fd00:ec2::254]/"),
            Err(TargetError::Metadata(ip("fd00:ec2::254")))
        );
    }

    #[test]
    fn messages_do_not_show_the_address() {
        let err = TargetError::Private(ip("10.20.30.40"));
        assert!(!err.to_string().contains("10.20.30.40"), "{err}");
    }

    #[tokio::test]
    async fn check_url_resolves_and_checks_every_address() {
        assert_eq!(strict().check_url("https://localhost:1/").await, Err(TargetError::Loopback(ip("127.0.0.1"))));
        assert!(loopback_ok().check_url("https://localhost:1/").await.is_ok());
        assert!(loopback_ok().check_url("http://localhost:1/").await.is_ok());
        assert_eq!(strict().check_url("http://localhost:1/").await, Err(TargetError::NotHttps));
        // IP literals need no resolver.
        assert_eq!(
            strict().check_url("https://169.254.169.254/").await,
            Err(TargetError::Metadata(ip("169.254.169.254")))
        );
        assert!(strict().check_url("https://1.1.1.1/").await.is_ok());
    }

    #[tokio::test]
    async fn resolver_guards_the_delivery_client() {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || {
                let counter = Arc::clone(&counter);
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let url = format!("http://localhost:{port}/");

        let client = |policy: &TargetPolicy| {
            reqwest::Client::builder().dns_resolver(policy.resolver()).no_proxy().build().unwrap()
        };

        let err = client(&strict()).get(&url).send().await.unwrap_err();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        let mut refusal = None;
        while let Some(e) = source {
            if let Some(target) = e.downcast_ref::<TargetError>() {
                refusal = Some(target.clone());
            }
            source = e.source();
        }
        assert_eq!(refusal, Some(TargetError::Loopback(ip("127.0.0.1"))), "{err:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 0);

        let response = client(&loopback_ok()).get(&url).send().await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        assert_eq!(response.text().await.unwrap(), "ok");
        assert_eq!(hits.load(Ordering::SeqCst), 1);

        server.abort();
    }
}
