//! The three limiting algorithms on one limit's in-process state, step for step as
//! `check.lua` runs them in Redis: phase 1 looks (does the limit have room for `cost`?),
//! phase 2 counts (only when every limit of the route has room) and reports.

use super::Parts;
use super::{Algorithm, Limit};
use std::collections::VecDeque;
use std::time::Duration;

/// One limit's state for one caller.
#[derive(Debug, Clone)]
pub enum State {
    /// Admission times (µs), oldest first; one entry per cost unit.
    Log(VecDeque<u64>),
    /// The fixed window `idx` (now / window), its count and the previous window's count.
    Window { idx: u64, cur: u64, prev: u64 },
    /// The theoretical arrival time (µs): when the bucket is next empty.
    Gcra { tat: f64 },
}

/// What phase 1 found, for phase 2.
#[derive(Debug, Clone, Copy)]
pub struct Look {
    pub ok: bool,
    used: u64,
    idx: u64,
    cur: u64,
    prev: u64,
    est: f64,
    tat: f64,
    new_tat: f64,
}

impl State {
    pub fn new(algorithm: Algorithm) -> State {
        match algorithm {
            Algorithm::SlidingLog => State::Log(VecDeque::new()),
            Algorithm::SlidingWindow => State::Window {
                idx: 0,
                cur: 0,
                prev: 0,
            },
            Algorithm::Gcra => State::Gcra { tat: 0.0 },
        }
    }

    /// Phase 1 at `now` (µs): whether `limit` has room for `cost` more.
    pub fn look(&mut self, limit: &Limit, now: u64, cost: u32) -> Look {
        let (requests, window) = (limit.requests.get() as u64, micros(limit.window));
        let cost = cost as u64;
        let mut look = Look {
            ok: false,
            used: 0,
            idx: 0,
            cur: 0,
            prev: 0,
            est: 0.0,
            tat: 0.0,
            new_tat: 0.0,
        };
        match self {
            State::Log(log) => {
                while log.front().is_some_and(|&t| t + window <= now) {
                    log.pop_front();
                }
                look.used = log.len() as u64;
                look.ok = look.used + cost <= requests;
            }
            State::Window { idx, cur, prev } => {
                let now_idx = now / window;
                (look.cur, look.prev) = match now_idx {
                    i if i == *idx => (*cur, *prev),
                    i if i == *idx + 1 => (0, *cur),
                    _ => (0, 0),
                };
                look.idx = now_idx;
                let f = (now - now_idx * window) as f64 / window as f64;
                look.est = look.prev as f64 * (1.0 - f) + look.cur as f64;
                look.ok = look.est + cost as f64 <= requests as f64 + 1e-9;
            }
            State::Gcra { tat } => {
                let t = window as f64 / requests as f64;
                look.tat = tat.max(now as f64);
                look.new_tat = look.tat + cost as f64 * t;
                look.ok = look.new_tat - now as f64 <= limit.burst.get() as f64 * t + 1e-6;
            }
        }
        look
    }

    /// Phase 2: counts `cost` when `count`, and reports the limit; `refused` is whether the
    /// request as a whole was refused (then a limit without room reports its retry time).
    pub fn finish(
        &mut self,
        look: Look,
        limit: &Limit,
        now: u64,
        cost: u32,
        count: bool,
        refused: bool,
    ) -> Parts {
        let (requests, window) = (limit.requests.get() as u64, micros(limit.window));
        let cost = cost as u64;
        let us = |v: f64| Duration::from_micros(v.max(0.0).ceil() as u64);
        match self {
            State::Log(log) => {
                if count {
                    log.extend(std::iter::repeat_n(now, cost as usize));
                }
                let used = log.len() as u64;
                let reset = log.front().map_or(0, |&t| t + window - now);
                let mut retry = 0;
                if refused && !look.ok {
                    let k = used + cost - requests.min(used + cost);
                    retry = match k {
                        k if k > used => window,
                        k => log[(k - 1) as usize] + window - now,
                    };
                }
                (
                    sat(used),
                    sat(requests.saturating_sub(used)),
                    Duration::from_micros(reset),
                    Duration::from_micros(retry),
                )
            }
            State::Window { idx, cur, prev } => {
                let (mut c, mut est) = (look.cur, look.est);
                if count {
                    c += cost;
                    est += cost as f64;
                    (*idx, *cur, *prev) = (look.idx, c, look.prev);
                }
                let reset = ((look.idx + 1) * window - now) as f64;
                let mut retry = 0.0;
                if refused && !look.ok {
                    let room = requests as f64 - cost as f64;
                    let into = (now - look.idx * window) as f64;
                    retry = if room < 0.0 {
                        window as f64
                    } else if c as f64 <= room && look.prev > 0 {
                        (1.0 - (room - c as f64) / look.prev as f64) * window as f64 - into
                    } else if c > 0 {
                        reset + (1.0 - room / c as f64) * window as f64
                    } else {
                        reset
                    };
                    retry = retry.max(1.0);
                }
                (
                    sat((est - 1e-9).ceil().max(0.0) as u64),
                    sat((requests as f64 - est + 1e-9).floor().max(0.0) as u64),
                    us(reset),
                    us(retry),
                )
            }
            State::Gcra { tat } => {
                let t = window as f64 / requests as f64;
                let burst = limit.burst.get() as f64;
                let cap = burst * t;
                let current = if count { look.new_tat } else { look.tat };
                if count {
                    *tat = current.round();
                }
                let ahead = current - now as f64;
                let remaining = ((cap - ahead) / t + 1e-9).floor().max(0.0);
                let mut retry = 0.0;
                if refused && !look.ok {
                    retry = if cost as f64 > burst {
                        window as f64
                    } else {
                        (look.new_tat - cap - now as f64).max(1.0)
                    };
                }
                (
                    sat((burst - remaining) as u64),
                    sat(remaining as u64),
                    us(ahead),
                    us(retry),
                )
            }
        }
    }

