//! Broker test harness shared by the tests in `tests/`.
//!
//! Deliberately independent of tally's own Kafka code: it talks to the broker with
//! plain rdkafka so a bug in tally cannot hide itself in the measurements.
//! Every test uses its own random topic, group and transactional.id names.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The broker under test: `KAFKA_BOOTSTRAP`, set by `scripts/test.sh` (which starts
/// the local test broker) or by the caller (a real Kafka).
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
        panic!("KAFKA_BOOTSTRAP is not set: run the broker tests through ./scripts/test.sh, which starts a local broker")
    })
}

/// A name nobody else uses: `<prefix>-<random>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

pub fn client_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap());
    c
}

pub fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1))
        .set("max.message.bytes", "2097152");
    let res = rt
        .block_on(admin.create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        ))
        .expect("create_topics request");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    // Wait until metadata shows every partition, so producers don't race creation.
    let consumer: BaseConsumer = client_config().create().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(md) = consumer.fetch_metadata(Some(name), Duration::from_secs(5)) {
            if md
                .topics()
                .first()
                .is_some_and(|t| t.error().is_none() && t.partitions().len() == partitions as usize)
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "topic {name} did not appear in metadata"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn producer() -> ThreadedProducer<DefaultProducerContext> {
    client_config()
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "2000000")
        .create()
        .expect("producer")
}

/// A record to produce: key and value (`None` value = tombstone).
pub type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Produces `(key, value)` records (value `None` = tombstone) to `partition`, or by key hash.
pub fn produce(topic: &str, partition: Option<i32>, records: &[KeyValue]) {
    let p = producer();
    for (k, v) in records {
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(k) = k {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = v {
            rec = rec.payload(v.as_slice());
        }
        if let Some(part) = partition {
            rec = rec.partition(part);
        }
        let mut rec = rec;
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("produce to {topic}: {e}"),
            }
        }
    }
    p.flush(TIMEOUT).expect("flush");
}

/// One record as a `read_committed` reader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

impl Record {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().expect("value")).expect("json value")
    }
}

/// Reads the whole topic as a `read_committed` reader, up to the end each partition
/// had when reading started (for a read_committed reader the end is the last stable
/// offset: the read stops early rather than wait out an open transaction).
pub fn read_all(topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = client_config()
        .set("group.id", unique("harness-reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("reader");
    let md = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .expect("metadata");
    let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut pending: std::collections::HashSet<i32> = partitions.into_iter().collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "reading {topic} did not reach the end of {pending:?}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
    }
    out
}

pub fn count_committed(topic: &str) -> usize {
    read_all(topic).len()
}

/// The group's committed offsets for `topic`, by partition (partitions without a
/// commit are absent).
pub fn committed_offsets(group: &str, topic: &str) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offsets reader");
    let md = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
    }
    let committed = consumer
        .committed_offsets(tpl, TIMEOUT)
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Path of the `tally` binary built for these tests.
pub fn tally_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_tally"))
}
