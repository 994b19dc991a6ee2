//! tally: an exactly-once Kafka stream processor with durable per-partition state.
//!
//! Pure core: [`event`] (validation, filters, transform), [`aggregate`] and
//! [`insights`] rendering. I/O edge: [`kafka`] (the only module importing rdkafka)
//! and the `tally-state` crate (the only one importing rocksdb). [`pipeline`] is
//! the loop that owns the transaction.

pub mod aggregate;
pub mod drill;
pub mod event;
pub mod failpoints;
pub mod generate;
pub mod insights;
pub mod kafka;
pub mod model;
pub mod observe;
pub mod pipeline;
pub mod verify;
