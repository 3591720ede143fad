//! Test harness: real `redis-server`, `upstream-demo` and `sluice` processes on loopback.
//!
//! Every process is a child that dies with its guard; every wait is bounded. Logs go to a
//! per-process file that is printed when a part fails to come up.

#![allow(dead_code)]

pub mod scenarios;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Tests that put a burst of load on the machine take this lock, so two bursts never overlap
/// on a 2-core machine (where an overlap could push store calls past their deadline).
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn sluice_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

/// `upstream-demo` is another workspace member: cargo builds it beside `sluice` when the
/// whole workspace is built (`cargo test --workspace` or `scripts/test`).
pub fn upstream_bin() -> PathBuf {
    let bin = sluice_bin().with_file_name("upstream-demo");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first (cargo build --workspace, or run scripts/test)",
        bin.display()
    );
    bin
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh directory for one test's files and logs.
pub fn scratch_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A loopback port nobody listens on right now, below the kernel's ephemeral range.
///
/// Ports from `bind(:0)` are ephemeral, so the source port of some unrelated outgoing
/// connection can take one before our server binds it, and a connect to a closed ephemeral
/// port can even connect to itself: both make "is the port taken?" checks lie. Each test
/// process walks its own stretch of 20000-31999 (chosen from its pid) and skips bound ports.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let start = (std::process::id() as usize * 397) % 12_000;
    for _ in 0..12_000 {
        let port = (20_000 + (start + NEXT.fetch_add(1, Ordering::SeqCst)) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 20000-31999");
}

/// Sends `sig` (`-TERM`, `-HUP`, `-STOP`...) to process `pid`; the test fails if it cannot.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

/// libfaketime, which moves a process's wall clock (Debian package faketime).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

thread_local! {
    static FAKE_OFFSET: std::cell::Cell<Option<i64>> = const { std::cell::Cell::new(None) };
}

/// Every sidecar this thread starts from now on sees its wall clock `secs` seconds ahead
/// (libfaketime; the monotonic clock is left alone): a test can put sidecars just before
/// midnight in some time zone. The test's own clock is real: add `secs` to it. (Redis stays on
/// the real clock: its jemalloc and libfaketime do not start together, and a calendar quota is
/// on the sidecars' clocks anyway.)
pub fn fake_clock(secs: i64) {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "libfaketime is not installed: install the Debian package faketime"
    );
    FAKE_OFFSET.with(|o| o.set(Some(secs)));
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("create log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        Proc {
            child,
            name: name.to_string(),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails the test with the log when the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); its log:\n{}",
                self.name,
                self.log_text()
            );
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `ready` until it is true, failing with the process log after `limit`.
pub async fn wait_until(proc: &mut Proc, limit: Duration, mut ready: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        proc.assert_running();
        if ready().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{} did not become ready in {limit:?}; its log:\n{}",
        proc.name,
        proc.log_text()
    );
}

pub struct Redis {
    pub proc: Proc,
    pub port: u16,
}

impl Redis {
    pub async fn start(dir: &Path) -> Redis {
        Self::start_on(dir, free_port(), &[]).await
    }

