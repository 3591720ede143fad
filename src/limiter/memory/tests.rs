use super::*;
use crate::limiter::limit::Rate;
use crate::limiter::Retry;
use std::num::NonZeroU32;

const LEASE: Duration = Duration::from_secs(10);

fn log(key: &str, requests: u32, ms: u64) -> Check {
    Check {
        key: format!("{key}:{ms}"),
        kind: Kind::Rate(Rate::log(requests, Duration::from_millis(ms))),
    }
}

fn slots(key: &str, n: u32) -> Check {
    Check {
        key: format!("{key}:cc"),
        kind: Kind::Concurrency(NonZeroU32::new(n).unwrap()),
    }
}

fn limiter() -> (Arc<ManualClock>, MemoryLimiter) {
    let clock = Arc::new(ManualClock::at(1_700_000_000_000_000));
    (
        clock.clone(),
        MemoryLimiter::with_clock(clock, 1_000_000, LEASE),
    )
}

fn ask<'a>(checks: &'a [Check], retry: Option<Retry<'a>>) -> Ask<'a> {
    Ask {
        checks,
        cost: 1,
        retry,
    }
}

/// A check without a request id, which cannot fail on a store far from full.
fn check(m: &MemoryLimiter, checks: &[Check]) -> Decision {
    m.check(&ask(checks, None)).unwrap()
}

#[test]
fn admits_exactly_the_limit_then_refuses() {
    let (clock, m) = limiter();
    let l = [log("k", 3, 1000)];
    for used in 1..=3 {
        let d = check(&m, &l);
        assert!(d.is_admitted());
        assert_eq!(d.states()[0].used, used);
        assert_eq!(d.states()[0].remaining, 3 - used);
        clock.advance(Duration::from_millis(100));
    }
    let d = check(&m, &l);
    assert!(!d.is_admitted());
    // The first request (at t=0) leaves at t=1000; now is t=300.
    assert_eq!(d.refusing().unwrap().retry, Duration::from_millis(700));
    assert_eq!(d.refusing().unwrap().reset, Duration::from_millis(700));
}

#[test]
fn the_window_slides_and_refusals_are_not_counted() {
    let (clock, m) = limiter();
    let l = [log("k", 2, 1000)];
    assert!(check(&m, &l).is_admitted());
    clock.advance(Duration::from_millis(600));
    assert!(check(&m, &l).is_admitted());
    for _ in 0..5 {
        assert!(!check(&m, &l).is_admitted());
    }
    clock.advance(Duration::from_millis(400)); // the first request leaves
    let d = check(&m, &l);
    assert!(d.is_admitted(), "refusals must not extend the ban");
    assert_eq!(d.states()[0].reset, Duration::from_millis(600));
    assert!(!check(&m, &l).is_admitted());
}

#[test]
fn all_limits_must_admit_and_all_are_counted() {
    let (clock, m) = limiter();
    let l = [log("k", 2, 1000), log("k", 3, 10_000)];
    assert!(check(&m, &l).is_admitted());
    assert!(check(&m, &l).is_admitted());
    assert!(!check(&m, &l).is_admitted());
    assert_eq!(
        m.peek(&l).unwrap()[1].used,
        2,
        "a refused request counts against no limit"
    );
    clock.advance(Duration::from_millis(1000));
    assert!(check(&m, &l).is_admitted());
    let d = check(&m, &l);
    let Decision::Limited(refused) = d else {
        panic!("the 10 s limit is full")
    };
    assert_eq!(refused.index, 1);
    assert_eq!(refused.state.retry, Duration::from_millis(9000));
}

#[test]
fn keys_are_independent() {
    let (_, m) = limiter();
    assert!(check(&m, &[log("a", 1, 1000)]).is_admitted());
    assert!(check(&m, &[log("b", 1, 1000)]).is_admitted());
    assert!(!check(&m, &[log("a", 1, 1000)]).is_admitted());
}

#[test]
fn a_lowered_limit_waits_for_enough_requests_to_leave() {
    let (clock, m) = limiter();
    for _ in 0..4 {
        check(&m, &[log("k", 10, 1000)]);
        clock.advance(Duration::from_millis(100));
    }
    // 4 counted (t=0,100,200,300), limit lowered to 2: a request is admitted once only 1
    // is left, so when the one from t=200 leaves at t=1200; now is t=400.
    let d = check(&m, &[log("k", 2, 1000)]);
    assert_eq!(d.refusing().unwrap().retry, Duration::from_millis(800));
}

