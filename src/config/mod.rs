//! Configuration: the YAML file model ([`file`](mod@file)) and the validated runtime model built from it.
//!
//! `load` reads a file, applies the `SLUICE_*` environment overrides, and validates everything
//! at once, reporting every problem (not just the first) as `FILE: FIELD.PATH: message`.
//! Runtime code only ever sees [`Config`], whose types cannot hold an invalid value.

pub mod defaults;
mod duration;
mod fields;
pub mod file;
mod limits;
mod validate;

pub use duration::{format_duration, parse_duration, DURATION_HINT};

use crate::identity::{IdentityExtractor, RequestIds};
pub use crate::limiter::{Backend, OnError, StoreConfig};
use crate::routes::RouteTable;
use std::path::Path;
use std::time::Duration;

/// The validated configuration of one sidecar.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub store: StoreConfig,
    pub identity: IdentityExtractor,
    /// Load-balancer request ids (idempotent retries); `None` ignores them.
    pub request_ids: Option<RequestIds>,
    pub routes: RouteTable,
    /// Plans and how a request's plan is chosen; `None` when none is defined.
    pub plans: Option<std::sync::Arc<crate::plans::Plans>>,
    /// Settings that are valid but can never take effect, one line each (`--check` prints
    /// them and exits 0; a sidecar logs them at start and on reload).
    pub warnings: Vec<String>,
    /// Which settings came from the environment instead of the file, one line each, without
    /// their values (logged at start and on reload).
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Proxy listener, an IP socket address (`0.0.0.0:8080`, `[::1]:8080`).
    pub listen: String,
    /// Admin listener (health, stats); loopback by default.
    pub admin_listen: String,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// This instance's name in `/health` and in `Via` headers.
    pub instance: String,
    /// How long a sidecar told to stop (SIGTERM) keeps accepting before it drains and exits.
    pub grace_period: Duration,
    /// Then, how long requests in flight may take to finish before they are closed.
    pub drain_timeout: Duration,
    /// A request whose head (request line and headers) is larger gets 431.
    pub max_header_bytes: usize,
    /// A request whose target (path and query) is longer gets 414.
    pub max_uri_bytes: usize,
    /// When set, the admin listener's `/metrics` and `/stats/*` need `Bearer <token>`.
    pub admin_token: Option<String>,
    /// One line per request on stdout, or none.
    pub access_log: AccessLog,
    /// Whether the access log shows callers as they are or hashed.
    pub access_log_caller: CallerInLog,
    /// Clients may speak HTTP/2 with prior knowledge (h2c) on the proxy listener.
    pub h2c: bool,
    /// The TLS listener, when there is one.
    pub tls: Option<TlsListener>,
}

/// `server.tls`: a listener that speaks TLS (ALPN `h2`, `http/1.1`) with this certificate,
/// whose files are re-read on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    pub listen: String,
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
}

/// `server.access_log`: off (the default, for speed), `text` or `json`, one line per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Text,
    Json,
}

/// `server.access_log_caller`: `hashed` (default: a 64-bit FNV-1a hash, so lines can be
/// correlated without storing identities) or `plain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerInLog {
    Hashed,
    Plain,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// `host:port` addresses, resolved at start-up and every `resolve_every`, used round robin.
    pub addrs: Vec<String>,
    /// How often the names in `addrs` are resolved again (DNS failover, Kubernetes Services).
    pub resolve_every: Duration,
    pub connect_timeout: Duration,
    /// How long an idle pooled upstream connection is kept; below the upstream's own keep-alive.
    pub idle_timeout: Duration,
    /// How long one read from the upstream may wait (the response head included, and each
    /// read of a stream): exceeded → 504 `upstream_timeout`.
    pub read_timeout: Duration,
    /// How long one write to the upstream may wait (a request body it does not read).
    pub write_timeout: Duration,
    pub protocol: UpstreamProtocol,
    /// TLS to the upstream, when it speaks HTTPS.
    pub tls: Option<UpstreamTls>,
    /// Active health checks: an address that fails them leaves the rotation.
    pub health_check: Option<HealthCheck>,
}

/// `upstream.health_check`: every `interval`, each address is asked (see [`HealthCheckKind`])
/// within `timeout`; `unhealthy_after` failures in a row take it out of the rotation,
/// `healthy_after` successes bring it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: usize,
    pub healthy_after: usize,
}

