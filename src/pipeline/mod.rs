//! `tally run`: the one loop that owns the transaction.
//!
//! - this file: the loop itself (poll, dispatch, shutdown) and the state it owns;
//! - [`cycle`]: the transaction cycle: records in, commit or abort, checkpoint;
//! - [`rebalance`]: partitions assigned and revoked;
//! - [`restore`]: recovering a partition's aggregates when it is assigned.
//!
//! The cycle (docs/design.md): poll → process (pure) → produce outputs, DLQ
//! entries and aggregate deltas (pending) inside a transaction → at the end of the
//! cycle produce the touched partitions' snapshots, send the next offsets with the
//! group metadata, commit → only then merge the pending deltas and checkpoint them
//! with the next offset in RocksDB. The local checkpoint is therefore never ahead
//! of Kafka: a crash between commit and checkpoint leaves `K < C`, which recovery
//! repairs by replaying `[K, C)` without producing anything.
//!
//! librdkafka runs rebalance callbacks on the thread that polls. Polls run on a
//! blocking thread while this loop keeps serving the callbacks' requests, so a
//! revocation waits until the loop has closed the transaction.

mod cycle;
mod pause;
mod poison;
mod rebalance;
mod restore;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tally_state::{Namespace, StateStore};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::aggregate::{Aggregate, Horizon};
use crate::event::ProcessConfig;
use crate::failpoints;
use crate::insights::{self, Fingerprint};
use crate::kafka::{
    self, GroupConsumer, MemberConfig, OutputTopics, Rebalance, RewindId, TxnError, TxnProducer,
};
use crate::observe::{self, CycleTally, LoopIteration, ProducerInitialised, RecordCounts, emit};

pub use restore::{RestoreError, RestoreOptions};
use restore::{RestoreTicket, Restored};

/// Past `--snapshot-interval`, a partition's snapshot is due only once it is
/// worth its bytes: every touched partition writes its whole aggregate (up to a
/// day of minutes), so by time alone many partitions at a low rate each would
/// write more snapshot than input.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotBudget {
    /// Input bytes since the last snapshot, per byte of that snapshot (0: off).
    pub input_ratio: u64,
    /// No record for this long: the snapshot catches up whatever its cost.
    pub quiet: Duration,
    /// Never more than this behind, in time.
    pub max_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub connection: kafka::Connection,
    pub process: ProcessConfig,
    pub member: MemberConfig,
    pub transactional_id: String,
    /// `transactional_id` is `<prefix>-<instance id>`.
    pub transactional_id_prefix: String,
    pub topics: OutputTopics,
    /// The insights topic's partition count, read at start.
    pub insights_partitions: usize,
    pub commit_interval: Duration,
    /// A partition's snapshot is written at most this often (see
    /// `Pipeline::snapshot_due`), and always when it is revoked or at shutdown.
    pub snapshot_interval: Duration,
    /// When a snapshot is worth its bytes (see `Pipeline::snapshot_due`).
    pub snapshot_budget: SnapshotBudget,
    pub max_batch_records: usize,
    pub horizon: Horizon,
    pub state_dir: PathBuf,
    pub progress_interval: Duration,
    /// How long the shutdown may take once a signal arrived (guarantee 4).
    pub shutdown_timeout: Duration,
    pub restore: RestoreOptions,
    /// A record at the head of this many consecutive aborts with record-level
    /// failures is dead-lettered as `poison` (see `poison`).
    pub poison_aborts: u32,
    /// A polled batch stops growing at this many bytes of keys and values.
    pub max_batch_bytes: usize,
    /// On shutdown, leave the group (LeaveGroup) instead of keeping the static
    /// member's place for its restart.
    pub leave_group_on_shutdown: bool,
}

