//! The store conformance suite: every case runs against every backend (SQLite always;
//! PostgreSQL when `CLOSER_TEST_DATABASE_URL` is set, see `scripts/backends.sh`). The
//! concurrency cases open two handles on one database — two replicas — and write from several
//! threads on each.

use std::collections::HashMap;
use std::sync::Arc;

use crate::webhooks::{AttemptResult, DeliveryStatus, ReplaySelection, Secret, WebhookEndpoint};
use crate::*;

/// A database the cases can open any number of handles on.
pub(crate) trait Backend {
    /// A new handle (connection pool, or file connection) on the same database.
    fn open(&self) -> Box<dyn Store>;
}

/// One `#[test]` per conformance case, for the backend `$make` returns (`None`: skipped, with
/// the reason printed).
#[macro_export]
#[doc(hidden)]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            basic_turns_leads_and_transcripts,
            a_manual_score_wins_until_cleared,
            events_filter_by_tenant_kind_and_rep_and_acks_never_move_back,
            round_robin_is_fair_over_a_thousand_conversations,
            concurrent_bookings_of_one_slot_give_exactly_one_meeting,
            an_idempotency_key_is_kept_with_its_change,
            retention_removes_old_events_and_refuses_to_read_across_the_gap,
            a_conversation_id_is_claimed_once_and_only_a_live_token_reopens_it,
            the_latest_event_of_a_conversation_by_kind,
            replicas_write_events_that_a_subscriber_sees_once_and_in_cursor_order,
            replicas_share_round_robin_fairly,
            of_two_concurrent_take_overs_one_wins,
            one_idempotency_key_on_two_replicas_gives_one_lead_and_one_reply,
            concurrent_messages_of_one_conversation_are_all_kept_in_order,
            endpoints_see_only_later_matching_events_of_their_tenant,
            a_conversations_later_event_waits_for_the_earlier_one,
            dead_letters_replay_with_their_cursor_and_ranges_reach_older_events,
            an_attempt_cut_short_by_a_crash_is_due_again_after_reopening,
            rotation_keeps_the_old_secret_and_delete_removes_deliveries,
            consumers_their_lag_and_an_endpoints_last_failure,
            an_endpoints_url_changes_and_keeps_its_cursor,
            documents_are_read_after_a_version_latest_per_name,
            documents_put_together_are_seen_all_or_none,
            each_tenants_newest_cursor_after_a_cursor,
            a_lease_has_one_holder_until_it_expires,
        );
    };
    (@each $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                if let Some(b) = $make {
                    $crate::conformance::$case(&b);
                }
            }
        )*
    };
}

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

pub(crate) fn basic_turns_leads_and_transcripts(b: &dyn Backend) {
    let s = b.open();
    let (lead, events) = s.record_turn(&turn("t", "c1", 1, 1), &|_| vec![]).unwrap();
    assert_eq!((lead.score, lead.turns), (1, 1));
    assert_eq!(events[0].id, format!("evt-{}", events[0].cursor));
    s.record_turn(&turn("t", "c1", 2, 2), &|_| vec![]).unwrap();
    let s = b.open();
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
    let control = s.control("t", "c1").unwrap().unwrap();
    assert_eq!(control.taken_over_by, None);
    assert!(s.control("t", "nope").unwrap().is_none());
}

