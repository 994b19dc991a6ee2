//! `tally replay`: reset a group's committed offsets so it reprocesses.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use clap::Args;
use tally::kafka::{self};

use super::{KafkaArgs, blocking, progress};

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Group to reset.
    #[arg(long, env = "TALLY_GROUP_ID")]
    pub group: String,
    /// Input topic.
    #[arg(long, env = "TALLY_INPUT_TOPIC", default_value = "user-login")]
    pub input_topic: String,
    /// `earliest`, or an RFC 3339 time (first offset at or after it).
    #[arg(long)]
    pub to: String,
}

pub async fn run(a: ReplayArgs) -> anyhow::Result<()> {
    let conn = a.kafka.connection();
    let target = if a.to == "earliest" {
        None
    } else {
        Some(
            chrono::DateTime::parse_from_rfc3339(&a.to)
                .with_context(|| {
                    format!("--to {:?} is neither `earliest` nor an RFC 3339 time", a.to)
                })?
                .timestamp_millis(),
        )
    };
    let (group, topic) = (a.group.clone(), a.input_topic.clone());
    let (before, after) = blocking(move || -> anyhow::Result<_> {
        let step = progress::spinner(&format!("checking group {group}"));
        let admin = kafka::GroupAdmin::new(&conn, &group)?;
        let g = admin.describe()?;
        if !g.members.is_empty() {
            bail!(
                "group {group} has {} active member(s) ({}); stop every `tally run` of the group first",
                g.members.len(),
                g.members.join(", ")
            );
        }
        step.set_message(format!("finding the new offsets of {topic}"));
        let before = admin.committed(&topic)?;
        let after = match target {
            None => {
                let mut m = BTreeMap::new();
                for p in admin.partitions(&topic)? {
                    m.insert(p, admin.watermarks(&topic, p)?.0);
                }
                m
            }
            Some(ms) => admin.offsets_for_time(&topic, ms)?,
        };
        step.set_message(format!("committing the new offsets for {group}"));
        admin.commit(&topic, &after)?;
        step.finish_and_clear();
        Ok((before, after))
    })
    .await?;
    println!(
        "group {} topic {}: committed offsets reset",
        a.group, a.input_topic
    );
    for (p, o) in &after {
        println!(
            "  partition {p}: {} -> {o}",
            before.get(p).map_or("none".to_string(), |b| b.to_string())
        );
    }
    println!(
        "local state will be rebuilt: each instance's checkpoint is now ahead of the committed offset (K > C), \
         so on assignment tally discards it and rebuilds the partition's aggregates from the earliest offset. \
         Records from the new offsets on are processed (and written) again."
    );
    Ok(())
}
