//! Faults of tally's own environment rather than of Kafka: the sink of its logs
//! going away (a service must neither die nor stall because a log shipper
//! restarted or a terminal closed), and a signal while the broker is gone.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const LONG: Duration = Duration::from_secs(180);

/// A child process killed (with the processes named in `also`) when the test
/// ends, passing or not.
struct Reaped {
    child: Child,
    also: Vec<u32>,
}

impl Reaped {
    fn spawn(cmd: &mut Command) -> Reaped {
        Reaped {
            child: cmd.spawn().expect("spawn"),
            also: Vec::new(),
        }
    }

    fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// Its exit status, waiting at most `limit`.
    fn wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in &self.also {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Reads `from` line by line on a thread until a line satisfies `until` or
/// `limit` passes; returns the lines read (the last the one wanted, if found).
/// The reader is closed when this returns.
fn read_until(
    from: impl Read + Send + 'static,
    limit: Duration,
    until: impl Fn(&str) -> bool + Send + 'static,
) -> Vec<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            let done = until(&line);
            if tx.send(line).is_err() || done {
                return;
            }
        }
    });
    let deadline = Instant::now() + limit;
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        lines.push(line);
    }
    lines
}

/// `tally run ... 2>&1 | head`: stderr is a pipe whose reader exits while tally
/// is logging. The stream goes on, exactly once, and SIGTERM still ends it
/// cleanly.
#[test]
fn a_broken_log_pipe_neither_stops_nor_stalls_the_stream() {
    let names = Names::create("pipe", 2);
    let mut input = produce_generated(&names.input, 2_000, 41, 0.05);
    let dir = tempfile::tempdir().unwrap();
    let mut run = Reaped::spawn(
        Command::new(tally_bin())
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
            .args(["--progress-interval", "1s"])
            .env("RUST_LOG", "info")
            .env("TALLY_METRICS_ADDR", "127.0.0.1:0")
            .env_remove("TALLY_LOG_FORMAT")
            .env_remove("FAILPOINTS")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    // Read as `head` would, until the first partition is restored; then the
    // reader goes away.
    let head = read_until(run.child.stderr.take().unwrap(), LONG, |l| {
        l.contains("partition restored")
    });
    assert!(
        head.last()
            .is_some_and(|l| l.contains("partition restored")),
        "no partition restored in {LONG:?}:\n{}",
        head.join("\n")
    );
    input.merge(&produce_generated(&names.input, 1_000, 42, 0.05));
    let deadline = Instant::now() + LONG;
    loop {
        let committed: i64 = committed_offsets(&names.group, &names.input).values().sum();
        if committed == 3_000 {
            break;
        }
        if let Some(status) = run.child.try_wait().unwrap() {
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
        run.child.try_wait().unwrap().is_none(),
        "tally run ended after the drain"
    );
    run.signal("-TERM");
    let status = run
        .wait_within(Duration::from_secs(40))
        .expect("tally run still running 40 s after SIGTERM");
    assert_eq!(status.code(), Some(0), "{status}");
    assert_verified(&names, input.valid(), input.malformed);
}

/// `tally generate` whose broker dies under it: sends pile up in its queue; a
/// SIGTERM still ends it within seconds (not the 120 s its final flush may
/// take), failing and saying how many events were not delivered.
#[test]
fn generate_ends_soon_after_sigterm_when_the_broker_is_gone() {
    let Some(broker) = PrivateBroker::start() else {
        return;
    };
    let names = broker.pipeline("gen", 0);
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("generate.err");
    let mut generate = Reaped::spawn(
        Command::new(tally_bin())
            .args(["generate", "--bootstrap-servers", &broker.bootstrap])
            .args(["--topic", &names.input, "--rate", "2000", "--huge", "false"])
            .env_remove("FAILPOINTS")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap()),
    );
    std::thread::sleep(Duration::from_secs(3));
    broker.kill9();
    std::thread::sleep(Duration::from_secs(3));
    generate.signal("-TERM");
    let started = Instant::now();
    let status = generate
        .wait_within(Duration::from_secs(60))
        .expect("tally generate still running 60 s after SIGTERM");
    let took = started.elapsed();
    let err = std::fs::read_to_string(&err_path).unwrap();
    assert!(took < Duration::from_secs(15), "took {took:?}: {err}");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("were not delivered within 5 s of the signal"),
        "{err}"
    );
}

/// The processes whose environment holds `key=value`.
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
/// script still stops the generator and `tally run` it started, and verifies,
/// though its output has nowhere to go.
#[test]
fn demo_cut_off_from_its_output_and_hung_up_leaves_nothing_behind() {
    let mut demo = Reaped::spawn(
        Command::new("bash")
            .args(["-c", "exec scripts/demo.sh 2>&1"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("KAFKA_BOOTSTRAP", bootstrap())
            .env("TALLY_BIN", tally_bin())
            .env("DEMO_RATE", "200")
            .env("DEMO_PARTITIONS", "2")
            .env_remove("FAILPOINTS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    );
    const SAID: &str = "demo: generating into ";
    let head = read_until(demo.child.stdout.take().unwrap(), LONG, |l| {
        l.starts_with(SAID)
    });
    let topic = head
        .last()
        .and_then(|l| l.strip_prefix(SAID))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .unwrap_or_else(|| {
            panic!(
                "the demo did not say where it generates:\n{}",
                head.join("\n")
            )
        });
    let run_dir = topic.strip_suffix("-user-login").map(|id| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".run")
            .join(id)
    });
    std::thread::sleep(Duration::from_secs(3));
    // The script exports the names after it started, so its own environment
    // does not show them; its children's do.
    let started = processes_with_env("TALLY_INPUT_TOPIC", &topic);
    demo.also = started.clone();
    assert_eq!(
        started.len(),
        2,
        "the demo's generator and tally run: {started:?}"
    );
    demo.signal("-HUP");
    let status = demo
        .wait_within(Duration::from_secs(200))
        .expect("the demo still runs 200 s after SIGHUP");
    let left = processes_with_env("TALLY_INPUT_TOPIC", &topic);
    if let Some(d) = &run_dir {
        let _ = std::fs::remove_dir_all(d);
    }
    assert!(
        left.is_empty(),
        "left running after the demo ended: {left:?}"
    );
    // Its status is verify's: every record exactly once.
    assert_eq!(status.code(), Some(0), "{status}");
}
