//! Recovering a partition's aggregates when it is assigned (DESIGN.md,
//! "Recovering state"): in the background, never holding a transaction open,
//! one task per partition, while the loop keeps polling.
//!
//! Like Kafka Streams' changelog reader, a restore is its own little state
//! machine, separate from processing: the partition stays paused until its
//! restore's result is accepted. Every restore gets a token; only the result of
//! the latest restore started for a partition is accepted, so a slow restore
//! overtaken by a newer one (a producer replacement, a re-assignment) can never
//! reset the partition to an older committed offset.
//!
//! Where to start, with `C` the group's committed offset, `K` the local
//! checkpoint and `S` the latest committed snapshot (insights partition `p`,
//! `S <= C`): `K == C` resumes; otherwise the larger of `K` and `S` is the start
//! and `[start, C)` is replayed from the input; with neither, the partition is
//! rebuilt from offset 0. A start below the input's log start cannot be replayed
//! exactly: refused unless `--allow-inexact-restore`. No `C` is "never committed"
//! only when neither `K` nor any `S` exists; otherwise the group's offsets were
//! lost and the restore refuses unless `--resume-from-state`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tally_state::{Checkpoint, Namespace, StateError, StateStore};

use super::{Phase, Pipeline, PipelineError, Result, blocking};
use crate::aggregate::{Aggregate, Horizon};
use crate::event::{ProcessConfig, process};
use crate::failpoints;
use crate::insights::{Fingerprint, Snapshot};
use crate::kafka::{self, GroupConsumer, TopicReader};
use crate::observe::{PartitionRestored, RestoreProgress, RestoreStarted, emit};

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

/// What decides how restores treat what they find.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Continue when records needed for an exact restore were deleted by
    /// retention, counting them in `Aggregate::uncounted`.
    pub allow_inexact: bool,
    /// Discard checkpoints and snapshots written under another configuration and
    /// rebuild from offset 0 under the current one.
    pub rebuild_on_config_change: bool,
    /// A partition the group has no committed offset for, while a checkpoint or
    /// a snapshot of it exists, resumes from the newest of them instead of
    /// refusing (see [`uncommitted`]).
    pub resume_from_state: bool,
}

/// The latest restore started for a partition. Dropping it (a newer restore
/// replaced it, or the partition was revoked) tells the restore to give up.
#[derive(Debug)]
pub(super) struct RestoreTicket {
    token: u64,
    cancelled: Arc<AtomicBool>,
}

impl Drop for RestoreTicket {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

/// Result of one background restore.
#[derive(Debug)]
pub(super) struct Restored {
    partition: i32,
    token: u64,
    outcome: std::result::Result<Recovered, Box<RestoreError>>,
}

#[derive(Debug)]
struct Recovered {
    committed_offset: i64,
    aggregate: Aggregate,
    path: RestorePath,
    records: u64,
    secs: f64,
    /// The group never committed the partition: there is nothing to snapshot
    /// (a restore without a snapshot starts empty at the log start just as well),
    /// and a catch-up snapshot would commit an offset for it.
    never_committed: bool,
}

/// Why a restore failed. Transient errors are retried inside the restore; what
/// reaches the loop is permanent (or retries ran out) and ends the process,
/// unless the restore is stale by then.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(
        "partition {partition}: the aggregates cover offsets below {start} but the input's log \
         start is now {log_start} (records [{start}, {log_start}) were deleted by retention); \
         the group's committed offset is {committed}. The aggregates cannot be restored exactly. \
         Restore the records, or accept a lower bound with --allow-inexact-restore \
         ({uncountable} records will be counted as `uncounted`)"
    )]
    BelowLogStart {
        partition: i32,
        start: i64,
        log_start: i64,
        committed: i64,
        uncountable: i64,
    },
    #[error(
        "partition {partition}: the {source_name} was written under another configuration \
         ({changes}); run with the configuration it was written with, or pass \
         --rebuild-on-config-change to rebuild the aggregates from offset 0 under the new one"
    )]
    ConfigChanged {
        partition: i32,
        source_name: &'static str,
        changes: String,
    },
    #[error(
        "partition {partition}: the group has no committed offset, but {found} \
         (the group's offsets expired offsets.retention.minutes after it emptied, or were \
         deleted); starting at the log start would process every retained record again. \
         Either set the group's offset of this partition to where it was (kafka-consumer-groups \
         --reset-offsets --to-offset), or pass --resume-from-state to resume from the newest \
         state written under the current configuration{newest} and commit that offset (records \
         past it are processed again if an instance crashed after its last snapshot), or start \
         over with a new group and a new insights topic"
    )]
    NoCommittedOffset {
        partition: i32,
        /// What state exists: `a local checkpoint at K=… and a snapshot at S=…`.
        found: String,
        /// ` (offset N)`, or empty when none is usable.
        newest: String,
    },
    #[error(
        "{what}: {error} (a missing ACL: the ACLs tally run needs are in docs/operations.md, \
         \"A secured cluster\")"
    )]
    NotAuthorized {
        what: &'static str,
        error: Box<kafka::Error>,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("partition {partition}: {what} still failing after {attempts} attempts: {error}")]
    Transient {
        partition: i32,
        what: &'static str,
        attempts: u32,
        error: Box<kafka::Error>,
    },
}

