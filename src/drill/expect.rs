//! What the drill expects of every input record, from the generator's own labels
//! and the drill's own reading of the documented rules: never from tally's
//! validation or aggregation code, which is what the drill judges.
//!
//! The generator is the input topic's only producer (idempotent, one partition
//! per record, chosen by the drill), so the `i`-th record sent to a partition is
//! at offset `i`; [`Expectations::check_offsets`] holds the drill to that.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::aggregate::Aggregate;
use crate::generate::Generated;

/// Where one input record must end up, and what it adds to its partition's
/// aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    /// In the DLQ, counted as dead-lettered.
    Malformed,
    /// Dropped by the drill's filter, counted as filtered.
    Filtered,
    /// In the processed topic, counted in every breakdown.
    Valid {
        device_type: String,
        app_version: String,
        locale: String,
        /// Start of the event-time minute, epoch seconds.
        minute: i64,
    },
}

/// The filter the drill runs its instances with: app versions below this are
/// filtered out (`--min-app-version`). Two of the generator's eight versions
/// are below it, so about a quarter of the valid records take the filtered path.
pub const MIN_APP_VERSION: &str = "2.4.0";

/// The documented order of app versions: dot-separated numbers compared as
/// numbers, a missing trailing part counting as 0; a pre-release suffix after a
/// `-` does not lower a version below its numbers (`3.2.0-beta` >= `3.2.0`'s
/// predecessors). Only the generator's well-formed versions reach this.
fn version_below(version: &str, min: &str) -> bool {
    let parts = |v: &str| -> Vec<u64> {
        v.split('-')
            .next()
            .unwrap_or_default()
            .split('.')
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    let (a, b) = (parts(version), parts(min));
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x < y;
        }
    }
    false
}

impl Label {
    /// The label of a generated record; `min_app_version`: the drill's filter.
    pub fn of(g: &Generated, min_app_version: Option<&str>) -> Label {
        if g.malformed.is_some() {
            return Label::Malformed;
        }
        let v: Value = serde_json::from_slice(g.value.as_deref().unwrap_or_default())
            .expect("the generator's valid records are JSON");
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let app_version = field("app_version");
        if min_app_version.is_some_and(|min| version_below(&app_version, min)) {
            return Label::Filtered;
        }
        // Valid events carry the timestamp as a number or as a numeric string.
        let ts = match &v["timestamp"] {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .expect("the generator's valid records have an integer timestamp");
        Label::Valid {
            device_type: field("device_type"),
            app_version,
            locale: field("locale"),
            minute: ts.div_euclid(60) * 60,
        }
    }
}

/// Counts labels into the shape of tally's aggregate, by plain counting: the
/// drill's values are few (no breakdown reaches tally's cap) and span minutes
/// (no bucket falls out of the horizon), so nothing is folded or rolled up.
#[derive(Debug, Clone, Default)]
pub struct Recount {
    pub aggregate: Aggregate,
    /// Records counted: the offset this recount covers up to.
    pub next_offset: i64,
}

impl Recount {
    pub fn add(&mut self, label: &Label) {
        let a = &mut self.aggregate;
        match label {
            Label::Malformed => a.dead_lettered += 1,
            Label::Filtered => a.filtered += 1,
            Label::Valid {
                device_type,
                app_version,
                locale,
                minute,
            } => {
                a.processed += 1;
                *a.by_device_type.entry(device_type.clone()).or_default() += 1;
                *a.by_app_version.entry(app_version.clone()).or_default() += 1;
                *a.by_locale.entry(locale.clone()).or_default() += 1;
                *a.per_minute.entry(*minute).or_default() += 1;
            }
        }
        self.next_offset += 1;
    }
}

/// The header the drill's generator puts on every record: its number among
/// the records sent to its partition, in decimal.
pub const SEQ_HEADER: &str = "drill-seq";

/// The labels of every record the generator sent, per partition: as sent (by
/// the number in [`SEQ_HEADER`]) and, once read back from the input, by
/// offset. An idempotent producer can still write a record twice (librdkafka
/// resends what was in flight after it bumps its epoch, and a broker that lost
/// its producer state cannot tell): the input then holds it twice, at two
/// offsets, and tally must count it twice.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    /// By offset, as far as [`Self::align`] has read the input.
    pub by_partition: Vec<Vec<Label>>,
    /// By sequence number, as sent.
    sent: Vec<Vec<Label>>,
    /// Per partition, the next sequence number not yet read back.
    next_new: Vec<usize>,
    /// Records the input holds more than once.
    pub rewritten: u64,
    /// Records read back that name no record sent, or offsets out of order.
    pub unaligned: Vec<String>,
}

