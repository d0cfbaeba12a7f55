//! Reports and the rep leaderboard: counts of conversations, CQLs by score, disqualified leads
//! and booked meetings, per day and per rep (`Reports.Summary`), and a leaderboard for today,
//! this week or this month that is pushed again whenever it changes (`Reports.Leaderboard`, and
//! the `/leaderboard` web page through server-sent events).
//!
//! Everything is computed from the store (conversations and meetings), so replicas sharing a
//! database agree; the event bus only says when to look again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use closer_kb::Rep;
use closer_proto::v1 as pb;
use closer_store::{LeadStat, MeetingStat};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use tokio::sync::mpsc;

use crate::app::blocking;
use crate::error::{Error, Result};
use closer_sales::engine::Engine;

/// The leaderboard's periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Today,
    Week,
    Month,
}

impl Period {
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "today" | "day" => Ok(Period::Today),
            "week" | "this_week" => Ok(Period::Week),
            "month" | "this_month" => Ok(Period::Month),
            other => Err(Error::invalid(
                "period",
                format!("unknown period {other:?}; one of today, week, month"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Period::Today => "today",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// When the period that holds `now` started, in `tz`.
    pub fn start(self, tz: &TimeZone, now: Timestamp) -> Timestamp {
        let z = now.to_zoned(tz.clone());
        let day = z.date();
        let first = match self {
            Period::Today => day,
            Period::Week => {
                let back = day.weekday().to_monday_zero_offset() as i64;
                day.checked_sub(back.days()).unwrap_or(day)
            }
            Period::Month => day.first_of_month(),
        };
        first
            .to_zoned(tz.clone())
            .map(|z| z.timestamp())
            .unwrap_or(now)
    }
}

/// An IANA zone from a request field; empty means UTC.
pub fn zone(field: &str, name: &str) -> Result<TimeZone> {
    if name.trim().is_empty() {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name.trim())
        .map_err(|_| Error::invalid(field, format!("unknown time zone {name:?}")))
}

fn add(c: &mut pb::Counts, l: &LeadStat) {
    c.conversations += 1;
    match l.score {
        -1 => c.disqualified += 1,
        1 => c.cql_1 += 1,
        2 => c.cql_2 += 1,
        3 => c.cql_3 += 1,
        _ => {}
    }
}

fn day_of(ms: i64, tz: &TimeZone) -> String {
    Timestamp::from_millisecond(ms)
        .map(|t| t.to_zoned(tz.clone()).date().to_string())
        .unwrap_or_default()
}

/// `Reports.Summary` over stored rows; `reps` names the reps and gives their teams.
#[allow(clippy::too_many_arguments)]
pub fn summary(
    leads: &[LeadStat],
    meetings: &[MeetingStat],
    reps: &[Rep],
    tz: &TimeZone,
    rep_filter: Option<&str>,
    team_filter: Option<&str>,
) -> (pb::Counts, Vec<pb::DayCounts>, Vec<pb::RepCounts>) {
    let team_of: HashMap<&str, &str> = reps
        .iter()
        .map(|r| (r.id.as_str(), r.team.as_str()))
        .collect();
    let keep_lead = |l: &LeadStat| {
        rep_filter.is_none_or(|r| l.rep_id.as_deref() == Some(r))
            && team_filter.is_none_or(|t| {
                l.team.as_deref() == Some(t)
                    || l.rep_id.as_deref().and_then(|r| team_of.get(r)) == Some(&t)
            })
    };
    let keep_meeting = |m: &MeetingStat| {
        rep_filter.is_none_or(|r| m.rep_id == r)
            && team_filter.is_none_or(|t| team_of.get(m.rep_id.as_str()) == Some(&t))
    };
    let mut total = pb::Counts::default();
    let mut days: BTreeMap<String, pb::Counts> = BTreeMap::new();
    let mut per_rep: BTreeMap<String, pb::Counts> = BTreeMap::new();
    for l in leads.iter().filter(|l| keep_lead(l)) {
        add(&mut total, l);
        add(days.entry(day_of(l.created_ms, tz)).or_default(), l);
        add(
            per_rep
                .entry(l.rep_id.clone().unwrap_or_default())
                .or_default(),
            l,
        );
    }
    for m in meetings.iter().filter(|m| keep_meeting(m)) {
        total.meetings_booked += 1;
        days.entry(day_of(m.booked_ms, tz))
            .or_default()
            .meetings_booked += 1;
        per_rep.entry(m.rep_id.clone()).or_default().meetings_booked += 1;
    }
    let by_id: HashMap<&str, &Rep> = reps.iter().map(|r| (r.id.as_str(), r)).collect();
    let reps_out = per_rep
        .into_iter()
        .map(|(id, counts)| {
            let rep = by_id.get(id.as_str());
            pb::RepCounts {
                rep_name: rep.map(|r| r.name.clone()).unwrap_or_default(),
                team: rep.map(|r| r.team.clone()).unwrap_or_default(),
                rep_id: id,
                counts: Some(counts),
            }
        })
        .collect();
    let days_out = days
        .into_iter()
        .map(|(date, counts)| pb::DayCounts {
            date,
            counts: Some(counts),
        })
        .collect();
    (total, days_out, reps_out)
}

/// The leaderboard rows: every rep (of `team`, when given), ranked by meetings booked, then
/// CQLs, then conversations; equal figures share a rank.
pub fn board(
    leads: &[LeadStat],
    meetings: &[MeetingStat],
    reps: &[Rep],
    team: Option<&str>,
) -> Vec<pb::LeaderRow> {
    let mut rows: Vec<pb::LeaderRow> = reps
        .iter()
        .filter(|r| team.is_none_or(|t| r.team == t))
        .map(|r| pb::LeaderRow {
            rep_id: r.id.clone(),
            rep_name: r.name.clone(),
            team: r.team.clone(),
            ..Default::default()
        })
        .collect();
    let at: HashMap<String, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.rep_id.clone(), i))
        .collect();
    for l in leads {
        if let Some(&i) = l.rep_id.as_ref().and_then(|r| at.get(r)) {
            rows[i].conversations += 1;
            if l.score >= 1 {
                rows[i].cqls += 1;
            }
        }
    }
    for m in meetings {
        if let Some(&i) = at.get(&m.rep_id) {
            rows[i].meetings_booked += 1;
        }
    }
    let key = |r: &pb::LeaderRow| (r.meetings_booked, r.cqls, r.conversations);
    rows.sort_by(|a, b| {
        key(b)
            .cmp(&key(a))
            .then_with(|| a.rep_name.cmp(&b.rep_name))
    });
    for i in 0..rows.len() {
        rows[i].rank = if i > 0 && key(&rows[i]) == key(&rows[i - 1]) {
            rows[i - 1].rank
        } else {
            i as u32 + 1
        };
    }
    rows
}

/// Who holds the #1 spot: the first rep when strictly ahead of the second with something to
/// show; on a tie at the top the previous leader keeps it.
fn leader(rows: &[pb::LeaderRow], previous: Option<&str>) -> Option<String> {
    let key = |r: &pb::LeaderRow| (r.meetings_booked, r.cqls, r.conversations);
    let first = rows.first()?;
    if key(first) == (0, 0, 0) {
        return None;
    }
    let tied: Vec<&pb::LeaderRow> = rows.iter().filter(|r| key(r) == key(first)).collect();
    if tied.len() == 1 {
        return Some(first.rep_id.clone());
    }
    match previous {
        Some(p) if tied.iter().any(|r| r.rep_id == p) => Some(p.to_string()),
        _ => None,
    }
}

/// What a leaderboard watcher asked for.
#[derive(Debug, Clone)]
pub struct BoardRequest {
    pub tenant: String,
    pub period: Period,
    pub tz: TimeZone,
    pub team: Option<String>,
}

impl BoardRequest {
    /// Checks a request's fields (tenant known, period and zone valid).
    pub fn check(
        engine: &Engine,
        tenant: &str,
        period: &str,
        timezone: &str,
        team: Option<String>,
    ) -> Result<Self> {
        crate::grpc::common::check_tenant_field(tenant)?;
        engine.tenant(tenant)?;
        Ok(Self {
            tenant: tenant.to_string(),
            period: Period::parse(period)?,
            tz: zone("timezone", timezone)?,
            team: team.filter(|t| !t.is_empty()),
        })
    }
}

fn compute(
    engine: &Engine,
    req: &BoardRequest,
    now: Timestamp,
) -> Result<(i64, Vec<pb::LeaderRow>)> {
    let from = req.period.start(&req.tz, now);
    let (from_ms, to_ms) = (from.as_millisecond(), now.as_millisecond() + 1);
    let leads = engine.store.lead_stats(&req.tenant, from_ms, to_ms)?;
    let meetings = engine.store.meetings_booked(&req.tenant, from_ms, to_ms)?;
    let tenant = engine.tenant(&req.tenant)?;
    let snap = tenant.kb.snapshot();
    let reps: Vec<Rep> = snap.reps().into_iter().cloned().collect();
    Ok((
        from.as_second(),
        board(&leads, &meetings, &reps, req.team.as_deref()),
    ))
}

/// Streams the board: at once, then whenever it changes (looked at again on every event of the
/// bus, at most every `DEBOUNCE`, and every `TICK` for the period rolling over at midnight).
pub fn watch(
    engine: Arc<Engine>,
    req: BoardRequest,
) -> mpsc::Receiver<Result<pb::LeaderboardUpdate>> {
    const DEBOUNCE: Duration = Duration::from_millis(200);
    const TICK: Duration = Duration::from_secs(30);
    let (tx, rx) = mpsc::channel(8);
    let mut wake = engine.bus.watch(&req.tenant);
    tokio::spawn(async move {
        let mut last_rows: Option<Vec<pb::LeaderRow>> = None;
        let mut last_leader: Option<String> = None;
        let mut last_from = 0;
        loop {
            let (e, r) = (engine.clone(), req.clone());
            let (from, rows) = match blocking(move || compute(&e, &r, Timestamp::now())).await {
                Ok(x) => x,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if last_rows.as_ref() != Some(&rows) || from != last_from {
                let first = last_rows.is_none();
                let lead = leader(&rows, last_leader.as_deref());
                let changed = !first && lead.is_some() && lead != last_leader;
                let update = pb::LeaderboardUpdate {
                    period: req.period.name().into(),
                    from_unix: from,
                    rows: rows.clone(),
                    leader_changed: changed,
                    previous_leader_id: if changed { last_leader.clone() } else { None },
                    at_unix: Timestamp::now().as_second(),
                };
                if tx.send(Ok(update)).await.is_err() {
                    return;
                }
                last_rows = Some(rows);
                last_leader = lead;
                last_from = from;
            }
            tokio::select! {
                r = wake.changed() => {
                    if r.is_err() {
                        return;
                    }
                    tokio::time::sleep(DEBOUNCE).await;
                }
                _ = tx.closed() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    });
    rx
}

/// `Reports.Summary` for a request: range defaults to the last 30 days.
pub fn summary_request(engine: &Engine, req: &pb::SummaryRequest) -> Result<pb::SummaryResponse> {
    let tz = zone("timezone", &req.timezone)?;
    let now = Timestamp::now().as_second();
    let to = req.to_unix.unwrap_or(now + 1);
    let from = req.from_unix.unwrap_or(to - 30 * 86_400);
    if from >= to {
        return Err(Error::invalid("from_unix", "must be before to_unix"));
    }
    let tenant = engine.tenant(&req.tenant)?;
    let leads = engine.store.lead_stats(
        &req.tenant,
        from.saturating_mul(1000),
        to.saturating_mul(1000),
    )?;
    let meetings = engine.store.meetings_booked(
        &req.tenant,
        from.saturating_mul(1000),
        to.saturating_mul(1000),
    )?;
    let snap = tenant.kb.snapshot();
    let reps: Vec<Rep> = snap.reps().into_iter().cloned().collect();
    let (total, days, reps) = summary(
        &leads,
        &meetings,
        &reps,
        &tz,
        req.rep_id.as_deref().filter(|r| !r.is_empty()),
        req.team.as_deref().filter(|t| !t.is_empty()),
    );
    Ok(pb::SummaryResponse {
        total: Some(total),
        days,
        reps,
        from_unix: from,
        to_unix: to,
        timezone: tz.iana_name().unwrap_or("UTC").to_string(),
    })
}

/// The leaderboard as JSON for the web page.
pub fn update_json(u: &pb::LeaderboardUpdate) -> serde_json::Value {
    serde_json::json!({
        "period": u.period,
        "from_unix": u.from_unix,
        "leader_changed": u.leader_changed,
        "previous_leader_id": u.previous_leader_id,
        "at_unix": u.at_unix,
        "rows": u.rows.iter().map(|r| serde_json::json!({
            "rank": r.rank,
            "rep_id": r.rep_id,
            "rep_name": r.rep_name,
            "team": r.team,
            "conversations": r.conversations,
            "cqls": r.cqls,
            "meetings_booked": r.meetings_booked,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(id: &str, name: &str, team: &str) -> Rep {
        Rep {
            id: id.into(),
            name: name.into(),
            email: String::new(),
            team: team.into(),
            region: String::new(),
            languages: String::new(),
            timezone: String::new(),
            working_hours: String::new(),
            meeting_link: String::new(),
        }
    }

    fn lead(rep: Option<&str>, score: i32, ms: i64) -> LeadStat {
        LeadStat {
            rep_id: rep.map(String::from),
            team: None,
            score,
            created_ms: ms,
        }
    }

    #[test]
    fn periods_start_at_local_midnight_monday_and_the_first() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        // Sunday 22 Nov 2026, 23:30 in Berlin (22:30 UTC).
        let now: Timestamp = "2026-11-22T22:30:00Z".parse().unwrap();
        let s = |p: Period| p.start(&tz, now).to_zoned(tz.clone()).to_string();
        assert!(s(Period::Today).starts_with("2026-11-22T00:00:00+01:00"));
        assert!(s(Period::Week).starts_with("2026-11-16T00:00:00+01:00"));
        assert!(s(Period::Month).starts_with("2026-11-01T00:00:00+01:00"));
        assert!(Period::parse("fortnight").is_err());
    }

    #[test]
    fn summary_counts_by_score_day_and_rep() {
        let reps = [rep("r-a", "Ann", "emea"), rep("r-b", "Bo", "na")];
        let day1 = 1_795_000_000_000; // 2026-11-18 UTC
        let day2 = day1 + 86_400_000;
        let leads = [
            lead(Some("r-a"), 3, day1),
            lead(Some("r-a"), 1, day1),
            lead(Some("r-b"), -1, day2),
            lead(None, 0, day2),
        ];
        let meetings = [MeetingStat {
            rep_id: "r-a".into(),
            booked_ms: day2,
        }];
        let (t, days, per_rep) = summary(&leads, &meetings, &reps, &TimeZone::UTC, None, None);
        assert_eq!(
            (
                t.conversations,
                t.cql_1,
                t.cql_3,
                t.disqualified,
                t.meetings_booked
            ),
            (4, 1, 1, 1, 1)
        );
        assert_eq!(days.len(), 2);
        assert_eq!(days[0].counts.as_ref().unwrap().conversations, 2);
        assert_eq!(days[1].counts.as_ref().unwrap().meetings_booked, 1);
        let ann = per_rep.iter().find(|r| r.rep_id == "r-a").unwrap();
        assert_eq!(ann.rep_name, "Ann");
        assert_eq!(ann.counts.as_ref().unwrap().meetings_booked, 1);
        let (t, _, _) = summary(&leads, &meetings, &reps, &TimeZone::UTC, None, Some("na"));
        assert_eq!(
            (t.conversations, t.disqualified, t.meetings_booked),
            (1, 1, 0)
        );
    }

    #[test]
    fn the_board_ranks_meetings_then_cqls_and_the_leader_holds_on_a_tie() {
        let reps = [
            rep("r-a", "Ann", "x"),
            rep("r-b", "Bo", "x"),
            rep("r-c", "Cy", "y"),
        ];
        let leads = [
            lead(Some("r-a"), 2, 0),
            lead(Some("r-b"), 0, 0),
            lead(Some("r-b"), 0, 0),
        ];
        let rows = board(&leads, &[], &reps, None);
        let ids: Vec<&str> = rows.iter().map(|r| r.rep_id.as_str()).collect();
        assert_eq!(ids, ["r-a", "r-b", "r-c"], "a CQL beats two plain chats");
        assert_eq!(leader(&rows, None).as_deref(), Some("r-a"));
        let m = [MeetingStat {
            rep_id: "r-b".into(),
            booked_ms: 0,
        }];
        let rows2 = board(&leads, &m, &reps, None);
        assert_eq!(rows2[0].rep_id, "r-b");
        assert_eq!(leader(&rows2, Some("r-a")).as_deref(), Some("r-b"));
        // A tie at the top: the incumbent keeps #1; both rank 1.
        let tie = [lead(Some("r-a"), 1, 0), lead(Some("r-b"), 1, 0)];
        let rows3 = board(&tie, &[], &reps, None);
        assert_eq!((rows3[0].rank, rows3[1].rank, rows3[2].rank), (1, 1, 3));
        assert_eq!(leader(&rows3, Some("r-b")).as_deref(), Some("r-b"));
        assert_eq!(leader(&rows3, None), None);
        assert_eq!(board(&leads, &[], &reps, Some("y")).len(), 1);
    }
}
