//! The Pingora `ProxyHttp` implementation: each phase is short and hands its work to the
//! [`Decider`] (what to do) or [`response`] (what clients see).

use crate::access_log::{self, Entry};
use crate::config::{AccessLog, CallerInLog};
use crate::decision::{throttle, Action, Decider, RequestHead, Settle, Verdict};
use crate::forwarded;
use crate::grpc;
use crate::limiter::side::Held;
use crate::limiter::StoreSide;
use crate::metrics::{Metrics, UpstreamError};
use crate::response::{self, RateLimitHeaders, Refusal};
use crate::shutdown::{Drain, InFlight};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::{selection::RoundRobin, LoadBalancer};
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::protocols::http::HttpTask;
use pingora::proxy::FailToProxy;
use pingora::Result;
use pingora::{ErrorSource, ErrorType};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What every worker shares: built once, behind one `Arc`.
pub struct Shared {
    /// The current rules; a reload swaps in a new one (in-flight requests keep theirs).
    pub decider: ArcSwap<Decider>,
    /// The store and what derives from its data: outlives reloads.
    pub side: Arc<StoreSide>,
    pub metrics: Arc<Metrics>,
    /// Upstream peers, resolved at start-up and again every `upstream.resolve_every`.
    pub upstreams: Arc<crate::upstream::Upstreams>,
    /// `1.1 <instance>`, added to forwarded requests and to responses (RFC 9110 §7.6.3).
    pub via: http::HeaderValue,
    /// Whether the sidecar is draining (shutting down), and its requests in flight.
    pub drain: Arc<Drain>,
    /// The TLS listener's certificate, re-read on SIGHUP.
    pub tls: Option<Arc<crate::tls::Certificate>>,
    /// The upstream addresses' health, when they are checked (the same addresses as `upstreams`).
    pub health: Option<Arc<LoadBalancer<RoundRobin>>>,
}

/// One proxy worker: the shared state and its own round-robin position.
pub struct Worker {
    shared: Arc<Shared>,
    next_peer: AtomicUsize,
}

impl Worker {
    /// Worker `index`: it starts its round robin at its index so the workers do not all begin
    /// on the same upstream.
    pub fn new(shared: Arc<Shared>, index: usize) -> Self {
        Self {
            shared,
            next_peer: AtomicUsize::new(index),
        }
    }

    /// Settles the request's response-dependent counts by `status` and the response's
    /// `headers` (`None`: the upstream sent none), once.
    async fn settle(&self, ctx: &mut RequestCtx, status: u16, headers: Option<&http::HeaderMap>) {
        if let (Some(settle), Some((decider, _))) = (ctx.settle.take(), &ctx.decided) {
            decider.settle(settle, status, headers).await;
        }
    }

