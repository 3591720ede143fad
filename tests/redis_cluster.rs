//! sluice on a real local Redis Cluster (three masters, three replicas): exactness across
//! sidecars, keys spread over every master, and a master failover under load.

mod common;

use common::*;
use std::time::{Duration, Instant};

const ROUTES: &str = "routes:
  - name: api
    match: { path_prefix: /api/ }
    limits: [{ requests: 100, window: 60s }]
  - name: counter
    match: { path_prefix: /counter/ }
    limits: [{ requests: 100, window: 60s, algorithm: sliding_window }]
";

fn cluster_store(cluster: &RedisCluster) -> String {
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "store:\n  backend: redis_cluster\n  nodes: [{}]\n  timeout: 200ms\n  on_error: allow\n",
        nodes.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_keeps_limits_exact_spreads_callers_and_survives_a_failover() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let cluster = RedisCluster::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let mut sidecars = Vec::new();
    for name in ["s1", "s2", "s3"] {
        let body = format!("{}{ROUTES}", cluster_store(&cluster));
        sidecars.push(Sidecar::start(&dir, name, up.port, &body).await);
    }
    let ports: Vec<u16> = sidecars.iter().map(|s| s.port).collect();
    let health = get(sidecars[0].admin_port, "/health").await.unwrap().json();
    assert_eq!(health["backend"], "redis_cluster", "{health}");

    // Exact across three sidecars, one script call on one node per decision.
    for target in ["/api/x?user_id=exact", "/counter/x?user_id=exact"] {
        let replies = burst(&ports, 1000, target).await;
        assert_eq!(count_status(&replies, 200), 100, "{target}");
        assert_eq!(count_status(&replies, 429), 900, "{target}");
    }

    // The keys of 10,000 callers spread over all three masters.
    let tasks: Vec<_> = (0..8)
        .map(|c| {
            let port = ports[c % 3];
            let targets: Vec<String> = (c..10_000)
                .step_by(8)
                .map(|i| format!("/api/x?user_id=spread{i}"))
                .collect();
            tokio::spawn(async move { keepalive_gets(port, &targets).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().iter().all(|&s| s == 200));
    }
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3);
    let mut spread = Vec::new();
    for port in &masters {
        let reply = redis_cmd(*port, "DBSIZE").await.unwrap();
        let keys: u64 = reply.trim_start_matches(':').trim().parse().unwrap();
        spread.push(keys);
    }
    println!("keys per master (10,000 callers + 2 burst callers): {spread:?}");
    let total: u64 = spread.iter().sum();
    assert_eq!(total, 10_002, "{spread:?}");
    for keys in &spread {
        assert!(*keys > 2_500, "every master holds its share: {spread:?}");
    }
    let health = get(sidecars[0].admin_port, "/health").await.unwrap().json();
    assert!(
        health["cluster"]
            .as_str()
            .unwrap()
            .starts_with("cluster ok"),
        "{health}"
    );

    // Kill a master under load: its replica takes over; on_error: allow covers the gap (no
    // request fails), then limiting is exact again.
    let victim = masters[0];
    let index = cluster.nodes.iter().position(|n| n.port == victim).unwrap();
    let mut cluster = cluster;
    cluster.nodes[index].proc.kill();
    let killed = Instant::now();
    let mut n = 0;
    while killed.elapsed() < Duration::from_secs(3) {
        let r = get(ports[n % 3], &format!("/api/x?user_id=during{n}"))
            .await
            .unwrap();
        assert_eq!(
            r.status, 200,
            "every request is answered during the failover"
        );
        n += 1;
    }
    cluster
        .wait_ok_without(victim, Duration::from_secs(15))
        .await;
    let back = Instant::now();
    loop {
        let replies = burst(
            &ports,
            300,
            &format!("/api/x?user_id=after{}", back.elapsed().as_millis()),
        )
        .await;
        if count_status(&replies, 200) == 100 {
            assert_eq!(count_status(&replies, 429), 200);
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "not exact again: {} admitted",
            count_status(&replies, 200)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "failover: exact again {:?} after the kill",
        killed.elapsed()
    );
}
