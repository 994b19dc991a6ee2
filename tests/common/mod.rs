//! Broker test harness shared by the tests in `tests/`.
//!
//! Deliberately independent of tally's own Kafka code: it talks to the broker with
//! plain rdkafka so a bug in tally cannot hide itself in the measurements.
//! Every test uses its own random topic, group and transactional.id names.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The cluster under test: `KAFKA_BOOTSTRAP`, set by `scripts/test.sh` (which
/// starts Apache Kafka with `scripts/kafka.sh`) or by the caller (any cluster).
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
        panic!("KAFKA_BOOTSTRAP is not set: run the broker tests through ./scripts/test.sh, which starts Apache Kafka")
    })
}

/// A name nobody else uses: `<prefix>-<random>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

pub fn client_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap());
    c
}

/// Whether the cluster has the topic, asked by a consumer (which never makes the
/// broker create the topic it asks about). A topic still being created (no
/// leader yet, say) counts as existing: only "unknown topic" or no partitions
/// at all mean it does not.
pub fn topic_exists(name: &str) -> bool {
    let consumer: BaseConsumer = client_config().create().expect("consumer");
    let md = consumer
        .fetch_metadata(Some(name), Duration::from_secs(30))
        .expect("metadata");
    md.topics().first().is_some_and(|t| match t.error() {
        Some(e) => RDKafkaErrorCode::from(e) != RDKafkaErrorCode::UnknownTopicOrPartition,
        None => !t.partitions().is_empty(),
    })
}

pub fn create_topic(name: &str, partitions: i32) {
    create_topic_with(name, partitions, &[]);
}

/// Like [`create_topic`], with the topic's `max.message.bytes`.
pub fn create_topic_with_limit(name: &str, partitions: i32, max_message_bytes: usize) {
    let limit = max_message_bytes.to_string();
    create_topic_with(name, partitions, &[("max.message.bytes", &limit)]);
}

/// Creates a topic with extra topic configuration (e.g. `cleanup.policy`);
/// `max.message.bytes` is 2 MiB unless the configuration names it.
pub fn create_topic_with(name: &str, partitions: i32, config: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    if !config.iter().any(|(k, _)| *k == "max.message.bytes") {
        topic = topic.set("max.message.bytes", "2097152");
    }
    let topic = config.iter().fold(topic, |t, (k, v)| t.set(k, v));
    let res = rt
        .block_on(admin.create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        ))
        .expect("create_topics request");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    // Wait until metadata shows every partition, so producers don't race creation.
    let consumer: BaseConsumer = client_config().create().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(md) = consumer.fetch_metadata(Some(name), Duration::from_secs(5)) {
            if md
                .topics()
                .first()
                .is_some_and(|t| t.error().is_none() && t.partitions().len() == partitions as usize)
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "topic {name} did not appear in metadata"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn producer() -> ThreadedProducer<DefaultProducerContext> {
    client_config()
        .set("enable.idempotence", "true")
        // Large enough for the oversized records of tests/dlq.rs (topics that allow 8 MiB).
        .set("message.max.bytes", "10000000")
        .create()
        .expect("producer")
}

/// A record to produce: key and value (`None` value = tombstone).
pub type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Produces `(key, value)` records (value `None` = tombstone) to `partition`, or by key hash.
pub fn produce(topic: &str, partition: Option<i32>, records: &[KeyValue]) {
    let p = producer();
    for (k, v) in records {
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(k) = k {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = v {
            rec = rec.payload(v.as_slice());
        }
        if let Some(part) = partition {
            rec = rec.partition(part);
        }
        let mut rec = rec;
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("produce to {topic}: {e}"),
            }
        }
    }
    p.flush(TIMEOUT).expect("flush");
}

/// One record as a `read_committed` reader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

impl Record {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().expect("value")).expect("json value")
    }
}

