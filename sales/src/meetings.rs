//! Meeting slots from a rep's availability: working hours in the rep's time zone (else the
//! team's, else 09:00-17:00 UTC), working days from the team (else Monday to Friday), minus the
//! rep's booked meetings; shown in the visitor's time zone.

use closer_kb::Rep;
use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use crate::playbook::{parse_hours, Team};

/// A proposed slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub rep_id: String,
    /// Unix seconds, end exclusive.
    pub start: i64,
    pub end: i64,
}

/// Meeting length.
pub const MINUTES: i64 = 30;
/// No slot starts sooner than this after now.
const LEAD_MINUTES: i64 = 60;
/// How far ahead to look.
const HORIZON_DAYS: i64 = 14;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Where and when a rep works.
struct Hours {
    tz: TimeZone,
    from: u32,
    to: u32,
    days: Vec<String>,
}

fn hours(rep: &Rep, team: Option<&Team>) -> Hours {
    let tz_name = if !rep.timezone.is_empty() {
        rep.timezone.as_str()
    } else {
        team.map_or("UTC", |t| t.timezone.as_str())
    };
    let (from, to) = parse_hours(&rep.working_hours)
        .or_else(|| team.and_then(|t| parse_hours(&t.hours)))
        .unwrap_or((9 * 60, 17 * 60));
    let days = team
        .map(|t| t.days.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| DAYS[..5].iter().map(|d| d.to_string()).collect());
    Hours {
        tz: TimeZone::get(tz_name).unwrap_or(TimeZone::UTC),
        from,
        to,
        days,
    }
}

fn at(date: Date, minutes: u32, tz: &TimeZone) -> Option<i64> {
    let t = Time::new((minutes / 60) as i8, (minutes % 60) as i8, 0, 0).ok()?;
    Some(
        date.to_datetime(t)
            .to_zoned(tz.clone())
            .ok()?
            .timestamp()
            .as_second(),
    )
}

/// Up to `count` free slots of `rep`, spread over different days (the first free slot of each
/// working day), none overlapping `booked` (Unix-second ranges).
pub fn free_slots(
    rep: &Rep,
    team: Option<&Team>,
    booked: &[(i64, i64)],
    now: i64,
    count: usize,
) -> Vec<Slot> {
    let h = hours(rep, team);
    let earliest = now + LEAD_MINUTES * 60;
    let Ok(now_ts) = Timestamp::from_second(now) else {
        return vec![];
    };
    let mut day = now_ts.to_zoned(h.tz.clone()).date();
    let mut out = vec![];
    for _ in 0..HORIZON_DAYS {
        let name = DAYS[day.weekday().to_monday_zero_offset() as usize];
        if h.days.iter().any(|d| d == name) {
            let mut m = h.from;
            while m + MINUTES as u32 <= h.to {
                if let Some(start) = at(day, m, &h.tz) {
                    let end = start + MINUTES * 60;
                    let free = !booked.iter().any(|&(a, b)| a < end && b > start);
                    if start >= earliest && free {
                        out.push(Slot {
                            rep_id: rep.id.clone(),
                            start,
                            end,
                        });
                        break;
                    }
                }
                m += MINUTES as u32;
            }
        }
        if out.len() >= count {
            break;
        }
        match day.checked_add(1.day()) {
            Ok(d) => day = d,
            Err(_) => break,
        }
    }
    out
}

/// "Tue 24 Nov, 10:00" in `tz` (an IANA name; UTC when unknown).
pub fn label(start: i64, tz: &str) -> String {
    let zone = TimeZone::get(tz).unwrap_or(TimeZone::UTC);
    match Timestamp::from_second(start) {
        Ok(t) => t.to_zoned(zone).strftime("%a %-d %b, %H:%M").to_string(),
        Err(_) => start.to_string(),
    }
}

/// Which proposed slot a visitor's reply picks: "2", "the second one", "option 3", or the
/// label's weekday ("Tuesday works").
pub fn chosen(text: &str, labels: &[String]) -> Option<usize> {
    let t = text.trim().to_lowercase();
    let words: Vec<&str> = t
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() || words.len() > 8 {
        return None;
    }
    const ORD: [&[&str]; 3] = [
        &["1", "first", "one"],
        &["2", "second", "two"],
        &["3", "third", "three"],
    ];
    let mut hits: Vec<usize> = (0..labels.len().min(3))
        .filter(|&i| words.iter().any(|w| ORD[i].contains(w)))
        .collect();
    if hits.is_empty() {
        const WEEKDAYS: [(&str, &str); 7] = [
            ("monday", "mon"),
            ("tuesday", "tue"),
            ("wednesday", "wed"),
            ("thursday", "thu"),
            ("friday", "fri"),
            ("saturday", "sat"),
            ("sunday", "sun"),
        ];
        hits = labels
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                let l = l.to_lowercase();
                WEEKDAYS
                    .iter()
                    .any(|(long, short)| l.starts_with(short) && words.contains(long))
            })
            .map(|(i, _)| i)
            .collect();
    }
    (hits.len() == 1).then(|| hits[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(tz: &str, hours: &str) -> Rep {
        Rep {
            id: "r1".into(),
            name: "Rep One".into(),
            email: String::new(),
            team: String::new(),
            region: String::new(),
            languages: String::new(),
            timezone: tz.into(),
            working_hours: hours.into(),
            meeting_link: String::new(),
        }
    }

    fn ts(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    #[test]
    fn slots_fall_in_working_hours_on_working_days_and_skip_booked_ones() {
        let r = rep("Europe/London", "09:00-17:00");
        // Friday 16:10 London: too late today (lead time), then the weekend.
        let now = ts("2026-11-27T16:10:00Z");
        let s = free_slots(&r, None, &[], now, 3);
        let labels: Vec<String> = s.iter().map(|x| label(x.start, "Europe/London")).collect();
        assert_eq!(
            labels,
            ["Mon 30 Nov, 09:00", "Tue 1 Dec, 09:00", "Wed 2 Dec, 09:00"]
        );
        // Monday 09:00 and 09:30 booked: Monday's first free slot is 10:00.
        let mon9 = ts("2026-11-30T09:00:00Z");
        let s = free_slots(&r, None, &[(mon9, mon9 + 3600)], now, 1);
        assert_eq!(label(s[0].start, "Europe/London"), "Mon 30 Nov, 10:00");
        // Shown in the visitor's zone.
        assert_eq!(label(s[0].start, "America/New_York"), "Mon 30 Nov, 05:00");
    }

    #[test]
    fn replies_pick_a_slot_or_nothing() {
        let labels: Vec<String> = ["Mon 30 Nov, 09:00", "Tue 1 Dec, 09:00", "Wed 2 Dec, 09:00"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(chosen("2", &labels), Some(1));
        assert_eq!(chosen("The first one please", &labels), Some(0));
        assert_eq!(chosen("Tuesday works", &labels), Some(1));
        assert_eq!(chosen("option 3", &labels), Some(2));
        assert_eq!(chosen("How much does it cost?", &labels), None);
        assert_eq!(chosen("1 or 2", &labels), None);
    }
}
