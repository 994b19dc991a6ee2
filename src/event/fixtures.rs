//! Records, values and configurations the event tests share.

use chrono::{DateTime, SecondsFormat};
use serde_json::{Value, json};

use super::transform::mask_ip;
use super::{
    Filters, KAFKA_DEFAULT_MAX_MESSAGE_BYTES, Limits, LoginEvent, OutputLimits, ProcessConfig,
    Reason, validate,
};
use crate::model::InputRecord;

pub(super) const NOW_MS: i64 = 1_700_000_000_000;

pub(super) fn good() -> Value {
    json!({
        "user_id": "u-1", "app_version": "2.3.4", "device_type": "android",
        "ip": "203.0.113.77", "locale": "en_US", "device_id": "d-1", "timestamp": 1_699_999_000
    })
}

pub(super) fn with(field: &str, v: Value) -> Vec<u8> {
    let mut j = good();
    j[field] = v;
    j.to_string().into_bytes()
}

pub(super) fn without(field: &str) -> Vec<u8> {
    let mut j = good();
    j.as_object_mut().unwrap().remove(field);
    j.to_string().into_bytes()
}

pub(super) fn check(value: Option<&[u8]>) -> Result<LoginEvent, Reason> {
    validate(value, Some(NOW_MS), &Limits::default()).map_err(|r| r.reason)
}

pub(super) fn cfg_with_dlq_limit(dlq_max_bytes: usize) -> ProcessConfig {
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

pub(super) fn rejected(key: Option<Vec<u8>>, value: Vec<u8>) -> InputRecord {
    InputRecord {
        partition: 2,
        offset: 7,
        key,
        value: Some(value),
        timestamp_ms: Some(NOW_MS),
    }
}

/// The reference [`transform`](super::transform::transform) must agree with:
/// the output built as a `serde_json::Map` and serialised.
pub(super) fn transform_via_value(
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
