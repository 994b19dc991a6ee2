//! Durable aggregates against a broker: insights equal an independent recount of
//! the input across crashes between commit and checkpoint, rebalances, replays and
//! broken state directories.

mod common;

use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(180);

#[test]
fn insights_equal_recount_and_state_lists_checkpoints() {
    let names = Names::create("recount", 3);
    let input = produce_generated(&names.input, 5_000, 21, 0.05);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut run = TallyProc::builder(&names, "recount-1", &state).start();
    wait_for_committed(&names.group, &names.input, 5_000, LONG, &mut [&mut run]);
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    assert_insights_match(&names, &input);
    assert_verified(&names, input.valid(), input.malformed);

    let (code, out, err) = tally(&[
        "state".into(),
        "--state-dir".into(),
        state.display().to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    let committed = committed_offsets(&names.group, &names.input);
    for (p, o) in committed {
        let row = out
            .lines()
            .find(|l| {
                l.split_whitespace().nth(2) == Some(&p.to_string()) && l.contains(&names.input)
            })
            .unwrap_or_else(|| panic!("no row for partition {p}:\n{out}"));
        assert_eq!(
            row.split_whitespace().nth(3),
            Some(o.to_string().as_str()),
            "{out}"
        );
    }
    assert!(out.contains("3 checkpoints"), "{out}");
}

#[test]
fn crash_between_commit_and_checkpoint_replays_the_gap() {
    let names = Names::create("gap", 2);
    let input = produce_generated(&names.input, 4_000, 22, 0.05);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut first = TallyProc::builder(&names, "gap-1", &state)
        // A snapshot with every commit: the one committed with `C` is newer
        // than `K`.
        .args([
            "--max-batch-records",
            "500",
            "--snapshot-interval",
            "1ms",
            "--snapshot-input-ratio",
            "0",
        ])
        .env("FAILPOINTS", "after-commit-before-checkpoint=1*off->return")
        .start();
    assert_eq!(
        first.wait(LONG),
        None,
        "killed by the failpoint: {}",
        first.log()
    );
    let mut second = TallyProc::builder(&names, "gap-1", &state).start();
    wait_for_committed(&names.group, &names.input, 4_000, LONG, &mut [&mut second]);
    assert_eq!(second.terminate(), Some(0), "{}", second.log());
    let log = second.log();
    // K < C, and the snapshot committed with C is newer than K: restored from it,
    // nothing to replay.
    assert!(
        log.contains("path=\"snapshot\"") && log.contains("records=0"),
        "the K < C path ran from the snapshot:\n{log}"
    );
    assert_insights_match(&names, &input);
    assert_verified(&names, input.valid(), input.malformed);
}

#[test]
fn partitions_move_both_ways_between_two_instances() {
    let names = Names::create("move", 4);
    let dir = tempfile::tempdir().unwrap();
    let mut a = TallyProc::builder(&names, "move-a", &dir.path().join("a")).start();
    // b leaves the group on shutdown, so a takes its partitions at once.
    let leave = ["--leave-group-on-shutdown"];
    let mut b = TallyProc::builder(&names, "move-b", &dir.path().join("b"))
        .args(&leave)
        .start();
    let mut total = Input::default();
    let mut add = |part: Input| total.merge(&part);
    for round in 0..3u64 {
        add(produce_generated(&names.input, 1_000, 30 + round, 0.05));
        std::thread::sleep(Duration::from_millis(700));
    }
    // b leaves gracefully: a takes every partition...
    assert_eq!(b.terminate(), Some(0), "{}", b.log());
    for round in 3..6u64 {
        add(produce_generated(&names.input, 1_000, 30 + round, 0.05));
        std::thread::sleep(Duration::from_millis(700));
    }
    // ...and b rejoins with its (now stale) state: partitions come back to it.
    let mut b = TallyProc::builder(&names, "move-b", &dir.path().join("b")).start();
    for round in 6..9u64 {
        add(produce_generated(&names.input, 1_000, 30 + round, 0.05));
        std::thread::sleep(Duration::from_millis(700));
    }
    wait_for_committed(
        &names.group,
        &names.input,
        9_000,
        LONG,
        &mut [&mut a, &mut b],
    );
    assert_eq!(a.terminate(), Some(0), "{}", a.log());
    let b_from_snapshots = b.metric("tally_restores_total{path=\"snapshot\"}");
    assert_eq!(b.terminate(), Some(0), "{}", b.log());
    let (log_a, log_b) = (a.log(), b.log());
    assert!(
        log_a.contains("restoring state partitions=[0, 1, 2, 3]"),
        "a took every partition:\n{log_a}"
    );
    assert!(
        log_b.contains("restoring state partitions=[")
            && !log_b.contains("restoring state partitions=[]"),
        "b got partitions back:\n{log_b}"
    );
    assert!(
        b_from_snapshots > 0,
        "b caught up on what a processed (K < C) from the snapshots a wrote:\n{log_b}"
    );
    assert_insights_match(&names, &total);
    assert_verified(&names, total.valid(), total.malformed);
}

#[test]
fn replay_then_rerun_gives_the_same_aggregates() {
    let names = Names::create("replay", 2);
    let input = produce_generated(&names.input, 3_000, 23, 0.05);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // Leaves on shutdown: `tally replay` refuses while the group has a member.
    let leave = ["--leave-group-on-shutdown"];
    let mut run = TallyProc::builder(&names, "replay-1", &state)
        .args(&leave)
        .start();
    wait_for_committed(&names.group, &names.input, 3_000, LONG, &mut [&mut run]);
    // Refused while the group has a member.
    let replay_args = vec![
        "replay".to_string(),
        "--group".into(),
        names.group.clone(),
        "--input-topic".into(),
        names.input.clone(),
        "--to".into(),
        "earliest".into(),
    ];
    let (code, _, err) = tally(&replay_args);
    assert_ne!(code, 0);
    assert!(err.contains("active member"), "{err}");
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    let first = insights(&names)["aggregate"].clone();

    let (code, out, err) = tally(&replay_args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rebuilt"), "{out}");
    assert_eq!(
        committed_offsets(&names.group, &names.input)
            .values()
            .sum::<i64>(),
        0
    );

    let mut rerun = TallyProc::builder(&names, "replay-1", &state).start();
    wait_for_committed(&names.group, &names.input, 3_000, LONG, &mut [&mut rerun]);
    assert!(
        rerun.metric("tally_restores_total{path=\"rebuild\"}") > 0,
        "K > C rebuilt the state:\n{}",
        rerun.log()
    );
    assert_eq!(rerun.terminate(), Some(0), "{}", rerun.log());
    assert_eq!(insights(&names)["aggregate"], first);
    assert_insights_match(&names, &input);
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FutureFormat {
    something: u64,
}

impl tally_state::Versioned for FutureFormat {
    const VERSION: u32 = 999;
}

#[test]
fn unreadable_state_is_an_error_until_reset() {
    let names = Names::create("corrupt", 1);
    let input = produce_generated(&names.input, 1_000, 24, 0.05);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    {
        let store = tally_state::StateStore::open(&state).unwrap();
        let ns = tally_state::Namespace::new(&names.group, &names.input);
        let cp = tally_state::Checkpoint {
            partition: 0,
            next_offset: 0,
            state: FutureFormat { something: 1 },
            fingerprint: String::new(),
        };
        store.checkpoint(&ns, &[cp]).unwrap();
    }
    let mut run = TallyProc::builder(&names, "corrupt-1", &state).start();
    assert_eq!(run.wait(LONG), Some(1), "{}", run.log());
    let log = run.log();
    assert!(
        log.contains("partition 0") && log.contains(&state.display().to_string()),
        "{log}"
    );
    assert!(log.contains("--reset-state"), "{log}");

    // A second process on the same directory is refused while the first holds it.
    let _holder = tally_state::StateStore::open(&state).unwrap();
    let mut locked = TallyProc::builder(&names, "corrupt-2", &state).start();
    assert_eq!(locked.wait(LONG), Some(1));
    assert!(
        locked.log().contains("in use by another process"),
        "{}",
        locked.log()
    );
    drop(_holder);

    let mut reset = TallyProc::builder(&names, "corrupt-1", &state)
        .args(["--reset-state"])
        .start();
    wait_for_committed(&names.group, &names.input, 1_000, LONG, &mut [&mut reset]);
    assert_eq!(reset.terminate(), Some(0), "{}", reset.log());
    assert_insights_match(&names, &input);
}
