//! The transaction cycle (docs/design.md, "The transaction cycle"): records into the open
//! transaction, the commit and the checkpoint after it, the abort and rewind,
//! and the replacement of a producer that failed fatally.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tally_state::Checkpoint;

use super::{
    Fencing, PartitionState, Phase, Pipeline, PipelineError, Result, Rewind, Snapshots, Txn,
    blocking, init_producer, txn_fatal, why_fenced,
};
use crate::aggregate::Aggregate;
use crate::event::{Outcome, dead_letter, dead_letter_stripped, process_owned};
use crate::kafka::{self, Origin, SendError, TxnError, TxnProducer};
use crate::model::OutputRecord;
use crate::observe::{
    CheckpointWritten, CycleTally, ProducerReplaced, SkippedByRetention, SnapshotsCommitted,
    TransactionAborted, TransactionCommitted, emit,
};
use crate::{failpoints, insights};

/// How long past the transaction's deadline a commit may take to return before
/// tally stops waiting for it: each call of a commit that keeps to its
/// deadline ends by it, so this covers only the step between two calls.
const COMMIT_GRACE: Duration = Duration::from_secs(5);

/// How often aborts ask whether tally's topics still exist, unless a delivery
/// named one unknown; and how long one such request may wait.
const TOPICS_CHECK_EVERY: Duration = Duration::from_secs(30);
const TOPICS_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the read of the input's log start for a gap may wait, and how
/// long after one that failed the partition's gaps stay undecided.
const GAP_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
const GAP_RETRY: Duration = Duration::from_secs(5);

/// One running commit call in the count of [`Pipeline`]'s `commits_running`,
/// until dropped (also when the call panics).
struct Running(Arc<std::sync::atomic::AtomicUsize>);

