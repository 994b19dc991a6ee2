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

/// The labels of every record the generator sent, per partition, by offset.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    pub by_partition: Vec<Vec<Label>>,
}

impl Expectations {
    pub fn new(partitions: usize) -> Self {
        Expectations {
            by_partition: vec![Vec::new(); partitions],
        }
    }

    pub fn push(&mut self, partition: i32, label: Label) {
        self.by_partition[partition as usize].push(label);
    }

    pub fn total(&self) -> u64 {
        self.by_partition.iter().map(|l| l.len() as u64).sum()
    }

    /// The label of the record at `offset`, if the generator sent one there.
    pub fn get(&self, partition: i32, offset: i64) -> Option<&Label> {
        let labels = self.by_partition.get(usize::try_from(partition).ok()?)?;
        labels.get(usize::try_from(offset).ok()?)
    }

    /// Every partition's high watermark is the number of records sent to it:
    /// else a send was lost or doubled and offsets no longer name labels.
    pub fn check_offsets(&self, high_watermarks: &BTreeMap<i32, i64>) -> Vec<String> {
        self.by_partition
            .iter()
            .enumerate()
            .filter_map(|(p, labels)| {
                let hw = high_watermarks.get(&(p as i32)).copied();
                (hw != Some(labels.len() as i64)).then(|| {
                    format!(
                        "partition {p}: high watermark {hw:?} but the generator sent {} records",
                        labels.len()
                    )
                })
            })
            .collect()
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
