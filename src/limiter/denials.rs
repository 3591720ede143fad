//! A local cache of refusals: a caller over its limit is refused without asking Redis again.

use super::ask::LimitState;
use super::shards::Shards;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Denial {
    /// Until when a local refusal is certainly right (see [`DenialCache`]).
    until: Instant,
    /// When Redis's answer arrived; the durations in `state` count from here.
    received: Instant,
    state: LimitState,
    /// The cost refused: a cheaper request may fit sooner, so only as costly ones are answered.
    cost: u32,
    /// The config generation whose rules refused (see [`DenialCache::generation`]).
    generation: u64,
}

const SHARDS: usize = 32;
const SWEEP_EVERY: u64 = 1024;

/// Remembers, per rate-limit key, until when Redis will certainly refuse a request there.
///
/// **Why this is exact.** Redis refused at its time `T` and said the limit admits again no
/// earlier than `T + retry` (when enough counted requests leave the window). Counted requests
/// only ever leave a rate limit by time passing; every other instance can only *add*, which
/// pushes that moment later, never earlier; and a refusal adds nothing. So until `T + retry`
/// Redis refuses every request that this limit must admit, whatever its other limits say, and
/// answering locally changes no outcome. The cache keeps `sent + retry`, where `sent` is when
/// the call left this process: `sent <= T`, so the local deadline is never later than the real
/// one. The `Retry-After` a cached refusal reports counts from when the answer arrived
/// (`>= T`), so it is never earlier than the real moment of admission either. An in-flight
/// limit frees a slot whenever a request ends: its refusals are never cached.
///
/// One exception is left to Redis: a request carrying a trusted load-balancer request id may be
/// a retry of a request an earlier attempt already counted (which Redis admits again), so the
/// proxy does not answer those from this cache.
pub struct DenialCache {
    denials: Shards<Denial>,
    inserts: AtomicU64,
    /// The config in force: a refusal decided under other rules is neither kept nor served.
    generation: AtomicU64,
    /// The time base of [`Shards::make_room`]'s microseconds.
    epoch: Instant,
}

