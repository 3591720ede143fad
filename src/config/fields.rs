//! What every part of the config's validation shares: the list of problems (and warnings)
//! with their field paths, and the readers of durations, bounded numbers and policies.

use super::file::{OnErrorFile, Text};
use super::{parse_duration, DURATION_HINT};
use crate::limiter::OnError;
use std::collections::HashMap;
use std::time::Duration;

/// Collects problems with the field path each belongs to.
pub(super) struct Problems {
    pub(super) lines: Vec<String>,
    /// Settings that are valid but can never take effect: printed, never fatal.
    pub(super) warnings: Vec<String>,
    /// Field paths whose value came from an environment variable, and that variable.
    pub(super) from_env: HashMap<&'static str, &'static str>,
}

impl Problems {
    pub(super) fn warn(&mut self, path: &str, msg: impl std::fmt::Display) {
        self.warnings.push(format!("{path}: {msg}"));
    }

    pub(super) fn add(&mut self, path: &str, msg: impl std::fmt::Display) {
        let shown = match self.from_env.get(path) {
            Some(var) => format!("{path} (from {var})"),
            None => path.to_string(),
        };
        self.lines.push(format!("{shown}: {msg}"));
    }
}

/// The duration at `path`: `default` when absent, `None` (and a problem) when malformed.
pub(super) fn duration(
    text: Option<&Text>,
    default: Duration,
    path: &str,
    p: &mut Problems,
) -> Option<Duration> {
    let Some(Text(text)) = text else {
        return Some(default);
    };
    let parsed = parse_duration(text);
    if parsed.is_none() {
        let digits = text.trim();
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            // `window: 60`: seconds or minutes? A limit off by 60x is worse than an error.
            p.add(
                path,
                format!("ambiguous: give a unit ({digits}s, {digits}m)"),
            );
        } else {
            p.add(
                path,
                format!("invalid duration \"{text}\" ({DURATION_HINT})"),
            );
        }
    }
    parsed
}

/// Like [`duration`], and zero is a problem too.
pub(super) fn positive_duration(
    text: Option<&Text>,
    default: Duration,
    path: &str,
    p: &mut Problems,
) -> Option<Duration> {
    let d = duration(text, default, path, p)?;
    if d.is_zero() {
        p.add(path, "must be longer than 0");
        return None;
    }
    Some(d)
}

/// A whole number at `path` within `min..=max`: `default` when absent.
pub(super) fn bounded(
    value: Option<i64>,
    default: u64,
    (min, max): (u64, u64),
    path: &str,
    p: &mut Problems,
) -> usize {
    let Some(v) = value else {
        return default as usize;
    };
    if v < min as i64 || v > max as i64 {
        p.add(path, format!("must be between {min} and {max} (got {v})"));
        return default as usize;
    }
    v as usize
}

pub(super) fn on_error(f: OnErrorFile) -> OnError {
    match f {
        OnErrorFile::Allow => OnError::Allow,
        OnErrorFile::Deny => OnError::Deny,
        OnErrorFile::Local => OnError::Local,
    }
}

/// A header name at `path` (`x-user-id`), lower-cased; `None` (and a problem) when it is not one.
pub(super) fn header_name(name: &str, path: &str, p: &mut Problems) -> Option<http::HeaderName> {
    match http::HeaderName::from_bytes(name.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            p.add(path, format!("invalid header name \"{name}\""));
            None
        }
    }
}

/// The contents of a secret's file at `path` (a mounted secret), its trailing newline dropped;
/// `None` (and a problem naming `at`) when it cannot be read.
pub(super) fn secret_file(file: &str, at: &str, p: &mut Problems) -> Option<Vec<u8>> {
    match std::fs::read(file) {
        Ok(mut k) => {
            while k.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                k.pop();
            }
            Some(k)
        }
        Err(e) => {
            p.add(at, format!("cannot read \"{file}\": {e}"));
            None
        }
    }
}
