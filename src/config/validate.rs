//! The conversion from the file model to the runtime model: the server, upstream, store,
//! identity and request-id rules (routes and limits: [`super::limits`]).

use super::fields::{
    bounded, duration, header_name, on_error, positive_duration, secret_file, Problems,
};
use super::file::*;
use super::*;
use crate::identity::jwt::{ClaimPath, JwtSettings};
use crate::identity::{CallerHash, Cidr, IdentitySource, Jwt, RequestIds, TrustedProxies};
use crate::routes::Route;
use std::collections::HashMap;
use std::net::SocketAddr;

/// What parsing the YAML found: the file model when there is one to validate further, and
/// every problem with its field path.
pub(super) struct Parsed {
    pub(super) file: Option<FileConfig>,
    pub(super) problems: Vec<String>,
}

/// Most problems one run reports before it stops looking.
const MAX_PARSE_PROBLEMS: usize = 64;

/// Parses YAML into the file model, reporting every problem it can in one run. A YAML syntax
/// error (with its line and column) ends the parse. An unknown key, or a value of the wrong
/// type, is reported with its field path, taken out, and parsing goes on, so one typo does
/// not hide the rest of the file: after unknown keys alone the model is validated as usual
/// (the typo'd key is simply absent); after a wrong type it is not (its default would be
/// validated in its place and report what the user never wrote).
pub(super) fn deserialize(text: &str) -> Parsed {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let de = serde_yaml::Deserializer::from_str(text);
    let first = match serde_path_to_error::deserialize(de) {
        Ok(file) => {
            return Parsed {
                file: Some(file),
                problems: Vec::new(),
            }
        }
        Err(e) => e,
    };
    let mut problems = vec![problem(&first)];
    // Well-formed YAML whose shape is wrong: take the faulty key out and look again.
    let Ok(mut value) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return Parsed {
            file: None,
            problems,
        };
    };
    let mut only_unknown = is_unknown_field(&first);
    let mut last = first;
    while problems.len() < MAX_PARSE_PROBLEMS {
        if !remove_at(&mut value, last.path()) {
            return Parsed {
                file: None,
                problems,
            };
        }
        match serde_path_to_error::deserialize::<_, FileConfig>(value.clone()) {
            Ok(file) => {
                return Parsed {
                    file: only_unknown.then_some(file),
                    problems,
                }
            }
            Err(e) => {
                problems.push(problem(&e));
                only_unknown &= is_unknown_field(&e);
                last = e;
            }
        }
    }
    Parsed {
        file: None,
        problems,
    }
}

fn is_unknown_field(e: &serde_path_to_error::Error<serde_yaml::Error>) -> bool {
    e.inner().to_string().contains("unknown field ")
}

