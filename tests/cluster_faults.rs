//! Brokers of a replicated cluster failing under tally: the leader of its
//! output killed mid-transaction, the group coordinator killed right before
//! the offsets join the transaction, and a commit call that never returns (as
//! librdkafka's `send_offsets_to_transaction` has been seen not to while the
//! group coordinator is gone). Each checks every record exactly once and no
//! exit of `tally run`.

mod common;

use std::time::{Duration, Instant};

use common::*;

const LONG: Duration = Duration::from_secs(240);

/// What a `tally run` of these tests adds to the defaults: small batches and
/// 1 s cycles, so a transaction is open almost all the time.
const BUSY: [&str; 4] = ["--max-batch-records", "50", "--commit-interval", "1000ms"];

/// A commit call that does not return by the transaction's deadline is
/// abandoned within `transaction.timeout.ms` + 5 s of the transaction's
/// opening: the producer is replaced (which fences the stuck one and settles
/// its transaction) and the partitions restored from what Kafka committed.
/// Nothing is lost or doubled, whether the stuck call had committed or not.
fn abandoned_commit(prefix: &str, failpoints: &str, seed: u64) {
    const EVENTS: u64 = 3_000;
    let names = Names::create(prefix, 2);
    let input = produce_generated(&names.input, EVENTS, seed, 0.05);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut run = TallyProc::builder(&names, &format!("{prefix}-1"), &dir.path().join("state"))
        .args([
            "--max-batch-records",
            "200",
            "--session-timeout",
            "6000ms",
            "-X",
            "transaction.timeout.ms=40000",
        ])
        .env("FAILPOINTS", failpoints)
        .start();
    run.wait_for_log("the commit did not return within", 1, LONG);
    let abandoned = started.elapsed();
    // The second transaction opened after start-up; its deadline is 40 s
    // later, and the bound 5 s after that.
    assert!(
        abandoned < Duration::from_secs(40 + 5 + 30),
        "abandoned after {abandoned:?}"
    );
    wait_for_committed(
        &names.group,
        &names.input,
        EVENTS as i64,
        LONG,
        &mut [&mut run],
    );
    assert_eq!(run.metric("tally_producer_replacements_total"), 1);
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    assert_verified(&names, input.valid(), input.malformed);
    assert_insights_match(&names, &input);
}

/// The call hangs before the offsets are sent (a failpoint sleeps in it,
/// ignoring its timeout): the transaction is aborted.
#[test]
fn a_commit_that_hangs_past_its_deadline_is_abandoned_and_nothing_is_lost() {
    abandoned_commit("hang", "send-offsets-hang=1*off->1*sleep(600000)", 31);
}

/// The transaction committed, but the call returns long after: the restore
/// finds the new committed offset and goes on from there.
#[test]
fn a_commit_that_landed_but_returned_late_is_abandoned_and_nothing_is_doubled() {
    abandoned_commit("late", "commit-returns-late=1*off->1*sleep(600000)", 32);
}

/// On a 3-node cluster (replication factor 3, `min.insync.replicas` 2), two
/// instances ride out, in turn: the broker leading the most output
/// partitions killed with `kill -9` mid-transaction and restarted; the group
/// coordinator's broker killed while an instance stands right before sending
/// its offsets to the transaction, where the cycle must end (committed or
/// aborted) within `transaction.timeout.ms` + 5 s.
#[test]
fn brokers_killed_on_a_three_node_cluster_lose_and_duplicate_nothing() {
    const EVENTS: u64 = 20_000;
    let Some(cluster) = PrivateBroker::start_nodes(3) else {
        return;
    };

    // The leader of the most output partitions, mid-transaction.
    let names = cluster.pipeline("leader", EVENTS);
    let dirs = tempfile::tempdir().unwrap();
    let start = |id: &str| {
        let state = dirs.path().join(id);
        TallyProc::builder(&names, id, &state)
            .bootstrap(&cluster.bootstrap)
            .args(&BUSY)
            .start()
    };
    let (mut a, mut b) = (start("leader-a"), start("leader-b"));
    wait_for("both instances processing", LONG, || {
        (a.metric("tally_assigned_partitions") + b.metric("tally_assigned_partitions") == 2
            && a.metric("tally_ready") + b.metric("tally_ready") == 2)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let (victim, _) = tally::kafka::busiest(cluster.leaders(&names.output).into_values())
        .expect("the output has leaders");
    cluster.node_at(victim, "kill");
    std::thread::sleep(Duration::from_secs(3));
    cluster.node_at(victim, "start");
    cluster.wait_drained(&names, EVENTS, &mut a);
    for run in [&mut a, &mut b] {
        assert!(!run.exited(), "tally exited: {}", run.log());
    }
    for run in [&mut a, &mut b] {
        assert_eq!(run.terminate(), Some(0), "{}", run.log());
    }
    cluster.assert_exactly_once(&names, EVENTS);

    // The group coordinator, right before the offsets are sent.
    const MORE: u64 = 5_000;
    let names = cluster.pipeline("gcoord", MORE);
    let mut run = TallyProc::builder(&names, "gcoord-a", &dirs.path().join("c"))
        .bootstrap(&cluster.bootstrap)
        .args(&BUSY)
        .env(
            "FAILPOINTS",
            "stop-before-send-offsets=3*off->1*return->off",
        )
        .start();
    run.wait_stopped(LONG);
    let committed = "tally_transactions_total{result=\"committed\"}";
    let aborted = "tally_transactions_total{result=\"aborted\"}";
    let coordinator = cluster.coordinator("__consumer_offsets", &names.group);
    cluster.node_at(coordinator, "kill");
    run.cont_signal();
    let resumed = Instant::now();
    // Three transactions passed the point before the stop and ended; the
    // fourth is the one standing before its offsets.
    let ended = wait_for("the held transaction to end", LONG, || {
        let now = (run.metric(committed), run.metric(aborted));
        (now.0 + now.1 >= 4).then_some(now)
    });
    let took = resumed.elapsed();
    assert!(
        took < Duration::from_secs(60 + 5 + 5),
        "the cycle took {took:?} to end ({ended:?})"
    );
    cluster.node_at(coordinator, "start");
    cluster.wait_drained(&names, MORE, &mut run);
    assert!(!run.exited(), "tally exited: {}", run.log());
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    cluster.assert_exactly_once(&names, MORE);
    eprintln!("the held transaction ended {ended:?} (committed, aborted) {took:?} after SIGCONT");
}
