//! What clients see of a decision: the RateLimit headers and the 429 and 503 responses.
//!
//! One helper builds the headers for both paths (admitted responses from the upstream and
//! the 429s sluice writes itself), so the two can never disagree.

use crate::config::format_duration;
use crate::identity::IdentityError;
use crate::limiter::calendar::now_us;
use crate::limiter::{Kind, Limit, LimitState, Quota, Refused};
use crate::refusal::{problem, Format, RefusalStyle, Values};
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use std::cmp::Reverse;
use std::time::Duration;

/// Why a request is answered by sluice itself.
#[derive(Debug)]
pub enum Refusal<'a> {
    /// 400: a target that is not origin-form, or a path with a malformed escape.
    BadTarget(&'static str),
    /// 414: the target is longer than `server.max_uri_bytes`.
    UriTooLong { max_bytes: usize },
    /// 431: the request head is larger than `server.max_header_bytes`.
    HeadersTooLarge { max_bytes: usize },
    /// 400: the identity (or a value a limit is keyed by) is too long or holds a control
    /// character.
    Identity(IdentityError),
    /// 401: the route needs a caller (`on_missing_identity: reject`) and the request names none.
    IdentityRequired,
    /// 429: a limit refused; `refused` is the limit that refuses longest, `limit` its
    /// definition and `policy` the route's headers.
    Limited {
        route: &'a str,
        /// The caller's plan, on a route with `limits: plan`.
        plan: Option<&'a str>,
        limit: &'a Limit,
        policy: &'a Policy,
        refused: Refused,
        /// The route's `refusal:` style, and the caller (kept only for a body template).
        style: &'a RefusalStyle,
        caller: Option<Vec<u8>>,
    },
    /// 503: the store could not answer and the policy is `deny`.
    StoreUnavailable { route: &'a str, format: Format },
}

impl Refusal<'_> {
    /// The JSON `error` of a refusal made before any limit is consulted (a metric label).
    pub fn rejection(&self) -> Option<&'static str> {
        Some(match self {
            Refusal::BadTarget(what) => what,
            Refusal::UriTooLong { .. } => "uri_too_long",
            Refusal::HeadersTooLarge { .. } => "headers_too_large",
            Refusal::Identity(IdentityError::TooLong { .. }) => "identity_too_long",
            Refusal::Identity(IdentityError::Invalid) => "invalid_identity",
            Refusal::Identity(IdentityError::Token(_)) => "invalid_token",
            Refusal::IdentityRequired => "identity_required",
            Refusal::Limited { .. } | Refusal::StoreUnavailable { .. } => return None,
        })
    }
}

/// Whole seconds, rounded up: a client that waits this long is never early.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000) as u64
}

/// What a route's limits look like in the RateLimit headers, built once when the config
/// loads: each limit's policy name and the whole `RateLimit-Policy` value (for a route with a
/// calendar quota, whose `w` is the current period's length, its parts, joined per response).
#[derive(Debug, Clone)]
pub struct Policy {
    names: Vec<String>,
    /// Each limit's number, and as `X-RateLimit-Limit` says it.
    amounts: Vec<(u32, HeaderValue)>,
    /// `None` when the route has no rate limit (in-flight caps have no window to report).
    header: Option<HeaderValue>,
    /// With a quota: each counted limit's item, a quota's to be completed with its `w`.
    items: Option<Vec<(String, Option<Quota>)>>,
}

