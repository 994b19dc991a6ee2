//! `tally verify`: checks guarantee 1 by re-running the pure decision over the input.
//!
//! Every input record below the group's committed offset must appear exactly once
//! in the output or the DLQ with identical key and value bytes, or have been
//! filtered; no output may point at an input record that should not produce it.
//! Outputs pointing at offsets at or past the committed offset belong to
//! transactions committed after the offsets were read (a live topic) and are not
//! checked, unless the group has still not committed their partition when the
//! check ends: then they belong to no committed input and are violations.
//! Partitions the group never committed are checked too: they must have no output.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::event::{self, Outcome, ProcessConfig, Reason, dead_letter, process};
use crate::kafka::{self, Connection, GroupAdmin, ReadRecord, TopicReader};
use crate::model::{Destination, headers};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Output { dest: Destination, hash: u64 },
    Filtered,
}

fn content_hash(key: Option<&[u8]>, value: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    value.hash(&mut h);
    h.finish()
}

/// One violation, with coordinates.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Violation {
    pub kind: &'static str,
    pub partition: i32,
    pub offset: i64,
    pub detail: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub input_checked: u64,
    pub processed: u64,
    pub dead_lettered: u64,
    pub filtered: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub mismatched: u64,
    pub stray: u64,
    /// Outputs of transactions committed after the committed offsets were read.
    pub beyond_committed: u64,
    /// Input records at or past the committed offsets (not yet processed).
    pub unconsumed: u64,
    /// Outputs whose input record was deleted by retention (cannot be compared).
    pub below_log_start: u64,
    pub committed_offsets: BTreeMap<i32, i64>,
    pub first_violations: Vec<Violation>,
}

impl Summary {
    pub fn violations(&self) -> u64 {
        self.missing + self.duplicates + self.mismatched + self.stray
    }

    fn violate(&mut self, v: Violation) {
        match v.kind {
            "missing" => self.missing += 1,
            "duplicate" => self.duplicates += 1,
            "mismatch" => self.mismatched += 1,
            _ => self.stray += 1,
        }
        if self.first_violations.len() < 20 {
            self.first_violations.push(v);
        }
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "checked {} input records below the committed offsets {:?}\n  \
             processed {} ok, dead-lettered {} ok, filtered {}\n  \
             missing {}, duplicates {}, mismatched {}, stray {}\n  \
             not checked: {} outputs past the committed offsets, {} input records not yet consumed, \
             {} outputs of input records deleted by retention\n",
            self.input_checked,
            self.committed_offsets,
            self.processed,
            self.dead_lettered,
            self.filtered,
            self.missing,
            self.duplicates,
            self.mismatched,
            self.stray,
            self.beyond_committed,
            self.unconsumed,
            self.below_log_start,
        );
        for v in &self.first_violations {
            s.push_str(&format!(
                "  {} at partition {} offset {}: {}\n",
                v.kind, v.partition, v.offset, v.detail
            ));
        }
        s
    }
}

/// How long `verify` keeps reading outputs that are expected but not yet visible.
const SETTLE: Duration = Duration::from_secs(10);

/// An output pointing at or past the committed offset read at the start.
struct OutputSource {
    at: String,
    partition: i32,
    offset: i64,
}

fn header_num<T: std::str::FromStr>(r: &ReadRecord, key: &str) -> Option<T> {
    std::str::from_utf8(r.header(key)?).ok()?.parse().ok()
}

/// The input record an output says it comes from.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    /// Partition and offset of a record of the input topic.
    Input(i32, i64),
    /// A record of another topic: another pipeline writing to the same outputs.
    OtherTopic,
    /// No source coordinates: nothing tally wrote.
    Missing,
}

/// DLQ entries name their source in the `tally.source.*` headers, processed
/// records in their payload (`event::processed_source`); headers win, so a
/// hand-written record with them is judged by them.
fn source_of(r: &ReadRecord, dest: Destination, input_topic: &str) -> Source {
    let named = match r.header(headers::SOURCE_TOPIC) {
        Some(topic) => Some((
            topic == input_topic.as_bytes(),
            header_num(r, headers::SOURCE_PARTITION),
            header_num(r, headers::SOURCE_OFFSET),
        )),
        None if dest == Destination::Processed => r
            .record
            .value
            .as_deref()
            .and_then(event::processed_source)
            .map(|s| (s.topic == input_topic, Some(s.partition), Some(s.offset))),
        None => None,
    };
    match named {
        Some((false, _, _)) => Source::OtherTopic,
        Some((true, Some(p), Some(o))) => Source::Input(p, o),
        _ => Source::Missing,
    }
}

/// Runs the check; blocking (readers poll).
/// What a long check reports as it goes (a progress bar on a terminal).
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// Reading `topic` starts: `records` to read (offsets, an upper bound).
    Reading { topic: &'a str, records: u64 },
    /// One more record read.
    Record,
}

