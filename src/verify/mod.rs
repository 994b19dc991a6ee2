//! `tally verify`: checks guarantee 1 against an independent model of the output.
//!
//! Every input record below the group's committed offset must appear exactly once
//! in the output or the DLQ as [`model`] expects it (key, payload, timestamp,
//! DLQ reason and headers), or have been filtered; no output may point at an
//! input record that should not produce it, or at one that cannot exist.
//!
//! Outputs pointing at offsets at or past the committed offset belong to
//! transactions committed after the offsets were read (a live topic): they are
//! counted (`beyond_committed`), not compared, and `--complete` fails on them, as
//! on input not yet consumed and on outputs a read could not reach (an open
//! transaction holds a read_committed reader below the high watermark). An
//! output of a partition the group never committed is a violation.
//!
//! Outputs whose input retention deleted cannot be compared with it: they are
//! counted per partition and destination, unless the caller recorded the model's
//! expectations of those records before they were deleted ([`Expectations`]):
//! then they are checked as if still there.

pub mod model;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::event::ProcessConfig;
use crate::kafka::{self, Connection, GroupAdmin, TopicReader};
use crate::model::{Destination, InputRecord};
use model::{DeadLetterKind, Difference, Expected, Fate, Source};

/// One violation, with coordinates.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Violation {
    pub kind: &'static str,
    pub partition: i32,
    pub offset: i64,
    pub detail: String,
}

/// Outputs counted by the topic they were found in.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ByDestination {
    pub processed: u64,
    pub dead_lettered: u64,
}

/// Where a read of an output partition ended below its high watermark.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ShortRead {
    pub topic: String,
    pub partition: i32,
    /// The offset the read_committed read ended at (the last stable offset).
    pub ended_at: i64,
    pub high_watermark: i64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    /// Input records compared: read from the input, or recorded before retention
    /// deleted them (`checked_before_trim`).
    pub input_checked: u64,
    /// Of `input_checked`, records known only from [`Expectations`].
    pub checked_before_trim: u64,
    pub processed: u64,
    /// DLQ entries accepted, `runtime_dead_letters` included.
    pub dead_lettered: u64,
    pub filtered: u64,
    /// DLQ entries with a reason decided while producing (`poison`,
    /// `unproducible` by the broker) in place of the record's expected fate.
    /// Accepted as the record's one outcome, but a valid record should not get
    /// one: a drill without broker refusals requires 0.
    pub runtime_dead_letters: u64,
    pub runtime_dead_letters_by_reason: BTreeMap<String, u64>,
    pub missing: u64,
    pub duplicates: u64,
    /// The right destination with a wrong key, payload, timestamp or header.
    pub mismatched: u64,
    /// Outputs that should not exist (of a filtered record, of a partition the
    /// group never committed, without source coordinates).
    pub stray: u64,
    /// A processed record where a DLQ entry was expected, or the reverse.
    pub wrong_destination: u64,
    /// A DLQ entry whose `tally.reason` is not the expected one.
    pub wrong_reason: u64,
    /// Outputs naming a source that cannot exist: a negative offset, one at or
    /// past the partition's high watermark, a partition the input does not have.
    pub impossible_source: u64,
    /// Outputs of transactions committed after the committed offsets were read
    /// (not compared; `--complete` requires 0).
    pub beyond_committed: u64,
    /// Input records at or past the committed offsets (not yet processed).
    pub unconsumed: u64,
    /// Output records a read could not reach: between where a read_committed
    /// read ended and the high watermark (`--complete` requires 0).
    pub unread_outputs: u64,
    pub short_reads: Vec<ShortRead>,
    /// Outputs whose input record was deleted by retention and not in the
    /// expectations given: not compared (a second one is still a duplicate).
    pub below_log_start: u64,
    pub below_log_start_by_partition: BTreeMap<i32, ByDestination>,
    pub committed_offsets: BTreeMap<i32, i64>,
    pub log_start_offsets: BTreeMap<i32, i64>,
    pub first_violations: Vec<Violation>,
}

