//! `tally create-topics`: the pipeline's four topics; and the hidden
//! `tally delete-topics`, with which the benchmark cleans up after itself.

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

#[derive(Debug, Clone, Args)]
pub struct DeleteTopicsArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Required: the topics' records are gone for good, and the topic names
    /// have defaults (a bare `tally delete-topics` would name the production ones).
    #[arg(long)]
    pub yes: bool,
}

pub async fn delete(a: DeleteTopicsArgs) -> anyhow::Result<()> {
    if !a.yes {
        anyhow::bail!("delete-topics deletes the topics and every record in them; pass --yes");
    }
    let conn = a.kafka.connection();
    let outputs = a.topics.outputs();
    let names = [
        a.topics.input_topic.as_str(),
        &outputs.processed,
        &outputs.dead_letter,
        &outputs.insights,
    ];
    for (name, deleted) in kafka::delete_topics(&conn, &names).await? {
        println!(
            "{name}: {}",
            if deleted { "deleted" } else { "did not exist" }
        );
    }
    Ok(())
}
