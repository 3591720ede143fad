//! What clients see of a decision: the RateLimit headers and the 429 and 503 responses.
//!
//! One helper builds the headers for both paths (admitted responses from the upstream and
//! the 429s sluice writes itself), so the two can never disagree.

use crate::config::format_duration;
use crate::identity::IdentityError;
use crate::limiter::{Decision, LimitState, Refused};
use bytes::Bytes;
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
    /// 400: the identity is too long or holds a control character.
    Identity(IdentityError),
    /// 429: a limit refused; `refused` names the limit that refuses longest.
    Limited { route: &'a str, refused: Refused },
    /// 503: the store could not answer and the policy is `deny`.
    StoreUnavailable { route: &'a str },
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
            Refusal::Limited { .. } | Refusal::StoreUnavailable { .. } => return None,
        })
    }
}

/// Whole seconds, rounded up: a client that waits this long is never early.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000) as u64
}

/// The header values of one decision, computed once and applied to whichever response goes out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub policy: String,
    pub ratelimit: String,
    pub limit: u32,
    pub remaining: u32,
    pub reset: u64,
}

impl RateLimitHeaders {
    /// `RateLimit-Policy` lists every limit; `RateLimit` and the `X-` headers report one: the
    /// limit with the least remaining (a tie goes to the longer window) or, for a refusal, the
    /// limit that refuses longest.
    pub fn new(route: &str, decision: &Decision) -> Option<Self> {
        Self::build(route, decision.states(), decision.refusing())
    }

    /// The headers of a refusal: every limit, and the one that refuses longest.
    pub fn refused(route: &str, refused: &Refused) -> Option<Self> {
        Self::build(route, refused.states(), Some(refused.refusing()))
    }

