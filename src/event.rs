//! Validation, filtering and transformation of user-login events: pure functions.
//!
//! `process` is the single decision the pipeline and `tally verify` share: for a
//! given input record and configuration it always yields the same outcome and,
//! for processed records, the same output bytes.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat};
use serde_json::{Map, Value};

use crate::model::{Destination, InputRecord, OutputRecord, headers};

/// Stable reason codes for rejected records (written to the DLQ's `tally.reason` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    NullValue,
    EmptyValue,
    TooLarge,
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    MissingField,
    NullField,
    WrongType,
    EmptyField,
    BadTimestamp,
    NegativeTimestamp,
    FutureTimestamp,
    BadIp,
    BadAppVersion,
}

impl Reason {
    pub const ALL: [Reason; 15] = [
        Reason::NullValue,
        Reason::EmptyValue,
        Reason::TooLarge,
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::NotAnObject,
        Reason::MissingField,
        Reason::NullField,
        Reason::WrongType,
        Reason::EmptyField,
        Reason::BadTimestamp,
        Reason::NegativeTimestamp,
        Reason::FutureTimestamp,
        Reason::BadIp,
        Reason::BadAppVersion,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::NullValue => "null_value",
            Reason::EmptyValue => "empty_value",
            Reason::TooLarge => "too_large",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingField => "missing_field",
            Reason::NullField => "null_field",
            Reason::WrongType => "wrong_type",
            Reason::EmptyField => "empty_field",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::NegativeTimestamp => "negative_timestamp",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::BadIp => "bad_ip",
            Reason::BadAppVersion => "bad_app_version",
        }
    }

    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Why a record was rejected: a stable code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
}

fn reject<T>(reason: Reason, message: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection {
        reason,
        message: message.into(),
    })
}

/// A dotted numeric application version (`2.13.1`, `4.0`, `3.2.1-beta`).
/// Compared component by component as numbers, missing components as 0; a
/// `-`/`+` suffix is kept for display and ignored in comparisons.
#[derive(Debug, Clone, Eq)]
pub struct AppVersion {
    parts: Vec<u64>,
    text: String,
}

impl FromStr for AppVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let numeric = s.split(['-', '+']).next().unwrap_or_default();
        let parts: Result<Vec<u64>, _> = numeric.split('.').map(str::parse::<u64>).collect();
        match parts {
            Ok(parts)
                if (1..=4).contains(&parts.len())
                    && numeric.chars().all(|c| c.is_ascii_digit() || c == '.') =>
            {
                Ok(AppVersion {
                    parts,
                    text: s.to_string(),
                })
            }
            _ => Err(format!(
                "{s:?} is not a version like 2.13.1 (1 to 4 dot-separated numbers)"
            )),
        }
    }
}

impl PartialEq for AppVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl PartialOrd for AppVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for AppVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.parts.len().max(other.parts.len());
        let get = |v: &AppVersion, i: usize| v.parts.get(i).copied().unwrap_or(0);
        (0..n)
            .map(|i| get(self, i).cmp(&get(other, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

impl fmt::Display for AppVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Limits applied during validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Values larger than this are rejected as `too_large`.
    pub max_value_bytes: usize,
    /// An event time later than the Kafka record timestamp plus this many seconds
    /// is an absurd future (`future_timestamp`).
    pub max_future_skew_secs: i64,
}

/// Used when a record carries no Kafka timestamp: 2100-01-01T00:00:00Z.
const FALLBACK_LATEST_EVENT_TIME: i64 = 4_102_444_800;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 256 * 1024,
            max_future_skew_secs: 24 * 3600,
        }
    }
}

/// Records that are valid but not wanted downstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    /// Events from app versions lower than this are filtered out.
    pub min_app_version: Option<AppVersion>,
    /// When set, only these device types (compared case-insensitively) pass.
    pub allowed_device_types: Option<BTreeSet<String>>,
}

/// Everything `process` depends on besides the record itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessConfig {
    pub input_topic: String,
    pub limits: Limits,
    pub filters: Filters,
}

