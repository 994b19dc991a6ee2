//! Producers: the transactional one of `tally run` (with its error
//! classification) and a plain idempotent one (generator, benchmark baseline).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use super::connection::{
    CALL_TIMEOUT, Connection, Denied, Result, TRANSACTION_TIMEOUT_MS, ctx, denied_resource,
    is_fenced_code,
};
use super::consumer::GroupConsumer;
use crate::event;
use crate::model::{Destination, OutputRecord, headers};

/// A transaction call failed; what to do about it. Each says what failed and
/// keeps librdkafka's error, when there is one, as its source.
#[derive(Debug)]
pub enum TxnError {
    /// Abort the transaction, rewind to the committed offsets, carry on.
    Abortable(TxnFailure),
    /// Another process initialised our transactional.id: we are a zombie.
    Fenced(TxnFailure),
    /// Nothing sensible can continue.
    Fatal(TxnFailure),
    /// The cluster refused an operation: an ACL is missing. Retrying, or a new
    /// producer, cannot help.
    NotAuthorized(Denied, TxnFailure),
}

impl TxnError {
    fn failure(&self) -> &TxnFailure {
        match self {
            TxnError::Abortable(f)
            | TxnError::Fenced(f)
            | TxnError::Fatal(f)
            | TxnError::NotAuthorized(_, f) => f,
        }
    }

    fn into_failure(self) -> TxnFailure {
        match self {
            TxnError::Abortable(f)
            | TxnError::Fenced(f)
            | TxnError::Fatal(f)
            | TxnError::NotAuthorized(_, f) => f,
        }
    }
}

impl std::fmt::Display for TxnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            TxnError::Abortable(_) => "transaction must be aborted",
            TxnError::Fenced(_) => "fenced",
            TxnError::Fatal(_) => "fatal transaction error",
            TxnError::NotAuthorized(..) => "not authorized",
        };
        write!(f, "{kind}: {}", self.failure())
    }
}

impl std::error::Error for TxnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.failure()
            .source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// What failed in a transaction call: the message (the call, and librdkafka's
/// words for why), and librdkafka's error when the failure came from one. It
/// reads as its message (`Deref<Target = str>`), which names the error already.
#[derive(Debug)]
pub struct TxnFailure {
    message: String,
    source: Option<KafkaError>,
}

impl TxnFailure {
    fn of(message: String, source: KafkaError) -> TxnFailure {
        TxnFailure {
            message,
            source: Some(source),
        }
    }

    /// librdkafka's error, when the failure came from one.
    pub fn kafka_error(&self) -> Option<&KafkaError> {
        self.source.as_ref()
    }
}

/// A failure tally decides itself (a refused commit, a failpoint, a call that
/// did not return in time).
impl From<String> for TxnFailure {
    fn from(message: String) -> TxnFailure {
        TxnFailure {
            message,
            source: None,
        }
    }
}

impl From<&str> for TxnFailure {
    fn from(message: &str) -> TxnFailure {
        message.to_string().into()
    }
}

impl std::ops::Deref for TxnFailure {
    type Target = str;
    fn deref(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for TxnFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn classify(what: &str, e: KafkaError) -> TxnError {
    let kind: fn(TxnFailure) -> TxnError = match &e {
        // librdkafka says when an error (an epoch error after the broker timed
        // the transaction out among them) is recovered by aborting: that comes
        // before the code, or tally would exit as fenced when it need not.
        KafkaError::Transaction(rd) if rd.txn_requires_abort() => TxnError::Abortable,
        KafkaError::Transaction(rd) if is_fenced_code(rd.code()) => TxnError::Fenced,
        KafkaError::Transaction(rd) if rd.is_fatal() => TxnError::Fatal,
        // Neither fatal nor abort-requiring: a timeout or a state error. Aborting
        // is always safe for an open transaction.
        KafkaError::Transaction(_) => TxnError::Abortable,
        e if e.rdkafka_error_code().is_some_and(is_fenced_code) => TxnError::Fenced,
        _ => TxnError::Abortable,
    };
    kind(TxnFailure::of(format!("{what}: {e}"), e))
}

fn is_retriable(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(rd) if rd.is_retriable())
}

/// How long one `init_transactions` call may wait before it is asked again: the
/// call is resumable, and short calls let a shutdown signal end the wait.
const INIT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The least time a transaction call is started with: a step of a commit that
/// times out is not always resumable, so a call too short to finish is not made.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);

/// Which input record (or partition snapshot) an output record was produced for,
/// so a failed delivery, which arrives asynchronously, can be blamed on its
/// record. Read back from the failed record itself (see [`origin_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    Input {
        partition: i32,
        offset: i64,
    },
    Snapshot {
        partition: i32,
    },
    /// The record of [`TxnProducer::probe_fencing`].
    Probe,
    /// Not produced by the pipeline (the generator's plain producer).
    Unknown,
}

/// A delivery that failed for a reason concerning that record alone (too large,
/// invalid, refused by a topic policy): the record, not the transaction, is bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFailure {
    pub origin: Origin,
    pub error: String,
}

