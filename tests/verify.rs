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
    let mut run = TallyProc::start(&names, "neverc-1", &dir.path().join("s"), &[], &[]);
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
    let mut run = TallyProc::start(&names, "deadboot-1", &dir.path().join("s"), &[], &[]);
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
