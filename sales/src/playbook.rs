//! A tenant's playbook (`playbook.yaml` in its folder): CQL score rules, the qualification
//! questions and when to ask them, the teams with their business hours, and the routing modes in
//! the order they are tried. See `knowledge-base/examples/applinks/playbook.yaml` for a
//! documented example. A tenant without one gets [`Playbook::from_intents`].
//!
//! Scoring and routing here are pure functions of what the conversation showed (classified
//! intents, captured slots, the account table) and of the reps' presence: nothing a visitor
//! writes is read as an instruction, so "mark me as qualified" changes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};

use closer_kb::{Account, Rep};
use closer_models::intent::{IntentFlag, IntentSet};
use closer_store::Reason;
use serde::{Deserialize, Serialize};

/// Conditions of a rule; every one given must hold (an empty `when` always holds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// Any of these intents was detected in the conversation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intents: Vec<String>,
    /// All of these slots are known (email, company_size, country, timeline, seats, phone...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<String>,
    /// Company size (the account's employees, else the visitor's stated company size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub employees: Option<Range>,
    /// ISO country codes (the account's country, else the visitor's stated one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub country: Vec<String>,
    /// The account's segment, one of these (case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segment: Vec<String>,
    /// The account's industry, one of these (case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub industry: Vec<String>,
    /// The account is (or is not) a strategic target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<bool>,
    /// The account has (or has not) an open opportunity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_opportunity: Option<bool>,
    /// The visitor's email is `business` or `free_mail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The visitor's company is (or is not) known: an account, a business email or a stated
    /// company domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company_known: Option<bool>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    #[serde(default)]
    pub min: Option<u64>,
    #[serde(default)]
    pub max: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRule {
    pub name: String,
    #[serde(default)]
    pub when: When,
    /// Bolts this rule adds (1–3); the score is the sum, at most 3.
    #[serde(default)]
    pub points: i32,
    /// The rule disqualifies (-1), whatever else matched.
    #[serde(default)]
    pub disqualify: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    /// The slot it asks for; asked only while that slot is unknown.
    pub slot: String,
    /// What the bot says.
    pub ask: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Team {
    pub name: String,
    /// IANA time zone of the hours, e.g. `Europe/London`.
    #[serde(default = "utc")]
    pub timezone: String,
    /// Business hours, `HH:MM-HH:MM`; empty = always.
    #[serde(default)]
    pub hours: String,
    /// Working days (`mon`..`sun`); empty = every day.
    #[serde(default)]
    pub days: Vec<String>,
}

fn utc() -> String {
    "UTC".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    #[serde(default)]
    pub when: When,
    /// Route to this team (round robin among its available reps)...
    #[serde(default)]
    pub team: Option<String>,
    /// ...or to the account's owner (`owner`) or a rep id.
    #[serde(default)]
    pub rep: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum RouteMode {
    /// The visitor's domain → the account's owner, when available.
    AccountOwner,
    /// The first rule whose conditions hold.
    Rules { rules: Vec<RouteRule> },
    /// Round robin among the available reps of a team.
    RoundRobin { team: String },
    /// Nobody available: offer meetings with this team's (or the owner's) reps.
    Fallback {
        #[serde(default)]
        team: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    #[serde(default)]
    pub score_rules: Vec<ScoreRule>,
    /// Qualification questions in the order they are asked.
    #[serde(default)]
    pub questions: Vec<Question>,
    /// Ask questions once the score is at least this (1–3).
    #[serde(default = "one")]
    pub ask_from_score: i32,
    /// Hand the visitor to a rep (route and raise `handoff_requested`) once the score is at
    /// least this; 0 = only when the visitor asks for a person or a question goes unanswered.
    #[serde(default)]
    pub handoff_from_score: i32,
    /// Offer a meeting once the score is at least this; 0 = never unprompted.
    #[serde(default)]
    pub offer_meeting_from_score: i32,
    #[serde(default)]
    pub teams: Vec<Team>,
    #[serde(default)]
    pub routing: Vec<RouteMode>,
}

fn one() -> i32 {
    1
}

/// An invalid playbook: the field that is wrong and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("playbook: {field}: {message}")]
pub struct PlaybookError {
    pub field: String,
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> PlaybookError {
    PlaybookError {
        field: field.into(),
        message: message.into(),
    }
}

const DAYS: &[&str] = &["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const SLOTS: &[&str] = &[
    "email",
    "company_domain",
    "company_size",
    "country",
    "phone",
    "timeline",
    "seats",
];

/// Minutes after midnight of `HH:MM`.
fn minutes(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then(|| h * 60 + m)
}

/// `HH:MM-HH:MM` as minutes after midnight.
pub fn parse_hours(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('-')?;
    let (a, b) = (minutes(a)?, minutes(b)?);
    (a < b).then_some((a, b))
}

impl Playbook {
    /// Parses and validates YAML against the tenant's intents and reps.
    pub fn from_yaml(
        text: &str,
        intents: &IntentSet,
        reps: &[&Rep],
    ) -> Result<Self, PlaybookError> {
        let p: Playbook = serde_yaml::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!("line {}", l.line()))
                .unwrap_or_else(|| "document".into());
            bad(at, e.to_string())
        })?;
        p.validate(intents, reps)?;
        Ok(p)
    }

    pub fn validate(&self, intents: &IntentSet, reps: &[&Rep]) -> Result<(), PlaybookError> {
        let known: HashSet<&str> = intents.intents.iter().map(|i| i.name.as_str()).collect();
        let rep_ids: HashSet<&str> = reps.iter().map(|r| r.id.as_str()).collect();
        let check_when = |w: &When, at: &str| -> Result<(), PlaybookError> {
            for (k, i) in w.intents.iter().enumerate() {
                if !known.contains(i.as_str()) {
                    return Err(bad(
                        format!("{at}.when.intents[{k}]"),
                        format!("no intent {i:?} in the tenant's intent set"),
                    ));
                }
            }
            for (k, s) in w.slots.iter().enumerate() {
                if !SLOTS.contains(&s.as_str()) {
                    return Err(bad(
                        format!("{at}.when.slots[{k}]"),
                        format!("unknown slot {s:?}; one of {}", SLOTS.join(", ")),
                    ));
                }
            }
            if let Some(e) = &w.email {
                if e != "business" && e != "free_mail" {
                    return Err(bad(format!("{at}.when.email"), "business or free_mail"));
                }
            }
            if let Some(Range {
                min: Some(a),
                max: Some(b),
            }) = w.employees
            {
                if a > b {
                    return Err(bad(format!("{at}.when.employees"), "min is above max"));
                }
            }
            for (k, c) in w.country.iter().enumerate() {
                if c.len() != 2 || !c.chars().all(|x| x.is_ascii_uppercase()) {
                    return Err(bad(
                        format!("{at}.when.country[{k}]"),
                        format!("{c:?} is not an ISO 3166-1 alpha-2 code like GB"),
                    ));
                }
            }
            Ok(())
        };
        let mut names = HashSet::new();
        for (i, r) in self.score_rules.iter().enumerate() {
            let at = format!("score_rules[{i}]");
            if r.name.trim().is_empty() {
                return Err(bad(format!("{at}.name"), "empty"));
            }
            if !names.insert(r.name.as_str()) {
                return Err(bad(format!("{at}.name"), format!("duplicate {:?}", r.name)));
            }
            if !r.disqualify && !(1..=3).contains(&r.points) {
                return Err(bad(
                    format!("{at}.points"),
                    "1 to 3 bolts (or `disqualify: true`)",
                ));
            }
            if r.disqualify && r.points != 0 {
                return Err(bad(format!("{at}.points"), "a disqualifier has no points"));
            }
            check_when(&r.when, &at)?;
        }
        let mut asked = HashSet::new();
        for (i, q) in self.questions.iter().enumerate() {
            if !SLOTS.contains(&q.slot.as_str()) {
                return Err(bad(
                    format!("questions[{i}].slot"),
                    format!("unknown slot {:?}", q.slot),
                ));
            }
            if !asked.insert(q.slot.as_str()) {
                return Err(bad(format!("questions[{i}].slot"), "asked twice"));
            }
            if q.ask.trim().is_empty() || q.ask.len() > 300 {
                return Err(bad(format!("questions[{i}].ask"), "1 to 300 characters"));
            }
        }
        for (f, v) in [
            ("ask_from_score", self.ask_from_score),
            ("handoff_from_score", self.handoff_from_score),
            ("offer_meeting_from_score", self.offer_meeting_from_score),
        ] {
            if !(0..=3).contains(&v) {
                return Err(bad(f, "0 to 3"));
            }
        }
        let mut teams = HashSet::new();
        for (i, t) in self.teams.iter().enumerate() {
            let at = format!("teams[{i}]");
            if !teams.insert(t.name.as_str()) {
                return Err(bad(format!("{at}.name"), format!("duplicate {:?}", t.name)));
            }
            if jiff::tz::TimeZone::get(&t.timezone).is_err() {
                return Err(bad(
                    format!("{at}.timezone"),
                    format!("unknown time zone {:?}", t.timezone),
                ));
            }
            if !t.hours.is_empty() && parse_hours(&t.hours).is_none() {
                return Err(bad(format!("{at}.hours"), "HH:MM-HH:MM, start before end"));
            }
            for (k, d) in t.days.iter().enumerate() {
                if !DAYS.contains(&d.as_str()) {
                    return Err(bad(format!("{at}.days[{k}]"), "mon, tue, ... sun"));
                }
            }
        }
        let team_ok = |t: &str, at: String| -> Result<(), PlaybookError> {
            if t == ALL_REPS || teams.contains(t) || reps.iter().any(|r| r.team == t) {
                Ok(())
            } else {
                Err(bad(
                    at,
                    format!("no team {t:?} (in teams or the reps' team column)"),
                ))
            }
        };
        for (i, m) in self.routing.iter().enumerate() {
            let at = format!("routing[{i}]");
            match m {
                RouteMode::AccountOwner => {}
                RouteMode::RoundRobin { team } => team_ok(team, format!("{at}.team"))?,
                RouteMode::Fallback { team } => {
                    if let Some(t) = team {
                        team_ok(t, format!("{at}.team"))?;
                    }
                }
                RouteMode::Rules { rules } => {
                    for (k, r) in rules.iter().enumerate() {
                        let at = format!("{at}.rules[{k}]");
                        check_when(&r.when, &at)?;
                        match (&r.team, &r.rep) {
                            (Some(t), None) => team_ok(t, format!("{at}.team"))?,
                            (None, Some(r)) if r == "owner" || rep_ids.contains(r.as_str()) => {}
                            (None, Some(r)) => {
                                return Err(bad(format!("{at}.rep"), format!("no rep {r:?}")))
                            }
                            _ => return Err(bad(at, "give exactly one of team or rep")),
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The playbook of a tenant that has none: disqualifying intents disqualify, each buying
    /// signal adds a bolt, a request for a person adds two; routing goes to the account owner,
    /// then round robin over all reps.
    pub fn from_intents(set: &IntentSet) -> Self {
        let mut rules = vec![];
        for i in &set.intents {
            if i.flags.contains(&IntentFlag::Disqualify) {
                rules.push(ScoreRule {
                    name: format!("disqualify:{}", i.name),
                    when: When {
                        intents: vec![i.name.clone()],
                        ..When::default()
                    },
                    points: 0,
                    disqualify: true,
                });
            } else if i.flags.contains(&IntentFlag::BuyingSignal) {
                let points = if i.flags.contains(&IntentFlag::Handoff) {
                    2
                } else {
                    1
                };
                rules.push(ScoreRule {
                    name: format!("signal:{}", i.name),
                    when: When {
                        intents: vec![i.name.clone()],
                        ..When::default()
                    },
                    points,
                    disqualify: false,
                });
            }
        }
        Self {
            score_rules: rules,
            questions: vec![],
            ask_from_score: 1,
            handoff_from_score: 0,
            offer_meeting_from_score: 0,
            teams: vec![],
            routing: vec![
                RouteMode::AccountOwner,
                RouteMode::RoundRobin {
                    team: ALL_REPS.into(),
                },
                RouteMode::Fallback { team: None },
            ],
        }
    }

    pub fn team(&self, name: &str) -> Option<&Team> {
        self.teams.iter().find(|t| t.name == name)
    }
}

/// The team name that means every rep.
pub const ALL_REPS: &str = "all";

/// A slot's value as the conversation knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotValue {
    pub value: String,
    /// For e-mails: `business` or `free_mail`; empty otherwise.
    pub detail: String,
    /// The turn it was captured in (0: from the visitor context or the store).
    pub turn: u32,
}

impl SlotValue {
    pub fn new(value: &str, detail: &str, turn: u32) -> Self {
        SlotValue {
            value: value.to_string(),
            detail: detail.to_string(),
            turn,
        }
    }
}

/// What a conversation has shown so far.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Intent name → first turn it was detected.
    pub intents: BTreeMap<String, u32>,
    /// Slot name → its value.
    pub slots: BTreeMap<String, SlotValue>,
    /// The visitor's account, when the domain is in the accounts table.
    pub account: Option<Account>,
    pub domain: Option<String>,
}

impl Seen {
    fn employees(&self) -> Option<(u64, u32, &'static str)> {
        if let Some(n) = self.account.as_ref().and_then(|a| a.employees) {
            return Some((u64::from(n), 0, "account employees"));
        }
        let s = self.slots.get("company_size")?;
        Some((s.value.parse().ok()?, s.turn, "stated company size"))
    }

    fn country(&self) -> Option<(String, u32)> {
        if let Some(a) = &self.account {
            if !a.country.is_empty() {
                return Some((a.country.to_ascii_uppercase(), 0));
            }
        }
        self.slots.get("country").map(|s| (s.value.clone(), s.turn))
    }

    fn company_known(&self) -> bool {
        self.account.is_some()
            || self.domain.is_some()
            || self.slots.contains_key("company_domain")
            || self
                .slots
                .get("email")
                .is_some_and(|s| s.detail == "business")
    }
}

/// Checks a rule's conditions; on success, what matched and the turn it showed (the latest of
/// the conditions' turns).
pub fn matches(w: &When, seen: &Seen) -> Option<(u32, String)> {
    let mut turn = 0u32;
    let mut what: Vec<String> = vec![];
    if !w.intents.is_empty() {
        let (name, t) = w
            .intents
            .iter()
            .filter_map(|i| seen.intents.get(i).map(|t| (i, *t)))
            .min_by_key(|x| x.1)?;
        turn = turn.max(t);
        what.push(format!("intent {name}"));
    }
    for s in &w.slots {
        let v = seen.slots.get(s)?;
        turn = turn.max(v.turn);
        what.push(format!("{s} {}", v.value));
    }
    if let Some(r) = w.employees {
        let (n, t, src) = seen.employees()?;
        if r.min.is_some_and(|m| n < m) || r.max.is_some_and(|m| n > m) {
            return None;
        }
        turn = turn.max(t);
        what.push(format!("{src} {n}"));
    }
    if !w.country.is_empty() {
        let (c, t) = seen.country()?;
        if !w.country.contains(&c) {
            return None;
        }
        turn = turn.max(t);
        what.push(format!("country {c}"));
    }
    let acc = seen.account.as_ref();
    let one_of = |list: &[String], v: &str| list.iter().any(|x| x.eq_ignore_ascii_case(v));
    if !w.segment.is_empty() {
        let a = acc?;
        if !one_of(&w.segment, &a.segment) {
            return None;
        }
        what.push(format!("segment {}", a.segment));
    }
    if !w.industry.is_empty() {
        let a = acc?;
        if !one_of(&w.industry, &a.industry) {
            return None;
        }
        what.push(format!("industry {}", a.industry));
    }
    if let Some(want) = w.target {
        if acc.is_some_and(|a| a.target) != want {
            return None;
        }
        what.push(format!("target account {want}"));
    }
    if let Some(want) = w.open_opportunity {
        if acc.is_some_and(|a| a.open_opportunity) != want {
            return None;
        }
        what.push(format!("open opportunity {want}"));
    }
    if let Some(kind) = &w.email {
        let v = seen.slots.get("email")?;
        if &v.detail != kind {
            return None;
        }
        turn = turn.max(v.turn);
        what.push(format!("{kind} email {}", v.value));
    }
    if let Some(want) = w.company_known {
        if seen.company_known() != want {
            return None;
        }
        what.push(format!("company known {want}"));
    }
    Some((turn, what.join(", ")))
}

/// The CQL score the playbook gives and its reasons: -1 when a disqualifier matched (the
/// reasons are the disqualifiers), else the sum of the matched rules' points, at most 3 (0 when
/// none matched).
pub fn score(p: &Playbook, seen: &Seen) -> (i32, Vec<Reason>) {
    let mut plus = vec![];
    let mut minus = vec![];
    for r in &p.score_rules {
        if let Some((turn, detail)) = matches(&r.when, seen) {
            let reason = Reason {
                rule: r.name.clone(),
                turn,
                detail,
                points: if r.disqualify { -1 } else { r.points },
            };
            if r.disqualify {
                minus.push(reason);
            } else {
                plus.push(reason);
            }
        }
    }
    if !minus.is_empty() {
        return (-1, minus);
    }
    let total = plus.iter().map(|r| r.points).sum::<i32>().min(3);
    (total, plus)
}

/// A rep's availability now, as routing sees it.
#[derive(Debug, Clone, Default)]
pub struct Availability {
    /// Rep id → (online, capacity); reps without an entry count as online without a limit.
    pub presence: HashMap<String, (bool, u32)>,
    /// Rep id → open conversations.
    pub load: HashMap<String, u32>,
    /// Unix seconds, for business hours.
    pub now: i64,
}

impl Availability {
    pub fn rep_free(&self, rep: &str) -> bool {
        let (online, cap) = self.presence.get(rep).copied().unwrap_or((true, 0));
        online && (cap == 0 || self.load.get(rep).copied().unwrap_or(0) < cap)
    }
}

/// Whether a team works at `now`.
pub fn team_open(t: &Team, now: i64) -> bool {
    let Ok(tz) = jiff::tz::TimeZone::get(&t.timezone) else {
        return true;
    };
    let Ok(ts) = jiff::Timestamp::from_second(now) else {
        return true;
    };
    let local = ts.to_zoned(tz);
    let day = DAYS[local.weekday().to_monday_zero_offset() as usize];
    if !t.days.is_empty() && !t.days.iter().any(|d| d == day) {
        return false;
    }
    match parse_hours(&t.hours) {
        Some((a, b)) => {
            let m = local.hour() as u32 * 60 + local.minute() as u32;
            a <= m && m < b
        }
        None => true,
    }
}

/// Where routing sent a conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    Rep {
        rep_id: String,
        team: Option<String>,
        /// The mode that chose it: `account_owner`, `rules`, `round_robin`.
        mode: &'static str,
        detail: String,
    },
    /// Nobody is available: offer meetings with these reps.
    Fallback {
        reps: Vec<String>,
        team: Option<String>,
    },
    /// The playbook has no mode that applies.
    Nobody,
}

/// Routes a conversation by the playbook's modes, in order. `round_robin` picks among
/// candidates (in order) and records the choice; it is the store's fair counter.
pub fn route(
    p: &Playbook,
    seen: &Seen,
    reps: &[&Rep],
    avail: &Availability,
    round_robin: &mut dyn FnMut(&str, &[String]) -> Option<String>,
) -> Route {
    let team_reps = |team: &str| -> Vec<String> {
        let open = p.team(team).is_none_or(|t| team_open(t, avail.now));
        reps.iter()
            .filter(|r| team == ALL_REPS || r.team == team)
            .filter(|r| open && avail.rep_free(&r.id))
            .map(|r| r.id.clone())
            .collect()
    };
    let rep_team = |id: &str| {
        reps.iter()
            .find(|r| r.id == id)
            .map(|r| r.team.clone())
            .filter(|t| !t.is_empty())
    };
    let owner = seen.account.as_ref().map(|a| a.owner_rep_id.clone());
    for m in &p.routing {
        match m {
            RouteMode::AccountOwner => {
                if let Some(o) = &owner {
                    let open = rep_team(o)
                        .and_then(|t| p.team(&t).cloned())
                        .is_none_or(|t| team_open(&t, avail.now));
                    if open && avail.rep_free(o) {
                        return Route::Rep {
                            rep_id: o.clone(),
                            team: rep_team(o),
                            mode: "account_owner",
                            detail: format!(
                                "owner of {}",
                                seen.account.as_ref().map_or("", |a| a.domain.as_str())
                            ),
                        };
                    }
                }
            }
            RouteMode::Rules { rules } => {
                for r in rules {
                    let Some((_, why)) = matches(&r.when, seen) else {
                        continue;
                    };
                    if let Some(team) = &r.team {
                        let cands = team_reps(team);
                        if let Some(rep_id) = round_robin(team, &cands) {
                            return Route::Rep {
                                rep_id,
                                team: Some(team.clone()),
                                mode: "rules",
                                detail: why,
                            };
                        }
                    } else if let Some(rep) = &r.rep {
                        let id = if rep == "owner" {
                            owner.clone()
                        } else {
                            Some(rep.clone())
                        };
                        if let Some(id) = id.filter(|i| avail.rep_free(i)) {
                            return Route::Rep {
                                team: rep_team(&id),
                                rep_id: id,
                                mode: "rules",
                                detail: why,
                            };
                        }
                    }
                    // The first matching rule decides; if nobody there is free, go on.
                    break;
                }
            }
            RouteMode::RoundRobin { team } => {
                let cands = team_reps(team);
                if let Some(rep_id) = round_robin(team, &cands) {
                    return Route::Rep {
                        rep_id,
                        team: (team != ALL_REPS).then(|| team.clone()),
                        mode: "round_robin",
                        detail: format!("round robin in {team}"),
                    };
                }
            }
            RouteMode::Fallback { team } => {
                let reps: Vec<String> = match (&owner, team) {
                    (Some(o), None) => vec![o.clone()],
                    (_, Some(t)) => reps
                        .iter()
                        .filter(|r| t == ALL_REPS || &r.team == t)
                        .map(|r| r.id.clone())
                        .collect(),
                    (None, None) => reps.iter().map(|r| r.id.clone()).collect(),
                };
                return Route::Fallback {
                    reps,
                    team: team.clone(),
                };
            }
        }
    }
    Route::Nobody
}

#[cfg(test)]
mod tests {
    use super::*;

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
