//! One engine, checked against itself: random traces (mixed kinds and algorithms, costs, request
//! ids, releases, renewals, counts settled at another cost or undone, clock steps across window
//! edges and calendar periods) run through the memory store and through `check.lua` on a real redis-server, on one clock, and every answer
//! must be the same: admitted or not, which limit refuses, and each limit's used, remaining,
//! reset and retry.

mod common;

use common::{redis_cmd, scratch_dir, Redis};
use proptest::prelude::*;
use sluice::config::{Backend, OnError, StoreConfig};
use sluice::limiter::keys::limit_key;
use sluice::limiter::memory::{Clock, ManualClock};
use sluice::limiter::{
    Algorithm, Ask, Check, Decision, Kind, LimitState, MemoryLimiter, Period, Permit, Quota, Rate,
    Receipt, RedisLimiter, Refused, Retry, Scope,
};
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(10);

fn rate(algorithm: Algorithm, requests: u32, window_ms: u64, burst: u32) -> Kind {
    Kind::Rate(Rate {
        requests: NonZeroU32::new(requests).unwrap(),
        window: Duration::from_millis(window_ms),
        algorithm,
        burst: NonZeroU32::new(burst).unwrap(),
    })
}

/// Every kind the engine knows, with limits small enough to be reached in a short trace.
fn palette() -> Vec<Kind> {
    vec![
        rate(Algorithm::SlidingLog, 5, 1000, 5),
        rate(Algorithm::SlidingLog, 3, 250, 3),
        rate(Algorithm::SlidingLog, 20, 2000, 20),
        rate(Algorithm::SlidingWindow, 7, 1000, 7),
        rate(Algorithm::SlidingWindow, 4, 300, 4),
        rate(Algorithm::Gcra, 4, 1000, 2),
        rate(Algorithm::Gcra, 10, 500, 10),
        rate(Algorithm::Gcra, 7, 333, 3),
        rate(Algorithm::SlidingWindow, 3, 333, 3),
        Kind::Concurrency(NonZeroU32::new(2).unwrap()),
        Kind::Concurrency(NonZeroU32::new(1).unwrap()),
        quota(6, Period::Day, "Asia/Shanghai"),
        quota(4, Period::Week, "UTC"),
        quota(9, Period::Month, "America/New_York"),
    ]
}

fn quota(requests: u32, period: Period, tz: &str) -> Kind {
    Kind::Quota(Quota {
        requests: NonZeroU32::new(requests).unwrap(),
        period,
        tz: tz.parse().unwrap(),
    })
}

#[derive(Debug, Clone)]
enum Step {
    Check {
        limits: Vec<usize>,
        subject: u8,
        cost: u32,
        retry: Option<u8>,
    },
    Peek {
        limits: Vec<usize>,
        subject: u8,
    },
    Advance(u64),
    Release(usize),
    Renew,
    /// Settles a counted request at another cost (0 undoes it): what the settlement after a
    /// response does, with more or less than was reserved.
    Settle(usize, u32),
}

fn limits() -> impl Strategy<Value = Vec<usize>> {
    prop::sample::subsequence((0..palette().len()).collect::<Vec<usize>>(), 1..4)
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (limits(), 0..2u8, 1..5u32, prop::option::weighted(0.2, 0..3u8)).prop_map(
            |(limits, subject, cost, retry)| Step::Check { limits, subject, cost, retry }
        ),
        1 => (limits(), 0..2u8).prop_map(|(limits, subject)| Step::Peek { limits, subject }),
        3 => prop_oneof![
            Just(1u64),
            Just(999),
            Just(1000),
            Just(50_000),
            Just(250_000),
            Just(333_333),
            Just(1_000_000),
            Just(3_000_000),
            Just(11_000_000),
            // An hour and a day: across quota periods.
            Just(3_600_000_000),
            Just(86_400_000_000),
            0..2_000_000u64,
        ]
        .prop_map(Step::Advance),
        1 => any::<usize>().prop_map(Step::Release),
        1 => Just(Step::Renew),
        2 => (any::<usize>(), prop_oneof![Just(0u32), 1..12u32]).prop_map(|(k, c)| Step::Settle(k, c)),
    ]
}

/// A store's answer, in a form both stores can be compared by.
#[derive(Debug, PartialEq)]
enum Answer {
    Admitted(Vec<LimitState>),
    Limited(Refused),
}

struct World {
    redis: Redis,
    clock: Arc<ManualClock>,
    store: RedisLimiter,
    runtime: tokio::runtime::Runtime,
}

/// One redis-server and one Redis store for every case (each case flushes it), stopped when
/// the test ends (a static one outlived the test binary: statics are never dropped).
fn world() -> World {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = runtime.block_on(Redis::start(&scratch_dir()));
    let clock = Arc::new(ManualClock::default());
    let config = StoreConfig {
        backend: Backend::Redis { url: redis.url() },
        timeout: Duration::from_secs(2),
        on_error: OnError::Deny,
        prefix: "e:".into(),
        max_callers: 100_000,
        fallback_share: 1.0,
        tls_ca_file: None,
        lease_ttl: LEASE,
    };
    let store = RedisLimiter::with_clock(&config, clock.clone()).unwrap();
    World {
        redis,
        clock,
        store,
        runtime,
    }
}