impl PipelineConfig {
    /// The transactional producer of this configuration: at start, and each time
    /// a failed one is replaced.
    fn txn_producer(&self) -> kafka::Result<TxnProducer> {
        TxnProducer::new(
            &self.connection,
            &self.transactional_id,
            self.topics.clone(),
            &self.process.input_topic,
            kafka::batch_bytes(&[
                self.process.output_limits.processed_max_bytes,
                self.process.output_limits.dlq_max_bytes,
            ]),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(
        "fenced: another process now holds instance id {instance_id:?} (transactional.id {transactional_id:?}), \
         or this process was paused past the session timeout and its membership expired; \
         it stops so it cannot write anything, restart it to rejoin ({detail})"
    )]
    Fenced {
        instance_id: String,
        transactional_id: String,
        detail: String,
    },
    #[error(
        "the producer's local queue stayed full for {0:?}: the broker took no records \
         (down, unreachable, or refusing them; see the librdkafka warnings above); \
         the open transaction is left to the broker to abort, restart once it is reachable"
    )]
    QueueFull(Duration),
    #[error(
        "shutdown did not finish within --shutdown-timeout {limit:?} (stuck {stage}; is the broker \
         reachable?): exiting without leaving the group cleanly. Nothing is lost: an open \
         transaction is aborted by the broker (transaction.timeout.ms) or by this instance's \
         next start, the local checkpoint is never ahead of Kafka, and the group reassigns \
         the partitions after the session timeout"
    )]
    ShutdownTimeout {
        limit: Duration,
        stage: &'static str,
    },
    #[error("fatal transaction error, stopping: {0}")]
    FatalTxn(String),
    #[error(transparent)]
    Kafka(#[from] kafka::Error),
    #[error(transparent)]
    State(#[from] tally_state::StateError),
    /// Permanent, or transient errors outlived the retries.
    #[error("restoring state failed: {0}")]
    Restore(Box<RestoreError>),
    #[error(
        "input partitions {partitions:?} of {input} have no insights partition: {insights} has \
         {insights_partitions} partitions. Partitions were added to the input while tally ran; \
         input partition p's snapshots go to insights partition p, so add the same partitions to \
         {insights} (kafka-topics --alter --topic {insights} --partitions {needed}), then restart"
    )]
    InputGrew {
        input: String,
        insights: String,
        partitions: Vec<i32>,
        insights_partitions: usize,
        needed: i32,
    },
    #[error(
        "topic {topic} does not exist any more (deleted while tally ran?): the open transaction \
         was aborted, so nothing past what was produced to it is committed. Re-create it \
         (`tally create-topics`) or name another one, then restart"
    )]
    TopicGone { topic: String },
    #[error(
        "partition {partition}: retention deleted input records [{from}, {to}) before tally read \
         them (the group lagged behind the input's retention); they can be neither processed nor \
         counted, and nothing past {from} was committed. Restore the records, or accept a lower \
         bound with --allow-inexact-restore ({count} records counted as `uncounted`); keep the \
         input's retention longer than the group's lag",
        count = to - from
    )]
    OvertakenByRetention { partition: i32, from: i64, to: i64 },
}

impl PipelineError {
    /// Exit status of a process fenced by another holding its instance id: a
    /// supervisor tells it from a failure (restarting it only fences the other).
    pub const EXIT_FENCED: i32 = 3;

    /// The process's exit status when this error ends it.
    pub fn exit_code(&self) -> i32 {
        match self {
            PipelineError::Fenced { .. } => Self::EXIT_FENCED,
            _ => 1,
        }
    }

    /// Whether `--shutdown-timeout` is spent: the process exits without
    /// waiting for a blocking call in flight.
    pub fn is_out_of_time(&self) -> bool {
        matches!(self, PipelineError::ShutdownTimeout { .. })
    }
}

type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// Runs `f` on a blocking thread: Kafka transaction calls and RocksDB writes
/// never block the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

/// Drops a Kafka client on a blocking thread, not waited for: rdkafka's drop
/// of a consumer polls in 100 ms steps until librdkafka reports it closed
/// (no event wakes it), and closing a fenced consumer may wait on the
/// coordinator.
fn drop_later<T: Send + 'static>(client: T) {
    drop(tokio::task::spawn_blocking(move || drop(client)));
}

#[derive(Debug)]
enum Phase {
    /// Paused while its aggregates are restored.
    Restoring,
    Active,
}

