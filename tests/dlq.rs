//! Guarantee 3 against a broker: records the DLQ cannot take whole are written as
//! truncated copies carrying the original size and SHA-256, and nothing loops.
//! Each test has its own topics, group and instance ids.

mod common;

use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

const LONG: Duration = Duration::from_secs(120);
const MIB: usize = 1024 * 1024;

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A junk value of `len` bytes, different for each `seed`.
fn junk(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i as u64 * 7 + u64::from(seed)) % 26) as u8)
        .collect()
}

#[test]
fn oversized_records_in_an_8_mib_topic_drain_truncated_without_looping() {
    // The input allows 8 MiB; the DLQ keeps the harness's 2 MiB.
    let names = Names::create_with_input_limit("oversize", 3, 8 * MIB);
    let first = produce_generated(&names.input, 3_000, 31, 0.05);
    let big: Vec<(i32, Vec<u8>, Vec<u8>)> = vec![
        (0, b"big-3mb".to_vec(), junk(3_000_000, 1)),
        (1, b"big-2mib-minus-50".to_vec(), junk(2 * MIB - 50, 2)),
        (2, b"big-1.5mb".to_vec(), junk(1_500_000, 3)),
    ];
    for (p, k, v) in &big {
        produce(
            &names.input,
            Some(*p),
            &[(Some(k.clone()), Some(v.clone()))],
        );
    }
    let second = produce_generated(&names.input, 3_000, 32, 0.05);
    let total = (first.total + second.total + 3) as i64;

    let dir = tempfile::tempdir().unwrap();
    let mut run = TallyProc::builder(&names, "oversize-1", &dir.path().join("state")).start();
    wait_for_committed(&names.group, &names.input, total, LONG, &mut [&mut run]);
    assert_eq!(run.metric(ABORTED), 0, "{}", run.log());
    assert_eq!(run.terminate(), Some(0), "{}", run.log());

    assert_verified(
        &names,
        first.valid() + second.valid(),
        first.malformed + second.malformed + 3,
    );
    let dlq = read_all(&names.dlq);
    for (_, key, value) in &big {
        let entry = dlq
            .iter()
            .find(|r| r.key.as_deref() == Some(key.as_slice()))
            .unwrap_or_else(|| panic!("no DLQ entry for {}", String::from_utf8_lossy(key)));
        let h = &entry.headers;
        assert_eq!(h["tally.reason"], "too_large", "{h:?}");
        let stored = entry.value.as_deref().unwrap_or_default();
        if value.len() >= 2 * MIB - 50 {
            // Does not fit a 2 MiB DLQ with its headers: a truncated prefix.
            assert_eq!(h["tally.truncated"], "value", "{h:?}");
            assert_eq!(h["tally.original.size"], value.len().to_string(), "{h:?}");
            assert_eq!(h["tally.original.sha256"], hex_sha256(value), "{h:?}");
            assert!(stored.len() < 2 * MIB - 50, "{}", stored.len());
            assert_eq!(stored, &value[..stored.len()]);
        } else {
            assert!(!h.contains_key("tally.truncated"), "{h:?}");
            assert_eq!(stored, value.as_slice());
        }
    }
}

/// The limits tally believes in when it cannot read the topics' (failpoint
/// `topic-limits-unreadable`): an 8 MiB output, so the 3 MB record of
/// [`produce_refused`] is sent, and the 2 MiB DLQ it really has.
const REFUSED_LIMITS: [&str; 6] = [
    "--max-value-bytes",
    "8388608",
    "--output-max-message-bytes",
    "8388608",
    "--dlq-max-message-bytes",
    "2097152",
];

/// Random letters and digits, `len` of them: lz4 finds nothing to shrink, so
/// the producer sends a batch holding them uncompressed, as large as it is.
fn incompressible(len: usize, seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(alphabet[(x % alphabet.len() as u64) as usize])
        })
        .collect()
}

