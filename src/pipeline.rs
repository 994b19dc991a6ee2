//! `tally run`: the one loop that owns the transaction.
//!
//! The cycle (../shared/DESIGN.md): poll → process (pure) → produce outputs, DLQ
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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tally_state::{Checkpoint, Namespace, StateStore};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::aggregate::{Aggregate, Horizon};
use crate::event::{Outcome, ProcessConfig, process};
use crate::kafka::{
    self, GroupConsumer, MemberConfig, OutputTopics, RebalanceEvent, SendError, TopicReader,
    TxnError, TxnProducer,
};
use crate::model::OutputRecord;
use crate::{failpoints, insights};

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub connection: kafka::Connection,
    pub process: ProcessConfig,
    pub member: MemberConfig,
    pub transactional_id: String,
    pub topics: OutputTopics,
    pub commit_interval: Duration,
    pub max_batch_records: usize,
    pub horizon: Horizon,
    pub state_dir: PathBuf,
    pub progress_interval: Duration,
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
    #[error("fatal transaction error, stopping: {0}")]
    FatalTxn(String),
    #[error(transparent)]
    Kafka(#[from] kafka::Error),
    #[error(transparent)]
    State(#[from] tally_state::StateError),
    #[error("{0}")]
    Other(String),
}

type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// Runs `f` on a blocking thread: Kafka transaction calls and RocksDB writes
/// never block the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

/// How a partition's aggregates were recovered on assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestorePath {
    /// `K == C`: the checkpoint was exact.
    Resume,
    /// `K < C`: replayed `[K, C)`.
    Replay,
    /// No checkpoint, or `K > C`: rebuilt from the earliest offset.
    Rebuild,
}

impl RestorePath {
    fn as_str(self) -> &'static str {
        match self {
            RestorePath::Resume => "resume",
            RestorePath::Replay => "replay",
            RestorePath::Rebuild => "rebuild",
        }
    }
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
    /// Records polled under an earlier assignment epoch are stale.
    epoch: u64,
    /// `C`: the next offset committed in Kafka (and checkpointed).
    committed_offset: i64,
    /// The next offset to process; `> committed_offset` while a transaction holds records.
    next_offset: i64,
    /// Aggregate of exactly the records with offset `< committed_offset`.
    committed: Aggregate,
    /// Deltas of the open transaction, merged only after it commits.
    pending: Aggregate,
    touched: bool,
}

/// The transaction's lifecycle.
#[derive(Debug)]
enum Txn {
    Idle,
    Open { since: Instant, records: usize },
}

#[derive(Debug, Default)]
struct Stats {
    records_in: u64,
    processed: u64,
    dead_lettered: u64,
    filtered: u64,
    stale_dropped: u64,
    committed: u64,
    aborted: u64,
}

/// Result of one background restore.
#[derive(Debug)]
struct Restored {
    epoch: u64,
    partition: i32,
    committed_offset: i64,
    aggregate: Aggregate,
    path: RestorePath,
    records: u64,
    secs: f64,
}

type RestoreResult = std::result::Result<Restored, (i32, String)>;

pub struct Pipeline {
    cfg: PipelineConfig,
    consumer: Arc<GroupConsumer>,
    producer: Arc<TxnProducer>,
    store: Arc<StateStore>,
    ns: Namespace,
    rebalances: UnboundedReceiver<RebalanceEvent>,
    restored_tx: UnboundedSender<RestoreResult>,
    restored_rx: UnboundedReceiver<RestoreResult>,
    partitions: BTreeMap<i32, PartitionState>,
    txn: Txn,
    stats: Stats,
    /// Commits are held until this instant after the process was found paused
    /// for longer than the session timeout (see `check_paused`).
    hold_commits_until: Option<Instant>,
    /// When the transactional producer was last replaced (see `replace_producer`).
    producer_replacements: Vec<Instant>,
    last_iteration: Instant,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("txn", &self.txn).finish()
    }
}

