//! The TLS listener with real clients: curl over TLS with ALPN h2 and http/1.1 against a
//! throwaway CA, limits enforced as on the plaintext listener; the certificate replaced and
//! SIGHUPed (new handshakes see the new one, a connection open across the reload keeps
//! working); `--check` refuses a certificate and key that do not belong together.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// curl over TLS to 127.0.0.1:`port`, trusting `ca`: each transfer's `version status
/// connects`, and curl's exit code.
fn curl(ca: &Path, port: u16, args: &[&str], urls: &[&str]) -> (Vec<String>, i32) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--cacert"])
        .arg(ca)
        .args(["-w", "%{http_version} %{http_code} %{num_connects}\\n"])
        .args(args);
    for url in urls {
        cmd.args(["-o", "/dev/null"])
            .arg(format!("https://127.0.0.1:{port}{url}"));
    }
    let out = cmd.output().expect("curl is installed");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (lines, out.status.code().unwrap_or(-1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_speaks_h2_and_http1_and_takes_a_new_certificate_on_sighup() {
    let dir = scratch_dir();
    make_certs(&dir, "one-");
    make_certs(&dir, "two-");
    let up = Upstream::start(&dir).await;
    let tls_port = free_port();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(dir.join("one-server.crt"), &cert).unwrap();
    std::fs::copy(dir.join("one-server.key"), &key).unwrap();
    let server = format!(
        "  tls: {{ listen: \"127.0.0.1:{tls_port}\", cert_file: \"{}\", key_file: \"{}\" }}\n",
        cert.display(),
        key.display()
    );
    let body = "store: { backend: memory }
routes:
  - name: api
    match: { path_prefix: /api/ }
    limits: [{ requests: 3, window: 60s }]
";
    let s = Sidecar::start_server(&dir, "s1", up.port, &server, body).await;
    let (ca1, ca2) = (dir.join("one-ca.crt"), dir.join("two-ca.crt"));

    // ALPN h2, then HTTP/1.1; the limit counts both, and the plaintext listener too.
    let (h2, code) = curl(&ca1, tls_port, &["--http2"], &["/api/a?user_id=ann"]);
    assert_eq!((h2, code), (vec!["2 200 1".to_string()], 0));
    let (h1, _) = curl(&ca1, tls_port, &["--http1.1"], &["/api/a?user_id=ann"]);
    assert_eq!(h1, ["1.1 200 1"]);
    assert_eq!(status(s.port, "/api/a?user_id=ann", &[]).await, 200);
    let (over, _) = curl(&ca1, tls_port, &["--http2"], &["/api/a?user_id=ann"]);
    assert_eq!(over, ["2 429 1"]);
    // A certificate from another CA is not trusted.
    let (_, untrusted) = curl(&ca2, tls_port, &[], &["/api/a?user_id=bob"]);
    assert_eq!(
        untrusted, 60,
        "curl: peer certificate cannot be authenticated"
    );

    // A connection opened before the reload makes its second request after it.
    let ca1_ = ca1.clone();
    let open = std::thread::spawn(move || {
        curl(
            &ca1_,
            tls_port,
            &["--http1.1", "--rate", "30/m"],
            &["/api/b?user_id=cat", "/api/b?user_id=cat"],
        )
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    std::fs::copy(dir.join("two-server.crt"), &cert).unwrap();
    std::fs::copy(dir.join("two-server.key"), &key).unwrap();
    signal(s.proc.pid(), "-HUP");
    let mut reloaded = false;
    for _ in 0..100 {
        if s.proc
            .log_text()
            .contains("server.tls: certificate re-read")
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reloaded, "{}", s.proc.log_text());
    let (kept, code) = open.join().unwrap();
    assert_eq!(
        (kept, code),
        (vec!["1.1 200 1".to_string(), "1.1 200 0".to_string()], 0),
        "two requests, one connection"
    );
    // New handshakes get the new certificate.
    let (new, _) = curl(&ca2, tls_port, &["--http2"], &["/api/c?user_id=dan"]);
    assert_eq!(new, ["2 200 1"]);
    let (_, old) = curl(&ca1, tls_port, &[], &["/api/c?user_id=dan"]);
    assert_eq!(old, 60);

    // A broken pair on reload keeps the certificate in use.
    std::fs::write(&key, "not a key").unwrap();
    signal(s.proc.pid(), "-HUP");
    let mut refused = false;
    for _ in 0..100 {
        if s.proc.log_text().contains("the certificate in use stays") {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "{}", s.proc.log_text());
    let (still, _) = curl(&ca2, tls_port, &["--http2"], &["/api/c?user_id=dan"]);
    assert_eq!(still, ["2 200 1"]);
}

#[test]
fn check_refuses_a_certificate_and_key_that_do_not_belong_together() {
    let dir = scratch_dir();
    make_certs(&dir, "one-");
    make_certs(&dir, "two-");
    let config = dir.join("sluice.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ tls: {{ listen: \"127.0.0.1:8443\", cert_file: \"{}\", key_file: \"{}\" }} }}\nupstream: {{ addrs: [\"127.0.0.1:9000\"] }}\n",
            dir.join("one-server.crt").display(),
            dir.join("two-server.key").display()
        ),
    )
    .unwrap();
    let out = Command::new(sluice_bin())
        .arg("--check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("server.tls:") && stderr.contains("do not belong together"),
        "{stderr}"
    );
}

/// nginx on `port` speaking TLS (and HTTP/2 when `http2`) with `cert`/`key`, in front of
/// `upstream`; every response says which protocol nginx was spoken to in.
fn nginx_tls(dir: &Path, port: u16, upstream: u16, http2: bool) -> Proc {
    let d = dir.display();
    let h2 = if http2 { " http2" } else { "" };
    let conf = format!(
        "worker_processes 1;
error_log {d}/nginx-error.log;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/nginx-body; proxy_temp_path {d}/nginx-proxy;
  fastcgi_temp_path {d}/nginx-fastcgi; uwsgi_temp_path {d}/nginx-uwsgi;
  scgi_temp_path {d}/nginx-scgi;
  server {{
    listen 127.0.0.1:{port} ssl{h2};
    ssl_certificate {d}/up-server.crt;
    ssl_certificate_key {d}/up-server.key;
    location / {{
      proxy_pass http://127.0.0.1:{upstream};
      add_header x-spoken $server_protocol always;
    }}
  }}
}}
"
    );
    let file = dir.join("nginx-tls.conf");
    std::fs::write(&file, conf).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&file)
        // One process: dropping a Proc kills it with SIGKILL, which would leave a master's
        // workers running, holding their ports, after the test.
        .args(["-g", "daemon off; master_process off;"]);
    Proc::spawn("nginx", &mut cmd, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_verified_against_its_ca_and_spoken_to_in_h2() {
    let dir = scratch_dir();
    make_certs(&dir, "up-");
    make_certs(&dir, "other-");
    let up = Upstream::start(&dir).await;
    let (h2_port, h1_port) = (free_port(), free_port());
    let mut h2 = nginx_tls(&dir, h2_port, up.port, true);
    wait_until(&mut h2, Duration::from_secs(10), async || {
        tokio::net::TcpStream::connect(("127.0.0.1", h2_port))
            .await
            .is_ok()
    })
    .await;
    let dir1 = dir.join("h1");
    std::fs::create_dir_all(&dir1).unwrap();
    for f in ["up-server.crt", "up-server.key"] {
        std::fs::copy(dir.join(f), dir1.join(f)).unwrap();
    }
    let mut h1 = nginx_tls(&dir1, h1_port, up.port, false);
    wait_until(&mut h1, Duration::from_secs(10), async || {
        tokio::net::TcpStream::connect(("127.0.0.1", h1_port))
            .await
            .is_ok()
    })
    .await;
    let ca = |name: &str| dir.join(format!("{name}ca.crt")).display().to_string();
    let sidecar = |name: &str, port: u16, protocol: &str, ca: String| {
        let config = dir.join(format!("{name}.yaml"));
        let (listen, admin) = (free_port(), free_port());
        std::fs::write(
            &config,
            format!(
                "server: {{ listen: \"127.0.0.1:{listen}\", admin_listen: \"127.0.0.1:{admin}\", threads: 1 }}
upstream: {{ addrs: [\"127.0.0.1:{port}\"], protocol: {protocol}, tls: {{ ca_file: \"{ca}\" }} }}
routes:
  - name: api
    match: {{ path_prefix: /api/ }}
    limits: [{{ requests: 2, window: 60s }}]
"
            ),
        )
        .unwrap();
        (config, listen, admin)
    };

    // HTTP/2 over TLS, verified against the CA that signed nginx's certificate.
    let (config, port, admin) = sidecar("h2", h2_port, "h2", ca("up-"));
    let s = Sidecar::start_with(&dir, "h2", &config, port, admin).await;
    let r = get(s.port, "/api/a?user_id=ann").await.unwrap();
    assert_eq!((r.status, r.header("x-spoken")), (200, Some("HTTP/2.0")));
    assert_eq!(status(s.port, "/api/a?user_id=ann", &[]).await, 200);
    assert_eq!(status(s.port, "/api/a?user_id=ann", &[]).await, 429);

    // HTTP/1.1 over TLS.
    let (config, port, admin) = sidecar("h1", h1_port, "http1", ca("up-"));
    let s1 = Sidecar::start_with(&dir, "h1", &config, port, admin).await;
    let r = get(s1.port, "/api/a?user_id=ann").await.unwrap();
    assert_eq!((r.status, r.header("x-spoken")), (200, Some("HTTP/1.1")));

    // The wrong CA: 502 upstream_unavailable, and the log says why.
    let (config, port, admin) = sidecar("wrong", h2_port, "h2", ca("other-"));
    let wrong = Sidecar::start_with(&dir, "wrong", &config, port, admin).await;
    let r = get(wrong.port, "/api/a?user_id=ann").await.unwrap();
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"], "upstream_unavailable");
    let log = wrong.proc.log_text();
    assert!(
        log.contains("UnknownIssuer") || log.contains("certificate"),
        "the reason is logged: {log}"
    );
}
