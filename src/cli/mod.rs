//! The command line, typed once: the clap types shared by several commands here,
//! one file per subcommand (its flags and its body). Every flag also reads an
//! environment variable; librdkafka properties pass through unchanged with
//! `-X key=value`. Errors end here as `anyhow` with a message saying what failed
//! and what to do.

pub mod copy;
pub mod create_topics;
pub mod duration;
pub mod generate;
pub mod insights;
pub mod lag;
pub mod latency;
pub mod progress;
pub mod replay;
pub mod run;
pub mod state;
pub mod verify;

use std::collections::BTreeSet;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tally::event::{
    AppVersion, Filters, KAFKA_DEFAULT_MAX_MESSAGE_BYTES, Limits, OutputLimits, ProcessConfig,
};
use tally::kafka::{Connection, OutputTopics, TopicAdmin};

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about = "Exactly-once user-login stream processor with durable per-partition state"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr: text, or json (one object a line, for log shippers).
    #[arg(long, global = true, env = "TALLY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// One value, parsed once at start and matched once: `run`'s many flags make its
// variant large, and boxing it would only add an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run as a consumer-group member: user-login -> processed-user-login, DLQ and insights, exactly once.
    Run(run::RunArgs),
    /// Produce realistic user-login events (with a share of malformed ones).
    Generate(generate::GenerateArgs),
    /// Check that every input record appears exactly once in the output or DLQ (or was filtered).
    Verify(verify::VerifyArgs),
    /// Print the group-wide insights merged from the insights topic.
    Insights(insights::InsightsArgs),
    /// List the checkpoints in a local state directory.
    State(state::StateArgs),
    /// Reset a group's committed offsets of the input topic so it reprocesses.
    Replay(replay::ReplayArgs),
    /// Create the input, output, DLQ and insights topics (existing ones are left alone).
    CreateTopics(create_topics::CreateTopicsArgs),
    /// Show a group's committed offsets and lag on the input topic.
    Lag(lag::LagArgs),
    /// Benchmark baseline: copy input to output at least once (no transactions).
    #[command(hide = true)]
    Copy(copy::CopyArgs),
    /// Benchmark probe: end-to-end latency of the records arriving on a topic, from
    /// their timestamp to a read_committed consumer (p50/p99 as JSON).
    #[command(hide = true)]
    Latency(latency::LatencyArgs),
    /// Benchmark cleanup: delete the named topics.
    #[command(hide = true)]
    DeleteTopics(create_topics::DeleteTopicsArgs),
}

/// Parses the command line and the environment (exiting on an error, as clap
/// does); with the deprecated spellings of durations used, for `main` to log
/// once logging is set up (see [`duration`]).
pub fn parse() -> (Cli, Vec<String>) {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let parsed = duration::parse_args(Cli::command(), &args, |k| std::env::var(k).ok())
        .and_then(|(m, notes)| Ok((Cli::from_arg_matches(&m)?, notes)));
    parsed.unwrap_or_else(|e| e.exit())
}

/// Runs the chosen subcommand; the result is the process's exit status.
pub async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let kafka = match &cli.command {
        Command::Generate(a) => Some(&a.kafka),
        Command::Verify(a) => Some(&a.kafka),
        Command::Insights(a) => Some(&a.kafka),
        Command::Replay(a) => Some(&a.kafka),
        Command::CreateTopics(a) => Some(&a.kafka),
        Command::Lag(a) => Some(&a.kafka),
        Command::Copy(a) => Some(&a.kafka),
        Command::Latency(a) => Some(&a.kafka),
        Command::DeleteTopics(a) => Some(&a.kafka),
        // `run` waits for the cluster itself; `state` reads only the local store.
        Command::Run(_) | Command::State(_) => None,
    };
    if let Some(k) = kafka {
        k.reach().await?;
    }
    match cli.command {
        Command::Run(a) => run::run(a).await.map(|()| 0),
        Command::Generate(a) => generate::run(a).await.map(|()| 0),
        Command::Verify(a) => verify::run(a).await,
        Command::Insights(a) => insights::run(a).await.map(|()| 0),
        Command::State(a) => state::run(a).await.map(|()| 0),
        Command::Replay(a) => replay::run(a).await.map(|()| 0),
        Command::CreateTopics(a) => create_topics::run(a).await.map(|()| 0),
        Command::Lag(a) => lag::run(a).await,
        Command::Copy(a) => copy::run(a).await.map(|()| 0),
        Command::Latency(a) => latency::run(a).await,
        Command::DeleteTopics(a) => create_topics::delete(a).await.map(|()| 0),
    }
}