/// Errors the broker (or librdkafka) returns for one record's content; anything
/// else (timeouts, purges on abort, coordinator trouble) concerns the transaction.
/// The broker reports a size error for every record of a batch: `batch.size`
/// ([`batch_bytes`]) keeps batches of several records under the topics' limits,
/// so such an error names the one record of its batch.
fn concerns_the_record(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::InvalidTimestamp
    )
}

/// The topic of librdkafka's `Failed to add partition "T" [p] to transaction:
/// ... Topic authorization failed` line.
fn refused_partition_topic(line: &str) -> Option<String> {
    if !line.contains("Topic authorization failed") {
        return None;
    }
    let rest = line.split_once("to add partition \"")?.1;
    Some(rest.split_once('"')?.0.to_string())
}

/// Checks `done` every `step` until it holds (true) or `limit` has passed (false).
fn poll_until(limit: Duration, step: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(step);
    }
}

/// Set to `false` on every producer. librdkafka producers default it to `true`
/// and name the topics they write in their metadata requests, so on a Kafka with
/// `auto.create.topics.enable` a topic deleted while tally runs would be
/// re-created empty (with the broker's defaults) and written on as if nothing
/// happened. Off, a vanished topic fails its deliveries with an unknown topic
/// error instead (see [`is_unknown_topic`]).
const NO_AUTO_CREATE: &str = "allow.auto.create.topics";

/// A delivery failed because its topic (or partition) does not exist.
fn is_unknown_topic(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition
    )
}

/// The key of [`TxnProducer::probe_fencing`]'s record.
const PROBE_KEY: &[u8] = b"tally-fencing-probe";

/// Collects failed deliveries that concern one record, for the pipeline to
/// dead-letter on the transaction's retry. Other failures make the commit fail
/// and are only logged: the 1st, 2nd, 4th, 8th... (an abort purges thousands of
/// queued records at once).
///
/// The transactional producer asks librdkafka for failed deliveries only
/// (`delivery.report.only.error`): a report per delivered record, with a boxed
/// origin as its opaque, would cost a delivery event, a callback and an
/// allocation per record on librdkafka's polling thread. A failed record is blamed by what it carries (see [`origin_of`]).
#[derive(Debug, Default)]
pub struct DeliveryContext {
    /// The insights topic of the transactional producer: its records are
    /// snapshots of the input partition they are written to, and the probe.
    insights: Option<String>,
    /// Why the fencing probe's record failed (see [`TxnProducer::probe_fencing`]).
    probe_failed: Mutex<Option<String>>,
    failures: AtomicU64,
    record_failures: Mutex<Vec<RecordFailure>>,
    /// The first topic a delivery failed for as unknown since the last
    /// [`TxnProducer::take_unknown_topic`].
    unknown_topic: Mutex<Option<String>>,
    /// The first authorization failure since the last
    /// [`TxnProducer::take_denied`], from a delivery or librdkafka's errors.
    denied: Mutex<Option<(Denied, String)>>,
}

impl DeliveryContext {
    fn note_denied(&self, d: Denied, detail: String) {
        self.denied
            .lock()
            .expect("not poisoned")
            .get_or_insert((d, detail));
    }
}

impl ClientContext for DeliveryContext {
    /// Logs as rust-rdkafka does, and notes a topic a transaction was refused
    /// (`Failed to add partition "T" [p] to transaction: ... authorization
    /// failed`): the transaction's own error names none.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if let Some(topic) = refused_partition_topic(log_message) {
            self.note_denied(Denied::Topic(Some(topic)), log_message.to_string());
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(d) = error.rdkafka_error_code().and_then(denied_resource) {
            self.note_denied(d, format!("{error}: {reason}"));
        }
        tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let Err((e, m)) = result else {
            return;
        };
        let per_record = e.rdkafka_error_code().is_some_and(concerns_the_record);
        if let Some(d) = e
            .rdkafka_error_code()
            .and_then(|c| Denied::of(c, Some(m.topic())))
        {
            self.note_denied(d, format!("producing to {}: {e}", m.topic()));
        }
        if e.rdkafka_error_code().is_some_and(is_unknown_topic) {
            self.unknown_topic
                .lock()
                .expect("not poisoned")
                .get_or_insert_with(|| m.topic().to_string());
        }
        // Only these failures need their record named, which may parse its
        // payload: an abort purges thousands of queued records at once.
        let maybe_probe = self.insights.as_deref() == Some(m.topic()) && m.key() == Some(PROBE_KEY);
        let origin = if maybe_probe || (per_record && self.insights.is_some()) {
            origin_of(m, self.insights.as_deref())
        } else {
            Origin::Unknown
        };
        if origin == Origin::Probe {
            *self.probe_failed.lock().expect("not poisoned") = Some(e.to_string());
            return;
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        // The transactional producer (the one that knows its insights topic)
        // hands on every per-record failure, even one it cannot attribute: the
        // poison rule counts that as a strike, where dropping it would leave the
        // transaction to abort forever.
        if per_record && self.insights.is_some() {
            tracing::warn!(topic = m.topic(), origin = ?origin, error = %e, "record refused by the broker");
            self.record_failures
                .lock()
                .expect("not poisoned")
                .push(RecordFailure {
                    origin,
                    error: format!("producing to {}: {e}", m.topic()),
                });
        } else if n.is_power_of_two() {
            tracing::warn!(topic = m.topic(), partition = m.partition(), error = %e, failures = n, "delivery failed");
        }
    }
}