impl Policy {
    /// Names: the route's (or bucket's) name when there is one rate limit; with several,
    /// `name-window` (`name-month` for a quota), and `-per` when that is not the caller
    /// (`api-1m-client_ip`).
    pub fn new(route: &str, limits: &[Limit]) -> Policy {
        let counted = limits.iter().filter(|l| l.kind.counts()).count();
        let names: Vec<String> = limits
            .iter()
            .map(|l| {
                let base = l.bucket.as_deref().unwrap_or(route);
                let span = match l.kind {
                    Kind::Concurrency(_) => return format!("{base}-inflight"),
                    _ if counted == 1 => return base.to_string(),
                    Kind::Rate(r) => format_duration(r.window),
                    Kind::Quota(q) => q.period.name().to_string(),
                };
                match l.per.is_caller() {
                    true => format!("{base}-{span}"),
                    false => format!("{base}-{span}-{}", l.per.label()),
                }
            })
            .collect();
        let items: Vec<(String, Option<Quota>)> = limits
            .iter()
            .zip(&names)
            .filter_map(|(l, name)| match l.kind {
                Kind::Rate(r) => Some((
                    format!("\"{name}\";q={};w={}", r.requests, r.window_secs()),
                    None,
                )),
                Kind::Quota(q) => Some((format!("\"{name}\";q={};w=", q.requests), Some(q))),
                Kind::Concurrency(_) => None,
            })
            .collect();
        let quotas = items.iter().any(|(_, q)| q.is_some());
        let header = (!items.is_empty())
            .then(|| HeaderValue::from_str(&Self::join(&items, 0)).ok())
            .flatten();
        let amounts = limits
            .iter()
            .map(|l| (l.kind.amount(), HeaderValue::from(l.kind.amount())))
            .collect();
        Policy {
            names,
            amounts,
            header,
            items: quotas.then_some(items),
        }
    }

    /// The items as one header value, each quota's `w` its period at `now` (µs).
    fn join(items: &[(String, Option<Quota>)], now: u64) -> String {
        let parts: Vec<String> = items
            .iter()
            .map(|(item, quota)| match quota {
                Some(q) => format!("{item}{}", q.bounds(now).secs()),
                None => item.clone(),
            })
            .collect();
        parts.join(", ")
    }

    /// `RateLimit-Policy` now.
    fn header(&self) -> Option<HeaderValue> {
        match &self.items {
            None => self.header.clone(),
            Some(items) => HeaderValue::from_str(&Self::join(items, now_us())).ok(),
        }
    }

    pub fn name(&self, index: usize) -> &str {
        self.names.get(index).map_or("", String::as_str)
    }
}

/// The header values of one decision, computed once and applied to whichever response goes out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub policy: HeaderValue,
    pub ratelimit: HeaderValue,
    pub limit: HeaderValue,
    pub remaining: u32,
    pub reset: u64,
}

impl RateLimitHeaders {
    /// An admitted request's headers: `RateLimit-Policy` lists every rate limit; `RateLimit`
    /// and the `X-` headers report the one with the least remaining (a tie goes to the longer
    /// window). `None` when no rate limit applies.
    pub fn admitted(policy: &Policy, states: &[LimitState]) -> Option<Self> {
        let (index, reported) = states
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind.counts())
            .min_by_key(|(_, s)| (s.remaining, Reverse(s.kind.max_window())))?;
        Self::build(policy, index, reported, ceil_secs(reported.reset))
    }

    /// A refusal's headers: every rate limit, and the one that refuses longest (`None` when
    /// an in-flight cap refused: it has no window to report).
    pub fn refused(policy: &Policy, refused: &Refused) -> Option<Self> {
        let state = &refused.state;
        if !state.kind.counts() {
            return None;
        }
        Self::build(policy, refused.index, state, retry_after_secs(state))
    }

    fn build(policy: &Policy, index: usize, s: &LimitState, reset: u64) -> Option<Self> {
        Some(Self {
            ratelimit: ratelimit_value(policy.name(index), s.remaining, reset)?,
            policy: policy.header()?,
            // The configured number, or the share of it a sidecar enforces alone while the
            // store is away (on_error: local).
            limit: match policy.amounts.get(index) {
                Some((n, value)) if *n == s.kind.amount() => value.clone(),
                _ => HeaderValue::from(s.kind.amount()),
            },
            remaining: s.remaining,
            reset,
        })
    }

    /// Adds the headers to `h`; taken by value, so the values move in and are not copied.
    pub fn apply(self, h: &mut ResponseHeader) -> pingora::Result<()> {
        h.insert_header("RateLimit-Policy", self.policy)?;
        h.insert_header("RateLimit", self.ratelimit)?;
        h.insert_header("X-RateLimit-Limit", self.limit)?;
        h.insert_header("X-RateLimit-Remaining", number_value(self.remaining.into()))?;
        h.insert_header("X-RateLimit-Reset", number_value(self.reset))?;
        Ok(())
    }
}

