//! The limits of the config: shared buckets, routes and their limits, scopes (`per`), costs
//! and per-caller overrides, validated into [`Route`]s whose limits are ready to count.

use super::fields::{bounded, header_name, on_error, positive_duration, Problems};
use super::file::*;
use super::format_duration;
use crate::exempt::Exempt;
use crate::identity::jwt::ClaimPath;
use crate::identity::{CallerHash, IdentitySource, TrustedProxies};
use crate::identity::{Cidr, OnMissingIdentity};
use crate::limiter::{Algorithm, Cost, Kind, Limit, Part, Period, Quota, Rate, Scope, StatusMatch};
use crate::plans::{CallersIndex, PlanSource, Plans};
use crate::refusal::{Format, RefusalStyle, Template, Values as RenderValues};
use crate::routes::{normalize_path, CostFrom, PathMatch, Route, Throttle};
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Every route, each with its own limits followed by those of the buckets it draws from.
pub(super) fn routes(file: &FileConfig, plans: Option<&Plans>, p: &mut Problems) -> Vec<Route> {
    let buckets = buckets(&file.buckets, p);
    let global_exempt = exempt(file.exempt.as_ref(), Exempt::default_global(), "exempt", p);
    let on_missing = file.on_missing_identity.map(on_missing).unwrap_or_default();
    let global_refusal = Arc::new(
        file.refusal
            .as_ref()
            .map_or_else(RefusalStyle::default, |r| refusal(r, "refusal", p)),
    );
    let mut used: Vec<&str> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut routes = Vec::new();
    for (i, r) in file.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if name_ok(&r.name, &format!("{path}.name"), "route", p) {
            if let Some(first) = seen.insert(&r.name, i) {
                p.add(
                    &format!("{path}.name"),
                    format!("duplicate route name \"{}\" (also routes[{first}])", r.name),
                );
            }
        }
        let (path_match, methods) = matcher(&r.matcher, &format!("{path}.match"), p);
        let headers = match_headers(
            r.matcher.headers.as_ref(),
            &format!("{path}.match.headers"),
            p,
        );
        let (own, uses_plan) = match &r.limits {
            LimitsFile::List(list) => (
                limits(list, &format!("{path}.limits"), &Scope::caller(), None, p),
                false,
            ),
            LimitsFile::Named(name) if name == "plan" => {
                if plans.is_none() {
                    p.add(
                        &format!("{path}.limits"),
                        "plan: needs plans (and plan.default) defined",
                    );
                }
                (Vec::new(), true)
            }
            LimitsFile::Named(other) => {
                p.add(
                    &format!("{path}.limits"),
                    format!("must be a list of limits, or plan (got \"{other}\")"),
                );
                (Vec::new(), false)
            }
        };
        let mut shared: Vec<Limit> = Vec::new();
        for (j, b) in r.buckets.iter().enumerate() {
            match buckets.get(b.as_str()) {
                Some(limits) => {
                    used.push(b);
                    shared.extend(limits.iter().cloned());
                }
                None => p.add(
                    &format!("{path}.buckets[{j}]"),
                    format!("unknown bucket \"{b}\" (defined: {})", names(&file.buckets)),
                ),
            }
        }
        let overrides = overrides(&r.overrides, &own, &shared, &path, p);
        let mut all = own.clone();
        all.extend(shared.iter().cloned());
        let mut lists = vec![(format!("{path}.limits"), all.clone())];
        if let Some(plans) = plans.filter(|_| uses_plan) {
            lists.extend(plans.names.iter().zip(&plans.limits).map(|(name, l)| {
                let mut with = l.clone();
                with.extend(shared.iter().cloned());
                (format!("plans.{name}.limits"), with)
            }));
        }
        lists.extend(overrides.iter().map(|(who, l)| {
            (
                format!("{path}.overrides.{}", String::from_utf8_lossy(who)),
                l.clone(),
            )
        }));
        let cost = cost(r.cost.as_ref(), &lists, &path, p);
        let cost_from = r
            .cost_from
            .as_ref()
            .and_then(|c| cost_from(c, &format!("{path}.cost_from"), p));
        if cost_from.is_some() && !uses_plan && !all.iter().any(|l| l.kind.counts()) {
            p.warn(
                &format!("{path}.cost_from"),
                "the route has no rate limit to settle, so it never takes effect",
            );
        }
        routes.push(Route {
            name: r.name.clone(),
            path: path_match,
            methods,
            limits: all,
            overrides,
            on_error: r.on_error.map(on_error),
            shadow: r.shadow,
            cost,
            cost_from,
            timeout: r.timeout.as_ref().and_then(|t| {
                positive_duration(Some(t), Duration::ZERO, &format!("{path}.timeout"), p)
            }),
            headers,
            exempt: exempt(
                r.exempt.as_ref(),
                global_exempt.clone(),
                &format!("{path}.exempt"),
                p,
            ),
            on_missing_identity: r.on_missing_identity.map_or(on_missing, self::on_missing),
            uses_plan,
            refusal: match &r.refusal {
                Some(f) => Arc::new(refusal(f, &format!("{path}.refusal"), p)),
                None => global_refusal.clone(),
            },
            throttle: r
                .throttle
                .as_ref()
                .and_then(|t| throttle(t, r.shadow, &format!("{path}.throttle"), p)),
        });
    }
    for name in file.buckets.keys() {
        if !used.contains(&name.as_str()) {
            p.warn(
                &format!("buckets.{name}"),
                "no route draws from this bucket (add it to a route's buckets, or remove it)",
            );
        }
    }
    routes
}

