//! The decision for one request, Pingora-free: head checks → path → route → caller → limits →
//! store → verdict. The proxy hands it a [`RequestHead`] and acts on the [`Verdict`].

mod limit_set;
pub mod throttle;

use self::limit_set::{LimitSet, RouteLimits, Values};
use self::throttle::{Throttling, Wait};
use crate::access_log::shown_caller;
use crate::config::{AccessLog, CallerInLog, Config};
use crate::identity::{IdentityExtractor, OnMissingIdentity, RequestIds};
use crate::limiter::side::Held;
use crate::limiter::{
    Ask, Check, Decision, Kind, Limit, OnError, Receipt, Refused, Retry, Scope, StatusMatch, Store,
    StoreSide,
};
use crate::metrics::{Metrics, Outcome, RouteCounters, UpstreamError, UpstreamErrors, NO_ROUTE};
use crate::plans::{PlanInputs, Plans};
use crate::response::{RateLimitHeaders, Refusal};
use crate::routes::{normalize_path, Route, RouteTable};
use http::{HeaderMap, Method};
use prometheus::IntCounter;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// One route's part of a `/stats` answer.
pub struct RouteStats<'a> {
    pub route: &'a str,
    /// The caller's plan, on a route with `limits: plan`.
    pub plan: Option<&'a str>,
    pub limits: Vec<(&'a Limit, Check)>,
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
    /// Refused for now, but admitted soon enough to wait (a throttled route): wait, then
    /// decide again with [`Decider::decide_after`].
    Wait(Wait),
}

/// How a request was decided, for the access log.
#[derive(Debug, Default)]
pub struct Trace<'a> {
    /// The route that matched, if any, and its place in the table.
    pub route: Option<&'a str>,
    pub route_index: Option<usize>,
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
    /// The in-flight slots the request holds until it ends (see [`StoreSide::release`]).
    pub held: Option<Held>,
    /// What to settle once the response is known (limits that count by outcome).
    pub settle: Option<Box<Settle>>,
    /// How long a throttle held the request before it was admitted (`Sluice-Delay`).
    pub delay: Option<Duration>,
}

/// An admitted request's counts that its response decides: each rate limit with
/// `count: { status }` keeps the request only when the response's status matches, and on a
/// route with `cost_from` every rate limit is settled at the cost the response reports.
#[derive(Debug)]
pub struct Settle {
    /// The request's rate checks to settle, each with the statuses that keep it (`None`:
    /// kept whatever the status).
    checks: Vec<(Check, Option<StatusMatch>)>,
    /// The route's index (its `cost_from`, its counters).
    route: usize,
    receipt: Receipt,
    /// What the request counted on each (its cost).
    reserved: u32,
    /// Counted by the local fallback store (`on_error: local`), not the shared one.
    fallback: bool,
}

/// Everything a decision needs, built once from the config and shared by every worker;
/// a reload builds a new one and swaps it in whole.
pub struct Decider {
    routes: RouteTable,
    /// `limits[i]` and `counters[i]` belong to `routes[i]`; `unrouted` counts requests no route
    /// matched.
    limits: Vec<RouteLimits>,
    counters: Vec<RouteCounters>,
    unrouted: RouteCounters,
    /// `upstream_errors[i]` belongs to `routes[i]`; the last to requests no route matched.
    upstream_errors: Vec<UpstreamErrors>,
    /// `cost_counters[i]`: route i's responses that reported no cost, and more than max_cost.
    cost_counters: Vec<(IntCounter, IntCounter)>,
    /// `throttles[i]`: route i's throttle, when it has one.
    throttles: Vec<Option<Throttling>>,
    identity: IdentityExtractor,
    plans: Option<Arc<Plans>>,
    request_ids: Option<RequestIds>,
    side: Arc<StoreSide>,
    metrics: Arc<Metrics>,
    on_error: OnError,
    fallback_share: f64,
    key_prefix: String,
    max_header_bytes: usize,
    max_uri_bytes: usize,
    access_log: (AccessLog, CallerInLog),
    /// Which config this is (0 at start, +1 per reload): the denial cache serves and keeps
    /// only refusals made under the rules in force.
    generation: u64,
}