/// `RateLimit`'s value, `"<name>";r=<remaining>;t=<reset>`, made for every admitted request
/// of a limited route: written without `format!` and kept as the header's bytes, not copied
/// again. `None` for a name a header cannot carry (the response then goes without the
/// RateLimit headers rather than failing).
fn ratelimit_value(name: &str, remaining: u32, reset: u64) -> Option<HeaderValue> {
    let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (r, t) = (r.format(remaining).as_bytes(), t.format(reset).as_bytes());
    // Exactly as long as the value: `Bytes` takes a full vector as it is, but one with room
    // to spare costs a second allocation (its shared header).
    let mut v = Vec::with_capacity(name.len() + r.len() + t.len() + 8);
    v.push(b'"');
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(b"\";r=");
    v.extend_from_slice(r);
    v.extend_from_slice(b";t=");
    v.extend_from_slice(t);
    debug_assert_eq!(v.len(), v.capacity());
    HeaderValue::from_maybe_shared(Bytes::from(v)).ok()
}

/// The numbers below this have their header value made once (`X-RateLimit-Remaining` and
/// `-Reset` are most often small): a value made per response costs two allocations.
const SMALL_NUMBERS: u64 = 10_000;

/// The text of 0, 1, ... `SMALL_NUMBERS - 1` written one after another, made once.
static SMALL_NUMBER_TEXT: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
    let mut text = String::with_capacity(38_890);
    let mut buffer = itoa::Buffer::new();
    for n in 0..SMALL_NUMBERS {
        text.push_str(buffer.format(n));
    }
    Box::leak(text.into_boxed_str())
});

/// `n` as a header value; below [`SMALL_NUMBERS`] a static one, which costs nothing to make.
fn number_value(n: u64) -> HeaderValue {
    if n >= SMALL_NUMBERS {
        return HeaderValue::from(n);
    }
    // Where n's digits start: 10 one-digit numbers, 90 of two, 900 of three, then four.
    let (start, len) = match n {
        0..=9 => (n, 1),
        10..=99 => (10 + 2 * (n - 10), 2),
        100..=999 => (190 + 3 * (n - 100), 3),
        _ => (2890 + 4 * (n - 1000), 4),
    };
    let (start, len) = (start as usize, len as usize);
    HeaderValue::from_static(&SMALL_NUMBER_TEXT[start..start + len])
}

/// `Retry-After`: whole seconds, at least 1, never before a request would be admitted.
pub fn retry_after_secs(refusing: &LimitState) -> u64 {
    ceil_secs(refusing.retry).max(1)
}

/// What a limit's refusal is about: `plan`, the limit, and the caller for a body template.
pub struct Refused429<'a> {
    pub plan: Option<&'a str>,
    pub limit: &'a Limit,
    pub policy: &'a Policy,
    pub refused: &'a Refused,
    pub caller: Option<&'a [u8]>,
}

