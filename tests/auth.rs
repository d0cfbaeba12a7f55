//! API keys (roles, tenants, revocation, the web stream's key, keys stored only hashed), TLS, and per-tenant reply quotas.

use std::io::{Read, Write};

use closer_server::auth::{new_key, Role};
use closer_store::Store;

use super::*;

struct Keys {
    pub_a: String,
    rep_a: String,
    admin_a: String,
    pub_b: String,
    rep_a_id: String,
    display_a: String,
    display_b: String,
}

/// The demo tenant as `applinks` and again as `other`, with keys made before the server starts.
fn keyed_data() -> (tempfile::TempDir, Keys) {
    let dir = demo_data();
    closer_kb::load::load_dir(&example_dir(), dir.path(), Some("other")).unwrap();
    let store =
        closer_store::sqlite::SqliteStore::open(&dir.path().join(closer_store::SQLITE_FILE))
            .unwrap();
    let make = |tenant: &str, role: Role| {
        let (key, stored) = new_key(tenant, role, "test");
        store.create_key(&stored).unwrap();
        (key, stored.id)
    };
    let (pub_a, _) = make("applinks", Role::Publishable);
    let (rep_a, rep_a_id) = make("applinks", Role::Rep);
    let (admin_a, _) = make("applinks", Role::Admin);
    let (pub_b, _) = make("other", Role::Publishable);
    let (display_a, _) = make("applinks", Role::Display);
    let (display_b, _) = make("other", Role::Display);
    (
        dir,
        Keys {
            pub_a,
            rep_a,
            admin_a,
            pub_b,
            rep_a_id,
            display_a,
            display_b,
        },
    )
}

fn with_key<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

fn classify(tenant: &str) -> pb::ClassifyRequest {
    pb::ClassifyRequest {
        tenant: tenant.into(),
        text: "How much does each seat cost?".into(),
    }
}

