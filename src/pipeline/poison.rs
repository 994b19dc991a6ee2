//! Records that cannot be produced, and records at the head of too many
//! consecutive aborts (guarantee 3): both are dead-lettered on their next attempt
//! so the stream moves on.
//!
//! Delivery failures arrive asynchronously and surface as a failed commit. When a
//! failure concerns one record (too large, invalid, refused by a topic policy) and
//! the failed record names its input record (a DLQ entry's source headers, a
//! processed record's `source_*` fields), that record
//! alone is to blame: it is
//! dead-lettered as `unproducible` after one abort. A record-level failure that
//! cannot be pinned on an input record (a snapshot, or the DLQ entry of a record
//! already being dead-lettered) counts a strike against the head (the committed
//! offset) of every partition in the transaction; `threshold` strikes on the same
//! head dead-letter it as `poison`.
//!
//! Aborts with no record-level failure (a commit timeout, a broker outage, a lost
//! assignment) neither count nor reset a streak: an outage must not dead-letter
//! valid records.

use std::collections::{BTreeMap, HashMap};

use crate::event::{Reason, Rejection};
use crate::kafka::{Origin, RecordFailure};

/// How a doomed record is written to the DLQ on its next attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Doom {
    pub rejection: Rejection,
    /// Its DLQ entry failed too: write only the headers (original size and
    /// SHA-256, nothing of the key or value), which any DLQ accepts.
    pub strip: bool,
}

#[derive(Debug, Clone)]
struct Streak {
    head: i64,
    aborts: u32,
}

#[derive(Debug)]
pub(super) struct Poison {
    threshold: u32,
    streaks: BTreeMap<i32, Streak>,
    doomed: HashMap<(i32, i64), Doom>,
    /// Doomed records whose DLQ entry is in the open transaction.
    in_flight: HashMap<(i32, i64), Doom>,
}

impl Poison {
    pub(super) fn new(threshold: u32) -> Self {
        Poison {
            threshold: threshold.max(1),
            streaks: BTreeMap::new(),
            doomed: HashMap::new(),
            in_flight: HashMap::new(),
        }
    }

    /// The verdict for a record about to be processed, if it has one.
    pub(super) fn take(&mut self, partition: i32, offset: i64) -> Option<Doom> {
        let d = self.doomed.remove(&(partition, offset))?;
        self.in_flight.insert((partition, offset), d.clone());
        Some(d)
    }

    /// An abort. `heads`: the committed offset of each partition the transaction
    /// held records of; `failures`: what the producer reported since the last call.
    pub(super) fn on_abort(&mut self, heads: &[(i32, i64)], failures: Vec<RecordFailure>) {
        let in_flight = std::mem::take(&mut self.in_flight);
        let mut unattributed: Option<String> = None;
        for f in failures {
            match f.origin {
                Origin::Input { partition, offset } => {
                    let at = (partition, offset);
                    match in_flight.get(&at) {
                        // Its DLQ entry failed as well: headers only next time.
                        Some(d) if !d.strip => {
                            let doom = Doom {
                                rejection: d.rejection.clone(),
                                strip: true,
                            };
                            self.doomed.insert(at, doom);
                        }
                        Some(_) => unattributed = Some(f.error),
                        None => {
                            tracing::warn!(partition, offset, error = %f.error, "record cannot be produced; dead-lettering it");
                            let rejection = Rejection {
                                reason: Reason::Unproducible,
                                message: f.error,
                            };
                            self.doomed.insert(
                                at,
                                Doom {
                                    rejection,
                                    strip: false,
                                },
                            );
                        }
                    }
                }
                Origin::Snapshot { partition } => {
                    // Not a record to dead-letter: the snapshot comes back every
                    // interval and restores fall further behind until it fits.
                    crate::observe::emit(crate::observe::SnapshotRefused {
                        partition,
                        error: &f.error,
                    });
                    unattributed = Some(f.error);
                }
                Origin::Probe | Origin::Unknown => unattributed = Some(f.error),
            }
        }
        // Verdicts not yet written stay; the records come again after the rewind.
        for (at, d) in in_flight {
            self.doomed.entry(at).or_insert(d);
        }
        let Some(error) = unattributed else {
            return;
        };
        for &(partition, head) in heads {
            let s = self
                .streaks
                .entry(partition)
                .or_insert(Streak { head, aborts: 0 });
            if s.head != head {
                *s = Streak { head, aborts: 0 };
            }
            s.aborts += 1;
            if s.aborts >= self.threshold {
                tracing::warn!(partition, offset = head, aborts = s.aborts, error = %error, "poison record: dead-lettering it");
                self.streaks.remove(&partition);
                self.doomed.insert(
                    (partition, head),
                    Doom {
                        rejection: Rejection {
                            reason: Reason::Poison,
                            message: format!(
                                "at the head of {} consecutive aborted transactions; last error: {error}",
                                self.threshold
                            ),
                        },
                        strip: false,
                    },
                );
            }
        }
    }

    /// A commit moved these partitions' heads: their streaks end.
    pub(super) fn on_commit(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.streaks.remove(p);
        }
        self.in_flight.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(origin: Origin) -> RecordFailure {
        RecordFailure {
            origin,
            error: "MessageSizeTooLarge".into(),
        }
    }

    #[test]
    fn attributed_failure_dooms_the_record_after_one_abort() {
        let mut p = Poison::new(3);
        p.on_abort(
            &[(0, 10), (1, 5)],
            vec![failure(Origin::Input {
                partition: 0,
                offset: 12,
            })],
        );
        assert_eq!(p.take(0, 10), None);
        let d = p.take(0, 12).expect("doomed");
        assert_eq!(d.rejection.reason, Reason::Unproducible);
        assert!(!d.strip);
        // Its DLQ entry fails too: headers only on the next attempt.
        p.on_abort(
            &[(0, 10)],
            vec![failure(Origin::Input {
                partition: 0,
                offset: 12,
            })],
        );
        assert!(p.take(0, 12).expect("doomed again").strip);
    }

    #[test]
    fn unattributed_failures_poison_the_head_after_threshold_aborts() {
        let mut p = Poison::new(3);
        let snap = || vec![failure(Origin::Snapshot { partition: 1 })];
        p.on_abort(&[(1, 40)], snap());
        // An outage in between neither counts nor resets.
        p.on_abort(&[(1, 40)], vec![]);
        p.on_abort(&[(1, 40)], snap());
        assert_eq!(p.take(1, 40), None);
        p.on_abort(&[(1, 40)], snap());
        let d = p.take(1, 40).expect("poisoned after 3");
        assert_eq!(d.rejection.reason, Reason::Poison);
    }

    #[test]
    fn a_moved_head_or_a_commit_restarts_the_streak() {
        let mut p = Poison::new(2);
        let snap = || vec![failure(Origin::Snapshot { partition: 0 })];
        p.on_abort(&[(0, 1)], snap());
        p.on_commit(&[0]);
        p.on_abort(&[(0, 1)], snap());
        assert_eq!(p.take(0, 1), None);
        p.on_abort(&[(0, 2)], snap());
        assert_eq!(p.take(0, 2), None);
        p.on_abort(&[(0, 2)], snap());
        assert!(p.take(0, 2).is_some());
    }
}
