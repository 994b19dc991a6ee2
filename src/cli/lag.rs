//! `tally lag`: a group's committed offsets and lag.

use std::time::{Duration, Instant};

use clap::Args;
use tally::kafka::{self};

use super::{KafkaArgs, blocking, duration};

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
    /// Wait (up to --timeout) until the committed offsets reach at least this
    /// many records in total, then print the lag; exit 1 on timeout.
    #[arg(long, requires = "timeout")]
    pub wait_for: Option<i64>,
    /// How long to wait with --wait-for, e.g. 10m. A bare number is seconds
    /// (deprecated).
    #[arg(long, default_value = "10m", value_parser = duration::secs)]
    pub timeout: Duration,
}

/// Partition, committed offset (if any), end offset.
type LagRow = (i32, Option<i64>, i64);
pub async fn run(a: LagArgs) -> anyhow::Result<i32> {
    let conn = a.kafka.connection();
    let (group, topic) = (a.group_id.clone(), a.input_topic.clone());
    let deadline = Instant::now() + a.timeout;
    let rows = blocking(move || -> anyhow::Result<Option<Vec<LagRow>>> {
        let admin = kafka::GroupAdmin::new(&conn, &group)?;
        let partitions = admin.partitions(&topic)?;
        loop {
            let committed = admin.committed_of(&topic, &partitions)?;
            if a.wait_for
                .is_none_or(|n| committed.values().sum::<i64>() >= n)
            {
                let mut rows = Vec::new();
                for p in partitions {
                    rows.push((
                        p,
                        committed.get(&p).copied(),
                        admin.watermarks(&topic, p)?.1,
                    ));
                }
                return Ok(Some(rows));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            // Often: the benchmark samples a processor's CPU when this returns,
            // and every millisecond waited here is counted against it.
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await?;
    let Some(rows) = rows else {
        eprintln!(
            "lag: the group did not reach {:?} committed records within {}",
            a.wait_for,
            humantime::format_duration(a.timeout)
        );
        return Ok(1);
    };
    println!(
        "{:>9} {:>12} {:>12} {:>10}",
        "partition", "committed", "end", "lag"
    );
    let mut total = 0;
    for (p, c, end) in rows {
        let lag = end - c.unwrap_or(0);
        total += lag;
        println!(
            "{p:>9} {:>12} {end:>12} {lag:>10}",
            c.map_or("-".to_string(), |c| c.to_string())
        );
    }
    println!("total lag {total}");
    Ok(0)
}
