//! Validation, filtering and transformation of user-login events: pure functions.
//!
//! `process` is the single decision the pipeline and `tally verify` share: for a
//! given input record and configuration it always yields the same outcome and,
//! for processed records, the same output bytes.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat};
use serde_json::value::RawValue;
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
    /// The output could not be written: larger than the output topic accepts, or
    /// refused by the broker for this record alone (size, invalid record, policy).
    Unproducible,
    /// At the head of too many consecutive aborted transactions (see `--poison-aborts`).
    Poison,
}

impl Reason {
    pub const ALL: [Reason; 17] = [
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
        Reason::Unproducible,
        Reason::Poison,
    ];

    /// Reasons decided while producing, not by [`process`] alone: `tally verify`
    /// cannot predict them and accepts such an entry in place of any outcome.
    pub fn decided_at_runtime(self) -> bool {
        matches!(self, Reason::Unproducible | Reason::Poison)
    }

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
            Reason::Unproducible => "unproducible",
            Reason::Poison => "poison",
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
    /// Missing components are 0, as comparisons count them; an array, not a
    /// `Vec`: one allocation less per event.
    parts: [u64; 4],
    text: String,
}

impl AppVersion {
    /// The version as written (what output and aggregates show).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// [`FromStr`] keeping the given string instead of copying it.
    pub fn parse_owned(s: String) -> Result<Self, String> {
        let parts = Self::parts(&s)?;
        Ok(AppVersion { parts, text: s })
    }

    /// One pass over the bytes (splitting and parsing each part showed in
    /// profiles): the numeric prefix before any `-`/`+`, 1 to 4 non-empty
    /// decimal parts, each within u64.
    fn parts(s: &str) -> Result<[u64; 4], String> {
        let bad = || format!("{s:?} is not a version like 2.13.1 (1 to 4 dot-separated numbers)");
        let mut parts = [0u64; 4];
        let (mut n, mut digits) = (0, 0);
        for &c in s.as_bytes() {
            match c {
                b'0'..=b'9' => {
                    let part = parts.get_mut(n).ok_or_else(bad)?;
                    *part = part
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(c - b'0')))
                        .ok_or_else(bad)?;
                    digits += 1;
                }
                b'.' if digits > 0 => (n, digits) = (n + 1, 0),
                b'-' | b'+' => break,
                _ => return Err(bad()),
            }
        }
        if digits == 0 {
            return Err(bad());
        }
        Ok(parts)
    }
}

impl FromStr for AppVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse_owned(s.to_string())
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
        self.parts.cmp(&other.parts)
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
    /// DLQ entries whose value is a JSON object get its `ip` masked
    /// (`--dlq-mask-ip`, see [`dead_letter`]).
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

/// Records that are valid but not wanted downstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    /// Events from app versions lower than this are filtered out.
    pub min_app_version: Option<AppVersion>,
    /// When set, only these device types (compared case-insensitively) pass.
    pub allowed_device_types: Option<BTreeSet<String>>,
}

/// The largest record each output topic accepts (its `max.message.bytes`, read
/// from the topic at start). The DLQ entry and the processed record are decided
/// against them here, so the broker never sees a record it would refuse and the
/// decision stays a pure function `tally verify` can repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    pub processed_max_bytes: usize,
    pub dlq_max_bytes: usize,
}

/// Kafka's broker default `message.max.bytes` (1 MiB plus batch overhead).
pub const KAFKA_DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            processed_max_bytes: KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
            dlq_max_bytes: KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// Everything `process` depends on besides the record itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessConfig {
    pub input_topic: String,
    pub limits: Limits,
    pub filters: Filters,
    pub output_limits: OutputLimits,
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

/// `value` with its `ip` field masked, when it is a JSON object that has one
/// (not null): an address as [`mask_ip`] masks it, anything else as `"masked"`
/// (an invalid address may still be one, mistyped). `None`: nothing to mask.
/// The result is re-serialised, so it is not byte for byte the input. Only a
/// value that starts as an object is parsed (the caller bounds its size), so
/// a large array or string costs no tree.
pub fn mask_ip_field(value: &[u8]) -> Option<Vec<u8>> {
    if value.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(value) else {
        return None;
    };
    let ip = object.get_mut("ip").filter(|v| !v.is_null())?;
    let masked = match ip.as_str().and_then(|s| s.trim().parse::<IpAddr>().ok()) {
        Some(addr) => mask_ip(addr),
        None => "masked".to_string(),
    };
    *ip = Value::String(masked);
    serde_json::to_vec(&object).ok()
}

