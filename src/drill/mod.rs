//! The crash/restart recovery drill, as a library so tests can drive it: several
//! `tally run` instances in one group while events (with malformed ones) flow,
//! faults at random times from a printed seed, then a drain and the checks:
//! every input record exactly once (verify) and the insights against the drill's
//! own recount of what it generated. `tally-drill` (front end:
//! `scripts/drill.sh`) is its command line.
//!
//! Errors are `anyhow`: the drill is a harness whose every error ends the run
//! with its message, like a binary's edge.

mod instance;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::aggregate::Horizon;
use crate::event::{Filters, Limits, OutputLimits, ProcessConfig};
use crate::generate::{Generator, Recount};
use crate::insights::Latest;
use crate::kafka::{self, Connection, GroupAdmin, OutputTopics, PlainProducer, TopicReader};
use instance::Instance;
pub use report::Report;

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
}

const SESSION_TIMEOUT_MS: u64 = 6000;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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
}

/// How long a group may take to be ready again after a fault.
const READY_LIMIT: Duration = Duration::from_secs(60);

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
}

impl Drill {
    fn log(&self, msg: impl AsRef<str>) {
        eprintln!("drill: {}", msg.as_ref());
    }

    fn start(&mut self, i: usize, failpoints: Option<&str>) -> anyhow::Result<()> {
        let (tally, bootstrap) = (self.tally.clone(), self.args.bootstrap_servers.clone());
        self.instances[i].start(&tally, &bootstrap, &self.names, failpoints)
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
    ) -> anyhow::Result<Option<Option<i32>>> {
        let end = Instant::now() + d;
        let mut expected = None;
        while Instant::now() < end {
            for i in 0..self.instances.len() {
                self.instances[i].sample_rss();
                if let Some(code) = self.instances[i].exited() {
                    if Some(i) == expect_exit {
                        expected = Some(code);
                        continue;
                    }
                    let msg = format!(
                        "{} exited on its own with {:?}; see {}",
                        self.instances[i].id,
                        code,
                        self.instances[i].log.display()
                    );
                    self.log(&msg);
                    self.report.unexpected_exits.push(msg);
                    self.restart(i)?;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(expected)
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
                self.idle(Duration::from_millis(delay), None)?;
                self.restart(i)?;
            }
            Fault::Kill9NewHost => {
                let delay = self.rng.random_range(0..3_000);
                self.log(format!(
                    "kill -9 {id}, delete its state, restart after {delay} ms (new host)"
                ));
                self.instances[i].kill9();
                std::fs::remove_dir_all(&self.instances[i].state_dir).ok();
                self.idle(Duration::from_millis(delay), None)?;
                self.restart(i)?;
            }
            Fault::GracefulScaleDown => {
                let down = self.rng.random_range(3_000..8_000);
                self.log(format!(
                    "stop {id} gracefully, start it again after {down} ms"
                ));
                let code = self.instances[i].terminate(Duration::from_secs(60));
                if code != Some(0) {
                    let msg = format!("{id} exited with {code:?} on SIGTERM");
                    self.log(&msg);
                    self.report.unexpected_exits.push(msg);
                }
                self.idle(Duration::from_millis(down), None)?;
                self.restart(i)?;
            }
            Fault::CrashPoint => {
                let point = CRASH_POINTS[self.rng.random_range(0..CRASH_POINTS.len())];
                let after = self.rng.random_range(3..30);
                let spec = format!("{point}={after}*off->return");
                self.log(format!("kill -9 {id}, restart it armed to crash at {spec}"));
                self.instances[i].kill9();
                self.restart_with(i, Some(&spec))?;
                match self.idle(Duration::from_secs(30), Some(i))? {
                    Some(None) => self.log(format!("{id} crashed at {point}")),
                    Some(code) => {
                        let msg = format!(
                            "{id} armed at {point} exited with {code:?} instead of crashing"
                        );
                        self.report.unexpected_exits.push(msg);
                    }
                    None => {
                        self.log(format!(
                            "{id} did not reach {point} {after} times in 30 s; killing it"
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
                std::fs::remove_dir_all(&self.instances[i].state_dir).ok();
                // Below the committed offset `C`, and below the latest snapshot
                // `S`: a new host restores from `S` and replays `[S, C)`, at most
                // --snapshot-interval of input, which Kafka's time- or size-based
                // retention never reaches (it keeps the active segment). Deleting
                // `[S, C)` too is the refusal case of tests/restore.rs.
                let committed =
                    GroupAdmin::new(&self.conn, &self.names.group)?.committed(&self.names.input)?;
                let snapshots = latest_snapshots(&self.conn, &self.names)?;
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
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(kafka::delete_records(&self.conn, &self.names.input, &below))?;
                self.report.retention_trims += 1;
                self.idle(Duration::from_millis(delay), None)?;
                self.restart(i)?;
            }
            Fault::Zombie => {
                self.await_ready_group("a zombie fault")?;
                let paused = SESSION_TIMEOUT_MS + self.rng.random_range(1_000..4_000);
                self.log(format!(
                    "SIGSTOP {id} for {paused} ms (past the session timeout), then SIGCONT"
                ));
                self.instances[i].signal("-STOP");
                self.idle(Duration::from_millis(paused), None)?;
                self.instances[i].signal("-CONT");
                // It recovers, or exits with a clear message and is restarted.
                match self.idle(Duration::from_secs(10), Some(i))? {
                    None => self.report.zombie_outcomes.push(format!("{id}: recovered")),
                    Some(code) => {
                        self.report
                            .zombie_outcomes
                            .push(format!("{id}: exited with {code:?}, restarted"));
                        self.restart(i)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The latest snapshot of every input partition in the insights topic.
fn latest_snapshots(conn: &Connection, names: &Names) -> anyhow::Result<Latest> {
    let reader = TopicReader::new(conn, &names.insights)?;
    let ranges: Vec<_> = reader
        .partitions()?
        .into_iter()
        .map(|p| (p, kafka::StartAt::Earliest, None))
        .collect();
    let mut latest = Latest::default();
    reader.read(&ranges, |rec| {
        if let Some(v) = &rec.record.value {
            latest.offer(&names.input, rec.record.partition, v);
        }
    })?;
    Ok(latest)
}

/// Runs the drill; the result is the exit status (0: passed).
pub fn run(args: DrillArgs, seed: u64) -> anyhow::Result<i32> {
    eprintln!("drill: seed {seed} (repeat with --seed {seed})");
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
    let mut specs = kafka::pipeline_topic_specs(&names.input, &outputs, args.partitions, 1);
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
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(kafka::create_topics(&conn, &specs))?;
    eprintln!(
        "drill: topics {}*, group {}, logs in {}",
        tag,
        names.group,
        work.display()
    );

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
        names,
        instances,
        report: Report {
            seed,
            ..Report::default()
        },
        args,
    };
    for i in 0..drill.instances.len() {
        drill.start(i, None)?;
    }

    // The generator: produces at the rate and recounts what it made.
    let stop = Arc::new(AtomicBool::new(false));
    // Per input partition: the generator picks the partition (round robin), so
    // each partition's snapshot can be checked against its own recount.
    let recount = Arc::new(Mutex::new(vec![
        Recount::default();
        drill.args.partitions as usize
    ]));
    let generator = {
        let (stop, recount, conn) = (stop.clone(), recount.clone(), conn.clone());
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
                let p = (n % recount.lock().unwrap().len() as u64) as i32;
                producer.send_to(&topic, Some(p), Some(&r.key), r.value.as_deref(), &[], None)?;
                n += 1;
                recount.lock().unwrap()[p as usize].add(&r);
            }
            producer.flush()?;
            Ok(())
        })
    };

    // Faults: every kind once per round, in a seeded order.
    let mut kinds = vec![
        Fault::Kill9Restart,
        Fault::Kill9NewHost,
        Fault::GracefulScaleDown,
        Fault::CrashPoint,
        Fault::Retention,
    ];
    if drill.args.zombie {
        kinds.push(Fault::Zombie);
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(drill.args.duration);
    let gap = drill.args.fault_interval.max(1) * 1000;
    drill.idle(Duration::from_secs(3), None)?;
    // Whole rounds, so even a short drill applies every kind at least once.
    while Instant::now() < until {
        kinds.shuffle(&mut drill.rng);
        for k in kinds.clone() {
            drill.apply(k)?;
            let pause = drill.rng.random_range(gap..=2 * gap);
            drill.idle(Duration::from_millis(pause), None)?;
        }
    }

    stop.store(true, Ordering::SeqCst);
    generator.join().expect("generator thread")?;
    let produced: u64 = recount.lock().unwrap().iter().map(|r| r.total).sum();
    drill.log(format!(
        "faults done after {:.0} s; {produced} events produced; draining",
        started.elapsed().as_secs_f64()
    ));
    for i in 0..drill.instances.len() {
        if drill.instances[i].child.is_none() {
            drill.restart(i)?;
        }
    }
    let drain_start = Instant::now();
    let admin = GroupAdmin::new(&conn, &drill.names.group)?;
    let input_topic = drill.names.input.clone();
    loop {
        let committed: i64 = admin.committed(&input_topic)?.values().sum();
        if committed as u64 >= produced {
            break;
        }
        if drain_start.elapsed() > Duration::from_secs(drill.args.drain_timeout) {
            drill.log(format!(
                "did not drain within {} s: {committed} of {produced} committed",
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
        let committed = admin.committed(&input_topic)?;
        let latest = latest_snapshots(&conn, &drill.names)?;
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
        let code = drill.instances[i].terminate(Duration::from_secs(60));
        if code != Some(0) {
            drill
                .report
                .unexpected_exits
                .push(format!("{id} exited with {code:?} on the final SIGTERM"));
        }
    }

    // Guarantee 1: every input record exactly once in output or DLQ.
    let [output_max, dlq_max] = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(
            kafka::TopicAdmin::new(&conn)?
                .max_message_bytes(&[&drill.names.output, &drill.names.dlq]),
        )?[..]
    else {
        bail!("describing two topics gave another number of results");
    };
    let defaults = OutputLimits::default();
    let cfg = ProcessConfig {
        input_topic: drill.names.input.clone(),
        limits: Limits::default(),
        filters: Filters::default(),
        output_limits: OutputLimits {
            processed_max_bytes: output_max.unwrap_or(defaults.processed_max_bytes),
            dlq_max_bytes: dlq_max.unwrap_or(defaults.dlq_max_bytes),
        },
    };
    let summary = crate::verify::verify(
        &conn,
        &drill.names.group,
        &cfg,
        &drill.names.output,
        &drill.names.dlq,
    )?;
    let by_partition = recount.lock().unwrap().clone();
    let mut recount = Recount::default();
    for part in &by_partition {
        recount.merge(part);
    }
    let r = &mut drill.report;
    r.events = recount.total;
    r.malformed = recount.malformed;
    r.duplicates = summary.duplicates;
    r.losses = summary.missing + summary.unconsumed;
    r.mismatched = summary.mismatched;
    r.stray = summary.stray;
    r.verify = summary.render();
    // Outputs of input records deleted by retention cannot be compared.
    if summary.processed + summary.dead_lettered + summary.below_log_start != recount.total {
        r.aggregate_mismatches.push(format!(
            "verify saw {} processed + {} dead-lettered + {} of deleted input, the drill produced {}",
            summary.processed, summary.dead_lettered, summary.below_log_start, recount.total
        ));
    }

    // Guarantee 2: insights equal the drill's own recount.
    let latest = latest_snapshots(&conn, &drill.names)?;
    let agg = latest.merged(Horizon::default());
    let mut compare = |what: &str, got: String, want: String| {
        if got != want {
            r.aggregate_mismatches
                .push(format!("{what}: insights {got}, recount {want}"));
        }
    };
    compare(
        "processed",
        agg.processed.to_string(),
        (recount.total - recount.malformed).to_string(),
    );
    compare(
        "dead-lettered",
        agg.dead_lettered.to_string(),
        recount.malformed.to_string(),
    );
    compare(
        "by device type",
        format!("{:?}", agg.by_device_type),
        format!("{:?}", recount.by_device_type),
    );
    compare(
        "by app version",
        format!("{:?}", agg.by_app_version),
        format!("{:?}", recount.by_app_version),
    );
    compare(
        "by locale",
        format!("{:?}", agg.by_locale),
        format!("{:?}", recount.by_locale),
    );

    // Per partition: the latest snapshot covers exactly the committed offset and
    // counts exactly that partition's records; local checkpoints are never ahead
    // of Kafka and, where exact (`K == C`), equal the snapshot.
    let committed = admin.committed(&input_topic)?;
    for (p, want) in by_partition.iter().enumerate() {
        let p = p as i32;
        let c = committed.get(&p).copied();
        let Some(snap) = latest.by_partition.get(&p) else {
            r.snapshot_mismatches
                .push(format!("partition {p}: no snapshot (committed {c:?})"));
            continue;
        };
        if Some(snap.next_offset) != c {
            r.snapshot_mismatches.push(format!(
                "partition {p}: latest snapshot covers {} but the group committed {c:?}",
                snap.next_offset
            ));
        }
        let a = &snap.aggregate;
        let got = (a.processed, a.dead_lettered, &a.by_device_type, a.uncounted);
        let expect = (want.valid(), want.malformed, &want.by_device_type, 0);
        if got != expect {
            r.snapshot_mismatches.push(format!(
                "partition {p}: snapshot (processed, dlq, devices, uncounted) {got:?}, recount {expect:?}"
            ));
        }
        r.partitions_checked += 1;
    }
    for inst in &drill.instances {
        let Ok(store) = tally_state::StateStore::open_read_only(&inst.state_dir) else {
            continue; // never started since its state was deleted
        };
        let ns = tally_state::Namespace::new(&drill.names.group, &drill.names.input);
        for cp in store.list::<crate::aggregate::Aggregate>(&ns)? {
            let c = committed.get(&cp.partition).copied().unwrap_or(0);
            let snap = latest.by_partition.get(&cp.partition);
            if cp.next_offset > c {
                r.snapshot_mismatches.push(format!(
                    "{}: checkpoint of partition {} at {} is ahead of the committed {c}",
                    inst.id, cp.partition, cp.next_offset
                ));
            } else if cp.next_offset == c && snap.is_some_and(|s| s.aggregate != cp.state) {
                r.snapshot_mismatches.push(format!(
                    "{}: checkpoint of partition {} at {c} differs from the snapshot",
                    inst.id, cp.partition
                ));
            }
            r.checkpoints_checked += 1;
        }
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
