use super::*;
use crate::Reason;

fn ev(kind: &str, tenant: &str, rep: Option<&str>) -> NewEvent {
    NewEvent {
        kind: kind.into(),
        tenant: tenant.into(),
        conversation_id: Some("c1".into()),
        rep_id: rep.map(str::to_string),
        team: None,
        payload: serde_json::json!({"k": kind}),
    }
}

fn turn(tenant: &str, conv: &str, n: u32, score: i32) -> TurnWrite {
    TurnWrite {
        tenant: tenant.into(),
        conversation_id: conv.into(),
        domain: Some("acme.com".into()),
        email: None,
        messages: vec![
            Message {
                turn: n,
                author: Author::Visitor,
                text: format!("question {n}"),
                at_ms: 1,
            },
            Message {
                turn: n,
                author: Author::Bot,
                text: format!("answer {n}"),
                at_ms: 2,
            },
        ],
        slots: vec![("company_size".into(), "40".into())],
        intents: vec![("pricing".into(), n)],
        detected: if n == 1 {
            vec!["pricing".into(), "security".into()]
        } else {
            vec![]
        },
        score: Some((
            score,
            vec![Reason {
                rule: "pricing".into(),
                turn: n,
                detail: "intent pricing".into(),
                points: 1,
            }],
        )),
        route: None,
        events: vec![ev("cql_scored", tenant, None)],
        idempotency: None,
    }
}

#[test]
fn turns_scores_and_events_commit_together_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("closer.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        let (lead, events) = s.record_turn(&turn("t", "c1", 1, 1), &|_| vec![]).unwrap();
        assert_eq!((lead.score, lead.turns), (1, 1));
        assert_eq!(events[0].id, format!("evt-{}", events[0].cursor));
        s.record_turn(&turn("t", "c1", 2, 2), &|_| vec![]).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let lead = s.lead("t", "c1").unwrap().unwrap();
    assert_eq!((lead.bot_score, lead.turns), (2, 2));
    assert_eq!(lead.slots["company_size"], "40");
    assert_eq!(lead.intents["pricing"], 1, "first turn kept");
    assert_eq!(s.transcript("t", "c1").unwrap().len(), 4);
    let by_turn = s.turn_intents("t", "c1").unwrap();
    assert_eq!(by_turn.len(), 1, "turn 2 detected nothing: no row");
    assert_eq!(by_turn[&1], ["pricing", "security"]);
    assert!(s.turn_intents("other", "c1").unwrap().is_empty());
    assert_eq!(s.last_cursor().unwrap(), 2);
    assert!(s.lead("other", "c1").unwrap().is_none());
}

#[test]
fn a_manual_score_wins_until_cleared() {
    let s = SqliteStore::in_memory().unwrap();
    s.record_turn(&turn("t", "c1", 1, 2), &|_| vec![]).unwrap();
    let m = ManualScore {
        score: -1,
        rep_id: "r1".into(),
        note: "student".into(),
        at_ms: 5,
    };
    let (lead, events) = s
        .set_manual_score("t", "c1", Some(m), &|l| {
            vec![ev(&format!("score {}", l.score), "t", None)]
        })
        .unwrap();
    assert_eq!((lead.score, lead.bot_score), (-1, 2));
    assert_eq!(events[0].event.kind, "score -1");
    // A later bot turn changes the bot's score, not the one in force.
    let (lead, events) = s
        .record_turn(&turn("t", "c1", 2, 3), &|l| {
            vec![ev(&format!("after {}", l.bot_score), "t", None)]
        })
        .unwrap();
    assert_eq!((lead.score, lead.bot_score), (-1, 3));
    assert_eq!(events.last().unwrap().event.kind, "after 3");
    let (lead, _) = s.set_manual_score("t", "c1", None, &|_| vec![]).unwrap();
    assert_eq!(lead.score, 3);
    assert!(matches!(
        s.set_manual_score("t", "nope", None, &|_| vec![]),
        Err(Error::NotFound(_))
    ));
    let (hot, n) = s
        .leads(&LeadFilter {
            tenant: "t".into(),
            min_score: Some(3),
            limit: 10,
            ..LeadFilter::default()
        })
        .unwrap();
    assert_eq!((hot.len(), n), (1, 1));
}

