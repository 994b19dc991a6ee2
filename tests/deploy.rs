//! The files in `deploy/` and `docker-compose.yml` pass the real tools' checks:
//! `promtool` (alert rules and their unit tests), `kubernetes-validate` (the
//! manifests against the Kubernetes schemas) and `check-jsonschema` with the
//! compose specification. `scripts/setup.sh` installs them (Prometheus from
//! Debian, the validators into `.tools/venv`); a missing one fails its test, or
//! skips it with `TALLY_SKIP_MISSING_TOOLS=1` (`common::tools`). No broker needed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{tool, venv_tool};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
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

#[test]
fn alert_rules_check_and_their_unit_tests_pass() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let out =
        run_ok(Command::new(&promtool).args(["check", "rules", "deploy/prometheus/alerts.yml"]));
    assert!(out.contains("SUCCESS: 13 rules found"), "{out}");
    let out = run_ok(Command::new(&promtool).args([
        "test",
        "rules",
        "deploy/prometheus/alerts_test.yml",
    ]));
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every alert links its runbook section, and the section exists.
#[test]
fn every_alert_has_a_runbook_section() {
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let ops = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    let urls: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url: "))
        .collect();
    assert_eq!(alerts.len(), urls.len(), "an alert without runbook_url");
    for (alert, url) in alerts.iter().zip(urls) {
        assert_eq!(
            url,
            format!("\"docs/operations.md#{}\"", alert.to_lowercase()),
            "{alert}"
        );
        assert!(
            ops.contains(&format!("\n### {alert}\n")),
            "docs/operations.md has no runbook section for {alert}"
        );
    }
}