/// Which record a delivery was produced for, read from the record itself (only
/// for failures that concern one record, and probes: it may parse the payload):
/// - the input record named by a DLQ entry's source headers
///   (`event::source_headers`) or a processed record's payload
///   (`event::processed_source`), first: snapshots and the probe carry neither,
///   so no topic naming can make an output look like one;
/// - on the insights topic, the probe by its key, else the snapshot of the input
///   partition numbered like the insights partition (they are co-partitioned);
/// - `Unknown` for anything else (the plain producer's records).
fn origin_of<M: Message>(m: &M, insights: Option<&str>) -> Origin {
    let header = |name: &str| {
        m.headers()?
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| std::str::from_utf8(h.value?).ok())
            .map(str::to_owned)
    };
    let partition = header(headers::SOURCE_PARTITION).and_then(|v| v.parse().ok());
    let offset = header(headers::SOURCE_OFFSET).and_then(|v| v.parse().ok());
    if let (Some(partition), Some(offset)) = (partition, offset) {
        return Origin::Input { partition, offset };
    }
    if let Some(s) = m.payload().and_then(event::processed_source) {
        return Origin::Input {
            partition: s.partition,
            offset: s.offset,
        };
    }
    if insights != Some(m.topic()) {
        Origin::Unknown
    } else if m.key() == Some(PROBE_KEY) {
        Origin::Probe
    } else {
        Origin::Snapshot {
            partition: m.partition(),
        }
    }
}

/// Topic names of the outputs.
#[derive(Debug, Clone)]
pub struct OutputTopics {
    pub processed: String,
    pub dead_letter: String,
    pub insights: String,
}

impl OutputTopics {
    fn of(&self, d: Destination) -> &str {
        match d {
            Destination::Processed => &self.processed,
            Destination::DeadLetter => &self.dead_letter,
            Destination::Insights { .. } => &self.insights,
        }
    }
}

/// `send` could not enqueue the record.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("producer queue is full")]
    QueueFull(OutputRecord),
    /// librdkafka refused this record alone (e.g. larger than `message.max.bytes`):
    /// dead-letter it, the transaction is unaffected.
    #[error("producing to {topic}: {source}")]
    RecordRefused {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("producing to {topic}: {source}")]
    Failed {
        topic: String,
        #[source]
        source: KafkaError,
    },
}

/// librdkafka's default `batch.size`, the most a batch of the transactional
/// producer holds.
const MAX_BATCH_BYTES: usize = 1_000_000;

/// `batch.size` of the transactional producer, given the `max.message.bytes` of
/// the topics it writes records to: as large as the smallest of them allows, up
/// to librdkafka's default.
///
/// A topic's limit applies to a whole record batch (framing included, as in
/// `batch.size`), and the broker refuses every record of a batch over it. A batch
/// takes a further record only while the batch stays within `batch.size`, so
/// with this bound a batch of several records always fits, and a size error
/// concerns a batch of one record (see `concerns_the_record`).
///
/// Smaller batches cost CPU rather than correctness: with its five requests in
/// flight to a partition and a full batch waiting, librdkafka's idempotent
/// producer polls its socket without sleeping until a response arrives. On a
/// backlog the producer's queue is full, so every batch is full, and the larger
/// they are, the fewer requests wait on the broker.
pub fn batch_bytes(topic_limits: &[usize]) -> usize {
    topic_limits
        .iter()
        .copied()
        .fold(MAX_BATCH_BYTES, usize::min)
        .max(1)
}

/// Ceiling of the transactional producer's local queue, in KiB (8 MiB: four
/// full-size 2 MiB DLQ entries, or tens of thousands of processed records). The
/// requests in flight hold copies of the small records among them, so the
/// producer's memory is about twice this with 1 MB batches.
pub const PRODUCER_QUEUE_KBYTES: &str = "8192";

pub struct TxnProducer {
    producer: ThreadedProducer<DeliveryContext>,
    topics: OutputTopics,
    input_topic: String,
    /// `transaction.timeout.ms`: the coordinator aborts a transaction this old.
    transaction_timeout: Duration,
    /// By then every record sent has been delivered or reported failed:
    /// librdkafka caps a transactional producer's `message.timeout.ms` at
    /// `transaction.timeout.ms`; plus a margin.
    settled_within: Duration,
}

impl std::fmt::Debug for TxnProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnProducer")
            .field("topics", &self.topics)
            .finish()
    }
}

fn owned_headers<K: AsRef<str>>(hs: &[(K, Vec<u8>)]) -> OwnedHeaders {
    hs.iter()
        .fold(OwnedHeaders::new_with_capacity(hs.len()), |acc, (k, v)| {
            acc.insert(Header {
                key: k.as_ref(),
                value: Some(v.as_slice()),
            })
        })
}

