//! The live status the endpoint serves: is the loop alive, is the instance
//! ready, and what each assigned partition has committed. The loop writes it
//! through events; handlers read it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::aggregate::{Aggregate, Horizon};
use crate::insights::{Latest, Snapshot};

/// How long the loop may go without an iteration before `/healthz` fails. A
/// loop iteration is at most a poll (250 ms) plus a commit and a checkpoint;
/// a commit stalled by a broker freeze recovers on its own, so this is well
/// above the 40 s freezes tally rides out, and below `max.poll.interval.ms`
/// (300 s), past which the member has left the group anyway.
pub const LIVENESS_LIMIT: Duration = Duration::from_secs(120);

/// One assigned partition as the endpoint sees it.
#[derive(Debug, Clone, Default)]
pub struct PartitionView {
    /// `Some((done, total))` offsets while its aggregates are being restored.
    pub restoring: Option<(u64, u64)>,
    /// The committed state: aggregates of exactly the records below `next_offset`.
    pub committed: Option<Arc<Snapshot>>,
}

#[derive(Debug)]
pub struct Status {
    started: Instant,
    /// Milliseconds after `started` of the loop's latest iteration.
    heartbeat_ms: AtomicU64,
    producer_ready: AtomicBool,
    /// An assignment arrived (possibly empty): the member is in the group.
    joined: AtomicBool,
    /// Set while `run` cannot reach the cluster (what it is waiting for).
    connecting: Mutex<Option<String>>,
    partitions: Mutex<BTreeMap<i32, PartitionView>>,
    horizon: Mutex<Horizon>,
}

/// `/readyz`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Why not (empty when ready).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these leaves plain data behind: keep serving it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Status {
    pub fn new() -> Self {
        Status {
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            producer_ready: AtomicBool::new(false),
            joined: AtomicBool::new(false),
            connecting: Mutex::new(None),
            partitions: Mutex::new(BTreeMap::new()),
            horizon: Mutex::new(Horizon::default()),
        }
    }

    pub fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the loop (or start-up) last reported itself alive.
    pub fn since_beat(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)))
    }

    pub fn alive(&self) -> bool {
        self.since_beat() < LIVENESS_LIMIT
    }

    pub fn set_producer_ready(&self, ready: bool) {
        self.producer_ready.store(ready, Ordering::Relaxed);
    }

    /// `true` on an assignment, `false` on a revocation: under eager assignment
    /// every rebalance revokes everything first, so between the two the member is
    /// rebalancing and processes nothing.
    pub fn set_joined(&self, joined: bool) {
        self.joined.store(joined, Ordering::Relaxed);
    }

    pub fn set_connecting(&self, what: Option<String>) {
        *lock(&self.connecting) = what;
    }

    pub fn set_horizon(&self, h: Horizon) {
        *lock(&self.horizon) = h;
    }

    /// Changes the views of `partitions` (inserting missing ones).
    pub fn update(&self, partitions: &[i32], mut f: impl FnMut(&mut PartitionView)) {
        let mut map = lock(&self.partitions);
        for p in partitions {
            f(map.entry(*p).or_default());
        }
    }

    /// Changes the view of `partition` if it is assigned.
    pub fn update_existing(&self, partition: i32, f: impl FnOnce(&mut PartitionView)) {
        if let Some(v) = lock(&self.partitions).get_mut(&partition) {
            f(v);
        }
    }

    pub fn remove(&self, partitions: &[i32]) {
        let mut map = lock(&self.partitions);
        for p in partitions {
            map.remove(p);
        }
    }

    /// The committed next offset of each assigned partition that has one.
    pub fn committed_offsets(&self) -> BTreeMap<i32, i64> {
        lock(&self.partitions)
            .iter()
            .filter_map(|(p, v)| v.committed.as_ref().map(|s| (*p, s.next_offset)))
            .collect()
    }

    pub fn assigned(&self) -> Vec<i32> {
        lock(&self.partitions).keys().copied().collect()
    }

    pub fn readiness(&self) -> Readiness {
        let not = |reason: String| Readiness {
            ready: false,
            reason,
        };
        if let Some(what) = lock(&self.connecting).clone() {
            return not(what);
        }
        if !self.producer_ready.load(Ordering::Relaxed) {
            return not("transactional producer not initialised".into());
        }
        if !self.joined.load(Ordering::Relaxed) {
            return not("no assignment: joining the consumer group or rebalancing".into());
        }
        let restoring: Vec<String> = lock(&self.partitions)
            .iter()
            .filter_map(|(p, v)| {
                v.restoring.map(|(done, total)| {
                    let pct = (done * 100).checked_div(total).unwrap_or(0);
                    format!("partition {p} {pct}%")
                })
            })
            .collect();
        if !restoring.is_empty() {
            return not(format!("restoring {}", restoring.join(", ")));
        }
        Readiness {
            ready: true,
            reason: String::new(),
        }
    }

    /// This instance's committed aggregates, as `tally insights` reads them
    /// from the insights topic.
    pub fn insights(&self) -> (Latest, Horizon) {
        let by_partition = lock(&self.partitions)
            .iter()
            .filter_map(|(p, v)| v.committed.as_ref().map(|s| (*p, s.clone())))
            .collect::<Vec<_>>();
        let latest = Latest {
            by_partition: by_partition
                .into_iter()
                .map(|(p, s)| (p, Snapshot::clone(&s)))
                .collect(),
        };
        (latest, *lock(&self.horizon))
    }
}

impl Default for Status {
    fn default() -> Self {
        Self::new()
    }
}

/// The committed snapshot of a partition, as the loop publishes it.
pub fn snapshot(topic: &str, partition: i32, next_offset: i64, a: Aggregate) -> Arc<Snapshot> {
    Arc::new(Snapshot {
        topic: topic.to_string(),
        partition,
        next_offset,
        aggregate: a,
        // /insights shows aggregates; the fingerprint matters only on restore.
        fingerprint: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_says_why_not() {
        let s = Status::new();
        assert!(!s.readiness().ready);
        s.set_producer_ready(true);
        assert!(s.readiness().reason.contains("consumer group"));
        s.set_joined(true);
        s.update(&[3], |v| v.restoring = Some((42, 100)));
        assert_eq!(s.readiness().reason, "restoring partition 3 42%");
        s.update(&[3], |v| v.restoring = None);
        assert!(s.readiness().ready);
        s.beat();
        assert!(s.alive());
    }
}