/// A raw HTTP/1.1 GET; the status code.
fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: closer\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_checked_by_role_and_tenant_and_revocation_is_immediate() {
    let (data, keys) = keyed_data();
    let db = data.path().join(closer_store::SQLITE_FILE);
    let mut cfg = ServeConfig::for_tests(data.path().to_path_buf(), ModelPaths::default_root());
    cfg.auth = closer_server::config::AuthMode::Keys;
    let server = serve_ready(cfg, fake_models(Arc::new(ScriptedGenerator::echo_facts()))).await;
    let url = format!("http://{}", server.addr);
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut assistant = pb::assistant_client::AssistantClient::new(channel.clone());
    let mut leads = pb::leads_client::LeadsClient::new(channel.clone());
    let mut kb = pb::knowledge_client::KnowledgeClient::new(channel.clone());

    // Health needs no key.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();

    // No key, or a made-up one: UNAUTHENTICATED.
    let e = assistant.classify(classify("applinks")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let fake = "closer_pub_0000";
    let e = assistant
        .classify(with_key(classify("applinks"), fake))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // The publishable key chats for its own tenant only.
    assistant
        .classify(with_key(classify("applinks"), &keys.pub_a))
        .await
        .unwrap();
    for (tenant, key) in [
        ("applinks", &keys.pub_b),
        ("other", &keys.pub_a),
        ("nope", &keys.pub_a),
    ] {
        let e = assistant
            .classify(with_key(classify(tenant), key))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{tenant}: {e:?}");
        assert!(e.message().contains("tenant"), "{}", e.message());
    }
    let (tx, rx) = mpsc::channel(2);
    tx.send(start_with_id("applinks", None, "keyed"))
        .await
        .unwrap();
    tx.send(message("How much does each seat cost?"))
        .await
        .unwrap();
    let mut stream = assistant
        .converse(with_key(ReceiverStream::new(rx), &keys.pub_a))
        .await
        .unwrap()
        .into_inner();
    let mut got_final = false;
    while let Some(r) = stream.message().await.unwrap() {
        if matches!(r.event, Some(Event::Final(_))) {
            got_final = true;
            break;
        }
    }
    assert!(got_final);
    // A stream started for another tenant is refused at its first message.
    let (tx, rx) = mpsc::channel(2);
    tx.send(start_with_id("other", None, "keyed-2"))
        .await
        .unwrap();
    let refused = match assistant
        .converse(with_key(ReceiverStream::new(rx), &keys.pub_a))
        .await
    {
        Err(e) => e.code(),
        Ok(r) => r.into_inner().message().await.unwrap_err().code(),
    };
    assert_eq!(refused, tonic::Code::PermissionDenied);

    // Roles: a publishable key cannot read leads; a rep key can, but cannot change knowledge.
    let list = || pb::ListLeadsRequest {
        tenant: "applinks".into(),
        ..Default::default()
    };
    let e = leads.list(with_key(list(), &keys.pub_a)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("needs a rep key"), "{}", e.message());
    leads.list(with_key(list(), &keys.rep_a)).await.unwrap();
    let search = pb::SearchRequest {
        tenant: "applinks".into(),
        query: "soc 2".into(),
        limit: 3,
        intent: None,
    };
    kb.search(with_key(search, &keys.rep_a)).await.unwrap();
    let delete = || pb::DeleteRequest {
        tenant: "applinks".into(),
        fact_ids: vec!["no-such-fact".into()],
    };
    let e = kb
        .delete(with_key(delete(), &keys.rep_a))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let admin = kb.delete(with_key(delete(), &keys.admin_a)).await;
    assert_ne!(
        admin.as_ref().err().map(|e| e.code()),
        Some(tonic::Code::PermissionDenied),
        "{admin:?}"
    );

    // The leaderboard page is open; its data stream takes a display token in the URL (the
    // screen holds no rep powers), never a rep key there; a display token opens nothing else.
    let addr = server.addr;
    let (rep, shown, other) = (
        keys.rep_a.clone(),
        keys.display_a.clone(),
        keys.display_b.clone(),
    );
    let got = tokio::task::spawn_blocking(move || {
        let events =
            |q: &str| http_status(addr, &format!("/leaderboard/events?tenant=applinks{q}"));
        [
            http_status(addr, "/leaderboard?tenant=applinks"),
            events(""),
            events(&format!("&key={shown}")),
            events(&format!("&key={rep}")),
            events("&key=closer_pub_x"),
            events(&format!("&key={other}")),
        ]
    })
    .await
    .unwrap();
    assert_eq!(
        got,
        [200, 401, 200, 403, 401, 403],
        "page, no key, display token, rep key in the URL, unknown key, another tenant's token"
    );
    let e = leads
        .list(with_key(list(), &keys.display_a))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // Revoked: refused at once.
    let store = closer_store::sqlite::SqliteStore::open(&db).unwrap();
    store.revoke_key(&keys.rep_a_id).unwrap();
    let e = leads.list(with_key(list(), &keys.rep_a)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // Only hashes are stored.
    let mut bytes = vec![];
    for f in std::fs::read_dir(data.path()).unwrap() {
        let p = f.unwrap().path();
        if p.is_file() {
            bytes.extend(std::fs::read(p).unwrap());
        }
    }
    for k in [
        &keys.pub_a,
        &keys.rep_a,
        &keys.admin_a,
        &keys.pub_b,
        &keys.display_a,
    ] {
        let secret = k.rsplit('_').next().unwrap().as_bytes();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "a key is stored in clear"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_not_needed_on_loopback_by_default_but_are_when_asked() {
    let cfg = ServeConfig::for_tests(PathBuf::from("/nonexistent"), ModelPaths::default_root());
    assert!(!cfg.keys_required(), "auto on a loopback address");
    let mut public = cfg.clone();
    public.addr = "0.0.0.0:50051".parse().unwrap();
    assert!(public.keys_required(), "auto on every interface");
    public.auth = closer_server::config::AuthMode::Off;
    assert!(!public.keys_required());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_a_request_through_a_proxy_still_needs_a_key() {
    // `--auth auto` on 127.0.0.1: a local caller goes in without a key, but a reverse proxy on
    // the same host makes every caller local, so a request carrying forwarding headers does not.
    let (data, keys) = keyed_data();
    let cfg = ServeConfig::for_tests(data.path().to_path_buf(), ModelPaths::default_root());
    assert_eq!(
        cfg.key_policy(),
        closer_server::auth::KeyPolicy::ProxiedOnly
    );
    let server = serve_ready(cfg, fake_models(Arc::new(ScriptedGenerator::echo_facts()))).await;
    let mut assistant =
        pb::assistant_client::AssistantClient::connect(format!("http://{}", server.addr))
            .await
            .unwrap();
    assistant.classify(classify("applinks")).await.unwrap();
    let proxied = |header: &'static str, key: Option<&str>| {
        let mut r = match key {
            Some(k) => with_key(classify("applinks"), k),
            None => tonic::Request::new(classify("applinks")),
        };
        r.metadata_mut()
            .insert(header, "203.0.113.7".parse().unwrap());
        r
    };
    for header in ["x-forwarded-for", "forwarded", "x-real-ip"] {
        let e = assistant.classify(proxied(header, None)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{header}: {e:?}");
        assistant
            .classify(proxied(header, Some(&keys.pub_a)))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_speaks_tls_when_given_a_certificate() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let pem_dir = tempfile::tempdir().unwrap();
    let (cert, key) = (
        pem_dir.path().join("cert.pem"),
        pem_dir.path().join("key.pem"),
    );
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();

    let data = demo_data();
    let mut cfg = ServeConfig::for_tests(data.path().to_path_buf(), ModelPaths::default_root());
    cfg.tls_cert = Some(cert.clone());
    assert!(cfg
        .tls_identity()
        .unwrap_err()
        .to_string()
        .contains("--tls-key"));
    cfg.tls_key = Some(cert.clone());
    assert!(cfg
        .tls_identity()
        .unwrap_err()
        .to_string()
        .contains("PRIVATE KEY"));
    cfg.tls_key = Some(key);
    let server = serve_ready(cfg, fake_models(Arc::new(ScriptedGenerator::echo_facts()))).await;

    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            certified.cert.pem(),
        ))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::assistant_client::AssistantClient::new(channel)
        .classify(classify("applinks"))
        .await
        .unwrap();
    // Plain text to the TLS port gets nowhere.
    let plain =
        pb::assistant_client::AssistantClient::connect(format!("http://{}", server.addr)).await;
    let failed = match plain {
        Err(_) => true,
        Ok(mut c) => c.classify(classify("applinks")).await.is_err(),
    };
    assert!(failed, "a plain-text call to a TLS server must fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_hits_its_quota_while_another_is_served() {
    let data = demo_data();
    closer_kb::load::load_dir(&example_dir(), data.path(), Some("other")).unwrap();
    let mut cfg = ServeConfig::for_tests(data.path().to_path_buf(), ModelPaths::default_root());
    cfg.max_pending_replies = 8;
    cfg.tenant_max_pending_replies = 4;
    // A generator that takes its time (30 ms a word), so permits are held while others arrive.
    let mut slow = ScriptedGenerator::echo_facts();
    slow.delay = Duration::from_millis(30);
    let server = serve_ready(cfg, fake_models(Arc::new(slow))).await;
    let url = format!("http://{}", server.addr);
    let ask = |tenant: &'static str, n: usize| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut client = pb::assistant_client::AssistantClient::connect(url)
                .await
                .unwrap();
            let (tx, rx) = mpsc::channel(2);
            tx.send(start_with_id(tenant, None, &format!("{tenant}-{n}")))
                .await
                .unwrap();
            tx.send(message("How much does each seat cost?"))
                .await
                .unwrap();
            let mut s = client
                .converse(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            while let Some(r) = s.message().await.unwrap() {
                match r.event.unwrap() {
                    Event::Final(_) => return Ok(()),
                    Event::Error(e) => return Err(e.code),
                    _ => {}
                }
            }
            Err("no final".to_string())
        })
    };
    // The flood: twice its quota at once. Then the other tenant asks while it runs.
    let flood: Vec<_> = (0..8).map(|n| ask("applinks", n)).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let calm: Vec<_> = (0..2).map(|n| ask("other", n)).collect();
    let (mut served, mut refused) = (0, 0);
    for f in flood {
        match f.await.unwrap() {
            Ok(()) => served += 1,
            Err(code) => {
                assert_eq!(code, "RESOURCE_EXHAUSTED");
                refused += 1;
            }
        }
    }
    for c in calm {
        assert_eq!(c.await.unwrap(), Ok(()), "the calm tenant is served");
    }
    assert!(
        served <= 5 && refused >= 3,
        "served {served}, refused {refused}"
    );
}

/// A raw HTTP/1.1 GET with a bearer key: the status code and the body.
fn http_get_with_key(addr: std::net::SocketAddr, path: &str, key: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: closer\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, raw.split_once("\r\n\r\n").unwrap().1.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_a_tenant_admin_its_own_tenant_and_the_operator_every_tenant() {
    let (data, keys) = keyed_data();
    let store =
        closer_store::sqlite::SqliteStore::open(&data.path().join(closer_store::SQLITE_FILE))
            .unwrap();
    let (operator, stored) = new_key(closer_server::auth::OPERATOR_TENANT, Role::Operator, "ops");
    store.create_key(&stored).unwrap();
    drop(store);
    let mut cfg = ServeConfig::for_tests(data.path().to_path_buf(), ModelPaths::default_root());
    cfg.auth = closer_server::config::AuthMode::Keys;
    let server = serve_ready(cfg, fake_models(Arc::new(ScriptedGenerator::echo_facts()))).await;
    let url = format!("http://{}", server.addr);
    let mut assistant = pb::assistant_client::AssistantClient::connect(url)
        .await
        .unwrap();
    // One turn for each tenant.
    for (tenant, key) in [("applinks", &keys.pub_a), ("other", &keys.pub_b)] {
        let (tx, rx) = mpsc::channel(2);
        tx.send(start_event(tenant, None)).await.unwrap();
        tx.send(message("How much does each seat cost?"))
            .await
            .unwrap();
        let mut s = assistant
            .converse(with_key(ReceiverStream::new(rx), key))
            .await
            .unwrap()
            .into_inner();
        while let Some(r) = s.message().await.unwrap() {
            if matches!(r.event, Some(Event::Final(_))) {
                break;
            }
        }
    }
    let addr = server.addr;
    let (status, admin) =
        tokio::task::spawn_blocking(move || http_get_with_key(addr, "/metrics", &keys.admin_a))
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert!(
        admin.contains("closer_tenant_turns_total{tenant=\"applinks\"} 1"),
        "{admin}"
    );
    assert!(!admin.contains("tenant=\"other\""), "{admin}");
    assert!(
        !admin.contains("closer_turns_total"),
        "no server-wide figures: {admin}"
    );
    let op = operator.clone();
    let (status, all) =
        tokio::task::spawn_blocking(move || http_get_with_key(addr, "/metrics", &op))
            .await
            .unwrap();
    assert_eq!(status, 200);
    for want in [
        "closer_turns_total 2",
        "closer_tenant_turns_total{tenant=\"applinks\"} 1",
        "closer_tenant_turns_total{tenant=\"other\"} 1",
    ] {
        assert!(all.contains(want), "{want}: {all}");
    }
    let rep = keys.rep_a.clone();
    let (status, _) =
        tokio::task::spawn_blocking(move || http_get_with_key(addr, "/metrics", &rep))
            .await
            .unwrap();
    assert_eq!(status, 403);
    // An operator key opens no tenant's RPCs.
    let e = assistant
        .classify(with_key(classify("applinks"), &operator))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_required_lets_only_a_signed_visitor_start_with_the_publishable_key() {
    let (data, keys) = keyed_data();
    let yaml = closer_kb::tenant_dir(data.path(), "applinks").join("tenant.yaml");
    let mut y = std::fs::read_to_string(&yaml).unwrap();
    y.push_str("identity: required\nidentity_secrets: [required-secret-0123456789]\n");
    std::fs::write(&yaml, y).unwrap();
    let mut cfg = ServeConfig::for_tests(data.path().to_path_buf(), ModelPaths::default_root());
    cfg.auth = closer_server::config::AuthMode::Keys;
    let server = serve_ready(cfg, fake_models(Arc::new(ScriptedGenerator::echo_facts()))).await;
    let mut assistant =
        pb::assistant_client::AssistantClient::connect(format!("http://{}", server.addr))
            .await
            .unwrap();
    let good = crate::sales::python(
        "import hashlib, hmac; print(hmac.new(b'required-secret-0123456789', b'kim@acme.com', hashlib.sha256).hexdigest())",
    );
    let wrong = crate::sales::python(
        "import hashlib, hmac; print(hmac.new(b'required-secret-0123456789', b'bob@acme.com', hashlib.sha256).hexdigest())",
    );
    for (user_hash, allowed) in [(None, false), (Some(wrong), false), (Some(good), true)] {
        let mut start = start_event("applinks", None);
        if let Some(pb::converse_request::Event::Start(s)) = &mut start.event {
            let v = s.visitor.as_mut().unwrap();
            v.email = Some("kim@acme.com".into());
            v.user_hash = user_hash.clone();
        }
        let (tx, rx) = mpsc::channel(2);
        tx.send(start).await.unwrap();
        tx.send(message("hello")).await.unwrap();
        let opened = match assistant
            .converse(with_key(ReceiverStream::new(rx), &keys.pub_a))
            .await
        {
            Ok(r) => r.into_inner().message().await,
            Err(e) => Err(e),
        };
        match opened {
            Ok(Some(r)) if allowed => {
                assert!(matches!(r.event, Some(Event::Opened(_))), "{r:?}");
            }
            Err(e) if !allowed => {
                assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
                assert!(e.message().starts_with("visitor:"), "{}", e.message());
            }
            other => panic!("user_hash {user_hash:?}: {other:?}"),
        }
    }
}
