//! What outlives a config reload: the store, its denial cache and the local fallback.

use super::denials::DenialCache;
use super::{MemoryLimiter, Permit, Store};
use std::time::Duration;

/// The store and the state derived from the store's data, which a reload or a store restart
/// must clear; the rules (the decider) are swapped beside it.
pub struct StoreSide {
    pub store: Store,
    /// Refusals answered locally until Redis would certainly refuse again (Redis store only).
    pub denials: Option<DenialCache>,
    /// `on_error: local`: in-process limits while the store is away, dropped when it returns.
    pub fallback: MemoryLimiter,
}

/// Where an admitted request's slots are held: the store, or (`on_error: local`, the store
/// away) the local fallback. Each is released where it was taken.
#[derive(Debug)]
pub enum Held {
    Store(Permit),
    Fallback(Permit),
}

impl StoreSide {
    pub fn new(store: Store, max_callers: usize, lease: Duration) -> Self {
        Self {
            denials: store.is_remote().then(|| DenialCache::new(max_callers)),
            fallback: MemoryLimiter::new(max_callers, lease),
            store,
        }
    }

    /// The store answers again: its decisions replace the local ones.
    pub fn store_returned(&self) {
        self.fallback.clear();
    }

    /// The store's data may be gone (it restarted): no cached refusal can be trusted any more.
    pub fn forget_refusals(&self) {
        if let Some(d) = &self.denials {
            d.clear();
        }
    }

    /// New rules are in force (a reload, numbered `generation`): refusals of the old ones are
    /// void, even those a request still deciding on the old rules would record.
    pub fn new_rules(&self, generation: u64) {
        if let Some(d) = &self.denials {
            d.set_generation(generation);
        }
    }

    /// Gives back a finished request's slots where they were taken.
    pub async fn release(&self, held: Held) {
        match held {
            Held::Store(permit) => self.store.release(permit).await,
            Held::Fallback(permit) => self.fallback.release(&permit),
        }
    }

    /// Renews every slot this process holds, in the store and in the fallback.
    pub async fn renew_leases(&self) {
        self.store.renew().await;
        self.fallback.renew();
    }
}