#[test]
fn kubernetes_manifests_pass_schema_validation() {
    let Some(bin) = venv_tool("kubernetes-validate") else {
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    // The Secret the pods mount, kept apart so `kubectl apply -f deploy/k8s/`
    // never overwrites the real one.
    files.push(repo().join("deploy/kafka-client-secret.example.yaml"));
    let out = run_ok(Command::new(&bin).arg("--strict").args(&files));
    for kind in [
        "statefulset/tally",
        "service/tally",
        "poddisruptionbudget/tally",
        "secret/tally-kafka",
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
        // Secrets come from a mounted Secret, not the pod spec.
        "name: TALLY_KAFKA_CONFIG",
        "secretName: tally-kafka",
    ] {
        assert!(s.contains(needle), "statefulset.yaml lacks {needle:?}");
    }
}

/// A YAML file as JSON, through the venv's Python (PyYAML, which
/// kubernetes-validate brings): no YAML crate in the build for one test.
fn yaml_as_json(python: &Path, path: &str) -> serde_json::Value {
    let out = run_ok(Command::new(python).args([
        "-c",
        "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        path,
    ]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{path}: {e}: {out}"))
}

/// What the review of deploy/k8s asked for, beyond the schemas: the restricted
/// Pod Security Standard, volumes that start fast, no API token, pods spread
/// over nodes, a pinned image, selectors that keep two deployments apart, a
/// headless Service that publishes restoring pods, a PDB that never blocks a
/// drain on a broken pod, and a session that rides out a rolling restart.
#[test]
fn kubernetes_manifests_have_the_operating_properties() {
    let Some(python) = venv_tool("python") else {
        return;
    };
    let sts = yaml_as_json(&python, "deploy/k8s/statefulset.yaml");
    let svc = yaml_as_json(&python, "deploy/k8s/service.yaml");
    let pdb = yaml_as_json(&python, "deploy/k8s/poddisruptionbudget.yaml");
    let pod = &sts["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let csc = &c["securityContext"];
    assert_eq!(csc["allowPrivilegeEscalation"], false);
    assert_eq!(csc["readOnlyRootFilesystem"], true);
    assert_eq!(csc["runAsNonRoot"], true);
    assert_eq!(csc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(csc["seccompProfile"]["type"], "RuntimeDefault");
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["runAsUser"], 10001, "the Dockerfile's USER");
    assert_eq!(psc["fsGroupChangePolicy"], "OnRootMismatch");
    assert_eq!(pod["automountServiceAccountToken"], false);
    let spread = &pod["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    // The image: a version tag, not latest or none.
    let image = c["image"].as_str().unwrap();
    let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
    assert!(
        tag.starts_with(|ch: char| ch.is_ascii_digit()) || image.contains("@sha256:"),
        "image {image} is not pinned"
    );
    // Selectors: name and instance, the same on every object and the pods.
    let selector = serde_json::json!({
        "app.kubernetes.io/name": "tally",
        "app.kubernetes.io/instance": "tally",
    });
    assert_eq!(sts["spec"]["selector"]["matchLabels"], selector);
    assert_eq!(svc["spec"]["selector"], selector);
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], selector);
    assert_eq!(spread["labelSelector"]["matchLabels"], selector);
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(&sts["spec"]["template"]["metadata"]["labels"][k], v);
    }
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(pdb["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    // Timeouts: a session that outlasts a pod's restart (static membership
    // keeps the place only that long), a transaction timeout that holds the
    // session (tally refuses to start otherwise), a grace period above the
    // shutdown bound.
    let env: std::collections::HashMap<&str, &str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    let session = humantime::parse_duration(env["TALLY_SESSION_TIMEOUT"]).unwrap();
    let session = u64::try_from(session.as_millis()).unwrap();
    assert!(
        session >= 45_000,
        "session {session} ms: a restart outlasts it"
    );
    let txn: u64 = env["TALLY_KAFKA_PROPERTIES"]
        .split(';')
        .find_map(|kv| kv.strip_prefix("transaction.timeout.ms="))
        .expect("transaction.timeout.ms set")
        .parse()
        .unwrap();
    assert!(
        txn >= 100 + session + 30_000,
        "transaction.timeout.ms {txn}"
    );
    assert!(!env.contains_key("TALLY_LEAVE_GROUP_ON_SHUTDOWN"));
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > 30);
}

/// docker-compose.yml: Kafka's data on its volume (the image's default log
/// directory is under /tmp, outside it), tally healthchecks, ports on
/// localhost only, and a stop grace period above tally's shutdown bound.
#[test]
fn docker_compose_keeps_kafka_data_and_checks_tally() {
    let Some(python) = venv_tool("python") else {
        return;
    };
    let c = yaml_as_json(&python, "docker-compose.yml");
    let kafka = &c["services"]["kafka"];
    let mount = kafka["volumes"][0].as_str().unwrap();
    let data_dir = mount.split_once(':').unwrap().1;
    assert_eq!(kafka["environment"]["KAFKA_LOG_DIRS"], data_dir);
    for (name, s) in c["services"].as_object().unwrap() {
        for port in s["ports"].as_array().into_iter().flatten() {
            let port = port.as_str().unwrap();
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name} publishes {port} on every interface"
            );
        }
    }
    for name in ["tally-1", "tally-2"] {
        let s = &c["services"][name];
        assert!(
            s["healthcheck"]["test"].is_array(),
            "{name} has no healthcheck"
        );
        let grace = s["stop_grace_period"].as_str().unwrap();
        let secs: u64 = grace.trim_end_matches('s').parse().unwrap();
        assert!(
            secs > 30,
            "{name}: stop_grace_period {grace} is not above --shutdown-timeout 30 s"
        );
    }
}

#[test]
fn docker_compose_passes_the_compose_specification() {
    let Some(bin) = venv_tool("check-jsonschema") else {
        return;
    };
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
    let exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    let all = exprs.join("\n");
    for family in [
        "tally_records_total",
        "tally_dead_letters_total",
        "tally_consumer_lag",
        "tally_transaction_commit_seconds_bucket",
        "tally_end_to_end_latency_seconds_bucket",
        "tally_restore_records_total",
        "tally_rebalances_total",
        "tally_snapshot_refusals_total",
        "process_resident_memory_bytes",
    ] {
        assert!(all.contains(family), "dashboard does not show {family}");
    }
    // Two deployments on one Prometheus are told apart, never summed: every
    // query selects by the job and namespace variables.
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "job", "namespace"]);
    for e in &exprs {
        assert!(
            e.contains("job=~\"$job\", namespace=~\"$namespace\""),
            "a dashboard query ignores the job and namespace: {e}"
        );
    }
    for p in panels {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
    }
    // What an operator looks at first: instances up, time since the last
    // commit, group lag (one series per partition whoever owns it), top
    // partitions by lag; rates in records/s.
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles[..3],
        [
            "Instances up",
            "Time since last commit",
            "Group lag (records)"
        ]
    );
    assert!(all.contains("topk(5, max without (instance, pod) (tally_consumer_lag"));
    let records = panels
        .iter()
        .find(|p| p["title"] == "Records committed by outcome")
        .unwrap();
    assert_eq!(
        records["fieldConfig"]["defaults"]["unit"],
        "suffix: records/s"
    );
}