fn names(buckets: &BTreeMap<String, BucketFile>) -> String {
    match buckets.is_empty() {
        true => "none".into(),
        false => buckets.keys().cloned().collect::<Vec<_>>().join(", "),
    }
}

/// A route or bucket name: it goes into store keys and metric labels.
fn name_ok(name: &str, path: &str, what: &str, p: &mut Problems) -> bool {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        p.add(
            path,
            format!("invalid {what} name \"{name}\" (use letters, digits, '.', '_', '-')"),
        );
    }
    ok
}

/// Each bucket's limits, tagged with the bucket's name.
fn buckets<'f>(
    map: &'f BTreeMap<String, BucketFile>,
    p: &mut Problems,
) -> HashMap<&'f str, Vec<Limit>> {
    map.iter()
        .map(|(name, b)| {
            let at = format!("buckets.{name}");
            name_ok(name, &at, "bucket", p);
            let per = b
                .per
                .as_ref()
                .and_then(|f| per(f, &format!("{at}.per"), p))
                .unwrap_or_default();
            if b.limits.is_empty() {
                p.add(&format!("{at}.limits"), "a bucket needs at least one limit");
            }
            let owner: Arc<str> = name.as_str().into();
            let limits = limits(&b.limits, &format!("{at}.limits"), &per, Some(owner), p);
            (name.as_str(), limits)
        })
        .collect()
}

/// `per`: one part, `global`, or a list of distinct parts (a composite key).
fn per(f: &PerFile, path: &str, p: &mut Problems) -> Option<Scope> {
    const HINT: &str = "use caller, global, client_ip, header:<name>, query:<name>, or a list";
    let part = |text: &str, p: &mut Problems| -> Option<Part> {
        let part = match text.split_once(':') {
            None if text == "caller" => Part::Caller,
            None if text == "client_ip" => Part::ClientIp,
            Some(("header", name)) => Part::Header(header_name(name, path, p)?),
            Some(("query", name)) if !name.is_empty() => Part::Query(name.into()),
            _ => {
                p.add(path, format!("unknown scope \"{text}\" ({HINT})"));
                return None;
            }
        };
        Some(part)
    };
    match f {
        PerFile::One(text) if text == "global" => Some(Scope::Global),
        PerFile::One(text) => Some(Scope::Of(Box::new([part(text, p)?]))),
        PerFile::Many(list) => {
            if list.is_empty() {
                p.add(path, format!("an empty list ({HINT})"));
                return None;
            }
            let mut parts: Vec<Part> = Vec::new();
            for text in list {
                if text == "global" {
                    p.add(
                        path,
                        "\"global\" cannot be part of a composite key (it is every request)",
                    );
                    return None;
                }
                let part = part(text, p)?;
                if parts.contains(&part) {
                    p.add(path, format!("a composite key names \"{text}\" twice"));
                    return None;
                }
                parts.push(part);
            }
            Some(Scope::Of(parts.into_boxed_slice()))
        }
    }
}

