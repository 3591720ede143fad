//! The store engine on one key's in-process state, step for step as `check.lua` runs it in
//! Redis (the same kinds, the same arithmetic, the same answers: tests/engine.rs runs both on
//! random traces and compares): `look` (has the limit room for `cost`?), `count` (only when
//! every limit of the request has room), `report`; `adjust`, `release` and `renew` after.

use super::layout::{lease_ms, SLOT_RETRY};
use super::limit::{Algorithm, Kind};
use super::Parts;
use std::collections::VecDeque;
use std::time::Duration;

/// One limit's state for one key.
#[derive(Debug, Clone)]
pub enum State {
    /// Admissions, oldest first: (time µs, cost, member); `total` is the sum of their costs.
    Log {
        entries: VecDeque<(u64, u32, u64)>,
        total: u64,
    },
    /// The fixed window `idx` (now / window), its count and the previous window's count.
    Window { idx: u64, cur: u64, prev: u64 },
    /// The theoretical arrival time (µs): when the bucket is next empty.
    Gcra { tat: f64 },
    /// In-flight leases: (member, expiry µs).
    Slots { leases: Vec<(u64, u64)> },
    /// A calendar quota's period `[start, end)` (µs) and what it counted.
    Quota { start: u64, end: u64, count: u64 },
}

/// What `look` found, for `count` and `report`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Look {
    pub ok: bool,
    used: u64,
    oldest: Option<u64>,
    idx: u64,
    cur: u64,
    prev: u64,
    est: f64,
    tat: f64,
    new_tat: f64,
    /// A quota's period, as found or as the request's instant puts it.
    start: u64,
    end: u64,
}

/// The fixed window holding `at`.
fn window_index(at: u64, window: u64) -> u64 {
    at / window
}

impl State {
    pub fn new(kind: &Kind) -> State {
        match kind {
            Kind::Rate(r) => match r.algorithm {
                Algorithm::SlidingLog => State::Log {
                    entries: VecDeque::new(),
                    total: 0,
                },
                Algorithm::SlidingWindow => State::Window {
                    idx: 0,
                    cur: 0,
                    prev: 0,
                },
                Algorithm::Gcra => State::Gcra { tat: 0.0 },
            },
            Kind::Concurrency(_) => State::Slots { leases: Vec::new() },
            Kind::Quota(_) => State::Quota {
                start: 0,
                end: 0,
                count: 0,
            },
        }
    }

    /// Whether `kind` has room for `cost` more at `now` (µs); drops what has expired.
    pub fn look(&mut self, kind: &Kind, now: u64, cost: u32) -> Look {
        let (amount, window, burst) = dims(kind);
        let cost = cost as u64;
        let mut look = Look::default();
        match self {
            State::Log { entries, total } => {
                while entries.front().is_some_and(|&(t, _, _)| t + window <= now) {
                    if let Some((_, c, _)) = entries.pop_front() {
                        *total -= c as u64;
                    }
                }
                look.used = *total;
                look.oldest = entries.front().map(|e| e.0);
                look.ok = *total + cost <= amount;
            }
            State::Window { idx, cur, prev } => {
                let now_idx = window_index(now, window);
                (look.cur, look.prev) = match now_idx {
                    i if i == *idx => (*cur, *prev),
                    i if i == *idx + 1 => (0, *cur),
                    _ => (0, 0),
                };
                look.idx = now_idx;
                let f = (now - now_idx * window) as f64 / window as f64;
                look.est = look.prev as f64 * (1.0 - f) + look.cur as f64;
                look.ok = look.est + cost as f64 <= amount as f64 + 1e-9;
            }
            State::Gcra { tat } => {
                let t = window as f64 / amount as f64;
                look.tat = tat.max(now as f64);
                look.new_tat = look.tat + cost as f64 * t;
                look.ok = look.new_tat - now as f64 <= burst as f64 * t + 1e-6;
            }
            State::Slots { leases } => {
                leases.retain(|&(_, until)| until > now);
                look.used = leases.len() as u64;
                look.ok = look.used < amount;
            }
            State::Quota { start, end, count } => {
                // A period never goes back (see check.lua).
                let b = quota_bounds(kind, now);
                (look.start, look.end, look.used) = match *start >= b.start {
                    true => (*start, *end, *count),
                    false => (b.start, b.end, 0),
                };
                look.ok = look.used + cost <= amount;
            }
        }
        look
    }

