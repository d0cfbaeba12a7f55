//! A tenant's playbook (`playbook.yaml` in its folder): CQL score rules, the qualification
//! questions and when to ask them, the teams with their business hours, and the routing modes in
//! the order they are tried. See `knowledge-base/examples/applinks/playbook.yaml` for a
//! documented example. A tenant without one gets [`Playbook::from_intents`].
//!
//! Scoring and routing here are pure functions of what the conversation showed (classified
//! intents, captured slots, the account table) and of the reps' presence: nothing a visitor
//! writes is read as an instruction, so "mark me as qualified" changes nothing.

mod model;
mod route;
mod score;

pub use model::*;
pub use route::*;
pub use score::*;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use closer_kb::{Account, Rep};
    use closer_models::intent::IntentSet;

    fn example_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../knowledge-base/examples/applinks")
    }

    fn intents() -> IntentSet {
        IntentSet::from_yaml(&std::fs::read_to_string(example_dir().join("intents.yaml")).unwrap())
            .unwrap()
    }

    fn reps() -> Vec<Rep> {
        closer_kb::load::read_reps(&example_dir().join("reps.csv")).unwrap()
    }

    #[test]
    fn office_hours_parse_and_huge_hours_are_refused_not_overflowed() {
        assert_eq!(parse_hours("09:00-17:30"), Some((540, 1050)));
        assert_eq!(parse_hours("17:00-09:00"), None);
        assert_eq!(parse_hours("24:01-24:30"), None);
        // Found by the playbook fuzz target: the hour times 60 overflowed u32 (a panic where
        // overflow is checked; `fuzz/seeds/playbook-hours-overflow.yaml` replays it there).
        assert_eq!(parse_hours("000000962987587:00-18:00"), None);
        assert_eq!(parse_hours("4294967295:00-18:00"), None);
    }

    fn accounts() -> Vec<Account> {
        closer_kb::load::read_accounts(&example_dir().join("accounts.csv")).unwrap()
    }

    fn example() -> Playbook {
        let reps = reps();
        let refs: Vec<&Rep> = reps.iter().collect();
        Playbook::from_yaml(
            &std::fs::read_to_string(example_dir().join("playbook.yaml")).unwrap(),
            &intents(),
            &refs,
        )
        .unwrap()
    }

    /// A conversation: (turn, intents) and (turn, slot, value, detail), and an account domain.
    fn seen(
        intents: &[(u32, &str)],
        slots: &[(u32, &str, &str, &str)],
        domain: Option<&str>,
    ) -> Seen {
        let mut s = Seen::default();
        for (t, i) in intents {
            s.intents.entry(i.to_string()).or_insert(*t);
        }
        for (t, k, v, d) in slots {
            s.slots.insert(k.to_string(), SlotValue::new(v, d, *t));
        }
        s.account = domain.and_then(|d| accounts().into_iter().find(|a| a.domain == d));
        s.domain = domain.map(str::to_string);
        s
    }

    #[test]
    fn scores_follow_the_rules_table() {
        let p = example();
        // (conversation, expected score, expected rules)
        let table: Vec<(Seen, i32, Vec<&str>)> = vec![
            (seen(&[], &[], None), 0, vec![]),
            (seen(&[(1, "greeting")], &[], None), 0, vec![]),
            (
                seen(&[(1, "pricing")], &[], None),
                1,
                vec!["pricing_interest"],
            ),
            (
                seen(&[(1, "pricing"), (2, "book_demo")], &[], None),
                2,
                vec!["pricing_interest", "wants_demo_or_trial"],
            ),
            (
                seen(
                    &[(1, "talk_to_human")],
                    &[(1, "timeline", "this quarter", "")],
                    None,
                ),
                3,
                vec!["asked_for_sales", "buying_timeline"],
            ),
            // Capped at 3 bolts.
            (
                seen(
                    &[(1, "pricing"), (1, "talk_to_human")],
                    &[],
                    Some("acme.com"),
                ),
                3,
                vec![
                    "pricing_interest",
                    "asked_for_sales",
                    "fits_company_size",
                    "target_account",
                ],
            ),
            // Small company from its stated size: no fit bolt.
            (
                seen(&[(1, "pricing")], &[(2, "company_size", "12", "")], None),
                1,
                vec!["pricing_interest"],
            ),
            (
                seen(&[(1, "pricing")], &[(2, "company_size", "80", "")], None),
                2,
                vec!["pricing_interest", "fits_company_size"],
            ),
            // Disqualifiers win over any bolts.
            (
                seen(
                    &[(1, "pricing"), (2, "disqualify_student")],
                    &[],
                    Some("acme.com"),
                ),
                -1,
                vec!["student"],
            ),
            (seen(&[(1, "jobs")], &[], None), -1, vec!["job_seeker"]),
            (
                seen(
                    &[(1, "pricing")],
                    &[(1, "email", "kim@gmail.com", "free_mail")],
                    None,
                ),
                -1,
                vec!["free_mail_and_no_company"],
            ),
            // A free-mail address from a known account is not disqualified.
            (
                seen(
                    &[(1, "pricing")],
                    &[(1, "email", "kim@gmail.com", "free_mail")],
                    Some("umbrella.io"),
                ),
                1,
                vec!["pricing_interest"],
            ),
        ];
        for (i, (s, want, rules)) in table.into_iter().enumerate() {
            let (got, reasons) = score(&p, &s);
            let names: Vec<&str> = reasons.iter().map(|r| r.rule.as_str()).collect();
            assert_eq!((got, names), (want, rules), "row {i}");
        }
    }

    #[test]
    fn reasons_name_the_turn_and_what_matched() {
        let p = example();
        let s = seen(&[(1, "pricing")], &[(3, "company_size", "80", "")], None);
        let (_, reasons) = score(&p, &s);
        assert_eq!(reasons[0].turn, 1);
        assert_eq!(reasons[0].detail, "intent pricing");
        assert_eq!(reasons[1].turn, 3);
        assert_eq!(reasons[1].detail, "stated company size 80");
    }

    fn at(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_second()
    }

    #[test]
    fn routing_tries_owner_rules_round_robin_then_fallback() {
        let p = example();
        let reps = reps();
        let refs: Vec<&Rep> = reps.iter().collect();
        // Tuesday 15:00 UTC: every team is open.
        let open = Availability {
            now: at("2026-11-24T15:00:00Z"),
            ..Availability::default()
        };
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut rr = |_team: &str, c: &[String]| -> Option<String> {
            let best = c
                .iter()
                .min_by_key(|r| counts.get(*r).copied().unwrap_or(0))?;
            *counts.entry(best.clone()).or_default() += 1;
            Some(best.clone())
        };
        let owner = route(&p, &seen(&[], &[], Some("acme.com")), &refs, &open, &mut rr);
        assert!(
            matches!(&owner, Route::Rep { rep_id, mode: "account_owner", .. } if rep_id == "r-chelsea"),
            "{owner:?}"
        );
        let uk = route(
            &p,
            &seen(&[], &[(1, "country", "GB", "")], None),
            &refs,
            &open,
            &mut rr,
        );
        assert!(
            matches!(&uk, Route::Rep { rep_id, mode: "rules", .. } if rep_id == "r-priya"),
            "{uk:?}"
        );
        let smb = route(
            &p,
            &seen(&[], &[(1, "company_size", "100", "")], None),
            &refs,
            &open,
            &mut rr,
        );
        assert!(
            matches!(&smb, Route::Rep { rep_id, team: Some(t), .. } if rep_id == "r-daniel" && t == "commercial"),
            "{smb:?}"
        );
        // The owner offline: the target-account rule wants the owner too, then the company
        // size rule sends it to enterprise, whose only rep is the owner: round robin.
        let mut away = open.clone();
        away.presence.insert("r-chelsea".into(), (false, 0));
        let r = route(&p, &seen(&[], &[], Some("acme.com")), &refs, &away, &mut rr);
        assert!(
            matches!(&r, Route::Rep { rep_id, mode: "round_robin", .. } if rep_id == "r-daniel"),
            "{r:?}"
        );
        // Online but at capacity (one open conversation of one allowed): skipped the same way.
        let mut full = open.clone();
        full.presence.insert("r-chelsea".into(), (true, 1));
        full.load.insert("r-chelsea".into(), 1);
        let r = route(&p, &seen(&[], &[], Some("acme.com")), &refs, &full, &mut rr);
        assert!(
            matches!(&r, Route::Rep { rep_id, mode: "round_robin", .. } if rep_id == "r-daniel"),
            "{r:?}"
        );
        full.presence.insert("r-chelsea".into(), (true, 2));
        let r = route(&p, &seen(&[], &[], Some("acme.com")), &refs, &full, &mut rr);
        assert!(
            matches!(&r, Route::Rep { rep_id, mode: "account_owner", .. } if rep_id == "r-chelsea"),
            "room for one more: {r:?}"
        );
        // Saturday: every team closed, so the fallback offers meetings.
        let weekend = Availability {
            now: at("2026-11-28T15:00:00Z"),
            ..Availability::default()
        };
        let r = route(&p, &seen(&[], &[], None), &refs, &weekend, &mut rr);
        assert_eq!(
            r,
            Route::Fallback {
                reps: vec!["r-daniel".into()],
                team: Some("commercial".into())
            }
        );
    }

    #[test]
    fn invalid_playbooks_name_the_field() {
        let reps = reps();
        let refs: Vec<&Rep> = reps.iter().collect();
        let check = |y: &str| Playbook::from_yaml(y, &intents(), &refs).unwrap_err().field;
        assert_eq!(
            check("score_rules:\n  - name: x\n    when: { intents: [nope] }\n    points: 1\n"),
            "score_rules[0].when.intents[0]"
        );
        assert_eq!(
            check("score_rules:\n  - name: x\n    points: 5\n"),
            "score_rules[0].points"
        );
        assert_eq!(
            check("teams:\n  - name: a\n    timezone: Mars/Olympus\n"),
            "teams[0].timezone"
        );
        assert_eq!(
            check("teams:\n  - name: a\n    hours: '18:00-09:00'\n"),
            "teams[0].hours"
        );
        assert_eq!(
            check("routing:\n  - mode: round_robin\n    team: nobody\n"),
            "routing[0].team"
        );
        assert_eq!(check("routing:\n  - mode: teleport\n"), "line 2");
        assert_eq!(
            check("questions:\n  - slot: shoe_size\n    ask: What size?\n"),
            "questions[0].slot"
        );
        assert_eq!(check("score_rulez: []\n"), "line 1");
    }

    #[test]
    fn the_default_playbook_comes_from_intent_flags() {
        let p = Playbook::from_intents(&intents());
        let reps = reps();
        let refs: Vec<&Rep> = reps.iter().collect();
        p.validate(&intents(), &refs).unwrap();
        assert_eq!(score(&p, &seen(&[(1, "talk_to_human")], &[], None)).0, 2);
        assert_eq!(score(&p, &seen(&[(1, "jobs")], &[], None)).0, -1);
    }
}
