//! The in-flight slots this process holds, renewed together on an interval so that a slot
//! lives exactly as long as its request (and at most a lease longer, should the process die).

use super::shards::Shards;
use std::sync::atomic::{AtomicU64, Ordering};

const SHARDS: usize = 16;

/// Every lease this process holds: member → the slot keys it holds. Bounded like every other
/// in-process state (`store.max_callers`); a request that cannot be registered is not admitted
/// (its slots would expire under it).
pub struct Leases {
    held: Shards<Vec<String>>,
    next: AtomicU64,
}

impl Leases {
    pub fn new(capacity: usize) -> Self {
        Self {
            held: Shards::with_capacity(SHARDS, capacity),
            next: AtomicU64::new(1),
        }
    }

    /// A member no other request of this process uses.
    pub fn member(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether a new lease could be registered now (its shard may fill meanwhile; then
    /// [`Leases::hold`] says so).
    pub fn has_room(&self, member: u64) -> bool {
        let text = member.to_string();
        let shard = self.held.lock(self.held.key(&text));
        !self.held.is_full(&shard)
    }

    /// Registers `member`'s slots for renewal; false when the registry is full.
    pub fn hold(&self, member: u64, slots: Vec<String>) -> bool {
        let text = member.to_string();
        let key = self.held.key(&text);
        let mut shard = self.held.lock(key);
        if self.held.is_full(&shard) {
            return false;
        }
        shard.insert(key, slots);
        true
    }

    /// Stops renewing `member`'s slots.
    pub fn forget(&self, member: u64) {
        let text = member.to_string();
        let key = self.held.key(&text);
        self.held.lock(key).remove(key);
    }

    /// Every lease held now: (member, its slot keys).
    pub fn snapshot(&self) -> Vec<(u64, Vec<String>)> {
        let mut all = Vec::new();
        self.held.sweep_all(|member, slots| {
            if let Ok(m) = member.parse() {
                all.push((m, slots.clone()));
            }
            true
        });
        all
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_held_until_forgotten_and_bounded() {
        let leases = Leases::new(SHARDS * 2);
        let a = leases.member();
        assert!(leases.hold(a, vec!["k".into()]));
        assert_eq!(leases.snapshot(), [(a, vec!["k".to_string()])]);
        leases.forget(a);
        assert!(leases.is_empty());
        let held = (0..SHARDS * 10)
            .filter(|_| leases.hold(leases.member(), vec![]))
            .count();
        assert!((SHARDS..=SHARDS * 2).contains(&held), "{held}");
    }
}