    /// Writes a complete response sluice made itself and keeps the connection.
    async fn respond(
        &self,
        session: &mut Session,
        (mut head, body): (Box<ResponseHeader>, Bytes),
    ) -> Result<bool> {
        head.append_header("Via", self.shared.via.clone())?;
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

    /// Sends a gRPC answer sluice made: its head alone, ending the stream (trailers-only: one
    /// HEADERS frame with END_STREAM; a client reads `grpc-status` only from such a frame or
    /// from trailers). Written as a task, since Pingora's `write_response_header` never ends an
    /// HTTP/2 stream with its head.
    async fn respond_grpc(&self, session: &mut Session, mut head: ResponseHeader) -> Result<bool> {
        head.append_header("Via", self.shared.via.clone())?;
        let task = HttpTask::Header(Box::new(head), true);
        if let Err(e) = session
            .downstream_session
            .response_duplex_vec(vec![task])
            .await
        {
            log::debug!("writing a gRPC answer sluice made failed: {e}");
        }
        Ok(true)
    }
}

/// What `request_filter` learned, for the later phases of the same request.
#[derive(Default)]
pub struct RequestCtx {
    /// Whether the TCP peer is a trusted proxy (its forwarding headers are appended to).
    peer_trusted: bool,
    /// A gRPC call: what sluice answers itself is answered the gRPC way.
    grpc: bool,
    rate_headers: Option<RateLimitHeaders>,
    /// How long a throttle held the request (`Sluice-Delay` on its response).
    delay: Option<Duration>,
    /// The response's status, kept for a settlement that waits for the trailers.
    settle_status: u16,
    /// The in-flight slots this request holds, given back in `logging` (which runs for every
    /// request: answered here, proxied, failed upstream, or left by its client).
    held: Option<Held>,
    /// Boxed, as `log` is: most requests carry neither, and the context is moved whole
    /// through Pingora's request future (a smaller one is copied faster).
    rewrite: Option<Box<http::Uri>>,
    /// Counts the response decides (limits that count by outcome), settled as soon as its
    /// status is known and before the client sees it.
    settle: Option<Box<Settle>>,
    upstream_tries: usize,
    /// The rules this request was decided on and its route, for counting an upstream failure.
    decided: Option<(Arc<Decider>, Option<usize>)>,
    /// The access log's entry, while one is written.
    log: Option<Box<LogCtx>>,
    /// Counts the request in flight (a draining sidecar exits once none is left).
    _in_flight: Option<InFlight>,
}

struct LogCtx {
    format: (AccessLog, CallerInLog),
    entry: Entry,
    started: Instant,
    upstream_sent: Option<Instant>,
}

/// Waits `delay` unless the client leaves first: whether it is still there. A client leaving is
/// seen on a bodyless HTTP/1.1 request (its connection closed) and on HTTP/2 (its stream reset
/// or closed); a request with a body unread waits out its delay (reading the body to watch the
/// connection would take it from the upstream).
async fn client_waits(session: &mut Session, delay: Duration) -> bool {
    let sleep = tokio::time::sleep(delay);
    if session.as_http1().is_some() && session.is_body_empty() {
        tokio::select! {
            _ = sleep => true,
            _ = session.read_body_or_idle(true) => false,
        }
    } else if let Some(closed) = session.watch_h2_stream_close() {
        tokio::select! {
            _ = sleep => true,
            _ = closed => false,
        }
    } else {
        sleep.await;
        true
    }
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

#[async_trait]
impl ProxyHttp for Worker {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            _in_flight: Some(self.shared.drain.enter()),
            ..RequestCtx::default()
        }
    }

