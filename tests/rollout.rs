//! Rolling restarts with static membership: a member that shuts down cleanly
//! keeps its place in the group, so restarting it within the session timeout
//! moves no partition and the other members see no rebalance; with
//! `--leave-group-on-shutdown` it leaves, and the others take over at once.
//! Counted from each instance's `/metrics` (`tally_rebalances_total`), and
//! every record checked exactly once.

mod common;

use std::time::{Duration, Instant};

use common::*;

const LONG: Duration = Duration::from_secs(180);

/// A session that outlasts a restart of the test's instance (stop, start-up,
/// `init_transactions`, join) on a busy 2-core machine. The default
/// `transaction.timeout.ms` (60 s) holds it plus the commit interval plus 30 s.
const SESSION: &str = "20000";

/// Waits until the two instances are ready and own every partition between
/// them, and their rebalance counters have stood still for 3 s (the group
/// settled).
fn settled(a: &mut TallyProc, b: &mut TallyProc, partitions: u64) -> (u64, u64) {
    let deadline = Instant::now() + LONG;
    let mut last = None;
    let mut since = Instant::now();
    loop {
        let owned = a.metric("tally_assigned_partitions") + b.metric("tally_assigned_partitions");
        let ready = a.metric("tally_ready") + b.metric("tally_ready");
        let counts = (
            a.metric("tally_rebalances_total"),
            b.metric("tally_rebalances_total"),
        );
        if owned == partitions && ready == 2 && last == Some(counts) {
            if since.elapsed() >= Duration::from_secs(3) {
                return counts;
            }
        } else {
            since = Instant::now();
        }
        last = Some(counts);
        assert!(
            Instant::now() < deadline,
            "the group did not settle: {owned} of {partitions} partitions owned, {ready} ready\n{}\n----\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Restarts instance a cleanly while b keeps running; returns b's rebalance
/// counter before a's stop and after a is back and the input drained. While a
/// is down, b either keeps its own partitions only (a kept its place) or, when
/// a leaves, takes all of them within a few seconds, well inside the session.
fn restart_one_of_two(test: &str, leave: bool) -> (u64, u64) {
    let names = Names::create(test, 4);
    let dir = tempfile::tempdir().unwrap();
    let first = produce_generated(&names.input, 4_000, 61, 0.05);
    let mut flags = vec!["--session-timeout", SESSION];
    if leave {
        flags.push("--leave-group-on-shutdown");
    }
    let a_state = dir.path().join("a");
    let mut a = TallyProc::builder(&names, &format!("{test}-a"), &a_state)
        .args(&flags)
        .start();
    let mut b = TallyProc::builder(&names, &format!("{test}-b"), &dir.path().join("b"))
        .args(["--session-timeout", SESSION])
        .start();
    wait_for_committed(
        &names.group,
        &names.input,
        4_000,
        LONG,
        &mut [&mut a, &mut b],
    );
    let (_, before) = settled(&mut a, &mut b, 4);
    let b_owned = b.metric("tally_assigned_partitions");
    assert_eq!(a.terminate(), Some(0), "{}", a.log());
    let stopped = Instant::now();
    if leave {
        wait_for("b to take every partition", Duration::from_secs(10), || {
            (b.metric("tally_assigned_partitions") == 4).then_some(())
        });
        eprintln!(
            "b owned all 4 partitions {:?} after a stopped",
            stopped.elapsed()
        );
    } else {
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(b.metric("tally_assigned_partitions"), b_owned);
        assert_eq!(b.metric("tally_rebalances_total"), before);
    }
    // Records arrive while a is down: its partitions wait for it (or were
    // handed to b).
    let second = produce_generated(&names.input, 2_000, 62, 0.05);
    let mut a = TallyProc::builder(&names, &format!("{test}-a"), &a_state)
        .args(&flags)
        .start();
    wait_for_committed(
        &names.group,
        &names.input,
        6_000,
        LONG,
        &mut [&mut a, &mut b],
    );
    let (_, after) = settled(&mut a, &mut b, 4);
    assert_eq!(a.terminate(), Some(0), "{}", a.log());
    assert_eq!(b.terminate(), Some(0), "{}", b.log());
    assert_verified(
        &names,
        first.valid() + second.valid(),
        first.malformed + second.malformed,
    );
    eprintln!("{test}: b's tally_rebalances_total {before} before a's restart, {after} after");
    (before, after)
}

#[test]
fn a_clean_restart_keeps_the_static_membership_and_rebalances_no_one() {
    let (before, after) = restart_one_of_two("rollout", false);
    assert_eq!(
        after,
        before,
        "the other instance saw {} rebalance(s) during the restart",
        after - before
    );
}

#[test]
fn leaving_on_shutdown_hands_the_partitions_over_at_once() {
    // b is assigned a's partitions when a leaves, and gives them back when a
    // rejoins: two rebalances.
    let (before, after) = restart_one_of_two("leave", true);
    assert_eq!(after, before + 2, "rebalances seen by the other instance");
}
