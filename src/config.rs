//! The command line, typed once. Every flag also reads an environment variable;
//! librdkafka properties pass through unchanged with `-X key=value`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::aggregate::Horizon;
use crate::event::{AppVersion, Filters, Limits, ProcessConfig};
use crate::kafka::{Connection, OutputTopics};

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about = "Exactly-once user-login stream processor with durable per-partition state"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run as a consumer-group member: user-login -> processed-user-login, DLQ and insights, exactly once.
    Run(RunArgs),
    /// Produce realistic user-login events (with a share of malformed ones).
    Generate(GenerateArgs),
    /// Check that every input record appears exactly once in the output or DLQ (or was filtered).
    Verify(VerifyArgs),
    /// Print the group-wide insights merged from the insights topic.
    Insights(InsightsArgs),
    /// List the checkpoints in a local state directory.
    State(StateArgs),
    /// Reset a group's committed offsets of the input topic so it reprocesses.
    Replay(ReplayArgs),
    /// Create the input, output, DLQ and insights topics (existing ones are left alone).
    CreateTopics(CreateTopicsArgs),
    /// Show a group's committed offsets and lag on the input topic.
    Lag(LagArgs),
    /// Benchmark baseline: copy input to output at least once (no transactions).
    #[command(hide = true)]
    Copy(CopyArgs),
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

fn parse_millis(s: &str) -> Result<Duration, String> {
    let ms: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of milliseconds"))?;
    if ms == 0 {
        return Err("must be at least 1 ms".into());
    }
    Ok(Duration::from_millis(ms))
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive whole number")),
    }
}

#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (host:port,...).
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:19092")]
    pub bootstrap_servers: String,
    /// librdkafka property passed through unchanged (repeatable), e.g. -X security.protocol=SSL (env: `;`-separated).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property, env = "TALLY_KAFKA_PROPERTIES", value_delimiter = ';')]
    pub properties: Vec<(String, String)>,
}

impl KafkaArgs {
    pub fn connection(&self) -> Connection {
        Connection {
            bootstrap: self.bootstrap_servers.clone(),
            properties: self.properties.clone(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct TopicArgs {
    /// Input topic.
    #[arg(long, env = "TALLY_INPUT_TOPIC", default_value = "user-login")]
    pub input_topic: String,
    /// Output topic for processed events.
    #[arg(
        long,
        env = "TALLY_OUTPUT_TOPIC",
        default_value = "processed-user-login"
    )]
    pub output_topic: String,
    /// Dead-letter topic for invalid events.
    #[arg(long, env = "TALLY_DLQ_TOPIC", default_value = "user-login-dlq")]
    pub dlq_topic: String,
    /// Compacted topic for per-partition aggregate snapshots.
    #[arg(
        long,
        env = "TALLY_INSIGHTS_TOPIC",
        default_value = "user-login-insights"
    )]
    pub insights_topic: String,
}

impl TopicArgs {
    pub fn outputs(&self) -> OutputTopics {
        OutputTopics {
            processed: self.output_topic.clone(),
            dead_letter: self.dlq_topic.clone(),
            insights: self.insights_topic.clone(),
        }
    }
}

/// Settings that decide each record's outcome; `run` and `verify` must agree on them.
#[derive(Debug, Clone, Args)]
pub struct ProcessArgs {
    /// Filter out events from app versions below this (compared as versions: 2.10 > 2.9).
    #[arg(long, env = "TALLY_MIN_APP_VERSION")]
    pub min_app_version: Option<AppVersion>,
    /// Only pass these device types (comma-separated, case-insensitive); default: all.
    #[arg(long, env = "TALLY_ALLOWED_DEVICE_TYPES", value_delimiter = ',')]
    pub allowed_device_types: Vec<String>,
    /// Values larger than this many bytes go to the DLQ as too_large.
    #[arg(long, env = "TALLY_MAX_VALUE_BYTES", default_value_t = 256 * 1024, value_parser = parse_positive)]
    pub max_value_bytes: usize,
    /// Event times more than this many seconds after the Kafka record timestamp are rejected.
    #[arg(long, env = "TALLY_MAX_FUTURE_SKEW_SECS", default_value_t = 86_400)]
    pub max_future_skew_secs: u32,
}

