//! Replays synthetic traces through each algorithm (the same code the memory store runs, which
//! does what check.lua does in Redis) and compares every decision with the exact sliding log.
//!
//!   cargo run --release --example accuracy > bench/results/accuracy-algorithms.json
//!
//! Traces (seeded, so every run is the same): steady (each caller at 1.2x its limit, random
//! spacing), bursty (idle, then bursts of 3x the limit), on/off (2x the limit for half a
//! window, then silence), many callers (10,000 callers near their limit), mixed (nine callers
//! in ten at 0.3x their limit, one in ten at 1.5x). Limit 100 per 10 s,
//! 20 windows long. For each algorithm, as a fraction of all decisions: decisions that are
//! wrong by the exact rule applied to the algorithm's own history (admitted past the limit:
//! over; refused below it: under), decisions that differ from an exact log run side by side,
//! and the worst caller: the most it got admitted in any sliding window.

use sluice::limiter::algorithms::State;
use sluice::limiter::{Algorithm, Kind, Rate};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

const LIMIT: u32 = 100;
const WINDOW_US: u64 = 10_000_000;
const LENGTH_US: u64 = 20 * WINDOW_US;

/// xorshift64*: small, seeded, good enough for traces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponential gap with the given mean (a Poisson arrival process).
    fn gap(&mut self, mean_us: f64) -> u64 {
        (-(1.0 - self.unit()).ln() * mean_us) as u64
    }
}

/// Events (time µs, caller), sorted by time.
fn trace(name: &str, seed: u64) -> Vec<(u64, u32)> {
    let mut rng = Rng(seed);
    let mut events = Vec::new();
    let rate = LIMIT as f64 / WINDOW_US as f64; // requests per µs at the limit
    match name {
        "steady" => {
            for caller in 0..100 {
                let mut t = rng.gap(1.0 / (1.2 * rate));
                while t < LENGTH_US {
                    events.push((t, caller));
                    t += rng.gap(1.0 / (1.2 * rate));
                }
            }
        }
        "bursty" => {
            for caller in 0..100 {
                let mut t = rng.gap(WINDOW_US as f64);
                while t < LENGTH_US {
                    // A burst of 3x the limit within a tenth of a window.
                    for _ in 0..3 * LIMIT {
                        events.push((t + rng.next() % (WINDOW_US / 10), caller));
                    }
                    t += WINDOW_US + rng.gap(WINDOW_US as f64);
                }
            }
        }
        "on_off" => {
            for caller in 0..100 {
                let phase = rng.next() % WINDOW_US;
                let mut t = phase;
                while t < LENGTH_US {
                    let in_cycle = (t - phase) % WINDOW_US;
                    if in_cycle < WINDOW_US / 2 {
                        events.push((t, caller));
                        t += rng.gap(1.0 / (2.0 * 2.0 * rate));
                    } else {
                        t += WINDOW_US - in_cycle;
                    }
                }
            }
        }
        "mixed" => {
            // What most APIs see: nine callers in ten well under their limit (0.3x), one in
            // ten over it (1.5x).
            for caller in 0..1_000 {
                let r = if caller % 10 == 0 { 1.5 } else { 0.3 } * rate;
                let mut t = rng.gap(1.0 / r);
                while t < LENGTH_US {
                    events.push((t, caller));
                    t += rng.gap(1.0 / r);
                }
            }
        }
        _ => {
            for caller in 0..10_000 {
                let mut t = rng.gap(1.0 / (1.05 * rate));
                while t < LENGTH_US / 4 {
                    events.push((t, caller));
                    t += rng.gap(1.0 / (1.05 * rate));
                }
            }
        }
    }
    events.sort_unstable();
    events
}

fn limit(algorithm: Algorithm) -> Kind {
    let requests = NonZeroU32::new(LIMIT).unwrap();
    Kind::Rate(Rate {
        requests,
        window: Duration::from_micros(WINDOW_US),
        algorithm,
        burst: requests,
    })
}

