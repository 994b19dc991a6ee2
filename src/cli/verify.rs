//! `tally verify`: every input record exactly once in the output or the DLQ.

use clap::Args;
use tally::kafka::TopicAdmin;
use tally::verify;

use super::{KafkaArgs, ProcessArgs, TopicArgs, blocking, progress};

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub process: ProcessArgs,
    /// The group whose committed offsets bound the check.
    #[arg(long, env = "TALLY_GROUP_ID", default_value = "tally")]
    pub group_id: String,
    /// Also fail when the group has not consumed the input to its end, when
    /// outputs point past the committed offsets, or when open transactions keep
    /// outputs from being read: after a drain all three must be 0.
    #[arg(long, env = "TALLY_VERIFY_COMPLETE")]
    pub complete: bool,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Exit status of `verify` when it finds violations.
const EXIT_VIOLATIONS: i32 = 4;

pub async fn run(a: VerifyArgs) -> anyhow::Result<i32> {
    let conn = a.kafka.connection();
    let admin = TopicAdmin::new(&conn)
        .inspect_err(|e| {
            tracing::warn!(error = %e, "cannot create an admin client; size limits from the flags");
        })
        .ok();
    let cfg = a.process.resolve(admin.as_ref(), &a.topics).await;
    blocking(move || drop(admin)).await;
    let (group, out, dlq) = (
        a.group_id.clone(),
        a.topics.output_topic.clone(),
        a.topics.dlq_topic.clone(),
    );
    let summary = blocking(move || {
        let mut bar: Option<indicatif::ProgressBar> = None;
        let summary =
            verify::verify_with_progress(&conn, &group, &cfg, &out, &dlq, &mut |step| match step {
                verify::Step::Reading { topic, records } => {
                    if let Some(b) = bar.take() {
                        b.finish_and_clear();
                    }
                    bar = Some(progress::records(records, &format!("reading {topic}")));
                }
                verify::Step::Record => {
                    if let Some(b) = &bar {
                        b.inc(1);
                    }
                }
            });
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        summary
    })
    .await?;
    let incomplete = a.complete && summary.incomplete() > 0;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.render());
    }
    if summary.violations() > 0 || incomplete {
        eprintln!(
            "verify: FAILED ({} violations{})",
            summary.violations(),
            if incomplete {
                format!(
                    ", {} input records not consumed, {} outputs past the committed offsets, {} outputs not readable",
                    summary.unconsumed, summary.beyond_committed, summary.unread_outputs
                )
            } else {
                String::new()
            }
        );
        return Ok(EXIT_VIOLATIONS);
    }
    eprintln!("verify: OK");
    Ok(0)
}