/// Masks an address to its network: IPv4 keeps its /24, IPv6 its /48.
pub fn mask_ip(ip: IpAddr) -> String {
    let mut masked = Vec::with_capacity(18);
    push_masked_ip(&mut masked, ip);
    String::from_utf8(masked).expect("digits, dots, colons and hex are ASCII")
}

/// [`mask_ip`], appended to `out`.
fn push_masked_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Per processed record: digits by itoa, not through `format!`'s
            // machinery (which showed in `cargo bench --bench core` profiles).
            let mut digits = itoa::Buffer::new();
            for octet in &v4.octets()[..3] {
                out.extend_from_slice(digits.format(*octet).as_bytes());
                out.push(b'.');
            }
            out.extend_from_slice(b"0/24");
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let net = Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0);
            out.extend_from_slice(format!("{net}/48").as_bytes());
        }
    }
}

/// Appends `s` as a JSON string, byte for byte as serde_json writes it: it
/// escapes only control characters, `"` and `\`, so a string without them is
/// copied whole (every field of a usual event), skipping the serializer's
/// per-byte escape machinery.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        serde_json::to_writer(&mut *out, s).expect("a string serialises");
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// The event time as RFC 3339 in UTC to the second (`2023-11-14T22:13:20Z`), or
/// empty when chrono cannot represent it.
fn login_time(timestamp: i64) -> Option<DateTime<chrono::Utc>> {
    DateTime::from_timestamp(timestamp, 0)
}

/// [`login_time`] as a JSON string appended to `out`: the same bytes as
/// `to_rfc3339_opts(SecondsFormat::Secs, true)` quoted, written digit by digit
/// for the four-digit years every real event has.
fn push_login_time(out: &mut Vec<u8>, timestamp: i64) {
    use chrono::{Datelike, Timelike};
    out.push(b'"');
    if let Some(t) = login_time(timestamp) {
        match u16::try_from(t.year()) {
            Ok(year) if year <= 9999 => {
                let two = |out: &mut Vec<u8>, n: u32, sep: u8| {
                    out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8, sep]);
                };
                out.extend_from_slice(&[
                    b'0' + (year / 1000) as u8,
                    b'0' + (year / 100 % 10) as u8,
                    b'0' + (year / 10 % 10) as u8,
                    b'0' + (year % 10) as u8,
                    b'-',
                ]);
                two(out, t.month(), b'-');
                two(out, t.day(), b'T');
                two(out, t.hour(), b':');
                two(out, t.minute(), b':');
                two(out, t.second(), b'Z');
            }
            // Signed or five-digit years: chrono's own form (no byte to escape).
            _ => out.extend_from_slice(t.to_rfc3339_opts(SecondsFormat::Secs, true).as_bytes()),
        }
    }
    out.push(b'"');
}

/// The transformed event: unknown fields kept, IP masked, time normalised, and the
/// processing metadata that is a function of the input (source coordinates). Keys
/// come out sorted, so the bytes are deterministic.
pub fn transform(event: &LoginEvent, topic: &str, partition: i32, offset: i64) -> Vec<u8> {
    if event.extra.is_empty() {
        return transform_known(event, topic, partition, offset);
    }
    /// A field of the output: borrowed where the event has it, so building the
    /// output copies each byte once, into the serialised record.
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Field<'a> {
        Str(&'a str),
        Int(i64),
        Bool(bool),
        Json(&'a Value),
    }
    let login_time = login_time(event.timestamp)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default();
    let ip = mask_ip(event.ip);
    // Sorted keys (a BTreeMap, like serde_json's `Map`), so the bytes are
    // deterministic; the known fields win over unknown ones of the same name.
    let mut out: BTreeMap<&str, Field<'_>> = event
        .extra
        .iter()
        .map(|(k, v)| (k.as_str(), Field::Json(v)))
        .collect();
    out.extend([
        ("user_id", Field::Str(&event.user_id)),
        ("app_version", Field::Str(event.app_version.as_str())),
        ("device_type", Field::Str(&event.device_type)),
        ("ip", Field::Str(&ip)),
        ("locale", Field::Str(&event.locale)),
        ("device_id", Field::Str(&event.device_id)),
        ("timestamp", Field::Int(event.timestamp)),
        ("login_time", Field::Str(&login_time)),
        ("processed", Field::Bool(true)),
        ("source_topic", Field::Str(topic)),
        ("source_partition", Field::Int(i64::from(partition))),
        ("source_offset", Field::Int(offset)),
    ]);
    let mut bytes = Vec::with_capacity(256);
    serde_json::to_writer(&mut bytes, &out).expect("a JSON map always serialises");
    bytes
}

/// The input record a processed record comes from, as [`transform`] wrote it in
/// the payload's processing metadata. Processed records carry their source only
/// there; DLQ entries carry it in the `tally.source.*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessedSource<'a> {
    pub topic: Cow<'a, str>,
    pub partition: i32,
    pub offset: i64,
}