pub fn verify(
    conn: &Connection,
    group: &str,
    cfg: &ProcessConfig,
    output: &str,
    dlq: &str,
) -> Result<Summary, kafka::Error> {
    verify_with_progress(conn, group, cfg, output, dlq, &mut |_| {})
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
    let admin = GroupAdmin::new(conn, group)?;
    let committed = admin.committed(&cfg.input_topic)?;
    let mut summary = Summary {
        committed_offsets: committed.clone(),
        ..Summary::default()
    };
    let input = TopicReader::new(conn, &cfg.input_topic)?;
    let mut expected: HashMap<(i32, i64), Expect> = HashMap::new();
    // The hash of each record's DLQ entry, for entries whose reason is decided
    // while producing (`unproducible`, `poison`): valid in place of any outcome.
    let mut as_dead_letter: HashMap<(i32, i64), u64> = HashMap::new();
    let mut ranges = Vec::new();
    let mut to_read = 0;
    let mut log_start: HashMap<i32, i64> = HashMap::new();
    for p in input.partitions()? {
        let (low, high) = input.watermarks(p)?;
        log_start.insert(p, low);
        let c = committed.get(&p).copied().unwrap_or(low);
        summary.unconsumed += (high - c).max(0) as u64;
        to_read += (c - low).max(0) as u64;
        ranges.push((p, kafka::StartAt::Earliest, Some(c)));
    }
    progress(Step::Reading {
        topic: &cfg.input_topic,
        records: to_read,
    });
    input.read(&ranges, |r| {
        progress(Step::Record);
        let coord = (r.record.partition, r.record.offset);
        let outcome = process(&r.record, cfg);
        let dl = match &outcome {
            Outcome::DeadLetter { output, .. } => {
                content_hash(output.key.as_deref(), &output.value)
            }
            _ => {
                let any = crate::event::Rejection {
                    reason: Reason::Poison,
                    message: String::new(),
                };
                let out = dead_letter(r.record.clone(), &any, cfg);
                content_hash(out.key.as_deref(), &out.value)
            }
        };
        as_dead_letter.insert(coord, dl);
        let e = match outcome {
            Outcome::Filtered { .. } => Expect::Filtered,
            o => {
                let out = o
                    .output()
                    .expect("processed and dead-lettered records have an output");
                Expect::Output {
                    dest: out.destination,
                    hash: content_hash(out.key.as_deref(), &out.value),
                }
            }
        };
        expected.insert((r.record.partition, r.record.offset), e);
    })?;
    summary.input_checked = expected.len() as u64;

    // Outputs are read in passes, each continuing where the last stopped. A
    // transaction's offset commit and its outputs become visible separately (on
    // different brokers), so right after a commit the outputs of records below the
    // offsets just read may not be readable yet: while some are missing, read on
    // for a while before calling them missing.
    let mut seen: HashMap<(i32, i64), u32> = HashMap::new();
    let mut dead_lettered_at_runtime = Vec::new();
    let mut pending: Vec<OutputSource> = Vec::new();
    let mut next: HashMap<(usize, i32), i64> = HashMap::new();
    let deadline = Instant::now() + SETTLE;
    let mut first_pass = true;
    loop {
        for (i, (topic, dest)) in [
            (output, Destination::Processed),
            (dlq, Destination::DeadLetter),
        ]
        .into_iter()
        .enumerate()
        {
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
            reader.read(&ranges, |r| {
                progress(Step::Record);
                next.insert((i, r.record.partition), r.record.offset + 1);
                let at = format!("{topic}/{}@{}", r.record.partition, r.record.offset);
                let (sp, so) = match source_of(&r, dest, &cfg.input_topic) {
                    Source::Input(p, o) => (p, o),
                    Source::OtherTopic => return,
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
                if *count == 1 && so < log_start.get(&sp).copied().unwrap_or(0) {
                    // Its input record was deleted by retention: its content cannot
                    // be compared, but a second output for it is still a duplicate.
                    summary.below_log_start += 1;
                    return;
                }
                if *count > 1 {
                    summary.violate(Violation {
                        kind: "duplicate",
                        partition: sp,
                        offset: so,
                        detail: format!("written again as {at}"),
                    });
                    return;
                }
                let runtime = r
                    .header(headers::REASON)
                    .and_then(|c| std::str::from_utf8(c).ok())
                    .and_then(Reason::from_code)
                    .is_some_and(Reason::decided_at_runtime);
                let got = content_hash(
                    r.record.key.as_deref(),
                    r.record.value.as_deref().unwrap_or_default(),
                );
                // A record dead-lettered while producing: its DLQ entry, or the
                // headers-only last resort (no key, empty value).
                if dest == Destination::DeadLetter
                    && runtime
                    && expected.contains_key(&coord)
                    && (as_dead_letter.get(&coord) == Some(&got) || got == content_hash(None, &[]))
                {
                    summary.dead_lettered += 1;
                    dead_lettered_at_runtime.push(coord);
                    return;
                }
                match expected.get(&coord) {
                    Some(Expect::Output { dest: d, hash }) if *d == dest => {
                        if *hash
                            == content_hash(
                                r.record.key.as_deref(),
                                r.record.value.as_deref().unwrap_or_default(),
                            )
                        {
                            match dest {
                                Destination::Processed => summary.processed += 1,
                                _ => summary.dead_lettered += 1,
                            }
                        } else {
                            summary.violate(Violation {
                                kind: "mismatch",
                                partition: sp,
                                offset: so,
                                detail: format!("{at} differs from the expected bytes"),
                            });
                        }
                    }
                    other => summary.violate(Violation {
                        kind: "stray",
                        partition: sp,
                        offset: so,
                        detail: format!("{at} should not exist (expected {other:?})"),
                    }),
                }
            })?;
        }
        let all_seen = expected.iter().all(|(coord, e)| match e {
            Expect::Filtered => true,
            Expect::Output { .. } => seen.contains_key(coord),
        });
        if all_seen || Instant::now() >= deadline {
            break;
        }
        first_pass = false;
        std::thread::sleep(Duration::from_millis(300));
    }
    // Outputs past the offsets read at the start: fine if the group has committed
    // past them since (a live pipeline); an output of a partition the group has
    // still never committed belongs to no committed input: a violation.
    let committed_now = admin.committed(&cfg.input_topic)?;
    for o in pending {
        match committed_now.get(&o.partition) {
            Some(_) => summary.beyond_committed += 1,
            None => summary.violate(Violation {
                kind: "stray",
                partition: o.partition,
                offset: o.offset,
                detail: format!(
                    "{} was written although the group never committed partition {}",
                    o.at, o.partition
                ),
            }),
        }
    }
    // A filtered record dead-lettered as poison is no longer filtered.
    for coord in dead_lettered_at_runtime {
        expected.remove(&coord);
    }
    let mut missing: Vec<_> = expected
        .iter()
        .filter(|(coord, e)| match e {
            Expect::Filtered => false,
            Expect::Output { .. } => !seen.contains_key(coord),
        })
        .map(|(coord, e)| (*coord, *e))
        .collect();
    missing.sort_by_key(|(c, _)| *c);
    for ((p, o), e) in missing {
        summary.violate(Violation {
            kind: "missing",
            partition: p,
            offset: o,
            detail: format!("no output found (expected {e:?})"),
        });
    }
    summary.filtered = expected
        .values()
        .filter(|e| matches!(e, Expect::Filtered))
        .count() as u64;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Filters, Limits, OutputLimits};
    use crate::model::{InputRecord, OutputRecord};

    fn read(out: &OutputRecord) -> ReadRecord {
        ReadRecord {
            record: InputRecord {
                partition: 0,
                offset: 0,
                key: out.key.clone(),
                value: Some(out.value.clone()),
                timestamp_ms: None,
            },
            headers: out
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    fn outcome(value: &[u8]) -> Outcome {
        let cfg = ProcessConfig {
            input_topic: "in".into(),
            limits: Limits::default(),
            filters: Filters::default(),
            output_limits: OutputLimits::default(),
        };
        let rec = InputRecord {
            partition: 4,
            offset: 77,
            key: Some(b"k".to_vec()),
            value: Some(value.to_vec()),
            timestamp_ms: Some(1_700_000_000_000),
        };
        process(&rec, &cfg)
    }

    #[test]
    fn outputs_name_their_source_in_headers_or_payload() {
        let good = br#"{"user_id":"u","app_version":"1.0.0","device_type":"iOS","ip":"10.1.2.3","locale":"en_US","device_id":"d","timestamp":1699999999}"#;
        let processed = read(outcome(good).output().unwrap());
        assert!(processed.headers.is_empty());
        assert_eq!(
            source_of(&processed, Destination::Processed, "in"),
            Source::Input(4, 77)
        );
        assert_eq!(
            source_of(&processed, Destination::Processed, "other"),
            Source::OtherTopic
        );
        // On the DLQ only headers count: its payload is an input as received.
        assert_eq!(
            source_of(&processed, Destination::DeadLetter, "in"),
            Source::Missing
        );
        let dlq = read(outcome(b"{").output().unwrap());
        assert_eq!(
            source_of(&dlq, Destination::DeadLetter, "in"),
            Source::Input(4, 77)
        );
        assert_eq!(
            source_of(&dlq, Destination::DeadLetter, "other"),
            Source::OtherTopic
        );
        // Headers win over a payload that names another record.
        let mut both = processed;
        both.headers = dlq.headers.clone();
        both.headers.retain(|(k, _)| k != headers::SOURCE_OFFSET);
        assert_eq!(
            source_of(&both, Destination::Processed, "in"),
            Source::Missing
        );
    }
}
