//! `tally verify` tells the truth: partitions the group never committed are
//! checked too (they must have no output).

mod common;

use std::time::Duration;

use common::*;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};

const LONG: Duration = Duration::from_secs(180);

#[test]
fn output_of_a_partition_the_group_never_committed_is_a_violation() {
    let names = Names::create("neverc", 2);
    // Input only in partition 1: the group commits partition 1, never partition 0.
    let records: Vec<KeyValue> = (0..50)
        .map(|i| {
            let v = format!(
                r#"{{"user_id":"u{i}","app_version":"2.4.0","device_type":"iOS","ip":"10.0.0.1","locale":"en_US","device_id":"d","timestamp":{}}}"#,
                chrono::Utc::now().timestamp()
            );
            (Some(format!("k{i}").into_bytes()), Some(v.into_bytes()))
        })
        .collect();
    produce(&names.input, Some(1), &records);
    let dir = tempfile::tempdir().unwrap();
    let mut run = TallyProc::builder(&names, "neverc-1", &dir.path().join("s")).start();
    wait_for_committed(&names.group, &names.input, 50, LONG, &mut [&mut run]);
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    assert_verified(&names, 50, 0);

    // Outputs claiming to come from partition 0, which the group never committed:
    // one naming it in headers (as DLQ entries do), one in its payload (as
    // processed records do).
    let p = producer();
    let headers = [
        ("tally.source.topic", names.input.as_str()),
        ("tally.source.partition", "0"),
        ("tally.source.offset", "0"),
    ]
    .iter()
    .fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        })
    });
    p.send(
        BaseRecord::<[u8], [u8]>::to(&names.output)
            .payload(b"{}".as_slice())
            .headers(headers),
    )
    .map_err(|(e, _)| e)
    .unwrap();
    let payload = format!(
        r#"{{"processed":true,"source_offset":0,"source_partition":0,"source_topic":"{}"}}"#,
        names.input
    );
    p.send(BaseRecord::<[u8], [u8]>::to(&names.output).payload(payload.as_bytes()))
        .map_err(|(e, _)| e)
        .unwrap();
    p.flush(TIMEOUT).unwrap();
    let (code, s) = verify(&names);
    assert_eq!(code, 4, "{s:#}");
    assert_eq!(s["stray"], 2, "{s:#}");
}

/// A bootstrap server that refuses connections is a transient client error
/// (librdkafka goes on with the others), not the end of a read: `verify` and
/// `insights` read through the other server.
#[test]
fn readers_ride_out_a_dead_bootstrap_server() {
    let names = Names::create("deadboot", 2);
    let input = produce_generated(&names.input, 2_000, 31, 0.05);
    let dir = tempfile::tempdir().unwrap();
    let mut run = TallyProc::builder(&names, "deadboot-1", &dir.path().join("s")).start();
    wait_for_committed(&names.group, &names.input, 2_000, LONG, &mut [&mut run]);
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    // Port 1 on loopback: nothing listens there, every connection is refused.
    let servers = format!("127.0.0.1:1,{}", bootstrap());
    let mut args = vec!["verify", "--complete", "--json", "--group-id", &names.group];
    let topic_args = names.topic_args();
    args.extend(topic_args.iter().map(String::as_str));
    let (code, out, err) = tally_on(&servers, &args);
    assert_eq!(code, 0, "{out}{err}");
    let s: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert_eq!(s["processed"], input.valid(), "{s:#}");
    assert_eq!(s["dead_lettered"], input.malformed, "{s:#}");
    let (code, out, err) = tally_on(
        &servers,
        &[
            "insights",
            "--json",
            "--insights-topic",
            &names.insights,
            "--input-topic",
            &names.input,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert_eq!(v["aggregate"]["processed"], input.valid(), "{v:#}");
}

// Planted faults. A stand-in for tally writes, for each input record, the output
// the pipeline's own decision (`event::process`) gives and commits the group's
// offsets to the end of the input, with one fault planted; `tally verify
// --complete` must fail with the right violation kind and count.

use std::collections::BTreeMap;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tally::event::{Filters, Limits, OutputLimits, ProcessConfig, process};
use tally::model::{Destination, InputRecord, OutputRecord};

/// The input as a `read_committed` reader sees it, with record timestamps.
fn read_input(topic: &str) -> Vec<InputRecord> {
    let consumer: BaseConsumer = client_config()
        .set("group.id", unique("planted-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let md = consumer.fetch_metadata(Some(topic), TIMEOUT).unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut open = std::collections::HashSet::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
        open.insert(p.id());
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    while !open.is_empty() {
        match consumer.poll(TIMEOUT) {
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Ok(m)) => out.push(InputRecord {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                timestamp_ms: m.timestamp().to_millis(),
            }),
            other => panic!("reading {topic}: {other:?}"),
        }
    }
    out
}

/// The configuration `tally verify` resolves for topics made by `Names::create`.
fn config(names: &Names) -> ProcessConfig {
    ProcessConfig {
        input_topic: names.input.clone(),
        limits: Limits::default(),
        filters: Filters::default(),
        output_limits: OutputLimits {
            processed_max_bytes: 2_097_152,
            dlq_max_bytes: 2_097_152,
        },
    }
}

/// Generated input (a fifth malformed) in two partitions, its records, and the
/// outputs the pipeline's decision gives for them, in input order.
fn stand_in(prefix: &str) -> (Names, Vec<InputRecord>, Vec<OutputRecord>) {
    let names = Names::create(prefix, 2);
    let input = produce_generated(&names.input, 200, 27, 0.2);
    assert!(input.malformed > 10, "{input:?}");
    let records = read_input(&names.input);
    assert_eq!(records.len(), 200);
    let cfg = config(&names);
    let outputs = records
        .iter()
        .filter_map(|r| process(r, &cfg).output().cloned())
        .collect();
    (names, records, outputs)
}

/// Writes `outputs` (each to its destination's topic) and commits the group's
/// offsets to the end of the input, as a drained tally would have.
fn write(names: &Names, records: &[InputRecord], outputs: &[OutputRecord]) {
    let p = producer();
    for o in outputs {
        let topic = match o.destination {
            Destination::Processed => &names.output,
            _ => &names.dlq,
        };
        let headers = o.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            })
        });
        let mut rec = BaseRecord::<[u8], [u8]>::to(topic)
            .payload(o.value.as_slice())
            .headers(headers);
        if let Some(k) = &o.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(t) = o.timestamp_ms {
            rec = rec.timestamp(t);
        }
        p.send(rec).map_err(|(e, _)| e).unwrap();
    }
    p.flush(TIMEOUT).unwrap();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for r in records {
        ends.insert(r.partition, r.offset + 1);
    }
    let group: BaseConsumer = client_config()
        .set("group.id", &names.group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (p, o) in ends {
        tpl.add_partition_offset(&names.input, p, Offset::Offset(o))
            .unwrap();
    }
    group.commit(&tpl, CommitMode::Sync).unwrap();
}

