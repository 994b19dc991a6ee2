//! The DLQ entry of a rejected record, and the bytes any record takes against a
//! topic's `max.message.bytes`. How much of a record an entry keeps depends only
//! on the record and the configuration, so `tally verify` predicts it byte for
//! byte.

use std::net::IpAddr;

use serde_json::Value;

use super::ProcessConfig;
use super::reason::Rejection;
use super::transform::mask_ip;
use crate::model::{Destination, InputRecord, OutputRecord, headers};

/// Room kept below a topic's `max.message.bytes` for what Kafka adds to a record
/// (record-batch header of 61 bytes, per-record varints and attributes) and for
/// librdkafka's own, more pessimistic size estimate.
const RECORD_OVERHEAD: usize = 1024;

/// The `tally.message` header is cut to this many bytes: messages quote parts of
/// the input (a 1 MiB "ip" string would otherwise come back as a 1 MiB header).
const MAX_MESSAGE_HEADER_BYTES: usize = 512;

/// Per header: its two length varints and attributes, at most.
const HEADER_OVERHEAD: usize = 10;

/// The bytes a record takes against a topic's `max.message.bytes`.
pub(super) fn record_size(key: Option<&[u8]>, value: &[u8], hs: &[(&str, Vec<u8>)]) -> usize {
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

/// The bytes of key and value a DLQ entry can carry whole (larger: truncated).
pub(crate) fn dlq_room(cfg: &ProcessConfig) -> usize {
    cfg.output_limits
        .dlq_max_bytes
        .saturating_sub(RECORD_OVERHEAD + dlq_header_reserve(cfg))
}

/// How much of a key and a value a DLQ entry keeps within `room` bytes: both whole
/// when they fit; otherwise the key keeps at least half the room (or all it needs)
/// and the value the rest.
fn dlq_fit(key_len: usize, value_len: usize, room: usize) -> (usize, usize) {
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
pub(crate) fn dead_letter_stripped(
    rec: InputRecord,
    rejection: &Rejection,
    cfg: &ProcessConfig,
) -> OutputRecord {
    let mut none_fits = cfg.clone();
    none_fits.output_limits.dlq_max_bytes = 0;
    dead_letter(rec, rejection, &none_fits)
}

/// The `tally.source.*` headers: the input record a DLQ entry comes from.
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

fn sha256_hex(bytes: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::with_capacity(64);
    for b in Sha256::digest(bytes) {
        out.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    out
}

/// `value` with its `ip` field masked, when it is a JSON object that has one
/// (not null): an address as [`mask_ip`] masks it, anything else as `"masked"`
/// (an invalid address may still be one, mistyped). `None`: nothing to mask.
/// The result is re-serialised, so it is not byte for byte the input. Only a
/// value that starts as an object is parsed (the caller bounds its size), so
/// a large array or string costs no tree.
fn mask_ip_field(value: &[u8]) -> Option<Vec<u8>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::fixtures::{NOW_MS, cfg_with_dlq_limit, rejected, with, without};
    use crate::event::{Filters, Limits, Outcome, OutputLimits, Reason, process};
    use proptest::prelude::*;
    use serde_json::json;

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
}
