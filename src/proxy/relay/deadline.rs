//! The one timer of a relayed client connection, moved lazily. Each wait of the connection (the
//! next head, a request body, the backend's response head, a slow response body) has its own
//! deadline, and with the default timeouts (30 s for a head, 30 s to the response) each is
//! later than the one before. Moving tokio's timer cost ~170 instructions per move, twice per
//! keep-alive request (callgrind), so a later deadline is only noted: the timer fires at the
//! earlier one, finds the deadline not yet passed, and is set to it then, once per timeout
//! period instead of once per wait. An earlier deadline moves the timer at once.

use std::pin::Pin;
use tokio::time::{Instant, Sleep};

pub struct Deadline<'a> {
    timer: Pin<&'a mut Sleep>,
    at: Instant,
}

impl<'a> Deadline<'a> {
    pub fn new(timer: Pin<&'a mut Sleep>) -> Self {
        let at = timer.deadline();
        Deadline { timer, at }
    }

    pub fn set(&mut self, at: Instant) {
        if at < self.timer.deadline() {
            self.timer.as_mut().reset(at);
        }
        self.at = at;
    }

    /// Resolves once the deadline has passed.
    pub async fn passed(&mut self) {
        loop {
            self.timer.as_mut().await;
            if Instant::now() >= self.at {
                return;
            }
            let at = self.at;
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
        let mut d = Deadline::new(timer);
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
}
