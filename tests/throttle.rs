//! Throttling end to end: a GCRA limit of 10 per second (`burst: 10`) with
//! `throttle: { max_delay: 2s }`. 25 requests of one caller at once through three sidecars are
//! all served, none refused, and the upstream (which stamps each arrival) never sees more than
//! burst + 10 × t of them by any time t; of 60 at once, those whose turn would come after 2 s
//! are refused at once (the waiters of a limit key queue in the store, so each knows its
//! place), the rest served at the same pace. Also: `max_waiting`, and a waiting request
//! whose client leaves counts nothing.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const ROUTES: &str = "routes:
  - name: paced
    match: { path_prefix: /paced/ }
    limits: [{ requests: 10, window: 1s, algorithm: gcra, burst: 10 }]
    throttle: { max_delay: 2s }
";

async fn three(dir: &Path, up: &Upstream, store: &str) -> Vec<Sidecar> {
    three_sidecars(dir, up.port, &format!("{store}{ROUTES}")).await
}

/// `n` requests of `user` at once; the replies, and how long the burst took.
async fn at_once(ports: &[u16], user: &str, n: usize) -> (Vec<Reply>, Duration) {
    let requests: Vec<(String, Vec<(String, String)>)> = (0..n)
        .map(|_| {
            (
                format!("/paced/x?user_id={user}"),
                vec![("x-arrival".to_string(), "1".to_string())],
            )
        })
        .collect();
    let start = Instant::now();
    let replies = burst_with(ports, &requests).await;
    (replies, start.elapsed())
}

/// The upstream never saw more than `burst + rate × t` requests by any time `t` after the
/// first (one more for the jitter between a decision and its arrival upstream).
fn paced(replies: &[Reply], burst: f64, per_s: f64) {
    let mut arrivals: Vec<u64> = replies
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.header("x-arrived-us").expect("stamped").parse().unwrap())
        .collect();
    arrivals.sort_unstable();
    let first = arrivals[0];
    for (k, &at) in arrivals.iter().enumerate() {
        let t = (at - first) as f64 / 1e6;
        assert!(
            (k + 1) as f64 <= burst + per_s * t + 1.0,
            "{} requests by {t:.3} s: {arrivals:?}",
            k + 1
        );
    }
}

fn delays(replies: &[Reply]) -> Vec<f64> {
    replies
        .iter()
        .filter_map(|r| r.header("sluice-delay"))
        .map(|d| d.parse().expect("seconds"))
        .collect()
}

