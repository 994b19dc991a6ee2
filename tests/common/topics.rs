//! Topics and their records: creating them, producing to them and reading
//! them back as a `read_committed` reader.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use super::{TIMEOUT, client_config, unique};

/// Whether the cluster has the topic, asked by a consumer (which never makes the
/// broker create the topic it asks about). A topic still being created (no
/// leader yet, say) counts as existing: only "unknown topic" or no partitions
/// at all mean it does not.
pub fn topic_exists(name: &str) -> bool {
    let consumer: BaseConsumer = client_config().create().expect("consumer");
    let md = consumer
        .fetch_metadata(Some(name), Duration::from_secs(30))
        .expect("metadata");
    md.topics().first().is_some_and(|t| match t.error() {
        Some(e) => RDKafkaErrorCode::from(e) != RDKafkaErrorCode::UnknownTopicOrPartition,
        None => !t.partitions().is_empty(),
    })
}

pub fn create_topic(name: &str, partitions: i32) {
    create_topic_with(name, partitions, &[]);
}

/// Like [`create_topic`], with the topic's `max.message.bytes`.
pub fn create_topic_with_limit(name: &str, partitions: i32, max_message_bytes: usize) {
    let limit = max_message_bytes.to_string();
    create_topic_with(name, partitions, &[("max.message.bytes", &limit)]);
}

/// Creates a topic with extra topic configuration (e.g. `cleanup.policy`);
/// `max.message.bytes` is 2 MiB unless the configuration names it.
pub fn create_topic_with(name: &str, partitions: i32, config: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    if !config.iter().any(|(k, _)| *k == "max.message.bytes") {
        topic = topic.set("max.message.bytes", "2097152");
    }
    let topic = config.iter().fold(topic, |t, (k, v)| t.set(k, v));
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
        // Large enough for the oversized records of tests/dlq.rs (topics that allow 8 MiB).
        .set("message.max.bytes", "10000000")
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

/// Topic and group names of one test's pipeline.
#[derive(Debug, Clone)]
pub struct Names {
    pub input: String,
    pub output: String,
    pub dlq: String,
    pub insights: String,
    pub group: String,
}

impl Names {
    /// Fresh names, with all four topics created (`partitions` each).
    pub fn create(test: &str, partitions: i32) -> Names {
        Names::create_with_input_limit(test, partitions, 2_097_152)
    }

    /// Like [`Names::create`], with the input topic's `max.message.bytes`.
    pub fn create_with_input_limit(
        test: &str,
        partitions: i32,
        input_max_message_bytes: usize,
    ) -> Names {
        let n = Names {
            input: unique(&format!("{test}-in")),
            output: unique(&format!("{test}-out")),
            dlq: unique(&format!("{test}-dlq")),
            insights: unique(&format!("{test}-ins")),
            group: unique(&format!("{test}-group")),
        };
        create_topic_with_limit(&n.input, partitions, input_max_message_bytes);
        for t in [&n.output, &n.dlq] {
            create_topic(t, partitions);
        }
        // Co-partitioned and compacted: `tally run` refuses anything else.
        create_topic_with(&n.insights, partitions, &[("cleanup.policy", "compact")]);
        n
    }

    /// The flags naming these topics, as every tally subcommand but `insights` takes them.
    pub fn topic_args(&self) -> Vec<String> {
        [
            ("--input-topic", &self.input),
            ("--output-topic", &self.output),
            ("--dlq-topic", &self.dlq),
            ("--insights-topic", &self.insights),
        ]
        .iter()
        .flat_map(|(f, v)| [f.to_string(), v.to_string()])
        .collect()
    }
}

/// Generated input with what the test knows about it, independently of tally's
/// processing: the generator's own labels of what it made malformed, and a recount
/// of the valid records.
pub type Input = tally::generate::Recount;

/// Produces `count` generated events (seeded) to `topic` and recounts them.
pub fn produce_generated(topic: &str, count: u64, seed: u64, invalid_ratio: f64) -> Input {
    let start = chrono::Utc::now().timestamp() - 3600;
    let mut g = tally::generate::Generator::new(seed, start, invalid_ratio, false);
    let mut input = Input::default();
    let mut batch = Vec::new();
    for _ in 0..count {
        let r = g.next_record();
        input.add(&r);
        batch.push((Some(r.key), r.value));
    }
    produce(topic, None, &batch);
    input
}

/// Deletes the records of `topic` partition `partition` below `offset`, as
/// retention does.
pub fn delete_records_below(topic: &str, partition: i32, offset: i64) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap();
    let res = rt
        .block_on(admin.delete_records(&tpl, &AdminOptions::new().operation_timeout(Some(TIMEOUT))))
        .expect("delete_records request");
    for e in res.elements() {
        e.error()
            .unwrap_or_else(|err| panic!("delete records of {topic}/{partition}: {err}"));
    }
}

/// `(low, high)` watermarks of a partition.
pub fn watermarks(topic: &str, partition: i32) -> (i64, i64) {
    let consumer: BaseConsumer = client_config().create().unwrap();
    consumer
        .fetch_watermarks(topic, partition, TIMEOUT)
        .expect("watermarks")
}

/// Grows `topic` to `total` partitions, as `kafka-topics --alter --partitions`.
pub fn add_partitions(topic: &str, total: usize) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt
        .block_on(admin.create_partitions(
            [&rdkafka::admin::NewPartitions::new(topic, total)],
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        ))
        .expect("create_partitions request");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("add partitions to {t}: {e}"));
    }
}
