//! The three algorithms and request cost end to end, on Redis and on the memory store: the
//! same requests get the same answers and headers from both.

mod common;

use common::*;
use std::time::Duration;

const ROUTES: &str = "routes:
  - name: counter
    match: { path_prefix: /counter/ }
    limits: [{ requests: 10, window: 60s, algorithm: sliding_window }]
  - name: gcra
    match: { path_prefix: /gcra/ }
    limits: [{ requests: 600, window: 60s, algorithm: gcra, burst: 3 }]
  - name: cost
    match: { path_prefix: /cost/ }
    cost: { GET: 1, POST: 4 }
    limits:
      - { requests: 10, window: 60s }
      - { requests: 10, window: 1h, algorithm: sliding_window }
      - { requests: 10, window: 2h, algorithm: gcra }
";

/// Sends `method target` and returns (status, X-RateLimit-Remaining).
async fn ask(port: u16, method: &str, target: &str) -> (u16, Option<String>) {
    let r = request(port, method, target, &[], b"").await.unwrap();
    let remaining = r.header("x-ratelimit-remaining").map(str::to_string);
    (r.status, remaining)
}

fn rem(v: u32) -> Option<String> {
    Some(v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_and_cost_decide_alike_on_redis_and_in_memory() {
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let on_redis = Sidecar::start(
        &dir,
        "redis",
        up.port,
        &format!("{}{ROUTES}", redis_store(&redis)),
    )
    .await;
    let in_memory = Sidecar::start(
        &dir,
        "memory",
        up.port,
        &format!("store: {{ backend: memory }}\n{ROUTES}"),
    )
    .await;
    for s in [&on_redis, &in_memory] {
        let name = &s.proc.name;
        // Sliding-window counter: 10 in the window, then 429.
        for i in 0..10 {
            assert_eq!(
                ask(s.port, "GET", "/counter/x?user_id=a").await,
                (200, rem(9 - i)),
                "{name}"
            );
        }
        let (status, _) = ask(s.port, "GET", "/counter/x?user_id=a").await;
        assert_eq!(status, 429, "{name}");
        // GCRA, 10 per second with a burst of 3: 3 at once, then one per 100 ms.
        for i in 0..3 {
            assert_eq!(
                ask(s.port, "GET", "/gcra/x?user_id=a").await,
                (200, rem(2 - i)),
                "{name}"
            );
        }
        let refused = get(s.port, "/gcra/x?user_id=a").await.unwrap();
        assert_eq!(refused.status, 429, "{name}");
        assert_eq!(
            refused.header("retry-after"),
            Some("1"),
            "{name}: 100 ms, rounded up"
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(
            ask(s.port, "GET", "/gcra/x?user_id=a").await.0,
            200,
            "{name}: spaced"
        );
        if s.port == on_redis.port {
            // Read now: a GCRA key lives only until its bucket is empty again (~0.3 s here), so
            // by the end of the test it may be gone.
            let keys = redis.cmd("KEYS *gcra:a*").await;
            assert!(keys.contains("sluice:{gcra:a}:60000:gcra"), "{keys}");
        }
        // Cost: POST 4, GET 1, against three limits of 10 (one per algorithm).
        assert_eq!(
            ask(s.port, "POST", "/cost/x?user_id=a").await,
            (200, rem(6)),
            "{name}"
        );
        assert_eq!(
            ask(s.port, "POST", "/cost/x?user_id=a").await,
            (200, rem(2)),
            "{name}"
        );
        let (status, remaining) = ask(s.port, "POST", "/cost/x?user_id=a").await;
        assert_eq!(
            (status, remaining),
            (429, rem(2)),
            "{name}: 4 > 2, refused whole, and the 2 that remain are reported"
        );
        assert_eq!(
            ask(s.port, "GET", "/cost/x?user_id=a").await,
            (200, rem(1)),
            "{name}: 1 still fits"
        );
        assert_eq!(
            ask(s.port, "GET", "/cost/x?user_id=a").await,
            (200, rem(0)),
            "{name}"
        );
        assert_eq!(
            ask(s.port, "GET", "/cost/x?user_id=a").await.0,
            429,
            "{name}"
        );
        // /stats reports every algorithm truthfully.
        let stats = get(s.admin_port, "/stats/a").await.unwrap().json();
        let route = |n: &str| {
            stats["routes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["route"] == n)
                .unwrap()["limits"]
                .clone()
        };
        assert_eq!(route("counter")[0]["algorithm"], "sliding_window", "{name}");
        assert_eq!(route("counter")[0]["used"], 10, "{name}");
        assert_eq!(route("gcra")[0]["burst"], 3, "{name}");
        for limit in route("cost").as_array().unwrap() {
            assert_eq!(limit["used"], 10, "{name}: {limit}");
            assert_eq!(limit["remaining"], 0, "{name}: {limit}");
        }
    }
    // Three algorithms, three key shapes (the GCRA one read above, while it lives), each small:
    // no key holds more than its own state.
    let keys = redis.cmd("KEYS *").await;
    assert!(keys.contains("sluice:{counter:a}:60000:sw"), "{keys}");
    assert!(keys.contains("sluice:{cost:a}:60000\r\n"), "{keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_stay_exact_with_the_o1_algorithms() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let routes = "routes:
  - name: counter
    match: { path_prefix: /counter/ }
    limits: [{ requests: 100, window: 60s, algorithm: sliding_window }]
  - name: gcra
    match: { path_prefix: /gcra/ }
    limits: [{ requests: 100, window: 1h, algorithm: gcra }]
";
    let mut ports = Vec::new();
    let mut sidecars = Vec::new();
    for name in ["s1", "s2", "s3"] {
        let s = Sidecar::start(
            &dir,
            name,
            up.port,
            &format!("{}{routes}", redis_store(&redis)),
        )
        .await;
        ports.push(s.port);
        sidecars.push(s);
    }
    for target in ["/counter/x?user_id=burst", "/gcra/x?user_id=burst"] {
        let replies = burst(&ports, 600, target).await;
        assert_eq!(count_status(&replies, 200), 100, "{target}");
        assert_eq!(count_status(&replies, 429), 500, "{target}");
    }
}