#[derive(Debug)]
struct PartitionState {
    phase: Phase,
    /// Records stamped with an earlier [`RewindId`] were fetched before this
    /// partition's latest assignment, seek or pause: stale by construction, they
    /// are dropped one by one wherever the loop is in a batch.
    since_rewind: RewindId,
    /// `C`: the next offset committed in Kafka (and checkpointed).
    committed_offset: i64,
    /// The next offset to process; `> committed_offset` while a transaction holds records.
    next_offset: i64,
    /// Aggregate of exactly the records with offset `< committed_offset`.
    committed: Aggregate,
    /// Deltas of the open transaction, merged only after it commits.
    pending: Aggregate,
    touched: bool,
    /// The first offset this partition processed in the open transaction: the
    /// head the poison rule blames. Not `committed_offset`, which may hold no
    /// record at all (a transaction marker of a transactional input producer).
    head: Option<i64>,
    /// The latest restore started for this partition, while it is restoring.
    restore: Option<RestoreTicket>,
    /// The offset the latest snapshot this instance committed covers (`None`:
    /// unknown, after a restore).
    snapshot: Option<i64>,
    /// When a cycle last tried to write one (committed or not): at most one try
    /// per `--snapshot-interval`, so a snapshot the broker keeps refusing cannot
    /// spin an idle loop through transactions. `None`: one is due now.
    snapshot_tried: Option<Instant>,
    /// Size (key and value) of the latest snapshot this instance committed; 0:
    /// none yet, so the next one is due without a budget.
    snapshot_bytes: u64,
    /// Input bytes (keys and values) processed since that snapshot, aborted
    /// transactions included: an estimate for the budget, not a count.
    input_bytes: u64,
    /// When the partition's latest record was processed.
    last_record: Option<Instant>,
    /// The input's log start as last read from the cluster (it only grows):
    /// an offset below it was deleted, with no need to ask again.
    known_log_start: i64,
    /// A read of the log start failed: the partition's gaps stay undecided
    /// until then.
    gap_retry_at: Option<Instant>,
    /// The open transaction dead-lettered a record of this partition at
    /// runtime: its snapshot is due at the close (see `Pipeline::snapshot_due`).
    runtime_verdict: bool,
    /// The broker refused this partition's latest snapshot attempt.
    snapshot_refused: bool,
}

impl PartitionState {
    fn new(since_rewind: RewindId) -> Self {
        PartitionState {
            phase: Phase::Restoring,
            since_rewind,
            committed_offset: 0,
            next_offset: 0,
            committed: Aggregate::default(),
            pending: Aggregate::default(),
            touched: false,
            head: None,
            restore: None,
            snapshot: None,
            snapshot_tried: None,
            snapshot_bytes: 0,
            input_bytes: 0,
            last_record: None,
            known_log_start: 0,
            gap_retry_at: None,
            runtime_verdict: false,
            snapshot_refused: false,
        }
    }
}

/// Which partitions' snapshots a closing cycle writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Snapshots {
    /// Those whose last snapshot is older than `--snapshot-interval` and behind.
    Due,
    /// Every partition whose last snapshot is behind: at a revocation (the next
    /// owner restores from them) and at shutdown.
    All,
}

/// The transaction's lifecycle. What exists only while a transaction is open
/// lives in `Open`, so it is gone with the transaction, whichever way it ends.
#[derive(Debug)]
enum Txn {
    Idle,
    Open {
        since: Instant,
        records: usize,
        /// What it holds, reported to the metrics when it commits.
        tally: CycleTally,
        /// Records librdkafka refused synchronously in it: the poison rule's
        /// at its abort.
        refused: Vec<kafka::RecordFailure>,
    },
}

/// How the partitions of an aborted transaction get back to `C`.
enum Rewind<'a> {
    /// Each active partition is sought back to its committed offset; the
    /// reason is logged with the offsets.
    Seek(&'a str),
    /// The producer is replaced by this one, and every partition recovered as
    /// on assignment: whether the transaction reached the broker is unknown.
    Restore(Arc<TxnProducer>),
    /// None: the caller drops every partition (the consumer is replaced).
    Dropped,
}

/// The loop's running totals, for the progress line. Records are counted by
/// their transaction's tally (the one place outcomes are classified, which the
/// metrics read at commit) and added here when the transaction ends, committed
/// or aborted.
#[derive(Debug, Default)]
struct Stats {
    /// Records of transactions that ended; the open one's are in its tally.
    records: RecordCounts,
    stale_dropped: u64,
    committed: u64,
    aborted: u64,
    /// Snapshots produced to the insights topic (in committed or aborted
    /// transactions) and their bytes: the write volume of the changelog.
    snapshots: u64,
    snapshot_bytes: u64,
}

