//! tally as a child process: `tally run` ([`TallyProc`]), its operations
//! endpoint, and the one-shot subcommands.

use std::time::{Duration, Instant};

use super::{Names, TIMEOUT, bootstrap, unique};

/// Path of the `tally` binary built for these tests.
pub fn tally_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_tally"))
}

/// The series of `tally_transactions_total` counting aborted transactions.
pub const ABORTED: &str = "tally_transactions_total{result=\"aborted\"}";

/// A `tally run` child process; its stderr goes to a log file.
pub struct TallyProc {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
}

/// How a test starts a `tally run`: [`TallyProc::builder`] takes what every
/// run has (the pipeline, its instance id, its state directory); the rest is
/// added as the test needs it, then [`RunBuilder::start`].
#[must_use = "nothing runs until start()"]
pub struct RunBuilder<'a> {
    names: &'a Names,
    instance: &'a str,
    state_dir: &'a std::path::Path,
    bootstrap: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl RunBuilder<'_> {
    /// The broker at `bootstrap` (a [`super::PrivateBroker`]) instead of the
    /// shared one, `KAFKA_BOOTSTRAP`.
    pub fn bootstrap(mut self, bootstrap: &str) -> Self {
        self.bootstrap = Some(bootstrap.to_string());
        self
    }

    /// More `tally run` flags, after the ones the harness always passes.
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// An environment variable of the process (`FAILPOINTS`, say).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Several environment variables, as [`RunBuilder::env`].
    pub fn envs<K: AsRef<str>, V: AsRef<str>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        for (k, v) in vars {
            self = self.env(k.as_ref(), v.as_ref());
        }
        self
    }

    /// Spawns the process; its stderr goes to a log file beside the state directory.
    pub fn start(self) -> TallyProc {
        let bootstrap = self.bootstrap.unwrap_or_else(bootstrap);
        let log = self
            .state_dir
            .with_extension(format!("{}.log", unique("run")));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = std::process::Command::new(tally_bin());
        cmd.arg("run")
            .args([
                "--bootstrap-servers",
                &bootstrap,
                "--group-id",
                &self.names.group,
                "--instance-id",
                self.instance,
            ])
            .args(self.names.topic_args())
            .arg("--state-dir")
            .arg(self.state_dir)
            .args(["--progress-interval", "2s"])
            .args(&self.args)
            // `TALLY_TEST_LOG` (a `RUST_LOG` filter) raises the level to investigate.
            .env(
                "RUST_LOG",
                std::env::var("TALLY_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // Tests run side by side: each endpoint on a free port (see `endpoint`).
            .env("TALLY_METRICS_ADDR", "127.0.0.1:0")
            .env_remove("TALLY_LOG_FORMAT")
            .env_remove("FAILPOINTS")
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .envs(self.env);
        TallyProc {
            child: cmd.spawn().expect("spawn tally run"),
            log,
        }
    }
}

impl TallyProc {
    /// A `tally run` of `names`' pipeline as instance `instance`, its state in
    /// `state_dir`; see [`RunBuilder`] for the rest.
    pub fn builder<'a>(
        names: &'a Names,
        instance: &'a str,
        state_dir: &'a std::path::Path,
    ) -> RunBuilder<'a> {
        RunBuilder {
            names,
            instance,
            state_dir,
            bootstrap: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://host:port` of the operations endpoint, from the log line that
    /// names the address bound (the harness asks for port 0).
    pub fn endpoint(&mut self) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let log = self.log();
            if let Some(line) = log
                .lines()
                .find(|l| l.contains("metrics endpoint listening"))
            {
                // Text (`addr=...`) or JSON (`"addr":"..."`) log format.
                let addr = match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(v) => v["addr"].as_str().map(str::to_string),
                    Err(_) => line
                        .split("addr=")
                        .nth(1)
                        .and_then(|s| s.split_whitespace().next())
                        .map(str::to_string),
                };
                let addr = addr.unwrap_or_else(|| panic!("no address in {line:?}"));
                return format!("http://{addr}");
            }
            assert!(!self.exited(), "tally exited; log:\n{log}");
            assert!(
                Instant::now() < deadline,
                "no endpoint address logged:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// SIGTERM, without waiting.
    pub fn signal_term(&self) {
        self.signal("-TERM");
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal("-TERM");
        self.wait(Duration::from_secs(60))
    }

    pub fn kill9(&mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }

    pub fn stop_signal(&self) {
        self.signal("-STOP");
    }

    pub fn cont_signal(&self) {
        self.signal("-CONT");
    }

    /// Waits for the process to exit; `None` if it was killed by a signal.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                Instant::now() < deadline,
                "tally did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the log holds `needle` at least `count` times; fails, with the
    /// log, if the process exits first or `timeout` passes.
    pub fn wait_for_log(&mut self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "{needle:?} not logged {count} times in {timeout:?}:\n{}",
                self.log()
            );
            assert!(
                !self.exited(),
                "exited before logging {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the process is stopped (state `T` in /proc).
    pub fn wait_stopped(&self, timeout: Duration) {
        let stat = format!("/proc/{}/stat", self.child.id());
        let deadline = Instant::now() + timeout;
        loop {
            let s = std::fs::read_to_string(&stat).unwrap_or_default();
            // pid (comm) STATE ...: the state follows the last ')'.
            if s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('T'))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tally did not stop; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A counter or gauge from `/metrics`: the series named exactly `name`, labels
    /// included as exported (`tally_restores_total{path="snapshot"}`), or the
    /// first series of a family named without labels.
    pub fn metric(&mut self, name: &str) -> u64 {
        let body = self.scrape();
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} not exported:\n{body}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// The sum of every series of the counter `family`, whatever its labels
    /// (`tally_restores_total`: restores by any path).
    pub fn metric_sum(&mut self, family: &str) -> u64 {
        let body = self.scrape();
        body.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(family)?;
                let value = match rest.strip_prefix('{') {
                    Some(labelled) => labelled.split_once("} ")?.1,
                    None => rest.strip_prefix(' ')?,
                };
                Some(value.trim().parse::<u64>().unwrap())
            })
            .sum()
    }

    /// Waits until [`TallyProc::metric_sum`] of `family` reaches `at_least`;
    /// fails, with the log, if the process exits first or `timeout` passes.
    pub fn wait_for_metric(&mut self, family: &str, at_least: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            assert!(
                !self.exited(),
                "exited before {family} reached {at_least}:\n{}",
                self.log()
            );
            let now = self.metric_sum(family);
            if now >= at_least {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{family} is {now}, not {at_least}, after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The whole exposition of `/metrics`.
    fn scrape(&mut self) -> String {
        let (code, body) = http_get(&format!("{}/metrics", self.endpoint()));
        assert_eq!(code, 200, "{body}");
        body
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }
}

impl Drop for TallyProc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// GET `url`: (status, body). Any status is an answer, not an error.
pub fn http_get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .unwrap_or_else(|e| panic!("GET {url} body: {e}"));
    (status, body)
}

/// Runs a tally subcommand to completion: (exit code, stdout, stderr).
pub fn tally(args: &[String]) -> (i32, String, String) {
    tally_on(&bootstrap(), args)
}

/// Like [`tally`], against the broker at `bootstrap`.
pub fn tally_on(bootstrap: &str, args: &[impl AsRef<std::ffi::OsStr>]) -> (i32, String, String) {
    tally_on_with(bootstrap, args, &[])
}

/// [`tally_on`] with more environment variables.
pub fn tally_on_with(
    bootstrap: &str,
    args: &[impl AsRef<std::ffi::OsStr>],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let out = std::process::Command::new(tally_bin())
        .args(args)
        .env("KAFKA_BOOTSTRAP", bootstrap)
        .env_remove("FAILPOINTS")
        .envs(env.iter().copied())
        .output()
        .expect("run tally");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
