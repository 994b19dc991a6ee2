//! Everything that touches rdkafka. The rest of tally sees owned types
//! ([`InputRecord`], [`OutputRecord`]) and blocking calls it runs off the async runtime.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::model::{Destination, InputRecord, OutputRecord};

/// How long one blocking Kafka call (commit, seek, metadata...) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Defaults of every consumer, for large records (1 MiB malformed payloads are
/// expected input). Some brokers (the local test broker among them) answer a
/// fetch with more than `fetch.max.bytes`; a generous receive limit keeps such an
/// answer from being treated as a corrupt frame.
const CONSUMER_DEFAULTS: [(&str, &str); 3] = [
    ("fetch.max.bytes", "52428800"),
    ("max.partition.fetch.bytes", "2097152"),
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

fn ctx(what: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
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
    fn consumer_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let all: Vec<(&str, &str)> = CONSUMER_DEFAULTS.iter().chain(defaults).copied().collect();
        self.config(&all)
    }

    /// tally's defaults, then the user's `-X` properties on top.
    fn config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
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

fn headers_of(m: &BorrowedMessage<'_>) -> Vec<(String, Vec<u8>)> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

/// True when the error means another process took over our identity.
fn is_fenced_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::FencedInstanceId
    )
}

// ---------------------------------------------------------------------------
// The group consumer

/// A rebalance handed from librdkafka's callback (on the polling thread) to the
/// pipeline loop.
#[derive(Debug)]
pub enum RebalanceEvent {
    /// The partitions are assigned and paused; the loop restores their state,
    /// seeks and resumes them. Records polled before `epoch` belong to an earlier
    /// assignment and must be dropped.
    Assigned { partitions: Vec<i32>, epoch: u64 },
    /// The partitions are being taken away. The callback waits for `done` before
    /// letting librdkafka proceed, so the loop can close the open transaction while
    /// the partitions are still ours. `lost`: the group already gave them to someone
    /// else (session timed out): never commit for them.
    Revoked {
        partitions: Vec<i32>,
        lost: bool,
        done: SyncSender<()>,
    },
}

#[derive(Debug)]
pub struct GroupContext {
    topic: String,
    events: UnboundedSender<RebalanceEvent>,
    epoch: AtomicU64,
}

impl ClientContext for GroupContext {}

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect()
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let (done, wait) = sync_channel(1);
            let event = RebalanceEvent::Revoked {
                partitions: partitions_of(tpl, &self.topic),
                lost: consumer.assignment_lost(),
                done,
            };
            // If the loop is gone there is nothing left to hand over.
            if self.events.send(event).is_ok() {
                let _ = wait.recv();
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // Paused before the callback returns, so no record of these
                // partitions is delivered before the loop has restored their state
                // and sought to the committed offset.
                if let Err(e) = consumer.pause(tpl) {
                    tracing::error!(error = %e, "pausing newly assigned partitions failed");
                }
                let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
                let _ = self.events.send(RebalanceEvent::Assigned {
                    partitions: partitions_of(tpl, &self.topic),
                    epoch,
                });
            }
            Rebalance::Revoke(_) => {
                self.epoch.fetch_add(1, Ordering::SeqCst);
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
        }
    }
}

/// A record and the assignment epoch it was polled under.
#[derive(Debug)]
pub struct Polled {
    pub epoch: u64,
    pub record: InputRecord,
}

/// Settings of the consumer-group member.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub group: String,
    pub instance_id: String,
    pub topic: String,
    pub session_timeout: Duration,
    pub max_poll_interval: Duration,
}

pub struct GroupConsumer {
    consumer: BaseConsumer<GroupContext>,
    topic: String,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("topic", &self.topic)
            .finish()
    }
}

