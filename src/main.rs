//! The `tally` binary: parses the command line, sets up logging and signals, and
//! dispatches to the subcommand (in [`cli`], one file each). Errors end here as
//! `anyhow` with a message saying what failed and what to do.

mod cli;

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tally::failpoints;
use tally::pipeline::PipelineError;

fn main() {
    let (cli, deprecated) = cli::parse();
    let logging = init_logging(cli.log_format);
    for note in deprecated {
        tracing::warn!("{note}");
    }
    let _failpoints = failpoints::setup();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (exit, error) = match rt.block_on(cli::dispatch(cli)) {
        Ok(code) => (
            Exit {
                code,
                out_of_time: false,
            },
            None,
        ),
        Err(e) => (Exit::of(&e), Some(e)),
    };
    if exit.out_of_time {
        // --shutdown-timeout is spent: not a second more for a call in flight.
        rt.shutdown_background();
    } else {
        // Exit without waiting for blocking threads (a poll in flight).
        rt.shutdown_timeout(Duration::from_secs(1));
    }
    // The log lines still queued are written out (`process::exit` runs no
    // destructor), then the error after them; neither a closed nor a stalled
    // stderr (a reader that stopped reading) may change the status or hold the
    // exit: both happen on a thread given at most 2 s.
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The guard reports a worker that did not stop on stdout, which panics
        // when stdout is a closed pipe.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(logging)));
        if let Some(e) = error {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
        }
        let _ = done.send(());
    });
    let _ = wait.recv_timeout(Duration::from_secs(2));
    std::process::exit(exit.code);
}

/// How the process ends: its status, and whether a blocking call still in
/// flight may be waited for. The pipeline's errors decide both
/// ([`PipelineError::exit_code`]); any other error exits with 1.
struct Exit {
    code: i32,
    out_of_time: bool,
}

impl Exit {
    fn of(e: &anyhow::Error) -> Exit {
        match e.downcast_ref::<PipelineError>() {
            Some(p) => Exit {
                code: p.exit_code(),
                out_of_time: p.is_out_of_time(),
            },
            None => Exit {
                code: 1,
                out_of_time: false,
            },
        }
    }
}

/// Logs go to stderr: readable text (coloured on a terminal), or one JSON object
/// a line with the structured fields at the top level, for log shippers. They
/// are written by a thread of their own and dropped when it falls behind, so a
/// slow reader of stderr never blocks the loop, and a closed one (`| head`, a
/// log shipper restarting) loses the lines, never the process: write errors
/// are ignored there. Keep the guard until exit: dropping it writes out what is
/// queued.
fn init_logging(format: cli::LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("tally-log")
        .finish(std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        cli::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        cli::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    guard
}

/// Sets the flag on SIGINT or SIGTERM.
pub(crate) fn shutdown_flag() -> Arc<AtomicBool> {
    use tokio::signal::unix::{SignalKind, signal};
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    // Registered here, synchronously: a signal arriving before the task first
    // runs is still seen.
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("signal received; finishing the open transaction");
        f.store(true, Ordering::SeqCst);
    });
    flag
}
