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
}

impl ReadRecord {
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

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

/// A `read_committed` reader outside any group (assign, never commit).
pub struct TopicReader {
    consumer: BaseConsumer<ReaderContext>,
    topic: String,
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
        })
    }

    /// The topic's partitions (error if the topic does not exist).
    pub fn partitions(&self) -> Result<Vec<i32>> {
        partitions(self.consumer.client(), &self.topic)
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
    pub fn read(
        &self,
        ranges: &[(i32, StartAt, Option<i64>)],
        mut f: impl FnMut(ReadRecord),
    ) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        let mut open: HashMap<i32, Option<i64>> = HashMap::new();
        for (p, from, until) in ranges {
            let start = match from {
                StartAt::Earliest => Offset::Beginning,
                StartAt::Offset(o) => Offset::Offset(*o),
            };
            if let (StartAt::Offset(o), Some(u)) = (from, until) {
                if o >= u {
                    continue;
                }
            }
            tpl.add_partition_offset(&self.topic, *p, start)
                .expect("valid offset");
            open.insert(*p, *until);
        }
        if open.is_empty() {
            return Ok(());
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
                    if let Some(Some(until)) = open.get(&p) {
                        // EOF below `until` means the records in between are not
                        // readable (deleted by retention, or not yet stable).
                        let pos = self.position(p)?;
                        if pos < *until {
                            idle_since = Instant::now();
                            continue;
                        }
                    }
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
                Some(Err(e)) => return Err(ctx(format!("reading {}", self.topic))(e)),
                Some(Ok(m)) => {
                    idle_since = Instant::now();
                    let p = m.partition();
                    let Some(until) = open.get(&p).copied() else {
                        continue;
                    };
                    if until.is_some_and(|u| m.offset() >= u) {
                        open.remove(&p);
                        continue;
                    }
                    f(ReadRecord {
                        record: InputRecord::from(&m),
                        headers: headers_of(&m),
                    });
                    if until.is_some_and(|u| m.offset() + 1 >= u) {
                        open.remove(&p);
                    }
                }
            }
        }
        Ok(())
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
                Some(Err(e)) => return Err(ctx(format!("following {}", self.topic))(e)),
                Some(Ok(m)) => {
                    last = Instant::now();
                    let go_on = f(ReadRecord {
                        record: InputRecord::from(&m),
                        headers: headers_of(&m),
                    });
                    if !go_on {
                        return Ok(true);
                    }
                }
            }
        }
    }

    fn position(&self, partition: i32) -> Result<i64> {
        let pos = self.consumer.position().map_err(ctx("reading position"))?;
        Ok(pos
            .find_partition(&self.topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
            .unwrap_or(0))
    }
}