/// Every event's decision under `limit`, each caller with its own state.
fn decide(events: &[(u64, u32)], limit: &Kind) -> Vec<bool> {
    let mut states: HashMap<u32, State> = HashMap::new();
    events
        .iter()
        .map(|&(now, caller)| {
            let s = states.entry(caller).or_insert_with(|| State::new(limit));
            let mut look = s.look(limit, now, 1);
            if look.ok {
                s.count(&mut look, now, 1, 0, Duration::ZERO);
            }
            look.ok
        })
        .collect()
}

/// Decisions wrong by the exact rule applied to the algorithm's own history (Cloudflare's
/// measure): admitted although it had already admitted the limit in the trailing window
/// (over), or refused although it had admitted fewer (under).
fn wrong_given_own_history(events: &[(u64, u32)], admitted: &[bool]) -> (usize, usize) {
    let mut recent: HashMap<u32, std::collections::VecDeque<u64>> = HashMap::new();
    let (mut over, mut under) = (0, 0);
    for (&(t, c), &ok) in events.iter().zip(admitted) {
        let q = recent.entry(c).or_default();
        while q.front().is_some_and(|&x| x + WINDOW_US <= t) {
            q.pop_front();
        }
        let exact = q.len() < LIMIT as usize;
        match (ok, exact) {
            (true, false) => over += 1,
            (false, true) => under += 1,
            _ => {}
        }
        if ok {
            q.push_back(t);
        }
    }
    (over, under)
}

/// The most any caller got admitted in any sliding window.
fn worst_window(events: &[(u64, u32)], admitted: &[bool]) -> usize {
    let mut per_caller: HashMap<u32, Vec<u64>> = HashMap::new();
    for (&(t, c), &ok) in events.iter().zip(admitted) {
        if ok {
            per_caller.entry(c).or_default().push(t);
        }
    }
    per_caller
        .values()
        .map(|times| {
            let (mut best, mut lo) = (0, 0);
            for hi in 0..times.len() {
                while times[hi] - times[lo] >= WINDOW_US {
                    lo += 1;
                }
                best = best.max(hi - lo + 1);
            }
            best
        })
        .max()
        .unwrap_or(0)
}

fn main() {
    let mut rows = Vec::new();
    let traces = ["steady", "bursty", "on_off", "many_callers", "mixed"];
    for (i, name) in traces.iter().enumerate() {
        let events = trace(name, 0x5eed + i as u64);
        let exact = decide(&events, &limit(Algorithm::SlidingLog));
        for algorithm in [
            Algorithm::SlidingLog,
            Algorithm::SlidingWindow,
            Algorithm::Gcra,
        ] {
            let got = decide(&events, &limit(algorithm));
            let over = got.iter().zip(&exact).filter(|(g, e)| **g && !**e).count();
            let under = got.iter().zip(&exact).filter(|(g, e)| !**g && **e).count();
            let n = events.len() as f64;
            let (own_over, own_under) = wrong_given_own_history(&events, &got);
            rows.push(format!(
                "{{\"trace\":\"{name}\",\"algorithm\":\"{}\",\"decisions\":{},\"admitted\":{},\"admitted_by_log\":{},\"differ_over_pct\":{:.4},\"differ_under_pct\":{:.4},\"wrong_over_pct\":{:.4},\"wrong_under_pct\":{:.4},\"worst_window\":{},\"limit\":{LIMIT}}}",
                algorithm.name(),
                events.len(),
                got.iter().filter(|g| **g).count(),
                exact.iter().filter(|g| **g).count(),
                100.0 * over as f64 / n,
                100.0 * under as f64 / n,
                100.0 * own_over as f64 / n,
                100.0 * own_under as f64 / n,
                worst_window(&events, &got),
            ));
        }
    }
    println!("[{}]", rows.join(",\n"));
}