/// A validated user-login event.
#[derive(Debug, Clone, PartialEq)]
pub struct LoginEvent {
    pub user_id: String,
    pub app_version: AppVersion,
    pub device_type: String,
    pub ip: IpAddr,
    pub locale: String,
    pub device_id: String,
    /// Event time, seconds since the epoch.
    pub timestamp: i64,
    /// Fields we don't know, kept as they came.
    pub extra: Map<String, Value>,
}

const REQUIRED: [&str; 7] = [
    "user_id",
    "app_version",
    "device_type",
    "ip",
    "locale",
    "device_id",
    "timestamp",
];

/// Validates a record's value.
pub fn validate(
    value: Option<&[u8]>,
    record_timestamp_ms: Option<i64>,
    limits: &Limits,
) -> Result<LoginEvent, Rejection> {
    let Some(bytes) = value else {
        return reject(Reason::NullValue, "record value is null (tombstone)");
    };
    if bytes.is_empty() {
        return reject(Reason::EmptyValue, "record value is empty");
    }
    if bytes.len() > limits.max_value_bytes {
        return reject(
            Reason::TooLarge,
            format!(
                "value is {} bytes, limit is {}",
                bytes.len(),
                limits.max_value_bytes
            ),
        );
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => return reject(Reason::InvalidUtf8, format!("value is not UTF-8: {e}")),
    };
    let json: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return reject(Reason::InvalidJson, format!("value is not valid JSON: {e}")),
    };
    let Value::Object(mut obj) = json else {
        return reject(
            Reason::NotAnObject,
            format!("value is a JSON {}, not an object", json_kind(&json)),
        );
    };
    for field in REQUIRED {
        match obj.get(field) {
            None => {
                return reject(
                    Reason::MissingField,
                    format!("required field {field:?} is missing"),
                );
            }
            Some(Value::Null) => {
                return reject(
                    Reason::NullField,
                    format!("required field {field:?} is null"),
                );
            }
            Some(_) => {}
        }
    }
    let mut take_string = |field: &str| -> Result<String, Rejection> {
        match obj.remove(field) {
            Some(Value::String(s)) if s.trim().is_empty() => {
                reject(Reason::EmptyField, format!("field {field:?} is empty"))
            }
            Some(Value::String(s)) => Ok(s),
            Some(other) => reject(
                Reason::WrongType,
                format!(
                    "field {field:?} must be a string, got a {}",
                    json_kind(&other)
                ),
            ),
            None => unreachable!("presence checked above"),
        }
    };
    let user_id = take_string("user_id")?;
    let app_version_text = take_string("app_version")?;
    let device_type = take_string("device_type")?;
    let ip_text = take_string("ip")?;
    let locale = take_string("locale")?;
    let device_id = take_string("device_id")?;
    let timestamp = parse_timestamp(obj.remove("timestamp").expect("presence checked above"))?;

    let latest = record_timestamp_ms
        .map(|ms| {
            ms.div_euclid(1000)
                .saturating_add(limits.max_future_skew_secs)
        })
        .unwrap_or(FALLBACK_LATEST_EVENT_TIME);
    if timestamp > latest {
        return reject(
            Reason::FutureTimestamp,
            format!(
                "timestamp {timestamp} is more than {}s after the record was written",
                limits.max_future_skew_secs
            ),
        );
    }
    let ip = match IpAddr::from_str(&ip_text) {
        Ok(ip) => ip,
        Err(_) => {
            return reject(
                Reason::BadIp,
                format!("ip {ip_text:?} is neither IPv4 nor IPv6"),
            );
        }
    };
    let app_version = match AppVersion::from_str(&app_version_text) {
        Ok(v) => v,
        Err(e) => return reject(Reason::BadAppVersion, format!("app_version {e}")),
    };
    Ok(LoginEvent {
        user_id,
        app_version,
        device_type,
        ip,
        locale,
        device_id,
        timestamp,
        extra: obj,
    })
}