impl Pipeline {
    /// Opens the state store, creates the clients and registers the transactional
    /// id (fencing any zombie of ours and aborting its open transaction).
    pub async fn start(cfg: PipelineConfig) -> Result<Self> {
        let dir = cfg.state_dir.clone();
        let store = Arc::new(blocking(move || StateStore::open(dir)).await?);
        let (consumer, rebalances) = GroupConsumer::new(&cfg.connection, &cfg.member)?;
        let producer = TxnProducer::new(
            &cfg.connection,
            &cfg.transactional_id,
            cfg.topics.clone(),
            &cfg.process.input_topic,
        )?;
        let producer = Arc::new(producer);
        let p = producer.clone();
        tracing::info!(transactional_id = %cfg.transactional_id, "initialising transactions");
        blocking(move || p.init())
            .await
            .map_err(|e| txn_fatal(&cfg, e))?;
        consumer.subscribe()?;
        let (restored_tx, restored_rx) = unbounded_channel();
        Ok(Pipeline {
            ns: Namespace::new(&cfg.member.group, &cfg.process.input_topic),
            cfg,
            consumer: Arc::new(consumer),
            producer,
            store,
            rebalances,
            restored_tx,
            restored_rx,
            partitions: BTreeMap::new(),
            txn: Txn::Idle,
            stats: Stats::default(),
            hold_commits_until: None,
            producer_replacements: Vec::new(),
            last_iteration: Instant::now(),
        })
    }

    /// Runs until `shutdown` is set, then closes the transaction and leaves the group.
    pub async fn run(mut self, shutdown: Arc<AtomicBool>) -> Result<()> {
        match self.process_until(&shutdown).await {
            Ok(()) => self.shutdown().await,
            Err(e) => {
                // Closing the consumer would run rebalance callbacks nobody serves
                // and, for a fenced member, wait on a group that is no longer ours.
                // The process is about to exit: leave the consumer to the OS.
                std::mem::forget(self.consumer.clone());
                Err(e)
            }
        }
    }

