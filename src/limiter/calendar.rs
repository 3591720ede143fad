//! Calendar quotas: so many requests per day, week (from Monday) or month, as a time zone's
//! calendar counts them. A quota is a counter per period, reset when the period ends; the
//! period is found here, from the instant of the decision and the zone's rules (chrono-tz, the
//! IANA database), so a month is its own length and a day across a DST change 23 or 25 hours.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

/// A calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Day,
    /// Monday 00:00 to the next Monday 00:00 (ISO 8601 weeks).
    Week,
    Month,
}

impl Period {
    pub fn parse(s: &str) -> Option<Period> {
        Some(match s {
            "day" => Period::Day,
            "week" => Period::Week,
            "month" => Period::Month,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

/// At most `requests` cost units per calendar `period` in the time zone `tz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    pub requests: NonZeroU32,
    pub period: Period,
    pub tz: Tz,
}

/// The period holding an instant: `[start, end)` in µs since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub start: u64,
    pub end: u64,
}

impl Bounds {
    /// The period's length, as `RateLimit-Policy`'s `w` reports it (whole seconds, rounded up).
    pub fn secs(&self) -> u64 {
        (self.end - self.start).div_ceil(1_000_000)
    }

    pub fn len(&self) -> Duration {
        Duration::from_micros(self.end - self.start)
    }

    pub fn end_time(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + Duration::from_micros(self.end)
    }
}

/// This machine's wall clock in µs since the epoch: the instant a quota's period is found for.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Quota {
    /// The period holding `now` (µs since the epoch).
    pub fn bounds(&self, now: u64) -> Bounds {
        let at = DateTime::from_timestamp_micros(now.min(i64::MAX as u64) as i64)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let today = at.with_timezone(&self.tz).date_naive();
        let first = match self.period {
            Period::Day => today,
            Period::Week => today - Days::new(today.weekday().num_days_from_monday() as u64),
            Period::Month => today.with_day(1).unwrap_or(today),
        };
        let next = match self.period {
            Period::Day => first + Days::new(1),
            Period::Week => first + Days::new(7),
            Period::Month => first + Months::new(1),
        };
        let start = midnight(self.tz, first).min(now);
        let end = midnight(self.tz, next).max(now + 1);
        Bounds { start, end }
    }

    /// The period's name as the config and the headers say it: `month Europe/Berlin`.
    pub fn label(&self) -> String {
        format!("{} {}", self.period.name(), self.tz.name())
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} per {}", self.requests, self.label())
    }
}