pub(crate) fn a_manual_score_wins_until_cleared(b: &dyn Backend) {
    let s = b.open();
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

pub(crate) fn events_filter_by_tenant_kind_and_rep_and_acks_never_move_back(b: &dyn Backend) {
    let s = b.open();
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

pub(crate) fn round_robin_is_fair_over_a_thousand_conversations(b: &dyn Backend) {
    let s = b.open();
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

pub(crate) fn concurrent_bookings_of_one_slot_give_exactly_one_meeting(b: &dyn Backend) {
    let s: Arc<dyn Store> = b.open().into();
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

pub(crate) fn an_idempotency_key_is_kept_with_its_change(b: &dyn Backend) {
    let s = b.open();
    let mut w = turn("t", "form-1", 1, 2);
    w.idempotency = Some(("qualify".into(), "k1".into(), b"reply".to_vec()));
    s.record_turn(&w, &|_| vec![]).unwrap();
    assert_eq!(
        s.idempotent_get("t", "qualify", "k1").unwrap().as_deref(),
        Some(&b"reply"[..])
    );
    // The same key again writes nothing and hands back the first reply.
    match s.record_turn(&w, &|_| vec![]) {
        Err(Error::AlreadyApplied(r)) => assert_eq!(r, b"reply"),
        other => panic!("expected AlreadyApplied, got {other:?}"),
    }
    assert_eq!(s.transcript("t", "form-1").unwrap().len(), 2);
}

pub(crate) fn retention_removes_old_events_and_refuses_to_read_across_the_gap(b: &dyn Backend) {
    let all = EventFilter {
        tenant: "t".into(),
        ..Default::default()
    };
    {
        let s = b.open();
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
    let s = b.open();
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

pub(crate) fn a_conversation_id_is_claimed_once_and_only_a_live_token_reopens_it(b: &dyn Backend) {
    let s = b.open();
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

pub(crate) fn the_latest_event_of_a_conversation_by_kind(b: &dyn Backend) {
    let s = b.open();
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

/// Runs `f(handle, thread)` on `threads` threads over each of two handles (replicas).
fn on_two_replicas<T: Send>(
    b: &dyn Backend,
    threads: usize,
    f: impl Fn(&dyn Store, usize) -> T + Sync,
) -> Vec<T> {
    let replicas: Vec<Box<dyn Store>> = vec![b.open(), b.open()];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads * 2)
            .map(|i| {
                let (s, f) = (&replicas[i % 2], &f);
                scope.spawn(move || f(s.as_ref(), i))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

pub(crate) fn replicas_write_events_that_a_subscriber_sees_once_and_in_cursor_order(
    b: &dyn Backend,
) {
    const WRITERS: usize = 3;
    const EACH: usize = 40;
    let reader = b.open();
    let all = EventFilter {
        tenant: "t".into(),
        ..Default::default()
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    let (seen, written) = std::thread::scope(|scope| {
        let subscriber = scope.spawn(|| {
            // A subscriber from 0 that polls while the writers write: it must never find a
            // cursor below one it has already passed.
            let (mut cursor, mut seen) = (0u64, vec![]);
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let batch = reader.events_after(cursor, &all, 7).unwrap();
                for e in &batch {
                    assert!(e.cursor > cursor, "cursor {} after {cursor}", e.cursor);
                    cursor = e.cursor;
                    seen.push(e.event.payload["n"].as_u64().unwrap());
                }
                if batch.is_empty() && finished {
                    return seen;
                }
            }
        });
        let written = on_two_replicas(b, WRITERS, |s, w| {
            for i in 0..EACH {
                let n = (w * EACH + i) as u64;
                let mut e = ev("cql_scored", "t", None);
                e.payload = serde_json::json!({ "n": n });
                // Some in a turn's transaction (with other writes), some on their own.
                if i % 2 == 0 {
                    s.append_events(&[e]).unwrap();
                } else {
                    let mut t = turn("t", &format!("c{w}"), i as u32, 1);
                    t.events = vec![e];
                    s.record_turn(&t, &|_| vec![]).unwrap();
                }
            }
        });
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (subscriber.join().unwrap(), written.len())
    });
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "an event seen twice");
    assert_eq!(seen.len(), written * EACH, "every event seen");
}

pub(crate) fn replicas_share_round_robin_fairly(b: &dyn Backend) {
    let reps: Vec<String> = ["a", "b", "c"].iter().map(|x| x.to_string()).collect();
    let picks = on_two_replicas(b, 3, |s, _| {
        (0..50)
            .map(|_| s.round_robin("t", "smb", &reps).unwrap().unwrap())
            .collect::<Vec<_>>()
    });
    let mut count: HashMap<String, i32> = HashMap::new();
    for p in picks.into_iter().flatten() {
        *count.entry(p).or_default() += 1;
    }
    let (max, min) = (count.values().max().unwrap(), count.values().min().unwrap());
    assert_eq!(count.values().sum::<i32>(), 300);
    assert!(max - min <= 1, "{count:?}");
}

pub(crate) fn of_two_concurrent_take_overs_one_wins(b: &dyn Backend) {
    let s = b.open();
    for round in 0..10 {
        let conv = format!("c{round}");
        s.record_turn(&turn("t", &conv, 1, 1), &|_| vec![]).unwrap();
        let outcomes = on_two_replicas(b, 2, |s, i| {
            let rep = format!("rep{i}");
            let control = ConversationControl {
                taken_over_by: Some(rep.clone()),
                closed: false,
            };
            let check = |now: &ConversationControl| match &now.taken_over_by {
                Some(by) if by != &rep => Err(format!("the conversation is with rep {by:?}")),
                _ => Ok(()),
            };
            let mut e = ev("rep_joined", "t", Some(&rep));
            e.conversation_id = Some(conv.clone());
            s.set_control("t", &conv, &control, &check, &[e])
        });
        let wins = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(wins, 1, "{outcomes:?}");
        assert!(outcomes
            .iter()
            .all(|o| o.is_ok() || matches!(o, Err(Error::Conflict(_)))));
        let holder = s.control("t", &conv).unwrap().unwrap().taken_over_by;
        let joined = s
            .latest_event("t", &conv, &["rep_joined"])
            .unwrap()
            .unwrap();
        assert_eq!(joined.event.rep_id, holder, "the event names the winner");
    }
    assert!(matches!(
        s.set_control(
            "t",
            "nope",
            &ConversationControl {
                taken_over_by: None,
                closed: true
            },
            &|_| Ok(()),
            &[]
        ),
        Err(Error::NotFound(_))
    ));
}

pub(crate) fn one_idempotency_key_on_two_replicas_gives_one_lead_and_one_reply(b: &dyn Backend) {
    for round in 0..5 {
        let conv = format!("form-{round}");
        let outcomes = on_two_replicas(b, 2, |s, i| {
            let mut w = turn("t", &conv, 1, 2);
            w.idempotency = Some((
                "qualify".into(),
                format!("k{round}"),
                format!("reply {i}").into_bytes(),
            ));
            match s.record_turn(&w, &|_| vec![]) {
                Ok(_) => None,
                Err(Error::AlreadyApplied(reply)) => Some(reply),
                Err(e) => panic!("a repeated key must not fail: {e}"),
            }
        });
        let s = b.open();
        let stored = s
            .idempotent_get("t", "qualify", &format!("k{round}"))
            .unwrap()
            .unwrap();
        assert_eq!(outcomes.iter().filter(|o| o.is_none()).count(), 1);
        assert!(outcomes.iter().flatten().all(|r| r == &stored), "one reply");
        assert_eq!(
            s.transcript("t", &conv).unwrap().len(),
            2,
            "one turn written"
        );
    }
}

pub(crate) fn concurrent_messages_of_one_conversation_are_all_kept_in_order(b: &dyn Backend) {
    let s = b.open();
    s.record_turn(&turn("t", "c1", 1, 1), &|_| vec![]).unwrap();
    on_two_replicas(b, 2, |s, i| {
        for k in 0..15 {
            let m = Message {
                turn: 0,
                author: Author::Rep,
                text: format!("{i}:{k}"),
                at_ms: 3,
            };
            s.append_messages("t", "c1", &[m], &[]).unwrap();
        }
    });
    let t = s.transcript("t", "c1").unwrap();
    assert_eq!(t.len(), 2 + 4 * 15);
    // Each writer's messages keep their order, all filed under the latest turn.
    for i in 0..4 {
        let mine: Vec<&str> = t
            .iter()
            .filter(|m| m.text.starts_with(&format!("{i}:")))
            .map(|m| m.text.as_str())
            .collect();
        let want: Vec<String> = (0..15).map(|k| format!("{i}:{k}")).collect();
        assert_eq!(mine, want);
    }
    assert!(t[2..].iter().all(|m| m.turn == 1));
}

// Webhook state (the delivery worker's tables).
fn wh_event(tenant: &str, kind: &str, conversation: Option<&str>) -> NewEvent {
    NewEvent {
        kind: kind.into(),
        tenant: tenant.into(),
        conversation_id: conversation.map(str::to_string),
        rep_id: None,
        team: None,
        payload: serde_json::json!({"k": kind}),
    }
}

fn endpoint(id: &str, kinds: &[&str]) -> WebhookEndpoint {
    WebhookEndpoint {
        id: id.into(),
        tenant: "t".into(),
        url: "https://example.invalid/hook".into(),
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
        description: String::new(),
        secret: Secret::new("whsec_c2VjcmV0"),
        previous: None,
        created_ms: 1,
        disabled: None,
        scan_cursor: 0,
        pending: 0,
        oldest_pending: None,
        dead: 0,
    }
}

fn body(e: &Event) -> String {
    format!("body-{}", e.cursor)
}

pub(crate) fn an_endpoints_url_changes_and_keeps_its_cursor(b: &dyn Backend) {
    let s = b.open();
    s.create_endpoint(&endpoint("wh_u", &["cql_scored"]))
        .unwrap();
    s.append_events(&[wh_event("t", "cql_scored", Some("c1"))])
        .unwrap();
    assert_eq!(s.scan_events("wh_u", 100, &body).unwrap(), (1, true));
    s.set_endpoint_url("t", "wh_u", "connector:hubspot https://eu1.example.invalid")
        .unwrap();
    let ep = s.endpoint("t", "wh_u").unwrap().unwrap();
    assert_eq!(ep.url, "connector:hubspot https://eu1.example.invalid");
    assert_eq!(
        (ep.scan_cursor, ep.pending),
        (1, 1),
        "cursor and deliveries kept"
    );
    assert!(matches!(
        s.set_endpoint_url("other", "wh_u", "x"),
        Err(Error::NotFound(_))
    ));
}

pub(crate) fn endpoints_see_only_later_matching_events_of_their_tenant(b: &dyn Backend) {
    let s = b.open();
    s.append_events(&[wh_event("t", "cql_scored", Some("c1"))])
        .unwrap();
    let created = s
        .create_endpoint(&endpoint("wh_1", &["cql_scored"]))
        .unwrap();
    assert_eq!(created.scan_cursor, 1, "starts after what exists");
    assert!(format!("{created:?}").contains("redacted"));
    assert!(!format!("{created:?}").contains("c2VjcmV0"));
    s.append_events(&[
        wh_event("t", "cql_scored", Some("c1")),
        wh_event("t", "account_live", Some("c1")),
        wh_event("other", "cql_scored", Some("c9")),
        wh_event("t", "cql_scored", None),
    ])
    .unwrap();
    assert_eq!(s.scan_events("wh_1", 100, &body).unwrap(), (2, true));
    // A second scan queues nothing again.
    assert_eq!(s.scan_events("wh_1", 100, &body).unwrap(), (0, true));
    let due = s.due_deliveries("wh_1", now_ms(), 10).unwrap();
    let cursors: Vec<u64> = due.iter().map(|d| d.cursor).collect();
    assert_eq!(cursors, [2, 5]);
    assert_eq!(due[0].body, "body-2");
    let ep = s.endpoint("t", "wh_1").unwrap().unwrap();
    assert_eq!(
        (ep.scan_cursor, ep.pending, ep.oldest_pending),
        (5, 2, Some(2))
    );
}

pub(crate) fn a_conversations_later_event_waits_for_the_earlier_one(b: &dyn Backend) {
    let s = b.open();
    s.create_endpoint(&endpoint("wh_1", &[])).unwrap();
    s.append_events(&[
        wh_event("t", "a", Some("c1")),
        wh_event("t", "b", Some("c1")),
        wh_event("t", "c", Some("c2")),
    ])
    .unwrap();
    s.scan_events("wh_1", 100, &body).unwrap();
    let now = now_ms();
    let cursors = |s: &dyn Store, at: i64| -> Vec<u64> {
        s.due_deliveries("wh_1", at, 10)
            .unwrap()
            .iter()
            .map(|d| d.cursor)
            .collect()
    };
    assert_eq!(cursors(s.as_ref(), now), [1, 3]);
    // c1's first event fails and waits a minute: c1's second still waits, c2 does not.
    assert_eq!(s.begin_attempt("wh_1", 1, now + 60_000).unwrap(), Some(1));
    let retry = AttemptResult {
        status: DeliveryStatus::Pending,
        next_attempt_ms: now + 60_000,
        response_status: Some(503),
        response_excerpt: "busy".into(),
    };
    s.finish_attempt("wh_1", 1, &retry).unwrap();
    assert_eq!(cursors(s.as_ref(), now), [3]);
    // Not due yet: it cannot start early (a stale list of due deliveries).
    assert_eq!(s.begin_attempt("wh_1", 1, now + 60_000).unwrap(), None);
    // Delivered: the second is due.
    let ok = AttemptResult {
        status: DeliveryStatus::Delivered,
        response_status: Some(200),
        ..retry.clone()
    };
    s.finish_attempt("wh_1", 1, &ok).unwrap();
    assert_eq!(cursors(s.as_ref(), now), [2, 3]);
    let d = s.delivery("wh_1", 1).unwrap().unwrap();
    assert_eq!(
        (d.attempts, d.status, d.last_status),
        (1, DeliveryStatus::Delivered, Some(200))
    );
    // A delivery no longer pending cannot be started again.
    assert_eq!(s.begin_attempt("wh_1", 1, now).unwrap(), None);
}

pub(crate) fn dead_letters_replay_with_their_cursor_and_ranges_reach_older_events(b: &dyn Backend) {
    let s = b.open();
    s.append_events(&[wh_event("t", "a", Some("c0"))]).unwrap();
    s.create_endpoint(&endpoint("wh_1", &[])).unwrap();
    s.append_events(&[wh_event("t", "a", Some("c1"))]).unwrap();
    s.scan_events("wh_1", 100, &body).unwrap();
    s.begin_attempt("wh_1", 2, 0).unwrap();
    let dead = AttemptResult {
        status: DeliveryStatus::Dead,
        next_attempt_ms: 0,
        response_status: Some(500),
        response_excerpt: "boom".into(),
    };
    s.finish_attempt("wh_1", 2, &dead).unwrap();
    let letters = s.dead_letters("t", None).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].cursor, letters[0].attempts), (2, 1));
    assert_eq!(letters[0].last_response, "boom");
    assert_eq!(s.dead_letters("other", None).unwrap().len(), 0);
    assert_eq!(
        s.replay("t", "wh_1", &ReplaySelection::Dead, &body)
            .unwrap(),
        1
    );
    let d = s.delivery("wh_1", 2).unwrap().unwrap();
    assert_eq!((d.status, d.attempts), (DeliveryStatus::Pending, 0));
    // A range reaches the event from before the endpoint, with its own cursor.
    assert_eq!(
        s.replay(
            "t",
            "wh_1",
            &ReplaySelection::Range { from: 1, to: 2 },
            &body
        )
        .unwrap(),
        1
    );
    assert_eq!(s.delivery("wh_1", 1).unwrap().unwrap().body, "body-1");
    // Retention removes finished deliveries only.
    s.begin_attempt("wh_1", 1, 0).unwrap();
    s.finish_attempt("wh_1", 1, &dead).unwrap();
    assert_eq!(s.prune_deliveries(now_ms() + 1).unwrap(), 1);
    assert_eq!(s.delivery("wh_1", 1).unwrap(), None);
    assert!(s.delivery("wh_1", 2).unwrap().is_some(), "pending stays");
    assert!(matches!(
        s.replay("other", "wh_1", &ReplaySelection::Dead, &body),
        Err(Error::NotFound(_))
    ));
}

pub(crate) fn an_attempt_cut_short_by_a_crash_is_due_again_after_reopening(b: &dyn Backend) {
    let now = now_ms();
    {
        let s = b.open();
        s.create_endpoint(&endpoint("wh_1", &[])).unwrap();
        s.append_events(&[wh_event("t", "a", Some("c1"))]).unwrap();
        s.scan_events("wh_1", 100, &body).unwrap();
        // The attempt starts; the process dies before its result is written.
        assert_eq!(s.begin_attempt("wh_1", 1, now + 5_000).unwrap(), Some(1));
    }
    let s = b.open();
    let d = s.delivery("wh_1", 1).unwrap().unwrap();
    assert_eq!(
        (d.status, d.attempts, d.next_attempt_ms),
        (DeliveryStatus::Pending, 1, now + 5_000)
    );
    assert!(s.due_deliveries("wh_1", now, 10).unwrap().is_empty());
    let due = s.due_deliveries("wh_1", now + 5_000, 10).unwrap();
    assert_eq!(
        (due.len(), due[0].cursor, due[0].body.as_str()),
        (1, 1, "body-1")
    );
    assert_eq!(s.next_due_ms(now).unwrap(), Some(now + 5_000));
}

pub(crate) fn rotation_keeps_the_old_secret_and_delete_removes_deliveries(b: &dyn Backend) {
    let s = b.open();
    s.create_endpoint(&endpoint("wh_1", &[])).unwrap();
    let e = s
        .rotate_endpoint_secret("t", "wh_1", &Secret::new("whsec_bmV3"), 99)
        .unwrap();
    assert_eq!(e.secret.expose(), "whsec_bmV3");
    let (old, until) = e.previous.unwrap();
    assert_eq!((old.expose(), until), ("whsec_c2VjcmV0", 99));
    s.append_events(&[wh_event("t", "a", Some("c1"))]).unwrap();
    s.scan_events("wh_1", 100, &body).unwrap();
    s.disable_endpoint("wh_1", "410 Gone", 5).unwrap();
    assert!(s.due_deliveries("wh_1", now_ms(), 10).unwrap().is_empty());
    assert_eq!(
        s.begin_attempt("wh_1", 1, 0).unwrap(),
        None,
        "a disabled endpoint sends nothing"
    );
    assert_eq!(
        s.next_due_ms(-1).unwrap(),
        None,
        "disabled endpoints are not due"
    );
    assert_eq!(
        s.endpoint("t", "wh_1").unwrap().unwrap().disabled,
        Some((5, "410 Gone".into()))
    );
    assert!(matches!(
        s.delete_endpoint("other", "wh_1"),
        Err(Error::NotFound(_))
    ));
    s.delete_endpoint("t", "wh_1").unwrap();
    assert_eq!(s.delivery("wh_1", 1).unwrap(), None);
    assert!(s.endpoints(None).unwrap().is_empty());
}

pub(crate) fn consumers_their_lag_and_an_endpoints_last_failure(b: &dyn Backend) {
    let s = b.open();
    s.append_events(&[
        ev("a", "t", None),
        ev("b", "t", None),
        ev("c", "u", None),
        ev("d", "t", None),
    ])
    .unwrap();
    s.ack("t", "crm", 2).unwrap();
    s.ack("t", "bi", 1).unwrap();
    s.ack("u", "crm", 3).unwrap();
    assert_eq!(
        s.consumers("t").unwrap(),
        [("bi".to_string(), 1), ("crm".to_string(), 2)]
    );
    assert_eq!(s.count_events_after("t", 2).unwrap(), 1, "cursor 4 only");
    assert_eq!(s.count_events_after("t", 0).unwrap(), 3);
    assert_eq!(s.count_events_after("u", 3).unwrap(), 0);
    s.create_endpoint(&endpoint("wh_1", &[])).unwrap();
    s.append_events(&[wh_event("t", "x", Some("c1"))]).unwrap();
    s.scan_events("wh_1", 100, &body).unwrap();
    assert!(s.last_failure("wh_1").unwrap().is_none(), "not tried yet");
    let now = now_ms();
    assert_eq!(s.begin_attempt("wh_1", 5, now + 60_000).unwrap(), Some(1));
    s.finish_attempt(
        "wh_1",
        5,
        &AttemptResult {
            status: DeliveryStatus::Pending,
            next_attempt_ms: now + 60_000,
            response_status: Some(503),
            response_excerpt: "busy".into(),
        },
    )
    .unwrap();
    let (status, text, _) = s.last_failure("wh_1").unwrap().unwrap();
    assert_eq!((status, text.as_str()), (Some(503), "busy"));
}

pub(crate) fn documents_are_read_after_a_version_latest_per_name(b: &dyn Backend) {
    let (s, other) = (b.open(), b.open());
    assert!(s.documents_after(0).unwrap().is_empty());
    let v1 = s.put_document("t", "playbook.yaml", b"one").unwrap();
    let v2 = other.put_document("u", "playbook.yaml", b"two").unwrap();
    let v3 = s.put_document("t", "playbook.yaml", b"three").unwrap();
    assert!(v1 < v2 && v2 < v3);
    let all = other.documents_after(0).unwrap();
    let got: Vec<(&str, &[u8], u64)> = all
        .iter()
        .map(|d| (d.tenant.as_str(), d.content.as_slice(), d.version))
        .collect();
    assert_eq!(got, [("u", &b"two"[..], v2), ("t", &b"three"[..], v3)]);
    assert_eq!(s.documents_after(v2).unwrap().len(), 1);
    assert!(s.documents_after(v3).unwrap().is_empty());
    assert_eq!(
        other
            .document("t", "playbook.yaml")
            .unwrap()
            .unwrap()
            .content,
        b"three"
    );
    assert!(other.document("t", "intents.yaml").unwrap().is_none());
    s.put_documents(
        "t",
        &[("kb/fact/b", b"1"), ("kb/fact/a", b"2"), ("kb/rep/a", b"3")],
    )
    .unwrap();
    other.put_document("u", "kb/fact/c", b"4").unwrap();
    assert_eq!(
        other.document_names("t", "kb/fact/").unwrap(),
        ["kb/fact/a", "kb/fact/b"]
    );
    assert_eq!(
        s.document_names("t", "kb/%").unwrap(),
        Vec::<String>::new(),
        "no wildcards"
    );
    assert_eq!(
        s.document_names("u", "").unwrap(),
        ["kb/fact/c", "playbook.yaml"]
    );
}

pub(crate) fn documents_put_together_are_seen_all_or_none(b: &dyn Backend) {
    let (s, other) = (b.open(), b.open());
    assert_eq!(s.put_documents("t", &[]).unwrap(), 0);
    // A writer puts batches of 20 while a reader on the other handle follows the versions:
    // every read holds whole batches, and versions only grow.
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for round in 0..30 {
                let docs: Vec<(String, Vec<u8>)> = (0..20)
                    .map(|i| (format!("kb/fact/{i}"), format!("{round}").into_bytes()))
                    .collect();
                let refs: Vec<(&str, &[u8])> = docs
                    .iter()
                    .map(|(n, c)| (n.as_str(), c.as_slice()))
                    .collect();
                s.put_documents("t", &refs).unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut seen = 0u64;
        let mut reads = 0;
        loop {
            let finished = done.load(std::sync::atomic::Ordering::SeqCst);
            let got = other.documents_after(seen).unwrap();
            assert!(
                got.len() % 20 == 0,
                "a read held part of a batch: {} documents",
                got.len()
            );
            for d in &got {
                assert!(d.version > seen, "version {} after {seen}", d.version);
                seen = d.version;
            }
            reads += 1;
            if finished && got.is_empty() {
                break;
            }
        }
        assert!(reads > 1);
    });
    let all = other.documents_after(0).unwrap();
    assert_eq!(all.len(), 20);
    assert!(all.iter().all(|d| d.content == b"29"));
}

pub(crate) fn each_tenants_newest_cursor_after_a_cursor(b: &dyn Backend) {
    let (s, other) = (b.open(), b.open());
    assert!(s.tenant_cursors_after(0).unwrap().is_empty());
    let e1 = s
        .append_events(&[ev("k", "t", None), ev("k", "u", None)])
        .unwrap();
    let e2 = other.append_events(&[ev("k", "t", None)]).unwrap();
    let (t1, u1, t2) = (e1[0].cursor, e1[1].cursor, e2[0].cursor);
    assert_eq!(
        other.tenant_cursors_after(0).unwrap(),
        [("t".to_string(), t2), ("u".to_string(), u1)]
    );
    assert_eq!(s.tenant_cursors_after(u1).unwrap(), [("t".to_string(), t2)]);
    assert!(s.tenant_cursors_after(t2).unwrap().is_empty());
    assert!(t1 < u1 && u1 < t2);
}

pub(crate) fn a_lease_has_one_holder_until_it_expires(b: &dyn Backend) {
    let (s, other) = (b.open(), b.open());
    let later = now_ms() + 60_000;
    // Many claims at once from two replicas: exactly one holder wins.
    let won: Vec<bool> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let st = if i % 2 == 0 { &s } else { &other };
                scope.spawn(move || {
                    st.claim_lease("vectors/t", &format!("r{i}"), later)
                        .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let holder = format!("r{}", won.iter().position(|w| *w).unwrap());
    // The holder renews it; another still cannot take it.
    assert!(s.claim_lease("vectors/t", &holder, later + 1).unwrap());
    assert!(!other.claim_lease("vectors/t", "someone", later).unwrap());
    // Another lease is independent; an expired one goes to the next claimant.
    assert!(other
        .claim_lease("vectors/u", "someone", now_ms() - 1)
        .unwrap());
    assert!(s.claim_lease("vectors/u", "next", later).unwrap());
}