impl TxnProducer {
    pub fn new(
        conn: &Connection,
        transactional_id: &str,
        topics: OutputTopics,
        input_topic: &str,
        batch_bytes: usize,
    ) -> Result<Self> {
        let txn_timeout = TRANSACTION_TIMEOUT_MS.to_string();
        let batch_bytes = batch_bytes.to_string();
        let mut config = conn.config(&[
            // Records older than `linger.ms` waiting behind five requests in
            // flight to their partition make librdkafka's broker thread poll
            // without sleeping (see `batch_bytes`); a longer linger lets a busy
            // partition's responses come back first. The commit does not wait for
            // it: committing flushes, and a flush sends at once.
            ("linger.ms", "20"),
            // Each record is sized against its topic's own max.message.bytes by
            // `event::process` (read at start), so librdkafka's client-wide limit
            // only has to stay out of the way: the largest a request may be.
            ("message.max.bytes", "1000000000"),
            // See `batch_bytes`.
            ("batch.size", &batch_bytes),
            // Snapshots and processed records are JSON, which lz4 shrinks by
            // about 2.5x for a fraction of the CPU zstd takes (docs/benchmarks.md).
            // Record limits stay exact: `event::process` sizes records
            // uncompressed, and a compressed batch is never larger (librdkafka
            // sends a batch uncompressed when compressing does not shrink it).
            ("compression.codec", "lz4"),
            // Produced-but-unacknowledged data has a ceiling (librdkafka's default
            // is 1 GiB); `send` waits on QueueFull.
            ("queue.buffering.max.kbytes", PRODUCER_QUEUE_KBYTES),
            ("transaction.timeout.ms", &txn_timeout),
            // Failed deliveries only: see `DeliveryContext`.
            ("delivery.report.only.error", "true"),
            // librdkafka connects to a broker it learned from metadata only once
            // it needs it, and its transaction coordinator lookup, finding none
            // connected yet, retries on a 500 ms timer, which an
            // `init_transactions` (each start, each producer replacement) would
            // often wait out. Connected to every broker at once, the lookup goes
            // ahead as soon as one is up; the producer writes to most brokers
            // anyway (the leaders of three topics' partitions).
            ("enable.sparse.connections", "false"),
        ]);
        config
            .set("transactional.id", transactional_id)
            .set("enable.idempotence", "true")
            // After the -X properties: see `NO_AUTO_CREATE`.
            .set(NO_AUTO_CREATE, "false");
        let txn_timeout_ms = config
            .get("transaction.timeout.ms")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(TRANSACTION_TIMEOUT_MS);
        let producer = config
            .create_with_context(DeliveryContext {
                insights: Some(topics.insights.clone()),
                ..DeliveryContext::default()
            })
            .map_err(ctx("creating the transactional producer"))?;
        Ok(TxnProducer {
            producer,
            topics,
            input_topic: input_topic.to_string(),
            transaction_timeout: Duration::from_millis(txn_timeout_ms),
            settled_within: Duration::from_millis(txn_timeout_ms) + Duration::from_secs(5),
        })
    }

    /// Registers our transactional.id, fencing any older producer with it and
    /// aborting the transaction it left open. Kafka answers only once that
    /// transaction is aborted on every partition it touched
    /// (CONCURRENT_TRANSACTIONS while a partition is leaderless) and the
    /// transaction coordinator is available; librdkafka reports a call that ran
    /// out of time as retriable and resumes it when called again. So it is
    /// called again until it succeeds, fails for good, or `stop` says to give
    /// up: `Ok(false)`.
    pub fn init(&self, stop: &dyn Fn() -> bool) -> Result<bool, TxnError> {
        let started = std::time::Instant::now();
        loop {
            match self.producer.init_transactions(INIT_CALL_TIMEOUT) {
                Ok(()) => return Ok(true),
                Err(e) if is_retriable(&e) => {
                    if stop() {
                        return Ok(false);
                    }
                    tracing::warn!(
                        error = %e,
                        waited_secs = started.elapsed().as_secs(),
                        "init_transactions has not finished (the transaction coordinator is unavailable, \
                         or a previous instance's open transaction is still being aborted); still trying"
                    );
                }
                Err(e) => return Err(self.classify("init_transactions", e)),
            }
        }
    }

    /// `transaction.timeout.ms` of this producer.
    pub fn transaction_timeout(&self) -> Duration {
        self.transaction_timeout
    }

    pub fn begin(&self) -> Result<(), TxnError> {
        // A refusal noted after the last transaction ended is that one's.
        self.take_denied();
        self.producer
            .begin_transaction()
            .map_err(|e| self.classify("begin_transaction", e))
    }

