//! Throttling: a request that its limits would admit within a route's `max_delay` waits in the
//! sidecar instead of being refused, and is then decided again (checked and counted at that
//! time, so every limit holds exactly as it does for refusals).
//!
//! The wait itself is the proxy's (it watches the client while the request waits); this module
//! says whether a refused request may wait, and for how long, and keeps the count of waiting
//! requests within `max_waiting`.
//!
//! Waiters of one limit key share a queue in the store (a ticket: an in-flight slot of the key
//! `<key>:q`, leased like any other, so a killed sidecar's tickets expire): a new waiter's
//! place in it says how many must be admitted before its turn, and a turn that cannot come
//! within `max_delay` (by [`earliest_turn`], a bound no faster than the limit allows) is
//! refused at once instead of waiting out `max_delay` to be refused then.

use crate::limiter::side::Held;
use crate::limiter::{Algorithm, Rate};
use crate::routes::Throttle;
use prometheus::{Histogram, IntCounter};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The shortest wait: a refusal that says "now" (a slot freed as it was counted) is checked
/// again after this, not at once.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// One route's throttle in one sidecar: its rule, its waiting requests and its metrics.
pub struct Throttling {
    rule: Throttle,
    /// Requests waiting now. Shared with each [`Wait`], so a request that waits across a
    /// reload gives its place back to the count it took it from.
    waiting: Arc<AtomicUsize>,
    throttled: IntCounter,
    delay: Histogram,
}

/// A refused request's permission to wait `delay`, then be decided again. It holds one of the
/// route's `max_waiting` places until dropped.
#[derive(Debug)]
pub struct Wait {
    pub delay: Duration,
    /// The request's ticket in its limit key's queue in the store, taken at its first refusal
    /// and held until it is admitted, refused or gone (the proxy gives it back).
    pub ticket: Option<Held>,
    _place: Place,
}

#[derive(Debug)]
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Throttling {
    pub fn new(rule: Throttle, (throttled, delay): (IntCounter, Histogram)) -> Self {
        Self {
            rule,
            waiting: Arc::new(AtomicUsize::new(0)),
            throttled,
            delay,
        }
    }

    /// Whether a request refused with `retry`, which has waited `waited` so far, may wait for
    /// it: only when it would still be within `max_delay` once admitted, and a place is free.
    pub fn wait(&self, retry: Duration, waited: Duration) -> Option<Wait> {
        let delay = retry.max(MIN_WAIT);
        if waited + delay > self.rule.max_delay {
            return None;
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.rule.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Wait {
            delay,
            ticket: None,
            _place: Place(self.waiting.clone()),
        })
    }

    pub fn max_delay(&self) -> Duration {
        self.rule.max_delay
    }

    /// A request admitted after waiting `waited`.
    pub fn admitted(&self, waited: Duration) {
        self.throttled.inc();
        self.delay.observe(waited.as_secs_f64());
    }
}

/// The earliest a waiter can be admitted by `rate`: it was refused with `retry`, and `ahead`
/// requests of `cost` units each wait before it. No faster than the limit allows: GCRA (its
/// burst spent, since it refused) admits one request per emission interval after `retry`; a
/// windowed algorithm admits at most `requests / cost` in any window.
pub fn earliest_turn(rate: &Rate, retry: Duration, ahead: u32, cost: u32) -> Duration {
    let cost = cost.max(1);
    match rate.algorithm {
        Algorithm::Gcra => {
            retry
                + rate
                    .window
                    .mul_f64(f64::from(ahead) * f64::from(cost) / f64::from(rate.requests.get()))
        }
        _ => {
            let per_window = (rate.requests.get() / cost).max(1);
            retry + rate.window * (ahead / per_window)
        }
    }
}

/// `Sluice-Delay`: how long a throttled request was held, in seconds.
pub fn delay_header(waited: Duration) -> String {
    format!("{:.3}", waited.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttling(max_delay_ms: u64, max_waiting: usize) -> Throttling {
        let rule = Throttle {
            max_delay: Duration::from_millis(max_delay_ms),
            max_waiting,
        };
        let m = crate::metrics::Metrics::new();
        Throttling::new(rule, m.throttle_metrics("r"))
    }

    #[test]
    fn a_request_waits_only_within_max_delay_and_while_a_place_is_free() {
        let t = throttling(2000, 2);
        let ms = Duration::from_millis;
        assert!(t.wait(ms(2001), ms(0)).is_none(), "longer than max_delay");
        assert!(t.wait(ms(500), ms(1600)).is_none(), "over max_delay in all");
        let a = t.wait(ms(100), ms(0)).expect("a place");
        assert_eq!(a.delay, ms(100));
        let b = t.wait(ms(0), ms(1900)).expect("a place");
        assert_eq!(b.delay, MIN_WAIT);
        assert!(t.wait(ms(100), ms(0)).is_none(), "max_waiting reached");
        drop(a);
        assert!(t.wait(ms(100), ms(0)).is_some(), "a place freed");
        drop(b);
        assert_eq!(t.waiting.load(Ordering::Acquire), 0);
    }

    #[test]
    fn the_earliest_turn_is_no_faster_than_the_limit() {
        let ms = Duration::from_millis;
        let gcra = Rate {
            algorithm: Algorithm::Gcra,
            ..Rate::log(10, Duration::from_secs(1))
        };
        assert_eq!(earliest_turn(&gcra, ms(100), 0, 1), ms(100));
        assert_eq!(earliest_turn(&gcra, ms(100), 19, 1), ms(2000));
        assert_eq!(
            earliest_turn(&gcra, ms(100), 5, 2),
            ms(1100),
            "two units each"
        );
        let log = Rate::log(10, Duration::from_secs(1));
        assert_eq!(
            earliest_turn(&log, ms(300), 9, 1),
            ms(300),
            "ten may leave at once"
        );
        assert_eq!(earliest_turn(&log, ms(300), 10, 1), ms(1300));
        assert_eq!(earliest_turn(&log, ms(300), 25, 1), ms(2300));
        assert_eq!(
            earliest_turn(&log, ms(300), 1, 20),
            ms(1300),
            "one per window"
        );
    }

    #[test]
    fn the_delay_header_is_in_seconds() {
        assert_eq!(delay_header(Duration::from_millis(350)), "0.350");
        assert_eq!(delay_header(Duration::from_micros(1_999_600)), "2.000");
    }
}
