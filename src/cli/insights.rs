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
    /// Also report the write volume: how many snapshots of the input topic the
    /// insights topic holds and their bytes (key + value).
    #[arg(long)]
    pub volume: bool,
}

pub async fn run(a: InsightsArgs) -> anyhow::Result<()> {
    let conn = a.kafka.connection();
    let (topic, input) = (a.insights_topic.clone(), a.input_topic.clone());
    let (latest, (snapshots, bytes)) = blocking(move || -> anyhow::Result<_> {
        let reader = kafka::TopicReader::new(&conn, &topic)?;
        let ranges: Vec<_> = reader
            .partitions()?
            .into_iter()
            .map(|p| (p, kafka::StartAt::Earliest, None))
            .collect();
        let mut latest = insights::Latest::default();
        let (mut snapshots, mut bytes) = (0u64, 0u64);
        let key_prefix = format!("{input}/");
        reader.read(&ranges, |r| {
            if let Some(v) = &r.record.value {
                latest.offer(&input, v);
                if r.record
                    .key
                    .as_deref()
                    .is_some_and(|k| k.starts_with(key_prefix.as_bytes()))
                {
                    snapshots += 1;
                    bytes += (v.len() + r.record.key.as_ref().map_or(0, Vec::len)) as u64;
                }
            }
        })?;
        Ok((latest, (snapshots, bytes)))
    })
    .await?;
    let merged = latest.merged(Horizon::default());
    if a.json {
        let offsets: BTreeMap<i32, i64> = latest
            .by_partition
            .iter()
            .map(|(p, s)| (*p, s.next_offset))
            .collect();
        let mut out = serde_json::json!({
            "partitions": offsets,
            "aggregate": merged,
            "peak_minutes": merged.peak_minutes(a.top),
        });
        if a.volume {
            out["volume"] = serde_json::json!({ "snapshots": snapshots, "bytes": bytes });
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!(
            "{}",
            insights::table(&merged, latest.by_partition.len(), a.top)
        );
        if a.volume {
            println!(
                "\nvolume: {snapshots} snapshots, {bytes} bytes ({} bytes per snapshot)",
                bytes.checked_div(snapshots).unwrap_or(0)
            );
        }
    }
    Ok(())
}
