//! What every client shares: bootstrap servers and `-X` passthrough, the
//! defaults tally sets, the one conversion of an rdkafka message into our own
//! type, and the error type of this module.

use std::time::Duration;

use rdkafka::client::{Client, ClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::model::InputRecord;

/// How long one blocking Kafka call (commit, seek, metadata...) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Defaults of every consumer: what librdkafka may hold of fetched but not yet
/// processed data has a ceiling whatever the records' sizes (1 MiB malformed
/// payloads are expected input; librdkafka's own default queue is 64 MiB).
/// - `queued.max.messages.kbytes` 8 MiB: the prefetch queue, for all partitions
///   of the consumer together;
/// - `queued.min.messages` 10,000: prefetch stops earlier for small records;
/// - `fetch.max.bytes` 4 MiB and `max.partition.fetch.bytes` 1 MiB per fetch
///   response (a broker still returns a first record larger than these, so an
///   oversized record never blocks a partition);
/// - `fetch.queue.backoff.ms` 50: when the queue is over those limits librdkafka
///   stops fetching a partition for this long (default 1 s). With queues this
///   small a backlog fills them in a fraction of a second, so the default would
///   idle the consumer for most of a backlog's drain.
const CONSUMER_DEFAULTS: [(&str, &str); 5] = [
    ("queued.max.messages.kbytes", "8192"),
    ("queued.min.messages", "10000"),
    ("fetch.queue.backoff.ms", "50"),
    ("fetch.max.bytes", "4194304"),
    ("max.partition.fetch.bytes", "1048576"),
];

/// Properties tally sets itself because correctness depends on them; `-X` may not
/// override them.
const MANAGED: &[&str] = &[
    "enable.auto.commit",
    "isolation.level",
    "transactional.id",
    "group.id",
    "group.instance.id",
    "enable.idempotence",
    "bootstrap.servers",
    // Its alias: it would point the clients somewhere else than the flag says.
    "metadata.broker.list",
    // The zombie guard, the commit hold and the transaction-timeout rule all
    // reckon with `--session-timeout`; a different value in librdkafka would let
    // a member paused past the real session commit after its partitions moved.
    "session.timeout.ms",
    // tally polls continuously (restores run beside the loop); a shorter value
    // would expel a member whose commit waits on a slow broker.
    "max.poll.interval.ms",
];

/// Properties that would change a guarantee of `tally run`; `-X` may not set them,
/// whatever the value. Each with the reason given to the user.
const REFUSED: &[(&str, &str)] = &[
    (
        "partition.assignment.strategy",
        "tally uses eager assignment (range): every revocation closes the one open \
         transaction; cooperative assignment is not proven by the recovery drill \
         (docs/design.md, \"Rebalancing\")",
    ),
    (
        "group.protocol",
        "tally relies on the classic group protocol's eager rebalances (the consumer \
         protocol of KIP-848 is incremental)",
    ),
    (
        "auto.offset.reset",
        "a partition without a committed offset must start at its earliest record, \
         or records would be skipped",
    ),
    (
        "enable.auto.offset.store",
        "offsets are committed only inside the transaction",
    ),
];

/// `transaction.timeout.ms` of the transactional producer unless `-X` sets it.
pub(super) const TRANSACTION_TIMEOUT_MS: u64 = 60_000;

/// Time a transaction needs beyond the commit interval (and a commit hold) to
/// produce its snapshots and commit: one bounded call's worth, since a full
/// producer queue and `send_offsets_to_transaction` may each wait that long. A
/// smaller margin lets a slow broker time the transaction out on its side,
/// which surfaces as an epoch error mid-commit.
const TRANSACTION_MARGIN: Duration = CALL_TIMEOUT;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Kafka {
        what: String,
        #[source]
        source: KafkaError,
    },
    /// The group coordinator or the transaction coordinator fenced us.
    #[error("fenced: {0}")]
    Fenced(String),
    /// A setting is wrong: no retry can help.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The cluster refused an operation: an ACL is missing. Permanent until an
    /// operator grants it, so never retried.
    #[error(
        "not authorized: {principal} may not {operation} {resource} {name} ({detail}); grant it \
         with kafka-acls --add --allow-principal {principal} --operation {operation} \
         --{resource} {name}{pattern} (the ACLs each tally command needs: docs/operations.md, \
         \"A secured cluster\")"
    )]
    NotAuthorized {
        principal: String,
        operation: &'static str,
        resource: &'static str,
        name: String,
        /// ` --resource-pattern-type prefixed` for a prefix, else empty.
        pattern: &'static str,
        detail: String,
    },
    /// The cluster answered, but not as needed (a topic missing, a fatal client
    /// error); the message says which.
    #[error("{0}")]
    Other(String),
}

