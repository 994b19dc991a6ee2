//! What Apache Kafka does to a transactional consumer that a well-behaved
//! broker never shows in a quick run: a coordinator that times a transaction
//! out, an `init_transactions` that cannot finish while the broker is gone, a
//! broker restarted (with its data) while a transaction is open. Each test
//! checks the guarantee (every record exactly once, no exit) and not how the
//! broker got there. Tests that stop or restart the broker use one of their own.

mod common;

use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(240);

/// Kafka answers `InitProducerId` only once the cluster can serve it; librdkafka
/// reports a call that ran out of time as retriable. A broker frozen for longer
/// than one call's timeout while tally starts is waited out, not a crash.
#[test]
fn init_transactions_outlasting_a_frozen_broker_is_retried() {
    const EVENTS: u64 = 2_000;
    let Some(broker) = PrivateBroker::start() else {
        return;
    };
    let names = broker.pipeline("initwait", EVENTS);
    let dir = tempfile::tempdir().unwrap();
    let mut run = TallyProc::builder(&names, "initwait-1", &dir.path().join("state"))
        .bootstrap(&broker.bootstrap)
        .env("FAILPOINTS", "before-init-transactions=sleep(3000)")
        .start();
    run.wait_for_log("initialising transactions", 1, LONG);
    broker.node("pause");
    // Longer than any one broker call may take (30 s).
    std::thread::sleep(Duration::from_secs(40));
    broker.node("resume");
    broker.wait_drained(&names, EVENTS, &mut run);
    assert!(!run.exited(), "tally exited: {}", run.log());
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    broker.assert_exactly_once(&names, EVENTS);
}

/// A transaction that outlives `transaction.timeout.ms` (here: the process is
/// stopped right before its commit) is aborted by the coordinator, which bumps
/// the producer's epoch; librdkafka then calls the producer fenced. No other
/// process holds the id: tally replaces its producer, recovers its partitions
/// and goes on, and every record still ends up exactly once.
#[test]
fn a_transaction_the_broker_timed_out_is_recovered_not_fenced() {
    const EVENTS: u64 = 3_000;
    let Some(broker) = PrivateBroker::start() else {
        return;
    };
    let names = broker.pipeline("txntimeout", EVENTS);
    let dir = tempfile::tempdir().unwrap();
    let mut run = TallyProc::builder(&names, "txntimeout-1", &dir.path().join("state"))
        .bootstrap(&broker.bootstrap)
        .args([
            "--max-batch-records",
            "500",
            "--session-timeout",
            "6000ms",
            "-X",
            "transaction.timeout.ms=40000",
        ])
        .env("FAILPOINTS", "stop-before-commit=1*return")
        .start();
    run.wait_stopped(LONG);
    // Past the transaction timeout and the coordinator's 1 s abort sweep.
    std::thread::sleep(Duration::from_secs(48));
    run.cont_signal();
    broker.wait_drained(&names, EVENTS, &mut run);
    let log = run.log();
    assert!(!run.exited(), "tally exited: {log}");
    assert!(!log.contains("fenced: another process"), "{log}");
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    broker.assert_exactly_once(&names, EVENTS);
}

/// The broker (group coordinator, transaction coordinator and partition leader
/// of a one-node cluster) restarts with its data while a transaction is open:
/// once by a clean shutdown, once by `kill -9`. tally rides both out.
#[test]
fn broker_restarts_mid_transaction_lose_and_duplicate_nothing() {
    const EVENTS: u64 = 30_000;
    let Some(broker) = PrivateBroker::start() else {
        return;
    };
    let names = broker.pipeline("bounce", EVENTS);
    let dir = tempfile::tempdir().unwrap();
    // Small batches and 1 s cycles: a transaction is open almost all the time.
    let mut run = TallyProc::builder(&names, "bounce-1", &dir.path().join("state"))
        .bootstrap(&broker.bootstrap)
        .args(["--max-batch-records", "50", "--commit-interval", "1000ms"])
        .start();
    run.wait_for_metric("tally_restores_total", 1, LONG);
    std::thread::sleep(Duration::from_secs(2));
    broker.node("stop");
    std::thread::sleep(Duration::from_secs(2));
    broker.node("start");
    std::thread::sleep(Duration::from_secs(3));
    broker.node("kill");
    std::thread::sleep(Duration::from_secs(2));
    broker.node("start");
    broker.wait_drained(&names, EVENTS, &mut run);
    assert!(!run.exited(), "tally exited: {}", run.log());
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    broker.assert_exactly_once(&names, EVENTS);
}

/// Issue 29, item 5: a topic of tally's own deleted while `tally run` writes to
/// it, on a broker with `auto.create.topics.enable=true`. No tally client may
/// re-create it (librdkafka producers ask for it by default); `tally run` stops,
/// naming the topic, and commits nothing past what it produced before.
#[test]
fn a_topic_deleted_at_runtime_stops_the_run_and_is_not_recreated() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    const EVENTS: u64 = 1_000;
    let Some(broker) = PrivateBroker::start_with(1, &[("auto.create.topics.enable", "true")])
    else {
        return;
    };
    let names = broker.pipeline("gone", EVENTS);
    let dir = tempfile::tempdir().unwrap();
    let mut run = TallyProc::builder(&names, "gone-1", &dir.path().join("state"))
        .bootstrap(&broker.bootstrap)
        .start();
    broker.wait_drained(&names, EVENTS, &mut run);
    let config = || {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &broker.bootstrap);
        c
    };
    let committed = || -> i64 {
        let consumer: BaseConsumer = config().set("group.id", &names.group).create().unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..2 {
            tpl.add_partition(&names.input, p);
        }
        let got = consumer
            .committed_offsets(tpl, Duration::from_secs(30))
            .unwrap();
        got.elements()
            .iter()
            .filter_map(|e| e.offset().to_raw())
            .filter(|o| *o >= 0)
            .sum()
    };
    assert_eq!(committed(), EVENTS as i64);

    let admin: AdminClient<DefaultClientContext> = config().create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt
        .block_on(admin.delete_topics(
            &[&names.output],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .unwrap();
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    let (code, _, err) = broker.tally(&[
        "generate",
        "--topic",
        &names.input,
        "--count",
        "200",
        "--huge",
        "false",
    ]);
    assert_eq!(code, 0, "{err}");

    assert_eq!(
        run.wait(Duration::from_secs(120)),
        Some(1),
        "stops when its output topic is gone:\n{}",
        run.log()
    );
    let log = run.log();
    assert!(
        log.contains(&format!("topic {} does not exist any more", names.output)),
        "{log}"
    );
    let consumer: BaseConsumer = config().create().unwrap();
    let md = consumer
        .fetch_metadata(Some(&names.output), Duration::from_secs(30))
        .unwrap();
    let exists = md
        .topics()
        .first()
        .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty());
    assert!(!exists, "{} was re-created", names.output);
    assert_eq!(
        committed(),
        EVENTS as i64,
        "nothing committed past the deletion"
    );
}
