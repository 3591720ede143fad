//! Counting by outcome, end to end: a login route that counts only failed logins
//! (`count: { status: [401] }`), through three sidecars on one Redis, on a Redis Cluster, and
//! on the memory store. The demo upstream answers with the status a request asks for
//! (`x-status: 401` is a wrong password).

mod common;

use common::*;
use std::path::Path;

const LOGIN: &str = "routes:
  - name: login
    match: { path: /login }
    limits: [{ requests: 5, window: 60s, count: { status: [401] } }]
";

async fn three(dir: &Path, up: &Upstream, store: &str) -> Vec<Sidecar> {
    three_sidecars(dir, up.port, &format!("{store}{LOGIN}")).await
}

/// One login attempt by `user` through sidecar `port`: its status and whether sluice (not the
/// upstream) answered it.
async fn login(port: u16, user: &str, wrong: bool) -> (u16, bool) {
    let target = format!("/login?user_id={user}");
    let headers: &[(&str, &str)] = if wrong { &[("x-status", "401")] } else { &[] };
    let r = request(port, "POST", &target, headers, b"")
        .await
        .expect("reply");
    let by_sluice = r.status == 429 && r.json()["error"] == "rate_limited";
    (r.status, by_sluice)
}

/// The scenario: 20 wrong passwords (5 reach the upstream, then 429 from sluice), and
/// 100 right ones from another caller, all answered 200.
async fn failed_logins_are_limited_and_good_ones_never(ports: &[u16]) {
    let mut statuses = Vec::new();
    for i in 0..20 {
        statuses.push(login(ports[i % ports.len()], "mallory", true).await);
    }
    let upstream_saw = statuses.iter().filter(|(s, _)| *s == 401).count();
    assert_eq!(upstream_saw, 5, "{statuses:?}");
    assert!(
        statuses[5..].iter().all(|&(s, by)| s == 429 && by),
        "{statuses:?}"
    );
    for i in 0..100 {
        let (status, _) = login(ports[i % ports.len()], "alice", false).await;
        assert_eq!(status, 200, "right password {i}");
    }
    // Right passwords between wrong ones give nothing away: bob fails 4 times, logs in 50
    // times, and still has exactly one failure left.
    for i in 0..4 {
        assert_eq!(login(ports[i % ports.len()], "bob", true).await.0, 401);
    }
    for i in 0..50 {
        assert_eq!(login(ports[i % ports.len()], "bob", false).await.0, 200);
    }
    assert_eq!(login(ports[0], "bob", true).await.0, 401);
    assert_eq!(
        login(ports[1 % ports.len()], "bob", true).await,
        (429, true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_failed_logins_count_through_three_sidecars_on_redis() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let sidecars = three(&dir, &up, &redis_store(&redis)).await;
    let ports: Vec<u16> = sidecars.iter().map(|s| s.port).collect();
    failed_logins_are_limited_and_good_ones_never(&ports).await;
    // Reserved at admission, given back on a non-matching status: 30 wrong passwords sent at
    // once never get more than 5 to the upstream.
    let requests: Vec<(String, Vec<(String, String)>)> = (0..30)
        .map(|_| {
            (
                "/login?user_id=carol".to_string(),
                vec![("x-status".to_string(), "401".to_string())],
            )
        })
        .collect();
    let replies = burst_with(&ports, &requests).await;
    assert_eq!(count_status(&replies, 401), 5);
    assert_eq!(count_status(&replies, 429), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_failed_logins_count_on_a_redis_cluster() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let cluster = RedisCluster::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let store = cluster.store();
    let sidecars = three(&dir, &up, &store).await;
    let ports: Vec<u16> = sidecars.iter().map(|s| s.port).collect();
    failed_logins_are_limited_and_good_ones_never(&ports).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_failed_logins_count_on_the_memory_store() {
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let body = format!("store: {{ backend: memory }}\n{LOGIN}");
    let s = Sidecar::start(&dir, "s1", up.port, &body).await;
    failed_logins_are_limited_and_good_ones_never(&[s.port]).await;
}
