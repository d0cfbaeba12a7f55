//! Webhook input from outside: an endpoint's URL (an admin's `Create`) through the SSRF form
//! check, and a receiver's `Retry-After` header.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((flag, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if let Ok(url) = closer_webhooks::target::check_form(text, flag & 1 == 1) {
        assert!(matches!(url.scheme(), "https" | "http"));
    }
    let _ = closer_webhooks::schedule::retry_after(text, 1_700_000_000_000);
});
