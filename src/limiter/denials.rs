//! A local cache of refusals: a caller over its limit is refused without asking Redis again.

use super::shards::Shards;
use super::Refused;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Denial {
    /// Until when a local refusal is certainly right (see [`DenialCache`]).
    until: Instant,
    /// When Redis's answer arrived; the durations in `decision` count from here.
    received: Instant,
    refused: Refused,
    /// The cost refused: a cheaper request may fit sooner, so only as costly ones are answered.
    cost: u32,
}

const SHARDS: usize = 32;
const SWEEP_EVERY: u64 = 1024;

/// Remembers, per caller key, until when Redis will certainly refuse that caller.
///
/// **Why this is exact for the sliding log.** Redis refused at its time `T` and said the
/// caller is admitted again no earlier than `T + retry` (when enough counted requests leave
/// the window). Counted requests only ever leave the window by time passing; every other
/// instance can only *add* requests, which pushes that moment later, never earlier; and a
/// refusal adds nothing. So until `T + retry` Redis refuses every request of that caller, and
/// answering locally changes no outcome. The cache keeps `sent + retry`, where `sent` is when
/// the call left this process: `sent <= T`, so the local deadline is never later than the real
/// one. The `Retry-After` a cached refusal reports counts from when the answer arrived
/// (`>= T`), so it is never earlier than the real moment of admission either.
///
/// One exception is left to Redis: a request carrying a trusted load-balancer request id may be
/// a retry of a request an earlier attempt already counted (which Redis admits again), so the
/// proxy does not answer those from this cache.
pub struct DenialCache {
    denials: Shards<Denial>,
    inserts: AtomicU64,
}

impl DenialCache {
    /// A cache of at most about `max_callers` refusals. When a shard is full even after its
    /// expired refusals are dropped, a new refusal is simply not cached: that caller's next
    /// request asks Redis again, which costs a round trip, never exactness.
    pub fn new(max_callers: usize) -> Self {
        Self {
            denials: Shards::with_capacity(SHARDS, max_callers),
            inserts: AtomicU64::new(0),
        }
    }

    /// Forgets every refusal (the data they came from may be gone).
    pub fn clear(&self) {
        self.denials.sweep_all(|_, _| false);
    }

    /// The refusal still certain at `now`, its durations counted down to `now`.
    pub fn get(&self, key: &str, cost: u32, now: Instant) -> Option<Refused> {
        let mut shard = self.denials.lock(key);
        let denial = shard.get(key)?;
        if now >= denial.until {
            shard.remove(key);
            return None;
        }
        if cost < denial.cost {
            return None;
        }
        Some(
            denial
                .refused
                .later(now.saturating_duration_since(denial.received)),
        )
    }

    /// Records Redis's refusal of a call sent at `sent` whose answer arrived at `received`.
    pub fn insert(
        &self,
        key: &str,
        refused: &Refused,
        cost: u32,
        sent: Instant,
        received: Instant,
    ) {
        let retry = refused.refusing().retry;
        if retry < Duration::from_millis(1) {
            return;
        }
        let n = self.inserts.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(SWEEP_EVERY) {
            self.denials.sweep_one(|_, d| d.until > received);
        }
        let denial = Denial {
            until: sent + retry,
            received,
            refused: refused.clone(),
            cost,
        };
        let mut shard = self.denials.lock(key);
        if !shard.contains_key(key) && self.denials.is_full(&shard) {
            shard.retain(|_, d| d.until > received);
            if self.denials.is_full(&shard) {
                return;
            }
        }
        shard.insert(key.to_string(), denial);
    }

    /// Callers currently refused locally (tests and memory checks).
    pub fn len(&self) -> usize {
        self.denials.len()
    }

    pub fn is_empty(&self) -> bool {
        self.denials.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Limit;
    use crate::limiter::LimitState;

    fn limited(retry_ms: u64) -> Refused {
        Refused::new(vec![LimitState {
            limit: Limit::log(1, Duration::from_secs(10)),
            used: 1,
            remaining: 0,
            reset: Duration::from_millis(retry_ms),
            retry: Duration::from_millis(retry_ms),
        }])
        .unwrap()
    }

    #[test]
    fn a_refusal_is_served_until_sent_plus_retry_and_no_longer() {
        let cache = DenialCache::new(1_000_000);
        let sent = Instant::now();
        let received = sent + Duration::from_millis(5);
        cache.insert("k", &limited(1000), 1, sent, received);
        let later = received + Duration::from_millis(400);
        let d = cache.get("k", 1, later).expect("still refused");
        assert_eq!(d.refusing().retry, Duration::from_millis(600));
        assert!(cache
            .get("k", 1, sent + Duration::from_millis(999))
            .is_some());
        assert!(
            cache
                .get("k", 1, sent + Duration::from_millis(1000))
                .is_none(),
            "the deadline counts from the send"
        );
        assert!(cache.is_empty(), "expired entries are dropped");
    }

    #[test]
    fn a_refused_cost_answers_only_requests_as_costly() {
        let cache = DenialCache::new(1_000_000);
        let now = Instant::now();
        cache.insert("k", &limited(5000), 5, now, now);
        assert!(cache.get("k", 5, now).is_some());
        assert!(cache.get("k", 9, now).is_some());
        assert!(
            cache.get("k", 1, now).is_none(),
            "a cheaper request may fit: ask the store"
        );
    }

    #[test]
    fn instant_retries_are_not_cached() {
        let cache = DenialCache::new(1_000_000);
        let now = Instant::now();
        cache.insert("b", &limited(0), 1, now, now);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_drops_new_refusals_and_keeps_its_bound() {
        let cache = DenialCache::new(SHARDS * 4);
        let now = Instant::now();
        for i in 0..(SHARDS * 40) {
            cache.insert(&format!("k{i}"), &limited(10_000), 1, now, now);
        }
        assert!(cache.len() <= SHARDS * 4, "{} held", cache.len());
        assert!(cache.len() >= SHARDS * 2, "the cache still caches");
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn expired_callers_are_swept() {
        let cache = DenialCache::new(1_000_000);
        let now = Instant::now();
        for i in 0..500 {
            cache.insert(&format!("k{i}"), &limited(10), 1, now, now);
        }
        let later = now + Duration::from_secs(1);
        for i in 0..(SWEEP_EVERY as usize * SHARDS) {
            cache.insert(&format!("x{}", i % 3), &limited(10_000), 1, later, later);
        }
        assert_eq!(cache.len(), 3);
    }
}