impl Decider {
    pub fn new(
        config: &Config,
        side: Arc<StoreSide>,
        metrics: Arc<Metrics>,
        generation: u64,
    ) -> Self {
        let routes = config.routes.routes();
        Self {
            limits: routes
                .iter()
                .map(|r| RouteLimits::new(r, config.plans.as_deref()))
                .collect(),
            plans: config.plans.clone(),
            counters: routes.iter().map(|r| metrics.route(&r.name)).collect(),
            unrouted: metrics.route(NO_ROUTE),
            upstream_errors: routes
                .iter()
                .map(|r| r.name.as_str())
                .chain([NO_ROUTE])
                .map(|name| metrics.upstream_errors(name))
                .collect(),
            cost_counters: routes
                .iter()
                .map(|r| metrics.cost_counters(&r.name))
                .collect(),
            throttles: routes
                .iter()
                .map(|r| {
                    let rule = r.throttle?;
                    Some(Throttling::new(rule, metrics.throttle_metrics(&r.name)))
                })
                .collect(),
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
            generation,
        }
    }

    /// Counts a request the upstream failed, on its route (`None`: no route matched).
    pub fn upstream_error(&self, route_index: Option<usize>, kind: UpstreamError) {
        let i = route_index.unwrap_or(self.upstream_errors.len() - 1);
        if let Some(c) = self.upstream_errors.get(i) {
            c.count(kind);
        }
    }

