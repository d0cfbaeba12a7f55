//! Browsers: gRPC-Web on the server's own port, CORS limited to the tenant's allowed origins,
//! and the one-call `Send` turn. The client here is written by hand (HTTP/1.1 over TCP, the
//! gRPC-Web framing from its spec), sharing nothing with the server's translation layer.

use super::*;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALLOWED: &str = "http://localhost:50051";

/// One HTTP/1.1 exchange (the connection closes after it): the response head, lowercased, and
/// the body with chunked transfer decoded.
async fn http1(url: &str, request: &[u8]) -> (String, Vec<u8>) {
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut raw = vec![];
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .expect("the response in time")
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let (mut out, mut rest) = (vec![], &body[..]);
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        body = out;
    }
    (head, body)
}

/// A gRPC-Web call of `path` with `msg` from a page of `origin`: the response head and its
/// frames (data messages, and the trailer block's text).
async fn grpc_web(
    url: &str,
    path: &str,
    origin: &str,
    msg: &[u8],
) -> (String, Vec<Vec<u8>>, String) {
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    body.extend_from_slice(msg);
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: closer\r\norigin: {origin}\r\ncontent-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\naccept: application/grpc-web+proto\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let (head, body) = http1(url, &req).await;
    let (mut data, mut trailer, mut rest) = (vec![], String::new(), &body[..]);
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let payload = &rest[5..5 + len];
        if rest[0] & 0x80 == 0 {
            data.push(payload.to_vec());
        } else {
            trailer.push_str(&String::from_utf8_lossy(payload).to_lowercase());
        }
        rest = &rest[5 + len..];
    }
    (head, data, trailer)
}

fn send_request(text: &str, resume: Option<&str>) -> Vec<u8> {
    let Some(pb::converse_request::Event::Start(mut start)) =
        start_with_id("applinks", None, "").event
    else {
        unreachable!()
    };
    start.resume_token = resume.map(str::to_string);
    pb::SendRequest {
        start: Some(start),
        event: Some(pb::send_request::Event::Message(pb::VisitorMessage {
            text: text.into(),
        })),
    }
    .encode_to_vec()
}

fn events_of(frames: &[Vec<u8>]) -> Vec<Event> {
    frames
        .iter()
        .map(|f| pb::ConverseResponse::decode(&f[..]).unwrap().event.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_page_of_an_allowed_origin_chats_over_grpc_web() {
    let ts = spawn(fake_models(Arc::new(ScriptedGenerator::echo_facts()))).await;
    let path = "/closer.v1.Assistant/Send";

    // CORS preflight: answered for an origin the tenant allows, not for another.
    for (origin, allowed) in [(ALLOWED, true), ("https://evil.example", false)] {
        let req = format!(
            "OPTIONS {path} HTTP/1.1\r\nhost: closer\r\norigin: {origin}\r\naccess-control-request-method: POST\r\naccess-control-request-headers: content-type,x-grpc-web\r\nconnection: close\r\n\r\n"
        );
        let (head, _) = http1(&ts.url, req.as_bytes()).await;
        assert_eq!(
            head.contains(&format!("access-control-allow-origin: {origin}")),
            allowed,
            "{origin}: {head}"
        );
    }

    // A turn in one call: `opened`, the turn's events, the final; status OK in the trailer.
    let (head, frames, trailer) = grpc_web(
        &ts.url,
        path,
        ALLOWED,
        &send_request("How much does each seat cost?", None),
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/grpc-web"),
        "{head}"
    );
    assert!(
        head.contains(&format!("access-control-allow-origin: {ALLOWED}")),
        "{head}"
    );
    assert!(trailer.contains("grpc-status:0"), "{trailer:?}");
    let events = events_of(&frames);
    let Some(Event::Opened(opened)) = events.first() else {
        panic!("{events:?}")
    };
    assert!(!opened.resumed);
    assert!(
        matches!(events.last(), Some(Event::Final(f)) if f.turn == 1),
        "{events:?}"
    );
    assert!(deltas(&events).contains("$80"), "{}", deltas(&events));

    // The page reloads: the resume token continues the same conversation at turn 2.
    let (_, frames, _) = grpc_web(
        &ts.url,
        path,
        ALLOWED,
        &send_request("Is it SOC 2 compliant?", Some(&opened.resume_token)),
    )
    .await;
    let events = events_of(&frames);
    assert!(
        matches!(events.first(), Some(Event::Opened(o)) if o.resumed && o.conversation_id == opened.conversation_id),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(Event::Final(f)) if f.turn == 2),
        "{events:?}"
    );

    // A page of another origin is refused by the handler too (not only by the browser's CORS).
    let (head, frames, trailer) = grpc_web(
        &ts.url,
        path,
        "https://evil.example",
        &send_request("How much does each seat cost?", None),
    )
    .await;
    assert!(frames.is_empty());
    let status = format!("{head}\n{trailer}");
    assert!(
        status.contains("grpc-status: 7") || status.contains("grpc-status:7"),
        "{status}"
    );
    assert!(status.contains("allowed_origins"), "{status}");
}
