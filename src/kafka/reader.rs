//! Bounded readers outside any group: state restores, `verify`, `insights`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::connection::{CALL_TIMEOUT, Connection, Error, Result, ctx, headers_of, partitions};
use crate::model::InputRecord;

/// A record read by a [`TopicReader`], with its headers.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub record: InputRecord,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The broker set the timestamp (the topic's `message.timestamp.type` is
    /// `LogAppendTime`), not the producer.
    pub log_append_time: bool,
}

impl ReadRecord {
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

fn log_append_time(m: &rdkafka::message::BorrowedMessage<'_>) -> bool {
    matches!(m.timestamp(), rdkafka::Timestamp::LogAppendTime(_))
}

/// Where a [`TopicReader::read`] ended, per partition: the next offset it
/// would have read (for a read to the end: the consumer's position at
/// end-of-partition, the last stable offset).
pub type ReadEnds = std::collections::BTreeMap<i32, i64>;

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Offset(i64),
}

/// Client context of readers: end-of-partition is how they know they are done,
/// not an error worth logging.
#[derive(Debug, Default)]
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::error!(error = %error, reason, "reader error");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// What a reader does with an error event from `poll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnError {
    /// librdkafka retries it by itself (a broker down or unreachable, one
    /// bootstrap server of several refusing connections, a request timing out):
    /// log it and keep polling; the caller's no-progress limit bounds the wait.
    Skip,
    /// Reading cannot succeed (the client is in a fatal state, the topic or
    /// partition is gone, access is denied): stop with the error.
    Fail,
}

/// Readers set a `group.id`, so rust-rdkafka hands librdkafka's transient client
/// errors to `poll` as well; only the permanent ones end a read.
fn on_error(code: Option<RDKafkaErrorCode>, client_fatal: bool) -> OnError {
    use RDKafkaErrorCode as C;
    if client_fatal {
        return OnError::Fail;
    }
    match code {
        Some(
            C::Fatal
            | C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::UnknownPartition
            | C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::UnsupportedVersion
            | C::InvalidArgument
            | C::InvalidConfig,
        ) => OnError::Fail,
        _ => OnError::Skip,
    }
}

/// A `read_committed` reader outside any group (assign, never commit).
pub struct TopicReader {
    consumer: BaseConsumer<ReaderContext>,
    topic: String,
    /// Named in a refusal for want of an ACL.
    principal: String,
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicReader")
            .field("topic", &self.topic)
            .finish()
    }
}

impl TopicReader {
    pub fn new(conn: &Connection, topic: &str) -> Result<Self> {
        let mut config = conn.consumer_config(&[("fetch.wait.max.ms", "50")]);
        config
            // librdkafka wants a group.id even for assign-only use; nothing is committed.
            .set(
                "group.id",
                format!("tally-reader-{}", uuid::Uuid::new_v4().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            // A start offset that retention has deleted must be an error the caller
            // sees, never a silent jump to the log start or end (librdkafka's
            // default is `latest`: a replay would silently read nothing).
            .set("auto.offset.reset", "error")
            .set("enable.partition.eof", "true");
        Ok(TopicReader {
            consumer: config
                .create_with_context(ReaderContext)
                .map_err(ctx("creating a reader"))?,
            topic: topic.to_string(),
            principal: conn.principal(),
        })
    }

    /// The topic's partitions (error if the topic does not exist). Also
    /// tells the client every partition's leader, which a new reader's first
    /// [`TopicReader::watermarks`] would otherwise wait for.
    pub fn partitions(&self) -> Result<Vec<i32>> {
        partitions(self.consumer.client(), &self.topic)
            .map_err(|e| e.for_principal(&self.principal).needing("Read"))
    }

    /// The partition's log end offset (the high watermark as a read_uncommitted
    /// client sees it, open transactions included). [`TopicReader::watermarks`]
    /// asks as this read_committed reader, which the broker answers with the
    /// last stable offset.
    pub fn log_end(&self, conn: &Connection, partition: i32) -> Result<i64> {
        let mut config = conn.consumer_config(&[]);
        config.set("isolation.level", "read_uncommitted");
        let client: BaseConsumer<ReaderContext> = config
            .create_with_context(ReaderContext)
            .map_err(ctx("creating a watermark client"))?;
        let (_, high) = client
            .fetch_watermarks(&self.topic, partition, CALL_TIMEOUT)
            .map_err(ctx(format!(
                "reading the log end of {}/{partition}",
                self.topic
            )))?;
        Ok(high)
    }

    pub fn watermarks(&self, partition: i32) -> Result<(i64, i64)> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, CALL_TIMEOUT)
            .map_err(ctx(format!(
                "reading watermarks of {}/{partition}",
                self.topic
            )))
    }

