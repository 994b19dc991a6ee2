//! Faults of tally's own environment rather than of Kafka: the sink of its logs
//! going away (a service must neither die nor stall because a log shipper
//! restarted or a terminal closed), and a signal while the broker is gone.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LONG: Duration = Duration::from_secs(180);

/// `tally run ... 2>&1 | head`: stderr is a pipe whose reader exits while tally
/// is logging. The stream goes on, exactly once, and SIGTERM still ends it
/// cleanly.
#[test]
fn a_broken_log_pipe_neither_stops_nor_stalls_the_stream() {
    let names = Names::create("pipe", 2);
    let mut input = produce_generated(&names.input, 2_000, 41, 0.05);
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(tally_bin())
        .arg("run")
        .args([
            "--bootstrap-servers",
            &bootstrap(),
            "--group-id",
            &names.group,
            "--instance-id",
            "pipe-1",
        ])
        .args(names.topic_args())
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        // A progress line every second: tally keeps writing into the broken pipe.
        .args(["--progress-secs", "1"])
        .env("RUST_LOG", "info")
        .env("TALLY_METRICS_ADDR", "127.0.0.1:0")
        .env_remove("TALLY_LOG_FORMAT")
        .env_remove("FAILPOINTS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tally run");
    // Read as `head` would, until the first partition is restored; then the
    // reader goes away.
    let mut head = Vec::new();
    {
        let stderr = child.stderr.take().unwrap();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            let done = line.contains("partition restored");
            head.push(line);
            if done {
                break;
            }
        }
    }
    input.merge(&produce_generated(&names.input, 1_000, 42, 0.05));
    let deadline = Instant::now() + LONG;
    loop {
        let committed: i64 = committed_offsets(&names.group, &names.input).values().sum();
        if committed == 3_000 {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "tally run ended ({status}) after its log pipe broke; it had logged:\n{}",
                head.join("\n")
            );
        }
        assert!(
            Instant::now() < deadline,
            "committed {committed} of 3000 in {LONG:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Still logging into the broken pipe for a few progress lines.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "tally run ended after the drain"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tally run still running 40 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0), "{status}");
    assert_verified(&names, input.valid(), input.malformed);
}

/// `tally generate` whose broker dies under it: sends pile up in its queue; a
/// SIGTERM still ends it within seconds (not the 120 s its final flush may
/// take), failing and saying how many events were not delivered.
#[test]
fn generate_ends_soon_after_sigterm_when_the_broker_is_gone() {
    let broker = PrivateBroker::start();
    let names = broker.pipeline("gen", 0);
    let mut child = Command::new(tally_bin())
        .args(["generate", "--bootstrap-servers", &broker.bootstrap])
        .args(["--topic", &names.input, "--rate", "2000", "--huge", "false"])
        .env_remove("FAILPOINTS")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tally generate");
    std::thread::sleep(Duration::from_secs(3));
    broker.kill9();
    std::thread::sleep(Duration::from_secs(3));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("tally generate still running 60 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = started.elapsed();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(took < Duration::from_secs(15), "took {took:?}: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("were not delivered within 5 s of the signal"),
        "{err}"
    );
}

/// The processes whose environment holds `key=value` (none of another user's).
fn processes_with_env(key: &str, value: &str) -> Vec<u32> {
    let needle = format!("{key}={value}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

/// `scripts/demo.sh 2>&1 | head` whose terminal then closes (SIGHUP): the
/// script still stops the generator and `tally run` it started, though its
/// output has nowhere to go.
#[test]
fn demo_cut_off_from_its_output_and_hung_up_leaves_nothing_behind() {
    let mut demo = Command::new("bash")
        .args(["-c", "exec scripts/demo.sh 2>&1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("KAFKA_BOOTSTRAP", bootstrap())
        .env("TALLY_BIN", tally_bin())
        .env("DEMO_RATE", "200")
        .env("DEMO_PARTITIONS", "2")
        .env_remove("FAILPOINTS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn scripts/demo.sh");
    let mut topic = None;
    {
        let out = demo.stdout.take().unwrap();
        for line in BufReader::new(out).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("demo: generating into ") {
                topic = rest.split_whitespace().next().map(str::to_string);
                break;
            }
        }
    }
    let topic = topic.expect("the demo said where it generates");
    std::thread::sleep(Duration::from_secs(3));
    // The script exports the names after it started, so its own environment
    // does not show them; its children's do.
    let started = processes_with_env("TALLY_INPUT_TOPIC", &topic);
    if started.len() != 2 {
        for pid in &started {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = demo.kill();
        panic!("expected the demo's generator and tally run, found {started:?}");
    }
    Command::new("kill")
        .args(["-HUP", &demo.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    while demo.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(200),
            "the demo still runs 200 s after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let left = processes_with_env("TALLY_INPUT_TOPIC", &topic);
    for pid in &left {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    assert!(
        left.is_empty(),
        "left running after the demo ended: {left:?}"
    );
    if let Some(run_id) = topic.strip_suffix("-user-login") {
        let _ = std::fs::remove_dir_all(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(".run")
                .join(run_id),
        );
    }
}
