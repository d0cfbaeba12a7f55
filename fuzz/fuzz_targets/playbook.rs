//! A team's playbook (YAML), checked against the demo tenant's intents and reps.
#![no_main]
use std::sync::OnceLock;

use closer_kb::Rep;
use closer_models::intent::IntentSet;
use libfuzzer_sys::fuzz_target;

fn demo() -> &'static (IntentSet, Vec<Rep>) {
    static DEMO: OnceLock<(IntentSet, Vec<Rep>)> = OnceLock::new();
    DEMO.get_or_init(|| {
        let intents = IntentSet::from_yaml(include_str!(
            "../../knowledge-base/examples/applinks/intents.yaml"
        ))
        .expect("demo intents");
        let reps = closer_kb::formats::parse_reps(
            "reps.csv",
            include_bytes!("../../knowledge-base/examples/applinks/reps.csv"),
        )
        .expect("demo reps");
        (intents, reps)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (intents, reps) = demo();
    let reps: Vec<&Rep> = reps.iter().collect();
    let _ = closer_sales::playbook::Playbook::from_yaml(text, intents, &reps);
});
