//! A valid event to the processed record's payload: unknown fields kept, the IP
//! masked, the time normalised, the source coordinates added. The usual event
//! (no unknown fields) is written by hand, any other through serde_json: the
//! same bytes either way, as a property test checks.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use chrono::{DateTime, SecondsFormat};
use serde_json::Value;

use super::validate::LoginEvent;

/// Masks an address to its network: IPv4 keeps its /24, IPv6 its /48.
pub(super) fn mask_ip(ip: IpAddr) -> String {
    let mut masked = Vec::with_capacity(18);
    push_masked_ip(&mut masked, ip);
    String::from_utf8(masked).expect("digits, dots, colons and hex are ASCII")
}

/// [`mask_ip`], appended to `out`.
fn push_masked_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Per processed record: digits by itoa, cheaper than `format!`'s
            // machinery.
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
pub(super) fn transform(event: &LoginEvent, topic: &str, partition: i32, offset: i64) -> Vec<u8> {
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
pub(crate) struct ProcessedSource<'a> {
    pub topic: Cow<'a, str>,
    pub partition: i32,
    pub offset: i64,
}

/// Reads [`ProcessedSource`] back from a processed record's payload (`None`: not
/// a processed record: not an object with `"processed":true` and the three
/// fields). Parses the whole payload: for checks and failed deliveries, not for
/// the per-record path.
pub(crate) fn processed_source(value: &[u8]) -> Option<ProcessedSource<'_>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::fixtures::{check, good, transform_via_value};
    use proptest::prelude::*;
    use serde_json::{Map, json};

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
}
