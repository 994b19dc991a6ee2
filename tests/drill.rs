//! The short recovery drill (about 60 s of faults, fixed seed): kill -9 with and
//! without state, graceful scale 3 -> 2 -> 3, a SIGSTOP zombie, crashes at
//! failpoints of the cycle and retention trimming the input below the committed
//! offsets while a host loses its state, under load
//! with malformed input; every record exactly once and insights equal to the
//! drill's recount.

mod common;

#[test]
fn short_drill_passes() {
    let work = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally-drill"))
        .args(["--bootstrap-servers", &common::bootstrap()])
        .args([
            "--duration",
            "60",
            "--seed",
            "20261122",
            "--rate",
            "250",
            "--fault-interval",
            "2",
            // Every size of junk record at least once in a minute.
            "--oversize-every",
            "2000",
        ])
        .arg("--tally-bin")
        .arg(common::tally_bin())
        .arg("--work-dir")
        .arg(work.path())
        .output()
        .expect("run tally-drill");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(work.path().join("summary.json")).unwrap_or_default(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "no summary ({e}):\n{stdout}\n{stderr}\n{}",
            group_events(work.path())
        )
    });
    assert!(
        out.status.success(),
        "drill failed:\n{stdout}\n{stderr}\n{}",
        group_events(work.path())
    );
    for k in ["duplicates", "losses", "mismatched", "stray"] {
        assert_eq!(summary[k], 0, "{k}: {summary:#}");
    }
    for k in ["aggregate_mismatches", "snapshot_mismatches"] {
        assert_eq!(
            summary[k].as_array().map(Vec::len),
            Some(0),
            "{k}: {summary:#}"
        );
    }
    // Every partition's latest snapshot was checked against its recount.
    assert_eq!(summary["partitions_checked"], 6, "{summary:#}");
    // Every fault kind struck, with its evidence. One round applies one crash
    // point, the first in turn; `not_struck` covers every one applied.
    for kind in [
        "kill9_restart",
        "kill9_new_host",
        "graceful_scale_down",
        "zombie",
        "retention",
        "crash_point:after-produce",
    ] {
        assert!(
            summary["struck"][kind].as_u64().unwrap_or(0) >= 1,
            "{kind} struck: {summary:#}"
        );
    }
    assert_eq!(summary["not_struck"], serde_json::json!([]), "{summary:#}");
}

/// A short, fault-free drill of one instance with `plant` planted in tally:
/// the drill must fail, and its summary.
fn planted_drill(plant: &str) -> serde_json::Value {
    let work = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tally-drill"))
        .args(["--bootstrap-servers", &common::bootstrap()])
        .args(["--duration", "12", "--seed", "7", "--rate", "300"])
        .args(["--instances", "1", "--faults", "none", "--plant", plant])
        .args(["--oversize-every", "0"])
        .arg("--tally-bin")
        .arg(common::tally_bin())
        .arg("--work-dir")
        .arg(work.path())
        .output()
        .expect("run tally-drill");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the drill must fail with {plant} planted:\n{stdout}\n{stderr}"
    );
    serde_json::from_str(
        &std::fs::read_to_string(work.path().join("summary.json")).unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("no summary ({e}):\n{stdout}\n{stderr}"))
}

/// Every field of the summary that judges tally, but `except`, is clean:
/// each planted fault is caught by the check meant for it, and only by it.
fn clean_but(summary: &serde_json::Value, except: &[&str]) {
    for k in ["duplicates", "losses", "mismatched", "stray"] {
        if !except.contains(&k) {
            assert_eq!(summary[k], 0, "{k}: {summary:#}");
        }
    }
    for k in [
        "aggregate_mismatches",
        "snapshot_mismatches",
        "unexpected_exits",
        "stalls",
        "not_struck",
        "harness_errors",
    ] {
        if !except.contains(&k) {
            assert_eq!(summary[k], serde_json::json!([]), "{k}: {summary:#}");
        }
    }
}

#[test]
fn the_drill_catches_a_planted_loss() {
    let s = planted_drill("loss");
    assert_eq!(s["losses"], 1, "{s:#}");
    // The lost record's output is not where the labels put it.
    clean_but(&s, &["losses", "aggregate_mismatches"]);
}

#[test]
fn the_drill_catches_a_planted_duplicate() {
    let s = planted_drill("duplicate");
    assert_eq!(s["duplicates"], 1, "{s:#}");
    clean_but(&s, &["duplicates"]);
}

#[test]
fn the_drill_catches_a_wrong_snapshot_overwritten_by_a_right_one() {
    let s = planted_drill("wrong-snapshot");
    let found = s["snapshot_mismatches"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{s:#}");
    assert!(found[0].as_str().unwrap().contains(": processed "), "{s:#}");
    // Its partition's latest snapshot is right again.
    assert_eq!(s["partitions_checked"], 6, "{s:#}");
    clean_but(&s, &["snapshot_mismatches"]);
}

#[test]
fn the_drill_catches_a_checkpoint_ahead_of_kafka() {
    let s = planted_drill("checkpoint-ahead");
    let found = s["snapshot_mismatches"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{s:#}");
    let m = found[0].as_str().unwrap();
    assert!(
        m.contains("checkpoint of partition 0 at") && m.contains("is ahead of the committed"),
        "{s:#}"
    );
    clean_but(&s, &["snapshot_mismatches"]);
}

/// The group's story from each instance's log (the work dir is deleted with the
/// test, and CI shows only what the test prints): starts, assignments,
/// revocations, warnings and errors, the last lines of each.
fn group_events(work: &std::path::Path) -> String {
    let mut out = String::new();
    for i in 0..3 {
        let log =
            std::fs::read_to_string(work.join(format!("instance-{i}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                [
                    "=== drill",
                    "partitions ",
                    "stale",
                    "WARN",
                    "ERROR",
                    "error:",
                ]
                .iter()
                .any(|k| l.contains(k))
            })
            .collect();
        out += &format!("--- instance-{i}.log (group events, last 60)\n");
        for l in &lines[lines.len().saturating_sub(60)..] {
            out += &l.chars().take(240).collect::<String>();
            out.push('\n');
        }
    }
    out
}
