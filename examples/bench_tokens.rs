//! Makes what bench/features.sh sends: for N callers, one header line per caller and identity
//! kind (a plain header, an API key, HS256, ES256 and EdDSA tokens), and the keys that verify
//! the tokens. Usage: bench_tokens OUT_DIR N
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use std::io::Write;
use std::path::Path;

const SECRET: &[u8] = b"bench-secret-0123456789abcdef-0123456789";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn lines(dir: &Path, name: &str, n: usize, line: impl Fn(usize) -> String) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join(name)).unwrap());
    for i in 0..n {
        writeln!(f, "{}", line(i)).unwrap();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(&args[1]);
    let n: usize = args[2].parse().unwrap();
    let exp = jsonwebtoken::get_current_timestamp() + 86_400;
    let claims = |i: usize| serde_json::json!({"sub": format!("u{i}"), "exp": exp});
    let rng = SystemRandom::new();
    let es_alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let es_pkcs8 = EcdsaKeyPair::generate_pkcs8(es_alg, &rng).unwrap();
    let es_pair = EcdsaKeyPair::from_pkcs8(es_alg, es_pkcs8.as_ref(), &rng).unwrap();
    let point = es_pair.public_key().as_ref().to_vec();
    let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed_public = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref())
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
    std::fs::write(dir.join("hs.key"), SECRET).unwrap();
    let jwks = serde_json::json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "es", "x": b64(&point[1..33]), "y": b64(&point[33..])},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(&ed_public)},
    ]});
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).unwrap();
    let sign = |alg: Algorithm, kid: Option<&str>, key: &EncodingKey, i: usize| {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_string);
        format!(
            "authorization: Bearer {}",
            encode(&h, &claims(i), key).unwrap()
        )
    };
    lines(dir, "header.txt", n, |i| format!("x-user-id: u{i}"));
    lines(dir, "apikey.txt", n, |i| {
        format!("x-api-key: sk_live_{i:08}")
    });
    let hs = EncodingKey::from_secret(SECRET);
    lines(dir, "hs256.txt", n, |i| {
        sign(Algorithm::HS256, None, &hs, i)
    });
    let es = EncodingKey::from_ec_der(es_pkcs8.as_ref());
    lines(dir, "es256.txt", n, |i| {
        sign(Algorithm::ES256, Some("es"), &es, i)
    });
    let ed = EncodingKey::from_ed_der(ed_pkcs8.as_ref());
    lines(dir, "eddsa.txt", n, |i| {
        sign(Algorithm::EdDSA, Some("ed"), &ed, i)
    });
}