impl Summary {
    pub fn violations(&self) -> u64 {
        self.missing
            + self.duplicates
            + self.mismatched
            + self.stray
            + self.wrong_destination
            + self.wrong_reason
            + self.impossible_source
    }

    /// What `--complete` fails on besides violations: the group has not consumed
    /// the input to its end, outputs beyond the committed offsets, outputs not read.
    pub fn incomplete(&self) -> u64 {
        self.unconsumed + self.beyond_committed + self.unread_outputs
    }

    fn violate(&mut self, v: Violation) {
        match v.kind {
            "missing" => self.missing += 1,
            "duplicate" => self.duplicates += 1,
            "mismatch" => self.mismatched += 1,
            "wrong_destination" => self.wrong_destination += 1,
            "wrong_reason" => self.wrong_reason += 1,
            "impossible_source" => self.impossible_source += 1,
            _ => self.stray += 1,
        }
        if self.first_violations.len() < 20 {
            self.first_violations.push(v);
        }
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "checked {} input records below the committed offsets {:?} ({} of them from expectations recorded before retention deleted them)\n  \
             processed {} ok, dead-lettered {} ok ({} at runtime: {:?}), filtered {}\n  \
             missing {}, duplicates {}, mismatched {}, stray {}, wrong destination {}, wrong reason {}, impossible source {}\n  \
             not checked: {} outputs past the committed offsets, {} input records not yet consumed, \
             {} outputs not readable (open transactions), {} outputs of input records deleted by retention {:?}\n",
            self.input_checked,
            self.committed_offsets,
            self.checked_before_trim,
            self.processed,
            self.dead_lettered,
            self.runtime_dead_letters,
            self.runtime_dead_letters_by_reason,
            self.filtered,
            self.missing,
            self.duplicates,
            self.mismatched,
            self.stray,
            self.wrong_destination,
            self.wrong_reason,
            self.impossible_source,
            self.beyond_committed,
            self.unconsumed,
            self.unread_outputs,
            self.below_log_start,
            self.below_log_start_by_partition,
        );
        for r in &self.short_reads {
            s.push_str(&format!(
                "  {}/{} read to {}, high watermark {}\n",
                r.topic, r.partition, r.ended_at, r.high_watermark
            ));
        }
        for v in &self.first_violations {
            s.push_str(&format!(
                "  {} at partition {} offset {}: {}\n",
                v.kind, v.partition, v.offset, v.detail
            ));
        }
        s
    }
}

/// The model's expectations of input records, recorded while they can still be
/// read, for a check after retention deleted them (the drill's retention fault).
/// Compact: lengths and digests, about 150 bytes a record.
#[derive(Debug, Default, Clone)]
pub struct Expectations {
    by_coord: HashMap<(i32, i64), Expected>,
    /// Per partition, the offset up to which the input was recorded (exclusive).
    recorded_until: BTreeMap<i32, i64>,
}

impl Expectations {
    pub fn len(&self) -> usize {
        self.by_coord.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_coord.is_empty()
    }

    /// Records the model's expectation of one input record.
    pub fn insert(&mut self, rec: &InputRecord, cfg: &ProcessConfig) {
        self.by_coord
            .insert((rec.partition, rec.offset), model::expect(rec, cfg));
    }

    pub fn get(&self, partition: i32, offset: i64) -> Option<&Expected> {
        self.by_coord.get(&(partition, offset))
    }

    /// Reads the input from where the previous call stopped (first: the log
    /// start) up to `until` per partition (exclusive) and records the model's
    /// expectation of each record. Call it before deleting records below
    /// `until`; returns how many records it recorded.
    pub fn record_until(
        &mut self,
        conn: &Connection,
        cfg: &ProcessConfig,
        until: &BTreeMap<i32, i64>,
    ) -> Result<u64, kafka::Error> {
        let input = TopicReader::new(conn, &cfg.input_topic)?;
        let mut ranges = Vec::new();
        for (p, u) in until {
            let (low, _) = input.watermarks(*p)?;
            let from = self.recorded_until.get(p).copied().unwrap_or(low).max(low);
            if from < *u {
                ranges.push((*p, kafka::StartAt::Offset(from), Some(*u)));
            }
        }
        let mut n = 0;
        input.read(&ranges, |r| {
            self.insert(&r.record, cfg);
            n += 1;
        })?;
        for (p, _, u) in ranges {
            let u = u.expect("bounded ranges");
            let at = self.recorded_until.entry(p).or_insert(u);
            *at = (*at).max(u);
        }
        Ok(n)
    }
}

