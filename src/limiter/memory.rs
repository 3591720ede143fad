//! The in-process store: every kind and algorithm, exact for one instance, and Redis's
//! semantics to the letter (the engine in [`super::algorithms`] runs `check.lua`'s steps).

use super::algorithms::{Look, State};
use super::ask::{Ask, Check, Decision, LimitState, Parts, Permit, Receipt};
use super::keys::retry_key;
use super::layout::lease_ms;
use super::leases::Leases;
use super::limit::Kind;
use super::shards::{Key, Shards, Table};
use super::StoreError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time in microseconds since the Unix epoch, the time base Redis's `TIME` uses
/// (so a sliding window's edges fall at the same instants in both stores); injected so tests
/// can move time by hand.
pub trait Clock: Send + Sync {
    fn now_us(&self) -> u64;
}

/// The wall clock read once, then moved on by the monotonic clock: epoch-based like Redis, and
/// never going backwards when the system clock is stepped.
pub struct EpochClock {
    base_us: u64,
    start: Instant,
}

impl Default for EpochClock {
    fn default() -> Self {
        let base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            base_us: base.as_micros() as u64,
            start: Instant::now(),
        }
    }
}

impl Clock for EpochClock {
    fn now_us(&self) -> u64 {
        self.base_us + self.start.elapsed().as_micros() as u64
    }
}

/// A clock that only moves when told to (tests).
#[derive(Default)]
pub struct ManualClock(pub AtomicU64);

impl ManualClock {
    pub fn at(us: u64) -> Self {
        Self(AtomicU64::new(us))
    }

    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// One key's state: a limit's, or a request id's (how often it was retried, until when).
enum Entry {
    Limit { state: State, expires_at: u64 },
    Id { retried: u32, until: u64 },
}

impl Entry {
    fn expires_at(&self) -> u64 {
        match self {
            Entry::Limit { expires_at, .. } => *expires_at,
            Entry::Id { until, .. } => *until,
        }
    }
}

const SHARDS: usize = 64;
/// Every this many decisions, one shard is swept of keys whose windows have emptied.
const SWEEP_EVERY: u64 = 256;

type Map = Table<Entry>;

/// The shards one operation holds, locked in order.
struct Locked<'a>(Vec<(usize, MutexGuard<'a, Map>)>);

impl Locked<'_> {
    fn map(&mut self, shard: usize) -> &mut Map {
        let i = self.0.iter().position(|(s, _)| *s == shard).unwrap_or(0);
        &mut self.0[i].1
    }

    /// The state of `key`, made empty when missing or of another kind.
    fn state(&mut self, shard: usize, key: Key<'_>, kind: &Kind) -> &mut State {
        let map = self.map(shard);
        if !matches!(map.get(key), Some(Entry::Limit { .. })) {
            let fresh = Entry::Limit {
                state: State::new(kind),
                expires_at: 0,
            };
            map.insert(key, fresh);
        }
        match map.get_mut(key) {
            Some(Entry::Limit { state, .. }) => state,
            _ => unreachable!("inserted above"),
        }
    }

    /// Records when `key`'s state empties, and drops it when it already has.
    fn settle(&mut self, shard: usize, key: Key<'_>, kind: &Kind, now: u64) {
        let map = self.map(shard);
        if let Some(Entry::Limit { state, expires_at }) = map.get_mut(key) {
            *expires_at = state.expires_at(kind);
            if *expires_at <= now {
                map.remove(key);
            }
        }
    }
}

/// Every kind's state in a sharded map, keyed like Redis.
///
/// The keys of one decision are locked together (in shard order), so a decision is atomic
/// exactly as the Redis script is. Memory stays bounded by the keys active within their
/// windows: a sweep runs one shard every few hundred decisions and drops keys whose state has
/// emptied.
///
/// **Bounded.** At most `max_keys` keys are held (spread evenly over the shards). When a new
/// key's shard is full even after dropping its expired keys, the decision fails with
/// [`StoreError::Full`] and the route's `on_error` policy answers: callers already held stay
/// limited exactly, and a flood of fresh identities can neither grow memory nor evict them.
pub struct MemoryLimiter {
    entries: Shards<Entry>,
    clock: Arc<dyn Clock>,
    decisions: AtomicU64,
    max_keys: usize,
    lease: Duration,
    leases: Arc<Leases>,
}

impl MemoryLimiter {
    pub fn new(max_keys: usize, lease: Duration) -> Self {
        Self::with_clock(Arc::new(EpochClock::default()), max_keys, lease)
    }

    pub fn with_clock(clock: Arc<dyn Clock>, max_keys: usize, lease: Duration) -> Self {
        Self {
            entries: Shards::with_capacity(SHARDS, max_keys),
            clock,
            decisions: AtomicU64::new(0),
            max_keys,
            lease,
            leases: Arc::new(Leases::new(max_keys)),
        }
    }

