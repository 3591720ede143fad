//! Costs known after the response (`cost_from: { response_header }`), end to end: a metered
//! upstream (the demo answers `x-usage-tokens: N` with the same header and keeps the sum) behind
//! three sidecars on Redis, on a Redis Cluster, and one on the memory store. What the store
//! holds must equal what the upstream charged, exactly.

mod common;

use common::*;
use std::path::Path;
use tokio::io::AsyncWriteExt;

fn route(limits: &str, max_cost: u32) -> String {
    format!(
        "identity: [{{ query: user_id }}]
routes:
  - name: llm
    match: {{ path_prefix: /v1/ }}
    cost_from: {{ response_header: x-usage-tokens, max_cost: {max_cost} }}
    limits: {limits}
"
    )
}

/// A small deterministic generator (the tests need no randomness crate).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

async fn sidecars(dir: &Path, up: &Upstream, store: &str, body: &str, n: usize) -> Vec<Sidecar> {
    let mut out = Vec::new();
    for i in 0..n {
        let body = format!("{store}{body}");
        out.push(Sidecar::start(dir, &format!("s{i}"), up.port, &body).await);
    }
    out
}

/// `used` of each limit of route 0 in `/stats/<user>`.
async fn used(admin: u16, user: &str) -> Vec<u64> {
    let stats = get(admin, &format!("/stats/{user}")).await.unwrap().json();
    stats["routes"][0]["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["used"].as_u64().unwrap())
        .collect()
}

async fn upstream_usage(up: &Upstream) -> u64 {
    get(up.port, "/__usage").await.unwrap().json()["tokens"]
        .as_u64()
        .unwrap()
}

/// `n` requests in batches of 25 at once, each reporting a random 0-800 tokens: the store's
/// total on every limit equals the upstream's own sum; then responses without a cost settle at
/// the reservation and one over `max_cost` at `max_cost`, each counted.
async fn the_store_holds_what_the_upstream_charged(
    ports: &[u16],
    admin: u16,
    up: &Upstream,
    n: usize,
) {
    let mut rng = Lcg(7);
    let mut sent = 0u64;
    for batch in 0..n.div_ceil(25) {
        let requests: Vec<(String, Vec<(String, String)>)> = (0..25.min(n - batch * 25))
            .map(|_| {
                let tokens = rng.below(801);
                sent += tokens;
                (
                    "/v1/chat?user_id=ada".to_string(),
                    vec![("x-usage-tokens".to_string(), tokens.to_string())],
                )
            })
            .collect();
        let replies = burst_with(ports, &requests).await;
        assert_eq!(count_status(&replies, 200), requests.len());
    }
    let charged = upstream_usage(up).await;
    assert_eq!(charged, sent);
    assert_eq!(
        used(admin, "ada").await,
        [charged, charged],
        "exactly what was charged"
    );
    // No cost reported (missing, or not a number): the reservation (1) stays. Over max_cost
    // (1,000): max_cost.
    for headers in [
        vec![],
        vec![("x-usage-tokens", "lots")],
        vec![("x-usage-tokens", "-3")],
    ] {
        let r = request(ports[0], "GET", "/v1/chat?user_id=ada", &headers, b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let r = request(
        ports[0],
        "GET",
        "/v1/chat?user_id=ada",
        &[("x-usage-tokens", "5000")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        used(admin, "ada").await,
        [charged + 3 + 1000, charged + 3 + 1000]
    );
}

async fn metrics_of(admin: u16) -> String {
    get(admin, "/metrics").await.unwrap().body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_costs_are_exact_through_three_sidecars_on_redis() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let limits = "[{ requests: 100000000, window: 1h }, { requests: 100000000, window: 2h, algorithm: sliding_window }]";
    let s = sidecars(&dir, &up, &redis_store(&redis), &route(limits, 1000), 3).await;
    let ports: Vec<u16> = s.iter().map(|s| s.port).collect();
    the_store_holds_what_the_upstream_charged(&ports, s[1].admin_port, &up, 1000).await;
    let page = metrics_of(s[0].admin_port).await;
    assert_eq!(
        metric(&page, "sluice_cost_unreported_total", "route=\"llm\""),
        3.0
    );
    assert_eq!(
        metric(&page, "sluice_cost_clamped_total", "route=\"llm\""),
        1.0
    );
    // A client that leaves before the response: no cost was reported, the reservation stays.
    let before = used(s[1].admin_port, "ada").await[0];
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", s[2].port))
        .await
        .unwrap();
    c.write_all(b"GET /v1/chat?user_id=ada HTTP/1.1\r\nHost: x\r\nx-hold-ms: 500\r\nx-usage-tokens: 77\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    drop(c);
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(used(s[1].admin_port, "ada").await[0], before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_costs_are_exact_on_a_redis_cluster() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let cluster = RedisCluster::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let store = cluster.store();
    let limits = "[{ requests: 100000000, window: 1h }, { requests: 100000000, window: 2h, per: global, algorithm: sliding_window }]";
    let s = sidecars(&dir, &up, &store, &route(limits, 1000), 3).await;
    let ports: Vec<u16> = s.iter().map(|s| s.port).collect();
    the_store_holds_what_the_upstream_charged(&ports, s[0].admin_port, &up, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_costs_are_exact_on_the_memory_store() {
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let limits = "[{ requests: 100000000, window: 1h }, { requests: 100000000, window: 2h, algorithm: sliding_window }]";
    let store = "store: { backend: memory }\n";
    let s = sidecars(&dir, &up, store, &route(limits, 1000), 1).await;
    the_store_holds_what_the_upstream_charged(&[s[0].port], s[0].admin_port, &up, 300).await;
}

/// A caller that reserved 1 and spent hundreds is over its limit by at most its last
/// response, then refused until the window brings it back under, with a Retry-After that says
/// when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overshoot_is_at_most_one_response_and_then_refused_until_the_window_frees_it() {
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let s = sidecars(
        &dir,
        &up,
        &redis_store(&redis),
        &route("[{ requests: 1000, window: 60s }]", 100000),
        1,
    )
    .await;
    let (port, admin) = (s[0].port, s[0].admin_port);
    let mut rng = Lcg(11);
    let mut largest = 0;
    let refused = loop {
        let tokens = 100 + rng.below(301);
        let r = request(
            port,
            "GET",
            "/v1/chat?user_id=bo",
            &[("x-usage-tokens", &tokens.to_string())],
            b"",
        )
        .await
        .unwrap();
        if r.status == 429 {
            break r;
        }
        assert_eq!(r.status, 200);
        largest = largest.max(tokens);
        let held = used(admin, "bo").await[0];
        assert!(held <= 1000 + largest, "{held} > 1000 + {largest}");
    };
    let held = used(admin, "bo").await[0];
    assert!(held >= 1000, "refused only once over the limit: {held}");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    assert_eq!(refused.json()["error"], "rate_limited");
}
