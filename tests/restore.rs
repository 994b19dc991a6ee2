//! State that outlives the input's retention (DESIGN.md guarantee 5): a new host
//! restores from the latest snapshot in the insights topic, refuses when the
//! records it would need were deleted, and ignores restores overtaken by newer ones.

mod common;

use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(180);

fn sum_of(v: &serde_json::Value) -> u64 {
    ["processed", "dead_lettered", "filtered"]
        .iter()
        .map(|k| v[k].as_u64().unwrap())
        .sum()
}

/// The scenario of issue 11: a processed 6,000 records and left; retention deleted
/// all but the last 100 records of each partition; 3,000 more arrived; b, a new
/// host with an empty state directory, took over. Its insights must count all
/// 9,000 records, not only the ones still in the input.
#[test]
fn new_host_after_retention_restores_from_snapshots() {
    let names = Names::create("retain", 3);
    let dir = tempfile::tempdir().unwrap();
    let mut all = produce_generated(&names.input, 6_000, 41, 0.05);
    // Leaves on shutdown: b, another instance, takes over at once.
    let leave = ["--leave-group-on-shutdown"];
    let mut a = TallyProc::builder(&names, "retain-a", &dir.path().join("a"))
        .args(&leave)
        .start();
    wait_for_committed(&names.group, &names.input, 6_000, LONG, &mut [&mut a]);
    assert_eq!(a.terminate(), Some(0), "{}", a.log());

    let committed = committed_offsets(&names.group, &names.input);
    for p in 0..3 {
        let c = committed[&p];
        delete_records_below(&names.input, p, c - 100);
        assert_eq!(
            watermarks(&names.input, p).0,
            c - 100,
            "retention trimmed {p}"
        );
    }
    all.merge(&produce_generated(&names.input, 3_000, 42, 0.05));

    let mut b = TallyProc::builder(&names, "retain-b", &dir.path().join("b")).start();
    wait_for_committed(&names.group, &names.input, 9_000, LONG, &mut [&mut b]);
    assert_eq!(
        b.metric("tally_restores_total{path=\"snapshot\"}"),
        3,
        "every partition restored from its snapshot:\n{}",
        b.log()
    );
    assert_eq!(b.metric_sum("tally_restores_total"), 3, "{}", b.log());
    assert_eq!(b.terminate(), Some(0), "{}", b.log());
    assert_insights_match(&names, &all);
    assert_eq!(insights(&names)["aggregate"]["uncounted"], 0);
    // Outputs of the deleted input records cannot be compared; nothing else is off.
    let (code, s) = verify(&names);
    assert_eq!(code, 0, "{s:#}");
    for k in ["missing", "duplicates", "mismatched", "stray"] {
        assert_eq!(s[k], 0, "{k}: {s:#}");
    }
    assert_eq!(
        s["processed"].as_u64().unwrap() + s["dead_lettered"].as_u64().unwrap(),
        9_000 - s["below_log_start"].as_u64().unwrap(),
        "{s:#}"
    );
}