/// Runs `f` on a blocking thread (Kafka clients and RocksDB block).
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

/// Parses `-X key=value`. An error never shows the argument, which may hold a
/// secret (`-X sasl.password:...`): clap's own message would quote it.
#[derive(Clone)]
pub(crate) struct PropertyParser;

impl clap::builder::TypedValueParser for PropertyParser {
    type Value = (String, String);

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        value
            .to_str()
            .and_then(|s| s.split_once('='))
            .filter(|(k, _)| !k.trim().is_empty())
            .map(|(k, v)| (k.trim().to_string(), v.to_string()))
            .ok_or_else(|| {
                clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    "a -X property (or an entry of TALLY_KAFKA_PROPERTIES) is not key=value; \
                     it is not shown, as it may hold a secret\n",
                )
            })
    }
}

pub(crate) fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive whole number")),
    }
}

/// A librdkafka properties file (`--kafka-config`), read when the command
/// line is parsed. Its `Debug` shows the path and the keys, never a secret.
#[derive(Clone)]
pub struct PropertiesFile {
    pub path: std::path::PathBuf,
    pub properties: Vec<(String, String)>,
}

impl std::fmt::Debug for PropertiesFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PropertiesFile")
            .field("path", &self.path)
            .field("properties", &tally::kafka::Redacted(&self.properties))
            .finish()
    }
}

fn parse_properties_file(path: &str) -> Result<PropertiesFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let properties = tally::kafka::parse_properties(&text).map_err(|e| format!("{path}: {e}"))?;
    // The servers are the flag's: its errors name them.
    if let Some((k, _)) = properties
        .iter()
        .find(|(k, _)| k == "bootstrap.servers" || k == "metadata.broker.list")
    {
        return Err(format!(
            "{path}: {k} is set with --bootstrap-servers (KAFKA_BOOTSTRAP), not in the file"
        ));
    }
    Ok(PropertiesFile {
        path: path.into(),
        properties,
    })
}

#[derive(Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (host:port,...).
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "localhost:9092")]
    pub bootstrap_servers: String,
    /// librdkafka properties from a file: key=value lines, # comments (as kcat's
    /// -F). Keeps secrets such as sasl.password out of the command line and the
    /// environment; -X properties override the file's.
    #[arg(long, env = "TALLY_KAFKA_CONFIG", value_name = "FILE", value_parser = parse_properties_file)]
    pub kafka_config: Option<PropertiesFile>,
    /// librdkafka property passed through unchanged (repeatable), e.g. -X security.protocol=SSL (env: `;`-separated).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = PropertyParser, env = "TALLY_KAFKA_PROPERTIES", value_delimiter = ';', hide_env_values = true)]
    pub properties: Vec<(String, String)>,
    /// How long to wait for the cluster to answer before giving up, e.g. 30s
    /// (tools: 15s; `run`: keeps trying, warning every few seconds, unless this
    /// is set). A bare number is seconds (deprecated).
    #[arg(long, env = "TALLY_CONNECT_TIMEOUT", value_parser = duration::secs)]
    pub connect_timeout: Option<Duration>,
}

/// Secret values hidden (see [`tally::kafka::Redacted`]).
impl std::fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaArgs")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("kafka_config", &self.kafka_config)
            .field("properties", &tally::kafka::Redacted(&self.properties))
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// How long the CLI tools wait for the cluster by default.
const TOOL_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

impl KafkaArgs {
    /// The file's properties first, then `-X`'s: the later setting wins.
    pub fn connection(&self) -> Connection {
        let file = self.kafka_config.iter().flat_map(|f| &f.properties);
        Connection {
            bootstrap: self.bootstrap_servers.clone(),
            properties: file.chain(&self.properties).cloned().collect(),
        }
    }

    /// For the CLI tools: fails within `--connect-timeout` (default 15 s) when
    /// no broker answers, saying what to check, instead of hanging.
    pub async fn reach(&self) -> anyhow::Result<()> {
        let conn = self.connection();
        let timeout = self.connect_timeout.unwrap_or(TOOL_CONNECT_TIMEOUT);
        blocking(move || conn.probe(timeout))
            .await
            .map_err(|e| match e {
                e @ tally::kafka::Error::Config(_) => e.into(),
                e => unreachable_cluster(&self.bootstrap_servers, timeout, e),
            })
    }
}