impl GroupConsumer {
    pub fn new(
        conn: &Connection,
        member: &MemberConfig,
    ) -> Result<(Self, UnboundedReceiver<RebalanceEvent>)> {
        let (tx, rx) = unbounded_channel();
        let session = member.session_timeout.as_millis().to_string();
        let poll = member.max_poll_interval.as_millis().to_string();
        let mut config = conn.consumer_config(&[
            // Eager assignment: a transaction spans all our partitions, so any
            // revocation must close it anyway; eager keeps the revoke path single
            // (commit, checkpoint, release all) and, with static membership and
            // warm local state (`K == C`), re-assignment costs one RocksDB read.
            ("partition.assignment.strategy", "range"),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", &session),
            ("max.poll.interval.ms", &poll),
            ("fetch.wait.max.ms", "100"),
        ]);
        config
            .set("group.id", &member.group)
            .set("group.instance.id", &member.instance_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed");
        let context = GroupContext {
            topic: member.topic.clone(),
            events: tx,
            epoch: AtomicU64::new(0),
        };
        let consumer = config
            .create_with_context(context)
            .map_err(ctx("creating the consumer"))?;
        Ok((
            GroupConsumer {
                consumer,
                topic: member.topic.clone(),
            },
            rx,
        ))
    }

    pub fn subscribe(&self) -> Result<()> {
        self.consumer
            .subscribe(&[&self.topic])
            .map_err(ctx(format!("subscribing to {}", self.topic)))
    }

    /// Leaves the group: unsubscribing makes librdkafka revoke our partitions
    /// (through the rebalance callback, served by polling here) and then send
    /// LeaveGroup, which a static member does not do on close, so the remaining
    /// members take over at once. Records polled meanwhile are dropped: they are
    /// past the committed offsets.
    pub fn leave(&self, timeout: Duration) {
        self.consumer.unsubscribe();
        let deadline = Instant::now() + timeout;
        let mut empty_since: Option<Instant> = None;
        while Instant::now() < deadline {
            let _ = self.consumer.poll(Duration::from_millis(50));
            let empty = self
                .consumer
                .assignment()
                .map(|a| a.count() == 0)
                .unwrap_or(true);
            match (empty, empty_since) {
                (false, _) => empty_since = None,
                (true, None) => empty_since = Some(Instant::now()),
                // The LeaveGroup goes out once the unassignment is done; give the
                // request a moment on the wire.
                (true, Some(t)) if t.elapsed() > Duration::from_millis(500) => return,
                _ => {}
            }
        }
        tracing::warn!("leaving the group did not complete in {timeout:?}");
    }

    /// Polls up to `max` records for at most `budget`. Serves rebalance callbacks,
    /// so it runs on a blocking thread; returns early after a rebalance so the loop
    /// sees the new epoch promptly.
    pub fn poll_batch(&self, max: usize, budget: Duration) -> Result<Vec<Polled>> {
        let deadline = Instant::now() + budget;
        let start_epoch = self.consumer.context().epoch.load(Ordering::SeqCst);
        let mut out = Vec::new();
        while out.len() < max {
            let left = deadline.saturating_duration_since(Instant::now());
            let polled = self.consumer.poll(if out.is_empty() {
                left
            } else {
                // Once records flow, only wait briefly for more of the same batch.
                left.min(Duration::from_millis(5))
            });
            let epoch = self.consumer.context().epoch.load(Ordering::SeqCst);
            match polled {
                Some(Ok(m)) => out.push(Polled {
                    epoch,
                    record: InputRecord::from(&m),
                }),
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    let fatal = self.consumer.client().fatal_error();
                    if let Some((code, reason)) = fatal {
                        if is_fenced_code(code) {
                            return Err(Error::Fenced(format!("consumer: {reason}")));
                        }
                        return Err(Error::Other(format!("fatal consumer error: {reason}")));
                    }
                    if e.rdkafka_error_code().is_some_and(is_fenced_code) {
                        return Err(Error::Fenced(format!("consumer: {e}")));
                    }
                    tracing::warn!(error = %e, "consumer error (librdkafka retries)");
                }
                None => {
                    if !out.is_empty() || Instant::now() >= deadline {
                        break;
                    }
                }
            }
            if epoch != start_epoch || Instant::now() >= deadline {
                break;
            }
        }
        Ok(out)
    }

    fn tpl(&self, offsets: &[(i32, Option<i64>)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            match o {
                Some(o) => tpl
                    .add_partition_offset(&self.topic, *p, Offset::Offset(*o))
                    .expect("valid offset"),
                None => {
                    tpl.add_partition(&self.topic, *p);
                }
            }
        }
        tpl
    }

