//! `tally generate`: realistic user-login events, some malformed.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use tally::generate;
use tally::kafka::{self};

use super::{KafkaArgs, blocking};
use crate::shutdown_flag;

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
    /// Event times advance a minute every this many events; default: `--rate`
    /// times 60 with a rate (event times keep pace with the clock), else 1000.
    /// A few per minute spread a backlog over a day of minutes, as a day of
    /// traffic fills the per-minute aggregate.
    #[arg(long, env = "TALLY_GENERATE_EVENTS_PER_MINUTE")]
    pub events_per_minute: Option<u64>,
    /// Include 1 MiB payloads among the malformed kinds.
    #[arg(long, env = "TALLY_GENERATE_HUGE", default_value_t = true, action = clap::ArgAction::Set)]
    pub huge: bool,
    /// Runs of junk records, SIZE or SIZExCOUNT bytes (comma-separated, taken in
    /// turn): e.g. 3000000 (over a 2 MiB DLQ), 1500000 (over the broker's default
    /// message size; the input topic must allow it), 1048576x20 (a burst).
    #[arg(long, env = "TALLY_GENERATE_OVERSIZE", value_delimiter = ',', value_parser = generate::parse_run)]
    pub oversize: Vec<(usize, u64)>,
    /// Every this many records, the next run of --oversize.
    #[arg(long, env = "TALLY_GENERATE_OVERSIZE_EVERY", default_value_t = 1000)]
    pub oversize_every: u64,
}

/// How long the events sent may take to be delivered at the end.
const FLUSH_LIMIT: Duration = Duration::from_secs(120);
/// How long they may take once SIGINT or SIGTERM came: an operator stopping
/// the generator must not wait minutes on a broker that is gone.
const FLUSH_AFTER_SIGNAL: Duration = Duration::from_secs(5);

pub async fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let conn = a.kafka.connection();
    let stop = shutdown_flag();
    let start_time = a
        .start_time
        .unwrap_or_else(|| chrono::Utc::now().timestamp());
    let topic = a.topic.clone();
    let sent = blocking(move || -> anyhow::Result<(u64, u64)> {
        let producer = kafka::PlainProducer::new(&conn)?;
        let mut g = generate::Generator::new(a.seed, start_time, a.invalid_ratio, a.huge);
        if let Some(per_minute) = a.events_per_minute {
            g = g.with_events_per_minute(per_minute);
        } else if a.rate > 0.0 {
            g = g.with_events_per_minute((a.rate * 60.0) as u64);
        }
        if !a.oversize.is_empty() {
            g = g.with_oversize(generate::Oversize {
                runs: a.oversize.clone(),
                every: a.oversize_every,
            });
        }
        let started = Instant::now();
        let (mut n, mut bad) = (0u64, 0u64);
        while a.count.is_none_or(|c| n < c) && !stop.load(Ordering::SeqCst) {
            if a.rate > 0.0 {
                let due = Duration::from_secs_f64(n as f64 / a.rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait.min(Duration::from_millis(100)));
                    continue;
                }
            }
            let r = g.next_record();
            // A full queue (the broker gone) is waited on only until a signal.
            if !producer.send_unless(&a.topic, Some(&r.key), r.value.as_deref(), &stop)? {
                break;
            }
            n += 1;
            bad += u64::from(r.malformed.is_some());
        }
        let left = producer.flush_unless(FLUSH_LIMIT, &stop, FLUSH_AFTER_SIGNAL);
        if left > 0 {
            anyhow::bail!(
                "{left} of {n} events sent to {} were not delivered{} (is the broker up?)",
                a.topic,
                if stop.load(Ordering::SeqCst) {
                    format!(" within {} s of the signal", FLUSH_AFTER_SIGNAL.as_secs())
                } else {
                    format!(" within {} s", FLUSH_LIMIT.as_secs())
                }
            );
        }
        // A record librdkafka gave up on (refused, not authorized) is no longer
        // in flight, but it was not written either.
        match producer.failed() {
            (0, _) => {}
            (failed, denied) => anyhow::bail!(
                "{failed} of {n} events were not written to {}{}",
                a.topic,
                denied.map_or_else(
                    || " (see the delivery errors above)".to_string(),
                    |d| format!(
                        ": not authorized ({d}); the principal needs Write on the topic \
                         (docs/operations.md, \"A secured cluster\")"
                    ),
                )
            ),
        }
        Ok((n, bad))
    })
    .await?;
    println!(
        "generated {} events ({} malformed) to {}",
        sent.0, sent.1, topic
    );
    Ok(())
}
