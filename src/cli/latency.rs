//! `tally latency`: end-to-end latency as a downstream consumer sees it.

use std::time::Duration;

use clap::Args;
use tally::kafka::{self};

use super::{KafkaArgs, blocking, duration};

#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic to follow (read_committed, from its current end).
    #[arg(
        long,
        env = "TALLY_OUTPUT_TOPIC",
        default_value = "processed-user-login"
    )]
    pub topic: String,
    /// Stop after measuring this many records.
    #[arg(long)]
    pub count: u64,
    /// Records to receive before measuring: a producer's first records wait for
    /// its connection, which is not the latency of the pipeline.
    #[arg(long, default_value_t = 0)]
    pub skip: u64,
    /// Stop when no record came for this long. A bare number is seconds
    /// (deprecated, as is the old name --idle-secs).
    #[arg(long, alias = "idle-secs", default_value = "30s", value_parser = duration::secs)]
    pub idle: Duration,
}

/// Measures, for each record that becomes visible on the topic, the time from its
/// record timestamp (tally and `tally copy` keep the input's) to the moment this
/// read_committed reader received it; prints the percentiles as one JSON line.
/// Producer and reader must share a clock (same host, or synchronised clocks).
pub async fn run(a: LatencyArgs) -> anyhow::Result<i32> {
    let conn = a.kafka.connection();
    let (topic, count, idle) = (a.topic.clone(), a.count, a.idle);
    let mut skip = a.skip;
    let mut ms = blocking(move || -> anyhow::Result<Vec<i64>> {
        let reader = kafka::TopicReader::new(&conn, &topic)?;
        let mut ms = Vec::with_capacity(count as usize);
        reader.follow(idle, |r| {
            let now = chrono::Utc::now().timestamp_millis();
            if skip > 0 {
                skip -= 1;
                return true;
            }
            if let Some(ts) = r.record.timestamp_ms {
                ms.push(now - ts);
            }
            (ms.len() as u64) < count
        })?;
        Ok(ms)
    })
    .await?;
    if ms.is_empty() {
        eprintln!("latency: no record with a timestamp arrived on {}", a.topic);
        return Ok(1);
    }
    ms.sort_unstable();
    let pct = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    println!(
        "{}",
        serde_json::json!({
            "records": ms.len(),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": ms[ms.len() - 1],
        })
    );
    Ok(if ms.len() as u64 == a.count { 0 } else { 1 })
}