    /// Counts `cost` (one slot for a concurrency limit, leased until `now + lease`).
    pub fn count(&mut self, look: &mut Look, now: u64, cost: u32, member: u64, lease: Duration) {
        match self {
            State::Log { entries, total } => {
                entries.push_back((now, cost, member));
                *total += cost as u64;
                look.used += cost as u64;
                look.oldest = look.oldest.or(Some(now));
            }
            State::Window { idx, cur, prev } => {
                look.cur += cost as u64;
                look.est += cost as f64;
                (*idx, *cur, *prev) = (look.idx, look.cur, look.prev);
            }
            State::Gcra { tat } => {
                look.tat = look.new_tat;
                *tat = (look.tat + 0.5).floor();
            }
            State::Slots { leases } => {
                leases.push((member, now + lease_ms(lease) * 1000));
                look.used += 1;
            }
            State::Quota { start, end, count } => {
                look.used += cost as u64;
                (*start, *end, *count) = (look.start, look.end, look.used);
            }
        }
    }

    /// The limit's state after the decision; `refused` is whether the request as a whole was
    /// refused (then a limit without room reports when it would have room).
    pub fn report(&self, look: &Look, kind: &Kind, now: u64, cost: u32, refused: bool) -> Parts {
        let (amount, window, burst) = dims(kind);
        let cost = cost as u64;
        let us = |v: f64| Duration::from_micros(v.max(0.0).ceil() as u64);
        let (used, remaining, reset, retry) = match self {
            State::Log { entries, .. } => {
                let used = look.used;
                let mut retry = 0;
                if refused && !look.ok {
                    let k = used + cost - amount.min(used + cost);
                    retry = if k > used {
                        window
                    } else {
                        let mut need = k;
                        let mut at = None;
                        for &(t, c, _) in entries {
                            need = need.saturating_sub(c as u64);
                            if need == 0 {
                                at = Some(t);
                                break;
                            }
                        }
                        at.map_or(window, |t| t + window - now)
                    };
                }
                let reset = if used > 0 {
                    look.oldest.unwrap_or(now) + window - now
                } else {
                    0
                };
                (
                    used,
                    amount.saturating_sub(used),
                    Duration::from_micros(reset),
                    Duration::from_micros(retry),
                )
            }
            State::Window { .. } => {
                let (c, est) = (look.cur, look.est);
                let reset = ((look.idx + 1) * window - now) as f64;
                let mut retry = 0.0;
                if refused && !look.ok {
                    let room = amount as f64 - cost as f64;
                    let into = (now - look.idx * window) as f64;
                    retry = if room < 0.0 {
                        window as f64
                    } else if c as f64 <= room && look.prev > 0 {
                        ((1.0 - (room - c as f64) / look.prev as f64) * window as f64 - into).ceil()
                    } else {
                        let share = match c {
                            0 => 0.0,
                            c => (1.0 - room / c as f64) * window as f64,
                        };
                        (reset + share).ceil()
                    };
                    retry = retry.max(1.0);
                }
                (
                    (est - 1e-9).ceil().max(0.0) as u64,
                    (amount as f64 - est + 1e-9).floor().max(0.0) as u64,
                    us(reset),
                    us(retry),
                )
            }
            State::Gcra { .. } => {
                let t = window as f64 / amount as f64;
                let cap = burst as f64 * t;
                let ahead = look.tat - now as f64;
                let remaining = ((cap - ahead) / t + 1e-9).floor().max(0.0);
                let mut retry = 0.0;
                if refused && !look.ok {
                    retry = if cost > burst {
                        window as f64
                    } else {
                        (look.new_tat - cap - now as f64).ceil().max(1.0)
                    };
                }
                (
                    (burst as f64 - remaining) as u64,
                    remaining as u64,
                    us(ahead),
                    us(retry),
                )
            }
            State::Slots { .. } => {
                let retry = match refused && !look.ok {
                    true => SLOT_RETRY,
                    false => Duration::ZERO,
                };
                (
                    look.used,
                    amount.saturating_sub(look.used),
                    Duration::ZERO,
                    retry,
                )
            }
            State::Quota { .. } => {
                let reset = look.end.saturating_sub(now);
                let retry = match refused && !look.ok {
                    true => reset.max(1),
                    false => 0,
                };
                (
                    look.used,
                    amount.saturating_sub(look.used),
                    Duration::from_micros(reset),
                    Duration::from_micros(retry),
                )
            }
        };
        (sat(used), sat(remaining), reset, retry)
    }

