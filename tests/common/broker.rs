//! The cluster under test: its address, its consumer groups, and private
//! brokers for the tests that kill, freeze, secure or restart one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::{
    Names, TIMEOUT, TallyProc, block_on, tally_on, tally_on_with, tool, tools, unique, wait_for,
};

/// The cluster under test: `KAFKA_BOOTSTRAP`, set by `scripts/test.sh` (which
/// starts Apache Kafka with `scripts/kafka.sh`) or by the caller (any cluster).
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
        panic!("KAFKA_BOOTSTRAP is not set: run the broker tests through ./scripts/test.sh, which starts Apache Kafka")
    })
}

pub fn client_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap());
    c
}

/// The group's committed offsets for `topic`, by partition (partitions without a
/// commit are absent).
pub fn committed_offsets(group: &str, topic: &str) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offsets reader");
    let md = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
    }
    // A coordinator that moved or is loading answers the same request later.
    let deadline = Instant::now() + TIMEOUT;
    let committed = loop {
        match consumer.committed_offsets(tpl.clone(), TIMEOUT) {
            Err(e) if Instant::now() < deadline && e.to_string().contains("Coordinator") => {
                std::thread::sleep(Duration::from_millis(250));
            }
            res => break res.expect("committed offsets"),
        }
    };
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// JVM flags of a test cluster's nodes (see `scripts/drill.sh`).
const CLUSTER_JVM_OPTS: &str =
    "-XX:TieredStopAtLevel=1 -XX:CICompilerCount=1 -XX:ParallelGCThreads=1 -XX:ConcGCThreads=1";

/// An Apache Kafka of the test's own (`scripts/kafka.sh` in a temporary
/// directory, free ports), for tests that kill, freeze or restart the broker:
/// that cannot be done to a shared broker. Stopped on drop. Every constructor
/// returns `None` when a tool `scripts/kafka.sh` runs is missing and the test is
/// to be skipped ([`super::tools`]): `let Some(broker) = ... else { return };`.
pub struct PrivateBroker {
    pub bootstrap: String,
    dir: tempfile::TempDir,
    /// A secured broker's admin properties: the helpers below act as admin.
    admin_config: Option<std::path::PathBuf>,
}

impl PrivateBroker {
    pub fn start() -> Option<PrivateBroker> {
        Self::start_with(1, &[])
    }

    /// A cluster of `n` nodes (`scripts/kafka.sh start --nodes n`): with 3,
    /// replication factor 3 and `min.insync.replicas=2` by default.
    pub fn start_nodes(n: usize) -> Option<PrivateBroker> {
        Self::start_with(n, &[])
    }

    /// Like [`PrivateBroker::start_nodes`], with broker settings added to each
    /// node's `server.properties` (`KAFKA_EXTRA_PROPERTIES`), e.g.
    /// `("auto.create.topics.enable", "true")`.
    pub fn start_with(n: usize, properties: &[(&str, &str)]) -> Option<PrivateBroker> {
        Self::script_tools(false)?;
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = properties.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut start = Self::script(dir.path(), &["start", "--nodes", &n.to_string()]);
        start.env("KAFKA_EXTRA_PROPERTIES", extra.join("\n"));
        if n > 1 {
            // As scripts/drill.sh does: brokers that start with half the CPU.
            start.env("KAFKA_OPTS", CLUSTER_JVM_OPTS);
        }
        Some(Self::started(dir, start, false))
    }

    /// One node with a SASL_SSL listener (SCRAM-SHA-512), ACLs enforced and no
    /// ACL yet (`scripts/kafka.sh start --secure`): the users `admin` (super
    /// user), `tally` and `tally-reader`, each with `<user>.properties` for
    /// `--kafka-config` in [`PrivateBroker::secret`]'s directory.
    pub fn start_secure() -> Option<PrivateBroker> {
        Self::script_tools(true)?;
        let dir = tempfile::tempdir().unwrap();
        let start = Self::script(dir.path(), &["start", "--secure"]);
        Some(Self::started(dir, start, true))
    }

    /// What `scripts/kafka.sh start` runs: a JDK (`$JAVA`, else java and javac on
    /// `PATH`), python3 (free ports) and, for `--secure`, openssl.
    fn script_tools(secure: bool) -> Option<()> {
        if std::env::var_os("JAVA").is_none() {
            tools(&["java", "javac"])?;
        }
        tool("python3")?;
        if secure {
            tool("openssl")?;
        }
        Some(())
    }

    fn started(
        dir: tempfile::TempDir,
        mut start: std::process::Command,
        secure: bool,
    ) -> PrivateBroker {
        let out = start
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run scripts/kafka.sh");
        assert!(out.status.success(), "scripts/kafka.sh start failed");
        let admin_config = secure.then(|| dir.path().join("secrets/admin.properties"));
        PrivateBroker {
            bootstrap: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            dir,
            admin_config,
        }
    }

    /// A file of a secured broker's `secrets/` directory.
    pub fn secret(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join("secrets").join(name)
    }