fn checks(palette: &[Kind], limits: &[usize], subject: u8) -> Vec<Check> {
    let who = [b'a' + subject];
    limits
        .iter()
        .map(|&i| Check {
            // Each palette entry its own owner: a valid config never puts two limits of one
            // request under one key.
            key: limit_key(
                "e:",
                &format!("r{i}"),
                &Scope::caller(),
                &[Some(&who)],
                &palette[i],
            ),
            kind: palette[i],
        })
        .collect()
}

fn answer(d: Decision) -> (Answer, Option<Permit>, Receipt) {
    match d {
        Decision::Admitted {
            states,
            permit,
            receipt,
        } => (Answer::Admitted(states), permit, receipt),
        Decision::Limited(r) => (Answer::Limited(r), None, Receipt::default()),
    }
}

/// Runs `steps` through both stores and fails at the first answer that differs.
fn run(w: &World, start: u64, steps: &[Step]) -> Result<(), TestCaseError> {
    w.runtime
        .block_on(redis_cmd(w.redis.port, "FLUSHALL"))
        .expect("flush");
    w.clock.0.store(start, Ordering::SeqCst);
    let memory = MemoryLimiter::with_clock(w.clock.clone(), 100_000, LEASE);
    let palette = palette();
    let ids = ["id0", "id1", "id2"];
    let mut permits: Vec<(Permit, Permit)> = Vec::new();
    let mut counted: Vec<(Vec<Check>, u32, Receipt, Receipt)> = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        let at = w.clock.now_us() - start;
        match step {
            Step::Check {
                limits,
                subject,
                cost,
                retry,
            } => {
                let checks = checks(&palette, limits, *subject);
                let ask = Ask {
                    checks: &checks,
                    cost: *cost,
                    retry: retry.map(|i| Retry {
                        id: ids[i as usize],
                        window: Duration::from_secs(1),
                        max_retries: 2,
                    }),
                };
                let (m, m_permit, m_receipt) = answer(memory.check(&ask).unwrap());
                let r = w.runtime.block_on(w.store.check(&ask)).unwrap();
                let (r, r_permit, r_receipt) = answer(r);
                prop_assert_eq!(&m, &r, "step {} at +{}µs: {:?}", n, at, step);
                if let (Some(a), Some(b)) = (m_permit, r_permit) {
                    permits.push((a, b));
                }
                if matches!(m, Answer::Admitted(_)) && retry.is_none() {
                    counted.push((checks, *cost, m_receipt, r_receipt));
                }
            }
            Step::Peek { limits, subject } => {
                let checks = checks(&palette, limits, *subject);
                let m = memory.peek(&checks).unwrap();
                let r = w.runtime.block_on(w.store.peek(&checks)).unwrap();
                prop_assert_eq!(&m, &r, "peek, step {} at +{}µs: {:?}", n, at, step);
            }
            Step::Advance(us) => w.clock.advance(Duration::from_micros(*us)),
            Step::Release(k) if !permits.is_empty() => {
                let (m, r) = permits.remove(k % permits.len());
                memory.release(&m);
                w.runtime.block_on(w.store.release(&r));
            }
            Step::Renew => {
                memory.renew();
                w.runtime.block_on(w.store.renew());
            }
            Step::Settle(k, to) if !counted.is_empty() => {
                let (checks, cost, m, r) = counted.remove(k % counted.len());
                // As the proxy settles: rates and quotas only (a slot is not a count).
                let rates: Vec<Check> = checks.into_iter().filter(|c| c.kind.counts()).collect();
                memory.adjust(&rates, m.member, (cost, *to), m.at, None);
                let settled = w.store.adjust(&rates, r.member, (cost, *to), r.at, None);
                w.runtime.block_on(settled).unwrap();
            }
            Step::Release(_) | Step::Settle(..) => {}
        }
        // Every key of both stores, after every step: a difference shows where it began.
        for subject in 0..2 {
            let all: Vec<usize> = (0..palette.len()).collect();
            let checks = checks(&palette, &all, subject);
            let m = memory.peek(&checks).unwrap();
            let r = w.runtime.block_on(w.store.peek(&checks)).unwrap();
            prop_assert_eq!(&m, &r, "state after step {} at +{}µs: {:?}", n, at, step);
        }
    }
    Ok(())
}

#[test]
fn the_memory_store_and_the_script_answer_alike() {
    let w = world();
    let cases = std::env::var("ENGINE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    // As `proptest!` would: failures kept in, and replayed from, tests/engine.proptest-regressions.
    let config = ProptestConfig {
        source_file: Some(file!()),
        ..ProptestConfig::with_cases(cases)
    };
    let traces = (0..2_000_000u64, prop::collection::vec(step(), 1..60));
    let result = proptest::test_runner::TestRunner::new(config).run(&traces, |(offset, steps)| {
        // From 4 s before midnight in Shanghai (2025-11-25 00:00 +08:00), so that the day
        // quota's period ends within most traces.
        run(&w, 1_764_000_000_000_000 - 4_000_000 + offset, &steps)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
