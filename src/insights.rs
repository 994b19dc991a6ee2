//! Insights: per-partition aggregate snapshots on the compacted insights topic,
//! and the group-wide view merged from the latest snapshot of every partition.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, Horizon};
use crate::model::{Destination, OutputRecord};

/// What one insights record holds: a partition's aggregates covering every record
/// with offset `< next_offset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub aggregate: Aggregate,
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
) -> OutputRecord {
    let snap = Snapshot {
        topic: topic.to_string(),
        partition,
        next_offset,
        aggregate: aggregate.clone(),
    };
    OutputRecord {
        destination: Destination::Insights,
        key: Some(snapshot_key(topic, partition)),
        value: serde_json::to_vec(&snap).expect("snapshot serialises"),
        headers: Vec::new(),
    }
}

/// Keeps the latest snapshot per partition of `topic` (later records win, as in compaction).
#[derive(Debug, Default)]
pub struct Latest {
    pub by_partition: BTreeMap<i32, Snapshot>,
}

impl Latest {
    pub fn offer(&mut self, topic: &str, value: &[u8]) {
        if let Ok(s) = serde_json::from_slice::<Snapshot>(value) {
            if s.topic == topic {
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

fn top(map: &BTreeMap<String, u64>, n: usize) -> Vec<(&String, u64)> {
    let mut v: Vec<(&String, u64)> = map.iter().map(|(k, c)| (k, *c)).collect();
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
        let r1 = snapshot_record("t", 0, 5, &Aggregate::default());
        let r2 = snapshot_record("t", 0, 9, &a);
        let other = snapshot_record("u", 1, 1, &a);
        let mut l = Latest::default();
        for r in [&r1, &r2, &other] {
            l.offer("t", &r.value);
        }
        assert_eq!(l.by_partition.len(), 1);
        assert_eq!(l.by_partition[&0].next_offset, 9);
        assert_eq!(l.merged(Horizon::default()), a);
        assert!(table(&a, 1, 5).contains("iOS"));
        assert!(one_line(&a).contains("iOS=100.0%"));
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
}
