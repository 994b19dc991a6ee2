//! Everything that touches rdkafka, one file per client role. The rest of tally
//! sees owned types ([`InputRecord`](crate::model::InputRecord),
//! [`OutputRecord`](crate::model::OutputRecord)) and blocking calls it runs off
//! the async runtime. This is the only module that imports `rdkafka`.
//!
//! - [`connection`]: bootstrap servers, `-X` passthrough, the shared error type;
//! - [`consumer`]: the group member of `tally run` (rebalances, polling, seeks);
//! - [`producer`]: the transactional producer and the plain (idempotent) one;
//! - [`reader`]: bounded `read_committed` readers (restore, verify, insights);
//! - [`admin`]: topic creation and group administration;
//! - [`copy`]: the at-least-once copy loop, the benchmark baseline.

mod admin;
mod connection;
mod consumer;
mod copy;
mod producer;
mod reader;

pub use admin::{
    GroupAdmin, GroupDescription, TopicAdmin, TopicSpec, busiest, coordinator_partition,
    create_topics, delete_records, delete_topics, fragility, pipeline_topic_specs, replication_for,
};
pub use connection::{
    AclNames, CALL_TIMEOUT, ConfigError, Connection, Denied, Error, Redacted, Result,
    parse_properties,
};
pub use consumer::{GroupConsumer, MemberConfig, Polled, Rebalance, RewindId};
pub use copy::copy_at_least_once;
pub use producer::{
    Origin, OutputTopics, PlainProducer, RecordFailure, SendError, TxnError, TxnFailure,
    TxnProducer, batch_bytes,
};
pub use reader::{ReadEnds, ReadRecord, StartAt, TopicReader};
