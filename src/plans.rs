//! Plans: named sets of limits (`plans:`), and how a request's plan is chosen (`plan.from`:
//! a verified token's claim, a header from a trusted proxy, a callers file; else the default).

use crate::identity::jwt::ClaimPath;
use crate::identity::CallerHash;
use crate::limiter::Limit;
use http::{HeaderMap, HeaderName};
use serde_json::Value;

/// Every plan, and the rules that pick one for a request.
#[derive(Debug, Clone)]
pub struct Plans {
    /// Plan names, in the config's (sorted) order; a plan is its index here.
    pub names: Vec<String>,
    /// `limits[i]` are plan `i`'s limits.
    pub limits: Vec<Vec<Limit>>,
    /// The plan of a request no source names (or names a plan that does not exist).
    pub default: usize,
    /// Tried in order; the first that names a plan wins.
    pub from: Vec<PlanSource>,
}

/// One place a request's plan can come from.
#[derive(Debug, Clone)]
pub enum PlanSource {
    /// A claim of the token that named the caller (`jwt_claim: plan`, `org.plan`).
    JwtClaim(ClaimPath),
    /// A header, believed from trusted proxies only.
    Header(HeaderName),
    /// Caller → plan, from a file (re-read on reload).
    Callers(std::sync::Arc<CallersIndex>),
}

/// What a request carries that a plan may be chosen by.
pub struct PlanInputs<'a> {
    pub caller: Option<&'a [u8]>,
    /// The verified claims of the token that named the caller, if a token did.
    pub claims: Option<&'a Value>,
    pub headers: &'a HeaderMap,
    /// Whether the TCP peer is a trusted proxy.
    pub trusted_peer: bool,
}

/// The plan chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chosen {
    pub plan: usize,
    /// A source named a plan that does not exist: the default stands in (and is counted).
    pub unknown: bool,
}

impl Plans {
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The plan of one request: the first source that names one, else the default.
    pub fn choose(&self, inputs: &PlanInputs<'_>) -> Chosen {
        for source in &self.from {
            let named: Option<Result<usize, ()>> = match source {
                PlanSource::JwtClaim(path) => inputs
                    .claims
                    .and_then(|c| claim(c, path))
                    .map(|name| self.index(name).ok_or(())),
                PlanSource::Header(name) if inputs.trusted_peer => {
                    let mut lines = inputs.headers.get_all(name).iter();
                    match (lines.next(), lines.next()) {
                        (Some(v), None) => v
                            .to_str()
                            .ok()
                            .map(str::trim)
                            .filter(|v| !v.is_empty())
                            .map(|v| self.index(v).ok_or(())),
                        _ => None,
                    }
                }
                PlanSource::Header(_) => None,
                PlanSource::Callers(index) => inputs.caller.and_then(|c| index.plan(c)).map(Ok),
            };
            match named {
                Some(Ok(plan)) => {
                    return Chosen {
                        plan,
                        unknown: false,
                    }
                }
                Some(Err(())) => {
                    return Chosen {
                        plan: self.default,
                        unknown: true,
                    }
                }
                None => {}
            }
        }
        Chosen {
            plan: self.default,
            unknown: false,
        }
    }
}

/// A string claim at `path` (`plan`, or `org.plan` for a nested one).
fn claim<'v>(claims: &'v Value, path: &ClaimPath) -> Option<&'v str> {
    path.get(claims)?.as_str().filter(|s| !s.is_empty())
}

/// Callers and their plans, from a callers file: sorted arrays searched by bisection, so a
/// million callers cost what their bytes cost (a hash table's empty slots and growth would
/// more than double it). With hashed identities the callers are kept as the 32 bytes of their
/// digest.
pub enum CallersIndex {
    Clear(Vec<(Box<[u8]>, u16)>),
    Hashed(Vec<([u8; 32], u16)>),
}

impl std::fmt::Debug for CallersIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} callers", self.len())
    }
}

