//! Input as production writes it: by transactional producers (a commit marker
//! after each of their transactions) and compressed with gzip, lz4 or zstd.
//! tally processes every record exactly once, and once the input is drained its
//! lag gauge reads 0 and `tally verify --complete` passes.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const LONG: Duration = Duration::from_secs(180);

/// Produces `count` generated events (seeded) to `topic` with a producer of
/// the given extra settings, `per_transaction` records per transaction when
/// `transactional` (the last transaction may be shorter); returns the recount.
fn produce_with(
    topic: &str,
    count: u64,
    seed: u64,
    settings: &[(&str, &str)],
    transactional: Option<u64>,
) -> Input {
    let mut config = client_config();
    config.set("enable.idempotence", "true");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    if transactional.is_some() {
        config.set("transactional.id", unique("input-txn"));
    }
    let p: BaseProducer = config.create().expect("producer");
    if transactional.is_some() {
        p.init_transactions(TIMEOUT).expect("init_transactions");
    }
    let start = chrono::Utc::now().timestamp() - 3600;
    let mut g = tally::generate::Generator::new(seed, start, 0.05, false);
    let mut input = Input::default();
    let mut in_txn = 0;
    for _ in 0..count {
        if let Some(per) = transactional {
            if in_txn == 0 {
                p.begin_transaction().expect("begin");
            }
            in_txn += 1;
            if in_txn == per {
                in_txn = 0;
            }
        }
        let r = g.next_record();
        input.add(&r);
        let mut rec = BaseRecord::to(topic).key(r.key.as_slice());
        if let Some(v) = r.value.as_deref() {
            rec = rec.payload(v);
        }
        let mut rec = rec;
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
        if transactional.is_some() && in_txn == 0 {
            p.commit_transaction(TIMEOUT).expect("commit");
        }
    }
    if transactional.is_some() && in_txn != 0 {
        p.commit_transaction(TIMEOUT).expect("commit");
    }
    p.flush(TIMEOUT).expect("flush");
    input
}

/// `tally_consumer_lag` by partition, from `/metrics`.
fn lag_gauges(run: &mut TallyProc) -> BTreeMap<String, i64> {
    let (code, body) = http_get(&format!("{}/metrics", run.endpoint()));
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter_map(|l| l.strip_prefix("tally_consumer_lag{partition=\""))
        .map(|l| {
            let (p, rest) = l.split_once('"').unwrap();
            (
                p.to_string(),
                rest.rsplit(' ').next().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// Waits until every partition's committed offset is its end offset (markers
/// included): the group consumed the input to its very end.
fn wait_consumed_to_the_end(names: &Names, partitions: i32, run: &mut TallyProc) {
    let deadline = Instant::now() + LONG;
    loop {
        let committed = committed_offsets(&names.group, &names.input);
        let ends: Vec<(i64, i64)> = (0..partitions)
            .map(|p| {
                (
                    committed.get(&p).copied().unwrap_or(-1),
                    watermarks(&names.input, p).1,
                )
            })
            .collect();
        if ends.iter().all(|(c, high)| c == high) {
            return;
        }
        assert!(!run.exited(), "tally exited: {}", run.log());
        assert!(
            Instant::now() < deadline,
            "(committed, end offset) by partition stayed {ends:?}; lag gauges {:?}\n{}",
            lag_gauges(run),
            run.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn transactional_input_is_drained_to_lag_zero() {
    let names = Names::create("txnin", 3);
    // 7 transactions of 300 records, so every partition ends with a marker.
    let input = produce_with(&names.input, 2_000, 71, &[], Some(300));
    let dir = tempfile::tempdir().unwrap();
    let mut run = TallyProc::builder(&names, "txnin-1", &dir.path().join("s")).start();
    wait_consumed_to_the_end(&names, 3, &mut run);
    // The gauge is refreshed every 5 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lag = lag_gauges(&mut run);
        if lag.len() == 3 && lag.values().all(|l| *l == 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lag gauges after the drain: {lag:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    // `unconsumed` is 0 (checked by assert_verified): verify --complete passes.
    assert_verified_with(&names, &["--complete"], input.valid(), input.malformed);
    let (code, s) = verify_with(&names, &["--complete"]);
    assert_eq!(code, 0, "{s:#}");
}

#[test]
fn compressed_input_is_read_whatever_the_codec() {
    let names = Names::create("codec", 3);
    let mut all = Input::default();
    for (i, codec) in ["zstd", "lz4", "gzip", "snappy"].iter().enumerate() {
        let part = produce_with(
            &names.input,
            1_000,
            80 + i as u64,
            &[("compression.type", codec), ("linger.ms", "20")],
            None,
        );
        all.merge(&part);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut run = TallyProc::builder(&names, "codec-1", &dir.path().join("s")).start();
    wait_for_committed(&names.group, &names.input, 4_000, LONG, &mut [&mut run]);
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    assert_verified(&names, all.valid(), all.malformed);
}
