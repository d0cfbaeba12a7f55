//! A conversation's selling state: what it has shown (intents, slots, account), its CQL score,
//! where it is routed, the qualification questions asked, the meeting times on offer, and who
//! has it (bot or rep). Rebuilt from the store when a conversation continues.

use std::collections::HashSet;

use closer_kb::Snapshot;
use closer_models::IntentPrediction;
use closer_store::{Author, Reason, Store};

use crate::engine::{Engine, Tenant};
use crate::error::Result;
use crate::playbook::{self, Availability, Playbook, Route, Seen, SlotValue};
use crate::visitor::Visitor;

/// Where a conversation is routed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routing {
    pub rep_id: Option<String>,
    pub team: Option<String>,
}

/// One conversation's selling state. Rebuilt from the store when a conversation continues on
/// another replica or after a restart ([`Conversation::resume`]).
#[derive(Debug, Clone)]
pub struct Conversation {
    pub tenant: String,
    pub id: String,
    pub seen: Seen,
    /// The playbook's score now.
    pub score: i32,
    pub reasons: Vec<Reason>,
    /// Where it was routed.
    pub routed: Option<Routing>,
    pub handed_off: bool,
    /// Slots whose question was asked.
    pub asked: HashSet<String>,
    pub account_live_sent: bool,
    pub turns: u32,
    /// Meeting slots offered and not yet taken (the visitor may pick one next turn).
    pub proposed: Vec<crate::meetings::Slot>,
    pub meeting_booked: bool,
    /// The rep who has taken the conversation over, while they have it.
    pub taken_over: Option<String>,
    /// The visitor's checked identity, when the tenant checks identity.
    pub identity: Option<crate::visitor::Identity>,
    /// The tenant counts a claimed account's facts in the score.
    pub count_claimed: bool,
}

fn email_detail(email: &str) -> &'static str {
    match email.rsplit_once('@') {
        Some((_, d)) if crate::slots::is_free_mail(d) => "free_mail",
        _ => "business",
    }
}

impl Conversation {
    /// A conversation nothing is known of yet.
    pub fn new(tenant: &str, id: &str) -> Self {
        Conversation {
            tenant: tenant.to_string(),
            id: id.to_string(),
            seen: Seen::default(),
            score: 0,
            reasons: vec![],
            routed: None,
            handed_off: false,
            asked: HashSet::new(),
            account_live_sent: false,
            turns: 0,
            proposed: vec![],
            meeting_booked: false,
            taken_over: None,
            identity: None,
            count_claimed: false,
        }
    }

    /// The state of `id`: from the store when it has the conversation, else new.
    pub fn resume(store: &dyn Store, tenant: &Tenant, id: &str, visitor: &Visitor) -> Result<Self> {
        let mut c = Conversation::new(&tenant.id, id);
        c.seen.domain = visitor.domain.clone();
        c.identity = visitor.identity.clone();
        c.count_claimed = tenant.kb.profile.count_claimed_accounts;
        if let Some(e) = &visitor.email {
            c.seen.slots.insert(
                "email".into(),
                SlotValue::new(&e.to_lowercase(), email_detail(e), 0),
            );
        }
        if let Some(ctl) = store.control(&tenant.id, id)? {
            c.taken_over = ctl.taken_over_by;
        }
        // Meeting times offered and not yet taken stay on offer when the conversation continues
        // on another stream (a reload, `Send`, another replica).
        match store.latest_event(&tenant.id, id, &["meeting_proposed", "meeting_booked"])? {
            Some(e) if e.event.kind == "meeting_proposed" => {
                let p = &e.event.payload;
                let rep_id = p["rep_id"].as_str().unwrap_or_default().to_string();
                c.proposed = p["slots"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| {
                        Some(crate::meetings::Slot {
                            rep_id: rep_id.clone(),
                            start: s["start"].as_i64()?,
                            end: s["end"].as_i64()?,
                        })
                    })
                    .collect();
            }
            Some(_) => c.meeting_booked = true,
            None => {}
        }
        if let Some(lead) = store.lead(&tenant.id, id)? {
            c.turns = lead.turns;
            c.score = lead.bot_score;
            c.reasons = lead.reasons.clone();
            c.seen.intents = lead.intents.clone();
            for (k, v) in &lead.slots {
                let detail = if k == "email" { email_detail(v) } else { "" };
                c.seen
                    .slots
                    .entry(k.clone())
                    .or_insert(SlotValue::new(v, detail, 0));
            }
            c.seen.domain = c.seen.domain.take().or(lead.domain.clone());
            c.routed = (lead.rep_id.is_some() || lead.team.is_some()).then(|| Routing {
                rep_id: lead.rep_id.clone(),
                team: lead.team.clone(),
            });
            c.handed_off = c.routed.is_some();
            c.account_live_sent = c.turns > 0;
            let pb = tenant.playbook();
            for m in store.transcript(&tenant.id, id)? {
                if m.author == Author::Bot {
                    for q in &pb.questions {
                        if m.text.contains(&q.ask) {
                            c.asked.insert(q.slot.clone());
                        }
                    }
                }
            }
        }
        Ok(c)
    }

