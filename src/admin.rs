//! The admin listener: `/health` and `/stats/{user}`, never reachable through the proxy port.

use crate::proxy::Shared;
use crate::response::ceil_secs;
use async_trait::async_trait;
use http::{Response, StatusCode};
use percent_encoding::percent_decode_str;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::Arc;

/// Serves health and usage; reads from the store, never counts a request.
pub struct Admin {
    pub shared: Arc<Shared>,
    pub instance: String,
}

impl Admin {
    async fn health(&self) -> (StatusCode, Value) {
        let store = match self.shared.decider.store().ping().await {
            Ok(()) => "ok",
            Err(e) => {
                log::warn!("health: store does not answer: {e}");
                "down"
            }
        };
        let status = if store == "ok" { "ok" } else { "degraded" };
        let body = json!({
            "status": status,
            "store": store,
            "backend": self.shared.decider.store().backend_name(),
            "instance": self.instance,
        });
        (StatusCode::OK, body)
    }

    async fn stats(&self, user: &[u8]) -> (StatusCode, Value) {
        let mut routes = Vec::new();
        let decider = &self.shared.decider;
        for route in decider.routes().routes().iter().filter(|r| r.has_limits()) {
            let limits = route.limits_for(user);
            let key = decider.caller_key(&route.name, Some(user));
            let usage = match decider.store().peek(&key, limits).await {
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
                .map(|(l, u)| {
                    json!({
                        "requests": l.requests.get(),
                        "window_s": l.window_secs(),
                        "used": u.used,
                        "remaining": l.requests.get().saturating_sub(u.used),
                        "reset_s": ceil_secs(u.reset),
                    })
                })
                .collect();
            routes.push(json!({"route": route.name, "limits": limits}));
        }
        let user = String::from_utf8_lossy(user);
        (StatusCode::OK, json!({"user": user, "routes": routes}))
    }

    async fn route(&self, method: &http::Method, path: &str) -> (StatusCode, Value) {
        if method != http::Method::GET && method != http::Method::HEAD {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method_not_allowed"}),
            );
        }
        if path == "/health" {
            return self.health().await;
        }
        match path.strip_prefix("/stats/") {
            Some(user) if !user.is_empty() => {
                let user: Vec<u8> = percent_decode_str(user).collect();
                self.stats(&user).await
            }
            _ => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "paths": ["/health", "/stats/{user}"]}),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        let (status, body) = self.route(&method, &path).await;
        let mut body = body.to_string().into_bytes();
        body.push(b'\n');
        let mut response = Response::builder()
            .status(status)
            .header("Content-Type", "application/json")
            .header("Content-Length", body.len())
            .header("Cache-Control", "no-store");
        if method == http::Method::HEAD {
            body.clear();
        } else if status == StatusCode::METHOD_NOT_ALLOWED {
            response = response.header("Allow", "GET, HEAD");
        }
        response.body(body).unwrap_or_default()
    }
}
