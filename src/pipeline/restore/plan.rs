//! The recovery table (docs/design.md, "Recovering state when a
//! partition is assigned") as a pure function: [`plan`] takes what a restore
//! found, as owned values ([`RestoreFacts`]), and says what to do with it
//! ([`Plan`]) or why not ([`Refusal`]). The I/O in the parent module gathers the
//! facts, logs the [`Warning`]s and executes the plan; nothing here reads Kafka
//! or RocksDB, so the table's rules are tested here, by example and by
//! property.

use std::ops::Range;

use super::{RestoreError, RestoreOptions, RestorePath};
use crate::insights::Fingerprint;

/// Everything the recovery decision depends on.
#[derive(Debug, Clone)]
pub(super) struct RestoreFacts {
    pub partition: i32,
    /// `C`: the group's committed offset, `None` when it has none.
    pub committed: Option<i64>,
    /// The input partition's log start: the records below it were deleted.
    pub log_start: i64,
    /// `K`: the local checkpoint, whatever its offset.
    pub checkpoint: Option<Stored>,
    /// `S`: the latest snapshot with `S <= C` (any, without `C`); `None` also
    /// when it was not read because [`RestoreFacts::needs_snapshot`] said so.
    pub snapshot: Option<Stored>,
    /// The configuration the aggregates are computed under now.
    pub fingerprint: Fingerprint,
    pub options: RestoreOptions,
}

/// A checkpoint or a snapshot, as far as the decision goes (the aggregate stays
/// with the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stored {
    /// Exclusive: the stored aggregate counts exactly the records below it.
    pub next_offset: i64,
    /// The configuration it was written under, encoded; `None` for a snapshot
    /// written before fingerprints existed.
    pub fingerprint: Option<String>,
}

/// Whose aggregate a restore starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Base {
    Checkpoint,
    Snapshot,
    /// Nothing counted yet.
    Empty,
}

/// What a restore does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    pub path: RestorePath,
    pub base: Base,
    /// The base counts exactly the records below `from` (0 for a rebuild; the
    /// log start for a partition the group never committed).
    pub from: i64,
    /// The records in `[from, next_offset)` deleted by retention, added to the
    /// aggregate's `uncounted` (only with `--allow-inexact-restore`).
    pub uncounted: u64,
    /// The input records to replay into the aggregate, producing nothing;
    /// empty (`next_offset..next_offset`) when there are none. Together with
    /// `uncounted` it covers `[from, next_offset)` exactly once.
    pub replay: Range<i64>,
    /// Where the partition resumes: `C`, or without `C` the offset its next
    /// transaction commits for the group.
    pub next_offset: i64,
    /// Whether the restored aggregate is checkpointed at `next_offset` (so a
    /// restart of this host resumes without reading anything).
    pub checkpoint: bool,
    /// The group never committed the partition (see `Recovered::never_committed`).
    pub never_committed: bool,
}

/// What a restore logs as a warning on its way to a plan or a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Warning {
    /// A snapshot written before fingerprints existed: assumed to be under the
    /// current configuration.
    NoFingerprint { source_name: &'static str },
    /// `--rebuild-on-config-change`: rebuilding from offset 0.
    RebuildingOnConfigChange {
        source_name: &'static str,
        changes: String,
    },
    /// `--allow-inexact-restore`: what [`RestoreError::BelowLogStart`] would
    /// have refused.
    Inexact {
        start: i64,
        log_start: i64,
        committed: i64,
    },
    /// `--resume-from-state`: the group has no committed offset and the
    /// partition resumes at the newest state.
    ResumingFromState {
        path: RestorePath,
        next_offset: i64,
        checkpoint: Option<i64>,
        snapshot: Option<i64>,
    },
}

/// Why a restore cannot go on.
#[derive(Debug)]
pub(super) enum Refusal {
    Permanent(Box<RestoreError>),
    /// A start below the log start anywhere but at an exact checkpoint: a newer
    /// snapshot may exist (every revocation and shutdown writes one at `C`),
    /// but a read_committed reader cannot see past another producer's open
    /// transaction (a killed instance's, until it restarts or the transaction
    /// times out), so the restore is retried before it refuses.
    Unsettled(Box<RestoreError>),
}

