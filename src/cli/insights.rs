//! `tally insights`: the group-wide insights merged from the insights topic.

use clap::Args;
use tally::aggregate::Horizon;
use tally::insights;
use tally::kafka::{self};

use super::{KafkaArgs, blocking, progress};

/// The per-minute chart: the latest this many minutes, bars this wide.
const CHART_MINUTES: usize = 30;
const CHART_WIDTH: usize = 50;

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
        let mut total = 0;
        for (p, _, _) in &ranges {
            let (low, high) = reader.watermarks(*p)?;
            total += (high - low).max(0) as u64;
        }
        let bar = progress::records(total, "reading insights");
        let mut latest = insights::Latest::default();
        reader.read(&ranges, |r| {
            bar.inc(1);
            if let Some(v) = &r.record.value {
                latest.offer(&input, r.record.partition, v);
            }
        })?;
        bar.finish_and_clear();
        Ok(latest)
    })
    .await?;
    if a.json {
        let out = latest.report(Horizon::default(), a.top);
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let merged = latest.merged(Horizon::default());
        print!(
            "{}",
            insights::table(&merged, latest.by_partition.len(), a.top)
        );
        print!(
            "{}",
            insights::minute_chart(&merged, CHART_MINUTES, CHART_WIDTH)
        );
    }
    Ok(())
}
