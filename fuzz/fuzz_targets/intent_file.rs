//! A team's intent file (YAML: intents, examples, flags, slots).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = closer_models::intent::IntentSet::from_yaml(text);
    }
});
