//! An upstream's `max_connections` queue: who waits for a backend with room, and how they are
//! woken. One per upstream name, kept by [`crate::state::Registry`] across compiles: a request
//! holds the snapshot it started on, so one ending on an older snapshot must wake a request
//! queued on a newer one, and `max_pending` must count the waiters of every snapshot together
//! (per snapshot, each configuration change would have let another `max_pending` in).

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use tokio::sync::{futures::Notified, Notify};

#[derive(Default)]
pub struct Queue {
    room: Notify,
    waiting: AtomicU32,
}

impl Queue {
    /// Requests (and tcp connections) waiting now, as HAProxy's `qcur`.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Relaxed)
    }

    /// A wake-up for the caller, to take before it picks, so that room made between its pick and
    /// its wait is not missed.
    pub fn notified(&self) -> Notified<'_> {
        self.room.notified()
    }

    /// Joins the queue unless `max` are already waiting; the place is left when the guard drops
    /// (the wait ended, timed out, or the client left).
    pub fn join(&self, max: u32) -> Option<Place<'_>> {
        // Counted only when taken, so the count never shows a refused request.
        self.waiting
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Place(&self.waiting))
    }

    /// One request ended on a backend: room for one waiter.
    pub fn freed(&self) {
        self.room.notify_one();
    }

    /// Room may have appeared for many at once (a backend came back): every waiter picks again,
    /// and those that find none wait again.
    pub fn wake_all(&self) {
        self.room.notify_waiters();
    }
}

/// A place in a [`Queue`].
pub struct Place<'a>(&'a AtomicU32);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_past_the_limit_are_refused_and_leaving_frees_one() {
        let q = Queue::default();
        let a = q.join(2).unwrap();
        let b = q.join(2).unwrap();
        assert!(q.join(2).is_none(), "a third place past max 2");
        assert_eq!(q.waiting(), 2, "a refused join leaves no trace");
        drop(a);
        assert_eq!(q.waiting(), 1);
        assert!(q.join(2).is_some());
        drop(b);
        assert_eq!(q.waiting(), 0);
    }

    #[tokio::test]
    async fn wake_all_reaches_every_waiter_registered_before_it() {
        let q = Queue::default();
        let (w1, w2) = (q.notified(), q.notified());
        q.wake_all();
        tokio::time::timeout(std::time::Duration::from_secs(1), async {
            w1.await;
            w2.await;
        })
        .await
        .expect("both woken");
    }
}
