//! `tally verify`'s own model of what tally must write for one input record.
//!
//! Written from the documented rules (README, docs/design.md, the reason codes of
//! the DLQ) and deliberately sharing no code with the pipeline's decision
//! (`event::process`, `dead_letter`, `transform`, `mask_ip`, `AppVersion`): a bug
//! there must not be repeated here and pass for correct. A property test checks
//! that the two agree on generated valid and malformed records.
//!
//! What the model keeps per record is compact (lengths and SHA-256 digests), so
//! a caller can record the expectations of input that retention is about to
//! delete and have them checked later.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::event::ProcessConfig;
use crate::kafka::ReadRecord;
use crate::model::{InputRecord, headers};

/// Bytes identified by their length and SHA-256: enough to recognise them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes {
    pub len: usize,
    pub sha256: [u8; 32],
}

impl Bytes {
    pub fn of(b: &[u8]) -> Bytes {
        Bytes {
            len: b.len(),
            sha256: Sha256::digest(b).into(),
        }
    }

    fn hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What becomes of an input record, as the documented rules decide it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// One record in the output topic: key `user_id`, this exact payload (sorted
    /// keys, compact), the input record's timestamp.
    Processed { key: Bytes, value: Bytes },
    /// Valid but filtered out: no output at all.
    Filtered,
    /// One DLQ entry with this reason code.
    DeadLetter { reason: &'static str },
}

/// The model's expectation of one input record: its fate, and the input's own
/// key, value and timestamp (a DLQ entry carries them, whatever the reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub fate: Fate,
    pub key: Option<Bytes>,
    /// A tombstone's DLQ entry has an empty value.
    pub value: Bytes,
    /// The value of its DLQ entry when that is masked (`--dlq-mask-ip` and a
    /// JSON object with an `ip`): the entry must then say `tally.masked: ip`.
    pub masked_value: Option<Bytes>,
    pub timestamp_ms: Option<i64>,
}

/// The reason codes of the DLQ's `tally.reason` header (docs/design.md).
pub mod reason {
    pub const NULL_VALUE: &str = "null_value";
    pub const EMPTY_VALUE: &str = "empty_value";
    pub const TOO_LARGE: &str = "too_large";
    pub const INVALID_UTF8: &str = "invalid_utf8";
    pub const INVALID_JSON: &str = "invalid_json";
    pub const NOT_AN_OBJECT: &str = "not_an_object";
    pub const MISSING_FIELD: &str = "missing_field";
    pub const NULL_FIELD: &str = "null_field";
    pub const WRONG_TYPE: &str = "wrong_type";
    pub const EMPTY_FIELD: &str = "empty_field";
    pub const BAD_TIMESTAMP: &str = "bad_timestamp";
    pub const NEGATIVE_TIMESTAMP: &str = "negative_timestamp";
    pub const FUTURE_TIMESTAMP: &str = "future_timestamp";
    pub const BAD_IP: &str = "bad_ip";
    pub const BAD_APP_VERSION: &str = "bad_app_version";
    /// Larger than the output topic accepts (decided from the record), or refused
    /// by the broker for this record alone (decided while producing).
    pub const UNPRODUCIBLE: &str = "unproducible";
    /// At the head of too many consecutive aborted transactions.
    pub const POISON: &str = "poison";

    /// Codes the broker's behaviour decides, not the record: the model cannot
    /// predict them, and an entry with one is reported on its own.
    pub fn at_runtime(code: &str) -> bool {
        code == UNPRODUCIBLE || code == POISON
    }
}

/// The fields every event must have, in the order their checks are made.
const STRING_FIELDS: [&str; 6] = [
    "user_id",
    "app_version",
    "device_type",
    "ip",
    "locale",
    "device_id",
];

/// Room a DLQ entry or processed record leaves for Kafka's own record overhead.
const KAFKA_OVERHEAD: usize = 1024;
/// A generous bound on the room every DLQ header can take (message cut to 512
/// bytes, source coordinates, sizes and digests): an entry whose key and value
/// fit the topic with this much to spare must not be cut.
const HEADER_ROOM: usize = 4096;
/// The `tally.message` header is cut to this many bytes.
const MAX_MESSAGE: usize = 512;
/// Latest event time accepted when a record has no timestamp: 2100-01-01T00:00:00Z.
const LATEST_WITHOUT_RECORD_TIME: i64 = 4_102_444_800;

/// A valid event, as the model reads it.
struct Event {
    object: Map<String, Value>,
    user_id: String,
    app_version: [u64; 4],
    device_type: String,
    timestamp: i64,
}

