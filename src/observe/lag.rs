//! `tally_consumer_lag{partition}`: end offset minus committed offset of each
//! assigned partition. Watermarks are fetched on a thread of their own with a
//! client of their own, so neither the loop nor a scrape waits on the broker.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::metrics::Metrics;
use super::telemetry;
use crate::kafka::{self, TopicReader};

/// Set (and signalled) when a partition's committed offset became known, so
/// its lag series appears at once rather than up to `every` later.
static NUDGED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// Asks the lag thread to refresh now (a restore finished).
pub fn nudge() {
    let (flag, wake) = &NUDGED;
    *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
    wake.notify_one();
}

/// Waits `every`, or less when nudged.
fn wait(every: Duration) {
    let (flag, wake) = &NUDGED;
    let guard = flag.lock().unwrap_or_else(|e| e.into_inner());
    let (mut nudged, _) = wake
        .wait_timeout_while(guard, every, |nudged| !*nudged)
        .unwrap_or_else(|e| e.into_inner());
    *nudged = false;
}

/// Starts the thread that refreshes the lag gauges every `every`, and after
/// every restore.
pub fn spawn(conn: kafka::Connection, topic: String, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("tally-lag".into())
        .spawn(move || {
            let mut reader = None;
            loop {
                wait(every);
                if reader.is_none() {
                    match TopicReader::new(&conn, &topic) {
                        Ok(r) => reader = Some(r),
                        Err(e) => {
                            tracing::debug!(error = %e, "lag: no client yet");
                            continue;
                        }
                    }
                }
                if let Some(r) = &reader {
                    refresh(r);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the consumer lag thread; tally_consumer_lag stays empty");
    }
}

fn refresh(reader: &TopicReader) {
    let t = telemetry();
    for (partition, committed) in t.status.committed_offsets() {
        match reader.watermarks(partition) {
            Ok((_, high)) => {
                // Set only while the partition is still ours: a revocation since
                // the read above removed its series, which must stay removed.
                t.status.update_existing(partition, |_| {
                    Metrics::set(
                        &t.metrics.consumer_lag,
                        partition,
                        (high - committed).max(0),
                    );
                });
            }
            Err(e) => tracing::debug!(partition, error = %e, "lag: watermarks unavailable"),
        }
    }
}