async fn throttles_at_the_limits_pace(ports: &[u16], admin: &[u16]) {
    let (replies, took) = at_once(ports, "ann", 25).await;
    assert_eq!(count_status(&replies, 200), 25, "none refused");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    paced(&replies, 10.0, 10.0);
    let held = delays(&replies);
    assert!(held.len() >= 15, "the 15 beyond the burst waited: {held:?}");
    assert!(held.iter().all(|&d| d > 0.0 && d <= 2.1), "{held:?}");

    let (replies, took) = at_once(ports, "bob", 60).await;
    let served = count_status(&replies, 200);
    // 10 at once, then one per 100 ms for 2 s.
    assert!((28..=31).contains(&served), "{served} served");
    assert_eq!(count_status(&replies, 429), 60 - served);
    // Refused at once: their turn could not come within 2 s, and their place said so.
    let refused_after: Vec<Duration> = replies
        .iter()
        .filter(|r| r.status == 429)
        .map(|r| r.took)
        .collect();
    assert!(
        refused_after
            .iter()
            .all(|t| *t < Duration::from_millis(700)),
        "{refused_after:?}"
    );
    assert!(took < Duration::from_millis(3000), "{took:?}");
    paced(&replies, 10.0, 10.0);
    assert!(delays(&replies).iter().all(|&d| d <= 2.1));

    let mut throttled = 0.0;
    for port in admin {
        let text = get(*port, "/metrics").await.expect("metrics").body;
        throttled += metric(&text, "sluice_throttled_total", "route=\"paced\"");
        assert!(text.contains("sluice_throttle_delay_seconds_bucket{route=\"paced\""));
    }
    assert_eq!(throttled, (15 + served - 10) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_holds_requests_to_the_limits_pace_through_three_sidecars_on_redis() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let sidecars = three(&dir, &up, &redis_store(&redis)).await;
    let ports: Vec<u16> = sidecars.iter().map(|s| s.port).collect();
    let admin: Vec<u16> = sidecars.iter().map(|s| s.admin_port).collect();
    throttles_at_the_limits_pace(&ports, &admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_holds_requests_to_the_limits_pace_on_a_redis_cluster() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let cluster = RedisCluster::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let sidecars = three(&dir, &up, &cluster.store()).await;
    let ports: Vec<u16> = sidecars.iter().map(|s| s.port).collect();
    let admin: Vec<u16> = sidecars.iter().map(|s| s.admin_port).collect();
    throttles_at_the_limits_pace(&ports, &admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_holds_requests_to_the_limits_pace_on_the_memory_store() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let body = format!("store: {{ backend: memory }}\n{ROUTES}");
    let s = Sidecar::start(&dir, "s1", up.port, &body).await;
    throttles_at_the_limits_pace(&[s.port], &[s.admin_port]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_waiting_wait_and_the_rest_are_refused_at_once() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let body = "store: { backend: memory }
routes:
  - name: paced
    match: { path_prefix: /paced/ }
    limits: [{ requests: 10, window: 1s, algorithm: gcra, burst: 10 }]
    throttle: { max_delay: 2s, max_waiting: 5 }
";
    let s = Sidecar::start(&dir, "s1", up.port, body).await;
    let (replies, _) = at_once(&[s.port], "ann", 20).await;
    assert_eq!(
        count_status(&replies, 200),
        15,
        "10 at once and the 5 that waited"
    );
    assert_eq!(count_status(&replies, 429), 5);
    assert_eq!(delays(&replies).len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_whose_client_leaves_counts_nothing() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    // One request per 2 s; a second waits up to 3 s for its turn.
    let body = "store: { backend: memory }
routes:
  - name: slow
    match: { path_prefix: /slow/ }
    limits: [{ requests: 1, window: 2s, algorithm: gcra, burst: 1 }]
    throttle: { max_delay: 3s }
";
    let s = Sidecar::start(&dir, "s1", up.port, body).await;
    let usage = [("x-usage-tokens", "1")];
    let first = request(s.port, "GET", "/slow/a?user_id=ann", &usage, b"")
        .await
        .unwrap();
    assert_eq!(first.status, 200);
    // The second waits for its turn at 2 s, and its client leaves after 300 ms.
    let mut gone = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    gone.write_all(b"GET /slow/b?user_id=ann HTTP/1.1\r\nHost: x\r\nx-usage-tokens: 1\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(gone);
    // The sidecar gives the departed waiter's place in the queue back when it reads the
    // connection's end; a third request sent the same instant can still find it held (and,
    // one ahead of it, a turn past max_delay: 429). Give that read time, well before 1 s.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The third takes the turn the second would have had: admitted at about 2 s, not 4 s.
    let started = Instant::now();
    let third = request(s.port, "GET", "/slow/c?user_id=ann", &usage, b"")
        .await
        .unwrap();
    assert_eq!(third.status, 200);
    let held: f64 = third.header("sluice-delay").unwrap().parse().unwrap();
    assert!(held > 1.0 && held < 2.0, "held {held} s");
    assert!(started.elapsed() < Duration::from_millis(2500));
    let seen = get(up.port, "/__usage").await.unwrap().json();
    assert_eq!(
        seen["tokens"], 2,
        "the upstream saw the first and the third"
    );
    let text = get(s.admin_port, "/metrics").await.unwrap().body;
    assert_eq!(
        metric(&text, "sluice_throttled_total", "route=\"slow\""),
        1.0
    );
}
