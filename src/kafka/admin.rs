//! Administration: creating the pipeline's topics, checking the ones `run`
//! depends on (partition counts, size limits, cleanup policy), describing a
//! group, reading and overwriting its committed offsets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::connection::{CALL_TIMEOUT, Connection, Error, Result, ctx, partitions};
use super::producer::OutputTopics;

/// A topic to create.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    pub config: Vec<(String, String)>,
}

/// The four topics of a pipeline. The input, output and DLQ accept records up to
/// 2 MiB (a DLQ entry carries the original bytes, malformed 1 MiB payloads
/// included); the insights topic is compacted (latest snapshot per partition).
pub fn pipeline_topic_specs(
    input: &str,
    outputs: &OutputTopics,
    partitions: i32,
    (replication, min_insync): (i32, Option<i32>),
) -> Vec<TopicSpec> {
    let spec = |name: &str, compact: bool| {
        let mut config = vec![("max.message.bytes".to_string(), "2097152".to_string())];
        if let Some(n) = min_insync {
            config.push(("min.insync.replicas".to_string(), n.to_string()));
        }
        if compact {
            config.push(("cleanup.policy".to_string(), "compact".to_string()));
        }
        TopicSpec {
            name: name.to_string(),
            partitions,
            replication,
            config,
        }
    };
    vec![
        spec(input, false),
        spec(&outputs.processed, false),
        spec(&outputs.dead_letter, false),
        spec(&outputs.insights, true),
    ]
}

/// The replication factor and `min.insync.replicas` of new topics on a cluster
/// of `brokers`, unless `requested` names the factor: three copies where there
/// are three brokers, so one broker's death takes no partition offline, and two
/// in sync for an acknowledged write, so one more death loses nothing that was
/// acknowledged (`acks=all`, which idempotent and transactional producers use).
/// With fewer replicas than three the broker's own `min.insync.replicas` stays.
pub fn replication_for(brokers: usize, requested: Option<i32>) -> (i32, Option<i32>) {
    let factor = requested.unwrap_or_else(|| brokers.clamp(1, 3) as i32);
    (factor, (factor >= 3).then_some(2))
}

/// The partition of a Kafka internal topic whose leader coordinates `key`:
/// `__consumer_offsets` for a group id, `__transaction_state` for a
/// transactional.id. Kafka's rule, `Utils.abs(key.hashCode()) % partitions`
/// with Java's `String.hashCode` (over UTF-16 units, wrapping).
pub fn coordinator_partition(key: &str, partitions: i32) -> i32 {
    let hash = key
        .encode_utf16()
        .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)));
    // Kafka's `Utils.abs` maps i32::MIN to 0, where `i32::abs` would overflow.
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions.max(1)
}

/// The broker leading the most of `leaders` (partitions without a leader, -1,
/// aside), with how many it leads; the lowest id among equals.
pub fn busiest(leaders: impl IntoIterator<Item = i32>) -> Option<(i32, usize)> {
    let mut led: BTreeMap<i32, usize> = BTreeMap::new();
    for l in leaders.into_iter().filter(|l| *l >= 0) {
        *led.entry(l).or_default() += 1;
    }
    led.into_iter().max_by_key(|(id, n)| (*n, -id))
}

/// What makes a topic of `replicas` copies (the fewest of any partition) and
/// `min_insync` fragile on a cluster of `brokers`: `None` when nothing does.
pub fn fragility(
    topic: &str,
    brokers: usize,
    replicas: usize,
    min_insync: Option<i32>,
) -> Option<String> {
    if brokers > 1 && replicas == 1 {
        return Some(format!(
            "topic {topic} has replication factor 1 on a cluster of {brokers} brokers: one broker's \
             death takes some of its partitions offline, and tally's writes then wait until it \
             stops; give it 3 replicas (`tally create-topics` creates them so)"
        ));
    }
    if replicas >= 3 && min_insync == Some(1) {
        return Some(format!(
            "topic {topic} has {replicas} replicas but min.insync.replicas 1: a write \
             acknowledged by one broker is lost if that broker dies; set min.insync.replicas=2"
        ));
    }
    None
}