    /// Records what a turn showed; returns the intents seen for the first time.
    pub fn observe(
        &mut self,
        turn: u32,
        intents: &[IntentPrediction],
        slots: &[crate::slots::Slot],
        kb: &Snapshot,
    ) -> Vec<String> {
        self.turns = turn;
        let mut new = vec![];
        for i in intents {
            if !self.seen.intents.contains_key(&i.name) {
                self.seen.intents.insert(i.name.clone(), turn);
                new.push(i.name.clone());
            }
        }
        for s in slots {
            self.seen
                .slots
                .insert(s.name.to_string(), SlotValue::new(&s.value, s.detail, turn));
        }
        if self.seen.domain.is_none() {
            // A stated company domain, or a business email's domain, names the company.
            self.seen.domain = self
                .seen
                .slots
                .get("company_domain")
                .map(|s| s.value.clone())
                .or_else(|| {
                    self.seen
                        .slots
                        .get("email")
                        .filter(|s| s.detail == "business")
                        .and_then(|s| s.value.rsplit_once('@').map(|x| x.1.to_string()))
                });
        }
        self.seen.account = self
            .seen
            .domain
            .as_deref()
            .and_then(|d| kb.account(d))
            .cloned();
        // With identity checked, an account the visitor only claims (a sent or typed domain or
        // e-mail nobody signed) counts in the score only when the tenant opts in.
        self.seen.account_claimed = match (&self.identity, &self.seen.account) {
            (Some(i), Some(a)) => i.verified_domain.as_deref() != Some(a.domain.as_str()),
            _ => false,
        };
        self.seen.count_claimed = self.count_claimed;
        new
    }

    /// Whether a slot's answer is known, from the visitor or from the account table.
    fn knows(&self, slot: &str) -> bool {
        if self.seen.slots.contains_key(slot) {
            return true;
        }
        let a = self.seen.account.as_ref();
        match slot {
            "company_size" => a.is_some_and(|a| a.employees.is_some()),
            "country" => a.is_some_and(|a| !a.country.is_empty()),
            "company_domain" => self.seen.domain.is_some(),
            _ => false,
        }
    }

    /// The next qualification question, if one is due: the first in the playbook's order whose
    /// slot is unknown and that was not asked yet, once the score allows.
    pub fn next_question<'p>(&mut self, pb: &'p Playbook, score: i32) -> Option<&'p str> {
        if score < 0 || score < pb.ask_from_score {
            return None;
        }
        let q = pb
            .questions
            .iter()
            .find(|q| !self.knows(&q.slot) && !self.asked.contains(&q.slot))?;
        self.asked.insert(q.slot.clone());
        Some(&q.ask)
    }
}

/// Routes by the playbook with the store's presence, load and round-robin counters.
pub fn route(engine: &Engine, tenant: &Tenant, pb: &Playbook, seen: &Seen) -> Result<Route> {
    let store = &engine.store;
    let kb = tenant.kb.snapshot();
    let avail = Availability {
        presence: store
            .presence(&tenant.id)?
            .into_iter()
            .map(|p| (p.rep_id, (p.online, p.capacity)))
            .collect(),
        load: store.open_load(&tenant.id)?,
        now: closer_kb::time::now(),
    };
    let mut rr_error = None;
    let r = playbook::route(pb, seen, &kb.reps(), &avail, &mut |team, cands| match store
        .round_robin(&tenant.id, team, cands)
    {
        Ok(r) => r,
        Err(e) => {
            rr_error = Some(e);
            None
        }
    });
    match rr_error {
        Some(e) => Err(e.into()),
        None => Ok(r),
    }
}