/// A restore finds a partition's latest committed snapshot even when the
/// producer that wrote it aborted a transaction on the insights partition
/// before, and other producers wrote snapshots in between: a read_committed
/// read of the tail skips only the aborted records, never a later commit.
#[test]
fn a_snapshot_behind_an_aborted_transaction_is_found() {
    let names = Names::create("abortsnap", 1);
    let dir = tempfile::tempdir().unwrap();
    // A snapshot in every commit (about one per 50 records).
    let run = |id: &str, total: i64, failpoints: &[(&str, &str)]| {
        let mut p = TallyProc::builder(&names, id, &dir.path().join(id))
            // Leaving on shutdown: the next instance takes over at once.
            .args([
                "--snapshot-interval",
                "1ms",
                "--snapshot-input-ratio",
                "0",
                "--max-batch-records",
                "50",
                "--leave-group-on-shutdown",
            ])
            .envs(failpoints.iter().copied())
            .start();
        wait_for_committed(&names.group, &names.input, total, LONG, &mut [&mut p]);
        assert_eq!(p.terminate(), Some(0), "{}", p.log());
        p.log()
    };
    // Instance a aborts a transaction that reached insights partition 0 early,
    // then some 30 committed snapshots of a follow; then instance c writes a
    // dozen; then a again some 30, up to C. A reader starting after a's abort that does not
    // see a's later records finds c's latest snapshot, far below C.
    let mut all = produce_generated(&names.input, 1_500, 47, 0.05);
    let log = run(
        "abortsnap-a",
        1_500,
        // A rejoin, whose fencing probe is a record delivered to insights
        // partition 0 in a transaction then aborted.
        &[("FAILPOINTS", "consumer-fenced=1*off->1*return->off")],
    );
    assert_eq!(log.matches("rejoined the group").count(), 1, "{log}");
    all.merge(&produce_generated(&names.input, 600, 48, 0.05));
    run("abortsnap-c", 2_100, &[]);
    all.merge(&produce_generated(&names.input, 1_500, 49, 0.05));
    run("abortsnap-a", 3_600, &[]);
    let c = committed_offsets(&names.group, &names.input)[&0];
    assert_eq!(
        latest_snapshot_offsets(&names)[&0],
        c,
        "the shutdown's snapshot is at C"
    );
    // Retention deletes every input record below C: only the snapshot at C can
    // restore the partition exactly.
    delete_records_below(&names.input, 0, c);
    all.merge(&produce_generated(&names.input, 300, 50, 0.05));

    let mut b = TallyProc::builder(&names, "abortsnap-b", &dir.path().join("b")).start();
    wait_for_committed(&names.group, &names.input, 3_900, LONG, &mut [&mut b]);
    assert_eq!(b.terminate(), Some(0), "{}", b.log());
    let log = b.log();
    assert!(
        log.contains(&format!(
            "partition restored partition=0 path=\"snapshot\" next_offset={c}"
        )),
        "{log}"
    );
    assert!(!log.contains("restore cannot be exact yet"), "{log}");
    assert_insights_match(&names, &all);
    assert_eq!(insights(&names)["aggregate"]["uncounted"], 0);
}

