//! A route's limits as requests meet them, built once when the config loads: each limit's key
//! owner (the route, a plan on the route, or a shared bucket) and its name in the RateLimit
//! headers. Per request, a limit set resolves every limit to its store key from the values the
//! request carries.

use crate::identity::{IdentityError, IdentityExtractor};
use crate::limiter::keys::{bucket_owner, limit_key};
use crate::limiter::{Check, Limit, Part, Scope};
use crate::plans::Plans;
use crate::response::Policy;
use crate::routes::Route;
use http::HeaderMap;
use std::collections::HashMap;
use std::net::IpAddr;

/// One list of limits (a route's, a plan's on a route, or an override's for one caller)
/// ready for requests.
pub struct LimitSet {
    pub limits: Vec<Limit>,
    /// Whose counts each limit keeps: the route's name, or `@bucket`.
    owners: Vec<String>,
    pub policy: Policy,
    /// Some limit counts by outcome: an admitted request is settled once its response is known.
    pub settles: bool,
}

impl LimitSet {
    /// `own` owns the limits that are not a bucket's: the route, or `route+plan` for a plan's
    /// limits on a route (so a caller's count on one plan is never another plan's).
    fn new(route: &str, own: &str, limits: &[Limit]) -> LimitSet {
        LimitSet {
            owners: limits
                .iter()
                .map(|l| match &l.bucket {
                    Some(b) => bucket_owner(b),
                    None => own.to_string(),
                })
                .collect(),
            policy: Policy::new(route, limits),
            settles: limits.iter().any(|l| l.count.is_some()),
            limits: limits.to_vec(),
        }
    }

    /// Every limit's key for one request. A value a limit is keyed by (a header, a query
    /// parameter, the client IP) is bounded like an identity: too long or with a control
    /// character, the request is refused before anything is counted.
    pub fn checks(
        &self,
        prefix: &str,
        caller: Option<&[u8]>,
        values: &mut Values<'_>,
    ) -> Result<Vec<Check>, IdentityError> {
        let mut checks = Vec::with_capacity(self.limits.len());
        for (limit, owner) in self.limits.iter().zip(&self.owners) {
            let key = match &limit.per {
                Scope::Global => limit_key(prefix, owner, &limit.per, &[], &limit.kind),
                s if s.is_caller() => limit_key(prefix, owner, &limit.per, &[caller], &limit.kind),
                Scope::Of(parts) => {
                    let mut found: Vec<Option<&[u8]>> = Vec::with_capacity(parts.len());
                    for part in parts.iter() {
                        values.resolve(part)?;
                    }
                    for part in parts.iter() {
                        found.push(match part {
                            Part::Caller => caller,
                            other => values.get(other),
                        });
                    }
                    limit_key(prefix, owner, &limit.per, &found, &limit.kind)
                }
            };
            checks.push(Check {
                key,
                kind: limit.kind,
            });
        }
        Ok(checks)
    }
}

/// A route's limit sets: its own limits, and each override's.
pub struct RouteLimits {
    default: LimitSet,
    /// `limits: plan`: one set per plan (the plan's limits, then the buckets'), by plan index.
    by_plan: Vec<LimitSet>,
    overrides: HashMap<Vec<u8>, LimitSet>,
}

impl RouteLimits {
    pub fn new(route: &Route, plans: Option<&Plans>) -> RouteLimits {
        let name = route.name.as_str();
        let by_plan = match plans.filter(|_| route.uses_plan) {
            Some(plans) => plans
                .names
                .iter()
                .zip(&plans.limits)
                .map(|(plan, limits)| {
                    let mut all = limits.clone();
                    all.extend(route.limits.iter().cloned());
                    LimitSet::new(name, &plan_owner(name, plan), &all)
                })
                .collect(),
            None => Vec::new(),
        };
        RouteLimits {
            default: LimitSet::new(name, name, &route.limits),
            by_plan,
            overrides: route
                .overrides
                .iter()
                .map(|(who, limits)| (who.clone(), LimitSet::new(name, name, limits)))
                .collect(),
        }
    }

    /// The limits of `caller`: an override when one names it, else its plan's (on a route
    /// with `limits: plan`), else the route's.
    pub fn for_caller(&self, caller: Option<&[u8]>, plan: Option<usize>) -> &LimitSet {
        if let Some(set) = caller.and_then(|c| self.overrides.get(c)) {
            return set;
        }
        plan.and_then(|p| self.by_plan.get(p))
            .unwrap_or(&self.default)
    }
}

/// The key owner of a plan's limits on a route: `api+pro` (route and plan names are
/// `[A-Za-z0-9._-]`, so this meets neither a route nor a bucket).
pub fn plan_owner(route: &str, plan: &str) -> String {
    format!("{route}+{plan}")
}

/// The values of one request that scopes other than the caller are keyed by, read on first use.
pub struct Values<'r> {
    pub identity: &'r IdentityExtractor,
    pub query: Option<&'r str>,
    pub headers: &'r HeaderMap,
    pub peer: Option<IpAddr>,
    read: Vec<(Part, Option<Vec<u8>>)>,
}

impl<'r> Values<'r> {
    pub fn new(
        identity: &'r IdentityExtractor,
        query: Option<&'r str>,
        headers: &'r HeaderMap,
        peer: Option<IpAddr>,
    ) -> Self {
        Values {
            identity,
            query,
            headers,
            peer,
            read: Vec::new(),
        }
    }

    fn resolve(&mut self, part: &Part) -> Result<(), IdentityError> {
        if *part == Part::Caller || self.read.iter().any(|(p, _)| p == part) {
            return Ok(());
        }
        let value = self
            .identity
            .part(part, self.query, self.headers, self.peer)?;
        self.read.push((part.clone(), value));
        Ok(())
    }

    fn get(&self, part: &Part) -> Option<&[u8]> {
        self.read
            .iter()
            .find(|(p, _)| p == part)
            .and_then(|(_, v)| v.as_deref())
    }
}
