//! The Salesforce connector against a strict local fake of Salesforce's REST API on loopback
//! (`crm.rs` serves it): the fake issues tokens only to the client-credentials grant with the
//! right consumer key and secret, checks the bearer on every data call (401
//! `INVALID_SESSION_ID`, also for a token it expired on demand), the composite request's shape
//! (`allOrNone`, 1 to 25 subrequests, unique `referenceId`s, `@{ref.id}` references), unknown
//! fields (400 `INVALID_FIELD`), a `Description` over 32,000 characters (400
//! `STRING_TOO_LONG`), rolls the whole composite back when one subrequest fails, answers 300 to
//! an upsert whose key matches several Leads and `CANNOT_UPDATE_CONVERTED_LEAD` to a converted
//! one, sends `Sforce-Limit-Info` on every data answer, and injects faults: 503s, answers
//! dropped after the writes committed, and a write applied whose answer never comes (the server
//! is killed then). Its state lets the tests count Leads per e-mail and
//! Tasks per conversation.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use closer_store::{Store, WebhookStore};
use serde_json::{json, Value};

use super::crm::{
    channel, consumer, decode, demo, drained, models, set_score, take, transcript, FakeServer,
    Reply, Request,
};
use super::*;

const CLIENT_ID: &str = "3MVG9-test-consumer-key";
const CLIENT_SECRET: &str = "test-consumer-secret";
const CONNECTOR: &str = "salesforce-applinks";
const VERSION: &str = "v62.0";
/// The active Users the fake has for the demo tenant's reps.
const USERS: [(&str, &str); 3] = [
    ("005000000000001AAA", "chelsea.ward@applinks.example"),
    ("005000000000002AAA", "daniel.okafor@applinks.example"),
    ("005000000000003AAA", "priya.raman@applinks.example"),
];
const LEAD_FIELDS: &[&str] = &[
    "FirstName",
    "LastName",
    "Company",
    "Email",
    "OwnerId",
    "Closer_Key__c",
    "Closer_CQL__c",
    "Closer_CQL_Reasons__c",
    "Closer_Slots__c",
    "Closer_Meeting__c",
    "Closer_Conversation__c",
];
const CONTACT_FIELDS: &[&str] = &[
    "FirstName",
    "LastName",
    "Email",
    "OwnerId",
    "Closer_CQL__c",
    "Closer_CQL_Reasons__c",
    "Closer_Slots__c",
    "Closer_Meeting__c",
    "Closer_Conversation__c",
];
const TASK_FIELDS: &[&str] = &[
    "Subject",
    "Description",
    "Status",
    "ActivityDate",
    "WhoId",
    "OwnerId",
    "Closer_Conversation__c",
];

/// Faults the fake injects, each a count that runs down.
#[derive(Default)]
pub(crate) struct Faults {
    /// Answer 503 without applying.
    pub(crate) fail_5xx: AtomicU32,
    /// Apply every other composite call, then close the connection without an answer.
    pub(crate) drop_after_commit: AtomicU32,
    /// Expire every token at the next data call (which answers 401).
    pub(crate) expire_token: AtomicU32,
    /// Apply the next composite call, then hold the connection open without an answer.
    pub(crate) hang_after_commit: AtomicU32,
}

#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) id: String,
    pub(crate) fields: BTreeMap<String, Value>,
}

impl Record {
    fn text(&self, field: &str) -> &str {
        self.fields.get(field).and_then(Value::as_str).unwrap_or("")
    }
}

#[derive(Default, Clone)]
struct Objects {
    leads: Vec<Record>,
    contacts: Vec<Record>,
    tasks: Vec<Record>,
    next_id: u64,
}

#[derive(Default)]
struct State {
    objects: Objects,
    tokens: HashSet<String>,
    issued: u64,
    composites: u64,
}

pub(crate) struct FakeSalesforce {
    pub(crate) url: String,
    server: FakeServer,
    state: Arc<Mutex<State>>,
    pub(crate) faults: Arc<Faults>,
    /// The org's daily API requests: (used so far, allowed).
    usage: Arc<(AtomicU64, AtomicU64)>,
}

fn errors(status: u16, code: &str, message: &str) -> (u16, Value) {
    (status, json!([{"errorCode": code, "message": message}]))
}

fn fail(status: u16, code: &str, message: &str) -> Reply {
    let (s, b) = errors(status, code, message);
    Reply::Answer(s, b)
}

