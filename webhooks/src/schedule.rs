//! When a failed delivery is tried again: immediately, then after 5 s, 5 min, 30 min, 2 h, 5 h,
//! 10 h, 10 h, 14 h and 20 h (about 2.6 days in all), each ±10 % at random; after the last
//! attempt it is dead-lettered. A receiver's `Retry-After` (seconds or an HTTP date) pushes the
//! next attempt later, never sooner. Tests scale the schedule down (`--webhooks-retry-scale`).

use std::time::Duration;

use rand::Rng;

const STANDARD: [u64; 10] = [
    0,
    5,
    5 * 60,
    30 * 60,
    2 * 3600,
    5 * 3600,
    10 * 3600,
    10 * 3600,
    14 * 3600,
    20 * 3600,
];

/// Longest `Retry-After` honoured (a day): a receiver cannot park a delivery for ever.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    /// Before attempt `i + 1`: `delays[0]` is the first attempt's (none).
    delays: Vec<Duration>,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::scaled(1.0)
    }
}

impl RetrySchedule {
    /// The standard schedule with every delay multiplied by `scale` (1 in production).
    pub fn scaled(scale: f64) -> Self {
        let scale = if scale.is_finite() && scale >= 0.0 {
            scale
        } else {
            1.0
        };
        Self {
            delays: STANDARD
                .iter()
                .map(|s| Duration::from_secs_f64(*s as f64 * scale))
                .collect(),
        }
    }

    /// Attempts in all before a delivery is dead-lettered.
    pub fn attempts(&self) -> u32 {
        self.delays.len() as u32
    }

    /// The wait after attempt `done` (1-based) failed, ±10 %; `None` when it was the last.
    pub fn after(&self, done: u32, rng: &mut impl Rng) -> Option<Duration> {
        let base = self.delays.get(done as usize)?;
        Some(base.mul_f64(rng.gen_range(0.9..=1.1)))
    }
}

/// A `Retry-After` value: delay-seconds or an HTTP date (then relative to `now_ms`).
pub fn retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    let v = value.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = jiff::fmt::rfc2822::parse(v)
            .ok()?
            .timestamp()
            .as_millisecond();
        Duration::from_millis(u64::try_from(at - now_ms).unwrap_or(0))
    };
    Some(d.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_spans_about_three_days_with_jitter() {
        let s = RetrySchedule::default();
        assert_eq!(s.attempts(), 10);
        let mut rng = rand::thread_rng();
        let second = s.after(1, &mut rng).unwrap();
        assert!(second >= Duration::from_millis(4500) && second <= Duration::from_millis(5500));
        let total: Duration = (1..10).map(|n| s.after(n, &mut rng).unwrap()).sum();
        let hours = total.as_secs_f64() / 3600.0;
        assert!((55.0..68.0).contains(&hours), "{hours}");
        assert_eq!(s.after(10, &mut rng), None, "dead after the tenth attempt");
        let fast = RetrySchedule::scaled(0.001);
        assert!(fast.after(9, &mut rng).unwrap() < Duration::from_secs(80));
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        assert_eq!(retry_after("7", 0), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("99999999", 0), Some(MAX_RETRY_AFTER));
        let now = jiff::Timestamp::from_second(784_111_777)
            .unwrap()
            .as_millisecond();
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now - 3000),
            Some(Duration::from_secs(3))
        );
        assert_eq!(retry_after("soon", 0), None);
    }
}
