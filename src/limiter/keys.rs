//! Store keys: every limit of a request resolves to one key, whose `{...}` hash tag names
//! whose counts it holds (the owner: a route or a shared bucket, and the scope's values).
//!
//! `sluice:{api:alice}:60000` is alice's 60 s sliding log on the route `api` (the form every
//! earlier version wrote, kept so an upgrade keeps its counts); `sluice:{@account:alice}:3600000`
//! her share of the bucket `account`; `sluice:{api:*}:1000:gcra` the route's global GCRA;
//! `sluice:{login:c=alice,ip=203.0.113.9}:60000` a composite. Redis Cluster keeps each hash
//! tag on one slot.

use super::limit::{Algorithm, Kind, Part, Scope};

/// Appends `bytes` escaped: every byte outside `[A-Za-z0-9._-@]` becomes `%XX`, so the mapping
/// is injective and no value can carry key syntax (`{`, `}`, `:`, `,`, `=`, `*`, `~`).
pub fn escape_into(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

/// A value, escaped, or `~` (which no escaped value can be) when the request has none.
fn value_into(out: &mut String, value: Option<&[u8]>) {
    match value {
        Some(v) => escape_into(out, v),
        None => out.push('~'),
    }
}

/// The owner of a route's own limits is the route's name; a bucket's is `@` and its name
/// (names are `[A-Za-z0-9._-]`, so the two never meet).
pub fn bucket_owner(bucket: &str) -> String {
    format!("@{bucket}")
}

/// The key of one limit: `prefix{owner:subject}:suffix`. `values` holds the request's value of
/// each part of `per`, in order (`None`: absent, the anonymous value).
pub fn limit_key(
    prefix: &str,
    owner: &str,
    per: &Scope,
    values: &[Option<&[u8]>],
    kind: &Kind,
) -> String {
    let mut key = String::with_capacity(prefix.len() + owner.len() + 32);
    key.push_str(prefix);
    key.push('{');
    key.push_str(owner);
    key.push(':');
    match per {
        Scope::Global => key.push('*'),
        Scope::Of(parts) if parts[..] == [Part::Caller] => value_into(&mut key, values[0]),
        Scope::Of(parts) => {
            for (i, (part, value)) in parts.iter().zip(values).enumerate() {
                if i > 0 {
                    key.push(',');
                }
                match part {
                    Part::Caller => key.push_str("c="),
                    Part::ClientIp => key.push_str("ip="),
                    Part::Header(name) => {
                        key.push_str("h.");
                        escape_into(&mut key, name.as_str().as_bytes());
                        key.push('=');
                    }
                    Part::Query(name) => {
                        key.push_str("q.");
                        escape_into(&mut key, name.as_bytes());
                        key.push('=');
                    }
                }
                value_into(&mut key, *value);
            }
        }
    }
    key.push_str("}:");
    match kind {
        Kind::Rate(r) => {
            key.push_str(itoa::Buffer::new().format(r.window.as_millis()));
            match r.algorithm {
                Algorithm::SlidingLog => {}
                Algorithm::SlidingWindow => key.push_str(":sw"),
                Algorithm::Gcra => key.push_str(":gcra"),
            }
        }
        Kind::Concurrency(_) => key.push_str("cc"),
        Kind::Quota(q) => {
            key.push_str(q.period.name());
            key.push('@');
            key.push_str(q.tz.name());
        }
    }
    key
}

/// The hash tag part of a key, `{...}` included: keys with the same tag share a cluster slot.
pub fn tag(key: &str) -> &str {
    let start = key.find('{').unwrap_or(0);
    let end = key[start..].find('}').map_or(key.len(), |e| start + e + 1);
    &key[start..end]
}

/// The key that remembers one request id (how often it was retried), beside `key` and in its
/// hash tag. The id is 1-64 of `[A-Za-z0-9._-]`, so it cannot escape the tag.
pub fn retry_key(key: &str, id: &str) -> String {
    let end = key.find('}').map_or(key.len(), |e| e + 1);
    format!("{}:id:{id}", &key[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::limit::Rate;
    use std::num::NonZeroU32;
    use std::time::Duration;

    fn log60() -> Kind {
        Kind::Rate(Rate::log(100, Duration::from_secs(60)))
    }

    fn caller(c: Option<&[u8]>) -> String {
        limit_key("sluice:", "api", &Scope::caller(), &[c], &log60())
    }

    #[test]
    fn per_caller_keys_are_the_ones_earlier_versions_wrote() {
        assert_eq!(caller(Some(b"alice")), "sluice:{api:alice}:60000");
        assert_eq!(caller(Some(b"a}b:c")), "sluice:{api:a%7Db%3Ac}:60000");
        assert_eq!(caller(Some(b"%7D")), "sluice:{api:%257D}:60000");
        assert_eq!(caller(None), "sluice:{api:~}:60000");
        assert_eq!(caller(Some(b"~")), "sluice:{api:%7E}:60000");
        assert_eq!(caller(Some("ö".as_bytes())), "sluice:{api:%C3%B6}:60000");
        let gcra = Kind::Rate(Rate {
            algorithm: Algorithm::Gcra,
            ..Rate::log(10, Duration::from_secs(1))
        });
        let k = limit_key("p:", "r", &Scope::caller(), &[Some(b"x")], &gcra);
        assert_eq!(k, "p:{r:x}:1000:gcra");
    }

    #[test]
    fn scopes_and_owners_never_share_a_key() {
        let slots = Kind::Concurrency(NonZeroU32::new(3).unwrap());
        assert_eq!(
            limit_key("s:", "api", &Scope::Global, &[], &slots),
            "s:{api:*}:cc"
        );
        let composite = Scope::Of(Box::new([Part::Caller, Part::ClientIp]));
        let k = limit_key(
            "s:",
            &bucket_owner("acct"),
            &composite,
            &[Some(b"bob"), None],
            &log60(),
        );
        assert_eq!(k, "s:{@acct:c=bob,ip=~}:60000");
        let header = Scope::Of(Box::new([Part::Header(http::HeaderName::from_static(
            "x-tenant",
        ))]));
        let k = limit_key("s:", "api", &header, &[Some(b"a,b=c")], &log60());
        assert_eq!(k, "s:{api:h.x-tenant=a%2Cb%3Dc}:60000");
        assert_eq!(tag(&k), "{api:h.x-tenant=a%2Cb%3Dc}");
        assert_eq!(retry_key(&k, "r1"), "s:{api:h.x-tenant=a%2Cb%3Dc}:id:r1");
    }
}
