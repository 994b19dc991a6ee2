//! `tally run`: the consumer-group member, exactly once.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tally::aggregate::Horizon;
use tally::kafka::{MemberConfig, TopicAdmin};
use tally::observe;
use tally::pipeline::{Pipeline, PipelineConfig, RestoreOptions, SnapshotBudget};
use tally_state::StateStore;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::{
    KafkaArgs, ProcessArgs, TopicArgs, blocking, duration, parse_positive, unreachable_cluster,
};
use crate::shutdown_flag;

/// How often the consumer lag gauges are refreshed (a scrape interval is
/// usually 15 s or more).
const LAG_REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Consumer group id.
    #[arg(long, env = "TALLY_GROUP_ID", default_value = "tally")]
    pub group_id: String,
    /// This instance's stable id: static group membership (group.instance.id) and
    /// transactional.id <transactional-id-prefix>-<instance-id>. Must be unique in the group.
    #[arg(long, env = "TALLY_INSTANCE_ID")]
    pub instance_id: String,
    /// Prefix of the transactional.id.
    #[arg(long, env = "TALLY_TRANSACTIONAL_ID_PREFIX", default_value = "tally")]
    pub transactional_id_prefix: String,
    /// Close a transaction after this long, e.g. 100ms. A bare number is
    /// milliseconds (deprecated).
    #[arg(long, env = "TALLY_COMMIT_INTERVAL", default_value = "100ms", value_parser = duration::millis)]
    pub commit_interval: Duration,
    /// Write a partition's aggregate snapshot to the insights topic at most once
    /// this often (1ms: with every commit, given --snapshot-input-ratio 0). A
    /// partition revoked, or the process shutting down, always gets its
    /// up-to-date snapshot. A new host restoring from a snapshot replays the
    /// input after it, up to --snapshot-max-interval of it, so the input's
    /// retention must keep at least that. A bare number is milliseconds
    /// (deprecated).
    #[arg(long, env = "TALLY_SNAPSHOT_INTERVAL", default_value = "1s", value_parser = duration::millis)]
    pub snapshot_interval: Duration,
    /// A partition's next snapshot also waits until the input it processed since
    /// its last one is at least this many times that snapshot's size (or the
    /// partition has had no record for --snapshot-quiet, or --snapshot-max-interval
    /// passed): snapshots then weigh at most 1/N of the input, however many
    /// partitions share the traffic, and a new host replays at most N snapshots'
    /// worth of input after the one it restores. 0: --snapshot-interval alone.
    #[arg(long, env = "TALLY_SNAPSHOT_INPUT_RATIO", default_value_t = 10)]
    pub snapshot_input_ratio: u64,
    /// A partition with no new record for this long gets its snapshot (when one
    /// is behind), so the insights topic catches up with a stream that stopped.
    /// A bare number is milliseconds (deprecated).
    #[arg(long, env = "TALLY_SNAPSHOT_QUIET", default_value = "5s", value_parser = duration::millis)]
    pub snapshot_quiet: Duration,
    /// A snapshot behind its partition's input is written at least this often,
    /// whatever --snapshot-input-ratio says: the bound on how much input a new
    /// host replays, and on how old the insights may be, in time. A bare number
    /// is milliseconds (deprecated).
    #[arg(long, env = "TALLY_SNAPSHOT_MAX_INTERVAL", default_value = "5m", value_parser = duration::millis)]
    pub snapshot_max_interval: Duration,
    /// ... or after this many input records, whichever comes first.
    #[arg(long, env = "TALLY_MAX_BATCH_RECORDS", default_value_t = 5000, value_parser = parse_positive)]
    pub max_batch_records: usize,
    /// Directory of the RocksDB state store (one per instance).
    #[arg(long, env = "TALLY_STATE_DIR", default_value = "./tally-state")]
    pub state_dir: PathBuf,
    /// Delete the local state before starting; it is rebuilt from Kafka.
    #[arg(long, env = "TALLY_RESET_STATE")]
    pub reset_state: bool,
    /// Per-minute traffic older than this many minutes (behind the latest event) is rolled up.
    #[arg(long, env = "TALLY_MINUTE_HORIZON", default_value_t = 1440, value_parser = clap::value_parser!(u32).range(1..))]
    pub minute_horizon: u32,
    /// Values kept per breakdown (device type, app version, locale): the first K in
    /// shortlex order (shorter, then bytewise); the rest are counted as "other" (an empty key).
    #[arg(long, env = "TALLY_TOP_K", default_value_t = 1000, value_parser = parse_positive)]
    pub top_k: usize,
    /// Consumer session timeout (at least 6s). The default outlasts the death
    /// of the group coordinator's broker (the brokers'
    /// `broker.session.timeout.ms`, 9 s by default, an election and the new
    /// coordinator's load), so that costs no rebalance; an instance that dies
    /// and is not restarted holds its partitions this long. A bare number is
    /// milliseconds (deprecated).
    #[arg(long, env = "TALLY_SESSION_TIMEOUT", default_value = "25s", value_parser = duration::millis)]
    pub session_timeout: Duration,
    /// How long a shutdown (SIGINT/SIGTERM) may take: commit or abort the open
    /// transaction, checkpoint, close (or leave) the group. Past it tally exits
    /// with status 1 (the broker is gone?); nothing is lost, the checkpoint is
    /// never ahead of Kafka. A bare number is seconds (deprecated).
    #[arg(long, env = "TALLY_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = duration::secs)]
    pub shutdown_timeout: Duration,
    /// Address of the operations endpoint (/healthz, /readyz, /metrics, /insights);
    /// port 0 binds a free port (the bound address is logged).
    #[arg(long, env = "TALLY_METRICS_ADDR", default_value = "127.0.0.1:9898")]
    pub metrics_addr: std::net::SocketAddr,
    /// Continue when the records needed to restore a partition's aggregates exactly
    /// were deleted by retention, or retention deleted records the running
    /// consumer had not read yet: the aggregates become a lower bound and the
    /// records that could not be counted are reported as `uncounted`.
    #[arg(long, env = "TALLY_ALLOW_INEXACT_RESTORE")]
    pub allow_inexact_restore: bool,
    /// When a checkpoint or snapshot was written under another configuration
    /// (filters, limits, horizon, schema), rebuild the aggregates from offset 0
    /// under the new one instead of refusing to start.
    #[arg(long, env = "TALLY_REBUILD_ON_CONFIG_CHANGE")]
    pub rebuild_on_config_change: bool,
    /// When the group has no committed offset for a partition but a checkpoint or
    /// snapshot of it exists (the group's offsets expired or were deleted), resume
    /// from the newest of them and commit that offset instead of refusing to start.
    /// Records past it are processed again if an instance crashed after its last
    /// snapshot; after clean stops, the newest snapshot is where the group was.
    #[arg(long, env = "TALLY_RESUME_FROM_STATE")]
    pub resume_from_state: bool,
    /// Dead-letter a record as `poison` once it is at the head of this many
    /// consecutive aborts caused by records the broker refused.
    #[arg(long, env = "TALLY_POISON_ABORTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub poison_aborts: u32,
    /// A polled batch stops growing at this many bytes of keys and values.
    #[arg(long, env = "TALLY_MAX_BATCH_BYTES", default_value_t = 8 * 1024 * 1024, value_parser = parse_positive)]
    pub max_batch_bytes: usize,
    /// On SIGINT/SIGTERM, leave the consumer group (LeaveGroup), so the other
    /// members take this instance's partitions over at once: for scale-in, or
    /// before `tally replay`. Without it a clean shutdown keeps this static
    /// member's place for the session timeout, so a restart (a rolling update)
    /// gets its partitions back without a rebalance; an instance that does not
    /// come back has its partitions moved when the session times out.
    #[arg(long, env = "TALLY_LEAVE_GROUP_ON_SHUTDOWN")]
    pub leave_group_on_shutdown: bool,
    /// Time between progress log lines. A bare number is seconds (deprecated,
    /// as is the old name --progress-secs).
    #[arg(long, alias = "progress-secs", env = "TALLY_PROGRESS_INTERVAL", default_value = "10s", value_parser = duration::secs)]
    pub progress_interval: Duration,
}

