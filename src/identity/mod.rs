//! Who is calling: the first identity source present in the request names the caller.

mod hash;
pub mod jwt;

pub use self::hash::CallerHash;
pub use self::jwt::{Jwt, TokenError};
use crate::limiter::Part;
use http::header::{HeaderMap, HeaderName};
use percent_encoding::percent_decode;
use std::net::IpAddr;
use std::sync::Arc;

/// One place a caller's identity can come from, tried in the configured order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// A query parameter, form-decoded (`%41` and `+` are decoded as browsers encode them).
    Query(String),
    /// A request header, trimmed.
    Header(HeaderName),
    /// The client's IP address, read through trusted proxies only (see [`TrustedProxies`]).
    ClientIp,
    /// An API key in a request header, trimmed: a credential (hashed by default).
    ApiKey(HeaderName),
    /// The token of `Authorization: Bearer <token>`: a credential (hashed by default).
    Bearer,
    /// A claim of a verified token (`Authorization: Bearer`, or a header of its own).
    Jwt(Arc<Jwt>),
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("jwt")
    }
}

/// Two `jwt` sources are one when they are the same built source.
impl PartialEq for Jwt {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Jwt {}

impl IdentitySource {
    /// Whether the value is a credential, which must never be stored as sent.
    pub fn is_credential(&self) -> bool {
        matches!(self, IdentitySource::ApiKey(_) | IdentitySource::Bearer)
    }
}

/// An IP network in CIDR form, e.g. `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix`, or a bare address as a single host.
    ///
    /// An IPv4-mapped network (`::ffff:10.0.0.0/104`) is stored as the IPv4 network it names
    /// (`10.0.0.0/8`), because peers are compared in their IPv4 form: left as IPv6 it would
    /// never match anyone.
    pub fn parse(text: &str) -> Result<Cidr, &'static str> {
        const HINT: &str = "use e.g. 10.0.0.0/8 or ::1/128";
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let network: IpAddr = addr.parse().map_err(|_| HINT)?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = match prefix {
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| HINT)?
            }
            Some(_) => return Err(HINT),
            None => max,
        };
        if prefix > max {
            return Err(HINT);
        }
        match network {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                let v4 = v6.to_ipv4_mapped().map(IpAddr::V4).ok_or(HINT)?;
                if prefix < 96 {
                    return Err("an IPv4-mapped network needs a prefix of at least /96");
                }
                Ok(Cidr {
                    network: v4,
                    prefix: prefix - 96,
                })
            }
            _ => Ok(Cidr { network, prefix }),
        }
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
    ///
    /// Every `X-Forwarded-For` line is read, in order, entry by entry (as bytes: a line with a
    /// byte that is not ASCII is still read). Walking from the right, an entry that is not an
    /// address (`v4`, `v4:port`, `v6`, `[v6]`, `[v6]:port`) ends the walk at the last believed
    /// hop, as nginx's `real_ip_recursive` does. `X-Real-IP` is read only when no
    /// `X-Forwarded-For` line is present.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut current = canonical(peer);
        if !self.trusts(current) {
            return current;
        }
        let mut lines = headers.get_all("x-forwarded-for").iter().peekable();
        if lines.peek().is_none() {
            let real = headers.get("x-real-ip").map(|v| v.as_bytes());
            return real.and_then(parse_forwarded_ip).unwrap_or(current);
        }
        let entries: Vec<&[u8]> = lines
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|e| !e.is_empty())
            .collect();
        for hop in entries.iter().rev() {
            // An entry that is not an address cannot be believed: stop at the last known hop.
            let Some(ip) = parse_forwarded_ip(hop) else {
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

/// One `X-Forwarded-For` entry: an address, optionally with a port (`203.0.113.9:4711`,
/// `[2001:db8::1]:4711`); IPv4-mapped addresses in their IPv4 form.
pub fn parse_forwarded_ip(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry.trim_ascii()).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => {
            let (v6, after) = rest.split_once(']')?;
            match after {
                "" => (v6, None),
                _ => (v6, Some(after.strip_prefix(':')?)),
            }
        }
        None => {
            let (v4, port) = text.rsplit_once(':')?;
            (v4, Some(port))
        }
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok()
    });
    let ip: IpAddr = host.parse().ok()?;
    let bracketed_v6 = text.starts_with('[') == ip.is_ipv6();
    (port_ok && bracketed_v6).then(|| canonical(ip))
}