/// How an upstream address is asked whether it is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// `path: /healthz`: `GET path` answers 200.
    Http(String),
    /// `grpc: true`: `grpc.health.v1.Health/Check` for this service ("": the whole server)
    /// answers SERVING.
    Grpc(String),
    /// Neither: a TCP (or TLS) connection opens.
    Tcp,
}

/// `upstream.tls`: the name to send and verify (default: each address's host), the CA that
/// signed the upstream's certificate (default: the system's), and whether to verify at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub sni: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
    pub verify: bool,
}

/// What sluice speaks to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge, without TLS (a gRPC server): every request, whatever the
    /// client spoke, goes upstream as HTTP/2, many on one connection.
    H2c,
    /// HTTP/2 over TLS (ALPN h2): needs `upstream.tls`.
    H2,
}

/// Every problem found in a config file, one line each, ready for stderr.
#[derive(Debug, thiserror::Error)]
#[error("{}", .lines.join("\n"))]
pub struct ConfigError {
    pub lines: Vec<String>,
}

/// Reads `path`, applies the environment overrides from `env`, and validates the result.
///
/// `env` is a lookup (normally `std::env::var`) so tests can pass their own environment.
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        lines: vec![format!("{shown}: cannot read config file: {e}")],
    })?;
    parse(&shown, &text, env)
}