    /// Checks every limit; counts the request against all of them only if all admit it.
    pub fn check(&self, ask: &Ask<'_>) -> Result<Decision, StoreError> {
        let now = self.clock.now_us();
        if self
            .decisions
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
        {
            self.entries.sweep_one(|_, e| e.expires_at() > now);
        }
        let (checks, cost) = (ask.checks, ask.cost);
        if let ([only], None) = (checks, ask.retry) {
            if only.kind.counts() {
                return self.check_rate(only, cost, now);
            }
        }
        let id_text = match (ask.retry, checks.first()) {
            (Some(r), Some(first)) => Some((retry_key(&first.key, r.id), r)),
            _ => None,
        };
        let id_key = id_text.as_ref().map(|(k, r)| (self.entries.key(k), *r));
        let keys: Vec<Key> = checks.iter().map(|c| self.entries.key(&c.key)).collect();
        let shards: Vec<usize> = keys.iter().map(|k| self.entries.index(*k)).collect();
        let id_shard = id_key.as_ref().map(|(k, _)| self.entries.index(*k));
        let mut all = shards.clone();
        all.extend(id_shard);
        let mut locked = Locked(self.entries.lock_many(&all));
        self.make_room(&mut locked, &keys, &shards, now)?;
        let member = self.leases.member();
        if ask.holds_slots() && !self.leases.has_room(member) {
            return Err(StoreError::Full(self.max_keys));
        }

        let mut looks: Vec<Look> = Vec::with_capacity(checks.len());
        let (mut rates_ok, mut slots_ok) = (true, true);
        for ((c, &key), &shard) in checks.iter().zip(&keys).zip(&shards) {
            let look = locked.state(shard, key, &c.kind).look(&c.kind, now, cost);
            match c.kind {
                Kind::Concurrency(_) => slots_ok &= look.ok,
                Kind::Rate(_) | Kind::Quota(_) => rates_ok &= look.ok,
            }
            looks.push(look);
        }

        // A retry (see check.lua): marked when first counted, replayed within its budget.
        let (mut replay, mut marked) = (false, false);
        if let (Some((key, r)), Some(shard)) = (&id_key, id_shard) {
            let map = locked.map(shard);
            match map.get(*key) {
                Some(Entry::Id { retried, until }) if *until > now => {
                    replay = *retried < r.max_retries;
                }
                _ => {
                    let window_us = (r.window.as_millis() as u64).max(1) * 1000;
                    let id = Entry::Id {
                        retried: 0,
                        until: now + window_us,
                    };
                    map.insert(*key, id);
                    marked = true;
                }
            }
        }
        let admitted = slots_ok && (rates_ok || replay);
        if let (Some((key, _)), Some(shard)) = (&id_key, id_shard) {
            let map = locked.map(shard);
            if replay && admitted {
                if let Some(Entry::Id { retried, .. }) = map.get_mut(*key) {
                    *retried += 1;
                }
            }
            if marked && !admitted {
                map.remove(*key);
            }
        }

        let mut parts: Vec<Parts> = Vec::with_capacity(checks.len());
        let mut slots = Vec::new();
        for (((c, &key), &shard), mut look) in checks.iter().zip(&keys).zip(&shards).zip(looks) {
            let slot = matches!(c.kind, Kind::Concurrency(_));
            let state = locked.state(shard, key, &c.kind);
            if admitted && (slot || !replay) {
                state.count(&mut look, now, cost, member, self.lease);
                if slot {
                    slots.push(c.key.clone());
                }
            }
            parts.push(state.report(&look, &c.kind, now, cost, !admitted));
            locked.settle(shard, key, &c.kind, now);
        }
        let permit = match slots.is_empty() {
            true => None,
            false if self.leases.hold(member, slots.clone()) => Some(Permit {
                member,
                slots,
                leases: self.leases.clone(),
            }),
            false => {
                for ((c, &key), &shard) in checks.iter().zip(&keys).zip(&shards) {
                    if matches!(c.kind, Kind::Concurrency(_)) {
                        let state = locked.state(shard, key, &c.kind);
                        state.adjust(&c.kind, now, member, 1, 0, now);
                        locked.settle(shard, key, &c.kind, now);
                    }
                }
                return Err(StoreError::Full(self.max_keys));
            }
        };
        let receipt = Receipt {
            member,
            at: now,
            replayed: replay && admitted,
        };
        Ok(Decision::from_parts(
            admitted, checks, parts, permit, receipt,
        ))
    }

