//! Prints the store's Lua script as sluice loads it (the generated header, then check.lua), for
//! bench/script.sh, which measures what Redis spends on it.
fn main() {
    print!("{}", sluice::limiter::layout::script_source());
}
