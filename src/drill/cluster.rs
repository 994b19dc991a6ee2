//! The Kafka cluster under the drill, for its broker faults: nodes started by
//! `scripts/kafka.sh` (in the drill's `--kafka-dir`), stopped, killed, frozen
//! and restarted through the same script, by the PIDs it recorded.

use std::path::PathBuf;
use std::process::{Child, Command};

use anyhow::Context as _;

pub(super) struct Cluster {
    script: PathBuf,
    dir: PathBuf,
    /// Node ids, which are Kafka's broker ids: 1..=n.
    pub(super) nodes: Vec<i32>,
}

impl Cluster {
    pub(super) fn open(script: PathBuf, dir: PathBuf) -> anyhow::Result<Cluster> {
        let n: i32 = std::fs::read_to_string(dir.join("nodes"))
            .with_context(|| {
                format!(
                    "{} holds no cluster of scripts/kafka.sh (no nodes file)",
                    dir.display()
                )
            })?
            .trim()
            .parse()
            .context("the cluster's nodes file")?;
        anyhow::ensure!(
            script.exists(),
            "{} not found (pass --kafka-script)",
            script.display()
        );
        Ok(Cluster {
            script,
            dir,
            nodes: (1..=n).collect(),
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.script);
        c.args(args).env("KAFKA_DIR", &self.dir);
        c
    }

    /// `scripts/kafka.sh node <node> <action>`, started; its messages go to
    /// the drill's stderr. `start` returns once the cluster answers again.
    pub(super) fn spawn(&self, node: i32, action: &str) -> anyhow::Result<Child> {
        self.command(&["node", &node.to_string(), action])
            .spawn()
            .with_context(|| format!("running {} node {node} {action}", self.script.display()))
    }

    /// The node id of the active controller, as the nodes recorded it.
    pub(super) fn controller(&self) -> Option<i32> {
        let out = self.command(&["controller"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .ok()
            .filter(|id| *id >= 0)
    }

    /// The node's process, if the script recorded one that still runs.
    pub(super) fn pid(&self, node: i32) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.dir.join(format!("node{node}/pid")))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        std::path::Path::new(&format!("/proc/{pid}"))
            .exists()
            .then_some(pid)
    }

    /// Whether the node's process is stopped (state `T`, after SIGSTOP).
    pub(super) fn stopped(&self, node: i32) -> bool {
        let Some(pid) = self.pid(node) else {
            return false;
        };
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                // pid (comm) STATE ...: the state follows the last ')'.
                let (_, rest) = s.rsplit_once(')')?;
                Some(rest.trim_start().starts_with('T'))
            })
            .unwrap_or(false)
    }
}
