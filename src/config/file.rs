//! The file model: serde structs that mirror the YAML exactly, with no validation.
//!
//! Everything here is raw text as the user wrote it; `config::validate` turns it into the
//! runtime model once. Unknown keys are rejected (`deny_unknown_fields`) so typos never pass
//! silently.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub upstream: UpstreamFile,
    pub store: Option<StoreFile>,
    pub identity: Option<Vec<IdentityFile>>,
    /// How identities become callers (default: sha256 when a credential source is listed).
    pub identity_hash: Option<IdentityHashFile>,
    /// `hmac_sha256`: the key, in a file every sidecar sharing the store mounts.
    pub identity_hash_key_file: Option<String>,
    /// What a request that names no caller gets (default `anonymous`); routes may override.
    pub on_missing_identity: Option<OnMissingFile>,
    /// Requests that never spend a quota, on every route.
    pub exempt: Option<ExemptFile>,
    /// How refusals look, on every route that does not say otherwise.
    pub refusal: Option<RefusalFile>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Absent: request ids are ignored (forwarded untouched, never believed).
    pub request_ids: Option<RequestIdsFile>,
    /// Limits shared by several routes, by name.
    #[serde(default)]
    pub buckets: BTreeMap<String, BucketFile>,
    /// Named sets of limits; a route with `limits: plan` uses the caller's.
    #[serde(default)]
    pub plans: BTreeMap<String, PlanFile>,
    /// How a request's plan is chosen.
    pub plan: Option<PlanChoiceFile>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    #[serde(default)]
    pub limits: Vec<LimitFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanChoiceFile {
    /// Tried in order: the first that names a plan wins.
    #[serde(default)]
    pub from: Vec<PlanSourceFile>,
    /// The plan of a request no source names.
    pub default: Option<String>,
}

/// One plan source: a map with exactly one of these keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSourceFile {
    pub jwt_claim: Option<String>,
    pub header: Option<String>,
    pub callers_file: Option<String>,
}

/// A route's limits: a list, or `plan` (the caller's plan's).
#[derive(Debug)]
pub enum LimitsFile {
    List(Vec<LimitFile>),
    Named(String),
}

/// By hand rather than `untagged`, so a bad limit in a list keeps its own precise message
/// and field path.
impl<'de> Deserialize<'de> for LimitsFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LimitsVisitor;
        impl<'de> Visitor<'de> for LimitsVisitor {
            type Value = LimitsFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of limits, or plan")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LimitsFile, E> {
                Ok(LimitsFile::Named(v.to_string()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<LimitsFile, A::Error> {
                Vec::<LimitFile>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(LimitsFile::List)
            }
            fn visit_unit<E: de::Error>(self) -> Result<LimitsFile, E> {
                Ok(LimitsFile::List(Vec::new()))
            }
        }
        d.deserialize_any(LimitsVisitor)
    }
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile::List(Vec::new())
    }
}

/// A shared bucket: limits that every route naming it draws from together.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketFile {
    /// Whose bucket: the default `per` of its limits (default caller).
    pub per: Option<PerFile>,
    #[serde(default)]
    pub limits: Vec<LimitFile>,
}

/// `per: caller`, or a list for a composite key: `per: [caller, client_ip]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerFile {
    One(String),
    Many(Vec<String>),
}

/// Load-balancer request ids, believed from `trusted_proxies` only.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestIdsFile {
    pub header: Option<String>,
    pub retry_window: Option<Text>,
    pub max_retries: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub threads: Option<u64>,
    pub instance: Option<String>,
    /// How long a stopping sidecar keeps serving (SIGTERM) before it closes its listeners.
    pub grace_period: Option<Text>,
    /// Then, how long requests in flight may take to finish.
    pub drain_timeout: Option<Text>,
    /// Longest caller identity, in bytes after percent-decoding.
    pub max_identity_bytes: Option<i64>,
    /// Largest request head (request line and every header), in bytes.
    pub max_header_bytes: Option<i64>,
    /// Longest request target (path and query), in bytes.
    pub max_uri_bytes: Option<i64>,
    /// Bearer token for the admin listener's `/metrics` and `/stats/*`.
    pub admin_token: Option<String>,
    /// A file holding that token (a mounted secret), read at start and on reload.
    pub admin_token_file: Option<String>,
    pub access_log: Option<AccessLogFile>,
    pub access_log_caller: Option<CallerInLogFile>,
    /// HTTP/2 with prior knowledge (h2c) beside HTTP/1.1 on the proxy listener (default true).
    pub h2c: Option<bool>,
    /// A TLS listener beside the plaintext one (ALPN h2 and http/1.1).
    pub tls: Option<TlsFile>,
}