    /// Whether `peer` is one of `trusted_proxies`.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.identity.trusted.trusts(peer)
    }

    /// Which config this is: 0 at start, one more per reload.
    pub fn generation(&self) -> u64 {
        self.generation
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

    /// Re-reads the `jwt` key files that changed since they were read.
    pub fn refresh_keys(&self) -> bool {
        self.identity.refresh_keys()
    }

    /// Whether route `index` is settled by its response's trailers (`cost_from:
    /// { response_trailer }`), not its head.
    pub fn settles_at_trailers(&self, index: usize) -> bool {
        self.routes.routes()[index]
            .cost_from
            .as_ref()
            .is_some_and(|c| c.in_trailer)
    }

    /// Settles an admitted request once its response is known: `status` (0: none came) and
    /// its `headers` (`None`: no response from the upstream). A limit that counts by outcome
    /// keeps the request only when the status matches; on a route with `cost_from`, what is
    /// kept is the cost the response reports (the reservation when it reports none, or
    /// nothing readable, counted in `sluice_cost_unreported_total`; `max_cost` when it
    /// reports more, counted in `sluice_cost_clamped_total`). A failure to reach the store is
    /// logged: the reservation then stays until its window ends.
    pub async fn settle(&self, settle: Box<Settle>, status: u16, headers: Option<&HeaderMap>) {
        let reserved = settle.reserved;
        let route = &self.routes.routes()[settle.route];
        let cost = match &route.cost_from {
            None => reserved,
            Some(from) => match headers.and_then(|h| from.reported(h)) {
                Some((cost, clamped)) => {
                    if clamped {
                        self.cost_counters[settle.route].1.inc();
                    }
                    cost
                }
                _ => {
                    self.cost_counters[settle.route].0.inc();
                    reserved
                }
            },
        };
        let (mut at_cost, mut given_back) = (Vec::new(), Vec::new());
        for (check, keep) in settle.checks {
            match keep {
                Some(keep) if !keep.matches(status) => given_back.push(check),
                _ => at_cost.push(check),
            }
        }
        for (checks, to) in [(given_back, 0), (at_cost, cost)] {
            if checks.is_empty() || to == reserved {
                continue;
            }
            self.adjust(checks, settle.receipt, settle.fallback, reserved, to)
                .await;
        }
    }

    /// Replaces what an admitted request counted on `checks` by `to` units, in the store that
    /// counted it.
    async fn adjust(
        &self,
        checks: Vec<Check>,
        receipt: Receipt,
        fallback: bool,
        reserved: u32,
        to: u32,
    ) {
        if fallback {
            let scaled: Vec<Check> = checks.iter().map(|c| self.scaled(c)).collect();
            let member = receipt.member;
            self.side
                .fallback
                .adjust(&scaled, member, (reserved, to), receipt.at, None);
            return;
        }
        let adjusted = self.side.store.adjust(&checks, receipt, reserved, to);
        if let Err(e) = adjusted.await {
            log::debug!(
                "settling a response failed (its reservation stays until its window ends): {e}"
            );
        }
    }

    /// The caller a raw identity names (its hash, when identities are hashed).
    pub fn caller_of(&self, raw: Vec<u8>) -> Vec<u8> {
        self.identity.hash.caller(raw)
    }

    /// What `/stats/<user>` reads: for each limited route, the caller's plan there (by the
    /// callers file or the default, as no token or header is at hand) and the limits that
    /// apply to `user` and are keyed by the caller alone or by nothing (`global`), each with
    /// its key.
    pub fn stats(&self, user: &[u8]) -> Vec<RouteStats<'_>> {
        let headers = HeaderMap::new();
        self.routes
            .routes()
            .iter()
            .zip(&self.limits)
            .filter(|(r, _)| r.has_limits())
            .map(|(route, sets)| {
                let plan = self.plan_of(route, Some(user), None, &headers, None);
                let set = sets.for_caller(Some(user), plan.map(|(i, _)| i));
                let mut values = Values::new(&self.identity, None, &headers, None);
                let checks = set
                    .checks(&self.key_prefix, Some(user), &mut values)
                    .unwrap_or_default();
                let limits = set
                    .limits
                    .iter()
                    .zip(checks)
                    .filter(|(l, _)| l.per.is_caller() || l.per == Scope::Global)
                    .collect();
                RouteStats {
                    route: route.name.as_str(),
                    plan: plan.map(|(_, name)| name),
                    limits,
                }
            })
            .collect()
    }

    /// Decides one request. Never fails: a store fault is answered by the `on_error` policy.
    pub async fn decide<'s>(&'s self, head: &RequestHead<'_>) -> Verdict<'s> {
        self.decide_after(head, Duration::ZERO, false).await
    }

    /// Decides a request that a throttle has held for `waited` so far (zero: a new request);
    /// `queued`: it holds a ticket in its limit's queue already (see [`throttle`]).
    pub async fn decide_after<'s>(
        &'s self,
        head: &RequestHead<'_>,
        waited: Duration,
        queued: bool,
    ) -> Verdict<'s> {
        let path = match self.check_head(head) {
            Ok(path) => path,
            Err(refusal) => return self.reject(*refusal, None),
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
        let Some(index) = self
            .routes
            .position(head.method.as_str(), &path, head.headers)
        else {
            self.unrouted.count(Outcome::Unlimited);
            return forward(rewrite, None, None, trace);
        };
        let (route, counters) = (&self.routes.routes()[index], &self.counters[index]);
        trace.route = Some(&route.name);
        trace.route_index = Some(index);
        if !route.has_limits() {
            counters.count(Outcome::Unlimited);
            return forward(rewrite, None, None, trace);
        }
        let client_ip = || {
            head.peer
                .map(|p| self.identity.trusted.client_ip(p, head.headers))
        };
        if route
            .exempt
            .by_request(head.method, head.headers, client_ip)
        {
            return skip(counters, Outcome::Exempt, rewrite, trace);
        }
        let found = self
            .identity
            .caller_and_claims(head.query, head.headers, head.peer);
        let (caller, claims) = match found {
            Ok(Some((caller, claims))) => (Some(caller), claims),
            Ok(None) => (
                match route.on_missing_identity {
                    OnMissingIdentity::Anonymous => None,
                    OnMissingIdentity::ClientIp => {
                        match self.identity.client_caller(head.peer, head.headers) {
                            Ok(ip) => ip,
                            Err(e) => return self.reject(Refusal::Identity(e), Some(&route.name)),
                        }
                    }
                    OnMissingIdentity::Reject => {
                        return self.reject(Refusal::IdentityRequired, Some(&route.name))
                    }
                    OnMissingIdentity::Skip => {
                        return skip(counters, Outcome::Unidentified, rewrite, trace)
                    }
                },
                None,
            ),
            Err(e) => return self.reject(Refusal::Identity(e), Some(&route.name)),
        };
        if route.exempt.by_caller(caller.as_deref()) {
            return skip(counters, Outcome::Exempt, rewrite, trace);
        }
        let plan = self.plan_of(
            route,
            caller.as_deref(),
            claims.as_deref(),
            head.headers,
            head.peer,
        );
        let set = self.limits[index].for_caller(caller.as_deref(), plan.map(|(i, _)| i));
        let mut values = Values::new(&self.identity, head.query, head.headers, head.peer);
        let checks = match set.checks(&self.key_prefix, caller.as_deref(), &mut values) {
            Ok(checks) => checks,
            Err(e) => return self.reject(Refusal::Identity(e), Some(&route.name)),
        };
        // A refusal body template may name the caller.
        let for_template = route.refusal.body.as_ref().and_then(|_| caller.clone());
        // The caller's identity is kept only while an access log is written.
        let shown = (self.access_log.0 != AccessLog::Off || route.shadow)
            .then(|| caller.clone())
            .flatten();
        if self.access_log.0 != AccessLog::Off {
            trace.caller = caller;
        }
        if checks.is_empty() {
            counters.count(Outcome::Unlimited);
            return forward(rewrite, None, None, trace);
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
            checks: &checks,
            cost: route.cost.of(head.method.as_str()),
            retry,
        };
        let (mut outcome, decided) = self.limit(route, set, &ask).await;
        // A replayed retry counted nothing of its own: there is nothing to settle.
        let settle = match &decided {
            Decided::Admitted {
                receipt: Some((receipt, fallback)),
                ..
            } if !receipt.replayed && (set.settles || route.cost_from.is_some()) => {
                Some(Box::new(Settle {
                    checks: set
                        .limits
                        .iter()
                        .zip(&checks)
                        .filter(|(l, _)| {
                            l.kind.counts() && (l.count.is_some() || route.cost_from.is_some())
                        })
                        .map(|(l, c)| (c.clone(), l.count.clone()))
                        .collect(),
                    route: index,
                    receipt: *receipt,
                    reserved: ask.cost.max(1),
                    fallback: *fallback,
                }))
            }
            _ => None,
        };
        let shadowed = route.shadow && matches!(decided, Decided::Refused(_));
        if shadowed {
            outcome = Outcome::ShadowLimited;
        }
        let throttle = self.throttles[index].as_ref().filter(|_| !route.shadow);
        if let (Some(t), Decided::Refused(refused)) = (throttle, &decided) {
            // Counted nowhere yet: the decision after the wait is the one that counts.
            if let Some(mut wait) = t.wait(refused.state.retry, waited) {
                // A rate's first refusal joins its key's queue (a slot limit has no turns).
                let rate = set.limits[refused.index].kind.rate().filter(|_| !queued);
                let joined = match rate {
                    Some(rate) => self
                        .join_queue(&checks[refused.index].key)
                        .await
                        .map(|place| (rate, place)),
                    None => None,
                };
                match joined {
                    // Its place in the queue: can its turn come within max_delay?
                    Some((rate, (ahead, ticket))) => {
                        let turn =
                            throttle::earliest_turn(rate, refused.state.retry, ahead, ask.cost);
                        if waited + turn <= t.max_delay() {
                            wait.delay = turn.max(wait.delay);
                            wait.ticket = Some(ticket);
                            return Verdict {
                                action: Action::Wait(wait),
                                trace,
                            };
                        }
                        // Not in time: refused now, its ticket given back.
                        self.side.release(ticket).await;
                    }
                    // Queued already, a slot limit, or no queue to join (the store failed to
                    // answer): wait for the retry.
                    None => {
                        return Verdict {
                            action: Action::Wait(wait),
                            trace,
                        }
                    }
                }
            }
        }
        let delay = match (throttle, &decided) {
            (Some(t), Decided::Admitted { .. }) if !waited.is_zero() => {
                t.admitted(waited);
                Some(waited)
            }
            _ => None,
        };
        counters.count(outcome);
        trace.decision = outcome.label();
        match decided {
            // A shadow route is a dry run: it counts, and clients see nothing of it.
            Decided::Admitted { held, .. } if route.shadow => {
                forward_settled(rewrite, None, held, settle, trace)
            }
            Decided::Admitted { headers, held, .. } => {
                let mut verdict = forward_settled(rewrite, headers, held, settle, trace);
                if let Action::Forward(f) = &mut verdict.action {
                    f.delay = delay;
                }
                verdict
            }
            Decided::Refused(refused) if shadowed => {
                let who = shown_caller(shown.as_deref(), self.access_log.1);
                log::info!(target: "sluice::shadow", "shadow route {}: would refuse caller {who}", route.name);
                let _ = refused;
                forward(rewrite, None, None, trace)
            }
            Decided::Refused(refused) => refuse(
                Refusal::Limited {
                    route: &route.name,
                    plan: plan.map(|(_, name)| name),
                    limit: &set.limits[refused.index],
                    policy: &set.policy,
                    refused,
                    style: &route.refusal,
                    caller: for_template,
                },
                trace,
            ),
            Decided::Unavailable if route.shadow => forward(rewrite, None, None, trace),
            Decided::Unavailable => refuse(
                Refusal::StoreUnavailable {
                    route: &route.name,
                    format: route.refusal.format,
                },
                trace,
            ),
        }
    }

    /// The plan of a request on a route with `limits: plan` (its index and name); an unknown
    /// plan name stands for the default and is counted.
    fn plan_of(
        &self,
        route: &Route,
        caller: Option<&[u8]>,
        claims: Option<&serde_json::Value>,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Option<(usize, &str)> {
        let plans = self.plans.as_deref().filter(|_| route.uses_plan)?;
        let chosen = plans.choose(&PlanInputs {
            caller,
            claims,
            headers,
            trusted_peer: peer.is_some_and(|p| self.identity.trusted.trusts(p)),
        });
        if chosen.unknown {
            self.metrics.unknown_plan.inc();
        }
        Some((chosen.plan, plans.names[chosen.plan].as_str()))
    }

    /// Takes a ticket in the waiting queue of the limit key `key` (an in-flight slot of
    /// `<key>:q`): how many waiters are ahead of this one, and the ticket to give back when it
    /// stops waiting. `None` when the store cannot answer (the waiter then waits unqueued).
    async fn join_queue(&self, key: &str) -> Option<(u32, Held)> {
        let checks = [Check {
            key: format!("{key}:q"),
            kind: Kind::Concurrency(std::num::NonZeroU32::MAX),
        }];
        let ask = Ask {
            checks: &checks,
            cost: 1,
            retry: None,
        };
        match self.side.store.check(&ask).await {
            Ok(Decision::Admitted {
                states,
                permit: Some(permit),
                ..
            }) => {
                let place = states.first().map_or(1, |s| s.used);
                Some((place.saturating_sub(1), Held::Store(permit)))
            }
            Ok(_) => None,
            Err(e) => {
                log::debug!("store: joining a throttle queue failed: {e}");
                None
            }
        }
    }

    /// Checks the request's limits: the denial cache, then the store, then (when the store
    /// cannot answer) the route's `on_error` policy. A shadow route's refusals are counted by
    /// the caller of this function, which turns them into forwards.
    async fn limit(&self, route: &Route, set: &LimitSet, ask: &Ask<'_>) -> (Outcome, Decided) {
        // A request with a trusted request id may be a retry that only the store can recognise.
        let denials = self.side.denials.as_ref();
        if let Some(d) = denials.filter(|_| ask.retry.is_none()) {
            let now = Instant::now();
            let cached = ask.checks.iter().enumerate().find_map(|(index, c)| {
                if !c.kind.counts() {
                    return None;
                }
                let state = d.get(&c.key, ask.cost, now, self.generation)?;
                Some(Refused { state, index })
            });
            if let Some(refused) = cached {
                self.metrics.denial_cache_hits.inc();
                return (Outcome::Limited, Decided::Refused(refused));
            }
        }
        let sent = Instant::now();
        match self.side.store.check(ask).await {
            Ok(decision) => {
                let received = Instant::now();
                self.metrics
                    .store_seconds
                    .observe((received - sent).as_secs_f64());
                match decision {
                    Decision::Admitted {
                        states,
                        permit,
                        receipt,
                    } => (
                        Outcome::Admitted,
                        Decided::Admitted {
                            headers: RateLimitHeaders::admitted(&set.policy, &states),
                            held: permit.map(Held::Store),
                            receipt: Some((receipt, false)),
                        },
                    ),
                    Decision::Limited(refused) => {
                        // A refusal by counts that responses may still give back is not
                        // certain until its window passes: it is not cached.
                        if let Some(d) = denials.filter(|_| !set.settles) {
                            let key = &ask.checks[refused.index].key;
                            let at = (sent, received);
                            d.insert(key, &refused.state, ask.cost, at, self.generation);
                        }
                        (Outcome::Limited, Decided::Refused(refused))
                    }
                }
            }
            Err(e) => {
                log::debug!("store failed on route {}: {e}", route.name);
                (Outcome::StoreError, self.without_store(route, set, ask))
            }
        }
    }

    /// The route's `on_error` answer while the store cannot decide.
    fn without_store(&self, route: &Route, set: &LimitSet, ask: &Ask<'_>) -> Decided {
        match route.on_error.unwrap_or(self.on_error) {
            OnError::Allow => Decided::Admitted {
                headers: None,
                held: None,
                receipt: None,
            },
            OnError::Deny => Decided::Unavailable,
            OnError::Local => {
                let scaled: Vec<Check> = ask.checks.iter().map(|c| self.scaled(c)).collect();
                let local = Ask {
                    checks: &scaled,
                    ..*ask
                };
                match self.side.fallback.check(&local) {
                    Ok(Decision::Admitted {
                        states,
                        permit,
                        receipt,
                    }) => Decided::Admitted {
                        headers: RateLimitHeaders::admitted(&set.policy, &states),
                        held: permit.map(Held::Fallback),
                        receipt: Some((receipt, true)),
                    },
                    Ok(Decision::Limited(refused)) => Decided::Refused(refused),
                    Err(_) => Decided::Unavailable,
                }
            }
        }
    }

    /// A check as the local fallback enforces it: the limit × `fallback_share`.
    fn scaled(&self, c: &Check) -> Check {
        Check {
            key: c.key.clone(),
            kind: c.kind.scaled(self.fallback_share),
        }
    }

    /// Counts a refusal made before any limit was consulted.
    fn reject<'s>(&self, refusal: Refusal<'static>, route: Option<&'s str>) -> Verdict<'s> {
        let reason = refusal.rejection().unwrap_or("rejected");
        self.metrics.rejected.with_label_values(&[reason]).inc();
        let trace = Trace {
            route,
            route_index: None,
            caller: None,
            decision: reason,
        };
        refuse(refusal, trace)
    }

    /// Bounds and form of the request head; the path in normal form. (The refusal is boxed:
    /// it is rare, and a `Refusal` is large.)
    fn check_head<'h>(
        &self,
        head: &RequestHead<'h>,
    ) -> Result<Cow<'h, str>, Box<Refusal<'static>>> {
        if head.raw_target.len() > self.max_uri_bytes {
            return Err(Box::new(Refusal::UriTooLong {
                max_bytes: self.max_uri_bytes,
            }));
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
            return Err(Box::new(Refusal::HeadersTooLarge {
                max_bytes: self.max_header_bytes,
            }));
        }
        // Origin form only (`/path?query`), or `*` for OPTIONS: an absolute or authority form
        // names a target sluice would route by a path it did not see.
        let asterisk = head.raw_target == b"*" && head.method == Method::OPTIONS;
        if !head.raw_target.starts_with(b"/") {
            return match asterisk {
                true => Ok(Cow::Borrowed("*")),
                false => Err(Box::new(Refusal::BadTarget("invalid_target"))),
            };
        }
        normalize_path(head.path).map_err(|_| Box::new(Refusal::BadTarget("invalid_path")))
    }
}