/// A librdkafka property or a setting tally checks against them is wrong:
/// found before anything is sent, never retried; the user changes the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("-X {0}: this property is managed by tally (use the dedicated flag, if any)")]
    Managed(String),
    #[error("-X {key} is refused: {why}")]
    Refused { key: String, why: &'static str },
    #[error("-X transaction.timeout.ms={0}: not a whole number of milliseconds")]
    TransactionTimeoutNotANumber(String),
    #[error(
        "--commit-interval {commit_ms} ms does not fit inside transaction.timeout.ms {timeout_ms}: \
         a transaction stays open for the commit interval, plus the session timeout \
         ({session_ms} ms) while commits are held after a pause, plus {margin_ms} ms to \
         commit; lower --commit-interval or raise -X transaction.timeout.ms to at least {needed_ms}"
    )]
    TransactionTimeout {
        commit_ms: u128,
        timeout_ms: u64,
        session_ms: u128,
        margin_ms: u128,
        needed_ms: u128,
    },
    /// librdkafka refused a property. Its own error is not kept: its `Display`
    /// ends with the property's value, which may be a secret (a misspelt
    /// `sasl.pasword=...`).
    #[error("{what}: librdkafka property {key:?}: {desc} (its value is not shown)")]
    Property {
        what: String,
        key: String,
        desc: String,
    },
}

/// What the cluster refused: the kind of resource of an authorization error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// A topic, when librdkafka named it.
    Topic(Option<String>),
    Group,
    TransactionalId,
    Cluster,
}

impl Denied {
    /// `None` for an error that is no authorization failure.
    pub(super) fn of(code: RDKafkaErrorCode, topic: Option<&str>) -> Option<Denied> {
        match code {
            RDKafkaErrorCode::TopicAuthorizationFailed => {
                Some(Denied::Topic(topic.map(str::to_string)))
            }
            RDKafkaErrorCode::GroupAuthorizationFailed => Some(Denied::Group),
            RDKafkaErrorCode::TransactionalIdAuthorizationFailed => Some(Denied::TransactionalId),
            RDKafkaErrorCode::ClusterAuthorizationFailed => Some(Denied::Cluster),
            _ => None,
        }
    }
}

/// Whether an error code is an authorization failure.
pub(super) fn denied_resource(code: RDKafkaErrorCode) -> Option<Denied> {
    Denied::of(code, None)
}

/// The names an authorization error is explained with.
#[derive(Debug, Clone)]
pub struct AclNames {
    pub principal: String,
    pub group: String,
    pub transactional_id_prefix: String,
    /// The topic read.
    pub input: String,
    /// The topics written.
    pub outputs: Vec<String>,
}

