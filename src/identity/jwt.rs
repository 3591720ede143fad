//! `identity: - jwt:`: the caller is a claim of a token that was verified first, with
//! `jsonwebtoken` (never a hand-written verifier). A token that is present but fails any
//! check is refused with 401 and counts nothing.

use crate::limiter::shards::Shards;
use arc_swap::ArcSwap;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest token read (bytes): longer ones are refused (`too_long`) before any decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was refused: the `reason` of the 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts, or a header or payload that is not JSON.
    Malformed,
    /// Longer than [`MAX_TOKEN_BYTES`].
    TooLong,
    /// `alg: none`, or an algorithm the configured keys cannot verify (an HS256 token checked
    /// against an RSA key is refused here, never verified with the key as a secret).
    Algorithm,
    /// A `kid` no configured key has.
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    NotYetValid,
    /// `iss` is not the configured issuer.
    Issuer,
    /// `aud` does not hold the configured audience.
    Audience,
    /// The claim that names the caller (or `exp`) is missing, empty, or not a string or number.
    ClaimMissing,
}

impl TokenError {
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::TooLong => "too_long",
            TokenError::Algorithm => "algorithm",
            TokenError::UnknownKey => "unknown_key",
            TokenError::Signature => "signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Issuer => "issuer",
            TokenError::Audience => "audience",
            TokenError::ClaimMissing => "claim_missing",
        }
    }
}

/// Which kind of key verifies which algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed,
}

impl Family {
    fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (Family::Hmac, HS256 | HS384 | HS512)
                | (Family::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (Family::EcP256, ES256)
                | (Family::EcP384, ES384)
                | (Family::Ed, EdDSA)
        )
    }
}

struct Key {
    id: Option<String>,
    family: Family,
    key: DecodingKey,
}

/// The keys a token may be signed with.
struct Keys(Vec<Key>);

impl Keys {
    /// A JWKS (`{"keys": [...]}`) or one PEM public key (RSA, EC P-256/P-384, Ed25519).
    fn parse(bytes: &[u8]) -> Result<Keys, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
        if text.trim_start().starts_with('{') {
            let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
            let mut keys = Vec::new();
            for (i, jwk) in set.keys.iter().enumerate() {
                let family = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Family::Rsa,
                    AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                        EllipticCurve::P256 => Family::EcP256,
                        EllipticCurve::P384 => Family::EcP384,
                        _ => return Err(format!("keys[{i}]: unsupported curve (P-256, P-384)")),
                    },
                    AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
                    AlgorithmParameters::OctetKey(_) => {
                        return Err(format!(
                            "keys[{i}]: a symmetric key (kty oct) belongs in secret_file, not keys_file"
                        ))
                    }
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("keys[{i}]: {e}"))?;
                keys.push(Key {
                    id: jwk.common.key_id.clone(),
                    family,
                    key,
                });
            }
            if keys.is_empty() {
                return Err("the JWKS holds no key".into());
            }
            return Ok(Keys(keys));
        }
        let pem = text.as_bytes();
        let (family, key) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (Family::Rsa, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            // The curve is known from the key's length: an uncompressed P-256 point is 65 bytes.
            let family = match ec_point_len(text) {
                Some(65) => Family::EcP256,
                Some(97) => Family::EcP384,
                _ => return Err("unsupported EC curve (P-256, P-384)".into()),
            };
            (family, k)
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            (Family::Ed, k)
        } else {
            return Err("neither a JWKS nor a PEM public key (RSA, EC or Ed25519)".into());
        };
        Ok(Keys(vec![Key {
            id: None,
            family,
            key,
        }]))
    }
}

/// The length of the public point of an EC `PUBLIC KEY` PEM: the DER's final BIT STRING.
fn ec_point_len(pem: &str) -> Option<usize> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()?;
    // SubjectPublicKeyInfo for P-256 is 91 bytes (point 65), for P-384 120 (point 97).
    match der.len() {
        91 => Some(65),
        120 => Some(97),
        _ => None,
    }
}