/// Reads [`ProcessedSource`] back from a processed record's payload (`None`: not
/// a processed record: not an object with `"processed":true` and the three
/// fields). Parses the whole payload: for checks and failed deliveries, not for
/// the per-record path.
pub fn processed_source(value: &[u8]) -> Option<ProcessedSource<'_>> {
    #[derive(serde::Deserialize)]
    struct Fields<'a> {
        processed: bool,
        #[serde(borrow)]
        source_topic: Cow<'a, str>,
        source_partition: i32,
        source_offset: i64,
    }
    // A derived struct also reads a JSON array by position.
    if value.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let f: Fields<'_> = serde_json::from_slice(value).ok()?;
    f.processed.then_some(ProcessedSource {
        topic: f.source_topic,
        partition: f.source_partition,
        offset: f.source_offset,
    })
}

/// [`transform`] of the usual event, without unknown fields: the same bytes as
/// the map above, written field by field in sorted key order into one buffer
/// sized up front (no intermediate strings, no growth).
fn transform_known(event: &LoginEvent, topic: &str, partition: i32, offset: i64) -> Vec<u8> {
    let strings = [
        event.app_version.as_str(),
        &event.device_id,
        &event.device_type,
        &event.locale,
        topic,
        &event.user_id,
    ];
    // Keys, punctuation, the masked IP, the time and three numbers fit in 256
    // bytes; strings that need escapes may still grow the buffer.
    let mut out = Vec::with_capacity(256 + strings.iter().map(|s| s.len()).sum::<usize>());
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(b"{\"app_version\":");
    push_json_str(&mut out, event.app_version.as_str());
    out.extend_from_slice(b",\"device_id\":");
    push_json_str(&mut out, &event.device_id);
    out.extend_from_slice(b",\"device_type\":");
    push_json_str(&mut out, &event.device_type);
    out.extend_from_slice(b",\"ip\":\"");
    push_masked_ip(&mut out, event.ip);
    out.extend_from_slice(b"\",\"locale\":");
    push_json_str(&mut out, &event.locale);
    out.extend_from_slice(b",\"login_time\":");
    push_login_time(&mut out, event.timestamp);
    out.extend_from_slice(b",\"processed\":true,\"source_offset\":");
    out.extend_from_slice(digits.format(offset).as_bytes());
    out.extend_from_slice(b",\"source_partition\":");
    out.extend_from_slice(digits.format(partition).as_bytes());
    out.extend_from_slice(b",\"source_topic\":");
    push_json_str(&mut out, topic);
    out.extend_from_slice(b",\"timestamp\":");
    out.extend_from_slice(digits.format(event.timestamp).as_bytes());
    out.extend_from_slice(b",\"user_id\":");
    push_json_str(&mut out, &event.user_id);
    out.push(b'}');
    out
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

    /// Moves the output out (leaving an empty record of the same destination), so
    /// the pipeline hands it to the producer without copying the payload.
    pub fn take_output(&mut self) -> Option<OutputRecord> {
        match self {
            Outcome::Processed { output, .. } | Outcome::DeadLetter { output, .. } => {
                let empty = OutputRecord {
                    destination: output.destination,
                    key: None,
                    value: Vec::new(),
                    headers: Vec::new(),
                    timestamp_ms: None,
                };
                Some(std::mem::replace(output, empty))
            }
            Outcome::Filtered { .. } => None,
        }
    }
}

fn source_headers(
    cfg: &ProcessConfig,
    partition: i32,
    offset: i64,
) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (headers::SOURCE_TOPIC, cfg.input_topic.as_bytes().to_vec()),
        (
            headers::SOURCE_PARTITION,
            itoa::Buffer::new().format(partition).as_bytes().to_vec(),
        ),
        (
            headers::SOURCE_OFFSET,
            itoa::Buffer::new().format(offset).as_bytes().to_vec(),
        ),
    ]
}

