//! The store's circuit breaker: after a few failures in a row, stop calling a store that is
//! away, answer from the `on_error` policy at once, and let one background probe find it back.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// Consecutive failed calls that open the breaker.
pub const TRIP_AFTER: u32 = 3;

/// Whether the store answers, as the breaker last saw it (what `/health` reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreStatus {
    Up,
    /// The last call failed, but too few in a row to open the breaker.
    Failing {
        reason: String,
    },
    /// No calls are made until the probe finds the store again.
    Open {
        since: SystemTime,
        reason: String,
    },
}

/// Counts consecutive failures and opens after [`TRIP_AFTER`]; only a successful probe (or
/// call) closes it. A state change is logged once, never per request.
///
/// The request path reads one atomic flag while closed and writes nothing while calls
/// succeed, so a healthy store pays for the breaker with a load or two per request.
#[derive(Default)]
pub struct Breaker {
    open: AtomicBool,
    failures: AtomicU32,
    detail: Mutex<Detail>,
}

#[derive(Default)]
struct Detail {
    since: Option<SystemTime>,
    reason: Option<String>,
}

impl Breaker {
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// A call succeeded: the failure streak ends.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.detail().reason = None;
        }
    }

    /// A call failed with `reason`; returns true when this failure opened the breaker.
    pub fn record_failure(&self, reason: &str) -> bool {
        let streak = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut detail = self.detail();
        detail.reason = Some(reason.to_string());
        if streak < TRIP_AFTER || self.open.swap(true, Ordering::AcqRel) {
            return false;
        }
        detail.since = Some(SystemTime::now());
        log::warn!(
            "store: breaker open after {streak} failures in a row ({reason}); on_error decides until the store answers again"
        );
        true
    }

    /// The probe reached the store: calls resume. Returns true when the breaker was open.
    pub fn close(&self) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        let was_open = self.open.swap(false, Ordering::AcqRel);
        let mut detail = self.detail();
        if was_open {
            let away = detail
                .since
                .and_then(|s| s.elapsed().ok())
                .unwrap_or_default();
            log::warn!("store: answering again after {away:?}; breaker closed");
        }
        *detail = Detail::default();
        was_open
    }

    /// The probe failed too: keep the reason current for `/health`.
    pub fn probe_failed(&self, reason: &str) {
        self.detail().reason = Some(reason.to_string());
    }

    /// When the breaker opened, while it is open (no reason string copied: the fail-fast path
    /// asks this on every request).
    pub fn open_since(&self) -> Option<SystemTime> {
        if !self.is_open() {
            return None;
        }
        Some(self.detail().since.unwrap_or_else(SystemTime::now))
    }

    pub fn status(&self) -> StoreStatus {
        let detail = self.detail();
        let reason = detail.reason.clone().unwrap_or_default();
        match (self.is_open(), detail.since) {
            (true, since) => StoreStatus::Open {
                since: since.unwrap_or_else(SystemTime::now),
                reason,
            },
            (false, _) if self.failures.load(Ordering::Relaxed) > 0 => {
                StoreStatus::Failing { reason }
            }
            _ => StoreStatus::Up,
        }
    }

    fn detail(&self) -> std::sync::MutexGuard<'_, Detail> {
        self.detail.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_three_failures_in_a_row_and_only_a_close_reopens_calls() {
        let b = Breaker::default();
        assert!(!b.record_failure("refused"));
        b.record_success();
        assert!(!b.record_failure("refused"));
        assert!(!b.record_failure("refused"));
        assert_eq!(
            b.status(),
            StoreStatus::Failing {
                reason: "refused".into()
            }
        );
        assert!(b.record_failure("timeout"), "the third in a row opens it");
        assert!(b.is_open());
        assert!(!b.record_failure("timeout"), "opened once");
        assert!(matches!(b.status(), StoreStatus::Open { reason, .. } if reason == "timeout"));
        b.probe_failed("still refused");
        assert!(
            matches!(b.status(), StoreStatus::Open { reason, .. } if reason == "still refused")
        );
        assert!(b.close());
        assert!(!b.is_open());
        assert_eq!(b.status(), StoreStatus::Up);
        assert!(!b.close());
    }
}
