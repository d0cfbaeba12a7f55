//! Knowledge ingestion over gRPC: formats, all-or-nothing batches, live visibility, expiry,
//! delete/list/export, restart persistence, tenant isolation, and a kill -9 during ingest.

use super::*;
use closer_kb::Fact;

fn chunk(tenant: &str, name: &str, data: &str) -> pb::IngestChunk {
    pb::IngestChunk {
        tenant: tenant.into(),
        file_name: name.into(),
        data: data.as_bytes().to_vec(),
    }
}

async fn kb_client(
    ts: &TestServer,
) -> pb::knowledge_client::KnowledgeClient<tonic::transport::Channel> {
    pb::knowledge_client::KnowledgeClient::connect(ts.url.clone())
        .await
        .unwrap()
}

async fn ingest(
    ts: &TestServer,
    chunks: Vec<pb::IngestChunk>,
) -> Result<pb::IngestSummary, tonic::Status> {
    kb_client(ts)
        .await
        .ingest(tokio_stream::iter(chunks))
        .await
        .map(|r| r.into_inner())
}

async fn search_ids(ts: &TestServer, tenant: &str, query: &str) -> Vec<String> {
    kb_client(ts)
        .await
        .search(pb::SearchRequest {
            tenant: tenant.into(),
            query: query.into(),
            limit: 10,
            intent: None,
        })
        .await
        .unwrap()
        .into_inner()
        .facts
        .into_iter()
        .map(|f| f.fact.unwrap().id)
        .collect()
}

async fn total_facts(ts: &TestServer, tenant: &str) -> u32 {
    let req = pb::ListRequest {
        tenant: tenant.into(),
        what: pb::ListWhat::Facts as i32,
        page_size: 1,
        page_token: String::new(),
    };
    kb_client(ts)
        .await
        .list(req)
        .await
        .unwrap()
        .into_inner()
        .total
}

const CSV: &str = "id,kind,question,answer,tags,intents\n\
    sla,support,What is your uptime SLA?,Applinks guarantees 99.9% monthly uptime on paid plans.,uptime;sla,product_info\n\
    onprem,hosting,Can we self-host Applinks?,Applinks is offered as a cloud service only; there is no self-hosted edition.,on-prem;self-host,product_info\n";