/// A complete refusal for a request over its limit (429 unless the route's `refusal:` says
/// otherwise): headers (Content-Length included, so the connection stays open for the next
/// request) and a body naming the limit, in the route's format or from its template.
pub fn too_many_requests(
    route: &str,
    r: &Refused429<'_>,
    style: &RefusalStyle,
) -> pingora::Result<(Box<ResponseHeader>, Bytes)> {
    let (plan, limit, policy, refused) = (r.plan, r.limit, r.policy, r.refused);
    let state = &refused.state;
    let retry_after = retry_after_secs(state);
    let window_s = match limit.kind {
        Kind::Rate(r) => r.window_secs(),
        Kind::Quota(q) => q.bounds(now_us()).secs(),
        Kind::Concurrency(_) => 0,
    };
    let (error, window) = match limit.kind {
        Kind::Rate(_) => ("rate_limited", format!(",\"window_s\":{window_s}")),
        Kind::Quota(q) => (
            "quota_exceeded",
            format!(
                ",\"window_s\":{window_s},\"period\":\"{}\",\"timezone\":\"{}\"",
                q.period.name(),
                q.tz.name()
            ),
        ),
        Kind::Concurrency(_) => ("too_many_in_flight", String::new()),
    };
    // Route and bucket names are [A-Za-z0-9._-]: nothing to escape; a scope may name a query
    // parameter, so it goes through the JSON encoder.
    let bucket = limit
        .bucket
        .as_ref()
        .map_or(String::new(), |b| format!(",\"bucket\":\"{b}\""));
    // Plan names are [A-Za-z0-9._-] too.
    let plan = plan.map_or(String::new(), |p| format!(",\"plan\":\"{p}\""));
    let json = format!(
        "{{\"error\":\"{error}\",\"route\":\"{route}\"{plan}{bucket},\"limit\":{}{window},\"per\":{},\"retry_after\":{retry_after}}}",
        limit.kind.amount(),
        limit.per.to_json(),
    );
    let amount = limit.kind.amount();
    let body = match (&style.body, style.format) {
        (Some(t), format) => {
            let values = Values {
                route,
                limit: amount,
                window_s,
                retry_after,
                caller: r.caller.unwrap_or_default(),
            };
            t.render(format, &values)
        }
        (None, Format::Json) => json,
        (None, Format::Problem) => {
            let detail = match limit.kind {
                Kind::Rate(_) => format!("over the limit of {amount} per {window_s} s on route {route}; retry in {retry_after} s"),
                Kind::Quota(q) => format!("over the quota of {amount} per {} on route {route}; it resets in {retry_after} s", q.label()),
                Kind::Concurrency(_) => format!("over the limit of {amount} requests in flight on route {route}; retry in {retry_after} s"),
            };
            in_format(
                Format::Problem,
                style.status,
                "Too Many Requests",
                &detail,
                json,
            )
        }
        (None, Format::Text) => {
            format!("{error} on route {route}: limit {amount}, retry in {retry_after} s\n")
        }
    };
    let mut h = typed_header(style.status, style.format, body.len())?;
    h.insert_header("Retry-After", number_value(retry_after))?;
    if let Some(headers) = RateLimitHeaders::refused(policy, refused) {
        headers.apply(&mut h)?;
    }
    Ok((h, Bytes::from(body)))
}

/// The complete response for a request sluice answers itself.
pub fn refusal(r: &Refusal<'_>) -> pingora::Result<(Box<ResponseHeader>, Bytes)> {
    let (status, body) = match r {
        Refusal::Limited {
            route,
            plan,
            limit,
            policy,
            refused,
            style,
            caller,
        } => {
            let r = Refused429 {
                plan: *plan,
                limit,
                policy,
                refused,
                caller: caller.as_deref(),
            };
            return too_many_requests(route, &r, style);
        }
        Refusal::StoreUnavailable { route, format } => return store_unavailable(route, *format),
        Refusal::BadTarget(what) => (400, format!("{{\"error\":\"{what}\"}}")),
        Refusal::UriTooLong { max_bytes } => (
            414,
            format!("{{\"error\":\"uri_too_long\",\"max_bytes\":{max_bytes}}}"),
        ),
        Refusal::HeadersTooLarge { max_bytes } => (
            431,
            format!("{{\"error\":\"headers_too_large\",\"max_bytes\":{max_bytes}}}"),
        ),
        Refusal::Identity(IdentityError::TooLong { max_bytes }) => (
            400,
            format!("{{\"error\":\"identity_too_long\",\"max_bytes\":{max_bytes}}}"),
        ),
        Refusal::Identity(IdentityError::Invalid) => {
            (400, "{\"error\":\"invalid_identity\"}".to_string())
        }
        Refusal::IdentityRequired => (401, "{\"error\":\"identity_required\"}".to_string()),
        Refusal::Identity(IdentityError::Token(why)) => {
            let body = format!(
                "{{\"error\":\"invalid_token\",\"reason\":\"{}\"}}",
                why.reason()
            );
            let mut h = json_header(401, body.len())?;
            h.insert_header("WWW-Authenticate", "Bearer error=\"invalid_token\"")?;
            return Ok((h, Bytes::from(body)));
        }
    };
    let h = json_header(status, body.len())?;
    Ok((h, Bytes::from(body)))
}

