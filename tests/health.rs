//! Active upstream health checks: an address that stops answering its health check leaves the
//! rotation (its requests would hang: none is sent there), comes back once it answers again,
//! and with every address unhealthy a request gets the 502 at once.

mod common;

use common::*;
use std::time::Duration;

/// Requests through `port`, each costing one "token" the demo upstream adds up (`/__usage`), so
/// the test can see which upstream served them.
async fn send(port: u16, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        let r = request(
            port,
            "GET",
            &format!("/api/x?user_id=u{i}"),
            &[("x-usage-tokens", "1")],
            b"",
        )
        .await
        .expect("reply");
        statuses.push(r.status);
    }
    statuses
}

async fn served(up: u16) -> u64 {
    get(up, "/__usage").await.unwrap().json()["tokens"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_upstream_leaves_the_rotation_and_comes_back() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let a = Upstream::start(&dir).await;
    // b accepts connections and never answers: without health checks, every other request
    // would wait for the read timeout.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b_port = hang.local_addr().unwrap().port();
    let (listen, admin) = (free_port(), free_port());
    let config = dir.join("s1.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ listen: \"127.0.0.1:{listen}\", admin_listen: \"127.0.0.1:{admin}\", threads: 1 }}
upstream:
  addrs: [\"127.0.0.1:{}\", \"127.0.0.1:{b_port}\"]
  read_timeout: 5s
  health_check: {{ path: /ready, interval: 200ms, timeout: 150ms, unhealthy_after: 2, healthy_after: 2 }}
",
            a.port
        ),
    )
    .unwrap();
    let s = Sidecar::start_with(&dir, "s1", &config, listen, admin).await;
    // Two failed checks: out of the rotation.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let statuses = send(s.port, 20).await;
    assert_eq!(statuses, [200; 20]);
    assert_eq!(
        served(a.port).await,
        20,
        "every request went to the healthy address"
    );

    // b answers again (a real upstream on its port): two passed checks bring it back.
    drop(hang);
    let b = Upstream::start_on(&dir, b_port).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(send(s.port, 20).await, [200; 20]);
    assert!(served(b.port).await >= 5, "b is in the rotation again");

    // Every address down: 502 at once, sluice's own.
    drop(a);
    drop(b);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = get(s.port, "/api/x?user_id=z").await.unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_unavailable");
    let log = s.proc.log_text();
    assert!(
        log.contains("every upstream address fails its health checks"),
        "no connect was tried: {log}"
    );
}
