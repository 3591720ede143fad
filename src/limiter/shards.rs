//! A map split over mutex-guarded shards, swept a shard at a time: the in-process stores' base.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Keys spread over `N` locks so concurrent callers rarely wait on each other.
///
/// Entries leave only through [`Shards::sweep_one`] (or by the caller removing them), so an
/// owner that calls it every few hundred operations keeps memory bounded by the entries still
/// alive, without a background task or a pass over everything at once.
pub struct Shards<V> {
    shards: Box<[Mutex<HashMap<String, V>>]>,
    hasher: RandomState,
    next_sweep: AtomicUsize,
    /// Entries one shard may hold: the total capacity spread evenly (the hash spreads keys
    /// evenly, and a per-shard bound needs no shared counter on the hot path).
    per_shard: usize,
    /// Per shard: when its last scan for expired entries left it full, the earliest expiry
    /// among what it kept. Until then no entry can have expired (expiries only move later and
    /// a full shard takes no new entry), so a new key fails without scanning again. Read and
    /// written under the shard's lock.
    full_until: Box<[AtomicU64]>,
}

impl<V> Shards<V> {
    /// `count` shards holding at most `capacity` entries in all (see [`Shards::is_full`]):
    /// each holds `capacity / count`, so a shard may fill a little before the whole does.
    pub fn with_capacity(count: usize, capacity: usize) -> Self {
        let count = count.clamp(1, capacity.max(1));
        Self {
            shards: (0..count).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            next_sweep: AtomicUsize::new(0),
            per_shard: (capacity / count).max(1),
            full_until: (0..count).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Whether a locked shard holds its share of the capacity: its owner must not add to it.
    pub fn is_full(&self, shard: &HashMap<String, V>) -> bool {
        shard.len() >= self.per_shard
    }

    /// Whether the locked shard `index` has room for one more entry at `now`. A full shard
    /// first drops its expired entries (`expires_at(entry) <= now`), but scans at most once
    /// until the earliest expiry it kept: a flood of new keys against a full store costs a
    /// lookup each, not a scan of the shard each.
    pub fn make_room(
        &self,
        index: usize,
        shard: &mut HashMap<String, V>,
        now: u64,
        expires_at: impl Fn(&V) -> u64,
    ) -> bool {
        if !self.is_full(shard) {
            return true;
        }
        let full_until = &self.full_until[index % self.full_until.len()];
        if now < full_until.load(Ordering::Relaxed) {
            return false;
        }
        let mut earliest = u64::MAX;
        shard.retain(|_, v| {
            let at = expires_at(v);
            earliest = earliest.min(at);
            at > now
        });
        if self.is_full(shard) {
            full_until.store(earliest, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The locked shard that holds `key`. A poisoned lock is taken anyway: every update
    /// leaves an entry consistent, so a panic elsewhere cannot leave half-written state.
    pub fn lock(&self, key: &str) -> MutexGuard<'_, HashMap<String, V>> {
        lock(&self.shards[self.index(key)])
    }

    /// The shard that holds `key`.
    pub fn index(&self, key: &str) -> usize {
        self.hasher.hash_one(key) as usize % self.shards.len()
    }

    /// The shards `indexes` name, each locked once, in ascending order: two callers locking
    /// overlapping sets can never wait on each other in a circle.
    pub fn lock_many(&self, indexes: &[usize]) -> Vec<(usize, MutexGuard<'_, HashMap<String, V>>)> {
        let mut sorted = indexes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        sorted
            .into_iter()
            .map(|i| (i, lock(&self.shards[i])))
            .collect()
    }

    /// Drops, from the next shard in turn, every entry `keep` says is no longer needed.
    pub fn sweep_one(&self, keep: impl FnMut(&String, &mut V) -> bool) {
        let i = self.next_sweep.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        lock(&self.shards[i]).retain(keep);
    }

    /// Applies `keep` to every shard, one lock at a time.
    pub fn sweep_all(&self, mut keep: impl FnMut(&String, &mut V) -> bool) {
        for shard in self.shards.iter() {
            lock(shard).retain(&mut keep);
        }
    }

    /// Entries held across all shards.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_shard_is_scanned_once_until_its_earliest_expiry() {
        let shards: Shards<u64> = Shards::with_capacity(1, 2);
        let scans = std::cell::Cell::new(0);
        let expires = |v: &u64| {
            scans.set(scans.get() + 1);
            *v
        };
        let mut map = lock(&shards.shards[0]);
        map.insert("a".into(), 10);
        map.insert("b".into(), 20);
        assert!(
            !shards.make_room(0, &mut map, 5, expires),
            "nothing expired"
        );
        assert_eq!(scans.get(), 2, "one scan");
        assert!(!shards.make_room(0, &mut map, 9, expires));
        assert_eq!(scans.get(), 2, "no scan before the earliest expiry");
        assert!(shards.make_room(0, &mut map, 10, expires), "a expired");
        assert_eq!(map.len(), 1);
        map.insert("c".into(), 30);
        assert!(!shards.make_room(0, &mut map, 11, expires));
        assert!(shards.make_room(0, &mut map, 20, expires), "b expired");
    }

    #[test]
    fn a_full_round_of_sweeps_visits_every_shard() {
        let s: Shards<u32> = Shards::with_capacity(8, usize::MAX);
        for i in 0..100 {
            s.lock(&format!("k{i}")).insert(format!("k{i}"), i);
        }
        assert_eq!(s.len(), 100);
        for _ in 0..s.shard_count() {
            s.sweep_one(|_, v| *v % 2 == 0);
        }
        assert_eq!(s.len(), 50);
        assert_eq!(s.lock("k4").get("k4"), Some(&4));
    }
}
