//! The admin listener: `/health`, `/metrics` and `/stats/{user}`, never reachable through the
//! proxy port.

use crate::limiter::breaker::StoreStatus;
use crate::limiter::{Algorithm, Kind, Limit, LimitState};
use crate::proxy::Shared;
use crate::response::ceil_secs;
use async_trait::async_trait;
use http::{Response, StatusCode};
use percent_encoding::percent_decode_str;
use pingora::apps::http_app::ServeHttp;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Serves health and usage; reads from the store, never counts a request.
pub struct Admin {
    pub shared: Arc<Shared>,
    pub instance: String,
    /// `server.admin_token`: when set, `/metrics` and `/stats/*` need `Bearer <token>`.
    pub token: Option<String>,
}

impl Admin {
    /// 200 whatever the store's state: every sidecar shares the store, so a load balancer that
    /// pulled the sidecars whose store is away would pull them all. 503 `draining` while the
    /// sidecar shuts down.
    fn health(&self) -> (StatusCode, Value) {
        let store = self.shared.side.store.status();
        let mut body = json!({
            "status": "ok",
            "store": "ok",
            "backend": self.shared.side.store.backend_name(),
            "instance": self.instance,
        });
        let reason = match store {
            StoreStatus::Up => None,
            StoreStatus::Failing { reason } => Some(reason),
            StoreStatus::Open { since, reason } => Some(format!(
                "breaker open since {}: {reason}",
                httpdate::fmt_http_date(since)
            )),
        };
        if let crate::limiter::Store::Redis(r) = &self.shared.side.store {
            if let Some(cluster) = r.cluster_state() {
                body["cluster"] = cluster.into();
            }
        }
        if let Some(reason) = reason {
            body["status"] = "degraded".into();
            body["store"] = "down".into();
            body["reason"] = reason.into();
        }
        if self.shared.drain.is_draining() {
            // Shutting down: balancers and readiness probes take it out of rotation.
            body["status"] = "draining".into();
            return (StatusCode::SERVICE_UNAVAILABLE, body);
        }
        (StatusCode::OK, body)
    }

    /// `user` is the raw identity: with hashed identities it is hashed before it is looked
    /// up, and only the hash is in the answer.
    async fn stats(&self, user: &[u8]) -> (StatusCode, Value) {
        let decider = self.shared.decider.load_full();
        let user = decider.caller_of(user.to_vec());
        let user = user.as_slice();
        let mut routes = Vec::new();
        for stats in decider.stats(user) {
            let (route, plan, limits) = (stats.route, stats.plan, stats.limits);
            let checks: Vec<_> = limits.iter().map(|(_, c)| c.clone()).collect();
            let usage = match decider.store().peek(&checks).await {
                Ok(u) => u,
                Err(e) => {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"error": "store_unavailable", "detail": e.to_string()}),
                    )
                }
            };
            let limits: Vec<Value> = limits
                .iter()
                .zip(usage)
                .map(|((l, _), u)| limit_usage(l, &u))
                .collect();
            let mut entry = json!({"route": route, "limits": limits});
            if let Some(plan) = plan {
                entry["plan"] = plan.into();
            }
            routes.push(entry);
        }
        let user = String::from_utf8_lossy(user);
        (StatusCode::OK, json!({"user": user, "routes": routes}))
    }

    /// Whether `authorization` carries the admin token (always, when none is configured).
    /// The comparison takes the same time wherever the first difference is.
    fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = authorization.and_then(bearer).unwrap_or_default();
        bool::from(given.ct_eq(token.as_bytes()))
    }

    async fn route(&self, req: &RequestHeader) -> Reply {
        let (method, path) = (&req.method, req.uri.path());
        if method != http::Method::GET && method != http::Method::HEAD {
            return Reply::json(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method_not_allowed"}),
            );
        }
        if path == "/health" {
            let (status, body) = self.health();
            return Reply::json(status, body);
        }
        let protected = path == "/metrics" || path.starts_with("/stats/");
        let authorization = req.headers.get(http::header::AUTHORIZATION);
        if protected && !self.authorized(authorization.map(|v| v.as_bytes())) {
            let error = match authorization {
                None => "missing_token",
                Some(_) => "invalid_token",
            };
            return Reply::json(StatusCode::UNAUTHORIZED, json!({"error": error}));
        }
        if path == "/metrics" {
            let side = &self.shared.side;
            let (rollbacks, held) = side.store.counts();
            let held = held + side.fallback.slots_held();
            let dropped = crate::access_log::dropped();
            self.shared.metrics.observe(rollbacks, held, dropped);
            return Reply {
                status: StatusCode::OK,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: self.shared.metrics.render(),
            };
        }
        let (status, body) = match path.strip_prefix("/stats/") {
            Some(user) if !user.is_empty() => {
                let user: Vec<u8> = percent_decode_str(user).collect();
                self.stats(&user).await
            }
            _ => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "paths": ["/health", "/metrics", "/stats/{user}"]}),
            ),
        };
        Reply::json(status, body)
    }
}

