//! Proves the harness and the broker honour what tally's exactly-once protocol
//! relies on: committed records are visible to read_committed readers, aborted
//! ones are not, and offsets sent in an aborted transaction are not committed.

mod common;

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const COMMITTED: usize = 25;
const ABORTED: usize = 13;

#[test]
fn committed_records_visible_aborted_records_and_offsets_are_not() {
    let topic = unique("txn-check");
    let source = unique("txn-source");
    let group = unique("txn-group");
    create_topic(&topic, 3);
    create_topic(&source, 1);

    let producer: ThreadedProducer<DefaultProducerContext> = client_config()
        .set("transactional.id", unique("txn-id"))
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init_transactions");
    // A consumer of `group` only to obtain its group metadata for send_offsets.
    let consumer: BaseConsumer = client_config()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let meta = consumer.group_metadata().expect("group metadata");

    let send = |n: usize, tag: &str| {
        for i in 0..n {
            let key = format!("{tag}-{i}");
            producer
                .send(BaseRecord::to(&topic).key(&key).payload(&key))
                .map_err(|(e, _)| e)
                .expect("send");
        }
    };
    let offsets = |o: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&source, 0, Offset::Offset(o))
            .unwrap();
        tpl
    };

    producer.begin_transaction().unwrap();
    send(COMMITTED, "committed");
    producer
        .send_offsets_to_transaction(&offsets(5), &meta, TIMEOUT)
        .unwrap();
    producer.commit_transaction(TIMEOUT).expect("commit");

    producer.begin_transaction().unwrap();
    send(ABORTED, "aborted");
    producer
        .send_offsets_to_transaction(&offsets(9), &meta, TIMEOUT)
        .unwrap();
    producer.flush(TIMEOUT).unwrap();
    producer.abort_transaction(TIMEOUT).expect("abort");

    let records = read_all(&topic);
    assert_eq!(records.len(), COMMITTED);
    assert!(
        records
            .iter()
            .all(|r| r.key.as_deref().unwrap().starts_with(b"committed-"))
    );
    assert_eq!(committed_offsets(&group, &source), [(0, 5)].into());
}
