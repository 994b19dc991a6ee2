//! Insights: per-partition aggregate snapshots on the compacted insights topic,
//! and the group-wide view merged from the latest snapshot of every partition.
//!
//! The insights topic is also the aggregates' changelog: a snapshot is committed
//! in the same transaction as the input offsets it covers, so a new host restores
//! a partition from its latest snapshot instead of re-reading the input.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, Horizon};
use crate::event::ProcessConfig;
use crate::model::{Destination, OutputRecord};
use tally_state::Versioned;

/// Everything that changes what an aggregate counts: the filters, the limits that
/// decide valid vs. dead-lettered, the per-minute horizon and the aggregate's
/// schema version (there is no top-K cap: breakdowns are complete). Stored with
/// every checkpoint and snapshot; aggregates computed under another fingerprint
/// are never merged with new records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub schema: u32,
    pub horizon_minutes: i64,
    /// Absent in fingerprints written before breakdowns were capped (no cap then).
    #[serde(default)]
    pub top_k: Option<usize>,
    pub max_value_bytes: usize,
    pub max_future_skew_secs: i64,
    pub min_app_version: Option<String>,
    pub allowed_device_types: Option<Vec<String>>,
}

impl Fingerprint {
    pub fn of(cfg: &ProcessConfig, horizon: Horizon) -> Fingerprint {
        Fingerprint {
            schema: Aggregate::VERSION,
            horizon_minutes: horizon.minutes,
            top_k: Some(horizon.top_k),
            max_value_bytes: cfg.limits.max_value_bytes,
            max_future_skew_secs: cfg.limits.max_future_skew_secs,
            min_app_version: cfg.filters.min_app_version.as_ref().map(|v| v.to_string()),
            allowed_device_types: cfg
                .filters
                .allowed_device_types
                .as_ref()
                .map(|s| s.iter().cloned().collect()),
        }
    }

    /// The form stored in checkpoints (compact JSON: readable in a hex dump).
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("fingerprint serialises")
    }

    /// `None` for an empty or unreadable string.
    pub fn decode(s: &str) -> Option<Fingerprint> {
        serde_json::from_str(s).ok()
    }

    /// What differs, as `name: stored -> now` items (empty when equal).
    pub fn changes(&self, now: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: {a} -> {b}"));
            }
        };
        cmp(
            "schema version",
            self.schema.to_string(),
            now.schema.to_string(),
        );
        cmp(
            "--minute-horizon",
            self.horizon_minutes.to_string(),
            now.horizon_minutes.to_string(),
        );
        cmp(
            "--top-k",
            self.top_k.map_or("unlimited".into(), |k| k.to_string()),
            now.top_k.map_or("unlimited".into(), |k| k.to_string()),
        );
        cmp(
            "--max-value-bytes",
            self.max_value_bytes.to_string(),
            now.max_value_bytes.to_string(),
        );
        cmp(
            "--max-future-skew-secs",
            self.max_future_skew_secs.to_string(),
            now.max_future_skew_secs.to_string(),
        );
        cmp(
            "--min-app-version",
            format!("{:?}", self.min_app_version),
            format!("{:?}", now.min_app_version),
        );
        cmp(
            "--allowed-device-types",
            format!("{:?}", self.allowed_device_types),
            format!("{:?}", now.allowed_device_types),
        );
        out
    }
}

/// What one insights record holds: a partition's aggregates covering every record
/// with offset `< next_offset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub aggregate: Aggregate,
    /// Absent in snapshots written before fingerprints existed.
    #[serde(default)]
    pub fingerprint: Option<Fingerprint>,
}

/// The compacted topic keeps the latest snapshot per key: one key per input partition.
pub fn snapshot_key(topic: &str, partition: i32) -> Vec<u8> {
    format!("{topic}/{partition}").into_bytes()
}

pub fn snapshot_record(
    topic: &str,
    partition: i32,
    next_offset: i64,
    aggregate: &Aggregate,
    fingerprint: &Fingerprint,
) -> OutputRecord {
    let snap = Snapshot {
        topic: topic.to_string(),
        partition,
        next_offset,
        aggregate: aggregate.clone(),
        fingerprint: Some(fingerprint.clone()),
    };
    OutputRecord {
        destination: Destination::Insights { partition },
        key: Some(snapshot_key(topic, partition)),
        value: serde_json::to_vec(&snap).expect("snapshot serialises"),
        headers: Vec::new(),
        timestamp_ms: None,
    }
}

/// Keeps the latest snapshot per partition of `topic` (later records win, as in compaction).
#[derive(Debug, Default)]
pub struct Latest {
    pub by_partition: BTreeMap<i32, Snapshot>,
}

