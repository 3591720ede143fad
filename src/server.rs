//! Assembles a running sidecar from a validated [`Config`]: the proxy and admin services.

use crate::admin::Admin;
use crate::config::{Config, UpstreamProtocol};
use crate::decision::Decider;
use crate::limiter::{Store, StoreError, StoreSide};
use crate::metrics::Metrics;
use crate::proxy::{Shared, Worker};
use crate::shutdown::{Drain, Shutdown};
use crate::watch::StoreWatch;
use arc_swap::ArcSwap;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::{selection::RoundRobin, LoadBalancer};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TcpSocketOptions;
use pingora::prelude::HttpPeer;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::GenBackgroundService;
use pingora::services::listening::Service;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// Why a valid config still could not start (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("upstream {addr}: cannot resolve: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        addr: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("server.tls: {0}")]
    Tls(String),
    #[error("upstream.health_check: {0}")]
    Health(String),
}

/// Resolves every upstream once, so the request path never does DNS (and never panics on it).
///
/// A name that resolves to several addresses contributes all of them, as nginx does: taking
/// only the first (often `::1` for `localhost`) sends every request to a port that may not
/// listen on that family.
/// What `--check` reports about the upstream addresses: one line per address that does not
/// resolve (a start would fail on it), in `--check`'s form.
pub fn unresolved_upstreams(config: &Config) -> Vec<String> {
    config
        .upstream
        .addrs
        .iter()
        .enumerate()
        .filter_map(|(i, addr)| {
            let reason = resolve(addr).err()?;
            Some(format!(
                "upstream.addrs[{i}]: cannot resolve \"{addr}\": {reason}"
            ))
        })
        .collect()
}

/// The addresses `addr` (`host:port`) resolves to, or why it resolves to none.
fn resolve(addr: &str) -> Result<Vec<SocketAddr>, String> {
    let found: Vec<SocketAddr> = addr.to_socket_addrs().map_err(|e| e.to_string())?.collect();
    if found.is_empty() {
        return Err("no address".into());
    }
    Ok(found)
}

/// The upstream addresses under active health checks (Pingora's load balancer, run as a
/// background service): each is asked every `interval`, and one that fails `unhealthy_after`
/// times in a row leaves the rotation until it passes `healthy_after` times.
fn health_checked(
    config: &Config,
    peers: &[HttpPeer],
    h: &crate::config::HealthCheck,
) -> Result<GenBackgroundService<LoadBalancer<RoundRobin>>, StartError> {
    let addrs: Vec<String> = peers.iter().map(|p| p._address.to_string()).collect();
    let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(addrs.iter().map(String::as_str))
        .map_err(|e| StartError::Health(e.to_string()))?;
    let check: Box<dyn HealthCheck + Send + Sync> = match &h.path {
        Some(path) => {
            let tls = config.upstream.tls.as_ref();
            let host = tls
                .and_then(|t| t.sni.clone())
                .unwrap_or_else(|| host_of(&config.upstream.addrs[0]).to_string());
            let mut check = HttpHealthCheck::new(&host, tls.is_some());
            check.req = RequestHeader::build("GET", path.as_bytes(), None)
                .map_err(|e| StartError::Health(e.to_string()))?;
            check
                .req
                .append_header("Host", host.as_str())
                .map_err(|e| StartError::Health(e.to_string()))?;
            check.consecutive_success = h.healthy_after;
            check.consecutive_failure = h.unhealthy_after;
            check.peer_template.options.connection_timeout = Some(h.timeout);
            check.peer_template.options.read_timeout = Some(h.timeout);
            if let Some(t) = tls {
                check.peer_template.options.verify_cert = t.verify;
                check.peer_template.options.verify_hostname = t.verify;
            }
            Box::new(check)
        }
        None => {
            let mut check = TcpHealthCheck::new();
            check.consecutive_success = h.healthy_after;
            check.consecutive_failure = h.unhealthy_after;
            check.peer_template.options.connection_timeout = Some(h.timeout);
            check
        }
    };
    lb.set_health_check(check);
    lb.health_check_frequency = Some(h.interval);
    Ok(pingora::services::background::background_service(
        "upstream health",
        lb,
    ))
}

