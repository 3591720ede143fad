//! The upstream addresses: resolved at start, re-resolved every `upstream.resolve_every` (DNS
//! failover, Kubernetes Services), and optionally health-checked (Pingora's load balancer):
//! by HTTP `GET path`, by a TCP connect, or by the standard gRPC health service.

use crate::config::{UpstreamConfig, UpstreamProtocol};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::{selection::RoundRobin, Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::client::HttpSession;
use pingora::server::configuration::ServerConf;
use pingora::{Error, ErrorType};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// Why the upstream could not be set up at start (a re-resolution that fails keeps what it had).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {addr}: cannot resolve: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("upstream.health_check: {0}")]
    Health(String),
}

/// Requests one HTTP/2 upstream connection carries at once before another is opened.
const H2C_STREAMS: usize = 100;

/// What `--check` reports about the upstream addresses: one line per address that does not
/// resolve (a start would fail on it), in `--check`'s form.
pub fn unresolved(config: &UpstreamConfig) -> Vec<String> {
    config
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

/// The host of `host:port` (`[::1]:80` → `::1`), the name a TLS upstream is asked for.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The upstream peers now, and how to find them again.
///
/// A name that resolves to several addresses contributes all of them, as nginx does: taking
/// only the first (often `::1` for `localhost`) sends every request to a port that may not
/// listen on that family. The request path never resolves (and never waits on DNS): it reads
/// the last resolution.
pub struct Upstreams {
    config: UpstreamConfig,
    /// Each configured address's last resolution (a name that stops resolving keeps it).
    resolved: std::sync::Mutex<Vec<Vec<SocketAddr>>>,
    peers: ArcSwap<Vec<HttpPeer>>,
}

impl Upstreams {
    /// Resolves every address once; a start fails on one that does not resolve.
    pub fn new(config: &UpstreamConfig) -> Result<Self, UpstreamError> {
        let mut resolved = Vec::new();
        for addr in &config.addrs {
            resolved.push(resolve(addr).map_err(|reason| UpstreamError::Resolve {
                addr: addr.clone(),
                reason,
            })?);
        }
        let peers = peers(config, &resolved);
        log::info!("upstream peers: {:?}", addrs_of(&peers));
        Ok(Self {
            config: config.clone(),
            resolved: std::sync::Mutex::new(resolved),
            peers: ArcSwap::from_pointee(peers),
        })
    }

    /// The peers of the last resolution.
    pub fn current(&self) -> arc_swap::Guard<Arc<Vec<HttpPeer>>> {
        self.peers.load()
    }

    /// Resolves every address again (blocking: called from a background service). A name that
    /// no longer resolves keeps its last addresses, with a warning: a DNS outage must not empty
    /// the rotation. Returns the peers now.
    pub fn refresh(&self) -> Arc<Vec<HttpPeer>> {
        let mut resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        for (addr, last) in self.config.addrs.iter().zip(resolved.iter_mut()) {
            match resolve(addr) {
                Ok(now) if now != *last => {
                    log::info!("upstream {addr}: now resolves to {now:?} (was {last:?})");
                    *last = now;
                    changed = true;
                }
                Ok(_) => {}
                Err(reason) => {
                    log::warn!("upstream {addr}: cannot resolve ({reason}); keeping {last:?}")
                }
            }
        }
        if changed {
            let peers = peers(&self.config, &resolved);
            log::info!("upstream peers: {:?}", addrs_of(&peers));
            self.peers.store(Arc::new(peers));
        }
        self.peers.load_full()
    }
}

fn addrs_of(peers: &[HttpPeer]) -> Vec<SocketAddr> {
    peers
        .iter()
        .filter_map(|p| p._address.as_inet().copied())
        .collect()
}

/// One peer per distinct resolved address, with the upstream's protocol, TLS and timeouts.
fn peers(config: &UpstreamConfig, resolved: &[Vec<SocketAddr>]) -> Vec<HttpPeer> {
    let mut seen: Vec<SocketAddr> = Vec::new();
    let mut out = Vec::new();
    for (addr, found) in config.addrs.iter().zip(resolved) {
        for a in found {
            if !seen.contains(a) {
                seen.push(*a);
                out.push(peer(config, *a, host_of(addr)));
            }
        }
    }
    out
}

/// The peer for `resolved`, named `host` (the default SNI over TLS).
fn peer(config: &UpstreamConfig, resolved: SocketAddr, host: &str) -> HttpPeer {
    let tls = config.tls.as_ref();
    let sni = tls.map_or(String::new(), |t| {
        t.sni.clone().unwrap_or_else(|| host.to_string())
    });
    let mut peer = HttpPeer::new(resolved, tls.is_some(), sni);
    if let Some(t) = tls {
        peer.options.verify_cert = t.verify;
        peer.options.verify_hostname = t.verify;
    }
    peer.options.connection_timeout = Some(config.connect_timeout);
    peer.options.idle_timeout = Some(config.idle_timeout);
    peer.options.read_timeout = Some(config.read_timeout);
    peer.options.write_timeout = Some(config.write_timeout);
    if matches!(
        config.protocol,
        UpstreamProtocol::H2c | UpstreamProtocol::H2
    ) {
        // HTTP/2 only: ALPN h2 over TLS; without TLS (no ALPN) Pingora trusts the upstream
        // speaks h2c.
        peer.options.set_http_version(2, 2);
        peer.options.max_h2_streams = H2C_STREAMS;
    }
    peer
}

/// Re-resolves the upstream names every `upstream.resolve_every` when no health check does
/// (with health checks, the load balancer's discovery does it on the same interval).
pub struct Resolver {
    pub upstreams: Arc<Upstreams>,
    pub every: Duration,
}

#[async_trait]
impl pingora::services::background::BackgroundService for Resolver {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(self.every) => {}
            }
            let upstreams = self.upstreams.clone();
            // getaddrinfo blocks: off this runtime's one thread.
            if tokio::task::spawn_blocking(move || upstreams.refresh())
                .await
                .is_err()
            {
                log::warn!("upstream re-resolution failed");
            }
        }
    }
}

