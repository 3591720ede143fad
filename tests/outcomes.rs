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

/// An upstream that sends `103 Early Hints` before every answer, a wrong password's 401: the
/// interim response reaches the client as it came, and the final one is the one counted and
/// given the RateLimit headers (an interim status once settled the count, so no failed login
/// behind early hints was ever counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interim_response_passes_and_the_final_one_is_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = scratch_dir();
    let hinting = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_port = hinting.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = hinting.accept().await {
            tokio::spawn(async move {
                let (mut seen, mut chunk) = (Vec::new(), [0u8; 4096]);
                loop {
                    // Bodyless requests, answered one at a time as each head is complete.
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let answer = concat!(
                            "HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n",
                            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
                        );
                        if c.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match c.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    let sidecar = Sidecar::start(
        &dir,
        "hints",
        up_port,
        &format!("store: {{ backend: memory }}\n{LOGIN}"),
    )
    .await;
    let head = "POST /login?user_id=mallory HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    for i in 0..8 {
        let reply = raw(sidecar.port, head.as_bytes()).await.unwrap();
        let text = String::from_utf8_lossy(&reply).to_ascii_lowercase();
        if i < 5 {
            let (interim, last) = text.split_once("\r\n\r\n").expect("two heads");
            assert!(interim.starts_with("http/1.1 103"), "{i}: {text}");
            assert!(interim.contains("link: </app.css>"), "{i}: {text}");
            assert!(!interim.contains("ratelimit"), "{i}: {text}");
            assert!(last.starts_with("http/1.1 401"), "{i}: {text}");
            let remaining = format!("x-ratelimit-remaining: {}\r\n", 4 - i);
            assert!(last.contains(&remaining), "{i}: {text}");
        } else {
            // The five failures were counted: sluice refuses, and the upstream sees nothing.
            assert!(text.starts_with("http/1.1 429"), "{i}: {text}");
            assert!(!text.contains("103 early hints"), "{i}: {text}");
        }
    }
}
