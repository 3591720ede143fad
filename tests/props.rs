//! Property tests over every parser of client input (path, identity, X-Forwarded-For) and the
//! config loader: no input panics, normalising is idempotent, and no two callers share a key.
//!
//! `PROPTEST_CASES` sets the number of cases per property (default 256); `.ci/run` runs a
//! longer, time-capped round.

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use sluice::identity::jwt::JwtSettings;
use sluice::identity::Jwt;
use sluice::identity::{
    parse_forwarded_ip, query_param, CallerHash, Cidr, IdentityError, IdentityExtractor,
    IdentitySource, TrustedProxies,
};
use sluice::limiter::keys::limit_key;
use sluice::limiter::{Kind, Rate, Scope};
use sluice::routes::normalize_path;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Path-like strings: segments of dots, slashes, escapes (valid and not) and ordinary text.
fn path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_string()),
        Just("//".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2E%2e".to_string()),
        Just("%2F".to_string()),
        Just("%2f".to_string()),
        Just("%41".to_string()),
        Just("%7e".to_string()),
        Just("%".to_string()),
        Just("%z".to_string()),
        Just(";".to_string()),
        "[a-zA-Z0-9_~-]{1,6}",
        "\\PC{1,3}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|parts| format!("/{}", parts.concat()))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

proptest! {
    #[test]
    fn normalising_never_panics_and_twice_is_once(p in path()) {
        if let Ok(once) = normalize_path(&p) {
            let twice = normalize_path(&once).expect("a normal path normalises");
            prop_assert_eq!(&*twice, &*once);
            prop_assert!(once.starts_with('/'));
            prop_assert!(!once.contains("//"), "{once}");
            prop_assert!(once.split('/').all(|s| s != "." && s != ".."), "{once}");
            // Escapes left are of reserved bytes, in upper case.
            let b = once.as_bytes();
            for (i, _) in once.match_indices('%') {
                let hex = &once[i + 1..i + 3];
                prop_assert_eq!(hex, hex.to_ascii_uppercase());
                let v = u8::from_str_radix(hex, 16).unwrap();
                prop_assert!(!is_unreserved(v), "{once}");
                prop_assert!(b.len() >= i + 3);
            }
        }
    }

    #[test]
    fn a_path_is_kept_as_it_came_exactly_when_it_is_already_normal(p in path()) {
        // Normal: no escape, no doubled slash, no `.` or `..` segment.
        let normal = !p.contains('%')
            && !p.contains("//")
            && p.split('/').all(|s| s != "." && s != "..");
        match normalize_path(&p) {
            Ok(std::borrow::Cow::Borrowed(kept)) => {
                prop_assert!(normal, "{p} kept as it came");
                prop_assert_eq!(kept, p.as_str());
            }
            _ => prop_assert!(!normal, "{p} rewritten or refused"),
        }
    }

    #[test]
    fn dot_segments_and_doubled_slashes_never_change_the_route_path(
        segs in prop::collection::vec("[a-z0-9]{1,5}", 1..6),
        noise in prop::collection::vec(0u8..4, 1..6),
    ) {
        let plain = format!("/{}", segs.join("/"));
        let mut noisy = String::new();
        for (i, seg) in segs.iter().enumerate() {
            match noise[i % noise.len()] {
                0 => noisy.push_str("//"),
                1 => noisy.push_str("/./"),
                2 => noisy.push_str("/zz/../"),
                _ => noisy.push_str("/%2e/"),
            }
            noisy.push_str(seg);
        }
        prop_assert_eq!(normalize_path(&noisy).unwrap(), plain);
    }

    #[test]
    fn a_percent_encoded_identity_decodes_to_its_bytes(id in prop::collection::vec(any::<u8>(), 1..64)) {
        let encoded: String = id.iter().map(|b| format!("%{b:02X}")).collect();
        // Trimmed like a header's value; only blanks is no identity.
        let trimmed = id.trim_ascii().to_vec();
        let expected = (!trimmed.is_empty()).then_some(trimmed);
        prop_assert_eq!(query_param(&format!("a=1&user_id={encoded}&b"), "user_id"), expected);
    }

    #[test]
    fn identities_are_bounded_and_free_of_control_characters(
        query in "\\PC{0,80}",
        raw_header in prop::collection::vec(32u8..=255, 0..80),
    ) {
        let e = IdentityExtractor {
            sources: vec![
                IdentitySource::Query("user_id".into()),
                IdentitySource::Header(HeaderName::from_static("x-user-id")),
                IdentitySource::ClientIp,
            ],
            trusted: TrustedProxies::default(),
            max_bytes: 16,
            hash: Default::default(),
        };
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&raw_header) {
            headers.insert("x-user-id", v);
        }
        let peer = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        match e.caller(Some(&format!("user_id={query}")), &headers, peer) {
            Ok(Some(id)) => {
                prop_assert!(!id.is_empty() && id.len() <= 16);
                prop_assert!(id.iter().all(|&b| b >= 0x20 && b != 0x7f));
            }
            Ok(None) => prop_assert!(false, "the client IP is always there"),
            Err(IdentityError::TooLong { max_bytes }) => prop_assert_eq!(max_bytes, 16),
            Err(IdentityError::Invalid) => {}
            Err(IdentityError::Token(why)) => prop_assert!(false, "no token source: {why:?}"),
        }
    }

    #[test]
    fn credentials_of_any_bytes_hash_to_their_own_caller(
        a in prop::collection::vec(any::<u8>(), 0..300),
        b in prop::collection::vec(any::<u8>(), 0..300),
        bearer in any::<bool>(),
    ) {
        let e = IdentityExtractor {
            sources: vec![
                IdentitySource::ApiKey(HeaderName::from_static("x-api-key")),
                IdentitySource::Bearer,
            ],
            trusted: TrustedProxies::default(),
            max_bytes: 16,
            hash: CallerHash::Sha256,
        };
        let caller = |raw: &[u8]| {
            let mut headers = HeaderMap::new();
            let value = match bearer {
                true => [&b"Bearer "[..], raw].concat(),
                false => raw.to_vec(),
            };
            let name = if bearer { "authorization" } else { "x-api-key" };
            let v = HeaderValue::from_bytes(&value).ok()?;
            headers.insert(name, v);
            Some(e.caller(None, &headers, None))
        };
        if let (Some(ca), Some(cb)) = (caller(&a), caller(&b)) {
            if let Ok(Some(id)) = &ca {
                prop_assert_eq!(id.len(), 64);
                prop_assert!(id.iter().all(|b| b.is_ascii_hexdigit()));
            }
            // Values that trim to the same bytes are one caller; any other two never are.
            if a.trim_ascii() != b.trim_ascii() {
                if let (Ok(Some(x)), Ok(Some(y))) = (&ca, &cb) {
                    prop_assert_ne!(x, y);
                }
            }
        }
    }

    #[test]
    fn no_token_bytes_panic_or_pass_as_another_caller(
        garbage in prop::collection::vec(any::<u8>(), 0..400),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let jwt = hs256_source();
        prop_assert!(jwt.verify(&garbage).is_err(), "random bytes never verify");
        // One byte of a valid token changed: refused, or (when the change decodes to the same
        // bytes, as base64's unused low bits can) still alice, never anyone else.
        let mut token = alice_token().into_bytes();
        let i = at.index(token.len());
        token[i] = byte;
        if let Ok(claims) = jwt.verify(&token) {
            prop_assert_eq!(jwt.caller(&claims).ok(), Some(b"alice".to_vec()));
        }
    }

    #[test]
    fn two_distinct_identities_never_share_a_key(
        a in prop::collection::vec(any::<u8>(), 0..24),
        b in prop::collection::vec(any::<u8>(), 0..24),
        anonymous in any::<bool>(),
    ) {
        let kind = Kind::Rate(Rate::log(1, std::time::Duration::from_secs(1)));
        let key = |c: Option<&[u8]>| limit_key("sluice:", "api", &Scope::caller(), &[c], &kind);
        let ka = key(if anonymous { None } else { Some(&a) });
        let kb = key(Some(&b));
        if anonymous || a != b {
            prop_assert_ne!(&ka, &kb);
        } else {
            prop_assert_eq!(&ka, &kb);
        }
        // One hash tag, which no identity can close early.
        prop_assert_eq!(kb.matches('{').count(), 1);
        prop_assert_eq!(kb.matches('}').count(), 1);
        prop_assert!(kb.ends_with("}:1000"), "{kb}");
    }

    #[test]
    fn forwarded_entries_parse_with_and_without_ports(
        v4 in any::<[u8; 4]>(),
        v6 in any::<[u16; 8]>(),
        port in any::<u16>(),
    ) {
        let v4 = IpAddr::V4(Ipv4Addr::from(v4));
        let v6 = IpAddr::V6(Ipv6Addr::from(v6));
        let canonical = |ip: IpAddr| match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            other => other,
        };
        prop_assert_eq!(parse_forwarded_ip(v4.to_string().as_bytes()), Some(v4));
        prop_assert_eq!(parse_forwarded_ip(format!("{v4}:{port}").as_bytes()), Some(v4));
        prop_assert_eq!(parse_forwarded_ip(v6.to_string().as_bytes()), Some(canonical(v6)));
        prop_assert_eq!(parse_forwarded_ip(format!("[{v6}]").as_bytes()), Some(canonical(v6)));
        prop_assert_eq!(parse_forwarded_ip(format!(" [{v6}]:{port} ").as_bytes()), Some(canonical(v6)));
        prop_assert_eq!(parse_forwarded_ip(format!("{v4}:{port}999999").as_bytes()), None);
    }

    #[test]
    fn any_forwarded_header_yields_the_peer_or_an_address_it_names(
        lines in prop::collection::vec(prop::collection::vec(32u8..=255, 0..40), 0..4),
    ) {
        let trusted = TrustedProxies(vec![Cidr::parse("127.0.0.0/8").unwrap()]);
        let mut headers = HeaderMap::new();
        for line in &lines {
            if let Ok(v) = HeaderValue::from_bytes(line) {
                headers.append("x-forwarded-for", v);
            }
        }
        let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let ip = trusted.client_ip(peer, &headers);
        let named = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(parse_forwarded_ip)
            .any(|a| a == ip);
        prop_assert!(ip == peer || named, "{ip}");
    }

    #[test]
    fn the_config_loader_never_panics_on_any_text(text in "\\PC{0,200}") {
        if let Err(e) = sluice::config::parse("f.yaml", &text, &|_| None) {
            prop_assert!(e.lines.iter().all(|l| l.starts_with("f.yaml: ")));
        }
    }

    #[test]
    fn the_config_loader_reports_or_accepts_any_shaped_config(
        listen in prop_oneof![Just("127.0.0.1:1".to_string()), "\\PC{0,20}"],
        threads in any::<i64>(),
        window in prop_oneof![Just("1s".to_string()), "[0-9]{0,4}(ms|s|m|h|d|x)?"],
        requests in any::<i64>(),
        prefix in path(),
        cidr in prop_oneof![Just("::ffff:10.0.0.0/104".to_string()), "[0-9a-f:./]{0,20}"],
        max_identity in any::<i64>(),
    ) {
        let text = format!(
            "server: {{ listen: {listen:?}, threads: {threads}, max_identity_bytes: {max_identity} }}\n\
             upstream: {{ addrs: [\"h:1\"] }}\n\
             trusted_proxies: [{cidr:?}]\n\
             request_ids: {{ retry_window: {window:?} }}\n\
             routes:\n  - name: r\n    match: {{ path_prefix: {prefix:?} }}\n    limits: [{{ requests: {requests}, window: {window:?} }}]\n"
        );
        match sluice::config::parse("f.yaml", &text, &|_| None) {
            Ok(c) => {
                // What loads is what runs: route paths are in normal form.
                let route = &c.routes.routes()[0];
                if let sluice::routes::PathMatch::Prefix(p) = &route.path {
                    prop_assert_eq!(&*normalize_path(p).unwrap(), p.as_str());
                }
            }
            Err(e) => prop_assert!(e.lines.iter().all(|l| l.starts_with("f.yaml: ")), "{e}"),
        }
    }
}

const JWT_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn hs256_source() -> Jwt {
    Jwt::new(JwtSettings {
        claim: sluice::identity::jwt::ClaimPath::parse("sub").unwrap(),
        header: None,
        secret: Some(JWT_SECRET.to_vec()),
        keys_file: None,
        verify: true,
        issuer: None,
        audience: None,
        leeway: std::time::Duration::from_secs(30),
    })
    .unwrap()
}

fn alice_token() -> String {
    let claims =
        serde_json::json!({"sub": "alice", "exp": jsonwebtoken::get_current_timestamp() + 3600});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET),
    )
    .unwrap()
}
