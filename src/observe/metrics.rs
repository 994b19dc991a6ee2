//! The Prometheus families tally exports: the one place that names them. The
//! `prometheus` crate writes the exposition in the text format 0.0.4, which
//! every Prometheus scrapes and `promtool check metrics` lints as written
//! (OpenMetrics' counter naming reads as untyped families to 0.0.4 parsers).

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use super::RestorePath;
use crate::event::Reason;

/// Every family, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub(super) records: IntCounterVec,
    pub(super) dead_letters: IntCounterVec,
    pub(super) transactions: IntCounterVec,
    pub(super) commit_seconds: Histogram,
    pub(super) consumer_lag: IntGaugeVec,
    pub(super) committed_offset: IntGaugeVec,
    pub(super) snapshot_offset: IntGaugeVec,
    pub(super) assigned_partitions: IntGauge,
    pub(super) partition_restoring: IntGaugeVec,
    pub(super) restore_records: IntCounter,
    pub(super) restores: IntCounterVec,
    pub(super) rebalances: IntCounter,
    pub(super) producer_replacements: IntCounter,
    pub(super) snapshot_refusals: IntCounter,
    pub(super) skipped_by_retention: IntCounter,
    pub(super) end_to_end_latency_seconds: Histogram,
    pub(super) checkpoint_seconds: Histogram,
    pub(super) ready: IntGauge,
    pub(super) last_commit_timestamp: Gauge,
}

/// Record outcomes, the values of `tally_records_total{outcome}`.
pub const OUTCOMES: [&str; 3] = ["processed", "dead_lettered", "filtered"];

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Registers `metric` in `r`. Names and labels are constants of this file, so a
/// registration error is a programming error caught by the unit test below.
fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, metric: M) -> M {
    r.register(Box::new(metric.clone()))
        .expect("metric names are unique and valid");
    metric
}

fn counter_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid"),
    )
}