/// The limits of one list; `per` is the list's default scope, `bucket` its owner.
fn limits(
    list: &[LimitFile],
    path: &str,
    default_per: &Scope,
    bucket: Option<Arc<str>>,
    p: &mut Problems,
) -> Vec<Limit> {
    let mut out: Vec<(usize, Limit)> = Vec::new();
    for (j, l) in list.iter().enumerate() {
        let at = format!("{path}[{j}]");
        let scope = match &l.per {
            Some(f) => per(f, &format!("{at}.per"), p),
            None => Some(default_per.clone()),
        };
        let count = l.count.as_ref().and_then(|c| {
            let items: Vec<&str> = match &c.status {
                StatusesFile::One(t) => vec![t.0.as_str()],
                StatusesFile::Many(ts) => ts.iter().map(|t| t.0.as_str()).collect(),
            };
            if items.is_empty() {
                p.add(&format!("{at}.count.status"), "must list at least one status");
                return None;
            }
            if l.concurrency.is_some() {
                p.add(
                    &format!("{at}.count"),
                    "applies to rates and quotas only (an in-flight slot is held until the response ends anyway)",
                );
                return None;
            }
            StatusMatch::parse(items)
                .map_err(|e| p.add(&format!("{at}.count.status"), e))
                .ok()
        });
        let (Some(kind), Some(per)) = (kind(l, &at, p), scope) else {
            continue;
        };
        let dup = out
            .iter()
            .find(|(_, o)| o.per == per && same_slot(&o.kind, &kind));
        if let Some((first, _)) = dup {
            let what = match kind {
                Kind::Rate(r) => format!("window {}", format_duration(r.window)),
                Kind::Concurrency(_) => "concurrency".into(),
                Kind::Quota(q) => format!("period {}", q.label()),
            };
            p.add(
                &at,
                format!("duplicate limit: the same {what} and per {} as {path}[{first}] (give each its own window, period or per)", per.label()),
            );
            continue;
        }
        out.push((
            j,
            Limit {
                kind,
                per,
                bucket: bucket.clone(),
                count,
            },
        ));
    }
    out.into_iter().map(|(_, l)| l).collect()
}

/// Two limits that would count under one key: rates with one window, quotas with one period
/// in one zone, or two in-flight caps.
fn same_slot(a: &Kind, b: &Kind) -> bool {
    match (a, b) {
        (Kind::Rate(x), Kind::Rate(y)) => x.window == y.window,
        (Kind::Concurrency(_), Kind::Concurrency(_)) => true,
        (Kind::Quota(x), Kind::Quota(y)) => x.period == y.period && x.tz == y.tz,
        _ => false,
    }
}

fn whole(v: i64, at: &str, p: &mut Problems) -> Option<NonZeroU32> {
    let n = u32::try_from(v).ok().and_then(NonZeroU32::new);
    match n {
        Some(n) => Some(n),
        None if v < 1 => {
            p.add(at, "must be at least 1");
            None
        }
        None => {
            p.add(at, format!("must be at most {}", u32::MAX));
            None
        }
    }
}

/// A rate (`requests` per `window`, an algorithm, a burst) or an in-flight cap.
fn kind(l: &LimitFile, at: &str, p: &mut Problems) -> Option<Kind> {
    if let Some(n) = l.concurrency {
        if l.requests.is_some()
            || l.window.is_some()
            || l.algorithm.is_some()
            || l.burst.is_some()
            || l.period.is_some()
        {
            p.add(
                at,
                "concurrency cannot be combined with requests, window, period, algorithm or burst (make two limits)",
            );
            return None;
        }
        return whole(n, &format!("{at}.concurrency"), p).map(Kind::Concurrency);
    }
    if let Some(period) = &l.period {
        return quota(l, &period.0, at, p);
    }
    if l.timezone.is_some() {
        p.add(
            &format!("{at}.timezone"),
            "applies to a calendar quota only (period: day, week or month)",
        );
    }
    let (Some(requests), Some(window)) = (l.requests, l.window.as_ref()) else {
        p.add(
            at,
            "needs requests and window (a rate), requests and period (a calendar quota), or concurrency (requests in flight)",
        );
        return None;
    };
    let requests = whole(requests, &format!("{at}.requests"), p);
    let window = positive_duration(Some(window), Duration::ZERO, &format!("{at}.window"), p);
    if window.is_some_and(|w| w > Duration::from_secs(366 * 86_400)) {
        p.add(&format!("{at}.window"), "must be at most 366d");
    }
    let algorithm = match l.algorithm {
        None | Some(AlgorithmFile::SlidingLog) => Algorithm::SlidingLog,
        Some(AlgorithmFile::SlidingWindow) => Algorithm::SlidingWindow,
        Some(AlgorithmFile::Gcra) => Algorithm::Gcra,
    };
    let burst = match (l.burst, algorithm) {
        (None, _) => requests,
        (Some(_), a) if a != Algorithm::Gcra => {
            p.add(&format!("{at}.burst"), "applies to algorithm: gcra only");
            requests
        }
        (Some(b), _) => {
            let burst = u32::try_from(b).ok().and_then(NonZeroU32::new);
            if burst.is_none() {
                p.add(
                    &format!("{at}.burst"),
                    format!("must be between 1 and {}", u32::MAX),
                );
            }
            burst
        }
    };
    Some(Kind::Rate(Rate {
        requests: requests?,
        window: window?,
        algorithm,
        burst: burst?,
    }))
}

