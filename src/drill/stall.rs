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

/// The bound with broker faults. A commit may wait on a coordinator until its
/// transaction's deadline (`transaction.timeout.ms`, 60 s) plus 5 s before
/// tally abandons it; a coordinator away longer than the session (25 s) costs
/// a rebalance; then a restore and the first commit: 120 s.
pub const CLUSTER_STALL_BOUND: Duration = Duration::from_secs(120);

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
#[derive(Debug)]
pub struct StallWatch {
    /// How long a partition may go without a commit while input waits.
    pub bound: Duration,
    partitions: BTreeMap<i32, Progress>,
    /// Longest time a partition with input waiting went without a commit.
    pub longest: Duration,
    /// Committed offsets seen to move backwards: (partition, from, to). Nothing
    /// in tally ever commits an offset below one it committed.
    pub regressions: Vec<(i32, i64, i64)>,
    /// The highest committed offset seen per partition.
    highest: BTreeMap<i32, i64>,
}

impl Default for StallWatch {
    fn default() -> Self {
        StallWatch::new(STALL_BOUND)
    }
}

impl StallWatch {
    pub fn new(bound: Duration) -> Self {
        StallWatch {
            bound,
            partitions: BTreeMap::new(),
            longest: Duration::ZERO,
            regressions: Vec::new(),
            highest: BTreeMap::new(),
        }
    }

    /// One sample at `now`; returns the partitions that just passed
    /// the bound (each stall reported once) with their committed offset
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
            if still >= self.bound && !e.reported {
                e.reported = true;
                stalled.push((p, c, hw));
            }
        }
        stalled
    }
}

/// Times to recover from faults: from the moment a fault struck until every
/// input record written before it was committed (each partition's committed
/// offset reached the high watermark it had then).
#[derive(Debug, Default)]
pub struct Recoveries {
    pending: Vec<Pending>,
    /// Per fault kind, the time each recovery took.
    pub times: BTreeMap<String, Vec<Duration>>,
}

#[derive(Debug)]
struct Pending {
    kind: String,
    since: Instant,
    /// High watermarks when the fault struck.
    high: BTreeMap<i32, i64>,
}

impl Recoveries {
    /// A fault of `kind` struck at `now`; `high` are the input's high
    /// watermarks last seen.
    pub fn begin(&mut self, kind: &str, now: Instant, high: BTreeMap<i32, i64>) {
        self.pending.push(Pending {
            kind: kind.to_string(),
            since: now,
            high,
        });
    }

    /// One sample of the group's committed offsets at `now`.
    pub fn sample(&mut self, now: Instant, committed: &BTreeMap<i32, i64>) {
        let recovered = |p: &Pending| {
            p.high
                .iter()
                .all(|(part, hw)| committed.get(part).is_some_and(|c| c >= hw))
        };
        let (done, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(recovered);
        self.pending = pending;
        for p in done {
            self.times
                .entry(p.kind)
                .or_default()
                .push(now.saturating_duration_since(p.since));
        }
    }

    /// Faults whose input is not all committed yet at `now`: (kind, time
    /// since it struck).
    pub fn unrecovered(&self, now: Instant) -> Vec<(String, Duration)> {
        self.pending
            .iter()
            .map(|p| (p.kind.clone(), now.saturating_duration_since(p.since)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovery_ends_when_the_input_written_before_the_fault_is_committed() {
        let t0 = Instant::now();
        let mut r = Recoveries::default();
        r.begin(
            "broker_kill",
            t0,
            BTreeMap::from([(0, 100), (1, 20), (2, 50)]),
        );
        // Partition 2 never committed yet; 0 is short of 100.
        r.sample(
            t0 + Duration::from_secs(3),
            &BTreeMap::from([(0, 99), (1, 20)]),
        );
        assert!(r.times.is_empty());
        assert_eq!(
            r.unrecovered(t0 + Duration::from_secs(4)),
            vec![("broker_kill".to_string(), Duration::from_secs(4))]
        );
        r.sample(
            t0 + Duration::from_secs(7),
            &BTreeMap::from([(0, 120), (1, 20), (2, 50)]),
        );
        assert_eq!(r.times["broker_kill"], vec![Duration::from_secs(7)]);
        assert!(r.unrecovered(t0).is_empty());
    }

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
