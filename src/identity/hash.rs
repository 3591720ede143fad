//! Hashed identities: with `identity_hash` on, the caller is the hash of what the request
//! carried, and that hash is all any key, log line, `/stats` answer or metric ever holds.

use ring::{digest, hmac};
use std::fmt;

/// How a caller's raw identity becomes the caller (`identity_hash`).
#[derive(Clone, Default)]
pub enum CallerHash {
    /// The identity is the caller, as sent.
    #[default]
    None,
    /// The lower-case hex SHA-256 of the identity (`printf %s KEY | sha256sum`).
    Sha256,
    /// The lower-case hex HMAC-SHA-256 of the identity under a key every sidecar sharing the
    /// store holds (`printf %s KEY | openssl dgst -sha256 -hmac SECRET`): a leaked hash
    /// cannot be checked against guessed keys without the secret.
    HmacSha256(hmac::Key),
}

impl CallerHash {
    /// The caller `raw` names: its hash, or itself when hashing is off.
    pub fn caller(&self, raw: Vec<u8>) -> Vec<u8> {
        match self {
            CallerHash::None => raw,
            CallerHash::Sha256 => hex(digest::digest(&digest::SHA256, &raw).as_ref()),
            CallerHash::HmacSha256(key) => hex(hmac::sign(key, &raw).as_ref()),
        }
    }

    pub fn is_on(&self) -> bool {
        !matches!(self, CallerHash::None)
    }

    /// The config's name for the mode.
    pub fn name(&self) -> &'static str {
        match self {
            CallerHash::None => "none",
            CallerHash::Sha256 => "sha256",
            CallerHash::HmacSha256(_) => "hmac_sha256",
        }
    }
}

impl fmt::Debug for CallerHash {
    /// The mode only: the HMAC key is a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq for CallerHash {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

fn hex(bytes: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_what_the_shell_tools_print() {
        // printf %s sk_live_42 | sha256sum
        let sha = CallerHash::Sha256.caller(b"sk_live_42".to_vec());
        assert_eq!(
            String::from_utf8(sha).unwrap(),
            "b6833fb647cf222dd694abc2084c1ab3ec4482411162d703bdc095d2dbf57dcb"
        );
        // printf %s sk_live_42 | openssl dgst -sha256 -hmac secret
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"secret");
        let mac = CallerHash::HmacSha256(key).caller(b"sk_live_42".to_vec());
        assert_eq!(
            String::from_utf8(mac).unwrap(),
            "8d1c016a7e2e25b8d758adae500f54e211852f7d28807b58bd584502baaf383e"
        );
        assert_eq!(CallerHash::None.caller(b"alice".to_vec()), b"alice");
        assert_eq!(
            format!(
                "{:?}",
                CallerHash::HmacSha256(hmac::Key::new(hmac::HMAC_SHA256, b"s"))
            ),
            "hmac_sha256"
        );
    }
}