/// Creates the topics; ones that already exist are left as they are.
pub async fn create_topics(conn: &Connection, specs: &[TopicSpec]) -> Result<Vec<(String, bool)>> {
    let topic_admin = TopicAdmin::new(conn)?;
    let admin = &topic_admin.admin;
    let topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|s| {
            s.config.iter().fold(
                NewTopic::new(
                    &s.name,
                    s.partitions,
                    TopicReplication::Fixed(s.replication),
                ),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let results = admin
        .create_topics(
            topics.iter(),
            &AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT)),
        )
        .await
        .map_err(ctx("creating topics"))?;
    let mut out = Vec::new();
    for r in results {
        match r {
            Ok(name) => out.push((name, true)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => out.push((name, false)),
            Err((name, code)) => {
                return Err(Error::Other(format!("creating topic {name}: {code}")));
            }
        }
    }
    // Wait for metadata so the topics are usable when we return.
    for s in specs {
        let deadline = Instant::now() + CALL_TIMEOUT;
        while topic_admin
            .partitions(&s.name)
            .await
            .map(|p| p.len())
            .unwrap_or(0)
            < s.partitions as usize
        {
            if Instant::now() > deadline {
                return Err(Error::Other(format!(
                    "topic {} did not appear in metadata",
                    s.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(out)
}

/// Deletes the topics: per topic, `Ok(false)` when it did not exist, `Err` with
/// the broker's answer when it could not be deleted. Used by the
/// benchmark to clean up after each row: a broker's cost per record grows as
/// topics accumulate.
pub async fn delete_topics(
    conn: &Connection,
    names: &[&str],
) -> Result<Vec<(String, std::result::Result<bool, String>)>> {
    let topic_admin = TopicAdmin::new(conn)?;
    let results = topic_admin
        .admin
        .delete_topics(
            names,
            &AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT)),
        )
        .await
        .map_err(ctx("deleting topics"))?;
    Ok(results
        .into_iter()
        .map(|r| match r {
            Ok(name) => (name, Ok(true)),
            Err((name, RDKafkaErrorCode::UnknownTopicOrPartition)) => (name, Ok(false)),
            Err((name, code)) => (name, Err(code.to_string())),
        })
        .collect())
}

/// Questions about the pipeline's topics (partitions, configuration), asked
/// through one admin client: every client costs threads, connections and a
/// metadata fetch at start-up.
pub struct TopicAdmin {
    admin: Arc<AdminClient<DefaultClientContext>>,
    /// Who the cluster sees, to name in an authorization error.
    principal: String,
}

impl std::fmt::Debug for TopicAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicAdmin").finish_non_exhaustive()
    }
}

impl TopicAdmin {
    pub fn new(conn: &Connection) -> Result<Self> {
        let mut config = conn.config(&[]);
        // After the -X properties, so none turns it back on. An admin client is a
        // producer-type client, for which librdkafka asks the broker to create a
        // topic its metadata request names; on a Kafka with
        // auto.create.topics.enable (the default) a mistyped --input-topic would
        // become a new one-partition topic instead of a refusal.
        config.set("allow.auto.create.topics", "false");
        Ok(TopicAdmin {
            admin: Arc::new(config.create().map_err(ctx("creating admin client"))?),
            principal: conn.principal(),
        })
    }

    /// `read` of the cluster's metadata (of `topic`, else of every topic), off
    /// the async runtime: the request blocks.
    async fn metadata<T: Send + 'static>(
        &self,
        topic: Option<&str>,
        read: impl FnOnce(&rdkafka::metadata::Metadata) -> T + Send + 'static,
    ) -> Result<T> {
        let (admin, topic) = (Arc::clone(&self.admin), topic.map(str::to_string));
        tokio::task::spawn_blocking(move || {
            let what = match &topic {
                Some(t) => format!("reading the metadata of {t}"),
                None => "reading the cluster's metadata".to_string(),
            };
            let m = admin
                .inner()
                .fetch_metadata(topic.as_deref(), CALL_TIMEOUT)
                .map_err(ctx(what))?;
            Ok(read(&m))
        })
        .await
        .expect("metadata task panicked")
    }

    /// How many brokers the cluster has.
    pub async fn broker_count(&self) -> Result<usize> {
        self.metadata(None, |m| m.brokers().len()).await
    }

    /// The leader (broker id) of each partition of `topic`; -1 while a
    /// partition has none.
    pub async fn leaders(&self, topic: &str) -> Result<BTreeMap<i32, i32>> {
        self.metadata(Some(topic), |m| {
            m.topics()
                .iter()
                .flat_map(|t| t.partitions())
                .map(|p| (p.id(), p.leader()))
                .collect()
        })
        .await
    }

    /// How many partitions of `topics` have fewer replicas in sync than
    /// assigned: an operator's rolling restart waits for none before it stops
    /// the next broker.
    pub async fn under_replicated(&self, topics: &[&str]) -> Result<usize> {
        let mut n = 0;
        for t in topics {
            n += self
                .metadata(Some(t), |m| {
                    m.topics()
                        .iter()
                        .flat_map(|mt| mt.partitions())
                        .filter(|p| p.isr().len() < p.replicas().len())
                        .count()
                })
                .await?;
        }
        Ok(n)
    }

    /// The broker that coordinates `key` (see [`coordinator_partition`]):
    /// `internal_topic` is `__consumer_offsets` for a group id,
    /// `__transaction_state` for a transactional.id. `None` until the internal
    /// topic exists (the first group or transaction creates it).
    pub async fn coordinator(&self, internal_topic: &str, key: &str) -> Result<Option<i32>> {
        let leaders = self.leaders(internal_topic).await?;
        let p = coordinator_partition(key, leaders.len() as i32);
        Ok(leaders.get(&p).copied().filter(|l| *l >= 0))
    }

    /// For each topic, what makes it fragile on this cluster (see
    /// [`fragility`]): for the warnings of `tally run` at start.
    pub async fn fragile_topics(&self, topics: &[&str]) -> Result<Vec<String>> {
        let mut layout = Vec::new();
        for t in topics {
            // The brokers named, and the fewest replicas of any partition.
            let (brokers, replicas) = self
                .metadata(Some(t), |m| {
                    let replicas = m
                        .topics()
                        .iter()
                        .flat_map(|mt| mt.partitions())
                        .map(|p| p.replicas().len())
                        .min()
                        .unwrap_or(0);
                    (m.brokers().len(), replicas)
                })
                .await?;
            layout.push((t, brokers, replicas));
        }
        let min_insync = self.config_entry(topics, "min.insync.replicas").await?;
        Ok(layout
            .iter()
            .zip(min_insync)
            .filter_map(|((t, brokers, replicas), isr)| {
                fragility(t, *brokers, *replicas, isr.and_then(|v| v.parse().ok()))
            })
            .collect())
    }

    /// The topic's partitions; an error when it does not exist. The metadata
    /// request blocks, so it runs off the async runtime.
    async fn partitions(&self, topic: &str) -> Result<Vec<i32>> {
        let (admin, topic) = (Arc::clone(&self.admin), topic.to_string());
        tokio::task::spawn_blocking(move || partitions(admin.inner(), &topic))
            .await
            .expect("metadata task panicked")
            .map_err(|e| e.for_principal(&self.principal))
    }

    /// One configuration entry of each topic, in order (`None`: the topic or the
    /// entry could not be read, e.g. DescribeConfigs is not authorised).
    async fn config_entry(&self, topics: &[&str], key: &str) -> Result<Vec<Option<String>>> {
        let specs: Vec<ResourceSpecifier<'_>> =
            topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
        let results = self
            .admin
            .describe_configs(
                specs.iter(),
                &AdminOptions::new().request_timeout(Some(CALL_TIMEOUT)),
            )
            .await
            .map_err(ctx(format!(
                "describing the configuration of {}",
                topics.join(", ")
            )))?;
        Ok(results
            .into_iter()
            .map(|r| r.ok()?.get(key)?.value.clone())
            .collect())
    }

    /// Each topic's `max.message.bytes` as the broker reports it (`None`: not
    /// readable, see [`Self::config_entry`]).
    pub async fn max_message_bytes(&self, topics: &[&str]) -> Result<Vec<Option<usize>>> {
        Ok(self
            .config_entry(topics, "max.message.bytes")
            .await?
            .into_iter()
            .map(|v| v?.parse().ok())
            .collect())
    }

    /// Checks that the topics exist. For the ones `run` only produces to: a
    /// producer asks the broker to create a topic it does not know, so on a Kafka
    /// with auto.create.topics.enable a mistyped --output-topic or --dlq-topic
    /// would become a new topic with the broker's defaults (one partition, a
    /// 1 MiB limit) instead of a refusal.
    /// `operation`: what the caller will do on them (`Write`), named if the
    /// principal may not even describe one.
    pub async fn require_topics(&self, topics: &[&str], operation: &'static str) -> Result<()> {
        for topic in topics {
            self.partitions(topic)
                .await
                .map_err(|e| e.needing(operation))?;
        }
        Ok(())
    }

    /// Checks that the insights topic can serve as the aggregates' changelog: as
    /// many partitions as the input (input partition p's snapshots go to insights
    /// partition p, and a restore reads only that partition's tail) and compacted
    /// (the latest snapshot per partition outlives any retention). Returns the
    /// insights topic's partition count.
    pub async fn check_insights_topic(&self, input: &str, insights: &str) -> Result<usize> {
        let (ni, ns) = (
            self.partitions(input)
                .await
                .map_err(|e| e.needing("Read"))?
                .len(),
            self.partitions(insights)
                .await
                .map_err(|e| e.needing("Write"))?
                .len(),
        );
        if ni != ns {
            return Err(Error::Other(format!(
                "insights topic {insights} has {ns} partitions but the input {input} has {ni}: \
                 snapshots of input partition p are written to insights partition p, so both \
                 need the same number; recreate {insights} with {ni} partitions \
                 (`tally create-topics` creates it so) or name another one with --insights-topic"
            )));
        }
        let policy = self
            .config_entry(&[insights], "cleanup.policy")
            .await?
            .into_iter()
            .next()
            .flatten();
        match policy {
            Some(p) => match insights_policy_problem(&p) {
                None => Ok(ns),
                Some(why) => Err(Error::Other(format!(
                    "insights topic {insights} has cleanup.policy={p}: {why}; set \
                     cleanup.policy=compact (`tally create-topics` creates it so)"
                ))),
            },
            None => {
                tracing::warn!(
                    topic = insights,
                    "could not read the insights topic's cleanup.policy; make sure it is compact"
                );
                Ok(ns)
            }
        }
    }
}

/// Why an insights topic with this `cleanup.policy` cannot keep the snapshots
/// restores need (`None`: it can). Only `compact` alone keeps the latest
/// snapshot of every partition forever: with `delete` among the policies
/// (`compact,delete`), retention deletes a partition's latest snapshot once it is
/// older than `retention.ms`, and an idle partition's restore then has nothing.
pub fn insights_policy_problem(policy: &str) -> Option<String> {
    let policies: Vec<&str> = policy
        .trim_matches(|c: char| c == '[' || c == ']' || c.is_whitespace())
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if policies.contains(&"delete") {
        Some(
            "the `delete` policy lets retention delete the latest snapshots that state is \
             restored from (a partition idle for longer than retention.ms loses its only one)"
                .into(),
        )
    } else if policies != ["compact"] {
        Some("not compacted, the snapshots that state is restored from would not be kept".into())
    } else {
        None
    }
}

/// Deletes every record of `topic`'s partitions below the given offsets (what
/// retention does), one partition per request. For drills and tests.
pub async fn delete_records(
    conn: &Connection,
    topic: &str,
    below: &BTreeMap<i32, i64>,
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = conn
        .config(&[])
        .create()
        .map_err(ctx("creating admin client"))?;
    for (p, o) in below {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .expect("valid offset");
        let res = admin
            .delete_records(
                &tpl,
                &AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT)),
            )
            .await
            .map_err(ctx(format!("deleting records of {topic}/{p} below {o}")))?;
        for e in res.elements() {
            e.error()
                .map_err(ctx(format!("deleting records of {topic}/{p} below {o}")))?;
        }
    }
    Ok(())
}

