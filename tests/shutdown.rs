//! Shutdown that drains, with real clients: during the grace period a stopping sidecar keeps
//! serving new connections and requests (each response closing its connection) while /health
//! says draining; then it stops accepting, lets a slow POST and an SSE stream in flight finish,
//! and exits 0. A second SIGTERM exits at once. Through nginx and three sidecars, a rolling
//! SIGTERM of each sidecar under load loses no request.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A request the upstream holds for `hold_ms`, sent in the background.
fn held(
    port: u16,
    method: &'static str,
    target: &'static str,
    hold_ms: &'static str,
    body: &'static [u8],
) -> tokio::task::JoinHandle<std::io::Result<Reply>> {
    tokio::spawn(
        async move { request(port, method, target, &[("x-hold-ms", hold_ms)], body).await },
    )
}

/// One request on an open keep-alive connection: its status and headers (lower-case names).
async fn on(s: &mut BufReader<TcpStream>, target: &str) -> (u16, Vec<(String, String)>) {
    let head = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    s.get_mut().write_all(head.as_bytes()).await.unwrap();
    let mut line = String::new();
    s.read_line(&mut line).await.unwrap();
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        line.clear();
        s.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).await.unwrap();
    (status, headers)
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Waits (at most `limit`) for the process to exit, and returns its status code.
fn exit_code(proc: &mut Proc, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = proc.child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

const ROUTES: &str = "store: { backend: memory }\nroutes:\n  - name: api\n    match: { path_prefix: /api/ }\n    limits: [{ requests: 1000, window: 60s }]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_serves_through_the_grace_then_drains_what_is_in_flight_and_exits_0() {
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let server = "  grace_period: 2s\n  drain_timeout: 20s\n";
    let mut s = Sidecar::start_server(&dir, "s", up.port, server, ROUTES).await;
    let mut kept = BufReader::new(TcpStream::connect(("127.0.0.1", s.port)).await.unwrap());
    let (status, headers) = on(&mut kept, "/api/a?user_id=k").await;
    assert_eq!(
        (status, header(&headers, "connection")),
        (200, Some("keep-alive"))
    );
    // In flight when the signal comes: a slow POST (4 s at the upstream) and an SSE stream.
    let port = s.port;
    let post = held(port, "POST", "/api/upload?user_id=p", "4000", b"payload");
    let sse = tokio::spawn(async move { get(port, "/sse?events=12&every_ms=300").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(s.proc.pid(), "-TERM");
    let signalled = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The grace period: new connections and requests are served; each response closes its
    // connection; /health says draining.
    for i in 0..5 {
        let r = get(s.port, &format!("/api/new?user_id=n{i}"))
            .await
            .expect("served in the grace");
        assert_eq!(r.status, 200);
    }
    let (status, headers) = on(&mut kept, "/api/b?user_id=k").await;
    assert_eq!(
        (status, header(&headers, "connection")),
        (200, Some("close"))
    );
    let health = get(s.admin_port, "/health").await.unwrap();
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["status"], "draining");

    // After it: no new connection, but what was in flight finishes.
    while signalled.elapsed() < Duration::from_millis(2400) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        TcpStream::connect(("127.0.0.1", s.port)).await.is_err(),
        "no longer accepting once the grace period is over"
    );
    let post = post.await.unwrap().expect("the slow POST is answered");
    assert_eq!(post.status, 200);
    assert_eq!(post.json()["method"], "POST");
    let sse = sse.await.unwrap().expect("the stream ends normally");
    assert_eq!(sse.body.matches("data: event").count(), 12, "{}", sse.body);
    let code = exit_code(&mut s.proc, Duration::from_secs(5));
    assert_eq!(code, Some(0), "exits 0 once drained: {}", s.proc.log_text());
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "it did not wait out the 20 s drain timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_grace_period_requests_in_flight_still_finish_and_a_second_sigterm_exits_at_once() {
    let dir = scratch_dir();
    let up = Upstream::start(&dir).await;
    let mut s = Sidecar::start(&dir, "s", up.port, ROUTES).await;
    let port = s.port;
    let post = held(port, "POST", "/api/upload?user_id=p", "1500", b"x");
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(s.proc.pid(), "-TERM");
    let post = post.await.unwrap().expect("the POST in flight is answered");
    assert_eq!(post.status, 200);
    assert_eq!(exit_code(&mut s.proc, Duration::from_secs(5)), Some(0));

    // A second SIGTERM does not wait for a 20 s request.
    let mut s = Sidecar::start(&dir, "t", up.port, ROUTES).await;
    let port = s.port;
    let held = held(port, "GET", "/api/held?user_id=h", "20000", b"");
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(s.proc.pid(), "-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        exit_code(&mut s.proc, Duration::from_millis(100)),
        None,
        "draining"
    );
    let second = Instant::now();
    signal(s.proc.pid(), "-TERM");
    assert_eq!(exit_code(&mut s.proc, Duration::from_secs(2)), Some(0));
    assert!(second.elapsed() < Duration::from_secs(1));
    held.abort();
}
