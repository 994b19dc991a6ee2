//! Operating `tally run`: the endpoint against a broker, and a real Prometheus
//! scraping it. Counters count committed work, so after a drain they equal the
//! input exactly; `/readyz` says 503 while a restore is held and 200 after;
//! `/insights` equals `tally insights` for the instance's partitions; every
//! dashboard and alert expression evaluates to series on a real Prometheus.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(180);

/// The value of the sample `key` (`name{labels}` exactly as exported).
fn sample(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("sample value"))
}

fn sample_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn drained_input_is_counted_exactly_and_readyz_follows_the_restore() {
    let names = Names::create("ops", 3);
    let input = produce_generated(&names.input, 3_000, 21, 0.05);
    let dir = tempfile::tempdir().unwrap();
    // The restore of the first assigned partition is held for 5 s.
    let mut run = TallyProc::builder(&names, "ops-1", &dir.path().join("state"))
        .env("FAILPOINTS", "restore-hold=1*sleep(5000)")
        .start();
    let base = run.endpoint();
    assert_eq!(http_get(&format!("{base}/healthz")).0, 200);
    let not_ready = wait_for("/readyz to report a restore", LONG, || {
        let (code, body) = http_get(&format!("{base}/readyz"));
        (code == 503 && body.contains("restoring partition")).then_some(body)
    });
    let reason: serde_json::Value = serde_json::from_str(&not_ready).unwrap();
    assert_eq!(reason["ready"], false, "{not_ready}");
    wait_for("/readyz 200 after the restore", LONG, || {
        (http_get(&format!("{base}/readyz")).0 == 200).then_some(())
    });
    wait_for_committed(&names.group, &names.input, 3_000, LONG, &mut [&mut run]);

    // The lag gauges are refreshed off the loop every few seconds.
    let text = wait_for("every partition's lag to read 0", LONG, || {
        let (_, text) = http_get(&format!("{base}/metrics"));
        (0..3)
            .all(|p| {
                sample(&text, &format!("tally_consumer_lag{{partition=\"{p}\"}}")) == Some(0.0)
            })
            .then_some(text)
    });
    let get = |key: &str| sample(&text, key).unwrap_or_else(|| panic!("{key} missing:\n{text}"));
    assert_eq!(
        get("tally_records_total{outcome=\"processed\"}"),
        input.valid() as f64,
        "{text}"
    );
    assert_eq!(
        get("tally_records_total{outcome=\"dead_lettered\"}"),
        input.malformed as f64
    );
    assert_eq!(get("tally_records_total{outcome=\"filtered\"}"), 0.0);
    assert_eq!(get("tally_transactions_total{result=\"aborted\"}"), 0.0);
    assert!(get("tally_transactions_total{result=\"committed\"}") >= 1.0);
    assert_eq!(get("tally_end_to_end_latency_seconds_count"), 3_000.0);
    assert_eq!(
        get("tally_transaction_commit_seconds_count"),
        get("tally_transactions_total{result=\"committed\"}")
    );
    assert_eq!(get("tally_assigned_partitions"), 3.0);
    assert_eq!(get("tally_rebalances_total"), 1.0);
    assert_eq!(get("tally_restore_records_total"), 0.0);
    assert_eq!(get("tally_restores_total{path=\"rebuild\"}"), 3.0);
    assert_eq!(get("tally_producer_replacements_total"), 0.0);
    assert_eq!(get("tally_ready"), 1.0);
    assert_eq!(
        get(&format!(
            "tally_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    let committed = committed_offsets(&names.group, &names.input);
    for p in 0..3 {
        assert_eq!(
            get(&format!("tally_partition_restoring{{partition=\"{p}\"}}")),
            0.0
        );
        assert_eq!(
            get(&format!("tally_committed_offset{{partition=\"{p}\"}}")),
            committed[&p] as f64
        );
    }
    // Dead letters by reason equal the DLQ's reason headers, one by one.
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for r in read_all(&names.dlq) {
        *reasons
            .entry(r.headers["tally.reason"].clone())
            .or_default() += 1;
    }
    for (reason, n) in &reasons {
        assert_eq!(
            get(&format!("tally_dead_letters_total{{reason=\"{reason}\"}}")),
            *n as f64,
            "{reason}"
        );
    }
    assert_eq!(
        sample_sum(&text, "tally_dead_letters_total"),
        input.malformed as f64
    );

    // /insights is what `tally insights` reads from the insights topic once the
    // snapshots caught up with the last commit (within --snapshot-interval).
    let (code, live) = http_get(&format!("{base}/insights"));
    assert_eq!(code, 200);
    let live: serde_json::Value = serde_json::from_str(&live).unwrap();
    wait_for(
        "the insights topic to catch up with /insights",
        LONG,
        || (insights(&names) == live).then_some(()),
    );
    assert_eq!(live["aggregate"]["processed"], input.valid());
    // Caught up: every partition's snapshot covers its committed offset.
    let (_, now) = http_get(&format!("{base}/metrics"));
    for p in 0..3 {
        assert_eq!(
            sample(&now, &format!("tally_snapshot_offset{{partition=\"{p}\"}}")),
            Some(committed[&p] as f64),
            "{now}"
        );
    }

    promtool_check_metrics(&now);
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    assert_verified(&names, input.valid(), input.malformed);
}

/// `promtool check metrics` on an exposition (a missing promtool: see `tool`).
fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Any report is a problem: lint warnings too (promtool exits 3 for them).
    let problems: Vec<&str> = report.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        problems.is_empty() && out.status.success(),
        "promtool check metrics (exit {:?}):\n{report}",
        out.status.code()
    );
}

/// A Prometheus server of our own, stopped on drop.
struct Prometheus {
    child: std::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts the Prometheus `bin` on a free 127.0.0.1 port scraping `target`
    /// every second, with deploy/prometheus/alerts.yml loaded.
    fn start(bin: &std::path::Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: tally\n    static_configs:\n      - targets: [\"{}\"]\n",
            rules.display(),
            target.trim_start_matches("http://")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = std::process::Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the `data.result` array, or the error Prometheus gave.
    fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let body = agent
            .get(format!("{}/api/v1/query", self.base))
            .query("query", expr)
            .call()
            .map_err(|e| e.to_string())?
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(body);
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Every alerting rule's expression as Prometheus loaded it.
    fn alert_rules(&self) -> Vec<(String, String)> {
        let (code, body) = http_get(&format!("{}/api/v1/rules", self.base));
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_string(),
                    r["query"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

/// An alert's expression without its threshold comparisons: the quantities it
/// watches, one per operand of `and`.
fn watched_quantities(expr: &str) -> Vec<String> {
    let expr = expr.split_whitespace().collect::<Vec<_>>().join(" ");
    expr.split(" and ")
        .map(|operand| {
            // `and on (labels) rhs`: the matching clause is not part of the quantity.
            let operand = match operand.strip_prefix("on (") {
                Some(rest) => rest.split_once(')').map_or(rest, |(_, q)| q).trim(),
                None => operand.trim(),
            };
            // `absent(q == 1)` watches `q`, which is there while all is well.
            let operand = operand
                .strip_prefix("absent(")
                .and_then(|inner| inner.strip_suffix(')'))
                .unwrap_or(operand);
            let Some((head, last)) = operand.rsplit_once(' ') else {
                return operand.to_string();
            };
            if last.parse::<f64>().is_err() {
                return operand.to_string();
            }
            ["==", "!=", ">=", "<=", ">", "<"]
                .iter()
                .find_map(|op| head.trim_end().strip_suffix(op))
                .map_or(operand, str::trim)
                .to_string()
        })
        .collect()
}

#[test]
fn alert_thresholds_are_removed_operand_by_operand() {
    assert_eq!(
        watched_quantities("tally_consumer_lag > 10000 and delta(tally_consumer_lag[10m]) > 0"),
        ["tally_consumer_lag", "delta(tally_consumer_lag[10m])"]
    );
    assert_eq!(
        watched_quantities(
            "sum by (instance) (x) == 0 and on (instance) sum by (instance) (y) > 0"
        ),
        ["sum by (instance) (x)", "sum by (instance) (y)"]
    );
    assert_eq!(
        watched_quantities("absent(up{job=\"tally\"} == 1)"),
        ["up{job=\"tally\"}"]
    );
}

#[test]
fn real_prometheus_evaluates_every_dashboard_and_alert_expression() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let names = Names::create("prom", 3);
    let input = produce_generated(&names.input, 2_000, 22, 0.05);
    let dir = tempfile::tempdir().unwrap();
    let mut run = TallyProc::builder(&names, "prom-1", &dir.path().join("state"))
        .args(["--log-format", "json"])
        .start();
    let base = run.endpoint();
    let prom = Prometheus::start(&prometheus, &base);
    wait_for_committed(&names.group, &names.input, 2_000, LONG, &mut [&mut run]);
    // rate(), delta() and increase() need two samples in their window; the lag
    // gauge appears a few seconds after the first commit.
    wait_for("a few scrapes of the lag gauge", LONG, || {
        prom.query("count_over_time(tally_consumer_lag[1m])")
            .ok()
            .filter(|r| {
                r.len() == 3
                    && r.iter().all(|s| {
                        s["value"][1]
                            .as_str()
                            .unwrap_or("0")
                            .parse::<f64>()
                            .unwrap_or(0.0)
                            >= 3.0
                    })
            })
            .map(|_| ())
    });

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/tally.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<(String, String)> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            // Grafana's range variable (a minute holds ~60 scrapes here),
            // and the template variables at "All".
            let e = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$job", ".+")
                .replace("$namespace", ".*");
            exprs.push((format!("dashboard: {}", panel["title"]), e));
        }
    }
    let rules = prom.alert_rules();
    assert_eq!(
        rules.len(),
        13,
        "alert rules loaded: {rules:?}\n{}",
        prom.log()
    );
    for (name, expr) in rules {
        for q in watched_quantities(&expr) {
            exprs.push((format!("alert {name}"), q));
        }
    }
    let mut failures = Vec::new();
    for (what, e) in &exprs {
        match prom.query(e) {
            Ok(r) if r.is_empty() => failures.push(format!("{what}: no series for {e}")),
            Ok(_) => {}
            Err(err) => failures.push(format!("{what}: error for {e}: {err}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The healthy alerts are quiet once Prometheus has the drained state. The lag
    // gauge is sampled every 5 s: a sample taken mid-drain reads above 0 until the
    // next one, and with every commit before the first scrape `increase()` reads 0,
    // so TallyNoCommits can be pending for those seconds (CI saw it). Its `for: 5m`
    // keeps such a blip from firing in production.
    wait_for("Prometheus to scrape a lag of 0 everywhere", LONG, || {
        prom.query("max(tally_consumer_lag) == 0")
            .ok()
            .filter(|r| r.len() == 1)
            .map(|_| ())
    });
    // One rule evaluation (1 s) after that scrape, nothing may be pending.
    std::thread::sleep(Duration::from_secs(3));
    let firing = prom.query("ALERTS").unwrap();
    assert!(firing.is_empty(), "{firing:?}");
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    // --log-format json: every line is one JSON object with its fields on top.
    let log = run.log();
    let mut progress = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        if v["message"] == "progress" {
            assert!(v["records_in"].is_u64(), "{line}");
            progress += 1;
        }
    }
    assert!(progress > 0, "no progress line in {log}");
    assert_verified(&names, input.valid(), input.malformed);
}

#[test]
fn aborted_transactions_count_nothing() {
    let names = Names::create("opsabort", 2);
    let input = produce_generated(&names.input, 2_000, 23, 0.05);
    let dir = tempfile::tempdir().unwrap();
    // The first three commits fail: their records were produced, then aborted,
    // then processed again. Counting at produce time would overcount them.
    let mut run = TallyProc::builder(&names, "opsabort-1", &dir.path().join("state"))
        .args(["--max-batch-records", "400"])
        .env("FAILPOINTS", "commit-error=3*return")
        .start();
    let base = run.endpoint();
    wait_for_committed(&names.group, &names.input, 2_000, LONG, &mut [&mut run]);
    let (_, text) = http_get(&format!("{base}/metrics"));
    let get = |key: &str| sample(&text, key).unwrap_or_else(|| panic!("{key} missing:\n{text}"));
    assert_eq!(
        get("tally_transactions_total{result=\"aborted\"}"),
        3.0,
        "{text}"
    );
    assert_eq!(
        get("tally_records_total{outcome=\"processed\"}"),
        input.valid() as f64
    );
    assert_eq!(
        get("tally_records_total{outcome=\"dead_lettered\"}"),
        input.malformed as f64
    );
    assert_eq!(
        sample_sum(&text, "tally_dead_letters_total"),
        input.malformed as f64
    );
    assert_eq!(get("tally_end_to_end_latency_seconds_count"), 2_000.0);
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    assert_verified(&names, input.valid(), input.malformed);
}