/// Room kept below a topic's `max.message.bytes` for what Kafka adds to a record
/// (record-batch header of 61 bytes, per-record varints and attributes) and for
/// librdkafka's own, more pessimistic size estimate.
pub const RECORD_OVERHEAD: usize = 1024;

/// The `tally.message` header is cut to this many bytes: messages quote parts of
/// the input (a 1 MiB "ip" string would otherwise come back as a 1 MiB header).
pub const MAX_MESSAGE_HEADER_BYTES: usize = 512;

/// Per header: its two length varints and attributes, at most.
const HEADER_OVERHEAD: usize = 10;

/// The bytes a record takes against a topic's `max.message.bytes`.
pub fn record_size(key: Option<&[u8]>, value: &[u8], hs: &[(&str, Vec<u8>)]) -> usize {
    RECORD_OVERHEAD
        + key.map_or(0, <[u8]>::len)
        + value.len()
        + hs.iter()
            .map(|(k, v)| k.len() + v.len() + HEADER_OVERHEAD)
            .sum::<usize>()
}

/// The most a DLQ entry's headers can take. Reserved in full whatever the actual
/// message, so how much of a value is kept depends only on the record and the
/// configuration: `tally verify` and the poison path truncate identically.
fn dlq_header_reserve(cfg: &ProcessConfig) -> usize {
    let values = [
        (headers::REASON, 32),
        (headers::MESSAGE, MAX_MESSAGE_HEADER_BYTES),
        (headers::SOURCE_TOPIC, cfg.input_topic.len()),
        (headers::SOURCE_PARTITION, 11),
        (headers::SOURCE_OFFSET, 20),
        (headers::TRUNCATED, 9),
        (headers::ORIGINAL_SIZE, 20),
        (headers::ORIGINAL_SHA256, 64),
        (headers::ORIGINAL_KEY_SIZE, 20),
        (headers::ORIGINAL_KEY_SHA256, 64),
        (headers::MASKED, 2),
    ];
    values
        .iter()
        .map(|(name, v)| name.len() + v + HEADER_OVERHEAD)
        .sum()
}