impl AclNames {
    /// The ACL that is missing: Read on the input topic and the group, Write on
    /// the topics written and on the transactional ids (a prefix). A topic
    /// librdkafka did not name is looked for in `detail` (its error text).
    pub fn not_authorized(&self, denied: Denied, detail: String) -> Error {
        let named = |t: &String| detail.contains(t.as_str());
        let (operation, resource, name, pattern) = match denied {
            Denied::Topic(Some(t)) if t == self.input => ("Read", "topic", t, ""),
            Denied::Topic(Some(t)) => ("Write", "topic", t, ""),
            Denied::Topic(None) => match self.outputs.iter().find(|t| named(t)) {
                Some(t) => ("Write", "topic", t.clone(), ""),
                None if named(&self.input) => ("Read", "topic", self.input.clone(), ""),
                // librdkafka did not say which: the topics written, as one
                // `kafka-acls` line.
                None => ("Write", "topic", self.outputs.join(" --topic "), ""),
            },
            Denied::Group => ("Read", "group", self.group.clone(), ""),
            Denied::TransactionalId => (
                "Write",
                "transactional-id",
                format!("{}-", self.transactional_id_prefix),
                " --resource-pattern-type prefixed",
            ),
            Denied::Cluster => ("IdempotentWrite", "cluster", String::new(), ""),
        };
        Error::NotAuthorized {
            principal: self.principal.clone(),
            operation,
            resource,
            name,
            pattern,
            detail,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(super) fn ctx(what: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
    let what = what.into();
    move |source| match source {
        KafkaError::ClientConfig(_, desc, key, _) => {
            Error::Config(ConfigError::Property { what, key, desc })
        }
        source => Error::Kafka { what, source },
    }
}

/// Connection settings shared by every client: bootstrap servers and `-X` passthrough.
#[derive(Clone)]
pub struct Connection {
    pub bootstrap: String,
    pub properties: Vec<(String, String)>,
}

/// Secret values never reach a log line, an error or a panic through `{:?}`.
impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("bootstrap", &self.bootstrap)
            .field("properties", &Redacted(&self.properties))
            .finish()
    }
}

/// Properties shown as `key=value`, with the value of a secret key hidden.
pub struct Redacted<'a>(pub &'a [(String, String)]);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, v)| {
                if is_secret(k) {
                    format!("{k}=<redacted>")
                } else {
                    format!("{k}={v}")
                }
            }))
            .finish()
    }
}

/// Whether a librdkafka property holds a secret (passwords, keys, JAAS and
/// OAuth configurations, tokens): the properties librdkafka itself redacts, and
/// any key that says so.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "passphrase",
        "secret",
        "jaas",
        "oauthbearer.config",
        "key.pem",
        "token",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Parses a librdkafka properties file: `key=value` lines as kcat's `-F`
/// reads them; blank lines and lines starting with `#` are skipped, the key
/// and the value are trimmed. An error names the line by number only: the
/// line may hold a secret.
pub fn parse_properties(text: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.push((k.trim().to_string(), v.trim().to_string()))
            }
            _ => return Err(format!("line {} is not key=value", i + 1)),
        }
    }
    Ok(out)
}

/// The principal of a client that has no SASL user: TLS or the listener
/// decides it.
pub(super) const UNKNOWN_PRINCIPAL: &str = "User:<this client's principal>";

impl Error {
    /// Whether the cluster refused for want of an ACL: no retry can help.
    pub fn is_not_authorized(&self) -> bool {
        match self {
            Error::NotAuthorized { .. } => true,
            Error::Kafka { source, .. } => source
                .rdkafka_error_code()
                .and_then(denied_resource)
                .is_some(),
            _ => false,
        }
    }

    /// A refused Describe of a resource the caller needs for `operation` (which
    /// includes Describe): the ACL to grant is that one.
    pub(super) fn needing(mut self, needed: &'static str) -> Error {
        if let Error::NotAuthorized { operation, .. } = &mut self {
            if *operation == "Describe" {
                *operation = needed;
            }
        }
        self
    }

    /// A [`Error::NotAuthorized`] with the principal named, when it was unknown.
    pub(super) fn for_principal(mut self, who: &str) -> Error {
        if let Error::NotAuthorized { principal, .. } = &mut self {
            if principal == UNKNOWN_PRINCIPAL {
                *principal = who.to_string();
            }
        }
        self
    }
}

impl Connection {
    /// The principal the cluster sees, as `kafka-acls` names it: the SASL
    /// user when one is set, else what TLS or the listener makes of the client.
    pub fn principal(&self) -> String {
        self.properties
            .iter()
            .rev()
            .find(|(k, _)| k == "sasl.username")
            .map_or_else(
                || UNKNOWN_PRINCIPAL.to_string(),
                |(_, v)| format!("User:{v}"),
            )
    }