pub struct Pipeline {
    cfg: PipelineConfig,
    consumer: Arc<GroupConsumer>,
    producer: Arc<TxnProducer>,
    store: Arc<StateStore>,
    ns: Namespace,
    rebalances: UnboundedReceiver<Rebalance>,
    restored_tx: UnboundedSender<Restored>,
    restored_rx: UnboundedReceiver<Restored>,
    /// Tokens of restores started so far (see `RestoreTicket`).
    restore_tokens: u64,
    /// The insights topic's partition count as last read (0: not read yet); see
    /// `check_insights_partitions`.
    insights_partitions: usize,
    /// When an abort last asked whether tally's topics exist
    /// (`check_topics_exist`).
    topics_checked: Option<Instant>,
    /// Stored with every checkpoint and snapshot.
    fingerprint: Fingerprint,
    partitions: BTreeMap<i32, PartitionState>,
    txn: Txn,
    stats: Stats,
    /// Commits are held until this instant after the process was found paused
    /// for longer than the session timeout (see `check_paused`). Not part of
    /// `Txn::Open`: it outlives the transaction aborted for the pause and holds
    /// back the commits of the transactions after it.
    hold_commits_until: Option<Instant>,
    /// When the transactional producer was last replaced (see `replace_producer`).
    producer_replacements: Vec<Instant>,
    /// Commit calls running, abandoned ones among them (see `COMMIT_GRACE`):
    /// each holds a thread and the producer it was called on until it returns.
    commits_running: Arc<std::sync::atomic::AtomicUsize>,
    /// When the consumer was last re-created after being fenced (see `rejoin`).
    rejoins: Vec<Instant>,
    /// Records to dead-letter on their next attempt, and abort streaks.
    poison: poison::Poison,
    /// When the loop last passed its top: the zombie guard looks for stops of the
    /// process since then.
    last_iteration: Instant,
    pause_clock: pause::PauseClock,
    /// What the loop is doing, named in the error when the shutdown runs out of time.
    stage: &'static str,
    /// Set by SIGINT/SIGTERM.
    shutdown: Arc<AtomicBool>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("txn", &self.txn).finish()
    }
}

impl Pipeline {
    /// Opens the state store, creates the clients and registers the transactional
    /// id (fencing any zombie of ours and aborting its open transaction).
    /// `None`: `shutdown` was set while the registration was still waiting.
    pub async fn start(cfg: PipelineConfig, shutdown: Arc<AtomicBool>) -> Result<Option<Self>> {
        let dir = cfg.state_dir.clone();
        let store = Arc::new(blocking(move || StateStore::open(dir)).await?);
        let (consumer, rebalances) = GroupConsumer::new(&cfg.connection, &cfg.member)?;
        let producer = Arc::new(cfg.txn_producer()?);
        let p = producer.clone();
        tracing::info!(transactional_id = %cfg.transactional_id, "initialising transactions");
        failpoints::error("before-init-transactions");
        let initialised = init_producer(p, shutdown.clone())
            .await
            .map_err(|e| txn_fatal(&cfg, e))?;
        if !initialised {
            tracing::info!(
                "shutdown requested while initialising transactions; nothing was processed"
            );
            return Ok(None);
        }
        emit(ProducerInitialised);
        observe::telemetry().status.set_horizon(cfg.horizon);
        consumer.subscribe()?;
        let (restored_tx, restored_rx) = unbounded_channel();
        let session_timeout = cfg.member.session_timeout;
        let cfg_poison = cfg.poison_aborts;
        let insights_partitions = cfg.insights_partitions;
        Ok(Some(Pipeline {
            ns: Namespace::new(&cfg.member.group, &cfg.process.input_topic),
            fingerprint: Fingerprint::of(&cfg.process, cfg.horizon),
            cfg,
            consumer: Arc::new(consumer),
            producer,
            store,
            rebalances,
            restored_tx,
            restored_rx,
            restore_tokens: 0,
            insights_partitions,
            topics_checked: None,
            partitions: BTreeMap::new(),
            txn: Txn::Idle,
            stats: Stats::default(),
            hold_commits_until: None,
            producer_replacements: Vec::new(),
            commits_running: Arc::default(),
            rejoins: Vec::new(),
            poison: poison::Poison::new(cfg_poison),
            last_iteration: Instant::now(),
            pause_clock: pause::PauseClock::start(session_timeout),
            stage: "finishing the current batch",
            shutdown,
        }))
    }

