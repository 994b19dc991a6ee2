//! `tally-drill`: the crash/restart recovery drill (see [`tally::drill`]).
//! `scripts/drill.sh` is the front end.

use clap::Parser;
use rand::Rng;
use tally::drill::{self, DrillArgs};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::stderr)
        .init();
    let args = DrillArgs::parse();
    let seed = args.seed.unwrap_or_else(|| rand::rng().random());
    let code = drill::run(args, seed)?;
    std::process::exit(code);
}
