//! Assembles a running sidecar from a validated [`Config`]: the proxy and admin services.

use crate::admin::Admin;
use crate::config::Config;
use crate::decision::Decider;
use crate::limiter::{Store, StoreError, StoreSide};
use crate::metrics::Metrics;
use crate::proxy::{Shared, Worker};
use crate::shutdown::{Drain, Shutdown};
use crate::upstream::Upstreams;
use crate::watch::StoreWatch;
use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TcpSocketOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

/// Why a valid config still could not start (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
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
    let upstreams = Arc::new(Upstreams::new(&config.upstream)?);
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
        // Timeouts of a second or more (the upstream's read and write deadlines, 60 s by
        // default) on tokio's timer wheel, not Pingora's fast timer: a deadline is set on every
        // upstream read and almost always cancelled, which tokio's wheel undoes at once, while a
        // fast timer is kept in a map until it would have fired (callgrind: ~900 instructions
        // fewer per proxied request). Shorter ones (a route `timeout` under 1 s) stay fast.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    let health = crate::upstream::health_checked(&upstreams, &conf)?
        .map(|lb| pingora::services::background::background_service("upstream health", lb));
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
        upstreams: upstreams.clone(),
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
    match health {
        // The balancer's discovery re-resolves the names on the same interval.
        Some(health) => {
            server.add_service(health);
        }
        None => {
            server.add_service(pingora::services::background::background_service(
                "upstream resolver",
                crate::upstream::Resolver {
                    upstreams,
                    every: config.upstream.resolve_every,
                },
            ));
        }
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