impl From<RestoreError> for Refusal {
    fn from(e: RestoreError) -> Self {
        Refusal::Permanent(Box::new(e))
    }
}

/// A decision and the warnings met on the way to it (logged either way: a
/// refusal may follow a warning about the source it refused).
#[derive(Debug)]
pub(super) struct Planned {
    pub warnings: Vec<Warning>,
    pub outcome: Result<Plan, Refusal>,
}

impl RestoreFacts {
    /// Whether the decision depends on the snapshot: not when the checkpoint
    /// is exact at `C` (nothing to replay, and nothing better to find in the
    /// insights topic), so the topic is not read.
    pub fn needs_snapshot(&self) -> bool {
        let exact = match (&self.checkpoint, self.committed) {
            (Some(k), Some(c)) => k.next_offset == c && changes(&self.fingerprint, k).is_empty(),
            _ => false,
        };
        !exact
    }
}

/// The recovery rules for one partition.
pub(super) fn plan(facts: &RestoreFacts) -> Planned {
    let mut warnings = Vec::new();
    let outcome = match facts.committed {
        Some(c) => with_committed(facts, c, &mut warnings),
        None => without_committed(facts, &mut warnings),
    };
    Planned { warnings, outcome }
}

/// The group committed `c`: the restored aggregate is exact at `c` (or marked
/// inexact), checkpointed there, and the partition resumes there.
fn with_committed(f: &RestoreFacts, c: i64, w: &mut Vec<Warning>) -> Result<Plan, Refusal> {
    let start = choose_start(f, c, w)?;
    if start.path == RestorePath::Resume {
        if c < f.log_start {
            // Exact at `C`, but retention deleted `[C, log start)` while nobody
            // consumed this partition: those records can be neither processed
            // nor counted, and the group consumer would jump over them silently.
            below_log_start(f, c, c, w)?;
            // The deleted records lie at and past `C`, which the live consumer
            // counts when it jumps over them (see `Pipeline::check_gap`), in the
            // transaction that commits past them. Counted here as well, a
            // restart before that commit, or the live check, would count them
            // twice.
        }
        // Already checkpointed at `C`: nothing to write.
        return Ok(Plan {
            path: start.path,
            base: start.base,
            from: c,
            uncounted: 0,
            replay: c..c,
            next_offset: c,
            checkpoint: false,
            never_committed: false,
        });
    }
    let (uncounted, replay_from) = if start.from < f.log_start {
        below_log_start(f, start.from, c, w).map_err(|e| Refusal::Unsettled(Box::new(e)))?;
        inexact_start(start.from, c, f.log_start)
    } else {
        (0, start.from)
    };
    Ok(Plan {
        path: start.path,
        base: start.base,
        from: start.from,
        uncounted,
        replay: replay_from.min(c)..c,
        next_offset: c,
        checkpoint: true,
        never_committed: false,
    })
}

