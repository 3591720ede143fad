//! The limit model: what a limit counts ([`Kind`]: a [`Rate`] with its [`Algorithm`], a
//! calendar [`Quota`], or requests in flight), whose requests it counts together ([`Scope`]), what one request costs
//! ([`Cost`]) and what a route does when the store cannot decide ([`OnError`]).

pub use super::calendar::{Period, Quota};
use http::HeaderName;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// How a rate limit counts (see the README's algorithm guide for accuracy and memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Algorithm {
    /// Every admission's time and cost, kept for the window: exact; memory grows with the
    /// admissions in the window.
    #[default]
    SlidingLog,
    /// The sliding-window counter: this fixed window's count plus the previous one's, weighted
    /// by how much of it the sliding window still covers. O(1) memory, approximate.
    SlidingWindow,
    /// The generic cell rate algorithm: one theoretical arrival time. O(1) memory, exact rate
    /// with smooth spacing, up to `burst` at once.
    Gcra,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::Gcra => "gcra",
        }
    }
}

/// A rate: at most `requests` cost units in any sliding `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub requests: NonZeroU32,
    pub window: Duration,
    pub algorithm: Algorithm,
    /// GCRA only: how many may arrive at once (default: `requests`).
    pub burst: NonZeroU32,
}

impl Rate {
    /// A sliding-log rate (tests and examples).
    pub fn log(requests: u32, window: Duration) -> Rate {
        let requests = NonZeroU32::new(requests).unwrap_or(NonZeroU32::MIN);
        Rate {
            requests,
            window,
            algorithm: Algorithm::SlidingLog,
            burst: requests,
        }
    }

    /// The most one request may cost and still be admitted when nothing is counted.
    pub fn capacity(&self) -> u32 {
        match self.algorithm {
            Algorithm::Gcra => self.burst.get(),
            _ => self.requests.get(),
        }
    }

    /// The window in whole seconds, rounded up, as the RateLimit headers and the 429 body show it.
    pub fn window_secs(&self) -> u64 {
        self.window.as_millis().div_ceil(1000) as u64
    }
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Cost units per sliding window.
    Rate(Rate),
    /// Requests in flight at once: a request holds a slot from admission until its response
    /// has ended (or the client left, or the upstream failed). One slot whatever its cost.
    Concurrency(NonZeroU32),
    /// Cost units per calendar day, week or month in a time zone: a counter per period.
    Quota(Quota),
}

impl Kind {
    /// The number the limit is set to: requests per window, or slots.
    pub fn amount(&self) -> u32 {
        match self {
            Kind::Rate(r) => r.requests.get(),
            Kind::Concurrency(n) => n.get(),
            Kind::Quota(q) => q.requests.get(),
        }
    }

    pub fn rate(&self) -> Option<&Rate> {
        match self {
            Kind::Rate(r) => Some(r),
            _ => None,
        }
    }

    /// Whether the limit counts cost units over time (a rate or a quota), not slots.
    pub fn counts(&self) -> bool {
        !matches!(self, Kind::Concurrency(_))
    }

    /// The longest window the limit can count over (a month for a monthly quota), by which
    /// two limits are ordered when they would refuse alike.
    pub fn max_window(&self) -> Duration {
        const DAY: u64 = 86_400;
        match self {
            Kind::Rate(r) => r.window,
            Kind::Quota(q) => Duration::from_secs(match q.period {
                Period::Day => DAY + 3600,
                Period::Week => 7 * DAY + 3600,
                Period::Month => 31 * DAY + 3600,
            }),
            Kind::Concurrency(_) => Duration::ZERO,
        }
    }

    /// This limit scaled by `share` (0, 1], rounded up and at least 1: what one of several
    /// sidecars enforces alone while the shared store is away.
    pub fn scaled(&self, share: f64) -> Kind {
        let scale = |n: NonZeroU32| {
            let scaled = (n.get() as f64 * share).ceil().max(1.0);
            NonZeroU32::new(scaled.min(u32::MAX as f64) as u32).unwrap_or(NonZeroU32::MIN)
        };
        match self {
            Kind::Rate(r) => Kind::Rate(Rate {
                requests: scale(r.requests),
                burst: scale(r.burst),
                ..*r
            }),
            Kind::Concurrency(n) => Kind::Concurrency(scale(*n)),
            Kind::Quota(q) => Kind::Quota(Quota {
                requests: scale(q.requests),
                ..*q
            }),
        }
    }
}

/// One part of a limit's scope: what, taken from the request, tells its counts apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Part {
    /// The caller's identity (the `identity:` sources).
    Caller,
    /// The client IP, through trusted proxies (as the `client_ip` identity source reads it).
    ClientIp,
    /// A request header's value.
    Header(HeaderName),
    /// A query parameter's value, form-decoded.
    Query(Box<str>),
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Caller => f.write_str("caller"),
            Part::ClientIp => f.write_str("client_ip"),
            Part::Header(h) => write!(f, "header:{h}"),
            Part::Query(q) => write!(f, "query:{q}"),
        }
    }
}

/// Whose requests a limit counts together (`per:` in the config): every request of the route
/// (`global`), or those that share one value of each part (`caller`, `[caller, client_ip]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Global,
    /// One or more distinct parts, in the order the config names them.
    Of(Box<[Part]>),
}

impl Default for Scope {
    fn default() -> Self {
        Scope::caller()
    }
}

impl Scope {
    /// Per caller: what a limit counts when `per` is not given.
    pub fn caller() -> Scope {
        Scope::Of(Box::new([Part::Caller]))
    }

    pub fn is_caller(&self) -> bool {
        matches!(self, Scope::Of(parts) if parts[..] == [Part::Caller])
    }

