//! gRPC through sluice with real clients: a grpcio server behind a sidecar that speaks h2c to it
//! (`upstream.protocol: h2c`) and a grpcio client in front (h2c with prior knowledge). Unary
//! and server-streaming calls pass whole, metadata and trailers intact (and a 3 MB message each
//! way); the 11th call against a limit of 10 gets RESOURCE_EXHAUSTED from the client library,
//! with `retry-after`; a slow method hits its route's timeout as DEADLINE_EXCEEDED; the standard
//! health service answers; a cost the upstream reports in its trailers (`cost_from:
//! { response_trailer }`) is settled, and a stream cancelled before them is settled at its
//! reservation.
//! The Python side (tests/fixtures/grpc_demo.py) runs in the virtual environment scripts/test
//! makes (target/grpc-venv, with grpcio and grpcio-health-checking).

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn python() -> std::path::PathBuf {
    let python = repo_root().join("target/grpc-venv/bin/python");
    assert!(
        python.exists(),
        "no {}: scripts/test makes it (python3 -m venv target/grpc-venv && target/grpc-venv/bin/pip install grpcio grpcio-health-checking)",
        python.display()
    );
    python
}

fn script() -> std::path::PathBuf {
    repo_root().join("tests/fixtures/grpc_demo.py")
}