    /// No downstream modules: Pingora's default is a response-compression module at level 0
    /// (off), whose context is still built and consulted on every request.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if self.shared.drain.is_draining() {
            // Shutting down: this response closes its connection (`Connection: close`), so a
            // keep-alive client reconnects, through its balancer, to a sidecar that stays.
            session.set_keepalive(None);
        }
        let started = Instant::now();
        let decider = self.shared.decider.load_full();
        let peer = peer_ip(session);
        ctx.peer_trusted = peer.is_some_and(|p| decider.trusts(p));
        ctx.grpc = grpc::is_call(&session.req_header().headers);
        // A throttled route's request may wait and be decided again, until it is admitted,
        // refused, or its client leaves.
        let mut waited = Duration::ZERO;
        // Its ticket in its limit's waiting queue, while it waits.
        let mut ticket = None;
        let verdict = loop {
            let req = session.req_header();
            let head = RequestHead {
                method: &req.method,
                raw_target: req.raw_path(),
                path: req.uri.path(),
                query: req.uri.query(),
                headers: &req.headers,
                peer,
            };
            let verdict = decider.decide_after(&head, waited, ticket.is_some()).await;
            match verdict.action {
                Action::Wait(mut wait) => {
                    if let Some(t) = wait.ticket.take() {
                        ticket = Some(t);
                    }
                    if !client_waits(session, wait.delay).await {
                        // Gone while it waited: nothing was counted, and nobody to answer.
                        if let Some(t) = ticket {
                            self.shared.side.release(t).await;
                        }
                        session.set_keepalive(None);
                        return Ok(true);
                    }
                    waited = started.elapsed();
                }
                action => {
                    // Admitted or refused: out of the queue.
                    if let Some(t) = ticket {
                        self.shared.side.release(t).await;
                    }
                    break Verdict {
                        action,
                        trace: verdict.trace,
                    };
                }
            }
        };
        let req = session.req_header();
        let route_index = verdict.trace.route_index;
        let format = decider.access_log();
        if format.0 != AccessLog::Off {
            let trace = verdict.trace;
            ctx.log = Some(Box::new(LogCtx {
                format,
                entry: Entry {
                    time: SystemTime::now(),
                    method: req.method.to_string(),
                    path: req.uri.path().to_string(),
                    route: trace.route.map(str::to_string),
                    caller: trace.caller,
                    decision: trace.decision,
                    status: 0,
                    upstream: None,
                    total: Default::default(),
                },
                started,
                upstream_sent: None,
            }));
        }
        let refusal = match verdict.action {
            Action::Forward(forward) => {
                ctx.rate_headers = forward.rate_headers;
                ctx.delay = forward.delay;
                ctx.rewrite = forward.rewrite.map(Box::new);
                ctx.held = forward.held;
                ctx.settle = forward.settle;
                // Moved, not cloned: the request already holds this reference.
                ctx.decided = Some((decider, route_index));
                return Ok(false);
            }
            Action::Refuse(refusal) => {
                let response = response::refusal(&refusal)?;
                if ctx.grpc {
                    let code = match refusal {
                        Refusal::Limited { .. } => grpc::Code::ResourceExhausted,
                        Refusal::StoreUnavailable { .. } => grpc::Code::Unavailable,
                        _ => grpc::code_of(response.0.status.as_u16()),
                    };
                    let answer = grpc::answer(&response.0, &response.1, code)?;
                    return self.respond_grpc(session, answer).await;
                }
                response
            }
            Action::Wait(_) => unreachable!("the loop above waits"),
        };
        self.respond(session, refusal).await
    }

    /// A request let through that then failed: the upstream timed out (504) or could not be
    /// reached (502), counted on its route in `sluice_upstream_errors_total`; or the request
    /// itself broke, counted in `sluice_proxy_errors_total`. The client gets sluice's JSON
    /// error, never Pingora's bare one, and the access-log line has the status.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // Pingora's own mapping of an error to a status (ProxyHttp::fail_to_proxy).
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        // The upstream's failures are counted on the route; a timeout is 504, the rest 502.
        let upstream = (e.esource() == &ErrorSource::Upstream).then(|| {
            let kind = match e.etype() {
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => UpstreamError::Timeout,
                _ => UpstreamError::Unavailable,
            };
            if let Some((decider, route)) = &ctx.decided {
                decider.upstream_error(*route, kind);
            }
            kind
        });
        let code = match upstream {
            Some(kind) if code == 502 => kind.answer().0,
            _ => code,
        };
        self.settle(ctx, code, None).await;
        // Nothing can be sent once the response has begun (or the client has gone).
        if code > 0 && session.response_written().is_none() {
            let format = match &ctx.decided {
                Some((decider, Some(route))) => decider.routes().routes()[*route].refusal.format,
                _ => crate::refusal::Format::Json,
            };
            if let Ok((reason, response)) = response::proxy_error(code, format) {
                if upstream.is_none() {
                    self.shared
                        .metrics
                        .proxy_errors
                        .with_label_values(&[reason])
                        .inc();
                }
                if ctx.grpc {
                    if let Ok(answer) = grpc::answer(&response.0, &response.1, grpc::code_of(code))
                    {
                        let _ = self.respond_grpc(session, answer).await;
                    }
                } else {
                    let _ = self.respond(session, response).await;
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.upstream_tries += 1;
        let peers = self.shared.upstreams.current();
        let mut peer = match &self.shared.health {
            // The next address in rotation that passes its health checks; none: 502 at once.
            Some(lb) => {
                let healthy = lb
                    .select(b"", 256)
                    .and_then(|b| peers.iter().find(|p| p._address == b.addr));
                let Some(peer) = healthy else {
                    let mut e = pingora::Error::explain(
                        ErrorType::ConnectNoRoute,
                        "every upstream address fails its health checks",
                    );
                    e.esource = ErrorSource::Upstream;
                    return Err(e);
                };
                Box::new(peer.clone())
            }
            None => {
                let i = self.next_peer.fetch_add(1, Ordering::Relaxed) % peers.len();
                Box::new(peers[i].clone())
            }
        };
        // A route's own deadline replaces the upstream's read timeout for its requests.
        if let Some((decider, Some(route))) = &ctx.decided {
            if let Some(timeout) = decider.routes().routes()[*route].timeout {
                peer.options.read_timeout = Some(timeout);
            }
        }
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<pingora::Error>,
    ) -> Box<pingora::Error> {
        // Nothing was sent yet: another upstream can take the request.
        if ctx.upstream_tries < self.shared.upstreams.current().len() {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(log) = &mut ctx.log {
            log.upstream_sent = Some(Instant::now());
        }
        // The path the route was chosen by is the path the upstream receives.
        if let Some(uri) = &ctx.rewrite {
            upstream.set_uri(http::Uri::clone(uri));
        }
        if let Some(ip) = peer_ip(session) {
            for (name, value) in forwarded::rewrite(ip, ctx.peer_trusted, &upstream.headers) {
                match value {
                    Some(v) => upstream.insert_header(name, v)?,
                    None => {
                        upstream.remove_header(name);
                    }
                }
            }
        }
        upstream.append_header("Via", self.shared.via.clone())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream.status.is_informational()
            && upstream.status != http::StatusCode::SWITCHING_PROTOCOLS
        {
            // An interim response (100 Continue, 103 Early Hints): the final one follows, and it
            // is the one counted, settled and given the RateLimit headers.
            upstream.append_header("Via", self.shared.via.clone())?;
            return Ok(());
        }
        self.shared
            .metrics
            .upstream_status(upstream.status.as_u16());
        if let Some(log) = &mut ctx.log {
            log.entry.upstream = log.upstream_sent.map(|t| t.elapsed());
        }
        let status = upstream.status.as_u16();
        match &ctx.decided {
            // The cost comes in the trailers: settled when they arrive (or in `logging`).
            Some((decider, Some(route))) if decider.settles_at_trailers(*route) => {
                ctx.settle_status = status;
            }
            _ => self.settle(ctx, status, Some(&upstream.headers)).await,
        }
        if let Some(h) = ctx.rate_headers.take() {
            h.apply(upstream)?;
        }
        if let Some(waited) = ctx.delay {
            upstream.insert_header("Sluice-Delay", throttle::delay_header(waited))?;
        }
        upstream.append_header("Via", self.shared.via.clone())?;
        Ok(())
    }

    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Bytes>> {
        let status = ctx.settle_status;
        self.settle(ctx, status, Some(trailers)).await;
        Ok(None)
    }

    async fn logging(
        &self,
        session: &mut Session,
        _e: Option<&pingora::Error>,
        ctx: &mut RequestCtx,
    ) {
        if let Some(held) = ctx.held.take() {
            self.shared.side.release(held).await;
        }
        // No response reached the settlement (the client left first): no status matched.
        let status = session.response_written().map_or(0, |h| h.status.as_u16());
        self.settle(ctx, status, None).await;
        let Some(mut log) = ctx.log.take() else {
            return;
        };
        log.entry.status = session.response_written().map_or(0, |h| h.status.as_u16());
        log.entry.total = log.started.elapsed();
        if let Some(line) = log.entry.line(log.format.0, log.format.1) {
            access_log::write(line);
        }
    }
}
