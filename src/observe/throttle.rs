//! A warning that can repeat thousands of times a second (every accept failing with EMFILE, every
//! health check failing for a reason of this process's own) logged at most once per period, with
//! how many occurred since the last line: the first is seen at once, the rest cannot flood the
//! log (a probe under `ulimit -n 512` logged 1,758 lines).

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Throttle {
    period: Duration,
    /// When the last line was allowed, and the occurrences counted since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub const fn new(period: Duration) -> Throttle {
        Throttle {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// Counts one occurrence. `Some(n)` when a line may be logged now, `n` being the occurrences
    /// since the previous line, this one included.
    pub fn hit(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.1 += 1;
        let now = Instant::now();
        if s.0.is_some_and(|t| now.duration_since(t) < self.period) {
            return None;
        }
        let n = s.1;
        *s = (Some(now), 0);
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_since_the_last() {
        let t = Throttle::new(Duration::from_millis(200));
        assert_eq!(t.hit(), Some(1), "the first is logged at once");
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.hit(), Some(3), "two held back, and this one");
    }
}
