//! Verified tokens end to end: `identity: - jwt:` with tokens made here (HS256, RS256, ES256,
//! EdDSA), every bad token of docs/security.md's table, and key rotation, through a real
//! sidecar on a real Redis.

mod common;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs256(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `openssl genpkey` with `args`: the private key (PKCS#8 PEM) and its public key (PEM).
fn openssl_pair(dir: &Path, name: &str, args: &[&str]) -> (Vec<u8>, std::path::PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let ok = Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&key)
        .output()
        .unwrap()
        .status
        .success()
        && Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public)
            .output()
            .unwrap()
            .status
            .success();
    assert!(ok, "openssl made the {name} key pair");
    (std::fs::read(&key).unwrap(), public)
}

fn signed(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, &claims, key).unwrap()
}

async fn with_token(port: u16, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    request(port, "GET", "/api/x", &[("authorization", &auth)], b"")
        .await
        .expect("reply")
}

fn routes(limit: u32) -> String {
    format!(
        "routes:\n  - name: api\n    match: {{ path_prefix: /api/ }}\n    limits: [{{ requests: {limit}, window: 60s }}]\n"
    )
}

/// Each row of the bad-token table in docs/security.md, on an HS256 sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_gets_401_with_its_reason_and_counts_nothing() {
    let dir = scratch_dir();
    let redis = Redis::start(&dir).await;
    let up = Upstream::start(&dir).await;
    let secret = dir.join("hs.key");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let body = format!(
        "{}identity:\n  - jwt: {{ claim: sub, secret_file: \"{}\", issuer: https://auth.example.com, audience: api }}\n  - query: user_id\n{}",
        redis_store(&redis),
        secret.display(),
        routes(3)
    );
    let s = Sidecar::start(&dir, "s1", up.port, &body).await;
    let base = json!({"sub": "alice", "iss": "https://auth.example.com", "aud": "api", "exp": now() + 600});
    let with = |extra: Value| {
        let mut c = base.clone();
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    let payload = b64(with(json!({})).to_string().as_bytes());
    let rows: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            hs256(with(json!({"exp": now() - 120}))),
            "expired",
        ),
        (
            "not yet valid",
            hs256(with(json!({"nbf": now() + 600}))),
            "not_yet_valid",
        ),
        (
            "wrong audience",
            hs256(with(json!({"aud": "billing"}))),
            "audience",
        ),
        (
            "wrong issuer",
            hs256(with(json!({"iss": "https://evil.example"}))),
            "issuer",
        ),
        (
            "no sub",
            hs256(json!({"iss": "https://auth.example.com", "aud": "api", "exp": now() + 600})),
            "claim_missing",
        ),
        (
            "no exp",
            hs256(json!({"sub": "alice", "iss": "https://auth.example.com", "aud": "api"})),
            "claim_missing",
        ),
        (
            "alg none",
            format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
            "algorithm",
        ),
        (
            "wrong secret",
            encode(
                &Header::default(),
                &with(json!({})),
                &EncodingKey::from_secret(b"not the secret, but 32 bytes long"),
            )
            .unwrap(),
            "signature",
        ),
        ("garbage", "not-a-token".to_string(), "malformed"),
        (
            "20 KB",
            hs256(with(json!({"pad": "x".repeat(20_000)}))),
            "too_long",
        ),
    ];
    for (row, token, reason) in &rows {
        let r = with_token(s.port, token).await;
        assert_eq!(r.status, 401, "{row}: {r:?}");
        assert_eq!(r.json()["error"], "invalid_token", "{row}");
        assert_eq!(r.json()["reason"], *reason, "{row}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\""),
            "{row}"
        );
    }
    // Nothing was counted or stored for any of them.
    assert_eq!(redis.cmd("DBSIZE").await.trim(), ":0");
    // A valid token names its caller by the claim; a query identity is not consulted first.
    let good = hs256(with(json!({})));
    for _ in 0..3 {
        let r = with_token(s.port, &good).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(with_token(s.port, &good).await.status, 429);
    assert_eq!(
        redis.cmd("EXISTS sluice:{api:alice}:60000").await.trim(),
        ":1"
    );
    // No token at all: the next source names the caller.
    assert_eq!(status(s.port, "/api/x?user_id=bob", &[]).await, 200);
    let page = get(s.admin_port, "/metrics").await.unwrap().body;
    let refused = metric(&page, "sluice_rejected_requests_total", "invalid_token");
    assert_eq!(refused, rows.len() as f64);
}

