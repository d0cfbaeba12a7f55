//! Two `closer serve` replicas on loopback sharing one PostgreSQL database (started by
//! `scripts/backends.sh`; the tests skip with the reason without it, and fail when
//! `CLOSER_TEST_REQUIRE_BACKENDS=1`). Each replica has a data folder of its own, loaded with the
//! same tenant (as `closer kb load` on each machine); everything a conversation needs to continue
//! on the other replica, and every change made over the API, comes from the database.

use super::*;
use closer_server::auth::{new_key, Role};
use closer_store::Store;
use sales::{always_open_playbook, Live};

/// The URL of a test backend from `var`, or `None` (the reason printed) when it is not set;
/// with `CLOSER_TEST_REQUIRE_BACKENDS=1` (CI) a missing one fails the test instead.
fn backend_url(var: &str, what: &str) -> Option<String> {
    if let Ok(url) = std::env::var(var) {
        return Some(url);
    }
    assert!(
        std::env::var("CLOSER_TEST_REQUIRE_BACKENDS").as_deref() != Ok("1"),
        "CLOSER_TEST_REQUIRE_BACKENDS=1 but {var} is not set (run the tests through scripts/backends.sh)"
    );
    eprintln!("skipped: {var} is not set (scripts/backends.sh starts {what})");
    None
}

/// A fresh database on the test server, or `None` (printed) when none is configured.
pub(crate) fn fresh_database() -> Option<String> {
    let url = backend_url("CLOSER_TEST_DATABASE_URL", "PostgreSQL")?;
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "closer_replicas_{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let (base, _) = url.rsplit_once('/').expect("a database URL");
    let admin = url.clone();
    let create = name.clone();
    // The synchronous client refuses to run inside the test's runtime: a thread of its own.
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {create}"))
            .unwrap();
    })
    .join()
    .unwrap();
    Some(format!("{base}/{name}"))
}

struct Replicas {
    a: RunningServer,
    b: RunningServer,
    database_url: String,
    /// Texts replica B's embedder has embedded (facts and queries).
    b_embedded: Arc<std::sync::Mutex<Vec<String>>>,
    _data: [tempfile::TempDir; 2],
}

/// The fake embedder, keeping the texts it embeds (under the same name, so vectors made by
/// the plain one are taken as its own).
struct CountingEmbedder {
    inner: Arc<dyn closer_models::Embedder>,
    texts: Arc<std::sync::Mutex<Vec<String>>>,
    /// Time taken per text (as a real encoder would).
    per_text: Duration,
}

impl closer_models::Embedder for CountingEmbedder {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn embed(&self, texts: &[&str]) -> closer_models::Result<Vec<Vec<f32>>> {
        self.texts
            .lock()
            .unwrap()
            .extend(texts.iter().map(|t| t.to_string()));
        std::thread::sleep(self.per_text * texts.len() as u32);
        self.inner.embed(texts)
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
}

impl Replicas {
    /// Two replicas on one data folder (the demo tenant, with an always-open playbook) and
    /// one database; `keys` turns API keys on.
    async fn start(keys: bool) -> Option<Self> {
        Self::start_with(keys, None).await
    }

    /// As [`Replicas::start`], with NATS wake-ups at `nats_url`.
    async fn start_with(keys: bool, nats_url: Option<String>) -> Option<Self> {
        Self::start_full(keys, nats_url, false, None).await
    }

    /// Every option: keys, NATS, webhooks to loopback allowed (retries scaled down), the
    /// models of both replicas (default: fake ones, B's counting what it embeds).
    async fn start_full(
        keys: bool,
        nats_url: Option<String>,
        hooks: bool,
        models: Option<Models>,
    ) -> Option<Self> {
        let database_url = fresh_database()?;
        let data = [demo_data(), demo_data()];
        for d in &data {
            std::fs::write(
                closer_kb::tenant_dir(d.path(), "applinks").join("playbook.yaml"),
                always_open_playbook(),
            )
            .unwrap();
        }
        let replica = |dir: &Path, models: Models| {
            let mut cfg = ServeConfig::for_tests(dir.to_path_buf(), ModelPaths::default_root());
            cfg.database_url = Some(database_url.clone());
            cfg.nats_url = nats_url.clone();
            if hooks {
                cfg.webhooks_allow_loopback = true;
                cfg.webhooks_retry_scale = 0.00001;
            }
            if keys {
                cfg.auth = closer_server::config::AuthMode::Keys;
            }
            serve_ready(cfg, models)
        };
        let generator =
            || -> Arc<dyn AnswerGenerator> { Arc::new(ScriptedGenerator::echo_facts()) };
        let b_embedded: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let (models_a, models_b) = match models {
            Some(m) => (m.clone(), m),
            None => {
                // A's embedder takes 5 ms a text, so a large ingest leaves it embedding for a
                // while; B's keeps what it embeds.
                let mut a = fake_models(generator());
                a.embedder = Arc::new(CountingEmbedder {
                    inner: Arc::new(HashEmbedder::default()),
                    texts: Arc::default(),
                    per_text: Duration::from_millis(5),
                });
                let mut b = fake_models(generator());
                b.embedder = Arc::new(CountingEmbedder {
                    inner: Arc::new(HashEmbedder::default()),
                    texts: b_embedded.clone(),
                    per_text: Duration::ZERO,
                });
                (a, b)
            }
        };
        let a = replica(data[0].path(), models_a).await;
        let b = replica(data[1].path(), models_b).await;
        Some(Self {
            a,
            b,
            database_url,
            b_embedded,
            _data: data,
        })
    }

