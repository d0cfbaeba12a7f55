//! In-process integration tests: each test starts a server on 127.0.0.1:0 and talks to it with
//! the generated client. Tests named `real_*` use the real models (run `closer models pull`
//! first; `make test` does); the others use the deterministic fakes.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use closer_models::fake::{HashEmbedder, ScriptedGenerator};
use closer_models::source::ModelPaths;
use closer_models::AnswerGenerator;
use closer_proto::v1 as pb;
use closer_sales::engine::Models;
use closer_server::config::ServeConfig;
use closer_server::server::{start, ModelSource, RunningServer};
use pb::converse_response::Event;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const SEED: &str =
    "How much does each seat cost? Are you SOC II compliant? And who would be our rep?";
const DISCOUNT: &str = "Do you offer a 50% discount for startups?";

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../knowledge-base/examples/applinks")
}

/// A data dir holding the demo tenant (and a second tenant for isolation checks).
fn demo_data() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    closer_kb::load::load_dir(&example_dir(), dir.path(), None).unwrap();
    dir
}

/// The store of a server's data folder (its SQLite file), opened beside the server.
fn data_store(data: &Path) -> Arc<dyn closer_store::Store> {
    Arc::new(
        closer_store::sqlite::SqliteStore::open(&data.join(closer_store::SQLITE_FILE)).unwrap(),
    )
}

fn model_paths() -> ModelPaths {
    let paths = ModelPaths::new(ModelPaths::default_root());
    if let Err(e) = paths.check() {
        panic!("the real-model tests need the models: {e}");
    }
    paths
}

/// The real models, loaded once for the whole test binary.
fn real_models() -> Models {
    static MODELS: OnceLock<Models> = OnceLock::new();
    MODELS
        .get_or_init(|| Models::load(&model_paths()).expect("load real models"))
        .clone()
}

fn fake_models(generator: Arc<dyn AnswerGenerator>) -> Models {
    Models {
        embedder: Arc::new(HashEmbedder::default()),
        intent_embedder: None,
        answer_embedder: None,
        generator,
    }
}

/// Runs the ignored test `test` of this binary as a child process (a server to SIGKILL) with
/// `env`, and waits until it prints `serving ADDR`; returns the child and the server's URL.
fn spawn_child_server(
    test: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> (std::process::Child, String) {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        test,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .stdout(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let url = loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut out, &mut line).unwrap() == 0 {
            panic!("the child server {test} ended early");
        }
        // The harness may print "test NAME ... " on the same line first.
        if let Some((_, addr)) = line.trim().split_once("serving ") {
            break format!("http://{addr}");
        }
    };
    (child, url)
}

struct TestServer {
    _server: RunningServer,
    _data: tempfile::TempDir,
    url: String,
}

async fn spawn(models: Models) -> TestServer {
    spawn_in(models, demo_data()).await
}

/// A server started with `cfg` and `models`, once it serves.
async fn serve_ready(cfg: ServeConfig, models: Models) -> RunningServer {
    let mut server = start(cfg, ModelSource::Ready(models)).await.unwrap();
    server.wait_ready().await.unwrap();
    server
}

/// A server over an existing data dir (to restart on the same data).
async fn spawn_in(models: Models, data: tempfile::TempDir) -> TestServer {
    let cfg = ServeConfig::for_tests(data.path().to_path_buf(), ModelPaths::default_root());
    let server = serve_ready(cfg, models).await;
    let url = format!("http://{}", server.addr);
    TestServer {
        _server: server,
        _data: data,
        url,
    }
}

impl TestServer {
    async fn assistant(&self) -> pb::assistant_client::AssistantClient<tonic::transport::Channel> {
        pb::assistant_client::AssistantClient::connect(self.url.clone())
            .await
            .unwrap()
    }
}

/// A new conversation id per call: each `one_turn` is its own conversation.
fn fresh_conversation_id() -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!(
        "test-conversation-{}",
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

fn start_event(tenant: &str, domain: Option<&str>) -> pb::ConverseRequest {
    start_with_id(tenant, domain, &fresh_conversation_id())
}

fn start_with_id(tenant: &str, domain: Option<&str>, id: &str) -> pb::ConverseRequest {
    pb::ConverseRequest {
        event: Some(pb::converse_request::Event::Start(pb::Start {
            tenant: tenant.into(),
            conversation_id: id.into(),
            resume_token: None,
            visitor: Some(pb::VisitorContext {
                company_domain: domain.map(str::to_string),
                ..Default::default()
            }),
        })),
    }
}

fn message(text: &str) -> pb::ConverseRequest {
    pb::ConverseRequest {
        event: Some(pb::converse_request::Event::Message(pb::VisitorMessage {
            text: text.into(),
        })),
    }
}

/// Sends one turn and collects its events up to and including the final one.
async fn one_turn(
    ts: &TestServer,
    domain: Option<&str>,
    text: &str,
) -> Result<Vec<Event>, tonic::Status> {
    one_turn_in(ts, "applinks", domain, text).await
}

/// One message to `tenant` in a new conversation: the turn's events up to its final.
async fn one_turn_in(
    ts: &TestServer,
    tenant: &str,
    domain: Option<&str>,
    text: &str,
) -> Result<Vec<Event>, tonic::Status> {
    let mut client = ts.assistant().await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(start_event(tenant, domain)).await.unwrap();
    tx.send(message(text)).await.unwrap();
    let mut stream = client.converse(ReceiverStream::new(rx)).await?.into_inner();
    // Every stream opens with the conversation's id and resume token; the turn's events follow.
    let first = stream.message().await?.and_then(|r| r.event);
    assert!(
        matches!(first, Some(Event::Opened(_)) | Some(Event::Error(_))),
        "the stream opens with `opened`: {first:?}"
    );
    let mut events: Vec<Event> = first
        .into_iter()
        .filter(|e| matches!(e, Event::Error(_)))
        .collect();
    if !events.is_empty() {
        return Ok(events);
    }
    while let Some(r) = stream.message().await? {
        let e = r.event.expect("event set");
        let done = matches!(e, Event::Final(_) | Event::Error(_));
        events.push(e);
        if done {
            break;
        }
    }
    drop(tx);
    Ok(events)
}

fn final_of(events: &[Event]) -> &pb::ReplyFinal {
    events
        .iter()
        .find_map(|e| match e {
            Event::Final(f) => Some(f),
            _ => None,
        })
        .expect("a final event")
}

fn deltas(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Delta(d) => Some(d.text.as_str()),
            _ => None,
        })
        .collect()
}

/// The intents a turn's first event names.
fn intent_names(events: &[Event]) -> Vec<&str> {
    match &events[0] {
        Event::Intents(i) => i.intents.iter().map(|x| x.name.as_str()).collect(),
        e => panic!("first event {e:?}"),
    }
}

fn handoffs(events: &[Event]) -> Vec<&pb::HandoffSignal> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Handoff(h) => Some(h),
            _ => None,
        })
        .collect()
}