impl FakeSalesforce {
    pub(crate) async fn start() -> Self {
        let state: Arc<Mutex<State>> = Arc::default();
        let faults: Arc<Faults> = Arc::default();
        let usage = Arc::new((AtomicU64::new(0), AtomicU64::new(100_000)));
        let url = Arc::new(Mutex::new(String::new()));
        let server = {
            let (state, faults, usage, url) =
                (state.clone(), faults.clone(), usage.clone(), url.clone());
            FakeServer::start(Arc::new(move |req: &Request| {
                let base = url.lock().unwrap().clone();
                handle(&state, &faults, &usage, &base, req)
            }))
            .await
        };
        *url.lock().unwrap() = server.url.clone();
        FakeSalesforce {
            url: server.url.clone(),
            server,
            state,
            faults,
            usage,
        }
    }

    fn objects(&self) -> Objects {
        self.state.lock().unwrap().objects.clone()
    }

    pub(crate) fn leads(&self, email: &str) -> Vec<Record> {
        let key = format!("applinks:{email}");
        self.objects()
            .leads
            .into_iter()
            .filter(|r| r.text("Closer_Key__c") == key)
            .collect()
    }

    pub(crate) fn tasks(&self, conv: &str) -> Vec<Record> {
        self.objects()
            .tasks
            .into_iter()
            .filter(|r| r.text("Closer_Conversation__c") == conv)
            .collect()
    }

    pub(crate) fn contact(&self, id: &str) -> Option<Record> {
        self.objects().contacts.into_iter().find(|r| r.id == id)
    }

    /// Tokens issued so far.
    pub(crate) fn issued(&self) -> u64 {
        self.state.lock().unwrap().issued
    }

    /// A Lead made in Salesforce by hand with the key of `email` (a second one makes the
    /// external id ambiguous).
    pub(crate) fn add_lead(&self, email: &str) -> String {
        let mut st = self.state.lock().unwrap();
        let id = new_id(&mut st.objects, "00Q");
        let fields = BTreeMap::from([
            ("Closer_Key__c".into(), json!(format!("applinks:{email}"))),
            ("LastName".into(), json!("Duplicate")),
            ("Company".into(), json!("Acme")),
        ]);
        st.objects.leads.push(Record {
            id: id.clone(),
            fields,
        });
        id
    }

    /// Converts the Lead of `email`, as a rep does: a Contact is made from it; its id.
    pub(crate) fn convert(&self, email: &str) -> String {
        let mut st = self.state.lock().unwrap();
        let contact = new_id(&mut st.objects, "003");
        let key = format!("applinks:{email}");
        let lead = st
            .objects
            .leads
            .iter_mut()
            .find(|r| r.text("Closer_Key__c") == key)
            .expect("a Lead to convert");
        lead.fields.insert("IsConverted".into(), json!(true));
        lead.fields
            .insert("ConvertedContactId".into(), json!(contact.clone()));
        let mut fields = BTreeMap::new();
        for f in CONTACT_FIELDS {
            if let Some(v) = lead.fields.get(*f) {
                fields.insert(f.to_string(), v.clone());
            }
        }
        st.objects.contacts.push(Record {
            id: contact.clone(),
            fields,
        });
        contact
    }

    pub(crate) fn set_usage(&self, used: u64, max: u64) {
        self.usage.0.store(used, Ordering::SeqCst);
        self.usage.1.store(max, Ordering::SeqCst);
    }

    pub(crate) fn answered(&self, status: u16) -> usize {
        self.server.answered(status)
    }

    pub(crate) fn requests(&self) -> usize {
        self.server.requests()
    }

    /// Waits (20 s at most) until `done` holds; how long it took.
    pub(crate) async fn until(
        &self,
        what: &str,
        done: impl Fn(&FakeSalesforce) -> bool,
    ) -> Duration {
        super::crm::until(
            what,
            || done(self),
            || {
                let o = self.objects();
                format!(
                    "leads {:#?} contacts {:#?} tasks {} log {:?}",
                    o.leads,
                    o.contacts,
                    o.tasks.len(),
                    self.server.log()
                )
            },
        )
        .await
    }
}

fn new_id(o: &mut Objects, prefix: &str) -> String {
    o.next_id += 1;
    format!("{prefix}{:012}AAA", o.next_id)
}

fn handle(
    state: &Mutex<State>,
    faults: &Faults,
    usage: &(AtomicU64, AtomicU64),
    base: &str,
    req: &Request,
) -> Reply {
    if req.path == "/services/oauth2/token" {
        return token(state, base, req);
    }
    // Every data answer says how much of the org's daily API requests is used.
    let used = usage.0.fetch_add(1, Ordering::SeqCst) + 1;
    let limit = vec![(
        "Sforce-Limit-Info".to_string(),
        format!("api-usage={used}/{}", usage.1.load(Ordering::SeqCst)),
    )];
    match data(state, faults, req) {
        Reply::Answer(status, body) => Reply::With(status, body, limit),
        other => other,
    }
}

