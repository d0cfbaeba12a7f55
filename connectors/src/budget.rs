//! A request budget per account: at most `max` requests in any rolling `window` (HubSpot's
//! private apps: 100 or 190 per 10 s). Callers wait for a free slot before each request.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub struct Budget {
    max: usize,
    window: Duration,
    sent: Mutex<VecDeque<Instant>>,
}

impl Budget {
    pub fn new(max: u32, window: Duration) -> Self {
        Budget {
            max: max.max(1) as usize,
            window,
            sent: Mutex::default(),
        }
    }

    /// How long until a request may go, counting it as sent when that is now.
    fn try_take(&self, now: Instant) -> Option<Duration> {
        let mut sent = self.sent.lock();
        while sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            sent.pop_front();
        }
        if sent.len() < self.max {
            sent.push_back(now);
            return None;
        }
        let oldest = *sent.front()?;
        Some((oldest + self.window).saturating_duration_since(now))
    }

    /// Waits for a slot in the window and takes it.
    pub async fn take(&self) {
        while let Some(wait) = self.try_take(Instant::now()) {
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_requests_go_in_any_window() {
        let b = Budget::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(b.try_take(t0), None);
        assert_eq!(b.try_take(t0), None);
        assert_eq!(b.try_take(t0 + Duration::from_secs(4)), None);
        // The fourth waits until the first leaves the window.
        assert_eq!(
            b.try_take(t0 + Duration::from_secs(5)),
            Some(Duration::from_secs(5))
        );
        // Both requests at t0 have left the window: two more go, then one waits for t0 + 4 s.
        let t10 = t0 + Duration::from_secs(10);
        assert_eq!(b.try_take(t10), None);
        assert_eq!(b.try_take(t10), None);
        assert_eq!(b.try_take(t10), Some(Duration::from_secs(4)));
    }
}
