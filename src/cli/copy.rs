//! `tally copy`: the at-least-once benchmark baseline.

use clap::Args;
use tally::kafka::{self};

use super::{KafkaArgs, TopicArgs, blocking};

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

pub async fn run(a: CopyArgs) -> anyhow::Result<()> {
    let conn = a.kafka.connection();
    let n = blocking(move || {
        kafka::copy_at_least_once(
            &conn,
            &a.group_id,
            &a.topics.input_topic,
            &a.topics.output_topic,
            a.count,
        )
    })
    .await?;
    println!("copied {n} records");
    Ok(())
}