/// A 503 for `on_error: deny` while the store cannot answer, in the route's format.
pub fn store_unavailable(
    route: &str,
    format: Format,
) -> pingora::Result<(Box<ResponseHeader>, Bytes)> {
    let json = format!("{{\"error\":\"store_unavailable\",\"route\":\"{route}\"}}");
    let detail = format!("the rate-limit store cannot answer and route {route} refuses meanwhile");
    let body = in_format(format, 503, "Service Unavailable", &detail, json);
    let mut h = typed_header(503, format, body.len())?;
    h.insert_header("Retry-After", "1")?;
    Ok((h, Bytes::from(body)))
}

/// sluice's answer when a request it let through fails (Pingora's own is an empty body with
/// `Server: Pingora`): the status, and the JSON error that is also the metric's `reason`.
pub fn proxy_error(
    status: u16,
    format: Format,
) -> pingora::Result<(&'static str, (Box<ResponseHeader>, Bytes))> {
    let (reason, title, detail) = match status {
        502 => (
            "upstream_unavailable",
            "Bad Gateway",
            "the upstream could not be reached",
        ),
        504 => (
            "upstream_timeout",
            "Gateway Timeout",
            "the upstream did not answer in time",
        ),
        _ if status >= 500 => (
            "internal_error",
            "Internal Server Error",
            "the proxy failed",
        ),
        _ => (
            "bad_request",
            "Bad Request",
            "the request could not be read",
        ),
    };
    let json = format!("{{\"error\":\"{reason}\"}}");
    let body = in_format(format, status, title, detail, json);
    let h = typed_header(status, format, body.len())?;
    Ok((reason, (h, Bytes::from(body))))
}

/// A body sluice writes in `format`: its JSON as is, as a problem's extension members, or
/// one line of text.
fn in_format(format: Format, status: u16, title: &str, detail: &str, json: String) -> String {
    match format {
        Format::Json => json,
        Format::Problem => {
            let fields: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            problem(status, title, detail, &fields)
        }
        Format::Text => format!("{title}: {detail}\n"),
    }
}

fn typed_header(status: u16, format: Format, len: usize) -> pingora::Result<Box<ResponseHeader>> {
    let mut h = ResponseHeader::build(status, Some(6))?;
    h.insert_header("Content-Type", format.content_type())?;
    h.insert_header("Content-Length", number_value(len as u64))?;
    h.insert_header("Cache-Control", "no-store")?;
    Ok(Box::new(h))
}

