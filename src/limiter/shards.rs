//! A map split over mutex-guarded shards, swept a shard at a time: the in-process stores' base.

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// A key and its hash, computed once per operation and used for both the shard and the
/// table: a key is hashed once per decision, not once per lookup.
#[derive(Clone, Copy)]
pub struct Key<'a> {
    hash: u64,
    text: &'a str,
}

/// One entry: its key's hash is kept beside it, so growing the table hashes nothing and a
/// lookup compares the text only when the whole hash matches.
struct Slot<V> {
    hash: u64,
    key: Box<str>,
    value: V,
}

/// One shard's entries, looked up by [`Key`].
pub struct Table<V> {
    slots: HashTable<Slot<V>>,
}

impl<V> Table<V> {
    fn new() -> Self {
        Self {
            slots: HashTable::new(),
        }
    }

    fn eq(k: Key<'_>) -> impl Fn(&Slot<V>) -> bool + '_ {
        move |s| s.hash == k.hash && *s.key == *k.text
    }

    pub fn get(&self, k: Key<'_>) -> Option<&V> {
        self.slots.find(k.hash, Self::eq(k)).map(|s| &s.value)
    }

    pub fn get_mut(&mut self, k: Key<'_>) -> Option<&mut V> {
        self.slots
            .find_mut(k.hash, Self::eq(k))
            .map(|s| &mut s.value)
    }

    pub fn contains_key(&self, k: Key<'_>) -> bool {
        self.get(k).is_some()
    }

    /// Sets `k`'s value, replacing what it held (one search either way).
    pub fn insert(&mut self, k: Key<'_>, value: V) {
        match self.slots.entry(k.hash, Self::eq(k), |s| s.hash) {
            Entry::Occupied(mut held) => held.get_mut().value = value,
            Entry::Vacant(room) => {
                room.insert(Slot {
                    hash: k.hash,
                    key: k.text.into(),
                    value,
                });
            }
        }
    }

    pub fn remove(&mut self, k: Key<'_>) -> Option<V> {
        let found = self.slots.find_entry(k.hash, Self::eq(k)).ok()?;
        Some(found.remove().0.value)
    }

    /// Keeps only the entries `keep` says to.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut V) -> bool) {
        self.slots.retain(|s| keep(&s.key, &mut s.value));
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

/// A shard's lock on a cache line pair of its own: the two workers taking neighbouring shards
/// do not pull one line back and forth.
#[repr(align(128))]
struct Shard<V>(Mutex<Table<V>>);

/// Keys spread over `N` locks so concurrent callers rarely wait on each other.
///
/// Entries leave only through [`Shards::sweep_one`] (or by the caller removing them), so an
/// owner that calls it every few hundred operations keeps memory bounded by the entries still
/// alive, without a background task or a pass over everything at once.
pub struct Shards<V> {
    shards: Box<[Shard<V>]>,
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
            shards: (0..count)
                .map(|_| Shard(Mutex::new(Table::new())))
                .collect(),
            hasher: RandomState::new(),
            next_sweep: AtomicUsize::new(0),
            per_shard: (capacity / count).max(1),
            full_until: (0..count).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// `text` with its hash (keyed per process, so no client can choose colliding keys).
    pub fn key<'a>(&self, text: &'a str) -> Key<'a> {
        Key {
            hash: self.hasher.hash_one(text),
            text,
        }
    }

    /// Whether a locked shard holds its share of the capacity: its owner must not add to it.
    pub fn is_full(&self, shard: &Table<V>) -> bool {
        shard.len() >= self.per_shard
    }