    /// The plain case: one rate limit and no request id, under one lock and with no
    /// bookkeeping for what the general case handles (several keys, ids, slots).
    fn check_rate(&self, c: &Check, cost: u32, now: u64) -> Result<Decision, StoreError> {
        let key = self.entries.key(&c.key);
        let mut shard = self.entries.lock(key);
        let member = self.leases.member();
        // A key not held (or, never in practice, held by another kind) is counted from empty
        // and kept only when the request counts.
        let mut fresh = None;
        let (state, held_until) = match shard.get_mut(key) {
            Some(Entry::Limit { state, expires_at }) => (state, Some(expires_at)),
            _ => (fresh.insert(State::new(&c.kind)), None),
        };
        let mut look = state.look(&c.kind, now, cost);
        if look.ok {
            state.count(&mut look, now, cost, member, self.lease);
        }
        let parts = state.report(&look, &c.kind, now, cost, !look.ok);
        let (ends, admitted) = (state.expires_at(&c.kind), look.ok);
        match (held_until, fresh) {
            (Some(until), _) => {
                *until = ends;
                if ends <= now {
                    shard.remove(key);
                }
            }
            (None, Some(state)) if admitted && ends > now => {
                // A new key needs room (a full shard first drops its expired keys).
                let index = self.entries.index(key);
                if !self
                    .entries
                    .make_room(index, &mut shard, now, Entry::expires_at)
                {
                    return Err(StoreError::Full(self.max_keys));
                }
                let entry = Entry::Limit {
                    state,
                    expires_at: ends,
                };
                shard.insert(key, entry);
            }
            _ => {}
        }
        let receipt = Receipt {
            member,
            at: now,
            replayed: false,
        };
        let checks = std::slice::from_ref(c);
        Ok(Decision::from_parts(
            admitted,
            checks,
            [parts],
            None,
            receipt,
        ))
    }

    /// Fails with [`StoreError::Full`] (changing nothing) when a key of `checks` is new and its
    /// shard is full even without its expired keys.
    fn make_room(
        &self,
        locked: &mut Locked<'_>,
        keys: &[Key<'_>],
        shards: &[usize],
        now: u64,
    ) -> Result<(), StoreError> {
        for (&key, &shard) in keys.iter().zip(shards) {
            let map = locked.map(shard);
            if !map.contains_key(key) && !self.entries.make_room(shard, map, now, Entry::expires_at)
            {
                return Err(StoreError::Full(self.max_keys));
            }
        }
        Ok(())
    }

    /// The state of each limit, counting nothing.
    pub fn peek(&self, checks: &[Check]) -> Result<Vec<LimitState>, StoreError> {
        let now = self.clock.now_us();
        Ok(checks
            .iter()
            .map(|c| {
                let key = self.entries.key(&c.key);
                let mut shard = self.entries.lock(key);
                let mut empty = State::new(&c.kind);
                let state = match shard.get_mut(key) {
                    Some(Entry::Limit { state, .. }) => state,
                    _ => &mut empty,
                };
                let look = state.look(&c.kind, now, 0);
                LimitState::new(c.kind, state.report(&look, &c.kind, now, 0, false))
            })
            .collect())
    }

    /// Frees the slots `permit` holds.
    pub fn release(&self, permit: &Permit) {
        let now = self.clock.now_us();
        for key in &permit.slots {
            let key = self.entries.key(key);
            let mut shard = self.entries.lock(key);
            if let Some(Entry::Limit { state, expires_at }) = shard.get_mut(key) {
                let kind = Kind::Concurrency(std::num::NonZeroU32::MIN);
                state.adjust(&kind, now, permit.member, 1, 0, now);
                *expires_at = state.expires_at(&kind);
                if *expires_at <= now {
                    shard.remove(key);
                }
            }
        }
        self.leases.forget(permit.member);
    }

    /// Extends every held lease by the lease time from now.
    pub fn renew(&self) {
        let now = self.clock.now_us();
        let until = now + lease_ms(self.lease) * 1000;
        for (member, keys) in self.leases.snapshot() {
            for key in keys {
                let key = self.entries.key(&key);
                let mut shard = self.entries.lock(key);
                if let Some(Entry::Limit { state, expires_at }) = shard.get_mut(key) {
                    if state.renew(member, now, until) {
                        *expires_at = (*expires_at).max(until);
                    }
                }
            }
        }
    }

    /// Replaces what `member` counted at `at` (`counted` units) by `cost` units on every one of
    /// `checks` (0 undoes it), as the script's adjust does; `retry_id` drops that id's mark.
    pub fn adjust(
        &self,
        checks: &[Check],
        member: u64,
        (counted, cost): (u32, u32),
        at: u64,
        retry_id: Option<&str>,
    ) {
        let now = self.clock.now_us();
        for c in checks {
            let key = self.entries.key(&c.key);
            let mut shard = self.entries.lock(key);
            if let Some(Entry::Limit { state, expires_at }) = shard.get_mut(key) {
                state.adjust(&c.kind, now, member, counted, cost, at);
                *expires_at = state.expires_at(&c.kind);
            }
        }
        if let (Some(id), Some(first)) = (retry_id, checks.first()) {
            let text = retry_key(&first.key, id);
            let key = self.entries.key(&text);
            self.entries.lock(key).remove(key);
        }
    }

    /// Forgets every key (the store these counts stood in for is back).
    pub fn clear(&self) {
        self.entries.sweep_all(|_, _| false);
    }

    /// In-flight slots held now (requests, not slot keys).
    pub fn slots_held(&self) -> usize {
        self.leases.len()
    }

    /// Keys currently held (for tests and memory checks).
    pub fn keys(&self) -> usize {
        self.entries.len()
    }

    /// The time base of this store (µs since the epoch).
    pub fn now_us(&self) -> u64 {
        self.clock.now_us()
    }
}

#[cfg(test)]
mod tests;