    /// A redis-server on `port` with `extra` arguments (e.g. `--requirepass`), or a TLS one
    /// when `extra` holds `--tls-port` (then `port` is the TLS port and plain TCP is off).
    pub async fn start_on(dir: &Path, port: u16, extra: &[&str]) -> Redis {
        let which = Command::new("sh")
            .args(["-c", "command -v redis-server"])
            .output();
        assert!(
            which.is_ok_and(|o| o.status.success()),
            "redis-server is not installed: install the Debian package redis-server (apt-get install redis-server)"
        );
        let tls = extra.contains(&"--tls-port");
        let plain_port = if tls { 0 } else { port };
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &plain_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        cmd.args(extra);
        cmd.current_dir(dir);
        let mut proc = Proc::spawn("redis", &mut cmd, dir);
        wait_until(&mut proc, Duration::from_secs(10), async || {
            if tls {
                TcpStream::connect(("127.0.0.1", port)).await.is_ok()
            } else {
                redis_cmd(port, "PING")
                    .await
                    .is_some_and(|r| r.starts_with("+PONG") || r.starts_with("-NOAUTH"))
            }
        })
        .await;
        Redis { proc, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn cmd(&self, command: &str) -> String {
        redis_cmd(self.port, command).await.expect("redis answers")
    }
}

/// Sends one inline command to Redis and returns the raw reply.
pub async fn redis_cmd(port: u16, command: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("{command}\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

pub struct Upstream {
    pub proc: Proc,
    pub port: u16,
}

impl Upstream {
    pub async fn start(dir: &Path) -> Upstream {
        Self::start_on(dir, free_port()).await
    }

    /// An upstream-demo on `port` (one that was given up, to bring it back).
    pub async fn start_on(dir: &Path, port: u16) -> Upstream {
        let mut cmd = Command::new(upstream_bin());
        cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
        let mut proc = Proc::spawn("upstream", &mut cmd, dir);
        wait_until(&mut proc, Duration::from_secs(10), async || {
            get(port, "/ready").await.is_ok_and(|r| r.status == 200)
        })
        .await;
        Upstream { proc, port }
    }
}

pub struct Sidecar {
    pub proc: Proc,
    pub port: u16,
    pub admin_port: u16,
    pub config: PathBuf,
}

impl Sidecar {
    /// Starts a sidecar on fresh ports with `body` (store, identity, routes...) as its config.
    pub async fn start(dir: &Path, name: &str, upstream: u16, body: &str) -> Sidecar {
        Self::start_server(dir, name, upstream, "", body).await
    }

    /// Like [`Sidecar::start`], with `server` (lines of `  key: value`) added to the server
    /// section.
    pub async fn start_server(
        dir: &Path,
        name: &str,
        upstream: u16,
        server: &str,
        body: &str,
    ) -> Sidecar {
        let (port, admin_port) = (free_port(), free_port());
        let config = dir.join(format!("{name}.yaml"));
        let text = format!(
            "server:\n  listen: \"127.0.0.1:{port}\"\n  admin_listen: \"127.0.0.1:{admin_port}\"\n  threads: 2\n  instance: {name}\n{server}upstream:\n  addrs: [\"127.0.0.1:{upstream}\"]\n{body}"
        );
        std::fs::write(&config, text).expect("write config");
        Self::start_with(dir, name, &config, port, admin_port).await
    }

    pub async fn start_with(
        dir: &Path,
        name: &str,
        config: &Path,
        port: u16,
        admin_port: u16,
    ) -> Sidecar {
        let mut cmd = Command::new(sluice_bin());
        if let Some(secs) = FAKE_OFFSET.with(|o| o.get()) {
            cmd.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME", format!("{secs:+}s"))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        cmd.arg("--config").arg(config).env(
            "RUST_LOG",
            std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "warn,sluice=info".into()),
        );
        let mut proc = Proc::spawn(name, &mut cmd, dir);
        wait_until(&mut proc, Duration::from_secs(15), async || {
            // A bare connect: a request here could count against a limit.
            get(admin_port, "/health")
                .await
                .is_ok_and(|r| r.status == 200)
                && TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        Sidecar {
            proc,
            port,
            admin_port,
            config: config.to_path_buf(),
        }
    }
}

/// A throwaway CA and a server certificate for 127.0.0.1 and localhost, made with openssl in
/// `dir`: `{name}ca.crt`, `{name}server.crt` and `{name}server.key`.
pub fn make_certs(dir: &Path, name: &str) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let f = |file: &str| format!("{name}{file}");
    let ext = f("san.ext");
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    let (ca_key, ca, key, csr, cert) = (
        f("ca.key"),
        f("ca.crt"),
        f("server.key"),
        f("server.csr"),
        f("server.crt"),
    );
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=sluice test CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
}

/// Three sidecars, `s1` to `s3`, in front of `upstream`, all with `body` (store, routes...).
pub async fn three_sidecars(dir: &Path, upstream: u16, body: &str) -> Vec<Sidecar> {
    let mut sidecars = Vec::new();
    for name in ["s1", "s2", "s3"] {
        sidecars.push(Sidecar::start(dir, name, upstream, body).await);
    }
    sidecars
}

/// One HTTP response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// From sending the request to the end of the response (`send`).
    pub took: Duration,
}

impl Reply {
    /// The value of header `name` (case-insensitive), if present once or more (first one).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// The status of one GET with extra `headers` (the reply must arrive).
pub async fn status(port: u16, target: &str, headers: &[(&str, &str)]) -> u16 {
    request(port, "GET", target, headers, b"")
        .await
        .expect("reply")
        .status
}

pub async fn get(port: u16, target: &str) -> std::io::Result<Reply> {
    request(port, "GET", target, &[], b"").await
}

/// Sends one request on a fresh connection (`Connection: close`) and reads the whole reply.
pub async fn request(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    send(&mut s, method, target, headers, body).await
}

pub async fn send(
    s: &mut TcpStream,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let sent = std::time::Instant::now();
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("response timed out"))??;
    let mut reply = parse(&raw, method == "HEAD")?;
    reply.took = sent.elapsed();
    Ok(reply)
}

fn parse(raw: &[u8], head_only: bool) -> std::io::Result<Reply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("incomplete response: {text:?}")))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked && !head_only {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Reply {
        status,
        headers,
        body,
        took: Duration::ZERO,
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Sends `n` requests at once (all connected first, then all sent together) and returns the
/// status of each, spread round robin over `ports`.
pub async fn burst(ports: &[u16], n: usize, target: &str) -> Vec<Reply> {
    burst_of(ports, &vec![target.to_string(); n]).await
}

/// Sends one request to each of `targets` at once (all connected first, then all sent
/// together), spread round robin over `ports`; the replies in the order of `targets`.
pub async fn burst_of(ports: &[u16], targets: &[String]) -> Vec<Reply> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(targets.len()));
    let tasks: Vec<_> = targets
        .iter()
        .enumerate()
        .map(|(i, target)| {
            let port = ports[i % ports.len()];
            let (barrier, target) = (barrier.clone(), target.clone());
            tokio::spawn(async move {
                let mut s = TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("connect");
                barrier.wait().await;
                send(&mut s, "GET", &target, &[], b"").await.expect("reply")
            })
        })
        .collect();
    let mut replies = Vec::with_capacity(targets.len());
    for t in tasks {
        replies.push(t.await.expect("task"));
    }
    replies
}

/// Sends every (target, headers) request at once (all connected first, then all sent
/// together), spread round robin over `ports`; the replies in order.
pub async fn burst_with(ports: &[u16], requests: &[(String, Vec<(String, String)>)]) -> Vec<Reply> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(requests.len()));
    let tasks: Vec<_> = requests
        .iter()
        .enumerate()
        .map(|(i, (target, headers))| {
            let port = ports[i % ports.len()];
            let (barrier, target, headers) = (barrier.clone(), target.clone(), headers.clone());
            tokio::spawn(async move {
                let mut s = TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("connect");
                barrier.wait().await;
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                send(&mut s, "GET", &target, &headers, b"")
                    .await
                    .expect("reply")
            })
        })
        .collect();
    let mut replies = Vec::with_capacity(requests.len());
    for t in tasks {
        replies.push(t.await.expect("task"));
    }
    replies
}

