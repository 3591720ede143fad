//! Scenarios several test files run against different stores (one Redis, a Redis Cluster, the
//! memory store): the limit model's exactness checks.

use super::*;
use std::time::Duration;

pub const ROUTES: &str = r#"
trusted_proxies: ["127.0.0.1/32"]
buckets:
  account: { limits: [{ requests: 30, window: 60s }] }
routes:
  - name: capped
    match: { path_prefix: /capped/ }
    limits: [{ requests: 50, window: 60s, per: global }]
  - name: search
    match: { path_prefix: /search/ }
    buckets: [account]
  - name: export
    match: { path_prefix: /export/ }
    buckets: [account]
  - name: login
    match: { path_prefix: /login/ }
    limits: [{ requests: 10, window: 60s, per: [caller, client_ip] }]
  - name: slow
    match: { path_prefix: /slow/ }
    limits: [{ concurrency: 10 }]
"#;

fn plain(targets: impl IntoIterator<Item = String>) -> Vec<(String, Vec<(String, String)>)> {
    targets.into_iter().map(|t| (t, Vec::new())).collect()
}

fn from_ip(target: &str, ip: &str) -> (String, Vec<(String, String)>) {
    let header = ("x-forwarded-for".to_string(), ip.to_string());
    (target.to_string(), vec![header])
}

/// Global cap, shared bucket and composite key, exact over `ports` (one or three sidecars).
pub async fn scopes_are_exact(ports: &[u16]) {
    // A global cap: 300 callers at once share 50.
    let replies = burst_with(
        ports,
        &plain((0..300).map(|i| format!("/capped/x?user_id=c{i}"))),
    )
    .await;
    assert_eq!(count_status(&replies, 200), 50, "global: admitted");
    let refused = replies.iter().find(|r| r.status == 429).expect("a 429");
    let body = refused.json();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["per"], "global");
    assert_eq!(body["limit"], 50);
    assert!(body.get("bucket").is_none());

    // One caller's bucket across two routes: 30 in all.
    let targets = (0..200).map(|i| match i % 2 {
        0 => "/search/q?user_id=acct".to_string(),
        _ => "/export/q?user_id=acct".to_string(),
    });
    let replies = burst_with(ports, &plain(targets)).await;
    assert_eq!(
        count_status(&replies, 200),
        30,
        "bucket: admitted over both routes"
    );
    let refused = replies.iter().find(|r| r.status == 429).expect("a 429");
    assert_eq!(refused.json()["bucket"], "account");
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"account\";q=30;w=60")
    );
    let other = get(ports[0], "/search/q?user_id=other").await.unwrap();
    assert_eq!(other.status, 200, "another caller has its own bucket");

    // A composite key: (caller, client IP) pairs are limited apart.
    let mut requests = Vec::new();
    for i in 0..90 {
        let (who, ip) = match i % 3 {
            0 => ("alice", "198.51.100.1"),
            1 => ("alice", "198.51.100.2"),
            _ => ("bob", "198.51.100.1"),
        };
        requests.push(from_ip(&format!("/login/x?user_id={who}"), ip));
    }
    let replies = burst_with(ports, &requests).await;
    for pair in 0..3 {
        let admitted = replies
            .iter()
            .enumerate()
            .filter(|(i, r)| i % 3 == pair && r.status == 200)
            .count();
        assert_eq!(admitted, 10, "composite pair {pair}");
    }
    let refused = replies.iter().find(|r| r.status == 429).expect("a 429");
    assert_eq!(
        refused.json()["per"],
        serde_json::json!(["caller", "client_ip"])
    );
}

/// 1,000 slow requests (500 ms at the upstream each) arriving over two seconds against
/// `concurrency: 10`: the upstream never has more than 10 at once, and every request is either
/// served or refused with `too_many_in_flight`.
pub async fn in_flight_is_capped(ports: &[u16], upstream: u16) {
    reset_upstream_in_flight(upstream).await;
    let tasks: Vec<_> = (0..1000u64)
        .map(|i| {
            let port = ports[i as usize % ports.len()];
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 2)).await;
                request(
                    port,
                    "GET",
                    "/slow/x?user_id=u",
                    &[("x-hold-ms", "500")],
                    b"",
                )
                .await
                .expect("every request is answered")
            })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    let (served, refused) = (count_status(&replies, 200), count_status(&replies, 429));
    assert_eq!(served + refused, 1000, "served or refused, nothing else");
    assert!(
        served >= 20,
        "slots were reused as requests ended ({served} served)"
    );
    let (_, max) = upstream_in_flight(upstream).await;
    eprintln!("in flight: {served} served, {refused} refused, at most {max} at once");
    assert!(
        (1..=10).contains(&max),
        "at most 10 at the upstream at once, saw {max}"
    );
    let r = replies.iter().find(|r| r.status == 429).unwrap();
    assert_eq!(r.json()["error"], "too_many_in_flight");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        r.header("ratelimit").is_none(),
        "an in-flight cap has no window"
    );
}
