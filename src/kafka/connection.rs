//! What every client shares: bootstrap servers and `-X` passthrough, the
//! defaults tally sets, the one conversion of an rdkafka message into our own
//! type, and the error type of this module.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::model::InputRecord;

/// How long one blocking Kafka call (commit, seek, metadata...) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Defaults of every consumer: what librdkafka may hold of fetched but not yet
/// processed data has a ceiling whatever the records' sizes (1 MiB malformed
/// payloads are expected input; librdkafka's own default queue is 64 MiB).
/// - `queued.max.messages.kbytes` 8 MiB: the prefetch queue, for all partitions
///   of the consumer together;
/// - `queued.min.messages` 10,000: prefetch stops earlier for small records;
/// - `fetch.max.bytes` 4 MiB and `max.partition.fetch.bytes` 1 MiB per fetch
///   response (a broker still returns a first record larger than these, so an
///   oversized record never blocks a partition);
/// - `receive.message.max.bytes`: some brokers (the local test broker among them)
///   answer a fetch with more than `fetch.max.bytes`; a generous receive limit
///   keeps such an answer from being treated as a corrupt frame.
const CONSUMER_DEFAULTS: [(&str, &str); 5] = [
    ("queued.max.messages.kbytes", "8192"),
    ("queued.min.messages", "10000"),
    ("fetch.max.bytes", "4194304"),
    ("max.partition.fetch.bytes", "1048576"),
    ("receive.message.max.bytes", "1000000000"),
];

/// Properties tally sets itself because correctness depends on them; `-X` may not
/// override them.
const MANAGED: &[&str] = &[
    "enable.auto.commit",
    "isolation.level",
    "transactional.id",
    "group.id",
    "group.instance.id",
    "enable.idempotence",
    "bootstrap.servers",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Kafka {
        what: String,
        #[source]
        source: KafkaError,
    },
    /// The group coordinator or the transaction coordinator fenced us.
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("-X {0}: this property is managed by tally (use the dedicated flag, if any)")]
    Managed(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(super) fn ctx(what: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
    let what = what.into();
    move |source| Error::Kafka { what, source }
}

/// Connection settings shared by every client: bootstrap servers and `-X` passthrough.
#[derive(Debug, Clone)]
pub struct Connection {
    pub bootstrap: String,
    pub properties: Vec<(String, String)>,
}

impl Connection {
    /// Rejects `-X` properties that would break tally's guarantees.
    pub fn validate(&self) -> Result<()> {
        for (k, _) in &self.properties {
            if MANAGED.contains(&k.as_str()) {
                return Err(Error::Managed(k.clone()));
            }
        }
        Ok(())
    }

    /// Like [`Connection::config`], for a consumer: [`CONSUMER_DEFAULTS`] first.
    pub(super) fn consumer_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let all: Vec<(&str, &str)> = CONSUMER_DEFAULTS.iter().chain(defaults).copied().collect();
        self.config(&all)
    }

    /// tally's defaults, then the user's `-X` properties on top.
    pub(super) fn config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

impl From<&BorrowedMessage<'_>> for InputRecord {
    fn from(m: &BorrowedMessage<'_>) -> Self {
        InputRecord {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
        }
    }
}

pub(super) fn headers_of(m: &BorrowedMessage<'_>) -> Vec<(String, Vec<u8>)> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

/// True when the error means another process took over our identity.
pub(super) fn is_fenced_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::FencedInstanceId
    )
}

pub(super) fn partitions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> Result<Vec<i32>> {
    let md = consumer
        .fetch_metadata(Some(topic), CALL_TIMEOUT)
        .map_err(ctx(format!("reading metadata of {topic}")))?;
    let t = md
        .topics()
        .first()
        .ok_or_else(|| Error::Other(format!("topic {topic} not in metadata")))?;
    if let Some(e) = t.error() {
        return Err(Error::Other(format!(
            "topic {topic}: {:?} (does it exist? `tally create-topics` creates it)",
            RDKafkaErrorCode::from(e)
        )));
    }
    let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ps.sort_unstable();
    if ps.is_empty() {
        return Err(Error::Other(format!(
            "topic {topic} does not exist; `tally create-topics` creates it"
        )));
    }
    Ok(ps)
}
