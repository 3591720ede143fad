//! Requests that never spend a quota: from listed networks, by listed callers, with listed
//! methods, and CORS preflights. They are forwarded uncounted (`decision="exempt"`).

use crate::identity::Cidr;
use http::{HeaderMap, Method};
use std::collections::HashSet;
use std::net::IpAddr;

/// One route's exemptions: the global `exempt:` with the route's own added to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exempt {
    /// Client networks (the client IP after the trusted-proxy rules).
    pub cidrs: Vec<Cidr>,
    /// Callers, in the form a request names them (hashed when identities are hashed).
    pub callers: HashSet<Vec<u8>>,
    /// Upper-case method names.
    pub methods: Vec<Method>,
    /// An `OPTIONS` request with `Access-Control-Request-Method` is a CORS preflight.
    pub preflight: bool,
}

impl Exempt {
    /// What applies when nothing is configured: CORS preflights only.
    pub fn default_global() -> Exempt {
        Exempt {
            preflight: true,
            ..Exempt::default()
        }
    }

    /// Whether the request is exempt by what it is (method, preflight, network), before its
    /// caller is read. `client_ip` is asked only when networks are listed.
    pub fn by_request(
        &self,
        method: &Method,
        headers: &HeaderMap,
        client_ip: impl FnOnce() -> Option<IpAddr>,
    ) -> bool {
        if self.methods.contains(method) {
            return true;
        }
        if self.preflight
            && method == Method::OPTIONS
            && headers.contains_key("access-control-request-method")
        {
            return true;
        }
        !self.cidrs.is_empty()
            && client_ip().is_some_and(|ip| self.cidrs.iter().any(|c| c.contains(ip)))
    }

    /// Whether `caller` is listed.
    pub fn by_caller(&self, caller: Option<&[u8]>) -> bool {
        !self.callers.is_empty() && caller.is_some_and(|c| self.callers.contains(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn preflights_methods_networks_and_callers() {
        let e = Exempt {
            cidrs: vec![Cidr::parse("10.0.0.0/8").unwrap()],
            callers: HashSet::from([b"monitor".to_vec()]),
            methods: vec![Method::from_bytes(b"PURGE").unwrap()],
            preflight: true,
        };
        let none = HeaderMap::new();
        let outside = || Some("192.0.2.1".parse().unwrap());
        let preflight = headers(&[("access-control-request-method", "POST")]);
        assert!(e.by_request(&Method::OPTIONS, &preflight, outside));
        assert!(
            !e.by_request(&Method::OPTIONS, &none, outside),
            "a plain OPTIONS is an ordinary request"
        );
        assert!(!e.by_request(&Method::POST, &preflight, outside));
        assert!(e.by_request(&Method::from_bytes(b"PURGE").unwrap(), &none, outside));
        assert!(e.by_request(&Method::GET, &none, || Some("10.1.2.3".parse().unwrap())));
        assert!(e.by_request(&Method::GET, &none, || Some(
            "::ffff:10.1.2.3".parse().unwrap()
        )));
        assert!(!e.by_request(&Method::GET, &none, outside));
        assert!(!e.by_request(&Method::GET, &none, || None));
        assert!(e.by_caller(Some(b"monitor")));
        assert!(!e.by_caller(Some(b"monitor2")));
        assert!(!e.by_caller(None));
        let off = Exempt {
            preflight: false,
            ..Exempt::default()
        };
        assert!(!off.by_request(&Method::OPTIONS, &preflight, || panic!(
            "no networks listed"
        )));
    }
}