/// The partition has no committed offset: started empty at the log start when
/// it never had one, refused when its offsets were lost, or resumed from the
/// newest usable state with `--resume-from-state`.
fn without_committed(f: &RestoreFacts, w: &mut Vec<Warning>) -> Result<Plan, Refusal> {
    let k = f.checkpoint.as_ref().map(|k| k.next_offset);
    let s = f.snapshot.as_ref().map(|s| s.next_offset);
    match uncommitted(k, s, f.options.resume_from_state) {
        Uncommitted::NeverCommitted => {
            // Nothing is counted yet, and the group consumer starts at the log
            // start (`auto.offset.reset=earliest`).
            return Ok(Plan {
                path: RestorePath::Rebuild,
                base: Base::Empty,
                from: f.log_start,
                uncounted: 0,
                replay: f.log_start..f.log_start,
                next_offset: f.log_start,
                checkpoint: false,
                never_committed: true,
            });
        }
        Uncommitted::Refuse => {
            // Say where --resume-from-state would start; a source written under
            // another configuration does not count.
            let newest = match choose_start(f, i64::MAX, w) {
                Ok(st) if st.path != RestorePath::Rebuild => format!(" (offset {})", st.from),
                _ => String::new(),
            };
            return Err(RestoreError::NoCommittedOffset {
                partition: f.partition,
                found: found_state(k, s),
                newest,
            }
            .into());
        }
        Uncommitted::ResumeFromState => {}
    }
    let start = choose_start(f, i64::MAX, w)?;
    if start.path == RestorePath::Rebuild {
        // Only state written under another configuration (and
        // --rebuild-on-config-change): a rebuild would start at the log start.
        return Err(RestoreError::NoCommittedOffset {
            partition: f.partition,
            found: found_state(k, s),
            newest: String::new(),
        }
        .into());
    }
    let (uncounted, resume_at) = if start.from < f.log_start {
        below_log_start(f, start.from, start.from, w)?;
        // `resume_at` becomes the committed offset: every deleted record lies
        // below it.
        inexact_start(start.from, f.log_start, f.log_start)
    } else {
        (0, start.from)
    };
    w.push(Warning::ResumingFromState {
        path: start.path,
        next_offset: resume_at,
        checkpoint: k,
        snapshot: s,
    });
    // `never_committed: false`: a snapshot is due at once, and its transaction
    // commits `resume_at` as the group's offset.
    Ok(Plan {
        path: start.path,
        base: start.base,
        from: start.from,
        uncounted,
        replay: resume_at..resume_at,
        next_offset: resume_at,
        checkpoint: true,
        never_committed: false,
    })
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

/// A restore from `start` below the input's log start cannot be exact: the
/// refusal, unless `--allow-inexact-restore` (then a warning, and the caller
/// counts what was deleted).
fn below_log_start(
    f: &RestoreFacts,
    start: i64,
    committed: i64,
    w: &mut Vec<Warning>,
) -> Result<(), RestoreError> {
    if !f.options.allow_inexact {
        return Err(below_log_start_error(
            f.partition,
            start,
            f.log_start,
            committed,
        ));
    }
    w.push(Warning::Inexact {
        start,
        log_start: f.log_start,
        committed,
    });
    Ok(())
}

/// The refusal of a restore from `start` below `log_start`, also quoted by
/// [`Warning::Inexact`].
pub(super) fn below_log_start_error(
    partition: i32,
    start: i64,
    log_start: i64,
    committed: i64,
) -> RestoreError {
    RestoreError::BelowLogStart {
        partition,
        start,
        log_start,
        committed,
        uncountable: log_start - start,
    }
}

/// With records below the log start deleted, a restore to `c` from `from`
/// counts the deleted ones below `c` as `uncounted` and replays from the log
/// start: `(uncounted, replay from)`. Deleted records at or past `c` are the
/// live consumer's to count, in the transaction that commits past them, so
/// that each is counted once whichever host commits first.
fn inexact_start(from: i64, c: i64, log_start: i64) -> (u64, i64) {
    ((log_start.min(c) - from).max(0) as u64, from.max(log_start))
}

/// Where a restore starts: the base counts every record below `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Start {
    path: RestorePath,
    base: Base,
    from: i64,
}

