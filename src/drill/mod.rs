//! The crash/restart recovery drill, as a library so tests can drive it: several
//! `tally run` instances in one group while events (with malformed ones) flow,
//! faults at random times from a printed seed, then a drain and the checks:
//! every input record exactly once (verify) and the insights against the drill's
//! own recount of what it generated. `tally-drill` (front end:
//! `scripts/drill.sh`) is its command line.
//!
//! Errors are `anyhow`: the drill is a harness whose every error ends the run
//! with its message, like a binary's edge.

mod cluster;
mod expect;
mod instance;
mod report;
mod sampler;
mod stall;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use rand::seq::{IndexedRandom as _, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::aggregate::Horizon;
use crate::event::{Filters, Limits, OutputLimits, ProcessConfig};
use crate::generate::Generator;
use crate::insights::{Latest, Snapshot};
use crate::kafka::{self, Connection, GroupAdmin, OutputTopics, PlainProducer, TopicReader};
use cluster::Cluster;
use expect::{Expectations, Label, Written};
use instance::Instance;
pub use report::Report;
use sampler::Sampler;
use stall::{Recoveries, StallWatch};

#[derive(Debug, Parser)]
#[command(
    name = "tally-drill",
    about = "Crash/restart drill for tally, verified to the record"
)]
pub struct DrillArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "localhost:9092")]
    pub bootstrap_servers: String,
    /// Seconds of faults, rounded up to whole rounds of every fault kind (then the
    /// drill drains and checks).
    #[arg(long, env = "DRILL_DURATION", default_value_t = 60)]
    pub duration: u64,
    /// `tally run` instances in the group.
    #[arg(long, env = "DRILL_INSTANCES", default_value_t = 3)]
    pub instances: usize,
    /// Events per second from the generator.
    #[arg(long, env = "DRILL_RATE", default_value_t = 300.0)]
    pub rate: f64,
    /// Stop generating after this many events (default: unbounded until the end).
    #[arg(long, env = "DRILL_EVENTS")]
    pub events: Option<u64>,
    /// Seed of the faults and of the generated events; printed so a run can be repeated.
    #[arg(long, env = "DRILL_SEED")]
    pub seed: Option<u64>,
    /// Partitions of the drill's topics.
    #[arg(long, env = "DRILL_PARTITIONS", default_value_t = 6)]
    pub partitions: i32,
    /// Share of malformed events.
    #[arg(long, env = "DRILL_INVALID_RATIO", default_value_t = 0.05)]
    pub invalid_ratio: f64,
    /// Include the zombie fault (SIGSTOP past the session timeout, then SIGCONT).
    #[arg(long, env = "DRILL_ZOMBIE", default_value_t = true, action = clap::ArgAction::Set)]
    pub zombie: bool,
    /// Seconds between faults: a random pause in [min, 2*min].
    #[arg(long, env = "DRILL_FAULT_INTERVAL", default_value_t = 3)]
    pub fault_interval: u64,
    /// Where logs and state directories go (default: a new folder under .run/).
    #[arg(long, env = "DRILL_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// The tally binary (default: the one beside this drill).
    #[arg(long, env = "DRILL_TALLY_BIN")]
    pub tally_bin: Option<PathBuf>,
    /// Every this many events, a run of junk records of the next size: 3 MB (over
    /// the 2 MiB DLQ), 1.5 MB (over the broker's default, the input allows 8 MiB),
    /// exactly the DLQ's limit, the largest value the DLQ takes whole and one byte
    /// more, a burst of ten 1 MiB records. 0: none.
    #[arg(long, env = "DRILL_OVERSIZE_EVERY", default_value_t = 10_000)]
    pub oversize_every: u64,
    /// Seconds allowed for the group to drain after the faults.
    #[arg(long, env = "DRILL_DRAIN_TIMEOUT", default_value_t = 240)]
    pub drain_timeout: u64,
    /// Fault kinds to apply, comma-separated: `all`, `none`, or kinds such as
    /// `kill9-restart,zombie`.
    #[arg(long, env = "DRILL_FAULTS", default_value = "all", value_parser = parse_faults)]
    pub faults: FaultSet,
    /// Plants a fault in every instance: a failpoint that makes tally do the
    /// wrong thing on purpose. The drill must then fail; this shows it can.
    #[arg(long, env = "DRILL_PLANT", value_enum)]
    pub plant: Option<Plant>,
    /// The data directory (`KAFKA_DIR`) of the cluster under the drill, as
    /// `scripts/kafka.sh` started it: the broker faults stop, kill, freeze and
    /// restart its nodes. `all` includes them when it has 3 nodes or more.
    #[arg(long, env = "DRILL_KAFKA_DIR")]
    pub kafka_dir: Option<PathBuf>,
    /// The script that controls that cluster's nodes.
    #[arg(long, env = "DRILL_KAFKA_SCRIPT", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))]
    pub kafka_script: PathBuf,
}

/// The fault kinds a drill applies, every one once per round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSet(pub Vec<Fault>);

fn parse_faults(s: &str) -> Result<FaultSet, String> {
    use clap::ValueEnum as _;
    match s.trim() {
        "all" => Ok(FaultSet(Fault::value_variants().to_vec())),
        "none" => Ok(FaultSet(Vec::new())),
        list => list
            .split(',')
            .map(|k| Fault::from_str(k.trim(), true))
            .collect::<Result<Vec<_>, _>>()
            .map(FaultSet),
    }
}

/// A fault planted in tally (see `src/failpoints.rs`), each of which the drill
/// must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Plant {
    /// One valid record's output is never written, yet its offset commits.
    Loss,
    /// One record's output is written twice.
    Duplicate,
    /// One snapshot counts a processed record too many; later ones are right.
    WrongSnapshot,
    /// Partition 0's checkpoints are written one offset past Kafka's.
    CheckpointAhead,
}

impl Plant {
    fn failpoints(self) -> &'static str {
        match self {
            Plant::Loss => "plant-loss=200*off->1*return->off",
            Plant::Duplicate => "plant-duplicate=200*off->1*return->off",
            Plant::WrongSnapshot => "plant-wrong-snapshot=5*off->1*return->off",
            Plant::CheckpointAhead => "plant-checkpoint-ahead=return(0)",
        }
    }
}

/// How the instances are run: their `--session-timeout` and
/// `--shutdown-timeout`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Member {
    pub(crate) session_ms: u64,
    pub(crate) shutdown_secs: u64,
}

impl Member {
    /// Without broker faults: a short session, so a zombie (paused past it)
    /// costs the drill little time; tally's default shutdown bound.
    const ALONE: Member = Member {
        session_ms: 6000,
        shutdown_secs: 30,
    };
    /// With broker faults: tally's default session, which outlasts a group
    /// coordinator's failover (shorter, every death of the coordinator's broker
    /// expires every member's session); and time for a graceful stop to finish
    /// its commit while a broker is down, which may take until the
    /// transaction's deadline (`transaction.timeout.ms`, 60 s).
    const CLUSTER: Member = Member {
        session_ms: 25_000,
        shutdown_secs: 90,
    };