impl Latest {
    /// `from_partition`: the insights partition the record was read from. Only
    /// the same-numbered one holds a partition's snapshots (co-partitioned):
    /// a copy elsewhere was placed by an older tally, by key hash, and is never
    /// compacted away by the newer snapshots, so it must not win by read order.
    pub fn offer(&mut self, topic: &str, from_partition: i32, value: &[u8]) {
        if let Ok(s) = serde_json::from_slice::<Snapshot>(value) {
            if s.topic == topic && s.partition == from_partition {
                self.by_partition.insert(s.partition, s);
            }
        }
    }

    /// The JSON report of `tally insights --json` and of `/insights`: next
    /// offset and aggregates per partition, and their merge.
    pub fn report(&self, horizon: Horizon, top: usize) -> serde_json::Value {
        let offsets: BTreeMap<i32, i64> = self
            .by_partition
            .iter()
            .map(|(p, s)| (*p, s.next_offset))
            .collect();
        let by_partition: BTreeMap<i32, &Aggregate> = self
            .by_partition
            .iter()
            .map(|(p, s)| (*p, &s.aggregate))
            .collect();
        let merged = self.merged(horizon);
        serde_json::json!({
            "partitions": offsets,
            "by_partition": by_partition,
            "peak_minutes": merged.peak_minutes(top),
            "aggregate": merged,
        })
    }

    pub fn merged(&self, horizon: Horizon) -> Aggregate {
        let mut all = Aggregate::default();
        for s in self.by_partition.values() {
            all.merge(&s.aggregate, horizon);
        }
        all
    }
}

fn minute(m: i64) -> String {
    DateTime::from_timestamp(m, 0)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| m.to_string())
}

fn pct(n: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * n as f64 / total as f64
    }
}

/// The `n` largest entries of a breakdown, largest first, for people to read:
/// the capped breakdowns' catch-all key ([`crate::aggregate::OTHER`], the empty
/// string) shows as `(other)`.
fn top(map: &BTreeMap<String, u64>, n: usize) -> Vec<(&str, u64)> {
    let mut v: Vec<(&str, u64)> = map
        .iter()
        .map(|(k, c)| {
            let k = if k == crate::aggregate::OTHER {
                "(other)"
            } else {
                k.as_str()
            };
            (k, *c)
        })
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.truncate(n);
    v
}

/// A one-line summary for the periodic log.
pub fn one_line(a: &Aggregate) -> String {
    let fmt = |map: &BTreeMap<String, u64>, n| {
        top(map, n)
            .iter()
            .map(|(k, c)| format!("{k}={:.1}%", pct(*c, a.processed)))
            .collect::<Vec<_>>()
            .join(",")
    };
    let peaks = a
        .peak_minutes(3)
        .iter()
        .map(|(m, c)| format!("{}={c}", minute(*m)))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "insights processed={} dlq={} filtered={} devices[{}] versions[{}] locales[{}] peak_minutes[{}]",
        a.processed,
        a.dead_lettered,
        a.filtered,
        fmt(&a.by_device_type, 5),
        fmt(&a.by_app_version, 5),
        fmt(&a.by_locale, 5),
        peaks
    )
}

/// The readable table `tally insights` prints.
pub fn table(a: &Aggregate, partitions: usize, top_n: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "partitions reporting: {partitions}");
    let _ = writeln!(
        out,
        "records: {} processed, {} dead-lettered, {} filtered ({} total)",
        a.processed,
        a.dead_lettered,
        a.filtered,
        a.total()
    );
    for (title, map) in [
        ("device type", &a.by_device_type),
        ("app version", &a.by_app_version),
        ("locale", &a.by_locale),
    ] {
        let _ = writeln!(out, "\n{title:<24} {:>10} {:>7}", "count", "share");
        for (k, c) in top(map, top_n) {
            let _ = writeln!(out, "{k:<24} {c:>10} {:>6.1}%", pct(c, a.processed));
        }
        if map.len() > top_n {
            let _ = writeln!(out, "({} more)", map.len() - top_n);
        }
    }
    let _ = writeln!(out, "\n{:<24} {:>10}", "peak minute (UTC)", "logins");
    for (m, c) in a.peak_minutes(top_n) {
        let _ = writeln!(out, "{:<24} {c:>10}", minute(m));
    }
    if a.uncounted > 0 {
        let _ = writeln!(
            out,
            "\nWARNING: {} input records could not be counted (deleted by retention before a \
             restore could read them; restored with --allow-inexact-restore): every figure \
             above is a lower bound",
            a.uncounted
        );
    }
    if a.older_than_horizon > 0 {
        let _ = writeln!(
            out,
            "(older than the per-minute horizon: {})",
            a.older_than_horizon
        );
    }
    out
}

