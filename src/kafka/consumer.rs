//! The consumer-group member of `tally run`: rebalance callbacks handed to the
//! pipeline loop, batch polling, committed offsets, seeks and pauses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance as RdRebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::connection::{
    AclNames, CALL_TIMEOUT, Connection, Denied, Error, Result, ctx, denied_resource,
    is_fenced_code, partitions,
};
use crate::model::InputRecord;

/// How long a seek waits for librdkafka to start a partition's fetcher.
pub const SEEK_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `__STATE`: the partition is assigned but its fetcher has not started yet.
fn is_not_ready(e: &KafkaError) -> bool {
    match e {
        KafkaError::Seek(name) => name.contains("STATE"),
        e => e.rdkafka_error_code() == Some(RDKafkaErrorCode::State),
    }
}

/// Counts the consumer's repositionings (rebalances, seeks, pauses): records are
/// stamped with it when polled (see [`Polled`]), so one stamped before a
/// partition's latest repositioning is known stale. Not Kafka's group
/// generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct RewindId(u64);

impl std::fmt::Display for RewindId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A rebalance handed from librdkafka's callback (on the polling thread) to the
/// pipeline loop.
#[derive(Debug)]
pub enum Rebalance {
    /// The partitions are assigned and paused; the loop restores their state,
    /// seeks and resumes them. `rewind`: this assignment's; records stamped
    /// with an earlier one belong to an earlier assignment.
    Assigned {
        partitions: Vec<i32>,
        rewind: RewindId,
    },
    /// The partitions are being taken away. The callback waits for `done` before
    /// letting librdkafka proceed, so the loop can close the open transaction while
    /// the partitions are still ours. `lost`: the group already gave them to someone
    /// else (session timed out): never commit for them.
    Revoked {
        partitions: Vec<i32>,
        lost: bool,
        done: SyncSender<()>,
    },
}

#[derive(Debug)]
pub struct GroupContext {
    topic: String,
    events: UnboundedSender<Rebalance>,
    /// The [`RewindId`]: bumped after every rebalance, seek and pause, so a
    /// record stamped with it says which repositioning it was fetched after.
    rewind: AtomicU64,
    /// The first authorization error librdkafka reported through the error
    /// callback: [`GroupConsumer::poll_batch`] ends on it.
    denied: std::sync::Mutex<Option<(RDKafkaErrorCode, String)>>,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(code) = error
            .rdkafka_error_code()
            .filter(|c| denied_resource(*c).is_some())
        {
            self.denied
                .lock()
                .expect("not poisoned")
                .get_or_insert_with(|| (code, format!("{error}: {reason}")));
        }
        tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
    }
}

/// A poll timeout rounded up to whole milliseconds. librdkafka waits in whole
/// milliseconds and rdkafka's poll loop retries the fraction left over with a
/// zero wait, so a timeout of 37.6 ms would wait 37 ms and then spin on
/// `clock_gettime` for 0.6 ms on the polling thread.
fn whole_millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX))
}

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect()
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &RdRebalance<'_>) {
        if let RdRebalance::Revoke(tpl) = rebalance {
            let (done, wait) = sync_channel(1);
            let event = Rebalance::Revoked {
                partitions: partitions_of(tpl, &self.topic),
                lost: consumer.assignment_lost(),
                done,
            };
            // If the loop is gone there is nothing left to hand over.
            if self.events.send(event).is_ok() {
                let _ = wait.recv();
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &RdRebalance<'_>) {
        match rebalance {
            RdRebalance::Assign(tpl) => {
                // Paused before the callback returns, so no record of these
                // partitions is delivered before the loop has restored their state
                // and sought to the committed offset.
                if let Err(e) = consumer.pause(tpl) {
                    tracing::error!(error = %e, "pausing newly assigned partitions failed");
                }
                let rewind = RewindId(self.rewind.fetch_add(1, Ordering::SeqCst) + 1);
                let _ = self.events.send(Rebalance::Assigned {
                    partitions: partitions_of(tpl, &self.topic),
                    rewind,
                });
            }
            RdRebalance::Revoke(_) => {
                self.rewind.fetch_add(1, Ordering::SeqCst);
            }
            RdRebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
        }
    }
}

/// A record and the [`RewindId`] it was polled under. The id is
/// read after librdkafka hands the record over, and bumped only after a seek,
/// pause or rebalance has completed; librdkafka discards records fetched before
/// a seek or pause that it has not handed over yet. So a record stamped below a
/// partition's latest repositioning was fetched before it, and one stamped at or
/// above it after, provided the partition is never repositioned while a poll
/// could be handing over its records (the loop repositions only between polls,
/// inside a rebalance callback, or partitions that are paused).
#[derive(Debug)]
pub struct Polled {
    pub rewind: RewindId,
    pub record: InputRecord,
}