/// A calendar quota: `requests` per `period` (day, week from Monday, month) in `timezone`
/// (an IANA name; default UTC).
fn quota(l: &LimitFile, period: &str, at: &str, p: &mut Problems) -> Option<Kind> {
    if l.window.is_some() || l.algorithm.is_some() || l.burst.is_some() {
        p.add(
            at,
            "period cannot be combined with window, algorithm or burst (a quota counts per calendar period; make two limits)",
        );
        return None;
    }
    let period = Period::parse(period).or_else(|| {
        p.add(
            &format!("{at}.period"),
            format!("unknown period \"{period}\" (use day, week or month; for a sliding window use window:)"),
        );
        None
    });
    let tz = match &l.timezone {
        None => Some(chrono_tz::Tz::UTC),
        Some(name) => name.0.parse::<chrono_tz::Tz>().ok().or_else(|| {
            p.add(
                &format!("{at}.timezone"),
                format!("unknown time zone \"{}\" (an IANA name such as Europe/Berlin, America/New_York or UTC)", name.0),
            );
            None
        }),
    };
    let Some(requests) = l.requests else {
        p.add(at, "a quota needs requests (how many per period)");
        return None;
    };
    let requests = whole(requests, &format!("{at}.requests"), p);
    Some(Kind::Quota(Quota {
        requests: requests?,
        period: period?,
        tz: tz?,
    }))
}

/// Per-caller overrides. An override replaces the route's own limits for that caller, but for
/// its `per: global` ones (a cap on the route for everyone); the buckets still apply.
fn overrides(
    map: &BTreeMap<String, OverrideFile>,
    own: &[Limit],
    shared: &[Limit],
    path: &str,
    p: &mut Problems,
) -> HashMap<Vec<u8>, Vec<Limit>> {
    map.iter()
        .map(|(user, o)| {
            let at = format!("{path}.overrides.{user}.limits");
            let mut limits = limits(&o.limits, &at, &Scope::caller(), None, p);
            for (j, l) in o.limits.iter().enumerate() {
                if matches!(&l.per, Some(PerFile::One(g)) if g == "global") {
                    p.add(
                        &format!("{at}[{j}].per"),
                        "an override is one caller's: per: global belongs in the route's limits",
                    );
                }
            }
            limits.retain(|l| l.per != Scope::Global);
            limits.extend(own.iter().filter(|l| l.per == Scope::Global).cloned());
            limits.extend(shared.iter().cloned());
            (user.as_bytes().to_vec(), limits)
        })
        .collect()
}

/// A route's cost: at least 1, and no more than every rate limit can ever admit (such a
/// request could never be admitted: a config error, not a permanent 429).
fn cost(
    c: Option<&CostFile>,
    limits: &[(String, Vec<Limit>)],
    path: &str,
    p: &mut Problems,
) -> Cost {
    let one = |v: i64, at: &str, p: &mut Problems| {
        let n = u32::try_from(v).ok().and_then(NonZeroU32::new);
        if n.is_none() {
            p.add(at, format!("must be between 1 and {} (got {v})", u32::MAX));
        }
        n.unwrap_or(NonZeroU32::MIN)
    };
    let at = format!("{path}.cost");
    let cost = match c {
        None => Cost::default(),
        Some(CostFile::Fixed(v)) => Cost::Fixed(one(*v, &at, p)),
        Some(CostFile::PerMethod(map)) => Cost::PerMethod(
            map.iter()
                .map(|(m, v)| {
                    let upper = m.to_ascii_uppercase();
                    if method(m).is_none() {
                        p.add(&format!("{at}.{m}"), format!("invalid method \"{m}\""));
                    }
                    (upper, one(*v, &format!("{at}.{m}"), p))
                })
                .collect(),
        ),
    };
    let most = cost.max();
    for (where_, list) in limits {
        let capacity = |l: &Limit| match l.kind {
            Kind::Rate(r) => Some(r.capacity()),
            Kind::Quota(q) => Some(q.requests.get()),
            Kind::Concurrency(_) => None,
        };
        if let Some(c) = list.iter().filter_map(capacity).find(|&c| c < most) {
            p.add(
                &at,
                format!(
                    "a request costing {most} exceeds {where_}'s limit of {c} at once, so it could never be admitted"
                ),
            );
        }
    }
    cost
}