    /// Whether the locked shard `index` has room for one more entry at `now`. A full shard
    /// first drops its expired entries (`expires_at(entry) <= now`), but scans at most once
    /// until the earliest expiry it kept: a flood of new keys against a full store costs a
    /// lookup each, not a scan of the shard each.
    pub fn make_room(
        &self,
        index: usize,
        shard: &mut Table<V>,
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
    pub fn lock(&self, key: Key<'_>) -> MutexGuard<'_, Table<V>> {
        lock(&self.shards[self.index(key)].0)
    }

    /// The shard that holds `key`: the hash's middle bits (the table within a shard uses its
    /// lowest and highest), so the shards and the buckets in them spread independently.
    pub fn index(&self, key: Key<'_>) -> usize {
        (key.hash >> 32) as usize % self.shards.len()
    }

    /// The shards `indexes` name, each locked once, in ascending order: two callers locking
    /// overlapping sets can never wait on each other in a circle.
    pub fn lock_many(&self, indexes: &[usize]) -> Vec<(usize, MutexGuard<'_, Table<V>>)> {
        let mut sorted = indexes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        sorted
            .into_iter()
            .map(|i| (i, lock(&self.shards[i].0)))
            .collect()
    }

    /// Drops, from the next shard in turn, every entry `keep` says is no longer needed.
    pub fn sweep_one(&self, keep: impl FnMut(&str, &mut V) -> bool) {
        let i = self.next_sweep.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        lock(&self.shards[i].0).retain(keep);
    }

    /// Applies `keep` to every shard, one lock at a time.
    pub fn sweep_all(&self, mut keep: impl FnMut(&str, &mut V) -> bool) {
        for shard in self.shards.iter() {
            lock(&shard.0).retain(&mut keep);
        }
    }

    /// Entries held across all shards.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.0).len()).sum()
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
        let mut map = lock(&shards.shards[0].0);
        map.insert(shards.key("a"), 10);
        map.insert(shards.key("b"), 20);
        assert!(
            !shards.make_room(0, &mut map, 5, expires),
            "nothing expired"
        );
        assert_eq!(scans.get(), 2, "one scan");
        assert!(!shards.make_room(0, &mut map, 9, expires));
        assert_eq!(scans.get(), 2, "no scan before the earliest expiry");
        assert!(shards.make_room(0, &mut map, 10, expires), "a expired");
        assert_eq!(map.len(), 1);
        map.insert(shards.key("c"), 30);
        assert!(!shards.make_room(0, &mut map, 11, expires));
        assert!(shards.make_room(0, &mut map, 20, expires), "b expired");
    }

    #[test]
    fn a_full_round_of_sweeps_visits_every_shard() {
        let s: Shards<u32> = Shards::with_capacity(8, usize::MAX);
        for i in 0..100 {
            let text = format!("k{i}");
            let k = s.key(&text);
            s.lock(k).insert(k, i);
        }
        assert_eq!(s.len(), 100);
        for _ in 0..s.shard_count() {
            s.sweep_one(|_, v| *v % 2 == 0);
        }
        assert_eq!(s.len(), 50);
        let k4 = s.key("k4");
        assert_eq!(s.lock(k4).get(k4), Some(&4));
        let k5 = s.key("k5");
        assert_eq!(s.lock(k5).get(k5), None);
    }

    #[test]
    fn a_table_finds_replaces_and_removes_by_key() {
        let s: Shards<u32> = Shards::with_capacity(1, usize::MAX);
        let (a, b) = (s.key("a"), s.key("b"));
        let mut t = s.lock(a);
        t.insert(a, 1);
        t.insert(a, 2);
        assert_eq!((t.len(), t.get(a)), (1, Some(&2)), "replaced, not added");
        assert!(!t.contains_key(b));
        t.insert(b, 3);
        *t.get_mut(b).unwrap() += 1;
        assert_eq!(t.remove(b), Some(4));
        assert_eq!(t.remove(b), None);
        // Growing the table keeps every entry findable (the kept hash, not a new one).
        let texts: Vec<String> = (0..1000).map(|i| format!("key:{i}")).collect();
        for (i, text) in texts.iter().enumerate() {
            t.insert(s.key(text), i as u32);
        }
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(t.get(s.key(text)), Some(&(i as u32)), "{text}");
        }
        let mut seen = 0;
        t.retain(|k, _| {
            seen += 1;
            k != "a"
        });
        assert_eq!((seen, t.len(), t.get(a)), (1001, 1000, None));
    }
}