    /// How long the drill waits for an instance to exit after SIGTERM.
    fn stop_wait(self) -> Duration {
        Duration::from_secs(self.shutdown_secs + 30)
    }
}
const INPUT_MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// The drill's runs of junk records (see `--oversize-every`) for a DLQ of `dlq_limit`.
fn oversize_runs(input_topic: &str, dlq_limit: usize) -> Vec<(usize, u64)> {
    let room = crate::event::dlq_room(&ProcessConfig {
        input_topic: input_topic.to_string(),
        limits: Limits::default(),
        filters: Filters::default(),
        output_limits: OutputLimits {
            dlq_max_bytes: dlq_limit,
            ..OutputLimits::default()
        },
    });
    // Keys are "oversize-<n>": at most 16 bytes in a drill.
    vec![
        (3_000_000, 1),
        (1_500_000, 1),
        (dlq_limit, 1),
        (room - 16, 1),
        (room + 1, 1),
        (1 << 20, 10),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    Kill9Restart,
    Kill9NewHost,
    GracefulScaleDown,
    Zombie,
    /// Restarted with a failpoint that aborts the process at a chosen step of the
    /// cycle (after producing, before the commit, between the commit and the
    /// checkpoint): the windows a random kill -9 rarely hits.
    CrashPoint,
    /// Retention: the input is trimmed (DeleteRecords) below the group's
    /// committed offsets while an instance is killed with kill -9 and its state
    /// directory deleted: it comes back as a new host that can restore only from
    /// the snapshots, never from the deleted input.
    Retention,
    /// A broker killed with `kill -9` and restarted after a few seconds: the
    /// leader of the most input and output partitions, the group's
    /// coordinator, or an instance's transaction coordinator, as the cluster
    /// says at the time.
    BrokerKill,
    /// A broker stopped (SIGSTOP) past `broker.session.timeout.ms`, then
    /// continued: the controller fences it and moves its leaderships.
    BrokerFreeze,
    /// Every broker in turn stopped cleanly and started again, as an
    /// operator's upgrade does.
    RollingRestart,
    /// The active controller (a broker too) killed with `kill -9` and
    /// restarted once another was elected.
    ControllerKill,
}

impl Fault {
    /// Faults of the cluster rather than of tally: they need `--kafka-dir`.
    pub fn is_broker(self) -> bool {
        matches!(
            self,
            Fault::BrokerKill | Fault::BrokerFreeze | Fault::RollingRestart | Fault::ControllerKill
        )
    }

    /// The name in the summary (as in `summary.json`).
    fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// How long the drill goes without a sample of the committed offsets before it
/// starts a new sampler.
const SAMPLER_PATIENCE: Duration = Duration::from_secs(20);

/// How long the drill waits for a restarted broker's replicas to be in sync.
const IN_SYNC_LIMIT: Duration = Duration::from_secs(120);

/// `broker.session.timeout.ms` of `scripts/kafka/server.properties`: a frozen
/// broker is fenced by the controller past it.
const BROKER_SESSION_MS: u64 = 6000;

/// How long a group may take to be ready again after a fault.
const READY_LIMIT: Duration = Duration::from_secs(60);

/// How long the drill's own reads of the cluster (watermarks, committed
/// offsets, the insights topic) are asked again before the drill gives up: a
/// broker busy, restarting or electing a coordinator answers again within it.
const HARNESS_PATIENCE: Duration = Duration::from_secs(120);

/// The signal [`crate::failpoints::crash`] ends the process with.
const SIGABRT: i32 = 6;
/// `tally run`'s exit code when fenced.
const FENCED_EXIT: i32 = 3;

const CRASH_POINTS: [&str; 3] = [
    "after-produce",
    "before-commit",
    "after-commit-before-checkpoint",
];

struct Names {
    input: String,
    output: String,
    dlq: String,
    insights: String,
    group: String,
}

struct Drill {
    args: DrillArgs,
    conn: Connection,
    tally: PathBuf,
    names: Names,
    instances: Vec<Instance>,
    rng: ChaCha8Rng,
    report: Report,
    admin: GroupAdmin,
    input: TopicReader,
    watch: StallWatch,
    sampler: Sampler,
    member: Member,
    /// When the latest sample was taken.
    last_sample_at: Instant,
    /// The input's high watermarks in the latest sample.
    last_high: BTreeMap<i32, i64>,
    /// Crash points applied so far: the next one is the next in [`CRASH_POINTS`].
    crash_rounds: usize,
    /// What verify expects of the input, as the instances run.
    cfg: ProcessConfig,
    /// verify's expectations of every input record recorded before a trim
    /// deleted it.
    before_trim: crate::verify::Expectations,
    /// The cluster, when the drill controls it (`--kafka-dir`).
    cluster: Option<Cluster>,
    /// The labels of what the generator sent, and of the input read back.
    expect: Arc<Mutex<Expectations>>,
    recoveries: Recoveries,
}

impl Drill {
    fn log(&self, msg: impl AsRef<str>) {
        eprintln!("drill: {}", msg.as_ref());
    }

    fn start(&mut self, i: usize, failpoints: Option<&str>) -> anyhow::Result<()> {
        let (tally, bootstrap) = (self.tally.clone(), self.args.bootstrap_servers.clone());
        let planted = self.args.plant.map(Plant::failpoints);
        let failpoints = match (failpoints, planted) {
            (Some(a), Some(b)) => Some(format!("{a};{b}")),
            (a, b) => a.or(b).map(str::to_string),
        };
        let member = self.member;
        self.instances[i].start(
            &tally,
            &bootstrap,
            &self.names,
            member,
            failpoints.as_deref(),
        )
    }

    /// Starts the clock of a recovery from `fault`, which struck now: it ends
    /// once the input written before it (to the high watermarks last sampled)
    /// is committed.
    fn begin_recovery(&mut self, fault: Fault) {
        let high = self.last_high.clone();
        self.recoveries.begin(&fault.name(), Instant::now(), high);
    }

    /// Records that `fault` struck, with its evidence.
    fn struck(&mut self, fault: &str, evidence: String) {
        self.log(format!("{fault} struck: {evidence}"));
        *self.report.struck.entry(fault.to_string()).or_default() += 1;
    }

    fn not_struck(&mut self, msg: String) {
        self.log(&msg);
        self.report.not_struck.push(msg);
    }

    /// `read` of the cluster, asked again for up to [`HARNESS_PATIENCE`] while
    /// it fails: a transient broker error must not end a drill that is judging
    /// tally's own recovery from such errors. The instances are supervised
    /// meanwhile.
    fn patiently<T>(
        &mut self,
        what: &str,
        mut read: impl FnMut(&mut Self) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let start = Instant::now();
        let mut attempt = 0u32;
        loop {
            match read(self) {
                Ok(v) => return Ok(v),
                Err(e) if start.elapsed() < HARNESS_PATIENCE => {
                    attempt += 1;
                    self.log(format!(
                        "{what} failed (attempt {attempt}), asking again: {e:#}"
                    ));
                    self.idle(Duration::from_secs(1), None)?;
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "{what}: still failing after {} s",
                        HARNESS_PATIENCE.as_secs()
                    )));
                }
            }
        }
    }

    /// Reads the input back from where it was last read to `until`, labelling
    /// each offset by its record's sequence number. Idempotent: a failed read
    /// is read again from where it began.
    fn align_until(&mut self, until: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
        let ranges: Vec<_> = {
            let e = self.expect.lock().unwrap();
            until
                .iter()
                .filter(|(p, u)| e.aligned(**p) < **u)
                .map(|(p, u)| (*p, kafka::StartAt::Offset(e.aligned(*p)), Some(*u)))
                .collect()
        };
        let mut read = Vec::new();
        self.input.read(&ranges, |r| {
            let seq = r.header(expect::SEQ_HEADER).map(<[u8]>::to_vec);
            read.push((r.record.partition, r.record.offset, seq));
        })?;
        let mut e = self.expect.lock().unwrap();
        for (p, offset, seq) in read {
            e.align(p, offset, seq.as_deref());
        }
        Ok(())
    }

    /// The input's log start and high watermark per partition.
    fn watermarks(&self) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
        let mut out = BTreeMap::new();
        for p in 0..self.args.partitions {
            out.insert(p, self.input.watermarks(p)?);
        }
        Ok(out)
    }

    /// The group's committed offsets on the input, asked again while failing.
    fn committed_patiently(&mut self) -> anyhow::Result<BTreeMap<i32, i64>> {
        self.patiently("reading the committed offsets", |d| {
            Ok(d.admin.committed(&d.names.input)?)
        })
    }

    /// [`Self::watermarks`], asked again while failing.
    fn watermarks_patiently(&mut self) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
        self.patiently("reading the watermarks", |d| d.watermarks())
    }

    /// The latest snapshot of every input partition, asked again while failing.
    fn latest_patiently(&mut self) -> anyhow::Result<Latest> {
        self.patiently("reading the snapshots", |d| {
            latest_snapshots(&d.conn, &d.names)
        })
    }

    /// The samples of committed offsets and high watermarks taken since the
    /// last call, into the stall watch and the recovery clocks.
    fn sample_progress(&mut self) {
        let samples = self.sampler.take();
        match samples.last() {
            Some(s) => self.last_sample_at = s.at,
            // A read can hang on a coordinator that is gone (librdkafka issue
            // 5511): without samples the stall watch would be blind.
            None if self.last_sample_at.elapsed() > SAMPLER_PATIENCE => {
                self.log(format!(
                    "no sample of the committed offsets for {:.0} s; starting a new sampler",
                    self.last_sample_at.elapsed().as_secs_f64()
                ));
                match Sampler::start(
                    &self.conn,
                    &self.names.group,
                    &self.names.input,
                    self.args.partitions,
                ) {
                    Ok(s) => self.sampler = s,
                    Err(e) => self.log(format!("starting a sampler failed: {e:#}")),
                }
                self.last_sample_at = Instant::now();
            }
            None => {}
        }
        for sample in samples {
            let (at, committed, high) = (sample.at, &sample.committed, &sample.high);
            self.recoveries.sample(at, committed);
            self.last_high.clone_from(high);
            let stalled = self.watch.sample(at, committed, high);
            for (p, from, to) in std::mem::take(&mut self.watch.regressions) {
                let msg =
                    format!("partition {p}: committed offset moved backwards from {from} to {to}");
                self.log(&msg);
                self.report.offset_regressions.push(msg);
            }
            for (p, c, h) in stalled {
                let msg = format!(
                    "partition {p}: committed offset {c:?} did not move for {} s while input waited (high watermark {h})",
                    self.watch.bound.as_secs()
                );
                self.log(&msg);
                self.report.stalls.push(msg);
            }
        }
    }

    fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.restart_with(i, None)
    }

    fn restart_with(&mut self, i: usize, failpoints: Option<&str>) -> anyhow::Result<()> {
        self.report.restarts += 1;
        self.start(i, failpoints)
    }

    /// Sleeps for `d`, restarting any instance that exited on its own meanwhile
    /// (recorded as unexpected unless `expect_exit` names it).
    fn idle(
        &mut self,
        d: Duration,
        expect_exit: Option<usize>,
    ) -> anyhow::Result<Option<ExitStatus>> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.sample_progress();
            for i in 0..self.instances.len() {
                self.instances[i].sample_rss();
                if let Some(status) = self.instances[i].exited() {
                    if Some(i) == expect_exit {
                        // Back at once: the caller restarts it, and a dead owner
                        // of an open transaction holds its partitions' offsets.
                        return Ok(Some(status));
                    }
                    let msg = format!(
                        "{} exited on its own ({status}); see {}",
                        self.instances[i].id,
                        self.instances[i].log.display()
                    );
                    self.log(&msg);
                    self.report.unexpected_exits.push(msg);
                    self.restart(i)?;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(None)
    }

    /// Waits until every running instance is ready (`/readyz`), at most
    /// [`READY_LIMIT`]; a longer wait is reported as a stall. The zombie fault
    /// waits for this so the instance it freezes owns restored partitions and
    /// has transactions in flight: a zombie that owned nothing proves nothing.
    fn await_ready_group(&mut self, before: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let running = self.running();
            if running.iter().all(|i| self.instances[*i].ready()) {
                self.log(format!(
                    "every instance ready after {:.1} s",
                    start.elapsed().as_secs_f64()
                ));
                return Ok(());
            }
            if start.elapsed() > READY_LIMIT {
                let waiting: Vec<_> = running
                    .iter()
                    .filter(|i| !self.instances[**i].ready())
                    .map(|i| self.instances[*i].id.clone())
                    .collect();
                let msg = format!(
                    "not ready {} s into the wait before {before}: {waiting:?}",
                    READY_LIMIT.as_secs()
                );
                self.log(&msg);
                self.report.stalls.push(msg);
                return Ok(());
            }
            self.idle(Duration::from_millis(500), None)?;
        }
    }

    /// Every fault kind applied must have struck at least once, each crash
    /// point among them once it had its turn.
    fn report_unstruck(&mut self) {
        let applied: Vec<(Fault, u32)> = self.report.faults.iter().map(|(f, n)| (*f, *n)).collect();
        for (fault, n) in applied {
            let name = fault.name();
            let keys: Vec<String> = if fault == Fault::CrashPoint {
                CRASH_POINTS
                    .iter()
                    .take(n as usize)
                    .map(|p| format!("{name}:{p}"))
                    .collect()
            } else {
                vec![name]
            };
            for k in keys {
                if !self.report.struck.contains_key(&k) {
                    self.not_struck(format!("{k}: applied, never shown to strike"));
                }
            }
        }
    }

    fn cluster(&self) -> anyhow::Result<&Cluster> {
        self.cluster
            .as_ref()
            .context("broker faults need the cluster's --kafka-dir")
    }

    /// `scripts/kafka.sh node <node> <action>` to its end, the instances
    /// supervised meanwhile (`start` returns once the cluster answers again).
    /// A start that fails (the node did not answer in time) is asked again,
    /// 3 times in all: a JVM that is slow to start keeps starting meanwhile.
    fn node(&mut self, node: i32, action: &str) -> anyhow::Result<()> {
        let attempts = if action == "start" { 3 } else { 1 };
        for attempt in 1..=attempts {
            let mut child = self.cluster()?.spawn(node, action)?;
            let st = loop {
                if let Some(st) = child.try_wait()? {
                    break st;
                }
                self.idle(Duration::from_millis(200), None)?;
            };
            if st.success() {
                return Ok(());
            }
            if attempt == attempts {
                bail!("scripts/kafka.sh node {node} {action} failed ({st})");
            }
            self.log(format!(
                "scripts/kafka.sh node {node} {action} failed ({st}); asking again"
            ));
        }
        Ok(())
    }

    /// Waits until every partition of the drill's topics and of Kafka's
    /// internal ones has all its replicas in sync again, as an operator waits
    /// between two brokers of a rolling restart: a fault while a restarted
    /// broker still catches up would take a second copy of some partitions
    /// away, below `min.insync.replicas`, which no client can ride out. Gives
    /// up after [`IN_SYNC_LIMIT`] and says so.
    fn await_in_sync(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        let admin = kafka::TopicAdmin::new(&self.conn)?;
        let topics = [
            self.names.input.clone(),
            self.names.output.clone(),
            self.names.dlq.clone(),
            self.names.insights.clone(),
            "__consumer_offsets".to_string(),
            "__transaction_state".to_string(),
        ];
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        loop {
            let behind = block_on(admin.under_replicated(&names))?;
            match behind {
                Ok(0) => {
                    self.log(format!(
                        "every replica in sync after {:.1} s",
                        start.elapsed().as_secs_f64()
                    ));
                    return Ok(());
                }
                Ok(n) if start.elapsed() > IN_SYNC_LIMIT => {
                    self.log(format!(
                        "{n} partitions still under-replicated after {} s; going on",
                        IN_SYNC_LIMIT.as_secs()
                    ));
                    return Ok(());
                }
                Err(e) if start.elapsed() > IN_SYNC_LIMIT => return Err(e.into()),
                _ => self.idle(Duration::from_millis(500), None).map(drop)?,
            }
        }
    }

    /// A broker to fail, by a role picked at random, and that role as the
    /// cluster answers at the time: the leader of the most input and output
    /// partitions, the group's coordinator, or the transaction coordinator of
    /// a running instance.
    fn pick_broker(&mut self) -> anyhow::Result<(i32, String)> {
        let role = self.rng.random_range(0..3u8);
        let running = self.running();
        let txn_id = running
            .choose(&mut self.rng)
            .map(|i| format!("tally-{}", self.instances[*i].id));
        self.patiently("asking the cluster which broker to fail", |d| {
            block_on(async {
                let admin = kafka::TopicAdmin::new(&d.conn)?;
                let coordinator: Option<(&str, String, &str)> = match (role, &txn_id) {
                    (1, _) => Some((
                        "__consumer_offsets",
                        d.names.group.clone(),
                        "group coordinator of",
                    )),
                    (2, Some(id)) => Some((
                        "__transaction_state",
                        id.clone(),
                        "transaction coordinator of",
                    )),
                    _ => None,
                };
                if let Some((topic, key, what)) = coordinator
                    && let Some(node) = admin.coordinator(topic, &key).await?
                {
                    return Ok((node, format!("{what} {key}")));
                }
                let input = admin.leaders(&d.names.input).await?;
                let output = admin.leaders(&d.names.output).await?;
                let all: Vec<i32> = input.values().chain(output.values()).copied().collect();
                let (node, led) =
                    kafka::busiest(all.iter().copied()).context("no partition has a leader")?;
                Ok((
                    node,
                    format!(
                        "leader of {led} of {} input and output partitions",
                        all.len()
                    ),
                ))
            })?
        })
    }

    fn running(&self) -> Vec<usize> {
        (0..self.instances.len())
            .filter(|i| self.instances[*i].child.is_some())
            .collect()
    }

    fn apply(&mut self, fault: Fault) -> anyhow::Result<()> {
        let running = self.running();
        let Some(&i) = running.get(self.rng.random_range(0..running.len().max(1))) else {
            return Ok(());
        };
        let id = self.instances[i].id.clone();
        *self.report.faults.entry(fault).or_default() += 1;
        match fault {
            Fault::Kill9Restart => {
                // Sometimes at once, sometimes after events have piled up.
                let delay = if self.rng.random_bool(0.5) {
                    0
                } else {
                    self.rng.random_range(1_000..5_000)
                };
                self.log(format!("kill -9 {id}, restart after {delay} ms"));
                self.instances[i].kill9();
                self.begin_recovery(fault);
                self.struck("kill9_restart", format!("{id} killed"));
                self.idle(Duration::from_millis(delay), None)?;
                self.restart(i)?;
            }
            Fault::Kill9NewHost => {
                let delay = self.rng.random_range(0..3_000);
                self.log(format!(
                    "kill -9 {id}, delete its state, restart after {delay} ms (new host)"
                ));
                self.instances[i].kill9();
                self.begin_recovery(fault);
                std::fs::remove_dir_all(&self.instances[i].state_dir).ok();
                self.struck("kill9_new_host", format!("{id} killed, state deleted"));
                self.idle(Duration::from_millis(delay), None)?;
                self.restart(i)?;
            }
            Fault::GracefulScaleDown => {
                let down = self.rng.random_range(3_000..8_000);
                self.log(format!(
                    "stop {id} gracefully, start it again after {down} ms"
                ));
                let code = self.instances[i].terminate(self.member.stop_wait());
                self.begin_recovery(fault);
                if code == Some(0) {
                    self.struck("graceful_scale_down", format!("{id} exited 0 on SIGTERM"));
                } else {
                    let msg = format!("{id} exited with {code:?} on SIGTERM");
                    self.log(&msg);
                    self.report.unexpected_exits.push(msg);
                }
                self.idle(Duration::from_millis(down), None)?;
                self.restart(i)?;
            }
            Fault::CrashPoint => {
                // In turn, so every window is struck however short the drill.
                let point = CRASH_POINTS[self.crash_rounds % CRASH_POINTS.len()];
                self.crash_rounds += 1;
                let after = self.rng.random_range(3..30);
                let spec = format!("{point}={after}*off->return");
                self.log(format!("kill -9 {id}, restart it armed to crash at {spec}"));
                self.instances[i].kill9();
                self.restart_with(i, Some(&spec))?;
                let marker = format!("failpoint {point}: aborting the process");
                match self.idle(Duration::from_secs(30), Some(i))? {
                    Some(st)
                        if st.signal() == Some(SIGABRT)
                            && self.instances[i].this_run_log().contains(&marker) =>
                    {
                        self.begin_recovery(fault);
                        self.struck(
                            &format!("crash_point:{point}"),
                            format!("{id} aborted at {point} ({st}) after {after} passes"),
                        );
                    }
                    Some(st) => {
                        let msg = format!(
                            "{id} armed at {point} ended ({st}) without the failpoint's marker"
                        );
                        self.log(&msg);
                        self.report.unexpected_exits.push(msg);
                    }
                    None => {
                        // What it was doing instead: owning nothing, restoring,
                        // or committing without passing the point.
                        let inst = &self.instances[i];
                        self.not_struck(format!(
                            "{id} did not reach {point} {after} times in 30 s (ready: {}, assigned partitions: {:?}, transactions: {:?})",
                            inst.ready(),
                            inst.metric("tally_assigned_partitions"),
                            inst.metric("tally_transactions_total"),
                        ));
                        self.instances[i].kill9();
                    }
                }
                let pause = self.rng.random_range(0..2_000);
                self.idle(Duration::from_millis(pause), None)?;
                self.restart(i)?;
            }
            Fault::Retention => {
                let delay = self.rng.random_range(0..3_000);
                self.instances[i].kill9();
                self.begin_recovery(fault);
                std::fs::remove_dir_all(&self.instances[i].state_dir).ok();
                // Below the committed offset `C`, and below the latest snapshot
                // `S`: a new host restores from `S` and replays `[S, C)`, at most
                // --snapshot-interval of input, which Kafka's time- or size-based
                // retention never reaches (it keeps the active segment). Deleting
                // `[S, C)` too is the refusal case of tests/restore.rs.
                let committed = self.committed_patiently()?;
                let snapshots = self.latest_patiently()?;
                let below: BTreeMap<i32, i64> = committed
                    .iter()
                    .filter_map(|(p, c)| {
                        let s = snapshots.by_partition.get(p)?.next_offset;
                        Some((*p, s.min(*c)))
                    })
                    .collect();
                self.log(format!(
                    "kill -9 {id}, delete its state, delete the input below the latest snapshots {below:?} (committed {committed:?}), restart after {delay} ms"
                ));
                let before = self.watermarks_patiently()?;
                // The records about to go are labelled by offset first.
                self.patiently("reading the input back", |d| d.align_until(&below))?;
                // Idempotent: a failed read is recorded again from where it began.
                let recorded = self.patiently("recording verify's expectations", |d| {
                    Ok(d.before_trim.record_until(&d.conn, &d.cfg, &below)?)
                })?;
                self.log(format!(
                    "recorded verify's expectations of {recorded} input records before the trim"
                ));
                self.patiently("deleting the input below the snapshots", |d| {
                    block_on(kafka::delete_records(&d.conn, &d.names.input, &below))??;
                    Ok(())
                })?;
                let after = self.watermarks_patiently()?;
                let moved: BTreeMap<i32, (i64, i64)> = after
                    .iter()
                    .filter_map(|(p, (low, _))| {
                        let was = before.get(p)?.0;
                        (*low > was).then_some((*p, (was, *low)))
                    })
                    .collect();
                if moved.is_empty() {
                    self.log("retention moved no log start (nothing new below the snapshots)");
                } else {
                    self.report.retention_trims += 1;
                    self.struck(
                        "retention",
                        format!("log starts moved (from, to) {moved:?}"),
                    );
                }
                self.idle(Duration::from_millis(delay), None)?;
                self.restart(i)?;
            }
            Fault::BrokerKill => {
                let (node, role) = self.pick_broker()?;
                let delay = self.rng.random_range(1_000..10_000);
                self.log(format!(
                    "kill -9 broker {node} ({role}), restart it after {delay} ms"
                ));
                self.node(node, "kill")?;
                self.begin_recovery(fault);
                self.struck("broker_kill", format!("broker {node} ({role}) killed"));
                self.idle(Duration::from_millis(delay), None)?;
                self.node(node, "start")?;
                self.await_in_sync()?;
            }
            Fault::BrokerFreeze => {
                let (node, role) = self.pick_broker()?;
                let paused = BROKER_SESSION_MS + self.rng.random_range(2_000..6_000);
                self.log(format!(
                    "SIGSTOP broker {node} ({role}) for {paused} ms (past broker.session.timeout.ms), then SIGCONT"
                ));
                self.node(node, "pause")?;
                self.begin_recovery(fault);
                let stopped = self.cluster()?.stopped(node);
                self.idle(Duration::from_millis(paused), None)?;
                let still = self.cluster()?.stopped(node);
                self.node(node, "resume")?;
                self.await_in_sync()?;
                if stopped && still {
                    self.struck(
                        "broker_freeze",
                        format!("broker {node} ({role}) stopped for {paused} ms"),
                    );
                } else {
                    self.not_struck(format!(
                        "broker {node} was not seen stopped through its freeze (at its start: {stopped}, at its end: {still})"
                    ));
                }
            }
            Fault::RollingRestart => {
                let nodes = self.cluster()?.nodes.clone();
                self.log(format!(
                    "rolling restart of brokers {nodes:?}: each stopped cleanly, then started"
                ));
                let mut restarted = Vec::new();
                for &n in &nodes {
                    let before = self.cluster()?.pid(n);
                    self.node(n, "stop")?;
                    self.begin_recovery(fault);
                    self.node(n, "start")?;
                    self.await_in_sync()?;
                    let after = self.cluster()?.pid(n);
                    if before.is_some() && after.is_some() && before != after {
                        restarted.push(n);
                    }
                }
                if restarted == nodes {
                    self.struck(
                        "rolling_restart",
                        format!("brokers {nodes:?} each stopped and started again"),
                    );
                } else {
                    self.not_struck(format!(
                        "rolling restart: only brokers {restarted:?} of {nodes:?} were seen with a new process"
                    ));
                }
            }
            Fault::ControllerKill => {
                let Some(before) = self.cluster()?.controller() else {
                    self.not_struck("controller kill: no active controller known".into());
                    return Ok(());
                };
                let delay = self.rng.random_range(1_000..10_000);
                self.log(format!(
                    "kill -9 the active controller, node {before}; restart it after {delay} ms"
                ));
                self.node(before, "kill")?;
                self.begin_recovery(fault);
                let killed = Instant::now();
                let mut after = None;
                while after.is_none() && killed.elapsed() < Duration::from_secs(30) {
                    self.idle(Duration::from_millis(250), None)?;
                    after = self.cluster()?.controller().filter(|c| *c != before);
                }
                match after {
                    Some(c) => self.struck(
                        "controller_kill",
                        format!(
                            "controller {before} killed; node {c} elected after {:.1} s",
                            killed.elapsed().as_secs_f64()
                        ),
                    ),
                    None => self.not_struck(format!(
                        "controller {before} killed; no other node elected within 30 s"
                    )),
                }
                let left = Duration::from_millis(delay).saturating_sub(killed.elapsed());
                self.idle(left, None)?;
                self.node(before, "start")?;
                self.await_in_sync()?;
            }
            Fault::Zombie => {
                self.await_ready_group("a zombie fault")?;
                let mut rebalances = None;
                for _ in 0..10 {
                    rebalances = self.instances[i].metric("tally_rebalances_total");
                    if rebalances.is_some() {
                        break;
                    }
                    self.idle(Duration::from_millis(500), None)?;
                }
                let paused = self.member.session_ms + self.rng.random_range(1_000..4_000);
                self.log(format!(
                    "SIGSTOP {id} for {paused} ms (past the session timeout), then SIGCONT"
                ));
                self.instances[i].signal("-STOP");
                self.begin_recovery(fault);
                self.idle(Duration::from_millis(paused), None)?;
                self.instances[i].signal("-CONT");
                // It recovers: loses its partitions and is assigned again, which
                // its rebalance count shows. Or it exits as fenced, with the
                // message, and is restarted. Anything else is unexpected.
                // The rejoin may take a while on a loaded host, or after
                // fencing probes that were lost (each waits up to
                // transaction.timeout.ms + 5 s): watched for up to 190 s.
                let until = Instant::now() + Duration::from_secs(190);
                let mut exited = None;
                let mut now = rebalances;
                while rebalances.is_some() && now <= rebalances && Instant::now() < until {
                    exited = self.idle(Duration::from_millis(500), Some(i))?;
                    if exited.is_some() {
                        break;
                    }
                    now = self.instances[i].metric("tally_rebalances_total");
                }
                match exited {
                    None => match (rebalances, now) {
                        (Some(a), Some(b)) if b > a => {
                            self.report.zombie_outcomes.push(format!("{id}: recovered"));
                            self.struck(
                                "zombie",
                                format!("{id} recovered; tally_rebalances_total {a} -> {b}"),
                            );
                        }
                        (a, b) => self.not_struck(format!(
                            "zombie {id} runs on without a new assignment (tally_rebalances_total {a:?} -> {b:?}): not shown to have lost its partitions"
                        )),
                    },
                    Some(st)
                        if st.code() == Some(FENCED_EXIT)
                            && self.instances[i].this_run_log().contains("fenced") =>
                    {
                        self.report
                            .zombie_outcomes
                            .push(format!("{id}: exited fenced, restarted"));
                        self.struck("zombie", format!("{id} exited fenced ({st})"));
                        self.restart(i)?;
                    }
                    Some(st) => {
                        let msg = format!("zombie {id} ended ({st}), neither recovered nor fenced");
                        self.log(&msg);
                        self.report.unexpected_exits.push(msg);
                        self.restart(i)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A future of the Kafka layer run to its end on a runtime of its own: the
/// drill is synchronous.
fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

/// Every snapshot of the drill's input in the insights topic, in the order
/// written per partition (each read from the insights partition of the same
/// number, as restores read them), and every committed insights record that is
/// not such a snapshot: the drill's insights topic holds nothing else.
fn all_snapshots(conn: &Connection, names: &Names) -> anyhow::Result<(Vec<Snapshot>, Vec<String>)> {
    let reader = TopicReader::new(conn, &names.insights)?;
    let ranges: Vec<_> = reader
        .partitions()?
        .into_iter()
        .map(|p| (p, kafka::StartAt::Earliest, None))
        .collect();
    let (mut all, mut odd) = (Vec::new(), Vec::new());
    reader.read(&ranges, |rec| {
        let r = &rec.record;
        let parsed = r
            .value
            .as_deref()
            .and_then(|v| serde_json::from_slice::<Snapshot>(v).ok());
        match parsed {
            Some(s)
                if s.topic == names.input
                    && s.partition == r.partition
                    && r.key.as_deref()
                        == Some(&crate::insights::snapshot_key(&s.topic, s.partition)[..])
                    && s.fingerprint.is_some() =>
            {
                all.push(s)
            }
            Some(s) => odd.push(format!(
                "insights partition {} offset {}: a snapshot of {}/{} under key {:?} (fingerprint {})",
                r.partition,
                r.offset,
                s.topic,
                s.partition,
                r.key.as_deref().map(String::from_utf8_lossy),
                if s.fingerprint.is_some() { "present" } else { "missing" },
            )),
            None => odd.push(format!(
                "insights partition {} offset {}: not a snapshot",
                r.partition, r.offset
            )),
        }
    })?;
    Ok((all, odd))
}

/// The latest snapshot of every input partition in the insights topic.
fn latest_snapshots(conn: &Connection, names: &Names) -> anyhow::Result<Latest> {
    let mut latest = Latest::default();
    for s in all_snapshots(conn, names)?.0 {
        latest.by_partition.insert(s.partition, s);
    }
    Ok(latest)
}

/// Runs the drill; the result is the exit status (0: passed).
pub fn run(args: DrillArgs, seed: u64) -> anyhow::Result<i32> {
    eprintln!("drill: seed {seed} (repeat with --seed {seed})");
    let cluster = match &args.kafka_dir {
        Some(dir) => Some(Cluster::open(args.kafka_script.clone(), dir.clone())?),
        None => None,
    };
    // `all` has the broker faults where the drill controls a cluster that can
    // lose a broker; named, they need a cluster the drill controls.
    let mut kinds = args.faults.0.clone();
    if parse_faults("all").is_ok_and(|all| all == args.faults)
        && cluster.as_ref().is_none_or(|c| c.nodes.len() < 3)
    {
        kinds.retain(|k| !k.is_broker());
    }
    if cluster.is_none() && kinds.iter().any(|k| k.is_broker()) {
        bail!(
            "broker faults need the cluster's data directory: pass --kafka-dir (scripts/drill.sh --brokers 3 does)"
        );
    }
    let tally = match &args.tally_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("tally"),
    };
    if !tally.exists() {
        bail!(
            "tally binary not found at {} (build it, or pass --tally-bin)",
            tally.display()
        );
    }
    let tag = format!(
        "drill-{seed}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(".run").join(&tag));
    std::fs::create_dir_all(&work)?;
    let names = Names {
        input: format!("{tag}-user-login"),
        output: format!("{tag}-processed"),
        dlq: format!("{tag}-dlq"),
        insights: format!("{tag}-insights"),
        group: tag.clone(),
    };
    let conn = Connection {
        bootstrap: args.bootstrap_servers.clone(),
        properties: Vec::new(),
    };
    let outputs = OutputTopics {
        processed: names.output.clone(),
        dead_letter: names.dlq.clone(),
        insights: names.insights.clone(),
    };
    // As `tally create-topics` makes them: 3 replicas and 2 in sync on a
    // cluster of 3 brokers or more, so one broker's death takes nothing offline.
    let brokers = block_on(kafka::TopicAdmin::new(&conn)?.broker_count())??;
    let mut specs = kafka::pipeline_topic_specs(
        &names.input,
        &outputs,
        args.partitions,
        kafka::replication_for(brokers, None),
    );
    // The input allows more than the DLQ (2 MiB): records over the DLQ's limit
    // and over the broker's default message size reach tally.
    for (k, v) in &mut specs[0].config {
        if k == "max.message.bytes" {
            *v = INPUT_MAX_MESSAGE_BYTES.to_string();
        }
    }
    let dlq_limit: usize = specs[2]
        .config
        .iter()
        .find(|(k, _)| k == "max.message.bytes")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(OutputLimits::default().dlq_max_bytes);
    block_on(kafka::create_topics(&conn, &specs))??;
    eprintln!(
        "drill: topics {}*, group {}, logs in {}",
        tag,
        names.group,
        work.display()
    );
    // What verify expects of the input, as the instances are configured; the
    // output topics' limits as created.
    let [output_max, dlq_max] =
        block_on(kafka::TopicAdmin::new(&conn)?.max_message_bytes(&[&names.output, &names.dlq]))??
            [..]
    else {
        bail!("describing two topics gave another number of results");
    };
    let defaults = OutputLimits::default();
    let cfg = ProcessConfig {
        input_topic: names.input.clone(),
        limits: Limits::default(),
        filters: Filters {
            min_app_version: Some(
                expect::MIN_APP_VERSION
                    .parse()
                    .map_err(anyhow::Error::msg)?,
            ),
            allowed_device_types: None,
        },
        output_limits: OutputLimits {
            processed_max_bytes: output_max.unwrap_or(defaults.processed_max_bytes),
            dlq_max_bytes: dlq_max.unwrap_or(defaults.dlq_max_bytes),
        },
    };

    let instances = (0..args.instances)
        .map(|i| Instance {
            id: format!("{tag}-{i}"),
            state_dir: work.join(format!("state-{i}")),
            log: work.join(format!("instance-{i}.log")),
            child: None,
            starts: 0,
            peak_rss_kib: 0,
        })
        .collect();
    let mut drill = Drill {
        conn: conn.clone(),
        rng: ChaCha8Rng::seed_from_u64(seed),
        tally,
        instances,
        report: Report {
            seed,
            planted: args.plant,
            ..Report::default()
        },
        admin: GroupAdmin::new(&conn, &names.group)?,
        cfg,
        before_trim: crate::verify::Expectations::default(),
        input: TopicReader::new(&conn, &names.input)?,
        watch: StallWatch::new(if kinds.iter().any(|k| k.is_broker()) {
            stall::CLUSTER_STALL_BOUND
        } else {
            stall::STALL_BOUND
        }),
        sampler: Sampler::start(&conn, &names.group, &names.input, args.partitions)?,
        last_high: BTreeMap::new(),
        last_sample_at: Instant::now(),
        member: if kinds.iter().any(|k| k.is_broker()) {
            Member::CLUSTER
        } else {
            Member::ALONE
        },
        crash_rounds: 0,
        cluster,
        expect: Arc::new(Mutex::new(Expectations::new(args.partitions as usize))),
        recoveries: Recoveries::default(),
        names,
        args,
    };
    for i in 0..drill.instances.len() {
        drill.start(i, None)?;
    }

    // The generator: produces at the rate and labels what it made. The drill
    // picks each record's partition (round robin) and numbers it there
    // (`SEQ_HEADER`), so reading the input back labels each offset, and every
    // partition's aggregates can be recounted.
    let stop = Arc::new(AtomicBool::new(false));
    let expect = drill.expect.clone();
    let generator = {
        let (stop, expect, conn) = (stop.clone(), expect.clone(), conn.clone());
        let partitions = drill.args.partitions as u64;
        let (topic, rate, limit, ratio) = (
            drill.names.input.clone(),
            drill.args.rate,
            drill.args.events,
            drill.args.invalid_ratio,
        );
        let oversize = crate::generate::Oversize {
            runs: oversize_runs(&topic, dlq_limit),
            every: drill.args.oversize_every,
        };
        std::thread::spawn(move || -> anyhow::Result<()> {
            let producer = PlainProducer::new(&conn)?;
            let mut g = Generator::new(seed, chrono::Utc::now().timestamp(), ratio, true)
                .with_events_per_minute((rate * 60.0) as u64)
                .with_oversize(oversize);
            let started = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) && limit.is_none_or(|l| n < l) {
                let due = Duration::from_secs_f64(n as f64 / rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait.min(Duration::from_millis(50)));
                    continue;
                }
                let r = g.next_record();
                let p = (n % partitions) as i32;
                let seq = expect.lock().unwrap().next_seq(p);
                let header = [(expect::SEQ_HEADER.to_string(), seq.to_string().into_bytes())];
                producer.send_to(
                    &topic,
                    Some(p),
                    Some(&r.key),
                    r.value.as_deref(),
                    &header,
                    None,
                )?;
                n += 1;
                expect
                    .lock()
                    .unwrap()
                    .push(p, Label::of(&r, Some(expect::MIN_APP_VERSION)));
            }
            producer.flush()?;
            Ok(())
        })
    };

    // Faults: every kind once per round, in a seeded order.
    if !drill.args.zombie {
        kinds.retain(|k| *k != Fault::Zombie);
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(drill.args.duration);
    let gap = drill.args.fault_interval.max(1) * 1000;
    drill.idle(Duration::from_secs(3), None)?;
    // Whole rounds, so even a short drill applies every kind at least once.
    while Instant::now() < until {
        if kinds.is_empty() {
            drill.idle(until.saturating_duration_since(Instant::now()), None)?;
        }
        kinds.shuffle(&mut drill.rng);
        for k in kinds.clone() {
            drill.apply(k)?;
            let pause = drill.rng.random_range(gap..=2 * gap);
            drill.idle(Duration::from_millis(pause), None)?;
        }
    }

    stop.store(true, Ordering::SeqCst);
    generator.join().expect("generator thread")?;
    let produced = expect.lock().unwrap().total();
    // What the input holds: records written twice count as two.
    let written: i64 = drill
        .watermarks_patiently()?
        .values()
        .map(|(_, h)| *h)
        .sum();
    drill.log(format!(
        "faults done after {:.0} s; {produced} events produced, {written} input records written; draining",
        started.elapsed().as_secs_f64()
    ));
    for i in 0..drill.instances.len() {
        if drill.instances[i].child.is_none() {
            drill.restart(i)?;
        }
    }
    let drain_start = Instant::now();
    loop {
        let committed: i64 = drill.committed_patiently()?.values().sum();
        if committed >= written {
            break;
        }
        if drain_start.elapsed() > Duration::from_secs(drill.args.drain_timeout) {
            drill.log(format!(
                "did not drain within {} s: {committed} of {written} committed",
                drill.args.drain_timeout
            ));
            break;
        }
        drill.idle(Duration::from_millis(500), None)?;
    }
    drill.report.drain_secs = drain_start.elapsed().as_secs_f64();
    // A partition still restoring when the final SIGTERM comes writes no snapshot
    // (its state is not known yet), and a killed owner's last snapshot may be
    // one --snapshot-interval behind: let every partition become active and its
    // snapshot catch up with `C` first, as a rolling restart waiting on
    // readiness would. What is still behind after that is reported below.
    drill.await_ready_group("the final stop")?;
    let catch_up = Instant::now();
    loop {
        let committed = drill.committed_patiently()?;
        let latest = drill.latest_patiently()?;
        let behind: Vec<i32> = committed
            .iter()
            .filter(|(p, c)| latest.by_partition.get(p).map(|s| s.next_offset) != Some(**c))
            .map(|(p, _)| *p)
            .collect();
        if behind.is_empty() {
            drill.log(format!(
                "every snapshot at the committed offset after {:.1} s",
                catch_up.elapsed().as_secs_f64()
            ));
            break;
        }
        if catch_up.elapsed() > Duration::from_secs(30) {
            drill.log(format!(
                "snapshots of {behind:?} still behind the committed offsets after 30 s"
            ));
            break;
        }
        drill.idle(Duration::from_millis(500), None)?;
    }
    // What an operator's Prometheus would have scraped last, kept beside the logs.
    for inst in &drill.instances {
        let started = Instant::now();
        if let Some((200, body)) = inst.get("/metrics") {
            let took = started.elapsed();
            let path = work.join(format!("metrics-{}.txt", inst.id));
            std::fs::write(&path, body)?;
            drill.log(format!(
                "{}: /metrics after the drain in {:.1} ms, saved to {}",
                inst.id,
                took.as_secs_f64() * 1000.0,
                path.display()
            ));
        }
    }
    for i in 0..drill.instances.len() {
        let id = drill.instances[i].id.clone();
        let code = drill.instances[i].terminate(drill.member.stop_wait());
        if code != Some(0) {
            drill
                .report
                .unexpected_exits
                .push(format!("{id} exited with {code:?} on the final SIGTERM"));
        }
    }

    // The labels name offsets only if every record the generator sent landed
    // once, in order.
    let marks = drill.watermarks_patiently()?;
    let high: BTreeMap<i32, i64> = marks.iter().map(|(p, (_, h))| (*p, *h)).collect();
    drill.patiently("reading the input back", |d| d.align_until(&high))?;
    let expect = std::mem::take(&mut *expect.lock().unwrap());
    drill.report.harness_errors = expect.check_offsets(&high);
    drill.report.input_rewritten = expect.rewritten;
    drill.report.longest_without_commit_secs = drill.watch.longest.as_secs_f64();
    drill.report.stall_bound_secs = drill.watch.bound.as_secs();
    drill.report.recovery = drill
        .recoveries
        .times
        .iter()
        .map(|(k, t)| (k.clone(), report::Recovery::of(t)))
        .collect();
    for (kind, since) in drill.recoveries.unrecovered(Instant::now()) {
        drill.report.stalls.push(format!(
            "{kind}: not every partition committed again in the {:.0} s since it struck",
            since.as_secs_f64()
        ));
    }
    drill.report_unstruck();

    // Guarantee 1: every input record exactly once in output or DLQ.
    let summary = drill.patiently("verifying the outputs", |d| {
        Ok(crate::verify::verify_with(
            &d.conn,
            &d.names.group,
            &d.cfg,
            &d.names.output,
            &d.names.dlq,
            crate::verify::Options {
                before_trim: Some(&d.before_trim),
            },
            &mut |_| {},
        )?)
    })?;
    let committed = drill.committed_patiently()?;
    let r = &mut drill.report;
    r.events = expect.total();
    r.malformed = (0..drill.args.partitions)
        .map(|p| expect.outcomes(p, 0, i64::MAX).dead_lettered)
        .sum();
    r.duplicates = summary.duplicates;
    r.losses = summary.missing + summary.unconsumed;
    r.mismatched = summary.mismatched;
    r.stray = summary.stray
        + summary.wrong_destination
        + summary.wrong_reason
        + summary.impossible_source;
    r.verify = summary.render();
    r.runtime_dead_letters = summary.runtime_dead_letters;
    // Each outcome's count against the labels. verify judged every record,
    // those retention deleted by the expectations recorded before the trim.
    let mut want = expect::Outcomes::default();
    for p in 0..drill.args.partitions {
        let c = committed.get(&p).copied().unwrap_or(0);
        let o = expect.outcomes(p, 0, c);
        want.processed += o.processed;
        want.dead_lettered += o.dead_lettered;
        want.filtered += o.filtered;
    }
    for (what, got, want) in [
        ("processed", summary.processed, want.processed),
        ("dead-lettered", summary.dead_lettered, want.dead_lettered),
        ("filtered", summary.filtered, want.filtered),
        // Every deleted record's expectation was recorded before its trim.
        (
            "outputs of input deleted unrecorded",
            summary.below_log_start,
            0,
        ),
        (
            "records outstanding (unconsumed, outputs past the offsets or unread)",
            summary.incomplete(),
            0,
        ),
    ] {
        if got != want {
            r.aggregate_mismatches
                .push(format!("{what}: verify saw {got}, the labels say {want}"));
        }
    }

    // Guarantee 2: every snapshot in the insights topic and every checkpoint
    // equals the recount of its partition's records below its offset, on every
    // field; the latest snapshots cover the committed offsets.
    let (snapshots, odd) = drill.patiently("reading the snapshots", |d| {
        all_snapshots(&d.conn, &d.names)
    })?;
    let r = &mut drill.report;
    r.snapshots_checked = snapshots.len() as u32;
    r.snapshot_mismatches.extend(odd);
    let mut latest = Latest::default();
    let mut written = Vec::new();
    for (k, s) in snapshots.into_iter().enumerate() {
        latest.by_partition.insert(s.partition, s.clone());
        written.push(Written {
            what: format!(
                "snapshot #{k} of partition {} at {}",
                s.partition, s.next_offset
            ),
            partition: s.partition,
            next_offset: s.next_offset,
            aggregate: s.aggregate,
        });
    }
    r.snapshot_mismatches
        .extend(expect.check_aggregates(written));
    for p in 0..drill.args.partitions {
        let c = committed.get(&p).copied();
        match latest.by_partition.get(&p) {
            None => r
                .snapshot_mismatches
                .push(format!("partition {p}: no snapshot (committed {c:?})")),
            Some(s) if Some(s.next_offset) != c => r.snapshot_mismatches.push(format!(
                "partition {p}: latest snapshot covers {} but the group committed {c:?}",
                s.next_offset
            )),
            Some(_) => r.partitions_checked += 1,
        }
    }
    // The insights as a user reads them: every partition's latest, merged.
    let all = expect::differences(
        &latest.merged(Horizon::default()),
        &expect
            .by_partition
            .iter()
            .enumerate()
            .filter_map(|(p, _)| {
                let c = committed.get(&(p as i32)).copied().unwrap_or(0);
                expect.aggregate_at(p as i32, c)
            })
            .fold(crate::aggregate::Aggregate::default(), |mut a, b| {
                a.merge(&b, Horizon::default());
                a
            }),
    );
    r.aggregate_mismatches
        .extend(all.into_iter().map(|d| format!("merged insights: {d}")));
    let mut checkpoints = Vec::new();
    for inst in &drill.instances {
        if !inst.state_dir.exists() {
            continue; // deleted by the last fault, never started since
        }
        let store = match tally_state::StateStore::open_read_only(&inst.state_dir) {
            Ok(s) => s,
            Err(e) => {
                r.snapshot_mismatches
                    .push(format!("{}: state store unreadable: {e}", inst.id));
                continue;
            }
        };
        let ns = tally_state::Namespace::new(&drill.names.group, &drill.names.input);
        for cp in store.list::<crate::aggregate::Aggregate>(&ns)? {
            r.checkpoints_checked += 1;
            let c = committed.get(&cp.partition).copied().unwrap_or(0);
            if cp.next_offset > c {
                r.snapshot_mismatches.push(format!(
                    "{}: checkpoint of partition {} at {} is ahead of the committed {c}",
                    inst.id, cp.partition, cp.next_offset
                ));
                continue;
            }
            checkpoints.push(Written {
                what: format!(
                    "{}: checkpoint of partition {} at {}",
                    inst.id, cp.partition, cp.next_offset
                ),
                partition: cp.partition,
                next_offset: cp.next_offset,
                aggregate: cp.state,
            });
        }
    }
    r.snapshot_mismatches
        .extend(expect.check_aggregates(checkpoints));
    if r.snapshots_checked == 0 || r.checkpoints_checked == 0 {
        r.snapshot_mismatches.push(format!(
            "nothing to check: {} snapshots, {} checkpoints",
            r.snapshots_checked, r.checkpoints_checked
        ));
    }

    for inst in &drill.instances {
        r.peak_rss_mib
            .insert(inst.id.clone(), inst.peak_rss_kib as f64 / 1024.0);
    }
    let passed = r.passed();
    std::fs::write(
        work.join("summary.json"),
        serde_json::to_string_pretty(&*r)?,
    )?;
    r.print();
    println!("drill: {}", if passed { "PASSED" } else { "FAILED" });
    Ok(if passed { 0 } else { 1 })
}