/// The model's expectation of `rec` under `cfg`.
pub fn expect(rec: &InputRecord, cfg: &ProcessConfig) -> Expected {
    let fate = match validate(rec, cfg) {
        Err(reason) => Fate::DeadLetter { reason },
        Ok(event) if filtered(&event, cfg) => Fate::Filtered,
        Ok(event) => {
            let key = event.user_id.clone().into_bytes();
            let value = processed_value(event, &cfg.input_topic, rec.partition, rec.offset);
            if KAFKA_OVERHEAD + key.len() + value.len() > cfg.output_limits.processed_max_bytes {
                Fate::DeadLetter {
                    reason: reason::UNPRODUCIBLE,
                }
            } else {
                Fate::Processed {
                    key: Bytes::of(&key),
                    value: Bytes::of(&value),
                }
            }
        }
    };
    Expected {
        fate,
        key: rec.key.as_deref().map(Bytes::of),
        value: Bytes::of(rec.value.as_deref().unwrap_or_default()),
        masked_value: rec
            .value
            .as_deref()
            .filter(|v| cfg.limits.dlq_mask_ip && v.len() <= cfg.limits.max_value_bytes)
            .and_then(ip_masked)
            .map(|v| Bytes::of(&v)),
        timestamp_ms: rec.timestamp_ms,
    }
}

fn validate(rec: &InputRecord, cfg: &ProcessConfig) -> Result<Event, &'static str> {
    use reason::*;
    let bytes = rec.value.as_deref().ok_or(NULL_VALUE)?;
    if bytes.is_empty() {
        return Err(EMPTY_VALUE);
    }
    if bytes.len() > cfg.limits.max_value_bytes {
        return Err(TOO_LARGE);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| INVALID_UTF8)?;
    let Value::Object(mut object) =
        serde_json::from_str::<Value>(text).map_err(|_| INVALID_JSON)?
    else {
        return Err(NOT_AN_OBJECT);
    };
    for field in STRING_FIELDS.iter().chain(&["timestamp"]) {
        match object.get(*field) {
            None => return Err(MISSING_FIELD),
            Some(Value::Null) => return Err(NULL_FIELD),
            Some(_) => {}
        }
    }
    let mut strings = Vec::with_capacity(STRING_FIELDS.len());
    for field in STRING_FIELDS {
        match &object[field] {
            Value::String(s) if s.trim().is_empty() => return Err(EMPTY_FIELD),
            Value::String(s) => strings.push(s.clone()),
            _ => return Err(WRONG_TYPE),
        }
    }
    let timestamp = epoch_seconds(&object["timestamp"])?;
    let latest = match rec.timestamp_ms {
        Some(ms) => ms
            .div_euclid(1000)
            .saturating_add(cfg.limits.max_future_skew_secs),
        None => LATEST_WITHOUT_RECORD_TIME,
    };
    if timestamp > latest {
        return Err(FUTURE_TIMESTAMP);
    }
    let ip: IpAddr = strings[3].parse().map_err(|_| BAD_IP)?;
    let app_version = version(&strings[1]).ok_or(BAD_APP_VERSION)?;
    // The event as written, with the fields the output replaces or adds.
    object.insert("ip".into(), Value::from(masked(ip)));
    object.insert("timestamp".into(), Value::from(timestamp));
    Ok(Event {
        object,
        user_id: strings[0].clone(),
        app_version,
        device_type: strings[2].clone(),
        timestamp,
    })
}

/// `timestamp`: epoch seconds, a JSON integer or a string of decimal digits.
fn epoch_seconds(v: &Value) -> Result<i64, &'static str> {
    use reason::*;
    match v {
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) if i < 0 => Err(NEGATIVE_TIMESTAMP),
            (Some(i), _) => Ok(i),
            // A whole number beyond any representable time.
            (None, Some(_)) => Err(FUTURE_TIMESTAMP),
            (None, None) => Err(BAD_TIMESTAMP),
        },
        Value::String(s) => {
            let t = s.trim();
            let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
            if t.strip_prefix('-').is_some_and(digits) {
                Err(NEGATIVE_TIMESTAMP)
            } else if !digits(t) {
                Err(BAD_TIMESTAMP)
            } else {
                t.parse().map_err(|_| FUTURE_TIMESTAMP)
            }
        }
        _ => Err(WRONG_TYPE),
    }
}

/// A version like `2.13.1` or `3.2.1-beta`: 1 to 4 dot-separated decimal numbers
/// before any `-` or `+`, compared as numbers with missing parts 0.
fn version(s: &str) -> Option<[u64; 4]> {
    let numeric = s.split(['-', '+']).next()?;
    let mut parts = [0u64; 4];
    let mut n = 0;
    for part in numeric.split('.') {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *parts.get_mut(n)? = part.parse().ok()?;
        n += 1;
    }
    Some(parts)
}

