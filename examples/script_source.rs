//! Prints the store's code as sluice loads it, for bench/script.sh: `function` (the default), the
//! function library Redis 7 and later get (its name on the first line), or `script`, the EVALSHA
//! form for a Redis without functions.
use sluice::limiter::redis::LIBRARY;

fn main() {
    match std::env::args().nth(1).as_deref() {
        None | Some("function") => print!("{}", LIBRARY.1),
        Some("script") => print!("{}", sluice::limiter::layout::script_source()),
        Some(other) => {
            eprintln!("script_source: `function` or `script`, not `{other}`");
            std::process::exit(2);
        }
    }
}