fn json_header(status: u16, len: usize) -> pingora::Result<Box<ResponseHeader>> {
    let mut h = ResponseHeader::build(status, Some(6))?;
    h.insert_header("Content-Type", "application/json")?;
    h.insert_header("Content-Length", number_value(len as u64))?;
    h.insert_header("Cache-Control", "no-store")?;
    Ok(Box::new(h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{Part, Rate, Scope};
    use std::num::NonZeroU32;
    use std::sync::Arc;

    fn rate(requests: u32, window_s: u64) -> Limit {
        Limit::per_caller(Kind::Rate(Rate::log(
            requests,
            Duration::from_secs(window_s),
        )))
    }

    fn state(l: &Limit, used: u32, reset_ms: u64, retry_ms: u64) -> LimitState {
        LimitState {
            kind: l.kind,
            used,
            remaining: l.kind.amount().saturating_sub(used),
            reset: Duration::from_millis(reset_ms),
            retry: Duration::from_millis(retry_ms),
        }
    }

    fn plain_429(
        limit: &Limit,
        policy: &Policy,
        refused: &Refused,
    ) -> pingora::Result<(Box<ResponseHeader>, Bytes)> {
        let r = Refused429 {
            plan: None,
            limit,
            policy,
            refused,
            caller: None,
        };
        too_many_requests("r", &r, &RefusalStyle::default())
    }

    #[test]
    fn numbers_are_written_alike_from_the_table_and_beyond_it() {
        for n in (0..12_000).chain([u32::MAX as u64, u64::MAX]) {
            assert_eq!(number_value(n), HeaderValue::from(n), "{n}");
        }
    }

    #[test]
    fn one_limit_admitted() {
        let l = [rate(100, 60)];
        let policy = Policy::new("api", &l);
        let h = RateLimitHeaders::admitted(&policy, &[state(&l[0], 63, 40_200, 0)]).unwrap();
        assert_eq!(h.policy, "\"api\";q=100;w=60");
        assert_eq!(h.ratelimit, "\"api\";r=37;t=41");
        assert_eq!(
            (h.limit, h.remaining, h.reset),
            (HeaderValue::from(100), 37, 41)
        );
    }

    #[test]
    fn least_remaining_is_reported_and_ties_go_to_the_longer_window() {
        let l = [rate(10, 1), rate(1000, 3600)];
        let policy = Policy::new("api", &l);
        let states = [state(&l[0], 8, 500, 0), state(&l[1], 998, 3_000_000, 0)];
        let h = RateLimitHeaders::admitted(&policy, &states).unwrap();
        assert_eq!(h.policy, "\"api-1s\";q=10;w=1, \"api-1h\";q=1000;w=3600");
        assert_eq!(h.ratelimit, "\"api-1h\";r=2;t=3000");
    }

    #[test]
    fn buckets_and_scopes_name_their_limits_and_slots_are_not_rates() {
        let mut global = rate(5000, 1);
        global.per = Scope::Global;
        let mut account = rate(1000, 3600);
        account.bucket = Some(Arc::from("account"));
        let mut ip = rate(20, 60);
        ip.per = Scope::Of(Box::new([Part::ClientIp]));
        let slots = Limit::per_caller(Kind::Concurrency(NonZeroU32::new(10).unwrap()));
        let policy = Policy::new("search", &[rate(100, 60), global, ip, slots, account]);
        assert_eq!(
            policy.header.unwrap(),
            "\"search-1m\";q=100;w=60, \"search-1s-global\";q=5000;w=1, \"search-1m-client_ip\";q=20;w=60, \"account-1h\";q=1000;w=3600"
        );
        let only_slots = Policy::new(
            "s",
            &[Limit::per_caller(Kind::Concurrency(NonZeroU32::MIN))],
        );
        assert!(only_slots.header.is_none());
    }

    #[test]
    fn a_refusal_names_the_limit_its_scope_and_bucket() {
        let mut l = rate(5, 60);
        l.bucket = Some(Arc::from("account"));
        let policy = Policy::new("r", &[rate(2, 1), l.clone()]);
        let refused = Refused {
            state: state(&l, 4, 20_000, 20_000),
            index: 1,
        };
        let (head, body) = plain_429(&l, &policy, &refused).unwrap();
        assert_eq!(head.status.as_u16(), 429);
        assert_eq!(head.headers.get("retry-after").unwrap(), "20");
        assert_eq!(
            head.headers.get("ratelimit").unwrap(),
            "\"account-1m\";r=1;t=20"
        );
        assert_eq!(
            head.headers.get("content-length").unwrap(),
            &body.len().to_string()
        );
        assert_eq!(
            &body[..],
            br#"{"error":"rate_limited","route":"r","bucket":"account","limit":5,"window_s":60,"per":"caller","retry_after":20}"#
        );
        let slots = Limit {
            count: None,
            per: Scope::Global,
            ..Limit::per_caller(Kind::Concurrency(NonZeroU32::new(10).unwrap()))
        };
        let refused = Refused {
            state: state(&slots, 10, 0, 1000),
            index: 0,
        };
        let policy = Policy::new("r", std::slice::from_ref(&slots));
        let (head, body) = plain_429(&slots, &policy, &refused).unwrap();
        assert_eq!(head.headers.get("retry-after").unwrap(), "1");
        assert!(head.headers.get("ratelimit").is_none());
        assert_eq!(
            &body[..],
            br#"{"error":"too_many_in_flight","route":"r","limit":10,"per":"global","retry_after":1}"#
        );
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let l = rate(1, 1);
        let policy = Policy::new("r", std::slice::from_ref(&l));
        let refused = Refused {
            state: state(&l, 1, 1, 1),
            index: 0,
        };
        let (head, _) = plain_429(&l, &policy, &refused).unwrap();
        assert_eq!(head.headers.get("retry-after").unwrap(), "1");
    }
}