/// Reads the whole topic as a `read_committed` reader, up to the end each partition
/// had when reading started (for a read_committed reader the end is the last stable
/// offset: the read stops early rather than wait out an open transaction).
pub fn read_all(topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = client_config()
        .set("group.id", unique("harness-reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("reader");
    let md = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .expect("metadata");
    let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut pending: std::collections::HashSet<i32> = partitions.into_iter().collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "reading {topic} did not reach the end of {pending:?}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
    }
    out
}

pub fn count_committed(topic: &str) -> usize {
    read_all(topic).len()
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

/// Path of the `tally` binary built for these tests.
pub fn tally_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_tally"))
}

/// Topic and group names of one test's pipeline.
#[derive(Debug, Clone)]
pub struct Names {
    pub input: String,
    pub output: String,
    pub dlq: String,
    pub insights: String,
    pub group: String,
}

impl Names {
    /// Fresh names, with all four topics created (`partitions` each).
    pub fn create(test: &str, partitions: i32) -> Names {
        Names::create_with_input_limit(test, partitions, 2_097_152)
    }

    /// Like [`Names::create`], with the input topic's `max.message.bytes`.
    pub fn create_with_input_limit(
        test: &str,
        partitions: i32,
        input_max_message_bytes: usize,
    ) -> Names {
        let n = Names {
            input: unique(&format!("{test}-in")),
            output: unique(&format!("{test}-out")),
            dlq: unique(&format!("{test}-dlq")),
            insights: unique(&format!("{test}-ins")),
            group: unique(&format!("{test}-group")),
        };
        create_topic_with_limit(&n.input, partitions, input_max_message_bytes);
        for t in [&n.output, &n.dlq] {
            create_topic(t, partitions);
        }
        // Co-partitioned and compacted: `tally run` refuses anything else.
        create_topic_with(&n.insights, partitions, &[("cleanup.policy", "compact")]);
        n
    }

    /// The flags naming these topics, as every tally subcommand but `insights` takes them.
    pub fn topic_args(&self) -> Vec<String> {
        [
            ("--input-topic", &self.input),
            ("--output-topic", &self.output),
            ("--dlq-topic", &self.dlq),
            ("--insights-topic", &self.insights),
        ]
        .iter()
        .flat_map(|(f, v)| [f.to_string(), v.to_string()])
        .collect()
    }
}

/// Generated input with what the test knows about it, independently of tally's
/// processing: the generator's own labels of what it made malformed, and a recount
/// of the valid records.
pub type Input = tally::generate::Recount;

/// Produces `count` generated events (seeded) to `topic` and recounts them.
pub fn produce_generated(topic: &str, count: u64, seed: u64, invalid_ratio: f64) -> Input {
    let start = chrono::Utc::now().timestamp() - 3600;
    let mut g = tally::generate::Generator::new(seed, start, invalid_ratio, false);
    let mut input = Input::default();
    let mut batch = Vec::new();
    for _ in 0..count {
        let r = g.next_record();
        input.add(&r);
        batch.push((Some(r.key), r.value));
    }
    produce(topic, None, &batch);
    input
}

/// A `tally run` child process; its stderr goes to a log file.
pub struct TallyProc {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl TallyProc {
    pub fn start(
        names: &Names,
        instance: &str,
        state_dir: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> TallyProc {
        Self::start_on(&bootstrap(), names, instance, state_dir, extra, env)
    }

    /// Like [`TallyProc::start`], against the broker at `bootstrap`.
    pub fn start_on(
        bootstrap: &str,
        names: &Names,
        instance: &str,
        state_dir: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> TallyProc {
        let log = state_dir.with_extension(format!("{}.log", unique("run")));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = std::process::Command::new(tally_bin());
        cmd.arg("run")
            .args([
                "--bootstrap-servers",
                bootstrap,
                "--group-id",
                &names.group,
                "--instance-id",
                instance,
            ])
            .args(names.topic_args())
            .arg("--state-dir")
            .arg(state_dir)
            .args(["--progress-secs", "2"])
            .args(extra)
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
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        TallyProc {
            child: cmd.spawn().expect("spawn tally run"),
            log,
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

    /// A counter or gauge from `/metrics` (the first series of that name).
    pub fn metric(&mut self, name: &str) -> u64 {
        let (code, body) = http_get(&format!("{}/metrics", self.endpoint()));
        assert_eq!(code, 200, "{body}");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} not exported:\n{body}"))
            .trim()
            .parse()
            .unwrap()
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

/// Waits until the group's committed offsets of `topic` sum to `total`.
pub fn wait_for_committed(
    group: &str,
    topic: &str,
    total: i64,
    timeout: Duration,
    procs: &mut [&mut TallyProc],
) {
    let deadline = Instant::now() + timeout;
    loop {
        let sum: i64 = committed_offsets(group, topic).values().sum();
        if sum >= total {
            assert_eq!(sum, total, "committed past the end of the input");
            return;
        }
        for p in procs.iter_mut() {
            if p.exited() {
                panic!("tally exited early; log:\n{}", p.log());
            }
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.log()).collect();
            panic!(
                "group {group} committed {sum} of {total} within {timeout:?}; logs:\n{}",
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
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
/// `tally verify --json` for the pipeline; returns its exit code and summary.
pub fn verify(names: &Names) -> (i32, serde_json::Value) {
    verify_with(names, &[])
}

/// Like [`verify`], with extra flags (e.g. the limits the run was given).
pub fn verify_with(names: &Names, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec![
        "verify".to_string(),
        "--json".into(),
        "--group-id".into(),
        names.group.clone(),
    ];
    args.extend(names.topic_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    let (code, out, err) = tally(&args);
    let summary =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("verify output ({e}): {out}\n{err}"));
    (code, summary)
}

/// Asserts verify passes with exactly these outcome counts.
pub fn assert_verified(names: &Names, processed: u64, dead_lettered: u64) {
    assert_verified_with(names, &[], processed, dead_lettered);
}

/// Like [`assert_verified`], with extra flags for `tally verify`.
pub fn assert_verified_with(names: &Names, extra: &[&str], processed: u64, dead_lettered: u64) {
    let (code, s) = verify_with(names, extra);
    assert_eq!(code, 0, "verify failed: {s:#}");
    assert_eq!(s["processed"], processed, "{s:#}");
    assert_eq!(s["dead_lettered"], dead_lettered, "{s:#}");
    assert_eq!(s["filtered"], 0, "{s:#}");
    for k in ["missing", "duplicates", "mismatched", "stray", "unconsumed"] {
        assert_eq!(s[k], 0, "{k}: {s:#}");
    }
}

/// JVM flags of a test cluster's nodes (see `scripts/drill.sh`).
const CLUSTER_JVM_OPTS: &str =
    "-XX:TieredStopAtLevel=1 -XX:CICompilerCount=1 -XX:ParallelGCThreads=1 -XX:ConcGCThreads=1";

/// An Apache Kafka of the test's own (`scripts/kafka.sh` in a temporary
/// directory, free ports), for tests that kill, freeze or restart the broker:
/// that cannot be done to a shared broker. Stopped on drop.
pub struct PrivateBroker {
    pub bootstrap: String,
    dir: tempfile::TempDir,
    /// A secured broker's admin properties: the helpers below act as admin.
    admin_config: Option<std::path::PathBuf>,
}

impl PrivateBroker {
    pub fn start() -> PrivateBroker {
        Self::start_with(1, &[])
    }

    /// A cluster of `n` nodes (`scripts/kafka.sh start --nodes n`): with 3,
    /// replication factor 3 and `min.insync.replicas=2` by default.
    pub fn start_nodes(n: usize) -> PrivateBroker {
        Self::start_with(n, &[])
    }

    /// Like [`PrivateBroker::start_nodes`], with broker settings added to each
    /// node's `server.properties` (`KAFKA_EXTRA_PROPERTIES`), e.g.
    /// `("auto.create.topics.enable", "true")`.
    pub fn start_with(n: usize, properties: &[(&str, &str)]) -> PrivateBroker {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = properties.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut start = Self::script(dir.path(), &["start", "--nodes", &n.to_string()]);
        start.env("KAFKA_EXTRA_PROPERTIES", extra.join("\n"));
        if n > 1 {
            // As scripts/drill.sh does: brokers that start with half the CPU.
            start.env("KAFKA_OPTS", CLUSTER_JVM_OPTS);
        }
        Self::started(dir, start, false)
    }

    /// One node with a SASL_SSL listener (SCRAM-SHA-512), ACLs enforced and no
    /// ACL yet (`scripts/kafka.sh start --secure`): the users `admin` (super
    /// user), `tally` and `tally-reader`, each with `<user>.properties` for
    /// `--kafka-config` in [`PrivateBroker::secret`]'s directory.
    pub fn start_secure() -> PrivateBroker {
        let dir = tempfile::tempdir().unwrap();
        let start = Self::script(dir.path(), &["start", "--secure"]);
        Self::started(dir, start, true)
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
            "180",
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

/// `tally insights --json` for the pipeline.
pub fn insights(names: &Names) -> serde_json::Value {
    let (code, out, err) = tally(&[
        "insights".into(),
        "--json".into(),
        "--insights-topic".into(),
        names.insights.clone(),
        "--input-topic".into(),
        names.input.clone(),
    ]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

pub fn counts(v: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, c)| (k.clone(), c.as_u64().unwrap()))
        .collect()
}

/// Insight totals equal what the test counted from the input it produced.
pub fn assert_insights_match(names: &Names, input: &Input) {
    let v = insights(names);
    let a = &v["aggregate"];
    assert_eq!(a["processed"], input.valid(), "{v:#}");
    assert_eq!(a["dead_lettered"], input.malformed, "{v:#}");
    assert_eq!(counts(&a["by_device_type"]), input.by_device_type, "{v:#}");
    assert_eq!(counts(&a["by_app_version"]), input.by_app_version, "{v:#}");
    assert_eq!(counts(&a["by_locale"]), input.by_locale, "{v:#}");
    let minutes: u64 =
        counts(&a["per_minute"]).values().sum::<u64>() + a["older_than_horizon"].as_u64().unwrap();
    assert_eq!(minutes, input.valid(), "{v:#}");
}

/// Deletes the records of `topic` partition `partition` below `offset`, as
/// retention does.
pub fn delete_records_below(topic: &str, partition: i32, offset: i64) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap();
    let res = rt
        .block_on(admin.delete_records(&tpl, &AdminOptions::new().operation_timeout(Some(TIMEOUT))))
        .expect("delete_records request");
    for e in res.elements() {
        e.error()
            .unwrap_or_else(|err| panic!("delete records of {topic}/{partition}: {err}"));
    }
}

/// `(low, high)` watermarks of a partition.
pub fn watermarks(topic: &str, partition: i32) -> (i64, i64) {
    let consumer: BaseConsumer = client_config().create().unwrap();
    consumer
        .fetch_watermarks(topic, partition, TIMEOUT)
        .expect("watermarks")
}

/// Runs a future of the library to completion, for the tests' synchronous code.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Polls `f` until it returns `Some`, failing with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
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

/// Grows `topic` to `total` partitions, as `kafka-topics --alter --partitions`.
pub fn add_partitions(topic: &str, total: usize) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt
        .block_on(admin.create_partitions(
            [&rdkafka::admin::NewPartitions::new(topic, total)],
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        ))
        .expect("create_partitions request");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("add partitions to {t}: {e}"));
    }
}