impl Running {
    fn start(count: &Arc<std::sync::atomic::AtomicUsize>) -> Running {
        count.fetch_add(1, Ordering::SeqCst);
        Running(count.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Awaits `f` for at most `limit`, beating the liveness clock meanwhile: a
/// wait on the cluster within its bound is no hang of the loop. `None`: the
/// limit passed first.
pub(super) async fn beating<T>(
    limit: Duration,
    f: impl std::future::Future<Output = T>,
) -> Option<T> {
    let status = &crate::observe::telemetry().status;
    let end = tokio::time::Instant::now() + limit;
    tokio::pin!(f);
    loop {
        tokio::select! {
            // A commit that ended as the limit passed counts.
            biased;
            res = &mut f => return Some(res),
            _ = tokio::time::sleep_until(end) => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => status.beat(),
        }
    }
}

impl Pipeline {
    /// True while `check_paused` holds commits back.
    pub(super) fn commits_held(&self) -> bool {
        self.hold_commits_until.is_some_and(|t| Instant::now() < t)
    }

    pub(super) fn cycle_due(&self) -> bool {
        match self.txn {
            Txn::Idle => false,
            Txn::Open { since, records, .. } => {
                !self.commits_held()
                    && (since.elapsed() >= self.cfg.commit_interval
                        || records >= self.cfg.max_batch_records)
            }
        }
    }

    /// Whether `st`'s snapshot is written when the cycle closes. Snapshots are
    /// the restore changelog, not the insights' only reader: at 100 ms commits
    /// and a few thousand records a second, one per partition per commit would
    /// outweigh the processed output itself. A snapshot at `S < C` costs a new
    /// host a replay of `[S, C)`, bounded by the interval.
    /// Past the interval, the snapshot must also be worth its bytes (see
    /// `SnapshotBudget`).
    ///
    /// A record dead-lettered at runtime (`unproducible`, `poison`) puts its
    /// partition's snapshot into the same transaction: a replay recomputes the
    /// pure verdict (`processed`), so no replay may start below that record.
    /// Every restore starts at the newest of `K` and `S`, both then past it.
    /// Not while the broker refuses the partition's snapshots: that would
    /// abort every transaction holding a runtime dead letter.
    fn snapshot_due(&self, st: &PartitionState, mode: Snapshots) -> bool {
        let interval = self.cfg.snapshot_interval;
        matches!(st.phase, Phase::Active)
            && st.snapshot != Some(st.next_offset)
            && (mode == Snapshots::All
                || (st.runtime_verdict && !st.snapshot_refused)
                || (st.snapshot_tried.is_none_or(|t| t.elapsed() >= interval)
                    && self.snapshot_earned(st)))
    }

    fn snapshot_earned(&self, st: &PartitionState) -> bool {
        let b = self.cfg.snapshot_budget;
        b.input_ratio == 0
            || st.snapshot_bytes == 0
            || st.input_bytes >= st.snapshot_bytes.saturating_mul(b.input_ratio)
            || st.last_record.is_none_or(|t| t.elapsed() >= b.quiet)
            || st
                .snapshot_tried
                .is_none_or(|t| t.elapsed() >= b.max_interval)
    }

    /// The open transaction holds snapshots and no records.
    fn cycle_is_snapshots_only(&self) -> bool {
        !self.partitions.values().any(|st| st.touched)
    }

    /// Idle, some partition's snapshot is behind its committed offset and due:
    /// a transaction of snapshots alone brings the changelog up to `C`, so the
    /// insights topic never stays behind a stream that stopped.
    pub(super) fn snapshot_catch_up_due(&self) -> bool {
        matches!(self.txn, Txn::Idle)
            && !self.commits_held()
            && self
                .partitions
                .values()
                .any(|st| self.snapshot_due(st, Snapshots::Due))
    }

    /// Moves each active partition whose consumer position is past its next
    /// offset up to that position. Only transaction markers (and records of
    /// aborted transactions) lie between: every record handed over since the
    /// partition's latest seek was processed, so the next offset covers it.
    /// Called by the loop between polls only (a poll in flight may have taken
    /// records the loop has not processed yet), when a cycle is about to close
    /// (the moves join its offsets) or while idle (a transaction of offsets
    /// alone then commits them). Without this, input written by transactional
    /// producers leaves the group's committed offset on the last marker, one
    /// below the end of the partition, for ever: lag 1 in tally's gauge and in
    /// every external lag monitor, and `tally verify --complete` refusing.
    pub(super) async fn step_over_markers(&mut self) -> Result<()> {
        if self.commits_held()
            || !self
                .partitions
                .values()
                .any(|st| matches!(st.phase, Phase::Active))
        {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        // Stepping over markers is an optimisation of the committed offset, never
        // worth stopping for: the next call tries again.
        let positions = match blocking(move || consumer.positions()).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "reading consumer positions failed; not stepping over markers now");
                return Ok(());
            }
        };
        let moves: Vec<(i32, i64, i64)> = self
            .partitions
            .iter()
            .filter(|(_, st)| matches!(st.phase, Phase::Active))
            .filter_map(|(p, st)| {
                let position = *positions.get(p)?;
                (position > st.next_offset).then_some((*p, st.next_offset, position))
            })
            .collect();
        let mut moved = false;
        for (p, from, to) in moves {
            // A position moved by librdkafka's reset past deleted records is no
            // marker: the same rule as for a record that comes past a gap.
            if !self.check_gap(p, from, to).await? {
                // One unanswered request per call: the others wait for the next.
                break;
            }
            tracing::debug!(partition = p, from, to, "stepping over transaction markers");
            let st = self.partitions.get_mut(&p).expect("collected above");
            st.next_offset = to;
            st.touched = true;
            moved = true;
        }
        if moved && matches!(self.txn, Txn::Idle) {
            if !self.ensure_open().await? {
                return Ok(());
            }
            self.close_cycle(Snapshots::Due).await?;
        }
        Ok(())
    }

    pub(super) async fn on_record(&mut self, polled: kafka::Polled) -> Result<()> {
        let rec = polled.record;
        let Some(st) = self.partitions.get(&rec.partition) else {
            self.stats.stale_dropped += 1;
            return Ok(());
        };
        // Records fetched before the partition's latest assignment, seek or pause
        // (an abort may have rewound it while this batch was in flight), of a
        // partition still restoring, or already processed are not ours to process.
        if polled.rewind < st.since_rewind
            || matches!(st.phase, Phase::Restoring)
            || rec.offset < st.next_offset
        {
            self.stats.stale_dropped += 1;
            return Ok(());
        }
        let expected = st.next_offset;
        if rec.offset > expected {
            if !self.check_gap(rec.partition, expected, rec.offset).await? {
                return self.refetch(rec.partition, expected).await;
            }
        }
        if !self.ensure_open().await? {
            return Ok(()); // the producer was replaced; partitions are being recovered
        }
        let (partition, offset, timestamp_ms) = (rec.partition, rec.offset, rec.timestamp_ms);
        let bytes = rec.key.as_ref().map_or(0, Vec::len) + rec.value.as_ref().map_or(0, Vec::len);
        // The record is moved through: its payload goes into the DLQ entry (if
        // any) and on to librdkafka, which copies it; never cloned here.
        let mut outcome = match self.poison.take(partition, offset) {
            None => process_owned(rec, &self.cfg.process),
            Some(doom) => {
                if let Some(st) = self.partitions.get_mut(&partition) {
                    st.runtime_verdict = true;
                }
                let output = if doom.strip {
                    dead_letter_stripped(rec, &doom.rejection, &self.cfg.process)
                } else {
                    dead_letter(rec, &doom.rejection, &self.cfg.process)
                };
                Outcome::DeadLetter {
                    rejection: doom.rejection,
                    output,
                }
            }
        };
        if let Some(out) = outcome.take_output() {
            // Planted faults: wrong on purpose, so tests can show the drill and
            // verify catch a lost or a doubled output.
            if failpoints::error("plant-loss") {
                tracing::warn!(partition, offset, "failpoint plant-loss: output not sent");
            } else {
                let twice = failpoints::error("plant-duplicate").then(|| out.clone());
                if !self.send(out, Origin::Input { partition, offset }).await? {
                    return Ok(()); // the transaction was aborted; this record comes again
                }
                if let Some(out) = twice {
                    tracing::warn!(
                        partition,
                        offset,
                        "failpoint plant-duplicate: output sent twice"
                    );
                    if !self.send(out, Origin::Input { partition, offset }).await? {
                        return Ok(());
                    }
                }
            }
        }
        if let Outcome::DeadLetter { rejection, .. } = &outcome {
            tracing::debug!(partition, offset, reason = %rejection.reason, "dead-lettered");
        }
        if let Txn::Open { records, tally, .. } = &mut self.txn {
            tally.record(timestamp_ms, &outcome);
            *records += 1;
        }
        let horizon = self.cfg.horizon;
        let st = self.partitions.get_mut(&partition).expect("checked above");
        st.pending.apply(&outcome, horizon);
        st.next_offset = offset + 1;
        st.touched = true;
        st.head.get_or_insert(offset);
        st.input_bytes += bytes as u64;
        failpoints::crash("after-produce");
        Ok(())
    }

    /// Offsets `[expected, next)` of `partition` were skipped by the consumer:
    /// a record came at `next`, or (stepping over markers) the position moved to
    /// `next`. Transaction markers, aborted transactions and compaction leave
    /// such gaps; retention overtaking the consumer does too, and then
    /// librdkafka has jumped to the log start (`auto.offset.reset=earliest`)
    /// over records nobody processed. Only the log start tells them apart, so a
    /// gap costs one request unless the last known log start already covers all
    /// of it (input of plain producers has no other gaps). Deleted records can be
    /// neither processed nor counted: like a restore, tally stops (nothing past
    /// `expected` is committed, and the restart's restore refuses the same gap)
    /// unless `--allow-inexact-restore`, with which it counts them as
    /// `uncounted` in the open transaction and goes on.
    ///
    /// `false`: undecided, so the caller must not step over the gap now. The
    /// cluster did not answer (asked again after `GAP_RETRY`), or commits are
    /// held after a pause: a zombie's partitions may have moved on under
    /// another owner, whose progress retention may follow; the revocation or
    /// the end of the hold decides.
    async fn check_gap(&mut self, partition: i32, expected: i64, next: i64) -> Result<bool> {
        let Some(st) = self.partitions.get(&partition) else {
            return Ok(true);
        };
        let mut log_start = st.known_log_start;
        if log_start < next {
            if st.gap_retry_at.is_some_and(|t| Instant::now() < t) {
                return Ok(false);
            }
            let c = self.consumer.clone();
            let asked = beating(
                GAP_CHECK_TIMEOUT + COMMIT_GRACE,
                blocking(move || c.watermarks_within(partition, GAP_CHECK_TIMEOUT)),
            )
            .await;
            let st = self.partitions.get_mut(&partition).expect("checked above");
            match asked {
                Some(Ok((low, _))) => {
                    log_start = log_start.max(low);
                    st.known_log_start = log_start;
                    st.gap_retry_at = None;
                }
                Some(Err(e)) => {
                    tracing::warn!(partition, from = expected, to = next, error = %e, "cannot read the input's log start to tell a gap of markers from one of deleted records; asking again in {GAP_RETRY:?}");
                    st.gap_retry_at = Some(Instant::now() + GAP_RETRY);
                    return Ok(false);
                }
                None => {
                    st.gap_retry_at = Some(Instant::now() + GAP_RETRY);
                    return Ok(false);
                }
            }
        }
        let Some((from, to)) = retention_gap(expected, next, log_start) else {
            return Ok(true);
        };
        if self.commits_held() {
            return Ok(false);
        }
        if !self.cfg.restore.allow_inexact {
            return Err(PipelineError::OvertakenByRetention {
                partition,
                from,
                to,
            });
        }
        let records = (to - from) as u64;
        tracing::error!(
            partition,
            from,
            to,
            records,
            "retention deleted input records before they were read; counting them as uncounted \
             (--allow-inexact-restore): the aggregates are a lower bound from now on"
        );
        if let Some(st) = self.partitions.get_mut(&partition) {
            st.pending.uncounted += records;
        }
        Ok(true)
    }

    /// The partition's records from `from` on cannot be taken now: they are
    /// fetched again. `from` is the partition's next offset, so the open
    /// transaction (which holds its records below `from`) is unaffected.
    async fn refetch(&mut self, partition: i32, from: i64) -> Result<()> {
        let c = self.consumer.clone();
        let rewind = blocking(move || c.seek(&[(partition, from)])).await?;
        if let Some(st) = self.partitions.get_mut(&partition) {
            st.since_rewind = rewind;
        }
        Ok(())
    }

    /// Begins a transaction if none is open. `false`: beginning failed fatally,
    /// the producer was replaced and every partition is being recovered.
    pub(super) async fn ensure_open(&mut self) -> Result<bool> {
        if matches!(self.txn, Txn::Idle) {
            let p = self.producer.clone();
            if let Err(e) = blocking(move || p.begin()).await {
                self.replace_producer(e).await?;
                return Ok(false);
            }
            self.txn = Txn::Open {
                since: Instant::now(),
                records: 0,
                tally: CycleTally::default(),
                refused: Vec::new(),
            };
        }
        Ok(true)
    }

    /// Adds a record to the open transaction. `false`: producing failed and the
    /// transaction was aborted and rewound instead.
    pub(super) async fn send(&mut self, mut rec: OutputRecord, origin: Origin) -> Result<bool> {
        // A queue that stays full this long means the broker takes nothing (down,
        // unreachable or refusing): the transaction could not commit anyway.
        // Started at the first refusal, so the common path reads no clock per record.
        let mut deadline = None;
        loop {
            let sent = if failpoints::error("queue-full") {
                Err(SendError::QueueFull(rec))
            } else {
                self.producer.send(rec)
            };
            match sent {
                Ok(()) => return Ok(true),
                Err(SendError::QueueFull(back)) => {
                    let now = Instant::now();
                    if now >= *deadline.get_or_insert(now + kafka::CALL_TIMEOUT) {
                        return Err(PipelineError::QueueFull(kafka::CALL_TIMEOUT));
                    }
                    rec = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // librdkafka refused this record alone. The record was moved into
                // the send, so it is dead-lettered on its next attempt, after the
                // abort (see `poison`), like a refusal the broker reports later.
                Err(e @ SendError::RecordRefused { .. }) => {
                    tracing::warn!(error = %e, "record refused; aborting to dead-letter it");
                    if let Txn::Open { refused, .. } = &mut self.txn {
                        refused.push(kafka::RecordFailure {
                            origin,
                            error: e.to_string(),
                        });
                    }
                    self.abort_and_rewind("record refused").await?;
                    return Ok(false);
                }
                // The transaction cannot commit without this record.
                Err(e @ SendError::Failed { .. }) => {
                    tracing::warn!(error = %e, "produce failed; aborting the transaction");
                    self.abort_and_rewind("produce failed").await?;
                    return Ok(false);
                }
            }
        }
    }

    /// Step 3 and 4 of the cycle: snapshots, offsets, commit; then merge and
    /// checkpoint. Idle, it opens a transaction only for snapshots that are due.
    pub(super) async fn close_cycle(&mut self, mode: Snapshots) -> Result<()> {
        let now = Instant::now();
        // Before the snapshot decision: a partition whose records are in this
        // cycle is not quiet, however long it was before. The close's time
        // stands for the latest record's (at most a commit interval later): a
        // clock read per record costs more than the quiet rule's precision is
        // worth.
        for st in self.partitions.values_mut().filter(|st| st.touched) {
            st.last_record = Some(now);
        }
        let due: Vec<i32> = self
            .partitions
            .iter()
            .filter(|(_, st)| self.snapshot_due(st, mode))
            .map(|(p, _)| *p)
            .collect();
        if matches!(self.txn, Txn::Idle) && (due.is_empty() || !self.ensure_open().await?) {
            return Ok(());
        }
        for p in &due {
            if let Some(st) = self.partitions.get_mut(p) {
                st.snapshot_tried = Some(now);
            }
        }
        // Every close, the revocation's and the shutdown's included.
        let guard = self.commit_guard();
        if let Some(why) = guard() {
            return self.abort_after_refusal(&why).await;
        }
        let horizon = self.cfg.horizon;
        let mut offsets = Vec::new();
        let mut snapshots = Vec::new();
        for (p, st) in &self.partitions {
            let snapshot = due.contains(p);
            // A partition snapshotted alone re-sends its committed offset: that
            // puts the group's generation check (KIP-447) on the transaction, so a
            // zombie cannot commit an old snapshot after the new owner's.
            if st.touched || snapshot {
                offsets.push((*p, st.next_offset));
            }
            if snapshot {
                let mut snap = st.committed.clone();
                snap.merge(&st.pending, horizon);
                if failpoints::error("plant-wrong-snapshot") {
                    tracing::warn!(
                        partition = p,
                        "failpoint plant-wrong-snapshot: one processed record too many"
                    );
                    snap.processed += 1;
                }
                let record = insights::snapshot_record(
                    &self.cfg.process.input_topic,
                    *p,
                    st.next_offset,
                    &snap,
                    &self.fingerprint,
                );
                snapshots.push((*p, record));
            }
        }
        let mut sizes = Vec::with_capacity(snapshots.len());
        for (partition, s) in snapshots {
            let size = (s.value.len() + s.key.as_ref().map_or(0, Vec::len)) as u64;
            sizes.push((partition, size));
            self.stats.snapshots += 1;
            self.stats.snapshot_bytes += size;
            if !self.send(s, Origin::Snapshot { partition }).await? {
                return Ok(());
            }
        }
        // Failpoints count transactions holding records, as before snapshots
        // could commit alone: tests arm them by their data commits.
        let data = !self.cycle_is_snapshots_only();
        if data {
            failpoints::crash("before-commit");
            failpoints::stop("stop-before-commit");
        }
        let injected = data && failpoints::error("commit-error");
        let (producer, consumer, to_commit) = (
            self.producer.clone(),
            self.consumer.clone(),
            offsets.clone(),
        );
        let commit_started = Instant::now();
        let opened = match self.txn {
            Txn::Open { since, .. } => since,
            Txn::Idle => commit_started,
        };
        let deadline = opened + self.producer.transaction_timeout();
        let res = if injected {
            Err(TxnError::Abortable(
                "injected by failpoint commit-error".into(),
            ))
        } else if data && failpoints::error("commit-fatal") {
            Err(TxnError::Fatal("injected by failpoint commit-fatal".into()))
        } else {
            // librdkafka's `send_offsets_to_transaction` can wait
            // past its timeout while the group coordinator is gone (librdkafka
            // issues 5456, 5511). Past the deadline the transaction's outcome is
            // not known here: the producer is replaced, whose initialisation
            // fences the stuck one and settles its transaction, and every
            // partition is restored from what Kafka committed.
            // A second abandoned call while the first still hangs ends the
            // process instead: each holds a thread and a whole producer, and a
            // restart is what frees them.
            let bound = deadline.saturating_duration_since(Instant::now()) + COMMIT_GRACE;
            let running = Running::start(&self.commits_running);
            let call = blocking(move || {
                let res = producer.commit(&consumer, &to_commit, &guard, deadline);
                // What the call held is freed before it counts as ended.
                drop((producer, consumer, guard));
                drop(running);
                res
            });
            match beating(bound, call).await {
                Some(res) => res,
                None => {
                    let why = format!(
                        "the commit did not return within {:.1} s, {} s past the transaction's \
                         deadline (transaction.timeout.ms): a coordinator may be gone and \
                         librdkafka still waiting on it",
                        bound.as_secs_f64(),
                        COMMIT_GRACE.as_secs()
                    );
                    if self.commits_running.load(Ordering::SeqCst) > 1 {
                        return Err(PipelineError::FatalTxn(format!(
                            "{why}; an earlier abandoned commit has not returned either, so \
                             this process stops (a restart frees what they hold)"
                        )));
                    }
                    Err(TxnError::Fatal(why.into()))
                }
            }
        };
        match res {
            Ok(()) => {}
            Err(TxnError::Abortable(why)) => {
                tracing::warn!(error = %why, "commit failed; aborting and rewinding");
                return self.abort_after_refusal(&why).await;
            }
            Err(e) => return self.replace_producer(e).await,
        }
        self.committed(commit_started.elapsed());
        // Only partitions whose records moved end their abort streaks; one
        // snapshotted alone re-sent an offset that did not move.
        let moved: Vec<i32> = self
            .partitions
            .iter()
            .filter(|(_, st)| st.touched)
            .map(|(p, _)| *p)
            .collect();
        self.poison.on_commit(&moved);
        let snapshotted: Vec<(i32, i64)> = offsets
            .iter()
            .copied()
            .filter(|(p, _)| due.contains(p))
            .collect();
        for (p, next) in &snapshotted {
            if let Some(st) = self.partitions.get_mut(p) {
                st.snapshot = Some(*next);
                st.snapshot_refused = false;
                st.input_bytes = 0;
                st.snapshot_bytes = sizes.iter().find(|(q, _)| q == p).map_or(0, |(_, n)| *n);
            }
        }
        emit(SnapshotsCommitted {
            snapshots: &snapshotted,
        });
        if data {
            failpoints::crash("after-commit-before-checkpoint");
        }
        let mut checkpoints = Vec::new();
        for (p, st) in self.partitions.iter_mut().filter(|(_, st)| st.touched) {
            let pending = std::mem::take(&mut st.pending);
            if pending.uncounted > 0 {
                emit(SkippedByRetention {
                    records: pending.uncounted,
                });
            }
            st.committed.merge(&pending, horizon);
            st.committed_offset = st.next_offset;
            st.touched = false;
            st.head = None;
            st.runtime_verdict = false;
            checkpoints.push(Checkpoint {
                partition: *p,
                next_offset: st.committed_offset,
                state: st.committed.clone(),
                fingerprint: self.fingerprint.encode(),
            });
        }
        if let Some(p) = failpoints::value("plant-checkpoint-ahead") {
            for c in checkpoints
                .iter_mut()
                .filter(|c| p.parse() == Ok(c.partition))
            {
                tracing::warn!(
                    partition = c.partition,
                    "failpoint plant-checkpoint-ahead: checkpoint one offset ahead"
                );
                c.next_offset += 1;
            }
        }
        let (store, ns) = (self.store.clone(), self.ns.clone());
        let (checkpoints, took) = blocking(move || {
            let started = Instant::now();
            store
                .checkpoint(&ns, &checkpoints)
                .map(|()| (checkpoints, started.elapsed()))
        })
        .await?;
        emit(CheckpointWritten {
            topic: &self.cfg.process.input_topic,
            partitions: checkpoints
                .into_iter()
                .map(|c| (c.partition, c.next_offset, c.state))
                .collect(),
            took,
        });
        Ok(())
    }

    /// Aborts instead of committing; when the zombie guard found a pause, holds
    /// commits until the group's verdict has reached librdkafka.
    async fn abort_after_refusal(&mut self, why: &str) -> Result<()> {
        self.abort_and_rewind(why).await?;
        if self
            .pause_clock
            .stopped_since(self.last_iteration)
            .is_some()
        {
            self.hold_commits();
        }
        Ok(())
    }

    /// After an abort: one of tally's topics may have been deleted while it ran.
    /// librdkafka does not always say so (a record for a deleted topic can also
    /// time out, or be purged by the abort), so an abort asks the cluster, in one
    /// metadata request, whether each of tally's topics still exists: at once
    /// after a delivery failed for an unknown topic, otherwise at most once per
    /// `TOPICS_CHECK_EVERY` (aborts come in bursts while a broker is down, when
    /// the request would only wait). Nothing of the aborted transaction was
    /// committed; carrying on would abort every cycle, so tally stops, naming the
    /// topic. A cluster that cannot answer lets the loop go on.
    async fn check_topics_exist(&mut self) -> Result<()> {
        let named = self.producer.take_unknown_topic();
        // Shutting down, the answer changes nothing and its wait would eat
        // into --shutdown-timeout.
        if self.shutdown.load(Ordering::SeqCst) {
            return Ok(());
        }
        if named.is_none()
            && self
                .topics_checked
                .is_some_and(|t| t.elapsed() < TOPICS_CHECK_EVERY)
        {
            return Ok(());
        }
        self.topics_checked = Some(Instant::now());
        let topics = vec![
            self.cfg.topics.processed.clone(),
            self.cfg.topics.dead_letter.clone(),
            self.cfg.topics.insights.clone(),
            self.cfg.process.input_topic.clone(),
        ];
        let c = self.consumer.clone();
        let asked = beating(
            TOPICS_CHECK_TIMEOUT + COMMIT_GRACE,
            blocking(move || c.missing_topics(&topics, TOPICS_CHECK_TIMEOUT)),
        )
        .await;
        match asked {
            Some(Ok(missing)) => match missing.into_iter().next() {
                Some(topic) => Err(PipelineError::TopicGone { topic }),
                None => Ok(()),
            },
            Some(Err(e)) if e.is_not_authorized() => Err(PipelineError::Kafka(e)),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot tell whether tally's topics still exist; carrying on");
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Step 5: abort, drop pending deltas, seek every partition back to `C`.
    pub(super) async fn abort_and_rewind(&mut self, why: &str) -> Result<()> {
        if matches!(self.txn, Txn::Idle) {
            return Ok(());
        }
        let p = self.producer.clone();
        if let Err(e) = blocking(move || p.abort()).await {
            return self.replace_producer(e).await;
        }
        self.aborted(Rewind::Seek(why)).await?;
        // A missing ACL aborts every transaction that touches its resource:
        // stop, naming it, instead of aborting for ever.
        if let Some((denied, detail)) = self.producer.take_denied() {
            return Err(super::not_authorized(&self.cfg, denied, detail));
        }
        self.check_topics_exist().await
    }

    /// The open transaction committed: counted and reported, here only.
    fn committed(&mut self, commit: Duration) {
        let tally = match std::mem::replace(&mut self.txn, Txn::Idle) {
            Txn::Open { tally, .. } => tally,
            Txn::Idle => CycleTally::default(),
        };
        self.stats.committed += 1;
        self.stats.records.add(tally.counts());
        emit(TransactionCommitted { tally, commit });
    }

    /// Every abort ends here, once the broker's side is done (an abort call, a
    /// replaced producer, a fencing probe's abort): the transaction is counted
    /// and reported as aborted, its heads and record failures go to the poison
    /// rule, every partition's pending state is dropped, and the partitions go
    /// back to `C` as `rewind` says. Called while the producer that ran the
    /// transaction is still `self.producer`: the record failures it collected
    /// are the transaction's, taken before it is replaced.
    pub(super) async fn aborted(&mut self, rewind: Rewind<'_>) -> Result<()> {
        let tally = match std::mem::replace(&mut self.txn, Txn::Idle) {
            Txn::Open { tally, refused, .. } => {
                self.note_abort(refused);
                tally
            }
            // A `begin` that failed fatally, its producer replaced: counted as
            // an aborted transaction too.
            Txn::Idle => CycleTally::default(),
        };
        self.stats.aborted += 1;
        self.stats.records.add(tally.counts());
        emit(TransactionAborted);
        for st in self.partitions.values_mut() {
            st.pending = Aggregate::default();
            st.touched = false;
            st.head = None;
            st.runtime_verdict = false;
        }
        match rewind {
            Rewind::Seek(why) => {
                // Every active partition, touched or not: librdkafka may have
                // delivered records past `C` that the loop now drops (the rest of
                // the batch).
                let mut seeks = Vec::new();
                for (p, st) in &mut self.partitions {
                    if matches!(st.phase, Phase::Active) {
                        st.next_offset = st.committed_offset;
                        seeks.push((*p, st.committed_offset));
                    }
                }
                tracing::warn!(reason = why, rewound = ?seeks, "transaction aborted");
                let (c, sought) = (self.consumer.clone(), seeks.clone());
                let rewind = blocking(move || c.seek(&sought)).await?;
                for (p, _) in seeks {
                    if let Some(st) = self.partitions.get_mut(&p) {
                        st.since_rewind = rewind;
                    }
                }
            }
            Rewind::Restore(fresh) => {
                self.swap_producer(fresh).await;
                for st in self.partitions.values_mut() {
                    st.phase = Phase::Restoring;
                }
                let all: Vec<i32> = self.partitions.keys().copied().collect();
                let c = self.consumer.clone();
                let paused = all.clone();
                let rewind = blocking(move || c.pause(&paused)).await?;
                for st in self.partitions.values_mut() {
                    st.since_rewind = rewind;
                }
                // New restores, with new tokens: a restore still running from
                // before is now stale and its result will be ignored.
                self.spawn_restore(all);
            }
            Rewind::Dropped => {}
        }
        Ok(())
    }

    /// Hands the aborted transaction's heads and record-level failures (`refused`
    /// and what the producer reported) to the poison rule.
    fn note_abort(&mut self, refused: Vec<kafka::RecordFailure>) {
        let heads: Vec<(i32, i64)> = self
            .partitions
            .iter()
            .filter_map(|(p, st)| st.head.map(|h| (*p, h)))
            .collect();
        let mut failures = refused;
        failures.extend(self.producer.take_record_failures());
        for f in &failures {
            if let Origin::Snapshot { partition } = f.origin {
                if let Some(st) = self.partitions.get_mut(&partition) {
                    st.snapshot_refused = true;
                }
            }
        }
        self.poison.on_abort(&heads, failures);
    }

    /// How long the open transaction has been open (`None`: none is).
    pub(super) fn open_for(&self) -> Option<Duration> {
        match self.txn {
            Txn::Open { since, .. } => Some(since.elapsed()),
            Txn::Idle => None,
        }
    }

    /// A fenced error for a transaction that had been open for `open_for` when
    /// it failed, if the coordinator timed it out (see [`why_fenced`]): the
    /// error naming that cause; `None` when another process took the id.
    pub(super) fn timed_out(&self, open_for: Option<Duration>, why: &str) -> Option<String> {
        let timeout = self.producer.transaction_timeout();
        (why_fenced(open_for, timeout) == Fencing::TimedOut).then(|| {
            format!(
                "{why} (the transaction was open for longer than transaction.timeout.ms \
                 {} ms, so the coordinator aborted it and bumped the producer's epoch; \
                 no other process holds the transactional.id)",
                timeout.as_millis()
            )
        })
    }

    /// A transactional producer in a fatal state cannot even abort. Replace it:
    /// the new one's `init_transactions` aborts whatever the old one left open.
    /// Whether a failed commit reached the broker is unknown, so every partition
    /// is then recovered as on assignment, from the group's committed offsets and
    /// the checkpoints (the rules of docs/design.md), never from memory. Fenced errors stop
    /// the process unless the coordinator timed the transaction out; so do more
    /// than 3 replacements a minute.
    pub(super) async fn replace_producer(&mut self, e: TxnError) -> Result<()> {
        let why = match e {
            TxnError::Fatal(why) | TxnError::Abortable(why) => why.to_string(),
            TxnError::Fenced(why) => match self.timed_out(self.open_for(), &why) {
                Some(why) => why,
                None => return Err(txn_fatal(&self.cfg, TxnError::Fenced(why))),
            },
            // A new producer would be refused the same way.
            e @ TxnError::NotAuthorized(..) => return Err(txn_fatal(&self.cfg, e)),
        };
        let fresh = self.new_producer(&why).await?;
        self.aborted(Rewind::Restore(fresh)).await
    }

    /// Swaps in a new transactional producer with no transaction open (see
    /// `new_producer`).
    pub(super) async fn renew_producer(&mut self, why: &str) -> Result<()> {
        let fresh = self.new_producer(why).await?;
        self.swap_producer(fresh).await;
        Ok(())
    }

    /// A new transactional producer (its `init_transactions` fences the old
    /// one and aborts what it left open), at most 3 times a minute. A shutdown
    /// signal ends its wait for the coordinator; the loop then stops with no
    /// transaction open.
    async fn new_producer(&mut self, why: &str) -> Result<Arc<TxnProducer>> {
        let now = Instant::now();
        self.producer_replacements
            .retain(|t| now.duration_since(*t) < Duration::from_secs(60));
        if self.producer_replacements.len() >= 3 {
            return Err(PipelineError::FatalTxn(format!(
                "{why} (the producer was already replaced 3 times in the last minute)"
            )));
        }
        self.producer_replacements.push(now);
        tracing::warn!(error = %why, "transactional producer failed; replacing it and recovering every partition");
        let fresh = Arc::new(self.cfg.txn_producer()?);
        let initialised = init_producer(fresh.clone(), self.shutdown.clone())
            .await
            .map_err(|e| txn_fatal(&self.cfg, e))?;
        if !initialised {
            tracing::warn!(
                "shutdown requested while the new producer waited for the transaction coordinator"
            );
        }
        Ok(fresh)
    }

    async fn swap_producer(&mut self, fresh: Arc<TxnProducer>) {
        let old = std::mem::replace(&mut self.producer, fresh);
        blocking(move || drop(old)).await;
        emit(ProducerReplaced);
    }
}

/// The input records `[from, to)` deleted by retention before the consumer read
/// them, when the next polled offset after `expected` is `polled` and the
/// partition's log now starts at `log_start`; `None` when nothing below
/// `polled` was deleted (a gap of transaction markers or aborted records).
fn retention_gap(expected: i64, polled: i64, log_start: i64) -> Option<(i64, i64)> {
    (polled > expected && log_start > expected).then(|| (expected, log_start.min(polled)))
}

#[cfg(test)]
mod gap_tests {
    use super::retention_gap;

    #[test]
    fn only_a_log_start_past_the_expected_offset_is_a_retention_gap() {
        // Markers or aborted records: the log still starts below.
        assert_eq!(retention_gap(100, 102, 0), None);
        assert_eq!(retention_gap(100, 102, 100), None);
        // No gap at all.
        assert_eq!(retention_gap(100, 100, 150), None);
        // Retention: [100, 150) deleted; the rest of the gap is markers.
        assert_eq!(retention_gap(100, 152, 150), Some((100, 150)));
        assert_eq!(retention_gap(100, 150, 150), Some((100, 150)));
        // The log start moved on past the polled record meanwhile.
        assert_eq!(retention_gap(100, 150, 170), Some((100, 150)));
    }
}
