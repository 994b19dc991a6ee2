//! tally's own record types. Kafka messages are converted into these in one place
//! (`kafka::connection`, one `From<&BorrowedMessage>`); everything else works on owned values.

/// One record of the input topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone (null value), distinct from an empty value.
    pub value: Option<Vec<u8>>,
    /// The Kafka record timestamp (create or log-append time), milliseconds since
    /// the epoch. Used as the reference for "absurd future" event times, so the
    /// decision is a pure function of the record.
    pub timestamp_ms: Option<i64>,
}

/// Where an output record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    Processed,
    DeadLetter,
    /// Snapshots go to the insights partition numbered like their input partition
    /// (co-partitioned), so a restore finds a partition's latest snapshot at the
    /// tail of one partition instead of scanning the topic.
    Insights {
        partition: i32,
    },
}

/// A record tally writes, before it is addressed to a concrete topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    pub destination: Destination,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// Header names are tally's own constants ([`headers`]): never allocated.
    pub headers: Vec<(&'static str, Vec<u8>)>,
    /// The record timestamp to write, milliseconds since the epoch: a processed
    /// record carries its input record's (as Kafka Streams does), so time-based
    /// lookups and end-to-end latency refer to when the event was written, not when
    /// tally got to it. `None`: the producer's clock (DLQ entries, snapshots).
    pub timestamp_ms: Option<i64>,
}

/// Header names tally writes.
pub mod headers {
    pub const REASON: &str = "tally.reason";
    pub const MESSAGE: &str = "tally.message";
    pub const SOURCE_TOPIC: &str = "tally.source.topic";
    pub const SOURCE_PARTITION: &str = "tally.source.partition";
    pub const SOURCE_OFFSET: &str = "tally.source.offset";
    /// On a DLQ entry cut to fit the DLQ topic: what was cut (`value`, `key` or `key,value`).
    pub const TRUNCATED: &str = "tally.truncated";
    /// The original value's size in bytes and lowercase hex SHA-256 (only when cut).
    pub const ORIGINAL_SIZE: &str = "tally.original.size";
    pub const ORIGINAL_SHA256: &str = "tally.original.sha256";
    /// The same for a cut key.
    pub const ORIGINAL_KEY_SIZE: &str = "tally.original.key.size";
    pub const ORIGINAL_KEY_SHA256: &str = "tally.original.key.sha256";
    /// On a DLQ entry whose value's fields were masked (`--dlq-mask-ip`): which
    /// (`ip`). The value is then re-serialised JSON, not the original bytes.
    pub const MASKED: &str = "tally.masked";
}