/// How often and how long transient errors (broker down, timeouts) are retried:
/// 0.5 s doubling to 8 s, 12 attempts (about a minute and a half).
const RETRY_ATTEMPTS: u32 = 12;
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(8);
/// How often a long replay logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);

/// What a restore needs besides the partition.
struct RestoreContext {
    consumer: Arc<GroupConsumer>,
    store: Arc<StateStore>,
    ns: Namespace,
    conn: kafka::Connection,
    process: ProcessConfig,
    insights_topic: String,
    horizon: Horizon,
    fingerprint: Fingerprint,
    options: RestoreOptions,
}

impl Pipeline {
    /// Starts one background restore per partition (in parallel: a new host's
    /// restore takes as long as its slowest partition, not their sum). The loop
    /// keeps polling meanwhile, so the member never exceeds
    /// `max.poll.interval.ms`, and no transaction is held open.
    pub(super) fn spawn_restore(&mut self, partitions: Vec<i32>) {
        emit(RestoreStarted {
            partitions: &partitions,
        });
        let ctx = Arc::new(RestoreContext {
            consumer: self.consumer.clone(),
            store: self.store.clone(),
            ns: self.ns.clone(),
            conn: self.cfg.connection.clone(),
            process: self.cfg.process.clone(),
            insights_topic: self.cfg.topics.insights.clone(),
            horizon: self.cfg.horizon,
            fingerprint: self.fingerprint.clone(),
            options: self.cfg.restore,
        });
        for p in partitions {
            let Some(st) = self.partitions.get_mut(&p) else {
                continue;
            };
            self.restore_tokens += 1;
            let token = self.restore_tokens;
            let cancelled = Arc::new(AtomicBool::new(false));
            // Replacing the ticket cancels the restore it belonged to.
            st.restore = Some(RestoreTicket {
                token,
                cancelled: cancelled.clone(),
            });
            let (tx, ctx) = (self.restored_tx.clone(), ctx.clone());
            tokio::task::spawn_blocking(move || {
                let outcome =
                    with_retries(p, &cancelled, || restore_partition(&ctx, p, &cancelled));
                let _ = tx.send(Restored {
                    partition: p,
                    token,
                    outcome,
                });
            });
        }
    }