impl CallersIndex {
    pub fn len(&self) -> usize {
        match self {
            CallersIndex::Clear(v) => v.len(),
            CallersIndex::Hashed(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The plan of `caller` (as a request names it: the hex digest when hashing is on).
    pub fn plan(&self, caller: &[u8]) -> Option<usize> {
        match self {
            CallersIndex::Clear(v) => v
                .binary_search_by(|(c, _)| c.as_ref().cmp(caller))
                .ok()
                .map(|i| v[i].1 as usize),
            CallersIndex::Hashed(v) => {
                let key = unhex32(caller)?;
                v.binary_search_by(|(c, _)| c.cmp(&key))
                    .ok()
                    .map(|i| v[i].1 as usize)
            }
        }
    }

    /// Reads a callers file: one `caller: plan` per line (a YAML mapping of plain or quoted
    /// scalars; `#` comments and blank lines are skipped). With hashing on, a line's caller is
    /// taken as a digest when it is 64 hex digits and as a raw identity (hashed here) otherwise.
    /// Every line with an unknown plan or a malformed entry is reported by its number.
    pub fn parse(
        text: &str,
        plans: &[String],
        hash: &CallerHash,
    ) -> Result<CallersIndex, Vec<String>> {
        Self::parse_lines(text.lines().map(Ok), plans, hash, 0)
    }

    /// Reads the callers file at `path` line by line (a million callers never sit in memory
    /// twice, as text and as the index).
    pub fn read(
        path: &std::path::Path,
        plans: &[String],
        hash: &CallerHash,
    ) -> Result<CallersIndex, Vec<String>> {
        use std::io::BufRead;
        let file = std::fs::File::open(path).map_err(|e| vec![format!("cannot read: {e}")])?;
        // A hashed caller's line is about 70 bytes: room for every line at once, no regrowth.
        let size = file.metadata().map_or(0, |m| m.len() as usize);
        let lines = std::io::BufReader::with_capacity(1 << 16, file).lines();
        Self::parse_lines(lines, plans, hash, size / 64)
    }

    fn parse_lines<L: AsRef<str>>(
        lines: impl Iterator<Item = std::io::Result<L>>,
        plans: &[String],
        hash: &CallerHash,
        capacity: usize,
    ) -> Result<CallersIndex, Vec<String>> {
        let mut problems = Vec::new();
        let plan_of = |name: &str| plans.iter().position(|p| p == name);
        let (hashed_cap, clear_cap) = match hash.is_on() {
            true => (capacity, 0),
            false => (0, capacity),
        };
        let mut clear: Vec<(Box<[u8]>, u16)> = Vec::with_capacity(clear_cap);
        let mut hashed: Vec<([u8; 32], u16)> = Vec::with_capacity(hashed_cap);
        for (n, line) in lines.enumerate() {
            let line = match line {
                Ok(line) => line,
                Err(e) => {
                    problems.push(format!("line {}: {e}", n + 1));
                    break;
                }
            };
            let line = line.as_ref().trim();
            if line.is_empty() || line.starts_with('#') || line == "---" || line == "{}" {
                continue;
            }
            let Some((who, plan)) = entry(line) else {
                problems.push(format!(
                    "line {}: expected `caller: plan` (got {line:?})",
                    n + 1
                ));
                continue;
            };
            let Some(plan) = plan_of(plan) else {
                problems.push(format!(
                    "line {}: unknown plan \"{plan}\" (defined: {})",
                    n + 1,
                    plans.join(", ")
                ));
                continue;
            };
            let plan = plan as u16;
            if hash.is_on() {
                let digest = match unhex32(who.as_bytes()) {
                    Some(d) if who.len() == 64 => d,
                    _ => match unhex32(&hash.caller(who.as_bytes().to_vec())) {
                        Some(d) => d,
                        None => continue,
                    },
                };
                hashed.push((digest, plan));
            } else {
                clear.push((who.as_bytes().into(), plan));
            }
            if problems.len() > 20 {
                problems.push("... (more problems not shown)".into());
                return Err(problems);
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(match hash.is_on() {
            true => CallersIndex::Hashed(sorted(hashed)),
            false => CallersIndex::Clear(sorted(clear)),
        })
    }
}

/// Sorted by caller; a caller listed twice keeps its last line's plan, as a YAML mapping
/// read top to bottom would.
fn sorted<K: Ord>(mut entries: Vec<(K, u16)>) -> Vec<(K, u16)> {
    // Stable: equal callers stay in file order. Reversed, the last of each run comes first,
    // which `dedup_by` keeps; reversed again, ascending. All in place: a million callers are
    // never held twice.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.reverse();
    entries.dedup_by(|later, kept| later.0 == kept.0);
    entries.reverse();
    entries.shrink_to_fit();
    entries
}

/// One `key: value` line: plain or quoted (`"..."`, `'...'`) scalars, an optional `# comment`.
fn entry(line: &str) -> Option<(&str, &str)> {
    let (who, rest) = match line.as_bytes().first()? {
        q @ (b'"' | b'\'') => {
            let close = line[1..].find(*q as char)? + 1;
            let rest = line[close + 1..].trim_start().strip_prefix(':')?;
            (&line[1..close], rest)
        }
        _ => {
            let (who, rest) = line.split_once(": ")?;
            (who.trim_end(), rest)
        }
    };
    let plan = rest.split(" #").next()?.trim();
    let plan = plan
        .strip_prefix('"')
        .and_then(|p| p.strip_suffix('"'))
        .unwrap_or(plan);
    let valid = |s: &str| {
        !s.is_empty() && !s.bytes().any(|b| b < 0x20 || b == 0x7f) && !s.contains(['"', '\''])
    };
    (valid(who) && valid(plan)).then_some((who, plan))
}

/// 64 hex digits as 32 bytes.
fn unhex32(hex: &[u8]) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["free".into(), "pro".into()]
    }

    #[test]
    fn a_callers_file_maps_raw_or_hashed_callers_to_plans() {
        let text =
            "# plans\nalice: pro\n\"bob: the builder\": free  # quoted\n'carol': \"pro\"\n\n";
        let clear = CallersIndex::parse(text, &names(), &CallerHash::None).unwrap();
        assert_eq!(clear.plan(b"alice"), Some(1));
        assert_eq!(clear.plan(b"bob: the builder"), Some(0));
        assert_eq!(clear.plan(b"carol"), Some(1));
        assert_eq!(clear.plan(b"dave"), None);
        let sha = CallerHash::Sha256;
        let digest = String::from_utf8(sha.caller(b"erin".to_vec())).unwrap();
        let text = format!("alice: pro\n{digest}: pro\n");
        let hashed = CallersIndex::parse(&text, &names(), &sha).unwrap();
        assert_eq!(hashed.plan(&sha.caller(b"alice".to_vec())), Some(1));
        assert_eq!(hashed.plan(&sha.caller(b"erin".to_vec())), Some(1));
        assert_eq!(
            hashed.plan(b"alice"),
            None,
            "a hashed index holds no raw id"
        );
        assert_eq!(hashed.len(), 2);
        // Listed twice: the last line wins, as in a YAML mapping read top to bottom.
        let twice = CallersIndex::parse("a: pro\nb: free\na: free\n", &names(), &CallerHash::None);
        let twice = twice.unwrap();
        assert_eq!(
            (twice.plan(b"a"), twice.plan(b"b"), twice.len()),
            (Some(0), Some(0), 2)
        );
    }

    #[test]
    fn bad_lines_are_reported_by_number() {
        let e = CallersIndex::parse(
            "a: pro\nb: gold\nnonsense\nc:\n",
            &names(),
            &CallerHash::None,
        )
        .unwrap_err();
        assert_eq!(
            e,
            [
                "line 2: unknown plan \"gold\" (defined: free, pro)",
                "line 3: expected `caller: plan` (got \"nonsense\")",
                "line 4: expected `caller: plan` (got \"c:\")",
            ]
        );
    }

    #[test]
    fn the_first_source_that_names_a_plan_wins() {
        let plans = Plans {
            names: names(),
            limits: vec![Vec::new(), Vec::new()],
            default: 0,
            from: vec![
                PlanSource::JwtClaim(ClaimPath::parse("plan").unwrap()),
                PlanSource::Header(HeaderName::from_static("x-plan")),
                PlanSource::Callers(std::sync::Arc::new(
                    CallersIndex::parse("vip: pro\n", &names(), &CallerHash::None).unwrap(),
                )),
            ],
        };
        fn inputs<'a>(
            caller: Option<&'a [u8]>,
            claims: Option<&'a Value>,
            headers: &'a HeaderMap,
            trusted_peer: bool,
        ) -> PlanInputs<'a> {
            PlanInputs {
                caller,
                claims,
                headers,
                trusted_peer,
            }
        }
        let mut headers = HeaderMap::new();
        let pro = Chosen {
            plan: 1,
            unknown: false,
        };
        let free = Chosen {
            plan: 0,
            unknown: false,
        };
        let claims = serde_json::json!({"plan": "pro"});
        assert_eq!(
            plans.choose(&inputs(None, Some(&claims), &headers, false)),
            pro
        );
        let gold = serde_json::json!({"plan": "gold"});
        let unknown = plans.choose(&inputs(Some(b"vip"), Some(&gold), &headers, false));
        assert_eq!(
            unknown,
            Chosen {
                plan: 0,
                unknown: true
            }
        );
        headers.insert("x-plan", http::HeaderValue::from_static("pro"));
        assert_eq!(plans.choose(&inputs(None, None, &headers, true)), pro);
        assert_eq!(
            plans.choose(&inputs(None, None, &headers, false)),
            free,
            "untrusted"
        );
        assert_eq!(
            plans.choose(&inputs(Some(b"vip"), None, &HeaderMap::new(), false)),
            pro
        );
        assert_eq!(
            plans.choose(&inputs(Some(b"x"), None, &HeaderMap::new(), false)),
            free
        );
    }
}