/// Event kinds in order, for checking the protocol order.
fn shape(events: &[Event]) -> String {
    let mut s = String::new();
    for e in events {
        let c = match e {
            Event::Intents(_) => 'I',
            Event::Handoff(_) => 'H',
            Event::Delta(_) => 'D',
            Event::Final(_) => 'F',
            Event::Error(_) => 'E',
            Event::Slots(_) => 'S',
            Event::MeetingProposed(_) => 'M',
            Event::MeetingBooked(_) => 'B',
            Event::RepJoined(_) | Event::RepMessage(_) | Event::RepLeft(_) => 'R',
            Event::Opened(_) => 'O',
        };
        if !(c == 'D' && s.ends_with('D')) {
            s.push(c);
        }
    }
    s
}

mod adversarial;
mod auth;
mod browser;
mod crm;
mod faults;
mod grpc_web;
mod hubspot;
mod injection;
mod knowledge;
mod marketo;
/// The answer evaluation's claim oracle, which shares no code with the guard it checks.
#[path = "../eval/src/oracle.rs"]
mod oracle;
mod replicas;
mod sales;
mod salesforce;
mod webhooks;

// ---------------------------------------------------------------- real models

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_seed_question_end_to_end() {
    let ts = spawn(real_models()).await;
    let events = one_turn(&ts, Some("acme.com"), SEED).await.unwrap();
    assert_eq!(
        shape(&events),
        "IHMDF",
        "protocol order: intents, hand-off, meeting slots, deltas, final: {events:?}"
    );
    // A target account asking for pricing with its owner known: the playbook offers the
    // owner's meeting slots.
    let meeting = events
        .iter()
        .find_map(|e| match e {
            Event::MeetingProposed(m) => Some(m),
            _ => None,
        })
        .unwrap();
    assert!((2..=3).contains(&meeting.slots.len()), "{meeting:?}");
    assert!(meeting.slots.iter().all(|s| s.rep_name == "Chelsea Ward"));

    let Event::Intents(intents) = &events[0] else {
        unreachable!()
    };
    let names: Vec<&str> = intents.intents.iter().map(|i| i.name.as_str()).collect();
    for want in ["pricing", "security_compliance", "account_owner"] {
        assert!(
            names.contains(&want),
            "intent {want} missing from {names:?}"
        );
    }
    for i in &intents.intents {
        assert!(i.confidence > 0.5 && i.confidence <= 1.0, "{i:?}");
        assert_eq!(
            &SEED[i.span_start as usize..i.span_end as usize],
            i.span_text
        );
    }
    let pricing = intents
        .intents
        .iter()
        .find(|i| i.name == "pricing")
        .unwrap();
    assert!(pricing.span_text.contains("seat cost"), "{pricing:?}");

    let h = handoffs(&events);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0].kind, pb::HandoffKind::AccountLive as i32);
    assert_eq!(h[0].rep_name.as_deref(), Some("Chelsea Ward"));
    assert_eq!(
        h[0].message,
        "account owner Chelsea Ward: your account acme.com is live in chat"
    );

    let f = final_of(&events);
    assert_eq!(
        deltas(&events),
        f.text,
        "the deltas add up to the final text"
    );
    let deltas_count = events
        .iter()
        .filter(|e| matches!(e, Event::Delta(_)))
        .count();
    assert!(
        deltas_count >= 2,
        "the reply is streamed in several deltas, got {deltas_count}"
    );
    for want in [
        "$80",
        "per user per month",
        "$960",
        "per user per year",
        "SOC 2 Type II",
        "Chelsea Ward",
    ] {
        assert!(f.text.contains(want), "reply lacks {want:?}: {}", f.text);
    }
    for id in ["pricing-seat", "compliance-soc2", "account:acme.com"] {
        assert!(
            f.fact_ids.iter().any(|x| x == id),
            "fact {id} not cited: {:?}",
            f.fact_ids
        );
    }
    assert!(!f.unanswered);
    assert!(
        !f.text.contains("- ") && !f.text.contains("visitor works"),
        "prompt leaked: {}",
        f.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_unanswerable_discount_is_refused_with_handoff() {
    let ts = spawn(real_models()).await;
    let events = one_turn(&ts, Some("acme.com"), DISCOUNT).await.unwrap();
    let f = final_of(&events);
    assert!(f.unanswered, "{f:?}");
    assert!(
        f.text.contains("I don't have that information"),
        "{}",
        f.text
    );
    assert!(f.text.contains("connect you with a rep"), "{}", f.text);
    let lower = f.text.to_lowercase();
    for invented in ["50", "%", "percent", "yes", "no,", "discount"] {
        assert!(
            !lower.contains(invented),
            "reply states {invented:?}: {}",
            f.text
        );
    }
    assert!(f.fact_ids.is_empty(), "{:?}", f.fact_ids);
    let h = handoffs(&events);
    assert!(
        h.iter()
            .any(|h| h.kind == pb::HandoffKind::RepRequested as i32),
        "{h:?}"
    );
}

/// A question the classifier may read as "let me talk to someone" is answered when a fact surely
/// answers it; a request for a person still fetches one and states no fact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_a_question_for_sales_gets_its_fact_and_a_person_request_a_person() {
    let ts = spawn(real_models()).await;
    let mut kb = pb::knowledge_client::KnowledgeClient::connect(ts.url.clone())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::IngestChunk {
        tenant: "applinks".into(),
        file_name: "phone.csv".into(),
        data: "id,question,answer\nsales-phone,What is the phone number for sales?,\"Applinks sales answers the phone at +1 415 555 0142, Monday to Friday from 9:00 to 17:00 Pacific time.\"\n"
            .as_bytes()
            .to_vec(),
    })
    .await
    .unwrap();
    drop(tx);
    kb.ingest(ReceiverStream::new(rx)).await.unwrap();
    let events = one_turn(&ts, None, "whats the phone number to call your sales team?")
        .await
        .unwrap();
    let intents = intent_names(&events);
    let f = final_of(&events);
    assert!(f.text.contains("555 0142"), "{intents:?}: {}", f.text);
    let events = one_turn(&ts, None, "Can I talk to a human?").await.unwrap();
    let f = final_of(&events);
    assert!(!f.text.contains("555"), "{}", f.text);
    assert!(
        handoffs(&events)
            .iter()
            .any(|h| h.kind == pb::HandoffKind::RepRequested as i32),
        "{}",
        f.text
    );
}