/// RS256 from a PEM public key, and the confusion attack against it: an HS256 token whose
/// "secret" is that public key is refused for its algorithm, never verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_verify_and_algorithm_confusion_is_refused() {
    let dir = scratch_dir();
    let (_redis, up) = (Redis::start(&dir).await, Upstream::start(&dir).await);
    let (private, public) = openssl_pair(
        &dir,
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let body = format!(
        "identity: [{{ jwt: {{ claim: tenant, keys_file: \"{}\" }} }}]\n{}",
        public.display(),
        routes(100)
    );
    let s = Sidecar::start(&dir, "s1", up.port, &body).await;
    let claims = json!({"tenant": "acme", "exp": now() + 600});
    let rsa = EncodingKey::from_rsa_pem(&private).unwrap();
    for alg in [Algorithm::RS256, Algorithm::PS256, Algorithm::RS512] {
        let r = with_token(s.port, &signed(alg, None, &rsa, claims.clone())).await;
        assert_eq!(r.status, 200, "{alg:?}: {r:?}");
    }
    let pem = std::fs::read(&public).unwrap();
    let confused = signed(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(&pem),
        claims.clone(),
    );
    let r = with_token(s.port, &confused).await;
    assert_eq!(
        (r.status, r.json()["reason"].clone()),
        (401, json!("algorithm")),
        "{r:?}"
    );
    // Another RSA key's signature.
    let (other, _) = openssl_pair(
        &dir,
        "rsa2",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let forged = signed(
        Algorithm::RS256,
        None,
        &EncodingKey::from_rsa_pem(&other).unwrap(),
        claims,
    );
    let r = with_token(s.port, &forged).await;
    assert_eq!(
        (r.status, r.json()["reason"].clone()),
        (401, json!("signature")),
        "{r:?}"
    );
}

/// ES256 and EdDSA from openssl keys in one JWKS (kid selects), rotated by rewriting the file:
/// picked up on SIGHUP, and also without one (the file is watched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_with_two_keys_rotates_on_sighup_and_when_the_file_changes() {
    let dir = scratch_dir();
    let (_redis, up) = (Redis::start(&dir).await, Upstream::start(&dir).await);
    let (ec_key, ec_pub) = openssl_pair(
        &dir,
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let (ed_key, ed_pub) = openssl_pair(&dir, "ed", &["-algorithm", "ed25519"]);
    let (ec2_key, ec2_pub) = openssl_pair(
        &dir,
        "ec2",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let jwks = dir.join("jwks.json");
    let write_jwks = |keys: &[(&str, &Path)]| {
        let keys: Vec<Value> = keys.iter().map(|(kid, public)| jwk(kid, public)).collect();
        std::fs::write(&jwks, json!({ "keys": keys }).to_string()).unwrap();
    };
    write_jwks(&[("ec-1", &ec_pub), ("ed-1", &ed_pub)]);
    let body = format!(
        "identity: [{{ jwt: {{ claim: sub, keys_file: \"{}\" }} }}]\n{}",
        jwks.display(),
        routes(100)
    );
    let mut s = Sidecar::start(&dir, "s1", up.port, &body).await;
    let claims = json!({"sub": "carol", "exp": now() + 600});
    let es = signed(
        Algorithm::ES256,
        Some("ec-1"),
        &EncodingKey::from_ec_pem(&ec_key).unwrap(),
        claims.clone(),
    );
    let ed = signed(
        Algorithm::EdDSA,
        Some("ed-1"),
        &EncodingKey::from_ed_pem(&ed_key).unwrap(),
        claims.clone(),
    );
    let next = signed(
        Algorithm::ES256,
        Some("ec-2"),
        &EncodingKey::from_ec_pem(&ec2_key).unwrap(),
        claims.clone(),
    );
    assert_eq!(with_token(s.port, &es).await.status, 200);
    assert_eq!(with_token(s.port, &ed).await.status, 200);
    let r = with_token(s.port, &next).await;
    assert_eq!(
        (r.status, r.json()["reason"].clone()),
        (401, json!("unknown_key"))
    );
    // Rotation by SIGHUP: ec-1 retired, ec-2 in.
    write_jwks(&[("ec-2", &ec2_pub), ("ed-1", &ed_pub)]);
    signal(s.proc.pid(), "-HUP");
    let port = s.port;
    wait_until(&mut s.proc, Duration::from_secs(5), async || {
        with_token(port, &next).await.status == 200
    })
    .await;
    assert_eq!(with_token(s.port, &es).await.status, 401);
    // Rotation by the file alone.
    write_jwks(&[("ec-1", &ec_pub)]);
    wait_until(&mut s.proc, Duration::from_secs(5), async || {
        with_token(port, &es).await.status == 200
    })
    .await;
    assert_eq!(with_token(s.port, &next).await.status, 401);
    // A broken file keeps the keys in use.
    std::fs::write(&jwks, "{ not json").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(with_token(s.port, &es).await.status, 200);
}

/// The public JWK of an openssl PEM public key (EC P-256 or Ed25519), read from its DER.
fn jwk(kid: &str, public: &Path) -> Value {
    let der = Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(public)
        .output()
        .unwrap()
        .stdout;
    match der.len() {
        // SubjectPublicKeyInfo of P-256: the point (0x04 | x | y) is the last 65 bytes.
        91 => {
            let point = &der[26..];
            json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..])})
        }
        // Ed25519: the key is the last 32 bytes.
        44 => json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(&der[12..])}),
        n => panic!("unexpected public key DER of {n} bytes"),
    }
}

