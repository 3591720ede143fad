//! The store engine's wire layout, defined once: kind and operation codes, how many arguments
//! each limit takes and how many values each limit answers. `check.lua` gets these as a
//! generated header ([`lua_header`]), so the script and the Rust that calls it cannot drift.

use super::limit::{Algorithm, Kind};
use std::time::Duration;

/// Kind codes (one per algorithm, and the in-flight slots): the script's table keys.
pub const KIND_LOG: i64 = 1;
pub const KIND_WINDOW: i64 = 2;
pub const KIND_GCRA: i64 = 3;
pub const KIND_SLOTS: i64 = 4;
pub const KIND_QUOTA: i64 = 5;

/// Operation codes.
pub const OP_CHECK: i64 = 1;
pub const OP_RELEASE: i64 = 2;
pub const OP_RENEW: i64 = 3;
pub const OP_ADJUST: i64 = 4;

/// Arguments per limit: kind, amount, window µs, burst, window (or lease) ms; a quota sends its
/// period's end and start (µs) as window and burst, and the instant it found them for (µs).
pub const LIMIT_ARGS: usize = 5;
/// Values per limit in a check's reply: used, remaining, reset µs, retry µs.
pub const REPLY_PER_LIMIT: usize = 4;
/// The retry a full set of in-flight slots reports: a slot may free up any moment, so a client
/// is told to try again in a second (`Retry-After: 1`).
pub const SLOT_RETRY: Duration = Duration::from_secs(1);

/// A lease in whole milliseconds (at least 1), as the script takes it.
pub fn lease_ms(lease: Duration) -> u64 {
    (lease.as_millis() as u64).max(1)
}

/// Where each operation's arguments are: (code, fixed arguments with the code, the offset of
/// its item count n, arguments per item, the offset of the flag for one more key (0: none),
/// reply values per item beyond the first). The encoders in `redis/ops.rs` write exactly this
/// (their test checks it), and the script reads it.
pub const OP_LAYOUT: [(i64, usize, usize, usize, usize, usize); 4] = [
    (OP_CHECK, 6, 5, LIMIT_ARGS, 2, REPLY_PER_LIMIT),
    (OP_RELEASE, 3, 2, 0, 0, 0),
    (OP_RENEW, 3, 2, 1, 0, 0),
    (OP_ADJUST, 7, 6, LIMIT_ARGS, 5, 0),
];

/// The code of a limit's kind.
pub fn code(kind: &Kind) -> i64 {
    match kind {
        Kind::Rate(r) => match r.algorithm {
            Algorithm::SlidingLog => KIND_LOG,
            Algorithm::SlidingWindow => KIND_WINDOW,
            Algorithm::Gcra => KIND_GCRA,
        },
        Kind::Concurrency(_) => KIND_SLOTS,
        Kind::Quota(_) => KIND_QUOTA,
    }
}

/// A limit's [`LIMIT_ARGS`] arguments; `lease` is the store's lease time (slots only), `now`
/// (µs since the epoch) the instant whose calendar period a quota counts in (quotas only).
pub fn limit_args(kind: &Kind, lease: Duration, now: u64) -> [u64; LIMIT_ARGS] {
    match kind {
        Kind::Rate(r) => {
            let us = r.window.as_micros() as u64;
            [
                code(kind) as u64,
                r.requests.get() as u64,
                us,
                r.burst.get() as u64,
                us.div_ceil(1000),
            ]
        }
        Kind::Concurrency(n) => [KIND_SLOTS as u64, n.get() as u64, 0, 0, lease_ms(lease)],
        Kind::Quota(q) => {
            let b = q.bounds(now);
            [
                KIND_QUOTA as u64,
                q.requests.get() as u64,
                b.end,
                b.start,
                now,
            ]
        }
    }
}

/// The script's header: every constant above as a Lua local.
pub fn lua_header() -> String {
    let constants: [(&str, i64); 12] = [
        ("KIND_LOG", KIND_LOG),
        ("KIND_WINDOW", KIND_WINDOW),
        ("KIND_GCRA", KIND_GCRA),
        ("KIND_SLOTS", KIND_SLOTS),
        ("KIND_QUOTA", KIND_QUOTA),
        ("OP_CHECK", OP_CHECK),
        ("OP_RELEASE", OP_RELEASE),
        ("OP_RENEW", OP_RENEW),
        ("OP_ADJUST", OP_ADJUST),
        ("LIMIT_ARGS", LIMIT_ARGS as i64),
        ("REPLY_PER_LIMIT", REPLY_PER_LIMIT as i64),
        ("SLOT_RETRY_US", SLOT_RETRY.as_micros() as i64),
    ];
    let mut header = String::from("-- generated from limiter/layout.rs\n");
    for (name, value) in constants {
        header.push_str(&format!("local {name} = {value}\n"));
    }
    let layouts: Vec<String> = OP_LAYOUT
        .iter()
        .map(|(code, fixed, n_at, per_item, extra_at, reply)| {
            format!("[{code}] = {{ {fixed}, {n_at}, {per_item}, {extra_at}, {reply} }}")
        })
        .collect();
    header.push_str(&format!("local OP_LAYOUT = {{ {} }}\n", layouts.join(", ")));
    header
}

/// The store's code as a script (EVAL, EVALSHA): the generated header, then `check.lua`, then a
/// call of its `main` with the script's keys and arguments. Redis runs all of it on every call,
/// so every definition in it is made anew each time: the form for a Redis without functions.
pub fn script_source() -> String {
    format!(
        "{}local EVAL_KEYS, EVAL_ARGV = KEYS, ARGV\n{}\nreturn main(EVAL_KEYS, EVAL_ARGV)\n",
        lua_header(),
        include_str!("check.lua")
    )
}

/// The same code as a Redis function library named `name` (Redis 7 and later): its definitions
/// are made once, when the library is loaded, and `FCALL name` runs `main`.
pub fn library_source(name: &str) -> String {
    format!(
        "#!lua name={name}\n{}{}\nredis.register_function('{name}', main)\n",
        lua_header(),
        include_str!("check.lua")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_uses_every_generated_constant_and_defines_none_itself() {
        let body = include_str!("check.lua");
        for line in lua_header()
            .lines()
            .skip(1)
            .filter(|l| !l.contains("OP_LAYOUT"))
        {
            let name = line.split_whitespace().nth(1).unwrap();
            assert!(body.contains(name), "check.lua never uses {name}");
            assert!(
                !body.contains(&format!("local {name} ")),
                "check.lua defines {name} itself"
            );
        }
        assert!(body.contains("OP_LAYOUT[code]") && !body.contains("local OP_LAYOUT"));
    }
}
