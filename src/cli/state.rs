//! `tally state`: the checkpoints in a local state directory.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use tally::aggregate::Aggregate;
use tally_state::StateStore;

use super::blocking;

#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// State directory to inspect.
    #[arg(long, env = "TALLY_STATE_DIR", default_value = "./tally-state")]
    pub state_dir: PathBuf,
}

pub async fn run(a: StateArgs) -> anyhow::Result<()> {
    let dir = a.state_dir.clone();
    if !dir.exists() {
        bail!("state directory {} does not exist", dir.display());
    }
    let listed = blocking(move || -> anyhow::Result<_> {
        let store = StateStore::open_read_only(&dir)?;
        Ok(store.list_all::<Aggregate>()?)
    })
    .await?;
    println!(
        "{:<20} {:<20} {:>9} {:>12} {:>10} {:>8} {:>8} {:>9}",
        "group", "topic", "partition", "next_offset", "processed", "dlq", "filtered", "bytes"
    );
    for l in &listed {
        let a = &l.checkpoint.state;
        println!(
            "{:<20} {:<20} {:>9} {:>12} {:>10} {:>8} {:>8} {:>9}",
            l.namespace.group,
            l.namespace.topic,
            l.checkpoint.partition,
            l.checkpoint.next_offset,
            a.processed,
            a.dead_lettered,
            a.filtered,
            l.size_bytes
        );
    }
    println!("{} checkpoints in {}", listed.len(), a.state_dir.display());
    Ok(())
}
