//! HTTP/2 with prior knowledge (h2c) on the proxy listener, with real clients: curl and
//! h2load (nghttp2-client). Limits stay exact across three sidecars reached directly over h2.

mod common;

use common::*;
use std::process::Command;

fn curl_h2(port: u16, target: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w"])
        .arg("%{http_version} %{http_code}")
        .arg(format!("http://127.0.0.1:{port}{target}"))
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (version, code) = text.split_once(' ').unwrap_or(("", ""));
    (version.to_string(), code.to_string())
}

/// h2load's counts of 2xx and 4xx responses for `n` requests over `c` connections.
fn h2load(port: u16, target: &str, n: u32, c: u32) -> (u32, u32) {
    let out = Command::new("h2load")
        .args(["-n", &n.to_string(), "-c", &c.to_string(), "-m", "10"])
        .arg(format!("http://127.0.0.1:{port}{target}"))
        .output()
        .expect("h2load is installed (Debian package nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_else(|| panic!("h2load printed no status codes: {text}"));
    let count = |class: &str| -> u32 {
        line.split(',')
            .find(|p| p.trim().ends_with(class))
            .and_then(|p| p.split_whitespace().rev().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (count("2xx"), count("4xx"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served_and_limited_on_the_plaintext_listener() {
    let (_redis, _up, s) = one_sidecar(
        "routes:
  - name: api
    match: { path_prefix: /api/ }
    limits: [{ requests: 3, window: 60s }]
  - name: open
    match: { path_prefix: / }
",
    )
    .await;
    let port = s.port;
    let answers = tokio::task::spawn_blocking(move || {
        (0..4)
            .map(|_| curl_h2(port, "/api/x?user_id=ann"))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let codes: Vec<&str> = answers.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(codes, ["200", "200", "200", "429"]);
    assert!(answers.iter().all(|(v, _)| v == "2"), "{answers:?}");
    // HTTP/1.1 on the same listener, as before; every h2load request answered.
    assert_eq!(get(port, "/api/x?user_id=bea").await.unwrap().status, 200);
    let (ok, refused) = tokio::task::spawn_blocking(move || h2load(port, "/open", 200, 4))
        .await
        .unwrap();
    assert_eq!((ok, refused), (200, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limit_is_exact_across_three_sidecars_over_http2() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let body = format!(
        "{}routes:\n  - name: api\n    match: {{ path_prefix: / }}\n    limits: [{{ requests: 30, window: 60s, per: global }}]\n",
        redis_store(&redis)
    );
    let mut sidecars = Vec::new();
    for name in ["s1", "s2", "s3"] {
        sidecars.push(Sidecar::start(&dir, name, up.port, &body).await);
    }
    let runs: Vec<_> = sidecars
        .iter()
        .map(|s| s.port)
        .map(|p| tokio::task::spawn_blocking(move || h2load(p, "/x", 40, 2)))
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for r in runs {
        let (a, b) = r.await.unwrap();
        ok += a;
        refused += b;
    }
    assert_eq!((ok, refused), (30, 90));
}