    pub fn parts(&self) -> &[Part] {
        match self {
            Scope::Global => &[],
            Scope::Of(parts) => parts,
        }
    }

    /// How the 429 body and `/stats` name it: `"caller"`, `"global"`, `"header:x-tenant"`, or a
    /// JSON list for a composite.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Scope::Global => "global".into(),
            Scope::Of(parts) if parts.len() == 1 => parts[0].to_string().into(),
            Scope::Of(parts) => parts.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// A short label for names (`client_ip`, `caller+client_ip`).
    pub fn label(&self) -> String {
        match self {
            Scope::Global => "global".into(),
            Scope::Of(parts) => parts
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("+"),
        }
    }
}

/// One limit of a route or of a shared bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Limit {
    pub kind: Kind,
    pub per: Scope,
    /// The shared bucket this limit belongs to (`None`: the route's own). A bucket's limits
    /// are counted under the bucket's name, so every route that draws from it shares them.
    pub bucket: Option<Arc<str>>,
    /// `count: { status: ... }`: only requests whose response status matches stay counted
    /// (each is counted at admission and given back when its response does not match).
    pub count: Option<StatusMatch>,
}

impl Limit {
    /// A route's own per-caller limit of this kind.
    pub fn per_caller(kind: Kind) -> Limit {
        Limit {
            kind,
            per: Scope::caller(),
            bucket: None,
            count: None,
        }
    }

    pub fn rate(&self) -> Option<&Rate> {
        self.kind.rate()
    }
}

/// Response statuses, by class (`4xx`) and by code (`401`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct StatusMatch {
    /// Bit `n` set: every status `n00`-`n99` (n in 1..=5).
    classes: u8,
    codes: Box<[u16]>,
}

impl StatusMatch {
    /// From `401`, `"4xx"`, `"5XX"`; `None` for anything else.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<StatusMatch, String> {
        let mut m = StatusMatch::default();
        let mut codes = Vec::new();
        for item in items {
            let t = item.trim();
            let b = t.as_bytes();
            if b.len() == 3 && b[1..].eq_ignore_ascii_case(b"xx") && (b'1'..=b'5').contains(&b[0]) {
                m.classes |= 1 << (b[0] - b'0');
            } else {
                match t.parse::<u16>() {
                    Ok(code) if (100..=599).contains(&code) => codes.push(code),
                    _ => {
                        return Err(format!(
                        "invalid status \"{t}\" (a code from 100 to 599, or a class such as 5xx)"
                    ))
                    }
                }
            }
        }
        codes.sort_unstable();
        codes.dedup();
        m.codes = codes.into_boxed_slice();
        Ok(m)
    }

    pub fn matches(&self, status: u16) -> bool {
        let class = status / 100;
        (class < 8 && self.classes & (1 << class) != 0) || self.codes.contains(&status)
    }

    /// As the config writes it: `[401, 403]`, `["5xx"]`.
    pub fn label(&self) -> String {
        let classes = (1..=5u8)
            .filter(|c| self.classes & (1 << c) != 0)
            .map(|c| format!("\"{c}xx\""));
        let codes = self.codes.iter().map(|c| c.to_string());
        format!("[{}]", classes.chain(codes).collect::<Vec<_>>().join(", "))
    }
}

/// What one request of a route counts for: a fixed cost, or one per method (others cost 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cost {
    Fixed(NonZeroU32),
    PerMethod(Vec<(String, NonZeroU32)>),
}

impl Default for Cost {
    fn default() -> Self {
        Cost::Fixed(NonZeroU32::MIN)
    }
}

impl Cost {
    /// What a request of `method` costs; HEAD costs what GET costs (a route that covers GET
    /// covers HEAD, and frameworks answer one with the other).
    pub fn of(&self, method: &str) -> u32 {
        let method = if method == "HEAD" { "GET" } else { method };
        match self {
            Cost::Fixed(c) => c.get(),
            Cost::PerMethod(m) => m
                .iter()
                .find(|(name, _)| name == method)
                .map_or(1, |(_, c)| c.get()),
        }
    }

    /// The most any request of the route costs.
    pub fn max(&self) -> u32 {
        match self {
            Cost::Fixed(c) => c.get(),
            Cost::PerMethod(m) => m.iter().map(|(_, c)| c.get()).max().unwrap_or(1).max(1),
        }
    }
}

/// What to do with a request on a limited route when the store cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Forward it (availability first: a store outage does not take the API down).
    Allow,
    /// Refuse it with 503 (protection first).
    Deny,
    /// Enforce the route's limits in this process, each scaled by `store.fallback_share`
    /// (the cluster stays near the promised limit instead of wide open or shut).
    Local,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_costs_what_get_costs() {
        let c = Cost::PerMethod(vec![("GET".into(), NonZeroU32::new(3).unwrap())]);
        assert_eq!(c.of("GET"), 3);
        assert_eq!(c.of("HEAD"), 3);
        assert_eq!(c.of("POST"), 1);
    }

    #[test]
    fn scopes_name_themselves_as_the_config_does() {
        let composite = Scope::Of(Box::new([Part::Caller, Part::ClientIp]));
        assert_eq!(
            composite.to_json(),
            serde_json::json!(["caller", "client_ip"])
        );
        assert_eq!(composite.label(), "caller+client_ip");
        assert_eq!(Scope::Global.to_json(), "global");
        let tenant = Scope::Of(Box::new([Part::Header(HeaderName::from_static(
            "x-tenant",
        ))]));
        assert_eq!(tenant.to_json(), "header:x-tenant");
        assert!(Scope::caller().is_caller());
    }
}