    /// Reads each listed partition from its start up to `until` (exclusive), or to
    /// its end (the last stable offset, for this read_committed reader) when
    /// `until` is `None`. Calls `f` for each record in partition order.
    ///
    /// Returns, per partition read, the offset the read ended at. Reading to the
    /// end stops at the last stable offset, which is below the high watermark
    /// while a transaction is open on the partition: a caller that must have
    /// seen everything compares the two (see [`ReadEnds`]).
    pub fn read(
        &self,
        ranges: &[(i32, StartAt, Option<i64>)],
        mut f: impl FnMut(ReadRecord),
    ) -> Result<ReadEnds> {
        let mut ends = ReadEnds::new();
        let mut tpl = TopicPartitionList::new();
        let mut open: HashMap<i32, Option<i64>> = HashMap::new();
        let mut starts: HashMap<i32, StartAt> = HashMap::new();
        for (p, from, until) in ranges {
            let start = match from {
                StartAt::Earliest => Offset::Beginning,
                StartAt::Offset(o) => Offset::Offset(*o),
            };
            if let (StartAt::Offset(o), Some(u)) = (from, until) {
                if o >= u {
                    ends.insert(*p, *o);
                    continue;
                }
            }
            tpl.add_partition_offset(&self.topic, *p, start)
                .expect("valid offset");
            open.insert(*p, *until);
            starts.insert(*p, *from);
        }
        if open.is_empty() {
            return Ok(ends);
        }
        self.consumer
            .assign(&tpl)
            .map_err(ctx(format!("assigning {}", self.topic)))?;
        // An empty partition (or one starting at `until`) reports EOF at once.
        let mut idle_since = Instant::now();
        while !open.is_empty() {
            match self.consumer.poll(Duration::from_millis(200)) {
                None => {
                    if idle_since.elapsed() > Duration::from_secs(120) {
                        return Err(Error::Other(format!(
                            "reading {}: no progress for 120 s on partitions {:?}",
                            self.topic,
                            open.keys().collect::<Vec<_>>()
                        )));
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    let Some(until) = open.get(&p).copied() else {
                        continue;
                    };
                    // No position yet: nothing was read since the start
                    // (control records count as read).
                    let pos = match self.position(p)? {
                        Some(pos) => pos,
                        None => match starts.get(&p) {
                            Some(StartAt::Offset(o)) => *o,
                            _ => self.watermarks(p)?.0,
                        },
                    };
                    if let Some(until) = until {
                        // EOF below `until` means the records in between are not
                        // readable (deleted by retention, or not yet stable).
                        if pos < until {
                            idle_since = Instant::now();
                            continue;
                        }
                    }
                    ends.insert(p, pos);
                    open.remove(&p);
                }
                Some(Err(e))
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset) =>
                {
                    return Err(Error::Other(format!(
                        "reading {}: a start offset of partitions {:?} is out of range \
                         (deleted by retention meanwhile?): {e}",
                        self.topic,
                        open.keys().collect::<Vec<_>>()
                    )));
                }
                Some(Err(e)) => self.on_error(&format!("reading {}", self.topic), e)?,
                Some(Ok(m)) => {
                    idle_since = Instant::now();
                    let p = m.partition();
                    let Some(until) = open.get(&p).copied() else {
                        continue;
                    };
                    if let Some(u) = until.filter(|u| m.offset() >= *u) {
                        ends.insert(p, u);
                        open.remove(&p);
                        continue;
                    }
                    f(ReadRecord {
                        record: InputRecord::from(&m),
                        headers: headers_of(&m),
                        log_append_time: log_append_time(&m),
                    });
                    if let Some(u) = until.filter(|u| m.offset() + 1 >= *u) {
                        ends.insert(p, u);
                        open.remove(&p);
                    }
                }
            }
        }
        Ok(ends)
    }