fn filtered(e: &Event, cfg: &ProcessConfig) -> bool {
    let f = &cfg.filters;
    let too_old = f
        .min_app_version
        .as_ref()
        .and_then(|min| version(min.as_str()))
        .is_some_and(|min| e.app_version < min);
    let not_allowed = f.allowed_device_types.as_ref().is_some_and(|allowed| {
        let wanted = e.device_type.to_lowercase();
        !allowed.iter().any(|a| a.to_lowercase() == wanted)
    });
    too_old || not_allowed
}

/// A DLQ entry's value as `--dlq-mask-ip` writes it: a JSON object's non-null
/// `ip` replaced by its network, or by `"masked"` when it is no address.
/// `None`: nothing to mask (the entry keeps the original bytes).
fn ip_masked(value: &[u8]) -> Option<Vec<u8>> {
    if value.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let mut object = match serde_json::from_slice::<serde_json::Value>(value) {
        Ok(serde_json::Value::Object(o)) => o,
        _ => return None,
    };
    let ip = object.get_mut("ip").filter(|v| !v.is_null())?;
    let network = ip
        .as_str()
        .and_then(|s| s.trim().parse::<IpAddr>().ok())
        .map_or_else(|| "masked".to_string(), masked);
    *ip = serde_json::Value::String(network);
    serde_json::to_vec(&object).ok()
}

/// The address's network: IPv4 `/24`, IPv6 `/48`.
fn masked(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let net = std::net::Ipv6Addr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0]);
            format!("{net}/48")
        }
    }
}

/// The processed record's payload: the event's fields (unknown ones kept), the IP
/// masked, `login_time` in RFC 3339 UTC, `processed: true` and the source
/// coordinates; keys sorted, no whitespace.
fn processed_value(e: Event, topic: &str, partition: i32, offset: i64) -> Vec<u8> {
    let mut object = e.object;
    let login_time = chrono::DateTime::from_timestamp(e.timestamp, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    object.insert("login_time".into(), Value::from(login_time));
    object.insert("processed".into(), Value::from(true));
    object.insert("source_topic".into(), Value::from(topic));
    object.insert("source_partition".into(), Value::from(partition));
    object.insert("source_offset".into(), Value::from(offset));
    // serde_json's map keeps keys sorted (no `preserve_order` feature).
    serde_json::to_vec(&Value::Object(object)).expect("a JSON map serialises")
}

/// The input record an output names as its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Topic, partition and offset as written (the partition and offset are
    /// not yet known to exist).
    Named {
        topic: String,
        partition: i64,
        offset: i64,
    },
    /// No readable source coordinates: nothing tally wrote.
    Missing,
}

/// DLQ entries name their source in the `tally.source.*` headers, processed
/// records in their payload's `source_*` fields; headers win, so a record with
/// them is judged by them whichever topic it is in.
pub fn source_of(r: &ReadRecord) -> Source {
    let num = |k: &str| -> Option<i64> { std::str::from_utf8(r.header(k)?).ok()?.parse().ok() };
    if let Some(topic) = r.header(headers::SOURCE_TOPIC) {
        return match (
            std::str::from_utf8(topic),
            num(headers::SOURCE_PARTITION),
            num(headers::SOURCE_OFFSET),
        ) {
            (Ok(topic), Some(partition), Some(offset)) => Source::Named {
                topic: topic.to_string(),
                partition,
                offset,
            },
            _ => Source::Missing,
        };
    }
    let Some(Value::Object(o)) = r
        .record
        .value
        .as_deref()
        .and_then(|v| serde_json::from_slice(v).ok())
    else {
        return Source::Missing;
    };
    match (
        o.get("processed"),
        o.get("source_topic"),
        o.get("source_partition").and_then(Value::as_i64),
        o.get("source_offset").and_then(Value::as_i64),
    ) {
        (Some(Value::Bool(true)), Some(Value::String(topic)), Some(partition), Some(offset)) => {
            Source::Named {
                topic: topic.clone(),
                partition,
                offset,
            }
        }
        _ => Source::Missing,
    }
}

/// How an output differs from what the model expects of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// A processed record where a DLQ entry was expected, or the reverse.
    WrongDestination(String),
    /// A DLQ entry with another reason than the one expected.
    WrongReason(String),
    /// The right kind of record with a wrong key, value, timestamp or header.
    Content(String),
}

