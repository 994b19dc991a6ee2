//! `tally create-topics`: the pipeline's four topics.

use clap::Args;
use tally::kafka::{self};

use super::{KafkaArgs, TopicArgs};

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

pub async fn run(a: CreateTopicsArgs) -> anyhow::Result<()> {
    let conn = a.kafka.connection();
    let specs = kafka::pipeline_topic_specs(
        &a.topics.input_topic,
        &a.topics.outputs(),
        a.partitions,
        a.replication,
    );
    for (name, created) in kafka::create_topics(&conn, &specs).await? {
        println!("{name}: {}", if created { "created" } else { "exists" });
    }
    Ok(())
}