    /// When this state holds nothing that matters any more.
    pub fn expires_at(&self, limit: &Limit) -> u64 {
        let window = micros(limit.window);
        match self {
            State::Log(log) => log.back().map_or(0, |&t| t + window),
            State::Window { idx, .. } => (idx + 2) * window,
            State::Gcra { tat } => tat.ceil() as u64,
        }
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
    use std::num::NonZeroU32;

    fn limit(algorithm: Algorithm, requests: u32, window_ms: u64, burst: u32) -> Limit {
        Limit {
            requests: NonZeroU32::new(requests).unwrap(),
            window: Duration::from_millis(window_ms),
            algorithm,
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    /// One decision on one limit: (admitted, parts).
    fn step(s: &mut State, l: &Limit, now_ms: u64, cost: u32) -> (bool, Parts) {
        let now = now_ms * 1000;
        let look = s.look(l, now, cost);
        (look.ok, s.finish(look, l, now, cost, look.ok, !look.ok))
    }

    #[test]
    fn the_sliding_window_weighs_the_previous_window_by_what_is_still_covered() {
        let l = limit(Algorithm::SlidingWindow, 10, 1000, 10);
        let mut s = State::new(l.algorithm);
        for i in 0..10 {
            assert!(step(&mut s, &l, 1000 + i, 1).0, "{i}");
        }
        let (ok, (_, remaining, _, retry)) = step(&mut s, &l, 1500, 1);
        assert!(!ok);
        assert_eq!(remaining, 0);
        // At 2000 + x the estimate is 10 * (1 - x/1000): room for one at x = 100 ms.
        assert_eq!(retry, Duration::from_millis(600));
        assert!(!step(&mut s, &l, 2099, 1).0);
        assert!(step(&mut s, &l, 2100, 1).0);
        // 3.0 windows later everything has slid out.
        let (ok, (used, _, _, _)) = step(&mut s, &l, 4000, 1);
        assert!(ok);
        assert_eq!(used, 1);
    }

    #[test]
    fn gcra_admits_a_burst_then_spaces_requests_evenly() {
        // 10 per second: one every 100 ms, up to 10 at once.
        let l = limit(Algorithm::Gcra, 10, 1000, 10);
        let mut s = State::new(l.algorithm);
        for i in 0..10 {
            let (ok, (_, remaining, _, _)) = step(&mut s, &l, 5000, 1);
            assert!(ok, "{i}");
            assert_eq!(remaining, 9 - i);
        }
        let (ok, (_, _, reset, retry)) = step(&mut s, &l, 5000, 1);
        assert!(!ok);
        assert_eq!(retry, Duration::from_millis(100));
        assert_eq!(reset, Duration::from_millis(1000));
        assert!(!step(&mut s, &l, 5099, 1).0);
        assert!(step(&mut s, &l, 5100, 1).0);
        assert!(!step(&mut s, &l, 5150, 1).0);
        // A burst of 1: strictly one per 100 ms.
        let l = limit(Algorithm::Gcra, 10, 1000, 1);
        let mut s = State::new(l.algorithm);
        assert!(step(&mut s, &l, 0, 1).0);
        assert!(!step(&mut s, &l, 50, 1).0);
        assert!(step(&mut s, &l, 100, 1).0);
    }

    #[test]
    fn a_cost_counts_whole_or_not_at_all() {
        for algorithm in [
            Algorithm::SlidingLog,
            Algorithm::SlidingWindow,
            Algorithm::Gcra,
        ] {
            let l = limit(algorithm, 10, 60_000, 10);
            let mut s = State::new(algorithm);
            assert!(step(&mut s, &l, 1000, 4).0, "{algorithm:?}");
            assert!(step(&mut s, &l, 1000, 4).0, "{algorithm:?}");
            let (ok, (used, remaining, _, retry)) = step(&mut s, &l, 1000, 4);
            assert!(!ok, "{algorithm:?}: 8 + 4 > 10");
            assert_eq!(
                (used, remaining),
                (8, 2),
                "{algorithm:?}: nothing of it was counted"
            );
            assert!(retry > Duration::ZERO);
            assert!(
                step(&mut s, &l, 1000, 2).0,
                "{algorithm:?}: what fits still fits"
            );
            let (ok, (_, _, _, retry)) = step(&mut s, &l, 1000, 11);
            assert!(!ok);
            assert_eq!(retry, Duration::from_secs(60), "{algorithm:?}: never fits");
        }
    }
}
