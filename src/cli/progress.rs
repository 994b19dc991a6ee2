//! Progress bars for long reads, drawn on stderr only when it is a terminal
//! (quiet in scripts, CI and pipes).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A spinner for work whose size is unknown, hidden when stderr is not a terminal.
pub fn spinner(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let s = ProgressBar::new_spinner();
    s.set_message(what.to_string());
    s.enable_steady_tick(std::time::Duration::from_millis(100));
    s
}

/// A bar counting up to `total` records, hidden when stderr is not a terminal.
pub fn records(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} records ({per_sec}, {eta} left)",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}