fn token(state: &Mutex<State>, base: &str, req: &Request) -> Reply {
    if req.method != "POST" || req.header("content-type") != "application/x-www-form-urlencoded" {
        return Reply::Answer(
            400,
            json!({"error": "invalid_request", "error_description": "must use POST with a form body"}),
        );
    }
    let body = String::from_utf8_lossy(&req.body).to_string();
    let form: BTreeMap<String, String> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if get("grant_type") != "client_credentials" {
        return Reply::Answer(
            400,
            json!({"error": "unsupported_grant_type", "error_description": "grant type not supported"}),
        );
    }
    if get("client_id") != CLIENT_ID || get("client_secret") != CLIENT_SECRET {
        return Reply::Answer(
            400,
            json!({"error": "invalid_client", "error_description": "invalid client credentials"}),
        );
    }
    let mut st = state.lock().unwrap();
    st.issued += 1;
    let token = format!("00Dfake!token{}", st.issued);
    st.tokens.insert(token.clone());
    Reply::Answer(
        200,
        json!({"access_token": token, "instance_url": base, "token_type": "Bearer",
               "id": format!("{base}/id/00D000000000001AAA/005000000000009AAA"),
               "issued_at": "1700000000000", "signature": "c2lnbmF0dXJl"}),
    )
}

fn data(state: &Mutex<State>, faults: &Faults, req: &Request) -> Reply {
    let bearer = req
        .header("authorization")
        .strip_prefix("Bearer ")
        .unwrap_or("");
    let mut st = state.lock().unwrap();
    if st.tokens.contains(bearer) && take(&faults.expire_token) {
        st.tokens.clear();
    }
    if !st.tokens.contains(bearer) {
        return fail(401, "INVALID_SESSION_ID", "Session expired or invalid");
    }
    if take(&faults.fail_5xx) {
        return fail(503, "SERVER_UNAVAILABLE", "try again later");
    }
    let prefix = format!("/services/data/{VERSION}");
    let Some(rest) = req.path.strip_prefix(&prefix) else {
        return fail(404, "NOT_FOUND", "The requested resource does not exist");
    };
    match (req.method.as_str(), rest) {
        ("GET", "/query") => query(&st.objects, req),
        ("POST", "/composite") => {
            let reply = composite(&mut st.objects, req);
            if matches!(reply, Reply::Answer(200, _)) {
                st.composites += 1;
                if st.composites.is_multiple_of(2) && take(&faults.drop_after_commit) {
                    return Reply::Drop;
                }
                if take(&faults.hang_after_commit) {
                    return Reply::Hang;
                }
            }
            reply
        }
        _ => fail(404, "NOT_FOUND", "The requested resource does not exist"),
    }
}

/// The two queries the connector makes: an active User by e-mail, and a Lead's conversion.
fn query(o: &Objects, req: &Request) -> Reply {
    let q = req
        .query
        .split('&')
        .find_map(|kv| kv.strip_prefix("q="))
        .map(decode)
        .unwrap_or_default();
    let literal = |before: &str, after: &str| -> Option<String> {
        let v = q.strip_prefix(before)?.strip_suffix(after)?;
        Some(v.replace("\\'", "'").replace("\\\\", "\\"))
    };
    let records: Vec<Value> = if let Some(email) = literal(
        "SELECT Id FROM User WHERE Email = '",
        "' AND IsActive = true LIMIT 1",
    ) {
        USERS
            .iter()
            .filter(|(_, e)| *e == email)
            .map(|(id, _)| json!({"attributes": {"type": "User"}, "Id": id}))
            .collect()
    } else if let Some(key) = literal(
        "SELECT Id, IsConverted, ConvertedContactId FROM Lead WHERE Closer_Key__c = '",
        "'",
    ) {
        o.leads
            .iter()
            .filter(|r| r.text("Closer_Key__c") == key)
            .map(|r| {
                json!({"attributes": {"type": "Lead"}, "Id": r.id,
                       "IsConverted": r.fields.get("IsConverted").cloned().unwrap_or(json!(false)),
                       "ConvertedContactId": r.fields.get("ConvertedContactId").cloned().unwrap_or(Value::Null)})
            })
            .collect()
    } else {
        return fail(400, "MALFORMED_QUERY", &format!("unexpected query: {q}"));
    };
    Reply::Answer(
        200,
        json!({"totalSize": records.len(), "done": true, "records": records}),
    )
}

