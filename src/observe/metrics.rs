//! The Prometheus families tally exports: the one place that names them. The
//! `prometheus-client` crate writes the exposition (OpenMetrics text, which
//! Prometheus scrapes natively).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::event::Reason;

/// One label: `[(name, value)]`.
pub type Label = Vec<(&'static str, String)>;

fn label(name: &'static str, value: impl ToString) -> Label {
    vec![(name, value.to_string())]
}

/// Every family, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub records: Family<Label, Counter>,
    pub dead_letters: Family<Label, Counter>,
    pub transactions: Family<Label, Counter>,
    pub commit_seconds: Histogram,
    pub consumer_lag: Family<Label, Gauge>,
    pub committed_offset: Family<Label, Gauge>,
    pub assigned_partitions: Gauge,
    pub partition_restoring: Family<Label, Gauge>,
    pub restore_records: Counter,
    pub restores: Family<Label, Counter>,
    pub rebalances: Counter,
    pub producer_replacements: Counter,
    pub end_to_end_latency_seconds: Histogram,
    pub checkpoint_seconds: Histogram,
    pub ready: Gauge,
    pub last_commit_timestamp: Gauge<f64, AtomicU64>,
    pub resident_memory: Gauge,
}

/// Record outcomes, the values of `tally_records_total{outcome}`.
pub const OUTCOMES: [&str; 3] = ["processed", "dead_lettered", "filtered"];

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        // Counters are registered without `_total`: the encoder appends it.
        let records = Family::<Label, Counter>::default();
        r.register(
            "tally_records",
            "Input records in committed transactions, by outcome",
            records.clone(),
        );
        let dead_letters = Family::<Label, Counter>::default();
        r.register(
            "tally_dead_letters",
            "Records dead-lettered in committed transactions, by reason code",
            dead_letters.clone(),
        );
        let transactions = Family::<Label, Counter>::default();
        r.register(
            "tally_transactions",
            "Transactions closed, by result (committed or aborted)",
            transactions.clone(),
        );
        let commit_seconds = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]);
        r.register(
            "tally_transaction_commit_seconds",
            "Time to commit a transaction (offsets and commit), seconds",
            commit_seconds.clone(),
        );
        let consumer_lag = Family::<Label, Gauge>::default();
        r.register(
            "tally_consumer_lag",
            "Records of an assigned input partition not yet committed: end offset minus committed offset",
            consumer_lag.clone(),
        );
        let committed_offset = Family::<Label, Gauge>::default();
        r.register(
            "tally_committed_offset",
            "Next offset committed for an assigned input partition",
            committed_offset.clone(),
        );
        let assigned_partitions = Gauge::default();
        r.register(
            "tally_assigned_partitions",
            "Input partitions assigned to this instance",
            assigned_partitions.clone(),
        );
        let partition_restoring = Family::<Label, Gauge>::default();
        r.register(
            "tally_partition_restoring",
            "1 while an assigned partition's aggregates are being restored, else 0",
            partition_restoring.clone(),
        );
        let restore_records = Counter::default();
        r.register(
            "tally_restore_records",
            "Input records replayed into aggregates while restoring (nothing produced)",
            restore_records.clone(),
        );
        let restores = Family::<Label, Counter>::default();
        r.register(
            "tally_restores",
            "Partition restores completed, by path (resume, replay, rebuild)",
            restores.clone(),
        );
        let rebalances = Counter::default();
        r.register(
            "tally_rebalances",
            "Partition assignments received from the group (one per rebalance)",
            rebalances.clone(),
        );
        let producer_replacements = Counter::default();
        r.register(
            "tally_producer_replacements",
            "Transactional producers replaced after a fatal (not fencing) error",
            producer_replacements.clone(),
        );
        let end_to_end_latency_seconds = Histogram::new([
            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
        ]);
        r.register(
            "tally_end_to_end_latency_seconds",
            "Input record timestamp to the commit of its transaction, seconds",
            end_to_end_latency_seconds.clone(),
        );
        let checkpoint_seconds = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
        ]);
        r.register(
            "tally_checkpoint_seconds",
            "Time to write the RocksDB checkpoint after a commit, seconds",
            checkpoint_seconds.clone(),
        );
        let ready = Gauge::default();
        r.register(
            "tally_ready",
            "1 when /readyz answers 200: in the group, producer initialised, nothing restoring",
            ready.clone(),
        );
        let last_commit_timestamp = Gauge::<f64, AtomicU64>::default();
        r.register(
            "tally_last_commit_timestamp_seconds",
            "Unix time of the last committed transaction (0: none yet)",
            last_commit_timestamp.clone(),
        );
        let build_info = Family::<Label, Gauge>::default();
        r.register(
            "tally_build_info",
            "Always 1; the labels name the build",
            build_info.clone(),
        );
        build_info
            .get_or_create(&label("version", env!("CARGO_PKG_VERSION")))
            .set(1);
        let resident_memory = Gauge::default();
        r.register(
            "process_resident_memory_bytes",
            "Resident memory size of the process, bytes",
            resident_memory.clone(),
        );
        // Every label value known in advance exists from the start at 0, so rates
        // and alerts see a series before the first event rather than nothing.
        for o in OUTCOMES {
            let _ = records.get_or_create(&label("outcome", o));
        }
        for reason in Reason::ALL {
            let _ = dead_letters.get_or_create(&label("reason", reason.code()));
        }
        for res in ["committed", "aborted"] {
            let _ = transactions.get_or_create(&label("result", res));
        }
        for path in ["resume", "replay", "rebuild"] {
            let _ = restores.get_or_create(&label("path", path));
        }
        Metrics {
            registry: r,
            records,
            dead_letters,
            transactions,
            commit_seconds,
            consumer_lag,
            committed_offset,
            assigned_partitions,
            partition_restoring,
            restore_records,
            restores,
            rebalances,
            producer_replacements,
            end_to_end_latency_seconds,
            checkpoint_seconds,
            ready,
            last_commit_timestamp,
            resident_memory,
        }
    }

    /// The exposition of every family.
    pub fn encode(&self) -> String {
        if let Some(rss) = resident_memory_bytes() {
            self.resident_memory.set(rss);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    pub fn count(family: &Family<Label, Counter>, name: &'static str, value: &str, n: u64) {
        family.get_or_create(&label(name, value)).inc_by(n);
    }

    pub fn set(family: &Family<Label, Gauge>, partition: i32, v: i64) {
        family.get_or_create(&label("partition", partition)).set(v);
    }

    /// Drops a partition's labelled series (it was revoked).
    pub fn forget_partition(&self, partition: i32) {
        let l = label("partition", partition);
        for family in [
            &self.consumer_lag,
            &self.committed_offset,
            &self.partition_restoring,
        ] {
            family.remove(&l);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// VmRSS of this process (Linux), bytes.
fn resident_memory_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_required_family_is_exported() {
        let text = Metrics::new().encode();
        for family in [
            "tally_records",
            "tally_dead_letters",
            "tally_transactions",
            "tally_transaction_commit_seconds",
            "tally_assigned_partitions",
            "tally_restore_records",
            "tally_rebalances",
            "tally_producer_replacements",
            "tally_end_to_end_latency_seconds",
            "tally_checkpoint_seconds",
            "tally_build_info",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} missing:\n{text}"
            );
        }
        assert!(
            text.contains("tally_records_total{outcome=\"filtered\"} 0"),
            "{text}"
        );
        assert!(text.contains(&format!(
            "tally_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }
}