/// Takes out the map entry that `path` ends with (an unknown key, or a key with a wrong value);
/// false when it names no such entry (a sequence element, the root, a missing field).
fn remove_at(value: &mut serde_yaml::Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((Segment::Map { key }, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = value;
    for segment in parents {
        let next = match segment {
            Segment::Map { key } => at.get_mut(key.as_str()),
            Segment::Seq { index } => at.get_mut(*index),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    at.as_mapping_mut()
        .and_then(|m| m.remove(key.as_str()))
        .is_some()
}

/// One parse problem, with its field path (or line and column for the document itself).
fn problem(e: &serde_path_to_error::Error<serde_yaml::Error>) -> String {
    let path = e.path().to_string();
    let inner = e.inner();
    let location = inner.location();
    let msg = readable(&inner.to_string());
    // serde_yaml starts some messages with its own path ("routes[0]: ..."); ours replaces it.
    let msg = match msg.split_once(": ") {
        Some((head, rest)) if !head.contains(char::is_whitespace) => rest.to_string(),
        _ => msg,
    };
    match msg.strip_prefix("unknown field ") {
        // serde names the parent's path plus the unknown key; report it at the parent.
        Some(rest) => {
            let field = rest.split(',').next().unwrap_or(rest);
            let parent = path.rsplit_once('.').map_or("", |(p, _)| p);
            at(parent, &format!("unknown field {field}"))
        }
        None if path == "." || path.is_empty() => match location {
            Some(l) => format!("line {} column {}: {msg}", l.line(), l.column()),
            None => msg,
        },
        None => at(&path, &msg),
    }
}

/// serde's message without its position suffix and with "quotes" instead of `backticks`.
fn readable(msg: &str) -> String {
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    msg.replace('`', "\"")
}

fn at(path: &str, msg: &str) -> String {
    if path.is_empty() || path == "." {
        msg.to_string()
    } else {
        format!("{path}: {msg}")
    }
}

/// Applies the `SLUICE_*` overrides, then validates and converts the whole file.
pub(super) fn build(
    mut file: FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<String>> {
    let mut p = Problems {
        lines: Vec::new(),
        warnings: Vec::new(),
        from_env: HashMap::new(),
    };
    // An empty variable (`SLUICE_INSTANCE=`) counts as unset, as in a shell's `${VAR:-...}`.
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let env_sources = apply_env(&mut file, &env, &mut p.from_env);
    let server = server(&file.server, &mut p);
    let max_identity_bytes = bounded(
        file.server.max_identity_bytes,
        defaults::MAX_IDENTITY_BYTES,
        (1, 65_536),
        "server.max_identity_bytes",
        &mut p,
    );
    let upstream = upstream(&file.upstream, &mut p);
    let store = store(file.store.as_ref(), &mut p);
    let trusted = trusted_proxies(&file.trusted_proxies, &mut p);
    let request_ids = request_ids(file.request_ids.as_ref(), &mut p);
    let sources = identity(file.identity.as_deref(), &env, &trusted, &mut p);
    let hash = caller_hash(&file, &sources, &env, &mut p);
    let plans = super::limits::plans(&file, &sources, &trusted, &hash, &mut p);
    let mut routes = super::limits::routes(&file, plans.as_ref(), &mut p);
    for r in &mut routes {
        r.list_hashed_callers(&hash);
    }
    for (i, r) in routes.iter().enumerate() {
        let trailer = r.cost_from.as_ref().is_some_and(|c| c.in_trailer);
        let h2 = matches!(
            upstream.protocol,
            UpstreamProtocol::H2c | UpstreamProtocol::H2
        );
        if trailer && !h2 {
            p.add(
                &format!("routes[{i}].cost_from.response_trailer"),
                "needs upstream.protocol: h2c or h2 (Pingora 0.9 drops the trailers of an HTTP/1.1 upstream response; use response_header there)",
            );
        }
    }
    never_take_effect(
        &file,
        &server,
        &store,
        &trusted,
        &request_ids,
        &routes,
        &mut p,
    );
    if !p.lines.is_empty() {
        return Err(p.lines);
    }
    Ok(Config {
        server,
        upstream,
        store,
        identity: IdentityExtractor {
            sources,
            trusted,
            max_bytes: max_identity_bytes,
            hash,
        },
        request_ids,
        routes: RouteTable::new(routes),
        plans: plans.map(std::sync::Arc::new),
        warnings: p.warnings,
        sources: env_sources,
    })
}

/// Applies the environment overrides: each replaces the file's setting of the same thing
/// (the Kubernetes pattern: a file in a ConfigMap, a secret from the environment). Returns one
/// line per override saying which source is in use, never its value.
/// The longest request head Pingora reads (its `MAX_HEADER_SIZE`), and so the longest target
/// that can arrive: the head less the shortest request line around it (`GET  HTTP/1.1`).
const PINGORA_MAX_HEAD: usize = 1_048_575;
const PINGORA_MAX_TARGET: usize = PINGORA_MAX_HEAD - "GET  HTTP/1.1\r\n\r\n".len();

/// Warnings (exit 0) about settings that are valid but can never take effect.
fn never_take_effect(
    file: &FileConfig,
    server: &ServerConfig,
    store: &StoreConfig,
    trusted: &TrustedProxies,
    request_ids: &Option<RequestIds>,
    routes: &[Route],
    p: &mut Problems,
) {
    if request_ids.is_some() && trusted.0.is_empty() {
        p.warn(
            "request_ids",
            "no trusted_proxies: an id is believed only from a trusted proxy, so none ever is",
        );
    }
    if store.backend == Backend::Memory {
        if let Some(s) = &file.store {
            let redis_only = [
                ("url", s.url.is_some()),
                ("nodes", s.nodes.is_some()),
                ("timeout", s.timeout.is_some()),
                ("prefix", s.prefix.is_some()),
                ("tls_ca_file", s.tls_ca_file.is_some()),
                ("fallback_share", s.fallback_share.is_some()),
                ("lease_ttl", s.lease_ttl.is_some()),
            ];
            for (key, _) in redis_only.iter().filter(|(_, set)| *set) {
                p.warn(
                    &format!("store.{key}"),
                    "applies to a Redis store only; the memory backend ignores it",
                );
            }
        }
    }
    for (i, route) in routes.iter().enumerate() {
        let limited = !route.limits.is_empty() || !route.overrides.is_empty();
        if !limited && route.shadow {
            p.warn(
                &format!("routes[{i}].shadow"),
                "the route has no limit, so there is nothing to try in shadow",
            );
        }
        if !limited && route.on_error.is_some() {
            p.warn(
                &format!("routes[{i}].on_error"),
                "the route has no limit, so it never asks the store",
            );
        }
    }
    if server.max_uri_bytes > PINGORA_MAX_TARGET {
        p.warn(
            "server.max_uri_bytes",
            format!("above what can arrive: Pingora reads a request head of at most {PINGORA_MAX_HEAD} bytes, so a target is at most {PINGORA_MAX_TARGET}"),
        );
    }
    if routes
        .iter()
        .all(|r| r.limits.is_empty() && r.overrides.is_empty())
    {
        p.warn(
            "routes",
            "no route has a limit: every request is forwarded unlimited",
        );
    }
}

fn apply_env(
    file: &mut FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
    from: &mut HashMap<&'static str, &'static str>,
) -> Vec<String> {
    if let Some(v) = env("SLUICE_LISTEN") {
        file.server.listen = Some(v);
        from.insert("server.listen", "SLUICE_LISTEN");
    }
    if let Some(v) = env("SLUICE_ADMIN_LISTEN") {
        file.server.admin_listen = Some(v);
        from.insert("server.admin_listen", "SLUICE_ADMIN_LISTEN");
    }
    let mut replaced = Vec::new();
    if let Some(v) = env("SLUICE_ADMIN_TOKEN") {
        file.server.admin_token = Some(v);
        if file.server.admin_token_file.take().is_some() {
            replaced.push(("server.admin_token", "server.admin_token_file"));
        }
        from.insert("server.admin_token", "SLUICE_ADMIN_TOKEN");
    }
    if env("SLUICE_IDENTITY_KEY").is_some() {
        if file.identity_hash_key_file.take().is_some() {
            replaced.push(("identity_hash_key", "identity_hash_key_file"));
        }
        from.insert("identity_hash_key", "SLUICE_IDENTITY_KEY");
    }
    if let Some(v) = env("SLUICE_INSTANCE") {
        file.server.instance = Some(v);
        from.insert("server.instance", "SLUICE_INSTANCE");
    }
    if let Some(v) = env("SLUICE_UPSTREAMS") {
        let addrs = v
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty());
        file.upstream.addrs = Some(addrs.collect());
        from.insert("upstream.addrs", "SLUICE_UPSTREAMS");
    }
    if let Some(v) = env("SLUICE_REDIS_URL") {
        let store = file.store.get_or_insert_with(StoreFile::default);
        store.backend = Some(BackendFile::Redis);
        store.url = Some(v);
        if store.nodes.take().is_some() {
            replaced.push(("store.url", "store.nodes"));
        }
        from.insert("store.url", "SLUICE_REDIS_URL");
    }
    if let Some(v) = env("SLUICE_REDIS_NODES") {
        let store = file.store.get_or_insert_with(StoreFile::default);
        store.backend = Some(BackendFile::RedisCluster);
        let nodes = v
            .split(',')
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty());
        store.nodes = Some(nodes.collect());
        if store.url.take().is_some() {
            replaced.push(("store.nodes", "store.url"));
        }
        from.insert("store.nodes", "SLUICE_REDIS_NODES");
    }
    let mut lines: Vec<String> = from
        .iter()
        .map(|(path, var)| {
            let instead = replaced
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, file_key)| format!(", instead of the file's {file_key}"))
                .unwrap_or_default();
            format!("{path}: from the environment ({var}){instead}")
        })
        .collect();
    lines.sort();
    lines
}

/// A Redis URL redis-rs accepts, with a scheme sluice supports.
fn redis_url(url: &str, path: &str, p: &mut Problems) {
    let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|s| url.starts_with(s));
    if !scheme_ok || redis::Client::open(url).is_err() {
        p.add(
            path,
            format!("invalid Redis URL \"{}\" (use e.g. redis://127.0.0.1:6379 or rediss://user:password@host:6380/0)", crate::redact::url(url)),
        );
    }
}