/// One limit's definition and its usage, as `/stats` shows it.
fn limit_usage(l: &Limit, u: &LimitState) -> Value {
    let mut limit = match l.kind {
        Kind::Rate(r) => {
            let mut v = json!({
                "requests": r.requests.get(),
                "window_s": r.window_secs(),
                "algorithm": r.algorithm.name(),
            });
            if r.algorithm == Algorithm::Gcra {
                v["burst"] = r.burst.get().into();
            }
            v
        }
        Kind::Concurrency(n) => json!({ "concurrency": n.get() }),
        Kind::Quota(q) => json!({
            "requests": q.requests.get(),
            "period": q.period.name(),
            "timezone": q.tz.name(),
        }),
    };
    limit["per"] = l.per.to_json();
    if let Some(bucket) = &l.bucket {
        limit["bucket"] = bucket.as_ref().into();
    }
    limit["used"] = u.used.into();
    limit["remaining"] = u.remaining.into();
    limit["reset_s"] = ceil_secs(u.reset).into();
    if let Kind::Quota(q) = l.kind {
        limit["reset_at"] = reset_at(u.reset, q.tz).into();
    }
    limit
}

/// When a quota's period ends, in its own zone (RFC 3339, to the second: periods end on whole
/// minutes, and the store's clock and this one differ by far less than a second).
fn reset_at(reset: std::time::Duration, tz: chrono_tz::Tz) -> String {
    let at = std::time::SystemTime::now() + reset + std::time::Duration::from_millis(500);
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .with_timezone(&tz)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// One admin response.
struct Reply {
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: StatusCode, body: Value) -> Reply {
        let mut body = body.to_string().into_bytes();
        body.push(b'\n');
        Reply {
            status,
            content_type: "application/json",
            body,
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let head_only = req.method == http::Method::HEAD;
        let Reply {
            status,
            content_type,
            mut body,
        } = self.route(req).await;
        let mut response = Response::builder()
            .status(status)
            .header("Content-Type", content_type)
            .header("Content-Length", body.len())
            .header("Cache-Control", "no-store");
        if head_only {
            body.clear();
        } else if status == StatusCode::METHOD_NOT_ALLOWED {
            response = response.header("Allow", "GET, HEAD");
        } else if status == StatusCode::UNAUTHORIZED {
            response = response.header("WWW-Authenticate", "Bearer realm=\"sluice admin\"");
        }
        response.body(body).unwrap_or_default()
    }
}

/// The credentials of an `Authorization: Bearer <token>` value. The scheme is matched without
/// regard to case and may be followed by several spaces (RFC 9110 §11.1, §11.4).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    Some(rest.trim_ascii_start())
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn the_bearer_scheme_is_matched_without_regard_to_case() {
        for ok in [&b"Bearer s3cret"[..], b"bearer s3cret", b"BEARER   s3cret"] {
            assert_eq!(bearer(ok), Some(&b"s3cret"[..]), "{ok:?}");
        }
        for no in [&b"Bearers3cret"[..], b"Basic s3cret", b"Bear", b""] {
            assert_eq!(bearer(no), None, "{no:?}");
        }
    }
}