/// Settings of the consumer-group member.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub group: String,
    pub instance_id: String,
    pub topic: String,
    pub session_timeout: Duration,
    pub max_poll_interval: Duration,
}

pub struct GroupConsumer {
    pub(super) consumer: BaseConsumer<GroupContext>,
    topic: String,
    group: String,
    principal: String,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("topic", &self.topic)
            .finish()
    }
}

impl GroupConsumer {
    pub fn new(
        conn: &Connection,
        member: &MemberConfig,
    ) -> Result<(Self, UnboundedReceiver<Rebalance>)> {
        let (tx, rx) = unbounded_channel();
        let session = member.session_timeout.as_millis().to_string();
        let poll = member.max_poll_interval.as_millis().to_string();
        let mut config = conn.consumer_config(&[
            // Eager assignment: a transaction spans all our partitions, so any
            // revocation must close it anyway; eager keeps the revoke path single
            // (commit, checkpoint, release all) and, with static membership and
            // warm local state (`K == C`), re-assignment costs one RocksDB read.
            ("partition.assignment.strategy", "range"),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", &session),
            ("max.poll.interval.ms", &poll),
            ("fetch.wait.max.ms", "100"),
        ]);
        config
            .set("group.id", &member.group)
            .set("group.instance.id", &member.instance_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed");
        let context = GroupContext {
            topic: member.topic.clone(),
            events: tx,
            rewind: AtomicU64::new(0),
            denied: std::sync::Mutex::new(None),
        };
        let consumer = config
            .create_with_context(context)
            .map_err(ctx("creating the consumer"))?;
        Ok((
            GroupConsumer {
                consumer,
                topic: member.topic.clone(),
                group: member.group.clone(),
                principal: conn.principal(),
            },
            rx,
        ))
    }

    pub fn subscribe(&self) -> Result<()> {
        self.consumer
            .subscribe(&[&self.topic])
            .map_err(ctx(format!("subscribing to {}", self.topic)))
    }

    /// Leaves the group for good (scale-in): unsubscribing makes librdkafka
    /// revoke our partitions (through the rebalance callback, served by polling
    /// here) and then send LeaveGroup, so the remaining members take over at
    /// once. Closing the consumer without this keeps a static member's place
    /// (librdkafka sends no LeaveGroup when a static member closes, KIP-345):
    /// a restart within the session timeout gets its partitions back without a
    /// rebalance. Records polled meanwhile are dropped: they are past the
    /// committed offsets.
    pub fn leave(&self, timeout: Duration) {
        self.consumer.unsubscribe();
        let deadline = Instant::now() + timeout;
        let mut empty_since: Option<Instant> = None;
        while Instant::now() < deadline {
            let _ = self.consumer.poll(Duration::from_millis(50));
            let empty = self
                .consumer
                .assignment()
                .map(|a| a.count() == 0)
                .unwrap_or(true);
            match (empty, empty_since) {
                (false, _) => empty_since = None,
                (true, None) => empty_since = Some(Instant::now()),
                // The LeaveGroup goes out once the unassignment is done; give the
                // request a moment on the wire.
                (true, Some(t)) if t.elapsed() > Duration::from_millis(500) => return,
                _ => {}
            }
        }
        tracing::warn!("leaving the group did not complete in {timeout:?}");
    }

    /// Polls up to `max` records, or `max_bytes` of keys and values (the batch
    /// holds owned copies: a count alone would let 5,000 records of 1 MiB through),
    /// for at most `budget`, and at most `settle` after the first record. Serves
    /// rebalance callbacks, so it runs on a blocking thread; returns early after a
    /// rebalance (or another repositioning) so the loop sees the new rewind
    /// promptly.
    pub fn poll_batch(
        &self,
        max: usize,
        max_bytes: usize,
        budget: Duration,
        settle: Duration,
    ) -> Result<Vec<Polled>> {
        let mut deadline = Instant::now() + budget;
        let start = self.rewind();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if let Some((code, detail)) = self
            .consumer
            .context()
            .denied
            .lock()
            .expect("not poisoned")
            .take()
        {
            return Err(self.not_authorized(code, detail));
        }
        while out.len() < max && bytes < max_bytes {
            let polled = self.consumer.poll(if out.is_empty() {
                whole_millis(deadline.saturating_duration_since(Instant::now()))
            } else {
                // Once records flow, only wait briefly for more of the same batch
                // (the deadline is checked below).
                Duration::from_millis(5)
            });
            let rewind = self.rewind();
            match polled {
                Some(Ok(m)) => {
                    let record = InputRecord::from(&m);
                    bytes += record.key.as_ref().map_or(0, Vec::len)
                        + record.value.as_ref().map_or(0, Vec::len);
                    if out.is_empty() {
                        deadline = deadline.min(Instant::now() + settle);
                    }
                    out.push(Polled { rewind, record });
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e))
                    if e.rdkafka_error_code()
                        .is_some_and(|c| denied_resource(c).is_some()) =>
                {
                    let code = e.rdkafka_error_code().expect("matched");
                    return Err(self.not_authorized(code, e.to_string()));
                }
                Some(Err(e)) => {
                    let fatal = self.consumer.client().fatal_error();
                    if let Some((code, reason)) = fatal {
                        if is_fenced_code(code) {
                            return Err(Error::Fenced(format!("consumer: {reason}")));
                        }
                        return Err(Error::Other(format!("fatal consumer error: {reason}")));
                    }
                    if e.rdkafka_error_code().is_some_and(is_fenced_code) {
                        return Err(Error::Fenced(format!("consumer: {e}")));
                    }
                    tracing::warn!(error = %e, "consumer error (librdkafka retries)");
                }
                None => {
                    if !out.is_empty() || Instant::now() >= deadline {
                        break;
                    }
                }
            }
            // The clock every 16 records, not per record on this hot path
            // (records trickling in every < 5 ms overrun the budget by < 80 ms).
            if rewind != start || (out.len() % 16 == 0 && Instant::now() >= deadline) {
                break;
            }
        }
        Ok(out)
    }