fn socket_addr(value: &str, path: &str, p: &mut Problems) -> Option<SocketAddr> {
    let parsed = value.parse::<SocketAddr>().ok();
    if parsed.is_none() {
        p.add(
            path,
            format!("invalid socket address \"{value}\" (use e.g. 127.0.0.1:8080 or [::1]:8080)"),
        );
    }
    parsed
}

/// A duration that Pingora takes in whole seconds: `500ms` is an error, not a silent 0.
fn whole_seconds(text: Option<&Text>, default: Duration, path: &str, p: &mut Problems) -> Duration {
    let d = duration(text, default, path, p).unwrap_or_default();
    if d.subsec_nanos() != 0 {
        let shown = format_duration(d);
        p.add(
            path,
            format!("must be a whole number of seconds (got {shown})"),
        );
        return Duration::ZERO;
    }
    d
}

/// Two listeners that would take the same port: equal addresses, or one of them a wildcard.
fn listeners_clash(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn server(s: &ServerFile, p: &mut Problems) -> ServerConfig {
    let listen = s.listen.clone().unwrap_or_else(|| defaults::LISTEN.into());
    let proxy_addr = socket_addr(&listen, "server.listen", p);
    let admin_listen = s
        .admin_listen
        .clone()
        .unwrap_or_else(|| defaults::ADMIN_LISTEN.into());
    let admin_addr = socket_addr(&admin_listen, "server.admin_listen", p);
    if let (Some(a), Some(b)) = (proxy_addr, admin_addr) {
        if listeners_clash(&a, &b) {
            p.add(
                "server.admin_listen",
                format!("\"{admin_listen}\" takes the same port as server.listen \"{listen}\" (give the admin listener its own port)"),
            );
        }
    }
    let threads = s.threads.unwrap_or(defaults::THREADS);
    if threads == 0 || threads > 256 {
        p.add("server.threads", "must be between 1 and 256");
    }
    let instance = s
        .instance
        .clone()
        .unwrap_or_else(|| default_instance(&listen));
    if instance.is_empty()
        || !instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        p.add(
            "server.instance",
            format!(
                "invalid instance name \"{instance}\" (use letters, digits, '.', '_', ':', '-')"
            ),
        );
    }
    ServerConfig {
        listen,
        admin_listen,
        threads: threads.clamp(1, 256) as usize,
        instance,
        grace_period: whole_seconds(
            s.grace_period.as_ref(),
            Duration::ZERO,
            "server.grace_period",
            p,
        ),
        drain_timeout: whole_seconds(
            s.drain_timeout.as_ref(),
            defaults::DRAIN_TIMEOUT,
            "server.drain_timeout",
            p,
        ),
        max_header_bytes: bounded(
            s.max_header_bytes,
            defaults::MAX_HEADER_BYTES,
            (1024, 1 << 20),
            "server.max_header_bytes",
            p,
        ),
        max_uri_bytes: bounded(
            s.max_uri_bytes,
            defaults::MAX_URI_BYTES,
            (256, 1 << 20),
            "server.max_uri_bytes",
            p,
        ),
        admin_token: admin_token(s, p),
        access_log: match s.access_log {
            None | Some(AccessLogFile::Off) => AccessLog::Off,
            Some(AccessLogFile::Text) => AccessLog::Text,
            Some(AccessLogFile::Json) => AccessLog::Json,
        },
        access_log_caller: match s.access_log_caller {
            None | Some(CallerInLogFile::Hashed) => CallerInLog::Hashed,
            Some(CallerInLogFile::Plain) => CallerInLog::Plain,
        },
        h2c: s.h2c.unwrap_or(true),
        tls: s
            .tls
            .as_ref()
            .and_then(|t| tls(t, &[proxy_addr, admin_addr], p)),
    }
}

