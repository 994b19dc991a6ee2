//! Recovering a partition's aggregates when it is assigned (docs/design.md,
//! "Recovering state when a partition is assigned"): in the background, never holding a transaction open,
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
//!
//! That decision is [`plan::plan`], a pure function of what a restore found;
//! this module is the I/O around it: it gathers the facts (the committed
//! offset, the log start, the checkpoint, the latest snapshot), retries what
//! failed transiently, and executes the plan (replay a range, checkpoint).

mod plan;

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tally_state::{Checkpoint, Namespace, StateError, StateStore};

use super::{Phase, Pipeline, PipelineError, Result, blocking, drop_later};
use crate::aggregate::{Aggregate, Horizon};
use crate::event::{ProcessConfig, process};
use crate::failpoints;
use crate::insights::{Fingerprint, Snapshot};
use crate::kafka::{self, GroupConsumer, TopicReader};
use crate::observe::{PartitionRestored, RestorePath, RestoreProgress, RestoreStarted, emit};
use plan::{Base, Plan, Planned, Refusal, RestoreFacts, Stored, Warning, plan};

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
            path: rec.path,
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

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Permanent(e) => Failure::Permanent(e),
            Refusal::Unsettled(e) => Failure::Unsettled(e),
        }
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

/// The recovery rules for one partition: gathers the facts, lets
/// [`plan`] decide, and executes the plan.
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
    let found = gather(ctx, partition)?;
    let Planned { warnings, outcome } = plan(&found.facts);
    for w in &warnings {
        log_warning(partition, w);
    }
    execute(ctx, partition, outcome?, found, cancelled, started)
}

/// What a restore found: the facts [`plan`] decides on, and the aggregates
/// of the checkpoint and the snapshot they describe.
struct Found {
    facts: RestoreFacts,
    checkpoint: Option<Checkpoint<Aggregate>>,
    snapshot: Option<Snapshot>,
}

/// Reads `C`, the input's log start, the local checkpoint and (unless the
/// checkpoint is exact) the latest snapshot.
fn gather(ctx: &RestoreContext, partition: i32) -> std::result::Result<Found, Failure> {
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
    // An unreadable checkpoint is an error even without `C`: never silently reset.
    let checkpoint = ctx.store.load::<Aggregate>(&ctx.ns, partition)?;
    let mut facts = RestoreFacts {
        partition,
        committed,
        log_start,
        checkpoint: checkpoint.as_ref().map(|cp| Stored {
            next_offset: cp.next_offset,
            fingerprint: Some(cp.fingerprint.clone()),
        }),
        snapshot: None,
        fingerprint: ctx.fingerprint.clone(),
        options: ctx.options,
    };
    let snapshot = if facts.needs_snapshot() {
        // Without `C`, the newest snapshot however recent: a tail read bounded
        // by an offset can miss one, and missing one there would mean
        // processing the retained log again.
        latest_snapshot(ctx, partition, committed.unwrap_or(i64::MAX))
            .map_err(transient("reading the insights topic"))?
    } else {
        None
    };
    facts.snapshot = snapshot.as_ref().map(|s| Stored {
        next_offset: s.next_offset,
        fingerprint: s.fingerprint.as_ref().map(Fingerprint::encode),
    });
    Ok(Found {
        facts,
        checkpoint,
        snapshot,
    })
}