    fn tpl(&self, offsets: &[(i32, Option<i64>)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            match o {
                Some(o) => tpl
                    .add_partition_offset(&self.topic, *p, Offset::Offset(*o))
                    .expect("valid offset"),
                None => {
                    tpl.add_partition(&self.topic, *p);
                }
            }
        }
        tpl
    }

    /// The group's committed offsets (`None`: no commit yet). An error for one
    /// partition (its offsets unstable past librdkafka's retries, the
    /// coordinator moving) fails the whole call: it says nothing about whether
    /// the partition was ever committed, so it must never read as "no offset".
    pub fn committed(&self, partitions: &[i32]) -> Result<HashMap<i32, Option<i64>>> {
        let tpl = self.tpl(&partitions.iter().map(|p| (*p, None)).collect::<Vec<_>>());
        let got = self
            .consumer
            .committed_offsets(tpl, CALL_TIMEOUT)
            .map_err(ctx("reading committed offsets"))?;
        got.elements()
            .iter()
            .map(|e| {
                e.error().map_err(ctx(format!(
                    "reading the committed offset of {}/{}",
                    self.topic,
                    e.partition()
                )))?;
                let o = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                Ok((e.partition(), o))
            })
            .collect()
    }

    /// The consumer's position in each assigned partition that has one: the
    /// offset after the last record, or transaction marker, librdkafka handed
    /// over. Markers are never handed over as records, but the position moves
    /// past them (as do aborted transactions' records, with their marker), so a
    /// position beyond the last processed record's offset + 1 says that only
    /// markers lie between. A seek or a new assignment resets it to none until
    /// the next record or marker.
    pub fn positions(&self) -> Result<HashMap<i32, i64>> {
        let tpl = self.consumer.position().map_err(ctx("reading positions"))?;
        Ok(tpl
            .elements_for_topic(&self.topic)
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect())
    }

    /// The partitions of any topic, from a metadata request (an error when the
    /// topic does not exist).
    pub fn topic_partitions(&self, topic: &str) -> Result<Vec<i32>> {
        partitions(self.consumer.client(), topic).map_err(|e| e.for_principal(&self.principal))
    }

    /// Which of `topics` the cluster does not have, from one metadata request
    /// for every topic (a consumer's metadata request never creates one).
    /// `Err`: the cluster could not say within `timeout`.
    pub fn missing_topics(&self, topics: &[String], timeout: Duration) -> Result<Vec<String>> {
        let md = self
            .consumer
            .fetch_metadata(None, timeout)
            .map_err(ctx("reading the cluster's topics"))?;
        let present: std::collections::HashSet<&str> = md
            .topics()
            .iter()
            .filter(|t| {
                t.error().is_none_or(|e| {
                    RDKafkaErrorCode::from(e) != RDKafkaErrorCode::UnknownTopicOrPartition
                })
            })
            .map(|t| t.name())
            .collect();
        let absent: Vec<String> = topics
            .iter()
            .filter(|t| !present.contains(t.as_str()))
            .cloned()
            .collect();
        // A topic the principal may not describe is left out of the list too:
        // asked alone, the cluster says which it is.
        for topic in &absent {
            if let Err(e) = partitions(self.consumer.client(), topic) {
                if e.is_not_authorized() {
                    let needed = if *topic == self.topic {
                        "Read"
                    } else {
                        "Write"
                    };
                    return Err(e.needing(needed).for_principal(&self.principal));
                }
            }
        }
        Ok(absent)
    }

