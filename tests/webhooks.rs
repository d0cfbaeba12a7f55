//! Signed webhooks end to end: a small HTTP receiver on loopback, endpoints made over gRPC with
//! an admin key, conversations that raise events, and every delivery checked by an independent
//! verifier written in Python (`hmac`, `hashlib`, `base64`). Retries (same webhook id), 410,
//! per-conversation order, a failing endpoint beside a healthy one, dead letters and replay,
//! and the SSRF refusals at `Create`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use closer_server::auth::{new_key, Role};
use closer_webhooks::metrics::Outcome;
use tokio::io::AsyncWriteExt;

use super::*;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    at: Instant,
    /// What the receiver answered.
    pub(crate) status: u16,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn conversation(&self) -> Option<String> {
        self.json()["data"]["conversation_id"]
            .as_str()
            .map(str::to_string)
    }
}

/// The status and body to answer with; status 0: no answer at all (the connection is held).
pub(crate) type Answer = Box<dyn Fn(&Received) -> (u16, &'static str) + Send + Sync>;

/// A loopback HTTP/1.1 receiver that records every request and answers as `answer` says.
pub(crate) struct Receiver {
    pub(crate) url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub(crate) async fn start(answer: Answer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (answer, log) = (Arc::new(answer), got.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (answer, log) = (answer.clone(), log.clone());
                tokio::spawn(async move {
                    let Some(mut r) = read_request(&mut s).await else {
                        return;
                    };
                    let (status, body) = answer(&r);
                    r.status = status;
                    log.lock().unwrap().push(r);
                    if status == 0 {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    }
                    // A 429 always says when to come back: in a second.
                    let wait = if status == 429 {
                        "retry-after: 1\r\n"
                    } else {
                        ""
                    };
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\n{wait}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Receiver { url, got }
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (10 s at most) until `done` holds for what was received.
    pub(crate) async fn until(
        &self,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.got();
            if done(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {got:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn read_request(s: &mut tokio::net::TcpStream) -> Option<Received> {
    let r = super::crm::read(s).await?;
    Some(Received {
        id: r.header("webhook-id").to_string(),
        timestamp: r.header("webhook-timestamp").to_string(),
        signature: r.header("webhook-signature").to_string(),
        body: r.body,
        at: Instant::now(),
        status: 0,
    })
}

/// The independent verifier: Python's own HMAC, SHA-256 and base64 over the Standard Webhooks
/// signed content; true when one `v1` signature of the header matches.
fn python_verifies(secret: &str, r: &Received, body: &[u8]) -> bool {
    const VERIFY: &str = r#"
import base64, hashlib, hmac, json, sys
secret, headers_path, body_path = sys.argv[1:4]
h = json.load(open(headers_path))
body = open(body_path, "rb").read()
key = base64.b64decode(secret[len("whsec_"):] if secret.startswith("whsec_") else secret)
signed = h["id"].encode() + b"." + h["timestamp"].encode() + b"." + body
expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
ok = any(
    hmac.compare_digest(part.split(",", 1)[1], expected)
    for part in h["signature"].split(" ")
    if part.startswith("v1,")
)
sys.exit(0 if ok else 1)
"#;
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers.json");
    let body_path = dir.path().join("body");
    std::fs::write(
        &headers,
        serde_json::json!({"id": r.id, "timestamp": r.timestamp, "signature": r.signature})
            .to_string(),
    )
    .unwrap();
    std::fs::write(&body_path, body).unwrap();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(VERIFY)
        .arg(secret)
        .arg(&headers)
        .arg(&body_path)
        .output()
        .expect("python3 runs");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "the verifier failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

struct Hooked {
    server: RunningServer,
    _data: tempfile::TempDir,
    channel: tonic::transport::Channel,
    admin: String,
    rep: String,
}

/// A server with keys required, loopback endpoints allowed and the retry schedule scaled.
async fn hooked(retry_scale: f64) -> Hooked {
    let data = demo_data();
    let store = data_store(data.path());
    let make = |role| {
        let (key, stored) = new_key("applinks", role, "test");
        store.create_key(&stored).unwrap();
        key
    };
    let (admin, rep) = (make(Role::Admin), make(Role::Rep));
    drop(store);
    let mut cfg = ServeConfig::for_tests(data.path().to_path_buf(), ModelPaths::default_root());
    cfg.auth = closer_server::config::AuthMode::Keys;
    cfg.webhooks_allow_loopback = true;
    cfg.webhooks_retry_scale = retry_scale;
    let server = serve_ready(cfg, fake_models(Arc::new(ScriptedGenerator::echo_facts()))).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Hooked {
        server,
        _data: data,
        channel,
        admin,
        rep,
    }
}

fn keyed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

impl Hooked {
    fn hooks(&self) -> pb::webhooks_client::WebhooksClient<tonic::transport::Channel> {
        pb::webhooks_client::WebhooksClient::new(self.channel.clone())
    }

    async fn create(&self, url: &str, kinds: &[&str]) -> pb::CreateWebhookResponse {
        self.hooks()
            .create(keyed(
                pb::CreateWebhookRequest {
                    tenant: "applinks".into(),
                    url: url.into(),
                    kinds: kinds.iter().map(|k| k.to_string()).collect(),
                    description: "test".into(),
                },
                &self.admin,
            ))
            .await
            .unwrap()
            .into_inner()
    }

    async fn endpoints(&self) -> Vec<pb::WebhookEndpoint> {
        self.hooks()
            .list(keyed(
                pb::ListWebhooksRequest {
                    tenant: "applinks".into(),
                },
                &self.admin,
            ))
            .await
            .unwrap()
            .into_inner()
            .endpoints
    }

    /// Turns of one conversation through `Assistant.Send`, each call one turn.
    async fn converse(&self, texts: &[&str]) {
        let mut client = pb::assistant_client::AssistantClient::new(self.channel.clone());
        let mut token: Option<String> = None;
        for text in texts {
            let Some(pb::converse_request::Event::Start(mut start)) =
                start_with_id("applinks", Some("acme.com"), "").event
            else {
                unreachable!()
            };
            start.resume_token = token.clone();
            let req = pb::SendRequest {
                start: Some(start),
                event: Some(pb::send_request::Event::Message(pb::VisitorMessage {
                    text: text.to_string(),
                })),
            };
            let mut s = client
                .send(keyed(req, &self.admin))
                .await
                .unwrap()
                .into_inner();
            while let Some(m) = s.message().await.unwrap() {
                match m.event {
                    Some(Event::Opened(o)) if token.is_none() => token = Some(o.resume_token),
                    Some(Event::Error(e)) => panic!("turn failed: {e:?}"),
                    _ => {}
                }
            }
        }
    }

    /// The tenant's outbox from the start (`n` events at least).
    async fn outbox(&self, n: usize) -> Vec<pb::SalesEvent> {
        let mut events = pb::events_client::EventsClient::new(self.channel.clone());
        let mut s = events
            .subscribe(keyed(
                pb::SubscribeRequest {
                    tenant: "applinks".into(),
                    after_cursor: Some(0),
                    ..Default::default()
                },
                &self.admin,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut out = vec![];
        while out.len() < n {
            out.push(
                tokio::time::timeout(Duration::from_secs(10), s.message())
                    .await
                    .expect("events arrive")
                    .unwrap()
                    .unwrap(),
            );
        }
        // And whatever else is already there.
        while let Ok(Ok(Some(e))) =
            tokio::time::timeout(Duration::from_millis(300), s.message()).await
        {
            out.push(e);
        }
        out
    }
}

const TURNS: [&str; 2] = [
    "How much does each seat cost?",
    "I'm sam@acme.com, we are a 40-person team in the UK.",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_per_the_standard_and_an_independent_verifier_accepts_them() {
    let h = hooked(1.0).await;
    let rx = Receiver::start(Box::new(|_| (200, "ok"))).await;

    // Only an admin key manages webhooks.
    let denied = h
        .hooks()
        .create(keyed(
            pb::CreateWebhookRequest {
                tenant: "applinks".into(),
                url: rx.url.clone(),
                ..Default::default()
            },
            &h.rep,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let created = h.create(&rx.url, &[]).await;
    let secret = created.secret.clone();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let endpoint = created.endpoint.unwrap();
    assert!(endpoint.id.starts_with("wh_"));
    // The secret is shown once: never in a listing.
    let listed = format!("{:?}", h.endpoints().await);
    assert!(!listed.contains(&secret[6..]), "{listed}");

    h.converse(&TURNS).await;
    let outbox = h.outbox(2).await;
    let want: BTreeSet<String> = outbox.iter().map(|e| format!("evt_{}", e.cursor)).collect();
    let got = rx
        .until("every event delivered", |g| {
            want.iter().all(|id| g.iter().any(|r| &r.id == id))
        })
        .await;
    let now = closer_store::now_ms() / 1000;
    for r in &got {
        assert!(
            python_verifies(&secret, r, &r.body),
            "the verifier refused {r:?}"
        );
        // One byte changed: refused.
        let mut tampered = r.body.clone();
        let i = tampered.len() / 2;
        tampered[i] ^= 0x01;
        assert!(
            !python_verifies(&secret, r, &tampered),
            "tampered body accepted"
        );
        // Another secret: refused.
        assert!(!python_verifies(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            r,
            &r.body
        ));
        let ts: i64 = r.timestamp.parse().unwrap();
        assert!((now - ts).abs() < 120, "timestamp {ts} vs now {now}");
        // The body is the event the id names.
        let body = r.json();
        let event = outbox
            .iter()
            .find(|e| format!("evt_{}", e.cursor) == r.id)
            .expect("an event of the outbox");
        assert_eq!(body["type"], event.kind);
        assert_eq!(body["data"]["cursor"], event.cursor);
        assert_eq!(body["data"]["tenant"], "applinks");
        assert_eq!(
            body["data"]["conversation_id"].as_str(),
            event.conversation_id.as_deref()
        );
        let payload: serde_json::Value = serde_json::from_str(&event.payload_json).unwrap();
        assert_eq!(body["data"]["payload"], payload);
    }
    assert!(
        h.server.state.metrics.webhooks.count(Outcome::Delivered) >= want.len() as u64,
        "deliveries are counted"
    );

    // Rotation: the next deliveries carry both signatures, each verifying with its secret.
    let rotated = h
        .hooks()
        .rotate_secret(keyed(
            pb::RotateWebhookSecretRequest {
                tenant: "applinks".into(),
                id: endpoint.id.clone(),
            },
            &h.admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.secret, secret);
    let until = rotated.endpoint.unwrap().previous_secret_until_ms;
    let day = until - closer_store::now_ms();
    assert!((86_000_000..=86_400_000).contains(&day), "{day}");
    let before = got.len();
    h.converse(&["Are you SOC II compliant?"]).await;
    let got = rx
        .until("a delivery after the rotation", |g| g.len() > before)
        .await;
    let r = &got[before];
    assert_eq!(r.signature.split(' ').count(), 2, "{}", r.signature);
    assert!(python_verifies(&rotated.secret, r, &r.body));
    assert!(python_verifies(&secret, r, &r.body));

    // Delete: gone from the list, and NOT_FOUND the second time.
    let delete = || async {
        h.hooks()
            .delete(keyed(
                pb::DeleteWebhookRequest {
                    tenant: "applinks".into(),
                    id: endpoint.id.clone(),
                },
                &h.admin,
            ))
            .await
    };
    delete().await.unwrap();
    assert!(h.endpoints().await.is_empty());
    assert_eq!(delete().await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_with_the_same_id_and_a_410_disables_the_endpoint() {
    let h = hooked(0.001).await;
    // The first request of each webhook id gets 503, the next ones 200.
    let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let s = seen.clone();
    let flaky = Receiver::start(Box::new(move |r| {
        if s.lock().unwrap().insert(r.id.clone()) {
            (503, "busy")
        } else {
            (200, "ok")
        }
    }))
    .await;
    let gone = Receiver::start(Box::new(|_| (410, "gone"))).await;
    let flaky_secret = h.create(&flaky.url, &[]).await.secret;
    let gone_id = h.create(&gone.url, &[]).await.endpoint.unwrap().id;

    h.converse(&TURNS[..1]).await;
    let outbox = h.outbox(1).await;
    let first = format!("evt_{}", outbox[0].cursor);
    let got = flaky
        .until("the first event delivered after a 503", |g| {
            g.iter().any(|r| r.id == first && r.status == 200)
        })
        .await;
    let tries: Vec<&Received> = got.iter().filter(|r| r.id == first).collect();
    assert_eq!(tries.len(), 2, "{tries:#?}");
    assert_eq!((tries[0].status, tries[1].status), (503, 200));
    assert_eq!(tries[0].body, tries[1].body, "a retry sends the same body");
    assert!(python_verifies(&flaky_secret, tries[1], &tries[1].body));

    // 410: one request, then the endpoint is disabled and gets nothing more.
    gone.until("a request to the 410 endpoint", |g| !g.is_empty())
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = h.endpoints().await;
        let g = e.iter().find(|e| e.id == gone_id).unwrap();
        if g.disabled {
            assert!(g.disabled_reason.contains("410"), "{g:?}");
            break;
        }
        assert!(Instant::now() < deadline, "not disabled: {g:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.converse(&["Are you SOC II compliant?"]).await;
    let n = flaky.got().len();
    flaky
        .until("the later events at the healthy endpoint", |g| g.len() > n)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gone.got().len(), 1, "{:#?}", gone.got());
    assert!(h.server.state.metrics.webhooks.count(Outcome::Gone) == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_tried_again_no_sooner() {
    // The schedule alone would retry within a millisecond; Retry-After says one second.
    let h = hooked(0.00001).await;
    let seen = Arc::new(AtomicBool::new(false));
    let s = seen.clone();
    let rx = Receiver::start(Box::new(move |_| {
        if s.swap(true, Ordering::SeqCst) {
            (200, "ok")
        } else {
            (429, "slow down")
        }
    }))
    .await;
    h.create(&rx.url, &["account_live"]).await;
    h.converse(&TURNS[..1]).await;
    let got = rx
        .until("the retry after a 429", |g| {
            g.iter().any(|r| r.status == 200)
        })
        .await;
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[0].id, got[1].id);
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversations_events_arrive_in_order_and_a_failing_endpoint_delays_no_one_else() {
    let h = hooked(0.0005).await;
    let failing = Arc::new(AtomicBool::new(true));
    let blocked = Arc::new(Mutex::new(None::<String>));
    let (f, b) = (failing.clone(), blocked.clone());
    // The first conversation this endpoint hears of fails until healed; others pass.
    let slow = Receiver::start(Box::new(move |r| {
        let c = r.conversation().unwrap_or_default();
        let mut b = b.lock().unwrap();
        let first = b.get_or_insert_with(|| c.clone());
        if *first == c && f.load(Ordering::SeqCst) {
            (503, "down")
        } else {
            (200, "ok")
        }
    }))
    .await;
    let healthy = Receiver::start(Box::new(|_| (200, "ok"))).await;
    h.create(&slow.url, &[]).await;
    h.create(&healthy.url, &[]).await;

    h.converse(&TURNS).await;
    let c1 = h.outbox(2).await;
    let c1_id = c1[0].conversation_id.clone().unwrap();
    assert!(
        c1.iter()
            .filter(|e| e.conversation_id.as_deref() == Some(&c1_id))
            .count()
            >= 2,
        "the test needs two events of one conversation: {c1:?}"
    );
    // A second conversation while the first is failing at `slow`.
    h.converse(&TURNS[..1]).await;
    let all = h.outbox(c1.len() + 1).await;
    let ids = |c: Option<&str>| -> Vec<String> {
        all.iter()
            .filter(|e| c.is_none_or(|c| e.conversation_id.as_deref() == Some(c)))
            .map(|e| format!("evt_{}", e.cursor))
            .collect()
    };
    let (c1_ids, every) = (ids(Some(&c1_id)), ids(None));
    let c2_ids: Vec<String> = every
        .iter()
        .filter(|i| !c1_ids.contains(i))
        .cloned()
        .collect();
    assert!(!c2_ids.is_empty());
    // The healthy endpoint has everything while `slow` still fails the first conversation.
    healthy
        .until("everything at the healthy endpoint", |g| {
            every.iter().all(|id| g.iter().any(|r| &r.id == id))
        })
        .await;
    // The other conversation got through `slow` meanwhile.
    slow.until("the second conversation at the failing endpoint", |g| {
        c2_ids
            .iter()
            .all(|id| g.iter().any(|r| &r.id == id && r.status == 200))
    })
    .await;
    let so_far = slow.got();
    assert!(
        so_far.iter().any(|r| r.id == c1_ids[0] && r.status == 503),
        "the first conversation is failing: {so_far:#?}"
    );
    for later in &c1_ids[1..] {
        assert!(
            !so_far.iter().any(|r| &r.id == later),
            "{later} was sent while {} was failing: {so_far:#?}",
            c1_ids[0]
        );
    }
    // Healed: the first conversation's events arrive, in cursor order.
    failing.store(false, Ordering::SeqCst);
    let got = slow
        .until("the first conversation delivered", |g| {
            c1_ids
                .iter()
                .all(|id| g.iter().any(|r| &r.id == id && r.status == 200))
        })
        .await;
    let delivered_at: BTreeMap<&String, Instant> = c1_ids
        .iter()
        .map(|id| {
            (
                id,
                got.iter()
                    .find(|r| &r.id == id && r.status == 200)
                    .unwrap()
                    .at,
            )
        })
        .collect();
    for pair in c1_ids.windows(2) {
        let first_try_of_later = got.iter().find(|r| r.id == pair[1]).unwrap().at;
        assert!(
            first_try_of_later >= delivered_at[&pair[0]],
            "{} was sent before {} was delivered",
            pair[1],
            pair[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_deliveries_are_dead_lettered_and_replay_sends_them_with_their_original_id() {
    // 20 h × 0.00001 = 0.72 s: the ten attempts take about two seconds.
    let h = hooked(0.00001).await;
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let rx = Receiver::start(Box::new(move |_| {
        if f.load(Ordering::SeqCst) {
            (500, "nope")
        } else {
            (200, "ok")
        }
    }))
    .await;
    let created = h.create(&rx.url, &["account_live"]).await;
    let (secret, id) = (created.secret, created.endpoint.unwrap().id);
    h.converse(&TURNS[..1]).await;
    let live: Vec<pb::SalesEvent> = h
        .outbox(1)
        .await
        .into_iter()
        .filter(|e| e.kind == "account_live")
        .collect();
    assert_eq!(live.len(), 1, "{live:?}");
    let webhook_id = format!("evt_{}", live[0].cursor);

    let dead_letters = || async {
        h.hooks()
            .list_dead_letters(keyed(
                pb::ListDeadLettersRequest {
                    tenant: "applinks".into(),
                    endpoint_id: id.clone(),
                },
                &h.admin,
            ))
            .await
            .unwrap()
            .into_inner()
            .dead_letters
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let l = dead_letters().await;
        if !l.is_empty() {
            break l;
        }
        assert!(Instant::now() < deadline, "no dead letter: {:#?}", rx.got());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(letters.len(), 1, "{letters:?}");
    let d = &letters[0];
    assert_eq!(d.webhook_id, webhook_id);
    assert_eq!((d.attempts, d.last_status), (10, Some(500)));
    assert_eq!(d.last_response, "nope");
    assert_eq!(d.kind, "account_live");
    let tries = rx.got();
    assert_eq!(tries.len(), 10, "ten attempts, all with one id: {tries:#?}");
    assert!(tries.iter().all(|r| r.id == webhook_id));
    assert_eq!(h.server.state.metrics.webhooks.count(Outcome::Dead), 1);

    // Replay: the same id again, now delivered; the dead letter is gone.
    failing.store(false, Ordering::SeqCst);
    let (hr, idr) = (&h, &id);
    let replay = move |which| async move {
        hr.hooks()
            .replay(keyed(
                pb::ReplayWebhooksRequest {
                    tenant: "applinks".into(),
                    id: idr.clone(),
                    which: Some(which),
                },
                &hr.admin,
            ))
            .await
    };
    let queued = replay(pb::replay_webhooks_request::Which::DeadLetters(true))
        .await
        .unwrap()
        .into_inner()
        .queued;
    assert_eq!(queued, 1);
    let got = rx
        .until("the replayed delivery", |g| {
            g.iter().any(|r| r.status == 200)
        })
        .await;
    let ok = got.iter().find(|r| r.status == 200).unwrap();
    assert_eq!(ok.id, webhook_id);
    assert!(python_verifies(&secret, ok, &ok.body));
    assert!(dead_letters().await.is_empty());

    // A cursor range sends a delivered event again, with its id.
    let n = rx.got().len();
    let range = pb::CursorRange {
        from_cursor: live[0].cursor,
        to_cursor: live[0].cursor,
    };
    let queued = replay(pb::replay_webhooks_request::Which::Range(range))
        .await
        .unwrap()
        .into_inner()
        .queued;
    assert_eq!(queued, 1);
    let got = rx.until("the range replayed", |g| g.len() > n).await;
    assert_eq!(got[n].id, webhook_id);
    // A request naming neither is refused, naming the field.
    let e = h
        .hooks()
        .replay(keyed(
            pb::ReplayWebhooksRequest {
                tenant: "applinks".into(),
                id: id.clone(),
                which: None,
            },
            &h.admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("which:"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_refuses_plain_http_and_internal_addresses_naming_url() {
    // Without --webhooks-allow-loopback (and without keys: a loopback server).
    let ts = spawn(fake_models(Arc::new(ScriptedGenerator::echo_facts()))).await;
    let mut hooks = pb::webhooks_client::WebhooksClient::connect(ts.url.clone())
        .await
        .unwrap();
    let create = |url: &str, kinds: Vec<String>| pb::CreateWebhookRequest {
        tenant: "applinks".into(),
        url: url.into(),
        kinds,
        description: String::new(),
    };
    for url in [
        "http://example.com/hook",
        "http://127.0.0.1:8080/hook",
        "https://10.0.0.1/",
        "https://169.254.169.254/",
        "https://[::1]/",
        "https://192.168.0.10/",
        "https://[fd12::1]/",
    ] {
        let e = hooks.create(create(url, vec![])).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{url}: {e:?}");
        assert!(e.message().starts_with("url: "), "{url}: {}", e.message());
    }
    let e = hooks
        .create(create("https://93.184.216.34/", vec!["nope".into()]))
        .await
        .unwrap_err();
    assert!(e.message().starts_with("kinds[0]: "), "{}", e.message());
    // A public address is accepted (nothing is sent at Create).
    let ok = hooks
        .create(create(
            "https://93.184.216.34/hook",
            vec!["cql_scored".into()],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.secret.starts_with("whsec_"));
}

/// Runs only as the child of `a_delivery_cut_by_kill_9_is_sent_again_after_restart`: a server
/// with loopback webhooks on the given data folder, until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the webhook kill -9 test"]
async fn child_serve_webhooks_until_killed() {
    let Ok(dir) = std::env::var("CLOSER_WEBHOOK_KILL_DATA") else {
        return;
    };
    let server = serve_ready(kill_test_config(PathBuf::from(dir)), echo_models()).await;
    println!("serving {}", server.addr);
    tokio::time::sleep(Duration::from_secs(600)).await;
}

fn kill_test_config(dir: PathBuf) -> ServeConfig {
    let mut cfg = ServeConfig::for_tests(dir, ModelPaths::default_root());
    cfg.webhooks_allow_loopback = true;
    cfg.webhooks_retry_scale = 0.001;
    // The delivery cut by the kill is due again once its attempt's hold (timeout + 1 s) ends.
    cfg.webhooks_timeout_secs = 2;
    cfg
}

fn echo_models() -> Models {
    fake_models(Arc::new(ScriptedGenerator::echo_facts()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_cut_by_kill_9_is_sent_again_after_restart() {
    let data = demo_data();
    // The first request is never answered: the server dies while it is in flight.
    let rx = Receiver::start(Box::new(|_| {
        static FIRST: AtomicBool = AtomicBool::new(true);
        if FIRST.swap(false, Ordering::SeqCst) {
            (0, "")
        } else {
            (200, "ok")
        }
    }))
    .await;
    let (mut child, url) = spawn_child_server(
        "webhooks::child_serve_webhooks_until_killed",
        &[("CLOSER_WEBHOOK_KILL_DATA", data.path().as_os_str())],
    );
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let secret = pb::webhooks_client::WebhooksClient::new(channel.clone())
        .create(pb::CreateWebhookRequest {
            tenant: "applinks".into(),
            url: rx.url.clone(),
            kinds: vec!["account_live".into()],
            description: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let start = start_with_id("applinks", Some("acme.com"), "");
    let Some(pb::converse_request::Event::Start(start)) = start.event else {
        unreachable!()
    };
    let mut s = pb::assistant_client::AssistantClient::new(channel)
        .send(pb::SendRequest {
            start: Some(start),
            event: Some(pb::send_request::Event::Message(pb::VisitorMessage {
                text: TURNS[0].into(),
            })),
        })
        .await
        .unwrap()
        .into_inner();
    while s.message().await.unwrap().is_some() {}

    // The attempt is in flight (recorded, unanswered): kill -9.
    let first = rx.until("the first attempt", |g| !g.is_empty()).await;
    child.kill().unwrap();
    child.wait().unwrap();

    // Restarted on the same folder, the worker sends it again with the same webhook id.
    let _server = serve_ready(kill_test_config(data.path().to_path_buf()), echo_models()).await;
    let got = rx
        .until("the delivery after the restart", |g| {
            g.iter().any(|r| r.status == 200)
        })
        .await;
    let again = got.iter().find(|r| r.status == 200).unwrap();
    assert_eq!(again.id, first[0].id);
    assert_eq!(again.body, first[0].body);
    assert!(python_verifies(&secret, again, &again.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_consumers_shows_each_subscriber_and_endpoint_with_its_lag_and_last_error() {
    // Retries scaled to minutes: a failing delivery stays pending while we look.
    let h = hooked(1.0).await;
    let down = Receiver::start(Box::new(|_| (503, "maintenance"))).await;
    let id = h
        .create(&down.url, &["cql_scored"])
        .await
        .endpoint
        .unwrap()
        .id;
    h.converse(&TURNS[..1]).await;
    let outbox = h.outbox(1).await;
    let last = outbox.last().unwrap().cursor;
    // A CRM consumer has processed the first event only.
    let mut events = pb::events_client::EventsClient::new(h.channel.clone());
    events
        .ack(keyed(
            pb::AckRequest {
                tenant: "applinks".into(),
                consumer: "crm".into(),
                cursor: outbox[0].cursor,
            },
            &h.admin,
        ))
        .await
        .unwrap();
    down.until("one failed attempt", |g| !g.is_empty()).await;
    let list = |key: String| {
        let mut events = events.clone();
        async move {
            events
                .list_consumers(keyed(
                    pb::ListConsumersRequest {
                        tenant: "applinks".into(),
                    },
                    &key,
                ))
                .await
        }
    };
    // The failure is recorded after the answer: look until it shows.
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = list(h.admin.clone()).await.unwrap().into_inner();
        let hook = got.consumers.iter().find(|c| c.kind == "webhook").unwrap();
        if hook.last_error.is_some() {
            break got;
        }
        assert!(Instant::now() < deadline, "no last error: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(got.last_cursor >= last);
    let crm = got.consumers.iter().find(|c| c.name == "crm").unwrap();
    assert_eq!(crm.kind, "subscriber");
    assert_eq!(crm.cursor, outbox[0].cursor);
    assert_eq!(
        crm.lag,
        outbox.len() as u64 - 1,
        "every event after its cursor"
    );
    let hook = got.consumers.iter().find(|c| c.kind == "webhook").unwrap();
    assert_eq!(hook.name, id);
    assert_eq!(hook.url.as_deref(), Some(down.url.as_str()));
    let scored = outbox.iter().filter(|e| e.kind == "cql_scored").count() as u64;
    assert_eq!(hook.pending, scored, "each scored event waits for a retry");
    assert!(hook.lag >= scored);
    assert_eq!(hook.dead, 0);
    assert_eq!(hook.last_error.as_deref(), Some("HTTP 503: maintenance"));
    // Consumers' state is an admin's: a rep key is refused.
    let e = list(h.rep.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_deliveries_with_a_tenth_failing_survive_kill_9_with_none_lost() {
    const N: u64 = 1000;
    const CONVERSATIONS: u64 = 100;
    let data = demo_data();
    // A tenth of the events fail their first attempt (503); every retry succeeds.
    let failed_once: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let f = failed_once.clone();
    let rx = Receiver::start(Box::new(move |r| {
        let cursor: u64 = r.id.trim_start_matches("evt_").parse().unwrap_or(0);
        if cursor % 10 == 3 && f.lock().unwrap().insert(r.id.clone()) {
            (503, "busy")
        } else {
            (200, "ok")
        }
    }))
    .await;
    let (mut child, url) = spawn_child_server(
        "webhooks::child_serve_webhooks_until_killed",
        &[("CLOSER_WEBHOOK_KILL_DATA", data.path().as_os_str())],
    );
    pb::webhooks_client::WebhooksClient::connect(url)
        .await
        .unwrap()
        .create(pb::CreateWebhookRequest {
            tenant: "applinks".into(),
            url: rx.url.clone(),
            kinds: vec!["cql_scored".into()],
            description: String::new(),
        })
        .await
        .unwrap();
    // 1,000 events of 100 conversations, written to the outbox at once (as a burst of turns).
    let store = data_store(data.path());
    let events: Vec<closer_store::NewEvent> = (0..N)
        .map(|i| closer_store::NewEvent {
            kind: "cql_scored".into(),
            tenant: "applinks".into(),
            conversation_id: Some(format!("bench-{}", i % CONVERSATIONS)),
            rep_id: None,
            team: None,
            payload: serde_json::json!({"score": 3, "n": i}),
        })
        .collect();
    let t0 = Instant::now();
    let stored = store.append_events(&events).unwrap();
    let ids: BTreeSet<String> = stored.iter().map(|e| format!("evt_{}", e.cursor)).collect();
    let delivered = |got: &[Received]| -> BTreeSet<String> {
        got.iter()
            .filter(|r| r.status == 200)
            .map(|r| r.id.clone())
            .collect()
    };
    let wait_for = |n: usize, limit: Duration| {
        let rx = &rx;
        async move {
            loop {
                let got = rx.got();
                if delivered(&got).len() >= n {
                    return got;
                }
                assert!(
                    t0.elapsed() < limit,
                    "{} of {n} delivered",
                    delivered(&got).len()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // Killed with about a third delivered.
    let before = wait_for(300, Duration::from_secs(120)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let killed_at = t0.elapsed();
    let before = delivered(&before).len();
    let _server = serve_ready(kill_test_config(data.path().to_path_buf()), echo_models()).await;
    let restarted = t0.elapsed();
    let got = wait_for(N as usize, Duration::from_secs(180)).await;
    let all_at = t0.elapsed();
    // None lost: every event delivered (none was dead-lettered: every retry succeeds).
    assert_eq!(delivered(&got), ids);
    // Sent again only what was in flight at the kill (at most one attempt per slot).
    let mut oks: BTreeMap<&str, usize> = BTreeMap::new();
    for r in got.iter().filter(|r| r.status == 200) {
        *oks.entry(r.id.as_str()).or_default() += 1;
    }
    let twice = oks.values().filter(|n| **n > 1).count();
    assert!(twice <= 8, "{twice} events delivered twice");
    // Each conversation's events delivered in cursor order.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut firsts = got.clone();
    firsts.sort_by_key(|r| r.at);
    let mut seen = BTreeSet::new();
    for r in firsts.iter().filter(|r| r.status == 200) {
        if !seen.insert(r.id.clone()) {
            continue;
        }
        let cursor: u64 = r.id.trim_start_matches("evt_").parse().unwrap();
        let conv = r.conversation().unwrap();
        let prev = last.insert(conv.clone(), cursor).unwrap_or(0);
        assert!(
            cursor > prev,
            "{conv}: event {cursor} delivered after {prev}"
        );
    }
    let failures = failed_once.lock().unwrap().len();
    eprintln!(
        "{N} deliveries, {failures} first attempts answered 503, kill -9 after {before} delivered ({killed_at:.1?}), \
         restarted at {restarted:.1?}, all delivered at {all_at:.1?}: {:.0} deliveries/s before the kill, \
         {:.0} after the restart; {twice} delivered twice (in flight at the kill)",
        before as f64 / killed_at.as_secs_f64(),
        (N as usize - before) as f64 / (all_at - restarted).as_secs_f64(),
    );
}
