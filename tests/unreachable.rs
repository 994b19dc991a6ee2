//! No broker at all: `run` waits (not ready, one warn line every few seconds,
//! librdkafka quiet) and gives up only after `--connect-timeout`; the tools fail
//! within a bounded time naming the bootstrap servers and what to check.
//! Needs no broker: it points at a port nothing listens on.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tally() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
    c.env_remove("KAFKA_BOOTSTRAP")
        .env_remove("FAILPOINTS")
        .env_remove("TALLY_LOG_FORMAT")
        .env("RUST_LOG", "info");
    c
}

/// A 127.0.0.1 address with nothing listening on it.
fn dead_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    addr
}

#[test]
fn tools_fail_within_the_connect_timeout_saying_what_to_check() {
    let addr = dead_address();
    let started = Instant::now();
    let out = tally()
        .args([
            "verify",
            "--bootstrap-servers",
            &addr,
            "--connect-timeout",
            "3s",
        ])
        .output()
        .unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}: {err}");
    assert!(err.contains(&addr), "{err}");
    assert!(err.contains("scripts/kafka.sh start"), "{err}");
}

#[test]
fn run_waits_for_the_cluster_not_ready_and_gives_up_after_connect_timeout() {
    let addr = dead_address();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let mut child = tally()
        .args([
            "run",
            "--bootstrap-servers",
            &addr,
            "--instance-id",
            "nobroker-1",
        ])
        .args(["--connect-timeout", "12s", "--metrics-addr", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Not ready, and saying why, while it waits.
    let deadline = Instant::now() + Duration::from_secs(10);
    let endpoint = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(a) = text
            .lines()
            .find(|l| l.contains("metrics endpoint listening"))
            .and_then(|l| l.split("addr=").nth(1))
        {
            break format!("http://{}", a.split_whitespace().next().unwrap());
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_secs(2));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent.get(format!("{endpoint}/readyz")).call().unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let body = resp.body_mut().read_to_string().unwrap();
    assert!(body.contains(&format!("Kafka cluster at {addr}")), "{body}");
    let healthz = agent.get(format!("{endpoint}/healthz")).call().unwrap();
    assert_eq!(healthz.status().as_u16(), 200);

    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains(&addr) && text.contains("scripts/kafka.sh start"),
        "{text}"
    );
    // A warn line every ~5 s (3 s attempts, 2 s apart) until the 12 s are
    // over, nothing from librdkafka.
    let warns = text
        .matches("cannot reach the kafka cluster; retrying")
        .count();
    assert!((2..=4).contains(&warns), "{warns} warn lines:\n{text}");
    assert!(!text.contains("librdkafka"), "{text}");
}

/// Sends SIGTERM to `child` and waits for its exit, at most `limit`.
fn terminate_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> (std::process::ExitStatus, Duration) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return (s, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("still running {limit:?} after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `tally run` waiting for a cluster that is gone ends soon after SIGTERM.
#[test]
fn run_ends_soon_after_sigterm_with_no_broker() {
    let addr = dead_address();
    let dir = tempfile::tempdir().unwrap();
    let mut child = tally()
        .args([
            "run",
            "--bootstrap-servers",
            &addr,
            "--instance-id",
            "nobroker-2",
        ])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (status, took) = terminate_within(&mut child, Duration::from_secs(60));
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    assert_eq!(status.code(), Some(0), "{err}");
}
