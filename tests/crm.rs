//! What the CRM connectors' tests share: a strict HTTP/1.1 fake server on loopback (each fake —
//! `hubspot.rs`, `salesforce.rs` — is a handler from a request to a reply; every request is logged
//! with the status answered, 0 for none), and the server side: a server with the demo tenant,
//! the demo conversation, its transcript, and the connector as `Events.ListConsumers` shows it.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// One request as the fake read it.
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: String,
    /// (lower-case name, value)
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// Requests the fake was handling when this one arrived, itself included.
    pub(crate) in_flight: usize,
}

impl Request {
    /// A header's value ("" when absent).
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.as_str())
    }
}

/// What a fake does with a request.
pub(crate) enum Reply {
    Answer(u16, Value),
    /// An answer with extra headers.
    With(u16, Value, Vec<(String, String)>),
    /// Close without answering.
    Drop,
    /// Hold the connection open without answering.
    Hang,
}

pub(crate) type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// A fake server: its base URL and the log of (method, path, status answered; 0 = none).
pub(crate) struct FakeServer {
    pub(crate) url: String,
    log: Arc<Mutex<Vec<(String, String, u16)>>>,
    /// Milliseconds each answer is held back (a remote that takes its time).
    latency_ms: Arc<AtomicU64>,
}

/// Counts a request in flight until dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FakeServer {
    /// Listens on loopback; every connection is one request answered by `handler`.
    pub(crate) async fn start(handler: Handler) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log: Arc<Mutex<Vec<(String, String, u16)>>> = Arc::default();
        let latency_ms: Arc<AtomicU64> = Arc::default();
        let in_flight: Arc<AtomicUsize> = Arc::default();
        let (server_log, server_latency) = (log.clone(), latency_ms.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (handler, log) = (handler.clone(), server_log.clone());
                let (latency, in_flight) = (server_latency.clone(), in_flight.clone());
                tokio::spawn(async move {
                    let Some(mut req) = read(&mut s).await else {
                        return;
                    };
                    req.in_flight = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    let counted = InFlight(in_flight);
                    let reply = handler(&req);
                    tokio::time::sleep(Duration::from_millis(latency.load(Ordering::SeqCst))).await;
                    let status = match &reply {
                        Reply::Answer(s, _) | Reply::With(s, _, _) => *s,
                        _ => 0,
                    };
                    log.lock()
                        .unwrap()
                        .push((req.method.clone(), req.path.clone(), status));
                    let (status, body, headers) = match reply {
                        Reply::Answer(status, body) => (status, body, vec![]),
                        Reply::With(status, body, headers) => (status, body, headers),
                        Reply::Drop => return drop(s),
                        Reply::Hang => {
                            return tokio::time::sleep(Duration::from_secs(120)).await;
                        }
                    };
                    let body = body.to_string();
                    let extra: String = headers
                        .iter()
                        .map(|(k, v)| format!("{k}: {v}\r\n"))
                        .collect();
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    // Answered: the client may send its next call as soon as it has read this,
                    // so the call stops counting before it is written (counted after, it raced
                    // the client's next call and read as one call too many at once).
                    drop(counted);
                    let _ = s.write_all(reply.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        FakeServer {
            url,
            log,
            latency_ms,
        }
    }

    /// Holds every answer back `latency` from now on.
    pub(crate) fn set_latency(&self, latency: Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests answered with `status` (0: none).
    pub(crate) fn answered(&self, status: u16) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.2 == status)
            .count()
    }

    pub(crate) fn requests(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    pub(crate) fn log(&self) -> Vec<(String, String, u16)> {
        self.log.lock().unwrap().clone()
    }
}

/// Waits (20 s at most) until `done` holds, failing with `state()`; how long it took.
pub(crate) async fn until(
    what: &str,
    done: impl Fn() -> bool,
    state: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}: {}",
            state()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One HTTP/1.1 request read from the connection (head, then `content-length` bytes).
pub(crate) async fn read(s: &mut tokio::net::TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let len: usize = header("content-length").parse().unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut first = head.lines().next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: buf[head_end..head_end + len].to_vec(),
        in_flight: 0,
    })
}