#[test]
fn peek_counts_nothing_and_expired_keys_are_swept() {
    let (clock, m) = limiter();
    let l = [log("k", 1, 1000)];
    assert_eq!(m.peek(&l).unwrap()[0].used, 0);
    check(&m, &l);
    assert_eq!(m.peek(&l).unwrap()[0].used, 1);
    assert_eq!(m.peek(&l).unwrap()[0].used, 1);
    for i in 0..100 {
        check(&m, &[log(&format!("other{i}"), 1, 1000)]);
    }
    clock.advance(Duration::from_secs(2));
    for _ in 0..(SWEEP_EVERY as usize * SHARDS) {
        check(&m, &[]);
    }
    assert_eq!(m.keys(), 0);
}

#[test]
fn a_full_store_refuses_new_keys_but_keeps_limiting_the_ones_it_holds() {
    let clock = Arc::new(ManualClock::default());
    let m = MemoryLimiter::with_clock(clock.clone(), SHARDS * 2, LEASE);
    let mut full = 0;
    for i in 0..(SHARDS * 10) {
        match m.check(&ask(&[log(&format!("k{i}"), 1, 1000)], None)) {
            Ok(d) => assert!(d.is_admitted()),
            Err(StoreError::Full(n)) => {
                assert_eq!(n, SHARDS * 2);
                full += 1
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(full > 0, "the cap was never reached");
    assert!(m.keys() <= SHARDS * 2, "{} keys held", m.keys());
    assert!(
        !m.check(&ask(&[log("k0", 1, 1000)], None))
            .unwrap()
            .is_admitted(),
        "held keys stay limited"
    );
    // Once their windows pass, expired keys make room again.
    clock.advance(Duration::from_secs(2));
    assert!(m
        .check(&ask(&[log("fresh", 1, 1000)], None))
        .unwrap()
        .is_admitted());
}

#[test]
fn a_request_id_is_replayed_within_its_window_and_budget_only() {
    let (clock, m) = limiter();
    let l = [log("k", 5, 60_000)];
    let r = Retry {
        id: "fixed",
        window: Duration::from_secs(10),
        max_retries: 2,
    };
    let admitted: Vec<bool> = (0..10)
        .map(|_| m.check(&ask(&l, Some(r))).unwrap().is_admitted())
        .collect();
    // 1 counted + 2 retries + 4 counted, then refused.
    assert_eq!(
        admitted,
        [true, true, true, true, true, true, true, false, false, false]
    );
    assert_eq!(m.peek(&l).unwrap()[0].used, 5);
    // After the retry window, the same id is a new request.
    let (clock2, m) = limiter();
    assert!(m.check(&ask(&l, Some(r))).unwrap().is_admitted());
    clock2.advance(Duration::from_secs(11));
    m.check(&ask(&l, Some(r))).unwrap();
    assert_eq!(m.peek(&l).unwrap()[0].used, 2);
    let _ = clock;
}

#[test]
fn slots_are_held_until_released_and_a_retry_still_needs_one() {
    let (_, m) = limiter();
    let l = [slots("k", 2), log("k", 100, 60_000)];
    let first = check(&m, &l);
    let second = check(&m, &l);
    let Decision::Admitted {
        permit: Some(first),
        ..
    } = first
    else {
        panic!("admitted with a slot")
    };
    assert!(second.is_admitted());
    let third = check(&m, &l);
    assert_eq!(
        third.refusing().map(|s| s.retry),
        Some(Duration::from_secs(1))
    );
    assert_eq!(
        m.peek(&l).unwrap()[1].used,
        2,
        "the refusal counted nothing"
    );
    m.release(&first);
    drop(first);
    assert!(check(&m, &l).is_admitted(), "a released slot is free again");
    let r = Retry {
        id: "x",
        window: Duration::from_secs(10),
        max_retries: 2,
    };
    assert!(
        !m.check(&ask(&l, Some(r))).unwrap().is_admitted(),
        "a retry is in flight again: it needs a free slot"
    );
}

#[test]
fn a_lease_not_renewed_expires_and_a_renewed_one_does_not() {
    let (clock, m) = limiter();
    let l = [slots("k", 1)];
    let held = check(&m, &l);
    assert!(held.is_admitted());
    clock.advance(Duration::from_secs(8));
    m.renew();
    clock.advance(Duration::from_secs(8));
    assert!(
        !check(&m, &l).is_admitted(),
        "renewed at 8 s: held until 18 s"
    );
    drop(held); // no longer renewed
    m.renew();
    clock.advance(Duration::from_secs(3));
    assert!(check(&m, &l).is_admitted(), "expired at 18 s");
}
