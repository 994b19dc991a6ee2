//! `tally run` against a broker: exact counts, injected transaction failures,
//! crashes mid-transaction and fencing. Each test has its own topics, group and
//! instance ids; `tally verify` checks every input record exactly once.

mod common;

use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(180);

#[test]
fn ten_thousand_events_exact_counts() {
    let names = Names::create("exact", 3);
    let input = produce_generated(&names.input, 10_000, 11, 0.05);
    assert!(
        input.malformed > 300,
        "the generator mixes in ~5% malformed: {}",
        input.malformed
    );
    let dir = tempfile::tempdir().unwrap();
    let mut run = TallyProc::builder(&names, "exact-1", &dir.path().join("state")).start();
    wait_for_committed(&names.group, &names.input, 10_000, LONG, &mut [&mut run]);
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    assert_eq!(count_committed(&names.output), input.valid() as usize);
    assert_eq!(count_committed(&names.dlq), input.malformed as usize);
    assert_verified(&names, input.valid(), input.malformed);
    // Every DLQ entry names its reason and source.
    for r in read_all(&names.dlq) {
        assert!(r.headers.contains_key("tally.reason"), "{r:?}");
        assert!(r.headers.contains_key("tally.source.offset"), "{r:?}");
    }
}

#[test]
fn failed_commit_is_aborted_and_retried_without_loss_or_duplicates() {
    let names = Names::create("abort", 2);
    let input = produce_generated(&names.input, 3_000, 12, 0.05);
    let dir = tempfile::tempdir().unwrap();
    // The first three commits fail with an abortable error.
    let mut run = TallyProc::builder(&names, "abort-1", &dir.path().join("state"))
        .args(["--max-batch-records", "500"])
        .env("FAILPOINTS", "commit-error=3*return")
        .start();
    wait_for_committed(&names.group, &names.input, 3_000, LONG, &mut [&mut run]);
    assert_eq!(run.metric(ABORTED), 3, "{}", run.log());
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    assert_verified(&names, input.valid(), input.malformed);
}

#[test]
fn fatal_producer_error_replaces_the_producer_and_recovers() {
    let names = Names::create("fatal", 2);
    let input = produce_generated(&names.input, 3_000, 18, 0.05);
    let dir = tempfile::tempdir().unwrap();
    // The second commit fails as if the producer were in a fatal state.
    let mut run = TallyProc::builder(&names, "fatal-1", &dir.path().join("state"))
        .args(["--max-batch-records", "500"])
        .env("FAILPOINTS", "commit-fatal=1*off->1*return")
        .start();
    wait_for_committed(&names.group, &names.input, 3_000, LONG, &mut [&mut run]);
    assert_eq!(
        run.metric("tally_producer_replacements_total"),
        1,
        "{}",
        run.log()
    );
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    assert_verified(&names, input.valid(), input.malformed);
}

#[test]
fn crash_with_open_transaction_then_restart_aborts_it() {
    let names = Names::create("crash", 2);
    let input = produce_generated(&names.input, 3_000, 13, 0.05);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // Dies (no cleanup, like kill -9) after producing the second transaction's
    // records, before committing it.
    let mut first = TallyProc::builder(&names, "crash-1", &state)
        .args(["--max-batch-records", "400"])
        .env("FAILPOINTS", "before-commit=1*off->return")
        .start();
    assert_eq!(first.wait(LONG), None, "killed by SIGABRT: {}", first.log());
    let committed: i64 = committed_offsets(&names.group, &names.input).values().sum();
    assert!(committed < 3_000, "crashed before the end: {committed}");
    let mut second = TallyProc::builder(&names, "crash-1", &state).start();
    wait_for_committed(&names.group, &names.input, 3_000, LONG, &mut [&mut second]);
    assert_eq!(second.terminate(), Some(0), "{}", second.log());
    assert_verified(&names, input.valid(), input.malformed);
}