/// Checks a record of the output topic against the expectation of its source.
pub fn check_processed(e: &Expected, r: &ReadRecord) -> Result<(), Difference> {
    let Fate::Processed { key, value } = &e.fate else {
        return Err(Difference::WrongDestination(format!(
            "a processed record, expected {:?}",
            e.fate
        )));
    };
    let got_key = r.record.key.as_deref().map(Bytes::of);
    let got_value = Bytes::of(r.record.value.as_deref().unwrap_or_default());
    let mut wrong = Vec::new();
    if got_key.as_ref() != Some(key) {
        wrong.push("key (user_id)".to_string());
    }
    if got_value != *value {
        let shown: String = String::from_utf8_lossy(r.record.value.as_deref().unwrap_or_default())
            .chars()
            .take(300)
            .collect();
        wrong.push(format!("payload {shown}"));
    }
    // An output topic with `LogAppendTime` has the broker's time instead
    // (docs/limits.md).
    if let (Some(want), Some(got), false) =
        (e.timestamp_ms, r.record.timestamp_ms, r.log_append_time)
    {
        if want != got {
            wrong.push(format!("timestamp {got} (the input's is {want})"));
        }
    }
    if !r.headers.is_empty() {
        let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
        wrong.push(format!("headers {names:?} (processed records have none)"));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(Difference::Content(format!(
            "differs from the expected record in: {}",
            wrong.join("; ")
        )))
    }
}

/// What a DLQ entry was checked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterKind {
    /// The reason the model expects.
    Expected,
    /// A reason decided while producing (`poison`, `unproducible`), in place of
    /// the record's expected fate.
    Runtime,
}

/// Checks a record of the DLQ topic against the expectation of its source.
/// `dlq_max_bytes` is the DLQ topic's `max.message.bytes`.
pub fn check_dead_letter(
    e: &Expected,
    r: &ReadRecord,
    dlq_max_bytes: usize,
) -> Result<DeadLetterKind, Difference> {
    let code = r
        .header(headers::REASON)
        .map(|c| String::from_utf8_lossy(c).into_owned());
    let kind = match (&e.fate, code.as_deref()) {
        (Fate::DeadLetter { reason }, Some(c)) if c == *reason => DeadLetterKind::Expected,
        (_, Some(c)) if reason::at_runtime(c) => DeadLetterKind::Runtime,
        (Fate::DeadLetter { reason }, c) => {
            return Err(Difference::WrongReason(format!(
                "reason {c:?}, expected {reason:?}"
            )));
        }
        (fate, _) => {
            return Err(Difference::WrongDestination(format!(
                "a DLQ entry with reason {code:?}, expected {fate:?}"
            )));
        }
    };
    let mut wrong = Vec::new();
    let cut: BTreeSet<&[u8]> = r
        .header(headers::TRUNCATED)
        .map(|t| t.split(|b| *b == b',').collect())
        .unwrap_or_default();
    let got_key = r.record.key.as_deref();
    let got_value = r.record.value.as_deref().unwrap_or_default();
    match (&e.masked_value, r.header(headers::MASKED)) {
        (Some(_), Some(b"ip")) | (None, None) => {}
        (Some(_), m) => wrong.push(format!("tally.masked is {m:?}, expected \"ip\"")),
        (None, Some(m)) => wrong.push(format!(
            "tally.masked {:?} on an entry with nothing to mask",
            String::from_utf8_lossy(m)
        )),
    }
    if let Err(w) = check_part(
        "value",
        Some(e.masked_value.as_ref().unwrap_or(&e.value)),
        Some(got_value),
        cut.contains(&b"value"[..]),
        r.header(headers::ORIGINAL_SIZE),
        r.header(headers::ORIGINAL_SHA256),
    ) {
        wrong.push(w);
    }
    if let Err(w) = check_part(
        "key",
        e.key.as_ref(),
        got_key,
        cut.contains(&b"key"[..]),
        r.header(headers::ORIGINAL_KEY_SIZE),
        r.header(headers::ORIGINAL_KEY_SHA256),
    ) {
        wrong.push(w);
    }
    match r.header(headers::MESSAGE) {
        None => wrong.push("no tally.message header".into()),
        Some(m) if m.len() > MAX_MESSAGE => {
            wrong.push(format!("tally.message of {} bytes", m.len()))
        }
        Some(_) => {}
    }
    let size = KAFKA_OVERHEAD
        + got_key.map_or(0, <[u8]>::len)
        + got_value.len()
        + r.headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if size > dlq_max_bytes {
        wrong.push(format!(
            "takes {size} bytes, the DLQ topic accepts {dlq_max_bytes}"
        ));
    }
    // Cut although key and value fit whole; an entry with nothing of either is
    // the last resort after a refused entry, allowed for any record.
    let stripped = got_key.is_none_or(<[u8]>::is_empty) && got_value.is_empty();
    let whole = KAFKA_OVERHEAD + HEADER_ROOM + e.key.map_or(0, |k| k.len) + e.value.len;
    if !cut.is_empty() && !stripped && whole <= dlq_max_bytes {
        wrong.push("cut although key and value fit the DLQ topic".into());
    }
    if wrong.is_empty() {
        Ok(kind)
    } else {
        Err(Difference::Content(format!(
            "DLQ entry differs: {}",
            wrong.join("; ")
        )))
    }
}

