//! FAQ facts as CSV: any bytes give facts or an error naming the line, never a panic.
#![no_main]
use closer_kb::formats::{parse_facts, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_facts("fuzz.csv", Format::Csv, data);
});
