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

/// An upstream-demo listening on `addr` (another loopback address than 127.0.0.1).
async fn upstream_at(dir: &std::path::Path, addr: &str) -> Proc {
    let mut cmd = std::process::Command::new(upstream_bin());
    cmd.args(["--listen", addr]);
    let mut proc = Proc::spawn("upstream", &mut cmd, dir);
    wait_until(&mut proc, Duration::from_secs(10), async || {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    proc
}

/// The tokens (requests, here) the upstream at `addr` has served.
async fn served_at(addr: &str) -> u64 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    common::send(&mut s, "GET", "/__usage", &[], b"")
        .await
        .unwrap()
        .json()["tokens"]
        .as_u64()
        .unwrap()
}

/// `upstream.resolve_every`: the sidecar resolves its upstream's name again on an interval. The
/// name is in a hosts file the sidecar alone sees (its own mount namespace, where the file is
/// bind-mounted on /etc/hosts; the test rewrites it in place): moved from 127.0.0.2 to
/// 127.0.0.3, requests follow within the interval; a name that stops resolving keeps its last
/// addresses. Once with the resolver alone and once through the health checks' discovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_names_are_resolved_again() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let up_port = free_port();
    let (a, b) = (
        format!("127.0.0.2:{up_port}"),
        format!("127.0.0.3:{up_port}"),
    );
    let _a = upstream_at(&dir, &a).await;
    let _b = upstream_at(&dir, &b).await;
    for (name, health) in [
        ("resolver", ""),
        (
            "checked",
            "\n  health_check: { interval: 200ms, timeout: 150ms }",
        ),
    ] {
        let hosts = dir.join(format!("hosts-{name}"));
        std::fs::write(&hosts, "127.0.0.2 upstream.test\n").unwrap();
        let (listen, admin) = (free_port(), free_port());
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "server: {{ listen: \"127.0.0.1:{listen}\", admin_listen: \"127.0.0.1:{admin}\", threads: 1 }}
upstream:
  addrs: [\"upstream.test:{up_port}\"]
  resolve_every: 200ms{health}
"
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new("unshare");
        cmd.args([
            "--mount",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
        ])
        .arg(&hosts)
        .arg(sluice_bin())
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn,sluice=info");
        let mut s = Proc::spawn(name, &mut cmd, &dir);
        wait_until(&mut s, Duration::from_secs(15), async || {
            get(admin, "/health").await.is_ok_and(|r| r.status == 200)
        })
        .await;

        let (a0, b0) = (served_at(&a).await, served_at(&b).await);
        assert_eq!(send(listen, 10).await, [200; 10], "{name}");
        assert_eq!(served_at(&a).await - a0, 10, "{name}: all to 127.0.0.2");

        // Rewritten in place (the bind mount holds the file, not its name).
        std::fs::write(&hosts, "127.0.0.3 upstream.test\n").unwrap();
        tokio::time::sleep(Duration::from_millis(200 + 1000)).await;
        assert_eq!(send(listen, 10).await, [200; 10], "{name}");
        assert_eq!(served_at(&b).await - b0, 10, "{name}: all to 127.0.0.3 now");
        assert_eq!(
            served_at(&a).await - a0,
            10,
            "{name}: none to 127.0.0.2 since"
        );

        // The name no longer resolves (however long the resolver takes to say so): the last
        // addresses stay.
        std::fs::write(&hosts, "").unwrap();
        let log_file = s.log.clone();
        wait_until(&mut s, Duration::from_secs(20), async || {
            std::fs::read_to_string(&log_file).is_ok_and(|l| l.contains("cannot resolve"))
        })
        .await;
        assert_eq!(send(listen, 10).await, [200; 10], "{name}");
        assert_eq!(served_at(&b).await - b0, 20, "{name}");
        let log = s.log_text();
        assert!(
            log.contains(&format!(
                "upstream upstream.test:{up_port}: now resolves to [127.0.0.3:{up_port}]"
            )),
            "{name}: {log}"
        );
        assert!(
            log.contains("cannot resolve") && log.contains("keeping [127.0.0.3"),
            "{name}: {log}"
        );
    }
}
