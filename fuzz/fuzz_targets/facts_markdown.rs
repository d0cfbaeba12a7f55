//! FAQ facts as Markdown (headings are questions, what follows is the answer).
#![no_main]
use closer_kb::formats::{parse_facts, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_facts("fuzz.md", Format::Markdown, data);
});