    /// The group's committed offsets (`None`: no commit yet).
    pub fn committed(&self, partitions: &[i32]) -> Result<HashMap<i32, Option<i64>>> {
        let tpl = self.tpl(&partitions.iter().map(|p| (*p, None)).collect::<Vec<_>>());
        let got = self
            .consumer
            .committed_offsets(tpl, CALL_TIMEOUT)
            .map_err(ctx("reading committed offsets"))?;
        Ok(got
            .elements()
            .iter()
            .map(|e| {
                let o = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.partition(), o)
            })
            .collect())
    }

    /// `(low, high)` watermarks of a partition.
    pub fn watermarks(&self, partition: i32) -> Result<(i64, i64)> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, CALL_TIMEOUT)
            .map_err(ctx(format!("reading watermarks of partition {partition}")))
    }

    /// Moves the fetch position of the partitions; stale prefetched records are
    /// discarded by librdkafka.
    pub fn seek(&self, offsets: &[(i32, i64)]) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let tpl = self.tpl(
            &offsets
                .iter()
                .map(|(p, o)| (*p, Some(*o)))
                .collect::<Vec<_>>(),
        );
        let res = self
            .consumer
            .seek_partitions(tpl, CALL_TIMEOUT)
            .map_err(ctx("seeking"))?;
        for e in res.elements() {
            e.error()
                .map_err(ctx(format!("seeking partition {}", e.partition())))?;
        }
        Ok(())
    }

    pub fn pause(&self, partitions: &[i32]) -> Result<()> {
        let tpl = self.tpl(&partitions.iter().map(|p| (*p, None)).collect::<Vec<_>>());
        self.consumer.pause(&tpl).map_err(ctx("pausing partitions"))
    }

    pub fn resume(&self, partitions: &[i32]) -> Result<()> {
        let tpl = self.tpl(&partitions.iter().map(|p| (*p, None)).collect::<Vec<_>>());
        self.consumer
            .resume(&tpl)
            .map_err(ctx("resuming partitions"))
    }

    /// Whether librdkafka considers our assignment lost (e.g. the session timed out
    /// while the process was paused). Committing then would race the new owner.
    pub fn assignment_lost(&self) -> bool {
        self.consumer.assignment_lost()
    }
}

// ---------------------------------------------------------------------------
// The transactional producer

/// A transaction call failed; what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// Abort the transaction, rewind to the committed offsets, carry on.
    #[error("transaction must be aborted: {0}")]
    Abortable(String),
    /// Another process initialised our transactional.id: we are a zombie.
    #[error("fenced: {0}")]
    Fenced(String),
    /// Nothing sensible can continue.
    #[error("fatal transaction error: {0}")]
    Fatal(String),
}

fn classify(what: &str, e: KafkaError) -> TxnError {
    let msg = format!("{what}: {e}");
    if let KafkaError::Transaction(rd) = &e {
        if is_fenced_code(rd.code()) {
            return TxnError::Fenced(msg);
        }
        if rd.is_fatal() {
            return TxnError::Fatal(msg);
        }
        if rd.txn_requires_abort() {
            return TxnError::Abortable(msg);
        }
        // Neither fatal nor abort-requiring: a timeout or a state error. Aborting
        // is always safe for an open transaction.
        return TxnError::Abortable(msg);
    }
    match e.rdkafka_error_code() {
        Some(code) if is_fenced_code(code) => TxnError::Fenced(msg),
        _ => TxnError::Abortable(msg),
    }
}

fn is_retriable(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(rd) if rd.is_retriable())
}

/// Counts failed deliveries. A failed delivery makes the transaction's commit
/// fail, so this is only for logging, and it logs the 1st, 2nd, 4th, 8th...
/// failure: an abort purges thousands of queued records at once.
#[derive(Debug, Default)]
pub struct DeliveryContext {
    failures: AtomicU64,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(topic = m.topic(), partition = m.partition(), error = %e, failures = n, "delivery failed");
            }
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
            Destination::Insights => &self.insights,
        }
    }
}