/// `server.tls: { listen, cert_file, key_file }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub listen: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFile {
    Off,
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerInLogFile {
    Hashed,
    Plain,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub addrs: Option<Vec<String>>,
    /// What the upstream speaks: http1 (default), h2c (HTTP/2 without TLS: gRPC), h2.
    pub protocol: Option<UpstreamProtocolFile>,
    /// TLS to the upstream (HTTPS).
    pub tls: Option<UpstreamTlsFile>,
    /// Active health checks of each address.
    pub health_check: Option<HealthCheckFile>,
    /// How often the addresses' names are resolved again.
    pub resolve_every: Option<Text>,
    pub connect_timeout: Option<Text>,
    pub idle_timeout: Option<Text>,
    pub read_timeout: Option<Text>,
    pub write_timeout: Option<Text>,
}

/// `upstream.health_check: { path | grpc, service, interval, timeout, unhealthy_after,
/// healthy_after }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    pub path: Option<String>,
    /// The standard gRPC health service instead of an HTTP GET.
    pub grpc: Option<bool>,
    /// The gRPC service asked about ("" or absent: the server as a whole).
    pub service: Option<String>,
    pub interval: Option<Text>,
    pub timeout: Option<Text>,
    pub unhealthy_after: Option<i64>,
    pub healthy_after: Option<i64>,
}

