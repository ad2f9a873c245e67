//! How old the buffered data is, on two clocks: thawed time (which freezes
//! do not advance, so a batch's age is not inflated by them) and wall time
//! (what a reader of the stream sees as delay).

use std::time::{Duration, Instant};

/// The clock of thawed time, and when the oldest buffered record arrived.
#[derive(Debug, Default)]
pub struct BufferAge {
    /// Thawed time banked before the current thaw.
    banked: Duration,
    /// Start of the current thaw (`None`: frozen, or not started).
    since: Option<Instant>,
    /// The oldest buffered record's arrival: thawed time and wall time.
    oldest: Option<(Duration, Instant)>,
}

impl BufferAge {
    /// Thawed time so far.
    pub fn thawed_now(&self) -> Duration {
        self.banked + self.since.map_or(Duration::ZERO, |s| s.elapsed())
    }

    /// The sandbox is thawed (or stays so): the thawed clock runs.
    pub fn thaw(&mut self) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }

    /// The sandbox may be frozen from now: the thawed clock stops.
    pub fn freeze(&mut self) {
        self.banked = self.thawed_now();
        self.since = None;
    }

    /// A record was buffered; `received` is when its delivery arrived. Only
    /// the first record into an empty buffer sets the age.
    pub fn arrived(&mut self, received: Instant) {
        if self.oldest.is_none() {
            self.oldest = Some((self.thawed_now(), received));
        }
    }

    /// The buffer is empty.
    pub fn emptied(&mut self) {
        self.oldest = None;
    }

    /// Age of the oldest buffered record in wall time (zero when empty).
    pub fn wall_age(&self) -> Duration {
        self.oldest
            .map_or(Duration::ZERO, |(_, wall)| wall.elapsed())
    }

    /// Wall time at which the oldest buffered record arrived.
    pub fn oldest_wall(&self) -> Option<Instant> {
        self.oldest.map(|(_, wall)| wall)
    }

    /// Thawed time until the oldest record is `max_age` old (`None`: empty;
    /// zero: it is).
    pub fn thawed_until(&self, max_age: Duration) -> Option<Duration> {
        let (at, _) = self.oldest?;
        Some((at + max_age).saturating_sub(self.thawed_now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freezes_do_not_age_a_batch_but_wall_time_does() {
        let mut age = BufferAge::default();
        assert_eq!(age.thawed_until(Duration::from_secs(1)), None);
        assert_eq!(age.wall_age(), Duration::ZERO);
        age.thaw();
        let before = Instant::now() - Duration::from_millis(50);
        age.arrived(before);
        // A second record does not make the buffer younger.
        age.arrived(Instant::now());
        assert_eq!(age.oldest_wall(), Some(before));
        age.freeze();
        let frozen_at = age.thawed_now();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(age.thawed_now(), frozen_at, "frozen time is not counted");
        assert!(age.wall_age() >= Duration::from_millis(70));
        let left = age.thawed_until(Duration::from_secs(10)).unwrap();
        assert!(left > Duration::from_millis(9_900), "{left:?}");
        assert_eq!(
            age.thawed_until(Duration::ZERO),
            Some(Duration::ZERO),
            "due now"
        );
        age.emptied();
        assert_eq!(age.oldest_wall(), None);
    }
}