/// A caller, and the verified claims of the token that named it (when a `jwt` source did).
pub type CallerAndClaims = (Vec<u8>, Option<Arc<serde_json::Value>>);

/// What a route does with a request that names no caller (`on_missing_identity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMissingIdentity {
    /// One shared anonymous caller (the default, and every earlier version's behaviour).
    #[default]
    Anonymous,
    /// The client IP (after the trusted-proxy rules) names the caller.
    ClientIp,
    /// 401 `{"error":"identity_required"}`.
    Reject,
    /// Forwarded unlimited, counted as `decision="unidentified"`.
    Skip,
}

/// Why a caller's identity is refused (the request gets 400 and is never counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityError {
    /// Longer than `server.max_identity_bytes` after decoding.
    TooLong { max_bytes: usize },
    /// A control character (0x00-0x1F, 0x7F) after decoding.
    Invalid,
    /// A token that is present but not valid (401 `invalid_token`).
    Token(TokenError),
}

/// Reads the caller's identity from a request, trying each configured source in order.
#[derive(Debug, Clone)]
pub struct IdentityExtractor {
    pub sources: Vec<IdentitySource>,
    pub trusted: TrustedProxies,
    /// Longest identity accepted, in bytes after decoding (`server.max_identity_bytes`);
    /// a hashed identity is stored in 64 bytes whatever it was, and is not bounded by it.
    pub max_bytes: usize,
    /// How the identity becomes the caller (`identity_hash`).
    pub hash: CallerHash,
}