/// `server.tls`: its own address, and a certificate and key that load and belong together.
fn tls(t: &TlsFile, taken: &[Option<SocketAddr>], p: &mut Problems) -> Option<TlsListener> {
    let (Some(listen), Some(cert), Some(key)) = (&t.listen, &t.cert_file, &t.key_file) else {
        p.add(
            "server.tls",
            "needs listen, cert_file and key_file (PEM files)",
        );
        return None;
    };
    let addr = socket_addr(listen, "server.tls.listen", p)?;
    if taken
        .iter()
        .flatten()
        .any(|other| listeners_clash(&addr, other))
    {
        p.add(
            "server.tls.listen",
            format!("\"{listen}\" takes the port of server.listen or server.admin_listen (give it its own)"),
        );
        return None;
    }
    let (cert_file, key_file) = (
        std::path::PathBuf::from(cert),
        std::path::PathBuf::from(key),
    );
    if let Err(e) = crate::tls::load(&cert_file, &key_file) {
        p.add("server.tls", e);
        return None;
    }
    Some(TlsListener {
        listen: listen.clone(),
        cert_file,
        key_file,
    })
}

/// The admin token, given inline or in a file (trailing newline ignored). A token short
/// enough to guess, or one that cannot travel in a header, is refused.
fn admin_token(s: &ServerFile, p: &mut Problems) -> Option<String> {
    let (token, path) = match (&s.admin_token, &s.admin_token_file) {
        (Some(_), Some(_)) => {
            p.add(
                "server.admin_token_file",
                "give the token inline (admin_token) or in a file, not both",
            );
            return None;
        }
        (Some(t), None) => (t.clone(), "server.admin_token"),
        (None, Some(file)) => match std::fs::read_to_string(file) {
            Ok(t) => (
                t.trim_end_matches(['\n', '\r']).to_string(),
                "server.admin_token_file",
            ),
            Err(e) => {
                p.add(
                    "server.admin_token_file",
                    format!("cannot read \"{file}\": {e}"),
                );
                return None;
            }
        },
        (None, None) => return None,
    };
    let visible = token.bytes().all(|b| b.is_ascii_graphic());
    if token.len() < 16 || token.len() > 256 || !visible {
        p.add(
            path,
            "must be 16-256 visible ASCII characters (e.g. openssl rand -hex 32)",
        );
    }
    Some(token)
}

/// The host name and the proxy port (`web-1:8080`): unique per sidecar on one host or network.
fn default_instance(listen: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice".into());
    let port = listen.rsplit_once(':').map_or("", |(_, port)| port);
    format!("{host}:{port}")
}

