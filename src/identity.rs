//! Who is calling: the first identity source present in the request names the caller.

use http::header::{HeaderMap, HeaderName};
use percent_encoding::percent_decode;
use std::net::IpAddr;

/// One place a caller's identity can come from, tried in the configured order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// A query parameter, form-decoded (`%41` and `+` are decoded as browsers encode them).
    Query(String),
    /// A request header, trimmed.
    Header(HeaderName),
    /// The client's IP address, read through trusted proxies only (see [`TrustedProxies`]).
    ClientIp,
}

/// An IP network in CIDR form, e.g. `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix`, or a bare address as a single host.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let network: IpAddr = addr.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
            Some(_) => return None,
            None => max,
        };
        (prefix <= max).then_some(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (whole, rest) = ((prefix / 8) as usize, prefix % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

/// IPv4-mapped IPv6 peers (`::ffff:10.0.0.1`, as a dual-stack socket reports them) are IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The proxies whose `X-Forwarded-For` / `X-Real-IP` headers are believed.
///
/// Empty (the default) trusts nobody: the client IP is the TCP peer, so a client that sends
/// its own `X-Forwarded-For` cannot choose its identity. When the peer is trusted, the client
/// is the rightmost `X-Forwarded-For` address that is not itself trusted, as nginx's
/// `real_ip_recursive on` decides: every hop appends, so only entries added by trusted hops
/// are facts, and the first untrusted one from the right is the last one nobody could forge.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Vec<Cidr>);

impl TrustedProxies {
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client address for a request from `peer` carrying `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut current = canonical(peer);
        if !self.trusts(current) {
            return current;
        }
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if forwarded.is_empty() {
            let real = headers.get("x-real-ip").and_then(|v| v.to_str().ok());
            return real.and_then(parse_ip).unwrap_or(current);
        }
        for hop in forwarded.iter().rev() {
            // An entry that is not an address cannot be believed: stop at the last known hop.
            let Some(ip) = parse_ip(hop) else {
                return current;
            };
            current = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        current
    }
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.split_once(']'))
        .map_or(text, |(ip, _)| ip);
    bare.parse().ok().map(canonical)
}

/// Reads the caller's identity from a request, trying each configured source in order.
#[derive(Debug, Clone)]
pub struct IdentityExtractor {
    pub sources: Vec<IdentitySource>,
    pub trusted: TrustedProxies,
}

impl IdentityExtractor {
    /// The caller's identity, or `None` when no source is present (an anonymous caller).
    ///
    /// The value is the same whatever source it came from, so `?user_id=alice` and
    /// `x-user-id: alice` are one caller. Empty values count as absent.
    pub fn caller(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Option<Vec<u8>> {
        self.sources.iter().find_map(|source| match source {
            IdentitySource::Query(name) => query.and_then(|q| query_param(q, name)),
            IdentitySource::Header(name) => headers
                .get(name)
                .map(|v| v.as_bytes().trim_ascii().to_vec())
                .filter(|v| !v.is_empty()),
            IdentitySource::ClientIp => {
                peer.map(|p| self.trusted.client_ip(p, headers).to_string().into_bytes())
            }
        })
    }
}

/// The request id a trusted load balancer set (`X-Request-Id`, e.g. nginx's `$request_id`).
///
/// Only a trusted peer's id is used: the limiter admits a repeated id without counting it
/// (that is what makes a load balancer's retry exact), so a client choosing its own id could
/// replay one forever. Ids must be 1-64 characters of `[A-Za-z0-9._-]`.
pub fn request_id<'a>(
    trusted: &TrustedProxies,
    peer: Option<IpAddr>,
    headers: &'a HeaderMap,
) -> Option<&'a str> {
    if !peer.is_some_and(|p| trusted.trusts(p)) {
        return None;
    }
    let id = headers.get("x-request-id")?.to_str().ok()?;
    let valid = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    valid.then_some(id)
}

/// The first non-empty value of the query parameter `name`, form-decoded.
pub fn query_param(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(k) == name.as_bytes())
            .then(|| form_decode(v))
            .filter(|v| !v.is_empty())
    })
}

fn form_decode(text: &str) -> Vec<u8> {
    if !text.contains(['+', '%']) {
        return text.as_bytes().to_vec();
    }
    let spaced = text.replace('+', " ");
    percent_decode(spaced.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn trusted(cidrs: &[&str]) -> TrustedProxies {
        TrustedProxies(cidrs.iter().map(|c| Cidr::parse(c).unwrap()).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn extractor(trust: &[&str]) -> IdentityExtractor {
        IdentityExtractor {
            sources: vec![
                IdentitySource::Query("user_id".into()),
                IdentitySource::Header(HeaderName::from_static("x-user-id")),
                IdentitySource::ClientIp,
            ],
            trusted: trusted(trust),
        }
    }

    #[test]
    fn sources_are_tried_in_order() {
        let e = extractor(&[]);
        let h = headers(&[("x-user-id", "bob")]);
        let peer = Some(ip("192.0.2.7"));
        assert_eq!(
            e.caller(Some("user_id=alice"), &h, peer),
            Some(b"alice".to_vec())
        );
        assert_eq!(e.caller(Some("other=1"), &h, peer), Some(b"bob".to_vec()));
        assert_eq!(
            e.caller(None, &HeaderMap::new(), peer),
            Some(b"192.0.2.7".to_vec())
        );
    }

    #[test]
    fn empty_values_count_as_absent() {
        let e = extractor(&[]);
        let h = headers(&[("x-user-id", "  ")]);
        let got = e.caller(Some("user_id=&x=1"), &h, Some(ip("192.0.2.7")));
        assert_eq!(got, Some(b"192.0.2.7".to_vec()));
        assert_eq!(e.caller(Some("user_id="), &h, None), None);
    }

    #[test]
    fn query_values_are_form_decoded() {
        assert_eq!(
            query_param("a=1&user_id=j%C3%B6rg+x", "user_id"),
            Some("jörg x".as_bytes().to_vec())
        );
        assert_eq!(query_param("user%5Fid=z", "user_id"), Some(b"z".to_vec()));
        assert_eq!(query_param("user_idx=z", "user_id"), None);
        assert_eq!(query_param("user_id", "user_id"), None);
        assert_eq!(
            query_param("user_id=&user_id=second", "user_id"),
            Some(b"second".to_vec())
        );
    }

    #[test]
    fn untrusted_peers_cannot_pick_their_ip() {
        let t = trusted(&[]);
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
        ]);
        assert_eq!(t.client_ip(ip("192.0.2.7"), &h), ip("192.0.2.7"));
    }

    #[test]
    fn trusted_peers_give_the_rightmost_untrusted_hop() {
        let t = trusted(&["127.0.0.0/8", "10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.1.2.3")]);
        assert_eq!(t.client_ip(ip("127.0.0.1"), &h), ip("203.0.113.9"));
        // Split across two header lines, in order.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(t.client_ip(ip("127.0.0.1"), &h), ip("203.0.113.9"));
        // Every hop trusted: the leftmost is the client.
        let h = headers(&[("x-forwarded-for", "10.0.0.5, 10.0.0.6")]);
        assert_eq!(t.client_ip(ip("127.0.0.1"), &h), ip("10.0.0.5"));
        // Garbage stops the walk at the last believable hop.
        let h = headers(&[("x-forwarded-for", "203.0.113.9, nonsense, 10.0.0.6")]);
        assert_eq!(t.client_ip(ip("127.0.0.1"), &h), ip("10.0.0.6"));
        // No X-Forwarded-For: X-Real-IP from a trusted peer.
        let h = headers(&[("x-real-ip", "203.0.113.9")]);
        assert_eq!(t.client_ip(ip("127.0.0.1"), &h), ip("203.0.113.9"));
        assert_eq!(
            t.client_ip(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn request_ids_count_only_from_trusted_peers() {
        let t = trusted(&["127.0.0.1"]);
        let h = headers(&[("x-request-id", "0f3a9c")]);
        assert_eq!(request_id(&t, Some(ip("127.0.0.1")), &h), Some("0f3a9c"));
        assert_eq!(request_id(&t, Some(ip("192.0.2.1")), &h), None);
        assert_eq!(request_id(&t, None, &h), None);
        let bad = headers(&[("x-request-id", "a b")]);
        assert_eq!(request_id(&t, Some(ip("127.0.0.1")), &bad), None);
        let long = headers(&[("x-request-id", &"a".repeat(65))]);
        assert_eq!(request_id(&t, Some(ip("127.0.0.1")), &long), None);
    }

    #[test]
    fn cidrs_parse_and_match() {
        assert!(Cidr::parse("10.0.0.0/8")
            .unwrap()
            .contains(ip("10.200.1.1")));
        assert!(!Cidr::parse("10.0.0.0/8").unwrap().contains(ip("11.0.0.1")));
        assert!(Cidr::parse("172.16.0.0/12")
            .unwrap()
            .contains(ip("172.31.255.255")));
        assert!(!Cidr::parse("172.16.0.0/12")
            .unwrap()
            .contains(ip("172.32.0.0")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains(ip("::ffff:127.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "x",
            "::1/129",
            "10.0.0.0/",
            "10.0.0.0/-1",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }
}
