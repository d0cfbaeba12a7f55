//! Account ownership and rep CSV files.
#![no_main]
use closer_kb::formats::{parse_accounts, parse_reps};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_accounts("accounts.csv", data);
    let _ = parse_reps("reps.csv", data);
});