    /// `refusing` is the refusing limit of a refused request, `None` for an admitted one.
    fn build(route: &str, states: &[LimitState], refusing: Option<&LimitState>) -> Option<Self> {
        let admitted = refusing.is_none();
        let reported = match refusing {
            Some(refusing) => refusing,
            None => states
                .iter()
                .min_by_key(|s| (s.remaining, Reverse(s.limit.window)))?,
        };
        let policy = states
            .iter()
            .map(|s| {
                format!(
                    "\"{}\";q={};w={}",
                    policy_name(route, states, s),
                    s.limit.requests,
                    s.limit.window_secs()
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let reset = match admitted {
            true => ceil_secs(reported.reset),
            false => retry_after_secs(reported),
        };
        let remaining = if admitted { reported.remaining } else { 0 };
        Some(Self {
            ratelimit: format!(
                "\"{}\";r={remaining};t={reset}",
                policy_name(route, states, reported)
            ),
            policy,
            limit: reported.limit.requests.get(),
            remaining,
            reset,
        })
    }

    pub fn apply(&self, h: &mut ResponseHeader) -> pingora::Result<()> {
        h.insert_header("RateLimit-Policy", &self.policy)?;
        h.insert_header("RateLimit", &self.ratelimit)?;
        h.insert_header("X-RateLimit-Limit", self.limit.to_string())?;
        h.insert_header("X-RateLimit-Remaining", self.remaining.to_string())?;
        h.insert_header("X-RateLimit-Reset", self.reset.to_string())?;
        Ok(())
    }
}

/// The route's name when it has one limit; `route-window` for each when it has several.
fn policy_name(route: &str, states: &[LimitState], s: &LimitState) -> String {
    match states.len() {
        1 => route.to_string(),
        _ => format!("{route}-{}", format_duration(s.limit.window)),
    }
}

/// `Retry-After`: whole seconds, at least 1, never before a request would be admitted.
pub fn retry_after_secs(refusing: &LimitState) -> u64 {
    ceil_secs(refusing.retry).max(1)
}

/// A complete 429 for a refused request: headers (Content-Length included, so the
/// connection stays open for the next request) and the JSON body.
pub fn too_many_requests(
    route: &str,
    refused: &Refused,
) -> pingora::Result<(Box<ResponseHeader>, Bytes)> {
    let refusing = refused.refusing();
    let retry_after = retry_after_secs(refusing);
    let body = format!(
        "{{\"error\":\"rate_limited\",\"route\":\"{route}\",\"limit\":{},\"window_s\":{},\"retry_after\":{retry_after}}}",
        refusing.limit.requests,
        refusing.limit.window_secs(),
    );
    let mut h = json_header(429, body.len())?;
    h.insert_header("Retry-After", retry_after.to_string())?;
    if let Some(headers) = RateLimitHeaders::refused(route, refused) {
        headers.apply(&mut h)?;
    }
    Ok((h, Bytes::from(body)))
}

/// The complete response for a request sluice answers itself.
pub fn refusal(r: &Refusal<'_>) -> pingora::Result<(Box<ResponseHeader>, Bytes)> {
    let (status, body) = match r {
        Refusal::Limited { route, refused } => return too_many_requests(route, refused),
        Refusal::StoreUnavailable { route } => return store_unavailable(route),
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
    };
    let h = json_header(status, body.len())?;
    Ok((h, Bytes::from(body)))
}

/// A 503 for `on_error: deny` while the store cannot answer.
pub fn store_unavailable(route: &str) -> pingora::Result<(Box<ResponseHeader>, Bytes)> {
    let body = format!("{{\"error\":\"store_unavailable\",\"route\":\"{route}\"}}");
    let mut h = json_header(503, body.len())?;
    h.insert_header("Retry-After", "1")?;
    Ok((h, Bytes::from(body)))
}

fn json_header(status: u16, len: usize) -> pingora::Result<Box<ResponseHeader>> {
    let mut h = ResponseHeader::build(status, Some(6))?;
    h.insert_header("Content-Type", "application/json")?;
    h.insert_header("Content-Length", len.to_string())?;
    h.insert_header("Cache-Control", "no-store")?;
    Ok(Box::new(h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Limit;

    fn state(requests: u32, window_s: u64, used: u32, reset_ms: u64, retry_ms: u64) -> LimitState {
        LimitState {
            limit: Limit::log(requests, Duration::from_secs(window_s)),
            used,
            remaining: requests.saturating_sub(used),
            reset: Duration::from_millis(reset_ms),
            retry: Duration::from_millis(retry_ms),
        }
    }

    #[test]
    fn one_limit_admitted() {
        let d = Decision::Admitted {
            states: vec![state(100, 60, 63, 40_200, 0)],
        };
        let h = RateLimitHeaders::new("api", &d).unwrap();
        assert_eq!(h.policy, "\"api\";q=100;w=60");
        assert_eq!(h.ratelimit, "\"api\";r=37;t=41");
        assert_eq!((h.limit, h.remaining, h.reset), (100, 37, 41));
    }

    #[test]
    fn least_remaining_is_reported_and_ties_go_to_the_longer_window() {
        let d = Decision::Admitted {
            states: vec![
                state(10, 1, 8, 500, 0),
                state(1000, 3600, 998, 3_000_000, 0),
            ],
        };
        let h = RateLimitHeaders::new("api", &d).unwrap();
        assert_eq!(h.policy, "\"api-1s\";q=10;w=1, \"api-1h\";q=1000;w=3600");
        assert_eq!(h.ratelimit, "\"api-1h\";r=2;t=3000");
    }

    #[test]
    fn a_refusal_reports_the_limit_that_refuses_longest() {
        let r = Refused::new(vec![
            state(2, 1, 2, 300, 300),
            state(5, 60, 5, 20_000, 20_000),
        ])
        .unwrap();
        let h = RateLimitHeaders::new("r", &Decision::Limited(r.clone())).unwrap();
        assert_eq!(h.ratelimit, "\"r-1m\";r=0;t=20");
        let (head, body) = too_many_requests("r", &r).unwrap();
        assert_eq!(head.status.as_u16(), 429);
        assert_eq!(head.headers.get("retry-after").unwrap(), "20");
        assert_eq!(
            head.headers.get("content-length").unwrap(),
            &body.len().to_string()
        );
        assert_eq!(
            &body[..],
            br#"{"error":"rate_limited","route":"r","limit":5,"window_s":60,"retry_after":20}"#
        );
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let r = Refused::new(vec![state(1, 1, 1, 1, 1)]).unwrap();
        let (head, _) = too_many_requests("r", &r).unwrap();
        assert_eq!(head.headers.get("retry-after").unwrap(), "1");
    }
}