/// Where the keys come from.
enum Source {
    /// `secret_file` / `secret_env`: HS256/384/512.
    Secret(Key),
    /// `keys_file`: re-read on reload and when the file changes.
    File {
        path: PathBuf,
        keys: ArcSwap<Keys>,
        /// A fingerprint of the file's contents when last read.
        seen: Mutex<Option<u64>>,
    },
    /// `verify: false`: a trusted hop verified the token; only its claims are read.
    Unverified,
}

/// Where a claim is in a token's payload: `sub`, or `org.id` for a nested one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(Vec<String>);

impl ClaimPath {
    /// Dot-separated names, none of them empty; `None` for anything else (`""`, `org.`).
    pub fn parse(text: &str) -> Option<ClaimPath> {
        let valid = !text.is_empty() && !text.split('.').any(str::is_empty);
        valid.then(|| ClaimPath(text.split('.').map(str::to_string).collect()))
    }

    /// The claim's value in `claims`, if it is there.
    pub fn get<'v>(&self, claims: &'v Value) -> Option<&'v Value> {
        self.0.iter().try_fold(claims, |at, name| at.get(name))
    }
}

/// The caller a verified token names, and its claims.
pub type Claimed = (Vec<u8>, Arc<Value>);

/// Most verified tokens remembered per source (see [`Jwt::verified`]).
pub const CACHED_TOKENS: usize = 65_536;

/// A token that verified: the caller it names, its claims, and until when it is believed.
struct Verified {
    caller: Vec<u8>,
    claims: Arc<Value>,
    /// `exp` plus the leeway, in Unix seconds: past it the token is verified again (and
    /// refused as expired).
    until: u64,
}

/// One `jwt` identity source.
pub struct Jwt {
    /// The claim that names the caller.
    claim: ClaimPath,
    /// Where the token is: `None` for `Authorization: Bearer`.
    pub header: Option<http::HeaderName>,
    source: Source,
    /// One validation per algorithm the keys can verify (built once).
    validations: Vec<(Algorithm, Validation)>,
    /// Tokens that verified, by their SHA-256, until they expire: an ES256 or EdDSA check costs
    /// ~55 µs of CPU, a lookup ~1 µs (bench/FEATURES.md). Emptied when the keys change.
    cache: Shards<Verified>,
    leeway: u64,
}

/// What the config says of a `jwt` source.
pub struct JwtSettings {
    pub claim: ClaimPath,
    pub header: Option<http::HeaderName>,
    pub secret: Option<Vec<u8>>,
    pub keys_file: Option<PathBuf>,
    pub verify: bool,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
}

const ALL: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