/// What the limits (or the policy standing in for them) said.
enum Decided {
    Admitted {
        headers: Option<RateLimitHeaders>,
        held: Option<Held>,
        /// What the store counted (and whether it was the local fallback), for settling.
        receipt: Option<(Receipt, bool)>,
    },
    Refused(Refused),
    /// No decision could be made and the policy refuses: 503.
    Unavailable,
}

fn forward(
    rewrite: Option<http::Uri>,
    rate_headers: Option<RateLimitHeaders>,
    held: Option<Held>,
    trace: Trace<'_>,
) -> Verdict<'_> {
    forward_settled(rewrite, rate_headers, held, None, trace)
}

fn forward_settled(
    rewrite: Option<http::Uri>,
    rate_headers: Option<RateLimitHeaders>,
    held: Option<Held>,
    settle: Option<Box<Settle>>,
    trace: Trace<'_>,
) -> Verdict<'_> {
    Verdict {
        action: Action::Forward(Forward {
            rewrite,
            rate_headers,
            held,
            settle,
            delay: None,
        }),
        trace,
    }
}

/// Forwards a request uncounted, counted under `outcome` (exempt, unidentified).
fn skip<'s>(
    counters: &RouteCounters,
    outcome: Outcome,
    rewrite: Option<http::Uri>,
    mut trace: Trace<'s>,
) -> Verdict<'s> {
    counters.count(outcome);
    trace.decision = outcome.label();
    forward(rewrite, None, None, trace)
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

#[cfg(test)]
mod tests;