fn upstream(u: &UpstreamFile, p: &mut Problems) -> UpstreamConfig {
    let addrs = u.addrs.clone().unwrap_or_default();
    if addrs.is_empty() {
        p.add(
            "upstream.addrs",
            "at least one address is required (e.g. [\"127.0.0.1:9000\"])",
        );
    }
    for (i, addr) in addrs.iter().enumerate() {
        if !is_host_port(addr) {
            p.add(
                &format!("upstream.addrs[{i}]"),
                format!("invalid address \"{addr}\" (use host:port)"),
            );
        }
    }
    let tls = u.tls.as_ref().map(|t| UpstreamTls {
        sni: t.sni.clone().filter(|s| !s.is_empty()),
        ca_file: t.ca_file.as_ref().map(std::path::PathBuf::from),
        verify: t.verify.unwrap_or(true),
    });
    if let Some(ca) = tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
        if let Err(e) = std::fs::File::open(ca) {
            p.add(
                "upstream.tls.ca_file",
                format!("cannot read {}: {e}", ca.display()),
            );
        }
    }
    let protocol = match (u.protocol, &tls) {
        (None | Some(UpstreamProtocolFile::Http1), _) => UpstreamProtocol::Http1,
        (Some(UpstreamProtocolFile::H2c), None) => UpstreamProtocol::H2c,
        (Some(UpstreamProtocolFile::H2c), Some(_)) => {
            p.add(
                "upstream.protocol",
                "h2c is HTTP/2 without TLS: with upstream.tls use h2",
            );
            UpstreamProtocol::H2c
        }
        (Some(UpstreamProtocolFile::H2), Some(_)) => UpstreamProtocol::H2,
        (Some(UpstreamProtocolFile::H2), None) => {
            p.add(
                "upstream.protocol",
                "h2 is HTTP/2 over TLS: it needs upstream.tls (for HTTP/2 without TLS use h2c)",
            );
            UpstreamProtocol::H2
        }
    };
    let health_check = u.health_check.as_ref().and_then(|h| {
        let kind = health_check_kind(h, protocol, p)?;
        Some(HealthCheck {
            kind,
            interval: positive_duration(
                h.interval.as_ref(),
                Duration::from_secs(5),
                "upstream.health_check.interval",
                p,
            )?,
            timeout: positive_duration(
                h.timeout.as_ref(),
                Duration::from_secs(1),
                "upstream.health_check.timeout",
                p,
            )?,
            unhealthy_after: bounded(
                h.unhealthy_after,
                2,
                (1, 100),
                "upstream.health_check.unhealthy_after",
                p,
            ),
            healthy_after: bounded(
                h.healthy_after,
                2,
                (1, 100),
                "upstream.health_check.healthy_after",
                p,
            ),
        })
    });
    let resolve_every = positive_duration(
        u.resolve_every.as_ref(),
        defaults::RESOLVE_EVERY,
        "upstream.resolve_every",
        p,
    )
    .unwrap_or(defaults::RESOLVE_EVERY);
    if resolve_every < Duration::from_millis(100) {
        p.add(
            "upstream.resolve_every",
            "must be at least 100ms (each resolution asks the system's resolver)",
        );
    }
    UpstreamConfig {
        protocol,
        tls,
        health_check,
        addrs,
        resolve_every,
        connect_timeout: positive_duration(
            u.connect_timeout.as_ref(),
            defaults::CONNECT_TIMEOUT,
            "upstream.connect_timeout",
            p,
        )
        .unwrap_or_default(),
        idle_timeout: positive_duration(
            u.idle_timeout.as_ref(),
            defaults::IDLE_TIMEOUT,
            "upstream.idle_timeout",
            p,
        )
        .unwrap_or_default(),
        read_timeout: positive_duration(
            u.read_timeout.as_ref(),
            defaults::UPSTREAM_IO_TIMEOUT,
            "upstream.read_timeout",
            p,
        )
        .unwrap_or_default(),
        write_timeout: positive_duration(
            u.write_timeout.as_ref(),
            defaults::UPSTREAM_IO_TIMEOUT,
            "upstream.write_timeout",
            p,
        )
        .unwrap_or_default(),
    }
}