/// `plans` and `plan`: every plan's limits and the sources that choose one. `None` when no
/// plan is defined (then `plan:` is an error).
pub(super) fn plans(
    file: &FileConfig,
    sources: &[IdentitySource],
    trusted: &TrustedProxies,
    hash: &CallerHash,
    p: &mut Problems,
) -> Option<Plans> {
    if file.plans.is_empty() {
        if file.plan.is_some() {
            p.add(
                "plan",
                "needs plans defined (plans: { free: { limits: [...] } })",
            );
        }
        return None;
    }
    let names: Vec<String> = file.plans.keys().cloned().collect();
    let mut all = Vec::new();
    for (name, plan) in &file.plans {
        let at = format!("plans.{name}");
        name_ok(name, &at, "plan", p);
        all.push(limits(
            &plan.limits,
            &format!("{at}.limits"),
            &Scope::caller(),
            None,
            p,
        ));
    }
    if names.len() > u16::MAX as usize {
        p.add("plans", format!("at most {} plans", u16::MAX));
    }
    let choice = file.plan.as_ref();
    let default = match choice.and_then(|c| c.default.as_deref()) {
        Some(d) => match names.iter().position(|n| n == d) {
            Some(i) => i,
            None => {
                p.add(
                    "plan.default",
                    format!("unknown plan \"{d}\" (defined: {})", names.join(", ")),
                );
                0
            }
        },
        None => {
            p.add(
                "plan.default",
                "required with plans: the plan of a request no source names",
            );
            0
        }
    };
    let mut from = Vec::new();
    for (i, f) in choice.map_or(&[][..], |c| &c.from[..]).iter().enumerate() {
        let at = format!("plan.from[{i}]");
        match (&f.jwt_claim, &f.header, &f.callers_file) {
            (Some(claim), None, None) => match ClaimPath::parse(claim) {
                None => p.add(
                    &format!("{at}.jwt_claim"),
                    format!("invalid claim \"{claim}\""),
                ),
                Some(_) if !sources.iter().any(|s| matches!(s, IdentitySource::Jwt(_))) => p.add(
                    &format!("{at}.jwt_claim"),
                    "needs a jwt identity source (the claim is read from its verified token)",
                ),
                Some(path) => from.push(PlanSource::JwtClaim(path)),
            },
            (None, Some(h), None) => {
                if let Some(name) = header_name(h, &format!("{at}.header"), p) {
                    if trusted.0.is_empty() {
                        p.warn(
                            &format!("{at}.header"),
                            "is believed from trusted_proxies only, and none are listed: it never takes effect",
                        );
                    }
                    from.push(PlanSource::Header(name));
                }
            }
            (None, None, Some(path)) => {
                match CallersIndex::read(std::path::Path::new(path), &names, hash) {
                    Ok(index) => from.push(PlanSource::Callers(Arc::new(index))),
                    Err(lines) => {
                        for line in lines {
                            p.add(&format!("{at}.callers_file"), format!("{path}: {line}"));
                        }
                    }
                }
            }
            _ => p.add(
                &at,
                "needs exactly one of \"jwt_claim\", \"header\" or \"callers_file\"",
            ),
        }
    }
    let used = file
        .routes
        .iter()
        .any(|r| matches!(&r.limits, LimitsFile::Named(n) if n == "plan"));
    if !used {
        p.warn(
            "plans",
            "no route has limits: plan, so no plan takes effect",
        );
    }
    Some(Plans {
        names,
        limits: all,
        default,
        from,
    })
}

