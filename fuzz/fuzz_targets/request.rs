//! Request validation: any bytes decoded as the visitor-facing requests, then every check and
//! parser the server runs on them before a model is called.
#![no_main]
use closer_proto::v1 as pb;
use closer_server::grpc::{check_start, check_text};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn visitor_text(text: &str) {
    let text = closer_kb::visible(text);
    if check_text(2000, "message.text", &text).is_ok() {
        let _ = closer_sales::slots::extract(&text);
        let _ = closer_sales::guard::claims(&text);
        // The guard reads generated text the same way; any text may be both fact and sentence.
        let e = closer_sales::guard::Evidence::new([text.as_ref()]);
        let _ = e.unsupported(&text);
        let _ = closer_sales::turn::plan::context(&text, (0, text.len()), 2);
        let _ = closer_sales::coverage::spelled_out(&text);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = pb::ConverseRequest::decode(data) {
        match r.event {
            Some(pb::converse_request::Event::Start(s)) => {
                let _ = check_start(&s);
            }
            Some(pb::converse_request::Event::Message(m)) => visitor_text(&m.text),
            _ => {}
        }
    }
    if let Ok(r) = pb::ClassifyRequest::decode(data) {
        visitor_text(&r.text);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = closer_server::metrics::parse_grpc_timeout(s);
        visitor_text(s);
    }
});