    async fn process_until(&mut self, shutdown: &AtomicBool) -> Result<()> {
        let mut last_progress = Instant::now();
        while !shutdown.load(Ordering::SeqCst) {
            self.check_paused().await?;
            let budget = match self.txn {
                Txn::Idle => Duration::from_millis(250),
                // No commit can close the cycle yet: no point in short polls.
                Txn::Open { .. } if self.commits_held() => Duration::from_millis(100),
                Txn::Open { since, .. } => self
                    .cfg
                    .commit_interval
                    .saturating_sub(since.elapsed())
                    .max(Duration::from_millis(1)),
            };
            let room = match self.txn {
                Txn::Idle => self.cfg.max_batch_records,
                Txn::Open { records, .. } => {
                    self.cfg.max_batch_records.saturating_sub(records).max(1)
                }
            };
            let consumer = self.consumer.clone();
            let mut poll = tokio::task::spawn_blocking(move || consumer.poll_batch(room, budget));
            let polled = loop {
                tokio::select! {
                    res = &mut poll => break res.expect("poll task panicked"),
                    Some(ev) = self.rebalances.recv() => self.on_rebalance(ev).await?,
                    Some(done) = self.restored_rx.recv() => self.on_restored(done).await?,
                }
            };
            let polled = match polled {
                Ok(p) => p,
                Err(kafka::Error::Fenced(detail)) => return Err(fenced(&self.cfg, detail)),
                Err(e) => return Err(e.into()),
            };
            let aborts = self.stats.aborted;
            for p in polled {
                // An abort rewound every partition to its committed offset; the
                // rest of this batch lies past that and is fetched again.
                if self.stats.aborted != aborts {
                    break;
                }
                self.on_record(p).await?;
            }
            if self.cycle_due() {
                self.close_cycle().await?;
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
        let gap = self.last_iteration.elapsed();
        self.last_iteration = Instant::now();
        if gap > self.cfg.member.session_timeout {
            tracing::warn!(
                paused_secs = gap.as_secs_f64(),
                "process was paused longer than the session timeout; aborting the open transaction and holding commits"
            );
            self.abort_and_rewind("process was paused").await?;
            self.hold_commits_until = Some(Instant::now() + self.cfg.member.session_timeout);
        }
        Ok(())
    }

    /// True while `check_paused` holds commits back.
    fn commits_held(&self) -> bool {
        self.hold_commits_until.is_some_and(|t| Instant::now() < t)
    }

    fn cycle_due(&self) -> bool {
        match self.txn {
            Txn::Idle => false,
            Txn::Open { since, records } => {
                !self.commits_held()
                    && (since.elapsed() >= self.cfg.commit_interval
                        || records >= self.cfg.max_batch_records)
            }
        }
    }

    async fn on_record(&mut self, polled: kafka::Polled) -> Result<()> {
        let rec = polled.record;
        let Some(st) = self.partitions.get(&rec.partition) else {
            self.stats.stale_dropped += 1;
            return Ok(());
        };
        // Records from an earlier assignment, of a partition still restoring, or
        // already processed (refetched after a seek) are not ours to process.
        if polled.epoch < st.epoch
            || matches!(st.phase, Phase::Restoring)
            || rec.offset < st.next_offset
        {
            self.stats.stale_dropped += 1;
            return Ok(());
        }
        let outcome = process(&rec, &self.cfg.process);
        if !self.ensure_open().await? {
            return Ok(()); // the producer was replaced; partitions are being recovered
        }
        if let Some(out) = outcome.output() {
            if !self.send(out.clone()).await? {
                return Ok(()); // the transaction was aborted; this record comes again
            }
        }
        self.stats.records_in += 1;
        match &outcome {
            Outcome::Processed { .. } => self.stats.processed += 1,
            Outcome::Filtered { .. } => self.stats.filtered += 1,
            Outcome::DeadLetter { rejection, .. } => {
                self.stats.dead_lettered += 1;
                tracing::debug!(partition = rec.partition, offset = rec.offset, reason = %rejection.reason, "dead-lettered");
            }
        }
        let horizon = self.cfg.horizon;
        let st = self
            .partitions
            .get_mut(&rec.partition)
            .expect("checked above");
        st.pending.apply(&outcome, horizon);
        st.next_offset = rec.offset + 1;
        st.touched = true;
        if let Txn::Open { records, .. } = &mut self.txn {
            *records += 1;
        }
        failpoints::crash("after-produce");
        Ok(())
    }

    /// Begins a transaction if none is open. `false`: beginning failed fatally,
    /// the producer was replaced and every partition is being recovered.
    async fn ensure_open(&mut self) -> Result<bool> {
        if matches!(self.txn, Txn::Idle) {
            let p = self.producer.clone();
            if let Err(e) = blocking(move || p.begin()).await {
                self.replace_producer(e).await?;
                return Ok(false);
            }
            self.txn = Txn::Open {
                since: Instant::now(),
                records: 0,
            };
        }
        Ok(true)
    }

    /// Adds a record to the open transaction. `false`: producing failed and the
    /// transaction was aborted and rewound instead.
    async fn send(&mut self, mut rec: OutputRecord) -> Result<bool> {
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(true),
                Err(SendError::QueueFull(back)) => {
                    rec = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
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

    /// Step 3 and 4 of the cycle: snapshots, offsets, commit; then merge and checkpoint.
    async fn close_cycle(&mut self) -> Result<()> {
        if matches!(self.txn, Txn::Idle) {
            return Ok(());
        }
        if self.consumer.assignment_lost() {
            return self.abort_and_rewind("assignment lost").await;
        }
        let horizon = self.cfg.horizon;
        let mut offsets = Vec::new();
        let mut snapshots = Vec::new();
        for (p, st) in &self.partitions {
            if st.touched {
                offsets.push((*p, st.next_offset));
                let mut snap = st.committed.clone();
                snap.merge(&st.pending, horizon);
                snapshots.push(insights::snapshot_record(
                    &self.cfg.process.input_topic,
                    *p,
                    st.next_offset,
                    &snap,
                ));
            }
        }
        for s in snapshots {
            if !self.send(s).await? {
                return Ok(());
            }
        }
        failpoints::crash("before-commit");
        let injected = failpoints::error("commit-error");
        let (producer, consumer, to_commit) = (
            self.producer.clone(),
            self.consumer.clone(),
            offsets.clone(),
        );
        let res = if injected {
            Err(TxnError::Abortable(
                "injected by failpoint commit-error".into(),
            ))
        } else if failpoints::error("commit-fatal") {
            Err(TxnError::Fatal("injected by failpoint commit-fatal".into()))
        } else {
            blocking(move || producer.commit(&consumer, &to_commit)).await
        };
        match res {
            Ok(()) => {}
            Err(TxnError::Abortable(why)) => {
                tracing::warn!(error = %why, "commit failed; aborting and rewinding");
                return self.abort_and_rewind(&why).await;
            }
            Err(e) => return self.replace_producer(e).await,
        }
        self.stats.committed += 1;
        self.txn = Txn::Idle;
        failpoints::crash("after-commit-before-checkpoint");
        let mut checkpoints = Vec::new();
        for (p, st) in self.partitions.iter_mut().filter(|(_, st)| st.touched) {
            let pending = std::mem::take(&mut st.pending);
            st.committed.merge(&pending, horizon);
            st.committed_offset = st.next_offset;
            st.touched = false;
            checkpoints.push(Checkpoint {
                partition: *p,
                next_offset: st.committed_offset,
                state: st.committed.clone(),
            });
        }
        let (store, ns) = (self.store.clone(), self.ns.clone());
        blocking(move || store.checkpoint(&ns, &checkpoints)).await?;
        Ok(())
    }

    /// Step 5: abort, drop pending deltas, seek every partition back to `C`.
    async fn abort_and_rewind(&mut self, why: &str) -> Result<()> {
        if matches!(self.txn, Txn::Idle) {
            return Ok(());
        }
        let p = self.producer.clone();
        if let Err(e) = blocking(move || p.abort()).await {
            return self.replace_producer(e).await;
        }
        self.txn = Txn::Idle;
        self.stats.aborted += 1;
        // Every active partition, touched or not: librdkafka may have delivered
        // records past `C` that the loop now drops (the rest of the batch).
        let mut seeks = Vec::new();
        for (p, st) in &mut self.partitions {
            st.pending = Aggregate::default();
            st.touched = false;
            if matches!(st.phase, Phase::Active) {
                st.next_offset = st.committed_offset;
                seeks.push((*p, st.committed_offset));
            }
        }
        tracing::warn!(reason = why, rewound = ?seeks, "transaction aborted");
        let c = self.consumer.clone();
        blocking(move || c.seek(&seeks)).await?;
        Ok(())
    }

    /// A transactional producer in a fatal state (not fenced) cannot even abort.
    /// Replace it: the new one's `init_transactions` aborts whatever the old one
    /// left open. Whether a failed commit reached the broker is unknown, so every
    /// partition is then recovered as on assignment, from the group's committed
    /// offsets and the checkpoints (DESIGN.md's rules), never from memory. Fenced
    /// errors, and more than 3 replacements a minute, stop the process.
    async fn replace_producer(&mut self, e: TxnError) -> Result<()> {
        let why = match e {
            TxnError::Fatal(why) | TxnError::Abortable(why) => why,
            fenced @ TxnError::Fenced(_) => return Err(txn_fatal(&self.cfg, fenced)),
        };
        let now = Instant::now();
        self.producer_replacements
            .retain(|t| now.duration_since(*t) < Duration::from_secs(60));
        if self.producer_replacements.len() >= 3 {
            return Err(PipelineError::FatalTxn(format!(
                "{why} (the producer was already replaced 3 times in the last minute)"
            )));
        }
        self.producer_replacements.push(now);
        tracing::warn!(error = %why, "transactional producer failed fatally; replacing it and recovering every partition");
        let fresh = Arc::new(TxnProducer::new(
            &self.cfg.connection,
            &self.cfg.transactional_id,
            self.cfg.topics.clone(),
            &self.cfg.process.input_topic,
        )?);
        let f = fresh.clone();
        blocking(move || f.init())
            .await
            .map_err(|e| txn_fatal(&self.cfg, e))?;
        let old = std::mem::replace(&mut self.producer, fresh);
        blocking(move || drop(old)).await;
        self.txn = Txn::Idle;
        self.stats.aborted += 1;
        let mut by_epoch: BTreeMap<u64, Vec<i32>> = BTreeMap::new();
        for (p, st) in &mut self.partitions {
            st.phase = Phase::Restoring;
            st.pending = Aggregate::default();
            st.touched = false;
            by_epoch.entry(st.epoch).or_default().push(*p);
        }
        let all: Vec<i32> = self.partitions.keys().copied().collect();
        let c = self.consumer.clone();
        blocking(move || c.pause(&all)).await?;
        for (epoch, partitions) in by_epoch {
            self.spawn_restore(partitions, epoch);
        }
        Ok(())
    }

    async fn on_rebalance(&mut self, ev: RebalanceEvent) -> Result<()> {
        match ev {
            RebalanceEvent::Revoked {
                partitions,
                lost,
                done,
            } => {
                if lost {
                    tracing::warn!(
                        ?partitions,
                        "partitions lost; aborting the open transaction"
                    );
                    self.abort_and_rewind("partitions lost").await?;
                } else {
                    self.close_cycle().await?;
                }
                for p in &partitions {
                    self.partitions.remove(p);
                }
                tracing::info!(?partitions, lost, "partitions revoked");
                let _ = done.send(());
            }
            RebalanceEvent::Assigned { partitions, epoch } => {
                tracing::info!(?partitions, epoch, "partitions assigned; restoring state");
                for p in &partitions {
                    self.partitions.insert(
                        *p,
                        PartitionState {
                            phase: Phase::Restoring,
                            epoch,
                            committed_offset: 0,
                            next_offset: 0,
                            committed: Aggregate::default(),
                            pending: Aggregate::default(),
                            touched: false,
                        },
                    );
                }
                self.spawn_restore(partitions, epoch);
            }
        }
        Ok(())
    }

    /// Restores partitions in the background; the loop keeps polling meanwhile so
    /// the member never exceeds `max.poll.interval.ms`, and no transaction is held open.
    fn spawn_restore(&self, partitions: Vec<i32>, epoch: u64) {
        let (consumer, store, ns, tx) = (
            self.consumer.clone(),
            self.store.clone(),
            self.ns.clone(),
            self.restored_tx.clone(),
        );
        let (conn, process_cfg, horizon) = (
            self.cfg.connection.clone(),
            self.cfg.process.clone(),
            self.cfg.horizon,
        );
        tokio::task::spawn_blocking(move || {
            let committed = match consumer.committed(&partitions) {
                Ok(c) => c,
                Err(e) => {
                    for p in partitions {
                        let _ = tx.send(Err((p, e.to_string())));
                    }
                    return;
                }
            };
            for p in partitions {
                let c = committed.get(&p).copied().flatten();
                let res = restore_partition(
                    &consumer,
                    &store,
                    &ns,
                    &conn,
                    &process_cfg,
                    horizon,
                    p,
                    c,
                    epoch,
                )
                .map_err(|e| (p, e.to_string()));
                let _ = tx.send(res);
            }
        });
    }

    async fn on_restored(&mut self, res: RestoreResult) -> Result<()> {
        let r = match res {
            Ok(r) => r,
            Err((p, e)) => {
                return Err(PipelineError::Other(format!(
                    "restoring the state of partition {p} failed: {e}"
                )));
            }
        };
        let Some(st) = self.partitions.get_mut(&r.partition) else {
            return Ok(()); // revoked meanwhile
        };
        if st.epoch != r.epoch || !matches!(st.phase, Phase::Restoring) {
            return Ok(());
        }
        st.phase = Phase::Active;
        st.committed_offset = r.committed_offset;
        st.next_offset = r.committed_offset;
        st.committed = r.aggregate;
        tracing::info!(
            partition = r.partition,
            path = r.path.as_str(),
            next_offset = r.committed_offset,
            records = r.records,
            secs = r.secs,
            "partition restored"
        );
        let (c, p, o) = (self.consumer.clone(), r.partition, r.committed_offset);
        blocking(move || {
            c.seek(&[(p, o)])?;
            c.resume(&[p])
        })
        .await?;
        Ok(())
    }

    fn log_progress(&self) {
        let s = &self.stats;
        tracing::info!(
            records_in = s.records_in,
            processed = s.processed,
            dlq = s.dead_lettered,
            filtered = s.filtered,
            stale = s.stale_dropped,
            txn_committed = s.committed,
            txn_aborted = s.aborted,
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

    /// Guarantee 4: finish the open transaction, checkpoint, leave the group.
    async fn shutdown(mut self) -> Result<()> {
        tracing::info!("shutting down: committing the open transaction");
        self.close_cycle().await?;
        self.log_progress();
        // From here on rebalance callbacks have nothing to hand over: dropping the
        // receiver lets them return at once.
        drop(self.rebalances);
        let consumer = self.consumer;
        blocking(move || {
            consumer.leave(Duration::from_secs(10));
            drop(consumer);
        })
        .await;
        tracing::info!("left the group");
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

fn txn_fatal(cfg: &PipelineConfig, e: TxnError) -> PipelineError {
    match e {
        TxnError::Fenced(detail) => fenced(cfg, detail),
        TxnError::Fatal(m) | TxnError::Abortable(m) => PipelineError::FatalTxn(m),
    }
}

/// Recovery rules of DESIGN.md for one partition. `c`: the group's committed
/// offset (`None`: never committed, so processing starts at the earliest offset).
#[allow(clippy::too_many_arguments)]
fn restore_partition(
    consumer: &GroupConsumer,
    store: &StateStore,
    ns: &Namespace,
    conn: &kafka::Connection,
    process_cfg: &ProcessConfig,
    horizon: Horizon,
    partition: i32,
    c: Option<i64>,
    epoch: u64,
) -> Result<Restored> {
    let started = Instant::now();
    let c = match c {
        Some(c) => c,
        None => consumer.watermarks(partition)?.0,
    };
    let k = store.load::<Aggregate>(ns, partition)?;
    let (path, mut aggregate, from) = match k {
        Some(cp) if cp.next_offset == c => (RestorePath::Resume, cp.state, None),
        Some(cp) if cp.next_offset < c => (RestorePath::Replay, cp.state, Some(cp.next_offset)),
        _ => (
            RestorePath::Rebuild,
            Aggregate::default(),
            Some(consumer.watermarks(partition)?.0),
        ),
    };
    let mut records = 0u64;
    if let Some(from) = from {
        tracing::info!(
            partition,
            path = path.as_str(),
            from,
            to = c,
            "replaying into aggregates (producing nothing)"
        );
        let reader = TopicReader::new(conn, &process_cfg.input_topic)?;
        let mut last_log = Instant::now();
        reader.read(&[(partition, kafka::StartAt::Offset(from), Some(c))], |r| {
            aggregate.apply(&process(&r.record, process_cfg), horizon);
            records += 1;
            if last_log.elapsed() > Duration::from_secs(5) {
                tracing::info!(
                    partition,
                    records,
                    secs = started.elapsed().as_secs_f64(),
                    "restoring"
                );
                last_log = Instant::now();
            }
        })?;
        store.checkpoint(
            ns,
            &[Checkpoint {
                partition,
                next_offset: c,
                state: aggregate.clone(),
            }],
        )?;
    }
    Ok(Restored {
        epoch,
        partition,
        committed_offset: c,
        aggregate,
        path,
        records,
        secs: started.elapsed().as_secs_f64(),
    })
}