    /// Rejects, before `tally run` connects, `-X` properties that would break its
    /// guarantees, and a commit interval the transaction timeout cannot hold:
    /// the broker would abort every transaction before it could commit.
    pub fn validate(
        &self,
        commit_interval: Duration,
        session_timeout: Duration,
    ) -> Result<(), ConfigError> {
        let mut timeout_ms = TRANSACTION_TIMEOUT_MS;
        for (k, v) in &self.properties {
            if MANAGED.iter().any(|m| same_property(k, m)) {
                return Err(ConfigError::Managed(k.clone()));
            }
            if let Some((_, why)) = REFUSED.iter().find(|(r, _)| same_property(k, r)) {
                return Err(ConfigError::Refused {
                    key: k.clone(),
                    why,
                });
            }
            if k == "transaction.timeout.ms" {
                timeout_ms = v
                    .trim()
                    .parse()
                    .map_err(|_| ConfigError::TransactionTimeoutNotANumber(v.clone()))?;
            }
        }
        let needed = commit_interval + session_timeout + TRANSACTION_MARGIN;
        if needed > Duration::from_millis(timeout_ms) {
            return Err(ConfigError::TransactionTimeout {
                commit_ms: commit_interval.as_millis(),
                timeout_ms,
                session_ms: session_timeout.as_millis(),
                margin_ms: TRANSACTION_MARGIN.as_millis(),
                needed_ms: needed.as_millis(),
            });
        }
        Ok(())
    }

    /// Like [`Connection::config`], for a consumer: [`CONSUMER_DEFAULTS`] first.
    pub(super) fn consumer_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let all: Vec<(&str, &str)> = CONSUMER_DEFAULTS.iter().chain(defaults).copied().collect();
        self.config(&all)
    }

    /// tally's defaults, then the user's `-X` properties on top. A default the
    /// user set under another of librdkafka's names for it (`compression.type`
    /// for `compression.codec`) is left out: librdkafka applies the properties
    /// in no set order, so both would leave either value.
    pub(super) fn config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in defaults {
            if !self
                .properties
                .iter()
                .any(|(user, _)| same_property(user, k))
            {
                c.set(*k, *v);
            }
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// librdkafka's aliases among the properties tally sets or guards
/// (`CONFIGURATION.md`: "alias for").
const ALIASES: &[[&str; 2]] = &[
    ["compression.codec", "compression.type"],
    ["linger.ms", "queue.buffering.max.ms"],
    ["bootstrap.servers", "metadata.broker.list"],
    ["max.partition.fetch.bytes", "fetch.message.max.bytes"],
];

/// Whether `a` and `b` name the same librdkafka property. librdkafka also takes
/// a topic property with a `topic.` prefix on the client's configuration
/// (`topic.auto.offset.reset`), so the prefix does not make another name.
fn same_property(a: &str, b: &str) -> bool {
    let (a, b) = (unprefixed(a), unprefixed(b));
    a == b || ALIASES.iter().any(|p| p.contains(&a) && p.contains(&b))
}

fn unprefixed(key: &str) -> &str {
    key.strip_prefix("topic.").unwrap_or(key)
}

/// A client context that keeps librdkafka quiet: the probe reports failure
/// itself, once, instead of librdkafka's error line per connection attempt.
/// It keeps the first error librdkafka reported, which says why (a failed SASL
/// authentication, a TLS handshake with an untrusted certificate), where the
/// metadata request's own error only says that no broker answered.
#[derive(Default)]
struct QuietContext {
    last: std::sync::Mutex<Option<String>>,
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, _fac: &str, log_message: &str) {
        // A failed authentication or TLS handshake is logged as an error; logs
        // and error events are served by the probe's polls.
        if (level as i32) <= (RDKafkaLogLevel::Error as i32) {
            self.last
                .lock()
                .expect("not poisoned")
                .get_or_insert_with(|| log_message.to_string());
        }
    }
    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka's texts hold no secret: a failed authentication names the
        // mechanism, never the password.
        self.last
            .lock()
            .expect("not poisoned")
            .get_or_insert_with(|| format!("{error}: {reason}"));
    }
}

impl ConsumerContext for QuietContext {}

