//! The limit model end to end, with real processes: global caps, buckets shared by routes,
//! composite keys and in-flight limits, exact through three sidecars on one Redis (and on the
//! memory store for one sidecar); a SIGKILLed sidecar's slots come back when their leases run out.

mod common;

use common::scenarios::{in_flight_is_capped, scopes_are_exact, ROUTES};
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_buckets_and_in_flight_limits_are_exact_through_three_sidecars() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let body = format!("{}{ROUTES}", redis_store(&redis));
    let mut sidecars = three_sidecars(&dir, up.port, &body).await;
    let ports: Vec<u16> = sidecars.iter().map(|s| s.port).collect();
    scopes_are_exact(&ports).await;
    in_flight_is_capped(&ports, up.port).await;
    let keys = redis.cmd("KEYS *").await;
    for tag in [
        "{capped:*}",
        "{@account:acct}",
        "{login:c=alice,ip=198.51.100.2}",
    ] {
        assert!(keys.contains(tag), "{tag} in {keys}");
    }
    for s in &mut sidecars {
        s.proc.assert_running();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_enforces_every_scope_and_in_flight_limit_in_one_process() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let body = format!("store: {{ backend: memory }}\n{ROUTES}");
    let mut sidecar = Sidecar::start(&dir, "m1", up.port, &body).await;
    scopes_are_exact(&[sidecar.port]).await;
    in_flight_is_capped(&[sidecar.port], up.port).await;
    sidecar.proc.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sidecars_slots_come_back_when_their_leases_run_out() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let body = format!(
        "store:\n  backend: redis\n  url: \"{}\"\n  lease_ttl: 2s\nroutes:\n  - name: slow\n    match: {{ path_prefix: /slow/ }}\n    limits: [{{ concurrency: 10, per: global }}]\n",
        redis.url()
    );
    let mut s1 = Sidecar::start(&dir, "s1", up.port, &body).await;
    let s2 = Sidecar::start(&dir, "s2", up.port, &body).await;
    // s1 takes every slot with requests that would last 30 s.
    let port = s1.port;
    let holders: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(async move {
                request(port, "GET", "/slow/x", &[("x-hold-ms", "30000")], b"").await
            })
        })
        .collect();
    let start = Instant::now();
    while upstream_in_flight(up.port).await.0 < 10 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "holders never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Held past several renewals: the leases are renewed, not merely young.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        status(s2.port, "/slow/x", &[]).await,
        429,
        "every slot is held"
    );
    s1.proc.kill();
    let killed = Instant::now();
    let mut freed = None;
    while killed.elapsed() < Duration::from_secs(5) {
        if status(s2.port, "/slow/x", &[]).await == 200 {
            freed = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let freed = freed.expect("the dead sidecar's slots came back");
    eprintln!("slots of the killed sidecar free again {freed:?} after the kill");
    assert!(
        freed <= Duration::from_secs(3),
        "within lease_ttl + 1 s of the kill, took {freed:?}"
    );
    for h in holders {
        h.abort();
    }
}