/// The host of `host:port` (`[::1]:80` → `::1`), the name a TLS upstream is asked for.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Requests one HTTP/2 upstream connection carries at once before another is opened.
const H2C_STREAMS: usize = 100;

fn peers(config: &Config) -> Result<Vec<HttpPeer>, StartError> {
    // Each resolved address with the name it was resolved from (the default SNI over TLS).
    let mut addrs: Vec<(SocketAddr, &str)> = Vec::new();
    for addr in &config.upstream.addrs {
        let resolved = resolve(addr).map_err(|reason| StartError::Resolve {
            addr: addr.clone(),
            reason,
        })?;
        let host = host_of(addr);
        for a in resolved {
            if !addrs.iter().any(|(b, _)| *b == a) {
                addrs.push((a, host));
            }
        }
    }
    let shown: Vec<SocketAddr> = addrs.iter().map(|(a, _)| *a).collect();
    log::info!("upstream peers: {shown:?}");
    let tls = config.upstream.tls.as_ref();
    Ok(addrs
        .into_iter()
        .map(|(resolved, host)| {
            let sni = tls.map_or(String::new(), |t| {
                t.sni.clone().unwrap_or_else(|| host.to_string())
            });
            let mut peer = HttpPeer::new(resolved, tls.is_some(), sni);
            if let Some(t) = tls {
                peer.options.verify_cert = t.verify;
                peer.options.verify_hostname = t.verify;
            }
            peer.options.connection_timeout = Some(config.upstream.connect_timeout);
            peer.options.idle_timeout = Some(config.upstream.idle_timeout);
            peer.options.read_timeout = Some(config.upstream.read_timeout);
            peer.options.write_timeout = Some(config.upstream.write_timeout);
            if matches!(
                config.upstream.protocol,
                UpstreamProtocol::H2c | UpstreamProtocol::H2
            ) {
                // HTTP/2 only: ALPN h2 over TLS; without TLS (no ALPN) Pingora trusts the
                // upstream speaks h2c.
                peer.options.set_http_version(2, 2);
                peer.options.max_h2_streams = H2C_STREAMS;
            }
            peer
        })
        .collect())
}

/// Fails early with a clear message when a port is taken, before Pingora takes over.
fn check_listen(addr: &str, what: &'static str) -> Result<(), StartError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| StartError::Listen {
            addr: addr.to_string(),
            what,
            source,
        })
}

/// A sidecar ready to run: the Pingora server and how it shuts down.
pub struct Sidecar {
    server: Server,
    shutdown: Shutdown,
}

impl Sidecar {
    /// Serves until told to stop (see [`crate::shutdown`]), then exits 0.
    pub fn run(self) -> ! {
        self.server.run(RunArgs {
            shutdown_signal: Box::new(self.shutdown),
        });
        crate::access_log::flush(Duration::from_secs(1));
        std::process::exit(0)
    }
}