    /// The error for an authorization failure of this consumer: Read on its
    /// topic, or on its group (joining it, committing offsets for it).
    fn not_authorized(&self, code: RDKafkaErrorCode, detail: String) -> Error {
        let names = AclNames {
            principal: self.principal.clone(),
            group: self.group.clone(),
            transactional_id_prefix: String::new(),
            input: self.topic.clone(),
            outputs: Vec::new(),
        };
        let denied = Denied::of(code, Some(&self.topic)).unwrap_or(Denied::Topic(None));
        names.not_authorized(denied, detail)
    }

    /// `(low, high)` watermarks of a partition.
    pub fn watermarks(&self, partition: i32) -> Result<(i64, i64)> {
        self.watermarks_within(partition, CALL_TIMEOUT)
    }

    /// [`GroupConsumer::watermarks`], waiting at most `timeout`.
    pub fn watermarks_within(&self, partition: i32, timeout: Duration) -> Result<(i64, i64)> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, timeout)
            .map_err(ctx(format!("reading watermarks of partition {partition}")))
    }

    /// The current [`RewindId`] (see [`Polled`]).
    pub fn rewind(&self) -> RewindId {
        RewindId(self.consumer.context().rewind.load(Ordering::SeqCst))
    }

    /// Records of these partitions stamped before the returned id were fetched
    /// before this call.
    fn bump_rewind(&self) -> RewindId {
        RewindId(
            self.consumer
                .context()
                .rewind
                .fetch_add(1, Ordering::SeqCst)
                + 1,
        )
    }

    /// Moves the fetch position of the partitions; stale prefetched records are
    /// discarded by librdkafka. Returns the [`RewindId`] from which records
    /// of these partitions come from the new position. Right after an assignment
    /// librdkafka may not have started a partition's fetcher yet and answers
    /// `__STATE`: that is retried (the poll thread keeps polling meanwhile, which
    /// starts it) for up to [`SEEK_READY_TIMEOUT`], then reported.
    pub fn seek(&self, offsets: &[(i32, i64)]) -> Result<RewindId> {
        if offsets.is_empty() {
            return Ok(self.rewind());
        }
        let deadline = Instant::now() + SEEK_READY_TIMEOUT;
        let mut attempts = 0u32;
        loop {
            match self.seek_once(offsets) {
                Err(e) if is_not_ready(&e) && Instant::now() < deadline => {
                    attempts += 1;
                    if attempts == 1 {
                        tracing::debug!(error = %e, "partition fetcher not started yet; retrying the seek");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) if is_not_ready(&e) => {
                    return Err(Error::Other(format!(
                        "seeking {offsets:?}: librdkafka had not started the partitions' fetchers \
                         after {SEEK_READY_TIMEOUT:?} ({e}); the consumer is not making progress, \
                         check the broker connection"
                    )));
                }
                Err(e) => return Err(ctx("seeking")(e)),
                Ok(()) => return Ok(self.bump_rewind()),
            }
        }
    }

    fn seek_once(&self, offsets: &[(i32, i64)]) -> std::result::Result<(), KafkaError> {
        if crate::failpoints::error("seek-not-ready") {
            return Err(KafkaError::OffsetFetch(RDKafkaErrorCode::State));
        }
        let tpl = self.tpl(
            &offsets
                .iter()
                .map(|(p, o)| (*p, Some(*o)))
                .collect::<Vec<_>>(),
        );
        let res = self.consumer.seek_partitions(tpl, CALL_TIMEOUT)?;
        for e in res.elements() {
            e.error()?;
        }
        Ok(())
    }

    /// Pauses the partitions; returns the [`RewindId`] from which no record
    /// fetched before the pause is handed over.
    pub fn pause(&self, partitions: &[i32]) -> Result<RewindId> {
        let tpl = self.tpl(&partitions.iter().map(|p| (*p, None)).collect::<Vec<_>>());
        self.consumer
            .pause(&tpl)
            .map_err(ctx("pausing partitions"))?;
        Ok(self.bump_rewind())
    }

    pub fn resume(&self, partitions: &[i32]) -> Result<()> {
        let tpl = self.tpl(&partitions.iter().map(|p| (*p, None)).collect::<Vec<_>>());
        self.consumer
            .resume(&tpl)
            .map_err(ctx("resuming partitions"))
    }

    /// Whether librdkafka considers our assignment lost (e.g. the session timed out
    /// while the process was paused). Committing then would race the new owner.
    pub fn assignment_lost(&self) -> bool {
        self.consumer.assignment_lost()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_timeouts_round_up_to_whole_milliseconds() {
        assert_eq!(whole_millis(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            whole_millis(Duration::from_micros(1)),
            Duration::from_millis(1)
        );
        assert_eq!(
            whole_millis(Duration::from_micros(37_600)),
            Duration::from_millis(38)
        );
        assert_eq!(
            whole_millis(Duration::from_millis(5)),
            Duration::from_millis(5)
        );
    }
}