/// `send` could not enqueue the record.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("producer queue is full")]
    QueueFull(OutputRecord),
    #[error("producing to {topic}: {source}")]
    Failed {
        topic: String,
        #[source]
        source: KafkaError,
    },
}

pub struct TxnProducer {
    producer: ThreadedProducer<DeliveryContext>,
    topics: OutputTopics,
    input_topic: String,
}

impl std::fmt::Debug for TxnProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnProducer")
            .field("topics", &self.topics)
            .finish()
    }
}

fn owned_headers(hs: &[(String, Vec<u8>)]) -> OwnedHeaders {
    hs.iter()
        .fold(OwnedHeaders::new_with_capacity(hs.len()), |acc, (k, v)| {
            acc.insert(Header {
                key: k,
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
    ) -> Result<Self> {
        let mut config = conn.config(&[
            ("linger.ms", "5"),
            // DLQ entries carry the original bytes, which may be large.
            ("message.max.bytes", "2097152"),
            ("transaction.timeout.ms", "60000"),
        ]);
        config
            .set("transactional.id", transactional_id)
            .set("enable.idempotence", "true");
        let producer = config
            .create_with_context(DeliveryContext::default())
            .map_err(ctx("creating the transactional producer"))?;
        Ok(TxnProducer {
            producer,
            topics,
            input_topic: input_topic.to_string(),
        })
    }

    /// Registers our transactional.id, fencing any older producer with it and
    /// aborting the transaction it left open.
    pub fn init(&self) -> Result<(), TxnError> {
        self.producer
            .init_transactions(CALL_TIMEOUT)
            .map_err(|e| self.classify("init_transactions", e))
    }

    pub fn begin(&self) -> Result<(), TxnError> {
        self.producer
            .begin_transaction()
            .map_err(|e| self.classify("begin_transaction", e))
    }

    /// Like [`classify`], but a producer in a fatal state reports the error that
    /// put it there (later calls only say "fatal error").
    fn classify(&self, what: &str, e: KafkaError) -> TxnError {
        match self.producer.client().fatal_error() {
            Some((code, reason)) if is_fenced_code(code) => {
                TxnError::Fenced(format!("{what}: {reason}"))
            }
            Some((_, reason)) => TxnError::Fatal(format!("{what}: {reason}")),
            None => classify(what, e),
        }
    }

    /// Enqueues a record of the open transaction (non-blocking).
    pub fn send(&self, rec: OutputRecord) -> Result<(), SendError> {
        let topic = self.topics.of(rec.destination);
        let mut br: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .payload(rec.value.as_slice())
            .headers(owned_headers(&rec.headers));
        if let Some(k) = &rec.key {
            br = br.key(k.as_slice());
        }
        match self.producer.send(br) {
            Ok(()) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(SendError::QueueFull(rec))
            }
            Err((source, _)) => Err(SendError::Failed {
                topic: topic.to_string(),
                source,
            }),
        }
    }

    /// Adds the consumer's next offsets (exclusive: last processed + 1) with its
    /// group metadata to the transaction, then commits it.
    pub fn commit(&self, consumer: &GroupConsumer, offsets: &[(i32, i64)]) -> Result<(), TxnError> {
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
            self.retry("send_offsets_to_transaction", || {
                self.producer
                    .send_offsets_to_transaction(&tpl, &meta, CALL_TIMEOUT)
            })?;
        }
        self.retry("commit_transaction", || {
            self.producer.commit_transaction(CALL_TIMEOUT)
        })
    }

    pub fn abort(&self) -> Result<(), TxnError> {
        self.retry("abort_transaction", || {
            self.producer.abort_transaction(CALL_TIMEOUT)
        })
    }

    /// librdkafka asks for retriable transaction calls to be repeated as they are.
    fn retry(
        &self,
        what: &str,
        mut call: impl FnMut() -> Result<(), KafkaError>,
    ) -> Result<(), TxnError> {
        let mut attempt = 0;
        loop {
            match call() {
                Ok(()) => return Ok(()),
                Err(e) if is_retriable(&e) && attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "{what} is retriable; retrying");
                    std::thread::sleep(Duration::from_millis(100 * attempt));
                }
                Err(e) => return Err(self.classify(what, e)),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Plain producer (generator, benchmark baseline)

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
        let mut config = conn.config(&[("linger.ms", "5"), ("message.max.bytes", "2097152")]);
        config.set("enable.idempotence", "true");
        Ok(PlainProducer {
            producer: config
                .create_with_context(DeliveryContext::default())
                .map_err(ctx("creating the producer"))?,
        })
    }

    /// Enqueues a record, waiting while the local queue is full.
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(String, Vec<u8>)],
    ) -> Result<()> {
        loop {
            let mut br: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
            if let Some(k) = key {
                br = br.key(k);
            }
            if let Some(v) = value {
                br = br.payload(v);
            }
            if !headers.is_empty() {
                br = br.headers(owned_headers(headers));
            }
            match self.producer.send(br) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(ctx(format!("producing to {topic}"))(e)),
            }
        }
    }

    pub fn flush(&self) -> Result<()> {
        self.producer
            .flush(Duration::from_secs(120))
            .map_err(ctx("flushing the producer"))
    }
}