/// `timestamp` is epoch seconds as a JSON integer or a string of decimal digits.
fn parse_timestamp(v: Value) -> Result<i64, Rejection> {
    let negative = || reject(Reason::NegativeTimestamp, "timestamp is negative");
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                if i < 0 { negative() } else { Ok(i) }
            } else if n.is_u64() {
                reject(
                    Reason::FutureTimestamp,
                    format!("timestamp {n} is out of range"),
                )
            } else {
                reject(
                    Reason::BadTimestamp,
                    format!("timestamp {n} is not a whole number of seconds"),
                )
            }
        }
        Value::String(s) => {
            let t = s.trim();
            if let Some(digits) = t.strip_prefix('-') {
                if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                    return negative();
                }
            }
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return reject(
                    Reason::BadTimestamp,
                    format!("timestamp {s:?} is not epoch seconds"),
                );
            }
            t.parse::<i64>().or_else(|_| {
                reject(
                    Reason::FutureTimestamp,
                    format!("timestamp {s:?} is out of range"),
                )
            })
        }
        other => reject(
            Reason::WrongType,
            format!(
                "field \"timestamp\" must be an integer or a numeric string, got a {}",
                json_kind(&other)
            ),
        ),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Why a valid record was filtered out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterReason {
    AppVersionTooOld,
    DeviceTypeNotAllowed,
}

impl Filters {
    pub fn check(&self, event: &LoginEvent) -> Option<FilterReason> {
        if self
            .min_app_version
            .as_ref()
            .is_some_and(|min| event.app_version < *min)
        {
            return Some(FilterReason::AppVersionTooOld);
        }
        if let Some(allowed) = &self.allowed_device_types {
            if !allowed.contains(&event.device_type.to_lowercase()) {
                return Some(FilterReason::DeviceTypeNotAllowed);
            }
        }
        None
    }
}

/// Masks an address to its network: IPv4 keeps its /24, IPv6 its /48.
pub fn mask_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{}/24", Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{}/48", Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

/// The transformed event: unknown fields kept, IP masked, time normalised, and the
/// processing metadata that is a function of the input (source coordinates). Keys
/// come out sorted, so the bytes are deterministic.
pub fn transform(event: &LoginEvent, topic: &str, partition: i32, offset: i64) -> Vec<u8> {
    let mut out = event.extra.clone();
    let login_time = DateTime::from_timestamp(event.timestamp, 0)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default();
    let fields = [
        ("user_id", Value::from(event.user_id.clone())),
        ("app_version", Value::from(event.app_version.to_string())),
        ("device_type", Value::from(event.device_type.clone())),
        ("ip", Value::from(mask_ip(event.ip))),
        ("locale", Value::from(event.locale.clone())),
        ("device_id", Value::from(event.device_id.clone())),
        ("timestamp", Value::from(event.timestamp)),
        ("login_time", Value::from(login_time)),
        ("processed", Value::from(true)),
        ("source_topic", Value::from(topic)),
        ("source_partition", Value::from(partition)),
        ("source_offset", Value::from(offset)),
    ];
    for (k, v) in fields {
        out.insert(k.to_string(), v);
    }
    serde_json::to_vec(&Value::Object(out)).expect("a JSON map always serialises")
}

/// What becomes of one input record.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Processed {
        event: LoginEvent,
        output: OutputRecord,
    },
    Filtered {
        event: LoginEvent,
        why: FilterReason,
    },
    DeadLetter {
        rejection: Rejection,
        output: OutputRecord,
    },
}

impl Outcome {
    pub fn output(&self) -> Option<&OutputRecord> {
        match self {
            Outcome::Processed { output, .. } | Outcome::DeadLetter { output, .. } => Some(output),
            Outcome::Filtered { .. } => None,
        }
    }
}

