//! Prometheus metrics: one registry per process, counters resolved once per route so the
//! request path only increments atomics (no label lookup, no lock).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// How a request on a route was decided (the `decision` label of `sluice_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted by the store and forwarded.
    Admitted,
    /// Refused with 429 (by the store or the denial cache).
    Limited,
    /// Decided without the store (breaker open, timeout, error): the `on_error` policy.
    StoreError,
    /// A shadow route's would-be refusal, forwarded.
    ShadowLimited,
    /// No limit applies (no route, or a route or override without limits).
    Unlimited,
    /// Forwarded uncounted by an `exempt:` rule (network, caller, method, CORS preflight).
    Exempt,
    /// Named no caller on a route with `on_missing_identity: skip`: forwarded uncounted.
    Unidentified,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Admitted,
        Outcome::Limited,
        Outcome::StoreError,
        Outcome::ShadowLimited,
        Outcome::Unlimited,
        Outcome::Exempt,
        Outcome::Unidentified,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Admitted => "admitted",
            Outcome::Limited => "limited",
            Outcome::StoreError => "store_error",
            Outcome::ShadowLimited => "shadow_limited",
            Outcome::Unlimited => "unlimited",
            Outcome::Exempt => "exempt",
            Outcome::Unidentified => "unidentified",
        }
    }
}

/// The `route` label of requests that match no route.
pub const NO_ROUTE: &str = "(none)";

/// One route's request counters, one per [`Outcome`].
#[derive(Clone)]
pub struct RouteCounters([IntCounter; 7]);

impl RouteCounters {
    pub fn count(&self, outcome: Outcome) {
        self.0[outcome as usize].inc();
    }
}