// ---------------------------------------------------------------------------
// Bounded readers (verify, insights, state restore, benchmark)

/// A record read by a [`TopicReader`], with its headers.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub record: InputRecord,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ReadRecord {
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Offset(i64),
}

/// Client context of readers: end-of-partition is how they know they are done,
/// not an error worth logging.
#[derive(Debug, Default)]
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::error!(error = %error, reason, "reader error");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// A `read_committed` reader outside any group (assign, never commit).
pub struct TopicReader {
    consumer: BaseConsumer<ReaderContext>,
    topic: String,
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicReader")
            .field("topic", &self.topic)
            .finish()
    }
}

impl TopicReader {
    pub fn new(conn: &Connection, topic: &str) -> Result<Self> {
        let mut config = conn.consumer_config(&[("fetch.wait.max.ms", "50")]);
        config
            // librdkafka wants a group.id even for assign-only use; nothing is committed.
            .set(
                "group.id",
                format!("tally-reader-{}", uuid::Uuid::new_v4().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true");
        Ok(TopicReader {
            consumer: config
                .create_with_context(ReaderContext)
                .map_err(ctx("creating a reader"))?,
            topic: topic.to_string(),
        })
    }

    /// The topic's partitions (error if the topic does not exist).
    pub fn partitions(&self) -> Result<Vec<i32>> {
        partitions(&self.consumer, &self.topic)
    }

    pub fn watermarks(&self, partition: i32) -> Result<(i64, i64)> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, CALL_TIMEOUT)
            .map_err(ctx(format!(
                "reading watermarks of {}/{partition}",
                self.topic
            )))
    }

    /// Reads each listed partition from its start up to `until` (exclusive), or to
    /// its end (the last stable offset, for this read_committed reader) when
    /// `until` is `None`. Calls `f` for each record in partition order.
    pub fn read(
        &self,
        ranges: &[(i32, StartAt, Option<i64>)],
        mut f: impl FnMut(ReadRecord),
    ) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        let mut open: HashMap<i32, Option<i64>> = HashMap::new();
        for (p, from, until) in ranges {
            let start = match from {
                StartAt::Earliest => Offset::Beginning,
                StartAt::Offset(o) => Offset::Offset(*o),
            };
            if let (StartAt::Offset(o), Some(u)) = (from, until) {
                if o >= u {
                    continue;
                }
            }
            tpl.add_partition_offset(&self.topic, *p, start)
                .expect("valid offset");
            open.insert(*p, *until);
        }
        if open.is_empty() {
            return Ok(());
        }
        self.consumer
            .assign(&tpl)
            .map_err(ctx(format!("assigning {}", self.topic)))?;
        // An empty partition (or one starting at `until`) reports EOF at once.
        let mut idle_since = Instant::now();
        while !open.is_empty() {
            match self.consumer.poll(Duration::from_millis(200)) {
                None => {
                    if idle_since.elapsed() > Duration::from_secs(120) {
                        return Err(Error::Other(format!(
                            "reading {}: no progress for 120 s on partitions {:?}",
                            self.topic,
                            open.keys().collect::<Vec<_>>()
                        )));
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some(Some(until)) = open.get(&p) {
                        // EOF below `until` means the records in between are not
                        // readable (deleted by retention, or not yet stable).
                        let pos = self.position(p)?;
                        if pos < *until {
                            idle_since = Instant::now();
                            continue;
                        }
                    }
                    open.remove(&p);
                }
                Some(Err(e)) => return Err(ctx(format!("reading {}", self.topic))(e)),
                Some(Ok(m)) => {
                    idle_since = Instant::now();
                    let p = m.partition();
                    let Some(until) = open.get(&p).copied() else {
                        continue;
                    };
                    if until.is_some_and(|u| m.offset() >= u) {
                        open.remove(&p);
                        continue;
                    }
                    f(ReadRecord {
                        record: InputRecord::from(&m),
                        headers: headers_of(&m),
                    });
                    if until.is_some_and(|u| m.offset() + 1 >= u) {
                        open.remove(&p);
                    }
                }
            }
        }
        Ok(())
    }