#[test]
fn sigkill_mid_stream_then_restart() {
    let names = Names::create("kill9", 3);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let first_part = produce_generated(&names.input, 2_000, 14, 0.05);
    let mut first = TallyProc::builder(&names, "kill9-1", &state)
        .args(["--commit-interval", "50ms"])
        .start();
    wait_for_committed(&names.group, &names.input, 2_000, LONG, &mut [&mut first]);
    let second_part = produce_generated(&names.input, 20_000, 15, 0.05);
    // Kill it while it works through the second part.
    let deadline = std::time::Instant::now() + LONG;
    let at_kill = loop {
        let committed: i64 = committed_offsets(&names.group, &names.input).values().sum();
        if committed > 2_500 {
            break committed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no progress on the second part"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    first.kill9();
    assert!(
        at_kill < 22_000,
        "killed mid-stream (committed {at_kill} of 22000)"
    );
    let mut second = TallyProc::builder(&names, "kill9-1", &state).start();
    wait_for_committed(&names.group, &names.input, 22_000, LONG, &mut [&mut second]);
    assert_eq!(second.terminate(), Some(0), "{}", second.log());
    assert_verified(
        &names,
        first_part.valid() + second_part.valid(),
        first_part.malformed + second_part.malformed,
    );
}

#[test]
fn second_process_with_same_instance_id_fences_the_first() {
    let names = Names::create("fence", 1);
    produce_generated(&names.input, 500, 16, 0.0);
    let dir = tempfile::tempdir().unwrap();
    let mut first = TallyProc::builder(&names, "fence-1", &dir.path().join("a")).start();
    wait_for_committed(&names.group, &names.input, 500, LONG, &mut [&mut first]);
    let mut second = TallyProc::builder(&names, "fence-1", &dir.path().join("b")).start();
    // Keep records flowing so the first one attempts transactions.
    let more = produce_generated(&names.input, 500, 17, 0.0);
    assert_eq!(
        first.wait(LONG),
        Some(3),
        "exit code 3 means fenced; log:\n{}",
        first.log()
    );
    let log = first.log();
    assert!(
        log.contains("another process now holds instance id \"fence-1\""),
        "{log}"
    );
    wait_for_committed(
        &names.group,
        &names.input,
        500 + more.total as i64,
        LONG,
        &mut [&mut second],
    );
    assert_eq!(second.terminate(), Some(0), "{}", second.log());
    assert_verified(&names, 500 + more.valid(), 0);
}

#[test]
fn producer_queue_full_ends_in_an_error_naming_it() {
    let names = Names::create("qfull", 1);
    produce_generated(&names.input, 100, 19, 0.0);
    let dir = tempfile::tempdir().unwrap();
    // The producer's local queue never takes a record.
    let mut run = TallyProc::builder(&names, "qfull-1", &dir.path().join("state"))
        .env("FAILPOINTS", "queue-full=return")
        .start();
    // The wait is bounded by CALL_TIMEOUT (30 s), then the process exits.
    assert_eq!(run.wait(Duration::from_secs(60)), Some(1), "{}", run.log());
    let log = run.log();
    assert!(
        log.contains("the producer's local queue stayed full for 30s"),
        "{log}"
    );
    let committed: i64 = committed_offsets(&names.group, &names.input).values().sum();
    assert_eq!(committed, 0, "nothing can commit without its records");
}

#[test]
fn rewind_while_a_batch_is_in_flight_loses_nothing() {
    let names = Names::create("rewind", 1);
    let dir = tempfile::tempdir().unwrap();
    // Long cycles, so batches arrive while a transaction is open; the first such
    // batch is met by an abort and rewind (failpoint abort-during-poll).
    let mut run = TallyProc::builder(&names, "rewind-1", &dir.path().join("state"))
        .args(["--commit-interval", "3000ms"])
        .env("FAILPOINTS", "abort-during-poll=1*return")
        .start();
    let (mut valid, mut malformed) = (0, 0);
    for seed in 0..10 {
        let chunk = produce_generated(&names.input, 200, 40 + seed, 0.05);
        valid += chunk.valid();
        malformed += chunk.malformed;
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_for_committed(&names.group, &names.input, 2_000, LONG, &mut [&mut run]);
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    let log = run.log();
    assert_eq!(
        log.matches("injected by failpoint abort-during-poll")
            .count(),
        1,
        "{log}"
    );
    assert_verified(&names, valid, malformed);
}

/// librdkafka can fence a static member by its own rejoin after its session
/// timed out while the broker was unreachable (librdkafka #3437; seen here after
/// a 40 s broker freeze). Its producer is not fenced, so tally replaces the
/// consumer, rejoins under the same instance id and goes on, exactly. A first
/// probe lost (its transaction aborts cleanly, so the producer is not fenced)
/// is asked again, not taken as fenced. (A process that another one fenced is
/// `second_process_with_same_instance_id_fences_the_first`.)
#[test]
fn consumer_fenced_by_its_own_rejoin_is_replaced_and_the_stream_goes_on() {
    let names = Names::create("rejoin", 2);
    let input = produce_generated(&names.input, 4_000, 23, 0.05);
    let dir = tempfile::tempdir().unwrap();
    let mut run = TallyProc::builder(&names, "rejoin-1", &dir.path().join("state"))
        .args(["--max-batch-records", "200"])
        // Counted over batches (200 records each here): mid-stream.
        .env(
            "FAILPOINTS",
            "consumer-fenced=5*off->1*return->off;probe-undelivered=1*return->off",
        )
        .start();
    run.wait_for_log("rejoined the group with a new consumer", 1, LONG);
    // The stream goes on after the rejoin.
    let mut all = input;
    all.merge(&produce_generated(&names.input, 1_000, 24, 0.05));
    wait_for_committed(&names.group, &names.input, 5_000, LONG, &mut [&mut run]);
    // The transaction open when the consumer was fenced, and nothing else.
    assert_eq!(run.metric(ABORTED), 1, "{}", run.log());
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    // No metric counts fencing probes: the warnings are what shows them.
    let log = run.log();
    assert_eq!(
        log.matches("consumer fenced; asking the broker").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("probing again").count(), 1, "{log}");
    assert_verified(&names, all.valid(), all.malformed);
    assert_insights_match(&names, &all);
}

#[test]
fn zombie_paused_right_before_its_commit_does_not_commit_on_resume() {
    let names = Names::create("zpause", 1);
    let input = produce_generated(&names.input, 3_000, 21, 0.05);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // The second commit stops the process (SIGSTOP) after every check at the
    // top of the loop and of the cycle, right before the commit is sent.
    let mut first = TallyProc::builder(&names, "zpause-1", &state)
        .args(["--max-batch-records", "200", "--session-timeout", "6000ms"])
        .env("FAILPOINTS", "stop-before-commit=1*off->1*return")
        .start();
    first.wait_stopped(LONG);
    // Past the session timeout: the group has expelled the member.
    std::thread::sleep(Duration::from_secs(9));
    first.cont_signal();
    // The transaction whose commit was interrupted is aborted, not committed.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !first.log().contains("transaction aborted") && !first.exited() {
        if std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = first.log();
    assert_eq!(
        log.matches("transaction aborted").count(),
        1,
        "the zombie's transaction must be aborted: {log}"
    );
    assert!(log.contains("not committing: process was paused"), "{log}");
    // The group may fence the resumed member (it exits with status 3); either
    // way a new process with the same instance id finishes the input.
    first.kill9();
    let mut run = TallyProc::builder(&names, "zpause-1", &state).start();
    wait_for_committed(&names.group, &names.input, 3_000, LONG, &mut [&mut run]);
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    assert_verified(&names, input.valid(), input.malformed);
}

/// Shutdown ends within `--shutdown-timeout` even when the broker dies during
/// it. The test kills the broker, so it starts a private one (its own port and
/// directory, killed by PID), never the shared one.
#[test]
fn shutdown_is_bounded_when_the_broker_dies() {
    let Some(broker) = PrivateBroker::start() else {
        return;
    };
    let names = broker.pipeline("sdown", 20_000);
    let dir = tempfile::tempdir().unwrap();
    // Long cycles keep a transaction open; the shutdown's commit waits 1 s
    // (failpoint), so the broker is surely gone by then.
    let mut run = TallyProc::builder(&names, "sdown-1", &dir.path().join("state"))
        .bootstrap(&broker.bootstrap)
        .args([
            "--commit-interval",
            "5000ms",
            "--max-batch-records",
            "100000",
        ])
        .env("TALLY_SHUTDOWN_TIMEOUT", "5s")
        .env("FAILPOINTS", "shutdown-before-commit=sleep(1000)")
        .start();
    run.wait_for_metric("tally_restores_total", 1, LONG);
    std::thread::sleep(Duration::from_secs(1));
    let signalled = std::time::Instant::now();
    run.signal_term();
    std::thread::sleep(Duration::from_millis(100));
    broker.kill9();
    // 5 s of shutdown timeout, plus a margin for the process to be scheduled
    // and exit: the suite runs this beside other broker tests on 2 cores, where
    // 1 s was seen not to be enough (6.6 s once, 5.0 s alone).
    let code = run.wait(Duration::from_secs(9));
    let took = signalled.elapsed();
    let log = run.log();
    eprintln!(
        "shutdown with the broker killed: exit {code:?} after {took:?}; {}",
        log.lines().last().unwrap_or_default()
    );
    assert!(took < Duration::from_secs(8), "took {took:?}: {log}");
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("shutdown did not finish within"), "{log}");
}

#[test]
fn commit_hold_is_honoured_by_the_shutdown() {
    let names = Names::create("hold", 1);
    let input = produce_generated(&names.input, 1_000, 22, 0.05);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // As soon as the first batch is in the open transaction, commits are held
    // for a session timeout (30 s), as after a pause; records keep filling it.
    // (Held from the second loop iteration instead, CI once signalled the
    // process before its first fetch came back: there was nothing to abort.)
    let mut first = TallyProc::builder(&names, "hold-1", &state)
        // A 30 s session needs a transaction timeout above 30 s + 30 s + 100 ms.
        .args([
            "--max-batch-records",
            "100",
            "--session-timeout",
            "30000ms",
            "-X",
            "transaction.timeout.ms=90000",
        ])
        .env("FAILPOINTS", "hold-commits=1*return")
        .start();
    first.wait_for_log("commits held by failpoint", 1, LONG);
    std::thread::sleep(Duration::from_secs(1));
    let before: i64 = committed_offsets(&names.group, &names.input).values().sum();
    // The shutdown must not commit while commits are held: it aborts.
    assert_eq!(first.terminate(), Some(0), "{}", first.log());
    let log = first.log();
    assert_eq!(log.matches("transaction aborted").count(), 1, "{log}");
    assert!(log.contains("commits are held after a pause"), "{log}");
    let after: i64 = committed_offsets(&names.group, &names.input).values().sum();
    assert_eq!(after, before, "nothing committed while held: {log}");
    assert!(before < 1_000, "records were left for the held transaction");
    let mut second = TallyProc::builder(&names, "hold-1", &state).start();
    wait_for_committed(&names.group, &names.input, 1_000, LONG, &mut [&mut second]);
    assert_eq!(second.terminate(), Some(0), "{}", second.log());
    assert_verified(&names, input.valid(), input.malformed);
}

/// A broker that freezes for 40 s mid-stream (SIGSTOP: no answer, no error) is an
/// operating condition: tally waits, the group rebalances when the broker comes
/// back, and every record still ends up exactly once. Needs a broker of its own.
#[test]
#[ignore = "fails intermittently on Apache Kafka 4.1.1 (a stall, or an exit as fenced when the fencing probe is not delivered after the broker resumes): see docs/limits.md; run with --ignored"]
fn forty_second_broker_freeze_mid_stream_is_ridden_out_exactly() {
    const EVENTS: u64 = 20_000;
    let Some(broker) = PrivateBroker::start() else {
        return;
    };
    let names = broker.pipeline("freeze", EVENTS);
    let dir = tempfile::tempdir().unwrap();
    let mut run = TallyProc::builder(&names, "freeze-1", &dir.path().join("state"))
        .bootstrap(&broker.bootstrap)
        .args(["--max-batch-records", "200"])
        .start();
    run.wait_for_metric("tally_restores_total", 1, LONG);
    std::thread::sleep(Duration::from_millis(500));
    broker.node("pause");
    std::thread::sleep(Duration::from_secs(40));
    broker.node("resume");
    broker.wait_drained(&names, EVENTS, &mut run);
    assert!(
        !run.exited(),
        "tally exited during the freeze: {}",
        run.log()
    );
    broker.assert_exactly_once(&names, EVENTS);
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
}