impl Expectations {
    pub fn new(partitions: usize) -> Self {
        Expectations {
            by_partition: vec![Vec::new(); partitions],
            sent: vec![Vec::new(); partitions],
            next_new: vec![0; partitions],
            ..Expectations::default()
        }
    }

    /// The sequence number the next record sent to `partition` carries.
    pub fn next_seq(&self, partition: i32) -> usize {
        self.sent[partition as usize].len()
    }

    /// A record was sent to `partition` (with [`Self::next_seq`]).
    pub fn push(&mut self, partition: i32, label: Label) {
        self.sent[partition as usize].push(label);
    }

    /// Records sent.
    pub fn total(&self) -> u64 {
        self.sent.iter().map(|l| l.len() as u64).sum()
    }

    /// Records of the input labelled by offset.
    pub fn aligned(&self, partition: i32) -> i64 {
        self.by_partition[partition as usize].len() as i64
    }

    /// The record at `offset` of `partition`, read back from the input with
    /// `seq` its [`SEQ_HEADER`]: its label goes to that offset. Records come
    /// in offset order from [`Self::aligned`] on.
    pub fn align(&mut self, partition: i32, offset: i64, seq: Option<&[u8]>) {
        let p = partition as usize;
        if offset != self.by_partition[p].len() as i64 {
            self.unaligned.push(format!(
                "partition {partition}: read offset {offset}, expected {}",
                self.by_partition[p].len()
            ));
            return;
        }
        let seq = seq.and_then(|s| std::str::from_utf8(s).ok()?.parse::<usize>().ok());
        let Some((n, label)) = seq.and_then(|n| Some((n, self.sent[p].get(n)?.clone()))) else {
            self.unaligned.push(format!(
                "partition {partition} offset {offset}: {SEQ_HEADER} {seq:?} names no record sent"
            ));
            return;
        };
        // Records are sent in order: below the next new number, a record
        // written again; past it, records sent but missing from the input.
        let next = &mut self.next_new[p];
        match n.cmp(next) {
            std::cmp::Ordering::Less => self.rewritten += 1,
            std::cmp::Ordering::Equal => *next += 1,
            std::cmp::Ordering::Greater => {
                self.unaligned.push(format!(
                    "partition {partition} offset {offset}: records {next}..{n} sent but not in the input"
                ));
                *next = n + 1;
            }
        }
        self.by_partition[p].push(label);
    }

    /// The label of the record at `offset`, if the input was read back there.
    pub fn get(&self, partition: i32, offset: i64) -> Option<&Label> {
        let labels = self.by_partition.get(usize::try_from(partition).ok()?)?;
        labels.get(usize::try_from(offset).ok()?)
    }

    /// Every partition's input was read back to its high watermark, every
    /// record naming one sent, every record sent found: else offsets do not
    /// name labels and nothing can be judged.
    pub fn check_offsets(&self, high_watermarks: &BTreeMap<i32, i64>) -> Vec<String> {
        let mut errors = self.unaligned.clone();
        for (p, labels) in self.by_partition.iter().enumerate() {
            let hw = high_watermarks.get(&(p as i32)).copied();
            if hw != Some(labels.len() as i64) {
                errors.push(format!(
                    "partition {p}: high watermark {hw:?} but {} records were read back",
                    labels.len()
                ));
            }
            if self.next_new[p] != self.sent[p].len() {
                errors.push(format!(
                    "partition {p}: {} records sent, {} found in the input",
                    self.sent[p].len(),
                    self.next_new[p]
                ));
            }
        }
        errors
    }

    /// The aggregate of `partition`'s records below `next_offset`, or `None`
    /// past what the generator sent.
    pub fn aggregate_at(&self, partition: i32, next_offset: i64) -> Option<Aggregate> {
        let labels = self.by_partition.get(usize::try_from(partition).ok()?)?;
        let n = usize::try_from(next_offset).ok()?;
        let mut r = Recount::default();
        for l in labels.get(..n)? {
            r.add(l);
        }
        Some(r.aggregate)
    }

