//! The HubSpot connector against a strict local fake of HubSpot's API on loopback: the fake
//! checks the bearer token (401), request shapes (unknown fields, a missing `idProperty`, batch
//! sizes: 400), unknown properties (`PROPERTY_DOESNT_EXIST`), upserts by a property without
//! unique values (refused), its own rate limit (429 with `policyName`), and injects faults:
//! 5xx, answers that never come, and answers dropped after the write was applied. Its state
//! lets the tests count contacts per e-mail, companies per domain and notes per conversation.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use closer_store::{Store, WebhookStore};
use serde_json::{json, Value};

use super::crm::{
    channel, consumer, decode, demo, drained, models, set_score, take, transcript, FakeServer,
    Reply, Request,
};
use super::*;

const TOKEN: &str = "pat-na1-test-token";
const CONNECTOR: &str = "hubspot-applinks";
/// The owner ids the fake gives the demo tenant's reps.
const OWNERS: [(&str, &str); 3] = [
    ("9001", "chelsea.ward@applinks.example"),
    ("9002", "daniel.okafor@applinks.example"),
    ("9003", "priya.raman@applinks.example"),
];

/// Faults the fake injects, each a count that runs down.
#[derive(Default)]
pub(crate) struct Faults {
    /// Answer 503 without applying.
    pub(crate) fail_5xx: AtomicU32,
    /// Hold the connection without answering and without applying.
    pub(crate) hang: AtomicU32,
    /// Apply contact upserts, then hold the connection without answering.
    pub(crate) hang_after_commit: AtomicU32,
    /// Apply every other write, then close the connection without an answer.
    pub(crate) drop_after_commit: AtomicU32,
    /// Answer 429 TEN_SECONDLY_ROLLING without applying.
    pub(crate) rolling_429: AtomicU32,
    /// Answer 429 DAILY without applying.
    pub(crate) daily_429: AtomicU32,
}

#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) id: String,
    pub(crate) props: BTreeMap<String, String>,
}

#[derive(Default)]
struct State {
    groups: HashSet<(String, String)>,
    /// object type → property → unique values
    props: HashMap<String, HashMap<String, bool>>,
    objects: HashMap<String, Vec<Record>>,
    assoc: HashSet<(String, String, String, String)>,
    next_id: u64,
    writes: u64,
    window: VecDeque<Instant>,
}

pub(crate) struct FakeHubSpot {
    pub(crate) url: String,
    server: FakeServer,
    state: Arc<Mutex<State>>,
    pub(crate) faults: Arc<Faults>,
    /// Its own rate limit: (requests, per window); none = unlimited.
    limit: Arc<Mutex<Option<(usize, Duration)>>>,
}

fn error(status: u16, category: &str, message: &str) -> Reply {
    Reply::Answer(
        status,
        json!({"status": "error", "message": message, "category": category,
               "correlationId": "00000000-0000-0000-0000-000000000000"}),
    )
}

impl FakeHubSpot {
    pub(crate) async fn start() -> Self {
        let mut st = State::default();
        for (object, names) in [
            (
                "contacts",
                &["email", "firstname", "lastname", "hubspot_owner_id"][..],
            ),
            ("companies", &["domain", "name", "hubspot_owner_id"][..]),
            (
                "notes",
                &["hs_note_body", "hs_timestamp", "hubspot_owner_id"][..],
            ),
        ] {
            st.props.insert(
                object.into(),
                names
                    .iter()
                    .map(|n| (n.to_string(), *n == "email"))
                    .collect(),
            );
            st.objects.insert(object.into(), vec![]);
        }
        st.groups
            .insert(("contacts".into(), "contactinformation".into()));
        st.groups
            .insert(("companies".into(), "companyinformation".into()));
        let (state, faults, limit): (Arc<Mutex<State>>, Arc<Faults>, Arc<Mutex<_>>) =
            (Arc::new(Mutex::new(st)), Arc::default(), Arc::default());
        let server = {
            let (state, faults, limit) = (state.clone(), faults.clone(), limit.clone());
            FakeServer::start(Arc::new(move |req: &Request| {
                handle(&state, &faults, &limit, req)
            }))
            .await
        };
        FakeHubSpot {
            url: server.url.clone(),
            server,
            state,
            faults,
            limit,
        }
    }