    /// `scripts/kafka.sh acl ARGS` (kafka-acls' arguments, run as admin).
    pub fn acl(&self, args: &[&str]) {
        let out = Self::script(self.dir.path(), &[&["acl"], args].concat())
            .output()
            .expect("run scripts/kafka.sh acl");
        assert!(
            out.status.success(),
            "kafka.sh acl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn script(dir: &std::path::Path, args: &[&str]) -> std::process::Command {
        let mut c =
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"));
        c.args(args).env("KAFKA_DIR", dir);
        c
    }

    /// `scripts/kafka.sh node 1 <action>` on this broker: `kill` (SIGKILL),
    /// `stop` (clean shutdown), `start` (restart with its data, waiting until the
    /// coordinators answer), `pause` (SIGSTOP), `resume` (SIGCONT).
    pub fn node(&self, action: &str) {
        self.node_at(1, action);
    }

    /// `scripts/kafka.sh node <id> <action>`: node ids are Kafka's broker ids.
    pub fn node_at(&self, id: i32, action: &str) {
        let ok = Self::script(self.dir.path(), &["node", &id.to_string(), action])
            .status()
            .expect("run scripts/kafka.sh")
            .success();
        assert!(ok, "scripts/kafka.sh node {id} {action} failed");
    }

    fn admin(&self) -> tally::kafka::TopicAdmin {
        tally::kafka::TopicAdmin::new(&tally::kafka::Connection {
            bootstrap: self.bootstrap.clone(),
            properties: Vec::new(),
        })
        .unwrap()
    }

    /// The leader (broker id) of each partition of `topic`.
    pub fn leaders(&self, topic: &str) -> std::collections::BTreeMap<i32, i32> {
        block_on(self.admin().leaders(topic)).unwrap()
    }

    /// The broker coordinating `key` (a group id in `__consumer_offsets`, a
    /// transactional.id in `__transaction_state`).
    pub fn coordinator(&self, internal_topic: &str, key: &str) -> i32 {
        block_on(self.admin().coordinator(internal_topic, key))
            .unwrap()
            .unwrap_or_else(|| panic!("{internal_topic} has no leader for {key}"))
    }

    /// `kill -9` of this broker only, by the PID its script recorded.
    pub fn kill9(&self) {
        self.node("kill");
    }

    /// Fresh names on this broker, the pipeline's topics created (2 partitions)
    /// and `events` generated events (no 1 MiB payloads) in the input.
    pub fn pipeline(&self, prefix: &str, events: u64) -> Names {
        let names = Names {
            input: unique(&format!("{prefix}-in")),
            output: unique(&format!("{prefix}-out")),
            dlq: unique(&format!("{prefix}-dlq")),
            insights: unique(&format!("{prefix}-ins")),
            group: unique(&format!("{prefix}-group")),
        };
        let topic_args = names.topic_args();
        let mut args = vec!["create-topics", "--partitions", "2"];
        args.extend(topic_args.iter().map(String::as_str));
        let (code, _, err) = self.tally(&args);
        assert_eq!(code, 0, "{err}");
        self.generate(&names, events);
        names
    }

    /// `tally generate` of `count` more events (no huge ones) into the input.
    pub fn generate(&self, names: &Names, count: u64) {
        let count = count.to_string();
        let (code, _, err) = self.tally(&[
            "generate",
            "--topic",
            &names.input,
            "--count",
            &count,
            "--huge",
            "false",
        ]);
        assert_eq!(code, 0, "{err}");
    }

    /// Runs a tally subcommand against this broker: (exit code, stdout, stderr).
    pub fn tally(&self, args: &[&str]) -> (i32, String, String) {
        match &self.admin_config {
            Some(admin) => tally_on_with(
                &self.bootstrap,
                args,
                &[("TALLY_KAFKA_CONFIG", admin.to_str().unwrap())],
            ),
            None => tally_on(&self.bootstrap, args),
        }
    }

    /// `tally lag --wait-for`: every one of the `events` input records
    /// committed within 180 s, else fails with `run`'s log.
    pub fn wait_drained(&self, names: &Names, events: u64, run: &mut TallyProc) {
        let count = events.to_string();
        let (code, out, err) = self.tally(&[
            "lag",
            "--group-id",
            &names.group,
            "--input-topic",
            &names.input,
            "--wait-for",
            &count,
            "--timeout",
            "180s",
        ]);
        assert_eq!(
            code,
            0,
            "the group did not drain: {out}{err}\n{}",
            run.log()
        );
    }

    /// `tally verify --complete`: `events` input records, each exactly once.
    pub fn assert_exactly_once(&self, names: &Names, events: u64) {
        let topic_args = names.topic_args();
        let mut args = vec!["verify", "--complete", "--json", "--group-id", &names.group];
        args.extend(topic_args.iter().map(String::as_str));
        let (code, out, err) = self.tally(&args);
        let s: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        assert_eq!(code, 0, "{s:#}\n{err}");
        for k in ["missing", "duplicates", "mismatched", "stray", "unconsumed"] {
            assert_eq!(s[k], 0, "{k}: {s:#}");
        }
        let total = ["processed", "dead_lettered", "filtered"]
            .iter()
            .map(|k| s[k].as_u64().unwrap())
            .sum::<u64>();
        assert_eq!(total, events, "{s:#}");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Self::script(self.dir.path(), &["stop"]).status();
    }
}

/// Deletes consumer group `group`, and with it its committed offsets, as Kafka
/// does `offsets.retention.minutes` after the group empties (or an operator
/// with `kafka-consumer-groups --delete`). Waits while the group still has
/// members (a member that did not leave stays until its session times out).
pub fn delete_group(group: &str) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    wait_for(
        "the group to empty and be deleted",
        Duration::from_secs(60),
        || {
            let res = rt
                .block_on(admin.delete_groups(
                    &[group],
                    &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
                ))
                .expect("delete_groups request");
            match &res[..] {
                [Ok(_)] => Some(()),
                [Err((_, RDKafkaErrorCode::NonEmptyGroup))] => {
                    std::thread::sleep(Duration::from_millis(500));
                    None
                }
                other => panic!("delete group {group}: {other:?}"),
            }
        },
    );
}