/// Per-minute traffic of the latest `rows` minutes that saw logins, as a bar
/// chart `width` characters wide (the busiest minute fills it).
pub fn minute_chart(a: &Aggregate, rows: usize, width: usize) -> String {
    let mut out = String::new();
    let minutes: Vec<(i64, u64)> = a
        .per_minute
        .iter()
        .rev()
        .take(rows)
        .map(|(m, c)| (*m, *c))
        .collect();
    let max = minutes.iter().map(|(_, c)| *c).max().unwrap_or(0);
    if max == 0 {
        return out;
    }
    let _ = writeln!(
        out,
        "\nlogins per minute (UTC), latest {} minutes",
        minutes.len()
    );
    for (m, c) in minutes.into_iter().rev() {
        // Any non-zero minute gets at least one cell.
        let cells = ((c as f64 / max as f64) * width as f64).ceil() as usize;
        let _ = writeln!(
            out,
            "{:<22} {:>8} {}",
            minute(m),
            c,
            "#".repeat(cells.max(1))
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips_and_latest_wins() {
        let a = Aggregate {
            processed: 3,
            by_device_type: [("iOS".to_string(), 3)].into(),
            ..Aggregate::default()
        };
        let f = Fingerprint::of(&test_config(), Horizon::default());
        let r1 = snapshot_record("t", 0, 5, &Aggregate::default(), &f);
        let r2 = snapshot_record("t", 0, 9, &a, &f);
        let other = snapshot_record("u", 1, 1, &a, &f);
        let misplaced = snapshot_record("t", 0, 99, &Aggregate::default(), &f);
        assert_eq!(r2.destination, Destination::Insights { partition: 0 });
        let mut l = Latest::default();
        for r in [&r1, &r2, &other] {
            l.offer("t", 0, &r.value);
        }
        // Read from insights partition 3: an old-layout copy, not partition 0's.
        l.offer("t", 3, &misplaced.value);
        assert_eq!(l.by_partition.len(), 1);
        assert_eq!(l.by_partition[&0].next_offset, 9);
        assert_eq!(l.merged(Horizon::default()), a);
        assert!(table(&a, 1, 5).contains("iOS"));
        assert!(one_line(&a).contains("iOS=100.0%"));
        let capped = Aggregate {
            processed: 2,
            by_locale: [(crate::aggregate::OTHER.to_string(), 2)].into(),
            ..Aggregate::default()
        };
        assert!(one_line(&capped).contains("locales[(other)=100.0%]"));
        let traffic = Aggregate {
            per_minute: [(0, 10), (60, 5), (120, 1)].into(),
            ..Aggregate::default()
        };
        let chart = minute_chart(&traffic, 2, 10);
        let lines: Vec<&str> = chart.trim_start().lines().collect();
        assert_eq!(lines.len(), 3, "{chart}");
        assert!(lines[1].starts_with("1970-01-01T00:01:00Z"), "{chart}");
        assert!(lines[1].ends_with(" 5 ##########"), "{chart}");
        assert!(lines[2].ends_with(" 1 ##"), "{chart}");
    }

    fn test_config() -> ProcessConfig {
        ProcessConfig {
            input_topic: "t".into(),
            limits: Default::default(),
            filters: Default::default(),
            output_limits: Default::default(),
        }
    }

    #[test]
    fn fingerprint_names_what_changed() {
        let mut cfg = test_config();
        let before = Fingerprint::of(&cfg, Horizon::default());
        assert_eq!(Fingerprint::decode(&before.encode()), Some(before.clone()));
        assert!(before.changes(&before).is_empty());
        cfg.filters.min_app_version = Some("2.0".parse().unwrap());
        let after = Fingerprint::of(
            &cfg,
            Horizon {
                minutes: 60,
                ..Horizon::default()
            },
        );
        let changes = before.changes(&after);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(
            changes[0].starts_with("--minute-horizon: 1440 -> 60"),
            "{changes:?}"
        );
        assert!(changes[1].contains("--min-app-version"), "{changes:?}");
        // Snapshots written before fingerprints still parse.
        let old = br#"{"topic":"t","partition":0,"next_offset":1,"aggregate":{"processed":1,"dead_lettered":0,"filtered":0,"by_device_type":{},"by_app_version":{},"by_locale":{},"per_minute":{},"older_than_horizon":0}}"#;
        let s: Snapshot = serde_json::from_slice(old).unwrap();
        assert_eq!(s.fingerprint, None);
    }
}