    /// Runs until `shutdown` is set, then closes the transaction and leaves the
    /// group, all of it within `shutdown_timeout` of the signal (guarantee 4).
    pub async fn run(mut self) -> Result<()> {
        let limit = self.cfg.shutdown_timeout;
        let shutdown = self.shutdown.clone();
        // One clock for the whole shutdown, started when the signal is seen here:
        // the loop may notice it only after a slow commit.
        let signalled = std::sync::OnceLock::new();
        let watchdog = async {
            while !shutdown.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = signalled.set(Instant::now());
            tokio::time::sleep(limit).await;
        };
        // Dropping the work future when time is up drops whatever it awaited: a
        // commit still running on its blocking thread can no longer be followed
        // by a checkpoint, so the checkpoint stays behind Kafka (`K <= C`).
        let finished = tokio::select! {
            res = self.process_then_leave(&shutdown) => Some(res),
            () = watchdog => None,
        };
        match finished {
            Some(Ok(())) => {
                // Closing the consumer talks to the coordinator too.
                let left = signalled
                    .get()
                    .map_or(limit, |t| limit.saturating_sub(t.elapsed()));
                let closing = blocking(move || drop(self));
                tokio::time::timeout(left, closing).await.map_err(|_| {
                    PipelineError::ShutdownTimeout {
                        limit,
                        stage: "closing the consumer",
                    }
                })
            }
            Some(Err(e)) => {
                // Closing the consumer would run rebalance callbacks nobody serves
                // and, for a fenced member, wait on a group that is no longer ours.
                // The process is about to exit: leave the consumer to the OS.
                std::mem::forget(self.consumer.clone());
                Err(e)
            }
            None => {
                let stage = self.stage;
                // Dropping the clients would wait for the broker again.
                std::mem::forget(self);
                Err(PipelineError::ShutdownTimeout { limit, stage })
            }
        }
    }

    async fn process_then_leave(&mut self, shutdown: &AtomicBool) -> Result<()> {
        self.process_until(shutdown).await?;
        self.shutdown().await
    }

