//! FAQ facts as JSON (an array) and JSONL (one object a line); the first byte picks which.
#![no_main]
use closer_kb::formats::{parse_facts, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let format = if first % 2 == 0 { Format::Json } else { Format::Jsonl };
    let _ = parse_facts("fuzz.json", format, rest);
});