/// A URL-encoded (form or query) value decoded.
pub(crate) fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Takes one from a fault's count; whether there was one.
pub(crate) fn take(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

// ---------------------------------------------------------------------------------------------
// The server side.

pub(crate) fn models() -> Models {
    fake_models(Arc::new(ScriptedGenerator::echo_facts()))
}

/// A channel to the server, its playbook without business hours (routing independent of the
/// clock).
pub(crate) async fn channel(url: String) -> tonic::transport::Channel {
    let ch = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::playbooks_client::PlaybooksClient::new(ch.clone())
        .upload(pb::UploadPlaybookRequest {
            tenant: "applinks".into(),
            yaml: super::sales::always_open_playbook(),
        })
        .await
        .unwrap();
    ch
}

/// The demo conversation: the seed question from a target account (3 bolts, handed to its
/// owner r-chelsea), the visitor's e-mail, then the rep joins and writes. Its id.
pub(crate) async fn demo(ch: &tonic::transport::Channel, email: &str) -> String {
    let mut client = pb::assistant_client::AssistantClient::new(ch.clone());
    let mut token: Option<String> = None;
    let mut id = String::new();
    for text in [
        SEED.to_string(),
        format!("I'm {email}, we are a 40-person team in the UK."),
    ] {
        let Some(pb::converse_request::Event::Start(mut start)) =
            start_with_id("applinks", Some("acme.com"), "").event
        else {
            unreachable!()
        };
        start.resume_token = token.clone();
        let mut s = client
            .send(pb::SendRequest {
                start: Some(start),
                event: Some(pb::send_request::Event::Message(pb::VisitorMessage {
                    text,
                })),
            })
            .await
            .unwrap()
            .into_inner();
        while let Some(m) = s.message().await.unwrap() {
            match m.event {
                Some(Event::Opened(o)) if token.is_none() => {
                    token = Some(o.resume_token);
                    id = o.conversation_id;
                }
                Some(Event::Error(e)) => panic!("turn failed: {e:?}"),
                _ => {}
            }
        }
    }
    let mut conv = pb::conversations_client::ConversationsClient::new(ch.clone());
    conv.take_over(pb::TakeOverRequest {
        tenant: "applinks".into(),
        conversation_id: id.clone(),
        rep_id: "r-chelsea".into(),
    })
    .await
    .unwrap();
    conv.send_message(pb::RepMessageRequest {
        tenant: "applinks".into(),
        conversation_id: id.clone(),
        rep_id: "r-chelsea".into(),
        text: format!("Hi, Chelsea here: I will send {email} our price sheet & SOC 2 report."),
    })
    .await
    .unwrap();
    id
}

/// The demo conversation (sam@acme.com) on a server of `cfg` with the **real** models, as a
/// visitor gets it: the server (kept alive by the caller), the conversation's id and its
/// transcript's texts.
pub(crate) async fn real_demo(
    cfg: ServeConfig,
) -> (
    RunningServer,
    tonic::transport::Channel,
    String,
    Vec<String>,
) {
    let server = serve_ready(cfg, super::real_models()).await;
    let ch = channel(format!("http://{}", server.addr)).await;
    let id = demo(&ch, "sam@acme.com").await;
    let texts = transcript(&ch, &id).await;
    assert!(
        texts.len() >= 5 && texts.iter().any(|t| t == SEED),
        "two visitor turns, two replies, the rep: {texts:?}"
    );
    (server, ch, id, texts)
}

pub(crate) async fn transcript(ch: &tonic::transport::Channel, id: &str) -> Vec<String> {
    pb::leads_client::LeadsClient::new(ch.clone())
        .get_transcript(pb::GetTranscriptRequest {
            tenant: "applinks".into(),
            conversation_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .messages
        .into_iter()
        .map(|m| m.text)
        .collect()
}

/// The consumer `name` as `Events.ListConsumers` shows it.
/// A rep (Chelsea) scores the conversation: one more event for the connectors.
pub(crate) async fn set_score(ch: &tonic::transport::Channel, conv: &str, score: i32, note: &str) {
    pb::leads_client::LeadsClient::new(ch.clone())
        .set_score(pb::SetScoreRequest {
            tenant: "applinks".into(),
            conversation_id: conv.into(),
            rep_id: "r-chelsea".into(),
            score,
            note: note.into(),
            clear: false,
        })
        .await
        .unwrap();
}

pub(crate) async fn consumer(ch: &tonic::transport::Channel, name: &str) -> pb::ConsumerStatus {
    pb::events_client::EventsClient::new(ch.clone())
        .list_consumers(pb::ListConsumersRequest {
            tenant: "applinks".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .consumers
        .into_iter()
        .find(|c| c.name == name)
        .expect("the connector is listed")
}

/// Waits until the consumer `name` has nothing pending and no lag.
pub(crate) async fn drained(ch: &tonic::transport::Channel, name: &str) -> pb::ConsumerStatus {
    let start = Instant::now();
    loop {
        let c = consumer(ch, name).await;
        if c.pending == 0 && c.lag == 0 {
            return c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not drained: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Queues every event of the outbox again (cursor 1 to the newest) for `consumer`, as `closer
/// sync replay` does; how many.
pub(crate) async fn replay_all(store: Arc<dyn closer_store::Store>, consumer: &str) -> u64 {
    let last = store.last_cursor().unwrap();
    closer_webhooks::manage::replay(
        store,
        "applinks",
        consumer,
        closer_store::ReplaySelection::Range { from: 1, to: last },
    )
    .await
    .unwrap()
}

/// The environment a connector's kill -9 child server reads: its data folder and the fake's URL.
const KILL_DATA: &str = "CLOSER_CRM_KILL_DATA";
const KILL_FAKE: &str = "CLOSER_CRM_KILL_FAKE";

/// The child half of a connector's kill -9 test (an ignored test run by
/// [`two_demos_on_a_child`]): serves `config(data folder, fake URL)` until it is killed.
pub(crate) async fn serve_until_killed(config: impl Fn(&Path, &str) -> ServeConfig) {
    let (Ok(dir), Ok(fake)) = (std::env::var(KILL_DATA), std::env::var(KILL_FAKE)) else {
        return;
    };
    let server = serve_ready(config(Path::new(&dir), &fake), models()).await;
    println!("serving {}", server.addr);
    tokio::time::sleep(Duration::from_secs(600)).await;
}

/// The parent half: a child server (the ignored test `child`, see [`serve_until_killed`]) on a
/// fresh demo tenant syncing to `fake`, and two demo conversations through it (sam@ and kim@
/// acme.com): the child to kill, the data folder to restart on, and the conversations' ids and
/// transcripts.
pub(crate) async fn two_demos_on_a_child(
    child: &str,
    fake: &str,
) -> (
    std::process::Child,
    tempfile::TempDir,
    [(String, Vec<String>); 2],
) {
    let data = demo_data();
    let (child, url) = spawn_child_server(
        child,
        &[
            (KILL_DATA, data.path().as_os_str()),
            (KILL_FAKE, std::ffi::OsStr::new(fake)),
        ],
    );
    let ch = channel(url).await;
    let a = demo(&ch, "sam@acme.com").await;
    let b = demo(&ch, "kim@acme.com").await;
    let (ta, tb) = (transcript(&ch, &a).await, transcript(&ch, &b).await);
    (child, data, [(a, ta), (b, tb)])
}