    fn position(&self, partition: i32) -> Result<i64> {
        let pos = self.consumer.position().map_err(ctx("reading position"))?;
        Ok(pos
            .find_partition(&self.topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .unwrap_or(0))
    }
}

fn partitions<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str) -> Result<Vec<i32>> {
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

// ---------------------------------------------------------------------------
// Administration

/// A topic to create.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    pub config: Vec<(String, String)>,
}

/// The four topics of a pipeline. The input, output and DLQ accept records up to
/// 2 MiB (a DLQ entry carries the original bytes, malformed 1 MiB payloads
/// included); the insights topic is compacted (latest snapshot per partition).
pub fn pipeline_topic_specs(
    input: &str,
    outputs: &OutputTopics,
    partitions: i32,
    replication: i32,
) -> Vec<TopicSpec> {
    let spec = |name: &str, compact: bool| {
        let mut config = vec![("max.message.bytes".to_string(), "2097152".to_string())];
        if compact {
            config.push(("cleanup.policy".to_string(), "compact".to_string()));
        }
        TopicSpec {
            name: name.to_string(),
            partitions,
            replication,
            config,
        }
    };
    vec![
        spec(input, false),
        spec(&outputs.processed, false),
        spec(&outputs.dead_letter, false),
        spec(&outputs.insights, true),
    ]
}

