//! One `tally run` child process of the drill.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Names;

/// Begins each run's part of an instance's log.
const START_MARKER: &str = "=== drill: start #";

pub(super) struct Instance {
    pub(super) id: String,
    pub(super) state_dir: PathBuf,
    pub(super) log: PathBuf,
    pub(super) child: Option<Child>,
    pub(super) starts: u32,
    /// The largest VmHWM (peak resident set, KiB) seen of any of its processes.
    pub(super) peak_rss_kib: u64,
}

/// A process's peak resident set size (`VmHWM` of /proc/PID/status), KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

impl Instance {
    pub(super) fn start(
        &mut self,
        tally: &Path,
        bootstrap: &str,
        names: &Names,
        member: super::Member,
        failpoints: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.starts += 1;
        writeln!(
            log,
            "{START_MARKER}{} of {} (failpoints: {failpoints:?}) ===",
            self.starts, self.id
        )?;
        let mut cmd = Command::new(tally);
        match failpoints {
            Some(f) => cmd.env("FAILPOINTS", f),
            None => cmd.env_remove("FAILPOINTS"),
        };
        let child = cmd
            .arg("run")
            .args([
                "--bootstrap-servers",
                bootstrap,
                "--group-id",
                &names.group,
                "--instance-id",
                &self.id,
            ])
            .args([
                "--input-topic",
                &names.input,
                "--output-topic",
                &names.output,
            ])
            .args([
                "--dlq-topic",
                &names.dlq,
                "--insights-topic",
                &names.insights,
            ])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--min-app-version", super::expect::MIN_APP_VERSION])
            .args([
                "--session-timeout",
                &format!("{}ms", member.session_ms),
                "--shutdown-timeout",
                &format!("{}s", member.shutdown_secs),
                "--progress-interval",
                "5s",
            ])
            // A graceful stop is the drill's scale-down: the instance leaves
            // the group, so the others take its partitions at once (without the
            // flag a static member keeps them until its session expires).
            .arg("--leave-group-on-shutdown")
            // `TALLY_DRILL_LOG` (a `RUST_LOG` filter) raises the instances' log
            // level to investigate a failed drill, e.g. `info,librdkafka=debug`
            // with `-X debug=cgrp` in `TALLY_KAFKA_PROPERTIES`. Keep `info` for
            // tally: the drill reads the metrics address from the log.
            .env(
                "RUST_LOG",
                std::env::var("TALLY_DRILL_LOG").unwrap_or_else(|_| "info".into()),
            )
            // Several instances on one host: each endpoint on a free port.
            .env("TALLY_METRICS_ADDR", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting tally run")?;
        self.child = Some(child);
        Ok(())
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Reads the running process's peak RSS (sampled often, and before every
    /// signal: a process's VmHWM is gone once it has exited).
    pub(super) fn sample_rss(&mut self) {
        if let Some(kib) = self.pid().and_then(peak_rss_kib) {
            self.peak_rss_kib = self.peak_rss_kib.max(kib);
        }
    }

    pub(super) fn signal(&mut self, sig: &str) {
        self.sample_rss();
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }

    pub(super) fn kill9(&mut self) {
        self.signal("-KILL");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; the exit code (`None`: killed by a signal).
    pub(super) fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        self.signal("-TERM");
        let mut c = self.child.take()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return Some(-1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the running process answers `/readyz` with 200: in the group, its
    /// producer initialised and every assigned partition restored.
    pub(super) fn ready(&self) -> bool {
        self.get("/readyz").is_some_and(|(status, _)| status == 200)
    }

    /// `GET path` on the running process's operations endpoint: status and body.
    /// The endpoint binds a free port, which the process logs after the latest
    /// start marker.
    pub(super) fn get(&self, path: &str) -> Option<(u16, String)> {
        const LISTENING: &str = "metrics endpoint listening addr=";
        self.child.as_ref()?;
        let log = std::fs::read_to_string(&self.log).ok()?;
        let this_run = log.rfind(START_MARKER).map_or(&log[..], |i| &log[i..]);
        let addr = this_run
            .find(LISTENING)
            .and_then(|i| this_run[i + LISTENING.len()..].split_whitespace().next())?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut reply = agent.get(format!("http://{addr}{path}")).call().ok()?;
        let status = reply.status().as_u16();
        Some((status, reply.body_mut().read_to_string().ok()?))
    }

    /// `Some(status)` if the process ended by itself.
    pub(super) fn exited(&mut self) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => {
                self.child = None;
                Some(st)
            }
            _ => None,
        }
    }

    /// The log of the latest start (also after the process ended).
    pub(super) fn this_run_log(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.rfind(START_MARKER)
            .map_or(log.clone(), |i| log[i..].to_string())
    }

    /// The sum of a metric's series (all label sets) on the running process's
    /// `/metrics`; `None` when it does not answer.
    pub(super) fn metric(&self, name: &str) -> Option<f64> {
        let (200, body) = self.get("/metrics")? else {
            return None;
        };
        Some(metric_sum(&body, name))
    }
}

/// The sum of every sample of `name` in a Prometheus text exposition.
fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_sums_every_series_of_exactly_that_name() {
        let body = "# HELP tally_rebalances_total x\n\
                    tally_rebalances_total 3\n\
                    tally_rebalances_total_other 100\n\
                    tally_transactions_total{result=\"aborted\"} 2\n\
                    tally_transactions_total{result=\"committed\"} 40\n";
        assert_eq!(super::metric_sum(body, "tally_rebalances_total"), 3.0);
        assert_eq!(super::metric_sum(body, "tally_transactions_total"), 42.0);
        assert_eq!(super::metric_sum(body, "tally_missing"), 0.0);
    }
}
