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
    /// Replication factor (default: 3, or the number of brokers when fewer).
    /// With 3 or more, the topics get `min.insync.replicas` 2.
    #[arg(long, env = "TALLY_REPLICATION")]
    pub replication: Option<i32>,
}

pub async fn run(a: CreateTopicsArgs) -> anyhow::Result<()> {
    let conn = a.kafka.connection();
    let brokers = kafka::TopicAdmin::new(&conn)?.broker_count().await?;
    let (replication, min_insync) = kafka::replication_for(brokers, a.replication);
    let specs = kafka::pipeline_topic_specs(
        &a.topics.input_topic,
        &a.topics.outputs(),
        a.partitions,
        (replication, min_insync),
    );
    eprintln!(
        "create-topics: {brokers} broker(s) answered: replication factor {replication}{}{}",
        min_insync.map_or(String::new(), |n| format!(", min.insync.replicas {n}")),
        if a.replication.is_none() && brokers < 3 {
            // The metadata names live brokers only: one that is down would make
            // a production cluster's topics fragile for good.
            " (fewer than 3 brokers: if one is down, pass --replication)"
        } else {
            ""
        }
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
    /// The topics to delete, named in full: no defaults, so no production topic
    /// is ever deleted by leaving a name out.
    #[arg(required = true)]
    pub topics: Vec<String>,
    /// Required: the topics' records are gone for good.
    #[arg(long)]
    pub yes: bool,
}

pub async fn delete(a: DeleteTopicsArgs) -> anyhow::Result<()> {
    if !a.yes {
        anyhow::bail!("delete-topics deletes the topics and every record in them; pass --yes");
    }
    let mut names: Vec<&str> = a.topics.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    let mut failed = Vec::new();
    for (name, result) in kafka::delete_topics(&a.kafka.connection(), &names).await? {
        match result {
            Ok(true) => println!("{name}: deleted"),
            Ok(false) => println!("{name}: did not exist"),
            Err(why) => failed.push(format!("{name} ({why})")),
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("could not delete {}", failed.join(", "));
    }
    Ok(())
}
