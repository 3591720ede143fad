//! What outlives a config reload: the store, its denial cache and the local fallback.

use super::denials::DenialCache;
use super::{MemoryLimiter, Store};

/// What outlives a config reload: the store (its connections and breaker) and the state
/// derived from the store's data, which a reload or a store restart must clear.
pub struct StoreSide {
    pub store: Store,
    /// Refusals answered locally until Redis would certainly refuse again (Redis store only).
    pub denials: Option<DenialCache>,
    /// `on_error: local`: in-process limits while the store is away, dropped when it returns.
    pub fallback: MemoryLimiter,
}

impl StoreSide {
    pub fn new(store: Store, max_callers: usize) -> Self {
        Self {
            denials: store.is_remote().then(|| DenialCache::new(max_callers)),
            fallback: MemoryLimiter::new(max_callers),
            store,
        }
    }

    /// The store answers again: its decisions replace the local ones.
    pub fn store_returned(&self) {
        self.fallback.clear();
    }

    /// The store's data may be gone (it restarted) or the rules changed (a reload): no
    /// cached refusal can be trusted any more.
    pub fn forget_refusals(&self) {
        if let Some(d) = &self.denials {
            d.clear();
        }
    }
}