    /// Replaces what `member` counted (`counted` units at `at`) by `cost` units (0: undo it).
    pub fn adjust(&mut self, kind: &Kind, now: u64, member: u64, counted: u32, cost: u32, at: u64) {
        let (amount, window, _) = dims(kind);
        match self {
            State::Log { entries, total } => {
                if at + window <= now {
                    return;
                }
                let Some(i) = entries
                    .iter()
                    .position(|&(t, c, m)| m == member && t == at && c == counted)
                else {
                    return;
                };
                entries.remove(i);
                *total -= counted as u64;
                if cost > 0 {
                    let at_pos = entries.partition_point(|&(t, _, _)| t <= at);
                    entries.insert(at_pos, (at, cost, member));
                    *total += cost as u64;
                }
            }
            State::Window { idx, cur, prev } => {
                let i = window_index(at, window);
                let delta = |v: &mut u64| *v = (*v + cost as u64).saturating_sub(counted as u64);
                if *idx == i {
                    delta(cur);
                } else if *idx == i + 1 {
                    delta(prev);
                }
            }
            State::Gcra { tat } => {
                if *tat <= now as f64 {
                    // Redis has let the key expire: nothing to adjust.
                    return;
                }
                let delta = (cost as f64 - counted as f64) * window as f64 / amount as f64;
                let moved = (*tat + delta + 0.5).floor();
                *tat = if moved <= now as f64 { 0.0 } else { moved };
            }
            State::Slots { leases } => {
                if cost == 0 {
                    leases.retain(|&(m, _)| m != member);
                }
            }
            State::Quota { start, end, count } => {
                // Only in the period it was counted in; an empty state has nothing to adjust.
                if *end > 0 && quota_bounds(kind, at).start == *start {
                    *count = (*count + cost as u64).saturating_sub(counted as u64);
                }
            }
        }
    }

