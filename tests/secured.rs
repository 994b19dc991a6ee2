//! tally on a secured Apache Kafka (`scripts/kafka.sh start --secure`: SASL_SSL
//! with SCRAM-SHA-512, ACLs enforced, nothing allowed without one): exactly
//! once under the least-privilege ACLs that docs/operations.md lists, a clear
//! and prompt exit for each missing one, a clear error for a wrong password or
//! an untrusted certificate, and no secret in any output.

mod common;

use std::time::{Duration, Instant};

use common::*;

const EVENTS: u64 = 2_000;

/// `tally run`'s ACLs as docs/operations.md lists them, one `kafka-acls` line
/// each (the output and DLQ apart, so each can be taken away alone), with what
/// the error says when that line is missing at start.
fn run_acls(names: &Names, txn_prefix: &str) -> Vec<(Vec<String>, String)> {
    let line = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let rw_configs = |topic: &str| {
        line(&[
            "--operation",
            "Write",
            "--operation",
            "DescribeConfigs",
            "--topic",
            topic,
        ])
    };
    vec![
        (
            line(&["--operation", "Read", "--topic", &names.input]),
            format!("may not Read topic {}", names.input),
        ),
        (
            rw_configs(&names.output),
            format!("may not Write topic {}", names.output),
        ),
        (
            rw_configs(&names.dlq),
            format!("may not Write topic {}", names.dlq),
        ),
        (
            line(&[
                "--operation",
                "Read",
                "--operation",
                "Write",
                "--operation",
                "DescribeConfigs",
                "--topic",
                &names.insights,
            ]),
            format!("may not Write topic {}", names.insights),
        ),
        (
            line(&["--operation", "Read", "--group", &names.group]),
            format!("may not Read group {}", names.group),
        ),
        (
            line(&[
                "--operation",
                "Describe",
                "--group",
                "tally-reader-",
                "--resource-pattern-type",
                "prefixed",
            ]),
            String::new(),
        ),
        (
            line(&[
                "--operation",
                "Write",
                "--transactional-id",
                &format!("{txn_prefix}-"),
                "--resource-pattern-type",
                "prefixed",
            ]),
            format!("may not Write transactional-id {txn_prefix}-"),
        ),
    ]
}

fn acl(broker: &PrivateBroker, action: &str, line: &[String]) {
    let mut args = vec![action, "--allow-principal", "User:tally"];
    if action == "--remove" {
        args.push("--force");
    }
    args.extend(line.iter().map(String::as_str));
    broker.acl(&args);
}

/// The group's committed offsets summed (`tally lag` as admin).
fn committed_sum(broker: &PrivateBroker, names: &Names) -> u64 {
    let (code, out, err) = broker.tally(&[
        "lag",
        "--group-id",
        &names.group,
        "--input-topic",
        &names.input,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    // `partition committed end lag` rows, `-` for none; a header and a total.
    out.lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() == 4 && cols[0].parse::<i32>().is_ok())
                .then(|| cols[1].parse().unwrap_or(0))
        })
        .sum()
}