    pub(super) async fn on_restored(&mut self, r: Restored) -> Result<()> {
        let current = self
            .partitions
            .get(&r.partition)
            .filter(|st| matches!(st.phase, Phase::Restoring))
            .and_then(|st| st.restore.as_ref())
            .is_some_and(|t| t.token == r.token);
        if !current {
            // Revoked meanwhile, or overtaken by a newer restore: its committed
            // offset may be older than what the partition has committed since.
            tracing::info!(
                partition = r.partition,
                token = r.token,
                failed = r.outcome.is_err(),
                "stale restore result ignored"
            );
            return Ok(());
        }
        let rec = r.outcome.map_err(PipelineError::Restore)?;
        let st = self
            .partitions
            .get_mut(&r.partition)
            .expect("checked above");
        st.phase = Phase::Active;
        st.restore = None;
        st.committed_offset = rec.committed_offset;
        st.next_offset = rec.committed_offset;
        st.committed = rec.aggregate;
        // Whether the latest snapshot in the topic covers `C` is not known here
        // (a previous owner may have crashed past it): one is due at once, unless
        // the group never committed the partition (see `never_committed`).
        st.snapshot = rec.never_committed.then_some(rec.committed_offset);
        st.snapshot_tried = None;
        emit(PartitionRestored {
            topic: &self.cfg.process.input_topic,
            partition: r.partition,
            next_offset: rec.committed_offset,
            aggregate: &st.committed,
            path: rec.path.as_str(),
            records: rec.records,
        });
        tracing::info!(
            partition = r.partition,
            path = rec.path.as_str(),
            next_offset = rec.committed_offset,
            records = rec.records,
            secs = rec.secs,
            "partition restored"
        );
        let (c, p, o) = (self.consumer.clone(), r.partition, rec.committed_offset);
        let rewind = blocking(move || {
            let rewind = c.seek(&[(p, o)])?;
            c.resume(&[p])?;
            Ok::<_, kafka::Error>(rewind)
        })
        .await?;
        // Nothing fetched before the seek may be processed, whatever the pause did.
        if let Some(st) = self.partitions.get_mut(&p) {
            st.since_rewind = rewind;
        }
        Ok(())
    }
}