/// When `date` begins in `tz` (µs since the epoch): its midnight, the earlier one when the
/// clocks went back over it, and the first instant of the day when they jumped over midnight
/// (a few zones change at 00:00; Samoa skipped 30 December 2011 whole: the next day begins).
fn midnight(tz: Tz, date: NaiveDate) -> u64 {
    let mut local = date.and_time(chrono::NaiveTime::MIN);
    // A gap is at most a day long; minutes find its end to the minute, which is how the IANA
    // database writes every transition.
    for _ in 0..=(26 * 60) {
        if let Some(t) = tz.from_local_datetime(&local).earliest() {
            return t.timestamp_micros().max(0) as u64;
        }
        local += chrono::TimeDelta::minutes(1);
    }
    // Unreachable for any zone in the database; the same wall time read as UTC keeps the
    // period well-formed.
    local.and_utc().timestamp_micros().max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(period: Period, tz: &str) -> Quota {
        Quota {
            requests: NonZeroU32::new(100).unwrap(),
            period,
            tz: tz.parse().unwrap(),
        }
    }

    /// µs of an RFC 3339 instant.
    fn at(rfc3339: &str) -> u64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_micros() as u64
    }

    fn bounds(q: &Quota, now: &str) -> (u64, u64) {
        let b = q.bounds(at(now));
        (b.start, b.end)
    }

    #[test]
    fn a_month_is_its_own_length_and_february_of_a_leap_year_has_29_days() {
        let q = quota(Period::Month, "UTC");
        assert_eq!(
            bounds(&q, "2028-02-29T23:59:59.999999Z"),
            (at("2028-02-01T00:00:00Z"), at("2028-03-01T00:00:00Z"))
        );
        assert_eq!(q.bounds(at("2028-02-10T00:00:00Z")).secs(), 29 * 86_400);
        assert_eq!(q.bounds(at("2027-02-10T00:00:00Z")).secs(), 28 * 86_400);
        // The instant the month ends is the next month's first.
        assert_eq!(
            bounds(&q, "2028-03-01T00:00:00Z"),
            (at("2028-03-01T00:00:00Z"), at("2028-04-01T00:00:00Z"))
        );
        // December rolls into the next year.
        assert_eq!(
            bounds(&q, "2026-12-31T12:00:00Z").1,
            at("2027-01-01T00:00:00Z")
        );
    }

    #[test]
    fn a_zone_east_of_utc_starts_its_month_the_evening_before_in_utc() {
        let berlin = quota(Period::Month, "Europe/Berlin");
        // 23:30 UTC on 31 January is 00:30 on 1 February in Berlin (UTC+1 in winter).
        assert_eq!(
            bounds(&berlin, "2027-01-31T23:30:00Z"),
            (at("2027-01-31T23:00:00Z"), at("2027-02-28T23:00:00Z"))
        );
        let tokyo = quota(Period::Day, "Asia/Tokyo");
        assert_eq!(
            bounds(&tokyo, "2027-06-01T14:59:59Z"),
            (at("2027-05-31T15:00:00Z"), at("2027-06-01T15:00:00Z"))
        );
    }

    #[test]
    fn a_zone_west_of_utc_starts_its_day_after_utc_midnight() {
        let la = quota(Period::Day, "America/Los_Angeles");
        // 03:00 UTC on 10 June is still 9 June in Los Angeles (UTC-7 in summer).
        assert_eq!(
            bounds(&la, "2027-06-10T03:00:00Z"),
            (at("2027-06-09T07:00:00Z"), at("2027-06-10T07:00:00Z"))
        );
    }

    #[test]
    fn days_across_dst_changes_last_23_and_25_hours() {
        let berlin = quota(Period::Day, "Europe/Berlin");
        // Spring: 28 March 2027, 02:00 → 03:00.
        let spring = berlin.bounds(at("2027-03-28T12:00:00Z"));
        assert_eq!(spring.start, at("2027-03-27T23:00:00Z"));
        assert_eq!(spring.end, at("2027-03-28T22:00:00Z"));
        assert_eq!(spring.secs(), 23 * 3600);
        // Autumn: 31 October 2027, 03:00 → 02:00.
        let autumn = berlin.bounds(at("2027-10-31T12:00:00Z"));
        assert_eq!(autumn.secs(), 25 * 3600);
        let ny = quota(Period::Day, "America/New_York");
        assert_eq!(ny.bounds(at("2027-03-14T12:00:00Z")).secs(), 23 * 3600);
        assert_eq!(ny.bounds(at("2027-11-07T12:00:00Z")).secs(), 25 * 3600);
        // The month holding the spring change is an hour short of 31 days.
        let month = quota(Period::Month, "Europe/Berlin").bounds(at("2027-03-15T00:00:00Z"));
        assert_eq!(month.secs(), 31 * 86_400 - 3600);
    }

    #[test]
    fn weeks_start_on_monday_in_the_zone() {
        let q = quota(Period::Week, "Europe/Berlin");
        // Sunday 5 December 2027 at 23:30 UTC is Monday 6 December 00:30 in Berlin.
        assert_eq!(
            bounds(&q, "2027-12-05T23:30:00Z"),
            (at("2027-12-05T23:00:00Z"), at("2027-12-12T23:00:00Z"))
        );
        assert_eq!(
            bounds(&q, "2027-12-05T22:30:00Z"),
            (at("2027-11-28T23:00:00Z"), at("2027-12-05T23:00:00Z"))
        );
    }

    #[test]
    fn a_day_whose_midnight_does_not_exist_begins_when_the_clocks_say_so() {
        // Samoa skipped 30 December 2011: the 29th ran into the 31st.
        let apia = quota(Period::Day, "Pacific/Apia");
        let day = apia.bounds(at("2011-12-30T12:00:00Z"));
        assert_eq!(day.secs(), 86_400);
        assert!(day.start <= at("2011-12-30T12:00:00Z") && at("2011-12-30T12:00:00Z") < day.end);
        // Santiago moves from 00:00 to 01:00 in September: that day starts at 01:00 local.
        let santiago = quota(Period::Day, "America/Santiago");
        let b = santiago.bounds(at("2027-09-05T12:00:00Z"));
        assert_eq!(b.secs(), 23 * 3600);
        assert_eq!(b.start, at("2027-09-05T04:00:00Z"));
    }

    #[test]
    fn every_instant_lies_in_its_period_and_periods_tile_time() {
        for tz in [
            "UTC",
            "Europe/Berlin",
            "America/Santiago",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
        ] {
            for period in [Period::Day, Period::Week, Period::Month] {
                let q = quota(period, tz);
                let mut now = at("2026-01-01T00:00:00Z");
                let mut last = q.bounds(now);
                for _ in 0..400 {
                    now += 21_600_000_000 + 1; // a little over 6 h
                    let b = q.bounds(now);
                    assert!(b.start <= now && now < b.end, "{tz} {period:?} {now}");
                    if b != last {
                        assert_eq!(b.start, last.end, "{tz} {period:?}: gap or overlap");
                    }
                    last = b;
                }
            }
        }
    }
}
