//! The in-process store: every algorithm, exact for one instance, and Redis's semantics to the
//! letter (the same steps as `check.lua`, in [`super::algorithms`]).

use super::algorithms::{micros, State};
use super::shards::Shards;
use super::{Algorithm, Limit};
use super::{Ask, Decision, LimitState, Retry, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A source of monotonic time in microseconds; injected so tests can move time by hand.
pub trait Clock: Send + Sync {
    fn now_us(&self) -> u64;
}

/// Microseconds since the limiter was created, from the monotonic clock.
pub struct MonotonicClock(Instant);

impl Clock for MonotonicClock {
    fn now_us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// A clock that only moves when told to (tests).
#[derive(Default)]
pub struct ManualClock(pub AtomicU64);

impl ManualClock {
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// One caller's state on one route: one [`State`] per limit (by algorithm and window).
#[derive(Default)]
struct CallerLog {
    limits: Vec<(Algorithm, u64, State)>,
    /// Request ids counted within their retry window: (id, window end, retries so far).
    ids: Vec<(Box<str>, u64, u32)>,
    /// When every queue is empty, so the sweeper may drop the whole entry.
    expires_at: u64,
}

impl CallerLog {
    /// Whether a request with `retry` repeats an id counted within its window and budget; if
    /// so the repeat is taken from the budget. Expired ids are dropped first.
    fn replay(&mut self, retry: Option<Retry<'_>>, now: u64) -> bool {
        self.ids.retain(|(_, until, _)| *until > now);
        let Some(r) = retry else {
            return false;
        };
        match self.ids.iter_mut().find(|(id, _, _)| **id == *r.id) {
            Some((_, _, retried)) if *retried < r.max_retries => {
                *retried += 1;
                true
            }
            _ => false,
        }
    }

    /// Remembers the first counting of `retry`'s id (a later one leaves it as it is).
    fn remember(&mut self, retry: Option<Retry<'_>>, now: u64) {
        if let Some(r) = retry {
            if !self.ids.iter().any(|(id, _, _)| **id == *r.id) {
                let until = now + micros(r.window);
                self.ids.push((r.id.into(), until, 0));
                self.expires_at = self.expires_at.max(until);
            }
        }
    }

    /// The state of `limit`, made empty on first use.
    fn state(&mut self, limit: &Limit) -> &mut State {
        let id = (limit.algorithm, micros(limit.window));
        let i = match self.limits.iter().position(|(a, w, _)| (*a, *w) == id) {
            Some(i) => i,
            None => {
                self.limits.push((id.0, id.1, State::new(id.0)));
                self.limits.len() - 1
            }
        };
        &mut self.limits[i].2
    }

    /// Both phases for every limit; `count` is false for a peek.
    fn decide(
        &mut self,
        limits: &[Limit],
        now: u64,
        cost: u32,
        replay: bool,
        may_count: bool,
    ) -> (bool, Vec<super::Parts>) {
        let looks: Vec<_> = limits
            .iter()
            .map(|l| self.state(l).look(l, now, cost))
            .collect();
        let admitted = replay || looks.iter().all(|l| l.ok);
        let count = admitted && !replay && may_count;
        let parts = limits
            .iter()
            .zip(looks)
            .map(|(l, look)| self.state(l).finish(look, l, now, cost, count, !admitted))
            .collect();
        if count {
            let until = limits
                .iter()
                .map(|l| self.state(l).expires_at(l))
                .max()
                .unwrap_or(0);
            self.expires_at = self.expires_at.max(until);
        }
        (admitted, parts)
    }
}

const SHARDS: usize = 64;
/// Every this many decisions, one shard is swept of callers whose windows have emptied.
const SWEEP_EVERY: u64 = 256;

/// Sliding-window logs in a sharded map, keyed like Redis (route and caller).
///
/// All limits of one caller sit under one lock, so a decision is atomic exactly as the Redis
/// script is. Memory stays bounded by the callers active within their windows: a sweep runs
/// one shard every few hundred decisions and drops callers whose every window has emptied.
///
/// **Bounded.** At most `max_callers` callers are held (spread evenly over the shards). When a
/// new caller's shard is full even after dropping its expired callers, the decision fails with
/// [`StoreError::Full`] and the route's `on_error` policy answers: callers already held stay
/// limited exactly, and a flood of fresh identities can neither grow memory nor evict them.
pub struct MemoryLimiter {
    callers: Shards<CallerLog>,
    clock: Arc<dyn Clock>,
    decisions: AtomicU64,
    max_callers: usize,
}

impl MemoryLimiter {
    pub fn new(max_callers: usize) -> Self {
        Self::with_clock(Arc::new(MonotonicClock(Instant::now())), max_callers)
    }

    pub fn with_clock(clock: Arc<dyn Clock>, max_callers: usize) -> Self {
        Self {
            callers: Shards::with_capacity(SHARDS, max_callers),
            clock,
            decisions: AtomicU64::new(0),
            max_callers,
        }
    }

    /// Checks all `limits`; counts the request against every one only if all admit it.
    pub fn check(&self, ask: &Ask<'_>) -> Result<Decision, StoreError> {
        let (key, limits, cost, retry) = (ask.key, ask.limits, ask.cost, ask.retry);
        let now = self.clock.now_us();
        if self
            .decisions
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
        {
            self.callers.sweep_one(|_, entry| entry.expires_at > now);
        }
        let mut shard = self.callers.lock(key);
        if !shard.contains_key(key) {
            if self.callers.is_full(&shard) {
                shard.retain(|_, entry| entry.expires_at > now);
            }
            if self.callers.is_full(&shard) {
                return Err(StoreError::Full(self.max_callers));
            }
            shard.insert(key.to_string(), CallerLog::default());
        }
        let Some(entry) = shard.get_mut(key) else {
            return Err(StoreError::Reply("caller vanished under its lock".into()));
        };
        let replay = entry.replay(retry, now);
        let (admitted, parts) = entry.decide(limits, now, cost, replay, true);
        if admitted && !replay {
            entry.remember(retry, now);
        }
        if entry.ids.is_empty() && entry.expires_at <= now {
            shard.remove(key);
        }
        Ok(Decision::from_parts(admitted, limits, parts))
    }

    /// The state of each limit, without counting a request.
    pub fn peek(&self, key: &str, limits: &[Limit]) -> Result<Vec<LimitState>, StoreError> {
        let now = self.clock.now_us();
        let mut shard = self.callers.lock(key);
        let mut empty = CallerLog::default();
        let entry = shard.get_mut(key).unwrap_or(&mut empty);
        let (_, parts) = entry.decide(limits, now, 0, false, false);
        Ok(super::states(limits, parts))
    }

    /// Forgets every caller (the store these counts stood in for is back).
    pub fn clear(&self) {
        self.callers.sweep_all(|_, _| false);
    }

    /// Callers currently held (for tests and memory checks).
    pub fn callers(&self) -> usize {
        self.callers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32, ms: u64) -> Limit {
        Limit::log(requests, Duration::from_millis(ms))
    }

    fn limiter() -> (Arc<ManualClock>, MemoryLimiter) {
        let clock = Arc::new(ManualClock::default());
        clock.advance(Duration::from_secs(1000));
        (clock.clone(), MemoryLimiter::with_clock(clock, 1_000_000))
    }

    fn ask<'a>(key: &'a str, limits: &'a [Limit], retry: Option<Retry<'a>>) -> Ask<'a> {
        Ask {
            key,
            limits,
            cost: 1,
            retry,
        }
    }

    /// A check without a request id, which cannot fail on a store far from full.
    fn check(m: &MemoryLimiter, key: &str, limits: &[Limit]) -> Decision {
        m.check(&ask(key, limits, None)).unwrap()
    }

    #[test]
    fn admits_exactly_the_limit_then_refuses() {
        let (clock, m) = limiter();
        let l = [limit(3, 1000)];
        for used in 1..=3 {
            let d = check(&m, "k", &l);
            assert!(d.is_admitted());
            assert_eq!(d.states()[0].used, used);
            assert_eq!(d.states()[0].remaining, 3 - used);
            clock.advance(Duration::from_millis(100));
        }
        let d = check(&m, "k", &l);
        assert!(!d.is_admitted());
        // The first request (at t=0) leaves at t=1000; now is t=300.
        assert_eq!(d.refusing().unwrap().retry, Duration::from_millis(700));
        assert_eq!(d.states()[0].reset, Duration::from_millis(700));
    }

    #[test]
    fn the_window_slides_and_refusals_are_not_counted() {
        let (clock, m) = limiter();
        let l = [limit(2, 1000)];
        assert!(check(&m, "k", &l).is_admitted());
        clock.advance(Duration::from_millis(600));
        assert!(check(&m, "k", &l).is_admitted());
        for _ in 0..5 {
            assert!(!check(&m, "k", &l).is_admitted());
        }
        clock.advance(Duration::from_millis(400)); // the first request leaves
        let d = check(&m, "k", &l);
        assert!(d.is_admitted(), "refusals must not extend the ban");
        assert_eq!(d.states()[0].reset, Duration::from_millis(600));
        assert!(!check(&m, "k", &l).is_admitted());
    }

    #[test]
    fn all_limits_must_admit_and_all_are_counted() {
        let (clock, m) = limiter();
        let l = [limit(2, 1000), limit(3, 10_000)];
        assert!(check(&m, "k", &l).is_admitted());
        assert!(check(&m, "k", &l).is_admitted());
        let d = check(&m, "k", &l);
        assert!(!d.is_admitted());
        assert_eq!(
            d.states()[1].used,
            2,
            "a refused request counts against no limit"
        );
        clock.advance(Duration::from_millis(1000));
        assert!(check(&m, "k", &l).is_admitted());
        let d = check(&m, "k", &l);
        assert!(!d.is_admitted(), "the 10 s limit is full");
        assert_eq!(d.refusing().unwrap().limit, l[1]);
        assert_eq!(d.refusing().unwrap().retry, Duration::from_millis(9000));
    }

    #[test]
    fn callers_and_routes_are_independent() {
        let (_, m) = limiter();
        let l = [limit(1, 1000)];
        assert!(check(&m, "a", &l).is_admitted());
        assert!(check(&m, "b", &l).is_admitted());
        assert!(!check(&m, "a", &l).is_admitted());
    }

    #[test]
    fn a_lowered_limit_waits_for_enough_requests_to_leave() {
        let (clock, m) = limiter();
        for _ in 0..4 {
            check(&m, "k", &[limit(10, 1000)]);
            clock.advance(Duration::from_millis(100));
        }
        // 4 counted (t=0,100,200,300), limit lowered to 2: a request is admitted once only 1
        // is left, so when the one from t=200 leaves at t=1200; now is t=400.
        let d = check(&m, "k", &[limit(2, 1000)]);
        assert_eq!(d.refusing().unwrap().retry, Duration::from_millis(800));
    }

    #[test]
    fn peek_counts_nothing_and_expired_callers_are_swept() {
        let (clock, m) = limiter();
        let l = [limit(1, 1000)];
        assert_eq!(m.peek("k", &l).unwrap()[0].used, 0);
        check(&m, "k", &l);
        assert_eq!(m.peek("k", &l).unwrap()[0].used, 1);
        assert_eq!(m.peek("k", &l).unwrap()[0].used, 1);
        for i in 0..100 {
            check(&m, &format!("other{i}"), &l);
        }
        clock.advance(Duration::from_secs(2));
        for _ in 0..(SWEEP_EVERY as usize * SHARDS) {
            check(&m, "x", &[]);
        }
        assert_eq!(m.callers(), 0);
    }

    #[test]
    fn a_full_store_refuses_new_callers_but_keeps_limiting_the_ones_it_holds() {
        let clock = Arc::new(ManualClock::default());
        let m = MemoryLimiter::with_clock(clock.clone(), SHARDS * 2);
        let l = [limit(1, 1000)];
        let mut full = 0;
        for i in 0..(SHARDS * 10) {
            match m.check(&ask(&format!("k{i}"), &l, None)) {
                Ok(d) => assert!(d.is_admitted()),
                Err(StoreError::Full(n)) => {
                    assert_eq!(n, SHARDS * 2);
                    full += 1
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(full > 0, "the cap was never reached");
        assert!(m.callers() <= SHARDS * 2, "{} callers held", m.callers());
        assert!(
            !m.check(&ask("k0", &l, None)).unwrap().is_admitted(),
            "held callers stay limited"
        );
        // Once their windows pass, expired callers make room again.
        clock.advance(Duration::from_secs(2));
        assert!(m.check(&ask("fresh", &l, None)).unwrap().is_admitted());
    }

    #[test]
    fn a_request_id_is_replayed_within_its_window_and_budget_only() {
        let clock = Arc::new(ManualClock::default());
        let m = MemoryLimiter::with_clock(clock.clone(), 1000);
        let l = [limit(5, 60_000)];
        let r = Retry {
            id: "fixed",
            window: Duration::from_secs(10),
            max_retries: 2,
        };
        let admitted: Vec<bool> = (0..10)
            .map(|_| m.check(&ask("k", &l, Some(r))).unwrap().is_admitted())
            .collect();
        // 1 counted + 2 retries + 4 counted, then refused.
        assert_eq!(
            admitted,
            [true, true, true, true, true, true, true, false, false, false]
        );
        assert_eq!(m.peek("k", &l).unwrap()[0].used, 5);
        // After the retry window, the same id is a new request.
        let m = MemoryLimiter::with_clock(clock.clone(), 1000);
        assert!(m.check(&ask("k", &l, Some(r))).unwrap().is_admitted());
        clock.advance(Duration::from_secs(11));
        m.check(&ask("k", &l, Some(r))).unwrap();
        assert_eq!(m.peek("k", &l).unwrap()[0].used, 2);
    }
}