/// The load balancer's view of the upstream addresses: each discovery re-resolves them.
struct Discovery(Arc<Upstreams>);

#[async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let peers = self.0.refresh();
        let backends = addrs_of(&peers)
            .into_iter()
            .map(|addr| Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
                weight: 1,
                ext: Default::default(),
            })
            .collect();
        Ok((backends, HashMap::new()))
    }
}

/// The upstream addresses under active health checks (Pingora's load balancer, run as a
/// background service): each is asked every `interval`, and one that fails `unhealthy_after`
/// times in a row leaves the rotation until it passes `healthy_after` times. The balancer's
/// discovery re-resolves the names every `resolve_every`; a new address starts healthy.
pub fn health_checked(
    upstreams: &Arc<Upstreams>,
    server: &ServerConf,
) -> Result<Option<LoadBalancer<RoundRobin>>, UpstreamError> {
    let config = &upstreams.config;
    let Some(h) = &config.health_check else {
        return Ok(None);
    };
    let health = |e: Box<Error>| UpstreamError::Health(e.to_string());
    // The checks connect as requests do: the same CA for an HTTPS upstream.
    let connector = || Connector::new(Some(ConnectorOptions::from_server_conf(server)));
    let tls = config.tls.as_ref();
    let host = tls
        .and_then(|t| t.sni.clone())
        .unwrap_or_else(|| host_of(&config.addrs[0]).to_string());
    let check: Box<dyn HealthCheck + Send + Sync> = match &h.kind {
        crate::config::HealthCheckKind::Http(path) => {
            let mut check = HttpHealthCheck::new(&host, tls.is_some());
            check.set_connector(connector());
            check.req = RequestHeader::build("GET", path.as_bytes(), None).map_err(health)?;
            check
                .req
                .append_header("Host", host.as_str())
                .map_err(health)?;
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
        crate::config::HealthCheckKind::Grpc(service) => {
            let mut template = peer(config, ([0, 0, 0, 0], 1).into(), &host);
            template.options.connection_timeout = Some(h.timeout);
            template.options.read_timeout = Some(h.timeout);
            template.options.write_timeout = Some(h.timeout);
            Box::new(GrpcHealthCheck {
                service: service.clone(),
                authority: host.clone(),
                template,
                connector: connector(),
                timeout: h.timeout,
                healthy_after: h.healthy_after,
                unhealthy_after: h.unhealthy_after,
            })
        }
        crate::config::HealthCheckKind::Tcp => {
            let mut check = TcpHealthCheck::new();
            check.consecutive_success = h.healthy_after;
            check.consecutive_failure = h.unhealthy_after;
            check.peer_template.options.connection_timeout = Some(h.timeout);
            check
        }
    };
    let mut lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(Discovery(
        upstreams.clone(),
    ))));
    // The first discovery now (it only reads the resolution just made): the rotation is full
    // before the first request.
    let first = {
        let update = std::pin::pin!(lb.update());
        update.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    };
    match first {
        std::task::Poll::Ready(r) => r.map_err(health)?,
        std::task::Poll::Pending => {
            return Err(UpstreamError::Health(
                "the first discovery did not finish".into(),
            ))
        }
    }
    lb.set_health_check(check);
    lb.health_check_frequency = Some(h.interval);
    lb.update_frequency = Some(config.resolve_every);
    Ok(Some(lb))
}

