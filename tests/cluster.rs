//! The headline deployment end to end: nginx → three sidecars → upstream, all on one Redis,
//! started by `scripts/cluster` exactly as a user starts it (on free loopback ports).

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A running native cluster; `scripts/cluster down` runs when it is dropped.
struct Cluster {
    env: Vec<(&'static str, String)>,
    run_dir: PathBuf,
    lb: u16,
    proxy: Vec<u16>,
    admin: Vec<u16>,
}

impl Cluster {
    fn new() -> Cluster {
        let run_dir = scratch_dir().join("cluster");
        let ports: Vec<u16> = (0..9).map(|_| free_port()).collect();
        let list = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        let env = vec![
            ("LB_PORT", ports[0].to_string()),
            ("REDIS_PORT", ports[1].to_string()),
            ("UPSTREAM_PORT", ports[2].to_string()),
            ("PROXY_PORTS", list(&ports[3..6])),
            ("ADMIN_PORTS", list(&ports[6..9])),
            ("RUN_DIR", run_dir.display().to_string()),
            (
                "BIN_DIR",
                sluice_bin().parent().unwrap().display().to_string(),
            ),
        ];
        Cluster {
            env,
            run_dir,
            lb: ports[0],
            proxy: ports[3..6].to_vec(),
            admin: ports[6..9].to_vec(),
        }
    }