/// `tally verify --complete --json`: exit code and summary.
fn verify_complete(names: &Names) -> (i32, serde_json::Value) {
    verify_with(names, &["--complete"])
}

/// Every count of `s` that is a violation or a reason to fail `--complete` is 0,
/// except those in `want`, which have exactly these values.
fn assert_counts(s: &serde_json::Value, want: &[(&str, u64)]) {
    for k in [
        "missing",
        "duplicates",
        "mismatched",
        "stray",
        "wrong_destination",
        "wrong_reason",
        "impossible_source",
        "beyond_committed",
        "unconsumed",
        "unread_outputs",
        "runtime_dead_letters",
        "below_log_start",
    ] {
        let n = want.iter().find(|(w, _)| *w == k).map_or(0, |(_, n)| *n);
        assert_eq!(s[k], n, "{k}: {s:#}");
    }
}

fn header_mut<'a>(o: &'a mut OutputRecord, name: &str) -> &'a mut Vec<u8> {
    &mut o.headers.iter_mut().find(|(k, _)| *k == name).unwrap().1
}

fn first(outputs: &[OutputRecord], dest: Destination) -> usize {
    outputs.iter().position(|o| o.destination == dest).unwrap()
}

#[test]
fn the_stand_in_without_a_fault_passes() {
    let (names, records, outputs) = stand_in("planted-none");
    write(&names, &records, &outputs);
    let (code, s) = verify_complete(&names);
    assert_eq!(code, 0, "{s:#}");
    assert_counts(&s, &[]);
    let dead = outputs
        .iter()
        .filter(|o| o.destination == Destination::DeadLetter)
        .count() as u64;
    assert_eq!(s["processed"], 200 - dead, "{s:#}");
    assert_eq!(s["dead_lettered"], dead, "{s:#}");
}

#[test]
fn planted_duplicate_is_caught() {
    let (names, records, mut outputs) = stand_in("planted-dup");
    outputs.push(outputs[first(&outputs, Destination::Processed)].clone());
    write(&names, &records, &outputs);
    let (code, s) = verify_complete(&names);
    assert_eq!(code, 4, "{s:#}");
    assert_counts(&s, &[("duplicates", 1)]);
}

#[test]
fn planted_loss_is_caught() {
    let (names, records, mut outputs) = stand_in("planted-loss");
    outputs.remove(first(&outputs, Destination::DeadLetter));
    write(&names, &records, &outputs);
    let (code, s) = verify_complete(&names);
    assert_eq!(code, 4, "{s:#}");
    assert_counts(&s, &[("missing", 1)]);
}

