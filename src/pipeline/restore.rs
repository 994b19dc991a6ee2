//! Recovering a partition's aggregates when it is assigned (DESIGN.md,
//! "Recovering state"): in the background, never holding a transaction open,
//! while the loop keeps polling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_state::{Checkpoint, Namespace, StateStore};

use super::{Phase, Pipeline, PipelineError, Result, blocking};
use crate::aggregate::{Aggregate, Horizon};
use crate::event::{ProcessConfig, process};
use crate::failpoints;
use crate::kafka::{self, GroupConsumer, TopicReader};
use crate::observe::{PartitionRestored, RestoreProgress, RestoreStarted, emit};

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

/// Result of one background restore.
#[derive(Debug)]
pub(super) struct Restored {
    epoch: u64,
    partition: i32,
    committed_offset: i64,
    aggregate: Aggregate,
    path: RestorePath,
    records: u64,
    secs: f64,
}

pub(super) type RestoreResult = std::result::Result<Restored, (i32, String)>;

/// What a restore needs besides the partition: the clients and the
/// configuration that decides how records count.
struct RestoreContext {
    consumer: Arc<GroupConsumer>,
    store: Arc<StateStore>,
    ns: Namespace,
    conn: kafka::Connection,
    process: ProcessConfig,
    horizon: Horizon,
}

impl Pipeline {
    /// Restores partitions in the background; the loop keeps polling meanwhile so
    /// the member never exceeds `max.poll.interval.ms`, and no transaction is held open.
    pub(super) fn spawn_restore(&self, partitions: Vec<i32>, epoch: u64) {
        emit(RestoreStarted {
            partitions: &partitions,
        });
        let tx = self.restored_tx.clone();
        let ctx = RestoreContext {
            consumer: self.consumer.clone(),
            store: self.store.clone(),
            ns: self.ns.clone(),
            conn: self.cfg.connection.clone(),
            process: self.cfg.process.clone(),
            horizon: self.cfg.horizon,
        };
        tokio::task::spawn_blocking(move || {
            let committed = match ctx.consumer.committed(&partitions) {
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
                let res = restore_partition(&ctx, p, c, epoch).map_err(|e| (p, e.to_string()));
                let _ = tx.send(res);
            }
        });
    }

    pub(super) async fn on_restored(&mut self, res: RestoreResult) -> Result<()> {
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
        emit(PartitionRestored {
            topic: &self.cfg.process.input_topic,
            partition: r.partition,
            next_offset: r.committed_offset,
            aggregate: &st.committed,
            path: r.path.as_str(),
            records: r.records,
        });
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
}

/// Recovery rules of DESIGN.md for one partition. `c`: the group's committed
/// offset (`None`: never committed, so processing starts at the earliest offset).
fn restore_partition(
    ctx: &RestoreContext,
    partition: i32,
    c: Option<i64>,
    epoch: u64,
) -> Result<Restored> {
    let RestoreContext {
        consumer,
        store,
        ns,
        conn,
        process: process_cfg,
        horizon,
    } = ctx;
    let horizon = *horizon;
    let started = Instant::now();
    // Tests hold a restore here (`restore-hold=1*sleep(5000)`) to watch /readyz.
    failpoints::error("restore-hold");
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
        let total = (c - from).max(0) as u64;
        reader.read(&[(partition, kafka::StartAt::Offset(from), Some(c))], |r| {
            aggregate.apply(&process(&r.record, process_cfg), horizon);
            records += 1;
            if records % 1024 == 0 {
                emit(RestoreProgress {
                    partition,
                    done: (r.record.offset + 1 - from).max(0) as u64,
                    total,
                });
            }
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