/// Builds the Pingora server with the proxy and admin services.
pub fn build(config: Config, path: &std::path::Path) -> Result<Sidecar, StartError> {
    check_listen(&config.server.listen, "proxy")?;
    check_listen(&config.server.admin_listen, "admin")?;
    let tls = match &config.server.tls {
        Some(t) => {
            check_listen(&t.listen, "tls")?;
            let cert = crate::tls::Certificate::new(&t.cert_file, &t.key_file);
            Some(Arc::new(cert.map_err(StartError::Tls)?))
        }
        None => None,
    };
    let peers = peers(&config)?;
    let health = config
        .upstream
        .health_check
        .as_ref()
        .map(|h| health_checked(&config, &peers, h))
        .transpose()?;
    let conf = ServerConf {
        // Each proxy worker is its own Pingora service with one single-threaded runtime (see
        // below), like an nginx worker.
        threads: 1,
        work_stealing: false,
        // Pingora's grace period is our drain: it comes after the listeners stop (which our
        // shutdown watch delays by server.grace_period), and the watch ends it early once no
        // request is in flight. What is still in flight after it is closed within a second.
        grace_period_seconds: Some(config.server.drain_timeout.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        // The CA an HTTPS upstream's certificate is verified against (default: the system's).
        ca_file: config
            .upstream
            .tls
            .as_ref()
            .and_then(|t| t.ca_file.as_ref())
            .map(|p| p.display().to_string()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let store = Store::new(&config.store, &config.server.instance)?;
    let side = Arc::new(StoreSide::new(
        store,
        config.store.max_callers,
        config.store.lease_ttl,
    ));
    let metrics = Arc::new(Metrics::new());
    let decider = Decider::new(&config, side.clone(), metrics.clone(), 0);
    for w in &config.warnings {
        log::warn!("{w}");
    }
    let drain = Arc::new(Drain::default());
    let shared = Arc::new(Shared {
        decider: ArcSwap::from_pointee(decider),
        side: side.clone(),
        metrics: metrics.clone(),
        peers,
        // The instance name is validated to [A-Za-z0-9._:-]: a valid header value.
        via: http::HeaderValue::from_str(&format!("1.1 {}", config.server.instance))
            .unwrap_or_else(|_| http::HeaderValue::from_static("1.1 sluice")),
        drain: drain.clone(),
        tls: tls.clone(),
        health: health.as_ref().map(|h| h.task()),
    });
    let admin = Admin {
        shared: shared.clone(),
        instance: config.server.instance.clone(),
        token: config.server.admin_token.clone(),
    };
    // `server.threads` workers, each a single-threaded Pingora service on the same address
    // (SO_REUSEPORT: the kernel spreads connections over them). A connection's request, its
    // upstream hop, its Redis call and the upstream pool's idle watcher all stay on one thread;
    // one multi-threaded service instead spawns those watchers on a random thread, which cost
    // cross-thread wake-ups on every request (bench/RESULTS.md).
    let mut reuseport = TcpSocketOptions::default();
    reuseport.so_reuseport = Some(true);
    for i in 0..config.server.threads {
        let worker = Worker::new(shared.clone(), i);
        let name = format!("sluice proxy {i}");
        let mut proxy =
            pingora::proxy::http_proxy_service_with_name(&server.configuration, worker, &name);
        proxy.threads = Some(1);
        // HTTP/2 with prior knowledge beside HTTP/1.1 on the same plaintext listener.
        if let Some(app) = proxy.app_logic_mut() {
            let mut options = pingora::apps::HttpServerOptions::default();
            options.h2c = config.server.h2c;
            app.server_options = Some(options);
        }
        proxy.add_tcp_with_settings(&config.server.listen, reuseport.clone());
        if let (Some(cert), Some(t)) = (&tls, &config.server.tls) {
            // Paths unused: every handshake asks the resolver, which a reload updates.
            let mut settings =
                TlsSettings::intermediate("", "").map_err(|e| StartError::Tls(e.to_string()))?;
            settings.set_cert_resolver(cert.clone());
            settings.enable_h2();
            proxy.add_tls_with_settings(&t.listen, Some(reuseport.clone()), settings);
        }
        server.add_service(proxy);
    }
    let reloader = crate::reload::Reloader {
        path: path.to_path_buf(),
        shared: shared.clone(),
        current: std::sync::Mutex::new(config.clone()),
    };
    server.add_service(pingora::services::background::background_service(
        "reload", reloader,
    ));
    server.add_service(pingora::services::background::background_service(
        "lease renewal",
        crate::watch::LeaseRenewal {
            side: side.clone(),
            every: config.store.lease_ttl / 3,
        },
    ));
    server.add_service(pingora::services::background::background_service(
        "key files",
        crate::watch::KeyFiles {
            shared: shared.clone(),
        },
    ));
    if let Some(health) = health {
        server.add_service(health);
    }
    let watch = StoreWatch { side, metrics };
    server.add_service(pingora::services::background::background_service(
        "store watch",
        watch,
    ));
    let mut admin = Service::new("sluice admin".to_string(), admin);
    admin.threads = Some(1);
    admin.add_tcp(&config.server.admin_listen);
    server.add_service(admin);
    let shutdown = Shutdown {
        drain,
        grace: config.server.grace_period,
        drain_timeout: config.server.drain_timeout,
    };
    Ok(Sidecar { server, shutdown })
}