fn source_headers(cfg: &ProcessConfig, rec: &InputRecord) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            headers::SOURCE_TOPIC.into(),
            cfg.input_topic.as_bytes().to_vec(),
        ),
        (
            headers::SOURCE_PARTITION.into(),
            rec.partition.to_string().into_bytes(),
        ),
        (
            headers::SOURCE_OFFSET.into(),
            rec.offset.to_string().into_bytes(),
        ),
    ]
}

/// The one decision for a record: processed (with its output), filtered, or dead-lettered.
pub fn process(rec: &InputRecord, cfg: &ProcessConfig) -> Outcome {
    match validate(rec.value.as_deref(), rec.timestamp_ms, &cfg.limits) {
        Ok(event) => {
            if let Some(why) = cfg.filters.check(&event) {
                return Outcome::Filtered { event, why };
            }
            let value = transform(&event, &cfg.input_topic, rec.partition, rec.offset);
            let output = OutputRecord {
                destination: Destination::Processed,
                key: Some(event.user_id.clone().into_bytes()),
                value,
                headers: source_headers(cfg, rec),
            };
            Outcome::Processed { event, output }
        }
        Err(rejection) => {
            let mut hs = vec![
                (
                    headers::REASON.into(),
                    rejection.reason.code().as_bytes().to_vec(),
                ),
                (
                    headers::MESSAGE.into(),
                    rejection.message.as_bytes().to_vec(),
                ),
            ];
            hs.extend(source_headers(cfg, rec));
            let output = OutputRecord {
                destination: Destination::DeadLetter,
                key: rec.key.clone(),
                value: rec.value.clone().unwrap_or_default(),
                headers: hs,
            };
            Outcome::DeadLetter { rejection, output }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const NOW_MS: i64 = 1_700_000_000_000;

    fn good() -> Value {
        json!({
            "user_id": "u-1", "app_version": "2.3.4", "device_type": "android",
            "ip": "203.0.113.77", "locale": "en_US", "device_id": "d-1", "timestamp": 1_699_999_000
        })
    }

    fn with(field: &str, v: Value) -> Vec<u8> {
        let mut j = good();
        j[field] = v;
        j.to_string().into_bytes()
    }

    fn without(field: &str) -> Vec<u8> {
        let mut j = good();
        j.as_object_mut().unwrap().remove(field);
        j.to_string().into_bytes()
    }

    fn check(value: Option<&[u8]>) -> Result<LoginEvent, Reason> {
        validate(value, Some(NOW_MS), &Limits::default()).map_err(|r| r.reason)
    }

    #[test]
    fn bad_inputs_have_their_reason() {
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(300 * 1024));
        let table: Vec<(&str, Option<Vec<u8>>, Reason)> = vec![
            ("tombstone", None, Reason::NullValue),
            ("empty", Some(vec![]), Reason::EmptyValue),
            ("too large", Some(big.into_bytes()), Reason::TooLarge),
            (
                "invalid utf8",
                Some(b"{\"user_id\":\"\xff\xfe\"}".to_vec()),
                Reason::InvalidUtf8,
            ),
            (
                "truncated",
                Some(br#"{"user_id":"u-1","app_ver"#.to_vec()),
                Reason::InvalidJson,
            ),
            ("garbage", Some(b"not json".to_vec()), Reason::InvalidJson),
            ("array", Some(b"[1,2]".to_vec()), Reason::NotAnObject),
            ("string", Some(b"\"hi\"".to_vec()), Reason::NotAnObject),
            ("null json", Some(b"null".to_vec()), Reason::NotAnObject),
            (
                "missing device_type",
                Some(without("device_type")),
                Reason::MissingField,
            ),
            (
                "missing timestamp",
                Some(without("timestamp")),
                Reason::MissingField,
            ),
            ("null ip", Some(with("ip", Value::Null)), Reason::NullField),
            (
                "numeric user_id",
                Some(with("user_id", json!(42))),
                Reason::WrongType,
            ),
            (
                "object locale",
                Some(with("locale", json!({"a": 1}))),
                Reason::WrongType,
            ),
            (
                "bool timestamp",
                Some(with("timestamp", json!(true))),
                Reason::WrongType,
            ),
            (
                "blank device_id",
                Some(with("device_id", json!("  "))),
                Reason::EmptyField,
            ),
            (
                "float timestamp",
                Some(with("timestamp", json!(1_699_999_000.5))),
                Reason::BadTimestamp,
            ),
            (
                "word timestamp",
                Some(with("timestamp", json!("yesterday"))),
                Reason::BadTimestamp,
            ),
            (
                "iso timestamp",
                Some(with("timestamp", json!("2023-11-14T22:13:20Z"))),
                Reason::BadTimestamp,
            ),
            (
                "negative timestamp",
                Some(with("timestamp", json!(-5))),
                Reason::NegativeTimestamp,
            ),
            (
                "negative string timestamp",
                Some(with("timestamp", json!("-5"))),
                Reason::NegativeTimestamp,
            ),
            (
                "millis timestamp",
                Some(with("timestamp", json!(1_699_999_000_000i64))),
                Reason::FutureTimestamp,
            ),
            (
                "huge timestamp",
                Some(with("timestamp", json!(u64::MAX))),
                Reason::FutureTimestamp,
            ),
            (
                "bad ip",
                Some(with("ip", json!("999.1.1.1"))),
                Reason::BadIp,
            ),
            (
                "hostname ip",
                Some(with("ip", json!("example.com"))),
                Reason::BadIp,
            ),
            (
                "bad version",
                Some(with("app_version", json!("latest"))),
                Reason::BadAppVersion,
            ),
        ];
        let mut seen = BTreeSet::new();
        for (name, value, want) in table {
            assert_eq!(check(value.as_deref()).err(), Some(want), "{name}");
            seen.insert(want);
        }
        assert_eq!(seen.len(), Reason::ALL.len(), "every reason has a case");
    }

    #[test]
    fn accepts_integer_and_numeric_string_timestamps() {
        let a = check(Some(&with("timestamp", json!(1_699_999_000)))).unwrap();
        let b = check(Some(&with("timestamp", json!("1699999000")))).unwrap();
        assert_eq!(a.timestamp, 1_699_999_000);
        assert_eq!(a, b);
    }

    #[test]
    fn future_bound_is_relative_to_record_time() {
        let v = with("timestamp", json!(NOW_MS / 1000 + 3600));
        assert!(validate(Some(&v), Some(NOW_MS), &Limits::default()).is_ok());
        assert!(
            validate(
                Some(&v),
                Some(NOW_MS - 48 * 3600 * 1000),
                &Limits::default()
            )
            .is_err()
        );
    }

    #[test]
    fn reason_codes_round_trip() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
    }

    #[test]
    fn versions_compare_as_numbers() {
        let v = |s: &str| s.parse::<AppVersion>().unwrap();
        assert!(v("2.10.0") > v("2.9.9"));
        assert_eq!(v("2.0"), v("2.0.0"));
        assert!(v("10") > v("9.99"));
        assert!(v("3.2.1-beta") > v("3.2.0"));
        assert!("1..2".parse::<AppVersion>().is_err());
        assert!("v1.2".parse::<AppVersion>().is_err());
        assert!("1.2.3.4.5".parse::<AppVersion>().is_err());
    }

    #[test]
    fn filters() {
        let e = check(Some(&good().to_string().into_bytes())).unwrap();
        let f = Filters {
            min_app_version: Some("2.10".parse().unwrap()),
            allowed_device_types: None,
        };
        assert_eq!(f.check(&e), Some(FilterReason::AppVersionTooOld));
        let f = Filters {
            min_app_version: Some("2.3.4".parse().unwrap()),
            allowed_device_types: Some(["ios".to_string()].into()),
        };
        assert_eq!(f.check(&e), Some(FilterReason::DeviceTypeNotAllowed));
        let f = Filters {
            min_app_version: None,
            allowed_device_types: Some(["android".to_string(), "ios".to_string()].into()),
        };
        assert_eq!(f.check(&e), None);
    }

    #[test]
    fn masks_ips() {
        assert_eq!(mask_ip("203.0.113.77".parse().unwrap()), "203.0.113.0/24");
        assert_eq!(
            mask_ip("2001:db8:abcd:12:1::9".parse().unwrap()),
            "2001:db8:abcd::/48"
        );
    }

    #[test]
    fn transform_output() {
        let mut j = good();
        j["extra"] = json!({"k": [1, 2]});
        let e = check(Some(&j.to_string().into_bytes())).unwrap();
        let out: Value = serde_json::from_slice(&transform(&e, "user-login", 3, 42)).unwrap();
        assert_eq!(
            out,
            json!({
                "user_id": "u-1", "app_version": "2.3.4", "device_type": "android",
                "ip": "203.0.113.0/24", "locale": "en_US", "device_id": "d-1",
                "timestamp": 1_699_999_000, "login_time": "2023-11-14T21:56:40Z",
                "processed": true, "source_topic": "user-login", "source_partition": 3,
                "source_offset": 42, "extra": {"k": [1, 2]}
            })
        );
    }

    #[test]
    fn dead_letter_keeps_original_bytes_and_key() {
        let cfg = ProcessConfig {
            input_topic: "user-login".into(),
            limits: Limits::default(),
            filters: Filters::default(),
        };
        let rec = InputRecord {
            partition: 1,
            offset: 9,
            key: Some(b"k".to_vec()),
            value: Some(without("device_type")),
            timestamp_ms: Some(NOW_MS),
        };
        let out = process(&rec, &cfg);
        let Outcome::DeadLetter { output, rejection } = out else {
            panic!("{out:?}")
        };
        assert_eq!(rejection.reason, Reason::MissingField);
        assert_eq!(output.value, rec.value.unwrap());
        assert_eq!(output.key, rec.key);
        let h: std::collections::BTreeMap<_, _> = output.headers.into_iter().collect();
        assert_eq!(h[headers::REASON], b"missing_field");
        assert_eq!(h[headers::SOURCE_OFFSET], b"9");
        assert_eq!(h[headers::SOURCE_PARTITION], b"1");
    }

    fn arb_record() -> impl Strategy<Value = InputRecord> {
        let value = prop_oneof![
            Just(None),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Some),
            (
                any::<u32>(),
                "[a-z]{1,8}",
                "[0-9]{1,2}\\.[0-9]{1,2}",
                any::<[u8; 4]>(),
                any::<bool>()
            )
                .prop_map(|(ts, user, ver, ip, string_ts)| {
                    let ts = if string_ts {
                        json!(ts.to_string())
                    } else {
                        json!(ts)
                    };
                    Some(
                        json!({"user_id": user, "app_version": ver, "device_type": "iOS",
                        "ip": std::net::Ipv4Addr::from(ip).to_string(), "locale": "de_DE",
                        "device_id": "d", "timestamp": ts, "z": 1})
                        .to_string()
                        .into_bytes(),
                    )
                }),
        ];
        (
            0..8i32,
            0..1_000_000i64,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            value,
        )
            .prop_map(|(partition, offset, key, value)| InputRecord {
                partition,
                offset,
                key,
                value,
                timestamp_ms: Some(NOW_MS * 3),
            })
    }

    proptest! {
        #[test]
        fn processing_is_deterministic(rec in arb_record()) {
            let cfg = ProcessConfig {
                input_topic: "user-login".into(),
                limits: Limits::default(),
                filters: Filters { min_app_version: Some("5.0".parse().unwrap()), allowed_device_types: None },
            };
            let a = process(&rec, &cfg);
            let b = process(&rec.clone(), &cfg.clone());
            prop_assert_eq!(&a, &b);
            if let Outcome::Processed { output, .. } = &a {
                // Re-serialising the output is a fixed point: sorted keys, no float noise.
                let v: Value = serde_json::from_slice(&output.value).unwrap();
                prop_assert_eq!(serde_json::to_vec(&v).unwrap(), output.value.clone());
            }
        }
    }
}
