//! Routing: the playbook's modes in order (account owner, rules, round robin, fallback) over
//! the reps' presence, load and business hours.

use std::collections::HashMap;

use closer_kb::Rep;

use super::model::*;
use super::score::{matches, Seen};

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
