//! A map split over mutex-guarded shards, swept a shard at a time: the in-process stores' base.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
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
        }
    }

    /// Whether a locked shard holds its share of the capacity: its owner must not add to it.
    pub fn is_full(&self, shard: &HashMap<String, V>) -> bool {
        shard.len() >= self.per_shard
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