/// The standard gRPC health check (`grpc.health.v1.Health/Check`): healthy when the upstream
/// answers `SERVING` for `service` ("" asks about the server as a whole).
struct GrpcHealthCheck {
    service: String,
    authority: String,
    template: HttpPeer,
    connector: Connector,
    timeout: Duration,
    healthy_after: usize,
    unhealthy_after: usize,
}

/// `HealthCheckResponse.status`: SERVING.
const SERVING: u64 = 1;

impl GrpcHealthCheck {
    async fn ask(&self, target: &Backend) -> pingora::Result<()> {
        let mut peer = self.template.clone();
        peer._address = target.addr.clone();
        let (mut session, _) = self.connector.get_http_session(&peer).await?;
        session.set_read_timeout(Some(self.timeout));
        session.set_write_timeout(Some(self.timeout));
        let mut req = RequestHeader::build("POST", b"/grpc.health.v1.Health/Check", None)?;
        req.insert_header("content-type", "application/grpc")?;
        req.insert_header("te", "trailers")?;
        req.insert_header("host", self.authority.as_str())?;
        session.write_request_header(Box::new(req)).await?;
        session
            .write_request_body(health_request(&self.service), true)
            .await?;
        session.read_response_header().await?;
        let head = session
            .response_header()
            .ok_or_else(|| failed("no response head"))?
            .clone();
        if head.status != 200 {
            return Err(failed(&format!("HTTP status {}", head.status)));
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_response_body().await? {
            body.extend_from_slice(&chunk);
        }
        // grpc-status comes in the trailers, or in the head of a trailers-only answer.
        let trailers = match &mut session {
            HttpSession::H2(h2) => h2.read_trailers().await?,
            _ => None,
        };
        let status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| head.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if status != "0" {
            return Err(failed(&format!("grpc-status {status:?}")));
        }
        match serving_status(body.freeze()) {
            Some(SERVING) => Ok(()),
            other => Err(failed(&format!("status {other:?}, not SERVING"))),
        }
    }
}

fn failed(why: &str) -> Box<Error> {
    Error::explain(ErrorType::Custom("grpc health check"), why.to_string())
}

/// A gRPC message (uncompressed) of `HealthCheckRequest { service }`.
fn health_request(service: &str) -> Bytes {
    let mut message = Vec::new();
    if !service.is_empty() {
        // Field 1, length-delimited.
        message.push(0x0a);
        push_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    Bytes::from(frame)
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(buf: &mut Bytes) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let b = buf.get_u8();
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// `HealthCheckResponse.status` from one uncompressed gRPC message (0, UNKNOWN, when the
/// field is absent, as proto3 omits defaults); `None` for anything malformed.
fn serving_status(mut body: Bytes) -> Option<u64> {
    if body.len() < 5 || body.get_u8() != 0 {
        return None;
    }
    let len = body.get_u32() as usize;
    if body.len() != len {
        return None;
    }
    let mut status = 0;
    while body.has_remaining() {
        let key = read_varint(&mut body)?;
        match key & 7 {
            0 => {
                let v = read_varint(&mut body)?;
                if key >> 3 == 1 {
                    status = v;
                }
            }
            1 if body.remaining() >= 8 => body.advance(8),
            2 => {
                let n = usize::try_from(read_varint(&mut body)?).ok()?;
                if body.remaining() < n {
                    return None;
                }
                body.advance(n);
            }
            5 if body.remaining() >= 4 => body.advance(4),
            _ => return None,
        }
    }
    Some(status)
}

#[async_trait]
impl HealthCheck for GrpcHealthCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        match tokio::time::timeout(self.timeout, self.ask(target)).await {
            Ok(r) => r,
            Err(_) => Err(failed("timed out")),
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.healthy_after
        } else {
            self.unhealthy_after
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_requests_are_grpc_frames_of_the_service_name() {
        assert_eq!(&health_request("")[..], [0, 0, 0, 0, 0]);
        assert_eq!(
            &health_request("a.B")[..],
            [0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
    }

    #[test]
    fn serving_status_reads_the_status_field_and_rejects_malformed_messages() {
        let msg = |m: &[u8]| {
            let mut v = vec![0];
            v.extend_from_slice(&(m.len() as u32).to_be_bytes());
            v.extend_from_slice(m);
            Bytes::from(v)
        };
        assert_eq!(serving_status(msg(&[0x08, 1])), Some(SERVING));
        assert_eq!(serving_status(msg(&[0x08, 2])), Some(2), "NOT_SERVING");
        assert_eq!(serving_status(msg(&[])), Some(0), "absent: UNKNOWN");
        // Unknown fields are skipped.
        assert_eq!(
            serving_status(msg(&[0x12, 1, b'x', 0x08, 1])),
            Some(SERVING)
        );
        assert_eq!(serving_status(msg(&[0x08])), None, "truncated varint");
        assert_eq!(
            serving_status(msg(&[0x12, 5, b'x'])),
            None,
            "field past the end"
        );
        assert_eq!(
            serving_status(Bytes::from_static(&[1, 0, 0, 0, 0])),
            None,
            "compressed"
        );
        assert_eq!(
            serving_status(Bytes::from_static(&[0, 0, 0, 0, 9])),
            None,
            "short"
        );
        assert_eq!(serving_status(Bytes::new()), None);
    }

    fn config(addrs: &str) -> UpstreamConfig {
        let text = format!("upstream: {{ addrs: {addrs} }}");
        crate::config::parse("x.yaml", &text, &|_| None)
            .unwrap()
            .upstream
    }

    #[test]
    fn a_resolution_swaps_the_peers_only_when_the_addresses_changed() {
        let u = Upstreams::new(&config(
            r#"["127.0.0.1:8080", "[::1]:8080", "127.0.0.1:8080"]"#,
        ))
        .unwrap();
        let both: Vec<SocketAddr> = vec![
            "127.0.0.1:8080".parse().unwrap(),
            "[::1]:8080".parse().unwrap(),
        ];
        assert_eq!(
            addrs_of(&u.current()),
            both,
            "one peer per distinct address"
        );
        let before = u.current().clone();
        assert!(Arc::ptr_eq(&before, &u.refresh()), "nothing changed");
        // The last resolution was elsewhere: the next one swaps the addresses in.
        u.resolved.lock().unwrap()[0] = vec!["127.0.0.2:8080".parse().unwrap()];
        let after = u.refresh();
        assert!(!Arc::ptr_eq(&before, &after));
        assert_eq!(addrs_of(&after), both);
    }

    #[test]
    fn a_name_that_stops_resolving_keeps_its_addresses() {
        let config = config(r#"["no-such-host.invalid:80"]"#);
        let kept: SocketAddr = "127.0.0.3:80".parse().unwrap();
        let u = Upstreams {
            resolved: std::sync::Mutex::new(vec![vec![kept]]),
            peers: ArcSwap::from_pointee(peers(&config, &[vec![kept]])),
            config,
        };
        assert_eq!(addrs_of(&u.refresh()), [kept]);
        assert!(
            Upstreams::new(&u.config).is_err(),
            "at start it is an error"
        );
    }
}