    /// Counts per outcome (processed, dead-lettered, filtered) of `partition`'s
    /// records in `[from, to)`.
    pub fn outcomes(&self, partition: i32, from: i64, to: i64) -> Outcomes {
        let mut o = Outcomes::default();
        let sent = usize::try_from(partition)
            .ok()
            .and_then(|p| self.by_partition.get(p))
            .map_or(0, |l| l.len() as i64);
        for off in from.max(0)..to.min(sent) {
            match self.get(partition, off) {
                Some(Label::Valid { .. }) => o.processed += 1,
                Some(Label::Malformed) => o.dead_lettered += 1,
                Some(Label::Filtered) => o.filtered += 1,
                None => {}
            }
        }
        o
    }
}

/// One aggregate tally wrote (a snapshot or a checkpoint) to be checked
/// against the recount at its offset.
#[derive(Debug, Clone)]
pub struct Written {
    /// What it is and where, for the mismatch message.
    pub what: String,
    pub partition: i32,
    pub next_offset: i64,
    pub aggregate: Aggregate,
}

impl Expectations {
    /// Checks every aggregate against the recount of its partition's records
    /// below its offset, on every field; one message per aggregate that
    /// differs. One sweep per partition, whatever the number of aggregates.
    pub fn check_aggregates(&self, mut written: Vec<Written>) -> Vec<String> {
        written.sort_by_key(|w| (w.partition, w.next_offset));
        let mut out = Vec::new();
        let mut running: Option<(i32, Recount)> = None;
        for w in &written {
            let Some(labels) = usize::try_from(w.partition)
                .ok()
                .and_then(|p| self.by_partition.get(p))
            else {
                out.push(format!("{}: no such input partition", w.what));
                continue;
            };
            if w.next_offset < 0 || w.next_offset > labels.len() as i64 {
                out.push(format!(
                    "{}: covers offset {} but the generator sent {} records",
                    w.what,
                    w.next_offset,
                    labels.len()
                ));
                continue;
            }
            let r = match &mut running {
                Some((p, r)) if *p == w.partition => r,
                _ => &mut running.insert((w.partition, Recount::default())).1,
            };
            while r.next_offset < w.next_offset {
                r.add(&labels[r.next_offset as usize]);
            }
            let diff = differences(&w.aggregate, &r.aggregate);
            if !diff.is_empty() {
                out.push(format!("{}: {}", w.what, diff.join("; ")));
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Outcomes {
    pub processed: u64,
    pub dead_lettered: u64,
    pub filtered: u64,
}

/// Compares a partition's aggregate as tally wrote it with the drill's
/// recount, field by field; names each field that differs.
pub fn differences(got: &Aggregate, want: &Aggregate) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: &str, g: String, w: String| {
        if g != w {
            out.push(format!("{name} {g} (want {w})"));
        }
    };
    field(
        "processed",
        got.processed.to_string(),
        want.processed.to_string(),
    );
    field(
        "dead_lettered",
        got.dead_lettered.to_string(),
        want.dead_lettered.to_string(),
    );
    field(
        "filtered",
        got.filtered.to_string(),
        want.filtered.to_string(),
    );
    field(
        "by_device_type",
        format!("{:?}", got.by_device_type),
        format!("{:?}", want.by_device_type),
    );
    field(
        "by_app_version",
        format!("{:?}", got.by_app_version),
        format!("{:?}", want.by_app_version),
    );
    field(
        "by_locale",
        format!("{:?}", got.by_locale),
        format!("{:?}", want.by_locale),
    );
    field(
        "per_minute",
        format!("{:?}", got.per_minute),
        format!("{:?}", want.per_minute),
    );
    field(
        "older_than_horizon",
        got.older_than_horizon.to_string(),
        want.older_than_horizon.to_string(),
    );
    field(
        "uncounted",
        got.uncounted.to_string(),
        want.uncounted.to_string(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::Generator;

    /// Reads every record sent back, once each, in order.
    fn read_back(e: &mut Expectations) {
        for p in 0..e.sent.len() {
            for n in e.aligned(p as i32) as usize..e.sent[p].len() {
                e.align(p as i32, n as i64, Some(n.to_string().as_bytes()));
            }
        }
    }

    #[test]
    fn records_written_twice_are_labelled_at_both_offsets() {
        let mut g = Generator::new(3, 1_700_000_000, 0.2, false);
        let mut e = Expectations::new(1);
        for _ in 0..5 {
            e.push(0, Label::of(&g.next_record(), None));
        }
        // Records 2 and 3 were written again after 3.
        for (offset, seq) in ["0", "1", "2", "3", "2", "3", "4"].iter().enumerate() {
            e.align(0, offset as i64, Some(seq.as_bytes()));
        }
        assert_eq!(e.rewritten, 2);
        assert_eq!(e.by_partition[0][4], e.sent[0][2]);
        assert_eq!(e.by_partition[0][6], e.sent[0][4]);
        assert!(e.check_offsets(&BTreeMap::from([(0, 7)])).is_empty());
        // A record missing, one naming nothing sent, an offset out of order.
        let mut f = Expectations::new(1);
        for _ in 0..3 {
            f.push(0, Label::Malformed);
        }
        f.align(0, 0, Some(b"0"));
        f.align(0, 1, Some(b"2"));
        f.align(0, 2, Some(b"9"));
        f.align(0, 5, Some(b"1"));
        assert_eq!(
            f.check_offsets(&BTreeMap::from([(0, 2)])).len(),
            3,
            "{:?}",
            f.unaligned
        );
    }

    #[test]
    fn versions_compare_by_number_not_text() {
        assert!(version_below("2.3.1", "2.4.0"));
        assert!(version_below("2.3.0", "2.4.0"));
        assert!(!version_below("2.10.2", "2.4.0"));
        assert!(!version_below("2.4.0", "2.4.0"));
        assert!(!version_below("3.2.0-beta", "2.4.0"));
        assert!(version_below("2", "2.4.0"));
    }

    #[test]
    fn a_recount_covers_its_offsets_exactly() {
        let mut g = Generator::new(7, 1_700_000_000, 0.2, false);
        let mut e = Expectations::new(2);
        for n in 0..400 {
            e.push(
                (n % 2) as i32,
                Label::of(&g.next_record(), Some(MIN_APP_VERSION)),
            );
        }
        read_back(&mut e);
        let all = e.aggregate_at(0, 200).unwrap();
        assert_eq!(all.total(), 200);
        let o = e.outcomes(0, 0, i64::MAX);
        assert_eq!(
            (o.processed, o.dead_lettered, o.filtered),
            (all.processed, all.dead_lettered, all.filtered)
        );
        assert!(all.filtered > 0 && all.dead_lettered > 0, "{all:?}");
        assert_eq!(all.per_minute.values().sum::<u64>(), all.processed);
        assert!(e.aggregate_at(0, 201).is_none());
        assert_eq!(e.aggregate_at(1, 0), Some(Aggregate::default()));
        let mut hw = BTreeMap::from([(0, 200), (1, 200)]);
        assert!(e.check_offsets(&hw).is_empty());
        hw.insert(1, 199);
        assert_eq!(e.check_offsets(&hw).len(), 1);
    }

    #[test]
    fn every_written_aggregate_is_checked_at_its_own_offset() {
        let mut g = Generator::new(11, 1_700_000_000, 0.1, false);
        let mut e = Expectations::new(2);
        for n in 0..300 {
            e.push((n % 2) as i32, Label::of(&g.next_record(), None));
        }
        read_back(&mut e);
        let at = |p: i32, o: i64| Written {
            what: format!("snapshot {p}@{o}"),
            partition: p,
            next_offset: o,
            aggregate: e.aggregate_at(p, o).unwrap(),
        };
        let mut wrong = at(0, 100);
        wrong.aggregate.processed += 1;
        let written = vec![at(1, 150), at(0, 120), wrong, at(0, 10), at(1, 0)];
        let found = e.check_aggregates(written);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("snapshot 0@100: processed"),
            "{found:?}"
        );
        let mut beyond = at(1, 150);
        beyond.next_offset = 151;
        beyond.what = "beyond".into();
        assert_eq!(e.check_aggregates(vec![beyond]).len(), 1);
    }

    #[test]
    fn differences_name_every_field() {
        let mut a = Aggregate::default();
        let b = a.clone();
        assert!(differences(&a, &b).is_empty());
        a.per_minute.insert(60, 1);
        a.uncounted = 1;
        let d = differences(&a, &b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].starts_with("per_minute") && d[1].starts_with("uncounted"));
    }
}