impl IdentityExtractor {
    /// The caller's identity, or `None` when no source is present (an anonymous caller).
    ///
    /// The value is the same whatever source it came from, so `?user_id=alice` and
    /// `x-user-id: alice` are one caller. Empty values count as absent. Every other byte
    /// sequence is its own caller, unnormalised (Unicode NFC and NFD spellings are two
    /// callers), except that one longer than `max_bytes` or holding a control character is
    /// refused: it is never truncated into someone else's quota nor stored.
    pub fn caller(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Option<Vec<u8>>, IdentityError> {
        self.caller_and_claims(query, headers, peer)
            .map(|found| found.map(|(caller, _)| caller))
    }

    /// Like [`IdentityExtractor::caller`], with the verified claims of the token when a `jwt`
    /// source named the caller (a plan may be chosen by one of them).
    pub fn caller_and_claims(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Option<CallerAndClaims>, IdentityError> {
        for source in &self.sources {
            let mut claims = None;
            let found = match source {
                IdentitySource::Query(name) => query.and_then(|q| query_param(q, name)),
                IdentitySource::Header(name) | IdentitySource::ApiKey(name) => {
                    header_value(headers, name)?
                }
                IdentitySource::ClientIp => peer.map(|p| self.client_ip(p, headers)),
                IdentitySource::Bearer => bearer_token(headers)?,
                IdentitySource::Jwt(jwt) => {
                    self.jwt_caller(jwt, headers, peer)?
                        .map(|(caller, verified)| {
                            claims = Some(verified);
                            caller
                        })
                }
            };
            if let Some(raw) = found {
                return Ok(Some((self.named(raw)?, claims)));
            }
        }
        Ok(None)
    }

    /// The caller a token names, once it is verified; `None` when the request carries no
    /// token, or (with `verify: false`) one from a peer that is not a trusted proxy.
    fn jwt_caller(
        &self,
        jwt: &Jwt,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Option<jwt::Claimed>, IdentityError> {
        let token = match &jwt.header {
            None => bearer_token(headers)?,
            Some(name) => header_value(headers, name)?.map(|v| match strip_bearer(&v) {
                Some(token) => token.to_vec(),
                None => v,
            }),
        };
        let Some(token) = token else {
            return Ok(None);
        };
        if jwt.unverified() && !peer.is_some_and(|p| self.trusted.trusts(p)) {
            return Ok(None);
        }
        jwt.verified(&token).map(Some).map_err(IdentityError::Token)
    }

    /// Re-reads the key files of `jwt` sources that changed; whether any did.
    pub fn refresh_keys(&self) -> bool {
        let mut any = false;
        for source in &self.sources {
            if let IdentitySource::Jwt(jwt) = source {
                any |= jwt.refresh();
            }
        }
        any
    }

    /// The caller an identity names: its hash when `identity_hash` is on (the raw value goes
    /// no further than this function), else the value itself, bounded.
    pub fn named(&self, raw: Vec<u8>) -> Result<Vec<u8>, IdentityError> {
        if !self.hash.is_on() {
            return self.bounded(Some(raw)).map(Option::unwrap_or_default);
        }
        if has_control(&raw) {
            return Err(IdentityError::Invalid);
        }
        Ok(self.hash.caller(raw))
    }

    /// The value of one part of a limit's scope (`per: client_ip`, `header:...`, `query:...`),
    /// bounded and validated exactly as an identity; `None` when the request has none.
    pub fn part(
        &self,
        part: &Part,
        query: Option<&str>,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Option<Vec<u8>>, IdentityError> {
        let found = match part {
            Part::Caller => return self.caller(query, headers, peer),
            Part::ClientIp => peer.map(|p| self.client_ip(p, headers)),
            Part::Header(name) => header_value(headers, name)?,
            Part::Query(name) => query.and_then(|q| query_param(q, name)),
        };
        self.bounded(found)
    }

    /// The caller the client IP names (`on_missing_identity: client_ip`): hashed and bounded
    /// as any identity; `None` without a peer.
    pub fn client_caller(
        &self,
        peer: Option<IpAddr>,
        headers: &HeaderMap,
    ) -> Result<Option<Vec<u8>>, IdentityError> {
        peer.map(|p| self.named(self.client_ip(p, headers)))
            .transpose()
    }

    /// The client IP as a caller names it (after the trusted-proxy rules).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> Vec<u8> {
        self.trusted
            .client_ip(peer, headers)
            .to_string()
            .into_bytes()
    }

    /// A value longer than `max_bytes` or holding a control character is refused: it is
    /// never truncated into someone else's quota nor stored.
    fn bounded(&self, value: Option<Vec<u8>>) -> Result<Option<Vec<u8>>, IdentityError> {
        match value {
            Some(id) if id.len() > self.max_bytes => Err(IdentityError::TooLong {
                max_bytes: self.max_bytes,
            }),
            Some(id) if has_control(&id) => Err(IdentityError::Invalid),
            other => Ok(other),
        }
    }
}

/// Whether `bytes` hold a control character (0x00-0x1F, 0x7F): never part of an identity.
fn has_control(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| b < 0x20 || b == 0x7f)
}

/// A header's value, trimmed; empty counts as absent. Two lines of it are refused: which one
/// names the caller would otherwise depend on which a proxy on the way kept first.
fn header_value(headers: &HeaderMap, name: &HeaderName) -> Result<Option<Vec<u8>>, IdentityError> {
    let mut lines = headers.get_all(name).iter();
    let Some(first) = lines.next() else {
        return Ok(None);
    };
    if lines.next().is_some() {
        return Err(IdentityError::Invalid);
    }
    let value = first.as_bytes().trim_ascii();
    Ok((!value.is_empty()).then(|| value.to_vec()))
}

/// The token of the one `Authorization` line when its scheme is `Bearer` (any case); another
/// scheme (`Basic ...`) is no token. Two `Authorization` lines are refused.
fn bearer_token(headers: &HeaderMap) -> Result<Option<Vec<u8>>, IdentityError> {
    let Some(value) = header_value(headers, &http::header::AUTHORIZATION)? else {
        return Ok(None);
    };
    Ok(strip_bearer(&value)
        .filter(|token| !token.is_empty())
        .map(<[u8]>::to_vec))
}

/// The token after a `Bearer ` scheme (any case), trimmed.
fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    match value.split_first_chunk::<7>() {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => Some(rest.trim_ascii()),
        _ => None,
    }
}

/// Load-balancer request ids (`request_ids` in the config): what makes a retry exact.
///
/// A load balancer that retries a request on another sidecar after the first one counted it
/// and died would have it counted twice; with the same id, the limiter admits the repeat
/// uncounted. That is a bypass in a client's hands, so an id is believed only from a trusted
/// peer, only within `retry_window` of its first counting, and only `max_retries` times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIds {
    pub header: HeaderName,
    pub retry_window: std::time::Duration,
    pub max_retries: u32,
}

