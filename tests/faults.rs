//! Overload and faults (issue 7, R4–R8 in small): dropped streams, client deadlines, bad and
//! oversize requests, draining on shutdown, and one tenant's flood waiting its turn. Each test
//! counts what the generator did, so a server that kept generating for nobody fails.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// Counts generator calls and the words it produced (whether or not anyone read them).
struct Counting {
    inner: ScriptedGenerator,
    calls: Arc<AtomicUsize>,
    words: Arc<AtomicUsize>,
}

#[derive(Clone, Default)]
struct Counts {
    calls: Arc<AtomicUsize>,
    words: Arc<AtomicUsize>,
}

impl Counts {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn words(&self) -> usize {
        self.words.load(Ordering::SeqCst)
    }
}

impl AnswerGenerator for Counting {
    fn generate(
        &self,
        r: &closer_models::GenerationRequest,
        f: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> closer_models::Result<closer_models::GenerationStats> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.generate(r, &mut |piece| {
            self.words.fetch_add(1, Ordering::SeqCst);
            f(piece)
        })
    }
    fn name(&self) -> &str {
        "counting"
    }
}

/// A generator that restates the cited facts `repeat` times, `ms` per word.
fn counting(ms: u64, repeat: usize) -> (Models, Counts) {
    let counts = Counts::default();
    let mut inner =
        ScriptedGenerator::new(Arc::new(move |req: &closer_models::GenerationRequest| {
            let facts: Vec<&str> = req
                .system
                .lines()
                .filter_map(|l| l.strip_prefix("- ").map(str::trim))
                .collect();
            vec![facts.join(" "); repeat].join(" ")
        }));
    inner.delay = Duration::from_millis(ms);
    let g = Counting {
        inner,
        calls: counts.calls.clone(),
        words: counts.words.clone(),
    };
    (fake_models(Arc::new(g)), counts)
}

async fn metrics(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).await.unwrap();
    assert!(s.starts_with("HTTP/1.1 200"), "{s}");
    s
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
}

/// A conversation's reply stream and its sender, or why it could not be opened.
type Opened = Result<
    (
        tonic::Streaming<pb::ConverseResponse>,
        mpsc::Sender<pb::ConverseRequest>,
    ),
    tonic::Status,
>;

/// Opens a conversation and sends one message; the stream and the sender stay with the caller.
async fn ask(url: &str, tenant: &str, text: &str, timeout: Option<Duration>) -> Opened {
    ask_in(url, tenant, &fresh_conversation_id(), text, timeout).await
}

async fn ask_in(
    url: &str,
    tenant: &str,
    id: &str,
    text: &str,
    timeout: Option<Duration>,
) -> Opened {
    // Lazily connected: a server that no longer listens gives UNAVAILABLE, as to any client.
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_lazy();
    let mut client = pb::assistant_client::AssistantClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    tx.send(start_with_id(tenant, None, id)).await.unwrap();
    tx.send(message(text)).await.unwrap();
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    Ok((client.converse(req).await?.into_inner(), tx))
}