    /// Removes a property, as a HubSpot admin can.
    pub(crate) fn delete_property(&self, object: &str, name: &str) {
        let mut st = self.state.lock().unwrap();
        st.props.get_mut(object).unwrap().remove(name);
        for r in st.objects.get_mut(object).unwrap() {
            r.props.remove(name);
        }
    }

    pub(crate) fn set_limit(&self, max: usize, per: Duration) {
        *self.limit.lock().unwrap() = Some((max, per));
    }

    pub(crate) fn records(&self, object: &str) -> Vec<Record> {
        self.state.lock().unwrap().objects[object].clone()
    }

    /// Records of `object` whose `prop` is `value`.
    pub(crate) fn by(&self, object: &str, prop: &str, value: &str) -> Vec<Record> {
        self.records(object)
            .into_iter()
            .filter(|r| r.props.get(prop).map(String::as_str) == Some(value))
            .collect()
    }

    pub(crate) fn associated(&self, from: &str, fid: &str, to: &str, tid: &str) -> bool {
        self.state
            .lock()
            .unwrap()
            .assoc
            .contains(&(from.into(), fid.into(), to.into(), tid.into()))
    }

    /// Requests answered with `status` (0: none).
    pub(crate) fn answered(&self, status: u16) -> usize {
        self.server.answered(status)
    }

    pub(crate) fn requests(&self) -> usize {
        self.server.requests()
    }

    /// Waits (20 s at most) until `done` holds; how long it took.
    pub(crate) async fn until(&self, what: &str, done: impl Fn(&FakeHubSpot) -> bool) -> Duration {
        super::crm::until(
            what,
            || done(self),
            || {
                format!(
                    "contacts {:#?} companies {:#?} notes {:#?} log {:?}",
                    self.records("contacts"),
                    self.records("companies"),
                    self.records("notes").len(),
                    self.server.log()
                )
            },
        )
        .await
    }
}

/// Fields a JSON object may have and must have; 400 naming the first offender.
fn shape(v: &Value, allowed: &[&str], required: &[&str], what: &str) -> Result<(), Reply> {
    let Some(o) = v.as_object() else {
        return Err(error(
            400,
            "VALIDATION_ERROR",
            &format!("{what}: a JSON object is expected"),
        ));
    };
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(error(
            400,
            "VALIDATION_ERROR",
            &format!("Invalid input JSON on line 1: Unrecognized field \"{k}\" in {what}"),
        ));
    }
    if let Some(k) = required.iter().find(|k| !o.contains_key(**k)) {
        return Err(error(
            400,
            "VALIDATION_ERROR",
            &format!("{what}: {k} is required"),
        ));
    }
    Ok(())
}

fn handle(
    state: &Mutex<State>,
    faults: &Faults,
    limit: &Mutex<Option<(usize, Duration)>>,
    req: &Request,
) -> Reply {
    if req.header("authorization") != format!("Bearer {TOKEN}") {
        return error(
            401,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found. This API supports OAuth 2.0 authentication.",
        );
    }
    if let Some((max, per)) = *limit.lock().unwrap() {
        let mut st = state.lock().unwrap();
        let now = Instant::now();
        while st
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= per)
        {
            st.window.pop_front();
        }
        if st.window.len() >= max {
            return rolling();
        }
        st.window.push_back(now);
    }
    if take(&faults.rolling_429) {
        return rolling();
    }
    if take(&faults.daily_429) {
        return Reply::Answer(
            429,
            json!({"status": "error", "message": "You have reached your daily limit.",
                   "errorType": "RATE_LIMIT", "policyName": "DAILY",
                   "correlationId": "00000000-0000-0000-0000-000000000000"}),
        );
    }
    if take(&faults.fail_5xx) {
        return error(503, "SERVICE_UNAVAILABLE", "try again");
    }
    if take(&faults.hang) {
        return Reply::Hang;
    }
    let body: Value = if req.body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => return error(400, "VALIDATION_ERROR", &format!("Invalid input JSON: {e}")),
        }
    };
    let parts: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let mut st = state.lock().unwrap();
    let reply = match (req.method.as_str(), parts.as_slice()) {
        ("POST", ["crm", "v3", "properties", object, "groups"]) => {
            create_group(&mut st, object, &body)
        }
        ("POST", ["crm", "v3", "properties", object]) => create_property(&mut st, object, &body),
        ("GET", ["crm", "v3", "owners"]) => {
            let email = req
                .query
                .split('&')
                .find_map(|kv| kv.strip_prefix("email="))
                .map(decode);
            let results: Vec<Value> = OWNERS
                .iter()
                .filter(|(_, e)| email.as_deref().is_none_or(|x| x == *e))
                .map(|(id, e)| json!({"id": id, "email": e, "type": "PERSON", "userId": 1}))
                .collect();
            return Reply::Answer(200, json!({"results": results}));
        }
        ("POST", ["crm", "v3", "objects", object, "batch", "upsert"]) => {
            let hang = *object == "contacts" && take(&faults.hang_after_commit);
            let r = upsert(&mut st, object, &body);
            if hang && matches!(r, Reply::Answer(200, _)) {
                return Reply::Hang;
            }
            r
        }
        ("PUT", ["crm", "v4", "objects", from, fid, "associations", "default", to, tid]) => {
            associate(&mut st, from, fid, to, tid, &body)
        }
        _ => error(
            404,
            "OBJECT_NOT_FOUND",
            &format!("no route {} {}", req.method, req.path),
        ),
    };
    // A write applied; every other one loses its answer while the fault lasts.
    if req.method != "GET" && matches!(reply, Reply::Answer(200 | 201, _)) {
        st.writes += 1;
        if st.writes.is_multiple_of(2) && take(&faults.drop_after_commit) {
            return Reply::Drop;
        }
    }
    reply
}

