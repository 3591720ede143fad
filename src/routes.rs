//! The ordered route table: which route (and so which limits) a request falls under.

use crate::exempt::Exempt;
use crate::identity::{CallerHash, OnMissingIdentity};
use crate::limiter::{Cost, Limit, OnError};
use crate::refusal::RefusalStyle;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::borrow::Cow;
use std::collections::HashMap;

/// How a route recognises its requests; the path is compared after [`normalize_path`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

/// A named route: its matcher, its limits, and per-caller overrides of those limits.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub path: PathMatch,
    /// Upper-case method names; `None` matches every method.
    pub methods: Option<Vec<String>>,
    /// Headers the request must carry, each exactly once with exactly this value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub limits: Vec<Limit>,
    /// Caller identity → limits that replace `limits` for that caller (empty: unlimited).
    pub overrides: HashMap<Vec<u8>, Vec<Limit>>,
    /// This route's answer when the store cannot decide; `None` follows `store.on_error`.
    pub on_error: Option<OnError>,
    /// Dry run: decisions are made and counted, refusals are logged, everything is forwarded.
    pub shadow: bool,
    /// What each request counts for against every limit of the route.
    pub cost: Cost,
    /// The cost is what the response reports (`cost` is reserved at admission).
    pub cost_from: Option<CostFrom>,
    /// The upstream's deadline on this route: for the response head, then for each further
    /// read of the body (replaces `upstream.read_timeout`).
    pub timeout: Option<std::time::Duration>,
    /// Requests this route forwards uncounted (the global list with the route's added).
    pub exempt: Exempt,
    /// What a request that names no caller gets.
    pub on_missing_identity: OnMissingIdentity,
    /// `limits: plan`: the caller's plan's limits come before `limits` (then only buckets').
    pub uses_plan: bool,
    /// How this route's refusals (and sluice's own 502/503/504 on it) look.
    pub refusal: std::sync::Arc<RefusalStyle>,
    /// Wait instead of refusing, when the limit admits again soon enough.
    pub throttle: Option<Throttle>,
}

/// `throttle:`: a request its limits would admit within `max_delay` waits in the sidecar and is
/// then admitted (checked and counted again at that time); at most `max_waiting` wait at once
/// on this route in one sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub max_delay: std::time::Duration,
    pub max_waiting: usize,
}

impl Route {
    fn matches(&self, method: &str, path: &str, headers: &HeaderMap) -> bool {
        let path_ok = match &self.path {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        };
        path_ok
            && self
                .methods
                .as_ref()
                .is_none_or(|ms| ms.iter().any(|m| m == method))
            && self.headers.iter().all(|(name, value)| {
                let mut lines = headers.get_all(name).iter();
                lines.next() == Some(value) && lines.next().is_none()
            })
    }

    /// The limits that apply to `caller`: an override when one names the caller, else the route's.
    pub fn limits_for(&self, caller: &[u8]) -> &[Limit] {
        self.overrides
            .get(caller)
            .map_or(self.limits.as_slice(), Vec::as_slice)
    }

    /// With hashed identities, a caller listed in `overrides` or `exempt.callers` may be
    /// written as the raw identity or as its hash: both forms are kept, so either matches.
    pub fn list_hashed_callers(&mut self, hash: &CallerHash) {
        if !hash.is_on() {
            return;
        }
        let hashed: Vec<_> = self
            .overrides
            .iter()
            .map(|(who, limits)| (hash.caller(who.clone()), limits.clone()))
            .collect();
        for (who, limits) in hashed {
            self.overrides.entry(who).or_insert(limits);
        }
        let callers: Vec<_> = self.exempt.callers.iter().cloned().collect();
        self.exempt
            .callers
            .extend(callers.into_iter().map(|c| hash.caller(c)));
    }

    /// Whether any caller can be limited on this route (stats list only such routes).
    pub fn has_limits(&self) -> bool {
        !self.limits.is_empty() || self.uses_plan || self.overrides.values().any(|l| !l.is_empty())
    }
}

/// `cost_from`: the response header that reports what a request cost, and the most it may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostFrom {
    pub header: HeaderName,
    pub max_cost: u32,
    /// Reported in the response's trailers (a streamed response), not its head: settled when
    /// they arrive, or at the reservation when the response ends without them.
    pub in_trailer: bool,
}