/// A question the classifier reads as a request for a person or as "who is our rep?" is still
/// answered from the facts, beside the hand-off (messages of the evaluation tenant `calendly`,
/// a tuning tenant, that the real classifier routes that way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_a_question_routed_to_a_person_still_gets_its_facts() {
    let data = tempfile::tempdir().unwrap();
    let kb = Path::new(env!("CARGO_MANIFEST_DIR")).join("../eval/tenants/calendly/kb");
    closer_kb::load::load_dir(&kb, data.path(), None).unwrap();
    let ts = spawn_in(real_models(), data).await;
    let events = one_turn_in(
        &ts,
        "calendly",
        None,
        "can ppl pay me for a consult when they book? im on the free plan",
    )
    .await
    .unwrap();
    let f = final_of(&events);
    assert!(
        f.text.contains("not available on the Free plan"),
        "{}",
        f.text
    );
    assert!(!handoffs(&events).is_empty(), "{}", f.text);
    let events = one_turn_in(
        &ts,
        "calendly",
        None,
        "as admin can i swap the connected calendar on a rep's account for them",
    )
    .await
    .unwrap();
    let f = final_of(&events);
    assert!(f.text.contains("calendar connections"), "{}", f.text);
    assert!(f.text.contains("couldn't find your company"), "{}", f.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_disqualified_visitors_questions_are_not_brushed_off() {
    let ts = spawn(real_models()).await;
    let events = one_turn(&ts, None, "Is there a student discount?")
        .await
        .unwrap();
    let intents = intent_names(&events);
    let f = final_of(&events);
    // No fact states a student discount: the visitor hears "I don't have that" or the closest
    // documented answer with a rep to confirm, and a rep is asked for either way.
    assert!(
        f.text.contains("I don't have that information")
            || f.text.contains(closer_sales::turn::plan::CLOSEST),
        "{intents:?}: {}",
        f.text
    );
    assert!(!handoffs(&events).is_empty(), "{}", f.text);
    assert!(!f.text.contains('%'), "{}", f.text);
    // A statement with no question still gets the polite brush-off.
    let events = one_turn(&ts, None, "I'm a student working on a class project.")
        .await
        .unwrap();
    let f = final_of(&events);
    assert!(f.text.contains("We build for business teams"), "{}", f.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_invalid_input_gets_the_right_status() {
    let ts = spawn(real_models()).await;
    let mut client = ts.assistant().await;
    // Classify: empty text, over-long text, unknown tenant, bad tenant id.
    let classify = |tenant: &str, text: String| pb::ClassifyRequest {
        tenant: tenant.into(),
        text,
    };
    let e = client
        .classify(classify("applinks", "  ".into()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("text:"), "{}", e.message());
    let e = client
        .classify(classify("applinks", "a".repeat(2001)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("text:") && e.message().contains("2001"),
        "{}",
        e.message()
    );
    let e = client
        .classify(classify("nobody", "hello".into()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = client
        .classify(classify("../etc", "hello".into()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("tenant:"), "{}", e.message());

    // Converse: unknown tenant, empty message, over-long message, no start.
    let (tx, rx) = mpsc::channel(4);
    tx.send(start_event("nobody", None)).await.unwrap();
    let e = client.converse(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    for (text, field) in [("", "message.text"), (&*"x".repeat(2001), "message.text")] {
        let err = one_turn(&ts, None, text).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(field), "{}", err.message());
    }

    let (tx, rx) = mpsc::channel(4);
    tx.send(message("hi")).await.unwrap();
    let e = client.converse(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("start:"), "{}", e.message());
}

/// `--intent-encoder mpnet`: the server loads the larger encoder for intents from the model
/// folder, retrains the tenant's stored MiniLM model once for it (its version names the
/// encoder), and Classify reads the three intents of the seed message through it; retrieval
/// keeps MiniLM. `minilm+mpnet` (both side by side) retrains once more and reads them alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_mpnet_intent_encoder_retrains_once_and_serves_classify() {
    let data = demo_data();
    let stored = closer_kb::tenant_dir(data.path(), "applinks").join("intent-model.bin");
    let classify = |addr: std::net::SocketAddr, text: &'static str| async move {
        let mut c = pb::assistant_client::AssistantClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        c.classify(pb::ClassifyRequest {
            tenant: "applinks".into(),
            text: text.into(),
        })
        .await
        .unwrap()
        .into_inner()
    };
    let mut names_by = vec![];
    let mut versions = vec![];
    for encoder in ["minilm", "mpnet", "mpnet", "minilm+mpnet"] {
        let mut cfg = ServeConfig::for_tests(data.path().to_path_buf(), model_paths().root);
        cfg.generator = closer_server::config::GeneratorKind::Fake;
        cfg.intent_encoder = encoder.parse().unwrap();
        let mut server = start(cfg, ModelSource::Files(model_paths())).await.unwrap();
        server.wait_ready().await.unwrap();
        let got = classify(server.addr, SEED).await;
        let mut names: Vec<String> = got.intents.iter().map(|i| i.name.clone()).collect();
        names.sort();
        names_by.push(names);
        let off_topic = classify(server.addr, "What's the weather like in Paris tomorrow?").await;
        assert!(
            off_topic.intents.iter().all(|i| i.name == "out_of_scope"),
            "{encoder}: {:?}",
            off_topic.intents
        );
        versions.push(std::fs::read(&stored).unwrap());
        server.shutdown(Duration::from_secs(5)).await.unwrap();
    }
    for names in &names_by {
        assert_eq!(
            names,
            &["account_owner", "pricing", "security_compliance"],
            "{names_by:?}"
        );
    }
    assert_ne!(versions[0], versions[1], "retrained for MPNet");
    assert_eq!(
        versions[1], versions[2],
        "stored and reloaded, not retrained again"
    );
    assert_ne!(
        versions[2], versions[3],
        "retrained for both encoders side by side"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_health_is_serving_only_after_models_load() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let data = demo_data();
    let cfg = ServeConfig::for_tests(data.path().to_path_buf(), model_paths().root);
    // The real loading path: models from files, tenants from the data dir.
    let mut server = start(cfg, ModelSource::Files(model_paths())).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let check = |svc: &str| tonic_health::pb::HealthCheckRequest {
        service: svc.into(),
    };
    let status = health
        .check(check("closer.v1.Assistant"))
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        ServingStatus::NotServing as i32,
        "loading takes seconds; must not be SERVING yet"
    );
    let mut assistant = pb::assistant_client::AssistantClient::new(channel.clone());
    let e = assistant
        .classify(pb::ClassifyRequest {
            tenant: "applinks".into(),
            text: "hi".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);

    server.wait_ready().await.unwrap();
    for svc in ["", "closer.v1.Assistant", "closer.v1.Knowledge"] {
        let status = health.check(check(svc)).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{svc}");
    }
    let ok = assistant
        .classify(pb::ClassifyRequest {
            tenant: "applinks".into(),
            text: "Is there a free trial?".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.intents[0].name, "trial");

    server.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(
        health.check(check("")).await.is_err() || {
            let s = health.check(check("")).await.unwrap().into_inner().status;
            s == ServingStatus::NotServing as i32
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_knowledge_search_and_classify() {
    let ts = spawn(real_models()).await;
    let mut kb = pb::knowledge_client::KnowledgeClient::connect(ts.url.clone())
        .await
        .unwrap();
    let r = kb
        .search(pb::SearchRequest {
            tenant: "applinks".into(),
            query: "are you soc2 certified".into(),
            limit: 3,
            intent: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.facts[0].fact.as_ref().unwrap().id,
        "compliance-soc2",
        "{r:?}"
    );
    assert!(r.facts.len() <= 3);
    // Query syntax from a visitor is just text.
    let r = kb
        .search(pb::SearchRequest {
            tenant: "applinks".into(),
            query: "price AND (\"seat OR".into(),
            limit: 0,
            intent: Some("pricing".into()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.facts[0].fact.as_ref().unwrap().id, "pricing-seat");
    let e = kb
        .search(pb::SearchRequest {
            tenant: "applinks".into(),
            query: "x".into(),
            limit: 51,
            intent: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("limit:"));

    let mut client = ts.assistant().await;
    let r = client
        .classify(pb::ClassifyRequest {
            tenant: "applinks".into(),
            text: SEED.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.intents.len(), 3, "{r:?}");
    let r = client
        .classify(pb::ClassifyRequest {
            tenant: "applinks".into(),
            text: "What's the weather in Paris tomorrow?".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.intents[0].name, "out_of_scope", "{r:?}");
    // Slots come with Classify.
    let r = client
        .classify(pb::ClassifyRequest {
            tenant: "applinks".into(),
            text: "I'm jane@globex.io, we're 250 employees in Germany and need 40 seats this quarter. What does it cost?".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.intents[0].name, "pricing", "{r:?}");
    let slot = |n: &str| {
        r.slots
            .iter()
            .find(|s| s.name == n)
            .map(|s| (s.value.as_str(), s.detail.as_str()))
    };
    assert_eq!(slot("email"), Some(("jane@globex.io", "business")));
    assert_eq!(slot("company_domain"), Some(("globex.io", "")));
    assert_eq!(slot("company_size"), Some(("250", "")));
    assert_eq!(slot("country"), Some(("DE", "")));
    assert_eq!(slot("seats"), Some(("40", "")));
    assert_eq!(slot("timeline"), Some(("this quarter", "")));
}

async fn upload(
    url: &str,
    format: pb::IntentFormat,
    content: String,
) -> Result<Vec<pb::training_progress::Event>, tonic::Status> {
    let mut client = pb::intents_client::IntentsClient::connect(url.to_string())
        .await
        .unwrap();
    let mut stream = client
        .upload(pb::UploadIntentsRequest {
            tenant: "applinks".into(),
            format: format as i32,
            content,
        })
        .await?
        .into_inner();
    let mut events = vec![];
    while let Some(p) = stream.message().await? {
        events.push(p.event.expect("event set"));
    }
    Ok(events)
}

async fn top_intent(ts: &TestServer, text: &str) -> String {
    let r = ts
        .assistant()
        .await
        .classify(pb::ClassifyRequest {
            tenant: "applinks".into(),
            text: text.into(),
        })
        .await
        .unwrap()
        .into_inner();
    r.intents[0].name.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_intent_upload_retrains_without_restart_and_persists() {
    use pb::training_progress::Event as P;
    let data = demo_data();
    let data_path = data.path().to_path_buf();
    let ts = spawn_in(real_models(), data).await;
    let question = "Can we run Applinks on our own servers, on-premise?";
    assert_ne!(top_intent(&ts, question).await, "deployment");

    // A bad file is rejected naming the line, and nothing changes.
    let mut yaml = std::fs::read_to_string(example_dir().join("intents.yaml")).unwrap();
    let bad = yaml.replacen("  - name: pricing", "  - nme: pricing", 1);
    let e = upload(&ts.url, pb::IntentFormat::Yaml, bad)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("content: line "), "{}", e.message());
    let e = upload(
        &ts.url,
        pb::IntentFormat::Jsonl,
        "{\"text\": \"hi\", \"intent\": \"a\"}\n{\"text\": \"\", \"intent\": \"a\"}\n".into(),
    )
    .await
    .unwrap_err();
    assert!(
        e.message().contains("line 2") && e.message().contains("`text`"),
        "{}",
        e.message()
    );
    assert_eq!(
        top_intent(&ts, "How much does each seat cost?").await,
        "pricing"
    );

    // A new intent: uploaded, retrained with progress, serving on the next call.
    yaml.push_str(
        "  - name: deployment
    description: Where Applinks runs.
    flags: [knowledge]
    examples:
      - Can we self-host it?
      - Do you offer an on-premise version?
      - Can it run on our own servers?
      - Is there an on-prem deployment option?
      - Can we install it in our private cloud?
      - Do you support self-hosted installs?
      - Can we deploy it in our own data center?
      - Is a self-managed version available?
      - Can I host Applinks myself?
      - Do you have an on premises edition?
",
    );
    let events = upload(&ts.url, pb::IntentFormat::Yaml, yaml).await.unwrap();
    assert!(
        matches!(events.first(), Some(P::Validated(v)) if v.intents == 16),
        "{events:?}"
    );
    assert!(events.iter().any(|e| matches!(e, P::Embedding(_))));
    assert!(events.iter().any(|e| matches!(e, P::Training(_))));
    let Some(P::Done(done)) = events.last() else {
        panic!("no done event: {events:?}")
    };
    assert!(done.holdout_accuracy > 0.7, "{done:?}");
    assert!(done.oos_threshold > 0.0 && done.oos_threshold < 1.0);
    assert_eq!(top_intent(&ts, question).await, "deployment");
    assert_eq!(
        top_intent(&ts, "How much does each seat cost?").await,
        "pricing"
    );

    let mut intents = pb::intents_client::IntentsClient::connect(ts.url.clone())
        .await
        .unwrap();
    let got = intents
        .get(pb::GetIntentsRequest {
            tenant: "applinks".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got
        .intents
        .iter()
        .any(|i| i.name == "deployment" && i.examples == 10));
    assert_eq!(got.model.as_ref().unwrap().version, done.version);

    // Restart on the same data: the stored model is loaded, not retrained.
    let TestServer {
        _server: server,
        _data: data,
        ..
    } = ts;
    server.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(data_path.join("tenants/applinks/intent-model.bin").exists());
    let ts = spawn_in(real_models(), data).await;
    let mut intents = pb::intents_client::IntentsClient::connect(ts.url.clone())
        .await
        .unwrap();
    let again = intents
        .get(pb::GetIntentsRequest {
            tenant: "applinks".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.model, got.model,
        "same version and the same recorded training time: loaded, not retrained"
    );
    assert_eq!(top_intent(&ts, question).await, "deployment");
}

// ---------------------------------------------------------------- fakes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_arrive_on_the_stream_after_the_intents() {
    let ts = spawn(fake_models(Arc::new(ScriptedGenerator::echo_facts()))).await;
    let events = one_turn(
        &ts,
        None,
        "I'm sam@initech.com, a 40-person team in the UK. How much does each seat cost?",
    )
    .await
    .unwrap();
    assert!(shape(&events).starts_with("IS"), "{}", shape(&events));
    let Event::Slots(s) = &events[1] else {
        unreachable!()
    };
    let names: Vec<&str> = s.slots.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(
        names,
        ["email", "company_domain", "company_size", "country"],
        "{s:?}"
    );
    assert_eq!(s.slots[0].detail, "business");
    assert_eq!(s.turn, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_generator_never_reaches_the_client() {
    // The generator invents a discount, does wrong arithmetic, names a rep and a link nobody wrote.
    let liar = ScriptedGenerator::fixed(
        "Each seat costs $80 per user per month billed monthly. Startups get a 50% discount, so 10 seats cost $400. \
         Your rep is Bob Smith, reach him at bob@evil.example or https://evil.example/deal. We are also ISO 27001 certified.",
    );
    let ts = spawn(fake_models(Arc::new(liar))).await;
    let events = one_turn(&ts, Some("acme.com"), "How much does each seat cost?")
        .await
        .unwrap();
    let f = final_of(&events);
    assert_eq!(deltas(&events), f.text);
    for bad in [
        "50%",
        "$400",
        "Bob",
        "evil.example",
        "ISO",
        "27001",
        "discount",
    ] {
        assert!(
            !f.text.contains(bad),
            "unverified {bad:?} reached the client: {}",
            f.text
        );
    }
    assert!(
        f.text.contains("$80") && f.text.contains("$960"),
        "the authored answer stands in: {}",
        f.text
    );
    assert!(f.guard_replaced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_reciting_its_prompt_is_dropped() {
    let reciter = ScriptedGenerator::new(Arc::new(|req: &closer_models::GenerationRequest| {
        req.system.clone()
    }));
    let ts = spawn(fake_models(Arc::new(reciter))).await;
    let events = one_turn(&ts, Some("acme.com"), "How much does each seat cost?")
        .await
        .unwrap();
    let f = final_of(&events);
    assert!(!f.text.contains("website chat assistant"), "{}", f.text);
    assert!(f.text.contains("$80"), "{}", f.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_public_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let ts = spawn(fake_models(Arc::new(ScriptedGenerator::echo_facts()))).await;
    let channel = tonic::transport::Endpoint::from_shared(ts.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        resp.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "closer.v1.Assistant",
        "closer.v1.Knowledge",
        "closer.v1.Intents",
        "closer.v1.Leads",
        "closer.v1.Events",
        "closer.v1.Playbooks",
        "closer.v1.Reps",
        "closer.v1.Conversations",
        "closer.v1.Reports",
        "closer.v1.Webhooks",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
}

/// A cached system prompt (instructions and facts) starts later generations: the same request
/// reads only the visitor's part and says exactly the same; a request with the same
/// instructions but other facts reuses the instructions and says what a fresh model says.
#[test]
fn real_generator_reuses_cached_prompt_prefixes_without_changing_answers() {
    use closer_models::GenerationRequest;
    let g = closer_models::generator::QwenGenerator::load(&model_paths().generator_file()).unwrap();
    let instructions = "You are the website chat assistant of Applinks. Answer the visitor in one \
                        to three short sentences using only these facts:\n";
    let pricing = GenerationRequest {
        system: format!(
            "{instructions}- Each seat costs $80 per user per month billed monthly, or $960 per \
             user per year billed annually.\n"
        ),
        user: "How much does each seat cost?".into(),
        max_tokens: 24,
        ..Default::default()
    };
    let security = GenerationRequest {
        system: format!(
            "{instructions}- Applinks holds a SOC 2 Type II report, renewed every year by an \
             independent auditor; customers can request it under NDA.\n"
        ),
        user: "Are you SOC 2 compliant?".into(),
        max_tokens: 24,
        ..Default::default()
    };
    let run = |r: &GenerationRequest| whole_answer(&g, r);
    g.clear_prefix_cache();
    let (first, s1) = run(&pricing);
    assert_eq!(s1.reused_prompt_tokens, 0);
    let (again, s2) = run(&pricing);
    assert_eq!(again, first);
    assert!(
        s2.reused_prompt_tokens > 30 && s2.reused_prompt_tokens < s2.prompt_tokens,
        "{s2:?}"
    );
    let (shared, s3) = run(&security);
    assert!(
        s3.reused_prompt_tokens >= 8 && s3.reused_prompt_tokens < s2.reused_prompt_tokens,
        "the instructions only: {s3:?}"
    );
    // Another team never starts from this team's cache.
    let (_, other) = run(&GenerationRequest {
        share: "another-team".into(),
        ..pricing.clone()
    });
    assert_eq!(other.reused_prompt_tokens, 0);
    g.clear_prefix_cache();
    let (fresh, s4) = run(&security);
    assert_eq!(s4.reused_prompt_tokens, 0);
    assert_eq!(shared, fresh);
    assert!(!first.is_empty() && !fresh.is_empty());
}

/// Prompt-lookup decoding proposes spans of the facts and keeps what the model would have
/// picked: the answer is the plain greedy one, in fewer passes; a consumer stopping mid-draft
/// gets no text after it asked to stop, and the token limit holds.
#[test]
fn real_prompt_lookup_drafts_keep_the_plain_answer() {
    use closer_models::generator::QwenGenerator;
    use closer_models::{AnswerGenerator, GenerationRequest};
    let loaded = QwenGenerator::load(&model_paths().generator_file()).unwrap();
    let drafting = loaded.draft_limit() > 0;
    let mut g = loaded.with_draft_limit(closer_models::generator::MAX_DRAFT);
    let request = GenerationRequest {
        system: "You are a website chat assistant. Answer in one to three short sentences, using \
                 only these facts:\n- Each seat costs $80 per user per month billed monthly, or \
                 $960 per user per year billed annually.\n- Applinks holds a SOC 2 Type II \
                 report, renewed every year by an independent auditor; customers can request it \
                 under NDA.\n"
            .into(),
        user: "How much does each seat cost? Are you SOC II compliant?".into(),
        max_tokens: 64,
        ..Default::default()
    };
    let run = |g: &QwenGenerator, r: &GenerationRequest, stop_after: usize| {
        let mut pieces = vec![];
        let stats = g
            .generate(r, &mut |t| {
                if !t.is_empty() {
                    pieces.push(t.to_string());
                }
                if pieces.len() >= stop_after {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            })
            .unwrap();
        (pieces.concat(), pieces.len(), stats)
    };
    let (drafted, _, s) = run(&g, &request, usize::MAX);
    assert!(drafted.contains("$80 per user per month"), "{drafted}");
    assert!(s.accepted_draft_tokens > 10, "{s:?}");
    assert!(
        s.decode_passes + s.accepted_draft_tokens >= s.generated_tokens,
        "{s:?}"
    );
    assert!(s.decode_passes < s.generated_tokens, "{s:?}");
    // Stopped by the consumer after 5 pieces, in the middle of a taken draft.
    let (_, pieces, s) = run(&g, &request, 5);
    assert_eq!(pieces, 5);
    assert!(s.stopped_by_consumer);
    // The token limit holds however long the drafts.
    let short = GenerationRequest {
        max_tokens: 7,
        ..request.clone()
    };
    let (_, _, s) = run(&g, &short, usize::MAX);
    assert_eq!(s.generated_tokens, 7, "{s:?}");
    // A team pressing past its quota generates in the background: short passes, no drafts.
    let background = GenerationRequest {
        background: true,
        ..request.clone()
    };
    let (bg, _, s) = run(&g, &background, usize::MAX);
    assert_eq!(s.drafted_tokens, 0, "{s:?}");
    assert_eq!(s.decode_passes, s.generated_tokens);
    g = g.with_draft_limit(0);
    let (plain, _, s) = run(&g, &request, usize::MAX);
    assert_eq!(bg, plain);
    assert_eq!((s.drafted_tokens, s.accepted_draft_tokens), (0, 0));
    assert_eq!(s.decode_passes, s.generated_tokens);
    assert_eq!(drafted, plain);
    // Drafting is on by default only where several tokens cost little more than one.
    use closer_models::qwen2::Kernels;
    assert_eq!(drafting, Kernels::detect().int8());
}

/// A generator's whole answer to `r`, and its statistics.
fn whole_answer(
    g: &dyn closer_models::AnswerGenerator,
    r: &closer_models::GenerationRequest,
) -> (String, closer_models::GenerationStats) {
    let mut text = String::new();
    let stats = g
        .generate(r, &mut |t| {
            text.push_str(t);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    (text, stats)
}

/// Several sequences in one forward pass (the matrix products over all their rows, attention
/// per sequence) give each exactly the logits of its own pass, as do a prompt read in two
/// passes and a token checked with drafts; so concurrent generations, whose passes the
/// generator batches, give the answers they give one at a time.
#[test]
fn real_batched_passes_match_one_sequence_at_a_time() {
    use candle_core::quantized::gguf_file;
    use candle_core::{Device, Tensor};
    use closer_models::generator::QwenGenerator;
    use closer_models::qwen2::{Segment, Weights};
    use closer_models::GenerationRequest;
    let path = model_paths().generator_file();
    let mut r = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    let c = gguf_file::Content::read(&mut r).unwrap();
    let (tokenizer, _) = closer_models::qwen_tokenizer::from_gguf(&c).unwrap();
    let dev = Device::Cpu;
    let w = Weights::from_gguf(c, &mut r, &dev).unwrap();
    let ids = |t: &str| tokenizer.encode_fast(t, false).unwrap().get_ids().to_vec();
    let a = ids("Each seat costs $80 per user per month billed monthly.");
    let b = ids("Applinks holds a SOC 2 Type II report, renewed every year.");
    let c = ids("Who would be our account executive?");
    // Alone: a and b read whole; c read, then one more token after it.
    let alone = |x: &[u32], pos: usize, cache: &mut closer_models::qwen2::KvCache| {
        let t = Tensor::new(x, &dev).unwrap().unsqueeze(0).unwrap();
        w.forward_all(&t, pos, cache).unwrap().squeeze(0).unwrap()
    };
    let (mut ca, mut cb, mut cc) = (w.new_cache(), w.new_cache(), w.new_cache());
    let want_a = alone(&a, 0, &mut ca);
    // b as a prompt (its last logits only: where AMX is on, prompt rows take it).
    let b_last = w
        .forward(
            &Tensor::new(b.as_slice(), &dev)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            0,
            &mut cb,
        )
        .unwrap();
    alone(&c, 0, &mut cc);
    let mut cc_batched = cc.clone();
    let want_c = alone(&[11], c.len(), &mut cc);
    // Together: a (every row), b (last row), c's next token (a decoding row), in one pass.
    let (mut ba, mut bb) = (w.new_cache(), w.new_cache());
    let next = [11u32];
    let mut segs = [
        Segment {
            ids: &a,
            pos: 0,
            cache: &mut ba,
            all: true,
        },
        Segment {
            ids: &b,
            pos: 0,
            cache: &mut bb,
            all: false,
        },
        Segment {
            ids: &next,
            pos: c.len(),
            cache: &mut cc_batched,
            all: true,
        },
    ];
    let got = w.forward_batch(&mut segs).unwrap();
    assert_eq!(got[0].dims(), want_a.dims());
    assert_eq!(got[1].dims()[0], 1);
    for (i, (got, want)) in [(&got[0], &want_a), (&got[1], &b_last), (&got[2], &want_c)]
        .into_iter()
        .enumerate()
    {
        let d = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        let d: f32 = d.to_scalar().unwrap();
        assert_eq!(d, 0.0, "segment {i}: batched logits differ by {d}");
    }
    assert_eq!(
        (ba.len(), bb.len(), cc_batched.len()),
        (a.len(), b.len(), c.len() + 1)
    );
    // Nor does a row depend on how its sequence was cut into passes: b read as a start and the
    // rest (as after a cached system prompt), c's next token checked with two drafted tokens.
    let prompt = |x: &[u32], pos: usize, cache: &mut closer_models::qwen2::KvCache| {
        let t = Tensor::new(x, &dev).unwrap().unsqueeze(0).unwrap();
        w.forward(&t, pos, cache).unwrap()
    };
    let mut split = w.new_cache();
    prompt(&b[..5], 0, &mut split);
    let rest = prompt(&b[5..], 5, &mut split);
    let same = |x: &Tensor, y: &Tensor| {
        let (x, y) = (x.flatten_all().unwrap(), y.flatten_all().unwrap());
        x.to_vec1::<f32>().unwrap() == y.to_vec1::<f32>().unwrap()
    };
    assert!(same(&rest, &b_last), "b read in two passes");
    let mut drafted = cc_batched.truncated(c.len()).unwrap();
    let rows = alone(&[11, 13, 17], c.len(), &mut drafted);
    assert!(
        same(&rows.narrow(0, 0, 1).unwrap(), &want_c),
        "c's token with drafts"
    );
    drop(w);

    // Four visitors at once through the generator: the same answers as one at a time, and
    // their passes did run together.
    let g = QwenGenerator::load(&model_paths().generator_file()).unwrap();
    let facts = "You are a website chat assistant. Answer in one to three short sentences, using \
                 only these facts:\n- Each seat costs $80 per user per month billed monthly, or \
                 $960 per user per year billed annually.\n- Applinks holds a SOC 2 Type II \
                 report; customers can request it under NDA.\n- Dana Reyes owns the acme.com \
                 account.\n";
    let requests: Vec<GenerationRequest> = [
        "How much does each seat cost?",
        "Are you SOC II compliant?",
        "Who would be our rep? We are acme.com.",
        "Is there a yearly price per seat?",
    ]
    .iter()
    .enumerate()
    .map(|(i, q)| GenerationRequest {
        system: facts.into(),
        user: (*q).into(),
        max_tokens: 40,
        share: format!("team{}", i % 2),
        ..Default::default()
    })
    .collect();
    let answer = whole_answer;
    let alone: Vec<String> = requests.iter().map(|r| answer(&g, r).0).collect();
    g.clear_prefix_cache();
    let together: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = requests
            .iter()
            .map(|r| {
                let g = &g;
                s.spawn(move || answer(g, r))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let shared: usize = together.iter().map(|(_, s)| s.shared_passes).sum();
    assert!(shared > 0, "no pass was shared: {together:?}");
    for ((got, stats), want) in together.iter().zip(&alone) {
        assert_eq!(got, want, "{stats:?}");
    }
}

/// The generator's own Qwen2 forward pass (KV cache outside the weights, prompt read in chunks)
/// picks the same greedy tokens as candle-transformers' quantized Qwen2 on the same weights.
#[test]
fn real_generator_matches_the_candle_reference() {
    use candle_core::quantized::gguf_file;
    use candle_core::{Device, Tensor};
    let path = model_paths().generator_file();
    let read = || {
        let mut r = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
        let c = gguf_file::Content::read(&mut r).unwrap();
        (c, r)
    };
    let (c, mut r) = read();
    let (tokenizer, _) = closer_models::qwen_tokenizer::from_gguf(&c).unwrap();
    let prompt = closer_models::generator::QwenGenerator::prompt(&closer_models::GenerationRequest {
        system: "You are a website chat assistant. Answer in one to three short sentences, using \
                 only these facts:\n- Each seat costs $80 per user per month billed monthly, or $960 \
                 per user per year billed annually.\n- Applinks holds a SOC 2 Type II report, renewed \
                 every year by an independent auditor; customers can request it under NDA."
            .into(),
        user: "How much does each seat cost, and is there a discount for a team of 200 people?".into(),
        ..Default::default()
    });
    let ids = tokenizer
        .encode_fast(prompt.as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert!(
        ids.len() > 64,
        "the prompt spans several prefill chunks: {}",
        ids.len()
    );
    let dev = Device::Cpu;
    let argmax = |t: &Tensor| -> u32 {
        let v: Vec<f32> = t.squeeze(0).unwrap().to_vec1().unwrap();
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32
    };
    // candle's model, whole prompt at once.
    let mut theirs =
        candle_transformers::models::quantized_qwen2::ModelWeights::from_gguf(c, &mut r, &dev)
            .unwrap();
    let mut want = vec![];
    let input = Tensor::new(ids.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut next = argmax(&theirs.forward(&input, 0).unwrap());
    for i in 0..12 {
        want.push(next);
        let input = Tensor::new(&[next], &dev).unwrap().unsqueeze(0).unwrap();
        next = argmax(&theirs.forward(&input, ids.len() + i).unwrap());
    }
    drop(theirs);
    // Ours, the prompt in chunks of 64 and a cache of its own: with the reference kernels the
    // same arithmetic, with the VNNI layout (where this CPU has it) activations quantised per
    // 256 values instead of 32, and with AMX (where this CPU has it) the prompt's Q8_0 products
    // in bf16, neither of which must change the greedy answer.
    use closer_models::qwen2::Kernels;
    let mut layouts = vec![Kernels::Reference];
    if Kernels::detect().int8() {
        layouts.push(Kernels::Vnni);
    }
    if Kernels::detect() == Kernels::Amx {
        layouts.push(Kernels::Amx);
    }
    for kernels in layouts {
        let (c, mut r) = read();
        let ours = closer_models::qwen2::Weights::from_gguf_for(c, &mut r, &dev, kernels).unwrap();
        assert_eq!(ours.kernels(), kernels);
        let mut cache = ours.new_cache();
        let mut logits = None;
        for (k, chunk) in ids.chunks(64).enumerate() {
            let input = Tensor::new(chunk, &dev).unwrap().unsqueeze(0).unwrap();
            logits = Some(ours.forward(&input, k * 64, &mut cache).unwrap());
        }
        let mut next = argmax(&logits.unwrap());
        let mut got = vec![];
        for i in 0..12 {
            got.push(next);
            let input = Tensor::new(&[next], &dev).unwrap().unsqueeze(0).unwrap();
            next = argmax(&ours.forward(&input, ids.len() + i, &mut cache).unwrap());
        }
        assert_eq!(cache.len(), ids.len() + 12);
        assert_eq!(
            got,
            want,
            "{kernels:?}: {:?} vs {:?}",
            tokenizer.decode(&got, true),
            tokenizer.decode(&want, true)
        );
    }
}

/// The encoder's own f32 forward pass (which also exposes every layer) gives the same
/// last-layer embeddings as candle-transformers' BERT on the same weights.
#[test]
fn real_encoder_matches_the_candle_reference() {
    use candle_core::{DType, Device, Tensor};
    let dir = model_paths().encoder_dir();
    let texts = [
        "How much does each seat cost?",
        "Are you SOC II compliant? And who would be our rep?",
        "hi",
    ];
    let ours = closer_models::encoder::TextEncoder::load(&dir, "all-MiniLM-L6-v2")
        .unwrap()
        .pooled_layers_fast(&texts, &[6])
        .unwrap();

    let dev = Device::Cpu;
    let config: candle_transformers::models::bert::Config =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let vb = candle_nn::VarBuilder::from_buffered_safetensors(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        DType::F32,
        &dev,
    )
    .unwrap();
    let model = candle_transformers::models::bert::BertModel::load(vb, &config).unwrap();
    let tok = tokenizers::Tokenizer::from_bytes(std::fs::read(dir.join("tokenizer.json")).unwrap())
        .unwrap();
    for (text, mine) in texts.iter().zip(&ours) {
        let enc = tok.encode(*text, true).unwrap();
        let n = enc
            .get_ids()
            .iter()
            .zip(enc.get_attention_mask())
            .filter(|(_, &m)| m == 1)
            .count();
        let ids = Tensor::new(&enc.get_ids()[..n], &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let hidden = model
            .forward(&ids, &ids.zeros_like().unwrap(), None)
            .unwrap();
        let mean = hidden.mean(1).unwrap().squeeze(0).unwrap();
        let norm = mean.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
        let reference: Vec<f32> = mean.broadcast_div(&norm).unwrap().to_vec1().unwrap();
        let diff = reference
            .iter()
            .zip(mine)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{text:?}: max difference {diff}");
    }
}

/// The larger intent encoder (all-mpnet-base-v2: relative-position buckets, positions past the
/// padding id, no token types) gives Hugging Face transformers' pooled vectors, on the fast
/// path, the candle graph (padded batches of mixed lengths) and the int8 path. Reference
/// values: `AutoModel` in PyTorch 2.x, mean over tokens, unit length. The 30-token text spans
/// relative distances past 16, a bucket boundary.
#[test]
fn real_mpnet_encoder_matches_hugging_face() {
    use closer_models::source::EncoderModel;
    let paths = model_paths();
    if let Err(e) = paths.check_encoder(EncoderModel::MpNet) {
        panic!("the MPNet test needs it pulled (make models does): {e}");
    }
    let enc = closer_models::encoder::TextEncoder::open(&paths, EncoderModel::MpNet).unwrap();
    assert_eq!(closer_models::Embedder::dim(&enc), 768);
    let texts = [
        "How much does each seat cost?",
        "Are you SOC II compliant? And who would be our rep? We are a team of forty people in \
         Berlin planning to buy this quarter.",
        "hi",
    ];
    assert_eq!(enc.token_ids(texts[1]).unwrap().len(), 30);
    let heads: [[f32; 6]; 3] = [
        [-0.01209, -0.03907, 0.0298, 0.0348, -0.02589, 0.01276],
        [0.01246, -0.01627, -0.0107, 0.02191, 0.03218, -0.01813],
        [0.03395, -0.00561, -0.00122, 0.01597, -0.00624, 0.02568],
    ];
    let cosines = [(0, 1, 0.10491f32), (0, 2, 0.06259), (1, 2, 0.16065)];
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let fast = enc.pooled_layers_fast(&texts, &[12]).unwrap();
    let graph = enc.pooled_layers_candle(&texts, &[12]).unwrap();
    for (route, v, tol) in [("fast", &fast, 2e-5f32), ("candle", &graph, 2e-5)] {
        for (t, (vec, head)) in texts.iter().zip(v.iter().zip(&heads)) {
            for (a, b) in vec.iter().zip(head) {
                assert!(
                    (a - b).abs() < tol,
                    "{route} {t:?}: {:?} vs {head:?}",
                    &vec[..6]
                );
            }
        }
        for (i, j, c) in cosines {
            let got = cos(&v[i], &v[j]);
            assert!(
                (got - c).abs() < 1e-4,
                "{route} cosine {i}-{j}: {got} vs {c}"
            );
        }
    }
    if enc.int8() {
        let q = enc.pooled_layers_int8(&texts, &[12]).unwrap();
        for (t, (a, b)) in texts.iter().zip(q.iter().zip(&fast)) {
            assert!(cos(a, b) > 0.98, "{t:?}: int8 cosine to f32 {}", cos(a, b));
        }
    }
}

/// The fast inference path (unpadded, fused, SIMD) gives the candle graph's pooled vectors at
/// every layer asked for, for a batch of mixed lengths larger than one forward chunk.
#[test]
fn real_fast_encoder_path_matches_the_candle_graph() {
    let enc =
        closer_models::encoder::TextEncoder::open(&model_paths(), Default::default()).unwrap();
    let base = [
        "hi",
        "How much does each seat cost?",
        "Are you SOC II compliant? And who would be our rep? We are a 200-person team in Berlin \
         looking at the enterprise plan with SSO, audit logs and a dedicated success manager.",
        "¿Tienen precios para equipos pequeños? 日本語のサポートはありますか",
    ];
    let texts: Vec<String> = (0..40).map(|i| format!("{} {i}", base[i % 4])).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let layers = [6, 0, 3];
    let fast = enc.pooled_layers_fast(&texts, &layers).unwrap();
    let reference = enc.pooled_layers_candle(&texts, &layers).unwrap();
    assert_eq!(fast.len(), 40);
    for (t, (a, b)) in texts.iter().zip(fast.iter().zip(&reference)) {
        assert_eq!(a.len(), 3 * 384);
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{t:?}: max difference {diff}");
    }
    assert!(enc.pooled_layers(&texts[..1], &[7]).is_err());
    // The size policy in f32: a short message goes the fast way, a big batch candle's.
    if !enc.int8() {
        let auto = enc.pooled_layers(&texts, &[6]).unwrap();
        for (a, b) in auto.iter().zip(&reference) {
            assert!(a.iter().zip(&b[..384]).all(|(x, y)| (x - y).abs() < 1e-5));
        }
    }
}

/// Where the CPU has VNNI or AVX2 the encoder serves through int8 linears: vectors within cosine
/// 0.98 of the f32 ones for every text (0.995 on average), the same nearest neighbours among
/// them, and every batch size (one message, a big batch) served the same way.
#[test]
fn real_int8_encoder_path_stays_close_to_f32() {
    use closer_models::Embedder;
    let enc =
        closer_models::encoder::TextEncoder::open(&model_paths(), Default::default()).unwrap();
    // int8 wherever there are kernels for it: candle's with VNNI, ours with AVX2.
    let served_int8 = closer_models::kernels::fastbert::int8_kernels().is_some();
    assert_eq!(enc.int8(), served_int8);
    assert_eq!(enc.name().ends_with("int8"), served_int8);
    #[cfg(target_arch = "x86_64")]
    if std::env::var("CLOSER_INT8").as_deref() != Ok("0") {
        assert_eq!(served_int8, std::arch::is_x86_feature_detected!("avx2"));
    }
    let texts: Vec<String> = std::fs::read_to_string("../eval/data/applinks-intents-test.jsonl")
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    assert!(texts.len() >= 100);
    let f32s = enc.pooled_layers_fast(&texts, &[6]).unwrap();
    let int8 = enc.pooled_layers_int8(&texts, &[6]).unwrap();
    let served = enc.embed(&texts).unwrap();
    let one: Vec<Vec<f32>> = texts[..5]
        .iter()
        .flat_map(|t| enc.embed(&[t]).unwrap())
        .collect();
    let dot = closer_models::dot;
    let mut sum = 0.0;
    for (t, (a, b)) in texts.iter().zip(f32s.iter().zip(&int8)) {
        let c = dot(a, b);
        assert!(c > 0.98, "{t:?}: cosine {c}");
        sum += c;
    }
    assert!(
        sum / texts.len() as f32 > 0.995,
        "mean cosine {}",
        sum / texts.len() as f32
    );
    let nearest = |v: &[Vec<f32>], i: usize| {
        (0..v.len())
            .filter(|&j| j != i)
            .max_by(|&a, &b| dot(&v[i], &v[a]).total_cmp(&dot(&v[i], &v[b])))
            .unwrap()
    };
    let same = (0..texts.len())
        .filter(|&i| nearest(&f32s, i) == nearest(&int8, i))
        .count();
    assert!(
        same * 10 >= texts.len() * 9,
        "{same} of {} nearest neighbours kept",
        texts.len()
    );
    let want = if served_int8 { &int8 } else { &f32s };
    for (a, b) in served.iter().zip(want) {
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4));
    }
    for (a, b) in one.iter().zip(want) {
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4));
    }
}

/// The fine-tuning path: the encoder's own top layer through `pooled_with_top` gives exactly
/// the candle graph's vectors, and a few fine-tuning steps pull two intents' examples apart.
#[test]
fn real_top_layer_path_and_finetuning() {
    use closer_models::intent::finetune::{finetune_top, FinetuneConfig};
    let enc =
        closer_models::encoder::TextEncoder::open(&model_paths(), Default::default()).unwrap();
    let texts = [
        "How much does it cost?",
        "What is the price per seat?",
        "Send me your pricing",
        "Do you have discounts?",
        "Are you SOC 2 compliant?",
        "Is my data encrypted?",
        "Do you have a security report?",
        "Are you GDPR compliant?",
    ];
    let y = [0, 0, 0, 0, 1, 1, 1, 1];
    let plain = enc.pooled_layers_candle(&texts, &[6]).unwrap();
    let same = enc.pooled_with_top(&texts, enc.top_layer()).unwrap();
    for (a, b) in plain.iter().zip(&same) {
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5));
    }
    let cross = |v: &[Vec<f32>]| -> f32 {
        let mut s = 0.0;
        for i in 0..4 {
            for j in 4..8 {
                s += closer_models::dot(&v[i], &v[j]);
            }
        }
        s / 16.0
    };
    let cfg = FinetuneConfig {
        epochs: 5,
        lr: 1e-4,
        batch: 4,
        ..FinetuneConfig::default()
    };
    let tuned = finetune_top(&enc, &texts, &y, 2, &cfg, 7, &mut |_, _| {}).unwrap();
    let after = enc.pooled_with_top(&texts, &tuned).unwrap();
    assert!(
        cross(&after) < cross(&plain) - 0.02,
        "cross-intent cosine {} -> {}",
        cross(&plain),
        cross(&after)
    );
}