/// The message for a cluster that did not answer: where tally looked and what to check.
pub(crate) fn unreachable_cluster(
    bootstrap: &str,
    waited: Duration,
    e: impl std::fmt::Display,
) -> anyhow::Error {
    anyhow::anyhow!(
        "no Kafka broker at {bootstrap} answered within {} s ({e}); check --bootstrap-servers / KAFKA_BOOTSTRAP \
         and that the brokers are up and reachable from here (a local Apache Kafka for trying tally: scripts/kafka.sh start)",
        waited.as_secs()
    )
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
    /// Event times more than this after the Kafka record timestamp are rejected,
    /// e.g. 1h (whole seconds). A bare number is seconds (deprecated, as is the
    /// old name --max-future-skew-secs).
    #[arg(long, alias = "max-future-skew-secs", env = "TALLY_MAX_FUTURE_SKEW", default_value = "1day", value_parser = duration::whole_secs)]
    pub max_future_skew: Duration,
    /// The DLQ topic's max.message.bytes when it cannot be read from the broker
    /// (read at start; larger DLQ entries are written truncated, with size and SHA-256).
    #[arg(long, env = "TALLY_DLQ_MAX_MESSAGE_BYTES", default_value_t = KAFKA_DEFAULT_MAX_MESSAGE_BYTES, value_parser = parse_positive)]
    pub dlq_max_message_bytes: usize,
    /// The output topic's max.message.bytes when it cannot be read from the broker
    /// (read at start; larger processed records go to the DLQ as unproducible).
    #[arg(long, env = "TALLY_OUTPUT_MAX_MESSAGE_BYTES", default_value_t = KAFKA_DEFAULT_MAX_MESSAGE_BYTES, value_parser = parse_positive)]
    pub output_max_message_bytes: usize,
    /// Mask the `ip` field of DLQ entries whose value is a JSON object, as the
    /// processed output masks it (header tally.masked=ip). The DLQ then holds
    /// re-serialised JSON, not the original bytes. `verify` must be given it too.
    #[arg(long, env = "TALLY_DLQ_MASK_IP")]
    pub dlq_mask_ip: bool,
}

impl ProcessArgs {
    /// The configuration with the output and DLQ topics' size limits read from the
    /// broker (the flags are the fallback). `run` and `verify` both resolve them
    /// this way, so they truncate DLQ entries identically. `admin` is `None` when
    /// no admin client could be made: the flags then.
    pub async fn resolve(&self, admin: Option<&TopicAdmin>, topics: &TopicArgs) -> ProcessConfig {
        let mut cfg = self.config(&topics.input_topic);
        let names = [topics.output_topic.as_str(), topics.dlq_topic.as_str()];
        let read = match admin {
            Some(admin) => admin.max_message_bytes(&names).await,
            None => Ok(vec![None, None]),
        };
        let read = match read {
            Ok(_) if tally::failpoints::error("topic-limits-unreadable") => vec![None, None],
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the topics' max.message.bytes; using the flags");
                vec![None, None]
            }
        };
        for ((name, got), (slot, flag)) in names.iter().zip(&read).zip([
            (
                &mut cfg.output_limits.processed_max_bytes,
                "--output-max-message-bytes",
            ),
            (
                &mut cfg.output_limits.dlq_max_bytes,
                "--dlq-max-message-bytes",
            ),
        ]) {
            match got {
                Some(n) => *slot = *n,
                None => {
                    tracing::warn!(
                        topic = name,
                        fallback = *slot,
                        "max.message.bytes of the topic not readable; using {flag}"
                    )
                }
            }
        }
        tracing::info!(
            output = cfg.output_limits.processed_max_bytes,
            dlq = cfg.output_limits.dlq_max_bytes,
            "output size limits"
        );
        cfg
    }

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
                max_future_skew_secs: i64::try_from(self.max_future_skew.as_secs())
                    .unwrap_or(i64::MAX),
                dlq_mask_ip: self.dlq_mask_ip,
            },
            filters: Filters {
                min_app_version: self.min_app_version.clone(),
                allowed_device_types: (!allowed.is_empty()).then_some(allowed),
            },
            output_limits: OutputLimits {
                processed_max_bytes: self.output_max_message_bytes,
                dlq_max_bytes: self.dlq_max_message_bytes,
            },
        }
    }
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