#[test]
fn planted_records_in_the_wrong_topic_are_caught() {
    let (names, records, mut outputs) = stand_in("planted-topic");
    // A processed record in the DLQ, naming its source as DLQ entries do, and a
    // DLQ entry in the output topic.
    let i = first(&outputs, Destination::Processed);
    let j = first(&outputs, Destination::DeadLetter);
    let rec = &records[records
        .iter()
        .position(|r| {
            process(r, &config(&names)).output().map(|o| &o.value) == Some(&outputs[i].value)
        })
        .unwrap()];
    let moved = &mut outputs[i];
    moved.destination = Destination::DeadLetter;
    moved.headers = vec![
        ("tally.reason", b"invalid_json".to_vec()),
        ("tally.message", b"m".to_vec()),
        ("tally.source.topic", names.input.clone().into_bytes()),
        (
            "tally.source.partition",
            rec.partition.to_string().into_bytes(),
        ),
        ("tally.source.offset", rec.offset.to_string().into_bytes()),
    ];
    outputs[j].destination = Destination::Processed;
    write(&names, &records, &outputs);
    let (code, s) = verify_complete(&names);
    assert_eq!(code, 4, "{s:#}");
    assert_counts(&s, &[("wrong_destination", 2)]);
}

#[test]
fn planted_wrong_dlq_reason_is_caught() {
    let (names, records, mut outputs) = stand_in("planted-reason");
    let i = first(&outputs, Destination::DeadLetter);
    let reason = header_mut(&mut outputs[i], "tally.reason");
    *reason = if reason.as_slice() == b"bad_ip" {
        b"bad_app_version".to_vec()
    } else {
        b"bad_ip".to_vec()
    };
    write(&names, &records, &outputs);
    let (code, s) = verify_complete(&names);
    assert_eq!(code, 4, "{s:#}");
    assert_counts(&s, &[("wrong_reason", 1)]);
}

#[test]
fn planted_output_beyond_the_committed_offset_after_a_drain_is_caught() {
    let (names, records, mut outputs) = stand_in("planted-beyond");
    // The output of a record one past the end of partition 0: after the drain
    // the committed offset is the end, so it is past both.
    let last = records.iter().rev().find(|r| r.partition == 0).unwrap();
    let mut ghost = last.clone();
    ghost.offset += 1;
    let out = process(&ghost, &config(&names)).output().cloned().unwrap();
    outputs.push(out);
    write(&names, &records, &outputs);
    let (code, s) = verify_complete(&names);
    assert_eq!(code, 4, "{s:#}");
    assert_counts(&s, &[("impossible_source", 1)]);
}

#[test]
fn planted_wrong_field_values_are_caught() {
    let (names, records, mut outputs) = stand_in("planted-field");
    let processed: Vec<usize> = outputs
        .iter()
        .enumerate()
        .filter(|(_, o)| o.destination == Destination::Processed)
        .map(|(i, _)| i)
        .collect();
    // A field of the payload, and the record timestamp (the input's, documented).
    let (i, j) = (processed[0], processed[1]);
    let mut v: serde_json::Value = serde_json::from_slice(&outputs[i].value).unwrap();
    v["ip"] = serde_json::Value::from("10.0.0.7/32");
    outputs[i].value = serde_json::to_vec(&v).unwrap();
    outputs[j].timestamp_ms = outputs[j].timestamp_ms.map(|t| t - 60_000);
    write(&names, &records, &outputs);
    let (code, s) = verify_complete(&names);
    assert_eq!(code, 4, "{s:#}");
    assert_counts(&s, &[("mismatched", 2)]);
}

#[test]
fn planted_impossible_source_offset_is_caught() {
    let (names, records, mut outputs) = stand_in("planted-negative");
    // A second DLQ entry naming offset -1: not "deleted input".
    let mut ghost = outputs[first(&outputs, Destination::DeadLetter)].clone();
    *header_mut(&mut ghost, "tally.source.offset") = b"-1".to_vec();
    outputs.push(ghost);
    write(&names, &records, &outputs);
    let (code, s) = verify_complete(&names);
    assert_eq!(code, 4, "{s:#}");
    assert_counts(&s, &[("impossible_source", 1)]);
}

/// A valid record dead-lettered as `poison` is accounted for, but reported on
/// its own: the drill requires none.
#[test]
fn runtime_dead_letter_of_a_valid_record_is_reported() {
    let (names, records, mut outputs) = stand_in("planted-poison");
    let i = first(&outputs, Destination::Processed);
    let rec = records
        .iter()
        .find(|r| process(r, &config(&names)).output() == Some(&outputs[i]))
        .unwrap()
        .clone();
    let poison = tally::event::Rejection {
        reason: tally::event::Reason::Poison,
        message: "planted".into(),
    };
    outputs[i] = tally::event::dead_letter(rec, &poison, &config(&names));
    write(&names, &records, &outputs);
    let (code, s) = verify_complete(&names);
    assert_eq!(code, 0, "{s:#}");
    assert_counts(&s, &[("runtime_dead_letters", 1)]);
    assert_eq!(s["runtime_dead_letters_by_reason"]["poison"], 1, "{s:#}");
}

