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
    for kind in [
        "kill9_restart",
        "kill9_new_host",
        "graceful_scale_down",
        "zombie",
        "retention",
    ] {
        assert!(
            summary["faults"][kind].as_u64().unwrap_or(0) >= 1,
            "{kind} applied: {summary:#}"
        );
    }
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
