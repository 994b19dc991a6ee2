//! Stalls during faults: the group's committed offsets, sampled throughout the
//! drill, must keep advancing on every partition that has input waiting.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A partition with input waiting (`high watermark > committed`) whose
/// committed offset has not moved for this long is stalled. Longer than any
/// single fault keeps a partition still: a restart after a kill (at most 5 s),
/// the session timeout (6 s) that hands a dead member's partitions on, a
/// restore, a crash-point run (at most 30 s) and the zombie's pause.
pub const STALL_BOUND: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Progress {
    committed: Option<i64>,
    /// When `committed` last moved, or input started waiting.
    since: Instant,
    /// This stall was reported already.
    reported: bool,
}

/// Tracks, per partition, how long committed offsets stood still while input
/// waited.
#[derive(Debug, Default)]
pub struct StallWatch {
    partitions: BTreeMap<i32, Progress>,
    /// Longest time a partition with input waiting went without a commit.
    pub longest: Duration,
    /// Committed offsets seen to move backwards: (partition, from, to). Nothing
    /// in tally ever commits an offset below one it committed.
    pub regressions: Vec<(i32, i64, i64)>,
    /// The highest committed offset seen per partition.
    highest: BTreeMap<i32, i64>,
}

impl StallWatch {
    /// One sample at `now`; returns the partitions that just passed
    /// [`STALL_BOUND`] (each stall reported once) with their committed offset
    /// and high watermark.
    pub fn sample(
        &mut self,
        now: Instant,
        committed: &BTreeMap<i32, i64>,
        high_watermarks: &BTreeMap<i32, i64>,
    ) -> Vec<(i32, Option<i64>, i64)> {
        let mut stalled = Vec::new();
        for (&p, &hw) in high_watermarks {
            let c = committed.get(&p).copied();
            let waiting = hw > c.unwrap_or(0);
            let e = self.partitions.entry(p).or_insert(Progress {
                committed: c,
                since: now,
                reported: false,
            });
            if let Some(to) = c {
                let highest = self.highest.entry(p).or_insert(to);
                if to < *highest {
                    self.regressions.push((p, *highest, to));
                }
                *highest = (*highest).max(to);
            }
            if e.committed != c || !waiting {
                *e = Progress {
                    committed: c,
                    since: now,
                    reported: false,
                };
                continue;
            }
            let still = now.saturating_duration_since(e.since);
            self.longest = self.longest.max(still);
            if still >= STALL_BOUND && !e.reported {
                e.reported = true;
                stalled.push((p, c, hw));
            }
        }
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_waiting_input_without_commits_is_a_stall() {
        let t0 = Instant::now();
        let mut w = StallWatch::default();
        let hw = BTreeMap::from([(0, 100), (1, 50)]);
        let c = BTreeMap::from([(0, 10), (1, 50)]);
        assert!(w.sample(t0, &c, &hw).is_empty());
        // Partition 1 has nothing waiting: never stalled, however long.
        let late = t0 + STALL_BOUND;
        assert_eq!(w.sample(late, &c, &hw), vec![(0, Some(10), 100)]);
        // Reported once per stall.
        assert!(w.sample(late + Duration::from_secs(1), &c, &hw).is_empty());
        assert_eq!(w.longest, STALL_BOUND + Duration::from_secs(1));
        // A commit ends it; the clock starts again.
        let moved = BTreeMap::from([(0, 11), (1, 50)]);
        assert!(
            w.sample(late + Duration::from_secs(2), &moved, &hw)
                .is_empty()
        );
        assert!(
            w.sample(late + STALL_BOUND, &moved, &hw).is_empty(),
            "58 s since the commit"
        );
        assert_eq!(
            w.sample(late + Duration::from_secs(2) + STALL_BOUND, &moved, &hw),
            vec![(0, Some(11), 100)]
        );
    }

    #[test]
    fn a_committed_offset_moving_backwards_is_recorded() {
        let t0 = Instant::now();
        let mut w = StallWatch::default();
        let hw = BTreeMap::from([(0, 100), (1, 100)]);
        w.sample(t0, &BTreeMap::from([(0, 40), (1, 40)]), &hw);
        w.sample(t0, &BTreeMap::from([(0, 50), (1, 39)]), &hw);
        // A sample without partition 0's offset is no regression, nor does it
        // hide one across it.
        w.sample(t0, &BTreeMap::from([(1, 60)]), &hw);
        w.sample(t0, &BTreeMap::from([(0, 45), (1, 60)]), &hw);
        assert_eq!(w.regressions, vec![(1, 40, 39), (0, 50, 45)]);
    }

    #[test]
    fn a_partition_never_committed_with_input_waiting_stalls_too() {
        let t0 = Instant::now();
        let mut w = StallWatch::default();
        let hw = BTreeMap::from([(0, 5)]);
        let none = BTreeMap::new();
        w.sample(t0, &none, &hw);
        assert_eq!(w.sample(t0 + STALL_BOUND, &none, &hw), vec![(0, None, 5)]);
    }
}
