//! `tally run`: the one loop that owns the transaction.
//!
//! - this file: the loop itself (poll, dispatch, shutdown) and the state it owns;
//! - [`cycle`]: the transaction cycle: records in, commit or abort, checkpoint;
//! - [`rebalance`]: partitions assigned and revoked;
//! - [`restore`]: recovering a partition's aggregates when it is assigned.
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

mod cycle;
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
use crate::insights;
use crate::kafka::{
    self, GroupConsumer, MemberConfig, OutputTopics, RebalanceEvent, TxnError, TxnProducer,
};

pub use restore::RestorePath;
use restore::RestoreResult;

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
    /// A record at the head of this many consecutive aborts with record-level
    /// failures is dead-lettered as `poison` (see `poison`).
    pub poison_aborts: u32,
    /// A polled batch stops growing at this many bytes of keys and values.
    pub max_batch_bytes: usize,
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
    /// Records to dead-letter on their next attempt, and abort streaks.
    poison: poison::Poison,
    /// Records librdkafka refused synchronously in the open transaction.
    refused: Vec<kafka::RecordFailure>,
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
        let cfg_poison = cfg.poison_aborts;
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
            poison: poison::Poison::new(cfg_poison),
            refused: Vec::new(),
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
            let max_bytes = self.cfg.max_batch_bytes;
            let mut poll =
                tokio::task::spawn_blocking(move || consumer.poll_batch(room, max_bytes, budget));
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