    fn run(&self, verb: &str) -> Output {
        let out = Command::new(repo_root().join("scripts/cluster"))
            .arg(verb)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("run scripts/cluster");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert!(
            out.status.success(),
            "scripts/cluster {verb} failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    fn up() -> Cluster {
        let c = Cluster::new();
        c.run("up");
        c
    }

    /// The same topology on a local Redis Cluster (`REDIS_MODE=cluster`).
    fn up_on_redis_cluster() -> Cluster {
        let mut c = Cluster::new();
        let base = consecutive_free_ports(6);
        for (k, v) in c.env.iter_mut() {
            if *k == "REDIS_PORT" {
                *v = base.to_string();
            }
        }
        c.env.push(("REDIS_MODE", "cluster".to_string()));
        c.run("up");
        c
    }

    fn pid(&self, part: &str) -> u32 {
        let text =
            std::fs::read_to_string(self.run_dir.join(format!("{part}.pid"))).expect("pid file");
        text.trim().parse().expect("pid")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/cluster"))
            .arg("down")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output();
    }
}

/// The first of `n` consecutive loopback ports that are free now, taken through `free_port`
/// so that no other test of this process is handed one of them, for Redis Cluster nodes: their
/// cluster bus ports (port + 10000) must be free too and stay below the ephemeral range
/// (32768 and up), where the suite's outgoing connections take ports at random.
fn consecutive_free_ports(n: u16) -> u16 {
    let bus_free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok();
    let mut run: Vec<u16> = Vec::new();
    while run.len() < n as usize {
        let next = free_port();
        let fits = next + 10_000 < 32_768 && bus_free(next);
        if fits && run.last().is_some_and(|&last| next == last + 1) {
            run.push(next);
        } else {
            run = if fits { vec![next] } else { Vec::new() };
        }
    }
    run[0]
}

fn via_instances(replies: &[Reply]) -> BTreeSet<String> {
    replies
        .iter()
        .filter_map(|r| r.header("via"))
        .map(|v| v.trim_start_matches("1.1 ").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_three_sidecars_admit_exactly_100_of_1000_concurrent() {
    let _heavy = HEAVY.lock().await;
    let c = Cluster::up();
    let replies = burst(&[c.lb], 1000, "/api/data?user_id=fresh_burst_user").await;
    assert_eq!(count_status(&replies, 200), 100, "admitted");
    assert_eq!(count_status(&replies, 429), 900, "refused");
    let expected: BTreeSet<String> = ["sluice1", "sluice2", "sluice3"].map(String::from).into();
    assert_eq!(
        via_instances(&replies),
        expected,
        "every sidecar served some of the burst"
    );
    for port in &c.admin {
        let stats = get(*port, "/stats/fresh_burst_user").await.unwrap().json();
        let limit = &stats["routes"][0]["limits"][0];
        assert_eq!(
            (limit["used"].as_u64(), limit["remaining"].as_u64()),
            (Some(100), Some(0)),
            "admin port {port}"
        );
    }
    let health = get(c.lb, "/health").await.unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["store"], "ok");
    assert!(health.json()["instance"]
        .as_str()
        .unwrap()
        .starts_with("sluice"));
    let status = String::from_utf8(c.run("status").stdout).unwrap();
    assert_eq!(
        status.lines().filter(|l| l.ends_with(" up")).count(),
        6,
        "{status}"
    );
    // Only nginx (from 127.0.0.2) is trusted: a local process that talks to a sidecar port
    // directly cannot replay a request id or pick its client IP, and through nginx a client's
    // own X-Request-Id is replaced by nginx's.
    let forged = [
        ("x-request-id", "replayed"),
        ("x-forwarded-for", "192.0.2.99"),
    ];
    for i in 0..3 {
        let direct = request(c.proxy[i], "GET", "/api/data?user_id=sneaky", &forged, b"");
        assert_eq!(direct.await.unwrap().status, 200);
        let via_lb = request(c.lb, "GET", "/api/data?user_id=sneaky2", &forged, b"");
        assert_eq!(via_lb.await.unwrap().status, 200);
    }
    for user in ["sneaky", "sneaky2"] {
        let stats = get(c.admin[0], &format!("/stats/{user}"))
            .await
            .unwrap()
            .json();
        assert_eq!(
            stats["routes"][0]["limits"][0]["used"], 3,
            "{user}: every request counted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sidecar_costs_clients_nothing_and_rejoins_after_up() {
    let _heavy = HEAVY.lock().await;
    let c = Cluster::up();
    let (lb, victim) = (c.lb, c.pid("sluice2"));
    // A bounded stream: 4 clients, 150 requests each, for one fresh user (limit 100 per 60 s).
    // The sidecar dies once 150 replies are in, so 450 requests run against two sidecars
    // (and against nginx still trying the dead one until its passive health check trips).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let done = done.clone();
            tokio::spawn(async move {
                let mut replies = Vec::new();
                for _ in 0..150 {
                    replies.push(get(lb, "/api/data?user_id=stream_user").await);
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                replies
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(std::sync::atomic::Ordering::SeqCst) < 150 {
        assert!(Instant::now() < deadline, "the stream stalled");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    signal(victim, "-9");
    let at_kill = done.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        at_kill < 450,
        "the kill came too late to matter ({at_kill} done)"
    );
    let mut replies = Vec::new();
    for client in clients {
        for r in client.await.unwrap() {
            replies.push(r.expect("no client sees a connection error"));
        }
    }
    let statuses: BTreeSet<u16> = replies.iter().map(|r| r.status).collect();
    assert!(
        statuses.is_subset(&[200, 429].into()),
        "clients saw {statuses:?}"
    );
    assert_eq!(
        count_status(&replies, 200),
        100,
        "the limit holds exactly across the kill"
    );
    // `up` again restarts only the missing sidecar, which then serves again.
    let others = [
        c.pid("redis"),
        c.pid("sluice1"),
        c.pid("sluice3"),
        c.pid("nginx"),
    ];
    let out = String::from_utf8(c.run("up").stdout).unwrap();
    assert!(out.contains("sluice2: started"), "{out}");
    assert_eq!(
        others,
        [
            c.pid("redis"),
            c.pid("sluice1"),
            c.pid("sluice3"),
            c.pid("nginx")
        ]
    );
    assert_ne!(c.pid("sluice2"), victim);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = get(lb, "/open?user_id=rejoin").await.unwrap();
        assert_eq!(r.status, 200);
        if r.header("via") == Some("1.1 sluice2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sluice2 did not serve again through nginx"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether process `pid` has exited (gone, or a zombie waiting for its parent).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_sigterm_of_every_sidecar_under_load_loses_no_request() {
    let _heavy = HEAVY.lock().await;
    let c = Cluster::up();
    let out = c.run_dir.join("wrk.json");
    // Load through nginx on an unlimited route while each sidecar in turn is told to stop
    // (SIGTERM), drains, exits and is started again. nginx's passive health takes a sidecar
    // that refused connections out for `fail_timeout` (3 s), so the next one is stopped only
    // once nginx sends requests to the restarted one again, as an operator's rollout must.
    let mut wrk = Command::new("wrk")
        .args(["-t2", "-c16", "-d20s", "-s"])
        .arg(repo_root().join("bench/wrk/report.lua"))
        .arg(format!("http://127.0.0.1:{}/open/rolling", c.lb))
        .env("WRK_OUT", &out)
        .env("WRK_PATH", "/open/rolling")
        .env("STATUSES", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("wrk is installed (Debian package wrk)");
    let load_start = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (n, part) in ["sluice1", "sluice2", "sluice3"].iter().enumerate() {
        let pid = c.pid(part);
        signal(pid, "-TERM");
        let start = Instant::now();
        while !exited(pid) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{part} did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c.run("up");
        let admin = c.admin[n];
        let back = Instant::now();
        while get(admin, "/health").await.map(|r| r.status).ok() != Some(200) {
            assert!(
                back.elapsed() < Duration::from_secs(10),
                "{part} did not come back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let via = format!("1.1 {part}");
        loop {
            let r = get(c.lb, "/open/probe").await.unwrap();
            assert_eq!(r.status, 200, "{part}: {r:?}");
            if r.header("via") == Some(via.as_str()) {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(8),
                "nginx did not send to {part} again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        load_start.elapsed() < Duration::from_secs(19),
        "the rollout ended within the load"
    );
    let status = wrk.wait().expect("wrk ends by itself");
    assert!(status.success());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    println!("rolling restart under load: {report}");
    if report["non2xx"] != 0 || report["socket_errors"] != 0 {
        let log = std::fs::read_to_string(c.run_dir.join("nginx.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        println!("nginx.log, newest first:\n{}", tail.join("\n"));
    }
    assert!(report["requests"].as_u64().unwrap() > 1000, "{report}");
    assert_eq!(report["non2xx"], 0, "every request answered 200: {report}");
    assert_eq!(report["socket_errors"], 0, "no connection failed: {report}");
}

#[test]
fn the_native_nginx_config_passes_nginx_t() {
    let c = Cluster::new();
    let out = c.run("check");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("test is successful"), "{text}");
}

#[test]
fn the_compose_nginx_config_passes_nginx_t_with_names_resolved() {
    let dir = scratch_dir();
    let conf = std::fs::read_to_string(repo_root().join("nginx/nginx.conf")).unwrap();
    let snippet = repo_root().join("nginx/sluice-proxy.conf");
    let local = conf
        .replace("sluice1:", "127.0.0.1:")
        .replace("sluice2:", "127.0.0.2:")
        .replace("sluice3:", "127.0.0.3:")
        .replace(
            "/etc/nginx/sluice-proxy.conf",
            &snippet.display().to_string(),
        );
    assert_ne!(local, conf);
    let file = dir.join("nginx.conf");
    std::fs::write(
        &file,
        format!(
            "pid {0}/nginx.pid;\nerror_log {0}/error.log;\n{local}",
            dir.display()
        ),
    )
    .unwrap();
    let out = Command::new("nginx")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .args(["-t", "-c"])
        .arg(&file)
        .arg("-p")
        .arg(&dir)
        .output()
        .expect("nginx is installed (apt-get install nginx)");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("test is successful"),
        "{text}"
    );
}

#[test]
fn the_compose_file_has_the_topology_and_every_mounted_config_checks() {
    let text = std::fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    let mut doc: serde_yaml::Value =
        serde_yaml::from_str(&text).expect("docker-compose.yml is YAML");
    doc.apply_merge().expect("merge keys");
    let services = doc["services"].as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "nginx",
            "redis",
            "sluice1",
            "sluice2",
            "sluice3",
            "upstream-demo"
        ]
        .into()
    );
    let ports = |s: &str| {
        doc["services"][s]["ports"]
            .as_sequence()
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        ports("nginx").iter().any(|p| p.as_str() == Some("80:80")),
        "nginx publishes port 80"
    );
    for (i, sidecar) in ["sluice1", "sluice2", "sluice3"].iter().enumerate() {
        let s = &doc["services"][sidecar];
        assert_eq!(s["environment"]["SLUICE_INSTANCE"].as_str(), Some(*sidecar));
        assert!(
            s["healthcheck"]["test"].is_sequence(),
            "{sidecar} has a health check"
        );
        for dep in ["redis", "upstream-demo"] {
            assert_eq!(
                s["depends_on"][dep]["condition"].as_str(),
                Some("service_healthy"),
                "{sidecar} → {dep}"
            );
        }
        assert!(ports(sidecar)
            .iter()
            .any(|p| p.as_str() == Some(&format!("127.0.0.1:909{}:9090", i + 1))));
        assert_eq!(
            doc["services"]["nginx"]["depends_on"][sidecar]["condition"].as_str(),
            Some("service_healthy")
        );
    }
    for s in ["redis", "upstream-demo", "nginx"] {
        assert!(
            doc["services"][s]["healthcheck"]["test"].is_sequence(),
            "{s} has a health check"
        );
    }
    // Every file the Compose file mounts exists, and every sluice config among them checks.
    let mut sluice_configs = 0;
    for service in services.values() {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let host = volume.as_str().unwrap().split(':').next().unwrap();
            let path = repo_root().join(host);
            assert!(path.exists(), "mounted {host} exists");
            if host.starts_with("./conf/") {
                // Its upstream is a Compose service name, which resolves on the Compose network
                // only: give it an address here (--check resolves upstream names).
                let out = Command::new(sluice_bin())
                    .current_dir(repo_root())
                    .args(["--check", "--config", host])
                    .env("SLUICE_UPSTREAMS", "127.0.0.1:9000")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{host}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                sluice_configs += 1;
            }
        }
    }
    assert!(sluice_configs >= 3, "each sidecar mounts its config");
    // The sidecars trust nginx's own fixed address and nothing else on the network.
    let nginx_ip = doc["services"]["nginx"]["networks"]["sluice"]["ipv4_address"]
        .as_str()
        .expect("nginx has a fixed address");
    let conf: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("conf/compose.yaml")).unwrap(),
    )
    .unwrap();
    let trusted: Vec<&str> = conf["trusted_proxies"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(trusted, [format!("{nginx_ip}/32")]);
    let subnet = doc["networks"]["sluice"]["ipam"]["config"][0]["subnet"].as_str();
    assert_eq!(
        subnet,
        Some("172.28.0.0/16"),
        "the address is on the pinned subnet"
    );
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    assert_eq!(
        dockerfile
            .lines()
            .filter(|l| l.starts_with("FROM "))
            .count(),
        3,
        "multi-stage"
    );
    for (service, target) in [("sluice1", "sluice"), ("upstream-demo", "upstream-demo")] {
        assert_eq!(
            doc["services"][service]["build"]["target"].as_str(),
            Some(target),
            "{service} builds its own image"
        );
    }
    assert!(dockerfile.contains("cmake"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_cluster_runs_the_deployment_on_a_redis_cluster() {
    let _heavy = HEAVY.lock().await;
    let c = Cluster::up_on_redis_cluster();
    let mut statuses = Vec::new();
    for _ in 0..101 {
        statuses.push(status(c.lb, "/api/data?user_id=on_a_cluster", &[]).await);
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 100);
    assert_eq!(statuses[100], 429);
    let health = get(c.lb, "/health").await.unwrap().json();
    assert_eq!(health["backend"], "redis_cluster", "{health}");
    assert!(
        health["cluster"]
            .as_str()
            .unwrap()
            .starts_with("cluster ok, 6 nodes"),
        "{health}"
    );

    // Down and up again: a new, empty cluster (its nodes keep no data). A node writes an RDB
    // file at times (a replica's full sync, an operator's SAVE): SAVE on every node stands in
    // for that, and a node that loaded such a file would refuse to join the new cluster.
    for i in 0..30 {
        let path = format!("/api/data?user_id=spread_{i}");
        assert_eq!(status(c.lb, &path, &[]).await, 200, "keys on every master");
    }
    let base: u16 = c
        .env
        .iter()
        .find(|(k, _)| *k == "REDIS_PORT")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap();
    for port in base..base + 6 {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "SAVE"])
            .output()
            .expect("redis-cli");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    }
    c.run("down");
    c.run("up");
    assert_eq!(
        status(c.lb, "/api/data?user_id=on_a_cluster", &[]).await,
        200
    );
}
