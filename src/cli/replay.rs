//! `tally replay`: reset a group's committed offsets so it reprocesses.
//!
//! What the aggregates mean afterwards: exactly what they always mean, the
//! records of each partition below the group's committed offset `C` (guarantee
//! 2), now with the new `C`. On assignment a checkpoint past the new `C` is
//! discarded; the latest snapshot at or below it is restored and `[S, C)`
//! replayed, or, with no such snapshot (the compacted insights topic usually
//! keeps only the latest, which lies past `C` after a reset backwards), the
//! partition is rebuilt from offset 0. Either way the records needed must still
//! be in the input: otherwise `run` refuses (see `--allow-inexact-restore`).
//! Records from the new offsets on are processed, and written, again.

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
    let (before, after, trimmed) = blocking(move || -> anyhow::Result<_> {
        let step = progress::spinner(&format!("checking group {group}"));
        let admin = kafka::GroupAdmin::new(&conn, &group)?;
        let g = admin.describe()?;
        if !g.members.is_empty() {
            bail!(
                "group {group} has {} active member(s) ({}); stop every `tally run` of the group first \
                 (a static member stopped without --leave-group-on-shutdown stays a member until \
                 its session times out)",
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
        let mut trimmed = BTreeMap::new();
        for p in after.keys() {
            let low = admin.watermarks(&topic, *p)?.0;
            if low > 0 {
                trimmed.insert(*p, low);
            }
        }
        step.finish_and_clear();
        Ok((before, after, trimmed))
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
        "aggregates will count exactly the records below the new offsets: on assignment tally \
         restores each partition from its latest snapshot at or below the new offset (replaying \
         from there), or it is rebuilt from offset 0 when there is none; local checkpoints past the \
         new offset are discarded. Records from the new offsets on are processed (and written) again."
    );
    for (p, low) in &trimmed {
        println!(
            "warning: partition {p}: records below {low} were deleted by retention; a rebuild from \
             offset 0 cannot be exact, so unless a snapshot at or below the new offset survives, \
             `tally run` will refuse to restore this partition (see --allow-inexact-restore)"
        );
    }
    Ok(())
}