/// One of a DLQ entry's key and value against the input's: the same bytes, or,
/// when the entry says it was cut, a shorter copy with the original's size and
/// SHA-256 in the headers.
fn check_part(
    what: &str,
    original: Option<&Bytes>,
    got: Option<&[u8]>,
    cut: bool,
    size: Option<&[u8]>,
    sha: Option<&[u8]>,
) -> Result<(), String> {
    let Some(original) = original else {
        return match (got, cut || size.is_some() || sha.is_some()) {
            (None, false) => Ok(()),
            _ => Err(format!("{what}: the input had none")),
        };
    };
    if !cut {
        if size.is_some() || sha.is_some() {
            return Err(format!("{what}: original size or SHA-256 without a cut"));
        }
        return match got {
            Some(g) if Bytes::of(g) == *original => Ok(()),
            _ => Err(format!("{what}: not the input's bytes")),
        };
    }
    let kept = got.map_or(0, <[u8]>::len);
    let want_size = original.len.to_string();
    if kept >= original.len {
        return Err(format!(
            "{what}: marked cut but kept {kept} of {}",
            original.len
        ));
    }
    if size != Some(want_size.as_bytes()) {
        return Err(format!("{what}: original size header is not {want_size}"));
    }
    if sha != Some(original.hex().as_bytes()) {
        return Err(format!(
            "{what}: original SHA-256 header is not the input's"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The model against the pipeline's decision: they must agree on every
    //! record, and the pipeline's output must pass the model's checks. These
    //! tests are the one place the model meets `event::process`.
    use super::*;
    use crate::event::{
        self, Filters, Limits, Outcome, OutputLimits, Reason, Rejection, dead_letter,
        dead_letter_stripped,
    };
    use crate::model::OutputRecord;
    use proptest::prelude::*;

    const NOW_MS: i64 = 1_700_000_000_000;

    fn cfg() -> ProcessConfig {
        ProcessConfig {
            input_topic: "user-login".into(),
            limits: Limits::default(),
            filters: Filters::default(),
            output_limits: OutputLimits::default(),
        }
    }

    fn record(value: Option<&[u8]>) -> InputRecord {
        InputRecord {
            partition: 3,
            offset: 41,
            key: Some(b"k".to_vec()),
            value: value.map(<[u8]>::to_vec),
            timestamp_ms: Some(NOW_MS),
        }
    }

    fn read(out: &OutputRecord, timestamp_ms: Option<i64>) -> ReadRecord {
        ReadRecord {
            record: InputRecord {
                partition: 0,
                offset: 0,
                key: out.key.clone(),
                value: Some(out.value.clone()),
                timestamp_ms: out.timestamp_ms.or(timestamp_ms),
            },
            headers: out
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            log_append_time: false,
        }
    }

    const GOOD: &str = r#"{"user_id":"u-1","app_version":"2.3.4","device_type":"android","ip":"203.0.113.77","locale":"en_US","device_id":"d-1","timestamp":1699999000,"extra":{"k":[1,2.5]}}"#;

    #[test]
    fn a_valid_event_is_expected_as_documented() {
        let rec = record(Some(GOOD.as_bytes()));
        let e = expect(&rec, &cfg());
        let want = serde_json::json!({
            "user_id": "u-1", "app_version": "2.3.4", "device_type": "android",
            "ip": "203.0.113.0/24", "locale": "en_US", "device_id": "d-1",
            "timestamp": 1_699_999_000, "login_time": "2023-11-14T21:56:40Z",
            "processed": true, "source_topic": "user-login", "source_partition": 3,
            "source_offset": 41, "extra": {"k": [1, 2.5]}
        });
        assert_eq!(
            e.fate,
            Fate::Processed {
                key: Bytes::of(b"u-1"),
                value: Bytes::of(&serde_json::to_vec(&want).unwrap()),
            }
        );
        assert_eq!(
            masked("2001:db8:abcd:12:1::9".parse().unwrap()),
            "2001:db8:abcd::/48"
        );
    }

    #[test]
    fn masked_dead_letters_are_checked_against_the_masked_value() {
        let mut c = cfg();
        c.limits.dlq_mask_ip = true;
        let missing = r#"{"user_id":"u-1","app_version":"2.3.4","ip":"203.0.113.77","locale":"en_US","device_id":"d-1","timestamp":1699999000}"#;
        let rec = record(Some(missing.as_bytes()));
        let e = expect(&rec, &c);
        let Outcome::DeadLetter { output, .. } = event::process(&rec, &c) else {
            panic!("no device_type")
        };
        let masked_dl = read(&output, None);
        assert_eq!(
            check_dead_letter(&e, &masked_dl, 1 << 20),
            Ok(DeadLetterKind::Expected)
        );
        let mut plain_cfg = c.clone();
        plain_cfg.limits.dlq_mask_ip = false;
        let plain_e = expect(&rec, &plain_cfg);
        let Outcome::DeadLetter { output, .. } = event::process(&rec, &plain_cfg) else {
            panic!("no device_type")
        };
        let plain = read(&output, None);
        assert_eq!(
            check_dead_letter(&plain_e, &plain, 1 << 20),
            Ok(DeadLetterKind::Expected)
        );
        // Masking the operator did not ask for, or an unmasked entry when asked.
        assert!(check_dead_letter(&plain_e, &masked_dl, 1 << 20).is_err());
        assert!(check_dead_letter(&e, &plain, 1 << 20).is_err());
        // The header alone does not make an entry masked.
        let mut claimed = plain.clone();
        claimed
            .headers
            .push((headers::MASKED.to_string(), b"ip".to_vec()));
        assert!(check_dead_letter(&e, &claimed, 1 << 20).is_err());
    }

    #[test]
    fn the_pipelines_outputs_pass_and_planted_faults_do_not() {
        let c = cfg();
        let rec = record(Some(GOOD.as_bytes()));
        let e = expect(&rec, &c);
        let Outcome::Processed { output, .. } = event::process(&rec, &c) else {
            panic!("valid")
        };
        let good = read(&output, None);
        assert_eq!(check_processed(&e, &good), Ok(()));
        // A wrong field value.
        let mut v: Value = serde_json::from_slice(&output.value).unwrap();
        v["locale"] = Value::from("fr_FR");
        let mut wrong = good.clone();
        wrong.record.value = Some(serde_json::to_vec(&v).unwrap());
        assert!(matches!(
            check_processed(&e, &wrong),
            Err(Difference::Content(_))
        ));
        // Another record timestamp than the input's.
        let mut late = good.clone();
        late.record.timestamp_ms = Some(NOW_MS + 1);
        assert!(matches!(
            check_processed(&e, &late),
            Err(Difference::Content(_))
        ));
        // A processed record in the DLQ.
        assert!(matches!(
            check_dead_letter(&e, &good, 1 << 20),
            Err(Difference::WrongDestination(_))
        ));
        // ... unless the broker refused it: a runtime dead letter.
        let poison = Rejection {
            reason: Reason::Poison,
            message: "m".into(),
        };
        let dl = read(&dead_letter(rec.clone(), &poison, &c), None);
        assert_eq!(
            check_dead_letter(&e, &dl, 1 << 20),
            Ok(DeadLetterKind::Runtime)
        );
        let stripped = read(&dead_letter_stripped(rec, &poison, &c), None);
        assert_eq!(
            check_dead_letter(&e, &stripped, 1 << 20),
            Ok(DeadLetterKind::Runtime)
        );

        let bad = record(Some(b"{"));
        let e = expect(&bad, &c);
        let Outcome::DeadLetter { output, .. } = event::process(&bad, &c) else {
            panic!("malformed")
        };
        let dl = read(&output, None);
        assert_eq!(
            check_dead_letter(&e, &dl, 1 << 20),
            Ok(DeadLetterKind::Expected)
        );
        let mut reason = dl.clone();
        for (k, v) in &mut reason.headers {
            if k == headers::REASON {
                *v = b"missing_field".to_vec();
            }
        }
        assert!(matches!(
            check_dead_letter(&e, &reason, 1 << 20),
            Err(Difference::WrongReason(_))
        ));
        let mut bytes = dl.clone();
        bytes.record.value = Some(b"}".to_vec());
        assert!(matches!(
            check_dead_letter(&e, &bytes, 1 << 20),
            Err(Difference::Content(_))
        ));
        assert!(matches!(
            check_processed(&e, &dl),
            Err(Difference::WrongDestination(_))
        ));
    }

    #[test]
    fn sources_come_from_headers_or_the_processed_payload() {
        let c = cfg();
        let rec = record(Some(GOOD.as_bytes()));
        let processed = read(event::process(&rec, &c).output().unwrap(), None);
        let named = Source::Named {
            topic: "user-login".into(),
            partition: 3,
            offset: 41,
        };
        assert_eq!(source_of(&processed), named);
        let dl = read(event::process(&record(None), &c).output().unwrap(), None);
        assert_eq!(source_of(&dl), named);
        let mut negative = dl.clone();
        negative
            .headers
            .retain(|(k, _)| k != headers::SOURCE_OFFSET);
        assert_eq!(source_of(&negative), Source::Missing);
        negative
            .headers
            .push((headers::SOURCE_OFFSET.into(), b"-1".to_vec()));
        assert_eq!(
            source_of(&negative),
            Source::Named {
                topic: "user-login".into(),
                partition: 3,
                offset: -1
            }
        );
        let mut unnamed = processed;
        unnamed.record.value = Some(br#"{"processed":false,"source_topic":"user-login","source_partition":3,"source_offset":41}"#.to_vec());
        assert_eq!(source_of(&unnamed), Source::Missing);
    }

    /// Event texts near the edges of the rules: fields missing, null, blank,
    /// of the wrong type, duplicated, escaped; unknown fields of every kind.
    fn arb_text() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("user_id"),
            Just("app_version"),
            Just("device_type"),
            Just("ip"),
            Just("locale"),
            Just("device_id"),
            Just("timestamp"),
            Just("extra"),
            Just("processed"),
            Just("source_offset"),
            Just("login_time"),
            Just("user\\u005fid"),
        ];
        let value = prop_oneof![
            Just("\"u1\"".to_string()),
            Just("\" \"".to_string()),
            Just("\"\"".to_string()),
            Just("\"a\\u0041\\n\"".to_string()),
            Just("null".to_string()),
            Just("-5".to_string()),
            Just("1.5".to_string()),
            Just("1e3".to_string()),
            Just("\" 42 \"".to_string()),
            Just("\"-7\"".to_string()),
            Just("\"-\"".to_string()),
            Just("true".to_string()),
            Just("[1, 2.50, \"x\"]".to_string()),
            Just("{\"a\" : {\"b\": null}}".to_string()),
            Just("\"2.10.3-rc1\"".to_string()),
            Just("\"1..2\"".to_string()),
            Just("\"18446744073709551616\"".to_string()),
            Just("18446744073709551616".to_string()),
            Just("9223372036854775808".to_string()),
            Just("\"10.1.2.3\"".to_string()),
            Just("\"2001:db8::1\"".to_string()),
            Just("\"::ffff:1.2.3.4\"".to_string()),
            Just("\"1.2.3\"".to_string()),
            Just("\"iOS\"".to_string()),
            Just("\"İOS\"".to_string()),
            Just("\"1700000000\"".to_string()),
            Just("1700090000".to_string()),
            Just("1e400".to_string()),
            (0i64..5_000_000_000).prop_map(|t| t.to_string()),
            "[0-9]{1,3}(\\.[0-9]{1,3}){0,4}".prop_map(|v| format!("\"{v}\"")),
            any::<[u8; 4]>().prop_map(|ip| format!("\"{}\"", std::net::Ipv4Addr::from(ip))),
            any::<[u16; 8]>().prop_map(|ip| format!("\"{}\"", std::net::Ipv6Addr::from(ip))),
            any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        ];
        let good = [
            "\"user_id\":\"u1\"",
            "\"app_version\":\"2.10.3\"",
            "\"device_type\":\"iOS\"",
            "\"ip\":\"10.1.2.3\"",
            "\"locale\":\"de_DE\"",
            "\"device_id\":\"d1\"",
            "\"timestamp\":1700000000",
        ];
        (
            proptest::collection::vec((key, value, 0..8usize), 0..5),
            // Usually every required field, so that most records reach the
            // checks of meaning, the filters and the output limits.
            prop_oneof![3 => Just(0x7fu8), 1 => proptest::bits::u8::masked(0x7f)],
            any::<bool>(),
            // A last `timestamp`, which wins over any before it.
            proptest::option::weighted(
                0.2,
                prop_oneof![
                    (0i64..5_000_000_000).prop_map(|t| t.to_string()),
                    (-5_000i64..0).prop_map(|t| t.to_string()),
                    (-5_000i64..5_000_000_000).prop_map(|t| format!("\"{t}\"")),
                    (-5_000i64..0).prop_map(|t| format!("\" {t}\"")),
                    Just("1.0".to_string()),
                    Just("\"\"".to_string()),
                ],
            ),
        )
            .prop_map(move |(fields, keep, spaced, timestamp)| {
                let mut parts: Vec<String> = good
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| keep & (1 << i) != 0)
                    .map(|(_, f)| f.to_string())
                    .collect();
                for (k, v, at) in fields {
                    let at = at.min(parts.len());
                    let ws = if spaced { " " } else { "" };
                    parts.insert(at, format!("{ws}\"{k}\"{ws}:{ws}{v}"));
                }
                parts.extend(timestamp.map(|t| format!("\"timestamp\":{t}")));
                format!("{{{}}}", parts.join(","))
            })
    }

    fn arb_record() -> impl Strategy<Value = InputRecord> {
        let value = prop_oneof![
            6 => arb_text().prop_map(|t| Some(t.into_bytes())),
            1 => Just(None),
            1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Some),
            1 => Just(Some(b"[1]".to_vec())),
        ];
        (
            0..4i32,
            0..1_000_000i64,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..3000)),
            value,
            prop_oneof![
                Just(None),
                Just(Some(NOW_MS)),
                (0i64..4_000_000_000_000).prop_map(Some)
            ],
        )
            .prop_map(
                |(partition, offset, key, value, timestamp_ms)| InputRecord {
                    partition,
                    offset,
                    key,
                    value,
                    timestamp_ms,
                },
            )
    }

    fn arb_cfg() -> impl Strategy<Value = ProcessConfig> {
        (
            proptest::option::of(prop_oneof![
                Just("2.10"),
                Just("1"),
                Just("2.10.3-x"),
                Just("3.0.0.1")
            ]),
            proptest::option::of(proptest::sample::subsequence(
                vec!["ios", "android", "web"],
                0..3,
            )),
            prop_oneof![Just(256usize * 1024), 1usize..400],
            prop_oneof![Just(0i64), Just(86_400), Just(3_600)],
            prop_oneof![Just(1usize << 20), 1200usize..1700],
            prop_oneof![Just(1usize << 20), 2400usize..6000],
        )
            .prop_map(
                |(min, allowed, max_value, skew, out_max, dlq_max)| ProcessConfig {
                    input_topic: "user-login".into(),
                    limits: Limits {
                        max_value_bytes: max_value,
                        max_future_skew_secs: skew,
                        dlq_mask_ip: false,
                    },
                    filters: Filters {
                        min_app_version: min.map(|m| m.parse().unwrap()),
                        allowed_device_types: allowed
                            .map(|a| a.into_iter().map(str::to_string).collect()),
                    },
                    output_limits: OutputLimits {
                        processed_max_bytes: out_max,
                        dlq_max_bytes: dlq_max,
                    },
                },
            )
    }

    /// The generated records reach every fate, so the agreement below means
    /// something.
    #[test]
    fn generated_records_reach_every_fate() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut processed, mut filtered, mut unproducible) = (0, 0, 0);
        let mut reasons = BTreeSet::new();
        for _ in 0..2000 {
            let rec = arb_record().new_tree(&mut runner).unwrap().current();
            let cfg = arb_cfg().new_tree(&mut runner).unwrap().current();
            match expect(&rec, &cfg).fate {
                Fate::Processed { .. } => processed += 1,
                Fate::Filtered => filtered += 1,
                Fate::DeadLetter { reason } => {
                    unproducible += usize::from(reason == reason::UNPRODUCIBLE);
                    reasons.insert(reason);
                }
            }
        }
        assert!(
            processed > 100 && filtered > 100 && unproducible > 10,
            "{processed} {filtered} {unproducible}"
        );
        assert_eq!(reasons.len(), 16, "{reasons:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// The model and the pipeline decide every record the same way, and the
        /// pipeline's output passes the model's checks.
        #[test]
        fn the_model_agrees_with_the_pipeline(rec in arb_record(), cfg in arb_cfg()) {
            let e = expect(&rec, &cfg);
            let dlq_max = cfg.output_limits.dlq_max_bytes;
            match event::process(&rec, &cfg) {
                Outcome::Processed { output, .. } => {
                    prop_assert!(matches!(e.fate, Fate::Processed { .. }), "{:?}", e.fate);
                    prop_assert_eq!(check_processed(&e, &read(&output, None)), Ok(()));
                }
                Outcome::Filtered { .. } => prop_assert_eq!(&e.fate, &Fate::Filtered),
                Outcome::DeadLetter { rejection, output } => {
                    prop_assert_eq!(&e.fate, &Fate::DeadLetter { reason: rejection.reason.code() });
                    prop_assert_eq!(
                        check_dead_letter(&e, &read(&output, None), dlq_max),
                        Ok(DeadLetterKind::Expected)
                    );
                }
            }
            // Whatever its fate, a record the broker refuses is dead-lettered at
            // runtime, whole or as the headers-only last resort.
            for reason in [Reason::Poison, Reason::Unproducible] {
                let rejection = Rejection { reason, message: "x".repeat(600) };
                let want = match e.fate {
                    Fate::DeadLetter { reason: r } if r == reason.code() => DeadLetterKind::Expected,
                    _ => DeadLetterKind::Runtime,
                };
                let full = read(&dead_letter(rec.clone(), &rejection, &cfg), None);
                prop_assert_eq!(check_dead_letter(&e, &full, dlq_max), Ok(want));
                let stripped = read(&dead_letter_stripped(rec.clone(), &rejection, &cfg), None);
                prop_assert_eq!(check_dead_letter(&e, &stripped, dlq_max), Ok(want));
            }
        }
    }
}