fn rolling() -> Reply {
    Reply::Answer(
        429,
        json!({"status": "error", "message": "You have reached your ten_secondly_rolling limit.",
               "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING",
               "correlationId": "00000000-0000-0000-0000-000000000000"}),
    )
}

fn known_object(object: &str) -> Result<(), Reply> {
    if ["contacts", "companies", "notes"].contains(&object) {
        Ok(())
    } else {
        Err(error(
            400,
            "VALIDATION_ERROR",
            &format!("Unable to infer object type from: {object}"),
        ))
    }
}

fn create_group(st: &mut State, object: &str, body: &Value) -> Reply {
    if let Err(r) = known_object(object).and_then(|_| {
        shape(
            body,
            &["name", "label", "displayOrder"],
            &["name", "label"],
            "PropertyGroupCreate",
        )
    }) {
        return r;
    }
    let name = body["name"].as_str().unwrap_or_default().to_string();
    if !st.groups.insert((object.into(), name.clone())) {
        return error(
            409,
            "OBJECT_ALREADY_EXISTS",
            &format!("Group named '{name}' already exists."),
        );
    }
    Reply::Answer(
        201,
        json!({"name": name, "label": body["label"], "displayOrder": body["displayOrder"]}),
    )
}

fn create_property(st: &mut State, object: &str, body: &Value) -> Reply {
    let allowed = [
        "name",
        "label",
        "type",
        "fieldType",
        "groupName",
        "hasUniqueValue",
        "description",
        "displayOrder",
        "formField",
        "hidden",
        "options",
    ];
    if let Err(r) = known_object(object).and_then(|_| {
        shape(
            body,
            &allowed,
            &["name", "label", "type", "fieldType", "groupName"],
            "PropertyCreate",
        )
    }) {
        return r;
    }
    let group = body["groupName"].as_str().unwrap_or_default();
    if !st.groups.contains(&(object.to_string(), group.to_string())) {
        return error(
            400,
            "VALIDATION_ERROR",
            &format!("group {group} does not exist"),
        );
    }
    let name = body["name"].as_str().unwrap_or_default().to_string();
    let props = st.props.get_mut(object).unwrap();
    if props.contains_key(&name) {
        return error(
            409,
            "OBJECT_ALREADY_EXISTS",
            &format!("Property named '{name}' already exists."),
        );
    }
    props.insert(
        name.clone(),
        body["hasUniqueValue"].as_bool().unwrap_or(false),
    );
    Reply::Answer(201, body.clone())
}