/// The upstream-demo's count of requests it is answering now and the most at once.
pub async fn upstream_in_flight(port: u16) -> (u64, u64) {
    let r = get(port, "/__inflight")
        .await
        .expect("upstream answers")
        .json();
    (
        r["in_flight"].as_u64().unwrap_or(0),
        r["max_in_flight"].as_u64().unwrap_or(0),
    )
}

/// Resets the upstream-demo's most-at-once count to what is in flight now.
pub async fn reset_upstream_in_flight(port: u16) {
    request(port, "POST", "/__inflight", &[], b"")
        .await
        .expect("upstream answers");
}

pub fn count_status(replies: &[Reply], status: u16) -> usize {
    replies.iter().filter(|r| r.status == status).count()
}

/// Writes `bytes` as they are on a fresh connection and reads until the server closes it or
/// 5 s pass: for requests no well-behaved client would send.
pub async fn raw(port: u16, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(bytes).await?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            // A reset after a refusal is a closed connection too.
            Ok(Err(_)) => return Ok(out),
        }
    }
}

/// The status code of a raw reply, or `None` when the server closed without answering.
pub fn raw_status(reply: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(reply);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

/// Sends GET `targets` one after another on one keep-alive connection and returns each
/// status (bodies are read by Content-Length and dropped).
pub async fn keepalive_gets(port: u16, targets: &[String]) -> std::io::Result<Vec<u16>> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let s = TcpStream::connect(("127.0.0.1", port)).await?;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut statuses = Vec::with_capacity(targets.len());
    for target in targets {
        w.write_all(format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut line = String::new();
        r.read_line(&mut line).await?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        loop {
            line.clear();
            r.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        r.read_exact(&mut body).await?;
        statuses.push(status);
    }
    Ok(statuses)
}

/// A process's resident memory in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Like [`request`], from the loopback address `source` (e.g. 127.0.0.2, where nginx binds).
pub async fn request_from(
    source: &str,
    port: u16,
    target: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Reply> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(
        format!("{source}:0")
            .parse()
            .map_err(std::io::Error::other)?,
    )?;
    let mut s = socket
        .connect(
            format!("127.0.0.1:{port}")
                .parse()
                .map_err(std::io::Error::other)?,
        )
        .await?;
    send(&mut s, "GET", target, headers, b"").await
}

/// The `store:` section of a config for the Redis at `redis`.
pub fn redis_store(redis: &Redis) -> String {
    format!("store:\n  backend: redis\n  url: \"{}\"\n", redis.url())
}

/// A fresh Redis, upstream and one sidecar named `s1` with `body` (routes and the rest) on it.
pub async fn one_sidecar(body: &str) -> (Redis, Upstream, Sidecar) {
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    let upstream = Upstream::start(&dir).await;
    let sidecar = Sidecar::start(
        &dir,
        "s1",
        upstream.port,
        &format!("{}{body}", redis_store(&redis)),
    )
    .await;
    (redis, upstream, sidecar)
}

/// A local Redis Cluster: three masters and three replicas on loopback ports, made with
/// `redis-cli --cluster create`, stopped with its guard.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub async fn start(dir: &Path) -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            // The cluster bus defaults to port + 10000, which can land in the ephemeral range
            // (32768-60999), where the suite's own outgoing connections take ports at random.
            let bus = free_port().to_string();
            let conf = format!("nodes-{port}.conf");
            let node = Redis::start_on(
                dir,
                port,
                &[
                    "--cluster-port",
                    &bus,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "1000",
                    // A replica always takes over a dead master, however long since it heard
                    // from it (an idle test cluster would otherwise refuse to fail over).
                    "--cluster-replica-validity-factor",
                    "0",
                    "--dbfilename",
                    &format!("dump-{port}.rdb"),
                ],
            )
            .await;
            nodes.push(node);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed (Debian package redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok(Duration::from_secs(20)).await;
        cluster
    }

    /// Waits until every node says `cluster_state:ok`.
    pub async fn wait_ok(&self, limit: Duration) {
        self.wait_ok_without(0, limit).await
    }

    /// Waits until every node but the one on `dead` says `cluster_state:ok`.
    pub async fn wait_ok_without(&self, dead: u16, limit: Duration) {
        let start = Instant::now();
        loop {
            let mut ok = true;
            for n in self.nodes.iter().filter(|n| n.port != dead) {
                let info = redis_cmd(n.port, "CLUSTER INFO").await.unwrap_or_default();
                ok &= info.contains("cluster_state:ok");
            }
            if ok {
                return;
            }
            assert!(start.elapsed() < limit, "cluster not ok after {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `store:` section of a config for this cluster (every node a seed).
    pub fn store(&self) -> String {
        let nodes: Vec<String> = self.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!(
            "store:\n  backend: redis_cluster\n  nodes: [{}]\n",
            nodes.join(", ")
        )
    }

    /// `redis://` URLs of every node (seeds).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// The ports of the nodes that are masters now.
    pub async fn masters(&self) -> Vec<u16> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let role = redis_cmd(n.port, "ROLE").await.unwrap_or_default();
            if role.contains("master") {
                out.push(n.port);
            }
        }
        out
    }
}

/// The value of the first sample of metric `name` whose labels contain `labels`
/// (in the order Prometheus prints them, by name: `decision="exempt",route="api"`; `""` for
/// a metric without labels) in a Prometheus text page; 0 when there is none.
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .find(|l| {
            (l.starts_with(&format!("{name}{{")) && l.contains(labels))
                || (labels.is_empty() && l.starts_with(&format!("{name} ")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
