//! Events of partition assignment and state restores.

use super::metrics::Metrics;
use super::{InternalEvent, Telemetry, status};
use crate::aggregate::Aggregate;

/// The group assigned these partitions (one rebalance, as this member sees it).
#[derive(Debug)]
pub struct PartitionsAssigned<'a> {
    pub partitions: &'a [i32],
}

impl InternalEvent for PartitionsAssigned<'_> {
    fn emit(self, t: &Telemetry) {
        t.metrics.rebalances.inc();
        t.status.set_joined(true);
        t.status.update(self.partitions, |_| {});
        t.metrics
            .assigned_partitions
            .set(t.status.assigned().len() as i64);
    }
}

/// The partitions were taken away.
#[derive(Debug)]
pub struct PartitionsRevoked<'a> {
    pub partitions: &'a [i32],
}

impl InternalEvent for PartitionsRevoked<'_> {
    fn emit(self, t: &Telemetry) {
        t.status.set_joined(false);
        t.status.remove(self.partitions);
        for p in self.partitions {
            t.metrics.forget_partition(*p);
        }
        t.metrics
            .assigned_partitions
            .set(t.status.assigned().len() as i64);
    }
}

/// Restores of these partitions started (on assignment, or every partition
/// after a producer replacement).
#[derive(Debug)]
pub struct RestoreStarted<'a> {
    pub partitions: &'a [i32],
}

impl InternalEvent for RestoreStarted<'_> {
    fn emit(self, t: &Telemetry) {
        t.status
            .update(self.partitions, |v| v.restoring = Some((0, 0)));
        for p in self.partitions {
            Metrics::set(&t.metrics.partition_restoring, *p, 1);
        }
    }
}

/// A restore replayed `done` of the `total` records it has to replay (offsets).
#[derive(Debug)]
pub struct RestoreProgress {
    pub partition: i32,
    pub done: u64,
    pub total: u64,
}

impl InternalEvent for RestoreProgress {
    fn emit(self, t: &Telemetry) {
        // Only a partition still assigned and restoring: a late report of a
        // superseded restore must not bring a revoked partition back.
        t.status.update_existing(self.partition, |v| {
            if v.restoring.is_some() {
                v.restoring = Some((self.done, self.total));
            }
        });
    }
}

/// How a partition's aggregates were recovered on assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestorePath {
    /// `K == C`: the checkpoint was exact.
    Resume,
    /// `K < C` (and no newer snapshot): replayed `[K, C)`.
    Replay,
    /// From the latest committed snapshot `S <= C`, then replayed `[S, C)`.
    Snapshot,
    /// Neither a usable checkpoint nor a snapshot: rebuilt from offset 0 (or the
    /// group never committed: starts empty at the log start).
    Rebuild,
}

impl RestorePath {
    pub const ALL: [RestorePath; 4] = [
        RestorePath::Resume,
        RestorePath::Replay,
        RestorePath::Snapshot,
        RestorePath::Rebuild,
    ];

    /// The `path` of the `partition restored` log line and of
    /// `tally_restores_total{path}`.
    pub fn as_str(self) -> &'static str {
        match self {
            RestorePath::Resume => "resume",
            RestorePath::Replay => "replay",
            RestorePath::Snapshot => "snapshot",
            RestorePath::Rebuild => "rebuild",
        }
    }
}

/// A partition's restore was accepted: its committed state is known.
#[derive(Debug)]
pub struct PartitionRestored<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub next_offset: i64,
    pub aggregate: &'a Aggregate,
    pub path: RestorePath,
    /// Records replayed.
    pub records: u64,
}

impl InternalEvent for PartitionRestored<'_> {
    fn emit(self, t: &Telemetry) {
        let m = &t.metrics;
        Metrics::set(&m.partition_restoring, self.partition, 0);
        Metrics::set(&m.committed_offset, self.partition, self.next_offset);
        m.restore_records.inc_by(self.records);
        Metrics::count(&m.restores, self.path.as_str(), 1);
        let snap = status::snapshot(
            self.topic,
            self.partition,
            self.next_offset,
            self.aggregate.clone(),
        );
        t.status.update(&[self.partition], |v| {
            v.restoring = None;
            v.committed = Some(snap.clone());
        });
        // After the committed offset is in the status the lag thread reads.
        super::lag::nudge();
    }
}
