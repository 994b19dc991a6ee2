//! Broker test harness shared by the tests in `tests/`, by role: the cluster
//! ([`broker`]), topics and records ([`topics`]), tally's processes
//! ([`process`]), the checks of a pipeline's result ([`checks`]) and the other
//! programs some tests run ([`tools`]).
//!
//! Deliberately independent of tally's own Kafka code: it talks to the broker with
//! plain rdkafka so a bug in tally cannot hide itself in the measurements.
//! Every test uses its own random topic, group and transactional.id names.
#![allow(dead_code)]

pub mod broker;
pub mod checks;
pub mod process;
pub mod tools;
pub mod topics;

// Test files name the helpers flat (`common::*`); not every file uses every role.
#[allow(unused_imports)]
pub use {broker::*, checks::*, process::*, tools::*, topics::*};

use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A name nobody else uses: `<prefix>-<random>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Runs a future of the library to completion, for the tests' synchronous code.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Polls `f` until it returns `Some`, failing with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