    async fn process_until(&mut self, shutdown: &AtomicBool) -> Result<()> {
        let mut last_progress = Instant::now();
        while !shutdown.load(Ordering::SeqCst) {
            emit(LoopIteration);
            self.check_paused().await?;
            // Idle, the first records open the transaction as soon as they come
            // (`settle`): a stream that never pauses 5 ms would otherwise fill one
            // idle batch for the whole 250 ms before its transaction even began.
            let (budget, settle) = match self.txn {
                Txn::Idle => (Duration::from_millis(250), Duration::from_millis(5)),
                // No commit can close the cycle yet: no point in short polls.
                Txn::Open { .. } if self.commits_held() => {
                    (Duration::from_millis(100), Duration::from_millis(100))
                }
                Txn::Open { since, .. } => {
                    let left = self
                        .cfg
                        .commit_interval
                        .saturating_sub(since.elapsed())
                        .max(Duration::from_millis(1));
                    (left, left)
                }
            };
            let room = match self.txn {
                Txn::Idle => self.cfg.max_batch_records,
                Txn::Open { records, .. } => {
                    self.cfg.max_batch_records.saturating_sub(records).max(1)
                }
            };
            let consumer = self.consumer.clone();
            let max_bytes = self.cfg.max_batch_bytes;
            let mut poll = tokio::task::spawn_blocking(move || {
                consumer.poll_batch(room, max_bytes, budget, settle)
            });
            let polled = loop {
                tokio::select! {
                    res = &mut poll => break res.expect("poll task panicked"),
                    Some(ev) = self.rebalances.recv() => self.on_rebalance(ev).await?,
                    Some(done) = self.restored_rx.recv() => self.on_restored(done).await?,
                }
            };
            let polled = match polled {
                Ok(p) => p,
                Err(kafka::Error::Fenced(detail)) => {
                    self.rejoin(detail).await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            // A rewind while the batch was in flight, as a revocation whose commit
            // fails does under cooperative assignment (unreachable under eager).
            if !polled.is_empty()
                && matches!(self.txn, Txn::Open { .. })
                && failpoints::error("abort-during-poll")
            {
                self.abort_and_rewind("injected by failpoint abort-during-poll")
                    .await?;
            }
            for p in polled {
                self.on_record(p).await?;
            }
            // Evaluated once a batch is in the open transaction and before the
            // cycle can close, so a test's hold always has records to hold.
            if matches!(self.txn, Txn::Open { .. }) && failpoints::error("hold-commits") {
                tracing::warn!("commits held by failpoint hold-commits");
                self.hold_commits();
            }
            // As if the next poll reported the consumer fenced by its own rejoin,
            // with this batch's transaction open (the case with more to undo).
            if matches!(self.txn, Txn::Open { .. }) && failpoints::error("consumer-fenced") {
                self.rejoin("injected by failpoint consumer-fenced".into())
                    .await?;
                continue;
            }
            if matches!(self.txn, Txn::Idle) || self.cycle_due() {
                self.step_over_markers().await?;
            }
            if self.cycle_due() || self.snapshot_catch_up_due() {
                self.close_cycle(Snapshots::Due).await?;
            }
            if last_progress.elapsed() >= self.cfg.progress_interval {
                self.log_progress();
                last_progress = Instant::now();
            }
        }
        Ok(())
    }

    /// A process stopped (SIGSTOP, VM pause) for longer than the session timeout
    /// has lost its partitions, but librdkafka learns that only at its next
    /// heartbeat. Abort what is open and hold commits for a few heartbeats so the
    /// revocation arrives before we could commit for partitions that moved.
    async fn check_paused(&mut self) -> Result<()> {
        let stopped = self.pause_clock.stopped_since(self.last_iteration);
        self.last_iteration = Instant::now();
        if let Some(gap) = stopped {
            tracing::warn!(
                paused_secs = gap.as_secs_f64(),
                "process was paused longer than the session timeout; aborting the open transaction and holding commits"
            );
            self.abort_and_rewind("process was paused").await?;
            self.hold_commits();
        }
        Ok(())
    }

    fn hold_commits(&mut self) {
        self.hold_commits_until = Some(Instant::now() + self.cfg.member.session_timeout);
    }

    /// The zombie guard, run right before each step of a commit (sending the
    /// offsets, committing), on whatever thread runs it: `Some(reason)` when the
    /// commit must not happen. A stop of the process anywhere in this loop
    /// iteration (inside a poll, between the poll and the commit) longer than the
    /// session timeout means the group has likely moved our partitions while
    /// librdkafka has not heard of it yet. Waiting on a slow broker is no stop
    /// (see [`pause`]): librdkafka's heartbeats go on meanwhile.
    fn commit_guard(&self) -> impl Fn() -> Option<String> + Send + Sync + 'static {
        let since = self.last_iteration;
        let clock = self.pause_clock.clone();
        let held = self.hold_commits_until;
        let consumer = self.consumer.clone();
        move || {
            if held.is_some_and(|t| Instant::now() < t) {
                return Some("commits are held after a pause".into());
            }
            if let Some(gap) = clock.stopped_since(since) {
                return Some(format!(
                    "process was paused: stopped for {:.1} s, longer than the session timeout",
                    gap.as_secs_f64()
                ));
            }
            consumer
                .assignment_lost()
                .then(|| "assignment lost".to_string())
        }
    }

    fn log_progress(&self) {
        let s = &self.stats;
        let mut records = s.records;
        if let Txn::Open { tally, .. } = &self.txn {
            records.add(tally.counts());
        }
        tracing::info!(
            records_in = records.total(),
            processed = records.processed,
            dlq = records.dead_lettered,
            filtered = records.filtered,
            stale = s.stale_dropped,
            txn_committed = s.committed,
            txn_aborted = s.aborted,
            snapshots = s.snapshots,
            snapshot_bytes = s.snapshot_bytes,
            partitions = ?self.partitions.keys().collect::<Vec<_>>(),
            "progress"
        );
        let mut all = Aggregate::default();
        for st in self.partitions.values() {
            all.merge(&st.committed, self.cfg.horizon);
        }
        if all.total() > 0 {
            tracing::info!("{}", insights::one_line(&all));
        }
    }

    /// Guarantee 4: finish the open transaction (commit, or abort when a commit
    /// is not allowed or fails), checkpoint, and either keep the static
    /// member's place (the default: closing the consumer sends no LeaveGroup,
    /// so a restart within the session timeout moves no partition) or leave the
    /// group (`--leave-group-on-shutdown`: the others take over at once).
    async fn shutdown(&mut self) -> Result<()> {
        tracing::info!("shutting down: committing the open transaction");
        self.stage = "committing the open transaction";
        failpoints::error("shutdown-before-commit");
        self.close_cycle(Snapshots::All).await?;
        self.log_progress();
        // From here on rebalance callbacks have nothing to hand over: closing the
        // receiver lets them return at once.
        self.rebalances.close();
        if self.cfg.leave_group_on_shutdown {
            self.stage = "leaving the group";
            let consumer = self.consumer.clone();
            blocking(move || consumer.leave(Duration::from_secs(10))).await;
            tracing::info!("left the group");
        } else {
            tracing::info!(
                session_timeout_ms = self.cfg.member.session_timeout.as_millis() as u64,
                "keeping this static member's place in the group: a restart within the session \
                 timeout gets its partitions back without a rebalance (--leave-group-on-shutdown \
                 hands them over at once)"
            );
        }
        Ok(())
    }
}

fn fenced(cfg: &PipelineConfig, detail: String) -> PipelineError {
    PipelineError::Fenced {
        instance_id: cfg.member.instance_id.clone(),
        transactional_id: cfg.transactional_id.clone(),
        detail,
    }
}

/// Registers `producer`'s transactional.id (see [`TxnProducer::init`]). While
/// it waits on the transaction coordinator, `/healthz` stays alive and
/// `/readyz` says what it waits for: a long wait is not a dead process, and a
/// liveness probe must not restart it into the same wait. `false`: `shutdown`
/// came first.
async fn init_producer(
    producer: Arc<TxnProducer>,
    shutdown: Arc<AtomicBool>,
) -> Result<bool, TxnError> {
    blocking(move || {
        let status = &observe::telemetry().status;
        let initialised = producer.init(&|| {
            status.beat();
            status.set_connecting(Some(
                "waiting for the transaction coordinator to register the transactional.id".into(),
            ));
            shutdown.load(Ordering::SeqCst)
        });
        status.set_connecting(None);
        initialised
    })
    .await
}

/// Why a transactional producer reads as fenced. Kafka's transaction
/// coordinator aborts a transaction older than `transaction.timeout.ms` and
/// bumps the producer's epoch, which librdkafka reports exactly as it reports a
/// newer producer with the same transactional.id. The coordinator's clock starts
/// at the transaction's first partition, after tally's (at `begin`), so a
/// transaction tally has held open for less than the timeout cannot have been
/// timed out: then another process took the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fencing {
    TimedOut,
    AnotherProcess,
}