/// Writes to input partition 1 a valid event padded to 3 MB (key `refused`):
/// a 2 MiB output topic refuses its processed record, compressed or not.
/// Returns its value.
fn produce_refused(names: &Names, seed: u64) -> Vec<u8> {
    let mut event: serde_json::Value = serde_json::from_slice(
        &tally::generate::Generator::new(seed, chrono::Utc::now().timestamp() - 60, 0.0, false)
            .next_record()
            .value
            .unwrap(),
    )
    .unwrap();
    event["padding"] = serde_json::json!(incompressible(3_000_000, seed));
    let big = event.to_string().into_bytes();
    produce(
        &names.input,
        Some(1),
        &[(Some(b"refused".to_vec()), Some(big.clone()))],
    );
    big
}

#[test]
fn record_the_broker_refuses_is_dead_lettered_after_one_abort() {
    // tally cannot read the topics' limits and believes the output takes 8 MiB:
    // the broker (2 MiB output topic) refuses the 3 MB processed record after
    // it was sent. That record alone is dead-lettered, as `unproducible`.
    let names = Names::create_with_input_limit("refused", 2, 8 * MIB);
    let first = produce_generated(&names.input, 1_000, 33, 0.0);
    let big = produce_refused(&names, 34);
    let second = produce_generated(&names.input, 1_000, 35, 0.0);
    let total = (first.total + second.total + 1) as i64;

    let dir = tempfile::tempdir().unwrap();
    let mut run = TallyProc::builder(&names, "refused-1", &dir.path().join("state"))
        .args(&REFUSED_LIMITS)
        .env("FAILPOINTS", "topic-limits-unreadable=return")
        .start();
    wait_for_committed(&names.group, &names.input, total, LONG, &mut [&mut run]);
    // One abort for the refusal; librdkafka may need one more to bump the
    // producer epoch over the sequence number the refused record used
    // (OUT_OF_ORDER_SEQUENCE_NUMBER on the next transaction). Never more.
    let aborts = run.metric(ABORTED);
    assert!((1..=2).contains(&aborts), "{aborts} aborts: {}", run.log());
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    let log = run.log();
    // The operator's warning, once: the record was found unproducible once.
    assert_eq!(log.matches("record cannot be produced").count(), 1, "{log}");

    // verify reads the real limits: it predicts `unproducible` for the record.
    assert_verified_with(
        &names,
        &["--max-value-bytes", "8388608"],
        first.valid() + second.valid(),
        1,
    );
    let dlq = read_all(&names.dlq);
    assert_eq!(
        dlq.len(),
        1,
        "{:?}",
        dlq.iter().map(|r| &r.headers).collect::<Vec<_>>()
    );
    let h = &dlq[0].headers;
    assert_eq!(h["tally.reason"], "unproducible", "{h:?}");
    assert_eq!(h["tally.truncated"], "value", "{h:?}");
    assert_eq!(h["tally.original.size"], big.len().to_string(), "{h:?}");
    assert_eq!(h["tally.original.sha256"], hex_sha256(&big), "{h:?}");
}

/// A record dead-lettered at runtime (the broker refused it) stays a dead
/// letter in the aggregates after a new host restores them: its transaction
/// carries its partition's snapshot, so no replay recomputes it as processed.
#[test]
fn a_runtime_dead_letter_is_not_recounted_by_a_restore() {
    let names = Names::create_with_input_limit("verdict", 2, 8 * MIB);
    let first = produce_generated(&names.input, 1_000, 36, 0.0);
    produce_refused(&names, 37);
    let second = produce_generated(&names.input, 1_000, 38, 0.0);
    let total = first.total + second.total + 1;
    // A snapshot an hour at most: without the dead letter's own, a new host
    // replays from the first snapshot (or from offset 0), over the dead letter.
    let args = [&REFUSED_LIMITS[..], &["--snapshot-interval", "3600000ms"]].concat();
    let env = [("FAILPOINTS", "topic-limits-unreadable=return")];
    let dir = tempfile::tempdir().unwrap();
    let mut a = TallyProc::builder(&names, "verdict-1", &dir.path().join("a"))
        .args(&args)
        .envs(env)
        .start();
    wait_for_committed(
        &names.group,
        &names.input,
        total as i64,
        LONG,
        &mut [&mut a],
    );
    assert_eq!(
        a.metric("tally_dead_letters_total{reason=\"unproducible\"}"),
        1,
        "{}",
        a.log()
    );
    // No shutdown snapshot, and a new host without the checkpoints.
    a.kill9();
    let mut b = TallyProc::builder(&names, "verdict-1", &dir.path().join("b"))
        .args(&args)
        .envs(env)
        .start();
    b.wait_for_metric("tally_restores_total", 2, LONG);
    assert_eq!(b.terminate(), Some(0), "{}", b.log());
    let v = insights(&names);
    let agg = &v["aggregate"];
    assert_eq!(agg["dead_lettered"], 1, "{v:#}\n{}", b.log());
    assert_eq!(agg["processed"], first.valid() + second.valid(), "{v:#}");
    assert_verified_with(
        &names,
        &["--max-value-bytes", "8388608"],
        first.valid() + second.valid(),
        1,
    );
}