#[test]
fn least_privilege_over_sasl_ssl_is_exactly_once_and_a_missing_acl_is_a_prompt_clear_exit() {
    let Some(broker) = PrivateBroker::start_secure() else {
        return;
    };
    let names = broker.pipeline("sec", EVENTS);
    let prefix = unique("sec-txn");
    let acls = run_acls(&names, &prefix);
    for (line, _) in &acls {
        acl(&broker, "--add", line);
    }
    let config = broker.secret("tally.properties");
    let password = std::fs::read_to_string(broker.secret("tally.password")).unwrap();
    let password = password.trim();
    assert!(password.len() >= 8, "a real password: {password:?}");
    let args = [
        "--kafka-config",
        config.to_str().unwrap(),
        "--transactional-id-prefix",
        &prefix,
    ];
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let start = |extra: &[&str]| {
        let all: Vec<&str> = args.iter().chain(extra).copied().collect();
        TallyProc::builder(&names, "sec-1", &state)
            .bootstrap(&broker.bootstrap)
            .args(&all)
            .start()
    };

    // Exactly the documented ACLs: exactly once.
    let mut run = start(&["--leave-group-on-shutdown"]);
    broker.wait_drained(&names, EVENTS, &mut run);
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    broker.assert_exactly_once(&names, EVENTS);
    let mut logs = vec![run.log()];
    let mut total = EVENTS;

    // Each ACL missing at start: exit 1 soon, naming principal, operation and
    // resource; nothing committed meanwhile.
    for (line, says) in acls.iter().filter(|(_, says)| !says.is_empty()) {
        acl(&broker, "--remove", line);
        broker.generate(&names, 100);
        let before = committed_sum(&broker, &names);
        let started = Instant::now();
        let mut run = start(&["--leave-group-on-shutdown"]);
        let code = run.wait(Duration::from_secs(60));
        let log = run.log();
        assert_eq!(code, Some(1), "without {line:?}: {log}");
        assert!(
            log.contains(&format!("not authorized: User:tally {says}")),
            "without {line:?}, expected {says:?}:\n{log}"
        );
        println!(
            "without {line:?}: exit 1 after {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            log.lines()
                .find(|l| l.contains("not authorized"))
                .unwrap_or_default()
        );
        assert_eq!(committed_sum(&broker, &names), before, "{line:?}");
        acl(&broker, "--add", line);
        total += 100;
        logs.push(log);
    }

    // Taken away while records flow: the next poll, or the abort that follows,
    // stops it, naming the resource; nothing committed past what was produced.
    for (i, says) in [
        (0, format!("may not Read topic {}", names.input)),
        (1, format!("may not Write topic {}", names.output)),
        // The generator's malformed records go to the DLQ.
        (2, format!("may not Write topic {}", names.dlq)),
        (4, format!("may not Read group {}", names.group)),
    ] {
        let line = &acls[i].0;
        let mut run = start(&["--leave-group-on-shutdown"]);
        broker.wait_drained(&names, total, &mut run);
        acl(&broker, "--remove", line);
        let started = Instant::now();
        broker.generate(&names, 100);
        let code = run.wait(Duration::from_secs(90));
        let log = run.log();
        assert_eq!(code, Some(1), "{line:?} removed while running: {log}");
        assert!(
            log.contains(&format!("not authorized: User:tally {says}")),
            "{line:?} removed while running, expected {says:?}:\n{log}"
        );
        println!(
            "{line:?} removed while running: exit 1 {:.1} s after 100 more events: {}",
            started.elapsed().as_secs_f64(),
            log.lines()
                .find(|l| l.contains("not authorized"))
                .unwrap_or_default()
        );
        assert_eq!(committed_sum(&broker, &names), total, "{line:?}");
        acl(&broker, "--add", line);
        total += 100;
        logs.push(log);
    }

    // Everything back: the rest drains exactly once.
    let mut run = start(&[]);
    broker.wait_drained(&names, total, &mut run);
    assert_eq!(run.terminate(), Some(0), "{}", run.log());
    broker.assert_exactly_once(&names, total);
    logs.push(run.log());
    for log in &logs {
        assert!(!log.contains(password), "the password in a log:\n{log}");
    }
}

#[test]
fn a_wrong_password_or_an_untrusted_certificate_is_one_clear_error() {
    let Some(broker) = PrivateBroker::start_secure() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(broker.secret("tally.properties")).unwrap();
    let wrong_password = "not-the-password-9f8e7d";
    let with = |key: &str, value: &str| {
        let text: String = good
            .lines()
            .map(|l| {
                if l.starts_with(&format!("{key}=")) {
                    format!("{key}={value}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let path = dir.path().join(format!("{key}.properties"));
        std::fs::write(&path, text).unwrap();
        path
    };
    // A CA that signed nothing of this broker's: the system's bundle.
    let cases = [
        (
            with("sasl.password", wrong_password),
            "Authentication failed",
        ),
        (
            with("ssl.ca.location", "/etc/ssl/certs/ca-certificates.crt"),
            // librdkafka words it "SSL handshake failed: ... certificate
            // verify failed" or just "... certificate verify failed".
            "certificate verify failed",
        ),
    ];
    for (config, says) in &cases {
        let started = Instant::now();
        let (code, out, err) = tally_on(
            &broker.bootstrap,
            &[
                "lag",
                "--kafka-config",
                config.to_str().unwrap(),
                "--connect-timeout",
                "5s",
            ],
        );
        let took = started.elapsed();
        assert_ne!(code, 0, "{out}{err}");
        assert!(took < Duration::from_secs(20), "took {took:?}: {err}");
        assert!(err.contains(&broker.bootstrap), "names the servers: {err}");
        assert!(err.contains(says), "expected {says:?}: {err}");
        assert!(
            !err.contains(wrong_password) && !out.contains(wrong_password),
            "{err}"
        );
        println!(
            "{says}: exit {code} after {:.1} s: {err}",
            took.as_secs_f64()
        );
    }
}