#[test]
fn events_filter_by_tenant_kind_and_rep_and_acks_never_move_back() {
    let s = SqliteStore::in_memory().unwrap();
    s.append_events(&[
        ev("account_live", "t", Some("r1")),
        ev("cql_scored", "t", None),
        ev("account_live", "u", Some("r1")),
        ev("handoff_requested", "t", Some("r2")),
    ])
    .unwrap();
    let f = |kinds: &[&str], rep: Option<&str>| EventFilter {
        tenant: "t".into(),
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
        rep_id: rep.map(str::to_string),
        team: None,
        conversation_id: None,
    };
    let c = |v: Vec<Event>| v.iter().map(|e| e.cursor).collect::<Vec<_>>();
    assert_eq!(c(s.events_after(0, &f(&[], None), 100).unwrap()), [1, 2, 4]);
    assert_eq!(c(s.events_after(1, &f(&[], None), 1).unwrap()), [2]);
    assert_eq!(
        c(s.events_after(0, &f(&["account_live"], None), 100).unwrap()),
        [1]
    );
    assert_eq!(c(s.events_after(0, &f(&[], Some("r2")), 100).unwrap()), [4]);
    assert_eq!(s.ack("t", "crm", 2).unwrap(), 2);
    assert_eq!(s.ack("t", "crm", 1).unwrap(), 2);
    assert!(s.ack("t", "crm", 99).is_err());
    assert_eq!(s.acked("t", "crm").unwrap(), 2);
    assert_eq!(s.acked("u", "crm").unwrap(), 0);
}

#[test]
fn round_robin_is_fair_over_a_thousand_conversations() {
    let s = SqliteStore::in_memory().unwrap();
    let reps: Vec<String> = ["a", "b", "c"].iter().map(|x| x.to_string()).collect();
    let mut count: HashMap<String, i32> = HashMap::new();
    for i in 0..1000 {
        // Rep c is away for a stretch; the others take its share meanwhile.
        let available: Vec<String> = if (300..400).contains(&i) {
            reps[..2].to_vec()
        } else {
            reps.clone()
        };
        let r = s.round_robin("t", "smb", &available).unwrap().unwrap();
        *count.entry(r).or_default() += 1;
    }
    let max = count.values().max().unwrap();
    let min = count.values().min().unwrap();
    assert!(max - min <= 1, "{count:?}");
    assert_eq!(s.round_robin("t", "smb", &[]).unwrap(), None);
}

#[test]
fn concurrent_bookings_of_one_slot_give_exactly_one_meeting() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
    let wins: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                scope.spawn(move || {
                    s.book_meeting(
                        &Meeting {
                            id: 0,
                            tenant: "t".into(),
                            rep_id: "r1".into(),
                            // Overlapping, not identical, slots.
                            start: 1_000 + i * 60,
                            end: 2_800 + i * 60,
                            conversation_id: format!("c{i}"),
                            email: None,
                        },
                        &|m| vec![ev("meeting_booked", &m.tenant, Some(&m.rep_id))],
                    )
                    .is_ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum()
    });
    assert_eq!(wins, 1);
    assert_eq!(s.meetings("t", "r1", 0, 10_000).unwrap().len(), 1);
    assert_eq!(
        s.last_cursor().unwrap(),
        1,
        "one event, for the one booking"
    );
    // Another rep's calendar is separate.
    assert!(s
        .book_meeting(
            &Meeting {
                id: 0,
                tenant: "t".into(),
                rep_id: "r2".into(),
                start: 1_000,
                end: 2_800,
                conversation_id: "c9".into(),
                email: None,
            },
            &|_| vec![],
        )
        .is_ok());
}

#[test]
fn an_idempotency_key_is_kept_with_its_change() {
    let s = SqliteStore::in_memory().unwrap();
    let mut w = turn("t", "form-1", 1, 2);
    w.idempotency = Some(("qualify".into(), "k1".into(), b"reply".to_vec()));
    s.record_turn(&w, &|_| vec![]).unwrap();
    assert_eq!(
        s.idempotent_get("t", "qualify", "k1").unwrap().as_deref(),
        Some(&b"reply"[..])
    );
    // The same key twice fails the second transaction as a whole.
    assert!(s.record_turn(&w, &|_| vec![]).is_err());
    assert_eq!(s.transcript("t", "form-1").unwrap().len(), 2);
}