/// The drill's retention fault deletes input the outputs came from: outputs of
/// deleted input are counted per partition and destination, and expectations
/// recorded before the deletion (`verify::Expectations`) check them in full.
#[test]
fn expectations_recorded_before_a_trim_still_catch_a_loss() {
    use tally::verify::{self, Expectations, Options};
    let (names, records, mut outputs) = stand_in("planted-trim");
    let cfg = config(&names);
    // Lose the output of partition 0's first record.
    let lost = records.iter().find(|r| r.partition == 0).unwrap();
    let i = outputs
        .iter()
        .position(|o| process(lost, &cfg).output() == Some(o))
        .unwrap();
    outputs.remove(i);
    write(&names, &records, &outputs);
    let trim: BTreeMap<i32, i64> = [(0, 20), (1, 20)].into();
    let conn = tally::kafka::Connection {
        bootstrap: bootstrap(),
        properties: Vec::new(),
    };
    let mut before = Expectations::default();
    assert_eq!(before.record_until(&conn, &cfg, &trim).unwrap(), 40);
    // Recording again reads nothing twice.
    assert_eq!(before.record_until(&conn, &cfg, &trim).unwrap(), 0);
    for (p, o) in &trim {
        delete_records_below(&names.input, *p, *o);
    }

    // Without the expectations: the loss is invisible, the outputs of deleted
    // input are counted where they are.
    let s = verify::verify(&conn, &names.group, &cfg, &names.output, &names.dlq).unwrap();
    assert_eq!((s.missing, s.checked_before_trim), (0, 0), "{}", s.render());
    let mut by_partition: BTreeMap<i32, verify::ByDestination> = BTreeMap::new();
    for r in records.iter().filter(|r| r.offset < trim[&r.partition]) {
        if let Some(o) = process(r, &cfg).output().filter(|o| outputs.contains(o)) {
            let by = by_partition.entry(r.partition).or_default();
            match o.destination {
                Destination::Processed => by.processed += 1,
                _ => by.dead_lettered += 1,
            }
        }
    }
    assert_eq!(s.below_log_start, 39, "{}", s.render());
    assert_eq!(
        s.below_log_start_by_partition,
        by_partition,
        "{}",
        s.render()
    );

    // With them: every record is checked, the loss found.
    let options = Options {
        before_trim: Some(&before),
    };
    let s = verify::verify_with(
        &conn,
        &names.group,
        &cfg,
        &names.output,
        &names.dlq,
        options,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(s.checked_before_trim, 40, "{}", s.render());
    assert_eq!(s.input_checked, 200, "{}", s.render());
    assert_eq!((s.missing, s.below_log_start), (1, 0), "{}", s.render());
    assert_eq!(s.violations(), 1, "{}", s.render());
    assert_eq!(s.first_violations[0].offset, lost.offset, "{}", s.render());
}

/// An open transaction holds a read_committed reader below the high watermark:
/// the outputs behind it cannot be read, and `--complete` says so.
#[test]
fn outputs_held_back_by_an_open_transaction_are_reported() {
    let (names, records, outputs) = stand_in("planted-open");
    write(&names, &records, &outputs);
    let open: rdkafka::producer::BaseProducer = client_config()
        .set("transactional.id", unique("planted-open-txn"))
        .create()
        .unwrap();
    open.init_transactions(TIMEOUT).unwrap();
    open.begin_transaction().unwrap();
    // A copy of a processed record, in partition 0 of the output topic.
    let o = &outputs[first(&outputs, Destination::Processed)];
    open.send(
        BaseRecord::<[u8], [u8]>::to(&names.output)
            .partition(0)
            .payload(o.value.as_slice()),
    )
    .map_err(|(e, _)| e)
    .unwrap();
    open.flush(TIMEOUT).unwrap();
    // As a read_committed client (librdkafka's default) sees it: the last
    // stable offset, where the open transaction begins.
    let (_, stable) = watermarks(&names.output, 0);
    let (code, s) = verify_complete(&names);
    assert_eq!(code, 4, "{s:#}");
    assert_counts(&s, &[("unread_outputs", 1)]);
    let short = &s["short_reads"][0];
    assert_eq!(short["partition"], 0, "{s:#}");
    assert_eq!(short["ended_at"], stable, "{s:#}");
    assert_eq!(short["high_watermark"], stable + 1, "{s:#}");
    open.abort_transaction(TIMEOUT).unwrap();
    let (code, s) = verify_complete(&names);
    assert_eq!(code, 0, "{s:#}");
    assert_counts(&s, &[]);
}
