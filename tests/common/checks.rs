//! What the tests assert about a pipeline's end result: the group's commits,
//! `tally verify` and `tally insights`.

use std::time::{Duration, Instant};

use super::{Input, Names, TallyProc, committed_offsets, tally};

/// Waits until the group's committed offsets of `topic` sum to `total`.
pub fn wait_for_committed(
    group: &str,
    topic: &str,
    total: i64,
    timeout: Duration,
    procs: &mut [&mut TallyProc],
) {
    let deadline = Instant::now() + timeout;
    loop {
        let sum: i64 = committed_offsets(group, topic).values().sum();
        if sum >= total {
            assert_eq!(sum, total, "committed past the end of the input");
            return;
        }
        for p in procs.iter_mut() {
            if p.exited() {
                panic!("tally exited early; log:\n{}", p.log());
            }
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.log()).collect();
            panic!(
                "group {group} committed {sum} of {total} within {timeout:?}; logs:\n{}",
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `tally verify --json` for the pipeline; returns its exit code and summary.
pub fn verify(names: &Names) -> (i32, serde_json::Value) {
    verify_with(names, &[])
}

/// Like [`verify`], with extra flags (e.g. the limits the run was given).
pub fn verify_with(names: &Names, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec![
        "verify".to_string(),
        "--json".into(),
        "--group-id".into(),
        names.group.clone(),
    ];
    args.extend(names.topic_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    let (code, out, err) = tally(&args);
    let summary =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("verify output ({e}): {out}\n{err}"));
    (code, summary)
}

/// Asserts verify passes with exactly these outcome counts.
pub fn assert_verified(names: &Names, processed: u64, dead_lettered: u64) {
    assert_verified_with(names, &[], processed, dead_lettered);
}

/// Like [`assert_verified`], with extra flags for `tally verify`.
pub fn assert_verified_with(names: &Names, extra: &[&str], processed: u64, dead_lettered: u64) {
    let (code, s) = verify_with(names, extra);
    assert_eq!(code, 0, "verify failed: {s:#}");
    assert_eq!(s["processed"], processed, "{s:#}");
    assert_eq!(s["dead_lettered"], dead_lettered, "{s:#}");
    assert_eq!(s["filtered"], 0, "{s:#}");
    for k in ["missing", "duplicates", "mismatched", "stray", "unconsumed"] {
        assert_eq!(s[k], 0, "{k}: {s:#}");
    }
}

/// `tally insights --json` for the pipeline.
pub fn insights(names: &Names) -> serde_json::Value {
    let (code, out, err) = tally(&[
        "insights".into(),
        "--json".into(),
        "--insights-topic".into(),
        names.insights.clone(),
        "--input-topic".into(),
        names.input.clone(),
    ]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

pub fn counts(v: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, c)| (k.clone(), c.as_u64().unwrap()))
        .collect()
}

/// Insight totals equal what the test counted from the input it produced.
pub fn assert_insights_match(names: &Names, input: &Input) {
    let v = insights(names);
    let a = &v["aggregate"];
    assert_eq!(a["processed"], input.valid(), "{v:#}");
    assert_eq!(a["dead_lettered"], input.malformed, "{v:#}");
    assert_eq!(counts(&a["by_device_type"]), input.by_device_type, "{v:#}");
    assert_eq!(counts(&a["by_app_version"]), input.by_app_version, "{v:#}");
    assert_eq!(counts(&a["by_locale"]), input.by_locale, "{v:#}");
    let minutes: u64 =
        counts(&a["per_minute"]).values().sum::<u64>() + a["older_than_horizon"].as_u64().unwrap();
    assert_eq!(minutes, input.valid(), "{v:#}");
}
