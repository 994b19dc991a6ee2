//! `tally run`: the consumer-group member, exactly once.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use tally::aggregate::Horizon;
use tally::kafka::MemberConfig;
use tally::pipeline::{Pipeline, PipelineConfig};
use tally_state::StateStore;

use super::{KafkaArgs, ProcessArgs, TopicArgs, blocking, parse_millis, parse_positive};
use crate::shutdown_flag;

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
    /// Close a transaction after this many milliseconds.
    #[arg(long, env = "TALLY_COMMIT_INTERVAL_MS", default_value = "100", value_parser = parse_millis)]
    pub commit_interval: Duration,
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
    /// Consumer session timeout in milliseconds (at least 6000).
    #[arg(long, env = "TALLY_SESSION_TIMEOUT_MS", default_value = "10000", value_parser = parse_millis)]
    pub session_timeout: Duration,
    /// Dead-letter a record as `poison` once it is at the head of this many
    /// consecutive aborts caused by records the broker refused.
    #[arg(long, env = "TALLY_POISON_ABORTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub poison_aborts: u32,
    /// A polled batch stops growing at this many bytes of keys and values.
    #[arg(long, env = "TALLY_MAX_BATCH_BYTES", default_value_t = 8 * 1024 * 1024, value_parser = parse_positive)]
    pub max_batch_bytes: usize,
    /// Seconds between progress log lines.
    #[arg(long, env = "TALLY_PROGRESS_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub progress_secs: u64,
}

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
    connection.validate()?;
    if a.session_timeout < Duration::from_secs(6) {
        bail!(
            "--session-timeout must be at least 6000 ms (brokers reject shorter sessions by default)"
        );
    }
    if a.instance_id.trim().is_empty() {
        bail!("--instance-id must not be empty");
    }
    if a.reset_state {
        let dir = a.state_dir.clone();
        blocking(move || StateStore::destroy(dir)).await?;
        tracing::info!(dir = %a.state_dir.display(), "local state deleted (--reset-state); it is rebuilt from Kafka");
    }
    let process = a.process.resolve(&connection, &a.topics).await;
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
        topics: a.topics.outputs(),
        commit_interval: a.commit_interval,
        max_batch_records: a.max_batch_records,
        horizon: a.horizon(),
        state_dir: a.state_dir.clone(),
        progress_interval: Duration::from_secs(a.progress_secs),
        poison_aborts: a.poison_aborts,
        max_batch_bytes: a.max_batch_bytes,
    };
    tracing::info!(group = %a.group_id, instance = %a.instance_id, input = %a.topics.input_topic, state_dir = %a.state_dir.display(), "starting");
    // Installed before start-up, so a SIGTERM while joining still ends cleanly.
    let shutdown = shutdown_flag();
    let pipeline = Pipeline::start(cfg).await?;
    pipeline.run(shutdown).await?;
    Ok(())
}