/// Reads until the turn's final event; the error status otherwise.
async fn finish(s: &mut tonic::Streaming<pb::ConverseResponse>) -> Result<String, tonic::Status> {
    while let Some(r) = s.message().await? {
        match r.event.unwrap() {
            Event::Final(f) => return Ok(f.text),
            Event::Error(e) => {
                return Err(tonic::Status::unknown(format!("{}: {}", e.code, e.message)))
            }
            _ => {}
        }
    }
    Err(tonic::Status::unknown("stream ended without a final"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_streams_stop_generating_and_give_back_every_permit() {
    // 40 visitors; each reply is ~2,000 words at 1 ms, queued for one generator slot. Half the
    // visitors close the tab after their first delta.
    let (models, counts) = counting(1, 40);
    let data = demo_data();
    let mut cfg = ServeConfig::for_tests(data.path().to_path_buf(), ModelPaths::default_root());
    cfg.max_pending_replies = 64;
    cfg.tenant_max_pending_replies = 64;
    let server = serve_ready(cfg, models).await;
    let url = format!("http://{}", server.addr);
    let mut tasks = vec![];
    for i in 0..40 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let (mut s, tx) = ask(&url, "applinks", "How much does each seat cost?", None)
                .await
                .unwrap();
            if i % 2 == 0 {
                loop {
                    match s.message().await.unwrap().and_then(|r| r.event) {
                        Some(Event::Delta(_)) => break,
                        Some(_) => {}
                        None => panic!("ended before a delta"),
                    }
                }
                drop(s);
                drop(tx);
                None
            } else {
                Some(finish(&mut s).await.unwrap())
            }
        }));
    }
    let mut answered = 0;
    let mut full_words = 0;
    for t in tasks {
        if let Some(text) = t.await.unwrap() {
            answered += 1;
            full_words = text.split_whitespace().count();
        }
    }
    assert_eq!(answered, 20);
    // Every permit comes back, and the server counted 20 turns stopped for nobody.
    let mut m = String::new();
    for _ in 0..200 {
        m = metrics(server.addr).await;
        if metric(&m, "closer_replies_in_flight") == 0.0
            && metric(&m, "closer_turns_dropped_total") == 20.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&m, "closer_replies_in_flight"), 0.0, "{m}");
    assert_eq!(metric(&m, "closer_turns_dropped_total"), 20.0, "{m}");
    assert!(metric(&m, "closer_replies_in_flight_max") <= 64.0);
    // The dropped replies stopped at their first sentences (or before generating at all),
    // not after thousands of words.
    let words = counts.words();
    // The reply states each sentence once; the generator said the facts 40 times over.
    let full_words = full_words * 40;
    assert!(full_words > 500, "{full_words}");
    assert!(
        words < 20 * full_words + 20 * 200,
        "{words} words generated for 20 full replies of {full_words}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_deadline_ends_the_stream_and_the_generation() {
    // A reply of ~1,000 words at 5 ms (about 5 s) against a 400 ms deadline.
    let (models, counts) = counting(5, 20);
    let data = demo_data();
    let cfg = ServeConfig::for_tests(data.path().to_path_buf(), ModelPaths::default_root());
    let server = serve_ready(cfg, models).await;
    let url = format!("http://{}", server.addr);
    let started = std::time::Instant::now();
    let (mut s, _tx) = ask(
        &url,
        "applinks",
        "How much does each seat cost?",
        Some(Duration::from_millis(400)),
    )
    .await
    .unwrap();
    let err = loop {
        match s.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without a status"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(4));
    // Generation stopped server-side: no more words after the deadline.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let words = counts.words();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counts.words(), words, "the generator kept going");
    assert!(words < 200, "{words}");
    let m = metrics(server.addr).await;
    assert_eq!(metric(&m, "closer_turns_deadline_exceeded_total"), 1.0);
    assert_eq!(metric(&m, "closer_replies_in_flight"), 0.0);

    // A stream idle past its deadline ends with DEADLINE_EXCEEDED too.
    let mut client = pb::assistant_client::AssistantClient::connect(url.clone())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(start_event("applinks", None)).await.unwrap();
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.set_timeout(Duration::from_millis(200));
    let mut s = client.converse(req).await.unwrap().into_inner();
    let opened = s.message().await.unwrap().and_then(|r| r.event);
    assert!(
        matches!(opened, Some(pb::converse_response::Event::Opened(_))),
        "{opened:?}"
    );
    let e = s.message().await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_before_any_model_runs() {
    let (models, counts) = counting(0, 1);
    let data = demo_data();
    let mut cfg = ServeConfig::for_tests(data.path().to_path_buf(), ModelPaths::default_root());
    cfg.max_request_bytes = 64 * 1024;
    cfg.max_turns = 2;
    let server = serve_ready(cfg, models).await;
    let url = format!("http://{}", server.addr);
    let mut client = pb::assistant_client::AssistantClient::connect(url.clone())
        .await
        .unwrap();

    // Oversize messages: unary and on the stream (the first event and a later one).
    let e = client
        .classify(pb::ClassifyRequest {
            tenant: "applinks".into(),
            text: "x".repeat(100_000),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("--max-request-bytes"),
        "{}",
        e.message()
    );
    let mut kb = pb::knowledge_client::KnowledgeClient::connect(url.clone())
        .await
        .unwrap();
    let e = kb
        .search(pb::SearchRequest {
            tenant: "applinks".into(),
            query: "y".repeat(200_000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let (mut s, _tx) = ask(&url, "applinks", &"z".repeat(100_000), None)
        .await
        .unwrap();
    let e = finish(&mut s).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let (mut s, tx) = ask(&url, "applinks", "hello", None).await.unwrap();
    finish(&mut s).await.unwrap();
    tx.send(message(&"z".repeat(100_000))).await.unwrap();
    let e = finish(&mut s).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    // Over-long and empty text, and too many turns: named in the message.
    for (text, field) in [("", "message.text"), (&*"x".repeat(2001), "message.text")] {
        let (mut s, _tx) = ask(&url, "applinks", text, None).await.unwrap();
        let e = finish(&mut s).await.unwrap_err();
        assert!(
            e.message().starts_with(field) || e.code() == Code::InvalidArgument,
            "{e:?}"
        );
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let (mut s, tx) = ask(&url, "applinks", "hi there", None).await.unwrap();
    finish(&mut s).await.unwrap();
    tx.send(message("and again")).await.unwrap();
    finish(&mut s).await.unwrap();
    tx.send(message("a third time")).await.unwrap();
    let e = finish(&mut s).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("--max-turns"), "{}", e.message());
    // Nothing above reached the generator: the greetings are answered without it.
    assert_eq!(counts.calls(), 0, "the generator ran for a refused request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_streams_in_flight_and_refuses_new_calls() {
    // 48 conversations mid-reply when the server is told to stop (what SIGTERM does).
    let (models, _counts) = counting(2, 3);
    let data = demo_data();
    let dir = data.path().to_path_buf();
    let mut cfg = ServeConfig::for_tests(dir.clone(), ModelPaths::default_root());
    cfg.max_pending_replies = 64;
    cfg.tenant_max_pending_replies = 64;
    cfg.generator_slots = 8;
    let server = serve_ready(cfg, models).await;
    let url = format!("http://{}", server.addr);
    let store = server.state.engine.get().unwrap().store.clone();
    let ids: Vec<String> = (0..48).map(|i| format!("drain-{i}")).collect();
    let mut streams = vec![];
    for id in &ids {
        streams.push(
            ask_in(&url, "applinks", id, "How much does each seat cost?", None)
                .await
                .unwrap(),
        );
    }
    // Every stream has its turn under way.
    let mut under_way = vec![];
    for (mut s, tx) in streams {
        loop {
            match s.message().await.unwrap().and_then(|r| r.event) {
                Some(Event::Intents(_)) => break,
                Some(_) => {}
                None => panic!("ended early"),
            }
        }
        under_way.push((s, tx));
    }
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let began = std::time::Instant::now();
    let stopping = tokio::spawn(server.shutdown(Duration::from_secs(25)));
    // NOT_SERVING at once, and new calls are refused with UNAVAILABLE.
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "closer.v1.Assistant".into(),
        })
        .await
        .map(|r| r.into_inner().status);
    if let Ok(s) = status {
        assert_eq!(
            s,
            tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
        );
    }
    // Refused when the call is made, or as the stream's first answer.
    let refusal = match ask(&url, "applinks", "hello", None).await {
        Err(e) => e,
        Ok((mut s, _tx)) => finish(&mut s).await.unwrap_err(),
    };
    assert_eq!(refusal.code(), Code::Unavailable, "{refusal:?}");
    // The 48 turns in flight finish, and each stream then ends cleanly.
    let mut finished = vec![];
    for (mut s, tx) in under_way {
        let text = finish(&mut s).await.expect("an in-flight turn finishes");
        assert!(text.contains("$80"), "{text}");
        assert!(s.message().await.unwrap().is_none(), "the stream ends");
        drop(tx);
        finished.push(text);
    }
    assert_eq!(finished.len(), 48);
    stopping.await.unwrap().unwrap();
    assert!(began.elapsed() < Duration::from_secs(25));
    // Every acknowledged reply is on disk.
    for (id, text) in ids.iter().zip(&finished) {
        let t = store.transcript("applinks", id).unwrap();
        assert!(t.iter().any(|m| &m.text == text), "{id}: {t:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flood_waits_its_turn_behind_a_calm_tenant() {
    // One generator slot, 60 ms a word: one tenant queues 6 replies, then another asks once.
    let (models, _counts) = counting(60, 1);
    let data = demo_data();
    closer_kb::load::load_dir(&example_dir(), data.path(), Some("calm")).unwrap();
    let mut cfg = ServeConfig::for_tests(data.path().to_path_buf(), ModelPaths::default_root());
    cfg.generator_slots = 1;
    let server = serve_ready(cfg, models).await;
    let url = format!("http://{}", server.addr);
    let order = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let run = |tenant: &'static str, i: usize| {
        let (url, order) = (url.clone(), order.clone());
        tokio::spawn(async move {
            let (mut s, _tx) = ask(&url, tenant, "How much does each seat cost?", None)
                .await
                .unwrap();
            finish(&mut s).await.unwrap();
            order.lock().unwrap().push(format!("{tenant}{i}"));
        })
    };
    let mut tasks: Vec<_> = (0..6).map(|i| run("applinks", i)).collect();
    // The flood is queued (one generating, five waiting) before the calm tenant asks.
    for _ in 0..200 {
        let m = metrics(server.addr).await;
        if metric(&m, "closer_generator_waiting") >= 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tasks.push(run("calm", 0));
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    let calm = order.iter().position(|t| t == "calm0").unwrap();
    assert!(
        calm <= 1,
        "the calm tenant waited behind the flood: served {}th in {order:?}",
        calm + 1
    );
}

/// Records each generation's share key and whether it ran in the background.
struct Recording {
    inner: ScriptedGenerator,
    seen: Arc<std::sync::Mutex<Vec<(String, bool)>>>,
}

impl AnswerGenerator for Recording {
    fn generate(
        &self,
        r: &closer_models::GenerationRequest,
        f: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> closer_models::Result<closer_models::GenerationStats> {
        self.seen
            .lock()
            .unwrap()
            .push((r.share.clone(), r.background));
        self.inner.generate(r, f)
    }
    fn name(&self) -> &str {
        "recording"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_pressing_past_its_quota_generates_in_the_background() {
    let seen = Arc::new(std::sync::Mutex::new(vec![]));
    let mut inner = ScriptedGenerator::new(Arc::new(|req: &closer_models::GenerationRequest| {
        req.system
            .lines()
            .filter_map(|l| l.strip_prefix("- ").map(str::trim))
            .collect::<Vec<_>>()
            .join(" ")
    }));
    inner.delay = Duration::from_millis(20);
    let models = fake_models(Arc::new(Recording {
        inner,
        seen: seen.clone(),
    }));
    let data = demo_data();
    closer_kb::load::load_dir(&example_dir(), data.path(), Some("calm")).unwrap();
    let mut cfg = ServeConfig::for_tests(data.path().to_path_buf(), ModelPaths::default_root());
    cfg.tenant_max_pending_replies = 1;
    let server = serve_ready(cfg, models).await;
    let url = format!("http://{}", server.addr);
    let q = "How much does each seat cost?";

    // Within its quota: foreground.
    let (mut first, _tx1) = ask(&url, "applinks", q, None).await.unwrap();
    while seen.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Past it: refused...
    let (mut second, _tx2) = ask(&url, "applinks", q, None).await.unwrap();
    let refused = finish(&mut second).await.unwrap_err();
    assert!(
        refused.message().starts_with("RESOURCE_EXHAUSTED"),
        "{refused:?}"
    );
    finish(&mut first).await.unwrap();
    // ...and the team's next turn, admitted, yields the model to other teams.
    let (mut third, _tx3) = ask(&url, "applinks", q, None).await.unwrap();
    finish(&mut third).await.unwrap();
    let (mut calm, _tx4) = ask(&url, "calm", q, None).await.unwrap();
    finish(&mut calm).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let flags: Vec<bool> = seen.iter().map(|(_, bg)| *bg).collect();
    assert_eq!(flags, [false, true, false], "{seen:?}");
    assert_eq!(seen[0].0, seen[1].0);
    assert_ne!(seen[0].0, seen[2].0);
    let m = metrics(server.addr).await;
    assert_eq!(metric(&m, "closer_turns_background_total"), 1.0);
    assert_eq!(metric(&m, "closer_replies_refused_total"), 1.0);
}