fn gauge_vec(r: &Registry, name: &str, help: &str) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), &["partition"]).expect("valid"),
    )
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(r, Histogram::with_opts(opts).expect("valid"))
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let counter =
            |name: &str, help: &str| register(&r, IntCounter::new(name, help).expect("valid"));
        let gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid"));
        let records = counter_vec(
            &r,
            "tally_records_total",
            "Input records in committed transactions, by outcome",
            "outcome",
        );
        let dead_letters = counter_vec(
            &r,
            "tally_dead_letters_total",
            "Records dead-lettered in committed transactions, by reason code",
            "reason",
        );
        let transactions = counter_vec(
            &r,
            "tally_transactions_total",
            "Transactions closed, by result (committed or aborted)",
            "result",
        );
        let commit_seconds = histogram(
            &r,
            "tally_transaction_commit_seconds",
            "Time to commit a transaction (offsets and commit), seconds",
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        );
        let consumer_lag = gauge_vec(
            &r,
            "tally_consumer_lag",
            "Records of an assigned input partition not yet committed: end offset minus committed offset",
        );
        let committed_offset = gauge_vec(
            &r,
            "tally_committed_offset",
            "Next offset committed for an assigned input partition",
        );
        let snapshot_offset = gauge_vec(
            &r,
            "tally_snapshot_offset",
            "Offset covered by the latest snapshot of an assigned input partition this instance committed (a restore replays the input from there)",
        );
        let assigned_partitions = gauge(
            "tally_assigned_partitions",
            "Input partitions assigned to this instance",
        );
        let partition_restoring = gauge_vec(
            &r,
            "tally_partition_restoring",
            "1 while an assigned partition's aggregates are being restored, else 0",
        );
        let restore_records = counter(
            "tally_restore_records_total",
            "Input records replayed into aggregates while restoring (nothing produced)",
        );
        let restores = counter_vec(
            &r,
            "tally_restores_total",
            "Partition restores completed, by path (resume, snapshot, replay, rebuild)",
            "path",
        );
        let rebalances = counter(
            "tally_rebalances_total",
            "Partition assignments received from the group (one per rebalance)",
        );
        let producer_replacements = counter(
            "tally_producer_replacements_total",
            "Transactional producers replaced after a fatal (not fencing) error",
        );
        let snapshot_refusals = counter(
            "tally_snapshot_refusals_total",
            "Snapshots the broker refused (over the insights topic's max.message.bytes); each aborts its transaction",
        );
        let skipped_by_retention = counter(
            "tally_skipped_by_retention_total",
            "Input records retention deleted before the running consumer read them, counted as \
             uncounted (--allow-inexact-restore)",
        );
        let end_to_end_latency_seconds = histogram(
            &r,
            "tally_end_to_end_latency_seconds",
            "Input record timestamp to the commit of its transaction, seconds",
            &[
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
            ],
        );
        let checkpoint_seconds = histogram(
            &r,
            "tally_checkpoint_seconds",
            "Time to write the RocksDB checkpoint after a commit, seconds",
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ],
        );
        let ready = gauge(
            "tally_ready",
            "1 when /readyz answers 200: in the group, producer initialised, nothing restoring",
        );
        let last_commit_timestamp = register(
            &r,
            Gauge::new(
                "tally_last_commit_timestamp_seconds",
                "Unix time of the last committed transaction (0: none yet)",
            )
            .expect("valid"),
        );
        let build_info = register(
            &r,
            IntGaugeVec::new(
                Opts::new("tally_build_info", "Always 1; the labels name the build"),
                &["version"],
            )
            .expect("valid"),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // process_resident_memory_bytes, CPU seconds, open fds and the rest of
        // the standard process families (the dashboard plots RSS).
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process families are registered once");
        // Every label value known in advance exists from the start at 0, so rates
        // and alerts see a series before the first event rather than nothing.
        for o in OUTCOMES {
            let _ = records.with_label_values(&[o]);
        }
        for reason in Reason::ALL {
            let _ = dead_letters.with_label_values(&[reason.code()]);
        }
        for res in ["committed", "aborted"] {
            let _ = transactions.with_label_values(&[res]);
        }
        for path in RestorePath::ALL {
            let _ = restores.with_label_values(&[path.as_str()]);
        }
        Metrics {
            registry: r,
            records,
            dead_letters,
            transactions,
            commit_seconds,
            consumer_lag,
            committed_offset,
            snapshot_offset,
            assigned_partitions,
            partition_restoring,
            restore_records,
            restores,
            rebalances,
            producer_replacements,
            snapshot_refusals,
            skipped_by_retention,
            end_to_end_latency_seconds,
            checkpoint_seconds,
            ready,
            last_commit_timestamp,
        }
    }

    /// The exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("writing to a Vec");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// Adds `n` to the series of a one-label counter family.
    pub fn count(family: &IntCounterVec, value: &str, n: u64) {
        family.with_label_values(&[value]).inc_by(n);
    }

    pub fn set(family: &IntGaugeVec, partition: i32, v: i64) {
        family.with_label_values(&[&partition.to_string()]).set(v);
    }

    /// Drops a partition's labelled series (it was revoked).
    pub fn forget_partition(&self, partition: i32) {
        let p = partition.to_string();
        for family in [
            &self.consumer_lag,
            &self.committed_offset,
            &self.snapshot_offset,
            &self.partition_restoring,
        ] {
            // Absent already (never set) is fine.
            let _ = family.remove_label_values(&[&p]);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_required_family_is_exported() {
        let text = Metrics::new().encode();
        for (family, kind) in [
            ("tally_records_total", "counter"),
            ("tally_dead_letters_total", "counter"),
            ("tally_transactions_total", "counter"),
            ("tally_transaction_commit_seconds", "histogram"),
            ("tally_assigned_partitions", "gauge"),
            ("tally_restore_records_total", "counter"),
            ("tally_restores_total", "counter"),
            ("tally_rebalances_total", "counter"),
            ("tally_producer_replacements_total", "counter"),
            ("tally_snapshot_refusals_total", "counter"),
            ("tally_skipped_by_retention_total", "counter"),
            ("tally_end_to_end_latency_seconds", "histogram"),
            ("tally_checkpoint_seconds", "histogram"),
            ("tally_ready", "gauge"),
            ("tally_last_commit_timestamp_seconds", "gauge"),
            ("tally_build_info", "gauge"),
            ("process_resident_memory_bytes", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} {kind}\n"))
                    && text.contains(&format!("# HELP {family} ")),
                "{family} missing:\n{text}"
            );
        }
        assert!(
            text.contains("tally_records_total{outcome=\"filtered\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("tally_restores_total{path=\"snapshot\"} 0"),
            "{text}"
        );
        assert!(text.contains(&format!(
            "tally_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }

    #[test]
    fn a_revoked_partition_loses_its_series() {
        let m = Metrics::new();
        Metrics::set(&m.consumer_lag, 3, 42);
        assert!(
            m.encode()
                .contains("tally_consumer_lag{partition=\"3\"} 42")
        );
        m.forget_partition(3);
        m.forget_partition(3);
        assert!(!m.encode().contains("tally_consumer_lag{"));
    }
}