impl Connection {
    /// Asks the cluster for its metadata within `timeout`: `Ok` once a broker
    /// answered. Says nothing on failure but the error it returns.
    pub fn probe(&self, timeout: Duration) -> Result<()> {
        let consumer: BaseConsumer<QuietContext> = self
            // No group.id, as for a reader: its drop is then immediate, not
            // held 100 ms by the group's teardown.
            .config(&[("log.connection.close", "false")])
            .create_with_context(QuietContext::default())
            .map_err(ctx("creating a client"))?;
        consumer
            .fetch_metadata(None, timeout)
            .map(|_| ())
            .map_err(|e| {
                // Serves the events librdkafka queued meanwhile (its errors and
                // logs), which say why.
                for _ in 0..3 {
                    let _ = consumer.poll(Duration::from_millis(10));
                }
                let why = consumer.context().last.lock().expect("not poisoned").take();
                let what = match why {
                    Some(why) => format!("reaching the cluster at {} ({why})", self.bootstrap),
                    None => format!("reaching the cluster at {}", self.bootstrap),
                };
                ctx(what)(e)
            })
    }
}

impl From<&BorrowedMessage<'_>> for InputRecord {
    fn from(m: &BorrowedMessage<'_>) -> Self {
        InputRecord {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
        }
    }
}

pub(super) fn headers_of(m: &BorrowedMessage<'_>) -> Vec<(String, Vec<u8>)> {
    m.headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

/// True when the error means another process took over our identity.
pub(super) fn is_fenced_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::FencedInstanceId
    )
}