impl CostFrom {
    /// What a response reports: the cost (clamped to `max_cost`, and whether it was), or
    /// `None` when the header is missing, repeated or not a whole number.
    pub fn reported(&self, headers: &HeaderMap) -> Option<(u32, bool)> {
        let mut lines = headers.get_all(&self.header).iter();
        let (Some(v), None) = (lines.next(), lines.next()) else {
            return None;
        };
        let digits = v.as_bytes().trim_ascii();
        if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
        Some(match n > self.max_cost as u64 {
            true => (self.max_cost, true),
            false => (n as u32, false),
        })
    }
}

/// Routes in file order; the first that matches wins, like nginx `location` blocks would not
/// (nginx picks the longest prefix) but like every firewall rule list does: order is policy.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        Self { routes }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The first route matching `method` and `path`, which must be in normal form
    /// ([`normalize_path`]): the caller normalises once and forwards that same path.
    pub fn find(&self, method: &str, path: &str, headers: &HeaderMap) -> Option<&Route> {
        self.position(method, path, headers)
            .map(|i| &self.routes[i])
    }

    /// Like [`RouteTable::find`], the route's index.
    pub fn position(&self, method: &str, path: &str, headers: &HeaderMap) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.matches(method, path, headers))
    }
}

/// Why a request path cannot be put in normal form (the request gets 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("a path must start with \"/\"")]
    NotAbsolute,
    #[error("\"%\" must be followed by two hex digits")]
    BadEscape,
}

/// Puts a path in the one form that route matching compares and the upstream receives.
///
/// - percent-encoded unreserved characters are decoded (`/%61pi/` is `/api/`), every other
///   escape is kept with upper-case hex (`%2f` is `%2F`: an encoded slash stays data);
/// - empty segments are merged (`//api` is `/api`), as nginx's `merge_slashes`, Tomcat and most
///   frameworks read them;
/// - dot segments are resolved (`/x/../api/` and `/%2e%2e/api/` are `/api/`), never above `/`.
///
/// Case, `;` parameters and `\` are left as they are: servers disagree on them (case matters to
/// most, `;` only to Java containers), so normalising would forward something else than the
/// upstream expects. A malformed escape (`%zz`) is an error: no guess is safe.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    if is_normal(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in decoded.split('/').skip(1) {
        trailing = matches!(seg, "" | "." | "..");
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if trailing || out.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

/// Whether an absolute `path` is already normal: no escape, no empty segment but the last,
/// no `.` or `..` segment. One pass over the bytes: every routed request asks.
fn is_normal(path: &[u8]) -> bool {
    let mut start = 1;
    for i in 1..=path.len() {
        match path.get(i).copied() {
            Some(b'%') => return false,
            Some(b'/') | None => {
                let segment = &path[start..i];
                let last = i == path.len();
                if (segment.is_empty() && !last) || segment == b"." || segment == b".." {
                    return false;
                }
                start = i + 1;
            }
            Some(_) => {}
        }
    }
    true
}

fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hi = bytes.get(i + 1).copied().and_then(hex_value);
        let lo = bytes.get(i + 2).copied().and_then(hex_value);
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(PathError::BadEscape);
        };
        let v = hi << 4 | lo;
        if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
            out.push(v);
        } else {
            out.push(b'%');
            out.push(HEX[(v >> 4) as usize]);
            out.push(HEX[(v & 15) as usize]);
        }
        i += 3;
    }
    // Escapes decode to ASCII only, so valid UTF-8 stays valid.
    Ok(String::from_utf8(out)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limit(requests: u32, secs: u64) -> Limit {
        Limit::per_caller(crate::limiter::Kind::Rate(crate::limiter::Rate::log(
            requests,
            Duration::from_secs(secs),
        )))
    }

    fn route(name: &str, path: PathMatch, methods: Option<&[&str]>) -> Route {
        Route {
            name: name.into(),
            path,
            methods: methods.map(|ms| ms.iter().map(|m| m.to_string()).collect()),
            limits: vec![limit(1, 1)],
            overrides: HashMap::new(),
            on_error: None,
            shadow: false,
            cost: Cost::default(),
            cost_from: None,
            timeout: None,
            headers: Vec::new(),
            exempt: Exempt::default(),
            on_missing_identity: OnMissingIdentity::default(),
            uses_plan: false,
            refusal: Default::default(),
            throttle: None,
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(vec![
            route("login", PathMatch::Exact("/login".into()), Some(&["POST"])),
            route(
                "api",
                PathMatch::Prefix("/api/".into()),
                Some(&["GET", "POST"]),
            ),
            route("open", PathMatch::Prefix("/".into()), None),
        ])
    }

    fn found(method: &str, path: &str) -> Option<String> {
        let path = normalize_path(path).unwrap();
        table()
            .find(method, &path, &HeaderMap::new())
            .map(|r| r.name.clone())
    }

    #[test]
    fn first_match_wins_in_file_order() {
        assert_eq!(found("GET", "/api/data").as_deref(), Some("api"));
        assert_eq!(found("POST", "/login").as_deref(), Some("login"));
        assert_eq!(found("GET", "/other").as_deref(), Some("open"));
    }

    #[test]
    fn methods_restrict_a_route() {
        assert_eq!(found("GET", "/login").as_deref(), Some("open"));
        assert_eq!(found("DELETE", "/api/data").as_deref(), Some("open"));
    }

    #[test]
    fn exact_paths_do_not_match_longer_paths() {
        assert_eq!(found("POST", "/login/x").as_deref(), Some("open"));
        assert_eq!(found("POST", "/loginx").as_deref(), Some("open"));
    }

    #[test]
    fn prefix_is_a_plain_string_prefix() {
        assert_eq!(found("GET", "/api").as_deref(), Some("open"));
        assert_eq!(found("GET", "/api/").as_deref(), Some("api"));
    }

    #[test]
    fn encoded_and_dotted_paths_cannot_dodge_a_route() {
        assert_eq!(found("GET", "/%61pi/data").as_deref(), Some("api"));
        assert_eq!(found("GET", "/x/../api/data").as_deref(), Some("api"));
        assert_eq!(found("GET", "/./api/./data").as_deref(), Some("api"));
        assert_eq!(found("POST", "/%6C%6Fgin").as_deref(), Some("login"));
        assert_eq!(found("GET", "//api/data").as_deref(), Some("api"));
        assert_eq!(found("GET", "/%2e%2E/api/data").as_deref(), Some("api"));
        let n = |p| normalize_path(p).unwrap().into_owned();
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a%2Fb"), "/a%2Fb");
        assert_eq!(n("/a%2fb%7e"), "/a%2Fb~");
        assert_eq!(n("/../../x"), "/x");
        assert_eq!(n("//a///b//"), "/a/b/");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("//"), "/");
        assert_eq!(n("/a/./b/"), "/a/b/");
        assert_eq!(n("/a;x=1/%3B"), "/a;x=1/%3B");
        assert_eq!(n("/a/..."), "/a/...");
        assert_eq!(normalize_path("/%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize_path("/%4"), Err(PathError::BadEscape));
        assert_eq!(normalize_path("x:/api"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn header_matches_split_one_path() {
        let mut acme = route("acme", PathMatch::Prefix("/api/".into()), None);
        acme.headers = vec![(
            HeaderName::from_static("x-tenant"),
            HeaderValue::from_static("acme"),
        )];
        let table = RouteTable::new(vec![
            acme,
            route("api", PathMatch::Prefix("/api/".into()), None),
        ]);
        let with = |pairs: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in pairs {
                h.append("x-tenant", HeaderValue::from_static(v));
            }
            table.find("GET", "/api/x", &h).map(|r| r.name.clone())
        };
        assert_eq!(with(&["acme"]).as_deref(), Some("acme"));
        assert_eq!(with(&["Acme"]).as_deref(), Some("api"), "values are exact");
        assert_eq!(with(&[]).as_deref(), Some("api"));
        assert_eq!(
            with(&["acme", "acme"]).as_deref(),
            Some("api"),
            "exactly one line"
        );
    }

    #[test]
    fn overrides_replace_the_route_limits_for_one_caller() {
        let mut r = route("api", PathMatch::Prefix("/".into()), None);
        r.overrides.insert(b"vip".to_vec(), vec![limit(1000, 60)]);
        assert_eq!(r.limits_for(b"vip"), &[limit(1000, 60)]);
        assert_eq!(r.limits_for(b"bob"), &[limit(1, 1)]);
    }
}