    /// Like [`classify`], but a producer in a fatal state reports the error that
    /// put it there (later calls only say "fatal error").
    fn classify(&self, what: &str, e: KafkaError) -> TxnError {
        let code = match &e {
            KafkaError::Transaction(rd) => Some(rd.code()),
            e => e.rdkafka_error_code(),
        };
        if let Some(d) = code.and_then(denied_resource) {
            // A note names the topic where the transaction's error does not.
            let (denied, message) = match self.take_denied() {
                Some((Denied::Topic(Some(t)), note)) if d == Denied::Topic(None) => {
                    (Denied::Topic(Some(t)), format!("{what}: {e} ({note})"))
                }
                _ => (d, format!("{what}: {e}")),
            };
            return TxnError::NotAuthorized(denied, TxnFailure::of(message, e));
        }
        let classified = match self.producer.client().fatal_error() {
            Some((code, reason)) if is_fenced_code(code) => {
                TxnError::Fenced(TxnFailure::of(format!("{what}: {reason}"), e))
            }
            Some((_, reason)) => TxnError::Fatal(TxnFailure::of(format!("{what}: {reason}"), e)),
            None => classify(what, e),
        };
        // A fencing stays a fencing; any other failure of a transaction whose
        // records were refused for want of an ACL is that refusal.
        match (classified, self.take_denied()) {
            (fenced @ TxnError::Fenced(_), _) => fenced,
            (other, Some((d, note))) => {
                let message = format!("{other} ({note})");
                let source = other.into_failure().source;
                TxnError::NotAuthorized(d, TxnFailure { message, source })
            }
            (other, None) => other,
        }
    }