/// Creates the topics; ones that already exist are left as they are.
pub async fn create_topics(conn: &Connection, specs: &[TopicSpec]) -> Result<Vec<(String, bool)>> {
    let admin: AdminClient<DefaultClientContext> = conn
        .config(&[])
        .create()
        .map_err(ctx("creating admin client"))?;
    let topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            s.config.iter().fold(
                NewTopic::new(
                    &s.name,
                    s.partitions,
                    TopicReplication::Fixed(s.replication),
                ),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let results = admin
        .create_topics(
            topics.iter(),
            &AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT)),
        )
        .await
        .map_err(ctx("creating topics"))?;
    let mut out = Vec::new();
    for r in results {
        match r {
            Ok(name) => out.push((name, true)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => out.push((name, false)),
            Err((name, code)) => {
                return Err(Error::Other(format!("creating topic {name}: {code}")));
            }
        }
    }
    // Wait for metadata so the topics are usable when we return.
    let probe: BaseConsumer = conn
        .config(&[])
        .create()
        .map_err(ctx("creating metadata client"))?;
    for s in specs {
        let deadline = Instant::now() + CALL_TIMEOUT;
        while partitions(&probe, &s.name).map(|p| p.len()).unwrap_or(0) < s.partitions as usize {
            if Instant::now() > deadline {
                return Err(Error::Other(format!(
                    "topic {} did not appear in metadata",
                    s.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(out)
}

/// Group administration: state, committed offsets and offset resets.
pub struct GroupAdmin {
    consumer: BaseConsumer,
    group: String,
}

impl std::fmt::Debug for GroupAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupAdmin")
            .field("group", &self.group)
            .finish()
    }
}

/// A group as the coordinator describes it.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub state: String,
    pub members: Vec<String>,
}

impl GroupAdmin {
    pub fn new(conn: &Connection, group: &str) -> Result<Self> {
        let mut config = conn.config(&[]);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false");
        Ok(GroupAdmin {
            consumer: config
                .create()
                .map_err(ctx("creating group admin client"))?,
            group: group.to_string(),
        })
    }

    pub fn describe(&self) -> Result<GroupDescription> {
        let list = self
            .consumer
            .fetch_group_list(Some(&self.group), CALL_TIMEOUT)
            .map_err(ctx(format!("describing group {}", self.group)))?;
        let g = list.groups().iter().find(|g| g.name() == self.group);
        Ok(GroupDescription {
            state: g
                .map(|g| g.state().to_string())
                .unwrap_or_else(|| "Dead".into()),
            members: g
                .map(|g| {
                    g.members()
                        .iter()
                        .map(|m| m.client_id().to_string())
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    pub fn partitions(&self, topic: &str) -> Result<Vec<i32>> {
        partitions(&self.consumer, topic)
    }

    /// Committed offsets of `topic` by partition (absent: no commit).
    pub fn committed(&self, topic: &str) -> Result<BTreeMap<i32, i64>> {
        let mut tpl = TopicPartitionList::new();
        for p in self.partitions(topic)? {
            tpl.add_partition(topic, p);
        }
        let got = self
            .consumer
            .committed_offsets(tpl, CALL_TIMEOUT)
            .map_err(ctx(format!(
                "reading committed offsets of group {}",
                self.group
            )))?;
        Ok(got
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    }

    /// First offset of each partition whose record timestamp is at or after `ms`
    /// (the high watermark when there is none).
    pub fn offsets_for_time(&self, topic: &str, ms: i64) -> Result<BTreeMap<i32, i64>> {
        let mut tpl = TopicPartitionList::new();
        for p in self.partitions(topic)? {
            tpl.add_partition_offset(topic, p, Offset::Offset(ms))
                .expect("valid offset");
        }
        let got = self
            .consumer
            .offsets_for_times(tpl, CALL_TIMEOUT)
            .map_err(ctx("looking up offsets for a time"))?;
        let mut out = BTreeMap::new();
        for e in got.elements() {
            let o = match e.offset() {
                Offset::Offset(o) => o,
                _ => self.watermarks(topic, e.partition())?.1,
            };
            out.insert(e.partition(), o);
        }
        Ok(out)
    }

    pub fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64)> {
        self.consumer
            .fetch_watermarks(topic, partition, CALL_TIMEOUT)
            .map_err(ctx(format!("reading watermarks of {topic}/{partition}")))
    }

    /// Overwrites the group's committed offsets (the group must have no members).
    pub fn commit(&self, topic: &str, offsets: &BTreeMap<i32, i64>) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
                .expect("valid offset");
        }
        self.consumer
            .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
            .map_err(ctx(format!("committing offsets for group {}", self.group)))
    }
}

/// Benchmark baseline: a plain consumer-to-producer copy without transactions.
/// At least once: offsets are committed only after the records before them are
/// flushed, so a crash re-copies rather than loses.
pub fn copy_at_least_once(
    conn: &Connection,
    group: &str,
    input: &str,
    output: &str,
    count: u64,
) -> Result<u64> {
    let mut config = conn.consumer_config(&[
        ("auto.offset.reset", "earliest"),
        ("fetch.wait.max.ms", "100"),
    ]);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().map_err(ctx("creating the copy consumer"))?;
    consumer.subscribe(&[input]).map_err(ctx("subscribing"))?;
    let producer = PlainProducer::new(conn)?;
    let mut n = 0u64;
    let mut since_commit = 0u64;
    while n < count {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                producer.send(output, m.key(), m.payload(), &[])?;
                n += 1;
                since_commit += 1;
            }
            Some(Err(e)) => tracing::warn!(error = %e, "copy consumer error"),
            None => {}
        }
        if since_commit >= 10_000 || (n >= count && since_commit > 0) {
            producer.flush()?;
            consumer
                .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
                .map_err(ctx("committing copy offsets"))?;
            since_commit = 0;
        }
    }
    Ok(n)
}
