//! The decision for one request, Pingora-free: head checks → path → route → caller → limits →
//! store → verdict. The proxy hands it a [`RequestHead`] and acts on the [`Verdict`].

use crate::config::{AccessLog, CallerInLog, Config};
use crate::identity::{IdentityExtractor, RequestIds};
use crate::limiter::{caller_key, Ask, Decision, Limit, OnError, Refused, Retry, Store, StoreSide};
use crate::metrics::{Metrics, Outcome, RouteCounters, NO_ROUTE};
use crate::response::{RateLimitHeaders, Refusal};
use crate::routes::{normalize_path, Route, RouteTable};
use http::{HeaderMap, Method};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// What the decision reads of a request.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// The request target exactly as the client sent it.
    pub raw_target: &'a [u8],
    /// The target's path and query as parsed (the path percent-encoded as sent).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The TCP peer (a load balancer, or the client itself).
    pub peer: Option<IpAddr>,
}

/// What to do with a request, and what the access log says of it.
#[derive(Debug)]
pub struct Verdict<'a> {
    pub action: Action<'a>,
    pub trace: Trace<'a>,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Action<'a> {
    /// Send it upstream.
    Forward(Forward),
    /// Answer it here; nothing reaches the upstream.
    Refuse(Refusal<'a>),
}

/// How a request was decided, for the access log.
#[derive(Debug, Default)]
pub struct Trace<'a> {
    /// The route that matched, if any.
    pub route: Option<&'a str>,
    /// The caller's identity; kept only while an access log is written.
    pub caller: Option<Vec<u8>>,
    /// The `decision` label (`admitted`, `limited`, ...) or the reason a request was refused
    /// before any limit (`invalid_target`, `identity_too_long`, ...).
    pub decision: &'static str,
}

/// How an admitted request goes upstream.
#[derive(Debug, Default)]
pub struct Forward {
    /// The request target to send when the path's normal form differs from what the client
    /// sent: the path the route was chosen by, the query untouched.
    pub rewrite: Option<http::Uri>,
    /// The RateLimit headers for the response (limited routes only).
    pub rate_headers: Option<RateLimitHeaders>,
}

/// Everything a decision needs, built once from the config and shared by every worker;
/// a reload builds a new one and swaps it in whole.
pub struct Decider {
    routes: RouteTable,
    /// `counters[i]` counts `routes[i]`; `unrouted` counts requests no route matched.
    counters: Vec<RouteCounters>,
    unrouted: RouteCounters,
    identity: IdentityExtractor,
    request_ids: Option<RequestIds>,
    side: Arc<StoreSide>,
    metrics: Arc<Metrics>,
    on_error: OnError,
    fallback_share: f64,
    key_prefix: String,
    max_header_bytes: usize,
    max_uri_bytes: usize,
    access_log: (AccessLog, CallerInLog),
}

impl Decider {
    pub fn new(config: &Config, side: Arc<StoreSide>, metrics: Arc<Metrics>) -> Self {
        Self {
            counters: config
                .routes
                .routes()
                .iter()
                .map(|r| metrics.route(&r.name))
                .collect(),
            unrouted: metrics.route(NO_ROUTE),
            routes: config.routes.clone(),
            identity: config.identity.clone(),
            request_ids: config.request_ids.clone(),
            side,
            metrics,
            on_error: config.store.on_error,
            fallback_share: config.store.fallback_share,
            key_prefix: config.store.prefix.clone(),
            max_header_bytes: config.server.max_header_bytes,
            max_uri_bytes: config.server.max_uri_bytes,
            access_log: (config.server.access_log, config.server.access_log_caller),
        }
    }

    /// The access log's format and how it shows callers.
    pub fn access_log(&self) -> (AccessLog, CallerInLog) {
        self.access_log
    }

    pub fn store(&self) -> &Store {
        &self.side.store
    }

    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// The store key of `caller` on `route` (what `/stats` reads).
    pub fn caller_key(&self, route: &str, caller: Option<&[u8]>) -> String {
        caller_key(&self.key_prefix, route, caller)
    }