/// Takes the plan's base aggregate, counts what retention deleted, replays
/// the plan's range and checkpoints the result.
fn execute(
    ctx: &RestoreContext,
    partition: i32,
    plan: Plan,
    found: Found,
    cancelled: &AtomicBool,
    started: Instant,
) -> std::result::Result<Recovered, Failure> {
    let mut aggregate = match plan.base {
        Base::Checkpoint => found.checkpoint.expect("planned from the checkpoint").state,
        Base::Snapshot => found.snapshot.expect("planned from the snapshot").aggregate,
        Base::Empty => Aggregate::default(),
    };
    aggregate.uncounted += plan.uncounted;
    let mut records = 0;
    if !plan.replay.is_empty() && !cancelled.load(Ordering::Relaxed) {
        (aggregate, records) = replay(ctx, partition, &plan, aggregate, started)?;
    }
    // Cancelled: nobody accepts this result; don't write a checkpoint for a
    // partition that may be someone else's by now.
    if plan.checkpoint && !cancelled.load(Ordering::Relaxed) {
        ctx.store.checkpoint(
            &ctx.ns,
            &[Checkpoint {
                partition,
                next_offset: plan.next_offset,
                state: aggregate.clone(),
                fingerprint: ctx.fingerprint.encode(),
            }],
        )?;
    }
    Ok(Recovered {
        committed_offset: plan.next_offset,
        aggregate,
        path: plan.path,
        records,
        secs: started.elapsed().as_secs_f64(),
        never_committed: plan.never_committed,
    })
}

/// Replays `plan.replay` from the input into `aggregate`, producing nothing:
/// the aggregate and the number of records read.
fn replay(
    ctx: &RestoreContext,
    partition: i32,
    plan: &Plan,
    aggregate: Aggregate,
    started: Instant,
) -> std::result::Result<(Aggregate, u64), Failure> {
    let Range {
        start: from,
        end: c,
    } = plan.replay;
    tracing::info!(
        partition,
        path = plan.path.as_str(),
        from,
        to = c,
        "replaying into aggregates (producing nothing)"
    );
    let reader = TopicReader::new(&ctx.conn, &ctx.process.input_topic)
        .map_err(transient("creating an input reader"))?;
    let mut last_log = Instant::now();
    let total = (c - from).max(0) as u64;
    let mut records = 0u64;
    let mut replayed = aggregate;
    reader
        .read(&[(partition, kafka::StartAt::Offset(from), Some(c))], |r| {
            replayed.apply(&process(&r.record, &ctx.process), ctx.horizon);
            records += 1;
            if records % 1024 == 0 {
                emit(RestoreProgress {
                    partition,
                    done: (r.record.offset + 1 - from).max(0) as u64,
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
        })
        .map_err(transient("replaying the input"))?;
    // Not dropped here: that would hold the partition's restore for 100 ms.
    drop_later(reader);
    Ok((replayed, records))
}

/// Logs what [`plan`] warned about.
fn log_warning(partition: i32, w: &Warning) {
    match w {
        Warning::NoFingerprint { source_name } => tracing::warn!(
            partition,
            "{source_name} carries no configuration fingerprint (written by an older tally); assuming the current configuration"
        ),
        Warning::RebuildingOnConfigChange {
            source_name,
            changes,
        } => {
            tracing::warn!(partition, source_name, changes = %changes, "configuration changed; rebuilding the aggregates under the new one (--rebuild-on-config-change)")
        }
        &Warning::Inexact {
            start,
            log_start,
            committed,
        } => {
            let e = plan::below_log_start_error(partition, start, log_start, committed);
            tracing::warn!(
                partition,
                uncounted = log_start - start,
                "RESTORE IS INEXACT (--allow-inexact-restore): {e}"
            );
        }
        &Warning::ResumingFromState {
            path,
            next_offset,
            checkpoint,
            snapshot,
        } => tracing::warn!(
            partition,
            path = path.as_str(),
            next_offset,
            checkpoint = ?checkpoint,
            snapshot = ?snapshot,
            "RESUMING FROM STATE (--resume-from-state): the group has no committed offset; resuming \
             at the newest state and committing it. Records past it are processed again if an \
             instance crashed after its last snapshot"
        ),
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
    // The topic's metadata first: librdkafka's watermark query, when the
    // client does not know the partition's leader yet, waits for it in growing
    // steps (100 ms, 200 ms, ...) and can miss a faster answer, which would
    // add up to 0.7 s to a restore that otherwise takes under 0.1 s.
    reader.partitions()?;
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
            drop_later(reader);
            return Ok(newest);
        }
        window = window.saturating_mul(8);
    }
}