/// `refusal`: a status from 400 to 599 (default 429), a content type sluice can write, and
/// a body template whose placeholders are known and which, for the JSON types, renders JSON.
fn refusal(f: &RefusalFile, path: &str, p: &mut Problems) -> RefusalStyle {
    let mut style = RefusalStyle::default();
    if let Some(s) = f.status {
        match u16::try_from(s) {
            Ok(s) if (400..=599).contains(&s) => style.status = s,
            _ => p.add(
                &format!("{path}.status"),
                format!("must be from 400 to 599 (got {s})"),
            ),
        }
    }
    if let Some(t) = &f.content_type {
        style.format = match t.as_str() {
            "application/json" => Format::Json,
            "application/problem+json" => Format::Problem,
            "text/plain" => Format::Text,
            other => {
                p.add(
                    &format!("{path}.content_type"),
                    format!("\"{other}\" is not one of application/json, application/problem+json, text/plain"),
                );
                Format::Json
            }
        };
    }
    if let Some(body) = &f.body {
        match Template::parse(body) {
            Ok(t) => {
                let sample = RenderValues {
                    route: "route",
                    limit: 100,
                    window_s: 60,
                    retry_after: 41,
                    caller: b"caller \"x\"",
                };
                let json = matches!(style.format, Format::Json | Format::Problem);
                let rendered = t.render(style.format, &sample);
                if json && serde_json::from_str::<serde_json::Value>(&rendered).is_err() {
                    p.add(
                        &format!("{path}.body"),
                        format!("is not JSON once filled in (e.g. {rendered}); put string placeholders inside quotes"),
                    );
                }
                style.body = Some(t);
            }
            Err(e) => p.add(&format!("{path}.body"), e),
        }
    }
    style
}

/// `cost_from`: a response header and the most a response may report (default 1,000,000).
/// `throttle`: `max_delay` (required, at most 60 s: a waiting request holds its connection),
/// `max_waiting` (default 1,000).
fn throttle(t: &ThrottleFile, shadow: bool, path: &str, p: &mut Problems) -> Option<Throttle> {
    let at = format!("{path}.max_delay");
    let Some(text) = &t.max_delay else {
        p.add(
            path,
            "needs max_delay (how long a request may wait, e.g. 2s)",
        );
        return None;
    };
    let max_delay = positive_duration(Some(text), Duration::ZERO, &at, p)?;
    if max_delay > Duration::from_secs(60) {
        p.add(
            &at,
            "must be at most 60s (a waiting request holds its connection)",
        );
        return None;
    }
    let max_waiting = bounded(
        t.max_waiting,
        1000,
        (1, 1_000_000),
        &format!("{path}.max_waiting"),
        p,
    );
    if shadow {
        p.warn(
            path,
            "a shadow route forwards every request at once: its throttle never takes effect",
        );
    }
    Some(Throttle {
        max_delay,
        max_waiting,
    })
}

fn cost_from(c: &CostFromFile, path: &str, p: &mut Problems) -> Option<CostFrom> {
    let (name, in_trailer, key) = match (&c.response_header, &c.response_trailer) {
        (Some(h), None) => (h, false, "response_header"),
        (None, Some(t)) => (t, true, "response_trailer"),
        (Some(_), Some(_)) => {
            p.add(
                path,
                "give response_header or response_trailer, not both (where the upstream reports the cost)",
            );
            return None;
        }
        (None, None) => {
            p.add(
                path,
                "needs response_header or response_trailer (where the upstream reports the cost)",
            );
            return None;
        }
    };
    let header = header_name(name, &format!("{path}.{key}"), p)?;
    let max_cost = match c.max_cost {
        None => 1_000_000,
        Some(v) => match u32::try_from(v) {
            Ok(m) if m >= 1 => m,
            _ => {
                p.add(
                    &format!("{path}.max_cost"),
                    format!("must be between 1 and {}", u32::MAX),
                );
                return None;
            }
        },
    };
    Some(CostFrom {
        header,
        max_cost,
        in_trailer,
    })
}

fn on_missing(f: OnMissingFile) -> OnMissingIdentity {
    match f {
        OnMissingFile::Anonymous => OnMissingIdentity::Anonymous,
        OnMissingFile::ClientIp => OnMissingIdentity::ClientIp,
        OnMissingFile::Reject => OnMissingIdentity::Reject,
        OnMissingFile::Skip => OnMissingIdentity::Skip,
    }
}