/// `upstream.tls: { sni, ca_file, verify }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    pub sni: Option<String>,
    pub ca_file: Option<String>,
    pub verify: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocolFile {
    Http1,
    H2c,
    H2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendFile {
    Redis,
    RedisCluster,
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnErrorFile {
    Allow,
    Deny,
    Local,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    pub backend: Option<BackendFile>,
    pub url: Option<String>,
    /// `redis_cluster`: seed nodes (`redis://host:port`).
    pub nodes: Option<Vec<String>>,
    pub timeout: Option<Text>,
    pub on_error: Option<OnErrorFile>,
    pub prefix: Option<String>,
    /// Most callers the in-process state (memory store, denial cache) holds at once.
    pub max_callers: Option<i64>,
    /// `on_error: local`: each limit scaled by this share while the store is away.
    pub fallback_share: Option<f64>,
    /// `rediss://`: the CA certificate (PEM) that signed the server's certificate.
    pub tls_ca_file: Option<String>,
    /// How long an in-flight slot outlives its holder's last renewal.
    pub lease_ttl: Option<Text>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissingFile {
    Anonymous,
    ClientIp,
    Reject,
    Skip,
}

/// Exemptions: a route's list adds to the global one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExemptFile {
    #[serde(default)]
    pub cidrs: Vec<String>,
    #[serde(default)]
    pub callers: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    /// CORS preflights never spend a quota (default true); a route's setting wins.
    pub preflight: Option<bool>,
}

/// One identity source: a map with exactly one of these keys (`- query: user_id`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    pub query: Option<String>,
    pub header: Option<String>,
    pub client_ip: Option<bool>,
    /// An API key in a header: `api_key: { header: x-api-key }`.
    pub api_key: Option<ApiKeyFile>,
    /// The token of `Authorization: Bearer ...`.
    pub bearer: Option<bool>,
    /// A claim of a verified token.
    pub jwt: Option<JwtFile>,
}

/// `jwt:`: which claim names the caller, and how the token is verified.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtFile {
    pub claim: String,
    /// The token's header (default: `Authorization: Bearer`).
    pub header: Option<String>,
    /// HS256/384/512: the secret in a file, or in an environment variable.
    pub secret_file: Option<String>,
    pub secret_env: Option<String>,
    /// RS/PS/ES/EdDSA: a JWKS or a PEM public key.
    pub keys_file: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Option<Text>,
    /// `false`: a trusted hop verified the token already.
    pub verify: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyFile {
    pub header: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityHashFile {
    None,
    Sha256,
    HmacSha256,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: MatchFile,
    #[serde(default)]
    pub limits: LimitsFile,
    /// Shared buckets this route also draws from.
    #[serde(default)]
    pub buckets: Vec<String>,
    #[serde(default)]
    pub overrides: BTreeMap<String, OverrideFile>,
    /// What to do on this route when the store cannot answer (overrides `store.on_error`).
    pub on_error: Option<OnErrorFile>,
    /// Dry run: decide and count, but forward every request.
    #[serde(default)]
    pub shadow: bool,
    /// What one request counts for against every limit (default 1).
    pub cost: Option<CostFile>,
    /// The cost is what the response reports; `cost` is reserved at admission.
    pub cost_from: Option<CostFromFile>,
    /// How long this route's upstream may take to answer (replaces upstream.read_timeout).
    pub timeout: Option<Text>,
    /// How this route's refusals look (replaces the global `refusal`).
    pub refusal: Option<RefusalFile>,
    /// Wait instead of refusing when the limit admits again within `max_delay`.
    pub throttle: Option<ThrottleFile>,
    /// Overrides the global `on_missing_identity` on this route.
    pub on_missing_identity: Option<OnMissingFile>,
    /// Added to the global `exempt`.
    pub exempt: Option<ExemptFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    /// Headers the request must carry, with exactly these values.
    pub headers: Option<BTreeMap<String, String>>,
}

/// One limit: a rate (`requests` per `window`), a calendar quota (`requests` per `period`) or
/// an in-flight cap (`concurrency`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitFile {
    pub requests: Option<i64>,
    pub window: Option<Text>,
    pub algorithm: Option<AlgorithmFile>,
    /// GCRA only: how many may arrive at once.
    pub burst: Option<i64>,
    /// Requests in flight at once.
    pub concurrency: Option<i64>,
    /// A calendar quota: `requests` per `day`, `week` or `month` (instead of a window).
    pub period: Option<Text>,
    /// The quota's time zone (IANA name, default UTC).
    pub timezone: Option<Text>,
    /// Whose requests it counts together (default caller).
    pub per: Option<PerFile>,
    /// Only requests whose response status matches stay counted.
    pub count: Option<CountFile>,
}

/// `count: { status: [401, 403] }` or `count: { status: 5xx }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountFile {
    pub status: StatusesFile,
}

/// One status or class, or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StatusesFile {
    One(Text),
    Many(Vec<Text>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmFile {
    SlidingLog,
    SlidingWindow,
    Gcra,
}

/// `refusal: { status, content_type, body }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusalFile {
    pub status: Option<i64>,
    pub content_type: Option<String>,
    pub body: Option<String>,
}

/// `throttle: { max_delay: 2s, max_waiting: 1000 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleFile {
    pub max_delay: Option<Text>,
    pub max_waiting: Option<i64>,
}

/// `cost_from: { response_header: x-usage-tokens, max_cost: 100000 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostFromFile {
    pub response_header: Option<String>,
    pub response_trailer: Option<String>,
    pub max_cost: Option<i64>,
}

/// `cost: 5`, or per method: `cost: { GET: 1, POST: 5 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum CostFile {
    Fixed(i64),
    PerMethod(BTreeMap<String, i64>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideFile {
    pub limits: Vec<LimitFile>,
}

/// A scalar kept as the text the user wrote, whether YAML saw a string or a number.
///
/// Durations are parsed by the validator, not by serde, so `window: 60` gets the same
/// "invalid duration" message (naming the units) as `window: 5x`, and every bad duration of a
/// file is reported, not only the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 10s")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_any(TextVisitor)
    }
}