    /// Enqueues a record of the open transaction (non-blocking). A delivery
    /// failure that concerns this record comes back with its origin, read from
    /// the record (see [`origin_of`] and [`TxnProducer::take_record_failures`]).
    pub fn send(&self, rec: OutputRecord) -> Result<(), SendError> {
        let topic = self.topics.of(rec.destination);
        let mut br: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).payload(rec.value.as_slice());
        // Even an empty header list is an allocation in librdkafka: processed
        // records and snapshots carry none.
        if !rec.headers.is_empty() {
            br = br.headers(owned_headers(&rec.headers));
        }
        if let Some(k) = &rec.key {
            br = br.key(k.as_slice());
        }
        if let Destination::Insights { partition } = rec.destination {
            br = br.partition(partition);
        }
        if let Some(ts) = rec.timestamp_ms {
            br = br.timestamp(ts);
        }
        match self.producer.send(br) {
            Ok(()) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(SendError::QueueFull(rec))
            }
            Err((KafkaError::MessageProduction(code), _)) if concerns_the_record(code) => {
                Err(SendError::RecordRefused {
                    topic: topic.to_string(),
                    source: KafkaError::MessageProduction(code),
                })
            }
            Err((source, _)) => {
                // librdkafka refuses at once a record for a topic it was refused
                // (an ACL) or its metadata says does not exist.
                if let Some(d) = source
                    .rdkafka_error_code()
                    .and_then(|c| Denied::of(c, Some(topic)))
                {
                    self.producer
                        .context()
                        .note_denied(d, format!("producing to {topic}: {source}"));
                }
                if source.rdkafka_error_code().is_some_and(is_unknown_topic) {
                    self.producer
                        .context()
                        .unknown_topic
                        .lock()
                        .expect("not poisoned")
                        .get_or_insert_with(|| topic.to_string());
                }
                Err(SendError::Failed {
                    topic: topic.to_string(),
                    source,
                })
            }
        }
    }

    /// An authorization failure since the last call: an ACL is missing.
    pub fn take_denied(&self) -> Option<(Denied, String)> {
        self.producer
            .context()
            .denied
            .lock()
            .expect("not poisoned")
            .take()
    }

    /// A topic a delivery failed for as unknown since the last call (deleted
    /// while tally runs?); the caller asks the cluster whether it still exists.
    pub fn take_unknown_topic(&self) -> Option<String> {
        self.producer
            .context()
            .unknown_topic
            .lock()
            .expect("not poisoned")
            .take()
    }

    /// Failed deliveries since the last call that concern one record each.
    pub fn take_record_failures(&self) -> Vec<RecordFailure> {
        std::mem::take(
            &mut *self
                .producer
                .context()
                .record_failures
                .lock()
                .expect("not poisoned"),
        )
    }

    /// Adds the consumer's next offsets (exclusive: last processed + 1) with its
    /// group metadata to the transaction, then commits it. `refuse` runs right
    /// before each of the two steps; a reason from it fails the commit as
    /// abortable (a pause may have made this process a zombie). Retries end by
    /// `deadline`, when the coordinator would time the transaction out: past it
    /// the commit fails as abortable, so the transaction is aborted by tally
    /// rather than by the broker. A librdkafka call that ignores its own
    /// timeout can still hold this past `deadline`: the caller bounds it too.
    pub fn commit(
        &self,
        consumer: &GroupConsumer,
        offsets: &[(i32, i64)],
        refuse: &dyn Fn() -> Option<String>,
        deadline: std::time::Instant,
    ) -> Result<(), TxnError> {
        let check = || match refuse() {
            Some(why) => Err(TxnError::Abortable(format!("not committing: {why}").into())),
            None => Ok(()),
        };
        // First, so the zombie checks below come right before the two calls.
        // Never past the deadline: the caller's own bound counts from it.
        self.await_deliveries(
            CALL_TIMEOUT.min(deadline.saturating_duration_since(std::time::Instant::now())),
        );
        if !offsets.is_empty() {
            let meta = consumer
                .consumer
                .group_metadata()
                .ok_or_else(|| TxnError::Abortable("consumer has no group metadata yet".into()))?;
            let mut tpl = TopicPartitionList::new();
            for (p, o) in offsets {
                tpl.add_partition_offset(&self.input_topic, *p, Offset::Offset(*o))
                    .expect("valid offset");
            }
            check()?;
            crate::failpoints::stop("stop-before-send-offsets");
            // With `sleep(ms)`: the call hangs past its timeout, as librdkafka's
            // can while the group coordinator is gone.
            crate::failpoints::error("send-offsets-hang");
            self.retry("send_offsets_to_transaction", deadline, |t| {
                self.producer.send_offsets_to_transaction(&tpl, &meta, t)
            })?;
        }
        check()?;
        // rust-rdkafka's `commit_transaction(t)` flushes for up to `t`, then
        // commits for up to `t`: half each, so one call ends within `t`.
        self.retry("commit_transaction", deadline, |t| {
            self.producer.commit_transaction(t / 2)
        })?;
        // With `sleep(ms)`: the commit landed, but the call returns late.
        crate::failpoints::error("commit-returns-late");
        Ok(())
    }

    /// Waits (at most `limit`) until every record sent is delivered. rust-rdkafka's
    /// `commit_transaction` flushes first, and its flush, while records are in
    /// flight, waits for events in 100 ms slices on the queue that the
    /// `ThreadedProducer`'s own thread serves: a commit with records in flight
    /// would wait up to 100 ms more than the broker takes. Waiting here in short steps leaves that flush nothing
    /// to wait for. Past `limit`, the commit's own flush reports the failure.
    fn await_deliveries(&self, limit: Duration) {
        poll_until(limit, Duration::from_micros(500), || {
            self.producer.in_flight_count() == 0
        });
    }

    /// Whether another process took this producer's transactional.id. A record
    /// in a transaction makes librdkafka add its partition under our epoch, which
    /// the coordinator refuses once a newer `init_transactions` fenced us; only a
    /// delivered probe shows that it did not. The transaction (the open one, if
    /// `open`) is aborted in every case; a fenced producer fails there, in a
    /// fatal state, which is the error. `Ok(None)`: delivered, not fenced.
    /// `Ok(Some(why))`: not delivered (not sent, refused, not settled in time)
    /// although the abort succeeded, which proves nothing either way: an abort
    /// with no partition registered never reaches the coordinator. The caller
    /// decides whether to probe again. The probe is no snapshot (every reader
    /// ignores its key and value) and is never committed.
    ///
    /// `alive` is called as it waits, for the caller's liveness clock.
    pub fn probe_fencing(&self, open: bool, alive: &dyn Fn()) -> Result<Option<String>, TxnError> {
        if !open {
            self.begin()?;
        }
        let probe = OutputRecord {
            destination: Destination::Insights { partition: 0 },
            key: Some(PROBE_KEY.to_vec()),
            value: br#"{"probe":"fencing"}"#.to_vec(),
            headers: Vec::new(),
            timestamp_ms: None,
        };
        let context = self.producer.context();
        *context.probe_failed.lock().expect("not poisoned") = None;
        let why = match self.send(probe) {
            Err(e) => Some(format!("probe not sent: {e}")),
            Ok(()) => {
                // Only failures are reported, so the probe is known delivered
                // only once every record of the transaction has settled: wait as
                // long as a record may take to be delivered or to fail.
                // Records alone: `rd_kafka_flush` in event mode counts messages,
                // not queued log lines or events, and a failed record still
                // counts until its report has been served.
                let settled = poll_until(self.settled_within, Duration::from_millis(1), || {
                    alive();
                    self.producer.flush(Duration::ZERO).is_ok()
                });
                let mut failed = context.probe_failed.lock().expect("not poisoned").take();
                if crate::failpoints::error("probe-undelivered") {
                    failed = Some("injected by failpoint probe-undelivered".into());
                }
                match (settled, failed) {
                    (_, Some(e)) => Some(format!("probe not delivered: {e}")),
                    (false, None) => Some(format!(
                        "probe not settled within {:?}",
                        self.settled_within
                    )),
                    (true, None) => None,
                }
            }
        };
        self.abort()?;
        // The probe's transaction is no stream's: what it was refused is told
        // in `why`, not left for the next transaction.
        self.take_denied();
        Ok(why)
    }

    /// Aborts the open transaction, retrying for up to two call timeouts.
    pub fn abort(&self) -> Result<(), TxnError> {
        let deadline = std::time::Instant::now() + 2 * CALL_TIMEOUT;
        self.retry("abort_transaction", deadline, |t| {
            self.producer.abort_transaction(t)
        })
    }

    /// librdkafka asks for retriable transaction calls to be repeated as they
    /// are; each attempt gets at most [`CALL_TIMEOUT`] and none starts with
    /// less than [`MIN_ATTEMPT`] before `deadline`: then a retriable failure is
    /// reported as abortable. A conflict (another call, e.g. a commit that timed
    /// out, must be resumed first) is not retried: the caller aborts, and an
    /// abort that conflicts replaces the producer.
    fn retry(
        &self,
        what: &str,
        deadline: std::time::Instant,
        mut call: impl FnMut(Duration) -> Result<(), KafkaError>,
    ) -> Result<(), TxnError> {
        let mut attempt = 0u64;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left < MIN_ATTEMPT {
                return Err(TxnError::Abortable(
                    format!(
                        "{what}: not finished before the transaction would outlive \
                         transaction.timeout.ms ({attempt} attempts)"
                    )
                    .into(),
                ));
            }
            match call(left.min(CALL_TIMEOUT)) {
                Ok(()) => return Ok(()),
                Err(e)
                    if is_retriable(&e)
                        && e.rdkafka_error_code() != Some(RDKafkaErrorCode::Conflict) =>
                {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "{what} is retriable; retrying");
                    std::thread::sleep(Duration::from_millis(100 * attempt.min(10)));
                }
                Err(e) => return Err(self.classify(what, e)),
            }
        }
    }
}