/// Picks the start with the least to replay among the local checkpoint and the
/// latest snapshot with offsets at most `c` that were written under the current
/// configuration. A source written under another configuration counts as
/// absent, so the other one still serves; only when no usable source is left
/// does a configuration change stop the restore (or, when the operator asked
/// for it, rebuild from offset 0).
fn choose_start(f: &RestoreFacts, c: i64, w: &mut Vec<Warning>) -> Result<Start, RestoreError> {
    let mut candidates: Vec<(&'static str, Vec<String>, Start)> = Vec::new();
    // `K > C` (the group's offsets were reset by `tally replay`): the checkpoint
    // counts records the group will process again; unusable.
    if let Some(k) = f.checkpoint.as_ref().filter(|k| k.next_offset <= c) {
        let source_name = "local checkpoint";
        let changes = source_changes(f, source_name, k, w);
        let start = Start {
            path: if k.next_offset == c {
                RestorePath::Resume
            } else {
                RestorePath::Replay
            },
            base: Base::Checkpoint,
            from: k.next_offset,
        };
        if k.next_offset == c && changes.is_empty() {
            // Nothing to replay and nothing better to find in the insights topic.
            return Ok(start);
        }
        candidates.push((source_name, changes, start));
    }
    if let Some(s) = f.snapshot.as_ref().filter(|s| s.next_offset <= c) {
        let source_name = "latest snapshot";
        let changes = source_changes(f, source_name, s, w);
        let start = Start {
            path: RestorePath::Snapshot,
            base: Base::Snapshot,
            from: s.next_offset,
        };
        candidates.push((source_name, changes, start));
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
        base: Base::Empty,
        from: 0,
    };
    match changed {
        None => Ok(rebuild),
        Some((source_name, changes)) if f.options.rebuild_on_config_change => {
            w.push(Warning::RebuildingOnConfigChange {
                source_name,
                changes: changes.join("; "),
            });
            Ok(rebuild)
        }
        Some((source_name, changes)) => Err(RestoreError::ConfigChanged {
            partition: f.partition,
            source_name,
            changes: changes.join("; "),
        }),
    }
}

/// [`changes`], and the warning about a source that carries no fingerprint.
fn source_changes(
    f: &RestoreFacts,
    source_name: &'static str,
    stored: &Stored,
    w: &mut Vec<Warning>,
) -> Vec<String> {
    if stored.fingerprint.is_none() {
        w.push(Warning::NoFingerprint { source_name });
    }
    changes(&f.fingerprint, stored)
}

/// What differs between the configuration a source was written under and the
/// current one (empty: usable). A snapshot written before fingerprints existed
/// (`None`) is accepted: nothing says it differs.
fn changes(now: &Fingerprint, stored: &Stored) -> Vec<String> {
    let Some(stored) = &stored.fingerprint else {
        return Vec::new();
    };
    match Fingerprint::decode(stored) {
        Some(f) => f.changes(now),
        None => vec![format!("unreadable fingerprint {stored:?}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fingerprint(schema: u32) -> Fingerprint {
        Fingerprint {
            schema,
            horizon_minutes: 60,
            top_k: Some(10),
            max_value_bytes: 1024,
            max_future_skew_secs: 300,
            min_app_version: None,
            allowed_device_types: None,
        }
    }

    /// The current configuration in every test.
    fn now() -> Fingerprint {
        fingerprint(2)
    }

    fn current(next_offset: i64) -> Option<Stored> {
        Some(Stored {
            next_offset,
            fingerprint: Some(now().encode()),
        })
    }

    fn other(next_offset: i64) -> Option<Stored> {
        Some(Stored {
            next_offset,
            fingerprint: Some(fingerprint(1).encode()),
        })
    }

    fn facts(
        committed: Option<i64>,
        log_start: i64,
        checkpoint: Option<Stored>,
        snapshot: Option<Stored>,
    ) -> RestoreFacts {
        RestoreFacts {
            partition: 3,
            committed,
            log_start,
            checkpoint,
            snapshot,
            fingerprint: now(),
            options: RestoreOptions::default(),
        }
    }

    fn planned(f: &RestoreFacts) -> Plan {
        match plan(f).outcome {
            Ok(p) => p,
            Err(e) => panic!("{f:?} refused: {e:?}"),
        }
    }

    fn refused(f: &RestoreFacts) -> Refusal {
        match plan(f).outcome {
            Ok(p) => panic!("{f:?} planned {p:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_recovery_table() {
        // K == C: resume, nothing to read or write.
        let f = facts(Some(50), 0, current(50), None);
        assert!(!f.needs_snapshot());
        let p = planned(&f);
        assert_eq!(
            (p.path, p.base, p.replay.clone()),
            (RestorePath::Resume, Base::Checkpoint, 50..50)
        );
        assert!(!p.checkpoint);
        // K < C: replay [K, C), checkpoint at C.
        let p = planned(&facts(Some(50), 0, current(20), None));
        assert_eq!(
            (p.path, p.base, p.replay.clone()),
            (RestorePath::Replay, Base::Checkpoint, 20..50)
        );
        assert!(p.checkpoint);
        // S > K: from the snapshot.
        let p = planned(&facts(Some(50), 0, current(20), current(30)));
        assert_eq!(
            (p.path, p.base, p.replay),
            (RestorePath::Snapshot, Base::Snapshot, 30..50)
        );
        // K > C (a `tally replay` reset): the checkpoint is discarded.
        let p = planned(&facts(Some(50), 0, current(70), current(30)));
        assert_eq!(
            (p.path, p.base, p.replay),
            (RestorePath::Snapshot, Base::Snapshot, 30..50)
        );
        // Neither: rebuilt from offset 0.
        let p = planned(&facts(Some(50), 0, None, None));
        assert_eq!(
            (p.path, p.base, p.replay),
            (RestorePath::Rebuild, Base::Empty, 0..50)
        );
        // A tie goes to the checkpoint.
        let p = planned(&facts(Some(50), 0, current(30), current(30)));
        assert_eq!(p.base, Base::Checkpoint);
    }

    #[test]
    fn another_configuration_counts_as_absent_until_none_is_left() {
        let p = planned(&facts(Some(50), 0, other(50), current(30)));
        assert_eq!((p.base, p.replay), (Base::Snapshot, 30..50));
        let Refusal::Permanent(e) = refused(&facts(Some(50), 0, other(50), other(30))) else {
            panic!("retried");
        };
        assert!(
            matches!(
                *e,
                RestoreError::ConfigChanged {
                    source_name: "local checkpoint",
                    ..
                }
            ),
            "{e}"
        );
        let mut f = facts(Some(50), 0, other(50), other(30));
        f.options.rebuild_on_config_change = true;
        let Planned { warnings, outcome } = plan(&f);
        assert_eq!(outcome.unwrap().path, RestorePath::Rebuild);
        assert!(matches!(
            warnings[..],
            [Warning::RebuildingOnConfigChange {
                source_name: "local checkpoint",
                ..
            }]
        ));
        // A snapshot written before fingerprints serves, with a warning.
        let f = facts(
            Some(50),
            0,
            None,
            Some(Stored {
                next_offset: 30,
                fingerprint: None,
            }),
        );
        let Planned { warnings, outcome } = plan(&f);
        assert_eq!(outcome.unwrap().base, Base::Snapshot);
        assert_eq!(
            warnings,
            [Warning::NoFingerprint {
                source_name: "latest snapshot"
            }]
        );
    }

    #[test]
    fn a_start_below_the_log_start_is_retried_then_refused_or_counted() {
        // [20, 40) deleted, C = 50.
        let Refusal::Unsettled(e) = refused(&facts(Some(50), 40, current(20), None)) else {
            panic!("not retried");
        };
        assert!(
            matches!(
                *e,
                RestoreError::BelowLogStart {
                    start: 20,
                    log_start: 40,
                    committed: 50,
                    uncountable: 20,
                    ..
                }
            ),
            "{e}"
        );
        let mut f = facts(Some(50), 40, current(20), None);
        f.options.allow_inexact = true;
        let Planned { warnings, outcome } = plan(&f);
        let p = outcome.unwrap();
        assert_eq!((p.uncounted, p.replay), (20, 40..50));
        assert_eq!(
            warnings,
            [Warning::Inexact {
                start: 20,
                log_start: 40,
                committed: 50
            }]
        );
        // K == C below the log start: refused at once; with the option nothing
        // is counted here (the live consumer counts [C, log start)).
        let Refusal::Permanent(e) = refused(&facts(Some(50), 60, current(50), None)) else {
            panic!("retried");
        };
        assert!(
            matches!(
                *e,
                RestoreError::BelowLogStart {
                    start: 50,
                    committed: 50,
                    ..
                }
            ),
            "{e}"
        );
        f = facts(Some(50), 60, current(50), None);
        f.options.allow_inexact = true;
        let p = planned(&f);
        assert_eq!(
            (p.path, p.uncounted, p.next_offset),
            (RestorePath::Resume, 0, 50)
        );
    }

    #[test]
    fn without_c_the_state_is_resumed_only_when_asked() {
        let p = planned(&facts(None, 7, None, None));
        assert_eq!(
            (p.base, p.next_offset, p.checkpoint, p.never_committed),
            (Base::Empty, 7, false, true)
        );
        let Refusal::Permanent(e) = refused(&facts(None, 0, current(20), current(30))) else {
            panic!("retried");
        };
        let e = e.to_string();
        assert!(
            e.contains("K=20") && e.contains("S=30") && e.contains("(offset 30)"),
            "{e}"
        );
        let mut f = facts(None, 0, current(20), current(30));
        f.options.resume_from_state = true;
        let Planned { warnings, outcome } = plan(&f);
        let p = outcome.unwrap();
        assert_eq!(
            (p.base, p.next_offset, p.checkpoint, p.never_committed),
            (Base::Snapshot, 30, true, false)
        );
        assert!(matches!(
            warnings[..],
            [Warning::ResumingFromState {
                next_offset: 30,
                checkpoint: Some(20),
                snapshot: Some(30),
                ..
            }]
        ));
    }

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

    /// A checkpoint's fingerprint: the current one, another, or unreadable.
    fn arb_written() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            3 => Just(Some(now().encode())),
            1 => Just(Some(fingerprint(1).encode())),
            1 => Just(Some("{".to_string())),
        ]
    }

    /// A snapshot's fingerprint: also none (written before fingerprints).
    fn arb_stamped() -> impl Strategy<Value = Option<String>> {
        prop_oneof![4 => arb_written(), 1 => Just(None)]
    }

    /// Small offsets, so that `K`, `S`, `C` and the log start often coincide.
    /// `S > C` is generated too, although the I/O reads no such snapshot.
    fn arb_facts() -> impl Strategy<Value = RestoreFacts> {
        let stored = |fp| {
            (0..30i64, fp).prop_map(|(next_offset, fingerprint)| Stored {
                next_offset,
                fingerprint,
            })
        };
        (
            proptest::option::of(0..30i64),
            0..30i64,
            proptest::option::of(stored(arb_written().boxed())),
            proptest::option::of(stored(arb_stamped().boxed())),
            any::<(bool, bool, bool)>(),
        )
            .prop_map(|(committed, log_start, checkpoint, snapshot, (a, b, c))| {
                let mut f = facts(committed, log_start, checkpoint, snapshot);
                f.options = RestoreOptions {
                    allow_inexact: a,
                    rebuild_on_config_change: b,
                    resume_from_state: c,
                };
                f
            })
    }

    fn usable(s: &Stored) -> bool {
        s.fingerprint
            .as_ref()
            .is_none_or(|fp| Fingerprint::decode(fp) == Some(now()))
    }

    /// The offset a refusal below the log start would have started at.
    fn below_log_start_at(r: &Refusal) -> Option<i64> {
        let (Refusal::Permanent(e) | Refusal::Unsettled(e)) = r;
        match **e {
            RestoreError::BelowLogStart { start, .. } => Some(start),
            _ => None,
        }
    }

    proptest! {
        #[test]
        fn with_c_a_plan_starts_at_or_before_c_and_resumes_at_c(f in arb_facts()) {
            let (Some(c), Ok(p)) = (f.committed, plan(&f).outcome) else { return Ok(()) };
            prop_assert!(p.from <= c && p.replay.start <= c, "{p:?}");
            prop_assert_eq!(p.replay.end, c);
            prop_assert_eq!(p.next_offset, c);
            prop_assert!(!p.never_committed);
        }

        #[test]
        fn every_record_below_the_resume_point_is_replayed_or_uncounted_once(f in arb_facts()) {
            let Ok(p) = plan(&f).outcome else { return Ok(()) };
            prop_assert!(p.from <= p.replay.start && p.replay.start <= p.replay.end, "{p:?}");
            prop_assert_eq!(p.replay.end, p.next_offset);
            let replayed = (p.replay.end - p.replay.start) as u64;
            prop_assert_eq!(p.uncounted + replayed, (p.next_offset - p.from) as u64, "{:?}", p);
            // Exactly the deleted records below the resume point are uncounted.
            let deleted = (f.log_start.min(p.next_offset) - p.from).max(0) as u64;
            prop_assert_eq!(p.uncounted, deleted);
        }

        #[test]
        fn a_start_below_the_log_start_needs_the_option(f in arb_facts()) {
            let Planned { warnings, outcome } = plan(&f);
            match outcome {
                Ok(p) => {
                    if !p.replay.is_empty() {
                        prop_assert!(p.replay.start >= f.log_start, "{p:?}");
                    }
                    let inexact = p.from < f.log_start;
                    prop_assert!(!inexact || f.options.allow_inexact, "{p:?}");
                    let warned = warnings.iter().any(|w| matches!(w, Warning::Inexact { .. }));
                    prop_assert_eq!(warned, inexact);
                }
                Err(r) => {
                    if below_log_start_at(&r).is_some() {
                        prop_assert!(!f.options.allow_inexact);
                    }
                }
            }
        }

        #[test]
        fn with_c_only_an_exact_checkpoint_below_the_log_start_is_refused_at_once(f in arb_facts()) {
            let (Some(c), Err(r)) = (f.committed, plan(&f).outcome) else { return Ok(()) };
            match (&r, below_log_start_at(&r)) {
                (Refusal::Permanent(_), Some(start)) => prop_assert_eq!(start, c),
                (Refusal::Unsettled(_), start) => prop_assert!(start.is_some_and(|s| s <= c)),
                _ => {}
            }
        }

        #[test]
        fn no_c_and_no_state_commits_nothing(f in arb_facts()) {
            let no_state = f.committed.is_none() && f.checkpoint.is_none() && f.snapshot.is_none();
            let Planned { warnings, outcome } = plan(&f);
            if no_state {
                let p = outcome.expect("never committed");
                prop_assert!(p.never_committed && !p.checkpoint && warnings.is_empty());
                prop_assert_eq!((p.base, p.from, p.next_offset), (Base::Empty, f.log_start, f.log_start));
                prop_assert!(p.replay.is_empty());
            } else if let Ok(p) = outcome {
                prop_assert!(!p.never_committed);
                prop_assert!(p.checkpoint || p.path == RestorePath::Resume);
            }
        }

        #[test]
        fn without_c_state_is_refused_unless_resumed_from(f in arb_facts()) {
            if f.committed.is_some() || (f.checkpoint.is_none() && f.snapshot.is_none()) {
                return Ok(());
            }
            let Planned { warnings, outcome } = plan(&f);
            let mut resumed = f.clone();
            resumed.options.resume_from_state = true;
            let with_option = plan(&resumed).outcome;
            match outcome {
                Ok(p) => {
                    prop_assert!(f.options.resume_from_state);
                    prop_assert!(p.checkpoint && p.replay.is_empty() && p.base != Base::Empty);
                    prop_assert_eq!(p.next_offset, p.from.max(f.log_start));
                    let last = warnings.last();
                    let warned = matches!(last, Some(Warning::ResumingFromState { next_offset, .. }) if *next_offset == p.next_offset);
                    prop_assert!(warned, "{:?}", warnings);
                }
                Err(Refusal::Permanent(e)) => match *e {
                    RestoreError::NoCommittedOffset { newest, .. } if !f.options.resume_from_state => {
                        // The refusal names where --resume-from-state would start.
                        let at = match &with_option {
                            Ok(p) => Some(p.from),
                            Err(r) => below_log_start_at(r),
                        };
                        let named = at.map(|o| format!(" (offset {o})")).unwrap_or_default();
                        prop_assert_eq!(newest, named);
                    }
                    RestoreError::NoCommittedOffset { newest, .. } => prop_assert_eq!(newest, ""),
                    RestoreError::BelowLogStart { start, committed, .. } => {
                        prop_assert!(f.options.resume_from_state && start == committed);
                    }
                    RestoreError::ConfigChanged { .. } => prop_assert!(f.options.resume_from_state),
                    ref e => prop_assert!(false, "{e}"),
                },
                Err(Refusal::Unsettled(e)) => prop_assert!(false, "retried without C: {e}"),
            }
        }

        #[test]
        fn state_past_c_is_never_used(f in arb_facts()) {
            let Some(c) = f.committed else { return Ok(()) };
            let mut within = f.clone();
            within.checkpoint = within.checkpoint.filter(|k| k.next_offset <= c);
            within.snapshot = within.snapshot.filter(|s| s.next_offset <= c);
            prop_assert_eq!(format!("{:?}", plan(&f)), format!("{:?}", plan(&within)));
        }

        #[test]
        fn the_newest_usable_source_is_chosen(f in arb_facts()) {
            let bound = match f.committed {
                Some(c) => c,
                None if f.options.resume_from_state => i64::MAX,
                None => return Ok(()),
            };
            let present: Vec<(i64, Base, bool)> = [
                f.checkpoint.as_ref().map(|k| (k.next_offset, Base::Checkpoint, usable(k))),
                f.snapshot.as_ref().map(|s| (s.next_offset, Base::Snapshot, usable(s))),
            ]
            .into_iter()
            .flatten()
            .filter(|(offset, _, _)| *offset <= bound)
            .collect();
            if f.committed.is_none() && present.is_empty() {
                return Ok(()); // never committed
            }
            // The largest offset; the checkpoint on a tie.
            let newest = present
                .iter()
                .filter(|(_, _, usable)| *usable)
                .max_by_key(|(offset, base, _)| (*offset, *base == Base::Checkpoint))
                .map(|&(offset, base, _)| (offset, base));
            let outcome = plan(&f).outcome;
            let started_at = match &outcome {
                Ok(p) => Some((p.from, p.base)),
                Err(r) => below_log_start_at(r).map(|start| {
                    (start, newest.map_or(Base::Empty, |(_, base)| base))
                }),
            };
            match newest {
                Some(newest) => prop_assert_eq!(started_at, Some(newest)),
                None if f.committed.is_none() => {
                    // Only state under another configuration: nothing to resume from.
                    let refused = matches!(
                        &outcome,
                        Err(Refusal::Permanent(e)) if matches!(**e, RestoreError::NoCommittedOffset { .. } | RestoreError::ConfigChanged { .. })
                    );
                    prop_assert!(refused, "{:?}", outcome);
                }
                None if present.is_empty() || f.options.rebuild_on_config_change => {
                    prop_assert_eq!(started_at, Some((0, Base::Empty)));
                }
                None => {
                    let refused = matches!(
                        &outcome,
                        Err(Refusal::Permanent(e)) if matches!(**e, RestoreError::ConfigChanged { .. })
                    );
                    prop_assert!(refused, "{:?}", outcome);
                }
            }
        }

        #[test]
        fn an_exact_checkpoint_makes_the_snapshot_irrelevant(f in arb_facts()) {
            if f.needs_snapshot() {
                return Ok(());
            }
            let mut unread = f.clone();
            unread.snapshot = None;
            prop_assert_eq!(format!("{:?}", plan(&f)), format!("{:?}", plan(&unread)));
            let Planned { warnings, outcome } = plan(&f);
            // K == C with C below the log start: the records from C on were
            // deleted before anyone consumed them, refused unless counted.
            let c = f.committed.expect("K == C");
            if c < f.log_start && !f.options.allow_inexact {
                let refused = matches!(
                    &outcome,
                    Err(Refusal::Permanent(e)) if matches!(**e, RestoreError::BelowLogStart { .. })
                );
                prop_assert!(refused, "{:?}", outcome);
                return Ok(());
            }
            let p = outcome.expect("an exact checkpoint");
            prop_assert_eq!((p.path, p.base), (RestorePath::Resume, Base::Checkpoint));
            let only_inexact = warnings.iter().all(|w| matches!(w, Warning::Inexact { .. }));
            prop_assert!(!p.checkpoint && only_inexact, "{:?} {:?}", p, warnings);
        }
    }
}