impl Jwt {
    /// Builds the source; the error says what is wrong with the keys.
    pub fn new(s: JwtSettings) -> Result<Jwt, String> {
        let source = match (s.verify, s.secret, s.keys_file) {
            (false, _, _) => Source::Unverified,
            (true, Some(secret), None) => Source::Secret(Key {
                id: None,
                family: Family::Hmac,
                key: DecodingKey::from_secret(&secret),
            }),
            (true, None, Some(path)) => {
                let (keys, seen) = read_keys(&path)?;
                Source::File {
                    path,
                    keys: ArcSwap::from_pointee(keys),
                    seen: Mutex::new(seen),
                }
            }
            _ => return Err("needs exactly one of secret_file, secret_env or keys_file".into()),
        };
        let validations = ALL
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = s.leeway.as_secs();
                v.validate_nbf = true;
                match &s.audience {
                    Some(aud) => v.set_audience(&[aud]),
                    None => v.validate_aud = false,
                }
                if let Some(iss) = &s.issuer {
                    v.set_issuer(&[iss]);
                }
                if !s.verify {
                    v.insecure_disable_signature_validation();
                }
                (alg, v)
            })
            .collect();
        Ok(Jwt {
            claim: s.claim,
            header: s.header,
            source,
            validations,
            cache: Shards::with_capacity(16, CACHED_TOKENS),
            leeway: s.leeway.as_secs(),
        })
    }

    /// Whether this source believes tokens only from trusted proxies (`verify: false`).
    pub fn unverified(&self) -> bool {
        matches!(self.source, Source::Unverified)
    }

    /// The caller `token` names and its claims, once it verifies; a token that verified before
    /// is taken from the cache until its `exp` (plus the leeway) passes. Only verified tokens
    /// are remembered, by their hash: a refused one is checked (and refused) every time.
    pub fn verified(&self, token: &[u8]) -> Result<Claimed, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let now = jsonwebtoken::get_current_timestamp();
        let text = token_key(token);
        let key = self.cache.key(&text);
        if let Some(v) = self.cache.lock(key).get(key) {
            if now < v.until {
                return Ok((v.caller.clone(), v.claims.clone()));
            }
        }
        let claims = self.verify(token)?;
        let caller = self.caller(&claims)?;
        let claims = Arc::new(claims);
        // verify() refused a token without a numeric exp; read it again for the expiry.
        if let Some(exp) = claims.get("exp").and_then(Value::as_u64) {
            let index = self.cache.index(key);
            let mut shard = self.cache.lock(key);
            if self.cache.make_room(index, &mut shard, now, |v| v.until) {
                let verified = Verified {
                    caller: caller.clone(),
                    claims: claims.clone(),
                    until: exp.saturating_add(self.leeway),
                };
                shard.insert(key, verified);
            }
        }
        Ok((caller, claims))
    }

    /// The verified claims of `token` (no cache).
    pub fn verify(&self, token: &[u8]) -> Result<Value, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let token = std::str::from_utf8(token).map_err(|_| TokenError::Malformed)?;
        let (alg, kid) = header(token)?;
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(TokenError::Algorithm)?;
        let claims = match &self.source {
            Source::Unverified => decode(token, &DecodingKey::from_secret(&[]), validation)?,
            Source::Secret(key) => {
                if !key.family.verifies(alg) {
                    return Err(TokenError::Algorithm);
                }
                decode(token, &key.key, validation)?
            }
            Source::File { keys, .. } => {
                let keys = keys.load();
                let mut candidates = keys
                    .0
                    .iter()
                    .filter(|k| kid.is_none() || k.id.as_deref() == kid.as_deref())
                    .peekable();
                if candidates.peek().is_none() {
                    return Err(TokenError::UnknownKey);
                }
                let mut last = TokenError::Algorithm;
                let mut found = None;
                for key in candidates.filter(|k| k.family.verifies(alg)) {
                    match decode(token, &key.key, validation) {
                        Ok(claims) => {
                            found = Some(claims);
                            break;
                        }
                        // Another key of the set may have signed it: only a bad signature
                        // is worth trying the next key for.
                        Err(TokenError::Signature) => last = TokenError::Signature,
                        Err(other) => return Err(other),
                    }
                }
                found.ok_or(last)?
            }
        };
        Ok(claims)
    }

    /// The caller a verified token names: the claim's string, or a number's digits.
    pub fn caller(&self, claims: &Value) -> Result<Vec<u8>, TokenError> {
        match self.claim.get(claims).ok_or(TokenError::ClaimMissing)? {
            Value::String(s) if !s.is_empty() => Ok(s.as_bytes().to_vec()),
            Value::Number(n) => Ok(n.to_string().into_bytes()),
            _ => Err(TokenError::ClaimMissing),
        }
    }

    /// Re-reads `keys_file` when its contents changed since it was last read (a rewrite in
    /// place, or a Kubernetes secret's symlink swap); a file that no longer parses keeps the
    /// keys in use (and says so). Returns whether new keys were taken.
    pub fn refresh(&self) -> bool {
        let Source::File { path, keys, seen } = &self.source else {
            return false;
        };
        let Ok(bytes) = std::fs::read(path) else {
            return false;
        };
        let now = Some(fingerprint(&bytes));
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        if now == *seen {
            return false;
        }
        *seen = now;
        match Keys::parse(&bytes) {
            Ok(fresh) => {
                log::info!(
                    "jwt keys_file {}: {} key(s) loaded",
                    path.display(),
                    fresh.0.len()
                );
                keys.store(Arc::new(fresh));
                // A token of a retired key must not outlive it in the cache.
                self.cache.sweep_all(|_, _| false);
                true
            }
            Err(e) => {
                log::warn!(
                    "jwt keys_file {}: {e}; the keys in use are kept",
                    path.display()
                );
                false
            }
        }
    }
}