pub struct PlainProducer {
    producer: ThreadedProducer<DeliveryContext>,
}

impl std::fmt::Debug for PlainProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainProducer").finish()
    }
}

impl PlainProducer {
    /// An idempotent producer: retries never duplicate or reorder records.
    pub fn new(conn: &Connection) -> Result<Self> {
        // Large enough for generated records over the broker's default size
        // (topics that allow more); the topic's own limit still applies.
        let mut config = conn.config(&[("linger.ms", "5"), ("message.max.bytes", "16777216")]);
        config
            .set("enable.idempotence", "true")
            .set(NO_AUTO_CREATE, "false");
        Ok(PlainProducer {
            producer: config
                .create_with_context(DeliveryContext::default())
                .map_err(ctx("creating the producer"))?,
        })
    }

    /// Enqueues a record, waiting while the local queue is full (at most
    /// [`CALL_TIMEOUT`]: a queue that stays full means the broker takes nothing).
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(String, Vec<u8>)],
    ) -> Result<()> {
        self.send_to(topic, None, key, value, headers, None)
    }

    /// Like [`PlainProducer::send`], to a chosen partition (`None`: by key hash),
    /// with a chosen timestamp (`None`: now).
    pub fn send_to(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(String, Vec<u8>)],
        timestamp_ms: Option<i64>,
    ) -> Result<()> {
        let never = AtomicBool::new(false);
        self.enqueue(topic, partition, key, value, headers, timestamp_ms, &never)
            .map(|_| ())
    }

    /// Like [`PlainProducer::send`], but gives up waiting on a full queue once
    /// `stop` is set: `Ok(false)` then, the record not sent.
    pub fn send_unless(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        stop: &AtomicBool,
    ) -> Result<bool> {
        self.enqueue(topic, None, key, value, &[], None, stop)
    }

    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(String, Vec<u8>)],
        timestamp_ms: Option<i64>,
        stop: &AtomicBool,
    ) -> Result<bool> {
        let deadline = std::time::Instant::now() + CALL_TIMEOUT;
        loop {
            let mut br: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
            if let Some(p) = partition {
                br = br.partition(p);
            }
            if let Some(k) = key {
                br = br.key(k);
            }
            if let Some(v) = value {
                br = br.payload(v);
            }
            if !headers.is_empty() {
                br = br.headers(owned_headers(headers));
            }
            if let Some(ts) = timestamp_ms {
                br = br.timestamp(ts);
            }
            match self.producer.send(br) {
                Ok(()) => return Ok(true),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if stop.load(Ordering::SeqCst) =>
                {
                    return Ok(false);
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    return Err(ctx(format!(
                        "producing to {topic} (the local queue stays full while the broker takes nothing)"
                    ))(e));
                }
            }
        }
    }

    pub fn flush(&self) -> Result<()> {
        self.producer
            .flush(Duration::from_secs(120))
            .map_err(ctx("flushing the producer"))
    }

    /// How many deliveries failed so far, and the first authorization failure
    /// (an ACL is missing) if one did.
    pub fn failed(&self) -> (u64, Option<String>) {
        let ctx = self.producer.context();
        let denied = ctx
            .denied
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map(|(_, detail)| detail.clone());
        (ctx.failures.load(Ordering::Relaxed), denied)
    }

    /// Waits until every record sent is delivered, at most `limit`, and at most
    /// `grace` once `stop` is set; returns how many are still undelivered.
    pub fn flush_unless(&self, limit: Duration, stop: &AtomicBool, grace: Duration) -> u64 {
        let started = std::time::Instant::now();
        let mut stopped_at = None;
        loop {
            let left = self.producer.in_flight_count().max(0) as u64;
            if left == 0 || started.elapsed() >= limit {
                return left;
            }
            if stop.load(Ordering::SeqCst) {
                let at = *stopped_at.get_or_insert_with(std::time::Instant::now);
                if at.elapsed() >= grace {
                    return left;
                }
            }
            let _ = self.producer.flush(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    use super::*;

    #[test]
    fn batches_are_as_large_as_the_smallest_topic_limit_allows() {
        // Kafka's default limit (1 MiB plus framing) leaves librdkafka's default.
        assert_eq!(batch_bytes(&[1_048_588, 2_097_152]), 1_000_000);
        // A topic that accepts less bounds every batch, whichever topic it is.
        assert_eq!(batch_bytes(&[2_097_152, 300_000]), 300_000);
        assert_eq!(batch_bytes(&[65_536, 1_048_588]), 65_536);
        assert_eq!(batch_bytes(&[]), 1_000_000);
        assert_eq!(batch_bytes(&[0]), 1);
    }

    #[test]
    fn a_classified_error_keeps_librdkafkas_as_its_source() {
        let fenced = || KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced);
        let e = classify("commit_transaction", fenced());
        assert!(matches!(e, TxnError::Fenced(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("fenced: commit_transaction: {}", fenced())
        );
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source, Some(fenced().to_string()));

        let e = classify(
            "abort_transaction",
            KafkaError::MessageProduction(RDKafkaErrorCode::RequestTimedOut),
        );
        assert!(matches!(e, TxnError::Abortable(_)), "{e:?}");
        assert!(std::error::Error::source(&e).is_some());

        // Decided by tally: no librdkafka error to keep.
        let e = TxnError::Abortable("not committing: paused".into());
        assert_eq!(
            e.to_string(),
            "transaction must be aborted: not committing: paused"
        );
        assert!(std::error::Error::source(&e).is_none());
    }

    #[test]
    fn a_refused_partition_names_its_topic() {
        let line = "Failed to add partition \"user-login-insights\" [0] to transaction: \
                    Broker: Topic authorization failed";
        assert_eq!(
            refused_partition_topic(line).as_deref(),
            Some("user-login-insights")
        );
        assert_eq!(
            refused_partition_topic(
                "Failed to add partition \"t\" [0] to transaction: Broker: Not leader"
            ),
            None
        );
        assert_eq!(refused_partition_topic("Topic authorization failed"), None);
    }
    use crate::event::{Filters, Limits, OutputLimits, ProcessConfig, dead_letter, process};
    use crate::model::InputRecord;

    fn message(topic: &str, partition: i32, rec: &OutputRecord) -> OwnedMessage {
        OwnedMessage::new(
            Some(rec.value.clone()),
            rec.key.clone(),
            topic.to_string(),
            Timestamp::NotAvailable,
            partition,
            0,
            Some(owned_headers(&rec.headers)),
        )
    }

    fn cfg() -> ProcessConfig {
        ProcessConfig {
            input_topic: "in".into(),
            limits: Limits::default(),
            filters: Filters::default(),
            output_limits: OutputLimits::default(),
        }
    }

    fn input(value: &[u8]) -> InputRecord {
        InputRecord {
            partition: 4,
            offset: 12_345_678_901,
            key: Some(b"k".to_vec()),
            value: Some(value.to_vec()),
            timestamp_ms: Some(1_700_000_000_000),
        }
    }

    /// A failed delivery is blamed on the record it was produced for, from the
    /// record alone, with no per-record opaque.
    #[test]
    fn a_failed_record_names_its_origin() {
        let good = br#"{"user_id":"u","app_version":"1.0.0","device_type":"iOS","ip":"10.1.2.3","locale":"en_US","device_id":"d","timestamp":1699999999}"#;
        let out = process(&input(good), &cfg());
        let processed = out.output().expect("processed");
        assert_eq!(processed.destination, Destination::Processed);
        let from_input = Origin::Input {
            partition: 4,
            offset: 12_345_678_901,
        };
        // A processed record names its input in its payload alone.
        assert!(processed.headers.is_empty(), "{:?}", processed.headers);
        assert_eq!(
            origin_of(&message("out", 1, processed), Some("ins")),
            from_input
        );
        let rejection = crate::event::Rejection {
            reason: crate::event::Reason::InvalidJson,
            message: "x".into(),
        };
        let dlq = dead_letter(input(b"{"), &rejection, &cfg());
        assert_eq!(origin_of(&message("dlq", 0, &dlq), Some("ins")), from_input);
        // The source comes first: an output topic named like the insights topic
        // does not turn an output into a snapshot.
        assert_eq!(origin_of(&message("ins", 0, &dlq), Some("ins")), from_input);
        assert_eq!(
            origin_of(&message("ins", 0, processed), Some("ins")),
            from_input
        );
        // A real snapshot's payload names no input record.
        let real = crate::insights::snapshot_record(
            "in",
            3,
            12_345_678_901,
            &crate::aggregate::Aggregate::default(),
            &crate::insights::Fingerprint::of(&cfg(), crate::aggregate::Horizon::default()),
        );
        assert_eq!(
            origin_of(&message("ins", 3, &real), Some("ins")),
            Origin::Snapshot { partition: 3 }
        );

        let snapshot = OutputRecord {
            destination: Destination::Insights { partition: 3 },
            key: Some(b"snapshot".to_vec()),
            value: b"{}".to_vec(),
            headers: Vec::new(),
            timestamp_ms: None,
        };
        assert_eq!(
            origin_of(&message("ins", 3, &snapshot), Some("ins")),
            Origin::Snapshot { partition: 3 }
        );
        let probe = OutputRecord {
            key: Some(PROBE_KEY.to_vec()),
            ..snapshot.clone()
        };
        assert_eq!(
            origin_of(&message("ins", 0, &probe), Some("ins")),
            Origin::Probe
        );
        // The plain producer's records, and anything that names no source.
        assert_eq!(
            origin_of(&message("ins", 3, &snapshot), None),
            Origin::Unknown
        );
        assert_eq!(
            origin_of(&message("out", 3, &snapshot), Some("ins")),
            Origin::Unknown
        );
    }
}
