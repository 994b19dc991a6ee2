//! Events of the transaction cycle. Counters move only when a transaction has
//! committed, from that cycle's tally, so after a drain they equal the input.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::metrics::Metrics;
use super::{InternalEvent, Telemetry, status};
use crate::aggregate::Aggregate;
use crate::event::Outcome;

/// The loop went round once (liveness).
#[derive(Debug)]
pub struct LoopIteration;

impl InternalEvent for LoopIteration {
    fn emit(self, t: &Telemetry) {
        t.status.beat();
    }
}

/// The transactional producer is initialised (`init_transactions` returned).
#[derive(Debug)]
pub struct ProducerInitialised;

impl InternalEvent for ProducerInitialised {
    fn emit(self, t: &Telemetry) {
        t.status.set_producer_ready(true);
        t.status.beat();
    }
}

/// Input records by outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecordCounts {
    pub processed: u64,
    pub dead_lettered: u64,
    pub filtered: u64,
}

impl RecordCounts {
    pub fn add(&mut self, other: RecordCounts) {
        self.processed += other.processed;
        self.dead_lettered += other.dead_lettered;
        self.filtered += other.filtered;
    }

    pub fn total(&self) -> u64 {
        self.processed + self.dead_lettered + self.filtered
    }
}

/// What the open transaction holds, counted as records join it; reported to
/// the metrics only if it commits, dropped if it aborts.
#[derive(Debug, Default)]
pub struct CycleTally {
    counts: RecordCounts,
    dead_letter_reasons: BTreeMap<&'static str, u64>,
    /// Input record timestamps (ms), for the end-to-end latency at commit.
    timestamps_ms: Vec<i64>,
}

impl CycleTally {
    /// A record joined the open transaction with this outcome.
    /// `timestamp_ms`: the input record's Kafka timestamp (end-to-end latency).
    pub fn record(&mut self, timestamp_ms: Option<i64>, outcome: &Outcome) {
        match outcome {
            Outcome::Processed { .. } => self.counts.processed += 1,
            Outcome::Filtered { .. } => self.counts.filtered += 1,
            Outcome::DeadLetter { rejection, .. } => self.dead_letter(rejection.reason.code()),
        }
        if let Some(ts) = timestamp_ms {
            self.timestamps_ms.push(ts);
        }
    }

    /// A record was dead-lettered for `reason` (a reason code).
    pub fn dead_letter(&mut self, reason: &'static str) {
        self.counts.dead_lettered += 1;
        *self.dead_letter_reasons.entry(reason).or_default() += 1;
    }

    /// Its records by outcome.
    pub fn counts(&self) -> RecordCounts {
        self.counts
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// A transaction committed; `tally` is what it held, `commit` how long the
/// commit took.
#[derive(Debug)]
pub struct TransactionCommitted {
    pub tally: CycleTally,
    pub commit: Duration,
}

impl InternalEvent for TransactionCommitted {
    fn emit(self, t: &Telemetry) {
        let m = &t.metrics;
        let c = self.tally;
        let counts = c.counts;
        for (outcome, n) in [
            ("processed", counts.processed),
            ("dead_lettered", counts.dead_lettered),
            ("filtered", counts.filtered),
        ] {
            Metrics::count(&m.records, outcome, n);
        }
        for (reason, n) in &c.dead_letter_reasons {
            Metrics::count(&m.dead_letters, reason, *n);
        }
        Metrics::count(&m.transactions, "committed", 1);
        m.commit_seconds.observe(self.commit.as_secs_f64());
        let now = now_ms();
        // One sample per record: observed locally (no atomics per sample) and
        // published to the shared histogram once per transaction.
        let latency = m.end_to_end_latency_seconds.local();
        for ts in c.timestamps_ms {
            latency.observe((now - ts).max(0) as f64 / 1000.0);
        }
        latency.flush();
        m.last_commit_timestamp.set(now as f64 / 1000.0);
        tracing::trace!(
            records = counts.total(),
            commit_secs = self.commit.as_secs_f64(),
            "transaction committed"
        );
    }
}

/// Snapshots committed: `(partition, offset it covers)`.
#[derive(Debug)]
pub struct SnapshotsCommitted<'a> {
    pub snapshots: &'a [(i32, i64)],
}

impl InternalEvent for SnapshotsCommitted<'_> {
    fn emit(self, t: &Telemetry) {
        for (p, offset) in self.snapshots {
            Metrics::set(&t.metrics.snapshot_offset, *p, *offset);
        }
    }
}

/// The open transaction was aborted (its records come again).
#[derive(Debug)]
pub struct TransactionAborted;

impl InternalEvent for TransactionAborted {
    fn emit(self, t: &Telemetry) {
        Metrics::count(&t.metrics.transactions, "aborted", 1);
    }
}

/// The transactional producer failed fatally and is being replaced.
#[derive(Debug)]
pub struct ProducerReplaced;

impl InternalEvent for ProducerReplaced {
    fn emit(self, t: &Telemetry) {
        t.metrics.producer_replacements.inc();
    }
}

/// The broker refused a partition's snapshot (over the insights topic's
/// `max.message.bytes`): its transaction aborts, and the snapshot comes back
/// every `--snapshot-interval` until it fits. Counted, so an alert sees it even
/// when this instance never committed a snapshot of the partition.
#[derive(Debug)]
pub struct SnapshotRefused<'a> {
    pub partition: i32,
    pub error: &'a str,
}

impl InternalEvent for SnapshotRefused<'_> {
    fn emit(self, t: &Telemetry) {
        tracing::error!(
            partition = self.partition,
            error = %self.error,
            "the broker refused a snapshot; raise the insights topic's max.message.bytes, restores from snapshots fall behind until then"
        );
        t.metrics.snapshot_refusals.inc();
    }
}

/// Retention deleted `records` input records before the running consumer read
/// them; they are counted as `uncounted`.
#[derive(Debug)]
pub struct SkippedByRetention {
    pub records: u64,
}

impl InternalEvent for SkippedByRetention {
    fn emit(self, t: &Telemetry) {
        t.metrics.skipped_by_retention.inc_by(self.records);
    }
}

/// After a commit: the partitions' new committed state, checkpointed to RocksDB
/// in `took`.
#[derive(Debug)]
pub struct CheckpointWritten<'a> {
    pub topic: &'a str,
    /// `(partition, next offset, committed aggregates)`.
    pub partitions: Vec<(i32, i64, Aggregate)>,
    pub took: Duration,
}

impl InternalEvent for CheckpointWritten<'_> {
    fn emit(self, t: &Telemetry) {
        t.metrics
            .checkpoint_seconds
            .observe(self.took.as_secs_f64());
        for (p, next, agg) in self.partitions {
            Metrics::set(&t.metrics.committed_offset, p, next);
            let snap = status::snapshot(self.topic, p, next, agg);
            t.status.update(&[p], |v| v.committed = Some(snap.clone()));
        }
    }
}