/// What the Dockerfile's build stage copies (`COPY <src>... <dest>` without
/// `--from`): (source in the build context, destination under WORKDIR).
fn dockerfile_build_context_copies() -> Vec<(String, PathBuf)> {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut copies = Vec::new();
    for line in dockerfile.lines() {
        let Some(rest) = line.trim().strip_prefix("COPY ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        let words: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
        let (dest, sources) = words.split_last().expect("COPY names a destination");
        assert!(!sources.is_empty(), "unexpected COPY line: {line}");
        for src in sources {
            // `COPY a b ./`: into the directory; `COPY dir ./dir`: as that path.
            let to = if dest.ends_with('/') {
                Path::new(dest).join(Path::new(src).file_name().unwrap())
            } else {
                PathBuf::from(dest)
            };
            copies.push((src.to_string(), to));
        }
    }
    assert!(
        !copies.is_empty(),
        "no COPY in the Dockerfile's build stage"
    );
    copies
}

/// The `.dockerignore` patterns. Only names (`target`, `/target`, `target/`)
/// and `**/name` are used, so the test can apply them without Docker's matcher.
fn dockerignore_names() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(".dockerignore"))
        .expect(".dockerignore missing: the build context would hold target/, .git/ and .tools/");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let name = l
                .trim_start_matches("**/")
                .trim_start_matches('/')
                .trim_end_matches('/');
            assert!(
                !name.contains(['*', '?', '[', '!', '/']),
                ".dockerignore pattern {l:?}: keep to plain names so this test can apply it"
            );
            name.to_string()
        })
        .collect()
}

fn copy_tree(from: &Path, to: &Path, ignored: &[String]) {
    let name = from.file_name().unwrap().to_string_lossy().to_string();
    if ignored.contains(&name) {
        return;
    }
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &to.join(e.file_name()), ignored);
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

fn host_target() -> String {
    let out = Command::new("rustc").arg("-vV").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

/// No Docker engine runs here, so the image's build is checked by what decides
/// it: a directory holding exactly what the Dockerfile copies must be a
/// complete workspace. `cargo fetch --locked --offline` parses every member's
/// manifest and target (a `[[bench]]` whose file was not copied fails it) and
/// checks the lock file, without compiling or touching the network.
#[test]
fn docker_build_context_holds_the_whole_workspace() {
    let ignored = dockerignore_names();
    for needed in ["target", ".git", ".tools", ".kafka"] {
        assert!(
            ignored.iter().any(|i| i == needed),
            ".dockerignore does not exclude {needed}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for (src, to) in dockerfile_build_context_copies() {
        let from = repo().join(&src);
        assert!(
            from.exists(),
            "the Dockerfile copies {src}, which does not exist"
        );
        copy_tree(&from, &dir.path().join(to), &ignored);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // This host's target only: the registry cache holds no Windows-only crates.
    let out = Command::new(cargo)
        .args(["fetch", "--locked", "--offline", "--target", &host_target()])
        .current_dir(dir.path())
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Dockerfile's build context is not a complete workspace (add the missing path to a COPY):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reproducible images: base images pinned to an exact version or digest, and
/// a numeric user, so `runAsNonRoot` can verify it without resolving a name.
#[test]
fn dockerfile_pins_its_base_images_and_runs_as_a_numeric_user() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("FROM "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    for image in froms {
        let pinned = image.contains("@sha256:")
            || image.split_once(':').is_some_and(|(_, tag)| {
                // An exact version: `1.95.0-bookworm`, `12.12-slim`, not `1-bookworm`.
                tag.contains('.') && tag.starts_with(|c: char| c.is_ascii_digit())
            });
        assert!(
            pinned,
            "base image {image} is not pinned to an exact version or digest"
        );
    }
    let user = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .last()
        .expect("the Dockerfile sets no USER");
    assert!(
        user.split(':')
            .all(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit())),
        "USER {user} is not numeric (uid:gid)"
    );
}