/// What `upstream.health_check` asks: `path` (HTTP), `grpc: true` (the gRPC health service,
/// on an HTTP/2 upstream) or neither (a TCP connect).
fn health_check_kind(
    h: &HealthCheckFile,
    protocol: UpstreamProtocol,
    p: &mut Problems,
) -> Option<HealthCheckKind> {
    let grpc = h.grpc.unwrap_or(false);
    if let Some(service) = &h.service {
        if !grpc {
            p.add(
                "upstream.health_check.service",
                "names a gRPC service: it needs grpc: true",
            );
            return None;
        }
        if service.len() > 200 || service.bytes().any(|b| b.is_ascii_control()) {
            p.add(
                "upstream.health_check.service",
                "must be a gRPC service name (at most 200 bytes, no control characters)",
            );
            return None;
        }
    }
    match (&h.path, grpc) {
        (Some(_), true) => {
            p.add(
                "upstream.health_check",
                "path (an HTTP check) and grpc: true (the gRPC health service) are two kinds of check: choose one",
            );
            None
        }
        (Some(path), false) => {
            if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                p.add(
                    "upstream.health_check.path",
                    format!("must be a path starting with \"/\" (got \"{path}\")"),
                );
                return None;
            }
            Some(HealthCheckKind::Http(path.clone()))
        }
        (None, true) if protocol == UpstreamProtocol::Http1 => {
            p.add(
                "upstream.health_check.grpc",
                "gRPC runs on HTTP/2: it needs upstream.protocol h2c or h2",
            );
            None
        }
        (None, true) => Some(HealthCheckKind::Grpc(h.service.clone().unwrap_or_default())),
        (None, false) => Some(HealthCheckKind::Tcp),
    }
}

fn is_host_port(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
        }
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
}

fn store(s: Option<&StoreFile>, p: &mut Problems) -> StoreConfig {
    let url = s.and_then(|s| s.url.clone());
    // A store section that names a URL but no backend means Redis; nothing at all means memory.
    let kind = s.and_then(|s| s.backend).unwrap_or(match url {
        Some(_) => BackendFile::Redis,
        None => BackendFile::Memory,
    });
    let backend = match kind {
        BackendFile::Memory => Backend::Memory,
        BackendFile::Redis => {
            let url = url.unwrap_or_else(|| defaults::REDIS_URL.into());
            redis_url(&url, "store.url", p);
            if s.is_some_and(|s| s.nodes.is_some()) {
                p.add(
                    "store.nodes",
                    "applies to backend: redis_cluster only (use store.url)",
                );
            }
            Backend::Redis { url }
        }
        BackendFile::RedisCluster => {
            let nodes = s.and_then(|s| s.nodes.clone()).unwrap_or_default();
            if nodes.is_empty() {
                p.add(
                    "store.nodes",
                    "at least one seed node is required (e.g. [\"redis://127.0.0.1:7000\"])",
                );
            }
            for (i, node) in nodes.iter().enumerate() {
                redis_url(node, &format!("store.nodes[{i}]"), p);
            }
            if url.is_some() {
                p.add(
                    "store.url",
                    "applies to backend: redis only (a cluster takes store.nodes)",
                );
            }
            Backend::RedisCluster { nodes }
        }
    };
    StoreConfig {
        backend,
        timeout: positive_duration(
            s.and_then(|s| s.timeout.as_ref()),
            defaults::STORE_TIMEOUT,
            "store.timeout",
            p,
        )
        .unwrap_or_default(),
        on_error: s.and_then(|s| s.on_error).map_or(OnError::Allow, on_error),
        fallback_share: fallback_share(s.and_then(|s| s.fallback_share), p),
        tls_ca_file: tls_ca_file(s, p),
        prefix: s
            .and_then(|s| s.prefix.clone())
            .unwrap_or_else(|| defaults::KEY_PREFIX.into()),
        max_callers: bounded(
            s.and_then(|s| s.max_callers),
            defaults::MAX_CALLERS,
            (1, 1 << 32),
            "store.max_callers",
            p,
        ),
        lease_ttl: lease_ttl(s.and_then(|s| s.lease_ttl.as_ref()), p),
    }
}

/// At least a second (it is renewed every third of it) and at most an hour.
fn lease_ttl(text: Option<&Text>, p: &mut Problems) -> Duration {
    let path = "store.lease_ttl";
    let ttl = positive_duration(text, defaults::LEASE_TTL, path, p).unwrap_or(defaults::LEASE_TTL);
    if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(3600) {
        p.add(
            path,
            format!("must be between 1s and 1h (got {})", format_duration(ttl)),
        );
        return defaults::LEASE_TTL;
    }
    ttl
}

fn fallback_share(share: Option<f64>, p: &mut Problems) -> f64 {
    let share = share.unwrap_or(defaults::FALLBACK_SHARE);
    if !(share > 0.0 && share <= 1.0) {
        p.add(
            "store.fallback_share",
            format!(
                "must be more than 0 and at most 1 (got {share}; e.g. 0.34 for three sidecars)"
            ),
        );
        return defaults::FALLBACK_SHARE;
    }
    share
}

fn tls_ca_file(s: Option<&StoreFile>, p: &mut Problems) -> Option<std::path::PathBuf> {
    let file = s.and_then(|s| s.tls_ca_file.as_ref())?;
    let tls = s.is_some_and(|s| {
        let nodes = s.nodes.iter().flatten();
        s.url
            .iter()
            .chain(nodes)
            .any(|u| u.starts_with("rediss://"))
    });
    if !tls {
        p.add(
            "store.tls_ca_file",
            "needs a rediss:// store.url or store.nodes (TLS)",
        );
    } else if let Err(e) = std::fs::read(file) {
        p.add("store.tls_ca_file", format!("cannot read \"{file}\": {e}"));
    }
    Some(file.into())
}