fn upsert(st: &mut State, object: &str, body: &Value) -> Reply {
    if let Err(r) = known_object(object).and_then(|_| {
        shape(
            body,
            &["inputs"],
            &["inputs"],
            "BatchInputSimplePublicObjectBatchInputUpsert",
        )
    }) {
        return r;
    }
    let Some(inputs) = body["inputs"].as_array() else {
        return error(400, "VALIDATION_ERROR", "inputs: an array is expected");
    };
    if inputs.is_empty() || inputs.len() > 100 {
        return error(
            400,
            "VALIDATION_ERROR",
            &format!("inputs: 1 to 100 inputs, got {}", inputs.len()),
        );
    }
    for i in inputs {
        if let Err(r) = shape(
            i,
            &["id", "idProperty", "properties", "objectWriteTraceId"],
            &["id", "idProperty", "properties"],
            "SimplePublicObjectBatchInputUpsert",
        ) {
            return r;
        }
        let idp = i["idProperty"].as_str().unwrap_or_default();
        match st.props[object].get(idp) {
            None => return property_missing(object, idp),
            Some(false) => {
                return error(
                    400,
                    "VALIDATION_ERROR",
                    &format!(
                        "{idp} is not a unique identifier property of {object}; upsert needs one"
                    ),
                )
            }
            Some(true) => {}
        }
        let Some(props) = i["properties"].as_object() else {
            return error(400, "VALIDATION_ERROR", "properties: an object is expected");
        };
        for (k, v) in props {
            if !st.props[object].contains_key(k) {
                return property_missing(object, k);
            }
            if !v.is_string() {
                return error(
                    400,
                    "VALIDATION_ERROR",
                    &format!("{k}: a string value is expected"),
                );
            }
        }
    }
    let mut results = vec![];
    for i in inputs {
        let idp = i["idProperty"].as_str().unwrap().to_string();
        let id = i["id"].as_str().unwrap_or_default().to_string();
        let found = st.objects[object].iter().position(|r| {
            r.props
                .get(&idp)
                .is_some_and(|v| v.eq_ignore_ascii_case(&id))
        });
        let new = found.is_none();
        let idx = match found {
            Some(x) => x,
            None => {
                st.next_id += 1;
                let rid = (1000 + st.next_id).to_string();
                let list = st.objects.get_mut(object).unwrap();
                list.push(Record {
                    id: rid,
                    props: BTreeMap::new(),
                });
                list.len() - 1
            }
        };
        let rec = &mut st.objects.get_mut(object).unwrap()[idx];
        for (k, v) in i["properties"].as_object().unwrap() {
            rec.props.insert(k.clone(), v.as_str().unwrap().to_string());
        }
        rec.props.insert(idp, id);
        results.push(json!({"id": rec.id, "properties": rec.props, "new": new}));
    }
    Reply::Answer(200, json!({"status": "COMPLETE", "results": results}))
}

fn property_missing(object: &str, name: &str) -> Reply {
    Reply::Answer(
        400,
        json!({"status": "error", "category": "VALIDATION_ERROR",
               "message": format!("Property values were not valid: Property \"{name}\" does not exist"),
               "errors": [{"message": format!("Property \"{name}\" does not exist"),
                           "code": "PROPERTY_DOESNT_EXIST",
                           "context": {"propertyName": [name], "objectType": [object]}}]}),
    )
}

fn associate(st: &mut State, from: &str, fid: &str, to: &str, tid: &str, body: &Value) -> Reply {
    if !body.is_null() {
        return error(
            400,
            "VALIDATION_ERROR",
            "the default association takes no body",
        );
    }
    let plural = |t: &str| match t {
        "contact" | "contacts" => Some("contacts"),
        "company" | "companies" => Some("companies"),
        "note" | "notes" => Some("notes"),
        _ => None,
    };
    let (Some(f), Some(t)) = (plural(from), plural(to)) else {
        return error(400, "VALIDATION_ERROR", "unknown object type");
    };
    let exists = |o: &str, id: &str| st.objects[o].iter().any(|r| r.id == id);
    if !exists(f, fid) || !exists(t, tid) {
        return error(404, "OBJECT_NOT_FOUND", "no such record");
    }
    st.assoc
        .insert((f.into(), fid.into(), t.into(), tid.into()));
    Reply::Answer(
        200,
        json!({"status": "COMPLETE", "results": [{"from": {"id": fid}, "to": {"id": tid}}]}),
    )
}

// ---------------------------------------------------------------------------------------------
// The server with the connector.