    /// Decides one request. Never fails: a store fault is answered by the `on_error` policy.
    pub async fn decide<'s>(&'s self, head: &RequestHead<'_>) -> Verdict<'s> {
        let path = match self.check_head(head) {
            Ok(path) => path,
            Err(refusal) => return self.reject(refusal, None),
        };
        let rewrite = match &path {
            Cow::Borrowed(_) => None,
            Cow::Owned(normal) => match rewritten(normal, head.query) {
                Some(uri) => Some(uri),
                None => return self.reject(Refusal::BadTarget("invalid_target"), None),
            },
        };
        let mut trace = Trace {
            decision: Outcome::Unlimited.label(),
            ..Trace::default()
        };
        let Some(index) = self.routes.position(head.method.as_str(), &path) else {
            self.unrouted.count(Outcome::Unlimited);
            return forward(rewrite, None, trace);
        };
        let (route, counters) = (&self.routes.routes()[index], &self.counters[index]);
        trace.route = Some(&route.name);
        if !route.has_limits() {
            counters.count(Outcome::Unlimited);
            return forward(rewrite, None, trace);
        }
        let caller = match self.identity.caller(head.query, head.headers, head.peer) {
            Ok(caller) => caller,
            Err(e) => return self.reject(Refusal::Identity(e), Some(&route.name)),
        };
        let limits = route.limits_for(caller.as_deref().unwrap_or_default());
        let key = self.caller_key(&route.name, caller.as_deref());
        // The caller's identity is kept only while an access log is written.
        if self.access_log.0 != AccessLog::Off {
            trace.caller = caller;
        }
        if limits.is_empty() {
            counters.count(Outcome::Unlimited);
            return forward(rewrite, None, trace);
        }
        let retry = self.request_ids.as_ref().and_then(|ids| {
            let id = ids.id(&self.identity.trusted, head.peer, head.headers)?;
            Some(Retry {
                id,
                window: ids.retry_window,
                max_retries: ids.max_retries,
            })
        });
        let ask = Ask {
            key: &key,
            limits,
            cost: route.cost.of(head.method.as_str()),
            retry,
        };
        let (mut outcome, decided) = self.limit(route, &ask).await;
        let shadowed = route.shadow && matches!(decided, Decided::Refused(_));
        if shadowed {
            outcome = Outcome::ShadowLimited;
        }
        counters.count(outcome);
        trace.decision = outcome.label();
        match decided {
            Decided::Admitted(headers) => forward(rewrite, headers, trace),
            Decided::Refused(_) if shadowed => {
                log::info!(target: "sluice::shadow", "shadow route {}: would refuse {key}", route.name);
                forward(rewrite, None, trace)
            }
            Decided::Refused(refused) => refuse(
                Refusal::Limited {
                    route: &route.name,
                    refused,
                },
                trace,
            ),
            Decided::Unavailable if route.shadow => forward(rewrite, None, trace),
            Decided::Unavailable => refuse(Refusal::StoreUnavailable { route: &route.name }, trace),
        }
    }

    /// Checks `limits` for `key`: the denial cache, then the store, then (when the store
    /// cannot answer) the route's `on_error` policy. A shadow route's refusals are counted by
    /// the caller of this function, which turns them into forwards.
    async fn limit(&self, route: &Route, ask: &Ask<'_>) -> (Outcome, Decided) {
        let key = ask.key;
        // A request with a trusted request id may be a retry that only the store can recognise.
        let denials = self.side.denials.as_ref();
        if let Some(refused) = denials
            .filter(|_| ask.retry.is_none())
            .and_then(|d| d.get(key, ask.cost, Instant::now()))
        {
            self.metrics.denial_cache_hits.inc();
            return (Outcome::Limited, Decided::Refused(refused));
        }
        let sent = Instant::now();
        match self.side.store.check(ask).await {
            Ok(decision) => {
                let received = Instant::now();
                self.metrics
                    .store_seconds
                    .observe((received - sent).as_secs_f64());
                match decision {
                    Decision::Admitted { .. } => (
                        Outcome::Admitted,
                        Decided::Admitted(RateLimitHeaders::new(&route.name, &decision)),
                    ),
                    Decision::Limited(refused) => {
                        if let Some(d) = denials {
                            d.insert(key, &refused, ask.cost, sent, received);
                        }
                        (Outcome::Limited, Decided::Refused(refused))
                    }
                }
            }
            Err(e) => {
                log::debug!("store failed on route {}: {e}", route.name);
                (Outcome::StoreError, self.without_store(route, ask))
            }
        }
    }