/// Group administration: state, committed offsets and offset resets.
pub struct GroupAdmin {
    consumer: BaseConsumer,
    group: String,
}

impl std::fmt::Debug for GroupAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupAdmin")
            .field("group", &self.group)
            .finish()
    }
}

/// A group as the coordinator describes it.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub state: String,
    pub members: Vec<String>,
}

impl GroupAdmin {
    pub fn new(conn: &Connection, group: &str) -> Result<Self> {
        let mut config = conn.config(&[]);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            // The offsets a group has committed, without waiting for those of a
            // transaction still open: read_committed (librdkafka's default) asks
            // for stable offsets, and Kafka answers UNSTABLE_OFFSET_COMMIT until
            // that transaction ends, which for a crashed member's takes up to its
            // transaction.timeout.ms. Restores do wait (`GroupConsumer::committed`):
            // they must start after a previous owner's last commit.
            .set("isolation.level", "read_uncommitted");
        Ok(GroupAdmin {
            consumer: config
                .create()
                .map_err(ctx("creating group admin client"))?,
            group: group.to_string(),
        })
    }

    pub fn describe(&self) -> Result<GroupDescription> {
        let list = self
            .consumer
            .fetch_group_list(Some(&self.group), CALL_TIMEOUT)
            .map_err(ctx(format!("describing group {}", self.group)))?;
        let g = list.groups().iter().find(|g| g.name() == self.group);
        Ok(GroupDescription {
            state: g
                .map(|g| g.state().to_string())
                .unwrap_or_else(|| "Dead".into()),
            members: g
                .map(|g| {
                    g.members()
                        .iter()
                        .map(|m| m.client_id().to_string())
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    pub fn partitions(&self, topic: &str) -> Result<Vec<i32>> {
        partitions(self.consumer.client(), topic)
    }

    /// Committed offsets of `topic` by partition (absent: no commit).
    pub fn committed(&self, topic: &str) -> Result<BTreeMap<i32, i64>> {
        self.committed_of(topic, &self.partitions(topic)?)
    }

    /// Like [`Self::committed`], for known partitions: no metadata request.
    /// A coordinator that moved, is loading or did not answer in time is asked
    /// again (librdkafka returns these to the caller of an offset fetch) until
    /// [`CALL_TIMEOUT`] has passed.
    pub fn committed_of(&self, topic: &str, partitions: &[i32]) -> Result<BTreeMap<i32, i64>> {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(topic, *p);
        }
        let deadline = Instant::now() + CALL_TIMEOUT;
        let got = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.consumer.committed_offsets(tpl.clone(), left) {
                Err(e)
                    if e.rdkafka_error_code().is_some_and(coordinator_busy)
                        && left > Duration::from_millis(500) =>
                {
                    tracing::debug!(error = %e, group = %self.group, "offset fetch: the coordinator is busy; asking again");
                    std::thread::sleep(Duration::from_millis(250));
                }
                res => {
                    break res.map_err(ctx(format!(
                        "reading committed offsets of group {}",
                        self.group
                    )))?;
                }
            }
        };
        // A partition's error is an error, never "not committed" (see
        // `GroupConsumer::committed`).
        let mut out = BTreeMap::new();
        for e in got.elements() {
            e.error().map_err(ctx(format!(
                "reading the committed offset of group {} on {topic}/{}",
                self.group,
                e.partition()
            )))?;
            if let Offset::Offset(o) = e.offset() {
                out.insert(e.partition(), o);
            }
        }
        Ok(out)
    }

    /// First offset of each partition whose record timestamp is at or after `ms`
    /// (the high watermark when there is none).
    pub fn offsets_for_time(&self, topic: &str, ms: i64) -> Result<BTreeMap<i32, i64>> {
        let mut tpl = TopicPartitionList::new();
        for p in self.partitions(topic)? {
            tpl.add_partition_offset(topic, p, Offset::Offset(ms))
                .expect("valid offset");
        }
        let got = self
            .consumer
            .offsets_for_times(tpl, CALL_TIMEOUT)
            .map_err(ctx("looking up offsets for a time"))?;
        let mut out = BTreeMap::new();
        for e in got.elements() {
            let o = match e.offset() {
                Offset::Offset(o) => o,
                _ => self.watermarks(topic, e.partition())?.1,
            };
            out.insert(e.partition(), o);
        }
        Ok(out)
    }

    pub fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64)> {
        self.consumer
            .fetch_watermarks(topic, partition, CALL_TIMEOUT)
            .map_err(ctx(format!("reading watermarks of {topic}/{partition}")))
    }

    /// Overwrites the group's committed offsets (the group must have no members).
    pub fn commit(&self, topic: &str, offsets: &BTreeMap<i32, i64>) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
                .expect("valid offset");
        }
        self.consumer
            .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
            .map_err(ctx(format!("committing offsets for group {}", self.group)))
    }
}

