//! The sliding window of the last calls, judged against the rate thresholds.

use std::collections::VecDeque;

use super::BreakerSettings;

/// The last `settings.window` calls of a closed breaker, oldest first.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// Each call as (failed, slow).
    calls: VecDeque<(bool, bool)>,
}

impl Window {
    /// Adds a call, forgetting the oldest past `size` (at least one).
    pub(super) fn push(&mut self, failed: bool, slow: bool, size: u32) {
        self.calls.push_back((failed, slow));
        while self.calls.len() > size.max(1) as usize {
            self.calls.pop_front();
        }
    }

    pub(super) fn len(&self) -> usize {
        self.calls.len()
    }

    pub(super) fn clear(&mut self) {
        self.calls.clear();
    }

    /// The rate threshold reached, if any; rates count only from `min_calls` calls on.
    pub(super) fn tripped(&self, s: &BreakerSettings) -> Option<&'static str> {
        let n = self.calls.len();
        if n < s.min_calls.max(1) as usize {
            return None;
        }
        let failures = self.calls.iter().filter(|(f, _)| *f).count();
        let slow = self.calls.iter().filter(|(_, s)| *s).count();
        if failures as f64 / n as f64 >= s.failure_rate {
            return Some("failure rate");
        }
        if slow as f64 / n as f64 >= s.slow_call_rate {
            return Some("slow-call rate");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            window: 4,
            min_calls: 2,
            failure_rate: 0.5,
            slow_call_rate: 0.75,
            ..BreakerSettings::default()
        }
    }

    #[test]
    fn the_window_keeps_only_the_last_calls() {
        let mut w = Window::default();
        for _ in 0..6 {
            w.push(false, false, 4);
        }
        assert_eq!(w.len(), 4);
    }

    #[test]
    fn rates_are_not_judged_before_min_calls() {
        let mut w = Window::default();
        w.push(true, true, 4);
        assert_eq!(w.tripped(&settings()), None);
        w.push(true, true, 4);
        assert_eq!(w.tripped(&settings()), Some("failure rate"));
    }

    #[test]
    fn slow_successes_trip_the_slow_call_rate() {
        let mut w = Window::default();
        for _ in 0..3 {
            w.push(false, true, 4);
        }
        w.push(false, false, 4);
        assert_eq!(w.tripped(&settings()), Some("slow-call rate"));
    }
}