/// The grpcio demo server on a fresh port.
async fn grpc_server(dir: &std::path::Path) -> (Proc, u16) {
    let up_port = free_port();
    let mut cmd = Command::new(python());
    cmd.arg(script()).args(["serve", &up_port.to_string()]);
    let mut server = Proc::spawn("grpc-server", &mut cmd, dir);
    wait_until(&mut server, Duration::from_secs(20), async || {
        tokio::net::TcpStream::connect(("127.0.0.1", up_port))
            .await
            .is_ok()
    })
    .await;
    (server, up_port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_pass_whole_and_refusals_are_grpc_statuses() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let (_server, up_port) = grpc_server(&dir).await;

    let (port, admin_port) = (free_port(), free_port());
    let config = dir.join("grpc.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ listen: \"127.0.0.1:{port}\", admin_listen: \"127.0.0.1:{admin_port}\", threads: 2 }}
upstream: {{ addrs: [\"127.0.0.1:{up_port}\"], protocol: h2c }}
store: {{ backend: memory }}
identity: [{{ header: x-user-id }}]
routes:
  - name: slow
    match: {{ path: /demo.Echo/Slow }}
    limits: [{{ requests: 1000, window: 60s }}]
    timeout: 1s
  - name: metered
    match: {{ path_prefix: /demo.Echo/Metered }}
    cost_from: {{ response_trailer: x-usage-tokens }}
    limits: [{{ requests: 100, window: 60s }}]
  - name: echo
    match: {{ path_prefix: /demo.Echo/ }}
    limits: [{{ requests: 10, window: 60s }}]
"
        ),
    )
    .unwrap();
    let sidecar = Sidecar::start_with(&dir, "s1", &config, port, admin_port).await;

    let seen = client(&["call", &port.to_string()]);
    assert_eq!(
        seen["unary"],
        serde_json::json!({"reply": "hello", "initial": "m1", "trailer": "t", "code": "OK"})
    );
    assert_eq!(
        seen["stream"],
        serde_json::json!(["part 0", "part 1", "part 2", "part 3", "part 4"])
    );
    assert_eq!(
        seen["large"],
        serde_json::json!({"sent": 3 * 1024 * 1024, "same": true}),
        "a 3 MB message each way, whole"
    );
    // ann spent 2 of her 10 above; bob has his own 10.
    let limited: Vec<&str> = seen["limited"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(&limited[..10], &["OK"; 10]);
    assert_eq!(&limited[10..], &["RESOURCE_EXHAUSTED"; 2]);
    let refused = &seen["refused"];
    assert!(
        refused["details"]
            .as_str()
            .is_some_and(|d| d.contains("rate_limited") && d.contains("\"route\":\"echo\"")),
        "{refused}"
    );
    let retry: u64 = refused["retry_after"].as_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{refused}");
    assert!(refused["ratelimit"]
        .as_str()
        .is_some_and(|r| r.starts_with("\"echo\";r=0")));
    assert_eq!(seen["slow"], "DEADLINE_EXCEEDED");
    assert_eq!(seen["health"], "SERVING");

    // Costs reported in the trailers (unary and streamed): 30 tokens each, settled when the
    // trailers arrive; 4 × 30 = 120 puts dan over 100, so the 5th call is refused.
    assert_eq!(
        seen["metered"],
        serde_json::json!(["OK", "OK", "OK", "OK", "RESOURCE_EXHAUSTED"])
    );
    assert_eq!(used(sidecar.admin_port, "dan").await, 120);
    // cat's stream was cancelled before its trailers: settled at the reservation.
    let mut cat = 0;
    for _ in 0..40 {
        cat = used(sidecar.admin_port, "cat").await;
        if cat > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cat, 1);
}

/// What `user` has used of the metered route's limit, by `/stats`.
async fn used(admin: u16, user: &str) -> u64 {
    let stats = get(admin, &format!("/stats/{user}")).await.unwrap().json();
    let route = stats["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "metered")
        .cloned()
        .unwrap_or_else(|| panic!("{stats}"));
    route["limits"][0]["used"].as_u64().unwrap()
}

/// Costs in the trailers are settled exactly through three sidecars on `store`: after 300
/// unary and streamed calls of 0-800 tokens each, the store holds the server's own sum.
async fn trailer_costs_sum_to_what_the_upstream_reported(
    dir: &std::path::Path,
    store: &str,
    tag: &str,
) {
    let (_server, up_port) = grpc_server(dir).await;
    let mut sidecars = Vec::new();
    for i in 1..=3 {
        let name = format!("{tag}{i}");
        let (port, admin_port) = (free_port(), free_port());
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "server: {{ listen: \"127.0.0.1:{port}\", admin_listen: \"127.0.0.1:{admin_port}\", threads: 2, instance: {name} }}
upstream: {{ addrs: [\"127.0.0.1:{up_port}\"], protocol: h2c }}
{store}identity: [{{ header: x-user-id }}]
routes:
  - name: metered
    match: {{ path_prefix: /demo.Echo/Metered }}
    cost_from: {{ response_trailer: x-usage-tokens, max_cost: 1000 }}
    limits: [{{ requests: 100000000, window: 1h }}]
"
            ),
        )
        .unwrap();
        sidecars.push(Sidecar::start_with(dir, &name, &config, port, admin_port).await);
    }
    let ports: Vec<String> = sidecars.iter().map(|s| s.port.to_string()).collect();
    let reported = client(&["meter", &ports.join(","), "300"])["tokens"]
        .as_u64()
        .unwrap();
    assert!(reported > 300, "random costs: {reported}");
    for s in &sidecars {
        assert_eq!(used(s.admin_port, "eve").await, reported, "{tag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailer_costs_through_three_sidecars_sum_to_what_the_upstream_reported() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    trailer_costs_sum_to_what_the_upstream_reported(&dir, &redis_store(&redis), "r").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailer_costs_on_a_redis_cluster_sum_to_what_the_upstream_reported() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let cluster = RedisCluster::start(&dir).await;
    trailer_costs_sum_to_what_the_upstream_reported(&dir, &cluster.store(), "c").await;
}

/// Runs the fixture's client with `args`; its JSON.
fn client(args: &[&str]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(script())
        .args(args)
        .output()
        .expect("the client runs");
    assert!(
        out.status.success(),
        "client {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The ports that answered `n` Whoami calls through `port`.
fn whoami(port: u16, n: usize) -> Vec<u64> {
    client(&["whoami", &port.to_string(), &n.to_string()])["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect()
}

/// `health_check: { grpc: true }` asks each address the standard `grpc.health.v1.Health/Check`:
/// a server that says NOT_SERVING leaves the rotation within interval × unhealthy_after (+1 s)
/// while no call fails, and comes back once it says SERVING again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_upstream_that_is_not_serving_leaves_the_rotation() {
    let _heavy = HEAVY.lock().await;
    let dir = scratch_dir();
    let (_a, a) = grpc_server(&dir).await;
    let a = u64::from(a);
    let (_b, b) = grpc_server(&dir).await;
    let b = u64::from(b);
    let (port, admin_port) = (free_port(), free_port());
    let config = dir.join("grpc-health.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ listen: \"127.0.0.1:{port}\", admin_listen: \"127.0.0.1:{admin_port}\", threads: 1 }}
upstream:
  addrs: [\"127.0.0.1:{a}\", \"127.0.0.1:{b}\"]
  protocol: h2c
  health_check: {{ grpc: true, interval: 200ms, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }}
store: {{ backend: memory }}
routes: []
"
        ),
    )
    .unwrap();
    let s = Sidecar::start_with(&dir, "s1", &config, port, admin_port).await;
    let both = whoami(port, 10);
    assert!(
        both.contains(&a) && both.contains(&b),
        "round robin over both: {both:?}"
    );

    client(&["sethealth", &b.to_string(), "NOT_SERVING"]);
    tokio::time::sleep(Duration::from_millis(200 * 2 + 1000)).await;
    assert_eq!(whoami(port, 10), [a; 10], "b says NOT_SERVING: out");

    client(&["sethealth", &b.to_string(), "SERVING"]);
    tokio::time::sleep(Duration::from_millis(200 * 2 + 1000)).await;
    let back = whoami(port, 10);
    assert!(back.contains(&b), "b serves again: back in ({back:?})");
    assert!(!back.contains(&0), "no call failed: {back:?}");
    let log = s.proc.log_text();
    assert!(
        log.contains("becomes unhealthy") && log.contains("not SERVING"),
        "the log says why: {log}"
    );
}
