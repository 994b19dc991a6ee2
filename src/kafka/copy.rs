//! The benchmark baseline (`tally copy`).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

use super::connection::{CALL_TIMEOUT, Connection, Error, Result, ctx};
use super::producer::PlainProducer;

/// Benchmark baseline: a plain consumer-to-producer copy without transactions.
/// At least once: offsets are committed only after the records before them are
/// flushed, so a crash re-copies rather than loses.
pub fn copy_at_least_once(
    conn: &Connection,
    group: &str,
    input: &str,
    output: &str,
    count: u64,
) -> Result<u64> {
    let mut config = conn.consumer_config(&[
        ("auto.offset.reset", "earliest"),
        ("fetch.wait.max.ms", "100"),
    ]);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().map_err(ctx("creating the copy consumer"))?;
    consumer.subscribe(&[input]).map_err(ctx("subscribing"))?;
    let producer = PlainProducer::new(conn)?;
    let mut n = 0u64;
    let mut since_commit = 0u64;
    let mut idle_since = std::time::Instant::now();
    while n < count {
        if idle_since.elapsed() > CALL_TIMEOUT {
            return Err(Error::Other(format!(
                "copying {input}: no record for {CALL_TIMEOUT:?} after {n} of {count}"
            )));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                idle_since = std::time::Instant::now();
                // The input's timestamp, as `tally run` keeps it: end-to-end
                // latency is measured the same way for both.
                producer.send_to(
                    output,
                    None,
                    m.key(),
                    m.payload(),
                    &[],
                    m.timestamp().to_millis(),
                )?;
                n += 1;
                since_commit += 1;
            }
            Some(Err(e)) => tracing::warn!(error = %e, "copy consumer error"),
            None => {}
        }
        if since_commit >= 10_000 || (n >= count && since_commit > 0) {
            producer.flush()?;
            consumer
                .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
                .map_err(ctx("committing copy offsets"))?;
            since_commit = 0;
        }
    }
    Ok(n)
}
