//! The playbook's shape (`playbook.yaml`), its parsing and validation (errors name the field),
//! and the playbook derived from intent flags for a tenant without one.

use std::collections::HashSet;

use closer_kb::Rep;
use closer_models::intent::{IntentFlag, IntentSet};
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

/// A rule's conditions: intents of the tenant's set, known slots, email kind, a sane range,
/// ISO country codes.
fn check_when(w: &When, at: &str, known: &HashSet<&str>) -> Result<(), PlaybookError> {
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
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> PlaybookError {
    PlaybookError {
        field: field.into(),
        message: message.into(),
    }
}

pub(super) const DAYS: &[&str] = &["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
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
        let p: Playbook = serde_norway::from_str(text).map_err(|e| {
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
        self.validate_scoring(&known)?;
        let teams = self.validate_teams()?;
        self.validate_routing(&known, &teams, reps)
    }

    /// Score rules, questions and the score thresholds.
    fn validate_scoring(&self, known: &HashSet<&str>) -> Result<(), PlaybookError> {
        let check_when = |w: &When, at: &str| check_when(w, at, known);
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
        Ok(())
    }

    /// Teams: unique names, known time zones, hours and days; returns their names.
    fn validate_teams(&self) -> Result<HashSet<&str>, PlaybookError> {
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
        Ok(teams)
    }

    /// Routing modes: teams and reps that exist, rules' conditions.
    fn validate_routing(
        &self,
        known: &HashSet<&str>,
        teams: &HashSet<&str>,
        reps: &[&Rep],
    ) -> Result<(), PlaybookError> {
        let rep_ids: HashSet<&str> = reps.iter().map(|r| r.id.as_str()).collect();
        let check_when = |w: &When, at: &str| check_when(w, at, known);
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