/// Writes the token and the connectors file into `dir`; the file's path.
fn connectors_file(dir: &Path, fake: &str, token: &str, attempt_secs: u64) -> PathBuf {
    let token_file = dir.join("hubspot-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let cfg = json!({"hubspot": [{
        "tenant": "applinks",
        "token_file": token_file,
        "base_url": fake,
        "requests_per_10s": 190,
        "request_timeout_secs": 2,
        "attempt_timeout_secs": attempt_secs,
    }]});
    let path = dir.join("connectors.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

/// A server with the HubSpot connector to `fake`; an attempt may take 3 s (the kill -9 test
/// waits that long, plus a second, for the attempt cut by the kill).
fn synced_config(dir: &Path, fake: &str, token: &str, retry_scale: f64) -> ServeConfig {
    synced_config_with(dir, fake, token, retry_scale, 3)
}

fn synced_config_with(
    dir: &Path,
    fake: &str,
    token: &str,
    retry_scale: f64,
    attempt_secs: u64,
) -> ServeConfig {
    let mut cfg = ServeConfig::for_tests(dir.to_path_buf(), ModelPaths::default_root());
    cfg.connectors = Some(connectors_file(dir, fake, token, attempt_secs));
    cfg.webhooks_retry_scale = retry_scale;
    cfg
}

/// Whether the fake holds the conversation in full: one contact with `score` and the owner,
/// one acme.com company associated to it, one note with every message of `texts`.
fn holds(f: &FakeHubSpot, email: &str, conv: &str, score: &str, texts: &[String]) -> bool {
    let contacts = f.by("contacts", "email", email);
    let companies = f.by("companies", "closer_domain", "acme.com");
    let notes = f.by("notes", "closer_conversation_id", conv);
    let [c] = contacts.as_slice() else {
        return false;
    };
    let [co] = companies.as_slice() else {
        return false;
    };
    let [n] = notes.as_slice() else { return false };
    let body = n.props["hs_note_body"]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    c.props.get("closer_cql").map(String::as_str) == Some(score)
        && c.props.get("hubspot_owner_id").map(String::as_str) == Some("9001")
        && c.props.get("closer_conversation_id").map(String::as_str) == Some(conv)
        && f.associated("contacts", &c.id, "companies", &co.id)
        && f.associated("notes", &n.id, "contacts", &c.id)
        && texts.iter().all(|t| body.contains(t.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_shows_the_demo_conversation_of_the_real_models_with_score_owner_and_transcript() {
    let fake = FakeHubSpot::start().await;
    let data = demo_data();
    let (_server, ch, id, texts) =
        super::crm::real_demo(synced_config(data.path(), &fake.url, TOKEN, 0.001)).await;
    let took = fake
        .until("the demo conversation", |f| {
            holds(f, "sam@acme.com", &id, "3", &texts)
        })
        .await;
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(drained(&ch, CONNECTOR).await.dead, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_shows_the_demo_conversation_within_5_s_with_score_owner_and_transcript() {
    let fake = FakeHubSpot::start().await;
    let data = demo_data();
    let server = serve_ready(
        synced_config(data.path(), &fake.url, TOKEN, 0.001),
        models(),
    )
    .await;
    let ch = channel(format!("http://{}", server.addr)).await;
    let id = demo(&ch, "sam@acme.com").await;
    let texts = transcript(&ch, &id).await;
    assert!(
        texts.len() >= 5,
        "two visitor turns, two replies, the rep: {texts:?}"
    );
    assert!(texts.iter().any(|t| t == SEED));
    let took = fake
        .until("the demo conversation", |f| {
            holds(f, "sam@acme.com", &id, "3", &texts)
        })
        .await;
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let c = &fake.by("contacts", "email", "sam@acme.com")[0];
    assert!(c.props["closer_cql_reasons"].contains("account"), "{c:?}");
    // The connector reads as a consumer of the outbox, caught up, nothing failed.
    let status = drained(&ch, CONNECTOR).await;
    assert_eq!(status.kind, "connector");
    assert_eq!(
        (status.dead, status.last_error.as_deref()),
        (0, None),
        "{status:?}"
    );
    assert!(
        status.url.as_deref().unwrap().contains(&fake.url),
        "{status:?}"
    );
    // Properties were made once; every write after them named existing properties.
    assert_eq!(fake.answered(400), 0);
    // The connector's row is not a webhook endpoint to manage.
    let hooks = pb::webhooks_client::WebhooksClient::new(ch.clone())
        .list(pb::ListWebhooksRequest {
            tenant: "applinks".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(hooks.endpoints.is_empty(), "{hooks:?}");
    // A later event of the conversation costs two calls: the contact and the note (the company
    // and both associations were made already).
    let before = fake.requests();
    set_score(&ch, &id, 2, "wants a pilot first").await;
    fake.until("the rep's score", |f| {
        holds(f, "sam@acme.com", &id, "2", &texts)
    })
    .await;
    drained(&ch, CONNECTOR).await;
    assert_eq!(fake.requests() - before, 2);
}

/// A connector whose `base_url` changed writes to the new address after a restart, with its
/// cursor kept, and `closer sync status` names the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_moved_base_url_is_followed_and_shown_after_a_restart() {
    let (old, new) = (FakeHubSpot::start().await, FakeHubSpot::start().await);
    let data = demo_data();
    let server = serve_ready(synced_config(data.path(), &old.url, TOKEN, 0.001), models()).await;
    let ch = channel(format!("http://{}", server.addr)).await;
    let first = demo(&ch, "sam@acme.com").await;
    let texts = transcript(&ch, &first).await;
    old.until("the first conversation", |f| {
        holds(f, "sam@acme.com", &first, "3", &texts)
    })
    .await;
    drained(&ch, CONNECTOR).await;
    server.shutdown(Duration::from_secs(5)).await.unwrap();
    let server = serve_ready(synced_config(data.path(), &new.url, TOKEN, 0.001), models()).await;
    let ch = channel(format!("http://{}", server.addr)).await;
    let status = consumer(&ch, CONNECTOR).await;
    let url = status.url.clone().unwrap();
    assert!(
        url.contains(&new.url) && !url.contains(&old.url),
        "{status:?}"
    );
    let second = demo(&ch, "kim@acme.com").await;
    let texts = transcript(&ch, &second).await;
    new.until("the second conversation", |f| {
        holds(f, "kim@acme.com", &second, "3", &texts)
    })
    .await;
    // The cursor was kept: the new address got only what came after the restart.
    assert!(new.by("contacts", "email", "sam@acme.com").is_empty());
    assert!(old.by("contacts", "email", "kim@acme.com").is_empty());
}

/// The whole outbox replayed (as `closer sync replay` does) leaves one record of each kind and
/// the latest score; a rep's later score arrives; `faults` are injected from the start.
async fn replay_duplicates_nothing(faults: impl Fn(&Faults)) -> FakeHubSpot {
    let fake = FakeHubSpot::start().await;
    faults(&fake.faults);
    let data = demo_data();
    let server = serve_ready(
        synced_config(data.path(), &fake.url, TOKEN, 0.0001),
        models(),
    )
    .await;
    let ch = channel(format!("http://{}", server.addr)).await;
    let (a, b) = (
        demo(&ch, "sam@acme.com").await,
        demo(&ch, "kim@acme.com").await,
    );
    let (ta, tb) = (transcript(&ch, &a).await, transcript(&ch, &b).await);
    fake.until("both conversations", |f| {
        holds(f, "sam@acme.com", &a, "3", &ta) && holds(f, "kim@acme.com", &b, "3", &tb)
    })
    .await;
    drained(&ch, CONNECTOR).await;

    let store = data_store(data.path());
    let replay = |store| super::crm::replay_all(store, CONNECTOR);
    let before = fake.requests();
    let queued = replay(store.clone()).await;
    assert!(queued >= 6, "the outbox from cursor 0: {queued}");
    fake.until("the replay's writes", |f| f.requests() > before + 10)
        .await;
    drained(&ch, CONNECTOR).await;
    let one = |f: &FakeHubSpot, score_a: &str| {
        f.records("contacts").len() == 2
            && f.records("companies").len() == 1
            && f.records("notes").len() == 2
            && holds(f, "sam@acme.com", &a, score_a, &ta)
            && holds(f, "kim@acme.com", &b, "3", &tb)
    };
    assert!(one(&fake, "3"));

    // A rep's score (disqualified) arrives, and a replay after it keeps it.
    set_score(&ch, &a, -1, "student project, no budget").await;
    fake.until("the rep's score", |f| one(f, "-1")).await;
    replay(store).await;
    drained(&ch, CONNECTOR).await;
    assert!(one(&fake, "-1"));
    let c = &fake.by("contacts", "email", "sam@acme.com")[0];
    assert!(
        c.props["closer_cql_reasons"].contains("student project"),
        "{c:?}"
    );
    let status = consumer(&ch, CONNECTOR).await;
    assert_eq!(status.dead, 0, "{status:?}");
    fake
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_replay_from_cursor_0_duplicates_nothing_and_keeps_the_latest_score() {
    replay_duplicates_nothing(|_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_replay_duplicates_nothing_when_answers_are_lost_after_the_write() {
    let fake = replay_duplicates_nothing(|f| {
        f.drop_after_commit.store(12, Ordering::SeqCst);
        f.fail_5xx.store(2, Ordering::SeqCst);
        f.hang.store(1, Ordering::SeqCst);
    })
    .await;
    // Every fault happened: 12 writes applied without an answer, one never answered, two 503s.
    assert_eq!(fake.faults.drop_after_commit.load(Ordering::SeqCst), 0);
    assert_eq!(fake.answered(0), 13);
    assert_eq!(fake.answered(503), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the HubSpot kill -9 test"]
async fn child_serve_hubspot_until_killed() {
    super::crm::serve_until_killed(|dir, fake| synced_config(dir, fake, TOKEN, 0.001)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_sync_cut_by_kill_9_completes_after_restart_without_duplicates() {
    let fake = FakeHubSpot::start().await;
    // The first contact write is applied, and its answer never comes: the server dies then.
    fake.faults.hang_after_commit.store(1, Ordering::SeqCst);
    let (mut child, data, [(a, ta), (b, tb)]) =
        super::crm::two_demos_on_a_child("hubspot::child_serve_hubspot_until_killed", &fake.url)
            .await;
    fake.until("the first contact write", |f| {
        !f.records("contacts").is_empty()
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(fake.records("notes").len() < 2, "killed mid-sync");

    let server = serve_ready(
        synced_config(data.path(), &fake.url, TOKEN, 0.001),
        models(),
    )
    .await;
    let ch = channel(format!("http://{}", server.addr)).await;
    fake.until("everything after the restart", |f| {
        holds(f, "sam@acme.com", &a, "3", &ta) && holds(f, "kim@acme.com", &b, "3", &tb)
    })
    .await;
    let status = drained(&ch, CONNECTOR).await;
    assert_eq!(
        (
            fake.records("contacts").len(),
            fake.records("companies").len(),
            fake.records("notes").len()
        ),
        (2, 1, 2)
    );
    assert_eq!(status.dead, 0, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_429_ten_secondly_is_waited_out_and_delivered() {
    let fake = FakeHubSpot::start().await;
    fake.faults.rolling_429.store(2, Ordering::SeqCst);
    // Tighter than the connector's budget of 190 per 10 s: the fake's own limit answers 429.
    fake.set_limit(10, Duration::from_secs(1));
    let data = demo_data();
    // Each rolling 429 costs a second's wait: the attempt has 20 s for them.
    let server = serve_ready(
        synced_config_with(data.path(), &fake.url, TOKEN, 1.0, 20),
        models(),
    )
    .await;
    let ch = channel(format!("http://{}", server.addr)).await;
    let id = demo(&ch, "sam@acme.com").await;
    let texts = transcript(&ch, &id).await;
    fake.until("the conversation despite 429s", |f| {
        holds(f, "sam@acme.com", &id, "3", &texts)
    })
    .await;
    assert!(
        fake.answered(429) >= 3,
        "the fault and the fake's own limit"
    );
    // The 429s were waited out inside the attempts: every event took one attempt.
    let status = drained(&ch, CONNECTOR).await;
    assert_eq!((status.dead, status.last_error), (0, None));
    let store = data_store(data.path());
    let attempts: Vec<u32> = (1..=store.last_cursor().unwrap())
        .filter_map(|c| store.delivery(CONNECTOR, c).unwrap())
        .map(|d| d.attempts)
        .collect();
    assert!(
        !attempts.is_empty() && attempts.iter().all(|a| *a == 1),
        "{attempts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_wrong_token_is_dead_lettered_and_shown_in_sync_status() {
    let fake = FakeHubSpot::start().await;
    let data = demo_data();
    let server = serve_ready(
        synced_config(data.path(), &fake.url, "pat-wrong", 0.00001),
        models(),
    )
    .await;
    let ch = channel(format!("http://{}", server.addr)).await;
    demo(&ch, "sam@acme.com").await;
    let start = Instant::now();
    let status = loop {
        let c = consumer(&ch, CONNECTOR).await;
        if c.dead > 0 && c.pending == 0 {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not dead-lettered: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = status.last_error.clone().unwrap_or_default();
    assert!(error.starts_with("HTTP 401"), "{status:?}");
    assert!(
        !error.contains("pat-wrong"),
        "the token never shows: {error}"
    );
    assert!(fake.records("contacts").is_empty());
    assert!(fake.answered(401) >= 10, "every attempt of the schedule");
    // The dead letters are listed with the last answer, like a webhook's.
    let store = data_store(data.path());
    let dead = store.dead_letters("applinks", Some(CONNECTOR)).unwrap();
    assert_eq!(dead.len() as u64, status.dead);
    assert!(dead.iter().all(|d| d.last_status == Some(401)), "{dead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_daily_429_pauses_the_account_and_shows_in_sync_status() {
    let fake = FakeHubSpot::start().await;
    fake.faults.daily_429.store(1, Ordering::SeqCst);
    let data = demo_data();
    let server = serve_ready(
        synced_config(data.path(), &fake.url, TOKEN, 0.001),
        models(),
    )
    .await;
    let ch = channel(format!("http://{}", server.addr)).await;
    demo(&ch, "sam@acme.com").await;
    let start = Instant::now();
    let status = loop {
        let c = consumer(&ch, CONNECTOR).await;
        if c.last_error.is_some() {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no error shown: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("HTTP 429"),
        "{status:?}"
    );
    assert!(
        status.last_error.as_deref().unwrap().contains("DAILY"),
        "{status:?}"
    );
    // Paused until midnight: even with the retry schedule scaled down, nothing more is sent,
    // and the events wait (pending), neither written nor dead-lettered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fake.requests(), 1, "paused after the DAILY answer");
    let status = consumer(&ch, CONNECTOR).await;
    assert!(status.pending > 0 && status.dead == 0, "{status:?}");
    assert!(fake.records("contacts").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_property_removed_in_hubspot_is_made_again() {
    let fake = FakeHubSpot::start().await;
    let data = demo_data();
    let server = serve_ready(
        synced_config(data.path(), &fake.url, TOKEN, 0.001),
        models(),
    )
    .await;
    let ch = channel(format!("http://{}", server.addr)).await;
    let id = demo(&ch, "sam@acme.com").await;
    let texts = transcript(&ch, &id).await;
    fake.until("the demo conversation", |f| {
        holds(f, "sam@acme.com", &id, "3", &texts)
    })
    .await;
    // An admin removes the score property; the rep's score fails once with
    // PROPERTY_DOESNT_EXIST, and the next attempt makes it again and writes the score.
    fake.delete_property("contacts", "closer_cql");
    set_score(&ch, &id, 2, "call booked").await;
    fake.until("the score after the property is made again", |f| {
        holds(f, "sam@acme.com", &id, "2", &texts)
    })
    .await;
    assert!(
        fake.answered(400) >= 1,
        "the write naming the removed property was refused"
    );
    let status = drained(&ch, CONNECTOR).await;
    assert_eq!(status.dead, 0, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_two_replicas_on_postgresql_write_each_event_once() {
    let Some(database_url) = super::replicas::fresh_database() else {
        return;
    };
    let fake = FakeHubSpot::start().await;
    let data = demo_data();
    let replica = || {
        let mut cfg = synced_config(data.path(), &fake.url, TOKEN, 0.001);
        cfg.database_url = Some(database_url.clone());
        serve_ready(cfg, models())
    };
    let (a, b) = (replica().await, replica().await);
    let (cha, chb) = (
        channel(format!("http://{}", a.addr)).await,
        channel(format!("http://{}", b.addr)).await,
    );
    let mut convs = vec![];
    // (Addresses the fake encoder does not read as a competitor's.)
    for (i, who) in ["sam", "kim", "visitor0", "visitor1"].iter().enumerate() {
        let ch = if i % 2 == 0 { &cha } else { &chb };
        let email = format!("{who}@acme.com");
        let id = demo(ch, &email).await;
        convs.push((email, id.clone(), transcript(ch, &id).await));
    }
    fake.until("every conversation from both replicas", |f| {
        convs.iter().all(|(e, id, t)| holds(f, e, id, "3", t))
    })
    .await;
    drained(&cha, CONNECTOR).await;
    assert_eq!(
        (
            fake.records("contacts").len(),
            fake.records("companies").len(),
            fake.records("notes").len()
        ),
        (4, 1, 4)
    );
    // One replica claimed each event: every delivery took one attempt.
    let store = closer_store::postgres::PgStore::connect(&database_url).unwrap();
    let attempts: Vec<u32> = (1..=store.last_cursor().unwrap())
        .filter_map(|c| store.delivery(CONNECTOR, c).unwrap())
        .map(|d| d.attempts)
        .collect();
    assert!(
        attempts.len() >= 8 && attempts.iter().all(|a| *a == 1),
        "{attempts:?}"
    );
}
