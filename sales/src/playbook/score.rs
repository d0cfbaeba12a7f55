//! CQL scoring: what a conversation has shown, and the score with one reason per rule.

use std::collections::BTreeMap;

use closer_kb::Account;
use closer_store::Reason;

use super::model::*;

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
    /// The account is only claimed (the tenant checks identity and it is not verified).
    pub account_claimed: bool,
    /// A claimed account's facts count anyway (the tenant opted in).
    pub count_claimed: bool,
}

impl Seen {
    /// The account whose facts the score may use.
    fn scored_account(&self) -> Option<&Account> {
        self.account
            .as_ref()
            .filter(|_| !self.account_claimed || self.count_claimed)
    }

    fn employees(&self) -> Option<(u64, u32, &'static str)> {
        if let Some(n) = self.scored_account().and_then(|a| a.employees) {
            return Some((u64::from(n), 0, "account employees"));
        }
        let s = self.slots.get("company_size")?;
        Some((s.value.parse().ok()?, s.turn, "stated company size"))
    }

    fn country(&self) -> Option<(String, u32)> {
        if let Some(a) = self.scored_account() {
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
    let acc = seen.scored_account();
    // "(claimed)" on account facts the visitor only claimed (counted by the tenant's choice).
    let claimed = if seen.account_claimed {
        " (claimed)"
    } else {
        ""
    };
    let one_of = |list: &[String], v: &str| list.iter().any(|x| x.eq_ignore_ascii_case(v));
    if !w.segment.is_empty() {
        let a = acc?;
        if !one_of(&w.segment, &a.segment) {
            return None;
        }
        what.push(format!("segment {}{claimed}", a.segment));
    }
    if !w.industry.is_empty() {
        let a = acc?;
        if !one_of(&w.industry, &a.industry) {
            return None;
        }
        what.push(format!("industry {}{claimed}", a.industry));
    }
    if let Some(want) = w.target {
        if acc.is_some_and(|a| a.target) != want {
            return None;
        }
        what.push(format!("target account {want}{claimed}"));
    }
    if let Some(want) = w.open_opportunity {
        if acc.is_some_and(|a| a.open_opportunity) != want {
            return None;
        }
        what.push(format!("open opportunity {want}{claimed}"));
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
