//! The limit model: what a limit counts ([`Algorithm`], [`Limit`]), what one request costs
//! ([`Cost`]) and what a route does when the store cannot decide ([`OnError`]).

use std::num::NonZeroU32;
use std::time::Duration;

/// How a limit counts (see the README's algorithm guide for accuracy and memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Every admitted request's time, kept for the window: exact; memory grows with the limit.
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

/// One quota: at most `requests` (in cost units) in any sliding `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests: NonZeroU32,
    pub window: Duration,
    pub algorithm: Algorithm,
    /// GCRA only: how many may arrive at once (default: `requests`).
    pub burst: NonZeroU32,
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
    pub fn of(&self, method: &str) -> u32 {
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

impl Limit {
    /// This limit scaled by `share` (0, 1], rounded up and at least 1: what one of several
    /// sidecars enforces alone while the shared store is away.
    pub fn scaled(&self, share: f64) -> Limit {
        let scale = |n: NonZeroU32| {
            let scaled = (n.get() as f64 * share).ceil().max(1.0);
            NonZeroU32::new(scaled.min(u32::MAX as f64) as u32).unwrap_or(NonZeroU32::MIN)
        };
        Limit {
            requests: scale(self.requests),
            burst: scale(self.burst),
            ..*self
        }
    }

    /// A sliding-log limit (tests and examples).
    pub fn log(requests: u32, window: Duration) -> Limit {
        let requests = NonZeroU32::new(requests).unwrap_or(NonZeroU32::MIN);
        Limit {
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