const MD: &str =
    "# FAQ\n\n## Do you offer a nonprofit discount?\nNonprofits get 30% off the annual plan.\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_is_live_all_or_nothing_and_exportable() {
    let ts = spawn(fake_models(Arc::new(ScriptedGenerator::echo_facts()))).await;
    let before = total_facts(&ts, "applinks").await;

    // A good batch: two files, one of them in two chunks.
    let (a, b) = CSV.split_at(40);
    let s = ingest(
        &ts,
        vec![
            chunk("applinks", "more.csv", a),
            chunk("", "more.csv", b),
            chunk("", "faq.md", MD),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        (s.files, s.facts_upserted, s.facts_embedded),
        (2, 3, 3),
        "{s:?}"
    );
    assert_eq!(search_ids(&ts, "applinks", "uptime SLA").await[0], "sla");
    assert_eq!(
        search_ids(&ts, "applinks", "nonprofit discount").await[0],
        "faq-do-you-offer-a-nonprofit-discount"
    );
    assert_eq!(total_facts(&ts, "applinks").await, before + 3);
    // The same file again: upserted, nothing re-embedded.
    let again = ingest(&ts, vec![chunk("applinks", "more.csv", CSV)])
        .await
        .unwrap();
    assert_eq!(
        (again.facts_upserted, again.facts_embedded),
        (2, 0),
        "{again:?}"
    );

    // A batch with one bad row fails whole, naming file, line and field; nothing of it shows.
    let bad = "id,question,answer\nnew-1,Is there a mobile app?,Yes on iOS and Android.\nnew-2,Any API?,\n";
    let e = ingest(
        &ts,
        vec![
            chunk(
                "applinks",
                "good.md",
                "## Brand new question\nBrand new answer.\n",
            ),
            chunk("", "bad.csv", bad),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("bad.csv: line 3: answer: empty"),
        "{}",
        e.message()
    );
    assert_eq!(total_facts(&ts, "applinks").await, before + 3);
    for (file, data, want) in [
        (
            "x.csv",
            "id,question\na,b\n",
            "x.csv: line 1: answer: required column is missing",
        ),
        ("x.txt", "hello", "x.txt: line 0: file_name: unknown format"),
        (
            "dup.csv",
            "id,question,answer\nd,q,a\nd,q,b\n",
            "dup.csv: line 3: id: duplicate",
        ),
    ] {
        let e = ingest(&ts, vec![chunk("applinks", file, data)])
            .await
            .unwrap_err();
        assert!(e.message().contains(want), "{}", e.message());
    }
    let mut bytes = b"id,question,answer\na,q,".to_vec();
    bytes.extend_from_slice(b"\xff\n");
    let e = kb_client(&ts)
        .await
        .ingest(tokio_stream::iter([pb::IngestChunk {
            tenant: "applinks".into(),
            file_name: "u.csv".into(),
            data: bytes,
        }]))
        .await
        .unwrap_err();
    assert!(
        e.message()
            .contains("u.csv: line 2: encoding: not valid UTF-8"),
        "{}",
        e.message()
    );

    // Reps and accounts: a new account owned by a new rep is live for the next conversation.
    let reps = "id,name,email,team,region,languages,timezone,working_hours,meeting_link\nr-lena,Lena Fischer,lena@applinks.example,emea,EMEA,en;de,Europe/Berlin,09:00-17:00,https://meet.example/lena\n";
    let accounts = "domain,name,owner_rep_id,segment,employees,industry,country,target,open_opportunity\nwww.Hooli.com,Hooli,r-lena,enterprise,5000,software,US,true,true\n";
    let s = ingest(
        &ts,
        vec![
            chunk("applinks", "reps.csv", reps),
            chunk("", "accounts.csv", accounts),
        ],
    )
    .await
    .unwrap();
    assert_eq!((s.reps_upserted, s.accounts_upserted), (1, 1));
    let events = one_turn(&ts, Some("hooli.com"), "Who is our account rep?")
        .await
        .unwrap();
    let h = handoffs(&events);
    assert_eq!(h[0].rep_name.as_deref(), Some("Lena Fischer"), "{h:?}");
    let e = ingest(
        &ts,
        vec![chunk(
            "applinks",
            "accounts.csv",
            "domain,name,owner_rep_id\nx.com,X,r-nobody\n",
        )],
    )
    .await
    .unwrap_err();
    assert!(e.message().contains("owner_rep_id"), "{}", e.message());

    // Expiry: a fact past valid_until is listed but never used.
    let old = "id,question,answer,valid_until\npromo,Is there a launch promo?,The launch promo gives 2 months free.,2020-01-31\n";
    ingest(&ts, vec![chunk("applinks", "promo.csv", old)])
        .await
        .unwrap();
    assert!(!search_ids(&ts, "applinks", "launch promo months free")
        .await
        .contains(&"promo".to_string()));
    let events = one_turn(&ts, None, "Is there a launch promo?")
        .await
        .unwrap();
    assert!(
        !final_of(&events).text.contains("2 months"),
        "{}",
        final_of(&events).text
    );

    // Delete, list pages, export with formula cells escaped.
    let formula = "id,question,answer\nf1,=HYPERLINK(\"http://x\"),+1 is an answer\n";
    ingest(&ts, vec![chunk("applinks", "f.csv", formula)])
        .await
        .unwrap();
    let mut kb = kb_client(&ts).await;
    let exported = kb
        .export(pb::ExportRequest {
            tenant: "applinks".into(),
            format: pb::ExportFormat::Csv as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        exported.content.contains("'=HYPERLINK") && exported.content.contains("'+1 is"),
        "{}",
        exported.content
    );
    let jsonl = kb
        .export(pb::ExportRequest {
            tenant: "applinks".into(),
            format: pb::ExportFormat::Jsonl as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jsonl.content.lines().count() as u32, jsonl.facts);
    let d = kb
        .delete(pb::DeleteRequest {
            tenant: "applinks".into(),
            fact_ids: vec!["sla".into(), "nope".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.deleted, 1);
    assert!(!search_ids(&ts, "applinks", "uptime SLA")
        .await
        .contains(&"sla".to_string()));
    let mut token = String::new();
    let mut seen = 0;
    loop {
        let req = pb::ListRequest {
            tenant: "applinks".into(),
            what: 0,
            page_size: 7,
            page_token: token,
        };
        let r = kb.list(req).await.unwrap().into_inner();
        seen += r.facts.len() as u32;
        token = r.next_page_token;
        if token.is_empty() {
            assert_eq!(seen, r.total);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingested_knowledge_survives_a_restart() {
    let data = demo_data();
    let path = data.path().to_path_buf();
    let ts = spawn_in(fake_models(Arc::new(ScriptedGenerator::echo_facts())), data).await;
    ingest(&ts, vec![chunk("applinks", "more.csv", CSV)])
        .await
        .unwrap();
    let n = total_facts(&ts, "applinks").await;
    let TestServer {
        _server: server,
        _data: data,
        ..
    } = ts;
    server.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(path.join("tenants/applinks/vectors.log").exists());
    let ts = spawn_in(fake_models(Arc::new(ScriptedGenerator::echo_facts())), data).await;
    assert_eq!(total_facts(&ts, "applinks").await, n);
    assert_eq!(search_ids(&ts, "applinks", "uptime SLA").await[0], "sla");
}

async fn own_ids(ts: &TestServer, t: &str) -> std::collections::HashSet<String> {
    let mut kb = kb_client(ts).await;
    let req = pb::ListRequest {
        tenant: t.into(),
        what: 0,
        page_size: 1000,
        page_token: String::new(),
    };
    kb.list(req)
        .await
        .unwrap()
        .into_inner()
        .facts
        .into_iter()
        .map(|f| f.id)
        .collect()
}

/// Property: whatever a visitor of one tenant types — the other tenant's ids, names, canaries,
/// query syntax — search returns only that tenant's facts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_other() {
    let data = demo_data();
    closer_kb::load::load_dir(&example_dir(), data.path(), Some("rival")).unwrap();
    let ts = spawn_in(fake_models(Arc::new(ScriptedGenerator::echo_facts())), data).await;
    let canary = |t: &str| {
        format!("id,question,answer\n{t}-secret,What is the {t} secret plan?,The {t} secret is CANARY-{t}-7731.\n")
    };
    ingest(&ts, vec![chunk("applinks", "c.csv", &canary("applinks"))])
        .await
        .unwrap();
    ingest(&ts, vec![chunk("rival", "c.csv", &canary("rival"))])
        .await
        .unwrap();
    let (mine, theirs) = (own_ids(&ts, "applinks").await, own_ids(&ts, "rival").await);
    let words = [
        "rival-secret",
        "CANARY-rival-7731",
        "rival",
        "secret",
        "plan",
        "id:rival-secret",
        "tenant:rival",
        "*",
        "\"",
        "AND",
        "OR",
        "(",
        ")",
        "price",
        "seat",
        "soc",
        "-",
        "+",
        "~2",
        "^3",
        "tenant",
        "applinks-secret",
        "../rival",
    ];
    let mut rng = closer_models::rng::Rng::new(99);
    for _ in 0..150 {
        let n = 1 + rng.below(5);
        let q: Vec<&str> = (0..n).map(|_| words[rng.below(words.len())]).collect();
        let q = q.join(if rng.below(2) == 0 { " " } else { "" });
        for (tenant, allowed) in [("applinks", &mine), ("rival", &theirs)] {
            for id in search_ids(&ts, tenant, &q).await {
                assert!(
                    allowed.contains(&id),
                    "tenant {tenant}, query {q:?}: got {id}"
                );
            }
        }
    }
    assert_eq!(
        search_ids(&ts, "applinks", "CANARY-rival-7731 rival secret")
            .await
            .iter()
            .filter(|i| i.contains("rival"))
            .count(),
        0
    );
}

/// Runs only as the child of `a_killed_ingest_leaves_the_last_committed_batch`.
#[test]
#[ignore = "child process of the kill -9 test"]
fn child_ingest_until_killed() {
    let Ok(dir) = std::env::var("CLOSER_KILL_TEST_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    // Many batches of 2,000 facts, committed one by one, until the parent kills this process.
    for b in 0..1000 {
        let facts: Vec<Fact> = (0..2000)
            .map(|i| Fact {
                id: format!("bulk-{b}-{i}"),
                kind: "faq".into(),
                question: format!("Bulk question {b} {i}?"),
                answer: format!("Bulk answer {b} {i}."),
                tags: vec![],
                intents: vec![],
                valid_from: None,
                valid_until: None,
            })
            .collect();
        let csv = closer_kb::formats::facts_to_csv(&facts).unwrap();
        let p = dir.join(format!("batch-{b}.csv"));
        std::fs::write(&p, csv).unwrap();
        closer_kb::load::load_files(&[p], &dir.join("data"), "applinks", &mut |_| {}).unwrap();
        println!("committed {b}");
    }
}

#[test]
fn a_killed_ingest_leaves_the_last_committed_batch() {
    let work = tempfile::tempdir().unwrap();
    closer_kb::load::load_dir(&example_dir(), &work.path().join("data"), None).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "knowledge::child_ingest_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CLOSER_KILL_TEST_DIR", work.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let a few batches commit, then kill -9 in the middle of the next one.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut committed = 0;
    while committed < 3 {
        line.clear();
        if std::io::BufRead::read_line(&mut out, &mut line).unwrap() == 0 {
            panic!("child ended early");
        }
        if line.starts_with("committed") {
            committed += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(150));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The tenant reopens, with whole batches only.
    let kb = closer_kb::KnowledgeBase::open(
        &work.path().join("data"),
        "applinks",
        Arc::new(HashEmbedder::default()),
    )
    .unwrap();
    let bulk = kb
        .facts()
        .iter()
        .filter(|f| f.id.starts_with("bulk-"))
        .count();
    assert!(
        bulk >= 3 * 2000 && bulk % 2000 == 0,
        "{bulk} bulk facts: not whole batches"
    );
    let hits = kb.search("Bulk question 1 7", 3, None).unwrap();
    assert!(!hits.is_empty());
}