/// `--dlq-mask-ip`: every DLQ entry that is a JSON object with an `ip` holds it
/// masked and says so; `tally verify --dlq-mask-ip` accepts exactly that.
#[test]
fn dlq_entries_hold_the_ip_masked_when_asked() {
    let names = Names::create("mask", 2);
    let input = produce_generated(&names.input, 2_000, 39, 0.2);
    let dir = tempfile::tempdir().unwrap();
    let mask = ["--dlq-mask-ip"];
    let mut run = TallyProc::builder(&names, "mask-1", &dir.path().join("state"))
        .args(&mask)
        .start();
    wait_for_committed(
        &names.group,
        &names.input,
        input.total as i64,
        LONG,
        &mut [&mut run],
    );
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    assert_verified_with(&names, &mask, input.valid(), input.malformed);
    // Without the flag, verify sees the masked entries as not the input's.
    let (code, _) = verify_with(&names, &[]);
    assert_ne!(code, 0);
    // Each entry against its input record: an object with an ip is masked
    // (the address's network, or "masked" for no address), anything else kept.
    let inputs: std::collections::HashMap<(i32, i64), Option<Vec<u8>>> = read_all(&names.input)
        .into_iter()
        .map(|r| ((r.partition, r.offset), r.value))
        .collect();
    let mut should = 0;
    for e in read_all(&names.dlq) {
        let at = (
            e.headers["tally.source.partition"].parse().unwrap(),
            e.headers["tally.source.offset"].parse().unwrap(),
        );
        let original = inputs[&at].clone();
        let object = original
            .as_deref()
            .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
            .filter(|v| v.is_object() && v.get("ip").is_some_and(|ip| !ip.is_null()));
        match object {
            Some(mut want) => {
                should += 1;
                let network = match want["ip"].as_str().and_then(|s| s.trim().parse().ok()) {
                    Some(std::net::IpAddr::V4(v4)) => {
                        let [a, b, c, _] = v4.octets();
                        format!("{a}.{b}.{c}.0/24")
                    }
                    Some(std::net::IpAddr::V6(v6)) => {
                        let s = v6.segments();
                        let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0);
                        format!("{net}/48")
                    }
                    None => "masked".into(),
                };
                want["ip"] = serde_json::Value::String(network);
                assert_eq!(e.json(), want, "{at:?}");
                assert_eq!(e.headers["tally.masked"], "ip", "{at:?}");
            }
            None => {
                // A tombstone's entry has an empty value.
                assert_eq!(
                    e.value.unwrap_or_default(),
                    original.unwrap_or_default(),
                    "{at:?}"
                );
                assert!(!e.headers.contains_key("tally.masked"), "{at:?}");
            }
        }
    }
    // The fixture is not vacuous: the generator's malformed records include
    // objects with an address (a missing device_type, a bad timestamp).
    assert_ne!(should, 0);
    assert_eq!(
        read_all(&names.dlq).len() as u64,
        input.malformed,
        "one DLQ entry per malformed record"
    );
}
