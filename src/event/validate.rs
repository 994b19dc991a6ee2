//! A record's value to a [`LoginEvent`], or the [`Rejection`] saying why not.
//!
//! Two readers, deliberately parallel: a fast visitor that only ever accepts (a
//! plain valid event, read in one pass) and the general path through a
//! `serde_json::Value`, which decides and words everything the visitor declines.
//! A property test holds them to the same outcomes.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::app_version::AppVersion;
use super::reason::{Reason, Rejection};

/// Limits applied during validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Values larger than this are rejected as `too_large`.
    pub max_value_bytes: usize,
    /// An event time later than the Kafka record timestamp plus this many seconds
    /// is an absurd future (`future_timestamp`).
    pub max_future_skew_secs: i64,
    /// DLQ entries whose value is a JSON object get its `ip` masked
    /// (`--dlq-mask-ip`, see [`dead_letter`](super::dead_letter())).
    pub dlq_mask_ip: bool,
}

/// Used when a record carries no Kafka timestamp: 2100-01-01T00:00:00Z.
const FALLBACK_LATEST_EVENT_TIME: i64 = 4_102_444_800;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 256 * 1024,
            max_future_skew_secs: 24 * 3600,
            dlq_mask_ip: false,
        }
    }
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

fn reject<T>(reason: Reason, message: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection {
        reason,
        message: message.into(),
    })
}

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
    // The fast path only ever accepts: anything it does not read as a plain valid
    // event (a rejection of any kind, a duplicate key, a nested unknown field, a
    // value serde_json checks only when parsed: a number beyond f64, a lone
    // surrogate escape) goes to the general path, which words every rejection.
    match fast_fields(text).and_then(|p| finish(p, record_timestamp_ms, limits).ok()) {
        Some(event) => Ok(event),
        None => validate_value(text, record_timestamp_ms, limits),
    }
}

/// The fields of a plain valid event, or `None` for anything else (see
/// [`validate`]): one pass over the text, each field read straight into the
/// string the event keeps.
fn fast_fields(text: &str) -> Option<Parsed<'_>> {
    serde_json::from_str::<FastEvent>(text).ok().map(|e| e.0)
}

/// [`Parsed`] as the fast path reads it: declines (fails to deserialise) at the
/// first thing that is not a plain valid event.
struct FastEvent<'de>(Parsed<'de>);

impl<'de> serde::Deserialize<'de> for FastEvent<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = FastEvent<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a plain valid login event")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let declined =
                    || <A::Error as serde::de::Error>::custom("left to the general path");
                // The string fields in `REQUIRED` order, then the timestamp.
                let mut strings: [Option<String>; 6] = Default::default();
                // The IP is only parsed, never kept: borrowed (one escaped is
                // declined, and the general path decides it the same way).
                let mut ip: Option<&'de str> = None;
                let mut timestamp = None;
                let mut extra = Map::new();
                // A key with escapes cannot be borrowed: declined here.
                while let Some(key) = map.next_key::<&'de str>()? {
                    match REQUIRED.iter().position(|r| *r == key) {
                        Some(6) => {
                            let t = match map.next_value::<Value>()? {
                                Value::Null => return Err(declined()),
                                v => parse_timestamp(v).map_err(|_| declined())?,
                            };
                            if timestamp.replace(t).is_some() {
                                return Err(declined());
                            }
                        }
                        // A non-string (null included) fails to deserialise.
                        Some(3) => {
                            let s = map.next_value::<&'de str>()?;
                            if s.trim().is_empty() || ip.replace(s).is_some() {
                                return Err(declined());
                            }
                        }
                        Some(i) => {
                            let s = map.next_value::<String>()?;
                            if s.trim().is_empty() || strings[i].replace(s).is_some() {
                                return Err(declined());
                            }
                        }
                        None => {
                            // Nested values could reach serde_json's depth limit
                            // as part of the whole document but not alone: the
                            // general path decides them.
                            let raw = map.next_value::<&'de RawValue>()?;
                            if matches!(raw.get().as_bytes()[0], b'{' | b'[') {
                                return Err(declined());
                            }
                            let v = serde_json::from_str(raw.get()).map_err(|_| declined())?;
                            if extra.insert(key.to_string(), v).is_some() {
                                return Err(declined());
                            }
                        }
                    }
                }
                let [
                    Some(user_id),
                    Some(app_version_text),
                    Some(device_type),
                    None,
                    Some(locale),
                    Some(device_id),
                ] = strings
                else {
                    return Err(declined());
                };
                let Some(ip_text) = ip else {
                    return Err(declined());
                };
                Ok(FastEvent(Parsed {
                    user_id,
                    app_version_text,
                    device_type,
                    ip_text: Cow::Borrowed(ip_text),
                    locale,
                    device_id,
                    timestamp: timestamp.ok_or_else(declined)?,
                    extra,
                }))
            }
        }
        d.deserialize_map(Fields)
    }
}

/// The fields of a record, read but not yet checked for meaning.
struct Parsed<'a> {
    user_id: String,
    app_version_text: String,
    device_type: String,
    ip_text: Cow<'a, str>,
    locale: String,
    device_id: String,
    timestamp: i64,
    extra: Map<String, Value>,
}

