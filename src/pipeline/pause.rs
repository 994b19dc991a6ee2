//! Telling a stopped process from a slow broker, for the zombie guard.
//!
//! A process stopped (SIGSTOP, a frozen VM) for longer than the session timeout
//! has lost its partitions, and must not commit when it resumes. Measuring the
//! time the loop took cannot tell that apart from a loop that waited on a slow
//! broker (a full producer queue, a retried `send_offsets_to_transaction`):
//! treating those as pauses would abort and hold every cycle while the broker is
//! slow, and nothing would ever commit. A thread that does nothing but tick
//! tells them apart: a stop freezes it with the rest of the process, so a gap
//! between its ticks means the whole process stood still; a slow call leaves it
//! ticking.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Ticks {
    base: Instant,
    /// Milliseconds since `base` of the latest tick.
    last_tick_ms: AtomicU64,
    /// When the latest stop longer than the limit ended (ms since `base`, 0: none)...
    stop_end_ms: AtomicU64,
    /// ... and how long it lasted (ms).
    stop_len_ms: AtomicU64,
}

impl Ticks {
    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_millis() as u64
    }
}

/// Detects stops of the whole process longer than `limit`.
#[derive(Debug, Clone)]
pub(super) struct PauseClock {
    ticks: Arc<Ticks>,
    limit: Duration,
}

impl PauseClock {
    /// Starts the ticking thread; it ends when the last clone is dropped.
    pub(super) fn start(limit: Duration) -> Self {
        let ticks = Arc::new(Ticks {
            base: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            stop_end_ms: AtomicU64::new(0),
            stop_len_ms: AtomicU64::new(0),
        });
        let weak: Weak<Ticks> = Arc::downgrade(&ticks);
        let limit_ms = limit.as_millis() as u64;
        std::thread::Builder::new()
            .name("tally-pause-clock".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    let Some(t) = weak.upgrade() else { return };
                    let now = t.ms(Instant::now());
                    let gap = now.saturating_sub(t.last_tick_ms.load(Ordering::SeqCst));
                    if gap > limit_ms {
                        t.stop_len_ms.store(gap, Ordering::SeqCst);
                        t.stop_end_ms.store(now, Ordering::SeqCst);
                    }
                    t.last_tick_ms.store(now, Ordering::SeqCst);
                }
            })
            .expect("spawning the pause clock thread");
        PauseClock { ticks, limit }
    }

    /// How long the process stood still, if it stopped for longer than the limit
    /// at any time after `since`. Covers both orders after a resume: the ticker
    /// has already recorded the stop, or it has not run yet (its last tick is
    /// then older than the limit).
    pub(super) fn stopped_since(&self, since: Instant) -> Option<Duration> {
        let t = &self.ticks;
        let now = t.ms(Instant::now());
        let silent = now.saturating_sub(t.last_tick_ms.load(Ordering::SeqCst));
        if silent > self.limit.as_millis() as u64 {
            return Some(Duration::from_millis(silent));
        }
        let end = t.stop_end_ms.load(Ordering::SeqCst);
        (end != 0 && end > t.ms(since))
            .then(|| Duration::from_millis(t.stop_len_ms.load(Ordering::SeqCst)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_caller_is_not_a_stop() {
        let clock = PauseClock::start(Duration::from_millis(300));
        let since = Instant::now();
        // The caller itself is busy (as in a slow commit) while the ticker runs.
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(clock.stopped_since(since), None);
    }

    #[test]
    fn a_silent_ticker_is_a_stop() {
        // A limit shorter than one tick: between two ticks the ticker is silent
        // for longer than the limit, as after a stop it has not yet noticed.
        let clock = PauseClock::start(Duration::from_millis(1));
        let since = Instant::now();
        std::thread::sleep(Duration::from_millis(250));
        assert!(clock.stopped_since(since).is_some());
    }
}