    /// The route's `on_error` answer while the store cannot decide.
    fn without_store(&self, route: &Route, ask: &Ask<'_>) -> Decided {
        match route.on_error.unwrap_or(self.on_error) {
            OnError::Allow => Decided::Admitted(None),
            OnError::Deny => Decided::Unavailable,
            OnError::Local => {
                let scaled: Vec<Limit> = ask
                    .limits
                    .iter()
                    .map(|l| l.scaled(self.fallback_share))
                    .collect();
                let local = Ask {
                    limits: &scaled,
                    ..*ask
                };
                match self.side.fallback.check(&local) {
                    Ok(d @ Decision::Admitted { .. }) => {
                        Decided::Admitted(RateLimitHeaders::new(&route.name, &d))
                    }
                    Ok(Decision::Limited(refused)) => Decided::Refused(refused),
                    Err(_) => Decided::Unavailable,
                }
            }
        }
    }

    /// Counts a refusal made before any limit was consulted.
    fn reject<'s>(&self, refusal: Refusal<'static>, route: Option<&'s str>) -> Verdict<'s> {
        let reason = refusal.rejection().unwrap_or("rejected");
        self.metrics.rejected.with_label_values(&[reason]).inc();
        let trace = Trace {
            route,
            caller: None,
            decision: reason,
        };
        refuse(refusal, trace)
    }

    /// Bounds and form of the request head; the path in normal form.
    fn check_head<'h>(&self, head: &RequestHead<'h>) -> Result<Cow<'h, str>, Refusal<'static>> {
        if head.raw_target.len() > self.max_uri_bytes {
            return Err(Refusal::UriTooLong {
                max_bytes: self.max_uri_bytes,
            });
        }
        let head_bytes = head.method.as_str().len()
            + head.raw_target.len()
            + 12
            + head
                .headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>();
        if head_bytes > self.max_header_bytes {
            return Err(Refusal::HeadersTooLarge {
                max_bytes: self.max_header_bytes,
            });
        }
        // Origin form only (`/path?query`), or `*` for OPTIONS: an absolute or authority form
        // names a target sluice would route by a path it did not see.
        let asterisk = head.raw_target == b"*" && head.method == Method::OPTIONS;
        if !head.raw_target.starts_with(b"/") {
            return match asterisk {
                true => Ok(Cow::Borrowed("*")),
                false => Err(Refusal::BadTarget("invalid_target")),
            };
        }
        normalize_path(head.path).map_err(|_| Refusal::BadTarget("invalid_path"))
    }
}

/// What the limits (or the policy standing in for them) said.
enum Decided {
    Admitted(Option<RateLimitHeaders>),
    Refused(Refused),
    /// No decision could be made and the policy refuses: 503.
    Unavailable,
}

fn forward(
    rewrite: Option<http::Uri>,
    rate_headers: Option<RateLimitHeaders>,
    trace: Trace<'_>,
) -> Verdict<'_> {
    Verdict {
        action: Action::Forward(Forward {
            rewrite,
            rate_headers,
        }),
        trace,
    }
}

fn refuse<'s>(refusal: Refusal<'s>, trace: Trace<'s>) -> Verdict<'s> {
    Verdict {
        action: Action::Refuse(refusal),
        trace,
    }
}

/// The target to send upstream: the normal path and the query as the client sent it.
fn rewritten(path: &str, query: Option<&str>) -> Option<http::Uri> {
    let target = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    http::Uri::try_from(target).ok()
}