/// Validates config `text`; `name` is the file name that every message starts with.
pub fn parse(
    name: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let prefix = |problems: Vec<String>| ConfigError {
        lines: problems
            .into_iter()
            .map(|p| format!("{name}: {p}"))
            .collect(),
    };
    let parsed = validate::deserialize(text);
    let mut problems = parsed.problems;
    let Some(file) = parsed.file else {
        return Err(prefix(problems));
    };
    let mut config = match validate::build(file, env) {
        Ok(config) if problems.is_empty() => config,
        Ok(_) => return Err(prefix(problems)),
        Err(more) => {
            problems.extend(more);
            return Err(prefix(problems));
        }
    };
    for w in &mut config.warnings {
        *w = format!("{name}: {w}");
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentitySource;
    use crate::routes::PathMatch;

    const EXAMPLE: &str = r#"
server: { listen: "0.0.0.0:8080", admin_listen: "127.0.0.1:9090", threads: 4 }
upstream: { addrs: ["127.0.0.1:9000", "upstream:9001"] }
store: { backend: redis, url: "redis://127.0.0.1:6379", timeout: 100ms, on_error: deny }
identity: [{ query: user_id }, { header: X-User-Id }, { client_ip: true }]
routes:
  - name: api
    match: { path_prefix: /api/, methods: [get, POST] }
    limits: [{ requests: 100, window: 60s }, { requests: 1000, window: 1h }]
    overrides:
      vip: { limits: [{ requests: 1000, window: 60s }] }
  - name: open
    match: { path_prefix: / }
    limits: []
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// Every environment variable of docs/configuration.md replaces the file's setting of the
    /// same thing; an empty one counts as unset; the sources are named, the values never.
    #[test]
    fn the_environment_wins_over_the_file_and_empty_means_unset() {
        let dir = std::env::temp_dir().join(format!("sluice-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("token");
        std::fs::write(&token_file, "file-token-0123456789\n").unwrap();
        let file = format!(
            "server: {{ listen: \"127.0.0.1:1\", admin_listen: \"127.0.0.1:2\", instance: file, admin_token_file: \"{}\" }}\nupstream: {{ addrs: [\"file:1\"] }}\nstore: {{ backend: redis, url: \"redis://:filepw@file:6379\" }}\n",
            token_file.display()
        );
        let vars = [
            ("SLUICE_LISTEN", "127.0.0.1:11"),
            ("SLUICE_ADMIN_LISTEN", "127.0.0.1:12"),
            ("SLUICE_INSTANCE", "env"),
            ("SLUICE_ADMIN_TOKEN", "env-token-0123456789"),
            ("SLUICE_UPSTREAMS", "env:1,env:2"),
            ("SLUICE_REDIS_URL", "redis://:envpw@env:6379"),
        ];
        let all = |k: &str| {
            vars.iter()
                .find(|(v, _)| *v == k)
                .map(|(_, x)| x.to_string())
        };
        let c = parse("x.yaml", &file, &all).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:11");
        assert_eq!(c.server.admin_listen, "127.0.0.1:12");
        assert_eq!(c.server.instance, "env");
        assert_eq!(
            c.server.admin_token.as_deref(),
            Some("env-token-0123456789")
        );
        assert_eq!(c.upstream.addrs, ["env:1", "env:2"]);
        assert_eq!(
            c.store.backend,
            Backend::Redis {
                url: "redis://:envpw@env:6379".into()
            }
        );
        assert!(c
            .sources
            .contains(&"server.admin_token: from the environment (SLUICE_ADMIN_TOKEN), instead of the file's server.admin_token_file".to_string()));
        assert_eq!(c.sources.len(), vars.len(), "{:?}", c.sources);
        let text = c.sources.join("\n");
        assert!(
            !text.contains("env-token") && !text.contains("envpw"),
            "{text}"
        );
        // The cluster seeds replace the file's single URL.
        let nodes = |k: &str| {
            (k == "SLUICE_REDIS_NODES").then(|| "redis://n1:7000, redis://n2:7000".to_string())
        };
        let c = parse("x.yaml", &file, &nodes).unwrap();
        assert_eq!(
            c.store.backend,
            Backend::RedisCluster {
                nodes: vec!["redis://n1:7000".into(), "redis://n2:7000".into()]
            }
        );
        // Empty (or blank) variables are unset: the file's values stay.
        let empty = |k: &str| vars.iter().any(|(v, _)| *v == k).then(|| " ".to_string());
        let c = parse("x.yaml", &file, &empty).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:1");
        assert_eq!(c.server.instance, "file");
        assert_eq!(
            c.server.admin_token.as_deref(),
            Some("file-token-0123456789")
        );
        assert_eq!(c.upstream.addrs, ["file:1"]);
        assert!(c.sources.is_empty(), "{:?}", c.sources);
        // A password is never printed, not even in the start-up line's form of the store.
        assert_eq!(
            format!("{:?}", c.store.backend),
            "redis redis://:***@file:6379"
        );
    }

    #[test]
    fn the_documented_example_parses_into_the_runtime_model() {
        let c = parse("x.yaml", EXAMPLE, &no_env).unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:8080");
        assert_eq!(c.server.threads, 4);
        assert_eq!(c.upstream.addrs, ["127.0.0.1:9000", "upstream:9001"]);
        assert_eq!(
            c.store.backend,
            Backend::Redis {
                url: "redis://127.0.0.1:6379".into()
            }
        );
        assert_eq!(c.store.timeout, Duration::from_millis(100));
        assert_eq!(c.store.on_error, OnError::Deny);
        assert_eq!(c.store.prefix, "sluice:");
        assert_eq!(
            c.identity.sources[1],
            IdentitySource::Header(http::HeaderName::from_static("x-user-id"))
        );
        let api = &c.routes.routes()[0];
        assert_eq!(api.path, PathMatch::Prefix("/api/".into()));
        assert_eq!(
            api.methods.as_deref(),
            Some(&["GET".to_string(), "POST".to_string(), "HEAD".to_string()][..]),
            "HEAD is covered wherever GET is"
        );
        let window = |l: &crate::limiter::Limit| l.rate().map(|r| r.window);
        assert_eq!(window(&api.limits[1]), Some(Duration::from_secs(3600)));
        assert_eq!(api.limits_for(b"vip")[0].kind.amount(), 1000);
        assert!(c.routes.routes()[1].limits.is_empty());
    }

    #[test]
    fn identity_policies_have_global_defaults_that_routes_override() {
        use crate::identity::OnMissingIdentity;
        let text = r#"
upstream: { addrs: ["h:1"] }
identity:
  - jwt: { claim: sub, secret_env: SLUICE_TEST_JWT_SECRET, header: x-id-token }
on_missing_identity: reject
exempt: { preflight: false, callers: [ops] }
routes:
  - name: a
    match: { path_prefix: /a/ }
    limits: [{ requests: 1, window: 1s }]
  - name: b
    match: { path_prefix: / }
    on_missing_identity: skip
    exempt: { preflight: true }
    limits: [{ requests: 1, window: 1s }]
"#;
        let env = |k: &str| {
            (k == "SLUICE_TEST_JWT_SECRET").then(|| "0123456789abcdef0123456789abcdef".into())
        };
        let c = parse("x.yaml", text, &env).unwrap();
        let (a, b) = (&c.routes.routes()[0], &c.routes.routes()[1]);
        assert_eq!(a.on_missing_identity, OnMissingIdentity::Reject);
        assert_eq!(b.on_missing_identity, OnMissingIdentity::Skip);
        assert!(!a.exempt.preflight && b.exempt.preflight);
        assert!(a.exempt.callers.contains(b"ops".as_slice()));
        assert!(
            b.exempt.callers.contains(b"ops".as_slice()),
            "a route's list adds to the global"
        );
        // The secret came from the environment: a token signed with it names its caller, read
        // from the configured header (with or without a Bearer scheme).
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"sub": "zed", "exp": jsonwebtoken::get_current_timestamp() + 60}),
            &jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        for value in [token.clone(), format!("Bearer {token}")] {
            let mut h = http::HeaderMap::new();
            h.insert("x-id-token", value.parse().unwrap());
            assert_eq!(c.identity.caller(None, &h, None), Ok(Some(b"zed".to_vec())));
        }
        let mut h = http::HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert_eq!(
            c.identity.caller(None, &h, None),
            Ok(None),
            "only the configured header"
        );
    }

    #[test]
    fn a_file_without_store_uses_memory_and_defaults() {
        let c = parse("x.yaml", "upstream: { addrs: [\"h:1\"] }", &no_env).unwrap();
        assert_eq!(c.store.backend, Backend::Memory);
        assert_eq!(c.store.on_error, OnError::Allow);
        assert_eq!(c.store.timeout, Duration::from_millis(500));
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.server.admin_listen, "127.0.0.1:9090");
        assert_eq!(c.identity.sources.len(), 3);
        assert!(c.identity.trusted.0.is_empty(), "trust nobody by default");
        assert!(c.server.instance.ends_with(":8080"));
    }

    #[test]
    fn environment_overrides_win_over_the_file() {
        let env = |k: &str| match k {
            "SLUICE_LISTEN" => Some("127.0.0.1:1".to_string()),
            "SLUICE_ADMIN_LISTEN" => Some("127.0.0.1:2".to_string()),
            "SLUICE_UPSTREAMS" => Some("a:1, b:2".to_string()),
            "SLUICE_REDIS_URL" => Some("redis://r:6379".to_string()),
            "SLUICE_INSTANCE" => Some("east-1".to_string()),
            _ => None,
        };
        let c = parse("x.yaml", "upstream: { addrs: [\"h:1\"] }", &env).unwrap();
        assert_eq!(
            (c.server.listen.as_str(), c.server.admin_listen.as_str()),
            ("127.0.0.1:1", "127.0.0.1:2")
        );
        assert_eq!(c.upstream.addrs, ["a:1", "b:2"]);
        assert_eq!(
            c.store.backend,
            Backend::Redis {
                url: "redis://r:6379".into()
            }
        );
        assert_eq!(c.server.instance, "east-1");
    }

    #[test]
    fn every_problem_is_reported_with_file_and_path() {
        let text = "upstream: { addrs: [] }\nstore: { timeout: 0ms }\nroutes: [{ name: a, match: { path: x } }]";
        let e = parse("f.yaml", text, &no_env).unwrap_err();
        assert_eq!(
            e.lines,
            [
                "f.yaml: upstream.addrs: at least one address is required (e.g. [\"127.0.0.1:9000\"])",
                "f.yaml: store.timeout: must be longer than 0",
                "f.yaml: routes[0].match.path: must start with \"/\" (got \"x\")",
            ]
        );
    }

    #[test]
    fn a_tls_ca_file_goes_with_rediss_urls_or_cluster_nodes() {
        let ca = std::env::temp_dir().join(format!("sluice-ca-{}.pem", std::process::id()));
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let ca = ca.display();
        let store = |s: &str| {
            format!("upstream: {{ addrs: [\"h:1\"] }}\nstore: {{ {s}, tls_ca_file: \"{ca}\" }}")
        };
        let cluster = store("backend: redis_cluster, nodes: [\"rediss://10.0.0.1:7000\"]");
        assert!(parse("x.yaml", &cluster, &no_env).is_ok());
        assert!(parse("x.yaml", &store("url: \"rediss://r:6380\""), &no_env).is_ok());
        let plain = parse("x.yaml", &store("url: \"redis://r:6379\""), &no_env).unwrap_err();
        assert_eq!(
            plain.lines,
            ["x.yaml: store.tls_ca_file: needs a rediss:// store.url or store.nodes (TLS)"]
        );
    }

    #[test]
    fn calendar_quotas_parse_with_their_zone_and_refuse_what_they_cannot_be() {
        let limits = |l: &str| {
            format!(
                "upstream: {{ addrs: [\"h:1\"] }}\nroutes: [{{ name: a, match: {{ path_prefix: / }}, limits: [{l}] }}]"
            )
        };
        let c = parse(
            "x.yaml",
            &limits("{ requests: 100000, period: month, timezone: Europe/Berlin }, { requests: 10, period: day }"),
            &no_env,
        )
        .unwrap();
        let route = &c.routes.routes()[0];
        let crate::limiter::Kind::Quota(q) = route.limits[0].kind else {
            panic!("{:?}", route.limits[0]);
        };
        assert_eq!(
            (q.requests.get(), q.label()),
            (100_000, "month Europe/Berlin".to_string())
        );
        assert!(
            matches!(route.limits[1].kind, crate::limiter::Kind::Quota(q) if q.tz == chrono_tz::UTC)
        );
        let problems = |l: &str| parse("x.yaml", &limits(l), &no_env).unwrap_err().lines;
        assert_eq!(
            problems("{ requests: 5, period: fortnight }"),
            ["x.yaml: routes[0].limits[0].period: unknown period \"fortnight\" (use day, week or month; for a sliding window use window:)"]
        );
        assert_eq!(
            problems("{ requests: 5, period: day, timezone: Mars/Olympus }"),
            ["x.yaml: routes[0].limits[0].timezone: unknown time zone \"Mars/Olympus\" (an IANA name such as Europe/Berlin, America/New_York or UTC)"]
        );
        assert_eq!(
            problems("{ requests: 5, period: day, window: 1d }"),
            ["x.yaml: routes[0].limits[0]: period cannot be combined with window, algorithm or burst (a quota counts per calendar period; make two limits)"]
        );
        assert_eq!(
            problems("{ requests: 5, window: 1d, timezone: UTC }"),
            ["x.yaml: routes[0].limits[0].timezone: applies to a calendar quota only (period: day, week or month)"]
        );
        assert_eq!(
            problems("{ requests: 5, period: day }, { requests: 9, period: day, timezone: UTC }"),
            ["x.yaml: routes[0].limits[1]: duplicate limit: the same period day UTC and per caller as routes[0].limits[0] (give each its own window, period or per)"]
        );
        assert_eq!(
            problems("{ period: week }"),
            ["x.yaml: routes[0].limits[0]: a quota needs requests (how many per period)"]
        );
    }

    #[test]
    fn a_throttle_needs_a_max_delay_of_at_most_a_minute() {
        let route = |t: &str| {
            format!(
                "upstream: {{ addrs: [\"h:1\"] }}\nroutes: [{{ name: a, match: {{ path_prefix: / }}, limits: [{{ requests: 1, window: 1s }}], throttle: {t} }}]"
            )
        };
        let c = parse("x.yaml", &route("{ max_delay: 2s }"), &no_env).unwrap();
        let t = c.routes.routes()[0].throttle.unwrap();
        assert_eq!((t.max_delay, t.max_waiting), (Duration::from_secs(2), 1000));
        let problems = |t: &str| parse("x.yaml", &route(t), &no_env).unwrap_err().lines;
        assert_eq!(
            problems("{ max_waiting: 5 }"),
            ["x.yaml: routes[0].throttle: needs max_delay (how long a request may wait, e.g. 2s)"]
        );
        assert_eq!(
            problems("{ max_delay: 2m }"),
            ["x.yaml: routes[0].throttle.max_delay: must be at most 60s (a waiting request holds its connection)"]
        );
        assert_eq!(problems("{ max_delay: 1s, max_waiting: 0 }").len(), 1);
    }

    #[test]
    fn the_upstream_speaks_http1_h2c_or_h2_over_tls() {
        let c = parse("x.yaml", "upstream: { addrs: [\"h:1\"] }", &no_env).unwrap();
        assert_eq!(c.upstream.protocol, UpstreamProtocol::Http1);
        let text = "upstream: { addrs: [\"h:1\"], protocol: h2c }";
        let c = parse("x.yaml", text, &no_env).unwrap();
        assert_eq!(c.upstream.protocol, UpstreamProtocol::H2c);
        let text = "upstream: { addrs: [\"h:1\"], protocol: h2 }";
        assert_eq!(
            parse("x.yaml", text, &no_env).unwrap_err().lines,
            ["x.yaml: upstream.protocol: h2 is HTTP/2 over TLS: it needs upstream.tls (for HTTP/2 without TLS use h2c)"]
        );
        let text = "upstream: { addrs: [\"h:1\"], protocol: h2, tls: { sni: api.example } }";
        let c = parse("x.yaml", text, &no_env).unwrap();
        assert_eq!(c.upstream.protocol, UpstreamProtocol::H2);
        let tls = c.upstream.tls.unwrap();
        assert_eq!(
            (tls.sni.as_deref(), tls.verify),
            (Some("api.example"), true)
        );
        let text = "upstream: { addrs: [\"h:1\"], health_check: { path: /healthz } }";
        let h = parse("x.yaml", text, &no_env)
            .unwrap()
            .upstream
            .health_check
            .unwrap();
        assert_eq!(
            (h.interval, h.timeout, h.unhealthy_after, h.healthy_after),
            (Duration::from_secs(5), Duration::from_secs(1), 2, 2)
        );
        let text = "upstream: { addrs: [\"h:1\"], health_check: { path: healthz } }";
        assert_eq!(
            parse("x.yaml", text, &no_env).unwrap_err().lines,
            ["x.yaml: upstream.health_check.path: must be a path starting with \"/\" (got \"healthz\")"]
        );
        let kind = |text: &str| {
            parse("x.yaml", text, &no_env)
                .map(|c| c.upstream.health_check.unwrap().kind)
                .map_err(|e| e.lines)
        };
        assert_eq!(
            kind("upstream: { addrs: [\"h:1\"], health_check: { interval: 1s } }"),
            Ok(HealthCheckKind::Tcp)
        );
        assert_eq!(
            kind("upstream: { addrs: [\"h:1\"], protocol: h2c, health_check: { grpc: true } }"),
            Ok(HealthCheckKind::Grpc(String::new()))
        );
        assert_eq!(
            kind("upstream: { addrs: [\"h:1\"], protocol: h2c, health_check: { grpc: true, service: demo.Echo } }"),
            Ok(HealthCheckKind::Grpc("demo.Echo".into()))
        );
        assert_eq!(
            kind("upstream: { addrs: [\"h:1\"], health_check: { grpc: true } }"),
            Err(vec!["x.yaml: upstream.health_check.grpc: gRPC runs on HTTP/2: it needs upstream.protocol h2c or h2".to_string()])
        );
        assert_eq!(
            kind("upstream: { addrs: [\"h:1\"], protocol: h2c, health_check: { grpc: true, path: /h } }"),
            Err(vec!["x.yaml: upstream.health_check: path (an HTTP check) and grpc: true (the gRPC health service) are two kinds of check: choose one".to_string()])
        );
        assert_eq!(
            kind("upstream: { addrs: [\"h:1\"], health_check: { service: demo.Echo } }"),
            Err(vec![
                "x.yaml: upstream.health_check.service: names a gRPC service: it needs grpc: true"
                    .to_string()
            ])
        );
        let every = |text: &str| {
            parse("x.yaml", text, &no_env)
                .map(|c| c.upstream.resolve_every)
                .map_err(|e| e.lines)
        };
        assert_eq!(
            every("upstream: { addrs: [\"h:1\"] }"),
            Ok(Duration::from_secs(30))
        );
        assert_eq!(
            every("upstream: { addrs: [\"h:1\"], resolve_every: 2s }"),
            Ok(Duration::from_secs(2))
        );
        assert_eq!(
            every("upstream: { addrs: [\"h:1\"], resolve_every: 10ms }"),
            Err(vec!["x.yaml: upstream.resolve_every: must be at least 100ms (each resolution asks the system's resolver)".to_string()])
        );
    }
}