/// `verify: false` believes tokens only from trusted proxies; from anyone else the token is
/// ignored and the next source names the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_tokens_are_read_only_from_trusted_proxies() {
    let dir = scratch_dir();
    let (redis, up) = (Redis::start(&dir).await, Upstream::start(&dir).await);
    let body = format!(
        "{}trusted_proxies: [\"127.0.0.2/32\"]\nidentity:\n  - jwt: {{ claim: sub, verify: false }}\n  - query: user_id\n{}",
        redis_store(&redis),
        routes(100)
    );
    let s = Sidecar::start(&dir, "s1", up.port, &body).await;
    // Signed with a key sluice has never seen: a trusted hop vouched for it.
    let token = encode(
        &Header::default(),
        &json!({"sub": "dave", "exp": now() + 600}),
        &EncodingKey::from_secret(b"whatever the gateway holds......"),
    )
    .unwrap();
    let auth = format!("Bearer {token}");
    let h = [("authorization", auth.as_str())];
    let r = request_from("127.0.0.2", s.port, "/api/x?user_id=q", &h)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        redis.cmd("EXISTS sluice:{api:dave}:60000").await.trim(),
        ":1"
    );
    let r = request_from("127.0.0.3", s.port, "/api/x?user_id=q", &h)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(redis.cmd("EXISTS sluice:{api:q}:60000").await.trim(), ":1");
    // An expired token is refused even from the trusted hop.
    let stale = hs256(json!({"sub": "dave", "exp": now() - 600}));
    let auth = format!("Bearer {stale}");
    let r = request_from("127.0.0.2", s.port, "/api/x", &[("authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["reason"].clone()),
        (401, json!("expired"))
    );
}