fn request_ids(r: Option<&RequestIdsFile>, p: &mut Problems) -> Option<RequestIds> {
    let r = r?;
    let name = r.header.as_deref().unwrap_or(defaults::REQUEST_ID_HEADER);
    let header = header_name(name, "request_ids.header", p)
        .unwrap_or(http::HeaderName::from_static(defaults::REQUEST_ID_HEADER));
    let retry_window = positive_duration(
        r.retry_window.as_ref(),
        defaults::RETRY_WINDOW,
        "request_ids.retry_window",
        p,
    )
    .unwrap_or_default();
    if retry_window > Duration::from_secs(3600) {
        p.add("request_ids.retry_window", "must be at most 1h");
    }
    let max_retries = bounded(
        r.max_retries,
        defaults::MAX_RETRIES as u64,
        (0, 100),
        "request_ids.max_retries",
        p,
    ) as u32;
    Some(RequestIds {
        header,
        retry_window,
        max_retries,
    })
}

fn trusted_proxies(list: &[String], p: &mut Problems) -> TrustedProxies {
    let mut cidrs = Vec::new();
    for (i, text) in list.iter().enumerate() {
        match Cidr::parse(text) {
            Ok(c) => cidrs.push(c),
            Err(why) => p.add(
                &format!("trusted_proxies[{i}]"),
                format!("invalid CIDR \"{text}\" ({why})"),
            ),
        }
    }
    TrustedProxies(cidrs)
}

fn identity(
    list: Option<&[IdentityFile]>,
    env: &dyn Fn(&str) -> Option<String>,
    trusted: &TrustedProxies,
    p: &mut Problems,
) -> Vec<IdentitySource> {
    let Some(list) = list else {
        return vec![
            IdentitySource::Query("user_id".into()),
            IdentitySource::Header(http::HeaderName::from_static("x-user-id")),
            IdentitySource::ClientIp,
        ];
    };
    if list.is_empty() {
        p.add(
            "identity",
            "at least one source is required (query, header, client_ip, api_key, bearer or jwt)",
        );
    }
    let mut sources = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let at = format!("identity[{i}]");
        if let Some(j) = &item.jwt {
            let others = item.api_key.is_some()
                || item.bearer.is_some()
                || item.query.is_some()
                || item.header.is_some()
                || item.client_ip.is_some();
            if others {
                p.add(&at, ONE_SOURCE);
            } else if let Some(jwt) = jwt(j, &format!("{at}.jwt"), env, trusted, p) {
                sources.push(IdentitySource::Jwt(std::sync::Arc::new(jwt)));
            }
            continue;
        }
        let credential = match (&item.api_key, item.bearer) {
            (None, None) => None,
            (Some(key), None) => Some(Err(key)),
            (None, Some(bearer)) => Some(Ok(bearer)),
            (Some(_), Some(_)) => {
                p.add(&at, ONE_SOURCE);
                continue;
            }
        };
        if let Some(credential) = credential {
            if item.query.is_some() || item.header.is_some() || item.client_ip.is_some() {
                p.add(&at, ONE_SOURCE);
                continue;
            }
            match credential {
                Err(key) => {
                    let path = format!("{at}.api_key.header");
                    if let Some(h) = header_name(&key.header, &path, p) {
                        sources.push(IdentitySource::ApiKey(h));
                    }
                }
                Ok(true) => sources.push(IdentitySource::Bearer),
                Ok(false) => p.add(
                    &format!("{at}.bearer"),
                    "must be true (remove the entry to leave the bearer token out)",
                ),
            }
            continue;
        }
        match (&item.query, &item.header, item.client_ip) {
            (Some(name), None, None) if name.is_empty() => {
                p.add(&format!("{at}.query"), "must name a query parameter")
            }
            (Some(name), None, None) => sources.push(IdentitySource::Query(name.clone())),
            (None, Some(name), None) => {
                if let Some(h) = header_name(name, &format!("{at}.header"), p) {
                    sources.push(IdentitySource::Header(h));
                }
            }
            (None, None, Some(true)) => sources.push(IdentitySource::ClientIp),
            (None, None, Some(false)) => p.add(
                &format!("{at}.client_ip"),
                "must be true (remove the entry to leave the client IP out)",
            ),
            _ => p.add(&at, ONE_SOURCE),
        }
    }
    sources
}

const ONE_SOURCE: &str =
    "needs exactly one of \"query\", \"header\", \"client_ip\", \"api_key\", \"bearer\" or \"jwt\"";