/// The cache's key for a token: its SHA-256 in hex (a token may be 16 KiB; its key is 64 bytes).
fn token_key(token: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token);
    let mut key = String::with_capacity(64);
    for b in digest.as_ref() {
        use std::fmt::Write;
        let _ = write!(key, "{b:02x}");
    }
    key
}

fn fingerprint(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn read_keys(path: &std::path::Path) -> Result<(Keys, Option<u64>), String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read \"{}\": {e}", path.display()))?;
    Ok((Keys::parse(&bytes)?, Some(fingerprint(&bytes))))
}

/// The algorithm and key id of a token's header, read (not trusted) to pick the key.
fn header(token: &str) -> Result<(Algorithm, Option<String>), TokenError> {
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| TokenError::Malformed)?;
    let header: Value = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(TokenError::Malformed)?;
    let alg: Algorithm = alg.parse().map_err(|_| TokenError::Algorithm)?;
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok((alg, kid))
}

fn decode(token: &str, key: &DecodingKey, v: &Validation) -> Result<Value, TokenError> {
    jsonwebtoken::decode::<Value>(token, key, v)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::Crypto(_) => TokenError::Signature,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidIssuer => TokenError::Issuer,
            ErrorKind::InvalidAudience => TokenError::Audience,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => TokenError::Algorithm,
            ErrorKind::MissingRequiredClaim(_) => TokenError::ClaimMissing,
            _ => TokenError::Malformed,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use ring::rand::SystemRandom;
    use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn settings() -> JwtSettings {
        JwtSettings {
            claim: ClaimPath::parse("sub").unwrap(),
            header: None,
            secret: Some(SECRET.to_vec()),
            keys_file: None,
            verify: true,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
        }
    }

    fn hs(claims: Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A key pair made here, its JWK (public half) and a signer.
    struct Pair {
        jwk: Value,
        alg: Algorithm,
        key: EncodingKey,
    }

    fn es256(kid: &str) -> Pair {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        Pair {
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..])}),
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        }
    }

    fn eddsa(kid: &str) -> Pair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Pair {
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key().as_ref())}),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
        }
    }

    fn sign(pair: &Pair, kid: Option<&str>, claims: Value) -> String {
        let mut header = Header::new(pair.alg);
        header.kid = kid.map(str::to_string);
        encode(&header, &claims, &pair.key).unwrap()
    }

    fn keys_file(name: &str, pairs: &[&Pair]) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("sluice-jwks-{}-{name}.json", std::process::id()));
        let keys: Vec<Value> = pairs.iter().map(|p| p.jwk.clone()).collect();
        std::fs::write(&path, json!({ "keys": keys }).to_string()).unwrap();
        path
    }

    fn with_keys(path: &std::path::Path) -> Jwt {
        Jwt::new(JwtSettings {
            secret: None,
            keys_file: Some(path.to_path_buf()),
            ..settings()
        })
        .unwrap()
    }

    /// Through the cache, as requests go.
    fn caller(jwt: &Jwt, token: &str) -> Result<String, TokenError> {
        let (caller, _) = jwt.verified(token.as_bytes())?;
        Ok(String::from_utf8(caller).unwrap())
    }

    #[test]
    fn a_cached_token_is_believed_only_until_it_expires() {
        let jwt = Jwt::new(JwtSettings {
            leeway: Duration::ZERO,
            ..settings()
        })
        .unwrap();
        let token = hs(json!({"sub": "alice", "exp": now() + 1}));
        assert_eq!(caller(&jwt, &token), Ok("alice".into()));
        assert_eq!(jwt.cache.len(), 1);
        assert_eq!(caller(&jwt, &token), Ok("alice".into()), "from the cache");
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(caller(&jwt, &token), Err(TokenError::Expired));
        // Refusals are never remembered.
        let wrong = hs(json!({"exp": now() + 60}));
        assert_eq!(caller(&jwt, &wrong), Err(TokenError::ClaimMissing));
        assert_eq!(jwt.cache.len(), 1);
    }

    #[test]
    fn an_hs256_token_names_its_caller_by_a_claim_once_verified() {
        let jwt = Jwt::new(settings()).unwrap();
        let exp = now() + 600;
        assert_eq!(
            caller(&jwt, &hs(json!({"sub": "alice", "exp": exp}))),
            Ok("alice".into())
        );
        assert_eq!(
            caller(&jwt, &hs(json!({"sub": 42, "exp": exp}))),
            Ok("42".into())
        );
        let nested = Jwt::new(JwtSettings {
            claim: ClaimPath::parse("org.id").unwrap(),
            ..settings()
        })
        .unwrap();
        let token = hs(json!({"org": {"id": "acme"}, "exp": exp}));
        assert_eq!(caller(&nested, &token), Ok("acme".into()));
        for claims in [
            json!({"exp": exp}),
            json!({"sub": "", "exp": exp}),
            json!({"sub": null, "exp": exp}),
            json!({"sub": "alice"}),
        ] {
            assert_eq!(
                caller(&jwt, &hs(claims.clone())),
                Err(TokenError::ClaimMissing),
                "{claims}"
            );
        }
        // A registered claim of the wrong type is a malformed token (RFC 7519: sub is a string).
        let array = hs(json!({"sub": ["a"], "exp": exp}));
        assert_eq!(caller(&jwt, &array), Err(TokenError::Malformed));
        let wrong = encode(
            &Header::default(),
            &json!({"sub": "alice", "exp": exp}),
            &EncodingKey::from_secret(b"another secret of 32 bytes......"),
        )
        .unwrap();
        assert_eq!(caller(&jwt, &wrong), Err(TokenError::Signature));
    }

    #[test]
    fn time_issuer_and_audience_are_checked_with_the_leeway() {
        let jwt = Jwt::new(JwtSettings {
            issuer: Some("https://auth.example.com".into()),
            audience: Some("api".into()),
            ..settings()
        })
        .unwrap();
        let good = json!({"sub": "a", "iss": "https://auth.example.com", "aud": "api"});
        let with = |extra: Value| {
            let mut c = good.clone();
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            caller(&jwt, &hs(c))
        };
        assert_eq!(with(json!({"exp": now() + 60})), Ok("a".into()));
        assert_eq!(
            with(json!({"exp": now() - 10})),
            Ok("a".into()),
            "within the leeway"
        );
        assert_eq!(with(json!({"exp": now() - 60})), Err(TokenError::Expired));
        assert_eq!(
            with(json!({"exp": now() + 60, "nbf": now() + 10})),
            Ok("a".into())
        );
        assert_eq!(
            with(json!({"exp": now() + 600, "nbf": now() + 300})),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            with(json!({"exp": now() + 60, "aud": "other"})),
            Err(TokenError::Audience)
        );
        assert_eq!(
            with(json!({"exp": now() + 60, "aud": ["other", "api"]})),
            Ok("a".into())
        );
        assert_eq!(
            with(json!({"exp": now() + 60, "iss": "https://evil.example"})),
            Err(TokenError::Issuer)
        );
        // Without a configured audience, a token's aud is not a reason to refuse it.
        let open = Jwt::new(settings()).unwrap();
        let token = hs(json!({"sub": "a", "aud": "x", "exp": now() + 60}));
        assert_eq!(caller(&open, &token), Ok("a".into()));
    }

    #[test]
    fn none_confused_algorithms_garbage_and_huge_tokens_are_refused() {
        let jwt = Jwt::new(settings()).unwrap();
        let claims = b64(json!({"sub": "admin", "exp": now() + 60})
            .to_string()
            .as_bytes());
        let none = format!("{}.{claims}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
        assert_eq!(caller(&jwt, &none), Err(TokenError::Algorithm));
        let none = format!("{}.{claims}.", b64(br#"{"alg":"None"}"#));
        assert_eq!(caller(&jwt, &none), Err(TokenError::Algorithm));
        // An ES256 token against an HS secret, and an HS256 token against public keys:
        // refused for its algorithm, never verified with a key of the other kind.
        let pair = es256("k1");
        let es = sign(
            &pair,
            Some("k1"),
            json!({"sub": "admin", "exp": now() + 60}),
        );
        assert_eq!(caller(&jwt, &es), Err(TokenError::Algorithm));
        let path = keys_file("confused", &[&pair]);
        let public = std::fs::read(&path).unwrap();
        let keyed = with_keys(&path);
        let confused = encode(
            &Header::default(),
            &json!({"sub": "admin", "exp": now() + 60}),
            &EncodingKey::from_secret(&public),
        )
        .unwrap();
        assert_eq!(caller(&keyed, &confused), Err(TokenError::Algorithm));
        for garbage in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.???.***",
            "eyJhbGciOiJIUzI1NiJ9.e30",
        ] {
            assert_eq!(
                caller(&jwt, garbage),
                Err(TokenError::Malformed),
                "{garbage:?}"
            );
        }
        let header_not_json = format!("{}.{claims}.sig", b64(b"not json"));
        assert_eq!(caller(&jwt, &header_not_json), Err(TokenError::Malformed));
        let huge = hs(json!({"sub": "a", "exp": now() + 60, "pad": "x".repeat(20_000)}));
        assert_eq!(caller(&jwt, &huge), Err(TokenError::TooLong));
        assert_eq!(jwt.verify(&[0xff, 0xfe]), Err(TokenError::Malformed));
    }

    #[test]
    fn a_jwks_picks_keys_by_kid_and_rotates_when_the_file_changes() {
        let (es, ed, next) = (es256("es-1"), eddsa("ed-1"), es256("es-2"));
        let path = keys_file("rotate", &[&es, &ed]);
        let jwt = with_keys(&path);
        let claims = json!({"sub": "bob", "exp": now() + 60});
        assert_eq!(
            caller(&jwt, &sign(&es, Some("es-1"), claims.clone())),
            Ok("bob".into())
        );
        assert_eq!(
            caller(&jwt, &sign(&ed, Some("ed-1"), claims.clone())),
            Ok("bob".into())
        );
        // Without a kid, every key that can verify the algorithm is tried.
        assert_eq!(
            caller(&jwt, &sign(&ed, None, claims.clone())),
            Ok("bob".into())
        );
        let rotated = sign(&next, Some("es-2"), claims.clone());
        assert_eq!(caller(&jwt, &rotated), Err(TokenError::UnknownKey));
        // A kid that names a key which did not sign it.
        let forged = sign(&next, Some("es-1"), claims.clone());
        assert_eq!(caller(&jwt, &forged), Err(TokenError::Signature));
        assert!(!jwt.refresh(), "unchanged file: nothing re-read");
        // Rotation: the new set replaces the old one.
        let path2 = keys_file("rotate", &[&next]);
        assert_eq!(path, path2);
        assert!(jwt.refresh());
        assert_eq!(caller(&jwt, &rotated), Ok("bob".into()));
        assert_eq!(
            caller(&jwt, &sign(&es, Some("es-1"), claims.clone())),
            Err(TokenError::UnknownKey)
        );
        // A broken file keeps the keys in use.
        std::fs::write(&path, "{ not json").unwrap();
        assert!(!jwt.refresh());
        assert_eq!(caller(&jwt, &rotated), Ok("bob".into()));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn key_files_that_cannot_verify_are_refused_at_load() {
        let bad = |name: &str, text: &str| {
            let path =
                std::env::temp_dir().join(format!("sluice-keys-{}-{name}", std::process::id()));
            std::fs::write(&path, text).unwrap();
            let e = Jwt::new(JwtSettings {
                secret: None,
                keys_file: Some(path.clone()),
                ..settings()
            })
            .err()
            .unwrap();
            std::fs::remove_file(&path).unwrap();
            e
        };
        assert_eq!(bad("empty", r#"{"keys": []}"#), "the JWKS holds no key");
        assert!(
            bad("oct", r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).contains("secret_file")
        );
        assert!(bad("text", "hello").contains("neither a JWKS nor a PEM"));
        assert!(bad("json", "{").starts_with("not a JWKS"));
    }
}