impl DenialCache {
    /// A cache of at most about `max_callers` refusals. When a shard is full even after its
    /// expired refusals are dropped, a new refusal is simply not cached: that caller's next
    /// request asks Redis again, which costs a round trip, never exactness.
    pub fn new(max_callers: usize) -> Self {
        Self {
            denials: Shards::with_capacity(SHARDS, max_callers),
            inserts: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Forgets every refusal (the data they came from may be gone).
    pub fn clear(&self) {
        self.denials.sweep_all(|_, _| false);
    }

    /// New rules are in force (a reload): refusals made under older ones are void, even one a
    /// request still deciding on the old rules inserts after this call.
    pub fn set_generation(&self, generation: u64) {
        self.generation.store(generation, Ordering::Release);
        self.clear();
    }

    /// The refusal still certain at `now` for a request of `cost` on `key`, its durations
    /// counted down to `now`.
    pub fn get(&self, key: &str, cost: u32, now: Instant, generation: u64) -> Option<LimitState> {
        let key = self.denials.key(key);
        let mut shard = self.denials.lock(key);
        let denial = shard.get(key)?;
        if now >= denial.until || denial.generation != generation {
            shard.remove(key);
            return None;
        }
        if cost < denial.cost {
            return None;
        }
        Some(
            denial
                .state
                .later(now.saturating_duration_since(denial.received)),
        )
    }

    /// Records Redis's refusal on `key` of a call sent at `sent`, answered at `received`, by
    /// the rules of `generation`.
    pub fn insert(
        &self,
        key: &str,
        state: &LimitState,
        cost: u32,
        (sent, received): (Instant, Instant),
        generation: u64,
    ) {
        let retry = state.retry;
        if retry < Duration::from_millis(1)
            || !state.kind.counts()
            || generation != self.generation.load(Ordering::Acquire)
        {
            return;
        }
        let n = self.inserts.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(SWEEP_EVERY) {
            self.denials.sweep_one(|_, d| d.until > received);
        }
        let denial = Denial {
            until: sent + retry,
            received,
            state: *state,
            cost,
            generation,
        };
        let key = self.denials.key(key);
        let mut shard = self.denials.lock(key);
        if !shard.contains_key(key) && self.denials.is_full(&shard) {
            let index = self.denials.index(key);
            let us = |t: Instant| t.saturating_duration_since(self.epoch).as_micros() as u64;
            if !self
                .denials
                .make_room(index, &mut shard, us(received), |d| us(d.until))
            {
                return;
            }
        }
        // Checked again under the shard's lock: a reload clears after setting the generation.
        if generation == self.generation.load(Ordering::Acquire) {
            shard.insert(key, denial);
        }
    }

    /// Keys currently refused locally (tests and memory checks).
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
    use crate::limiter::{Kind, Rate};

    fn limited(retry_ms: u64) -> LimitState {
        LimitState {
            kind: Kind::Rate(Rate::log(1, Duration::from_secs(10))),
            used: 1,
            remaining: 0,
            reset: Duration::from_millis(retry_ms),
            retry: Duration::from_millis(retry_ms),
        }
    }

    #[test]
    fn a_refusal_is_served_until_sent_plus_retry_and_no_longer() {
        let cache = DenialCache::new(1_000_000);
        let sent = Instant::now();
        let received = sent + Duration::from_millis(5);
        cache.insert("k", &limited(1000), 1, (sent, received), 0);
        let later = received + Duration::from_millis(400);
        let d = cache.get("k", 1, later, 0).expect("still refused");
        assert_eq!(d.retry, Duration::from_millis(600));
        assert!(cache
            .get("k", 1, sent + Duration::from_millis(999), 0)
            .is_some());
        assert!(
            cache
                .get("k", 1, sent + Duration::from_millis(1000), 0)
                .is_none(),
            "the deadline counts from the send"
        );
        assert!(cache.is_empty(), "expired entries are dropped");
    }

    #[test]
    fn a_refused_cost_answers_only_requests_as_costly() {
        let cache = DenialCache::new(1_000_000);
        let now = Instant::now();
        cache.insert("k", &limited(5000), 5, (now, now), 0);
        assert!(cache.get("k", 5, now, 0).is_some());
        assert!(cache.get("k", 9, now, 0).is_some());
        assert!(
            cache.get("k", 1, now, 0).is_none(),
            "a cheaper request may fit: ask the store"
        );
    }

    #[test]
    fn instant_retries_and_slots_are_not_cached() {
        let cache = DenialCache::new(1_000_000);
        let now = Instant::now();
        cache.insert("b", &limited(0), 1, (now, now), 0);
        let slots = LimitState {
            kind: Kind::Concurrency(std::num::NonZeroU32::MIN),
            ..limited(1000)
        };
        cache.insert("c", &slots, 1, (now, now), 0);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_refusal_of_older_rules_is_neither_kept_nor_served() {
        let cache = DenialCache::new(1_000_000);
        let now = Instant::now();
        cache.insert("k", &limited(5000), 1, (now, now), 0);
        cache.set_generation(1);
        assert!(cache.get("k", 1, now, 1).is_none(), "cleared by the reload");
        // A request that decided on the old rules answers after the reload.
        cache.insert("k", &limited(5000), 1, (now, now), 0);
        assert!(cache.is_empty(), "an old generation's refusal is dropped");
        cache.insert("k", &limited(5000), 1, (now, now), 1);
        assert!(cache.get("k", 1, now, 1).is_some());
        assert!(
            cache.get("k", 1, now, 0).is_none(),
            "not served to a request still deciding on the old rules"
        );
    }

    #[test]
    fn a_full_cache_drops_new_refusals_and_keeps_its_bound() {
        let cache = DenialCache::new(SHARDS * 4);
        let now = Instant::now();
        for i in 0..(SHARDS * 40) {
            cache.insert(&format!("k{i}"), &limited(10_000), 1, (now, now), 0);
        }
        assert!(cache.len() <= SHARDS * 4, "{} held", cache.len());
        assert!(cache.len() >= SHARDS * 2, "the cache still caches");
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn expired_keys_are_swept() {
        let cache = DenialCache::new(1_000_000);
        let now = Instant::now();
        for i in 0..500 {
            cache.insert(&format!("k{i}"), &limited(10), 1, (now, now), 0);
        }
        let later = now + Duration::from_secs(1);
        for i in 0..(SWEEP_EVERY as usize * SHARDS) {
            cache.insert(
                &format!("x{}", i % 3),
                &limited(10_000),
                1,
                (later, later),
                0,
            );
        }
        assert_eq!(cache.len(), 3);
    }
}