/// A `jwt` source: its claim, where the token is, and the keys that verify it.
fn jwt(
    j: &JwtFile,
    at: &str,
    env: &dyn Fn(&str) -> Option<String>,
    trusted: &TrustedProxies,
    p: &mut Problems,
) -> Option<Jwt> {
    let before = p.lines.len();
    let claim = ClaimPath::parse(&j.claim);
    if claim.is_none() {
        p.add(
            &format!("{at}.claim"),
            format!(
                "invalid claim \"{}\" (e.g. sub, or org.id for a nested claim)",
                j.claim
            ),
        );
    }
    let header = j
        .header
        .as_ref()
        .and_then(|h| header_name(h, &format!("{at}.header"), p));
    let leeway = whole_seconds(
        j.leeway.as_ref(),
        Duration::from_secs(30),
        &format!("{at}.leeway"),
        p,
    );
    let verify = j.verify.unwrap_or(true);
    let given = [
        j.secret_file.is_some(),
        j.secret_env.is_some(),
        j.keys_file.is_some(),
    ];
    let count = given.iter().filter(|g| **g).count();
    if !verify {
        if trusted.0.is_empty() {
            p.add(
                &format!("{at}.verify"),
                "false believes any token a client sends: it needs trusted_proxies (the hop that verified the token), and only their tokens are read",
            );
        }
        if count > 0 {
            p.warn(&format!("{at}.verify"), "false: the keys are never used");
        }
    } else if count != 1 {
        p.add(at, "needs exactly one of secret_file, secret_env (HS256/384/512) or keys_file (RS/PS/ES/EdDSA public keys)");
    }
    let secret = match (&j.secret_file, &j.secret_env) {
        (Some(path), _) => {
            let at = format!("{at}.secret_file");
            secret_file(path, &at, p).map(|k| (k, at))
        }
        (None, Some(var)) => match env(var) {
            Some(k) => Some((k.into_bytes(), format!("{at}.secret_env"))),
            None => {
                p.add(&format!("{at}.secret_env"), format!("{var} is not set"));
                None
            }
        },
        (None, None) => None,
    };
    if let Some((k, path)) = &secret {
        if k.len() < 32 {
            p.add(
                path,
                "must be at least 32 bytes (HS256 needs 256 bits; e.g. openssl rand -hex 32)",
            );
        }
    }
    if p.lines.len() > before {
        return None;
    }
    let settings = JwtSettings {
        claim: claim?,
        header,
        secret: secret.map(|(k, _)| k),
        keys_file: j.keys_file.as_ref().map(std::path::PathBuf::from),
        verify,
        issuer: j.issuer.clone(),
        audience: j.audience.clone(),
        leeway,
    };
    match Jwt::new(settings) {
        Ok(jwt) => Some(jwt),
        Err(e) => {
            p.add(&format!("{at}.keys_file"), e);
            None
        }
    }
}

/// `identity_hash`: one mode for every source, so a clear name and a hash can never be one
/// caller (a client could otherwise name itself by another caller's hash). The default hashes
/// when a credential source (`api_key`, `bearer`) is listed and leaves names clear otherwise.
fn caller_hash(
    file: &FileConfig,
    sources: &[IdentitySource],
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) -> CallerHash {
    let credentials = sources.iter().any(IdentitySource::is_credential);
    let mode = file.identity_hash.unwrap_or(match credentials {
        true => IdentityHashFile::Sha256,
        false => IdentityHashFile::None,
    });
    let key = match (env("SLUICE_IDENTITY_KEY"), &file.identity_hash_key_file) {
        (Some(k), _) => Some((k.into_bytes(), "identity_hash_key")),
        (None, Some(path)) => match secret_file(path, "identity_hash_key_file", p) {
            Some(k) => Some((k, "identity_hash_key_file")),
            None => return CallerHash::None,
        },
        (None, None) => None,
    };
    match mode {
        IdentityHashFile::None => {
            if credentials && file.identity_hash.is_some() {
                p.warn(
                    "identity_hash",
                    "none: API keys and bearer tokens are stored in clear in store keys, /stats and logs",
                );
            }
            if key.is_some() {
                p.warn("identity_hash_key_file", "only hmac_sha256 uses a key");
            }
            CallerHash::None
        }
        IdentityHashFile::Sha256 => {
            if key.is_some() {
                p.warn("identity_hash_key_file", "only hmac_sha256 uses a key");
            }
            CallerHash::Sha256
        }
        IdentityHashFile::HmacSha256 => match key {
            Some((k, _)) if k.len() >= 16 => {
                CallerHash::HmacSha256(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k))
            }
            Some((_, path)) => {
                p.add(
                    path,
                    "must be at least 16 bytes (e.g. openssl rand -hex 32)",
                );
                CallerHash::None
            }
            None => {
                p.add(
                    "identity_hash",
                    "hmac_sha256 needs a key: identity_hash_key_file or SLUICE_IDENTITY_KEY, the same on every sidecar sharing the store",
                );
                CallerHash::None
            }
        },
    }
}