    /// A text replica B embedded that contains `part`.
    fn b_embedded_any(&self, part: &str) -> Option<String> {
        self.b_embedded
            .lock()
            .unwrap()
            .iter()
            .find(|t| t.contains(part))
            .cloned()
    }

    fn url(s: &RunningServer) -> String {
        format!("http://{}", s.addr)
    }

    /// A test server view of one replica (for the helpers that take one).
    fn view(&self, which: &RunningServer) -> TestServerRef {
        TestServerRef {
            url: Self::url(which),
        }
    }
}

/// What the shared helpers need of a server: its address.
struct TestServerRef {
    url: String,
}

impl TestServerRef {
    async fn conversations(
        &self,
    ) -> pb::conversations_client::ConversationsClient<tonic::transport::Channel> {
        pb::conversations_client::ConversationsClient::connect(self.url.clone())
            .await
            .unwrap()
    }
}

async fn live_on(url: &str, id: &str, domain: Option<&str>) -> Live {
    Live::open_at(url, start_with_id("applinks", domain, id)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rep_on_replica_b_reaches_the_visitor_on_replica_a_within_a_second() {
    let Some(r) = Replicas::start(false).await else {
        return;
    };
    let mut v = live_on(&Replicas::url(&r.a), "replica-live-1", None).await;
    v.say("Hi there").await;
    v.turn().await;
    let mut conv_b = r.view(&r.b).conversations().await;
    let take = |rep: &str| pb::TakeOverRequest {
        tenant: "applinks".into(),
        conversation_id: "replica-live-1".into(),
        rep_id: rep.into(),
    };
    let t = std::time::Instant::now();
    conv_b.take_over(take("r-daniel")).await.unwrap();
    let Event::RepJoined(j) = v.next().await else {
        panic!("rep_joined expected")
    };
    let waited = t.elapsed();
    assert!(waited < Duration::from_secs(1), "took {waited:?}");
    assert!(j.text.starts_with("Human here! Daniel"), "{}", j.text);
    // Another rep on the other replica is refused: the take-over is held in the database.
    let mut conv_a = r.view(&r.a).conversations().await;
    assert_eq!(
        conv_a.take_over(take("r-priya")).await.unwrap_err().code(),
        tonic::Code::FailedPrecondition
    );
    // The visitor writes on A; the bot stays quiet; the rep answers from B.
    v.say("Can you give me a custom quote?").await;
    let t = std::time::Instant::now();
    conv_b
        .send_message(pb::RepMessageRequest {
            tenant: "applinks".into(),
            conversation_id: "replica-live-1".into(),
            rep_id: "r-daniel".into(),
            text: "Sure, what volume?".into(),
        })
        .await
        .unwrap();
    let Event::RepMessage(m) = v.next().await else {
        panic!("the rep's message first: the bot stayed quiet")
    };
    assert_eq!(m.text, "Sure, what volume?");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_proposed_on_replica_a_is_booked_on_replica_b() {
    let Some(r) = Replicas::start(false).await else {
        return;
    };
    let mut a = live_on(&Replicas::url(&r.a), "replica-meet", Some("acme.com")).await;
    let opened = match a.next().await {
        Event::Opened(o) => o,
        other => panic!("opened first, got {other:?}"),
    };
    a.say("How much does it cost?").await;
    let first = a.turn().await;
    let offered = sales::proposed(&first).expect("a meeting offered").clone();
    drop(a);
    // The visitor's connection moves to B (a load balancer's choice): the offered times and
    // the turn count continue there.
    let mut start = start_with_id("applinks", None, "");
    if let Some(pb::converse_request::Event::Start(s)) = &mut start.event {
        s.resume_token = Some(opened.resume_token.clone());
    }
    let mut b = Live::open_at(&Replicas::url(&r.b), start).await;
    b.tx.send(pb::ConverseRequest {
        event: Some(pb::converse_request::Event::ChooseSlot(pb::ChooseSlot {
            slot_id: "1".into(),
        })),
    })
    .await
    .unwrap();
    let turn = b.turn().await;
    let booked = turn
        .iter()
        .find_map(|e| match e {
            Event::MeetingBooked(m) => Some(m.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("booked on B: {turn:?}"));
    assert_eq!(booked.slot.unwrap().start_unix, offered.slots[0].start_unix);
    let fin = final_of(&turn);
    assert_eq!(fin.turn, 2, "the turn count went on");
    // The booking is in the shared database: A sees the slot as taken.
    let store = {
        let url = r.database_url.clone();
        std::thread::spawn(move || closer_store::postgres::PgStore::connect(&url).unwrap())
            .join()
            .unwrap()
    };
    let slot = offered.slots[0].clone();
    let meetings = std::thread::spawn(move || {
        store
            .meetings(
                "applinks",
                &slot.rep_id,
                slot.start_unix,
                slot.start_unix + 1,
            )
            .unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(meetings.len(), 1);
    assert_eq!(meetings[0].conversation_id, opened.conversation_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_on_replica_a_reach_a_subscriber_on_replica_b_live() {
    let Some(r) = Replicas::start(false).await else {
        return;
    };
    let mut sub = pb::events_client::EventsClient::connect(Replicas::url(&r.b))
        .await
        .unwrap()
        .subscribe(pb::SubscribeRequest {
            tenant: "applinks".into(),
            kinds: vec!["cql_scored".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut v = live_on(&Replicas::url(&r.a), "replica-events", Some("acme.com")).await;
    v.say("How much does it cost?").await;
    let t = std::time::Instant::now();
    v.turn().await;
    let e = tokio::time::timeout(Duration::from_secs(2), sub.message())
        .await
        .expect("the event within 2 s")
        .unwrap()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(e.conversation_id.as_deref(), Some("replica-events"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_once_is_refused_by_both_replicas_at_once() {
    let Some(r) = Replicas::start(true).await else {
        return;
    };
    let url = r.database_url.clone();
    let (key, stored) = new_key("applinks", Role::Rep, "replicas");
    let id = stored.id.clone();
    let store = std::thread::spawn(move || {
        let s = closer_store::postgres::PgStore::connect(&url).unwrap();
        s.create_key(&stored).unwrap();
        s
    })
    .join()
    .unwrap();
    let classify = || pb::ClassifyRequest {
        tenant: "applinks".into(),
        text: "How much does it cost?".into(),
    };
    let client = |server: &RunningServer| {
        let url = Replicas::url(server);
        let key = key.clone();
        async move {
            let channel = tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .connect()
                .await
                .unwrap();
            let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {key}").parse().unwrap();
            pb::assistant_client::AssistantClient::with_interceptor(
                channel,
                move |mut req: tonic::Request<()>| {
                    req.metadata_mut().insert("authorization", auth.clone());
                    Ok(req)
                },
            )
        }
    };
    let (mut ca, mut cb) = (client(&r.a).await, client(&r.b).await);
    ca.classify(classify()).await.unwrap();
    cb.classify(classify()).await.unwrap();
    std::thread::spawn(move || store.revoke_key(&id).unwrap())
        .join()
        .unwrap();
    for c in [&mut ca, &mut cb] {
        assert_eq!(
            c.classify(classify()).await.unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}

/// The test NATS server (`CLOSER_TEST_NATS_URL`), or `None` (printed) when none is configured.
fn nats_url() -> Option<String> {
    backend_url("CLOSER_TEST_NATS_URL", "NATS")
}

/// A visitor on A whose conversation a rep on B has taken over; returns the visitor's stream
/// and B's client.
async fn taken_over(
    r: &Replicas,
    id: &str,
) -> (
    Live,
    pb::conversations_client::ConversationsClient<tonic::transport::Channel>,
) {
    let mut v = live_on(&Replicas::url(&r.a), id, None).await;
    v.say("Hi there").await;
    v.turn().await;
    let mut conv_b = r.view(&r.b).conversations().await;
    conv_b
        .take_over(pb::TakeOverRequest {
            tenant: "applinks".into(),
            conversation_id: id.into(),
            rep_id: "r-daniel".into(),
        })
        .await
        .unwrap();
    assert!(matches!(v.next().await, Event::RepJoined(_)));
    (v, conv_b)
}

/// How long a rep's message sent on B takes to reach the visitor on A.
async fn rep_message_delay(
    v: &mut Live,
    conv_b: &mut pb::conversations_client::ConversationsClient<tonic::transport::Channel>,
    id: &str,
    text: &str,
) -> Duration {
    let t = std::time::Instant::now();
    conv_b
        .send_message(pb::RepMessageRequest {
            tenant: "applinks".into(),
            conversation_id: id.into(),
            rep_id: "r-daniel".into(),
            text: text.into(),
        })
        .await
        .unwrap();
    match v.next().await {
        Event::RepMessage(m) => assert_eq!(m.text, text),
        other => panic!("the rep's message expected, got {other:?}"),
    }
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_a_replica_wakes_at_once_not_at_the_next_poll() {
    let Some(nats) = nats_url() else { return };
    let Some(r) = Replicas::start_with(false, Some(nats)).await else {
        return;
    };
    let (mut v, mut conv_b) = taken_over(&r, "replica-nats").await;
    // The fallback poll runs every 2 s: five messages each under 500 ms come from NATS
    // (by the poll alone, about one run in a thousand).
    for i in 0..5 {
        let d = rep_message_delay(&mut v, &mut conv_b, "replica-nats", &format!("msg {i}")).await;
        assert!(d < Duration::from_millis(500), "message {i} took {d:?}");
    }
}

/// A nats-server of the test's own on a free loopback port, to kill and restart.
struct OwnNats {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnNats {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut n = OwnNats {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        n.restart()?;
        Some(n)
    }

    fn restart(&mut self) -> Option<()> {
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .current_dir(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Some(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_no_error_reaches_a_visitor_and_wake_ups_resume() {
    let Some(_) = nats_url() else { return };
    let mut nats = OwnNats::start().expect("nats-server on PATH (scripts/backends.sh installs it)");
    let Some(r) = Replicas::start_with(false, Some(nats.url())).await else {
        return;
    };
    let (mut v, mut conv_b) = taken_over(&r, "replica-nats-down").await;
    let id = "replica-nats-down";
    assert!(
        rep_message_delay(&mut v, &mut conv_b, id, "before").await < Duration::from_millis(500)
    );
    // SIGKILL: no goodbye to the clients.
    nats.kill();
    for i in 0..3 {
        // Delivered by the poll (every 2 s), with no error on the visitor's stream.
        let d = rep_message_delay(&mut v, &mut conv_b, id, &format!("down {i}")).await;
        assert!(d < Duration::from_millis(2600), "message {i} took {d:?}");
    }
    nats.restart().expect("nats-server restarts on its port");
    // The clients reconnect by themselves (with a back-off); then wake-ups are immediate again.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut fast = 0;
    let mut i = 0;
    while fast < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "wake-ups did not resume"
        );
        let d = rep_message_delay(&mut v, &mut conv_b, id, &format!("after {i}")).await;
        fast = if d < Duration::from_millis(300) {
            fast + 1
        } else {
            0
        };
        i += 1;
    }
}

/// What a visitor got back: visitor `n`'s turn `turn` of the conversation the server named
/// `conversation` acknowledged (its final event arrived) by replica `by` (0 = A, 1 = B).
#[derive(Debug, Clone)]
struct Ack {
    n: usize,
    conversation: String,
    turn: u32,
    by: usize,
    /// When its final arrived (the visitor then waits 30 ms before the next message).
    at: std::time::Instant,
}

/// Conversation `n`: two turns, started on A for even `n` (while A lives), else on B; a
/// broken stream continues on B with the resume token.
async fn two_turns(n: usize, urls: [String; 2], acks: Arc<std::sync::Mutex<Vec<Ack>>>) {
    let texts = ["How much does each seat cost?", "Are you SOC 2 compliant?"];
    let (mut token, mut done, mut tries) = (None::<String>, 0, 0);
    // The conversation's id as the server issued it: the one asked for, or, when A had
    // claimed that id and died before its `opened` arrived, a new one from B.
    let mut conversation = String::new();
    while done < texts.len() {
        tries += 1;
        assert!(tries <= 4, "conversation {n} could not continue");
        let by = if n.is_multiple_of(2) && tries == 1 {
            0
        } else {
            1
        };
        let Ok(mut client) = pb::assistant_client::AssistantClient::connect(urls[by].clone()).await
        else {
            continue;
        };
        let mut start = start_with_id("applinks", None, &format!("kill-{n}"));
        if let (Some(t), Some(pb::converse_request::Event::Start(s))) = (&token, &mut start.event) {
            s.conversation_id.clear();
            s.resume_token = Some(t.clone());
        }
        let (tx, rx) = mpsc::channel(4);
        let _ = tx.send(start).await;
        let Ok(resp) = client.converse(ReceiverStream::new(rx)).await else {
            continue;
        };
        let mut stream = resp.into_inner();
        'stream: while done < texts.len() {
            if tx.send(message(texts[done])).await.is_err() {
                break;
            }
            loop {
                match stream.message().await {
                    Ok(Some(r)) => match r.event {
                        Some(Event::Opened(o)) => {
                            token = Some(o.resume_token);
                            conversation = o.conversation_id;
                        }
                        Some(Event::Final(f)) => {
                            acks.lock().unwrap().push(Ack {
                                n,
                                conversation: conversation.clone(),
                                turn: f.turn,
                                by,
                                at: std::time::Instant::now(),
                            });
                            done += 1;
                            // The visitor reads before typing again.
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            break;
                        }
                        _ => {}
                    },
                    _ => break 'stream,
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_replica_a_mid_burst_moves_its_visitors_to_b_and_loses_nothing() {
    let Some(database_url) = fresh_database() else {
        return;
    };
    let data = demo_data();
    // A is a child process (to SIGKILL); B runs here; one data folder, one database.
    let (mut child, url_a) = spawn_child_server(
        "sales::child_serve_until_killed",
        &[
            ("CLOSER_KILL_TEST_DATA", data.path().as_os_str()),
            (
                "CLOSER_KILL_TEST_DATABASE_URL",
                std::ffi::OsStr::new(&database_url),
            ),
        ],
    );
    let mut cfg = ServeConfig::for_tests(data.path().to_path_buf(), ModelPaths::default_root());
    cfg.database_url = Some(database_url.clone());
    let b = serve_ready(cfg, fake_models(Arc::new(ScriptedGenerator::echo_facts()))).await;
    let urls = [url_a, format!("http://{}", b.addr)];

    const CONVERSATIONS: usize = 1000;
    let acks = Arc::new(std::sync::Mutex::new(Vec::<Ack>::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = vec![];
    for _ in 0..8 {
        let (urls, acks, next) = (urls.clone(), acks.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n >= CONVERSATIONS {
                    return;
                }
                two_turns(n, urls.clone(), acks.clone()).await;
            }
        }));
    }
    // SIGKILL A a third of the way through, while a visitor on A is between its two turns: its
    // first final arrived under 10 ms ago, so its second message (sent 30 ms after) is not yet
    // on its way. (A visitor with one final counted may already have its second answer in
    // flight from A, which the kill does not stop.)
    let between = |acks: &[Ack]| {
        let mut on_a: std::collections::HashMap<usize, (usize, std::time::Instant)> =
            Default::default();
        for a in acks.iter().filter(|a| a.by == 0) {
            let e = on_a.entry(a.n).or_insert((0, a.at));
            e.0 += 1;
        }
        on_a.values()
            .any(|&(k, at)| k == 1 && at.elapsed() < Duration::from_millis(10))
    };
    loop {
        let a = acks.lock().unwrap().clone();
        if a.len() >= 2 * CONVERSATIONS / 3 && between(&a) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let acks = acks.lock().unwrap().clone();
    assert_eq!(
        acks.len(),
        2 * CONVERSATIONS,
        "every visitor finished both turns"
    );
    // Conversations that got a turn from each replica: moved to B mid-way.
    let from = |by: usize| -> std::collections::HashSet<usize> {
        acks.iter().filter(|a| a.by == by).map(|a| a.n).collect()
    };
    let moved: Vec<usize> = from(0).intersection(&from(1)).copied().collect();
    let on_a = acks.iter().filter(|a| a.by == 0).count();
    assert!(
        on_a > 0 && !moved.is_empty(),
        "A served {on_a} turns; {} conversations moved",
        moved.len()
    );

    // The database: every acknowledged turn is there under the number the visitor was told,
    // visitor turns are numbered 1..k without a gap or a repeat, and each conversation's
    // events are there once.
    let url = database_url.clone();
    let checked = std::thread::spawn(move || {
        let store = closer_store::postgres::PgStore::connect(&url).unwrap();
        let mut by_conv: std::collections::HashMap<String, Vec<u32>> = Default::default();
        for a in &acks {
            by_conv
                .entry(a.conversation.clone())
                .or_default()
                .push(a.turn);
        }
        let mut extra_turns = 0;
        for (id, told) in &by_conv {
            let visitor: Vec<u32> = store
                .transcript("applinks", id)
                .unwrap()
                .iter()
                .filter(|m| m.author == closer_store::Author::Visitor)
                .map(|m| m.turn)
                .collect();
            let want: Vec<u32> = (1..=visitor.len() as u32).collect();
            assert_eq!(visitor, want, "{id}: visitor turns numbered 1..k");
            for t in told {
                assert!(visitor.contains(t), "{id}: acknowledged turn {t} lost");
            }
            // A turn committed on A whose final never arrived is sent again on B: one more.
            extra_turns += visitor.len() - told.len();
            let lead = store.lead("applinks", id).unwrap().expect("lead");
            assert_eq!(lead.turns as usize, visitor.len());
        }
        let events = store
            .events_after(
                0,
                &closer_store::EventFilter {
                    tenant: "applinks".into(),
                    kinds: vec!["cql_scored".into()],
                    ..Default::default()
                },
                10_000,
            )
            .unwrap();
        let mut cursors: Vec<u64> = events.iter().map(|e| e.cursor).collect();
        let len = cursors.len();
        cursors.dedup();
        assert_eq!(cursors.len(), len, "an event stored twice");
        let scored: std::collections::HashSet<&str> = events
            .iter()
            .filter_map(|e| e.event.conversation_id.as_deref())
            .collect();
        for id in by_conv.keys() {
            assert!(scored.contains(id.as_str()), "{id}: no cql_scored event");
        }
        (by_conv.len(), extra_turns, len)
    })
    .join()
    .unwrap();
    eprintln!(
        "kill -9 of replica A: {} conversations ({} moved to B mid-way, {on_a} turns answered by A), \
         {} turns resent after a final was lost, {} cql_scored events, none lost or doubled",
        checked.0,
        moved.len(),
        checked.1,
        checked.2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaderboard_on_replica_b_moves_when_a_meeting_is_booked_on_a() {
    let Some(r) = Replicas::start(false).await else {
        return;
    };
    let mut board = pb::reports_client::ReportsClient::connect(Replicas::url(&r.b))
        .await
        .unwrap()
        .leaderboard(pb::LeaderboardRequest {
            tenant: "applinks".into(),
            period: "month".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let booked_total =
        |u: &pb::LeaderboardUpdate| -> u32 { u.rows.iter().map(|row| row.meetings_booked).sum() };
    let first = board.message().await.unwrap().unwrap();
    assert_eq!(booked_total(&first), 0);
    let mut a = live_on(&Replicas::url(&r.a), "replica-board", Some("acme.com")).await;
    a.say("How much does it cost?").await;
    assert!(
        sales::proposed(&a.turn().await).is_some(),
        "a meeting offered"
    );
    a.say("The first one please").await;
    let t = std::time::Instant::now();
    a.turn().await;
    // B's board is sent again (maybe first for the turn's score) until it counts the booking.
    loop {
        let u = tokio::time::timeout(Duration::from_secs(2), board.message())
            .await
            .expect("B's leaderboard moves within 2 s")
            .unwrap()
            .unwrap();
        if booked_total(&u) == 1 {
            break;
        }
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_replicas_run_the_webhook_worker_and_each_event_is_delivered_once() {
    let Some(r) = Replicas::start_full(false, None, true, None).await else {
        return;
    };
    // Every third request fails once: retries race between the replicas too.
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let answer: crate::webhooks::Answer = Box::new(move |_| {
        if n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 3 == 2 {
            (503, "busy")
        } else {
            (200, "ok")
        }
    });
    let receiver = crate::webhooks::Receiver::start(answer).await;
    pb::webhooks_client::WebhooksClient::connect(Replicas::url(&r.a))
        .await
        .unwrap()
        .create(pb::CreateWebhookRequest {
            tenant: "applinks".into(),
            url: receiver.url.clone(),
            kinds: vec!["cql_scored".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    // Twenty scored conversations, half on each replica.
    for i in 0..20 {
        let server = if i % 2 == 0 { &r.a } else { &r.b };
        let mut v = live_on(
            &Replicas::url(server),
            &format!("hooked-{i}"),
            Some("acme.com"),
        )
        .await;
        v.say("How much does it cost?").await;
        v.turn().await;
    }
    let got = receiver
        .until("twenty deliveries", |got| {
            let ok: std::collections::HashSet<&str> = got
                .iter()
                .filter(|g| g.status == 200)
                .map(|g| g.id.as_str())
                .collect();
            ok.len() >= 20
        })
        .await;
    // Give a double send time to show.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = receiver.until("settled", |g| g.len() >= got.len()).await;
    let mut delivered: Vec<&str> = got
        .iter()
        .filter(|g| g.status == 200)
        .map(|g| g.id.as_str())
        .collect();
    let total = delivered.len();
    delivered.sort_unstable();
    delivered.dedup();
    assert_eq!(total, delivered.len(), "an event delivered twice: {got:#?}");
    assert_eq!(delivered.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_playbook_uploaded_on_replica_a_is_in_force_on_b_within_2_s() {
    let Some(r) = Replicas::start(false).await else {
        return;
    };
    let get = |url: String| async move {
        pb::playbooks_client::PlaybooksClient::connect(url)
            .await
            .unwrap()
            .get(pb::GetPlaybookRequest {
                tenant: "applinks".into(),
            })
            .await
            .unwrap()
            .into_inner()
    };
    let before = get(Replicas::url(&r.b)).await.score_rules;
    // The same playbook without its pricing rule.
    let yaml = always_open_playbook().replace(
        "  - name: pricing_interest\n    when: { intents: [pricing] }\n    points: 1\n",
        "",
    );
    let up = pb::playbooks_client::PlaybooksClient::connect(Replicas::url(&r.a))
        .await
        .unwrap()
        .upload(pb::UploadPlaybookRequest {
            tenant: "applinks".into(),
            yaml,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(up.score_rules, before - 1);
    let t = std::time::Instant::now();
    loop {
        if get(Replicas::url(&r.b)).await.score_rules == before - 1 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "B still has the old playbook"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // B scores by it: pricing alone is no longer a bolt there.
    let mut v = live_on(&Replicas::url(&r.b), "replica-playbook", None).await;
    v.say("How much does it cost?").await;
    v.turn().await;
    let lead = sales::leads_at(&Replicas::url(&r.b))
        .await
        .get(pb::GetLeadRequest {
            tenant: "applinks".into(),
            conversation_id: "replica-playbook".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        lead.reasons.iter().all(|x| x.rule != "pricing_interest"),
        "{:?}",
        lead.reasons
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intents_uploaded_on_replica_a_classify_the_same_on_b_which_trains_nothing() {
    let Some(r) = Replicas::start(false).await else {
        return;
    };
    let examples = [
        "We'd like to become a reseller partner",
        "Do you have a partner program for agencies?",
        "Can we white-label your product for our clients?",
        "How do we join your referral program?",
        "We are an integrator and want to partner with you",
        "Is there a revenue share for partners?",
        "Can our consultancy resell Applinks?",
        "Who handles channel partnerships?",
    ];
    let mut yaml = std::fs::read_to_string(example_dir().join("intents.yaml")).unwrap();
    yaml.push_str("  - name: partnership\n    description: Reselling, referral and agency partnerships.\n    flags: []\n    examples:\n");
    for e in examples {
        yaml.push_str(&format!("      - {e}\n"));
    }
    let events = upload(&Replicas::url(&r.a), pb::IntentFormat::Yaml, yaml)
        .await
        .unwrap();
    let Some(pb::training_progress::Event::Done(done)) = events.last().cloned() else {
        panic!("training done on A: {events:?}")
    };
    let get = |url: String| async move {
        pb::intents_client::IntentsClient::connect(url)
            .await
            .unwrap()
            .get(pb::GetIntentsRequest {
                tenant: "applinks".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .model
            .unwrap()
    };
    let t = std::time::Instant::now();
    let on_b = loop {
        let m = get(Replicas::url(&r.b)).await;
        if m.version == done.version {
            break m;
        }
        assert!(t.elapsed() < Duration::from_secs(2), "B still serves {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The very model A trained (its training report came with it): B trained nothing.
    assert_eq!(on_b.training_ms, done.training_ms);
    assert_eq!(on_b.oos_threshold, done.oos_threshold);
    let classify = |url: String| async move {
        pb::assistant_client::AssistantClient::connect(url)
            .await
            .unwrap()
            .classify(pb::ClassifyRequest {
                tenant: "applinks".into(),
                text: "Can our consultancy resell Applinks?".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .intents
    };
    let (a, b) = (
        classify(Replicas::url(&r.a)).await,
        classify(Replicas::url(&r.b)).await,
    );
    assert_eq!(a[0].name, "partnership");
    assert_eq!(
        a.iter()
            .map(|i| (&i.name, i.confidence))
            .collect::<Vec<_>>(),
        b.iter()
            .map(|i| (&i.name, i.confidence))
            .collect::<Vec<_>>(),
        "the same classification on both"
    );
}

fn kb_chunk(name: &str, data: String) -> pb::IngestChunk {
    pb::IngestChunk {
        tenant: "applinks".into(),
        file_name: name.into(),
        data: data.into_bytes(),
    }
}

async fn kb_at(url: &str) -> pb::knowledge_client::KnowledgeClient<tonic::transport::Channel> {
    pb::knowledge_client::KnowledgeClient::connect(url.to_string())
        .await
        .unwrap()
}

/// Replica `url`'s hits for `query` in the demo tenant: (fact id, dense score).
async fn kb_search(url: &str, query: &str) -> Vec<(String, f32)> {
    kb_search_in(url, "applinks", query).await
}

/// Replica `url`'s hits for `query` in `tenant`: (fact id, dense score).
async fn kb_search_in(url: &str, tenant: &str, query: &str) -> Vec<(String, f32)> {
    kb_at(url)
        .await
        .search(pb::SearchRequest {
            tenant: tenant.into(),
            query: query.into(),
            limit: 50,
            intent: None,
        })
        .await
        .unwrap()
        .into_inner()
        .facts
        .into_iter()
        .map(|h| (h.fact.unwrap().id, h.dense))
        .collect()
}

/// Waits until `ok` holds for B's hits for `query`, at most `limit`; how long it took.
async fn until_on(
    url: &str,
    query: &str,
    limit: Duration,
    ok: impl Fn(&[(String, f32)]) -> bool,
) -> Duration {
    let t = std::time::Instant::now();
    loop {
        let hits = kb_search(url, query).await;
        if ok(&hits) {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "not within {limit:?}: {hits:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fact_ingested_on_replica_a_is_found_on_b_within_2_s_with_its_vector_and_deleted_is_gone()
{
    let Some(r) = Replicas::start(false).await else {
        return;
    };
    let (a, b) = (Replicas::url(&r.a), Replicas::url(&r.b));
    assert!(kb_search(&b, "quokkaphone")
        .await
        .iter()
        .all(|(id, _)| id != "replica-quokka"));
    let fact = r#"{"id":"replica-quokka","kind":"faq","question":"Does Applinks work on the quokkaphone?","answer":"Yes, Applinks runs on every quokkaphone model."}"#;
    let s = kb_at(&a)
        .await
        .ingest(tokio_stream::iter([
            kb_chunk("more.jsonl", format!("{fact}\n")),
            kb_chunk("reps.csv", "id,name,email,team,region\nr-quinn,Quinn Ray,quinn@applinks.example,smb,EU\n".into()),
            kb_chunk("accounts.csv", "domain,name,owner_rep_id,segment,employees,country,target\nquokka.example,Quokka Ltd,r-quinn,smb,40,FR,true\n".into()),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            s.facts_upserted,
            s.facts_embedded,
            s.reps_upserted,
            s.accounts_upserted
        ),
        (1, 1, 1, 1)
    );
    // Found on B, by its vector too (the dense score), which B did not compute.
    let took = until_on(&b, "quokkaphone", Duration::from_secs(2), |h| {
        h.iter()
            .any(|(id, dense)| id == "replica-quokka" && *dense > 0.0)
    })
    .await;
    eprintln!("fact on B after {took:?}");
    assert!(
        r.b_embedded_any("every quokkaphone model").is_none(),
        "B embedded the fact A had embedded"
    );
    // The account and its new rep too: B routes quokka.example to Quinn.
    let accounts = kb_at(&b)
        .await
        .list(pb::ListRequest {
            tenant: "applinks".into(),
            what: pb::ListWhat::Accounts as i32,
            page_size: 100,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .accounts;
    let quokka = accounts
        .iter()
        .find(|x| x.domain == "quokka.example")
        .expect("the account on B");
    assert_eq!(quokka.owner_rep_id, "r-quinn");
    // Deleted on A: gone on B.
    let d = kb_at(&a)
        .await
        .delete(pb::DeleteRequest {
            tenant: "applinks".into(),
            fact_ids: vec!["replica-quokka".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.deleted, 1);
    let took = until_on(&b, "quokkaphone", Duration::from_secs(2), |h| {
        h.iter().all(|(id, _)| id != "replica-quokka")
    })
    .await;
    eprintln!("deletion on B after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_ingest_on_a_is_searchable_on_b_at_once_and_gets_as_vectors_without_b_embedding() {
    let Some(r) = Replicas::start(false).await else {
        return;
    };
    let (a, b) = (Replicas::url(&r.a), Replicas::url(&r.b));
    // More facts than are embedded before Ingest returns: A embeds them in the background.
    let n = closer_kb::SYNC_EMBED_LIMIT + 44;
    let jsonl: String = (0..n)
        .map(|i| format!("{{\"id\":\"bulk-{i}\",\"kind\":\"faq\",\"question\":\"Is wombatgadget {i} supported?\",\"answer\":\"Yes, wombatgadget model {i} is supported.\"}}\n"))
        .collect();
    let s = kb_at(&a)
        .await
        .ingest(tokio_stream::iter([kb_chunk("bulk.jsonl", jsonl)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.facts_upserted as usize, n);
    assert_eq!(
        s.facts_pending_vectors as usize, n,
        "left to A's background embedder"
    );
    // On B at once by their words; then with A's vectors, B embedding none of them.
    until_on(&b, "wombatgadget 7", Duration::from_secs(2), |h| {
        h.iter().any(|(id, _)| id == "bulk-7")
    })
    .await;
    let took = until_on(&b, "wombatgadget", Duration::from_secs(20), |h| {
        let bulk: Vec<_> = h.iter().filter(|(id, _)| id.starts_with("bulk-")).collect();
        bulk.len() >= 40 && bulk.iter().all(|(_, dense)| *dense > 0.0)
    })
    .await;
    eprintln!("A's vectors on B after {took:?}");
    assert!(
        r.b_embedded_any("is supported").is_none(),
        "B embedded facts A was embedding"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_published_by_kb_load_with_a_database_url_is_served_by_both_replicas_which_train_and_embed_nothing(
) {
    // The real encoders, in the replicas (counting what they embed) and in the publisher, as
    // `closer kb load DIR --database-url` runs it.
    let real = real_models();
    let embedded: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let mut counted = real.clone();
    counted.embedder = Arc::new(CountingEmbedder {
        inner: real.embedder.clone(),
        texts: embedded.clone(),
        per_text: Duration::ZERO,
    });
    let Some(r) = Replicas::start_full(false, None, false, Some(counted)).await else {
        return;
    };
    // What the replicas embedded opening their own tenant.
    embedded.lock().unwrap().clear();
    let (a, b) = (Replicas::url(&r.a), Replicas::url(&r.b));
    let url = r.database_url.clone();
    let (loaded, published) = tokio::task::spawn_blocking(move || {
        let store = closer_store::backend::open(Some(&url), &std::env::temp_dir()).unwrap();
        closer_sales::shared::publish_folder(
            &example_dir(),
            Some("newco"),
            &*store,
            &real,
            &mut |_| {},
        )
        .unwrap()
    })
    .await
    .unwrap();
    assert_eq!((published.facts, published.removed), (loaded.facts, 0));
    assert!(published.facts > 10 && published.accounts > 0 && published.reps > 0);
    let classify = |url: String| async move {
        pb::assistant_client::AssistantClient::connect(url)
            .await
            .unwrap()
            .classify(pb::ClassifyRequest {
                tenant: "newco".into(),
                text: "How much does each seat cost per month?".into(),
            })
            .await
    };
    let t = std::time::Instant::now();
    for url in [&a, &b] {
        loop {
            match classify(url.clone()).await {
                Ok(_) => break,
                Err(e) => assert!(
                    t.elapsed() < Duration::from_secs(2),
                    "{url} does not serve newco: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "both replicas serve the published tenant after {:?}",
        t.elapsed()
    );
    let (on_a, on_b) = (
        classify(a.clone()).await.unwrap().into_inner().intents,
        classify(b.clone()).await.unwrap().into_inner().intents,
    );
    assert_eq!(on_a[0].name, "pricing");
    assert_eq!(
        on_a.iter()
            .map(|i| (&i.name, i.confidence))
            .collect::<Vec<_>>(),
        on_b.iter()
            .map(|i| (&i.name, i.confidence))
            .collect::<Vec<_>>()
    );
    // Its facts, found by their vectors on both.
    for url in [&a, &b] {
        let hits = kb_search_in(url, "newco", "price of one seat").await;
        assert!(
            hits.iter()
                .any(|(id, dense)| id == "pricing-seat" && *dense > 0.0),
            "{hits:?}"
        );
    }
    // Neither replica trained the intent model (it embeds every example to train) nor
    // embedded a fact: they embedded only the probes above.
    let texts = embedded.lock().unwrap().clone();
    assert!(
        texts
            .iter()
            .all(|t| t == "How much does each seat cost per month?" || t == "price of one seat"),
        "the replicas embedded {} other texts, e.g. {:?}",
        texts.len(),
        texts
            .iter()
            .find(|t| !t.contains("per month?") && *t != "price of one seat")
    );
    // Loaded again without one fact: gone from both replicas.
    let src = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(example_dir()).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let text = if p.file_name().unwrap() == "facts.jsonl" {
            text.lines()
                .filter(|l| !l.contains("\"id\":\"pricing-seat\""))
                .map(|l| format!("{l}\n"))
                .collect()
        } else {
            text
        };
        std::fs::write(src.path().join(p.file_name().unwrap()), text).unwrap();
    }
    let url = r.database_url.clone();
    let real = real_models();
    let dir = src.path().to_path_buf();
    let (_, again) = tokio::task::spawn_blocking(move || {
        let store = closer_store::backend::open(Some(&url), &std::env::temp_dir()).unwrap();
        closer_sales::shared::publish_folder(&dir, Some("newco"), &*store, &real, &mut |_| {})
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!((again.facts, again.removed), (published.facts - 1, 1));
    let t = std::time::Instant::now();
    for url in [&a, &b] {
        loop {
            let hits = kb_search_in(url, "newco", "price of one seat").await;
            if hits.iter().all(|(id, _)| id != "pricing-seat") {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "{url} still has the removed fact"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