#[test]
fn retention_removes_old_events_and_refuses_to_read_across_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("closer.db");
    let all = EventFilter {
        tenant: "t".into(),
        ..Default::default()
    };
    {
        let s = SqliteStore::open(&path).unwrap();
        let written = s
            .append_events(&[ev("a", "t", None), ev("b", "t", None), ev("c", "t", None)])
            .unwrap();
        assert_eq!(
            s.prune_events(written[0].at_ms).unwrap(),
            0,
            "nothing older yet"
        );
        assert_eq!(s.pruned_through().unwrap(), 0);
        // Everything written so far is older than a moment from now.
        assert_eq!(s.prune_events(written[2].at_ms + 1).unwrap(), 3);
        assert_eq!(s.pruned_through().unwrap(), 3);
        // The outbox is empty but cursors go on from where they were.
        assert_eq!(s.last_cursor().unwrap(), 3);
        let next = s.append_events(&[ev("d", "t", None)]).unwrap();
        assert_eq!(next[0].cursor, 4);
    }
    // After a restart too.
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.pruned_through().unwrap(), 3);
    let err = s.events_after(1, &all, 10).unwrap_err().to_string();
    assert!(
        err.contains("after_cursor") && err.contains("cursor 3"),
        "names where reading can start: {err}"
    );
    let kept: Vec<u64> = s
        .events_after(3, &all, 10)
        .unwrap()
        .iter()
        .map(|e| e.cursor)
        .collect();
    assert_eq!(kept, [4]);
    // A consumer may ack the newest cursor even when it was removed.
    assert_eq!(s.ack("t", "crm", 3).unwrap(), 3);
}

#[test]
fn a_conversation_id_is_claimed_once_and_only_a_live_token_reopens_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("closer.db")).unwrap();
    assert!(s.claim_conversation("t", "c1", "h1", None).unwrap());
    assert!(
        !s.claim_conversation("t", "c1", "h2", None).unwrap(),
        "a second claim of the same id loses"
    );
    assert!(
        s.claim_conversation("other", "c1", "h3", None).unwrap(),
        "ids are per tenant"
    );
    // A conversation that predates claims (written by a turn) cannot be claimed either.
    s.record_turn(&turn("t", "old", 1, 1), &|_| vec![]).unwrap();
    assert!(!s.claim_conversation("t", "old", "h4", Some("old")).unwrap());
    assert_eq!(
        s.conversation_by_token("t", "h1").unwrap().as_deref(),
        Some("c1")
    );
    assert_eq!(
        s.conversation_by_token("other", "h1").unwrap(),
        None,
        "bound to the tenant"
    );
    assert_eq!(s.conversation_by_token("t", "h2").unwrap(), None);
    assert_eq!(s.revoke_resume("t", "c1").unwrap(), 1);
    assert_eq!(s.revoke_resume("t", "c1").unwrap(), 0, "already revoked");
    assert_eq!(s.conversation_by_token("t", "h1").unwrap(), None);
    assert_eq!(
        s.conversation_by_token("other", "h3").unwrap().as_deref(),
        Some("c1")
    );
}

#[test]
fn the_latest_event_of_a_conversation_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("closer.db")).unwrap();
    let of = |kind: &str, conv: &str| {
        let mut e = ev(kind, "t", None);
        e.conversation_id = Some(conv.into());
        s.append_events(&[e]).unwrap();
    };
    of("meeting_proposed", "c1");
    of("meeting_booked", "c1");
    of("meeting_proposed", "c2");
    of("cql_scored", "c1");
    let kinds = ["meeting_proposed", "meeting_booked"];
    let got = s.latest_event("t", "c1", &kinds).unwrap().unwrap();
    assert_eq!(got.event.kind, "meeting_booked");
    assert_eq!(
        s.latest_event("t", "c2", &kinds)
            .unwrap()
            .unwrap()
            .event
            .kind,
        "meeting_proposed"
    );
    assert!(s.latest_event("t", "c3", &kinds).unwrap().is_none());
    assert!(s.latest_event("other", "c1", &kinds).unwrap().is_none());
}