/// `exempt` at `path` added to `base` (the global list, for a route); a route's `preflight`
/// replaces the global one.
fn exempt(f: Option<&ExemptFile>, mut base: Exempt, path: &str, p: &mut Problems) -> Exempt {
    let Some(f) = f else {
        return base;
    };
    for (i, text) in f.cidrs.iter().enumerate() {
        match Cidr::parse(text) {
            Ok(c) if !base.cidrs.contains(&c) => base.cidrs.push(c),
            Ok(_) => {}
            Err(why) => p.add(
                &format!("{path}.cidrs[{i}]"),
                format!("invalid CIDR \"{text}\" ({why})"),
            ),
        }
    }
    for (i, who) in f.callers.iter().enumerate() {
        if who.is_empty() {
            p.add(&format!("{path}.callers[{i}]"), "must name a caller");
        } else {
            base.callers.insert(who.as_bytes().to_vec());
        }
    }
    for (i, m) in f.methods.iter().enumerate() {
        match method(m) {
            Some(m) if !base.methods.contains(&m) => base.methods.push(m),
            Some(_) => {}
            None => p.add(
                &format!("{path}.methods[{i}]"),
                format!("invalid method \"{m}\""),
            ),
        }
    }
    if let Some(preflight) = f.preflight {
        base.preflight = preflight;
    }
    base
}

/// A method name, upper-cased: letters only (`get`, `PURGE`).
fn method(m: &str) -> Option<http::Method> {
    let upper = m.to_ascii_uppercase();
    if upper.is_empty() || !upper.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    http::Method::from_bytes(upper.as_bytes()).ok()
}

/// `match.headers`: names lower-cased, values exact.
fn match_headers(
    f: Option<&BTreeMap<String, String>>,
    path: &str,
    p: &mut Problems,
) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let Some(f) = f else {
        return Vec::new();
    };
    if f.is_empty() {
        p.add(
            path,
            "must list at least one header (leave it out to match any)",
        );
    }
    let mut out = Vec::new();
    for (name, value) in f {
        let at = format!("{path}.{name}");
        let Some(h) = header_name(name, &at, p) else {
            continue;
        };
        match http::HeaderValue::from_str(value) {
            Ok(v) if !value.is_empty() && value.trim() == value => out.push((h, v)),
            _ => p.add(
                &at,
                format!("invalid value \"{value}\" (non-empty, visible characters, no surrounding blanks)"),
            ),
        }
    }
    out
}

fn matcher(m: &MatchFile, path: &str, p: &mut Problems) -> (PathMatch, Option<Vec<String>>) {
    let path_match = match (&m.path, &m.path_prefix) {
        (Some(exact), None) => PathMatch::Exact(exact.clone()),
        (None, Some(prefix)) => PathMatch::Prefix(prefix.clone()),
        _ => {
            p.add(path, "needs exactly one of \"path\" or \"path_prefix\"");
            PathMatch::Prefix("/".into())
        }
    };
    let (field, value) = match &path_match {
        PathMatch::Exact(v) => ("path", v),
        PathMatch::Prefix(v) => ("path_prefix", v),
    };
    if !value.starts_with('/') {
        p.add(
            &format!("{path}.{field}"),
            format!("must start with \"/\" (got \"{value}\")"),
        );
    } else {
        match normalize_path(value) {
            Ok(normal) if normal != value.as_str() => p.add(
                &format!("{path}.{field}"),
                format!("\"{value}\" is not in normal form, so no request could match it (use \"{normal}\")"),
            ),
            Ok(_) => {}
            Err(why) => p.add(&format!("{path}.{field}"), format!("\"{value}\": {why}")),
        }
    }
    let methods = m.methods.as_ref().map(|ms| {
        if ms.is_empty() {
            p.add(
                &format!("{path}.methods"),
                "must list at least one method (leave it out to match all)",
            );
        }
        ms.iter()
            .enumerate()
            .map(|(j, m)| {
                let upper = m.to_ascii_uppercase();
                if method(m).is_none() {
                    p.add(
                        &format!("{path}.methods[{j}]"),
                        format!("invalid method \"{m}\""),
                    );
                }
                upper
            })
            .collect::<Vec<_>>()
    });
    // Frameworks answer HEAD with the GET handler: a limit on GET covers HEAD too.
    let methods = methods.map(|mut ms| {
        if ms.iter().any(|m| m == "GET") && !ms.iter().any(|m| m == "HEAD") {
            ms.push("HEAD".to_string());
        }
        ms
    });
    (path_match, methods)
}