/// Errors of a group coordinator that moved, is loading its offsets, or did
/// not answer in time: the same request succeeds once it is back.
fn coordinator_busy(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::NotCoordinator
            | RDKafkaErrorCode::CoordinatorLoadInProgress
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::OperationTimedOut
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn coordinator_partitions_follow_javas_string_hash() {
        use super::coordinator_partition;
        // Expected values printed by Java's `String.hashCode` and Kafka's rule.
        for (key, of50, of6) in [
            ("hello", 22, 4),
            ("polygenelubricants", 0, 0), // hashCode is i32::MIN
            ("tally-drill-1-x", 17, 3),
            ("grüße-😀", 27, 1),   // UTF-16 units, a surrogate pair
            ("zzzzzzzzzz", 36, 4), // a negative hash
        ] {
            assert_eq!(coordinator_partition(key, 50), of50, "{key}");
            assert_eq!(coordinator_partition(key, 6), of6, "{key}");
        }
    }

    #[test]
    fn one_replica_on_a_cluster_or_one_in_sync_of_three_is_fragile() {
        use super::fragility;
        assert_eq!(
            fragility("t", 1, 1, None),
            None,
            "a one-broker cluster has no choice"
        );
        assert!(
            fragility("t", 3, 1, None)
                .unwrap()
                .contains("replication factor 1 on a cluster of 3")
        );
        assert_eq!(fragility("t", 3, 3, Some(2)), None);
        assert_eq!(
            fragility("t", 3, 2, Some(1)),
            None,
            "two replicas cannot ask for two in sync and survive one death"
        );
        assert!(
            fragility("t", 3, 3, Some(1))
                .unwrap()
                .contains("min.insync.replicas 1")
        );
        assert_eq!(fragility("t", 3, 3, None), None, "not readable: no guess");
    }

    #[test]
    fn new_topics_get_three_replicas_two_in_sync_where_the_cluster_has_them() {
        use super::replication_for;
        assert_eq!(replication_for(1, None), (1, None));
        assert_eq!(replication_for(2, None), (2, None));
        assert_eq!(replication_for(3, None), (3, Some(2)));
        assert_eq!(replication_for(5, None), (3, Some(2)));
        assert_eq!(replication_for(0, None), (1, None));
        // Asked for: as asked.
        assert_eq!(replication_for(5, Some(1)), (1, None));
        assert_eq!(replication_for(5, Some(5)), (5, Some(2)));
    }

    #[test]
    fn only_compact_alone_keeps_the_snapshots() {
        for ok in ["compact", " compact ", "[compact]"] {
            assert_eq!(super::insights_policy_problem(ok), None, "{ok}");
        }
        for with_delete in [
            "compact,delete",
            "delete,compact",
            "compact, delete",
            "delete",
        ] {
            let why = super::insights_policy_problem(with_delete).expect(with_delete);
            assert!(why.contains("`delete` policy"), "{with_delete}: {why}");
        }
        for other in ["", "something"] {
            assert!(super::insights_policy_problem(other).is_some(), "{other}");
        }
    }
}