    /// Extends `member`'s lease to `until`, if it is still running at `now` (one that ran out
    /// has freed its slot for someone else); whether it did.
    pub fn renew(&mut self, member: u64, now: u64, until: u64) -> bool {
        match self {
            State::Slots { leases } => match leases
                .iter_mut()
                .find(|(m, expiry)| *m == member && *expiry > now)
            {
                Some(lease) => {
                    lease.1 = until;
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    /// When this state holds nothing that matters any more (µs).
    pub fn expires_at(&self, kind: &Kind) -> u64 {
        let (_, window, _) = dims(kind);
        match self {
            State::Log { entries, .. } => entries.back().map_or(0, |&(t, _, _)| t + window),
            State::Window { idx, .. } => (idx + 2) * window,
            State::Gcra { tat } => tat.ceil() as u64,
            State::Slots { leases } => leases.iter().map(|&(_, until)| until).max().unwrap_or(0),
            State::Quota { end, .. } => *end,
        }
    }
}

/// (amount, window µs, burst) of a kind; a concurrency limit has no window.
fn dims(kind: &Kind) -> (u64, u64, u64) {
    match kind {
        Kind::Rate(r) => (
            r.requests.get() as u64,
            micros(r.window).max(1),
            r.burst.get() as u64,
        ),
        Kind::Concurrency(n) => (n.get() as u64, 1, 0),
        Kind::Quota(q) => (q.requests.get() as u64, 1, 0),
    }
}

/// The calendar period holding `now`, for a quota (any other kind: nothing).
fn quota_bounds(kind: &Kind, now: u64) -> super::calendar::Bounds {
    match kind {
        Kind::Quota(q) => q.bounds(now),
        _ => super::calendar::Bounds { start: 0, end: 0 },
    }
}

/// A duration in whole microseconds, the unit every algorithm counts in.
pub(super) fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn sat(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::limit::Rate;
    use std::num::NonZeroU32;

    fn rate(algorithm: Algorithm, requests: u32, window_ms: u64, burst: u32) -> Kind {
        Kind::Rate(Rate {
            requests: NonZeroU32::new(requests).unwrap(),
            window: Duration::from_millis(window_ms),
            algorithm,
            burst: NonZeroU32::new(burst).unwrap(),
        })
    }

    /// One decision on one limit: (admitted, parts).
    fn step(s: &mut State, k: &Kind, now_ms: u64, cost: u32) -> (bool, Parts) {
        let now = now_ms * 1000;
        let mut look = s.look(k, now, cost);
        if look.ok {
            s.count(&mut look, now, cost, now, Duration::from_secs(10));
        }
        (look.ok, s.report(&look, k, now, cost, !look.ok))
    }

    #[test]
    fn the_sliding_window_weighs_the_previous_window_by_what_is_still_covered() {
        let k = rate(Algorithm::SlidingWindow, 10, 1000, 10);
        let mut s = State::new(&k);
        for i in 0..10 {
            assert!(step(&mut s, &k, 1000 + i, 1).0, "{i}");
        }
        let (ok, (_, remaining, _, retry)) = step(&mut s, &k, 1500, 1);
        assert!(!ok);
        assert_eq!(remaining, 0);
        // At 2000 + x the estimate is 10 * (1 - x/1000): room for one at x = 100 ms.
        assert_eq!(retry, Duration::from_millis(600));
        assert!(!step(&mut s, &k, 2099, 1).0);
        assert!(step(&mut s, &k, 2100, 1).0);
        // 3.0 windows later everything has slid out.
        let (ok, (used, _, _, _)) = step(&mut s, &k, 4000, 1);
        assert!(ok);
        assert_eq!(used, 1);
    }

    #[test]
    fn gcra_admits_a_burst_then_spaces_requests_evenly() {
        // 10 per second: one every 100 ms, up to 10 at once.
        let k = rate(Algorithm::Gcra, 10, 1000, 10);
        let mut s = State::new(&k);
        for i in 0..10 {
            let (ok, (_, remaining, _, _)) = step(&mut s, &k, 5000, 1);
            assert!(ok, "{i}");
            assert_eq!(remaining, 9 - i);
        }
        let (ok, (_, _, reset, retry)) = step(&mut s, &k, 5000, 1);
        assert!(!ok);
        assert_eq!(retry, Duration::from_millis(100));
        assert_eq!(reset, Duration::from_millis(1000));
        assert!(!step(&mut s, &k, 5099, 1).0);
        assert!(step(&mut s, &k, 5100, 1).0);
        assert!(!step(&mut s, &k, 5150, 1).0);
        // A burst of 1: strictly one per 100 ms.
        let k = rate(Algorithm::Gcra, 10, 1000, 1);
        let mut s = State::new(&k);
        assert!(step(&mut s, &k, 0, 1).0);
        assert!(!step(&mut s, &k, 50, 1).0);
        assert!(step(&mut s, &k, 100, 1).0);
    }

    #[test]
    fn a_cost_counts_whole_or_not_at_all() {
        for algorithm in [
            Algorithm::SlidingLog,
            Algorithm::SlidingWindow,
            Algorithm::Gcra,
        ] {
            let k = rate(algorithm, 10, 60_000, 10);
            let mut s = State::new(&k);
            assert!(step(&mut s, &k, 1000, 4).0, "{algorithm:?}");
            assert!(step(&mut s, &k, 1000, 4).0, "{algorithm:?}");
            let (ok, (used, remaining, _, retry)) = step(&mut s, &k, 1000, 4);
            assert!(!ok, "{algorithm:?}: 8 + 4 > 10");
            assert_eq!(
                (used, remaining),
                (8, 2),
                "{algorithm:?}: nothing of it was counted"
            );
            assert!(retry > Duration::ZERO);
            assert!(
                step(&mut s, &k, 1000, 2).0,
                "{algorithm:?}: what fits still fits"
            );
            let (ok, (_, _, _, retry)) = step(&mut s, &k, 1000, 11);
            assert!(!ok);
            assert_eq!(retry, Duration::from_secs(60), "{algorithm:?}: never fits");
        }
    }

    #[test]
    fn a_costly_admission_is_one_log_entry_and_leaves_whole() {
        let k = rate(Algorithm::SlidingLog, 10_000, 1000, 10_000);
        let mut s = State::new(&k);
        assert!(step(&mut s, &k, 0, 9_000).0);
        assert!(matches!(&s, State::Log { entries, total: 9000 } if entries.len() == 1));
        let (ok, (_, remaining, _, retry)) = step(&mut s, &k, 500, 2_000);
        assert!(!ok);
        assert_eq!(remaining, 1_000);
        assert_eq!(retry, Duration::from_millis(500), "when the 9,000 leave");
        assert!(step(&mut s, &k, 1000, 10_000).0);
    }

    #[test]
    fn an_undone_count_gives_its_units_back_in_every_algorithm() {
        for algorithm in [
            Algorithm::SlidingLog,
            Algorithm::SlidingWindow,
            Algorithm::Gcra,
        ] {
            let k = rate(algorithm, 2, 60_000, 2);
            let mut s = State::new(&k);
            assert!(step(&mut s, &k, 1000, 1).0);
            assert!(step(&mut s, &k, 1000, 1).0);
            assert!(!step(&mut s, &k, 1001, 1).0, "{algorithm:?}");
            s.adjust(&k, 1_001_000, 1_000_000, 1, 0, 1_000_000);
            assert!(step(&mut s, &k, 1001, 1).0, "{algorithm:?}: one unit back");
        }
    }

    #[test]
    fn slots_are_held_until_released_or_expired() {
        let k = Kind::Concurrency(NonZeroU32::new(2).unwrap());
        let mut s = State::new(&k);
        let lease = Duration::from_secs(10);
        for member in [1, 2] {
            let mut look = s.look(&k, 0, 1);
            assert!(look.ok);
            s.count(&mut look, 0, 1, member, lease);
        }
        let look = s.look(&k, 5, 1);
        assert!(!look.ok);
        assert_eq!(s.report(&look, &k, 5, 1, true).3, Duration::from_secs(1));
        s.adjust(&k, 5, 1, 1, 0, 0);
        assert!(s.look(&k, 6, 1).ok, "a released slot is free");
        assert!(s.renew(2, 6, 30_000_000));
        assert!(!s.renew(1, 6, 30_000_000), "1 holds nothing any more");
        let mut look = s.look(&k, 6, 1);
        s.count(&mut look, 6, 1, 3, lease);
        assert!(!s.look(&k, 9_000_000, 1).ok);
        assert!(s.look(&k, 10_000_006, 1).ok, "3's lease ran out");
        assert!(!s.renew(3, 10_000_007, 40_000_000), "too late to renew");
    }
}