    /// Follows every partition from its current end (the last stable offset) and
    /// calls `f` with each record newer than that, as soon as this read_committed
    /// reader can see it, until `f` returns false or no record came for `idle`.
    /// Returns whether `f` asked to stop (false: went idle).
    pub fn follow(&self, idle: Duration, mut f: impl FnMut(ReadRecord) -> bool) -> Result<bool> {
        let mut tpl = TopicPartitionList::new();
        for p in self.partitions()? {
            tpl.add_partition_offset(&self.topic, p, Offset::End)
                .expect("valid offset");
        }
        self.consumer
            .assign(&tpl)
            .map_err(ctx(format!("assigning {}", self.topic)))?;
        let mut last = Instant::now();
        loop {
            match self.consumer.poll(Duration::from_millis(100)) {
                None | Some(Err(KafkaError::PartitionEOF(_))) => {
                    if last.elapsed() > idle {
                        return Ok(false);
                    }
                }
                Some(Err(e)) => self.on_error(&format!("following {}", self.topic), e)?,
                Some(Ok(m)) => {
                    last = Instant::now();
                    let go_on = f(ReadRecord {
                        record: InputRecord::from(&m),
                        headers: headers_of(&m),
                        log_append_time: log_append_time(&m),
                    });
                    if !go_on {
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// Skips an error librdkafka recovers from by itself (see [`on_error`]),
    /// returns any other.
    fn on_error(&self, what: &str, e: KafkaError) -> Result<()> {
        let fatal = self.consumer.client().fatal_error();
        match on_error(e.rdkafka_error_code(), fatal.is_some()) {
            OnError::Skip => {
                tracing::warn!(error = %e, topic = %self.topic, "reader: transient client error (librdkafka retries)");
                Ok(())
            }
            OnError::Fail => Err(match fatal {
                Some((_, reason)) => Error::Other(format!("{what}: fatal client error: {reason}")),
                None => ctx(what.to_string())(e),
            }),
        }
    }

    /// The next offset the reader will return for `partition`; `None` until it
    /// has read something there.
    fn position(&self, partition: i32) -> Result<Option<i64>> {
        let pos = self.consumer.position().map_err(ctx("reading position"))?;
        Ok(pos
            .find_partition(&self.topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_client_errors_are_skipped_permanent_ones_end_the_read() {
        use RDKafkaErrorCode as C;
        for code in [
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::Resolve,
            C::OperationTimedOut,
            C::RequestTimedOut,
            C::NotLeaderForPartition,
            C::LeaderNotAvailable,
            C::NetworkException,
        ] {
            assert_eq!(on_error(Some(code), false), OnError::Skip, "{code:?}");
        }
        assert_eq!(on_error(None, false), OnError::Skip);
        for code in [
            C::UnknownTopicOrPartition,
            C::TopicAuthorizationFailed,
            C::SaslAuthenticationFailed,
        ] {
            assert_eq!(on_error(Some(code), false), OnError::Fail, "{code:?}");
        }
        // A client in a fatal state fails whatever the event says.
        assert_eq!(
            on_error(Some(C::BrokerTransportFailure), true),
            OnError::Fail
        );
    }
}
