//! The decision for one request, Pingora-free: head checks → path → route → caller → limits →
//! store → verdict. The proxy hands it a [`RequestHead`] and acts on the [`Verdict`].

use crate::config::{Config, OnError};
use crate::identity::{IdentityError, IdentityExtractor, RequestIds};
use crate::limiter::denials::DenialCache;
use crate::limiter::{caller_key, Decision, MemoryLimiter, Retry, Store};
use crate::metrics::{Metrics, Outcome, RouteCounters, NO_ROUTE};
use crate::response::RateLimitHeaders;
use crate::routes::{normalize_path, Limit, RouteTable};
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

/// What to do with a request.
#[derive(Debug)]
pub enum Verdict<'a> {
    /// Send it upstream.
    Forward(Forward),
    /// Answer it here; nothing reaches the upstream.
    Refuse(Refusal<'a>),
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
    /// 429: a limit refused. `Decision::Limited` only: the limit that refused is in it.
    Limited { route: &'a str, decision: Decision },
    /// 503: the store could not answer and the policy is `deny`.
    StoreUnavailable { route: &'a str },
}

impl Refusal<'_> {
    /// The JSON `error` of a refusal made before any limit is consulted (a metric label).
    fn rejection(&self) -> Option<&'static str> {
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

/// What outlives a config reload: the store (its connections and breaker) and the state
/// derived from the store's data, which a reload or a store restart must clear.
pub struct StoreSide {
    pub store: Store,
    /// Refusals answered locally until Redis would certainly refuse again (Redis store only).
    pub denials: Option<DenialCache>,
    /// `on_error: local`: in-process limits while the store is away, dropped when it returns.
    pub fallback: MemoryLimiter,
}

impl StoreSide {
    pub fn new(store: Store, max_callers: usize) -> Self {
        Self {
            denials: store.is_remote().then(|| DenialCache::new(max_callers)),
            fallback: MemoryLimiter::new(max_callers),
            store,
        }
    }

    /// The store answers again: its decisions replace the local ones.
    pub fn store_returned(&self) {
        self.fallback.clear();
    }

    /// The store's data may be gone (it restarted) or the rules changed (a reload): no
    /// cached refusal can be trusted any more.
    pub fn forget_refusals(&self) {
        if let Some(d) = &self.denials {
            d.clear();
        }
    }
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
        }
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
            Err(refusal) => return self.reject(refusal),
        };
        let rewrite = match &path {
            Cow::Borrowed(_) => None,
            Cow::Owned(normal) => match rewritten(normal, head.query) {
                Some(uri) => Some(uri),
                None => return self.reject(Refusal::BadTarget("invalid_target")),
            },
        };
        let forward = |rate_headers| {
            Verdict::Forward(Forward {
                rewrite: rewrite.clone(),
                rate_headers,
            })
        };
        let Some(index) = self.routes.position(head.method.as_str(), &path) else {
            self.unrouted.count(Outcome::Unlimited);
            return forward(None);
        };
        let (route, counters) = (&self.routes.routes()[index], &self.counters[index]);
        if !route.has_limits() {
            counters.count(Outcome::Unlimited);
            return forward(None);
        }
        let caller = match self.identity.caller(head.query, head.headers, head.peer) {
            Ok(caller) => caller,
            Err(e) => return self.reject(Refusal::Identity(e)),
        };
        let limits = route.limits_for(caller.as_deref().unwrap_or_default());
        if limits.is_empty() {
            counters.count(Outcome::Unlimited);
            return forward(None);
        }
        let key = self.caller_key(&route.name, caller.as_deref());
        let retry = self.request_ids.as_ref().and_then(|ids| {
            let id = ids.id(&self.identity.trusted, head.peer, head.headers)?;
            Some(Retry {
                id,
                window: ids.retry_window,
                max_retries: ids.max_retries,
            })
        });
        let refused = |decision: Decision| {
            if route.shadow {
                counters.count(Outcome::ShadowLimited);
                log::info!(
                    target: "sluice::shadow",
                    "shadow route {}: would refuse {key} ({})",
                    route.name,
                    decision.refusing().map_or(0, |s| s.limit.requests.get())
                );
                return forward(None);
            }
            counters.count(Outcome::Limited);
            Verdict::Refuse(Refusal::Limited {
                route: &route.name,
                decision,
            })
        };
        // A request with a trusted request id may be a retry that only the store can recognise.
        let denials = self.side.denials.as_ref();
        if let Some(decision) = denials
            .filter(|_| retry.is_none())
            .and_then(|d| d.get(&key, Instant::now()))
        {
            self.metrics.denial_cache_hits.inc();
            return refused(decision);
        }
        let sent = Instant::now();
        match self.side.store.check(&key, limits, retry).await {
            Ok(decision) => {
                let received = Instant::now();
                self.metrics
                    .store_seconds
                    .observe((received - sent).as_secs_f64());
                if decision.is_admitted() {
                    counters.count(Outcome::Admitted);
                    return forward(RateLimitHeaders::new(&route.name, &decision));
                }
                if let Some(d) = denials {
                    d.insert(&key, &decision, sent, received);
                }
                refused(decision)
            }
            Err(e) => {
                log::debug!("store failed on route {}: {e}", route.name);
                counters.count(Outcome::StoreError);
                let unavailable = || match route.shadow {
                    true => forward(None),
                    false => Verdict::Refuse(Refusal::StoreUnavailable { route: &route.name }),
                };
                match route.on_error.unwrap_or(self.on_error) {
                    OnError::Allow => forward(None),
                    OnError::Deny => unavailable(),
                    OnError::Local => {
                        let scaled: Vec<Limit> = limits
                            .iter()
                            .map(|l| l.scaled(self.fallback_share))
                            .collect();
                        match self.side.fallback.check(&key, &scaled, retry) {
                            Ok(d) if d.is_admitted() => {
                                forward(RateLimitHeaders::new(&route.name, &d))
                            }
                            Ok(d) if !route.shadow => Verdict::Refuse(Refusal::Limited {
                                route: &route.name,
                                decision: d,
                            }),
                            Ok(_) => forward(None),
                            Err(_) => unavailable(),
                        }
                    }
                }
            }
        }
    }

    /// Counts a refusal made before any limit was consulted.
    fn reject(&self, refusal: Refusal<'static>) -> Verdict<'static> {
        if let Some(reason) = refusal.rejection() {
            self.metrics.rejected.with_label_values(&[reason]).inc();
        }
        Verdict::Refuse(refusal)
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

/// The target to send upstream: the normal path and the query as the client sent it.
fn rewritten(path: &str, query: Option<&str>) -> Option<http::Uri> {
    let target = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    http::Uri::try_from(target).ok()
}