/// The topic's partitions, sorted. Asking about a missing topic may create it
/// unless `client` has `allow.auto.create.topics` off: consumers have it off by
/// default, producer-type clients (admin clients too) on; see `TopicAdmin::new`.
pub(super) fn partitions<C: ClientContext>(client: &Client<C>, topic: &str) -> Result<Vec<i32>> {
    let md = client
        .fetch_metadata(Some(topic), CALL_TIMEOUT)
        .map_err(ctx(format!("reading metadata of {topic}")))?;
    let t = md
        .topics()
        .first()
        .ok_or_else(|| Error::Other(format!("topic {topic} not in metadata")))?;
    if let Some(e) = t.error() {
        let code = RDKafkaErrorCode::from(e);
        if denied_resource(code).is_some() {
            return Err(Error::NotAuthorized {
                principal: UNKNOWN_PRINCIPAL.into(),
                operation: "Describe",
                resource: "topic",
                name: topic.to_string(),
                pattern: "",
                detail: format!("{code:?}: it may not even describe the topic"),
            });
        }
        return Err(Error::Other(format!(
            "topic {topic}: {code:?} (does it exist? `tally create-topics` creates it)"
        )));
    }
    let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ps.sort_unstable();
    if ps.is_empty() {
        return Err(Error::Other(format!(
            "topic {topic} does not exist; `tally create-topics` creates it"
        )));
    }
    Ok(ps)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: Duration = Duration::from_millis(100);
    const SESSION: Duration = Duration::from_secs(10);

    #[test]
    fn a_properties_file_reads_like_kcats() {
        let text = "# comment\n\nsecurity.protocol=SASL_SSL\n  sasl.password = p=w#d \r\n";
        assert_eq!(
            parse_properties(text).unwrap(),
            vec![
                ("security.protocol".to_string(), "SASL_SSL".to_string()),
                ("sasl.password".to_string(), "p=w#d".to_string()),
            ]
        );
        let e = parse_properties("a=b\nhunter2\n").unwrap_err();
        assert_eq!(e, "line 2 is not key=value");
        assert!(parse_properties("=x").is_err());
    }

    #[test]
    fn debug_output_hides_secret_values() {
        let c = with(&[
            ("sasl.password", "hunter2"),
            ("ssl.key.password", "hunter3"),
            ("sasl.oauthbearer.config", "principal=x secret=hunter4"),
            ("security.protocol", "SASL_SSL"),
        ]);
        let shown = format!("{c:?}");
        for secret in ["hunter2", "hunter3", "hunter4"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("security.protocol=SASL_SSL"), "{shown}");
        assert!(shown.contains("sasl.password=<redacted>"), "{shown}");
    }

    #[test]
    fn a_property_set_under_an_alias_replaces_the_default() {
        let c = with(&[("compression.type", "zstd")])
            .config(&[("compression.codec", "lz4"), ("linger.ms", "20")]);
        assert_eq!(c.get("compression.codec"), None);
        assert_eq!(c.get("compression.type"), Some("zstd"));
        assert_eq!(c.get("linger.ms"), Some("20"));
        let c = with(&[("linger.ms", "5")]).config(&[("linger.ms", "20")]);
        assert_eq!(c.get("linger.ms"), Some("5"));
        let c = with(&[("topic.auto.offset.reset", "earliest")])
            .config(&[("auto.offset.reset", "earliest")]);
        assert_eq!(c.get("auto.offset.reset"), None);
    }

    #[test]
    fn a_guarded_property_is_refused_under_its_topic_prefix_or_alias() {
        for key in ["topic.auto.offset.reset", "auto.offset.reset"] {
            let e = with(&[(key, "latest")])
                .validate(COMMIT, SESSION)
                .unwrap_err();
            assert!(matches!(e, ConfigError::Refused { .. }), "{key}: {e:?}");
        }
        let e = with(&[("metadata.broker.list", "elsewhere:9092")])
            .validate(COMMIT, SESSION)
            .unwrap_err();
        assert!(matches!(e, ConfigError::Managed(_)), "{e:?}");
    }

    fn with(props: &[(&str, &str)]) -> Connection {
        Connection {
            bootstrap: "127.0.0.1:9092".into(),
            properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn properties_that_change_a_guarantee_are_refused_by_name() {
        for (key, value) in [
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("partition.assignment.strategy", "range"),
            ("group.protocol", "consumer"),
            ("auto.offset.reset", "latest"),
            ("isolation.level", "read_uncommitted"),
            ("enable.auto.offset.store", "true"),
        ] {
            let err = with(&[(key, value)])
                .validate(COMMIT, SESSION)
                .expect_err(key)
                .to_string();
            assert!(err.contains(&format!("-X {key}")), "{err}");
        }
    }

    #[test]
    fn properties_with_a_dedicated_flag_or_a_fixed_value_are_managed() {
        for key in [
            "session.timeout.ms",
            "max.poll.interval.ms",
            "metadata.broker.list",
            "transactional.id",
        ] {
            let err = with(&[(key, "6000")])
                .validate(COMMIT, SESSION)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("-X {key}")) && err.contains("managed"),
                "{err}"
            );
        }
    }

    #[test]
    fn harmless_properties_pass() {
        let c = with(&[
            ("security.protocol", "SASL_SSL"),
            ("transaction.timeout.ms", "900000"),
        ]);
        c.validate(COMMIT, SESSION).unwrap();
        with(&[]).validate(COMMIT, SESSION).unwrap();
    }

    #[test]
    fn transaction_timeout_must_hold_the_commit_interval() {
        // Default 60 s: 100 ms + the test's 10 s session + 30 s fits; 25 s
        // does not.
        let err = with(&[])
            .validate(Duration::from_secs(25), SESSION)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--commit-interval 25000 ms")
                && err.contains("transaction.timeout.ms 60000")
                && err.contains("at least 65000"),
            "{err}"
        );
        // Below the commit interval plus the margin.
        let err = with(&[("transaction.timeout.ms", "10000")])
            .validate(COMMIT, SESSION)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--commit-interval 100 ms")
                && err.contains("transaction.timeout.ms 10000"),
            "{err}"
        );
        with(&[("transaction.timeout.ms", "40100")])
            .validate(COMMIT, SESSION)
            .unwrap();
        with(&[("transaction.timeout.ms", "40099")])
            .validate(COMMIT, SESSION)
            .unwrap_err();
        let err = with(&[("transaction.timeout.ms", "soon")])
            .validate(COMMIT, SESSION)
            .unwrap_err()
            .to_string();
        assert!(err.contains("transaction.timeout.ms=soon"), "{err}");
    }
}
