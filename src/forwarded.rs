//! The forwarding headers the upstream receives. From a trusted proxy, `X-Forwarded-For` is
//! appended to (the proxy's entries are facts); from anyone else, what the client claimed about
//! its address, scheme or host is replaced by what sluice saw, so an application that reads the
//! leftmost `X-Forwarded-For` entry, `X-Real-IP`, `Forwarded` or `X-Forwarded-Proto`/`-Host` is
//! never handed a spoofed value (Traefik's default).

use http::header::{HeaderName, FORWARDED, HOST};
use http::{HeaderMap, HeaderValue};
use std::net::IpAddr;

// Parsed once: a lookup by a `&str` name parses and validates it on every request.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Appends `ip` to `out` as text, without the formatting machinery for the common IPv4 case.
pub fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(_) => out.extend_from_slice(ip.to_string().as_bytes()),
    }
}

/// The header changes for a request from `peer` (trusted or not) carrying `headers`: each
/// (name, value) replaces what was there; a `None` value removes the header.
pub fn rewrite(
    peer: IpAddr,
    trusted: bool,
    headers: &HeaderMap,
) -> Vec<(&'static str, Option<HeaderValue>)> {
    let mut out = Vec::with_capacity(1);
    let mut forwarded = Vec::with_capacity(48);
    if trusted {
        // Appended as bytes: what earlier hops wrote reaches the upstream as it was.
        for prior in headers.get_all(&X_FORWARDED_FOR) {
            forwarded.extend_from_slice(prior.as_bytes());
            forwarded.extend_from_slice(b", ");
        }
    }
    write_ip(&mut forwarded, peer);
    out.push(("X-Forwarded-For", HeaderValue::from_bytes(&forwarded).ok()));
    if trusted {
        return out;
    }
    // Only what the client sent is replaced: a request without these headers costs nothing.
    // One pass over the request's names costs less than four lookups, each hashing a name.
    let (mut real_ip, mut forwarded_by, mut proto, mut host) = (false, false, false, false);
    for name in headers.keys() {
        real_ip |= *name == X_REAL_IP;
        forwarded_by |= *name == FORWARDED;
        proto |= *name == X_FORWARDED_PROTO;
        host |= *name == X_FORWARDED_HOST;
    }
    if !(real_ip || forwarded_by || proto || host) {
        return out;
    }
    let mut ip = Vec::with_capacity(40);
    write_ip(&mut ip, peer);
    if real_ip {
        out.push(("X-Real-IP", HeaderValue::from_bytes(&ip).ok()));
    }
    if forwarded_by {
        let node = match peer {
            IpAddr::V4(_) => String::from_utf8_lossy(&ip).into_owned(),
            IpAddr::V6(_) => format!("\"[{}]\"", String::from_utf8_lossy(&ip)),
        };
        let value = HeaderValue::from_str(&format!("for={node};proto=http")).ok();
        out.push(("Forwarded", value));
    }
    if proto {
        out.push(("X-Forwarded-Proto", Some(HeaderValue::from_static("http"))));
    }
    if host {
        out.push(("X-Forwarded-Host", headers.get(HOST).cloned()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn ips_are_written_as_text() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
        ] {
            let mut out = Vec::new();
            write_ip(&mut out, ip.parse().unwrap());
            assert_eq!(out, ip.as_bytes());
        }
    }

    #[test]
    fn a_trusted_proxy_is_appended_to_and_anyone_else_is_replaced() {
        let peer: IpAddr = "10.0.0.7".parse().unwrap();
        let spoofed = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("host", "api.example"),
        ]);
        let trusted = rewrite(peer, true, &spoofed);
        let v = |s: &'static str| Some(HeaderValue::from_static(s));
        assert_eq!(trusted, [("X-Forwarded-For", v("1.2.3.4, 10.0.0.7"))]);
        let untrusted = rewrite(peer, false, &spoofed);
        assert_eq!(
            untrusted,
            [
                ("X-Forwarded-For", v("10.0.0.7")),
                ("X-Real-IP", v("10.0.0.7")),
                ("Forwarded", v("for=10.0.0.7;proto=http")),
                ("X-Forwarded-Proto", v("http")),
                ("X-Forwarded-Host", v("api.example")),
            ]
        );
        let v6 = rewrite("2001:db8::1".parse().unwrap(), false, &spoofed);
        assert_eq!(v6[2].1, v("for=\"[2001:db8::1]\";proto=http"));
        let no_host = rewrite(
            peer,
            false,
            &headers(&[("x-forwarded-host", "evil.example")]),
        );
        assert_eq!(no_host[1], ("X-Forwarded-Host", None), "removed");
        let plain = rewrite(peer, false, &headers(&[("host", "api.example")]));
        assert_eq!(
            plain.len(),
            1,
            "nothing claimed, nothing added but X-Forwarded-For"
        );
    }
}