/// Runs `attempt` until it succeeds, fails permanently, or transient errors
/// exhaust the retries (with exponential backoff). Gives up early, with the last
/// error, once the restore is cancelled: nobody will accept its result.
fn with_retries(
    partition: i32,
    cancelled: &AtomicBool,
    mut attempt: impl FnMut() -> std::result::Result<Recovered, Failure>,
) -> std::result::Result<Recovered, Box<RestoreError>> {
    let mut delay = RETRY_FIRST;
    let mut n = 0;
    loop {
        n += 1;
        match attempt() {
            Ok(r) => return Ok(r),
            Err(Failure::Permanent(e)) => return Err(e),
            Err(Failure::Unsettled(e))
                if n >= RETRY_ATTEMPTS || cancelled.load(Ordering::Relaxed) =>
            {
                return Err(e);
            }
            Err(Failure::Unsettled(e)) => {
                tracing::warn!(partition, attempt = n, error = %e, retry_in = ?delay, "restore cannot be exact yet; retrying in case a newer snapshot becomes visible");
                std::thread::sleep(delay);
                delay = (delay * 2).min(RETRY_MAX);
            }
            Err(Failure::Transient(what, error)) => {
                if n >= RETRY_ATTEMPTS || cancelled.load(Ordering::Relaxed) {
                    return Err(Box::new(RestoreError::Transient {
                        partition,
                        what,
                        attempts: n,
                        error,
                    }));
                }
                tracing::warn!(partition, attempt = n, error = %error, retry_in = ?delay, "restore failed ({what}); retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// A restore attempt's failure: retry it, or not.
enum Failure {
    Transient(&'static str, Box<kafka::Error>),
    Permanent(Box<RestoreError>),
    /// Permanent unless it goes away: retried like a transient error, and
    /// reported as itself when the retries run out.
    Unsettled(Box<RestoreError>),
}

impl From<RestoreError> for Failure {
    fn from(e: RestoreError) -> Self {
        Failure::Permanent(Box::new(e))
    }
}

impl From<StateError> for Failure {
    fn from(e: StateError) -> Self {
        Failure::Permanent(Box::new(e.into()))
    }
}

/// A failed step, retried unless the cluster refused it for want of an ACL.
fn transient(what: &'static str) -> impl FnOnce(kafka::Error) -> Failure {
    move |e| {
        if e.is_not_authorized() {
            Failure::Permanent(Box::new(RestoreError::NotAuthorized {
                what,
                error: Box::new(e),
            }))
        } else {
            Failure::Transient(what, Box::new(e))
        }
    }
}

/// Where a restore starts: the aggregate of every record below `from`.
struct Start {
    path: RestorePath,
    from: i64,
    aggregate: Aggregate,
}

/// DESIGN.md's recovery rules for one partition.
fn restore_partition(
    ctx: &RestoreContext,
    partition: i32,
    cancelled: &AtomicBool,
) -> std::result::Result<Recovered, Failure> {
    let started = Instant::now();
    // Tests hold a restore here (`restore-hold=1*sleep(5000)`) to watch /readyz.
    failpoints::error("restore-hold");
    if failpoints::error("restore-transient") {
        return Err(Failure::Transient(
            "reading the committed offset",
            Box::new(kafka::Error::Other(
                "injected by failpoint restore-transient".into(),
            )),
        ));
    }
    let committed = ctx
        .consumer
        .committed(&[partition])
        .map_err(transient("reading the committed offset"))?
        .get(&partition)
        .copied()
        .flatten();
    let (log_start, _) = ctx
        .consumer
        .watermarks(partition)
        .map_err(transient("reading the input's watermarks"))?;
    // Lets tests make one restore slow enough to be overtaken by a newer one.
    failpoints::error(&format!("restore-delay-{partition}"));
    let Some(c) = committed else {
        return restore_uncommitted(ctx, partition, log_start, started);
    };
    let start = choose_start(ctx, partition, c)?;
    if start.path == RestorePath::Resume {
        if c >= log_start {
            return Ok(recovered(start, c, 0, started));
        }
        // Exact at `C`, but retention deleted `[C, log start)` while nobody
        // consumed this partition: those records can be neither processed nor
        // counted, and the group consumer would jump over them silently.
        below_log_start(ctx, partition, c, log_start, c)?;
        // Exact at `C`: the deleted records lie at and past `C`, which the live
        // consumer counts when it jumps over them (see `Pipeline::check_gap`),
        // in the transaction that commits past them. Counted here as well, a
        // restart before that commit, or the live check, would count them twice.
        return Ok(recovered(start, c, 0, started));
    }
    let Start {
        path,
        from,
        mut aggregate,
    } = start;
    let mut replay_from = from;
    if from < log_start {
        // A newer snapshot may exist (every revocation and shutdown writes one
        // at `C`), but a read_committed reader cannot see past another
        // producer's open transaction (a killed instance's, until it restarts or
        // the transaction times out): retry before refusing.
        below_log_start(ctx, partition, from, log_start, c)
            .map_err(|e| Failure::Unsettled(Box::new(e)))?;
        let (here, from_here) = inexact_start(from, c, log_start);
        aggregate.uncounted += here;
        replay_from = from_here;
    }
    let mut records = 0u64;
    if replay_from < c && !cancelled.load(Ordering::Relaxed) {
        tracing::info!(
            partition,
            path = path.as_str(),
            from = replay_from,
            to = c,
            "replaying into aggregates (producing nothing)"
        );
        let reader = TopicReader::new(&ctx.conn, &ctx.process.input_topic)
            .map_err(transient("creating an input reader"))?;
        let mut last_log = Instant::now();
        let total = (c - replay_from).max(0) as u64;
        let mut replayed = aggregate.clone();
        reader
            .read(
                &[(partition, kafka::StartAt::Offset(replay_from), Some(c))],
                |r| {
                    replayed.apply(&process(&r.record, &ctx.process), ctx.horizon);
                    records += 1;
                    if records % 1024 == 0 {
                        emit(RestoreProgress {
                            partition,
                            done: (r.record.offset + 1 - replay_from).max(0) as u64,
                            total,
                        });
                    }
                    if last_log.elapsed() >= PROGRESS_EVERY {
                        let secs = started.elapsed().as_secs_f64();
                        tracing::info!(
                            partition,
                            records,
                            to_go = c - r.record.offset - 1,
                            rate = (records as f64 / secs).round(),
                            secs,
                            "restoring"
                        );
                        last_log = Instant::now();
                    }
                },
            )
            .map_err(transient("replaying the input"))?;
        aggregate = replayed;
    }
    if cancelled.load(Ordering::Relaxed) {
        // Nobody accepts this result; don't write a checkpoint for a partition
        // that may be someone else's by now.
        return Ok(recovered_from(path, aggregate, c, records, started));
    }
    // The restored state is exact at `C` (or marked inexact): checkpoint it so a
    // restart of this host resumes without reading anything.
    ctx.store.checkpoint(
        &ctx.ns,
        &[Checkpoint {
            partition,
            next_offset: c,
            state: aggregate.clone(),
            fingerprint: ctx.fingerprint.encode(),
        }],
    )?;
    Ok(recovered_from(path, aggregate, c, records, started))
}

/// What to do about a partition the group has no committed offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Uncommitted {
    /// No checkpoint and no snapshot: the group never committed it.
    NeverCommitted,
    /// State exists, so the group did commit it once and its offsets are gone
    /// (expired or deleted): where it was is not known.
    Refuse,
    /// The operator asked to resume from the newest state.
    ResumeFromState,
}

/// A missing committed offset `C` is "never committed" only when neither a
/// checkpoint (`k`) nor a snapshot (`s`) of the partition exists. Otherwise the
/// true `C` is unknown: a snapshot at `S` was committed with offset `S`, and every
/// revocation and clean shutdown writes one, so after clean stops the newest `S`
/// is the last `C`; but an instance that crashed may have committed past its last
/// snapshot, and a checkpoint is written after its commit (`K <= C`). Neither
/// proves where the group was, so resuming from them is the operator's call.
fn uncommitted(k: Option<i64>, s: Option<i64>, resume_from_state: bool) -> Uncommitted {
    match (k, s) {
        (None, None) => Uncommitted::NeverCommitted,
        _ if resume_from_state => Uncommitted::ResumeFromState,
        _ => Uncommitted::Refuse,
    }
}

/// What [`RestoreError::NoCommittedOffset`] says exists.
fn found_state(k: Option<i64>, s: Option<i64>) -> String {
    match (k, s) {
        (Some(k), Some(s)) => format!("a local checkpoint at K={k} and a snapshot at S={s} exist"),
        (Some(k), None) => format!("a local checkpoint at K={k} exists (no snapshot)"),
        (None, Some(s)) => format!("a snapshot at S={s} exists (no local checkpoint)"),
        (None, None) => "no state exists".into(),
    }
}

/// The partition has no committed offset: started empty at the log start when
/// it never had one, refused when its offsets were lost, or resumed from the
/// newest usable state with `--resume-from-state`.
fn restore_uncommitted(
    ctx: &RestoreContext,
    partition: i32,
    log_start: i64,
    started: Instant,
) -> std::result::Result<Recovered, Failure> {
    // An unreadable checkpoint is an error even here: never silently reset.
    let k = ctx
        .store
        .load::<Aggregate>(&ctx.ns, partition)?
        .map(|cp| cp.next_offset);
    // The whole insights partition: a tail read can miss a snapshot, and missing
    // one here would mean processing the retained log again.
    let s = latest_snapshot(ctx, partition, i64::MAX)
        .map_err(transient("reading the insights topic"))?
        .map(|s| s.next_offset);
    match uncommitted(k, s, ctx.options.resume_from_state) {
        Uncommitted::NeverCommitted => {
            // Nothing is counted yet, and the group consumer starts at the log
            // start (`auto.offset.reset=earliest`).
            return Ok(Recovered {
                committed_offset: log_start,
                aggregate: Aggregate::default(),
                path: RestorePath::Rebuild,
                records: 0,
                secs: started.elapsed().as_secs_f64(),
                never_committed: true,
            });
        }
        Uncommitted::Refuse => {
            // Say where --resume-from-state would start; a source written under
            // another configuration does not count.
            let newest = match choose_start(ctx, partition, i64::MAX) {
                Ok(st) if st.path != RestorePath::Rebuild => format!(" (offset {})", st.from),
                _ => String::new(),
            };
            return Err(RestoreError::NoCommittedOffset {
                partition,
                found: found_state(k, s),
                newest,
            }
            .into());
        }
        Uncommitted::ResumeFromState => {}
    }
    let start = choose_start(ctx, partition, i64::MAX)?;
    if start.path == RestorePath::Rebuild {
        // Only state written under another configuration (and
        // --rebuild-on-config-change): a rebuild would start at the log start.
        return Err(RestoreError::NoCommittedOffset {
            partition,
            found: found_state(k, s),
            newest: String::new(),
        }
        .into());
    }
    let Start {
        path,
        from,
        mut aggregate,
    } = start;
    let mut resume_at = from;
    if from < log_start {
        below_log_start(ctx, partition, from, log_start, from)?;
        // `resume_at` becomes the committed offset: every deleted record lies
        // below it.
        let (here, from_here) = inexact_start(from, log_start, log_start);
        aggregate.uncounted += here;
        resume_at = from_here;
    }
    tracing::warn!(
        partition,
        path = path.as_str(),
        next_offset = resume_at,
        checkpoint = ?k,
        snapshot = ?s,
        "RESUMING FROM STATE (--resume-from-state): the group has no committed offset; resuming \
         at the newest state and committing it. Records past it are processed again if an \
         instance crashed after its last snapshot"
    );
    ctx.store.checkpoint(
        &ctx.ns,
        &[Checkpoint {
            partition,
            next_offset: resume_at,
            state: aggregate.clone(),
            fingerprint: ctx.fingerprint.encode(),
        }],
    )?;
    // `never_committed: false`: a snapshot is due at once, and its transaction
    // commits `resume_at` as the group's offset.
    Ok(recovered_from(path, aggregate, resume_at, 0, started))
}

/// A restore from `start` below the input's log start cannot be exact: the
/// refusal, unless `--allow-inexact-restore` (then a warning, and the caller
/// counts what was deleted).
fn below_log_start(
    ctx: &RestoreContext,
    partition: i32,
    start: i64,
    log_start: i64,
    committed: i64,
) -> std::result::Result<(), RestoreError> {
    let e = RestoreError::BelowLogStart {
        partition,
        start,
        log_start,
        committed,
        uncountable: log_start - start,
    };
    if !ctx.options.allow_inexact {
        return Err(e);
    }
    tracing::warn!(
        partition,
        uncounted = log_start - start,
        "RESTORE IS INEXACT (--allow-inexact-restore): {e}"
    );
    Ok(())
}

/// With records below the log start deleted, a restore to `c` from `from`
/// counts the deleted ones below `c` as `uncounted` and replays from the log
/// start: `(uncounted, replay from)`. Deleted records at or past `c` are the
/// live consumer's to count, in the transaction that commits past them, so
/// that each is counted once whichever host commits first.
fn inexact_start(from: i64, c: i64, log_start: i64) -> (u64, i64) {
    ((log_start.min(c) - from).max(0) as u64, from.max(log_start))
}

fn recovered(s: Start, c: i64, records: u64, started: Instant) -> Recovered {
    recovered_from(s.path, s.aggregate, c, records, started)
}

fn recovered_from(
    path: RestorePath,
    aggregate: Aggregate,
    c: i64,
    records: u64,
    started: Instant,
) -> Recovered {
    Recovered {
        committed_offset: c,
        aggregate,
        path,
        records,
        secs: started.elapsed().as_secs_f64(),
        never_committed: false,
    }
}

/// Picks the start with the least to replay among the local checkpoint and the
/// latest snapshot that were written under the current configuration. A source
/// written under another configuration counts as absent, so the other one still
/// serves; only when no usable source is left does a configuration change stop
/// the restore (or, when the operator asked for it, rebuild from offset 0).
fn choose_start(
    ctx: &RestoreContext,
    partition: i32,
    c: i64,
) -> std::result::Result<Start, Failure> {
    // `K > C` (the group's offsets were reset by `tally replay`): the checkpoint
    // counts records the group will process again; unusable.
    let k = ctx
        .store
        .load::<Aggregate>(&ctx.ns, partition)?
        .filter(|cp| cp.next_offset <= c);
    let mut candidates: Vec<(&'static str, Vec<String>, Start)> = Vec::new();
    if let Some(cp) = k {
        let changes =
            fingerprint_changes(ctx, partition, "local checkpoint", Some(&cp.fingerprint));
        let exact = cp.next_offset == c && changes.is_empty();
        candidates.push((
            "local checkpoint",
            changes,
            Start {
                path: if cp.next_offset == c {
                    RestorePath::Resume
                } else {
                    RestorePath::Replay
                },
                from: cp.next_offset,
                aggregate: cp.state,
            },
        ));
        if exact {
            // Nothing to replay and nothing better to find in the insights topic.
            return Ok(candidates.pop().expect("just pushed").2);
        }
    }
    if let Some(s) =
        latest_snapshot(ctx, partition, c).map_err(transient("reading the insights topic"))?
    {
        let fp = s.fingerprint.as_ref().map(Fingerprint::encode);
        let changes = fingerprint_changes(ctx, partition, "latest snapshot", fp.as_ref());
        candidates.push(("latest snapshot", changes, snapshot_start(s)));
    }
    // The most recent start first (least to replay); the checkpoint first on a
    // tie (the sort is stable), since it needs no topic read to be trusted.
    candidates.sort_by_key(|(_, _, s)| std::cmp::Reverse(s.from));
    let mut changed = None;
    for (source_name, changes, start) in candidates {
        if changes.is_empty() {
            return Ok(start);
        }
        changed.get_or_insert((source_name, changes));
    }
    let rebuild = Start {
        path: RestorePath::Rebuild,
        from: 0,
        aggregate: Aggregate::default(),
    };
    match changed {
        None => Ok(rebuild),
        Some((source_name, changes)) if ctx.options.rebuild_on_config_change => {
            tracing::warn!(partition, source_name, changes = %changes.join("; "), "configuration changed; rebuilding the aggregates under the new one (--rebuild-on-config-change)");
            Ok(rebuild)
        }
        Some((source_name, changes)) => Err(RestoreError::ConfigChanged {
            partition,
            source_name,
            changes: changes.join("; "),
        }
        .into()),
    }
}

fn snapshot_start(s: Snapshot) -> Start {
    Start {
        path: RestorePath::Snapshot,
        from: s.next_offset,
        aggregate: s.aggregate,
    }
}

/// What differs between the configuration a source was written under and the
/// current one (empty: usable). A snapshot written before fingerprints existed
/// (`None`) is accepted with a warning: nothing says it differs.
fn fingerprint_changes(
    ctx: &RestoreContext,
    partition: i32,
    source_name: &'static str,
    stored: Option<&String>,
) -> Vec<String> {
    let Some(stored) = stored else {
        tracing::warn!(
            partition,
            "{source_name} carries no configuration fingerprint (written by an older tally); assuming the current configuration"
        );
        return Vec::new();
    };
    match Fingerprint::decode(stored) {
        Some(f) => f.changes(&ctx.fingerprint),
        None => vec![format!("unreadable fingerprint {stored:?}")],
    }
}

/// The latest committed snapshot of input partition `partition` covering at most
/// `c`, read from the tail of the same-numbered insights partition
/// (co-partitioned: only that partition's snapshots live there). Reads a small
/// window before the end and widens it until it holds a snapshot with `S <= c`
/// or reaches the log start: aborted transactions leave invisible records at the
/// tail, and after a `tally replay` the latest snapshots lie past `C`.
///
/// The newest such snapshot is taken, not the largest `S` anywhere: every
/// committed snapshot is exact for its own `S`, so any `S <= c` restores exactly
/// (replaying `[S, c)`), and the owners of a partition write snapshots in
/// increasing `S` except across a `tally replay` reset, whose older, larger
/// `S <= c` would only shorten the replay. Snapshots are written at most once a
/// `--snapshot-interval`, so `S < c` is normal after a crash.
fn latest_snapshot(
    ctx: &RestoreContext,
    partition: i32,
    c: i64,
) -> kafka::Result<Option<Snapshot>> {
    let reader = TopicReader::new(&ctx.conn, &ctx.insights_topic)?;
    let (low, high) = reader.watermarks(partition)?;
    // Each committed snapshot takes two offsets (the record and the commit
    // marker): the last 16 offsets hold the latest few snapshots.
    let mut window = 16;
    /// What decides whether a snapshot is usable, parsed without its aggregate.
    #[derive(serde::Deserialize)]
    struct Head {
        topic: String,
        partition: i32,
        next_offset: i64,
    }
    loop {
        let from = low.max(high.saturating_sub(window));
        // Only the newest usable value is kept: a read back to the log start
        // must not hold every snapshot in memory.
        let mut newest = None;
        reader.read(&[(partition, kafka::StartAt::Offset(from), None)], |r| {
            let Some(v) = r.record.value else { return };
            let usable = serde_json::from_slice::<Head>(&v).is_ok_and(|h| {
                h.topic == ctx.process.input_topic && h.partition == partition && h.next_offset <= c
            });
            if usable {
                newest = Some(v);
            }
        })?;
        let newest = newest.and_then(|v| serde_json::from_slice::<Snapshot>(&v).ok());
        if newest.is_some() || from <= low {
            return Ok(newest);
        }
        window = window.saturating_mul(8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_counts_only_the_deleted_records_below_c() {
        // [10, 50) deleted, C = 80: all 40 here, replay [50, 80).
        assert_eq!(inexact_start(10, 80, 50), (40, 50));
        // [10, 120) deleted, C = 80: 70 here, [80, 120) is the live consumer's.
        assert_eq!(inexact_start(10, 80, 120), (70, 120));
        // Nothing deleted below the start.
        assert_eq!(inexact_start(60, 80, 50), (0, 60));
    }

    #[test]
    fn no_offset_and_no_state_is_never_committed() {
        for resume in [false, true] {
            assert_eq!(uncommitted(None, None, resume), Uncommitted::NeverCommitted);
        }
    }

    #[test]
    fn no_offset_with_state_is_refused_unless_asked() {
        for (k, s) in [(Some(10), None), (None, Some(10)), (Some(5), Some(10))] {
            assert_eq!(uncommitted(k, s, false), Uncommitted::Refuse, "{k:?} {s:?}");
            assert_eq!(
                uncommitted(k, s, true),
                Uncommitted::ResumeFromState,
                "{k:?} {s:?}"
            );
        }
    }

    #[test]
    fn the_refusal_names_what_exists() {
        let e = RestoreError::NoCommittedOffset {
            partition: 3,
            found: found_state(Some(7), Some(9)),
            newest: " (offset 9)".into(),
        }
        .to_string();
        assert!(
            e.starts_with("partition 3: the group has no committed offset"),
            "{e}"
        );
        assert!(
            e.contains("K=7") && e.contains("S=9") && e.contains("(offset 9)"),
            "{e}"
        );
        assert!(e.contains("--resume-from-state"), "{e}");
    }
}