fn composite(o: &mut Objects, req: &Request) -> Reply {
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return fail(400, "JSON_PARSER_ERROR", "the body is not JSON");
    };
    let Some(top) = body.as_object() else {
        return fail(400, "JSON_PARSER_ERROR", "an object is expected");
    };
    if let Some(k) = top
        .keys()
        .find(|k| !["allOrNone", "collateSubrequests", "compositeRequest"].contains(&k.as_str()))
    {
        return fail(
            400,
            "JSON_PARSER_ERROR",
            &format!("Unrecognized field \"{k}\""),
        );
    }
    if body["allOrNone"] != json!(true) {
        return fail(
            400,
            "INVALID_INPUT",
            "the connector must send allOrNone: true",
        );
    }
    let Some(subs) = body["compositeRequest"].as_array() else {
        return fail(
            400,
            "INVALID_INPUT",
            "compositeRequest: an array is expected",
        );
    };
    if subs.is_empty() || subs.len() > 25 {
        return fail(
            400,
            "INVALID_INPUT",
            &format!("compositeRequest: 1 to 25 subrequests, got {}", subs.len()),
        );
    }
    let mut seen = HashSet::new();
    for s in subs {
        let Some(obj) = s.as_object() else {
            return fail(400, "INVALID_INPUT", "a subrequest is an object");
        };
        if let Some(k) = obj.keys().find(|k| {
            !["method", "url", "referenceId", "body", "httpHeaders"].contains(&k.as_str())
        }) {
            return fail(
                400,
                "JSON_PARSER_ERROR",
                &format!("Unrecognized field \"{k}\""),
            );
        }
        let reference = s["referenceId"].as_str().unwrap_or("");
        if reference.is_empty()
            || !reference
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || !seen.insert(reference.to_string())
        {
            return fail(
                400,
                "INVALID_INPUT",
                &format!("referenceId {reference:?}: missing, malformed or repeated"),
            );
        }
        if s["method"].as_str().is_none() || s["url"].as_str().is_none() {
            return fail(400, "INVALID_INPUT", "method and url are required");
        }
    }
    // allOrNone: a failed subrequest rolls every write of the call back.
    let before = o.clone();
    let mut results: Vec<(String, u16, Value)> = vec![];
    let mut failed = false;
    for s in subs {
        let reference = s["referenceId"].as_str().unwrap().to_string();
        if failed {
            let (st, b) = errors(
                400,
                "PROCESSING_HALTED",
                "The transaction was rolled back since another operation in the same transaction failed.",
            );
            results.push((reference, st, b));
            continue;
        }
        let (status, out) = match resolve(&s["body"], &results) {
            Ok(b) => sub(
                o,
                s["method"].as_str().unwrap(),
                s["url"].as_str().unwrap(),
                &b,
            ),
            Err(e) => e,
        };
        failed = !(200..300).contains(&status);
        results.push((reference, status, out));
    }
    if failed {
        *o = before;
        for r in results.iter_mut().filter(|r| (200..300).contains(&r.1)) {
            let (st, b) = errors(
                400,
                "PROCESSING_HALTED",
                "The transaction was rolled back since another operation in the same transaction failed.",
            );
            (r.1, r.2) = (st, b);
        }
    }
    let answers: Vec<Value> = results
        .into_iter()
        .map(|(reference, status, body)| {
            json!({"body": body, "httpHeaders": {}, "httpStatusCode": status, "referenceId": reference})
        })
        .collect();
    Reply::Answer(200, json!({"compositeResponse": answers}))
}