/// The group's offsets moved past the latest snapshot (`tally replay --to` a time
/// after the last record) and retention then deleted part of `[S, C)`: a new host
/// cannot count those records, so it refuses; with `--allow-inexact-restore` it
/// runs and reports exactly how many records it could not count.
#[test]
fn refuses_when_the_records_after_the_snapshot_are_gone() {
    let names = Names::create("refuse", 2);
    let dir = tempfile::tempdir().unwrap();
    let first = produce_generated(&names.input, 2_000, 43, 0.0);
    // Leaves on shutdown: `tally replay` refuses while the group has a member.
    let leave = ["--leave-group-on-shutdown"];
    let mut a = TallyProc::builder(&names, "refuse-a", &dir.path().join("a"))
        .args(&leave)
        .start();
    wait_for_committed(&names.group, &names.input, 2_000, LONG, &mut [&mut a]);
    assert_eq!(a.terminate(), Some(0), "{}", a.log());
    let snapshots = committed_offsets(&names.group, &names.input);

    produce_generated(&names.input, 1_000, 44, 0.0);
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (code, out, err) = tally(&[
        "replay".into(),
        "--group".into(),
        names.group.clone(),
        "--input-topic".into(),
        names.input.clone(),
        "--to".into(),
        future,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let committed = committed_offsets(&names.group, &names.input);
    let mut deleted = 0;
    for p in 0..2 {
        let (s, c) = (snapshots[&p], committed[&p]);
        assert!(c - s > 100, "partition {p}: [S, C) = [{s}, {c})");
        delete_records_below(&names.input, p, c - 50);
        deleted += c - 50 - s;
    }

    let mut b = TallyProc::builder(&names, "refuse-b", &dir.path().join("b")).start();
    assert_eq!(b.wait(LONG), Some(1), "{}", b.log());
    let log = b.log();
    assert!(
        log.contains("deleted by retention") && log.contains("--allow-inexact-restore"),
        "{log}"
    );
    let named = (0..2).any(|p| {
        log.contains(&format!(
            "partition {p}: the aggregates cover offsets below {} but the input's log start is now {}",
            snapshots[&p],
            committed[&p] - 50
        ))
    });
    assert!(named, "names partition and offsets:\n{log}");

    let mut inexact = TallyProc::builder(&names, "refuse-b", &dir.path().join("b"))
        .args(["--allow-inexact-restore"])
        .start();
    // New records, so it commits new snapshots.
    let more = produce_generated(&names.input, 200, 45, 0.0);
    let total = committed.values().sum::<i64>() + 200;
    wait_for_committed(&names.group, &names.input, total, LONG, &mut [&mut inexact]);
    assert_eq!(inexact.terminate(), Some(0), "{}", inexact.log());
    assert!(
        inexact.log().contains("RESTORE IS INEXACT"),
        "{}",
        inexact.log()
    );
    let a = insights(&names)["aggregate"].clone();
    assert_eq!(a["uncounted"], deleted, "{a:#}");
    // Everything else is counted: the first run, the 50 + 50 replayed records
    // still in the input, and the new ones.
    assert_eq!(sum_of(&a), first.total + 100 + more.total, "{a:#}");
}

/// Issue 9, item 3: a restore overtaken by a newer one must not be accepted. The
/// first restore of partition 1 stalls 8 s after reading the committed offset
/// (then 0); meanwhile a fatal commit replaces the producer (new restores, fast),
/// 30 commits take partition 1 past 0, and a second fatal commit starts a third restore
/// that stalls 20 s. The first restore's result then arrives while partition 1
/// is restoring again: accepting it would rewind partition 1 to offset 0 and
/// write its records a second time.
#[test]
fn stale_restore_is_ignored_after_producer_replacements() {
    let names = Names::create("stale", 2);
    let input = produce_generated(&names.input, 6_000, 46, 0.05);
    let dir = tempfile::tempdir().unwrap();
    let mut run = TallyProc::builder(&names, "stale-1", &dir.path().join("state"))
        .args(["--max-batch-records", "100"])
        .env(
            "FAILPOINTS",
            "restore-delay-1=1*sleep(8000)->1*off->sleep(20000);commit-fatal=1*return->30*off->1*return->off",
        )
        .start();
    wait_for_committed(&names.group, &names.input, 6_000, LONG, &mut [&mut run]);
    assert_eq!(
        run.metric("tally_producer_replacements_total"),
        2,
        "{}",
        run.log()
    );
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    let log = run.log();
    assert_verified(&names, input.valid(), input.malformed);
    assert_insights_match(&names, &input);
    assert!(log.contains("stale restore result ignored"), "{log}");
}

/// Issue 9, item 5: a seek before librdkafka started the partition's fetcher
/// (`__STATE`) is retried, never fatal.
#[test]
fn seek_before_the_fetcher_started_is_retried() {
    retried_restore("seek", "seek-not-ready=3*return", 0);
}

/// Issue 9, item 6: transient restore errors are retried with backoff.
#[test]
fn transient_restore_errors_are_retried() {
    retried_restore("transient", "restore-transient=2*return", 2);
}

fn retried_restore(test: &str, failpoints: &str, restore_failures: usize) {
    let names = Names::create(test, 2);
    let input = produce_generated(&names.input, 2_000, 47, 0.05);
    let dir = tempfile::tempdir().unwrap();
    let mut run = TallyProc::builder(&names, &format!("{test}-1"), &dir.path().join("state"))
        .env("FAILPOINTS", failpoints)
        .start();
    wait_for_committed(&names.group, &names.input, 2_000, LONG, &mut [&mut run]);
    assert_eq!(run.metric_sum("tally_restores_total"), 2, "{}", run.log());
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    // No metric counts failed attempts: the retry warnings are what shows them.
    let log = run.log();
    assert_eq!(
        log.matches("restore failed").count(),
        restore_failures,
        "{log}"
    );
    assert_verified(&names, input.valid(), input.malformed);
}

/// Checkpoints and snapshots carry the configuration they were computed under:
/// restarting with another horizon is refused, naming what changed, until the
/// operator asks for a rebuild under the new configuration.
#[test]
fn configuration_change_is_refused_until_a_rebuild_is_asked_for() {
    let names = Names::create("fprint", 2);
    let input = produce_generated(&names.input, 1_000, 48, 0.05);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut a = TallyProc::builder(&names, "fprint-1", &state).start();
    wait_for_committed(&names.group, &names.input, 1_000, LONG, &mut [&mut a]);
    assert_eq!(a.terminate(), Some(0), "{}", a.log());

    let changed = ["--minute-horizon", "60"];
    let mut refused = TallyProc::builder(&names, "fprint-1", &state)
        .args(&changed)
        .start();
    assert_eq!(refused.wait(LONG), Some(1), "{}", refused.log());
    let log = refused.log();
    assert!(
        log.contains("--minute-horizon: 1440 -> 60") && log.contains("--rebuild-on-config-change"),
        "{log}"
    );
    // A new host (no checkpoint) finds the same mismatch in the snapshots.
    let mut new_host = TallyProc::builder(&names, "fprint-1", &dir.path().join("b"))
        .args(&changed)
        .start();
    assert_eq!(new_host.wait(LONG), Some(1), "{}", new_host.log());
    assert!(
        new_host
            .log()
            .contains("latest snapshot was written under another configuration"),
        "{}",
        new_host.log()
    );

    let rebuild: Vec<&str> = changed
        .iter()
        .copied()
        .chain(["--rebuild-on-config-change"])
        .collect();
    let mut rebuilt = TallyProc::builder(&names, "fprint-1", &state)
        .args(&rebuild)
        .start();
    let more = produce_generated(&names.input, 100, 49, 0.05);
    wait_for_committed(&names.group, &names.input, 1_100, LONG, &mut [&mut rebuilt]);
    assert_eq!(
        rebuilt.metric("tally_restores_total{path=\"rebuild\"}"),
        2,
        "{}",
        rebuilt.log()
    );
    assert_eq!(rebuilt.terminate(), Some(0), "{}", rebuilt.log());
    let mut all = input;
    all.merge(&more);
    assert_insights_match(&names, &all);
}

/// `tally run` refuses an insights topic that cannot serve restores (not
/// co-partitioned with the input, not compacted) and missing topics; asking
/// about a missing one does not create it, as a producer-type client's metadata
/// request would on a Kafka with auto.create.topics.enable.
#[test]
fn run_refuses_an_insights_topic_that_cannot_serve_restores() {
    let names = Names::create("insck", 2);
    let dir = tempfile::tempdir().unwrap();
    let wide = unique("insck-wide");
    create_topic_with(&wide, 3, &[("cleanup.policy", "compact")]);
    // Compacted, but retention still deletes an idle partition's only snapshot.
    let both = unique("insck-both");
    create_topic_with(&both, 2, &[("cleanup.policy", "compact,delete")]);
    for (insights, expect) in [
        (&wide, "has 3 partitions but the input"),
        (&names.output, "cleanup.policy=delete"),
        (&both, "cleanup.policy=compact,delete: the `delete` policy"),
    ] {
        let bad = Names {
            insights: insights.clone(),
            ..names.clone()
        };
        let mut run = TallyProc::builder(&bad, "insck-1", &dir.path().join("s")).start();
        assert_eq!(run.wait(LONG), Some(1), "{}", run.log());
        assert!(run.log().contains(expect), "{}", run.log());
    }
    // A missing insights, output or DLQ topic is refused, and not created (a
    // topic being auto-created would answer LeaderNotAvailable first).
    let (ins, out, dlq) = (
        unique("insck-no-ins"),
        unique("insck-no-out"),
        unique("insck-no-dlq"),
    );
    for (bad, name) in [
        (
            Names {
                insights: ins.clone(),
                ..names.clone()
            },
            &ins,
        ),
        (
            Names {
                output: out.clone(),
                ..names.clone()
            },
            &out,
        ),
        (
            Names {
                dlq: dlq.clone(),
                ..names.clone()
            },
            &dlq,
        ),
    ] {
        let mut run = TallyProc::builder(&bad, "insck-1", &dir.path().join("s")).start();
        assert_eq!(run.wait(LONG), Some(1), "{}", run.log());
        let log = run.log();
        assert!(
            log.contains(&format!("topic {name}")) && log.contains("exist"),
            "{log}"
        );
        assert!(!log.contains("LeaderNotAvailable"), "{log}");
        assert!(!topic_exists(name), "run created {name}");
    }
}

/// The latest snapshot's offset in the insights topic, by input partition.
fn latest_snapshot_offsets(names: &Names) -> std::collections::BTreeMap<i32, i64> {
    read_all(&names.insights)
        .iter()
        .map(Record::json)
        .filter(|s| s["topic"] == names.input.as_str())
        .map(|s| {
            (
                s["partition"].as_i64().unwrap() as i32,
                s["next_offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn snapshots_written(names: &Names, partition: i32) -> usize {
    read_all(&names.insights)
        .iter()
        .filter(|r| r.partition == partition)
        .count()
}

/// Snapshots are written at most once per `--snapshot-interval`, the insights
/// topic still catches up with the committed offsets once the stream stops (no
/// restart needed), and a new host taking over after a kill -9 restores from a
/// snapshot older than `C` and replays exactly `[S, C)`.
#[test]
fn snapshots_follow_the_interval_and_a_crash_replays_the_gap() {
    let names = Names::create("interval", 2);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("a");
    // Commits every 100 records: about 20 commits, which at one snapshot per
    // commit would be as many snapshots per partition.
    let args = [
        "--max-batch-records",
        "100",
        "--snapshot-interval",
        "4000ms",
    ];
    let mut a = TallyProc::builder(&names, "interval-a", &state)
        .args(&args)
        .start();
    let mut all = Input::default();
    for round in 0..5u64 {
        all.merge(&produce_generated(&names.input, 400, 60 + round, 0.05));
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_for_committed(&names.group, &names.input, 2_000, LONG, &mut [&mut a]);
    let committed = committed_offsets(&names.group, &names.input);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let latest = latest_snapshot_offsets(&names);
        if (0..2).all(|p| latest.get(&p) == committed.get(&p)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "snapshots {latest:?} did not catch up with the committed offsets {committed:?} while idle:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // One at the restore (whether the topic's latest covers `C` is unknown
    // then), at most one more in the stream's ~2 s, one to catch up.
    for p in 0..2 {
        let n = snapshots_written(&names, p);
        assert!(
            n <= 3,
            "partition {p}: {n} snapshots in ~2 s at a 4 s interval"
        );
    }
    assert_eq!(a.terminate(), Some(0), "{}", a.log());
    let written: Vec<usize> = (0..2).map(|p| snapshots_written(&names, p)).collect();

    // A snapshot at most once in 10 minutes: after its restore's, none until the crash.
    let args = ["--snapshot-interval", "600000ms"];
    let mut a = TallyProc::builder(&names, "interval-a", &state)
        .args(&args)
        .start();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (0..2).any(|p| snapshots_written(&names, p) <= written[p as usize]) {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot after the restore:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = latest_snapshot_offsets(&names);
    assert_eq!(
        before,
        committed_offsets(&names.group, &names.input)
            .into_iter()
            .collect()
    );
    all.merge(&produce_generated(&names.input, 1_000, 70, 0.05));
    wait_for_committed(&names.group, &names.input, 3_000, LONG, &mut [&mut a]);
    a.kill9();
    let committed = committed_offsets(&names.group, &names.input);
    let latest = latest_snapshot_offsets(&names);
    assert_eq!(latest, before, "no snapshot within the interval");
    let gap: i64 = (0..2).map(|p| committed[&p] - latest[&p]).sum();
    assert_eq!(
        gap, 1_000,
        "the snapshots lag the committed offsets by the new records"
    );

    // A new host in a's place (its instance id, an empty state directory).
    let mut b = TallyProc::builder(&names, "interval-a", &dir.path().join("b")).start();
    wait_for_committed(&names.group, &names.input, 3_000, LONG, &mut [&mut b]);
    b.wait_for_metric("tally_restores_total", 2, Duration::from_secs(60));
    assert_eq!(
        b.metric("tally_restore_records_total"),
        1_000,
        "both partitions replayed [S, C) from their snapshots:\n{}",
        b.log()
    );
    assert_eq!(b.terminate(), Some(0), "{}", b.log());
    assert_insights_match(&names, &all);
    assert_verified(&names, all.valid(), all.malformed);
}

/// Issue 29, item 1: the group's committed offsets vanish (expired
/// `offsets.retention.minutes` after the group emptied, or deleted by an
/// operator) while the checkpoints and snapshots remain. A restart must not
/// take that for "never committed" and process the retained log again: it
/// refuses, naming the partition, K and S; with `--resume-from-state` it resumes
/// from the newest state (after clean stops, exactly where the group was) and
/// commits it.
#[test]
fn lost_group_offsets_are_refused_then_resumed_from_state() {
    let names = Names::create("lostoff", 2);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("a");
    let mut all = produce_generated(&names.input, 2_000, 51, 0.05);
    let mut a = TallyProc::builder(&names, "lostoff-a", &state).start();
    wait_for_committed(&names.group, &names.input, 2_000, LONG, &mut [&mut a]);
    assert_eq!(a.terminate(), Some(0), "{}", a.log());
    let committed = committed_offsets(&names.group, &names.input);
    assert_eq!(
        latest_snapshot_offsets(&names),
        committed
            .iter()
            .map(|(p, c)| (*p, *c))
            .collect::<std::collections::BTreeMap<_, _>>(),
        "a clean stop leaves every snapshot at C"
    );

    delete_group(&names.group);
    assert!(
        committed_offsets(&names.group, &names.input).is_empty(),
        "the group's offsets are gone"
    );
    all.merge(&produce_generated(&names.input, 500, 52, 0.05));

    let mut refused = TallyProc::builder(&names, "lostoff-a", &state).start();
    assert_eq!(
        refused.wait(Duration::from_secs(60)),
        Some(1),
        "refuses instead of processing the retained log again:\n{}",
        refused.log()
    );
    let log = refused.log();
    let named = committed.iter().any(|(p, c)| {
        log.contains(&format!(
            "partition {p}: the group has no committed offset, but a local checkpoint at K={c} \
             and a snapshot at S={c} exist"
        ))
    });
    assert!(named, "names partition, K and S:\n{log}");
    assert!(log.contains("--resume-from-state"), "{log}");
    assert!(
        committed_offsets(&names.group, &names.input).is_empty(),
        "nothing committed by the refusing run"
    );

    let mut resumed = TallyProc::builder(&names, "lostoff-a", &state)
        .args(["--resume-from-state"])
        .start();
    wait_for_committed(&names.group, &names.input, 2_500, LONG, &mut [&mut resumed]);
    assert_eq!(resumed.terminate(), Some(0), "{}", resumed.log());
    let log = resumed.log();
    assert_eq!(log.matches("RESUMING FROM STATE").count(), 2, "{log}");
    assert_insights_match(&names, &all);
    let (code, s) = verify(&names);
    assert_eq!(code, 0, "{s:#}");
    for k in ["missing", "duplicates", "mismatched", "stray", "unconsumed"] {
        assert_eq!(s[k], 0, "{k}: {s:#}");
    }
    assert_eq!(sum_of(&s), 2_500, "{s:#}");
}

/// Issue 29, item 4: partitions added to the input while tally runs would send
/// their snapshots to insights partitions that do not exist. The assignment of
/// such a partition stops `tally run`, saying to add the same partitions to the
/// insights topic; nothing of the new partition is processed.
#[test]
fn input_partitions_added_at_runtime_stop_the_run() {
    let names = Names::create("grow", 2);
    let dir = tempfile::tempdir().unwrap();
    produce_generated(&names.input, 500, 53, 0.0);
    let mut run = TallyProc::builder(&names, "grow-1", &dir.path().join("s"))
        // librdkafka notices new partitions at its next metadata refresh.
        .args(["-X", "topic.metadata.refresh.interval.ms=1000"])
        .start();
    wait_for_committed(&names.group, &names.input, 500, LONG, &mut [&mut run]);
    add_partitions(&names.input, 3);
    produce(
        &names.input,
        Some(2),
        &[(Some(b"k".to_vec()), Some(b"{}".to_vec()))],
    );
    assert_eq!(
        run.wait(Duration::from_secs(90)),
        Some(1),
        "stops when partition 2 is assigned:\n{}",
        run.log()
    );
    let log = run.log();
    assert!(
        log.contains(&format!(
            "input partitions [2] of {} have no insights partition: {} has 2 partitions",
            names.input, names.insights
        )) && log.contains("--partitions 3"),
        "{log}"
    );
    assert!(
        !committed_offsets(&names.group, &names.input).contains_key(&2),
        "nothing committed for partition 2"
    );
    assert!(
        read_all(&names.output)
            .iter()
            .all(|r| r.json()["source_partition"] != 2),
        "nothing of partition 2 processed"
    );
}

/// Issue 29, item 2: retention overtakes the running consumer. librdkafka jumps
/// to the log start (`auto.offset.reset=earliest`) over records nobody read;
/// tally must not skip them silently. It stops, naming the partition and the
/// range, with nothing committed past it; the restart refuses the same gap
/// unless `--allow-inexact-restore`, which counts it as `uncounted`.
#[test]
fn retention_overtaking_the_running_consumer_is_not_skipped_silently() {
    let names = Names::create("overtaken", 1);
    let dir = tempfile::tempdir().unwrap();
    let first = produce_generated(&names.input, 500, 54, 0.0);
    let mut run = TallyProc::builder(&names, "overtaken-1", &dir.path().join("s")).start();
    wait_for_committed(&names.group, &names.input, 500, LONG, &mut [&mut run]);
    // Stopped (well within the session timeout), it fetches nothing while
    // retention deletes records it has not read.
    run.stop_signal();
    produce_generated(&names.input, 1_000, 55, 0.0);
    delete_records_below(&names.input, 0, 1_100);
    run.cont_signal();
    assert_eq!(
        run.wait(Duration::from_secs(60)),
        Some(1),
        "stops instead of jumping over [500, 1100):\n{}",
        run.log()
    );
    let log = run.log();
    assert!(
        log.contains(
            "partition 0: retention deleted input records [500, 1100) before tally read them"
        ),
        "{log}"
    );
    assert_eq!(committed_offsets(&names.group, &names.input)[&0], 500);

    let mut inexact = TallyProc::builder(&names, "overtaken-1", &dir.path().join("s"))
        .args(["--allow-inexact-restore"])
        .start();
    wait_for_committed(&names.group, &names.input, 1_500, LONG, &mut [&mut inexact]);
    assert_eq!(inexact.terminate(), Some(0), "{}", inexact.log());
    let a = insights(&names)["aggregate"].clone();
    assert_eq!(a["uncounted"], 600, "{a:#}");
    assert_eq!(sum_of(&a), first.total + 400, "{a:#}");
}

/// Retention deleted records past the group's committed offset while no
/// instance ran, and a new host (no checkpoint) restores from the snapshot at
/// `C` with `--allow-inexact-restore`: the deleted records are counted as
/// `uncounted` exactly once, by whichever side (restore or live consumer) owns
/// them.
#[test]
fn records_deleted_past_c_are_counted_once_by_a_new_host() {
    let names = Names::create("pastc", 1);
    let dir = tempfile::tempdir().unwrap();
    let first = produce_generated(&names.input, 500, 56, 0.0);
    let mut a = TallyProc::builder(&names, "pastc-a", &dir.path().join("a")).start();
    wait_for_committed(&names.group, &names.input, 500, LONG, &mut [&mut a]);
    // The shutdown's snapshot is at `C` = 500.
    assert_eq!(a.terminate(), Some(0), "{}", a.log());
    produce_generated(&names.input, 1_000, 57, 0.0);
    delete_records_below(&names.input, 0, 1_100);
    let mut b = TallyProc::builder(&names, "pastc-a", &dir.path().join("b"))
        .args(["--allow-inexact-restore"])
        .start();
    wait_for_committed(&names.group, &names.input, 1_500, LONG, &mut [&mut b]);
    // The live consumer counted them: the restore stopped at `C`.
    assert_eq!(b.metric("tally_skipped_by_retention_total"), 600);
    assert_eq!(b.terminate(), Some(0), "{}", b.log());
    let agg = insights(&names)["aggregate"].clone();
    assert_eq!(agg["uncounted"], 600, "{agg:#}\n{}", b.log());
    assert_eq!(sum_of(&agg), first.total + 400, "{agg:#}");
}
