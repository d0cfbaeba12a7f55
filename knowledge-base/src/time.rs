//! Dates of fact validity: `YYYY-MM-DD` (a whole UTC day) or an RFC 3339 instant
//! (`2026-12-31T18:00:00Z`, `2026-12-31T18:00:00+01:00`), as Unix seconds. No time zone database
//! is needed for either.

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn num(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Unix seconds of a date or instant. A bare date is its day's start, or with `end_of_day` the
/// next day's start (so "valid until 2026-12-31" includes that whole day). `None` if malformed.
pub fn parse(s: &str, end_of_day: bool) -> Option<i64> {
    let s = s.trim();
    let (date, rest) = if s.len() > 10 {
        (s.get(..10)?, Some(s.get(10..)?))
    } else {
        (s, None)
    };
    let mut p = date.split('-');
    let (y, m, d) = (num(p.next()?)?, num(p.next()?)?, num(p.next()?)?);
    if p.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) || date.len() != 10 {
        return None;
    }
    let day = days_from_civil(y, m, d) * 86_400;
    let Some(rest) = rest else {
        return Some(if end_of_day { day + 86_400 } else { day });
    };
    // "THH:MM[:SS[.frac]]" then "Z" or "+HH:MM" / "-HH:MM".
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let (clock, offset) = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => return None,
    };
    let mut c = clock.split(':');
    let (hh, mm) = (num(c.next()?)?, num(c.next()?)?);
    let ss = match c.next() {
        Some(x) => num(x.split('.').next()?)?,
        None => 0,
    };
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let off = if offset.eq_ignore_ascii_case("z") {
        0
    } else {
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let mut o = offset[1..].split(':');
        let (oh, om) = (num(o.next()?)?, num(o.next().unwrap_or("0"))?);
        sign * (oh * 3600 + om * 60)
    };
    Some(day + hh * 3600 + mm * 60 + ss - off)
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_instants() {
        assert_eq!(parse("1970-01-01", false), Some(0));
        assert_eq!(parse("1970-01-01", true), Some(86_400));
        assert_eq!(parse("2000-03-01", false), Some(951_868_800));
        assert_eq!(
            parse("2026-11-22T10:00:00Z", false),
            Some(parse("2026-11-22", false).unwrap() + 36_000)
        );
        assert_eq!(
            parse("2026-11-22T11:00:00+01:00", false),
            parse("2026-11-22T10:00:00Z", false)
        );
        for bad in [
            "2026-13-01",
            "26-1-1",
            "2026-11-22T25:00Z",
            "next week",
            "",
            "2026-11-22T10:00",
        ] {
            assert_eq!(parse(bad, false), None, "{bad}");
        }
    }
}