impl RequestIds {
    /// The id of a request from `peer`: exactly one `header` line of 1-64 characters of
    /// `[A-Za-z0-9._-]` from a trusted peer; anything else is no id (an ordinary request).
    pub fn id<'a>(
        &self,
        trusted: &TrustedProxies,
        peer: Option<IpAddr>,
        headers: &'a HeaderMap,
    ) -> Option<&'a str> {
        if !peer.is_some_and(|p| trusted.trusts(p)) {
            return None;
        }
        let mut lines = headers.get_all(&self.header).iter();
        let (Some(line), None) = (lines.next(), lines.next()) else {
            return None;
        };
        let id = line.to_str().ok()?;
        let valid = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        valid.then_some(id)
    }
}

/// The first non-empty value of the query parameter `name`, form-decoded and trimmed like a
/// header's (`?user_id=%20alice` and `x-user-id: alice` are one caller).
pub fn query_param(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(k) == name.as_bytes())
            .then(|| form_decode(v).trim_ascii().to_vec())
            .filter(|v| !v.is_empty())
    })
}

/// `text` form-decoded (`+` is a space, `%XX` a byte); borrowed when there is nothing to
/// decode, so comparing a query's keys allocates nothing.
fn form_decode(text: &str) -> std::borrow::Cow<'_, [u8]> {
    if !text.contains(['+', '%']) {
        return std::borrow::Cow::Borrowed(text.as_bytes());
    }
    let spaced = text.replace('+', " ");
    std::borrow::Cow::Owned(percent_decode(spaced.as_bytes()).collect())
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
            max_bytes: 16,
            hash: CallerHash::None,
        }
    }

    #[test]
    fn credentials_are_read_from_their_headers_and_hashed() {
        let mut e = extractor(&[]);
        e.sources = vec![
            IdentitySource::ApiKey(HeaderName::from_static("x-api-key")),
            IdentitySource::Bearer,
        ];
        e.hash = CallerHash::Sha256;
        let sha = |v: &str| CallerHash::Sha256.caller(v.as_bytes().to_vec());
        let key = headers(&[
            ("x-api-key", " sk_live_42 "),
            ("authorization", "Bearer t0k"),
        ]);
        assert_eq!(e.caller(None, &key, None), Ok(Some(sha("sk_live_42"))));
        for (auth, token) in [
            ("Bearer t0k", Some("t0k")),
            ("bearer   t0k ", Some("t0k")),
            ("BEARER t0k", Some("t0k")),
            ("Basic dXNlcjpwdw==", None),
            ("Bearer ", None),
            ("Bearer", None),
            ("Bearert0k", None),
        ] {
            let h = headers(&[("authorization", auth)]);
            assert_eq!(e.caller(None, &h, None), Ok(token.map(sha)), "{auth}");
        }
        // A hashed credential is 64 bytes whatever its length: the bound is for clear values.
        let long = "k".repeat(1000);
        let h = headers(&[("x-api-key", &long)]);
        assert_eq!(e.caller(None, &h, None), Ok(Some(sha(&long))));
        let two = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert_eq!(e.caller(None, &two, None), Err(IdentityError::Invalid));
        // Hashing off: the raw value, bounded as any identity.
        e.hash = CallerHash::None;
        assert_eq!(e.caller(None, &key, None), Ok(Some(b"sk_live_42".to_vec())));
        assert_eq!(
            e.caller(None, &h, None),
            Err(IdentityError::TooLong { max_bytes: 16 })
        );
    }

    #[test]
    fn sources_are_tried_in_order() {
        let e = extractor(&[]);
        let h = headers(&[("x-user-id", "bob")]);
        let peer = Some(ip("192.0.2.7"));
        assert_eq!(
            e.caller(Some("user_id=alice"), &h, peer),
            Ok(Some(b"alice".to_vec()))
        );
        assert_eq!(
            e.caller(Some("other=1"), &h, peer),
            Ok(Some(b"bob".to_vec()))
        );
        assert_eq!(
            e.caller(None, &HeaderMap::new(), peer),
            Ok(Some(b"192.0.2.7".to_vec()))
        );
    }

    #[test]
    fn empty_values_count_as_absent() {
        let e = extractor(&[]);
        let h = headers(&[("x-user-id", "  ")]);
        let got = e.caller(Some("user_id=&x=1"), &h, Some(ip("192.0.2.7")));
        assert_eq!(got, Ok(Some(b"192.0.2.7".to_vec())));
        assert_eq!(e.caller(Some("user_id="), &h, None), Ok(None));
    }

    #[test]
    fn long_identities_and_control_characters_are_refused() {
        let e = extractor(&[]);
        let none = HeaderMap::new();
        let q = |v: &str| e.caller(Some(&format!("user_id={v}")), &none, None);
        assert_eq!(q(&"a".repeat(16)), Ok(Some(b"a".repeat(16))));
        assert_eq!(
            q(&"a".repeat(17)),
            Err(IdentityError::TooLong { max_bytes: 16 })
        );
        // Counted after decoding: 6 escapes are 6 bytes, 18 characters on the wire.
        assert_eq!(q(&"%41".repeat(6)), Ok(Some(b"AAAAAA".to_vec())));
        for bad in ["a%00", "a%0Ab", "x%1By", "%7F", "a%09b"] {
            assert_eq!(q(bad), Err(IdentityError::Invalid), "{bad}");
        }
        // Trimmed like a header: surrounding blanks are not part of the identity.
        assert_eq!(q("%20alice+%09"), Ok(Some(b"alice".to_vec())));
        assert_eq!(q("%09"), Ok(None), "only blanks: absent");
        let h = headers(&[("x-user-id", " alice ")]);
        assert_eq!(e.caller(None, &h, None), Ok(Some(b"alice".to_vec())));
        // Two lines of the identity header: refused, not resolved by whichever came first.
        let two = headers(&[("x-user-id", "alice"), ("x-user-id", "bob")]);
        assert_eq!(e.caller(None, &two, None), Err(IdentityError::Invalid));
        let h = headers(&[("x-user-id", &"b".repeat(17))]);
        assert_eq!(
            e.caller(None, &h, None),
            Err(IdentityError::TooLong { max_bytes: 16 })
        );
        // Non-ASCII bytes are ordinary bytes of an identity.
        assert_eq!(q("j%C3%B6rg"), Ok(Some("jörg".as_bytes().to_vec())));
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
        // Ports are allowed, v4 and v6.
        let h = headers(&[(
            "x-forwarded-for",
            "203.0.113.9:4711, [10::1]:80, 10.0.0.6:1",
        )]);
        assert_eq!(t.client_ip(ip("127.0.0.1"), &h), ip("10::1"));
        let h = headers(&[("x-forwarded-for", "[2001:db8::9]:4711")]);
        assert_eq!(t.client_ip(ip("127.0.0.1"), &h), ip("2001:db8::9"));
        // A line with a non-ASCII byte is still read entry by entry, and X-Real-IP is not a
        // fallback for a line that exists.
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.9").unwrap(),
        );
        h.append("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        assert_eq!(t.client_ip(ip("127.0.0.1"), &h), ip("203.0.113.9"));
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.9, \xff").unwrap(),
        );
        h.append("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        assert_eq!(t.client_ip(ip("127.0.0.1"), &h), ip("127.0.0.1"));
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
        let ids = RequestIds {
            header: HeaderName::from_static("x-request-id"),
            retry_window: std::time::Duration::from_secs(10),
            max_retries: 2,
        };
        let lb = Some(ip("127.0.0.1"));
        let h = headers(&[("x-request-id", "0f3a9c")]);
        assert_eq!(ids.id(&t, lb, &h), Some("0f3a9c"));
        assert_eq!(ids.id(&t, Some(ip("192.0.2.1")), &h), None);
        assert_eq!(ids.id(&t, None, &h), None);
        let bad = headers(&[("x-request-id", "a b")]);
        assert_eq!(ids.id(&t, lb, &bad), None);
        let long = headers(&[("x-request-id", &"a".repeat(65))]);
        assert_eq!(ids.id(&t, lb, &long), None);
        let two = headers(&[("x-request-id", "a"), ("x-request-id", "b")]);
        assert_eq!(ids.id(&t, lb, &two), None, "exactly one id line");
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
        let mapped = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(mapped, Cidr::parse("10.0.0.0/8").unwrap());
        assert!(mapped.contains(ip("10.1.2.3")));
        assert!(mapped.contains(ip("::ffff:10.1.2.3")));
        assert!(Cidr::parse("::ffff:0:0/80").is_err());
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "x",
            "::1/129",
            "10.0.0.0/",
            "10.0.0.0/-1",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