fn sha256_hex(bytes: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::with_capacity(64);
    for b in Sha256::digest(bytes) {
        out.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    out
}

/// Cuts `message` to at most `max` bytes on a character boundary, marking the cut.
fn cap_message(message: &str, max: usize) -> Vec<u8> {
    if message.len() <= max {
        return message.as_bytes().to_vec();
    }
    const MARK: &str = "... (cut)";
    let mut end = max.saturating_sub(MARK.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &message[..end]).into_bytes()
}

/// The bytes of key and value a DLQ entry can carry whole (larger: truncated).
pub fn dlq_room(cfg: &ProcessConfig) -> usize {
    cfg.output_limits
        .dlq_max_bytes
        .saturating_sub(RECORD_OVERHEAD + dlq_header_reserve(cfg))
}

/// How much of a key and a value a DLQ entry keeps within `room` bytes: both whole
/// when they fit; otherwise the key keeps at least half the room (or all it needs)
/// and the value the rest.
pub fn dlq_fit(key_len: usize, value_len: usize, room: usize) -> (usize, usize) {
    if key_len + value_len <= room {
        return (key_len, value_len);
    }
    let key_keep = key_len.min((room / 2).max(room.saturating_sub(value_len)));
    (key_keep, value_len.min(room - key_keep))
}

/// The DLQ entry of an input record: its original key and bytes, unchanged when
/// they fit the DLQ topic; otherwise truncated copies, and headers saying what
/// was truncated with the original size and SHA-256 of each (guarantee 3).
/// Takes the record by value: a 1 MiB payload is moved, never copied.
pub fn dead_letter(rec: InputRecord, rejection: &Rejection, cfg: &ProcessConfig) -> OutputRecord {
    let mut hs = vec![
        (headers::REASON, rejection.reason.code().as_bytes().to_vec()),
        (
            headers::MESSAGE,
            cap_message(&rejection.message, MAX_MESSAGE_HEADER_BYTES),
        ),
    ];
    hs.extend(source_headers(cfg, rec.partition, rec.offset));
    let mut key = rec.key;
    let mut value = rec.value.unwrap_or_default();
    if cfg.limits.dlq_mask_ip && value.len() <= cfg.limits.max_value_bytes {
        if let Some(masked) = mask_ip_field(&value) {
            value = masked;
            hs.push((headers::MASKED, b"ip".to_vec()));
        }
    }
    let room = dlq_room(cfg);
    let key_len = key.as_ref().map_or(0, Vec::len);
    let (key_keep, value_keep) = dlq_fit(key_len, value.len(), room);
    let mut truncated = Vec::new();
    if let Some(k) = key.as_mut().filter(|_| key_keep < key_len) {
        truncated.push("key");
        hs.push((headers::ORIGINAL_KEY_SIZE, key_len.to_string().into_bytes()));
        hs.push((headers::ORIGINAL_KEY_SHA256, sha256_hex(k)));
        k.truncate(key_keep);
    }
    if key_keep == 0 && key_len > 0 {
        key = None;
    }
    if value_keep < value.len() {
        truncated.push("value");
        hs.push((headers::ORIGINAL_SIZE, value.len().to_string().into_bytes()));
        hs.push((headers::ORIGINAL_SHA256, sha256_hex(&value)));
        value.truncate(value_keep);
        value.shrink_to_fit();
    }
    if !truncated.is_empty() {
        hs.push((headers::TRUNCATED, truncated.join(",").into_bytes()));
    }
    OutputRecord {
        destination: Destination::DeadLetter,
        key,
        value,
        headers: hs,
        // The producer's clock, not the input's: a broker that bounds timestamps
        // (`log.message.timestamp.before.max.ms`) may refuse an old record's
        // output, which is then dead-lettered; its DLQ entry must be accepted.
        timestamp_ms: None,
    }
}

/// A DLQ entry with nothing of the key or value, only the headers (the original
/// sizes and SHA-256): the last resort for a record whose full DLQ entry was
/// refused too. Its key and value are always `None` and empty.
pub fn dead_letter_stripped(
    rec: InputRecord,
    rejection: &Rejection,
    cfg: &ProcessConfig,
) -> OutputRecord {
    let mut none_fits = cfg.clone();
    none_fits.output_limits.dlq_max_bytes = 0;
    dead_letter(rec, rejection, &none_fits)
}

/// The one decision for a record: processed (with its output), filtered, or dead-lettered.
pub fn process(rec: &InputRecord, cfg: &ProcessConfig) -> Outcome {
    process_owned(rec.clone(), cfg)
}

/// [`process`] taking the record by value, so a dead-lettered payload is moved
/// into its DLQ entry instead of copied (the pipeline's path).
pub fn process_owned(rec: InputRecord, cfg: &ProcessConfig) -> Outcome {
    let rejection = match validate(rec.value.as_deref(), rec.timestamp_ms, &cfg.limits) {
        Ok(event) => {
            if let Some(why) = cfg.filters.check(&event) {
                return Outcome::Filtered { event, why };
            }
            let value = transform(&event, &cfg.input_topic, rec.partition, rec.offset);
            let output = OutputRecord {
                destination: Destination::Processed,
                key: Some(event.user_id.clone().into_bytes()),
                value,
                // No headers: the payload names its source (`processed_source`).
                // Three source headers per record cost more than all the rest of
                // producing it (each is an allocation librdkafka copies,
                // serialises and frees); DLQ entries, whose payload is the input
                // as received, keep them.
                headers: Vec::new(),
                timestamp_ms: rec.timestamp_ms,
            };
            let size = record_size(output.key.as_deref(), &output.value, &output.headers);
            let limit = cfg.output_limits.processed_max_bytes;
            if size <= limit {
                return Outcome::Processed { event, output };
            }
            Rejection {
                reason: Reason::Unproducible,
                message: format!(
                    "the processed record would take {size} bytes, the output topic accepts {limit} (max.message.bytes)"
                ),
            }
        }
        Err(rejection) => rejection,
    };
    let output = dead_letter(rec, &rejection, cfg);
    Outcome::DeadLetter { rejection, output }
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
        assert!("".parse::<AppVersion>().is_err());
        assert!("+1".parse::<AppVersion>().is_err());
        assert!("1.2.".parse::<AppVersion>().is_err());
        assert_eq!(v("1.2.3.4+b7").as_str(), "1.2.3.4+b7");
        assert!(v("1.2.3.4") > v("1.2.3"));
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

    proptest! {
        /// The digit-by-digit IPv4 mask writes what the address's own
        /// formatting of its /24 network would.
        #[test]
        fn ipv4_mask_is_the_networks_display(octets in any::<[u8; 4]>()) {
            let [a, b, c, _] = octets;
            prop_assert_eq!(
                mask_ip(IpAddr::from(octets)),
                format!("{}/24", std::net::Ipv4Addr::new(a, b, c, 0))
            );
        }
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
            output_limits: OutputLimits::default(),
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

    fn cfg_with_dlq_limit(dlq_max_bytes: usize) -> ProcessConfig {
        ProcessConfig {
            input_topic: "user-login".into(),
            limits: Limits::default(),
            filters: Filters::default(),
            output_limits: OutputLimits {
                processed_max_bytes: KAFKA_DEFAULT_MAX_MESSAGE_BYTES,
                dlq_max_bytes,
            },
        }
    }

    fn rejected(key: Option<Vec<u8>>, value: Vec<u8>) -> InputRecord {
        InputRecord {
            partition: 2,
            offset: 7,
            key,
            value: Some(value),
            timestamp_ms: Some(NOW_MS),
        }
    }

    fn header<'a>(out: &'a OutputRecord, name: &str) -> Option<&'a [u8]> {
        out.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_slice())
    }

    #[test]
    fn dlq_ip_masking_masks_json_objects_only_and_says_so() {
        let mut cfg = cfg_with_dlq_limit(1 << 20);
        let rejection = Rejection {
            reason: Reason::MissingField,
            message: "device_type".into(),
        };
        let value = br#"{"user_id":"u","ip":"203.0.113.7","locale":"en"}"#.to_vec();
        // Off by default: the original bytes.
        let plain = dead_letter(rejected(None, value.clone()), &rejection, &cfg);
        assert_eq!(plain.value, value);
        assert_eq!(header(&plain, headers::MASKED), None);

        cfg.limits.dlq_mask_ip = true;
        let out = dead_letter(rejected(None, value), &rejection, &cfg);
        let v: Value = serde_json::from_slice(&out.value).unwrap();
        assert_eq!(v["ip"], "203.0.113.0/24");
        assert_eq!(v["user_id"], "u");
        assert_eq!(header(&out, headers::MASKED), Some(&b"ip"[..]));
        // Not an address: masked all the same.
        let bad = br#"{"ip":"999.1.2.3"}"#.to_vec();
        let out = dead_letter(rejected(None, bad), &rejection, &cfg);
        assert_eq!(out.value, br#"{"ip":"masked"}"#);
        // Not JSON, no ip, a null ip: nothing to mask.
        for v in [
            &b"not json 203.0.113.7"[..],
            br#"{"user_id":"u"}"#,
            br#"{"ip":null}"#,
            b"[1]",
        ] {
            let out = dead_letter(rejected(None, v.to_vec()), &rejection, &cfg);
            assert_eq!(out.value, v);
            assert_eq!(header(&out, headers::MASKED), None);
        }
    }

    #[test]
    fn oversized_value_is_truncated_with_size_and_hash() {
        let limit = 2 * 1024 * 1024;
        let cfg = cfg_with_dlq_limit(limit);
        let value: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let rec = rejected(Some(b"k".to_vec()), value.clone());
        let Outcome::DeadLetter { output, rejection } = process(&rec, &cfg) else {
            panic!("a 3 MB value is rejected")
        };
        assert_eq!(rejection.reason, Reason::TooLarge);
        assert!(record_size(output.key.as_deref(), &output.value, &output.headers) <= limit);
        assert_eq!(output.value, value[..output.value.len()]);
        assert_eq!(output.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(header(&output, headers::TRUNCATED), Some(&b"value"[..]));
        assert_eq!(
            header(&output, headers::ORIGINAL_SIZE),
            Some(&b"3000000"[..])
        );
        assert_eq!(
            header(&output, headers::ORIGINAL_SHA256),
            Some(sha256_hex(&value).as_slice())
        );
        assert_eq!(header(&output, headers::ORIGINAL_KEY_SIZE), None);
    }

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_vec()
        );
    }

    #[test]
    fn value_that_fits_is_unchanged_and_huge_messages_are_cut() {
        let cfg = cfg_with_dlq_limit(2 * 1024 * 1024);
        let value = with("ip", json!("9".repeat(100_000)));
        let rec = rejected(None, value.clone());
        let Outcome::DeadLetter { output, rejection } = process(&rec, &cfg) else {
            panic!("a bad ip is rejected")
        };
        assert_eq!(rejection.reason, Reason::BadIp);
        assert_eq!(output.value, value);
        assert_eq!(header(&output, headers::TRUNCATED), None);
        let message = header(&output, headers::MESSAGE).unwrap();
        assert!(
            message.len() <= MAX_MESSAGE_HEADER_BYTES,
            "{}",
            message.len()
        );
        assert!(message.ends_with(b"(cut)"));
    }

    #[test]
    fn processed_record_over_the_output_limit_is_unproducible() {
        let mut cfg = cfg_with_dlq_limit(2 * 1024 * 1024);
        cfg.limits.max_value_bytes = 4 * 1024 * 1024;
        cfg.output_limits.processed_max_bytes = 64 * 1024;
        let value = with("note", json!("n".repeat(100_000)));
        let rec = rejected(Some(b"u".to_vec()), value.clone());
        let Outcome::DeadLetter { output, rejection } = process(&rec, &cfg) else {
            panic!("too large for the output topic")
        };
        assert_eq!(rejection.reason, Reason::Unproducible);
        assert_eq!(output.value, value, "the DLQ takes it whole");
        let small = rejected(Some(b"u".to_vec()), good().to_string().into_bytes());
        assert!(matches!(process(&small, &cfg), Outcome::Processed { .. }));
    }

    /// The split-and-parse reading of a version that `AppVersion::parts` does in
    /// one pass: the reference it must agree with.
    fn parts_by_splitting(s: &str) -> Option<[u64; 4]> {
        let numeric = s.split(['-', '+']).next().unwrap_or_default();
        if !numeric.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
            return None;
        }
        let mut parts = [0; 4];
        for (n, part) in numeric.split('.').enumerate() {
            *parts.get_mut(n)? = part.parse().ok()?;
        }
        Some(parts)
    }

    proptest! {
        #[test]
        fn app_version_parts_agree_with_splitting(
            s in "[0-9.+a-é١１-]{0,12}|[0-9]{1,21}(\\.[0-9]{0,21}){0,5}([-+][0-9a-zé.]{0,4})?",
        ) {
            prop_assert_eq!(AppVersion::parts(&s).ok(), parts_by_splitting(&s), "{:?}", s);
        }
    }

    #[test]
    fn app_version_parts_at_the_edges() {
        for s in [
            "18446744073709551615",
            "1.18446744073709551615",
            "0000000000000000000000001.2",
            "1é",
            "١",
            "１",
            "1-é",
            "-1",
            "+1",
            "1.2.3.4.5",
            "1.2.3.4-5.6",
        ] {
            assert_eq!(AppVersion::parts(s).ok(), parts_by_splitting(s), "{s:?}");
        }
        assert_eq!(
            AppVersion::parts("18446744073709551615").ok(),
            Some([u64::MAX, 0, 0, 0])
        );
        assert!(AppVersion::parts("18446744073709551616").is_err());
        assert_eq!(AppVersion::parts("1-é").ok(), Some([1, 0, 0, 0]));
    }

    proptest! {
        #[test]
        fn dlq_entries_always_fit_and_keep_a_prefix(
            key_len in 0usize..20_000, value_len in 0usize..40_000,
            spare in 0usize..30_000, tombstone in any::<bool>(),
        ) {
            // Any limit that leaves room for the headers: the entry fits it.
            let cfg = cfg_with_dlq_limit(RECORD_OVERHEAD + dlq_header_reserve(&cfg_with_dlq_limit(0)) + spare);
            let key: Vec<u8> = (0..key_len).map(|i| (i % 7) as u8).collect();
            let value: Vec<u8> = (0..value_len).map(|i| (i % 13) as u8).collect();
            let mut rec = rejected((key_len > 0).then(|| key.clone()), value.clone());
            if tombstone {
                rec.value = None;
            }
            let rejection = Rejection { reason: Reason::Poison, message: "m".repeat(5000) };
            let out = dead_letter(rec.clone(), &rejection, &cfg);
            let limit = cfg.output_limits.dlq_max_bytes;
            prop_assert!(record_size(out.key.as_deref(), &out.value, &out.headers) <= limit);
            let original = rec.value.clone().unwrap_or_default();
            prop_assert_eq!(&out.value[..], &original[..out.value.len()]);
            let out_key = out.key.clone().unwrap_or_default();
            prop_assert_eq!(&out_key[..], &key[..out_key.len()]);
            let cut_value = out.value.len() < original.len();
            let cut_key = out_key.len() < key_len;
            prop_assert_eq!(header(&out, headers::TRUNCATED).is_some(), cut_value || cut_key);
            prop_assert_eq!(header(&out, headers::ORIGINAL_SIZE).is_some(), cut_value);
            prop_assert_eq!(header(&out, headers::ORIGINAL_KEY_SHA256).is_some(), cut_key);
            if cut_value {
                let sha = sha256_hex(&original);
                prop_assert_eq!(header(&out, headers::ORIGINAL_SHA256), Some(sha.as_slice()));
            }
            // Whatever the rejection, the same bytes: verify can predict them.
            let other = Rejection { reason: Reason::TooLarge, message: String::new() };
            let again = dead_letter(rec, &other, &cfg);
            prop_assert_eq!((&again.key, &again.value), (&out.key, &out.value));
        }
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

    /// The output as `transform` built it before it borrowed its fields: through a
    /// `serde_json::Map`, re-serialised. The bytes must not change.
    fn transform_via_value(
        event: &LoginEvent,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Vec<u8> {
        let mut out = event.extra.clone();
        let login_time = DateTime::from_timestamp(event.timestamp, 0)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            .unwrap_or_default();
        for (k, v) in [
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
        ] {
            out.insert(k.to_string(), v);
        }
        serde_json::to_vec(&Value::Object(out)).unwrap()
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

    /// Strings as they come: plain, any Unicode, and the characters JSON escapes.
    fn arb_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9_.-]{1,12}",
            any::<String>(),
            "[\\x00-\\x1f\\x7f\"\\\\/é€😀a]{0,6}",
        ]
    }

    proptest! {
        /// The field-by-field writer of the usual event and the generic map writer
        /// give the same bytes for any field values, time and coordinates.
        #[test]
        fn written_output_equals_the_serialised_map(
            texts in proptest::collection::vec(arb_text(), 5),
            version in (0u32..30, 0u32..30, 0u32..1000),
            ip in any::<IpAddr>(),
            timestamp in prop_oneof![0i64..4_102_444_800, -70_000_000_000i64..300_000_000_000, any::<i64>()],
            partition in any::<i32>(),
            offset in any::<i64>(),
            with_extra in any::<bool>(),
        ) {
            let mut extra = Map::new();
            if with_extra {
                extra.insert("z".to_string(), Value::from(1));
            }
            let event = LoginEvent {
                user_id: texts[0].clone(),
                app_version: format!("{}.{}.{}", version.0, version.1, version.2).parse().unwrap(),
                device_type: texts[1].clone(),
                ip,
                locale: texts[2].clone(),
                device_id: texts[3].clone(),
                timestamp,
                extra,
            };
            let out = transform(&event, &texts[4], partition, offset);
            prop_assert_eq!(&out, &transform_via_value(&event, &texts[4], partition, offset));
            // The payload names its source, the only place a processed record does.
            let source = processed_source(&out).unwrap();
            prop_assert_eq!((source.topic.as_ref(), source.partition, source.offset), (texts[4].as_str(), partition, offset));
        }
    }

    #[test]
    fn source_fields_of_the_input_do_not_forge_the_processed_source() {
        let mut v = good();
        v["source_topic"] = Value::from("elsewhere");
        v["source_partition"] = Value::from(7);
        v["source_offset"] = Value::from("forged");
        let mut rec = rejected(Some(b"k".to_vec()), v.to_string().into_bytes());
        (rec.partition, rec.offset) = (1, 9);
        let Outcome::Processed { output, .. } = process(&rec, &cfg_with_dlq_limit(1 << 20)) else {
            panic!("not processed")
        };
        assert!(output.headers.is_empty(), "{:?}", output.headers);
        let source = processed_source(&output.value).unwrap();
        assert_eq!(
            (source.topic.as_ref(), source.partition, source.offset),
            ("user-login", 1, 9)
        );
        // What is not a processed record has no source.
        assert_eq!(processed_source(b"{\"user_id\":\"u\"}"), None);
        assert_eq!(processed_source(b"not json"), None);
        assert_eq!(processed_source(br#"[true, "user-login", 1, 9]"#), None);
        let unprocessed =
            br#"{"processed":false,"source_topic":"t","source_partition":1,"source_offset":9}"#;
        assert_eq!(processed_source(unprocessed), None);
    }

    proptest! {
        #[test]
        fn processing_is_deterministic(rec in arb_record()) {
            let cfg = ProcessConfig {
                input_topic: "user-login".into(),
                limits: Limits::default(),
                filters: Filters { min_app_version: Some("5.0".parse().unwrap()), allowed_device_types: None },
                output_limits: OutputLimits::default(),
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