fn why_fenced(open_for: Option<Duration>, transaction_timeout: Duration) -> Fencing {
    match open_for {
        Some(age) if age >= transaction_timeout => Fencing::TimedOut,
        _ => Fencing::AnotherProcess,
    }
}

/// The names a missing ACL is explained with (see [`kafka::AclNames`]).
fn acl_names(cfg: &PipelineConfig) -> kafka::AclNames {
    kafka::AclNames {
        principal: cfg.connection.principal(),
        group: cfg.member.group.clone(),
        transactional_id_prefix: cfg.transactional_id_prefix.clone(),
        input: cfg.process.input_topic.clone(),
        outputs: vec![
            cfg.topics.processed.clone(),
            cfg.topics.dead_letter.clone(),
            cfg.topics.insights.clone(),
        ],
    }
}

fn not_authorized(cfg: &PipelineConfig, denied: kafka::Denied, detail: String) -> PipelineError {
    PipelineError::Kafka(acl_names(cfg).not_authorized(denied, detail))
}

fn txn_fatal(cfg: &PipelineConfig, e: TxnError) -> PipelineError {
    match e {
        TxnError::Fenced(detail) => fenced(cfg, detail.to_string()),
        TxnError::NotAuthorized(denied, detail) => not_authorized(cfg, denied, detail.to_string()),
        TxnError::Fatal(m) | TxnError::Abortable(m) => PipelineError::FatalTxn(m.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_transaction_open_past_its_timeout_was_timed_out_by_the_coordinator() {
        let timeout = Duration::from_secs(60);
        assert_eq!(
            why_fenced(Some(Duration::from_secs(61)), timeout),
            Fencing::TimedOut
        );
        assert_eq!(why_fenced(Some(timeout), timeout), Fencing::TimedOut);
        assert_eq!(
            why_fenced(Some(Duration::from_secs(59)), timeout),
            Fencing::AnotherProcess
        );
        // No transaction open: nothing the coordinator could have timed out.
        assert_eq!(why_fenced(None, timeout), Fencing::AnotherProcess);
    }
}
