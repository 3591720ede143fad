//! The floor sluice is measured against: a Pingora proxy that only forwards, built from the
//! same Pingora version, release profile and allocator as sluice, with no downstream modules,
//! and arranged as sluice arranges its workers (single-threaded services sharing the address
//! with SO_REUSEPORT). What sluice costs above it is sluice's own.
//!
//!   cargo build --release --example pingora_bare
//!   target/release/examples/pingora_bare LISTEN UPSTREAM [THREADS]

use async_trait::async_trait;
use pingora::listeners::TcpSocketOptions;
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: pingora_bare LISTEN UPSTREAM [THREADS]");
        std::process::exit(2);
    };
    let threads: usize = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(2);
    let addr: SocketAddr = upstream
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| {
            eprintln!("pingora_bare: cannot resolve {upstream}");
            std::process::exit(2);
        });
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut reuseport = TcpSocketOptions::default();
    reuseport.so_reuseport = Some(true);
    for i in 0..threads {
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(1));
        peer.options.idle_timeout = Some(Duration::from_secs(30));
        let bare = Bare { peer };
        let name = format!("bare {i}");
        let mut proxy =
            pingora::proxy::http_proxy_service_with_name(&server.configuration, bare, &name);
        proxy.threads = Some(1);
        proxy.add_tcp_with_settings(listen, reuseport.clone());
        server.add_service(proxy);
    }
    server.run_forever();
}