/// [`validate`] through a `serde_json::Value`: every value the fast path declines
/// (malformed JSON, not an object, keys with escapes), with the same outcomes for
/// the values both accept (a unit test and a property test compare them).
fn validate_value(
    text: &str,
    record_timestamp_ms: Option<i64>,
    limits: &Limits,
) -> Result<LoginEvent, Rejection> {
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
    finish(
        Parsed {
            user_id,
            app_version_text,
            device_type,
            ip_text: Cow::Owned(ip_text),
            locale,
            device_id,
            timestamp,
            extra: obj,
        },
        record_timestamp_ms,
        limits,
    )
}

/// The checks of meaning, after the fields were read.
fn finish(
    p: Parsed<'_>,
    record_timestamp_ms: Option<i64>,
    limits: &Limits,
) -> Result<LoginEvent, Rejection> {
    let Parsed {
        user_id,
        app_version_text,
        device_type,
        ip_text,
        locale,
        device_id,
        timestamp,
        extra,
    } = p;
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
            // With --dlq-mask-ip the DLQ entry's `ip` is masked: its message
            // must not quote it either.
            let message = if limits.dlq_mask_ip {
                "ip is neither IPv4 nor IPv6 (not shown: --dlq-mask-ip)".to_string()
            } else {
                format!("ip {ip_text:?} is neither IPv4 nor IPv6")
            };
            return reject(Reason::BadIp, message);
        }
    };
    let app_version = match AppVersion::parse_owned(app_version_text) {
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
        extra,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::fixtures::{NOW_MS, check, transform_via_value, with, without};
    use crate::event::transform::transform;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::BTreeSet;

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
        let runtime = Reason::ALL.iter().filter(|r| r.decided_at_runtime());
        assert_eq!(
            seen.len() + runtime.count(),
            Reason::ALL.len(),
            "every validation reason has a case"
        );
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

    /// JSON texts near the edges of validation: fields missing, null, blank, of
    /// the wrong type, escaped, duplicated, spaced out; unknown fields of every kind.
    fn arb_login_text() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("user_id"),
            Just("app_version"),
            Just("device_type"),
            Just("ip"),
            Just("locale"),
            Just("device_id"),
            Just("timestamp"),
            Just("extra"),
            Just("z"),
            Just("user\\u005fid"),
            Just("processed"),
        ];
        let value = prop_oneof![
            Just("\"u1\""),
            Just("\" \""),
            Just("\"\""),
            Just("\"a\\u0041\\n\""),
            Just("null"),
            Just("1"),
            Just("-5"),
            Just("1.5"),
            Just("1e3"),
            Just("1.0"),
            Just("\"123\""),
            Just("\" 42 \""),
            Just("\"-7\""),
            Just("true"),
            Just("[1, 2.50, \"x\"]"),
            Just("{\"a\" : 1}"),
            Just("\"2.10.3\""),
            Just("\"10.1.2.3\""),
            Just("\"2001:db8::1\""),
            Just("1700000000"),
            Just("\"1700000000\""),
            Just("18446744073709551616"),
            // Valid to a raw scan, rejected by a full parse.
            Just("1e400"),
            Just("\"\\ud800\""),
        ]
        .prop_map(str::to_string)
        .boxed();
        // Nesting at and just below serde_json's depth limit (128, the event's
        // own object included).
        let value = prop_oneof![
            8 => value,
            1 => Just(format!("{}{}", "[".repeat(127), "]".repeat(127))),
            1 => Just(format!("{}{}", "[".repeat(126), "]".repeat(126))),
        ];
        let all = [
            "user_id",
            "app_version",
            "device_type",
            "ip",
            "locale",
            "device_id",
            "timestamp",
        ];
        let good = [
            "\"u1\"",
            "\"2.10.3\"",
            "\"iOS\"",
            "\"10.1.2.3\"",
            "\"de_DE\"",
            "\"d1\"",
            "1700000000",
        ];
        (
            proptest::collection::vec((key, value, 0..3usize), 0..6),
            any::<bool>(),
            prop_oneof![Just(""), Just(" "), Just("\n\t")],
        )
            .prop_map(move |(fields, base, ws)| {
                // Usually a valid event with some fields overridden or added.
                let mut parts: Vec<String> = if base {
                    all.iter()
                        .zip(good)
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect()
                } else {
                    Vec::new()
                };
                for (k, v, at) in fields {
                    let at = at.min(parts.len());
                    parts.insert(at, format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}"));
                }
                format!("{ws}{{{}}}{ws}", parts.join(","))
            })
    }

    proptest! {
        #[test]
        fn fast_validation_agrees_with_the_value_path(text in arb_login_text()) {
            let limits = Limits::default();
            let now = Some(NOW_MS * 3);
            let fast = validate(Some(text.as_bytes()), now, &limits);
            let slow = validate_value(&text, now, &limits);
            prop_assert_eq!(&fast, &slow, "{}", text);
            if let Ok(e) = fast {
                prop_assert_eq!(transform(&e, "t", 1, 2), transform_via_value(&e, "t", 1, 2));
            }
        }
    }
}