impl ProcessArgs {
    pub fn config(&self, input_topic: &str) -> ProcessConfig {
        let allowed: BTreeSet<String> = self
            .allowed_device_types
            .iter()
            .map(|d| d.trim().to_lowercase())
            .filter(|d| !d.is_empty())
            .collect();
        ProcessConfig {
            input_topic: input_topic.to_string(),
            limits: Limits {
                max_value_bytes: self.max_value_bytes,
                max_future_skew_secs: i64::from(self.max_future_skew_secs),
            },
            filters: Filters {
                min_app_version: self.min_app_version.clone(),
                allowed_device_types: (!allowed.is_empty()).then_some(allowed),
            },
        }
    }
}

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
    /// Consumer session timeout in milliseconds (at least 6000).
    #[arg(long, env = "TALLY_SESSION_TIMEOUT_MS", default_value = "10000", value_parser = parse_millis)]
    pub session_timeout: Duration,
    /// Seconds between progress log lines.
    #[arg(long, env = "TALLY_PROGRESS_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub progress_secs: u64,
}

impl RunArgs {
    pub fn horizon(&self) -> Horizon {
        Horizon {
            minutes: i64::from(self.minute_horizon),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic to write to.
    #[arg(long, env = "TALLY_INPUT_TOPIC", default_value = "user-login")]
    pub topic: String,
    /// Number of events; without it, runs until interrupted.
    #[arg(long, env = "TALLY_GENERATE_COUNT")]
    pub count: Option<u64>,
    /// Events per second (0: as fast as possible).
    #[arg(long, env = "TALLY_GENERATE_RATE", default_value_t = 0.0)]
    pub rate: f64,
    /// Seed for reproducible output.
    #[arg(long, env = "TALLY_GENERATE_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Share of malformed events, 0.0 to 1.0.
    #[arg(long, env = "TALLY_INVALID_RATIO", default_value_t = 0.05)]
    pub invalid_ratio: f64,
    /// Event times start here (epoch seconds); default: now.
    #[arg(long, env = "TALLY_GENERATE_START_TIME")]
    pub start_time: Option<i64>,
    /// Include 1 MiB payloads among the malformed kinds.
    #[arg(long, env = "TALLY_GENERATE_HUGE", default_value_t = true, action = clap::ArgAction::Set)]
    pub huge: bool,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub process: ProcessArgs,
    /// The group whose committed offsets bound the check.
    #[arg(long, env = "TALLY_GROUP_ID", default_value = "tally")]
    pub group_id: String,
    /// Also fail when the group has not consumed the input to its end.
    #[arg(long, env = "TALLY_VERIFY_COMPLETE")]
    pub complete: bool,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct InsightsArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Insights topic.
    #[arg(
        long,
        env = "TALLY_INSIGHTS_TOPIC",
        default_value = "user-login-insights"
    )]
    pub insights_topic: String,
    /// Input topic whose partitions' snapshots are merged.
    #[arg(long, env = "TALLY_INPUT_TOPIC", default_value = "user-login")]
    pub input_topic: String,
    /// Rows per table.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// State directory to inspect.
    #[arg(long, env = "TALLY_STATE_DIR", default_value = "./tally-state")]
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Group to reset.
    #[arg(long, env = "TALLY_GROUP_ID")]
    pub group: String,
    /// Input topic.
    #[arg(long, env = "TALLY_INPUT_TOPIC", default_value = "user-login")]
    pub input_topic: String,
    /// `earliest`, or an RFC 3339 time (first offset at or after it).
    #[arg(long)]
    pub to: String,
}

#[derive(Debug, Clone, Args)]
pub struct CreateTopicsArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Partitions of each topic.
    #[arg(long, env = "TALLY_PARTITIONS", default_value_t = 6)]
    pub partitions: i32,
    /// Replication factor.
    #[arg(long, env = "TALLY_REPLICATION", default_value_t = 1)]
    pub replication: i32,
}

#[derive(Debug, Clone, Args)]
pub struct LagArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group.
    #[arg(long, env = "TALLY_GROUP_ID", default_value = "tally")]
    pub group_id: String,
    /// Input topic.
    #[arg(long, env = "TALLY_INPUT_TOPIC", default_value = "user-login")]
    pub input_topic: String,
    /// Wait (up to this many seconds) until the committed offsets reach at least
    /// this many records in total, then print the lag; exit 1 on timeout.
    #[arg(long, requires = "timeout")]
    pub wait_for: Option<i64>,
    /// Seconds to wait with --wait-for.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

#[derive(Debug, Clone, Args)]
pub struct CopyArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[arg(long, default_value = "tally-copy")]
    pub group_id: String,
    /// Stop after this many records.
    #[arg(long)]
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = Cli::try_parse_from([
            "tally",
            "run",
            "--instance-id",
            "a",
            "--commit-interval",
            "soon",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--commit-interval"), "{err}");
        let err = Cli::try_parse_from([
            "tally",
            "run",
            "--instance-id",
            "a",
            "--min-app-version",
            "x.y",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--min-app-version"), "{err}");
        let err = Cli::try_parse_from(["tally", "run", "--instance-id", "a", "-X", "novalue"])
            .unwrap_err();
        assert!(err.to_string().contains("-X"), "{err}");
    }
}
