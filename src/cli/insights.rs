//! `tally insights`: the group-wide insights merged from the insights topic.

use std::collections::BTreeMap;

use clap::Args;
use tally::aggregate::Horizon;
use tally::insights;
use tally::kafka::{self};

use super::{KafkaArgs, blocking};

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

pub async fn run(a: InsightsArgs) -> anyhow::Result<()> {
    let conn = a.kafka.connection();
    let (topic, input) = (a.insights_topic.clone(), a.input_topic.clone());
    let latest = blocking(move || -> anyhow::Result<insights::Latest> {
        let reader = kafka::TopicReader::new(&conn, &topic)?;
        let ranges: Vec<_> = reader
            .partitions()?
            .into_iter()
            .map(|p| (p, kafka::StartAt::Earliest, None))
            .collect();
        let mut latest = insights::Latest::default();
        reader.read(&ranges, |r| {
            if let Some(v) = &r.record.value {
                latest.offer(&input, v);
            }
        })?;
        Ok(latest)
    })
    .await?;
    let merged = latest.merged(Horizon::default());
    if a.json {
        let offsets: BTreeMap<i32, i64> = latest
            .by_partition
            .iter()
            .map(|(p, s)| (*p, s.next_offset))
            .collect();
        let out = serde_json::json!({
            "partitions": offsets,
            "aggregate": merged,
            "peak_minutes": merged.peak_minutes(a.top),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!(
            "{}",
            insights::table(&merged, latest.by_partition.len(), a.top)
        );
    }
    Ok(())
}