/// `@{ref.id}` in string values replaced by the id an earlier subrequest answered.
fn resolve(body: &Value, results: &[(String, u16, Value)]) -> Result<Value, (u16, Value)> {
    match body {
        Value::String(s) if s.starts_with("@{") => {
            let inner = s.trim_start_matches("@{").trim_end_matches('}');
            let (reference, field) = inner.split_once('.').unwrap_or((inner, ""));
            results
                .iter()
                .find(|r| r.0 == reference && (200..300).contains(&r.1))
                .and_then(|r| r.2.get(field).cloned())
                .ok_or_else(|| {
                    errors(
                        400,
                        "INVALID_REFERENCE",
                        &format!("Invalid reference specified. No value for {inner} found"),
                    )
                })
        }
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                out.insert(k.clone(), resolve(v, results)?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

/// One subrequest: (status, body).
fn sub(o: &mut Objects, method: &str, url: &str, body: &Value) -> (u16, Value) {
    let prefix = format!("/services/data/{VERSION}/sobjects/");
    let Some(rest) = url.strip_prefix(&prefix) else {
        return errors(404, "NOT_FOUND", &format!("no route {url}"));
    };
    let parts: Vec<String> = rest.split('/').map(decode).collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let Some(fields) = body.as_object() else {
        return errors(400, "JSON_PARSER_ERROR", "a body object is expected");
    };
    match (method, parts.as_slice()) {
        ("PATCH", ["Lead", "Closer_Key__c", key]) => {
            upsert(o, "Lead", "Closer_Key__c", key, fields)
        }
        ("PATCH", ["Task", "Closer_Conversation__c", conv]) => {
            upsert(o, "Task", "Closer_Conversation__c", conv, fields)
        }
        ("PATCH", ["Contact", id]) => {
            if let Err(e) = check(o, "Contact", fields) {
                return e;
            }
            let Some(c) = o.contacts.iter_mut().find(|r| r.id == *id) else {
                return errors(404, "NOT_FOUND", "The requested resource does not exist");
            };
            for (k, v) in fields {
                c.fields.insert(k.clone(), v.clone());
            }
            (204, Value::Null)
        }
        _ => errors(404, "NOT_FOUND", &format!("no route {method} {url}")),
    }
}

/// Unknown fields, read-only fields, types and lengths.
fn check(
    o: &Objects,
    object: &str,
    fields: &serde_json::Map<String, Value>,
) -> Result<(), (u16, Value)> {
    let allowed = match object {
        "Lead" => LEAD_FIELDS,
        "Contact" => CONTACT_FIELDS,
        _ => TASK_FIELDS,
    };
    for (k, v) in fields {
        if ["IsConverted", "ConvertedContactId", "Id"].contains(&k.as_str()) {
            return Err(errors(
                400,
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                &format!("Unable to create/update fields: {k}."),
            ));
        }
        if !allowed.contains(&k.as_str()) {
            return Err(errors(
                400,
                "INVALID_FIELD",
                &format!("No such column '{k}' on sobject of type {object}"),
            ));
        }
        let ok = match k.as_str() {
            "Closer_CQL__c" => v.is_number(),
            _ => v.is_string(),
        };
        if !ok {
            return Err(errors(
                400,
                "JSON_PARSER_ERROR",
                &format!("Cannot deserialize instance of {k} from {v}"),
            ));
        }
    }
    if fields
        .get("Description")
        .and_then(Value::as_str)
        .is_some_and(|d| d.chars().count() > 32_000)
    {
        return Err(errors(
            400,
            "STRING_TOO_LONG",
            "Description: data value too large (max length=32000)",
        ));
    }
    if let Some(who) = fields.get("WhoId").and_then(Value::as_str) {
        let lead = o.leads.iter().find(|r| r.id == who);
        let known = lead.is_some_and(|l| l.fields.get("IsConverted") != Some(&json!(true)))
            || o.contacts.iter().any(|r| r.id == who);
        if !known {
            return Err(errors(
                400,
                "INVALID_CROSS_REFERENCE_KEY",
                &format!("invalid cross reference id: WhoId {who}"),
            ));
        }
    }
    if let Some(owner) = fields.get("OwnerId").and_then(Value::as_str) {
        if !USERS.iter().any(|(id, _)| *id == owner) {
            return Err(errors(
                400,
                "INVALID_CROSS_REFERENCE_KEY",
                &format!("invalid cross reference id: OwnerId {owner}"),
            ));
        }
    }
    Ok(())
}

/// `PATCH /sobjects/<object>/<field>/<value>`: create (201), update (200), several (300).
fn upsert(
    o: &mut Objects,
    object: &str,
    field: &str,
    value: &str,
    fields: &serde_json::Map<String, Value>,
) -> (u16, Value) {
    if let Err(e) = check(o, object, fields) {
        return e;
    }
    let list = if object == "Lead" { &o.leads } else { &o.tasks };
    let found: Vec<usize> = list
        .iter()
        .enumerate()
        .filter(|(_, r)| r.text(field) == value)
        .map(|(i, _)| i)
        .collect();
    if found.len() > 1 {
        let urls: Vec<String> = found
            .iter()
            .map(|i| format!("/services/data/{VERSION}/sobjects/{object}/{}", list[*i].id))
            .collect();
        return (300, json!(urls));
    }
    if let Some(i) = found.first() {
        if list[*i].fields.get("IsConverted") == Some(&json!(true)) {
            return errors(
                400,
                "CANNOT_UPDATE_CONVERTED_LEAD",
                "cannot reference converted lead",
            );
        }
    } else if object == "Lead" {
        for required in ["LastName", "Company"] {
            if fields
                .get(required)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return errors(
                    400,
                    "REQUIRED_FIELD_MISSING",
                    &format!("Required fields are missing: [{required}]"),
                );
            }
        }
    }
    let created = found.is_empty();
    let id = match found.first() {
        Some(i) => list[*i].id.clone(),
        None => {
            let id = new_id(o, if object == "Lead" { "00Q" } else { "00T" });
            let rec = Record {
                id: id.clone(),
                fields: BTreeMap::from([(field.to_string(), json!(value))]),
            };
            if object == "Lead" {
                o.leads.push(rec);
            } else {
                o.tasks.push(rec);
            }
            id
        }
    };
    let list = if object == "Lead" {
        &mut o.leads
    } else {
        &mut o.tasks
    };
    let rec = list.iter_mut().find(|r| r.id == id).unwrap();
    for (k, v) in fields {
        rec.fields.insert(k.clone(), v.clone());
    }
    (
        if created { 201 } else { 200 },
        json!({"id": id, "success": true, "errors": [], "created": created}),
    )
}

// ---------------------------------------------------------------------------------------------
// The server with the connector.

/// A server with the Salesforce connector to `fake` (credentials in secret files); an
/// attempt may take 3 s.
fn synced_config(
    dir: &Path,
    fake: &str,
    secret: &str,
    retry_scale: f64,
    pause: f64,
) -> ServeConfig {
    let (id_file, secret_file) = (dir.join("sf-client-id"), dir.join("sf-client-secret"));
    std::fs::write(&id_file, format!("{CLIENT_ID}\n")).unwrap();
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let connectors = json!({"salesforce": [{
        "tenant": "applinks",
        "base_url": fake,
        "client_id_file": id_file,
        "client_secret_file": secret_file,
        "api_version": VERSION,
        "pause_at_share": pause,
        "request_timeout_secs": 2,
        "attempt_timeout_secs": 3,
    }]});
    let path = dir.join("connectors.json");
    std::fs::write(&path, connectors.to_string()).unwrap();
    let mut cfg = ServeConfig::for_tests(dir.to_path_buf(), ModelPaths::default_root());
    cfg.connectors = Some(path);
    cfg.webhooks_retry_scale = retry_scale;
    cfg
}

/// Whether the fake holds the conversation in full: one Lead for the e-mail with `score`, the
/// routed rep as owner and names filled; one Task for the conversation on that Lead with every
/// message of `texts`.
fn holds(f: &FakeSalesforce, email: &str, conv: &str, score: i64, texts: &[String]) -> bool {
    let (leads, tasks) = (f.leads(email), f.tasks(conv));
    let ([l], [t]) = (leads.as_slice(), tasks.as_slice()) else {
        return false;
    };
    let description = t.text("Description");
    l.fields.get("Closer_CQL__c").and_then(Value::as_i64) == Some(score)
        && l.text("OwnerId") == USERS[0].0
        && l.text("Email") == email
        && l.text("LastName") == email.split('@').next().unwrap()
        && l.text("Company") == "acme.com"
        && l.text("Closer_Conversation__c") == conv
        && t.text("WhoId") == l.id
        && t.text("OwnerId") == USERS[0].0
        && texts.iter().all(|m| description.contains(m.as_str()))
}

async fn started(
    fake: &FakeSalesforce,
    secret: &str,
    pause: f64,
) -> (tempfile::TempDir, RunningServer, tonic::transport::Channel) {
    let data = demo_data();
    let server = serve_ready(
        synced_config(data.path(), &fake.url, secret, 0.001, pause),
        models(),
    )
    .await;
    let ch = channel(format!("http://{}", server.addr)).await;
    (data, server, ch)
}

fn attempts(data: &Path) -> Vec<u32> {
    let store =
        closer_store::sqlite::SqliteStore::open(&data.join(closer_store::SQLITE_FILE)).unwrap();
    (1..=store.last_cursor().unwrap())
        .filter_map(|c| store.delivery(CONNECTOR, c).unwrap())
        .map(|d| d.attempts)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_shows_the_demo_conversation_of_the_real_models_with_score_owner_and_transcript()
{
    let fake = FakeSalesforce::start().await;
    let data = demo_data();
    let cfg = synced_config(data.path(), &fake.url, CLIENT_SECRET, 0.001, 0.9);
    let (_server, ch, id, texts) = super::crm::real_demo(cfg).await;
    let took = fake
        .until("the demo conversation", |f| {
            holds(f, "sam@acme.com", &id, 3, &texts)
        })
        .await;
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(drained(&ch, CONNECTOR).await.dead, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_shows_the_demo_conversation_within_5_s_with_score_owner_and_transcript() {
    let fake = FakeSalesforce::start().await;
    let (data, _server, ch) = started(&fake, CLIENT_SECRET, 0.9).await;
    let id = demo(&ch, "sam@acme.com").await;
    let texts = transcript(&ch, &id).await;
    assert!(
        texts.len() >= 5,
        "two visitor turns, two replies, the rep: {texts:?}"
    );
    let took = fake
        .until("the demo conversation", |f| {
            holds(f, "sam@acme.com", &id, 3, &texts)
        })
        .await;
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let lead = &fake.leads("sam@acme.com")[0];
    assert!(
        lead.text("Closer_CQL_Reasons__c").contains("account"),
        "{lead:?}"
    );
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
    // One token for everything, and no write was refused (no unknown field, no bad shape).
    assert_eq!(fake.issued(), 1);
    assert_eq!(fake.answered(400), 0);
    assert!(attempts(data.path()).iter().all(|a| *a == 1));
}

/// The whole outbox replayed leaves one Lead per e-mail and one Task per conversation with the
/// latest score; a rep's later score (-1) arrives; `faults` are injected from the start.
async fn replay_duplicates_nothing(faults: impl Fn(&Faults)) -> FakeSalesforce {
    let fake = FakeSalesforce::start().await;
    faults(&fake.faults);
    let (data, _server, ch) = started(&fake, CLIENT_SECRET, 0.9).await;
    let (a, b) = (
        demo(&ch, "sam@acme.com").await,
        demo(&ch, "kim@acme.com").await,
    );
    let (ta, tb) = (transcript(&ch, &a).await, transcript(&ch, &b).await);
    let one = |f: &FakeSalesforce, score_a: i64| {
        let o = f.objects();
        o.leads.len() == 2
            && o.tasks.len() == 2
            && holds(f, "sam@acme.com", &a, score_a, &ta)
            && holds(f, "kim@acme.com", &b, 3, &tb)
    };
    fake.until("both conversations", |f| one(f, 3)).await;
    drained(&ch, CONNECTOR).await;
    let store = data_store(data.path());
    let replay = |store| super::crm::replay_all(store, CONNECTOR);
    let before = fake.requests();
    let queued = replay(store.clone()).await;
    assert!(queued >= 6, "the outbox from cursor 0: {queued}");
    fake.until("the replay's writes", |f| f.requests() >= before + 6)
        .await;
    drained(&ch, CONNECTOR).await;
    assert!(one(&fake, 3));
    set_score(&ch, &a, -1, "student project, no budget").await;
    fake.until("the rep's score", |f| one(f, -1)).await;
    replay(store).await;
    drained(&ch, CONNECTOR).await;
    assert!(one(&fake, -1));
    let lead = &fake.leads("sam@acme.com")[0];
    assert!(
        lead.text("Closer_CQL_Reasons__c")
            .contains("student project"),
        "{lead:?}"
    );
    assert_eq!(consumer(&ch, CONNECTOR).await.dead, 0);
    fake
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_replay_from_cursor_0_duplicates_nothing_and_keeps_the_latest_score() {
    replay_duplicates_nothing(|_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_replay_duplicates_nothing_when_answers_are_lost_after_the_write() {
    let fake = replay_duplicates_nothing(|f| {
        f.drop_after_commit.store(6, Ordering::SeqCst);
        f.fail_5xx.store(2, Ordering::SeqCst);
    })
    .await;
    // Every fault happened: six composite calls committed without an answer, two 503s.
    assert_eq!(fake.faults.drop_after_commit.load(Ordering::SeqCst), 0);
    assert_eq!(fake.answered(0), 6);
    assert_eq!(fake.answered(503), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_expired_token_is_refreshed_once_and_the_call_sent_again() {
    let fake = FakeSalesforce::start().await;
    let (data, _server, ch) = started(&fake, CLIENT_SECRET, 0.9).await;
    let id = demo(&ch, "sam@acme.com").await;
    let texts = transcript(&ch, &id).await;
    fake.until("the demo conversation", |f| {
        holds(f, "sam@acme.com", &id, 3, &texts)
    })
    .await;
    drained(&ch, CONNECTOR).await;
    assert_eq!(fake.issued(), 1);
    fake.faults.expire_token.store(1, Ordering::SeqCst);
    set_score(&ch, &id, 2, "call booked").await;
    fake.until("the score with a new token", |f| {
        holds(f, "sam@acme.com", &id, 2, &texts)
    })
    .await;
    let status = drained(&ch, CONNECTOR).await;
    // One 401, one new token, and the same attempt sent the call again.
    assert_eq!((fake.answered(401), fake.issued()), (1, 2));
    assert_eq!((status.dead, status.last_error), (0, None));
    assert!(
        attempts(data.path()).iter().all(|a| *a == 1),
        "{:?}",
        attempts(data.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_wrong_secret_fails_at_the_token_and_never_shows_it() {
    let fake = FakeSalesforce::start().await;
    let (_data, _server, ch) = started(&fake, "wrong-secret", 0.9).await;
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
    let error = status.last_error.unwrap();
    assert!(
        error.starts_with("HTTP 400") && error.contains("invalid_client"),
        "{error}"
    );
    assert!(!error.contains("wrong-secret"), "{error}");
    assert!(fake.objects().leads.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_several_leads_with_the_key_are_dead_lettered_at_once_and_shown_in_sync_status()
{
    let fake = FakeSalesforce::start().await;
    fake.add_lead("sam@acme.com");
    fake.add_lead("sam@acme.com");
    let (data, _server, ch) = started(&fake, CLIENT_SECRET, 0.9).await;
    let id = demo(&ch, "sam@acme.com").await;
    let start = Instant::now();
    let status = loop {
        let c = consumer(&ch, CONNECTOR).await;
        if c.dead > 0 && c.pending == 0 && c.lag == 0 {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not dead-lettered: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = status.last_error.clone().unwrap_or_default();
    assert!(
        error.starts_with("HTTP 300") && error.contains("several records"),
        "{status:?}"
    );
    // Nothing was written (the Task rolled back with the Lead), and no event was retried.
    assert_eq!(fake.leads("sam@acme.com").len(), 2);
    assert!(fake.tasks(&id).is_empty());
    let store = data_store(data.path());
    let dead = store.dead_letters("applinks", Some(CONNECTOR)).unwrap();
    assert_eq!(dead.len() as u64, status.dead);
    assert!(
        dead.iter()
            .all(|d| d.last_status == Some(300) && d.attempts == 1),
        "{dead:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_converted_lead_writes_its_contact() {
    let fake = FakeSalesforce::start().await;
    let (_data, _server, ch) = started(&fake, CLIENT_SECRET, 0.9).await;
    let id = demo(&ch, "sam@acme.com").await;
    let texts = transcript(&ch, &id).await;
    fake.until("the demo conversation", |f| {
        holds(f, "sam@acme.com", &id, 3, &texts)
    })
    .await;
    drained(&ch, CONNECTOR).await;
    let contact = fake.convert("sam@acme.com");
    set_score(&ch, &id, -1, "went with a competitor").await;
    fake.until("the Contact's score", |f| {
        f.contact(&contact)
            .is_some_and(|c| c.fields.get("Closer_CQL__c") == Some(&json!(-1)))
            && f.tasks(&id)
                .first()
                .is_some_and(|t| t.text("WhoId") == contact)
    })
    .await;
    // The converted Lead kept its last score; still one Lead and one Task.
    let leads = fake.leads("sam@acme.com");
    assert_eq!(leads.len(), 1);
    assert_eq!(leads[0].fields.get("Closer_CQL__c"), Some(&json!(3)));
    assert_eq!(fake.tasks(&id).len(), 1);
    let c = fake.contact(&contact).unwrap();
    assert!(
        c.text("Closer_CQL_Reasons__c").contains("competitor"),
        "{c:?}"
    );
    let status = drained(&ch, CONNECTOR).await;
    assert_eq!(status.dead, 0, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_pauses_at_its_share_of_the_daily_api_requests() {
    let fake = FakeSalesforce::start().await;
    fake.set_usage(4_499, 5_000);
    let (_data, _server, ch) = started(&fake, CLIENT_SECRET, 0.9).await;
    demo(&ch, "sam@acme.com").await;
    let start = Instant::now();
    let status = loop {
        let c = consumer(&ch, CONNECTOR).await;
        if c.last_error
            .as_deref()
            .is_some_and(|e| e.contains("paused"))
        {
            break c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not paused: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // 4,500 of 5,000 reached the share: after that answer nothing more is sent.
    let sent = fake.requests();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fake.requests(), sent, "paused");
    assert!(status.last_error.unwrap().contains("4500 of its 5000"));
    let status = consumer(&ch, CONNECTOR).await;
    assert!(status.pending > 0 && status.dead == 0, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the Salesforce kill -9 test"]
async fn child_serve_salesforce_until_killed() {
    super::crm::serve_until_killed(|dir, fake| synced_config(dir, fake, CLIENT_SECRET, 0.001, 0.9))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_sync_cut_by_kill_9_completes_after_restart_without_duplicates() {
    let fake = FakeSalesforce::start().await;
    // The first composite calls (a Lead and its Task; one per conversation, as conversations
    // sync side by side) are applied, and their answers never come: the server dies then.
    fake.faults.hang_after_commit.store(2, Ordering::SeqCst);
    let (mut child, data, [(a, ta), (b, tb)]) = super::crm::two_demos_on_a_child(
        "salesforce::child_serve_salesforce_until_killed",
        &fake.url,
    )
    .await;
    fake.until("the first Lead write", |f| !f.objects().leads.is_empty())
        .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let both = |f: &FakeSalesforce| {
        holds(f, "sam@acme.com", &a, 3, &ta) && holds(f, "kim@acme.com", &b, 3, &tb)
    };
    assert!(!both(&fake), "killed mid-sync");

    let server = serve_ready(
        synced_config(data.path(), &fake.url, CLIENT_SECRET, 0.001, 0.9),
        models(),
    )
    .await;
    let ch = channel(format!("http://{}", server.addr)).await;
    fake.until("everything after the restart", both).await;
    let status = drained(&ch, CONNECTOR).await;
    let o = fake.objects();
    assert_eq!((o.leads.len(), o.tasks.len()), (2, 2));
    assert_eq!(status.dead, 0, "{status:?}");
}
