//! Observability: what the pipeline reports and how it is logged and counted.
//!
//! The pipeline says *what happened* with one call, `emit(TransactionCommitted { .. })`;
//! the files here say how each event is counted (Prometheus metrics) and what it
//! changes in the live status the HTTP endpoint serves. Nothing here calls back
//! into the loop: the loop publishes, the endpoint only reads (atomics and a
//! briefly held lock around a map of small values), so a scrape never waits on a
//! transaction and a transaction never waits on a scrape.
//!
//! - [`metrics`]: the Prometheus families (the only place naming them);
//! - [`status`]: liveness, readiness and the committed state per partition;
//! - [`transaction`], [`partition`]: the events of the transaction cycle and of
//!   partition assignment and restores;
//! - [`lag`]: consumer lag, from watermarks fetched off the loop;
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`, `/insights`.

pub mod http;
pub mod lag;
mod metrics;
mod partition;
mod status;
mod transaction;

use std::sync::LazyLock;

pub use metrics::Metrics;
pub use status::Status;

pub use partition::{
    PartitionRestored, PartitionsAssigned, PartitionsRevoked, RestorePath, RestoreProgress,
    RestoreStarted,
};
pub use transaction::{
    CheckpointWritten, CycleTally, LoopIteration, ProducerInitialised, ProducerReplaced,
    RecordCounts, SkippedByRetention, SnapshotRefused, SnapshotsCommitted, TransactionAborted,
    TransactionCommitted,
};

/// Everything the process reports: the metrics and the live status.
#[derive(Debug)]
pub struct Telemetry {
    pub metrics: Metrics,
    pub status: Status,
}

/// One per process, like a metrics recorder: the pipeline emits without carrying
/// a handle through every function, and the endpoint reads the same instance.
static TELEMETRY: LazyLock<Telemetry> = LazyLock::new(|| Telemetry {
    metrics: Metrics::new(),
    status: Status::new(),
});

/// The process's telemetry.
pub fn telemetry() -> &'static Telemetry {
    &TELEMETRY
}

/// Something worth observing: one `emit` says how it is counted and what it
/// changes in the status.
pub trait InternalEvent {
    fn emit(self, t: &Telemetry);
}

/// Reports `event`.
pub fn emit(event: impl InternalEvent) {
    event.emit(telemetry());
}