/// Until a broker answers: not ready, one warn line every few seconds naming the
/// bootstrap servers and the time waited (librdkafka's own per-attempt errors
/// stay quiet), with backoff; gives up only after `--connect-timeout`.
/// `false`: a shutdown signal came first.
async fn wait_for_cluster(k: &KafkaArgs, shutdown: &AtomicBool) -> anyhow::Result<bool> {
    let status = &observe::telemetry().status;
    let conn = k.connection();
    let started = Instant::now();
    let mut last_warn: Option<Instant> = None;
    let mut backoff = Duration::from_millis(500);
    status.set_connecting(Some(format!(
        "connecting to the Kafka cluster at {}",
        k.bootstrap_servers
    )));
    loop {
        let c = conn.clone();
        match blocking(move || c.probe(PROBE_TIMEOUT)).await {
            Ok(()) => {
                status.set_connecting(None);
                if last_warn.is_some() {
                    tracing::info!(bootstrap = %k.bootstrap_servers, waited_secs = started.elapsed().as_secs(), "kafka cluster reached");
                }
                return Ok(true);
            }
            Err(e @ tally::kafka::Error::Config(_)) => return Err(e.into()),
            Err(e) => {
                let waited = started.elapsed();
                status.beat();
                status.set_connecting(Some(format!(
                    "cannot reach the Kafka cluster at {} (waited {} s)",
                    k.bootstrap_servers,
                    waited.as_secs()
                )));
                if k.connect_timeout.is_some_and(|t| waited >= t) {
                    return Err(unreachable_cluster(&k.bootstrap_servers, waited, e));
                }
                if last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        bootstrap = %k.bootstrap_servers,
                        waited_secs = waited.as_secs(),
                        error = %e,
                        "cannot reach the kafka cluster; retrying (check --bootstrap-servers and that the brokers are up; a local Apache Kafka: scripts/kafka.sh start)"
                    );
                    last_warn = Some(Instant::now());
                }
            }
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            if shutdown.load(Ordering::SeqCst) {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One attempt to reach the cluster; between attempts the wait doubles up to
/// [`MAX_BACKOFF`]; a warn line at most every [`WARN_EVERY`].
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const WARN_EVERY: Duration = Duration::from_secs(5);

impl RunArgs {
    pub fn horizon(&self) -> Horizon {
        Horizon {
            minutes: i64::from(self.minute_horizon),
            top_k: self.top_k,
        }
    }
}

pub async fn run(a: RunArgs) -> anyhow::Result<()> {
    let connection = a.kafka.connection();
    if a.session_timeout < Duration::from_secs(6) {
        bail!("--session-timeout must be at least 6s (brokers reject shorter sessions by default)");
    }
    connection.validate(a.commit_interval, a.session_timeout)?;
    if a.instance_id.trim().is_empty() {
        bail!("--instance-id must not be empty");
    }
    if a.reset_state {
        let dir = a.state_dir.clone();
        blocking(move || StateStore::destroy(dir)).await?;
        tracing::info!(dir = %a.state_dir.display(), "local state deleted (--reset-state); it is rebuilt from Kafka");
    }
    tracing::info!(group = %a.group_id, instance = %a.instance_id, input = %a.topics.input_topic, state_dir = %a.state_dir.display(), "starting");
    // Installed before start-up, so a SIGTERM while joining still ends cleanly.
    let shutdown = shutdown_flag();
    // Up before the broker is reached: liveness answers and readiness says why not.
    observe::http::serve(a.metrics_addr)
        .await
        .with_context(|| {
            format!(
                "binding the metrics endpoint on {} (--metrics-addr; port 0 picks a free one)",
                a.metrics_addr
            )
        })?;
    observe::lag::spawn(
        connection.clone(),
        a.topics.input_topic.clone(),
        LAG_REFRESH,
    );
    if !wait_for_cluster(&a.kafka, &shutdown).await? {
        return Ok(());
    }
    // Everything below asks the cluster, so it comes after the wait: an
    // unreachable cluster is waited for, not reported as a missing topic or an
    // unreadable limit.
    let admin = TopicAdmin::new(&connection)?;
    admin
        .require_topics(&[&a.topics.output_topic, &a.topics.dlq_topic], "Write")
        .await?;
    let process = a.process.resolve(Some(&admin), &a.topics).await;
    // State is restored from the insights topic: refuse to run on one that
    // cannot serve.
    let insights_partitions = admin
        .check_insights_topic(&a.topics.input_topic, &a.topics.insights_topic)
        .await?;
    // Runs on, but says so: a production cluster's topics should survive one
    // broker's death. Not readable (e.g. not authorised) is no warning.
    let written = [
        a.topics.output_topic.as_str(),
        a.topics.dlq_topic.as_str(),
        a.topics.insights_topic.as_str(),
    ];
    match admin.fragile_topics(&written).await {
        Ok(warnings) => {
            for w in warnings {
                tracing::warn!("{w}");
            }
        }
        Err(e) => tracing::debug!(error = %e, "the topics' replication could not be read"),
    }
    // Not kept for the pipeline's lifetime: an idle client still holds its
    // connections and refreshes metadata. Dropped beside the start-up, not
    // before it: the drop joins a thread that polls every 100 ms.
    tokio::task::spawn_blocking(move || drop(admin));
    let cfg = PipelineConfig {
        connection,
        process,
        member: MemberConfig {
            group: a.group_id.clone(),
            instance_id: a.instance_id.clone(),
            topic: a.topics.input_topic.clone(),
            session_timeout: a.session_timeout,
            max_poll_interval: Duration::from_secs(300),
        },
        transactional_id: format!("{}-{}", a.transactional_id_prefix, a.instance_id),
        transactional_id_prefix: a.transactional_id_prefix.clone(),
        topics: a.topics.outputs(),
        insights_partitions,
        commit_interval: a.commit_interval,
        snapshot_interval: a.snapshot_interval,
        snapshot_budget: SnapshotBudget {
            input_ratio: a.snapshot_input_ratio,
            quiet: a.snapshot_quiet,
            max_interval: a.snapshot_max_interval,
        },
        max_batch_records: a.max_batch_records,
        horizon: a.horizon(),
        state_dir: a.state_dir.clone(),
        progress_interval: a.progress_interval,
        shutdown_timeout: a.shutdown_timeout,
        restore: RestoreOptions {
            allow_inexact: a.allow_inexact_restore,
            rebuild_on_config_change: a.rebuild_on_config_change,
            resume_from_state: a.resume_from_state,
        },
        poison_aborts: a.poison_aborts,
        max_batch_bytes: a.max_batch_bytes,
        leave_group_on_shutdown: a.leave_group_on_shutdown,
    };
    if let Some(pipeline) = Pipeline::start(cfg, shutdown).await? {
        pipeline.run().await?;
    }
    Ok(())
}
