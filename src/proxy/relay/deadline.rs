//! The one timer of a relayed client connection, moved lazily. Each wait of the connection (the
//! next head, a request body, the backend's response head, a slow response body) has its own
//! deadline, and with the default timeouts (30 s for a head, 30 s to the response) each is
//! later than the one before. Moving tokio's timer cost ~170 instructions per move, twice per
//! keep-alive request (callgrind), so a later deadline is only noted: the timer fires at the
//! earlier one, finds the deadline not yet passed, and is set to it then, once per timeout
//! period instead of once per wait. An earlier deadline moves the timer at once.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use tokio::time::{Instant, Sleep};

pub struct Deadline<'a> {
    timer: Pin<&'a mut Sleep>,
    at: Instant,
    /// A point before `at` at which to raise `cue` (see [`Deadline::cue_at`]).
    check: Option<Instant>,
    cue: &'a AtomicBool,
}

impl<'a> Deadline<'a> {
    pub fn new(timer: Pin<&'a mut Sleep>, cue: &'a AtomicBool) -> Self {
        let at = timer.deadline();
        Deadline {
            timer,
            at,
            check: None,
            cue,
        }
    }

    pub fn set(&mut self, at: Instant) {
        if at < self.timer.deadline() {
            self.timer.as_mut().reset(at);
        }
        self.at = at;
    }

    /// Raises the cue at `at` if a wait on [`Self::passed`] is still going on then: how an
    /// exchange that outlasts `at` is told to start watching its client. The timer serves it,
    /// so it costs nothing more when the timer is not yet in the wheel (a connection's first
    /// request), and a move when it is.
    pub fn cue_at(&mut self, at: Instant) {
        self.cue.store(false, Relaxed);
        if at < self.timer.deadline() {
            self.timer.as_mut().reset(at);
        }
        self.check = Some(at);
    }

    /// No cue wanted any more (the timer may still fire at the old point; it then moves on).
    pub fn no_cue(&mut self) {
        self.check = None;
    }

    /// The flag [`Self::cue_at`] raises, which others may raise too.
    pub fn cue(&self) -> &'a AtomicBool {
        self.cue
    }

    /// Resolves once the deadline has passed.
    pub async fn passed(&mut self) {
        loop {
            self.timer.as_mut().await;
            let now = Instant::now();
            if now >= self.at {
                return;
            }
            if self.check.is_some_and(|c| now >= c) {
                self.check = None;
                self.cue.store(true, Relaxed);
            }
            let at = self.check.map_or(self.at, |c| c.min(self.at));
            self.timer.as_mut().reset(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_later_deadline_is_noted_without_moving_the_timer_and_an_earlier_one_moves_it() {
        let ms = Duration::from_millis;
        let start = Instant::now();
        let timer = tokio::time::sleep_until(start + ms(200));
        tokio::pin!(timer);
        let cue = AtomicBool::new(false);
        let mut d = Deadline::new(timer, &cue);
        // Earlier than the timer: moved at once.
        d.set(start + ms(20));
        assert_eq!(d.timer.deadline(), start + ms(20));
        // Later: noted only, and still waited for.
        d.set(start + ms(120));
        assert_eq!(d.timer.deadline(), start + ms(20), "not moved");
        d.passed().await;
        assert!(start.elapsed() >= ms(120), "not before the deadline");
        // After the timer fired, a later deadline is waited for too.
        let t = Instant::now();
        d.set(t + ms(50));
        d.passed().await;
        assert!(t.elapsed() >= ms(50));
    }

    #[tokio::test]
    async fn the_cue_is_raised_at_its_point_while_the_deadline_is_still_waited_for() {
        let ms = Duration::from_millis;
        let start = Instant::now();
        let timer = tokio::time::sleep_until(start + ms(500));
        tokio::pin!(timer);
        let cue = AtomicBool::new(true);
        let mut d = Deadline::new(timer, &cue);
        d.set(start + ms(300));
        d.cue_at(start + ms(50));
        assert!(!cue.load(Relaxed), "lowered when asked for");
        let waited = tokio::time::timeout(ms(150), d.passed()).await;
        assert!(waited.is_err(), "the deadline is not the cue's point");
        assert!(cue.load(Relaxed), "raised at its point");
        d.passed().await;
        assert!(start.elapsed() >= ms(300));
        // Withdrawn before its point: never raised.
        let t = Instant::now();
        d.cue_at(t + ms(20));
        d.no_cue();
        d.set(t + ms(60));
        d.passed().await;
        assert!(!cue.load(Relaxed));
    }
}