/// Every metric sluice exports.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    /// Requests refused for what they are, before any route: `reason` is the JSON error.
    pub rejected: IntCounterVec,
    pub denial_cache_hits: IntCounter,
    pub store_seconds: Histogram,
    /// 1 while the store answers, 0 while it does not.
    pub store_up: IntGauge,
    /// 1 while the breaker is open.
    pub breaker_open: IntGauge,
    upstream: [IntCounter; 5],
    pub reloads: IntCounterVec,
    /// Decisions across Redis Cluster slots refused after reserving on another slot.
    store_rollbacks: IntCounter,
    /// In-flight slots this sidecar holds now.
    slots_held: IntGauge,
    /// Access-log lines dropped because the writer was behind.
    access_log_dropped: IntCounter,
    /// Requests let through that then broke (a broken request body, an internal error):
    /// `reason` is the JSON error sluice answered with.
    pub proxy_errors: IntCounterVec,
    /// Requests the upstream failed, by route and `kind` (`timeout`, `unavailable`).
    upstream_errors: IntCounterVec,
    /// Requests whose plan source named a plan that does not exist (the default stood in).
    pub unknown_plan: IntCounter,
    /// Responses on a `cost_from` route that reported no readable cost, and more than
    /// `max_cost`, by route.
    cost_unreported: IntCounterVec,
    cost_clamped: IntCounterVec,
    /// Requests a `throttle:` held and then admitted, and how long, by route.
    throttled: IntCounterVec,
    throttle_delay: HistogramVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("sluice_requests_total", "Requests by route and decision"),
            &["route", "decision"],
        )
        .expect("valid metric");
        let rejected = IntCounterVec::new(
            Opts::new(
                "sluice_rejected_requests_total",
                "Requests refused before routing (bad target, oversized head, bad identity)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let denial_cache_hits = IntCounter::new(
            "sluice_denial_cache_hits_total",
            "Refusals answered from the local denial cache without a store call",
        )
        .expect("valid metric");
        let store_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_store_call_seconds",
                "Latency of store calls that decided a request",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0,
            ]),
        )
        .expect("valid metric");
        let store_up = IntGauge::new("sluice_store_up", "1 while the store answers, else 0")
            .expect("valid metric");
        let breaker_open = IntGauge::new(
            "sluice_store_breaker_open",
            "1 while the store's circuit breaker is open (no store calls are made)",
        )
        .expect("valid metric");
        let upstream_vec = IntCounterVec::new(
            Opts::new(
                "sluice_upstream_responses_total",
                "Upstream responses by status class",
            ),
            &["class"],
        )
        .expect("valid metric");
        let upstream =
            ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| upstream_vec.with_label_values(&[c]));
        let reloads = IntCounterVec::new(
            Opts::new(
                "sluice_config_reloads_total",
                "Config reloads (SIGHUP) by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        for r in ["success", "failure"] {
            reloads.with_label_values(&[r]);
        }
        let store_rollbacks = IntCounter::new(
            "sluice_store_rollbacks_total",
            "Decisions across Redis Cluster slots that reserved on one slot, were refused on another and gave back what they reserved",
        )
        .expect("valid metric");
        let slots_held = IntGauge::new(
            "sluice_in_flight_slots",
            "In-flight (concurrency) slots this sidecar holds now",
        )
        .expect("valid metric");
        let access_log_dropped = IntCounter::new(
            "sluice_access_log_dropped_total",
            "Access-log lines dropped because stdout did not keep up (65,536 lines queued)",
        )
        .expect("valid metric");
        let build = IntGaugeVec::new(
            Opts::new("sluice_build_info", "sluice's version; always 1"),
            &["version"],
        )
        .expect("valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let proxy_errors = IntCounterVec::new(
            Opts::new(
                "sluice_proxy_errors_total",
                "Requests let through that then broke (not the upstream's fault)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "sluice_upstream_errors_total",
                "Requests the upstream failed: it did not answer in time, or could not be reached",
            ),
            &["route", "kind"],
        )
        .expect("valid metric");
        let unknown_plan = IntCounter::new(
            "sluice_unknown_plan_total",
            "Requests whose plan source named a plan that does not exist (the default plan stood in)",
        )
        .expect("valid metric");
        let cost_unreported = IntCounterVec::new(
            Opts::new(
                "sluice_cost_unreported_total",
                "Responses on a cost_from route without a readable cost: settled at the reservation",
            ),
            &["route"],
        )
        .expect("valid metric");
        let cost_clamped = IntCounterVec::new(
            Opts::new(
                "sluice_cost_clamped_total",
                "Responses on a cost_from route that reported more than max_cost: settled at max_cost",
            ),
            &["route"],
        )
        .expect("valid metric");
        let throttled = IntCounterVec::new(
            Opts::new(
                "sluice_throttled_total",
                "Requests a throttle held in the sidecar and then admitted",
            ),
            &["route"],
        )
        .expect("valid metric");
        let throttle_delay = HistogramVec::new(
            HistogramOpts::new(
                "sluice_throttle_delay_seconds",
                "How long throttled requests waited before they were admitted",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        store_up.set(1);
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rejected.clone()),
            Box::new(denial_cache_hits.clone()),
            Box::new(store_seconds.clone()),
            Box::new(store_up.clone()),
            Box::new(breaker_open.clone()),
            Box::new(upstream_vec),
            Box::new(reloads.clone()),
            Box::new(store_rollbacks.clone()),
            Box::new(slots_held.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(proxy_errors.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(unknown_plan.clone()),
            Box::new(cost_unreported.clone()),
            Box::new(cost_clamped.clone()),
            Box::new(throttled.clone()),
            Box::new(throttle_delay.clone()),
            Box::new(build),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            rejected,
            denial_cache_hits,
            store_seconds,
            store_up,
            breaker_open,
            upstream,
            reloads,
            store_rollbacks,
            slots_held,
            access_log_dropped,
            proxy_errors,
            upstream_errors,
            unknown_plan,
            cost_unreported,
            cost_clamped,
            throttled,
            throttle_delay,
        }
    }

    /// A route's throttle counter and delay histogram, resolved once.
    pub fn throttle_metrics(&self, route: &str) -> (IntCounter, Histogram) {
        (
            self.throttled.with_label_values(&[route]),
            self.throttle_delay.with_label_values(&[route]),
        )
    }

    /// A route's `[unreported, clamped]` cost counters, resolved once.
    pub fn cost_counters(&self, route: &str) -> (IntCounter, IntCounter) {
        (
            self.cost_unreported.with_label_values(&[route]),
            self.cost_clamped.with_label_values(&[route]),
        )
    }

    /// Brings counts kept elsewhere into the registry (read when `/metrics` is scraped, so the
    /// request path never touches them): the store's rollbacks and held slots, and the access
    /// log's dropped lines.
    pub fn observe(&self, rollbacks: u64, slots_held: usize, dropped: u64) {
        let seen = self.store_rollbacks.get();
        self.store_rollbacks.inc_by(rollbacks.saturating_sub(seen));
        self.slots_held.set(slots_held as i64);
        let seen = self.access_log_dropped.get();
        self.access_log_dropped.inc_by(dropped.saturating_sub(seen));
    }

    /// The counters of `route` (created at zero, so every route shows in `/metrics`).
    pub fn route(&self, route: &str) -> RouteCounters {
        RouteCounters(Outcome::ALL.map(|o| self.requests.with_label_values(&[route, o.label()])))
    }

    /// A route's upstream-error counters, resolved once: `[timeout, unavailable]`.
    pub fn upstream_errors(&self, route: &str) -> UpstreamErrors {
        UpstreamErrors(
            [UpstreamError::Timeout, UpstreamError::Unavailable]
                .map(|k| self.upstream_errors.with_label_values(&[route, k.label()])),
        )
    }

    /// Counts an upstream response by its status class.
    pub fn upstream_status(&self, status: u16) {
        if let Some(c) = self.upstream.get((status / 100).wrapping_sub(1) as usize) {
            c.inc();
        }
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::warn!("metrics: cannot encode: {e}");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Why the upstream failed a request (the `kind` label of `sluice_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// A read or write waited longer than `upstream.read_timeout`/`write_timeout`: 504.
    Timeout,
    /// No upstream could be reached (refused, reset, connect timeout): 502.
    Unavailable,
}

impl UpstreamError {
    pub fn label(self) -> &'static str {
        match self {
            UpstreamError::Timeout => "timeout",
            UpstreamError::Unavailable => "unavailable",
        }
    }

    /// The status sluice answers with, and its JSON error.
    pub fn answer(self) -> (u16, &'static str) {
        match self {
            UpstreamError::Timeout => (504, "upstream_timeout"),
            UpstreamError::Unavailable => (502, "upstream_unavailable"),
        }
    }
}

/// One route's `sluice_upstream_errors_total` counters.
#[derive(Clone)]
pub struct UpstreamErrors([IntCounter; 2]);

impl UpstreamErrors {
    pub fn count(&self, kind: UpstreamError) {
        self.0[kind as usize].inc();
    }
}
