//! The store watch: one background task per sidecar that probes the store every 250 ms,
//! closes the breaker when the store answers again, and notices a store that restarted.

use crate::limiter::breaker::StoreStatus;
use crate::limiter::Store;
use crate::limiter::StoreSide;
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// How often the store is probed, open breaker or not.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

pub struct StoreWatch {
    pub side: Arc<StoreSide>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl BackgroundService for StoreWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Store::Redis(redis) = &self.side.store else {
            return;
        };
        let breaker = redis.breaker();
        let mut run_id: Option<String> = None;
        let mut conn = None;
        let mut first = true;
        loop {
            // The first probe at once, so the run_id is known before anything is cached.
            let wait = if first { Duration::ZERO } else { PROBE_EVERY };
            first = false;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match redis.probe(&mut conn).await {
                Ok(id) => {
                    let restarted = run_id.as_ref().is_some_and(|old| *old != id);
                    if breaker.close() || restarted {
                        redis.renew_connections();
                        self.side.store_returned();
                        self.side.forget_refusals();
                    }
                    if restarted {
                        log::warn!(
                            "store restarted (run_id changed): cached refusals dropped, Redis decides again"
                        );
                    }
                    run_id = Some(id);
                }
                Err(e) => {
                    // The store may be restarting and its data gone: no cached refusal is
                    // certain any more (a refused caller asks the store again; nothing else).
                    self.side.forget_refusals();
                    match breaker.is_open() {
                        true => breaker.probe_failed(&e.to_string()),
                        false => {
                            breaker.record_failure(&e.to_string());
                        }
                    }
                }
            }
            let status = breaker.status();
            self.metrics
                .breaker_open
                .set(matches!(status, StoreStatus::Open { .. }) as i64);
            self.metrics
                .store_up
                .set((status == StoreStatus::Up) as i64);
        }
    }
}

/// Renews every in-flight slot this sidecar holds, every third of the lease time: one batched
/// call per store node, whatever the number of requests in flight.
pub struct LeaseRenewal {
    pub side: Arc<StoreSide>,
    pub every: Duration,
}

#[async_trait]
impl BackgroundService for LeaseRenewal {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(self.every) => self.side.renew_leases().await,
            }
        }
    }
}

/// How often key files (`jwt.keys_file`) are checked for a change.
pub const KEY_FILES_EVERY: Duration = Duration::from_secs(1);

/// Re-reads a `jwt` source's `keys_file` when it changes (a key rotation by a secret
/// manager needs no SIGHUP); a file that does not parse keeps the keys in use.
pub struct KeyFiles {
    pub shared: Arc<crate::proxy::Shared>,
}

#[async_trait]
impl BackgroundService for KeyFiles {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(KEY_FILES_EVERY) => {}
            }
            let decider = self.shared.decider.load_full();
            // A file read is small and rare; off the async workers all the same.
            let _ = tokio::task::spawn_blocking(move || decider.refresh_keys()).await;
        }
    }
}
