//! The Pingora `ProxyHttp` implementation: identity → route → limiter → forward or 429.
//!
//! Each phase is short and delegates: `identity`, `routes`, `limiter` and `response` hold the
//! logic; this file only wires it to Pingora's request lifecycle.

use crate::config::OnError;
use crate::identity::{self, IdentityExtractor};
use crate::limiter::denials::DenialCache;
use crate::limiter::{caller_key, Store};
use crate::response::{self, RateLimitHeaders};
use crate::routes::RouteTable;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::{OrErr, Result};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Everything one sidecar needs to decide and forward.
pub struct Sidecar {
    pub routes: RouteTable,
    pub identity: IdentityExtractor,
    pub store: Store,
    /// Refusals answered locally until Redis would certainly refuse again (Redis store only);
    /// shared by every worker of the process.
    denials: Option<Arc<DenialCache>>,
    pub on_error: OnError,
    pub key_prefix: String,
    /// Upstream peers, resolved once at start-up (building a peer from a name resolves it).
    pub peers: Vec<HttpPeer>,
    next_peer: AtomicUsize,
    /// `1.1 <instance>`, added to forwarded requests and to responses (RFC 9110 §7.6.3).
    pub via: String,
}

impl Sidecar {
    pub fn new(
        routes: RouteTable,
        identity: IdentityExtractor,
        store: Store,
        on_error: OnError,
        key_prefix: String,
        peers: Vec<HttpPeer>,
        instance: &str,
    ) -> Self {
        Self {
            routes,
            identity,
            denials: store.is_remote().then(Arc::default),
            store,
            on_error,
            key_prefix,
            peers,
            next_peer: AtomicUsize::new(0),
            via: format!("1.1 {instance}"),
        }
    }

    /// Worker `index` over the same routes, store and denial cache. Each worker keeps its own
    /// round-robin position, starting at its index so the workers do not all begin on the
    /// same upstream.
    pub fn worker(&self, index: usize) -> Self {
        Self {
            routes: self.routes.clone(),
            identity: self.identity.clone(),
            store: self.store.clone(),
            denials: self.denials.clone(),
            on_error: self.on_error,
            key_prefix: self.key_prefix.clone(),
            peers: self.peers.clone(),
            next_peer: AtomicUsize::new(index),
            via: self.via.clone(),
        }
    }

    /// Writes a complete response sluice made itself (429 or 503) and keeps the connection.
    async fn respond(
        &self,
        session: &mut Session,
        (mut head, body): (Box<ResponseHeader>, Bytes),
    ) -> Result<bool> {
        head.append_header("Via", &self.via)?;
        let head_only = session.req_header().method == http::Method::HEAD;
        let written = match session.write_response_header(head, head_only).await {
            Ok(()) if head_only => Ok(()),
            Ok(()) => session.write_response_body(Some(body), true).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            // The client went away; there is nobody left to answer.
            log::debug!("writing a response sluice made failed: {e}");
        }
        Ok(true)
    }
}

/// What `request_filter` learned, for the later phases of the same request.
#[derive(Default)]
pub struct RequestCtx {
    rate_headers: Option<RateLimitHeaders>,
    upstream_tries: usize,
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

#[async_trait]
impl ProxyHttp for Sidecar {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let Some(route) = self.routes.find(req.method.as_str(), req.uri.path()) else {
            return Ok(false);
        };
        let peer = peer_ip(session);
        let caller = self.identity.caller(req.uri.query(), &req.headers, peer);
        let request_id = identity::request_id(&self.identity.trusted, peer, &req.headers);
        let limits = route.limits_for(caller.as_deref().unwrap_or_default());
        if limits.is_empty() {
            return Ok(false);
        }
        let key = caller_key(&self.key_prefix, &route.name, caller.as_deref());
        let denials = self.denials.as_ref();
        // A request with a trusted request id may be a retry that only Redis can recognise.
        if let Some(refused) = denials
            .filter(|_| request_id.is_none())
            .and_then(|d| d.get(&key, Instant::now()))
        {
            let refusal = response::too_many_requests(&route.name, &refused)?;
            return self.respond(session, refusal).await;
        }
        let sent = Instant::now();
        match self.store.check(&key, limits, request_id).await {
            Ok(decision) if decision.is_admitted() => {
                ctx.rate_headers = RateLimitHeaders::new(&route.name, &decision);
                Ok(false)
            }
            Ok(decision) => {
                if let Some(d) = denials {
                    d.insert(&key, &decision, sent, Instant::now());
                }
                let refusal = response::too_many_requests(&route.name, &decision)?;
                self.respond(session, refusal).await
            }
            Err(e) => {
                log::warn!(
                    "store failed on route {}: {e}; on_error={:?}",
                    route.name,
                    self.on_error
                );
                match self.on_error {
                    OnError::Allow => Ok(false),
                    OnError::Deny => {
                        self.respond(session, response::store_unavailable(&route.name)?)
                            .await
                    }
                }
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.upstream_tries += 1;
        let i = self.next_peer.fetch_add(1, Ordering::Relaxed) % self.peers.len();
        Ok(Box::new(self.peers[i].clone()))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<pingora::Error>,
    ) -> Box<pingora::Error> {
        // Nothing was sent yet: another upstream can take the request.
        if ctx.upstream_tries < self.peers.len() {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(ip) = peer_ip(session) {
            // Appended as bytes: what earlier hops wrote reaches the upstream as it was.
            let mut forwarded = Vec::new();
            for prior in upstream.headers.get_all("x-forwarded-for") {
                forwarded.extend_from_slice(prior.as_bytes());
                forwarded.extend_from_slice(b", ");
            }
            forwarded.extend_from_slice(ip.to_string().as_bytes());
            let value = http::HeaderValue::from_bytes(&forwarded)
                .or_err(pingora::ErrorType::InternalError, "X-Forwarded-For")?;
            upstream.insert_header("X-Forwarded-For", value)?;
        }
        upstream.append_header("Via", &self.via)?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(h) = &ctx.rate_headers {
            h.apply(upstream)?;
        }
        upstream.append_header("Via", &self.via)?;
        Ok(())
    }
}