/// What `verify` is given besides the group, topics and configuration.
#[derive(Debug, Default, Clone, Copy)]
pub struct Options<'a> {
    /// Expectations of input records that retention may have deleted since.
    pub before_trim: Option<&'a Expectations>,
}

/// How long `verify` keeps reading outputs that are expected but not yet visible.
const SETTLE: Duration = Duration::from_secs(10);

/// An output pointing at or past the committed offset read at the start.
struct OutputSource {
    at: String,
    partition: i32,
    offset: i64,
}

/// What a long check reports as it goes (a progress bar on a terminal).
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// Reading `topic` starts: `records` to read (offsets, an upper bound).
    Reading { topic: &'a str, records: u64 },
    /// One more record read.
    Record,
}

/// Runs the check; blocking (readers poll).
pub fn verify(
    conn: &Connection,
    group: &str,
    cfg: &ProcessConfig,
    output: &str,
    dlq: &str,
) -> Result<Summary, kafka::Error> {
    verify_with(
        conn,
        group,
        cfg,
        output,
        dlq,
        Options::default(),
        &mut |_| {},
    )
}

/// [`verify`], reporting its progress to `progress`.
pub fn verify_with_progress(
    conn: &Connection,
    group: &str,
    cfg: &ProcessConfig,
    output: &str,
    dlq: &str,
    progress: &mut dyn FnMut(Step<'_>),
) -> Result<Summary, kafka::Error> {
    verify_with(conn, group, cfg, output, dlq, Options::default(), progress)
}

/// [`verify`] with [`Options`], reporting its progress to `progress`.
pub fn verify_with(
    conn: &Connection,
    group: &str,
    cfg: &ProcessConfig,
    output: &str,
    dlq: &str,
    options: Options<'_>,
    progress: &mut dyn FnMut(Step<'_>),
) -> Result<Summary, kafka::Error> {
    let admin = GroupAdmin::new(conn, group)?;
    let committed = admin.committed(&cfg.input_topic)?;
    let mut summary = Summary {
        committed_offsets: committed.clone(),
        ..Summary::default()
    };
    let input = TopicReader::new(conn, &cfg.input_topic)?;
    let mut expected: HashMap<(i32, i64), Expected> = HashMap::new();
    let mut ranges = Vec::new();
    let mut to_read = 0;
    let mut log_start: BTreeMap<i32, i64> = BTreeMap::new();
    for p in input.partitions()? {
        let (low, high) = input.watermarks(p)?;
        log_start.insert(p, low);
        let c = committed.get(&p).copied().unwrap_or(low);
        summary.unconsumed += (high - c).max(0) as u64;
        to_read += (c - low).max(0) as u64;
        ranges.push((p, kafka::StartAt::Earliest, Some(c)));
    }
    summary.log_start_offsets = log_start.clone();
    progress(Step::Reading {
        topic: &cfg.input_topic,
        records: to_read,
    });
    input.read(&ranges, |r| {
        progress(Step::Record);
        expected.insert(
            (r.record.partition, r.record.offset),
            model::expect(&r.record, cfg),
        );
    })?;
    // Records deleted by retention since their expectations were recorded: below
    // the log start and the committed offset, they are checked like the rest.
    if let Some(before) = options.before_trim {
        for (&(p, o), e) in &before.by_coord {
            let below_start = log_start.get(&p).is_some_and(|low| o < *low);
            let below_committed = committed.get(&p).is_some_and(|c| o < *c);
            if below_start && below_committed {
                expected.entry((p, o)).or_insert_with(|| {
                    summary.checked_before_trim += 1;
                    e.clone()
                });
            }
        }
    }
    summary.input_checked = expected.len() as u64;

    // Outputs are read in passes, each continuing where the last stopped. A
    // transaction's offset commit and its outputs become visible separately (on
    // different brokers), so right after a commit the outputs of records below the
    // offsets just read may not be readable yet: while some are missing, read on
    // for a while before calling them missing.
    let mut seen: HashMap<(i32, i64), u32> = HashMap::new();
    let mut runtime: HashSet<(i32, i64)> = HashSet::new();
    let mut pending: Vec<OutputSource> = Vec::new();
    let mut next: HashMap<(usize, i32), i64> = HashMap::new();
    let mut ended: BTreeMap<(usize, i32), i64> = BTreeMap::new();
    let topics = [
        (output, Destination::Processed),
        (dlq, Destination::DeadLetter),
    ];
    let deadline = Instant::now() + SETTLE;
    let mut first_pass = true;
    loop {
        for (i, (topic, dest)) in topics.into_iter().enumerate() {
            let reader = TopicReader::new(conn, topic)?;
            let ranges: Vec<_> = reader
                .partitions()?
                .into_iter()
                .map(|p| match next.get(&(i, p)) {
                    Some(o) => (p, kafka::StartAt::Offset(*o), None),
                    None => (p, kafka::StartAt::Earliest, None),
                })
                .collect();
            if first_pass {
                let mut records = 0;
                for (p, _, _) in &ranges {
                    let (low, high) = reader.watermarks(*p)?;
                    records += (high - low).max(0) as u64;
                }
                progress(Step::Reading { topic, records });
            }
            let ends = reader.read(&ranges, |r| {
                progress(Step::Record);
                next.insert((i, r.record.partition), r.record.offset + 1);
                let at = format!("{topic}/{}@{}", r.record.partition, r.record.offset);
                let (sp, so) = match model::source_of(&r) {
                    Source::Named { topic, .. } if topic != cfg.input_topic => return,
                    Source::Named {
                        partition, offset, ..
                    } => match i32::try_from(partition) {
                        Ok(p) if log_start.contains_key(&p) && offset >= 0 => (p, offset),
                        _ => {
                            summary.violate(Violation {
                                kind: "impossible_source",
                                partition: partition.clamp(-1, i64::from(i32::MAX)) as i32,
                                offset,
                                detail: format!(
                                    "{at} names partition {partition} offset {offset} of {}, which cannot exist",
                                    cfg.input_topic
                                ),
                            });
                            return;
                        }
                    },
                    Source::Missing => {
                        summary.violate(Violation {
                            kind: "stray",
                            partition: -1,
                            offset: -1,
                            detail: format!("{at} has no source coordinates"),
                        });
                        return;
                    }
                };
                let coord = (sp, so);
                match committed.get(&sp) {
                    Some(c) if so < *c => {}
                    // Past the offsets read at the start, or of a partition the
                    // group had not committed then: decided after the passes,
                    // against the offsets committed by then.
                    _ => {
                        pending.push(OutputSource {
                            at,
                            partition: sp,
                            offset: so,
                        });
                        return;
                    }
                }
                let count = seen.entry(coord).or_default();
                *count += 1;
                if *count > 1 {
                    summary.violate(Violation {
                        kind: "duplicate",
                        partition: sp,
                        offset: so,
                        detail: format!("written again as {at}"),
                    });
                    return;
                }
                let Some(e) = expected.get(&coord) else {
                    if so < log_start[&sp] {
                        // Its input record was deleted by retention and its
                        // expectation not recorded: its content cannot be compared.
                        summary.below_log_start += 1;
                        let by = summary.below_log_start_by_partition.entry(sp).or_default();
                        match dest {
                            Destination::Processed => by.processed += 1,
                            _ => by.dead_lettered += 1,
                        }
                    } else {
                        summary.violate(Violation {
                            kind: "stray",
                            partition: sp,
                            offset: so,
                            detail: format!("{at} names an input record the input does not hold"),
                        });
                    }
                    return;
                };
                let checked = match dest {
                    Destination::Processed => model::check_processed(e, &r).map(|()| None),
                    _ => model::check_dead_letter(e, &r, cfg.output_limits.dlq_max_bytes)
                        .map(Some),
                };
                match checked {
                    Ok(None) => summary.processed += 1,
                    Ok(Some(kind)) => {
                        summary.dead_lettered += 1;
                        if kind == DeadLetterKind::Runtime {
                            summary.runtime_dead_letters += 1;
                            let code = r
                                .header(crate::model::headers::REASON)
                                .map(|c| String::from_utf8_lossy(c).into_owned())
                                .unwrap_or_default();
                            *summary.runtime_dead_letters_by_reason.entry(code).or_default() += 1;
                            runtime.insert(coord);
                        }
                    }
                    Err(d) => {
                        let (kind, detail) = match d {
                            Difference::WrongDestination(_) if e.fate == Fate::Filtered => {
                                ("stray", "should not exist: its record is filtered".to_string())
                            }
                            Difference::WrongDestination(d) => ("wrong_destination", d),
                            Difference::WrongReason(d) => ("wrong_reason", d),
                            Difference::Content(d) => ("mismatch", d),
                        };
                        summary.violate(Violation {
                            kind,
                            partition: sp,
                            offset: so,
                            detail: format!("{at}: {detail}"),
                        });
                    }
                }
            })?;
            for (p, end) in ends {
                ended.insert((i, p), end);
            }
        }
        let all_seen = expected
            .iter()
            .all(|(coord, e)| e.fate == Fate::Filtered || seen.contains_key(coord));
        if all_seen || Instant::now() >= deadline {
            break;
        }
        first_pass = false;
        std::thread::sleep(Duration::from_millis(300));
    }
    // Outputs the reads could not reach: a read_committed read ends at the last
    // stable offset, below the high watermark while a transaction is open.
    for ((i, p), end) in ended {
        let (topic, _) = topics[i];
        let high = TopicReader::new(conn, topic)?.log_end(conn, p)?;
        if end < high {
            summary.unread_outputs += (high - end) as u64;
            summary.short_reads.push(ShortRead {
                topic: topic.to_string(),
                partition: p,
                ended_at: end,
                high_watermark: high,
            });
        }
    }
    // Outputs past the offsets read at the start: fine if the group has committed
    // past them since (a live pipeline); an output of a partition the group has
    // still never committed belongs to no committed input: a violation, as is one
    // past the end of the input.
    let committed_now = admin.committed(&cfg.input_topic)?;
    let mut high_now = HashMap::new();
    for o in pending {
        let high = match high_now.get(&o.partition) {
            Some(h) => *h,
            None => {
                let h = input.log_end(conn, o.partition)?;
                high_now.insert(o.partition, h);
                h
            }
        };
        if !committed_now.contains_key(&o.partition) {
            summary.violate(Violation {
                kind: "stray",
                partition: o.partition,
                offset: o.offset,
                detail: format!(
                    "{} was written although the group never committed partition {}",
                    o.at, o.partition
                ),
            });
        } else if o.offset >= high {
            summary.violate(Violation {
                kind: "impossible_source",
                partition: o.partition,
                offset: o.offset,
                detail: format!(
                    "{} names an offset at or past the end of partition {} ({high})",
                    o.at, o.partition
                ),
            });
        } else {
            summary.beyond_committed += 1;
        }
    }
    // A record dead-lettered at runtime has that as its one outcome.
    let mut missing: Vec<_> = expected
        .iter()
        .filter(|(coord, e)| e.fate != Fate::Filtered && !seen.contains_key(coord))
        .map(|(coord, e)| (*coord, e.fate.clone()))
        .collect();
    missing.sort_by_key(|(c, _)| *c);
    for ((p, o), fate) in missing {
        summary.violate(Violation {
            kind: "missing",
            partition: p,
            offset: o,
            detail: format!("no output found (expected {fate:?})"),
        });
    }
    summary.filtered = expected
        .iter()
        .filter(|(coord, e)| e.fate == Fate::Filtered && !runtime.contains(coord))
        .count() as u64;
    Ok(summary)
}
